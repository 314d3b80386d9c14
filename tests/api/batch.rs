//! The batched enqueue script (`chat_api::writebehind::scripts`), run
//! directly against Redis with a batch built by hand: a batch must be
//! exactly its creates run one after the other (numbers, lengths, an
//! idempotency key used twice in one batch), and a create that fails must
//! leave nothing behind: no number taken, no record queued, nothing counted.

use chat_api::writebehind::coalesce::Create;
use chat_api::writebehind::scripts::{self, code};
use redis::AsyncCommands;

use crate::helpers::{redis_connection as connect, redis_url};
use crate::support::PrivateRedis;

/// The server's lineage as the scripts record it in the epoch hash
/// (`chat_api::redis::LINEAGE`): its `run_id` and `master_replid`.
async fn lineage(r: &mut redis::aio::MultiplexedConnection) -> (String, String) {
    let info: String = redis::cmd("INFO")
        .arg("server")
        .arg("replication")
        .query_async(r)
        .await
        .unwrap();
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .trim()
            .to_string()
    };
    (field("run_id:"), field("master_replid:"))
}

/// Sets the epoch hash `key` to `epoch` under `QUEUE_SHARDS` = `shards`,
/// with the lineage of the server behind `r`: what the service's epoch
/// check records there.
async fn set_epoch(
    r: &mut redis::aio::MultiplexedConnection,
    key: &str,
    epoch: &str,
    shards: &str,
) {
    let (run_id, replid) = lineage(r).await;
    let _: () = r
        .hset_multiple(
            key,
            &[
                ("epoch", epoch),
                ("shards", shards),
                ("run_id", &run_id),
                ("replid", &replid),
            ],
        )
        .await
        .unwrap();
}

/// A message create of the batched script as the service sends it, for
/// chat `chat` of the application hash `app`, in the shard whose keys start
/// with `p` (its pending list, epoch hash and usage hash), under
/// `QUEUE_SHARDS` = `shards`: no idempotency key, no live flag, no limit
/// on the pending records or bytes.
fn plain_create(p: &str, app: &str, chat: &str, body: &str, shards: &str) -> Create {
    Create {
        keys: [
            app.to_string(),
            format!("{p}pending:messages"),
            format!("{p}epoch"),
            app.to_string(),
            format!("{p}usage"),
            format!("{app}:no-live-flag"),
            format!("{app}:no-live-stream"),
        ],
        args: [
            "1000".into(),
            "1700000000000000".into(),
            chat.into(),
            body.into(),
            "".into(),
            "60".into(),
            "0".into(),
            shards.into(),
            "0".into(),
            "1000".into(),
        ],
    }
}

/// A demoted master (a replica now) refuses the batch's first write: the
/// call fails with Redis's own `READONLY`, which the pool's broken-connection
/// rule sees, instead of each create's `pcall` turning it into
/// `SCRIPT_FAILED` (answered 503 for as long as the pool kept the
/// connection). Fails on the script before issue 39's fix.
#[tokio::test]
async fn a_demoted_master_fails_the_whole_batch_with_readonly() {
    let master = PrivateRedis::start().await;
    let replica =
        PrivateRedis::start_with(&["--replicaof", "127.0.0.1", &master.port.to_string()]).await;
    replica.wait_in_sync().await;
    let mut r = connect(&replica.url()).await;
    let (run_id, replid) = lineage(&mut r).await;
    let p = "demoted:{0}:";
    let (app, epoch) = (format!("{p}app:one"), format!("{p}epoch"));
    // What the replica holds, as if it had been written on it as a master.
    let mut m = connect(&master.url()).await;
    let _: () = m
        .hset_multiple(
            &epoch,
            &[
                ("epoch", "5"),
                ("shards", "1"),
                ("run_id", &run_id),
                ("replid", &replid),
            ],
        )
        .await
        .unwrap();
    let _: () = m
        .hset_multiple(
            &app,
            &[("id", "1"), ("7", "5"), ("v:7", "5"), ("r:7", "100")],
        )
        .await
        .unwrap();
    let _: () = redis::cmd("WAIT")
        .arg(1)
        .arg(5000)
        .query_async(&mut m)
        .await
        .unwrap();
    let create = plain_create(p, &app, "7", "body", "1");
    let script = redis::Script::new(&scripts::enqueue_message());
    let mut inv = script.prepare_invoke();
    for k in &create.keys {
        inv.key(k);
    }
    for a in &create.args {
        inv.arg(a.as_slice());
    }
    let err = inv
        .invoke_async::<Vec<(i64, i64, i64, i64, i64)>>(&mut r)
        .await
        .expect_err("a replica refuses the write");
    assert_eq!(err.code(), Some("READONLY"), "{err}");
}

