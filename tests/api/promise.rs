//! The promise when Redis loses data: a counter that comes back too low is
//! raised before it hands out a number MariaDB has, and a record that still
//! lands on a taken number is a collision (dead-lettered, counted), never a
//! silent "written".

use chat_api::writebehind::Kind;
use redis::AsyncCommands;
use serde_json::Value;

use crate::helpers::{TestApp, spawn_app};

/// `applications.id` of `token`.
pub(crate) async fn app_id(app: &TestApp, token: &str) -> u64 {
    sqlx::query_scalar("SELECT id FROM applications WHERE token = ?")
        .bind(token)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// `created_at` of message `number` of application `id`, in µs.
async fn created_us(app: &TestApp, id: u64, number: i64) -> i64 {
    sqlx::query_scalar(
        "SELECT CAST(UNIX_TIMESTAMP(m.created_at) * 1000000 AS SIGNED) FROM messages m \
         JOIN chats c ON c.id = m.chat_id WHERE c.application_id = ? AND m.number = ?",
    )
    .bind(id)
    .bind(number)
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

/// The dead-letter entries of the messages queue, as JSON.
async fn dead_messages(app: &TestApp) -> Vec<Value> {
    let mut c = app.redis_conn().await;
    let mut raw: Vec<String> = Vec::new();
    for shard in app.buffer.keys().shards() {
        let entries: Vec<String> = c
            .lrange(shard.dead_letter(Kind::Messages), 0, -1)
            .await
            .unwrap();
        raw.extend(entries);
    }
    raw.iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect()
}

/// The value of `chat_collisions_total{queue="messages"}` in `/metrics`
/// (0 when absent). The recorder is per process, so callers compare deltas.
async fn collisions_metric(app: &TestApp) -> f64 {
    app.metrics_text()
        .await
        .lines()
        .find(|l| l.starts_with("chat_collisions_total{queue=\"messages\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_record_on_a_taken_number_is_a_collision_and_a_replay_is_silent() {
    let app = spawn_app().await;
    let token = app.create_app("collisions").await;
    let chat = app.create_chat(&token).await;
    for body in ["one", "two"] {
        app.create_message(&token, chat, body).await;
    }
    app.flush().await;
    let id = app_id(&app, &token).await;
    let created_2 = created_us(&app, id, 2).await;
    let before = collisions_metric(&app).await;

    // As if Redis had handed out 2 again (another body, another time), and
    // as if a flusher replayed the stored record 2 (same body, same time).
    let pending = app.shard(&token).pending(Kind::Messages);
    let mut c = app.redis_conn().await;
    let _: () = c
        .rpush(
            &pending,
            vec![
                format!("{id}\t{chat}\t2\t{}\tan impostor", created_2 + 1234),
                format!("{id}\t{chat}\t2\t{created_2}\ttwo"),
            ],
        )
        .await
        .unwrap();
    let report = app.flush().await;
    assert_eq!(
        report.written, 1,
        "the replay counts as written: {report:?}"
    );
    assert_eq!(report.dead_lettered, 1, "the impostor does not: {report:?}");
    assert_eq!(
        app.stored_messages(&token, chat).await,
        [(1, "one".to_string()), (2, "two".to_string())],
        "the stored record is untouched"
    );
    let dead = dead_messages(&app).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["reason"], "collision");
    assert!(dead[0]["record"].as_str().unwrap().ends_with("an impostor"));
    assert!(collisions_metric(&app).await >= before + 1.0);

    // A stored message edited since (PUT) and then replayed is no collision.
    let r = app
        .put(
            &format!("/applications/{token}/chats/{chat}/messages/1"),
            serde_json::json!({"body": "one, edited"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let created_1 = created_us(&app, id, 1).await;
    let _: () = c
        .rpush(&pending, format!("{id}\t{chat}\t1\t{created_1}\tone"))
        .await
        .unwrap();
    let report = app.flush().await;
    assert_eq!((report.written, report.dead_lettered), (1, 0), "{report:?}");
    assert_eq!(dead_messages(&app).await.len(), 1);
}

/// GET of message `n` of `chat`: its status and error text, and whether it
/// answered at once (well within `READ_YOUR_WRITES_TIMEOUT_MS`).
async fn lookup(app: &TestApp, token: &str, chat: i64, n: i64) -> (u16, String, bool) {
    let started = std::time::Instant::now();
    let r = app
        .get(&format!("/applications/{token}/chats/{chat}/messages/{n}"))
        .await;
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or_default();
    let error = body["error"].as_str().unwrap_or_default().to_string();
    (
        status,
        error,
        started.elapsed() < std::time::Duration::from_secs(2),
    )
}

/// The scope's reserved high-water mark in MariaDB (16 when it has no row).
async fn reserved_to(app: &TestApp, token: &str, chat_number: i64) -> i64 {
    let id = app_id(app, token).await;
    chat_api::store::numbering::reserved_to(&app.pool, id, chat_number)
        .await
        .unwrap()
}

#[tokio::test]
async fn counters_that_come_back_too_low_restart_at_their_reservation() {
    let app = crate::helpers::spawn_app_with(|c| {
        c.read_your_writes_timeout_ms = 5_000;
    })
    .await;
    let token = app.create_app("lost counters").await;
    let chat = app.create_chat(&token).await;
    for body in ["one", "two", "three"] {
        app.create_message(&token, chat, body).await;
    }
    let second = app.create_chat(&token).await;
    assert_eq!(second, 2);
    app.flush().await;
    // Redis "loses" the last writes: the counters go back, and the epoch key
    // is gone (as after a restart from an older snapshot of a fresh Redis).
    let key = app.shard(&token).app(&token);
    let mut c = app.redis_conn().await;
    let _: () = c.hset(&key, chat.to_string(), 1).await.unwrap();
    let _: () = c.hset(&key, "chats", 1).await.unwrap();
    let _: () = c.del(app.shard(&token).epoch()).await.unwrap();

    // Each scope may have handed out its whole first block (16) before the
    // loss, so each restarts there: nothing at or below it is handed out again.
    assert_eq!(app.create_message(&token, chat, "after").await, 17);
    assert_eq!(app.create_chat(&token).await, 17);
    // The restart reserved the next block before handing out 17.
    assert!(reserved_to(&app, &token, chat).await >= 17);
    assert!(reserved_to(&app, &token, 0).await >= 17);
    // A lookup in the gap answers 404 at once, and says why.
    for n in [2, 4, 10, 16] {
        let (status, error, at_once) = lookup(&app, &token, chat, n).await;
        if n == 2 {
            assert_eq!(status, 200, "stored before the loss: found");
            continue;
        }
        assert_eq!(status, 404, "{n}: {error}");
        assert!(error.contains("skipped"), "{n}: {error}");
        assert!(
            at_once,
            "{n}: at once, not after READ_YOUR_WRITES_TIMEOUT_MS"
        );
    }
    // Outside the gap, as before.
    let (status, error, _) = lookup(&app, &token, chat, 18).await;
    assert_eq!(status, 404);
    assert!(!error.contains("skipped"), "{error}");
    app.flush().await;
    assert_eq!(
        app.stored_messages(&token, chat).await,
        [
            (1, "one".to_string()),
            (2, "two".to_string()),
            (3, "three".to_string()),
            (17, "after".to_string())
        ]
    );
    assert!(dead_messages(&app).await.is_empty(), "no collision");
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains("chat_numbers_skipped_total{scope=\"messages\"}"),
        "the skipped numbers are counted"
    );

    // A raised epoch (a restart, a failover) restarts again, at the bound
    // reserved since, and a chat that MariaDB has deleted stays deleted even
    // if Redis forgot it.
    let r = app
        .delete(&format!("/applications/{token}/chats/{second}"))
        .await;
    assert_eq!(r.status(), 204);
    let _: () = c.hset(&key, second.to_string(), 0).await.unwrap();
    let _: () = c
        .hincr(app.shard(&token).epoch(), "epoch", 1)
        .await
        .unwrap();
    let r = app
        .post(
            &format!("/applications/{token}/chats/{second}/messages"),
            serde_json::json!({"body": "to a deleted chat"}),
        )
        .await;
    assert_eq!(r.status(), 404);
    let bound = reserved_to(&app, &token, chat).await;
    assert_eq!(app.create_message(&token, chat, "five").await, bound + 1);
    let (status, error, at_once) = lookup(&app, &token, chat, bound).await;
    assert_eq!((status, at_once), (404, true), "{error}");
    assert!(error.contains("skipped"), "{error}");
}

#[tokio::test]
async fn a_hot_chat_reserves_blocks_ahead_and_few_of_them() {
    let app = crate::helpers::spawn_app().await;
    let token = app.create_app("hot").await;
    let chat = app.create_chat(&token).await;
    let mut last = 0;
    for i in 0..600 {
        last = app.create_message(&token, chat, &format!("m{i}")).await;
    }
    assert_eq!(last, 600, "gapless while Redis keeps its writes");
    // Reserved ahead in the background: the bound runs before the counter.
    assert!(
        app.eventually(std::time::Duration::from_secs(5), || async {
            reserved_to(&app, &token, chat).await > 600
        })
        .await,
        "the next block is reserved before the bound is used up"
    );
    let reserved = reserved_to(&app, &token, chat).await;
    assert!(
        reserved <= 600 + 2048,
        "at most one block (NUMBER_BLOCK_MAX) ahead: {reserved}"
    );
}

#[tokio::test]
async fn a_promoted_replica_is_rechecked_on_its_first_create_not_at_the_next_periodic_check() {
    // A replica promoted by a failover has the epoch hash (replicated, or
    // copied by a full resync, with the old master's run_id) and may lack
    // the old master's last increments. The enqueue script compares the
    // recorded run_id with its server's own on every create.
    let app = crate::helpers::spawn_app().await;
    let token = app.create_app("promoted").await;
    let chat = app.create_chat(&token).await;
    for body in ["one", "two"] {
        app.create_message(&token, chat, body).await;
    }
    app.flush().await;
    let shard = app.shard(&token);
    let mut c = app.redis_conn().await;
    let _: () = c
        .hset(
            shard.epoch(),
            "run_id",
            "0000000000000000000000000000000000000000",
        )
        .await
        .unwrap();
    let _: () = c
        .hset(shard.app(&token), chat.to_string(), 1)
        .await
        .unwrap();

    // At once (the periodic check runs every 2 s): the counter restarts at
    // its reservation, the implicit first block.
    assert_eq!(app.create_message(&token, chat, "after").await, 17);
    app.flush().await;
    assert_eq!(
        app.stored_messages(&token, chat).await,
        [
            (1, "one".to_string()),
            (2, "two".to_string()),
            (17, "after".to_string())
        ]
    );
    assert!(dead_messages(&app).await.is_empty(), "no collision");
}

#[tokio::test]
async fn a_deferred_message_is_aged_from_its_first_deferral_not_its_creation() {
    let app = crate::helpers::spawn_app_with(|c| {
        c.orphan_max_age = std::time::Duration::from_secs(1);
    })
    .await;
    let token = app.create_app("backlog").await;
    let id = app_id(&app, &token).await;
    // A message created two hours ago (it waited out a MariaDB outage) whose
    // chat is not stored yet.
    let two_hours_ago = chat_api::writebehind::now_ms() - 2 * 3600 * 1000;
    let mut c = app.redis_conn().await;
    let _: () = c
        .rpush(
            app.shard(&token).pending(Kind::Messages),
            format!("{id}\t5\t1\t{two_hours_ago}\tfrom the backlog"),
        )
        .await
        .unwrap();
    let first = app.flusher.flush_once().await.unwrap();
    assert_eq!(
        (first.deferred, first.dead_lettered),
        (1, 0),
        "deferred, not dead-lettered on arrival: {first:?}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let later = app.flusher.flush_once().await.unwrap();
    assert_eq!(
        later.dead_lettered, 1,
        "dead-lettered once deferred for ORPHAN_MAX_AGE: {later:?}"
    );
    let dead = dead_messages(&app).await;
    assert!(
        dead[0]["reason"]
            .as_str()
            .unwrap()
            .contains("never reached the database")
    );
}

#[tokio::test]
async fn a_lookup_of_a_dead_lettered_number_answers_at_once_and_says_why() {
    let app = spawn_app().await;
    sqlx::raw_sql(
        "CREATE TRIGGER refuse_poison BEFORE INSERT ON messages FOR EACH ROW \
         IF NEW.body = 'poison' THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'poison refused'; END IF",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let token = app.create_app("lost numbers").await;
    let chat = app.create_chat(&token).await;
    app.create_message(&token, chat, "fine").await;
    let poisoned = app.create_message(&token, chat, "poison").await;
    let report = app.flush().await;
    assert_eq!(report.dead_lettered, 1, "{report:?}");

    let path = format!("/applications/{token}/chats/{chat}/messages/{poisoned}");
    for method in [
        reqwest::Method::GET,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
    ] {
        let started = std::time::Instant::now();
        let r = app
            .client
            .request(method.clone(), app.url(&path))
            .json(&serde_json::json!({"body": "edited"}))
            .send()
            .await
            .unwrap();
        assert!(
            started.elapsed()
                < std::time::Duration::from_millis(app.config.read_your_writes_timeout_ms / 2),
            "{method} answered at once, not after READ_YOUR_WRITES_TIMEOUT_MS: {:?}",
            started.elapsed()
        );
        assert_eq!(r.status(), 404, "{method}");
        let error = r.json::<Value>().await.unwrap()["error"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            error.contains("dead-letter") && error.contains("poison refused"),
            "{error}"
        );
    }

    // Once the cause is fixed and the operator replays it, it is found.
    sqlx::raw_sql("DROP TRIGGER refuse_poison")
        .execute(&app.pool)
        .await
        .unwrap();
    let replayed = app
        .buffer
        .replay_dead_letters(chat_api::writebehind::Kind::Messages, None)
        .await
        .unwrap();
    assert_eq!(replayed.count, 1);
    let r = app.get(&path).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["body"], "poison");
}
