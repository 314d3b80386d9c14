//! Backpressure on memory: `MAX_PENDING_BYTES`, and a Redis whose
//! `maxmemory` is reached (`noeviction`): creation answers 503, the flusher
//! still drains (its scripts run with `allow-oom`, and the dirty marks and
//! index updates are part of the acknowledgement), and creation resumes.
//! Load shedding past `PENDING_HIGH_WATER`: a growing share of 503s before
//! `MAX_PENDING` is reached.

use serde_json::json;

use crate::helpers::{PrivateRedis, TestApp, spawn_app_with};

/// Posts messages of `size` bytes until one is refused (at most `max`
/// tries); returns the numbers acknowledged and the refusal's status and
/// `Retry-After`.
async fn fill(app: &TestApp, token: &str, size: usize, max: usize) -> (Vec<i64>, u16, bool) {
    let mut numbers = Vec::new();
    for i in 0..max {
        let mut body = format!("{i:08} ");
        body.push_str(&"x".repeat(size));
        let r = app
            .post(
                &format!("/applications/{token}/chats/1/messages"),
                json!({ "body": body }),
            )
            .await;
        if r.status() != 201 {
            let retry = r.headers().contains_key("retry-after");
            return (numbers, r.status().as_u16(), retry);
        }
        numbers.push(
            r.json::<serde_json::Value>().await.unwrap()["number"]
                .as_i64()
                .unwrap(),
        );
    }
    panic!("{max} messages of {size} bytes were all accepted");
}

#[tokio::test]
async fn max_pending_bytes_refuses_creation_until_the_flush_drains() {
    let app = spawn_app_with(|c| {
        // One shard: the whole limit is one list's.
        c.queue_shards = 1;
        c.max_pending_bytes = 64 * 1024;
    })
    .await;
    let token = app.create_app("bytes").await;
    app.create_chat(&token).await;
    let (numbers, status, retry) = fill(&app, &token, 2000, 1000).await;
    assert_eq!((status, retry), (503, true));
    assert!(
        (10..=60).contains(&numbers.len()),
        "about 64 KiB of 2 KB messages: {}",
        numbers.len()
    );
    app.flush().await;
    assert_eq!(app.stored_messages(&token, 1).await.len(), numbers.len());
    assert_eq!(
        app.create_message(&token, 1, "room again").await,
        numbers.len() as i64 + 1
    );
}

#[tokio::test]
async fn max_pending_bytes_counts_every_byte_not_a_sample_of_the_list_head() {
    // Many small messages at the head of the list, then large ones: a
    // sampled estimate of the list's memory sees only the small ones. The
    // exact count refuses within 10% of the limit, and every 201 is stored.
    const LIMIT: u64 = 4 << 20;
    let app = spawn_app_with(|c| {
        c.queue_shards = 1;
        c.max_pending_bytes = LIMIT;
        c.max_pending_per_application = Some(0);
    })
    .await;
    let token = app.create_app("exact bytes").await;
    app.create_chat(&token).await;
    let path = format!("/applications/{token}/chats/1/messages");
    let small = futures::future::join_all(
        (0..3000).map(|i| app.post(&path, json!({ "body": format!("small {i}") }))),
    )
    .await;
    assert!(small.iter().all(|r| r.status() == 201));
    let (large, status, retry) = fill(&app, &token, 65_000, 1000).await;
    assert_eq!((status, retry), (503, true));
    let usage: std::collections::HashMap<String, u64> = {
        let mut c = app.redis_conn().await;
        redis::AsyncCommands::hgetall(&mut c, app.shard(&token).usage())
            .await
            .unwrap()
    };
    let queued = usage["bytes:messages"];
    assert!(
        queued <= LIMIT && queued as f64 >= 0.9 * LIMIT as f64,
        "refused within 10% of the limit: {queued} of {LIMIT} bytes, {} large messages",
        large.len()
    );
    let messages = app.buffer.inspect().await.unwrap()[1].clone();
    assert_eq!(
        (messages.queue, messages.pending_bytes),
        (chat_api::writebehind::Kind::Messages, queued),
        "/admin/queues and /metrics report the same count"
    );
    app.flush().await;
    assert_eq!(
        app.stored_messages(&token, 1).await.len(),
        3000 + large.len(),
        "nothing acknowledged is lost"
    );
    let mut c = app.redis_conn().await;
    let left: std::collections::HashMap<String, u64> =
        redis::AsyncCommands::hgetall(&mut c, app.shard(&token).usage())
            .await
            .unwrap();
    assert!(
        left.is_empty(),
        "every byte and record counted out: {left:?}"
    );
}

#[tokio::test]
async fn one_application_can_fill_the_whole_buffer_over_every_shard() {
    // 16 shards (the default): the limit is the total, not a sixteenth.
    let app = spawn_app_with(|c| {
        c.max_pending = 400;
        c.max_pending_per_application = Some(0);
        c.pending_high_water = 400;
    })
    .await;
    let token = app.create_app("alone").await;
    app.create_chat(&token).await;
    let (numbers, status, _) = fill(&app, &token, 10, 1000).await;
    assert_eq!(status, 503);
    assert_eq!(numbers.len(), 400, "the whole MAX_PENDING, in one shard");
}

