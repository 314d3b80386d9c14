//! Fault tests of the numbering promise: whatever Redis loses, no number is
//! handed out twice, and a lookup of a lost number answers 404 "skipped" at
//! once (see `src/writebehind/numbering.rs`). Each uses real processes: a
//! private `redis-server`, the release binary, MariaDB.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{self, PrivateRedis, World, free_port};

pub(crate) const ADMIN_KEY: &str = "numbering-fault-test-operator-key";

/// A client of one service: creates one at a time and records every 201.
pub(crate) struct Client {
    http: reqwest::Client,
    base: String,
}

/// What a scope's creates and lookups saw.
#[derive(Default, Debug)]
pub(crate) struct Tally {
    /// Every number acknowledged, with what was sent under it.
    pub(crate) acked: BTreeMap<i64, String>,
    /// Numbers acknowledged a second time (must stay empty).
    pub(crate) twice: Vec<i64>,
    pub(crate) requests: u64,
}

impl Tally {
    pub(crate) fn ack(&mut self, number: i64, body: String) {
        if self.acked.insert(number, body).is_some() {
            self.twice.push(number);
        }
    }
}

/// A lookup's answer: status, error text, and how long it took.
struct Lookup {
    status: u16,
    error: String,
    took: Duration,
}

impl Client {
    pub(crate) fn new(base: String) -> Client {
        Client {
            http: reqwest::Client::new(),
            base,
        }
    }

