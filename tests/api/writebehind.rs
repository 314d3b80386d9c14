//! The write-behind invariants: triggers, leases, backpressure, shutdown,
//! cold caches, dead letters, several flushers.

use std::time::Duration;

use chat_api::domain::record::MessageRecord;
use chat_api::writebehind::Kind;
use serde_json::{Value, json};

use crate::helpers::{spawn_app, spawn_app_with, spawn_config};

#[tokio::test]
async fn reaching_the_batch_size_flushes_without_the_timer() {
    let app = spawn_app_with(|c| c.message_batch_size = 10.try_into().unwrap()).await;
    let t = app.create_app("a").await;
    let c = app.create_chat(&t).await;
    for i in 0..9 {
        app.create_message(&t, c, &format!("m{i}")).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.count("messages").await,
        0,
        "below the batch size nothing is flushed"
    );
    app.create_message(&t, c, "the tenth").await;
    let flushed = app
        .eventually(Duration::from_secs(5), || async {
            app.count("messages").await == 10
        })
        .await;
    assert!(flushed, "the tenth message woke the flusher");
}

#[tokio::test]
async fn the_timer_flushes_below_the_batch_size() {
    let app = spawn_app_with(|c| c.flush_interval = Duration::from_secs(1)).await;
    let t = app.create_app("a").await;
    let c = app.create_chat(&t).await;
    app.create_message(&t, c, "only one").await;
    assert_eq!(app.count("messages").await, 0);
    let flushed = app
        .eventually(Duration::from_secs(4), || async {
            app.count("messages").await == 1
        })
        .await;
    assert!(flushed, "the one-second timer flushed the lone message");
    assert_eq!(app.count("chats").await, 1);
}

#[tokio::test]
async fn a_shard_not_flushed_for_the_max_age_is_flushed_without_the_timer() {
    // No timer to speak of, batches never full: only the age trigger can
    // store these records. Eight applications spread them over the shards.
    let app = spawn_app_with(|c| c.flush_max_age_ms = 400).await;
    let mut scopes = Vec::new();
    for i in 0..8 {
        let t = app.create_app(&format!("a{i}")).await;
        let c = app.create_chat(&t).await;
        app.create_message(&t, c, "hello").await;
        scopes.push(t);
    }
    let shards: std::collections::HashSet<u16> =
        scopes.iter().map(|t| app.shard(t).index()).collect();
    assert!(shards.len() > 1, "the records sit in several shards");
    let flushed = app
        .eventually(Duration::from_secs(5), || async {
            app.count("messages").await == 8 && app.count("chats").await == 8
        })
        .await;
    assert!(
        flushed,
        "each shard was flushed once its records had waited 400 ms"
    );
    // And the trigger keeps working for records that come later.
    let c = app.create_chat(&scopes[0]).await;
    app.create_message(&scopes[0], c, "later").await;
    let flushed = app
        .eventually(Duration::from_secs(5), || async {
            app.count("messages").await == 9
        })
        .await;
    assert!(flushed, "a later record was flushed by age too");
}

