//! Bounded Redis memory per chat: the counters of idle chats leave Redis
//! (`CHAT_IDLE_SECS`, `src/jobs/idle.rs`) and come back exactly.

use futures::StreamExt;
use serde_json::json;

use crate::helpers::{PrivateRedis, spawn_app_with};

async fn used_memory(redis: &PrivateRedis) -> u64 {
    let mut c = crate::helpers::redis_connection(&redis.url()).await;
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut c)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_idle_chats_leave_redis_and_come_back_exactly() {
    const CHATS: i64 = 100_000;
    let redis = PrivateRedis::start().await;
    let app = spawn_app_with(|c| {
        c.redis_url = redis.url();
        c.chat_idle_secs = 0; // swept by hand below
        c.max_pending = 1_000_000;
        c.max_pending_per_application = Some(0);
    })
    .await;
    let token = app.create_app("many chats").await;
    // One chat with messages, and its counter evicted too.
    assert_eq!(app.create_chat(&token).await, 1);
    for i in 0..3 {
        app.create_message(&token, 1, &format!("m{i}")).await;
    }
    app.flush().await;
    let before = used_memory(&redis).await;

    let path = format!("/applications/{token}/chats");
    let created = futures::stream::iter(1..CHATS)
        .map(|_| app.post(&path, json!({})))
        .buffer_unordered(64)
        .filter(|r| std::future::ready(r.status() == 201))
        .count()
        .await;
    assert_eq!(created as i64, CHATS - 1);
    app.flush().await;
    let full = used_memory(&redis).await;

    let sweep = chat_api::jobs::idle::IdleCounters::new(app.numbering.clone());
    let first = sweep.sweep_once().await.unwrap();
    assert_eq!(first.evicted, 0, "nothing is idle at the first look");
    let second = sweep.sweep_once().await.unwrap();
    assert_eq!(
        second.evicted as i64,
        CHATS + 1,
        "every chat's counter and the application's chat counter"
    );
    // Redis shrinks a sparse hash table on its own cron.
    let ok = app
        .eventually(std::time::Duration::from_secs(10), || async {
            (used_memory(&redis).await as f64) <= before as f64 * 1.1
        })
        .await;
    let after = used_memory(&redis).await;
    eprintln!(
        "{CHATS} chats: used_memory {before} bytes before, {full} after creating and flushing them ({} bytes per idle chat), {after} after the sweep",
        (full - before) / CHATS as u64
    );
    assert!(ok, "back within 10% of before: {before} → {full} → {after}");

    // They come back exactly: no number skipped, none handed out twice.
    assert_eq!(app.create_message(&token, 1, "after").await, 4);
    assert_eq!(app.create_message(&token, 777, "first").await, 1);
    assert_eq!(app.create_chat(&token).await, CHATS + 1);
    app.flush().await;
    assert_eq!(app.stored_messages(&token, 1).await.len(), 4);
    assert_eq!(app.count("chats").await, CHATS + 1);
    let skipped: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM skipped_numbers")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(skipped, 0, "nothing skipped");
}
