//! The service on a Redis Cluster of its own (3 masters, 3 replicas, see
//! `scripts/redis-cluster`): numbering, spreading, read-your-writes, the
//! flush triggers, shutdown, and the operator's queue view.

use std::collections::HashSet;
use std::time::Duration;

use chat_api::config::Config;

use crate::cluster::PrivateCluster;
use crate::helpers::{TestApp, spawn_app_with};

const KEY: &str = "operator-key-for-cluster-tests-0123456789";

async fn spawn_on(cluster: &PrivateCluster, tweak: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_with(|c| {
        c.redis_cluster_nodes = cluster.urls();
        c.admin_api_key = Some(KEY.into());
        tweak(c);
    })
    .await
}

#[tokio::test]
async fn on_a_cluster_500_concurrent_creates_in_one_chat_get_1_to_500_each_stored_once() {
    let cluster = PrivateCluster::start();
    let app = spawn_on(&cluster, |_| {}).await;
    let token = app.create_app("cluster").await;
    let chat = app.create_chat(&token).await;
    let (app, token) = (&app, &token);
    let mut numbers = futures::future::join_all(
        (0..500).map(|i| async move { app.create_message(token, chat, &format!("m{i}")).await }),
    )
    .await;
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=500).collect::<Vec<i64>>());
    app.flush().await;
    let stored = app.stored_messages(token, chat).await;
    assert_eq!(stored.len(), 500);
    let distinct: HashSet<i64> = stored.iter().map(|(n, _)| *n).collect();
    assert_eq!(distinct.len(), 500);
}

