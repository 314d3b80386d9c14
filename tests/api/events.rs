//! Live events (`GET …/chats/{number}/events`): server-sent events of the
//! creates, edits and deletes of a chat, across instances, resumable.

use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use redis::AsyncCommands;
use serde_json::{Value, json};

use crate::helpers::{TestApp, metric_sum, spawn_app, spawn_app_with, spawn_config};

/// One server-sent event.
#[derive(Debug, Clone)]
struct SseEvent {
    id: String,
    event: String,
    data: Value,
}

/// A client of one event stream: parses the frames as they arrive.
struct Sse {
    body: Pin<Box<dyn Stream<Item = reqwest::Result<Vec<u8>>> + Send>>,
    /// Bytes received and not yet parsed: a chunk may end inside a frame,
    /// or inside a character of a body, so frames are cut from the bytes.
    buf: Vec<u8>,
    retry: Option<u64>,
}

impl Sse {
    /// Opens the stream of chat `chat`, resuming after `last` when given;
    /// asserts 200 `text/event-stream`.
    async fn open(app: &TestApp, token: &str, chat: i64, last: Option<&str>) -> Sse {
        let r = Self::request(app, token, chat, last).await;
        assert_eq!(r.status(), 200, "{:?}", r.text().await);
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        Self::over(r)
    }

    /// The events of response `r`.
    fn over(r: reqwest::Response) -> Sse {
        Sse {
            body: Box::pin(r.bytes_stream().map(|b| b.map(|b| b.to_vec()))),
            buf: Vec::new(),
            retry: None,
        }
    }

    async fn request(
        app: &TestApp,
        token: &str,
        chat: i64,
        last: Option<&str>,
    ) -> reqwest::Response {
        let mut req = app
            .client
            .get(app.url(&format!("/applications/{token}/chats/{chat}/events")));
        if let Some(id) = last {
            req = req.header("Last-Event-ID", id);
        }
        req.send().await.expect("request sent")
    }

    /// The next event (retry and comment frames are noted and skipped), or
    /// `None` when the stream ended. Panics when none comes `within`.
    async fn next(&mut self, within: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let frame: Vec<u8> = self.buf.drain(..end + 2).collect();
                let frame = String::from_utf8(frame).expect("a frame is UTF-8");
                let (mut id, mut event, mut data) = (String::new(), String::new(), String::new());
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("retry: ") {
                        self.retry = v.parse().ok();
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        id = v.to_string();
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event = v.to_string();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                if !event.is_empty() {
                    return Some(SseEvent {
                        id,
                        event,
                        data: serde_json::from_str(&data).expect("JSON data"),
                    });
                }
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Err(_) => panic!("no event within {within:?}"),
                Ok(None) | Ok(Some(Err(_))) => return None,
                Ok(Some(Ok(bytes))) => self.buf.extend_from_slice(&bytes),
            }
        }
    }

    /// The next `n` events, each within 10 s.
    async fn take(&mut self, n: usize) -> Vec<SseEvent> {
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            match self.next(Duration::from_secs(10)).await {
                Some(e) => out.push(e),
                None => panic!("the stream ended after {i} of {n} events"),
            }
        }
        out
    }
}

/// The message numbers of `message.created` events, in order.
fn created_numbers(events: &[SseEvent]) -> Vec<i64> {
    events
        .iter()
        .filter(|e| e.event == "message.created")
        .map(|e| e.data["number"].as_i64().unwrap())
        .collect()
}

async fn chat_with_app(app: &TestApp) -> (String, i64) {
    let token = app.create_app("live").await;
    let chat = app.create_chat(&token).await;
    (token, chat)
}