    pub(crate) async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.http
            .post(format!("{}/api/v1{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn app(&self) -> String {
        let r: Value = self
            .post("/applications", json!({"name": "numbering"}))
            .await
            .json()
            .await
            .unwrap();
        r["token"].as_str().unwrap().to_string()
    }

    /// A new application with `chats` chats: its token.
    pub(crate) async fn app_with_chats(&self, chats: usize) -> String {
        let token = self.app().await;
        self.create(&token, Scope::Chats, chats, "chat", &mut Tally::default())
            .await;
        token
    }

    /// `n` creates in `scope` (chats of the application, or messages of a
    /// chat), each retried through 503s for up to 10 s.
    pub(crate) async fn create(
        &self,
        token: &str,
        scope: Scope,
        n: usize,
        tag: &str,
        tally: &mut Tally,
    ) {
        for i in 0..n {
            let body = format!("{tag}-{i}");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                tally.requests += 1;
                let (path, payload) = match scope {
                    Scope::Chats => (format!("/applications/{token}/chats"), json!({})),
                    Scope::Messages(chat) => (
                        format!("/applications/{token}/chats/{chat}/messages"),
                        json!({ "body": body }),
                    ),
                };
                let r = self.post(&path, payload).await;
                let status = r.status().as_u16();
                if status == 201 {
                    let v: Value = r.json().await.unwrap();
                    tally.ack(v["number"].as_i64().unwrap(), body.clone());
                    break;
                }
                assert_eq!(status, 503, "{:?}", r.text().await);
                assert!(Instant::now() < deadline, "creates resume within 10 s");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    async fn lookup(&self, token: &str, scope: Scope, number: i64) -> Lookup {
        let path = match scope {
            Scope::Chats => format!("/applications/{token}/chats/{number}"),
            Scope::Messages(chat) => {
                format!("/applications/{token}/chats/{chat}/messages/{number}")
            }
        };
        let started = Instant::now();
        let r = self
            .http
            .get(format!("{}/api/v1{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or_default();
        Lookup {
            status,
            error: v["error"].as_str().unwrap_or_default().to_string(),
            took: started.elapsed(),
        }
    }

    /// The operator's flush: everything pending is in MariaDB when it answers.
    pub(crate) async fn flush(&self) {
        let r = self
            .http
            .post(format!("{}/api/v1/admin/flush", self.base))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{:?}", r.text().await);
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Scope {
    Chats,
    Messages(i64),
}

/// Settings of every service here: no timer flush, so that what is buffered
/// stays buffered until the test flushes, and the operator API.
pub(crate) fn env(redis: &PrivateRedis) -> Vec<(&'static str, String)> {
    vec![
        ("REDIS_URL", redis.url()),
        ("FLUSH_INTERVAL_SECS", "600".into()),
        ("FLUSH_MAX_AGE_MS", "0".into()),
        ("MESSAGE_BATCH_SIZE", "100000".into()),
        ("CHAT_BATCH_SIZE", "100000".into()),
        ("ADMIN_API_KEY", ADMIN_KEY.into()),
        ("READ_YOUR_WRITES_TIMEOUT_MS", "3000".into()),
    ]
}

/// Stored numbers of `scope`: number → body (chats: number → "").
async fn stored(world: &World, token: &str, scope: Scope) -> BTreeMap<i64, String> {
    match scope {
        Scope::Chats => sqlx::query_scalar::<_, i64>(
            "SELECT c.number FROM chats c JOIN applications a ON a.id = c.application_id WHERE a.token = ?",
        )
        .bind(token)
        .fetch_all(&world.pool)
        .await
        .unwrap()
        .into_iter()
        .map(|n| (n, String::new()))
        .collect(),
        Scope::Messages(chat) => world
            .stored(token)
            .await
            .into_iter()
            .filter(|(c, _, _)| *c == chat)
            .map(|(_, n, body)| (n, body))
            .collect(),
    }
}

/// Every acknowledged number either is stored with its own body, or answers
/// 404 "skipped" at once (well under `READ_YOUR_WRITES_TIMEOUT_MS`).
/// Returns (stored, skipped).
pub(crate) async fn every_number_accounted_for(
    client: &Client,
    world: &World,
    token: &str,
    scope: Scope,
    tally: &Tally,
) -> (usize, usize) {
    let stored = stored(world, token, scope).await;
    let (mut found, mut skipped) = (0, 0);
    for (n, body) in &tally.acked {
        match stored.get(n) {
            Some(b) => {
                if matches!(scope, Scope::Messages(_)) {
                    assert_eq!(b, body, "number {n} is stored with its own body");
                }
                found += 1;
            }
            None => {
                let l = client.lookup(token, scope, *n).await;
                assert_eq!(l.status, 404, "lost number {n}: {}", l.error);
                assert!(l.error.contains("skipped"), "lost number {n}: {}", l.error);
                assert!(
                    l.took < Duration::from_millis(1500),
                    "lost number {n} answered at once, not after the read-your-writes wait ({:?})",
                    l.took
                );
                skipped += 1;
            }
        }
    }
    (found, skipped)
}

/// The restore of the issue: 50 creates flushed, `SAVE`, 300 more
/// acknowledged and buffered, Redis SIGKILLed and restarted from the
/// snapshot (so its counter is back at 50), then 30 creates.
async fn restore_older_than_300_buffered_creates(scope: Scope, label: &str) {
    let mut redis = PrivateRedis::start().await;
    let world = World::new(&env(&redis)).await;
    let service = world.start(free_port()).await;
    let client = Client::new(service.base());
    let chats = match scope {
        Scope::Messages(chat) => chat as usize,
        Scope::Chats => 0,
    };
    let token = client.app_with_chats(chats).await;
    let mut tally = Tally::default();
    client.create(&token, scope, 50, "before", &mut tally).await;
    client.flush().await;
    redis.save().await;
    client
        .create(&token, scope, 300, "buffered", &mut tally)
        .await;
    redis.restart().await;
    let started = Instant::now();
    client.create(&token, scope, 30, "after", &mut tally).await;
    let resumed = started.elapsed();
    client.flush().await;

    let highest_before = 350;
    let after: Vec<i64> = tally
        .acked
        .iter()
        .filter(|(_, b)| b.starts_with("after"))
        .map(|(n, _)| *n)
        .collect();
    let (found, skipped) = every_number_accounted_for(&client, &world, &token, scope, &tally).await;
    let gap = after.first().copied().unwrap_or(0) - highest_before - 1;
    eprintln!(
        "{label}: {} requests, {} acknowledged, {found} stored, {skipped} lost with Redis (each 404 'skipped' at once), \
         handed out twice: {}, numbers after the restore {:?}..{:?} (gap above the last acknowledged: {gap}), 30 creates in {:.2} s",
        tally.requests,
        tally.acked.len(),
        tally.twice.len(),
        after.first(),
        after.last(),
        resumed.as_secs_f64()
    );
    assert!(
        tally.twice.is_empty(),
        "handed out twice: {:?}",
        tally.twice
    );
    assert_eq!(tally.acked.len(), 380);
    assert!(
        after.iter().all(|n| *n > highest_before),
        "every number after the restore is above every number handed out before it: {after:?}"
    );
    assert_eq!(
        found, 80,
        "the 50 flushed before the snapshot and the 30 after"
    );
    assert_eq!(skipped, 300, "the 300 buffered ones were lost with Redis");
    drop(service);
    world.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_older_than_300_buffered_messages_hands_out_no_message_number_twice() {
    restore_older_than_300_buffered_creates(Scope::Messages(1), "restore, 300 buffered messages")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_older_than_300_buffered_chats_hands_out_no_chat_number_twice() {
    restore_older_than_300_buffered_creates(Scope::Chats, "restore, 300 buffered chats").await;
}

/// Ten times, Redis (no persistence) is SIGKILLed and restarted empty while
/// creates of one chat are buffered: each restart loses them. No number is
/// handed out twice, and every lost number, from every one of the ten
/// events, answers 404 "skipped" at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_loss_events_on_one_chat_leave_every_skipped_number_a_prompt_404() {
    let mut redis = PrivateRedis::start().await;
    let world = World::new(&env(&redis)).await;
    let service = world.start(free_port()).await;
    let client = Client::new(service.base());
    let token = client.app_with_chats(1).await;
    client.flush().await;
    let scope = Scope::Messages(1);
    let mut tally = Tally::default();
    for event in 0..10 {
        client
            .create(&token, scope, 20, &format!("kept{event}"), &mut tally)
            .await;
        client.flush().await;
        client
            .create(&token, scope, 25, &format!("lost{event}"), &mut tally)
            .await;
        redis.restart().await;
    }
    client.create(&token, scope, 5, "last", &mut tally).await;
    client.flush().await;
    let (found, skipped) = every_number_accounted_for(&client, &world, &token, scope, &tally).await;
    let ranges = world.skips(&token).await;
    let gaps: i64 = ranges
        .get(&1)
        .map(|rs| rs.iter().map(|r| r.end() - r.start() + 1).sum())
        .unwrap_or(0);
    eprintln!(
        "10 loss events on one chat: {} requests, {} acknowledged, {found} stored, {skipped} lost (each 404 'skipped' at once), \
         handed out twice: {}, {} skipped ranges holding {gaps} numbers ({} of them never handed out), highest number {:?}",
        tally.requests,
        tally.acked.len(),
        tally.twice.len(),
        ranges.get(&1).map_or(0, Vec::len),
        gaps - skipped as i64,
        tally.acked.keys().last()
    );
    assert!(
        tally.twice.is_empty(),
        "handed out twice: {:?}",
        tally.twice
    );
    assert_eq!(found, 205, "20 flushed per event and the last 5");
    assert_eq!(skipped, 250, "25 lost per event");
    assert_eq!(
        ranges.get(&1).map_or(0, Vec::len),
        10,
        "one skipped range per loss event"
    );
    drop(service);
    world.cleanup().await;
}

/// A node's AOF is rewritten (`BGREWRITEAOF`: the epoch hash, with this
/// server's run_id, is now in the AOF's base), then copied aside; the node
/// moves on (more creates, acknowledged, some flushed); then it restarts
/// from the copy, behind what it handed out. No number is handed out twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_from_a_rewritten_older_aof_hands_out_no_number_twice() {
    let mut redis =
        PrivateRedis::start_with(&["--appendonly", "yes", "--appendfsync", "always"]).await;
    let world = World::new(&env(&redis)).await;
    let service = world.start(free_port()).await;
    let client = Client::new(service.base());
    let token = client.app_with_chats(1).await;
    let scope = Scope::Messages(1);
    let mut tally = Tally::default();
    client.create(&token, scope, 40, "before", &mut tally).await;
    client.flush().await;
    let mut c = redis.connection().await.unwrap();
    let _: () = redis::cmd("BGREWRITEAOF")
        .query_async(&mut c)
        .await
        .unwrap();
    let rewritten = harness::eventually(Duration::from_secs(10), || {
        let mut c = c.clone();
        async move {
            redis::cmd("INFO")
                .arg("persistence")
                .query_async::<String>(&mut c)
                .await
                .is_ok_and(|i| {
                    i.contains("aof_rewrite_in_progress:0")
                        && i.contains("aof_rewrite_scheduled:0")
                        && i.contains("aof_last_bgrewrite_status:ok")
                })
        }
    })
    .await;
    assert!(rewritten, "BGREWRITEAOF finished");
    client
        .create(&token, scope, 10, "in-copy", &mut tally)
        .await;
    let copy = redis.dir().with_extension("aof-copy");
    let status = std::process::Command::new("cp")
        .arg("-r")
        .arg(redis.dir().join("appendonlydir"))
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    // The node moves on after the copy.
    client
        .create(&token, scope, 200, "moved-on", &mut tally)
        .await;
    client.flush().await;
    client
        .create(&token, scope, 100, "buffered", &mut tally)
        .await;
    redis.kill9();
    std::fs::remove_dir_all(redis.dir().join("appendonlydir")).unwrap();
    let status = std::process::Command::new("cp")
        .arg("-r")
        .arg(&copy)
        .arg(redis.dir().join("appendonlydir"))
        .status()
        .unwrap();
    assert!(status.success());
    redis.restart().await;
    client.create(&token, scope, 30, "after", &mut tally).await;
    client.flush().await;
    let (found, skipped) = every_number_accounted_for(&client, &world, &token, scope, &tally).await;
    eprintln!(
        "restart from a rewritten, older AOF: {} requests, {} acknowledged, {found} stored, {skipped} lost (each 404 'skipped' at once), handed out twice: {}",
        tally.requests,
        tally.acked.len(),
        tally.twice.len(),
    );
    let _ = std::fs::remove_dir_all(&copy);
    assert!(
        tally.twice.is_empty(),
        "handed out twice: {:?}",
        tally.twice
    );
    // The AOF copy has the 10 "in-copy" creates still buffered: they are
    // flushed (a second time for none: they are new to MariaDB).
    assert_eq!(found, 40 + 10 + 200 + 30);
    assert_eq!(skipped, 100, "the 100 buffered after the copy were lost");
    drop(service);
    world.cleanup().await;
}

/// An application create with an `Idempotency-Key` whose process is
/// SIGKILLed between recording the key as in progress and finishing: the
/// key answers 409 for `IDEMPOTENCY_IN_PROGRESS_SECS`, then a retry works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_create_killed_mid_way_frees_its_key_after_the_in_progress_lifetime() {
    let redis = PrivateRedis::start().await;
    let mut settings = env(&redis);
    settings.push(("IDEMPOTENCY_IN_PROGRESS_SECS", "3".into()));
    let world = World::new(&settings).await;
    let port = free_port();
    let mut service = world.start(port).await;
    let base = service.base();
    let key = "0b9f5c2e-3a41-4d8e-9c77-21f0a6b4d3e8";
    let send = move |base: String| async move {
        reqwest::Client::new()
            .post(format!("{base}/api/v1/applications"))
            .header("Idempotency-Key", key)
            .json(&json!({"name": "killed mid-way"}))
            .timeout(Duration::from_secs(20))
            .send()
            .await
    };
    // The INSERT waits on a table lock, so the create is held between the
    // key's begin and its finish; the process is killed there.
    let mut lock = world.pool.acquire().await.unwrap();
    sqlx::raw_sql("LOCK TABLES applications WRITE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let pending = tokio::spawn(send(base.clone()));
    let waiting = harness::eventually(Duration::from_secs(10), || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = DATABASE() AND INFO LIKE 'INSERT INTO applications%'",
        )
        .fetch_one(&world.pool)
        .await
        .unwrap()
            > 0
    })
    .await;
    assert!(waiting, "the create waits in its INSERT");
    service.kill9();
    assert!(pending.await.unwrap().is_err(), "the client got no answer");
    sqlx::raw_sql("UNLOCK TABLES")
        .execute(&mut *lock)
        .await
        .unwrap();
    drop(lock);
    let killed_at = Instant::now();
    service = world.start(port).await;
    let r = send(base.clone()).await.unwrap();
    assert_eq!(r.status(), 409, "in progress: {:?}", r.text().await);
    let mut answered = 409;
    while killed_at.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let r = send(base.clone()).await.unwrap();
        answered = r.status().as_u16();
        if answered != 409 {
            break;
        }
    }
    let freed_after = killed_at.elapsed();
    let again = send(base.clone()).await.unwrap();
    let orphans: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM applications WHERE name = 'killed mid-way'")
            .fetch_one(&world.pool)
            .await
            .unwrap();
    eprintln!(
        "application create killed mid-way: 409 until {:.1} s after the kill (lifetime 3 s), then {answered}; \
         {orphans} rows with its name (the killed create's INSERT may commit after the kill: an orphan no token reaches)",
        freed_after.as_secs_f64()
    );
    assert_eq!(answered, 201, "the key works again after its lifetime");
    assert!(freed_after < Duration::from_secs(8), "{freed_after:?}");
    assert_eq!(again.status(), 201, "and is then remembered");
    drop(service);
    world.cleanup().await;
}

/// On a Redis Cluster: the replica of the application's master does a full
/// resync (restarted without its RDB), so the snapshot it receives carries
/// the epoch hash and everything else the master had. Its link is then held
/// back (SIGSTOP, and a 40 MB write queued on the master ahead of the
/// creates, so that they stay in the master's output buffer rather than in
/// the replica's socket), creates are acknowledged by the master, and the
/// master is SIGKILLed. The replica is promoted without them. Its first
/// creates must not reuse their numbers: each counter restarts at its
/// reservation, because the epoch's run_id is not the promoted node's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_a_full_resync_then_a_failover_hands_out_no_number_twice() {
    let cluster = crate::cluster::PrivateCluster::start();
    let world = World::new(&crate::failover_env(&cluster)).await;
    let service = world.start(free_port()).await;
    let base = service.base();
    let token = harness::setup_app(&base, 4).await;
    let app_key = world.keys().for_token(&token).app(&token);
    let master = cluster.master_of(&app_key);
    let replica = cluster
        .replica_of(master)
        .expect("the master has a replica");

    // A full resync: the replica comes back with nothing and loads the
    // master's snapshot.
    cluster.restart_without_rdb(replica);
    let synced = harness::eventually(Duration::from_secs(20), || async {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &replica.to_string(), "info", "replication"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("master_link_status:up")
    })
    .await;
    assert!(synced, "the restarted replica resynced with its master");

    let load = harness::Load::start("resync-", vec![base.clone()], &token, 4, 8);
    let flowing = harness::eventually(Duration::from_secs(15), || async {
        load.statuses().get(&201).copied().unwrap_or(0) > 200
    })
    .await;
    assert!(flowing, "creates succeed: {:?}", load.statuses());

    // Hold the replica's link back, with a large write ahead of the creates.
    cluster.signal(replica, "STOP");
    let tag = app_key
        .split_once('{')
        .and_then(|(_, rest)| rest.split_once('}'))
        .map(|(tag, _)| tag.to_string())
        .unwrap();
    let mut direct = redis::Client::open(format!("redis://127.0.0.1:{master}"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("{}{{{tag}}}ballast", world.prefix))
        .arg(vec![b'x'; 40 << 20])
        .query_async(&mut direct)
        .await
        .unwrap();
    let at_stop = load.statuses().get(&201).copied().unwrap_or(0);
    let acked_meanwhile = harness::eventually(Duration::from_secs(10), || async {
        load.statuses().get(&201).copied().unwrap_or(0) > at_stop + 30
    })
    .await;
    assert!(
        acked_meanwhile,
        "the master acknowledged creates the replica does not have"
    );
    let behind = load.statuses().get(&201).copied().unwrap_or(0) - at_stop;
    let killed_at = Instant::now();
    cluster.kill9(master);
    cluster.signal(replica, "CONT");
    let promoted = harness::eventually(Duration::from_secs(30), || async {
        cluster.serving(&app_key) == Some(replica)
    })
    .await;
    assert!(
        promoted,
        "the resynced replica took over the master's slots"
    );
    let (ledger, switch) = crate::resumes_after_failover(load, killed_at).await;
    let report = crate::failover_report(
        &world,
        &token,
        &ledger,
        switch,
        &format!("cluster: full resync, link held back ({behind} creates acknowledged meanwhile), master killed"),
    )
    .await;
    assert_eq!(report.collisions, 0, "no number was handed out twice");
    assert_eq!(report.dead, 0, "no dead letters");
    assert!(
        report.lost > 0,
        "the promoted replica lacked acknowledged creates (else this test proves nothing)"
    );
    drop(service);
    world.cleanup().await;
}
