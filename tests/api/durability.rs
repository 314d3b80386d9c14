//! `REDIS_DURABILITY`: `replica` answers 201 only once a replica has the
//! write (503 when none confirms it in time); `fsync` refuses to start on a
//! Redis that does not fsync every write.

use std::time::{Duration, Instant};

use chat_api::config::Durability;

use crate::helpers::{PrivateRedis, TestApp, post_with_key, spawn_app_with, test_config};

/// POSTs `body` as the not-replicated 503 tells a client to: on that 503,
/// again with the same `Idempotency-Key`, up to 20 times. A loaded machine
/// can miss a 300 ms `REDIS_WAIT_MS` on a healthy replica; the tests that
/// use this are about the stopped replica, not the healthy one. Returns the
/// created record's `number`.
async fn create_confirmed(app: &TestApp, path: &str, body: serde_json::Value) -> i64 {
    let key = format!("setup-{}", uuid::Uuid::new_v4());
    for _ in 0..20 {
        let r = post_with_key(app, &app.address, path, &key, body.clone()).await;
        if r.status() == 201 {
            return r.json::<serde_json::Value>().await.unwrap()["number"]
                .as_i64()
                .unwrap();
        }
        let (status, text) = (r.status(), r.text().await.unwrap());
        assert!(
            status == 503 && text.contains("replica"),
            "{status}: {text}"
        );
    }
    panic!("no replica confirmed {path} in 20 tries");
}

/// Waits until `primary` reports `n` replicas, all online (synced).
async fn replicas(primary: &PrivateRedis, n: usize) {
    let mut c = crate::helpers::redis_connection(&primary.url()).await;
    for _ in 0..400 {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut c)
            .await
            .unwrap();
        if info.contains(&format!("connected_slaves:{n}"))
            && info.matches("state=online").count() == n
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the primary never had {n} replicas");
}

