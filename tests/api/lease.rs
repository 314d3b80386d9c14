//! The lease queue (`writebehind::lease`) on its own: what a claim takes,
//! what giving back and recovering restore, and that an acknowledgement's
//! hand-on writes happen only while the lease is held.

use std::time::Duration;

use chat_api::writebehind::Kind;
use chat_api::writebehind::lease::{Collection, HandOn};
use redis::AsyncCommands;

use crate::helpers::spawn_app;

#[tokio::test]
async fn a_list_batch_given_back_or_recovered_returns_to_the_head_in_order() {
    let app = spawn_app().await;
    let shard = app.buffer.keys().shard(0);
    let queue = shard.record_queue(Kind::Chats);
    let leases = app.buffer.lease_queue();
    let mut c = app.redis_conn().await;
    let items: Vec<String> = (1..=5).map(|i| format!("r{i}")).collect();
    let _: () = c.rpush(queue.waiting(), &items).await.unwrap();

    let batch = leases
        .claim(&queue, 3, Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        batch.items,
        [b"r1".to_vec(), b"r2".to_vec(), b"r3".to_vec()]
    );
    let _: () = c.rpush(queue.waiting(), "r6").await.unwrap();
    assert_eq!(leases.give_back(&batch).await.unwrap(), 3);
    let all: Vec<String> = c.lrange(queue.waiting(), 0, -1).await.unwrap();
    assert_eq!(all, ["r1", "r2", "r3", "r4", "r5", "r6"]);
    // Given back once: a second give-back finds no lease and moves nothing.
    assert_eq!(leases.give_back(&batch).await.unwrap(), 0);

    // A claimer that dies: its batch comes back when the lease runs out.
    let dead = leases
        .claim(&queue, 2, Duration::from_millis(100))
        .await
        .unwrap()
        .unwrap();
    let set = shard.record_leases();
    assert_eq!(leases.recover_expired(&set).await.unwrap(), (0, 0));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(leases.recover_expired(&set).await.unwrap(), (1, 2));
    let all: Vec<String> = c.lrange(queue.waiting(), 0, -1).await.unwrap();
    assert_eq!(all, ["r1", "r2", "r3", "r4", "r5", "r6"]);
    let exists: bool = c.exists(&dead.key).await.unwrap();
    assert!(!exists, "the processing list is gone");
}

#[tokio::test]
async fn hand_on_writes_happen_with_the_acknowledgement_and_never_after_a_lost_lease() {
    let app = spawn_app().await;
    let shard = app.buffer.keys().shard(0);
    let queue = shard.record_queue(Kind::Chats);
    let leases = app.buffer.lease_queue();
    let mut c = app.redis_conn().await;
    let _: () = c.rpush(queue.waiting(), &["a", "b"]).await.unwrap();
    let (list, set, hash) = (
        format!("{}t:list", shard.prefix()),
        format!("{}t:set", shard.prefix()),
        format!("{}t:hash", shard.prefix()),
    );
    let hand_on = |tag: &str| {
        vec![
            HandOn {
                key: list.clone(),
                into: Collection::List,
                items: vec![
                    format!("{tag}1").into_bytes(),
                    format!("{tag}2").into_bytes(),
                ],
            },
            HandOn {
                key: set.clone(),
                into: Collection::Set,
                items: vec![b"7".to_vec(), b"7".to_vec(), b"8".to_vec()],
            },
            HandOn {
                key: hash.clone(),
                into: Collection::Hash,
                items: vec![tag.as_bytes().to_vec(), b"why".to_vec()],
            },
        ]
    };

    let held = leases
        .claim(&queue, 1, Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert!(leases.renew(&held, Duration::from_secs(30)).await.unwrap());
    assert!(leases.ack(&held, &hand_on("x")).await.unwrap());
    let l: Vec<String> = c.lrange(&list, 0, -1).await.unwrap();
    assert_eq!(l, ["x1", "x2"]);
    let s: u64 = c.scard(&set).await.unwrap();
    assert_eq!(s, 2);
    let h: Option<String> = c.hget(&hash, "x").await.unwrap();
    assert_eq!(h.as_deref(), Some("why"));

    let lost = leases
        .claim(&queue, 1, Duration::from_millis(50))
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        leases
            .recover_expired(&shard.record_leases())
            .await
            .unwrap(),
        (1, 1)
    );
    assert!(!leases.renew(&lost, Duration::from_secs(30)).await.unwrap());
    assert!(!leases.ack(&lost, &hand_on("y")).await.unwrap());
    let l: Vec<String> = c.lrange(&list, 0, -1).await.unwrap();
    assert_eq!(l, ["x1", "x2"], "a lost lease writes nothing");
    let h: Option<String> = c.hget(&hash, "y").await.unwrap();
    assert_eq!(h, None);
    let left: Vec<String> = c.lrange(queue.waiting(), 0, -1).await.unwrap();
    assert_eq!(left, ["b"], "the recovered item is back");
}

#[tokio::test]
async fn a_set_queue_hands_each_member_to_one_claimer_and_takes_it_back() {
    let app = spawn_app().await;
    let shard = app.buffer.keys().shard(0);
    let queue = shard.dirty_queue("chats");
    let leases = app.buffer.lease_queue();
    let mut c = app.redis_conn().await;
    let _: () = c.sadd(queue.waiting(), &[1u64, 2, 3, 4, 5]).await.unwrap();

    let first = leases
        .claim(&queue, 3, Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let second = leases
        .claim(&queue, 3, Duration::from_millis(50))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((first.items.len(), second.items.len()), (3, 2));
    let mut all: Vec<Vec<u8>> = first.items.iter().chain(&second.items).cloned().collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 5, "no member went to both claimers");
    assert!(
        leases
            .claim(&queue, 3, Duration::from_secs(30))
            .await
            .unwrap()
            .is_none()
    );

    assert_eq!(leases.give_back(&first).await.unwrap(), 3);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        leases
            .recover_expired(&shard.dirty_lease_set())
            .await
            .unwrap(),
        (1, 2)
    );
    let members: Vec<u64> = c.smembers(queue.waiting()).await.unwrap();
    let mut members = members;
    members.sort();
    assert_eq!(members, [1, 2, 3, 4, 5]);
}