#[tokio::test]
async fn a_batch_whose_flusher_died_is_written_exactly_once_by_another() {
    let app = spawn_app().await;
    let t = app.create_app("a").await;
    let c = app.create_chat(&t).await;
    for i in 1..=20 {
        app.create_message(&t, c, &format!("m{i}")).await;
    }
    app.flusher.flush_once().await.unwrap();
    assert_eq!(app.count("messages").await, 20);
    for i in 21..=30 {
        app.create_message(&t, c, &format!("m{i}")).await;
    }

    // A "dead" flusher claims a batch with a short lease, writes half of it
    // (as if it died between COMMIT and its acknowledgement), and never acks.
    let batch = app
        .buffer
        .lease_queue()
        .claim(
            &app.shard(&t).record_queue(Kind::Messages),
            100,
            Duration::from_millis(200),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(batch.items.len(), 10);
    let records: Vec<MessageRecord> = batch
        .items
        .iter()
        .map(|r| MessageRecord::decode(r).unwrap())
        .collect();
    chat_api::store::bulk::write_messages(&app.pool, &records[..5], 0)
        .await
        .unwrap();
    assert_eq!(app.count("messages").await, 25);

    // While the lease runs, nobody else takes the batch.
    assert_eq!(app.flusher.recover_once().await.unwrap(), (0, 0));
    assert_eq!(app.flusher.flush_once().await.unwrap().written, 0);

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.flusher.recover_once().await.unwrap(), (1, 10));
    let report = app.flusher.flush_once().await.unwrap();
    assert_eq!(report.written, 10);
    // The dead flusher's late acknowledgement is refused.
    assert!(!app.buffer.lease_queue().ack(&batch, &[]).await.unwrap());

    let stored = app.stored_messages(&t, c).await;
    let expected: Vec<(i64, String)> = (1..=30).map(|i| (i, format!("m{i}"))).collect();
    assert_eq!(stored, expected, "each record exactly once");
}

#[tokio::test]
async fn a_full_buffer_answers_503_with_retry_after() {
    let app = spawn_app_with(|c| {
        c.max_pending = 5;
        c.max_pending_per_application = Some(0);
        c.queue_shards = 1;
    })
    .await;
    let t = app.create_app("a").await;
    let c = app.create_chat(&t).await;
    for i in 0..5 {
        app.create_message(&t, c, &format!("m{i}")).await;
    }
    let r = app
        .post(
            &format!("/applications/{t}/chats/{c}/messages"),
            json!({ "body": "one too many" }),
        )
        .await;
    assert_eq!(r.status(), 503);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    assert!(
        r.json::<Value>().await.unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("full")
    );

    app.flush().await;
    assert_eq!(
        app.create_message(&t, c, "room again").await,
        6,
        "no number was spent on the refused request"
    );
    app.flush().await;
    assert_eq!(app.stored_messages(&t, c).await.len(), 6);
}

#[tokio::test]
async fn shutdown_flushes_what_is_pending() {
    let mut app = spawn_app().await;
    let t = app.create_app("a").await;
    let c = app.create_chat(&t).await;
    for i in 0..50 {
        app.create_message(&t, c, &format!("m{i}")).await;
    }
    assert_eq!(app.count("messages").await, 0);
    app.stop().await;
    assert_eq!(app.count("chats").await, 1);
    assert_eq!(app.count("messages").await, 50);
}

#[tokio::test]
async fn counters_survive_a_cold_redis() {
    // Each counter restarts at its reservation: the implicit first block
    // (16) here, since neither scope reserved more (see promise.rs).
    let app = spawn_app().await;
    let t = app.create_app("a").await;
    let c1 = app.create_chat(&t).await;
    let c2 = app.create_chat(&t).await;
    for i in 1..=3 {
        app.create_message(&t, c1, &format!("m{i}")).await;
    }
    app.flush().await;
    assert_eq!(
        app.delete(&format!("/applications/{t}/chats/{c1}/messages/3"))
            .await
            .status(),
        204
    );
    assert_eq!(
        app.delete(&format!("/applications/{t}/chats/{c2}"))
            .await
            .status(),
        204
    );

    // Redis loses everything (a restart without persistence).
    app.buffer.delete_all_keys().await.unwrap();

    assert_eq!(
        app.create_message(&t, c1, "after").await,
        17,
        "restarted past the first block, which covers deleted number 3"
    );
    assert_eq!(
        app.create_chat(&t).await,
        17,
        "deleted chat 2 keeps its number"
    );
    let r = app
        .post(
            &format!("/applications/{t}/chats/{c2}/messages"),
            json!({ "body": "x" }),
        )
        .await;
    assert_eq!(r.status(), 404, "a deleted chat stays deleted");
    app.flush().await;
    assert_eq!(
        app.stored_messages(&t, c1).await.last().unwrap(),
        &(17, "after".to_string())
    );
}