#[tokio::test]
async fn replica_durability_answers_201_only_once_a_replica_has_the_write() {
    // Diskless sync waits 5 s by default for more replicas to come along:
    // the first sync would take as long as `replicas` waits.
    let primary = PrivateRedis::start_with(&[
        "--maxmemory-policy",
        "noeviction",
        "--repl-diskless-sync-delay",
        "0",
    ])
    .await;
    let replica =
        PrivateRedis::start_with(&["--replicaof", "127.0.0.1", &primary.port.to_string()]).await;
    replicas(&primary, 1).await;
    let app = spawn_app_with(|c| {
        c.redis_url = primary.url();
        c.redis_durability = Durability::Replica;
        // Long enough for a loaded machine's replica to acknowledge.
        c.redis_wait_ms = 1000;
    })
    .await;
    let token = app.create_app("replicated").await;
    let chat = app.create_chat(&token).await;
    assert_eq!(app.create_message(&token, chat, "on two servers").await, 1);

    drop(replica);
    replicas(&primary, 0).await;
    let started = Instant::now();
    let r = app
        .post(
            &format!("/applications/{token}/chats/{chat}/messages"),
            serde_json::json!({"body": "on one server only"}),
        )
        .await;
    let elapsed = started.elapsed();
    assert_eq!(r.status(), 503, "no replica confirmed it");
    assert!(r.headers().contains_key("retry-after"));
    let text = r.text().await.unwrap();
    assert!(text.contains("replica"), "the not-replicated 503: {text}");
    // Redis times WAIT on its millisecond clock (an absolute deadline in
    // whole ms), so it can answer up to a millisecond early: seen, 999.3 ms.
    assert!(
        elapsed >= Duration::from_millis(990),
        "it waited REDIS_WAIT_MS: {elapsed:?}, {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_its_replica_stopped_replica_durability_answers_in_time_and_blocks_nobody() {
    let primary = PrivateRedis::start_with(&["--repl-diskless-sync-delay", "0"]).await;
    let replica =
        PrivateRedis::start_with(&["--replicaof", "127.0.0.1", &primary.port.to_string()]).await;
    replicas(&primary, 1).await;
    let app = std::sync::Arc::new(
        spawn_app_with(|c| {
            c.redis_url = primary.url();
            c.redis_durability = Durability::Replica;
            c.redis_wait_ms = 300;
        })
        .await,
    );
    let token = app.create_app("group commit").await;
    let chat = create_confirmed(
        &app,
        &format!("/applications/{token}/chats"),
        serde_json::json!({}),
    )
    .await;
    let path = format!("/applications/{token}/chats/{chat}/messages");
    let first = create_confirmed(&app, &path, serde_json::json!({ "body": "replicated" })).await;
    assert_eq!(first, 1);
    app.flush().await;

    // The replica hangs: it neither answers nor drops the link.
    replica.signal("STOP");
    let creates: Vec<_> = (0..20)
        .map(|i| {
            let (app, token) = (app.clone(), token.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let r = app
                    .post(
                        &format!("/applications/{token}/chats/{chat}/messages"),
                        serde_json::json!({ "body": format!("unconfirmed {i}") }),
                    )
                    .await;
                (
                    r.status().as_u16(),
                    r.text().await.unwrap(),
                    started.elapsed(),
                )
            })
        })
        .collect();
    // Meanwhile a read goes on, unblocked, and a flush answers in time: it
    // writes nothing to MariaDB that no replica confirmed (a failover
    // could then drop the records' numbers and keys from Redis); the shard
    // is tried again next pass.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    let read = app
        .get(&format!("/applications/{token}/chats/{chat}/messages/1"))
        .await;
    let read_took = started.elapsed();
    let started = Instant::now();
    let flushed = app.flusher.flush_once().await;
    let flush_took = started.elapsed();
    assert!(
        matches!(flushed, Ok(ref r) if r.written == 0),
        "a flush with no replica writes nothing: {flushed:?}"
    );
    let mut slowest = Duration::ZERO;
    for c in creates {
        let (status, body, took) = c.await.unwrap();
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("replica"), "the not-replicated 503: {body}");
        slowest = slowest.max(took);
    }
    replica.signal("CONT");
    eprintln!(
        "replica stopped: 20 creates answered 503 within {slowest:?}; a read took {read_took:?}, a flush {flush_took:?}"
    );
    assert!(
        slowest < Duration::from_millis(300 + 100),
        "each within REDIS_WAIT_MS + 100 ms: {slowest:?}"
    );
    assert_eq!(read.status(), 200);
    assert!(read_took < Duration::from_millis(200), "{read_took:?}");
    assert!(flush_took < Duration::from_millis(500), "{flush_took:?}");
    // The connections are fine: once the replica is back, 201 again, and
    // the flush writes what the replica now has.
    replicas(&primary, 1).await;
    create_confirmed(
        &app,
        &path,
        serde_json::json!({ "body": "confirmed again" }),
    )
    .await;
    let report = app.flush().await;
    assert!(report.written >= 1, "{report:?}");
}

#[tokio::test]
async fn fsync_durability_refuses_a_redis_that_does_not_fsync_every_write() {
    let lazy =
        PrivateRedis::start_with(&["--appendonly", "yes", "--appendfsync", "everysec"]).await;
    let mut config = test_config();
    config.redis_url = lazy.url();
    config.redis_durability = Durability::Fsync;
    let refused = chat_api::startup::Application::build(config, true).await;
    let err = format!("{:#}", refused.err().expect("start-up is refused"));
    assert!(err.contains("appendfsync always"), "{err}");

    let strict =
        PrivateRedis::start_with(&["--appendonly", "yes", "--appendfsync", "always"]).await;
    let app = spawn_app_with(|c| {
        c.redis_url = strict.url();
        c.redis_durability = Durability::Fsync;
    })
    .await;
    let token = app.create_app("fsynced").await;
    assert_eq!(app.create_chat(&token).await, 1);
}
