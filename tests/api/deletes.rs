//! Deletes that race creates: the Redis tombstone comes first, so nothing is
//! acknowledged in a deleted chat or application after its delete answers,
//! and a delete that cannot tombstone deletes nothing.

use std::sync::Arc;
use std::time::Instant;

use serde_json::json;

use crate::helpers::{spawn_app, spawn_app_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_create_sent_after_a_chat_delete_answered_is_acknowledged() {
    let app = Arc::new(spawn_app().await);
    let token = app.create_app("racing deletes").await;
    let chat = app.create_chat(&token).await;
    let keep = app.create_chat(&token).await;
    app.create_message(&token, chat, "stored before").await;
    app.flush().await;

    let started = Instant::now();
    // Each writer goes on until it sent 50 creates after the delete was
    // answered (however fast the machine), and at least 150.
    let deleted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (app, token, deleted) = (app.clone(), token.clone(), deleted.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut since_delete = 0;
                for i in 0..100_000 {
                    if deleted.load(std::sync::atomic::Ordering::SeqCst) {
                        since_delete += 1;
                        if since_delete > 50 && i >= 150 {
                            break;
                        }
                    }
                    let sent = started.elapsed();
                    let r = app
                        .post(
                            &format!("/applications/{token}/chats/{chat}/messages"),
                            json!({"body": format!("w{w}-{i}")}),
                        )
                        .await;
                    seen.push((sent, r.status().as_u16()));
                }
                seen
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let r = app
        .delete(&format!("/applications/{token}/chats/{chat}"))
        .await;
    assert_eq!(r.status(), 204);
    let deleted_at = started.elapsed();
    deleted.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut before = 0;
    let mut after = 0;
    for w in workers {
        for (sent, status) in w.await.unwrap() {
            if sent > deleted_at {
                after += 1;
                assert_eq!(
                    status, 404,
                    "a create sent {sent:?} after the 204 ({deleted_at:?})"
                );
            } else if status == 201 {
                before += 1;
            }
        }
    }
    assert!(
        after > 0 && before > 0,
        "{before} acknowledged before, {after} sent after"
    );
    let report = app.flush().await;
    assert!(app.stored_messages(&token, chat).await.is_empty());
    assert!(
        report.dropped > 0,
        "the buffered messages of the deleted chat are dropped and counted"
    );
    // The other chat is untouched.
    assert_eq!(app.create_message(&token, keep, "still open").await, 1);
}

#[tokio::test]
async fn a_delete_that_cannot_tombstone_in_redis_answers_503_and_deletes_nothing() {
    // Redis is unreachable (nothing listens on port 9); MariaDB is fine.
    let app = spawn_app_with(|c| {
        c.redis_url = "redis://127.0.0.1:9".into();
        c.redis_timeout_ms = 300;
    })
    .await;
    let token = app.create_app("no redis").await;
    let id: u64 = sqlx::query_scalar("SELECT id FROM applications WHERE token = ?")
        .bind(&token)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO chats (application_id, number, created_at, updated_at) VALUES (?, 1, NOW(6), NOW(6))",
    )
    .bind(id)
    .execute(&app.pool)
    .await
    .unwrap();

    let r = app.delete(&format!("/applications/{token}/chats/1")).await;
    assert_eq!(r.status(), 503, "{:?}", r.text().await);
    let r = app.delete(&format!("/applications/{token}")).await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let live: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM chats WHERE deleted_at IS NULL")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(live, 1, "the chat is not deleted");
    assert_eq!(app.count("applications").await, 1, "nor the application");
}

/// Waits until `n` statements `UPDATE chats…` of the service wait on a lock
/// in this test's database.
async fn wait_for_blocked_updates(app: &crate::helpers::TestApp, n: i64) {
    let ok = app
        .eventually(std::time::Duration::from_secs(10), || async {
            let blocked: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
                 WHERE DB = DATABASE() AND INFO LIKE 'UPDATE chats SET deleted_at%'",
            )
            .fetch_one(&app.pool)
            .await
            .unwrap();
            blocked >= n
        })
        .await;
    assert!(ok, "{n} chat deletes wait on the row lock");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_delete_does_not_undo_a_concurrent_delete_that_succeeded() {
    // T1 tombstones the chat (its saved value: the counter), T2 tombstones it
    // too; T1's SQL fails, T2's succeeds. The chat must stay deleted in
    // Redis, or later creates would get 201 and be dropped at flush.
    let app = Arc::new(spawn_app().await);
    let token = app.create_app("racing deletes").await;
    let chat = app.create_chat(&token).await;
    app.create_message(&token, chat, "stored").await;
    app.flush().await;

    // The first UPDATE of a chat that reaches the trigger fails (a MEMORY
    // table is not transactional, so its count survives the rollback).
    sqlx::raw_sql(
        "CREATE TABLE fault_injection (remaining INT NOT NULL) ENGINE = MEMORY;
         INSERT INTO fault_injection VALUES (1);
         CREATE TRIGGER fail_one_chat_update BEFORE UPDATE ON chats FOR EACH ROW
         BEGIN
           IF (SELECT remaining FROM fault_injection) > 0 THEN
             UPDATE fault_injection SET remaining = remaining - 1;
             SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'injected failure';
           END IF;
         END",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    // Hold the chat's row lock so that both deletes tombstone, then wait.
    let mut holder = app.pool.begin().await.unwrap();
    sqlx::query("SELECT id FROM chats WHERE number = ? FOR UPDATE")
        .bind(chat)
        .fetch_all(&mut *holder)
        .await
        .unwrap();
    let path = format!("/applications/{token}/chats/{chat}");
    let t1 = tokio::spawn({
        let (app, path) = (app.clone(), path.clone());
        async move { app.delete(&path).await.status().as_u16() }
    });
    wait_for_blocked_updates(&app, 1).await;
    let t2 = tokio::spawn({
        let (app, path) = (app.clone(), path.clone());
        async move { app.delete(&path).await.status().as_u16() }
    });
    wait_for_blocked_updates(&app, 2).await;
    holder.commit().await.unwrap();
    let mut statuses = [t1.await.unwrap(), t2.await.unwrap()];
    statuses.sort();
    assert_eq!(statuses[0], 204, "one delete succeeded: {statuses:?}");
    assert!(statuses[1] >= 500, "the other failed: {statuses:?}");

    let live: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM chats WHERE deleted_at IS NULL")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(live, 0, "MariaDB has the chat deleted");
    let r = app
        .post(
            &format!("{path}/messages"),
            json!({"body": "after the delete"}),
        )
        .await;
    assert_eq!(
        r.status(),
        404,
        "Redis has it deleted too: no 201 that the flush would drop"
    );
}