#[tokio::test]
async fn an_undecodable_record_is_dead_lettered_and_does_not_block_the_queue() {
    let app = spawn_app().await;
    let t = app.create_app("a").await;
    let c = app.create_chat(&t).await;
    app.create_message(&t, c, "before").await;
    let mut conn = app.buffer.redis().get().await.unwrap().0;
    let _: () = redis::cmd("RPUSH")
        .arg(app.shard(&t).pending(Kind::Messages))
        .arg("garbage")
        .query_async(&mut conn)
        .await
        .unwrap();
    app.create_message(&t, c, "after").await;

    let report = app.flush().await;
    assert_eq!(report.dead_lettered, 1);
    assert_eq!(
        app.stored_messages(&t, c).await,
        vec![(1, "before".into()), (2, "after".into())]
    );
    let dead: Vec<String> = redis::cmd("LRANGE")
        .arg(app.shard(&t).dead_letter(Kind::Messages))
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    let entry: Value = serde_json::from_str(&dead[0]).unwrap();
    assert_eq!(entry["record"], "garbage");
    assert!(entry["reason"].as_str().unwrap().contains("undecodable"));
}

#[tokio::test]
async fn two_instances_share_the_work_without_duplicates() {
    let a = spawn_app().await;
    let mut config = a.config.clone();
    config.bind_addr = "127.0.0.1:0".parse().unwrap();
    let b = spawn_config(config, false).await;
    let t = a.create_app("shared").await;
    let c1 = a.create_chat(&t).await;
    let c2 = b.create_chat(&t).await;
    assert_eq!((c1, c2), (1, 2), "one counter across instances");

    // Both instances allocate concurrently, in two chats.
    let posts = (0..200).map(|i| {
        let app = if i % 2 == 0 { &a } else { &b };
        let chat = if i % 3 == 0 { c1 } else { c2 };
        let t = t.clone();
        async move { (chat, app.create_message(&t, chat, &format!("b{i}")).await) }
    });
    let numbers = futures::future::join_all(posts).await;
    for chat in [c1, c2] {
        let mut got: Vec<i64> = numbers
            .iter()
            .filter(|(c, _)| *c == chat)
            .map(|(_, n)| *n)
            .collect();
        got.sort();
        assert_eq!(
            got,
            (1..=got.len() as i64).collect::<Vec<_>>(),
            "gapless in chat {chat}"
        );
    }
    let (ra, rb) = tokio::join!(a.flusher.flush_once(), b.flusher.flush_once());
    let written = ra.unwrap().written + rb.unwrap().written;
    a.flush().await;
    assert!(written <= 202);
    assert_eq!(a.count("messages").await, 200);
    assert_eq!(a.count("chats").await, 2);
    let dupes: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM (SELECT chat_id, number FROM messages GROUP BY chat_id, number HAVING COUNT(*) > 1) d")
        .fetch_one(&a.pool)
        .await
        .unwrap();
    assert_eq!(dupes, 0);
}