#[tokio::test]
async fn a_subscriber_sees_creates_in_order_then_an_edit_a_delete_and_the_chat_deleted() {
    let app = spawn_app().await;
    let (token, chat) = chat_with_app(&app).await;
    let before = app.create_message(&token, chat, "before").await;
    let mut sse = Sse::open(&app, &token, chat, None).await;
    for i in 1..=20 {
        app.create_message(&token, chat, &format!("body {i}")).await;
    }
    let events = sse.take(20).await;
    assert_eq!(sse.retry, Some(app.config.stream_retry_ms));
    // Only what was created after the stream opened, in number order, once.
    assert_eq!(
        created_numbers(&events),
        (before + 1..=before + 20).collect::<Vec<_>>()
    );
    assert_eq!(events[0].data["body"], "body 1");
    assert!(
        events[0].data["created_at"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(unique.len(), 20, "distinct ids: {ids:?}");

    let r = app
        .put(
            &format!("/applications/{token}/chats/{chat}/messages/{}", before + 1),
            json!({ "body": "edited" }),
        )
        .await;
    assert_eq!(r.status(), 200);
    let edit = sse.take(1).await.remove(0);
    assert_eq!(edit.event, "message.updated");
    assert_eq!(edit.data["number"], before + 1);
    assert_eq!(edit.data["body"], "edited");

    let r = app
        .delete(&format!(
            "/applications/{token}/chats/{chat}/messages/{}",
            before + 2
        ))
        .await;
    assert_eq!(r.status(), 204);
    let deleted = sse.take(1).await.remove(0);
    assert_eq!(deleted.event, "message.deleted");
    assert_eq!(deleted.data, json!({ "number": before + 2 }));

    let r = app
        .delete(&format!("/applications/{token}/chats/{chat}"))
        .await;
    assert_eq!(r.status(), 204);
    let end = sse.take(1).await.remove(0);
    assert_eq!(end.event, "chat.deleted");
    assert_eq!(end.data, json!({ "number": chat }));
    assert!(
        sse.next(Duration::from_secs(5)).await.is_none(),
        "the stream ends after chat.deleted"
    );
}

#[tokio::test]
async fn a_wrong_token_or_chat_is_404_and_a_malformed_resume_id_422() {
    let app = spawn_app().await;
    let (token, chat) = chat_with_app(&app).await;
    let r = Sse::request(&app, "no-such-token-at-all-xxxxxxxxxxx", chat, None).await;
    assert_eq!(r.status(), 404);
    assert!(r.json::<Value>().await.unwrap()["error"].is_string());
    let r = Sse::request(&app, &token, chat + 1, None).await;
    assert_eq!(r.status(), 404);
    let r = Sse::request(&app, &token, chat, Some("not an id")).await;
    assert_eq!(r.status(), 422);
    assert!(r.json::<Value>().await.unwrap()["error"].is_string());
    // An empty id is no id (the SSE spec's "last event ID" starts empty).
    let r = Sse::request(&app, &token, chat, Some("")).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn the_cap_on_streams_per_application_answers_429_and_frees_on_close() {
    // A client that left is noticed at the next write at the latest: the
    // heartbeat.
    let app = spawn_app_with(|c| {
        c.max_streams_per_application = 2;
        c.stream_heartbeat = Duration::from_secs(1);
    })
    .await;
    let (token, chat) = chat_with_app(&app).await;
    let first = Sse::open(&app, &token, chat, None).await;
    let _second = Sse::open(&app, &token, chat, None).await;
    let r = Sse::request(&app, &token, chat, None).await;
    assert_eq!(r.status(), 429);
    let why = r.json::<Value>().await.unwrap()["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(why.contains("MAX_STREAMS_PER_APPLICATION"), "{why}");
    // Another application is not counted against this one.
    let (other, other_chat) = chat_with_app(&app).await;
    let _third = Sse::open(&app, &other, other_chat, None).await;
    drop(first);
    let mut heartbeats = Sse::open(&app, &other, other_chat, None).await;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(2500);
    while let Ok(Some(Ok(b))) = tokio::time::timeout_at(deadline, heartbeats.body.next()).await {
        heartbeats.buf.extend_from_slice(&b);
    }
    let got = String::from_utf8_lossy(&heartbeats.buf);
    assert!(
        got.matches(":\n\n").count() >= 2,
        "a heartbeat comment every second: {got:?}"
    );
    assert!(
        app.eventually(Duration::from_secs(5), || async {
            Sse::request(&app, &token, chat, None).await.status() == 200
        })
        .await,
        "a closed stream frees its place"
    );
}

#[tokio::test]
async fn the_cap_on_streams_per_application_counts_every_instance() {
    // A client that left is noticed at the next heartbeat.
    let a = spawn_app_with(|c| {
        c.max_streams_per_application = 2;
        c.stream_heartbeat = Duration::from_secs(1);
    })
    .await;
    let b = spawn_config(a.config.clone(), false).await;
    let (token, chat) = chat_with_app(&a).await;
    let on_a = Sse::open(&a, &token, chat, None).await;
    let _on_b = Sse::open(&b, &token, chat, None).await;
    for app in [&a, &b] {
        let r = Sse::request(app, &token, chat, None).await;
        assert_eq!(r.status(), 429, "the third stream, on either instance");
    }
    // A closed stream frees its place for the other instance too.
    drop(on_a);
    assert!(
        b.eventually(Duration::from_secs(10), || async {
            Sse::request(&b, &token, chat, None).await.status() == 200
        })
        .await,
        "a closed stream frees its place"
    );
}

#[tokio::test]
async fn a_subscriber_on_one_instance_sees_the_creates_made_on_another() {
    let a = spawn_app().await;
    let b = spawn_config(a.config.clone(), false).await;
    let (token, chat) = chat_with_app(&a).await;
    let mut sse = Sse::open(&a, &token, chat, None).await;
    let mut made = Vec::new();
    for i in 0..50 {
        let on = if i % 2 == 0 { &b } else { &a };
        made.push(on.create_message(&token, chat, &format!("m{i}")).await);
    }
    let events = sse.take(50).await;
    assert_eq!(created_numbers(&events), made);
}

/// A subscriber that saw `n` creates and left: opens the stream of `chat`,
/// creates `n` messages (`"{prefix} {i}"`), takes their `n` events, and
/// closes the stream. The events it saw.
async fn seen_then_left(
    app: &TestApp,
    token: &str,
    chat: i64,
    n: usize,
    prefix: &str,
) -> Vec<SseEvent> {
    let mut sse = Sse::open(app, token, chat, None).await;
    for i in 0..n {
        app.create_message(token, chat, &format!("{prefix} {i}"))
            .await;
    }
    sse.take(n).await
}

#[tokio::test]
async fn a_resume_after_500_creates_and_a_flush_gets_each_event_once_in_order() {
    let app = spawn_app().await;
    let (token, chat) = chat_with_app(&app).await;
    let early = seen_then_left(&app, &token, chat, 5, "early").await;
    let last = early.last().unwrap().id.clone();
    let mut made = Vec::new();
    for i in 0..500 {
        made.push(
            app.create_message(&token, chat, &format!("while away {i}"))
                .await,
        );
    }
    app.flush().await;
    let mut sse = Sse::open(&app, &token, chat, Some(&last)).await;
    let caught_up = sse.take(500).await;
    assert_eq!(created_numbers(&caught_up), made);
    assert_eq!(caught_up[499].data["body"], "while away 499");
    // Then live, with nothing twice.
    let live = app.create_message(&token, chat, "live").await;
    let next = sse.take(1).await.remove(0);
    assert_eq!(next.event, "message.created");
    assert_eq!(next.data["number"], live);
    // `?after=` resumes as the header does.
    let r = app
        .client
        .get(app.url(&format!(
            "/applications/{token}/chats/{chat}/events?after={}",
            caught_up[498].id
        )))
        .send()
        .await
        .unwrap();
    let mut by_query = Sse::over(r);
    let two = by_query.take(2).await;
    assert_eq!(created_numbers(&two), vec![made[499], live]);
}

/// How many entries chat `chat`'s stream has had trimmed (added but no
/// longer held).
async fn trimmed(app: &TestApp, token: &str, chat: i64) -> i64 {
    let mut c = app.redis_conn().await;
    let info: redis::Value = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(app.shard(token).live_stream(token, chat))
        .query_async(&mut c)
        .await
        .unwrap();
    let fields: Vec<(String, redis::Value)> = match info {
        redis::Value::Map(kv) => kv
            .into_iter()
            .map(|(k, v)| (redis::from_redis_value(k).unwrap(), v))
            .collect(),
        redis::Value::Array(items) => items
            .chunks(2)
            .map(|kv| {
                (
                    redis::from_redis_value(kv[0].clone()).unwrap(),
                    kv[1].clone(),
                )
            })
            .collect(),
        other => panic!("XINFO: {other:?}"),
    };
    let int = |name: &str| -> i64 {
        let (_, v) = fields.iter().find(|(k, _)| k == name).expect(name);
        redis::from_redis_value(v.clone()).unwrap()
    };
    int("entries-added") - int("length")
}

#[tokio::test]
async fn a_resume_older_than_the_stream_replays_the_creates_from_mariadb_and_the_buffer() {
    // A stream that keeps about 10 events (trimmed by whole nodes of 100).
    let app = spawn_app_with(|c| c.live_stream_maxlen = 10).await;
    let (token, chat) = chat_with_app(&app).await;
    let seen = seen_then_left(&app, &token, chat, 3, "seen").await;
    let last = seen[2].id.clone();
    // Another subscriber keeps the chat watched, so that the stream records
    // (and trims) while the first is away.
    let mut watcher = Sse::open(&app, &token, chat, None).await;
    let mut made = Vec::new();
    for i in 0..300 {
        made.push(app.create_message(&token, chat, &format!("away {i}")).await);
    }
    app.flush().await;
    // Still buffered when the client comes back.
    for i in 300..450 {
        made.push(app.create_message(&token, chat, &format!("away {i}")).await);
    }
    assert_eq!(created_numbers(&watcher.take(450).await), made);
    assert!(
        trimmed(&app, &token, chat).await > 100,
        "the stream was trimmed past the resume id"
    );
    let mut sse = Sse::open(&app, &token, chat, Some(&last)).await;
    let caught_up = sse.take(450).await;
    assert!(caught_up.iter().all(|e| e.event == "message.created"));
    assert_eq!(created_numbers(&caught_up), made, "each once, in order");
    assert_eq!(caught_up[0].data["body"], "away 0");
    assert_eq!(caught_up[449].data["body"], "away 449");
    // Then live, with nothing twice.
    let live = app.create_message(&token, chat, "live").await;
    let next = sse.take(1).await.remove(0);
    assert_eq!(created_numbers(&[next]), vec![live]);
    // A resume from the middle of the replay replays the rest, once.
    let mut again = Sse::open(&app, &token, chat, Some(&caught_up[199].id)).await;
    let rest = again.take(251).await;
    let mut expected = made[200..].to_vec();
    expected.push(live);
    assert_eq!(created_numbers(&rest), expected);
}

#[tokio::test]
async fn a_resume_that_missed_an_edit_the_stream_no_longer_holds_gets_a_reset() {
    let app = spawn_app_with(|c| c.live_stream_maxlen = 10).await;
    let (token, chat) = chat_with_app(&app).await;
    let seen = seen_then_left(&app, &token, chat, 3, "seen").await;
    let last = seen[2].id.clone();
    let mut watcher = Sse::open(&app, &token, chat, None).await;
    let r = app
        .put(
            &format!("/applications/{token}/chats/{chat}/messages/1"),
            json!({ "body": "edited while away" }),
        )
        .await;
    assert_eq!(r.status(), 200);
    for i in 0..300 {
        app.create_message(&token, chat, &format!("away {i}")).await;
    }
    watcher.take(301).await;
    assert!(trimmed(&app, &token, chat).await > 100);
    let mut sse = Sse::open(&app, &token, chat, Some(&last)).await;
    let first = sse.take(1).await.remove(0);
    assert_eq!(first.event, "reset", "{first:?}");
    // Then live.
    let live = app.create_message(&token, chat, "live").await;
    assert_eq!(created_numbers(&sse.take(1).await), vec![live]);
}

#[tokio::test]
async fn a_resume_across_a_time_nothing_was_recorded_replays_the_creates_made_meanwhile() {
    let app = spawn_app().await;
    let (token, chat) = chat_with_app(&app).await;
    let seen = seen_then_left(&app, &token, chat, 2, "seen").await;
    let last = seen[1].id.clone();
    // The flag lapses (no one watched for its time to live): creates are
    // not recorded in the stream.
    let shard = app.shard(&token);
    let mut c = app.redis_conn().await;
    let _: () = c.del(shard.live_flag(&token, chat)).await.unwrap();
    let mut unrecorded = Vec::new();
    for i in 0..5 {
        unrecorded.push(
            app.create_message(&token, chat, &format!("unrecorded {i}"))
                .await,
        );
    }
    // Someone watches again: an `open` marker, then creates are recorded.
    let mut watcher = Sse::open(&app, &token, chat, None).await;
    let recorded = app.create_message(&token, chat, "recorded").await;
    assert_eq!(created_numbers(&watcher.take(1).await), vec![recorded]);
    let mut sse = Sse::open(&app, &token, chat, Some(&last)).await;
    let events = sse.take(6).await;
    assert!(
        events.iter().all(|e| e.event == "message.created"),
        "{events:?}"
    );
    let mut expected = unrecorded.clone();
    expected.push(recorded);
    assert_eq!(created_numbers(&events), expected);
    // Then live, with nothing twice (the stream's copy of `recorded`).
    let live = app.create_message(&token, chat, "live").await;
    assert_eq!(created_numbers(&sse.take(1).await), vec![live]);
    // With LIVE_REPLAY_MAX=0 the same resume gets a reset.
    let strict = spawn_app_with(|c| c.live_replay_max = 0).await;
    let (token, chat) = chat_with_app(&strict).await;
    let seen = seen_then_left(&strict, &token, chat, 1, "seen").await;
    let shard = strict.shard(&token);
    let mut c = strict.redis_conn().await;
    let _: () = c.del(shard.live_flag(&token, chat)).await.unwrap();
    strict.create_message(&token, chat, "unrecorded").await;
    let _watcher = Sse::open(&strict, &token, chat, None).await;
    let mut sse = Sse::open(&strict, &token, chat, Some(&seen[0].id)).await;
    assert_eq!(sse.take(1).await[0].event, "reset");
}

/// The entry ids of chat `chat`'s stream whose event is `kind` and whose
/// number is in `numbers`.
async fn entries_of(
    app: &TestApp,
    token: &str,
    chat: i64,
    kind: &str,
    numbers: &[i64],
) -> Vec<String> {
    let mut c = app.redis_conn().await;
    let entries: Vec<(String, std::collections::HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(app.shard(token).live_stream(token, chat))
        .arg("-")
        .arg("+")
        .query_async(&mut c)
        .await
        .unwrap();
    entries
        .into_iter()
        .filter(|(_, f)| {
            f.get("t").map(String::as_str) == Some(kind)
                && f.get("n")
                    .and_then(|n| n.parse().ok())
                    .is_some_and(|n: i64| numbers.contains(&n))
        })
        .map(|(id, _)| id)
        .collect()
}

#[tokio::test]
async fn entries_missing_from_the_stream_are_replayed_or_reset_never_skipped() {
    let app = spawn_app().await;
    let (token, chat) = chat_with_app(&app).await;
    let seen = seen_then_left(&app, &token, chat, 1, "seen").await;
    let last = seen[0].id.clone();
    let mut watcher = Sse::open(&app, &token, chat, None).await;
    let mut made = Vec::new();
    for i in 0..6 {
        made.push(app.create_message(&token, chat, &format!("m{i}")).await);
    }
    watcher.take(6).await;
    // Two creates vanish from the stream after the resume's id (as if
    // trimmed between the resume's check and its reads): the stream still
    // holds the id, so only the numbers show the gap.
    let gone = entries_of(&app, &token, chat, "message.created", &made[1..3]).await;
    assert_eq!(gone.len(), 2);
    let mut c = app.redis_conn().await;
    let shard = app.shard(&token);
    let _: i64 = redis::cmd("XDEL")
        .arg(shard.live_stream(&token, chat))
        .arg(&gone)
        .query_async(&mut c)
        .await
        .unwrap();
    let mut sse = Sse::open(&app, &token, chat, Some(&last)).await;
    let events = sse.take(6).await;
    assert!(
        events.iter().all(|e| e.event == "message.created"),
        "{events:?}"
    );
    assert_eq!(
        created_numbers(&events),
        made,
        "replayed from MariaDB, once each"
    );
    let live = app.create_message(&token, chat, "live").await;
    assert_eq!(created_numbers(&sse.take(1).await), vec![live]);

    // An edit that vanishes is shown by the next one: a reset before it.
    for body in ["first edit", "second edit", "third edit"] {
        let r = app
            .put(
                &format!("/applications/{token}/chats/{chat}/messages/{}", made[0]),
                json!({ "body": body }),
            )
            .await;
        assert_eq!(r.status(), 200);
        assert_eq!(sse.take(1).await[0].event, "message.updated");
    }
    let edits = entries_of(&app, &token, chat, "message.updated", &[made[0]]).await;
    assert_eq!(edits.len(), 3);
    let _: i64 = redis::cmd("XDEL")
        .arg(shard.live_stream(&token, chat))
        .arg(&edits[1..2])
        .query_async(&mut c)
        .await
        .unwrap();
    // A client resuming after the first edit: the second is gone.
    let mut again = Sse::open(&app, &token, chat, Some(&last)).await;
    let events = again.take(9).await;
    let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "message.created",
            "message.created",
            "message.created",
            "message.created",
            "message.created",
            "message.created",
            "message.created",
            "message.updated",
            "reset",
        ],
        "{events:?}"
    );
    let after_reset = again.take(1).await.remove(0);
    assert_eq!(after_reset.event, "message.updated");
    assert_eq!(after_reset.data["body"], "third edit");
}

#[tokio::test]
async fn a_resume_after_redis_lost_the_stream_gets_a_reset_and_nothing_twice() {
    let app = spawn_app().await;
    let (token, chat) = chat_with_app(&app).await;
    let seen = seen_then_left(&app, &token, chat, 3, "before").await;
    let last = seen[2].id.clone();
    // Redis loses the chat's stream, its generation and its flag (as a
    // restart without persistence would).
    let shard = app.shard(&token);
    let mut c = app.redis_conn().await;
    let _: () = c
        .del(&[
            shard.live_stream(&token, chat),
            shard.live_generation(&token, chat),
            shard.live_flag(&token, chat),
        ])
        .await
        .unwrap();
    let lost = app.create_message(&token, chat, "not recorded").await;
    let mut sse = Sse::open(&app, &token, chat, Some(&last)).await;
    let reset = sse.take(1).await.remove(0);
    assert_eq!(reset.event, "reset", "{reset:?}");
    assert!(reset.data["reason"].is_string());
    let after = app.create_message(&token, chat, "after").await;
    assert!(after > lost);
    let next = sse.take(1).await.remove(0);
    assert_eq!(created_numbers(&[next]), vec![after]);

    // A subscriber that stays connected while the stream is lost gets a
    // reset too, when its instance renews the chat's flag, then goes on.
    let _: () = c
        .del(&[
            shard.live_stream(&token, chat),
            shard.live_generation(&token, chat),
            shard.live_flag(&token, chat),
        ])
        .await
        .unwrap();
    let reset = sse.next(Duration::from_secs(15)).await.unwrap();
    assert_eq!(reset.event, "reset", "{reset:?}");
    let later = app.create_message(&token, chat, "later").await;
    let next = sse.take(1).await.remove(0);
    let next_id = next.id.clone();
    assert_eq!(created_numbers(&[next]), vec![later]);
    // And a resume from before the loss is told apart by its generation.
    let mut old = Sse::open(&app, &token, chat, Some(&last)).await;
    assert_eq!(old.take(1).await[0].event, "reset");
    // Even when its entry id is one the new stream holds (a restarted
    // Redis's clock can hand out the same ids again).
    let (_, entry) = next_id.split_once('-').unwrap();
    let forged = format!("0000000000000000-{entry}");
    let mut other = Sse::open(&app, &token, chat, Some(&forged)).await;
    assert_eq!(other.take(1).await[0].event, "reset");
}

#[tokio::test]
async fn a_slow_consumer_is_closed_when_its_buffer_fills() {
    let app = spawn_app_with(|c| c.live_subscriber_buffer = 8).await;
    let (token, chat) = chat_with_app(&app).await;
    let mut slow = Sse::open(&app, &token, chat, None).await;
    let mut fast = Sse::open(&app, &token, chat, None).await;
    // Bodies large enough that the sockets' buffers fill before 400 events.
    let body = "x".repeat(60_000);
    let reader = tokio::spawn(async move { fast.take(400).await.len() });
    for _ in 0..400 {
        app.create_message(&token, chat, &body).await;
    }
    assert_eq!(
        reader.await.unwrap(),
        400,
        "a reader that keeps up gets all"
    );
    assert!(
        app.eventually(Duration::from_secs(10), || async {
            metric_sum(&app.metrics_text().await, "chat_live_overflows_total") >= 1.0
        })
        .await
    );
    // The slow reader gets what was buffered for it, then the end.
    let mut got = 0;
    while slow.next(Duration::from_secs(10)).await.is_some() {
        got += 1;
    }
    assert!(got < 400, "the slow stream was cut short ({got} events)");
}

#[tokio::test]
async fn shutdown_ends_each_stream() {
    let mut app = spawn_app().await;
    let (token, chat) = chat_with_app(&app).await;
    let mut sse = Sse::open(&app, &token, chat, None).await;
    app.create_message(&token, chat, "one").await;
    sse.take(1).await;
    let stop = tokio::time::timeout(Duration::from_secs(8), app.stop());
    assert!(
        stop.await.is_ok(),
        "the open stream does not hold up shutdown"
    );
    assert!(sse.next(Duration::from_secs(5)).await.is_none());
}

#[tokio::test]
async fn no_subscriber_no_stream_in_redis() {
    let app = spawn_app().await;
    let (token, chat) = chat_with_app(&app).await;
    app.create_message(&token, chat, "nobody listens").await;
    let shard = app.shard(&token);
    let mut c = app.redis_conn().await;
    let exists: bool = c.exists(shard.live_stream(&token, chat)).await.unwrap();
    assert!(!exists, "a create with no subscriber writes no event");
}

#[tokio::test]
async fn on_a_cluster_subscribers_on_one_instance_see_the_creates_made_on_another() {
    let cluster = crate::cluster::PrivateCluster::start();
    let a = spawn_app_with(|c| c.redis_cluster_nodes = cluster.urls()).await;
    let b = spawn_config(a.config.clone(), false).await;
    // Applications on every master, so that the readers of several shards
    // (one per shard on a cluster) each deliver.
    let mut chats = Vec::new();
    let mut masters = std::collections::HashSet::new();
    for i in 0..30 {
        let token = a.create_app(&format!("c{i}")).await;
        if masters.insert(cluster.master_of(&a.shard(&token).app(&token))) || i < 3 {
            let chat = a.create_chat(&token).await;
            chats.push((token, chat));
        }
        if masters.len() == 3 && chats.len() >= 4 {
            break;
        }
    }
    assert_eq!(masters.len(), 3, "applications on every master");
    let mut streams = Vec::new();
    for (token, chat) in &chats {
        streams.push(Sse::open(&a, token, *chat, None).await);
    }
    let mut made = vec![Vec::new(); chats.len()];
    for i in 0..20 {
        for (k, (token, chat)) in chats.iter().enumerate() {
            made[k].push(b.create_message(token, *chat, &format!("m{i}")).await);
        }
    }
    for (k, sse) in streams.iter_mut().enumerate() {
        assert_eq!(created_numbers(&sse.take(20).await), made[k], "chat {k}");
    }
}

#[tokio::test]
async fn deleting_the_application_ends_its_chats_streams_with_chat_deleted() {
    let app = spawn_app().await;
    let token = app.create_app("live").await;
    let one = app.create_chat(&token).await;
    let two = app.create_chat(&token).await;
    let mut first = Sse::open(&app, &token, one, None).await;
    let mut second = Sse::open(&app, &token, two, None).await;
    let r = app.delete(&format!("/applications/{token}")).await;
    assert_eq!(r.status(), 204);
    for (sse, chat) in [(&mut first, one), (&mut second, two)] {
        let end = sse.take(1).await.remove(0);
        assert_eq!(end.event, "chat.deleted");
        assert_eq!(end.data, json!({ "number": chat }));
        assert!(sse.next(Duration::from_secs(5)).await.is_none());
    }
}
