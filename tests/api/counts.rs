//! The counts refresh: exact after a refresh, incremental, crash-safe.

use std::time::Duration;

use chat_api::jobs::counts::Scope;
use serde_json::Value;

use crate::helpers::{TestApp, spawn_app};

/// Asserts that every cached count equals `COUNT(*)` of live rows.
async fn assert_counts_exact(app: &TestApp) {
    let wrong_apps: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM applications a WHERE a.chats_count <> \
         (SELECT COUNT(*) FROM chats c WHERE c.application_id = a.id AND c.deleted_at IS NULL)",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let wrong_chats: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM chats c WHERE c.deleted_at IS NULL AND c.messages_count <> \
         (SELECT COUNT(*) FROM messages m WHERE m.chat_id = c.id AND m.deleted_at IS NULL)",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        (wrong_apps, wrong_chats),
        (0, 0),
        "cached counts equal COUNT(*)"
    );
}

#[tokio::test]
async fn counts_are_exact_after_a_refresh_including_deletes() {
    let app = spawn_app().await;
    let t = app.create_app("a").await;
    for _ in 0..3 {
        app.create_chat(&t).await;
    }
    for (chat, n) in [(1, 5), (2, 3)] {
        for i in 0..n {
            app.create_message(&t, chat, &format!("m{i}")).await;
        }
    }
    app.flush().await;
    let report = app.counts.refresh_counts_once().await.unwrap();
    assert_eq!((report.apps, report.chats), (1, 2));
    let a: Value = app.get_json(&format!("/applications/{t}")).await;
    assert_eq!(a["chats_count"], 3);
    let c: Value = app.get_json(&format!("/applications/{t}/chats/1")).await;
    assert_eq!(c["messages_count"], 5);
    assert_counts_exact(&app).await;

    assert_eq!(
        app.delete(&format!("/applications/{t}/chats/1/messages/2"))
            .await
            .status(),
        204
    );
    assert_eq!(
        app.delete(&format!("/applications/{t}/chats/3"))
            .await
            .status(),
        204
    );
    app.counts.refresh_counts_once().await.unwrap();
    let a: Value = app.get_json(&format!("/applications/{t}")).await;
    assert_eq!(a["chats_count"], 2);
    let c: Value = app.get_json(&format!("/applications/{t}/chats/1")).await;
    assert_eq!(c["messages_count"], 4);
    assert_counts_exact(&app).await;
}

#[tokio::test]
async fn a_refresh_touches_only_the_dirty_rows() {
    let app = spawn_app().await;
    let t = app.create_app("a").await;
    for _ in 0..20 {
        app.create_chat(&t).await;
    }
    for chat in 1..=20 {
        app.create_message(&t, chat, "hello").await;
    }
    app.flush().await;
    let first = app.counts.refresh_counts_once().await.unwrap();
    assert_eq!((first.apps, first.chats), (1, 20));

    app.create_message(&t, 7, "one more").await;
    app.flush().await;
    let second = app.counts.refresh_counts_once().await.unwrap();
    assert_eq!(
        (second.apps, second.chats),
        (0, 1),
        "only chat 7 is recomputed"
    );
    let nothing = app.counts.refresh_counts_once().await.unwrap();
    assert_eq!((nothing.apps, nothing.chats), (0, 0));
    assert_counts_exact(&app).await;
}

#[tokio::test]
async fn marks_taken_by_a_refresher_that_died_are_not_lost() {
    let app = spawn_app().await;
    let t = app.create_app("a").await;
    app.create_chat(&t).await;
    for i in 0..4 {
        app.create_message(&t, 1, &format!("m{i}")).await;
    }
    app.flush().await;
    // A refresher takes the marks and dies before its UPDATE.
    let taken = app
        .marks
        .take(
            &app.shard(&t),
            Scope::Chats,
            100,
            Duration::from_millis(200),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(taken.ids.len(), 1);
    let apps = app
        .marks
        .take(&app.shard(&t), Scope::Apps, 100, Duration::from_millis(200))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(apps.ids.len(), 1);
    let during = app.counts.refresh_counts_once().await.unwrap();
    assert_eq!(
        (during.apps, during.chats),
        (0, 0),
        "leased marks are nobody else's"
    );

    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = app.counts.refresh_counts_once().await.unwrap();
    assert_eq!(
        (after.apps, after.chats),
        (1, 1),
        "expired marks are recovered"
    );
    assert_counts_exact(&app).await;
    let c: Value = app.get_json(&format!("/applications/{t}/chats/1")).await;
    assert_eq!(c["messages_count"], 4);
}

#[tokio::test]
async fn counts_are_exact_after_concurrent_creates_and_deletes() {
    let app = spawn_app().await;
    let t = app.create_app("a").await;
    for _ in 0..4 {
        app.create_chat(&t).await;
    }
    let creates = (0..120).map(|i| {
        let t = t.clone();
        let app = &app;
        async move { app.create_message(&t, 1 + i % 4, &format!("m{i}")).await }
    });
    futures::future::join_all(creates).await;
    app.flush().await;
    let deletes = (1..=10).map(|n| {
        let t = t.clone();
        let app = &app;
        async move {
            app.delete(&format!(
                "/applications/{t}/chats/{}/messages/{n}",
                1 + n % 4
            ))
            .await
            .status()
        }
    });
    let more = (0..40).map(|i| {
        let t = t.clone();
        let app = &app;
        async move {
            app.create_message(&t, 1 + i % 4, &format!("late {i}"))
                .await
        }
    });
    let (statuses, _) = tokio::join!(
        futures::future::join_all(deletes),
        futures::future::join_all(more)
    );
    assert!(statuses.iter().all(|s| *s == 204));
    assert_eq!(
        app.delete(&format!("/applications/{t}/chats/4"))
            .await
            .status(),
        204
    );
    app.flush().await;
    let (r1, r2) = tokio::join!(
        app.counts.refresh_counts_once(),
        app.counts.refresh_counts_once()
    );
    let (r1, r2) = (r1.unwrap(), r2.unwrap());
    assert_eq!(
        r1.apps + r2.apps,
        1,
        "two refreshers share the marks without double work"
    );
    assert_counts_exact(&app).await;
}

#[test]
fn an_invalid_cron_expression_stops_start_up_naming_the_variable() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chat-api"))
        .arg("serve")
        .env("COUNTS_REFRESH_CRON", "every minute please")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("COUNTS_REFRESH_CRON"), "{stderr}");
}