#[tokio::test]
async fn a_batch_is_its_creates_one_after_the_other_and_a_failed_create_leaves_nothing() {
    let mut r = connect(&redis_url()).await;
    let p = format!("batch-test:{}:{{0}}:", uuid::Uuid::new_v4().simple());
    let (app1, app2) = (format!("{p}app:one"), format!("{p}app:two"));
    let (pending, epoch, usage, idem) = (
        format!("{p}pending:messages"),
        format!("{p}epoch"),
        format!("{p}usage"),
        format!("{p}idem:k"),
    );
    let (run_id, replid) = lineage(&mut r).await;
    let e = "17";
    // The shard's epoch; application 1: chat 7 has handed out 5 messages;
    // application 2: chat 3 has handed out 9, and its usage count is not a
    // number, so its create fails in Lua (before the script changed, after
    // it had written its counter and pushed its record).
    let app = |id: &str, chat: &str, counter: &str| {
        [
            ("id", id),
            (chat, counter),
            (format!("v:{chat}").as_str(), e),
            (format!("r:{chat}").as_str(), "100"),
        ]
        .map(|(f, v)| (f.to_string(), v.to_string()))
        .to_vec()
    };
    let epoch_fields = [
        ("epoch", e),
        ("shards", "16"),
        ("run_id", run_id.as_str()),
        ("replid", replid.as_str()),
    ]
    .map(|(f, v)| (f.to_string(), v.to_string()))
    .to_vec();
    let hashes = [
        (&epoch, epoch_fields),
        (&app1, app("1", "7", "5")),
        (&app2, app("2", "3", "9")),
    ];
    for (key, fields) in &hashes {
        let _: () = r.hset_multiple(*key, fields).await.unwrap();
    }
    let _: () = r.hset(&usage, "app:2", "not a number").await.unwrap();
    let create = |app: &str, chat: &str, body: &str, fingerprint: &str| Create {
        keys: [
            app.to_string(),
            pending.clone(),
            epoch.clone(),
            if fingerprint.is_empty() {
                app.to_string()
            } else {
                idem.clone()
            },
            usage.clone(),
            format!("{app}:no-live-flag"),
            format!("{app}:no-live-stream"),
        ],
        args: [
            "1000".into(),
            "1700000000000000".into(),
            chat.into(),
            body.into(),
            fingerprint.into(),
            "60".into(),
            "0".into(),
            "16".into(),
            "0".into(),
            "1000".into(),
        ],
    };
    let batch = [
        create(&app1, "7", "first", ""),
        create(&app1, "7", "second", "abc123"),
        create(&app2, "3", "fails", ""),
        create(&app1, "7", "second", "abc123"),
        create(&app1, "7", "another request, same key", "def456"),
        create(&app1, "7", "third", ""),
    ];
    let script = redis::Script::new(&scripts::enqueue_message());
    let mut inv = script.prepare_invoke();
    for c in &batch {
        for k in &c.keys {
            inv.key(k);
        }
        for a in &c.args {
            inv.arg(a.as_slice());
        }
    }
    let replies: Vec<(i64, i64, i64, i64, i64)> = inv.invoke_async(&mut r).await.unwrap();
    assert_eq!(
        replies,
        vec![
            (6, 1, 0, 100, 1),
            (7, 2, 0, 100, 1),
            (code::SCRIPT_FAILED, 0, 0, 0, 0),
            // The same key and request: the number of the second, replayed.
            (7, 0, 1, -1, 1),
            (code::KEY_REUSED, 0, 0, 0, 0),
            (8, 3, 0, 100, 1),
        ]
    );
    let records: Vec<String> = r.lrange(&pending, 0, -1).await.unwrap();
    assert_eq!(
        records,
        vec![
            "1\t7\t6\t1700000000000000\tfirst",
            "1\t7\t7\t1700000000000000\tsecond",
            "1\t7\t8\t1700000000000000\tthird",
        ]
    );
    let counter: String = r.hget(&app1, "7").await.unwrap();
    assert_eq!(counter, "8");
    // The failed create took no number and queued nothing.
    let counter: String = r.hget(&app2, "3").await.unwrap();
    assert_eq!(counter, "9");
    let bytes: i64 = r.hget(&usage, "bytes:messages").await.unwrap();
    assert_eq!(bytes, records.iter().map(|r| r.len() as i64).sum::<i64>());
    let queued: i64 = r.hget(&usage, "app:1").await.unwrap();
    assert_eq!(queued, 3);
    let key: String = r.get(&idem).await.unwrap();
    assert_eq!(key, "abc123\t7");
    let ttl: i64 = r.ttl(&idem).await.unwrap();
    assert!((1..=60).contains(&ttl), "the key expires: {ttl}");
    let _: () = r
        .del(&[&app1, &app2, &pending, &epoch, &usage, &idem])
        .await
        .unwrap();
}