#[tokio::test]
async fn on_a_cluster_creates_over_50_applications_spread_over_the_masters_and_all_flush() {
    let cluster = PrivateCluster::start();
    let app = spawn_on(&cluster, |_| {}).await;
    let app = &app;
    let tokens = futures::future::join_all(
        (0..50).map(|i| async move { app.create_app(&format!("a{i}")).await }),
    )
    .await;
    futures::future::join_all(tokens.iter().map(|t| async move {
        let chat = app.create_chat(t).await;
        for n in 1..=5 {
            assert_eq!(app.create_message(t, chat, &format!("m{n}")).await, n);
        }
    }))
    .await;
    let masters: HashSet<u16> = tokens
        .iter()
        .map(|t| cluster.master_of(&app.shard(t).app(t)))
        .collect();
    assert_eq!(masters.len(), 3, "50 applications use every master");

    // The operator's view sums every shard, on every master.
    let view: serde_json::Value = app
        .client
        .get(app.url("/admin/queues"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pending = |name: &str| {
        view["queues"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["queue"] == name)
            .map(|q| q["pending"].as_u64().unwrap())
            .unwrap()
    };
    assert_eq!((pending("chats"), pending("messages")), (50, 250), "{view}");

    app.flush().await;
    assert_eq!(app.count("chats").await, 50);
    assert_eq!(app.count("messages").await, 250);
    app.counts.refresh_counts_once().await.unwrap();
    let one = app.get_json(&format!("/applications/{}", tokens[7])).await;
    assert_eq!(one["chats_count"], 1, "{one}");
}

#[tokio::test]
async fn on_a_cluster_reads_wait_for_their_flush_and_the_size_and_timer_triggers_fire() {
    let cluster = PrivateCluster::start();
    let app = spawn_on(&cluster, |c| {
        c.message_batch_size = 10.try_into().unwrap();
        c.flush_interval = Duration::from_secs(2);
    })
    .await;
    let t = app.create_app("triggers").await;
    let c = app.create_chat(&t).await;

    // Read-your-writes: a read of a buffered message waits for its flush.
    let n = app.create_message(&t, c, "read me").await;
    let read = app
        .get_json(&format!("/applications/{t}/chats/{c}/messages/{n}"))
        .await;
    assert_eq!(read["body"], "read me", "{read}");

    // The size trigger: the tenth pending message wakes the flusher.
    let c2 = app.create_chat(&t).await;
    for i in 0..10 {
        app.create_message(&t, c2, &format!("m{i}")).await;
    }
    let flushed = app
        .eventually(Duration::from_secs(5), || async {
            app.stored_messages(&t, c2).await.len() == 10
        })
        .await;
    assert!(flushed, "the size trigger flushed the chat's 10 messages");

    // The timer: below the batch size, the 2 s timer flushes.
    let c3 = app.create_chat(&t).await;
    for i in 0..3 {
        app.create_message(&t, c3, &format!("t{i}")).await;
    }
    let flushed = app
        .eventually(Duration::from_secs(8), || async {
            app.stored_messages(&t, c3).await.len() == 3
        })
        .await;
    assert!(flushed, "the timer flushed 3 messages below the batch size");
}

#[tokio::test]
async fn on_a_cluster_shutdown_flushes_what_is_pending() {
    let cluster = PrivateCluster::start();
    let mut app = spawn_on(&cluster, |_| {}).await;
    let t = app.create_app("shutdown").await;
    let c = app.create_chat(&t).await;
    for i in 0..25 {
        app.create_message(&t, c, &format!("m{i}")).await;
    }
    assert_eq!(app.count("messages").await, 0);
    app.stop().await;
    assert_eq!(app.count("chats").await, 1);
    assert_eq!(app.count("messages").await, 25);
}

#[tokio::test]
async fn on_a_cluster_idempotency_keys_deletes_and_counts_work() {
    let cluster = PrivateCluster::start();
    let app = spawn_on(&cluster, |_| {}).await;
    let post = |path: String, key: &'static str, body: serde_json::Value| {
        let app = &app;
        async move {
            app.client
                .post(app.url(&path))
                .header("Idempotency-Key", key)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let first: serde_json::Value = post(
        "/applications".into(),
        "3f2b1c0d-9e8a-4b7c-8d6e-5f4a3b2c1d0e",
        serde_json::json!({"name": "idem"}),
    )
    .await
    .json()
    .await
    .unwrap();
    let again: serde_json::Value = post(
        "/applications".into(),
        "3f2b1c0d-9e8a-4b7c-8d6e-5f4a3b2c1d0e",
        serde_json::json!({"name": "idem"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(first["token"], again["token"], "the same application");
    let token = first["token"].as_str().unwrap().to_string();
    let chat = app.create_chat(&token).await;
    let path = format!("/applications/{token}/chats/{chat}/messages");
    let one = post(path.clone(), "m-1", serde_json::json!({"body": "hello"})).await;
    assert_eq!(one.status(), 201);
    let one: serde_json::Value = one.json().await.unwrap();
    let retry: serde_json::Value = post(path.clone(), "m-1", serde_json::json!({"body": "hello"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        one["number"], retry["number"],
        "a retry gets the same number"
    );
    let other = post(path.clone(), "m-1", serde_json::json!({"body": "another"})).await;
    assert_eq!(other.status(), 422, "the key with another body");
    assert_eq!(app.create_message(&token, chat, "next").await, 2);

    // Deletes tombstone in the application's shard.
    let second = app.create_chat(&token).await;
    assert_eq!(
        app.delete(&format!("/applications/{token}/chats/{second}"))
            .await
            .status(),
        204
    );
    let refused = app
        .post(
            &format!("/applications/{token}/chats/{second}/messages"),
            serde_json::json!({"body": "to a deleted chat"}),
        )
        .await;
    assert_eq!(refused.status(), 404);

    app.flush().await;
    app.counts.refresh_counts_once().await.unwrap();
    let chat_view = app
        .get_json(&format!("/applications/{token}/chats/{chat}"))
        .await;
    assert_eq!(chat_view["messages_count"], 2, "{chat_view}");
    let app_view = app.get_json(&format!("/applications/{token}")).await;
    assert_eq!(
        app_view["chats_count"], 1,
        "the deleted chat is not counted: {app_view}"
    );
}
