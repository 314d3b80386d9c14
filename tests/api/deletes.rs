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
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (app, token) = (app.clone(), token.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                for i in 0..150 {
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