/// Issue 39, point 10: a create whose own deadline (`REDIS_TIMEOUT_MS` from
/// its start) passes while its batch's Redis call still runs, bounded by a
/// later create's deadline, waits for the batch's answer: Redis applied it,
/// so it is answered with its number, never "unavailable" (503).
///
/// A private Redis is paused for writes (`CLIENT PAUSE … WRITE`, which
/// holds every script call) for 1.5 time limits. Two *filler* creates take
/// the lane's two calls ([`IN_FLIGHT`]) and hold them until their own limit
/// (answered "timed out", indeterminate by design: their calls may apply
/// later). Meanwhile an *early* create (0.1 limits in) and a *late* one
/// (0.85 limits in) queue, and go together as the next batch once a filler
/// gives its call back, bounded by the late one's deadline; Redis applies
/// that batch when the pause ends, after the early create's own deadline
/// and before the late one's. Fails on the code before the fix, which
/// answered the early create 503 at its own deadline.
#[tokio::test]
async fn a_create_past_its_own_deadline_is_answered_by_its_batch() {
    use chat_api::writebehind::coalesce::{Coalescer, IN_FLIGHT, Reply, Unavailable};
    use chat_api::writebehind::keys::Kind;
    use std::time::{Duration, Instant};

    assert_eq!(
        IN_FLIGHT, 2,
        "the test holds the lane's calls with two fillers"
    );
    let limit = Duration::from_millis(2000);
    let redis = PrivateRedis::start().await;
    let mut r = connect(&redis.url()).await;
    let p = "deadline:{0}:";
    let (app, pending) = (format!("{p}app:one"), format!("{p}pending:messages"));
    set_epoch(&mut r, &format!("{p}epoch"), "5", "1").await;
    // Chat 7 of application 1 has handed out 5 messages, checked in epoch 5.
    let _: () = r
        .hset_multiple(
            &app,
            &[("id", "1"), ("7", "5"), ("v:7", "5"), ("r:7", "100")],
        )
        .await
        .unwrap();
    let create = |body: &str| plain_create(p, &app, "7", body, "1");
    let pool = chat_api::redis::pool(&redis.url(), 4, limit).unwrap();
    let coalescer = Coalescer::new(pool.into(), Default::default(), 1, limit);
    // Loads the script (a NOSCRIPT answer would otherwise wait out the pause).
    let warm = coalescer
        .enqueue(Kind::Messages, 0, create("warm-up"))
        .await
        .unwrap();
    assert_eq!(warm.0, 6, "{warm:?}");

    let start = Instant::now();
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg((limit.as_millis() * 3 / 2) as u64)
        .arg("WRITE")
        .query_async(&mut r)
        .await
        .unwrap();
    type Answer = (Result<Reply, Unavailable>, Duration);
    let spawn = |body: &'static str| -> tokio::task::JoinHandle<Answer> {
        let coalescer = coalescer.clone();
        let create = create(body);
        tokio::spawn(async move {
            let began = Instant::now();
            let answer = coalescer.enqueue(Kind::Messages, 0, create).await;
            (answer, began.elapsed())
        })
    };
    let at = |fraction: f64| start + limit.mul_f64(fraction);
    let filler1 = spawn("filler 1");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let filler2 = spawn("filler 2");
    tokio::time::sleep_until(at(0.1).into()).await;
    let early = spawn("early");
    tokio::time::sleep_until(at(0.85).into()).await;
    let late = spawn("late");
    let (early, late) = (early.await.unwrap(), late.await.unwrap());
    let fillers = [filler1.await.unwrap(), filler2.await.unwrap()];
    for (answer, _) in &fillers {
        assert!(
            answer.is_err(),
            "a filler held its call until its limit: {answer:?}"
        );
    }
    assert!(
        early.1 > limit,
        "the early create's batch answered after its own deadline ({:?})",
        early.1
    );
    let early_number = match &early.0 {
        Ok(reply) => reply.0,
        Err(e) => panic!(
            "the early create was applied by its batch but answered unavailable after {:?}: {e:?}",
            early.1
        ),
    };
    let late_number = late.0.as_ref().expect("the late create is answered").0;
    assert!(early_number > 6 && late_number > 6, "{early:?} {late:?}");
    // What Redis applied: each waiter's record is queued under the number it
    // was answered.
    let records: Vec<String> = r.lrange(&pending, 0, -1).await.unwrap();
    for (body, number) in [("early", early_number), ("late", late_number)] {
        let queued: Vec<&String> = records
            .iter()
            .filter(|rec| rec.ends_with(&format!("\t{body}")))
            .collect();
        assert_eq!(
            queued,
            vec![&format!("1\t7\t{number}\t1700000000000000\t{body}")],
            "{records:?}"
        );
    }
}