#[tokio::test]
async fn redis_down_answers_503_promptly_and_reads_still_work() {
    let app = spawn_app().await;
    let t = app.create_app("a").await;
    let c = app.create_chat(&t).await;
    app.create_message(&t, c, "stored").await;
    app.flush().await;

    // A second instance on the same database whose Redis is unreachable.
    let mut config = app.config.clone();
    config.redis_url = "redis://127.0.0.1:1".into();
    config.redis_timeout_ms = 500;
    let down = spawn_config(config, false).await;
    let started = std::time::Instant::now();
    let r = down
        .post(
            &format!("/applications/{t}/chats/{c}/messages"),
            json!({ "body": "x" }),
        )
        .await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert!(started.elapsed() < Duration::from_secs(3), "no hang");
    assert_eq!(down.get(&format!("/applications/{t}")).await.status(), 200);
    let m: Value = down
        .get_json(&format!("/applications/{t}/chats/{c}/messages/1"))
        .await;
    assert_eq!(m["body"], "stored");
    let ready = down
        .client
        .get(format!("{}/health/ready", down.address))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let ready = app
        .client
        .get(format!("{}/health/ready", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn a_read_waiting_for_a_buffered_chat_is_404_once_its_application_is_deleted() {
    let app = spawn_app_with(|c| c.read_your_writes_timeout_ms = 20_000).await;
    // MariaDB refuses the chat, so a read of it waits for a flush that
    // cannot store it (until the timeout, or until the chat stops being on
    // its way).
    sqlx::raw_sql(
        "CREATE TRIGGER refuse_chats BEFORE INSERT ON chats FOR EACH ROW \
         SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'refused'",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let t = app.create_app("a").await;
    let c = app.create_chat(&t).await;
    let started = std::time::Instant::now();
    let path = format!("/applications/{t}/chats/{c}");
    let read = app.get(&path);
    let delete = async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        app.delete(&format!("/applications/{t}")).await
    };
    let (read, deleted) = tokio::join!(read, delete);
    assert_eq!(deleted.status(), 204);
    assert_eq!(read.status(), 404, "{:?}", read.text().await);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answered when the application went, not at the timeout: {:?}",
        started.elapsed()
    );
}

/// An application's hash of 64 fields or more (about 20 chats) is kept in
/// Redis's hashtable encoding from its next batch of creates on (the field
/// `h`, see `chat_api::writebehind::enqueue`'s BATCH), also when it was a
/// listpack before (a hash written by an earlier version): each field a
/// create reads is then an O(1) lookup, not a scan of the listpack. A
/// smaller hash stays a listpack (a hashtable's fixed cost is not worth it
/// there). Numbers go on as before. Fails without the hint (`listpack`
/// throughout) or with it written to every hash (`hashtable` at first).
#[tokio::test]
async fn an_application_hash_is_kept_as_a_hashtable() {
    let app = spawn_app().await;
    let t = app.create_app("a").await;
    let key = app.shard(&t).app(&t);
    let mut r = app.redis_conn().await;
    let encoding = |mut r: redis::aio::MultiplexedConnection, key: String| async move {
        redis::cmd("OBJECT")
            .arg("ENCODING")
            .arg(key)
            .query_async::<String>(&mut r)
            .await
            .unwrap()
    };
    let c = app.create_chat(&t).await;
    assert_eq!(app.create_message(&t, c, "one").await, 1);
    assert_eq!(
        encoding(r.clone(), key.clone()).await,
        "listpack",
        "a small application's hash"
    );
    for n in 2..=35 {
        assert_eq!(app.create_chat(&t).await, n);
    }
    assert_eq!(app.create_message(&t, c, "two").await, 2);
    assert_eq!(encoding(r.clone(), key.clone()).await, "hashtable");

    // A hash as an earlier version left it: the same fields, no hint.
    let fields: Vec<(String, String)> = redis::AsyncCommands::hgetall(&mut r, &key).await.unwrap();
    let _: () = redis::AsyncCommands::del(&mut r, &key).await.unwrap();
    let kept: Vec<(String, String)> = fields.into_iter().filter(|(f, _)| f != "h").collect();
    assert!(kept.len() >= 64, "{} fields", kept.len());
    let _: () = redis::AsyncCommands::hset_multiple(&mut r, &key, &kept)
        .await
        .unwrap();
    assert_eq!(encoding(r.clone(), key.clone()).await, "listpack");
    assert_eq!(app.create_message(&t, c, "three").await, 3);
    assert_eq!(encoding(r.clone(), key.clone()).await, "hashtable");
    assert_eq!(app.create_chat(&t).await, 36);
}
