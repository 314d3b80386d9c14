//! Queue shards: the count recorded in Redis, an instance with another count
//! refused, and `reshard` moving the data without losing or re-checking a
//! counter.

use std::time::Duration;

use chat_api::startup::Application;
use chat_api::writebehind::keys::Keys;
use chat_api::writebehind::shards::{ShardCheck, check_shard_count, reshard};

use crate::helpers::{spawn_app_with, spawn_config};

#[tokio::test]
async fn applications_spread_over_the_shards_and_each_shard_flushes_its_own() {
    let app = spawn_app_with(|c| c.queue_shards = 4).await;
    let mut shards = std::collections::HashSet::new();
    let mut tokens = vec![];
    for i in 0..12 {
        let token = app.create_app(&format!("spread {i}")).await;
        shards.insert(app.shard(&token).index());
        let chat = app.create_chat(&token).await;
        for n in 1..=3 {
            assert_eq!(app.create_message(&token, chat, &format!("m{n}")).await, n);
        }
        tokens.push(token);
    }
    assert!(
        shards.len() >= 2,
        "12 tokens land in several of 4 shards: {shards:?}"
    );
    assert_eq!(app.flusher.pending().await.unwrap(), 12 * 4);
    let report = app.flush().await;
    assert_eq!(report.written, 12 * 4, "{report:?}");
    for token in &tokens {
        assert_eq!(app.stored_messages(token, 1).await.len(), 3);
    }
}

#[tokio::test]
async fn another_shard_count_is_refused_until_reshard_moves_the_data() {
    let app = spawn_app_with(|c| c.queue_shards = 4).await;
    let token = app.create_app("reshard").await;
    let chat = app.create_chat(&token).await;
    for body in ["one", "two", "three"] {
        app.create_message(&token, chat, body).await;
    }
    let prefix = app.config.redis_key_prefix.clone();
    let (four, eight) = (
        Keys::with_shards(prefix.clone(), 4),
        Keys::with_shards(prefix.clone(), 8),
    );

    // Records still pending: the reshard gives up and moves nothing.
    let err = reshard(
        &app.buffer,
        &four,
        &eight,
        Duration::ZERO,
        Duration::from_millis(300),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("still pending"), "{err}");
    assert_eq!(
        check_shard_count(&app.buffer).await.unwrap(),
        ShardCheck::Same
    );

    // An instance with another count does not start.
    let mut other = app.config.clone();
    other.queue_shards = 8;
    let refused = Application::build(other.clone(), false)
        .await
        .err()
        .expect("refused");
    assert!(
        refused.to_string().contains("QUEUE_SHARDS is 8")
            && refused.to_string().contains("reshard"),
        "{refused}"
    );

    app.flush().await;
    let report = reshard(
        &app.buffer,
        &four,
        &eight,
        Duration::ZERO,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert!(report.apps >= 1 || four.for_token(&token) == eight.for_token(&token));
    assert!(matches!(
        check_shard_count(&app.buffer).await.unwrap(),
        ShardCheck::Differs(n) if n == "8"
    ));

    // The old instance cannot hand out another number, at once: the scripts
    // compare its count with the one in the shard's epoch hash (no waiting
    // for its periodic re-check).
    let r = app
        .post(
            &format!("/applications/{token}/chats"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(r.status(), 503, "{:?}", r.text().await);

    // The new instance carries on from the moved counters, each restarted
    // at its reservation (a reshard is a doubt): the implicit first block
    // here, 16, so nothing at or below it is handed out again. An
    // application whose shard number is the same in both layouts did not
    // move, and carries on where it was.
    app.flush().await;
    let new = spawn_config(other, false).await;
    let last_chat = app.count("chats").await;
    let moved = four.for_token(&token) != eight.for_token(&token);
    let (message, chat_number) = if moved { (17, 17) } else { (4, last_chat + 1) };
    assert_eq!(new.create_message(&token, chat, "four").await, message);
    assert_eq!(new.create_chat(&token).await, chat_number);
    new.flush().await;
    assert_eq!(new.stored_messages(&token, chat).await.len(), 4);
}