/// Work per batch (issue 36): a batch whose creates span two applications,
/// three chats and a live chat, with one create refused by its
/// application's limit, leaves what its creates run one after the other
/// would: each chat's counter, the records in order, the usage counts per
/// application and in bytes, and a live event for each create of the live
/// chat only, under its number.
#[tokio::test]
async fn a_batch_over_applications_and_chats_writes_what_its_creates_would() {
    let mut r = connect(&redis_url()).await;
    let p = format!("batch-test:{}:{{0}}:", uuid::Uuid::new_v4().simple());
    let (app1, app2) = (format!("{p}app:one"), format!("{p}app:two"));
    let (pending, epoch, usage) = (
        format!("{p}pending:messages"),
        format!("{p}epoch"),
        format!("{p}usage"),
    );
    let (live_flag, live_stream) = (format!("{p}live:7"), format!("{p}stream:7"));
    let (run_id, replid) = lineage(&mut r).await;
    let _: () = r
        .hset_multiple(
            &epoch,
            &[
                ("epoch", "3"),
                ("shards", "1"),
                ("run_id", &run_id),
                ("replid", &replid),
            ],
        )
        .await
        .unwrap();
    let _: () = r
        .hset_multiple(
            &app1,
            &[
                ("id", "1"),
                ("7", "0"),
                ("v:7", "3"),
                ("r:7", "100"),
                ("8", "4"),
                ("v:8", "3"),
                ("r:8", "100"),
            ],
        )
        .await
        .unwrap();
    let _: () = r
        .hset_multiple(
            &app2,
            &[("id", "2"), ("1", "9"), ("v:1", "3"), ("r:1", "100")],
        )
        .await
        .unwrap();
    // Application 2 has 2 records queued already; each may have 4.
    let _: () = r
        .hset_multiple(&usage, &[("app:2", "2"), ("bytes:messages", "10")])
        .await
        .unwrap();
    let _: () = r.set(&live_flag, "1").await.unwrap();
    let create = |app: &str, chat: &str, body: &str| Create {
        keys: [
            app.to_string(),
            pending.clone(),
            epoch.clone(),
            app.to_string(),
            usage.clone(),
            if app == app1 && chat == "7" {
                live_flag.clone()
            } else {
                format!("{p}live:none")
            },
            live_stream.clone(),
        ],
        args: [
            "1000".into(),
            "1700000000000000".into(),
            chat.into(),
            body.into(),
            "".into(),
            "60".into(),
            "0".into(),
            "1".into(),
            "4".into(),
            "1000".into(),
        ],
    };
    let batch = [
        create(&app1, "7", "a"),
        create(&app2, "1", "b"),
        create(&app1, "8", "c"),
        create(&app1, "7", "d"),
        create(&app2, "1", "e"),
        create(&app2, "1", "refused: application 2 is full"),
        create(&app1, "8", "f"),
    ];
    let script = redis::Script::new(&scripts::enqueue_message());
    let mut inv = script.prepare_invoke();
    for c in &batch {
        for k in &c.keys {
            inv.key(k);
        }
        for a in &c.args {
            inv.arg(a.as_slice());
        }
    }
    let replies: Vec<(i64, i64, i64, i64, i64)> = inv.invoke_async(&mut r).await.unwrap();
    assert_eq!(
        replies,
        vec![
            (1, 1, 0, 100, 1),
            (10, 2, 0, 100, 2),
            (5, 3, 0, 100, 1),
            (2, 4, 0, 100, 1),
            (11, 5, 0, 100, 2),
            (code::APP_FULL, 5, 0, 0, 0),
            (6, 6, 0, 100, 1),
        ]
    );
    let records: Vec<String> = r.lrange(&pending, 0, -1).await.unwrap();
    let record = |app: &str, chat: &str, n: &str, body: &str| {
        format!("{app}\t{chat}\t{n}\t1700000000000000\t{body}")
    };
    assert_eq!(
        records,
        vec![
            record("1", "7", "1", "a"),
            record("2", "1", "10", "b"),
            record("1", "8", "5", "c"),
            record("1", "7", "2", "d"),
            record("2", "1", "11", "e"),
            record("1", "8", "6", "f"),
        ]
    );
    for (app, chat, counter) in [(&app1, "7", "2"), (&app1, "8", "6"), (&app2, "1", "11")] {
        let got: String = r.hget(app, chat).await.unwrap();
        assert_eq!(got, counter, "{app} chat {chat}");
    }
    let counts: Vec<i64> = r
        .hmget(&usage, &["app:1", "app:2", "bytes:messages"])
        .await
        .unwrap();
    let bytes = 10 + records.iter().map(|r| r.len() as i64).sum::<i64>();
    assert_eq!(counts, vec![4, 4, bytes]);
    let events: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg(&live_stream)
        .arg("-")
        .arg("+")
        .query_async(&mut r)
        .await
        .unwrap();
    let numbers: Vec<String> = events
        .iter()
        .map(|(_, fields)| {
            let at = fields.iter().position(|f| f == "n").unwrap();
            fields[at + 1].clone()
        })
        .collect();
    assert_eq!(numbers, vec!["1", "2"], "events of the live chat only");
    let _: () = r
        .del(&[
            &app1,
            &app2,
            &pending,
            &epoch,
            &usage,
            &live_flag,
            &live_stream,
        ])
        .await
        .unwrap();
}