#[tokio::test]
async fn a_hot_application_is_capped_while_another_goes_on() {
    let app = spawn_app_with(|c| {
        c.max_pending = 10_000;
        c.max_pending_per_application = Some(50);
    })
    .await;
    let hot = app.create_app("hot").await;
    let calm = app.create_app("calm").await;
    app.create_chat(&hot).await;
    app.create_chat(&calm).await;
    let r = loop {
        let r = app
            .post(
                &format!("/applications/{hot}/chats/1/messages"),
                json!({ "body": "again" }),
            )
            .await;
        if r.status() != 201 {
            break r;
        }
    };
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let error = r.json::<serde_json::Value>().await.unwrap()["error"].to_string();
    assert!(error.contains("MAX_PENDING_PER_APPLICATION"), "{error}");
    assert_eq!(
        app.stored_messages(&hot, 1).await.len() + app.count("messages").await as usize,
        0,
        "nothing flushed yet"
    );
    for i in 0..20 {
        app.create_message(&calm, 1, &format!("still open {i}"))
            .await;
    }
    app.flush().await;
    assert_eq!(
        app.stored_messages(&hot, 1).await.len(),
        49,
        "the cap counts the chat and its messages: 50 records"
    );
    assert_eq!(
        app.create_message(&hot, 1, "room again").await,
        50,
        "the flush counted them out"
    );
}

#[tokio::test]
async fn a_full_redis_refuses_creation_but_still_drains() {
    let redis =
        PrivateRedis::start_with(&["--maxmemory", "4mb", "--maxmemory-policy", "noeviction"]).await;
    let app = spawn_app_with(|c| {
        c.redis_url = redis.url();
        c.max_pending_bytes = 0;
        c.redis_timeout_ms = 1000;
        c.queue_shards = 1;
    })
    .await;
    let token = app.create_app("full").await;
    app.create_chat(&token).await;
    let (numbers, status, retry) = fill(&app, &token, 8000, 5000).await;
    assert_eq!(
        (status, retry),
        (503, true),
        "Redis is full: creation is refused"
    );
    assert!(
        numbers.len() > 50,
        "{} accepted before Redis was full",
        numbers.len()
    );

    // The flusher drains a full Redis: claim, write, acknowledge (with the
    // dirty marks for the counts refresh) all go through.
    let report = app.flush().await;
    assert_eq!(report.written, numbers.len() as u64 + 1, "{report:?}");
    assert_eq!(app.flusher.pending().await.unwrap(), 0);
    assert_eq!(app.stored_messages(&token, 1).await.len(), numbers.len());
    // Creation resumes once drained, and the counts were marked.
    assert_eq!(
        app.create_message(&token, 1, "room again").await,
        numbers.len() as i64 + 1
    );
    app.counts.refresh_counts_once().await.unwrap();
    let chat: serde_json::Value = app
        .get_json(&format!("/applications/{token}/chats/1"))
        .await;
    assert_eq!(chat["messages_count"], numbers.len() as i64);
}

#[tokio::test]
async fn past_the_high_water_mark_a_growing_share_is_shed_before_the_cliff() {
    let app = spawn_app_with(|c| {
        c.max_pending = 200;
        c.max_pending_per_application = Some(0);
        c.queue_shards = 1;
        c.pending_high_water = 20;
    })
    .await;
    let token = app.create_app("shed").await;
    app.create_chat(&token).await;
    let path = format!("/applications/{token}/chats/1/messages");
    let (mut numbers, mut shed) = (Vec::new(), 0);
    for i in 0..150 {
        let r = app.post(&path, json!({ "body": format!("m{i}") })).await;
        match r.status().as_u16() {
            201 => numbers.push(
                r.json::<serde_json::Value>().await.unwrap()["number"]
                    .as_i64()
                    .unwrap(),
            ),
            503 => {
                assert!(r.headers().contains_key("retry-after"));
                let body: serde_json::Value = r.json().await.unwrap();
                assert!(
                    body["error"]
                        .as_str()
                        .unwrap()
                        .contains("PENDING_HIGH_WATER"),
                    "{body}"
                );
                assert!(numbers.len() > 20, "nothing is shed below the mark");
                shed += 1;
            }
            s => panic!("status {s}"),
        }
    }
    assert!(shed > 0, "some creates were shed");
    assert!(
        numbers.len() < 200,
        "the queue never reached MAX_PENDING: the bend came before the cliff"
    );
    let expected: Vec<i64> = (1..=numbers.len() as i64).collect();
    assert_eq!(numbers, expected, "a shed create allocates no number");
    assert!(
        app.metrics_text()
            .await
            .lines()
            .any(|l| l.starts_with("chat_load_shed_total") && !l.ends_with(" 0")),
        "the shed creates are counted"
    );

    // Once the flusher drains the queue, creation goes back to normal.
    app.flush().await;
    assert_eq!(app.stored_messages(&token, 1).await.len(), numbers.len());
    let mut first = None;
    for _ in 0..100 {
        let r = app.post(&path, json!({ "body": "after" })).await;
        if r.status() == 201 {
            first = Some(());
            break;
        }
    }
    assert!(first.is_some(), "a create got through after the drain");
    for _ in 0..20 {
        assert_eq!(
            app.post(&path, json!({ "body": "after" })).await.status(),
            201
        );
    }
}
