//! Live events (`GET …/chats/{number}/events`) against real processes: a
//! resume across a Redis that lost everything, and across the graceful
//! shutdown of the instance a client was streaming from.

use std::time::Duration;

use eventsource_stream::{Event, Eventsource};
use futures::{Stream, StreamExt};
use serde_json::{Value, json};

use crate::harness::{PrivateRedis, World, free_port, setup_app};
use crate::numbering::{Client, env};

/// An open event stream.
type Events = std::pin::Pin<
    Box<
        dyn Stream<Item = Result<Event, eventsource_stream::EventStreamError<reqwest::Error>>>
            + Send,
    >,
>;

/// Opens the event stream of chat 1 on `base`, resuming after `last`.
async fn open(base: &str, token: &str, last: Option<&str>) -> Events {
    let mut req =
        reqwest::Client::new().get(format!("{base}/api/v1/applications/{token}/chats/1/events"));
    if let Some(id) = last {
        req = req.header("Last-Event-ID", id);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    Box::pin(r.bytes_stream().eventsource())
}

/// The next event within 10 s; `None` when the stream ended.
async fn next(events: &mut Events) -> Option<Event> {
    tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("an event within 10 s")
        .map(|e| e.expect("a well-formed event"))
}

/// The next `message.created`'s number (other events are skipped, and
/// listed in `skipped`).
async fn next_created(events: &mut Events, skipped: &mut Vec<String>) -> (i64, String) {
    loop {
        let e = next(events).await.expect("the stream goes on");
        if e.event == "message.created" {
            let data: Value = serde_json::from_str(&e.data).unwrap();
            return (data["number"].as_i64().unwrap(), e.id);
        }
        skipped.push(e.event);
    }
}

/// Creates a message in chat 1 through `base`, retrying 503s for 30 s (a
/// Redis just restarted); its number.
async fn create(base: &str, token: &str, body: &str) -> i64 {
    let c = reqwest::Client::new();
    for _ in 0..150 {
        let r = c
            .post(format!(
                "{base}/api/v1/applications/{token}/chats/1/messages"
            ))
            .json(&json!({ "body": body }))
            .send()
            .await;
        if let Ok(r) = r {
            if r.status() == 201 {
                return r.json::<Value>().await.unwrap()["number"].as_i64().unwrap();
            }
            assert_eq!(r.status(), 503, "{:?}", r.text().await);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no create succeeded within 30 s");
}

/// Redis (no persistence) is SIGKILLed and restarted empty: every stream
/// is gone. A client resuming from its last id gets `reset` first (what it
/// missed cannot be replayed from the stream: it re-lists), never an event
/// it already had, and then the events of the creates that follow, each
/// once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_after_redis_lost_everything_gets_a_reset_then_only_new_events() {
    let mut redis = PrivateRedis::start().await;
    let world = World::new(&env(&redis)).await;
    let service = world.start(free_port()).await;
    let base = service.base();
    let token = setup_app(&base, 1).await;
    let mut events = open(&base, &token, None).await;
    let mut seen = Vec::new();
    let mut last = String::new();
    for i in 1..=3 {
        assert_eq!(create(&base, &token, &format!("before {i}")).await, i);
        let (n, id) = next_created(&mut events, &mut Vec::new()).await;
        assert_eq!(n, i);
        seen.push(n);
        last = id;
    }
    Client::new(base.clone()).flush().await;
    drop(events);

    redis.restart().await;
    // Creates work again (the counter comes back from MariaDB).
    let after_loss = create(&base, &token, "after the loss").await;
    assert!(after_loss > 3, "number {after_loss} handed out again");

    let mut events = open(&base, &token, Some(&last)).await;
    let first = next(&mut events).await.expect("an event");
    assert_eq!(
        first.event, "reset",
        "the first event after a lost stream: {first:?}"
    );
    let later = create(&base, &token, "after the resume").await;
    let mut others = Vec::new();
    let (n, _) = next_created(&mut events, &mut others).await;
    assert_eq!(n, later, "the next create's event, and nothing from before");
    assert!(!seen.contains(&n));
    assert!(others.iter().all(|e| e != "message.created"), "{others:?}");
    drop(service);
    world.cleanup().await;
}

/// Two instances; a client streams from A. A is stopped gracefully
/// (SIGTERM): its stream ends cleanly, not with an error, and A exits
/// promptly. The client resumes on B from its last id: the creates made on
/// B while it was away, then the new ones, arrive each once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_ends_streams_cleanly_and_the_client_resumes_elsewhere() {
    let redis = PrivateRedis::start().await;
    let world = World::new(&env(&redis)).await;
    let mut a = world.start(free_port()).await;
    let b = world.start(free_port()).await;
    let token = setup_app(&b.base(), 1).await;
    let mut events = open(&a.base(), &token, None).await;
    let mut got = Vec::new();
    let mut last = String::new();
    for i in 1..=5 {
        create(&b.base(), &token, &format!("m{i}")).await;
        let (n, id) = next_created(&mut events, &mut Vec::new()).await;
        got.push(n);
        last = id;
    }
    let stopping = std::time::Instant::now();
    let stopper = tokio::task::spawn_blocking(move || {
        let exited = a.terminate(Duration::from_secs(20));
        (exited, a)
    });
    // The stream ends: no more events, and no transport error.
    loop {
        match tokio::time::timeout(Duration::from_secs(15), events.next()).await {
            Ok(None) => break,
            Ok(Some(Ok(e))) => assert_ne!(e.event, "message.created", "no create was made: {e:?}"),
            Ok(Some(Err(e))) => panic!("the stream ended with an error: {e}"),
            Err(_) => panic!("the stream was still open 15 s into the shutdown"),
        }
    }
    let (exited, _a) = stopper.await.unwrap();
    assert!(exited, "instance A did not exit within 20 s of SIGTERM");
    eprintln!(
        "A's stream ended and A exited {:?} after SIGTERM",
        stopping.elapsed()
    );

    for i in 6..=8 {
        create(&b.base(), &token, &format!("m{i}")).await;
    }
    let mut events = open(&b.base(), &token, Some(&last)).await;
    for i in 9..=10 {
        create(&b.base(), &token, &format!("m{i}")).await;
    }
    let mut others = Vec::new();
    for _ in 6..=10 {
        got.push(next_created(&mut events, &mut others).await.0);
    }
    assert_eq!(got, (1..=10).collect::<Vec<i64>>(), "each once, in order");
    assert!(!others.contains(&"reset".to_string()), "{others:?}");
    // Nothing more (a duplicate would come now).
    let more = tokio::time::timeout(Duration::from_millis(1500), events.next()).await;
    if let Ok(Some(Ok(e))) = &more {
        assert_ne!(e.event, "message.created", "an event twice: {e:?}");
    }
    drop(b);
    world.cleanup().await;
}