/// One lane per kind on one Redis server (issue 36): the creates of two
/// queue shards that wait while the lane's calls are busy go to Redis
/// together, in one script call, and each is answered with its own shard's
/// number. A private Redis is paused for writes while two creates hold the
/// lane's two calls ([`IN_FLIGHT`]); three creates of shard 0 and three of
/// shard 1 queue meanwhile. `INFO commandstats`, reset after the warm-up,
/// then counts 3 `EVALSHA` calls (the two held, one batch of six); with a
/// lane per shard, shard 1's creates would have gone in a call of their
/// own at once. Fails with a lane per shard (4 calls).
#[tokio::test]
async fn the_creates_of_several_shards_share_one_script_call() {
    use chat_api::writebehind::coalesce::{Coalescer, IN_FLIGHT};
    use chat_api::writebehind::keys::Kind;
    use std::time::Duration;

    assert_eq!(
        IN_FLIGHT, 2,
        "the test holds the lane's calls with two creates"
    );
    let limit = Duration::from_millis(5000);
    let redis = PrivateRedis::start().await;
    let mut r = connect(&redis.url()).await;
    // Shard s: its epoch hash (epoch 5 + s), and application s + 1 whose
    // chat 7 has handed out 10 × (s + 1) messages, checked in its shard's
    // epoch: a create read against the other shard's epoch hash would be
    // answered UNVERIFIED.
    let shard = |s: u16| format!("lanes:{{{s}}}:");
    for s in 0..2u16 {
        let p = shard(s);
        set_epoch(&mut r, &format!("{p}epoch"), &(5 + s).to_string(), "2").await;
        let counter = (10 * (s + 1)).to_string();
        let _: () = r
            .hset_multiple(
                format!("{p}app:t{s}"),
                &[
                    ("id", (s + 1).to_string().as_str()),
                    ("7", counter.as_str()),
                    ("v:7", (5 + s).to_string().as_str()),
                    ("r:7", "1000"),
                ],
            )
            .await
            .unwrap();
    }
    let create = |s: u16, body: &str| {
        let p = shard(s);
        plain_create(&p, &format!("{p}app:t{s}"), "7", body, "2")
    };
    let pool = chat_api::redis::pool(&redis.url(), 4, limit).unwrap();
    let coalescer = Coalescer::new(pool.into(), Default::default(), 2, limit);
    // Loads the script (a NOSCRIPT answer would otherwise wait out the pause).
    let warm = coalescer
        .enqueue(Kind::Messages, 0, create(0, "warm-up"))
        .await
        .unwrap();
    assert_eq!(warm.0, 11, "{warm:?}");
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut r)
        .await
        .unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(800)
        .arg("WRITE")
        .query_async(&mut r)
        .await
        .unwrap();
    let spawn = |s: u16, body: String| {
        let coalescer = coalescer.clone();
        let create = create(s, &body);
        tokio::spawn(async move { coalescer.enqueue(Kind::Messages, s, create).await })
    };
    // Each held create goes alone, on one of the lane's two calls.
    let held1 = spawn(0, "held 1".into());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let held2 = spawn(0, "held 2".into());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let held = [held1, held2];
    let queued: Vec<_> = (0..6u16)
        .map(|i| (i % 2, spawn(i % 2, format!("queued {i}"))))
        .collect();
    for h in held {
        h.await.unwrap().expect("a held create is answered");
    }
    let mut numbers = [Vec::new(), Vec::new()];
    for (s, h) in queued {
        let reply = h.await.unwrap().expect("a queued create is answered");
        numbers[usize::from(s)].push(reply.0);
    }
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut r)
        .await
        .unwrap();
    let calls = stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|l| l.split(',').next())
        .and_then(|n| n.parse::<u64>().ok());
    assert_eq!(
        calls,
        Some(3),
        "the two held creates, then the six queued in one call: {stats}"
    );
    // Each shard's creates took its own application's next numbers.
    for n in &mut numbers {
        n.sort();
    }
    assert_eq!(numbers, [vec![14, 15, 16], vec![21, 22, 23]]);
    // And went to its own shard's pending list and usage counts.
    for (s, records) in [(0u16, 6i64), (1, 3)] {
        let p = shard(s);
        let queued: Vec<String> = r
            .lrange(format!("{p}pending:messages"), 0, -1)
            .await
            .unwrap();
        assert_eq!(queued.len() as i64, records, "shard {s}: {queued:?}");
        assert!(
            queued
                .iter()
                .all(|rec| rec.starts_with(&format!("{}\t7\t", s + 1))),
            "shard {s}: {queued:?}"
        );
        let counted: i64 = r
            .hget(format!("{p}usage"), format!("app:{}", s + 1))
            .await
            .unwrap();
        assert_eq!(counted, records, "shard {s}'s usage count");
    }
}
