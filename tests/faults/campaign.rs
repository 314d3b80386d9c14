//! A seeded, randomized fault campaign against real processes, in the
//! manner of Jepsen: a workload records every request and its answer in a
//! [`History`], a [`Nemesis`] injects one fault at a time at random
//! moments, and a checker ([`check`]) compares the history with what MariaDB
//! holds once everything is healed and flushed.
//!
//! The world: two instances of the service (the binary, as processes), a
//! private `redis-server` (RDB only, saved when the nemesis says so), and
//! MariaDB behind a [`Proxy`] the nemesis freezes or cuts; the checker reads
//! MariaDB directly. Idle counters leave Redis after 2 s
//! (`CHAT_IDLE_SECS`), number blocks are small (`NUMBER_BLOCK_MAX=64`) and
//! flushes frequent, so counters are evicted, brought back and reserved in
//! MariaDB many times a run, with snapshots and restarts in between. After
//! the fault phase everything is healed and the workload runs [`TAIL`] more
//! (creates must succeed again), then both instances flush until Redis holds
//! nothing pending, and the checker runs.
//!
//! `CHAOS_SEED` runs one seed (else [`FIXED_SEEDS`], one after the other);
//! `CHAOS_SECS` is the length of a run's fault phase (default 40).
//! `scripts/chaos` loops over fresh seeds. Every line the campaign prints,
//! and every assertion, names its seed: the seed fixes every choice of the
//! workload and the nemesis (not the timing of real processes).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::harness::{self, PrivateRedis, Proxy, Service, World, free_port};

/// The seeds CI runs when `CHAOS_SEED` is not set.
const FIXED_SEEDS: [u64; 2] = [20_240_601, 7_340_033];
/// Operator key of the services (the nemesis and the drain flush with it).
const ADMIN_KEY: &str = "chaos-campaign-operator-key";
/// Applications of the workload, each with [`CHATS_PER_APP`] chats at first.
const APPS: usize = 3;
/// Chats each application starts with (the workload creates more).
const CHATS_PER_APP: usize = 3;
/// Concurrent clients.
const WORKERS: usize = 6;
/// A chat number no application has: creates there must be refused (404).
const NO_SUCH_CHAT: i64 = 1_000_000;
/// Time limit of every request of the workload.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the workload goes on after the last fault is healed.
const TAIL: Duration = Duration::from_secs(5);

/// One campaign per seed; fails on any anomaly, naming the seeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeded_fault_campaign_finds_no_anomaly() {
    let secs = std::env::var("CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let seeds: Vec<u64> = match std::env::var("CHAOS_SEED") {
        Ok(s) => vec![s.trim().parse().expect("CHAOS_SEED is a u64")],
        Err(_) => FIXED_SEEDS.to_vec(),
    };
    let mut failed = Vec::new();
    for seed in seeds {
        let anomalies = campaign(seed, Duration::from_secs(secs)).await;
        if !anomalies.is_empty() {
            failed.push(format!(
                "CHAOS_SEED={seed} CHAOS_SECS={secs}: {} anomalies, the first: {}",
                anomalies.len(),
                anomalies[0]
            ));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// The settings of every service of the campaign.
fn settings() -> Vec<(&'static str, String)> {
    vec![
        ("CHAT_IDLE_SECS", "2".into()),
        ("NUMBER_BLOCK_MAX", "64".into()),
        ("FLUSH_INTERVAL_SECS", "1".into()),
        ("FLUSH_MAX_AGE_MS", "200".into()),
        ("READ_YOUR_WRITES_TIMEOUT_MS", "3000".into()),
        ("ADMIN_API_KEY", ADMIN_KEY.into()),
        // A killed instance's batches come back soon.
        ("LEASE_SECS", "3".into()),
        // Creates answer 503 promptly while Redis restarts.
        ("REDIS_TIMEOUT_MS", "1000".into()),
        // A message whose chat was lost with Redis is dead-lettered within
        // the drain, instead of waiting an hour for its chat.
        ("ORPHAN_MAX_AGE_SECS", "10".into()),
    ]
}

/// Runs one campaign: setup, workload and nemesis for `length`, heal, drain,
/// check. Returns the anomalies (each line names the seed).
async fn campaign(seed: u64, length: Duration) -> Vec<String> {
    eprintln!(
        "campaign CHAOS_SEED={seed}: {} s of faults",
        length.as_secs()
    );
    let redis = PrivateRedis::start().await;
    let proxy = Proxy::start(mysql_upstream().await).await;
    let mut env = settings();
    env.push(("REDIS_URL", redis.url()));
    let mut world = World::new(&env).await;
    // The services reach MariaDB through the proxy; `world.pool` stays direct.
    world.database_through(&proxy);
    let ports = [free_port(), free_port()];
    let mut services = Vec::new();
    for port in ports {
        services.push(world.start(port).await);
    }
    let bases: Vec<String> = services.iter().map(Service::base).collect();
    let http = reqwest::Client::builder()
        .timeout(CLIENT_TIMEOUT)
        .build()
        .unwrap();
    let mut tokens = Vec::new();
    for _ in 0..APPS {
        tokens.push(harness::setup_app(&bases[0], CHATS_PER_APP).await);
    }
    // The chats made up front are stored before the first fault.
    drain(&world, &http, &bases).await.unwrap();

    let started = Instant::now();
    let workload = Arc::new(Workload {
        seed,
        http: http.clone(),
        bases: bases.clone(),
        tokens: tokens.clone(),
        chats: Mutex::new(
            (0..APPS)
                .map(|_| (1..=CHATS_PER_APP as i64).collect())
                .collect(),
        ),
        history: History::new(started),
        stop: AtomicBool::new(false),
        lull: AtomicBool::new(false),
    });
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| tokio::spawn(worker(workload.clone(), w)))
        .collect();
    let mut nemesis = Nemesis {
        seed,
        rng: StdRng::seed_from_u64(seed),
        started,
        http: http.clone(),
        services,
        ports,
        redis,
        proxy,
        workload: workload.clone(),
        log: Vec::new(),
        snapshot_at: None,
        evictions: 0,
    };
    nemesis.run(&world, length).await;
    // Healed, the workload goes on for a while: creation must resume, and
    // counters in doubt are used again.
    nemesis.calm(&world);
    let healed_ms = workload.history.now_ms();
    tokio::time::sleep(TAIL).await;
    workload.stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }

    // Drain; the Redis connection of the world follows restarts.
    world.reconnect_redis(&nemesis.redis.url()).await;
    let drained = drain(&world, &http, &bases).await;
    let stored = Stored::read(&world, &tokens).await;
    let ops = std::mem::take(&mut *workload.history.ops.lock().unwrap());
    let verdict = check(
        seed,
        &ops,
        &stored,
        &nemesis.log,
        healed_ms,
        &Lookups {
            http: &http,
            base: &bases[0],
            tokens: &tokens,
        },
    )
    .await;
    let mut anomalies = verdict.anomalies;
    if let Err(left) = drained {
        anomalies.push(format!(
            "CHAOS_SEED={seed}: not drained after healing: {left}"
        ));
    }
    let dead = world.dead_letters().await;
    for e in nemesis.evictions_so_far(&world) {
        nemesis.evictions += e;
    }
    summary(seed, &ops, &nemesis, &verdict.figures, &dead, &anomalies);
    for a in anomalies.iter().take(40) {
        eprintln!("ANOMALY {a}");
    }
    if anomalies.len() > 40 {
        eprintln!(
            "CHAOS_SEED={seed}: … and {} more anomalies",
            anomalies.len() - 40
        );
    }
    drop(nemesis);
    if anomalies.is_empty() {
        world.cleanup().await;
    } else {
        eprintln!(
            "CHAOS_SEED={seed}: database {} and the service logs {} are kept for a look",
            world.db,
            world.log_path(ports[0]).display()
        );
    }
    anomalies
}

/// MariaDB's address, from `TEST_MYSQL_URL`.
async fn mysql_upstream() -> std::net::SocketAddr {
    let url = harness::mysql_url();
    let rest = url.trim_start_matches("mysql://");
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let host = host.split('/').next().unwrap();
    tokio::net::lookup_host(host)
        .await
        .unwrap()
        .next()
        .expect("TEST_MYSQL_URL names a host")
}

/// Operator flushes through every instance until nothing is pending nor
/// leased in Redis (at most 90 s). Errs with what is left.
async fn drain(world: &World, http: &reqwest::Client, bases: &[String]) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        for base in bases {
            let _ = http
                .post(format!("{base}/api/v1/admin/flush"))
                .bearer_auth(ADMIN_KEY)
                .timeout(Duration::from_secs(30))
                .send()
                .await;
        }
        let (pending, leases) = world.in_redis().await;
        if pending == 0 && leases == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{pending} records pending, {leases} batches leased"
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

// ---------------------------------------------------------------------------
// The history: every request of the workload and what it got.
// ---------------------------------------------------------------------------

/// What a request asked for.
#[derive(Clone, Debug)]
enum Request {
    /// POST a message to `chat` of application `app` (an index).
    Message {
        app: usize,
        chat: i64,
        body: String,
        key: Option<String>,
    },
    /// POST a chat to application `app`.
    Chat { app: usize, key: Option<String> },
    /// GET a message acknowledged earlier, which should show `body`.
    Read {
        app: usize,
        chat: i64,
        number: i64,
        body: String,
    },
}

/// What the answer said.
#[derive(Clone, Debug)]
enum Outcome {
    /// A create's 201, with its number.
    Acked(i64),
    /// A create's definite refusal: a 4xx or a 503, with the error text.
    Refused(u16, String),
    /// No answer that says what happened: a timeout, a connection error (an
    /// instance killed, say), a 201 without a number, another 5xx.
    Indeterminate(String),
    /// A read's answer: status, and the body (200) or the error text.
    Read(u16, String),
}

/// One request of the history.
#[derive(Clone, Debug)]
struct Op {
    /// Its index in the history.
    id: usize,
    /// The worker that sent it.
    worker: usize,
    /// The instance it went to.
    instance: usize,
    /// When it was sent, in milliseconds since the start of the fault phase.
    start_ms: u64,
    /// When its answer (or its failure) came, likewise.
    end_ms: u64,
    /// The HTTP status, when an answer came.
    status: Option<u16>,
    /// What it asked.
    req: Request,
    /// What it got.
    outcome: Outcome,
}

impl Op {
    /// `op #id (worker, instance, +start..end s, outcome)`, for the anomaly lines.
    fn at(&self) -> String {
        format!(
            "op #{} (worker {}, instance {}, +{:.2}..{:.2} s, {:?})",
            self.id,
            self.worker,
            self.instance,
            self.start_ms as f64 / 1000.0,
            self.end_ms as f64 / 1000.0,
            self.outcome
        )
    }
}

/// Every request of the run, in the order answered.
struct History {
    /// The start of the fault phase: time zero of every op and fault.
    started: Instant,
    /// The ops, appended as they are answered.
    ops: Mutex<Vec<Op>>,
}

impl History {
    /// An empty history whose clock starts at `started`.
    fn new(started: Instant) -> History {
        History {
            started,
            ops: Mutex::new(Vec::new()),
        }
    }

    /// Milliseconds since the start.
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}

// ---------------------------------------------------------------------------
// The workload: several clients over both instances.
// ---------------------------------------------------------------------------

/// What the workers share.
struct Workload {
    /// The campaign's seed (each worker derives its own generator from it).
    seed: u64,
    /// The client of every request (time limit [`CLIENT_TIMEOUT`]).
    http: reqwest::Client,
    /// `http://127.0.0.1:{port}` of each instance (ports survive restarts).
    bases: Vec<String>,
    /// The applications' tokens (an op names an application by index).
    tokens: Vec<String>,
    /// Acknowledged chat numbers of each application, oldest first.
    chats: Mutex<Vec<Vec<i64>>>,
    /// Every request and its answer.
    history: History,
    /// Set when the workload ends.
    stop: AtomicBool,
    /// Set by the nemesis for a lull: workers only read, so that counters
    /// go idle and leave Redis.
    lull: AtomicBool,
}

/// A message this worker got a 201 for: `(app, chat, number, body)`.
type Acked = (usize, i64, i64, String);

impl Workload {
    /// Sends `req` to instance `instance`, records it, and returns the outcome.
    async fn perform(&self, worker: usize, instance: usize, req: Request) -> Outcome {
        let base = &self.bases[instance];
        let builder = match &req {
            Request::Message {
                app,
                chat,
                body,
                key,
            } => {
                let b = self
                    .http
                    .post(format!(
                        "{base}/api/v1/applications/{}/chats/{chat}/messages",
                        self.tokens[*app]
                    ))
                    .json(&json!({ "body": body }));
                match key {
                    Some(k) => b.header("Idempotency-Key", k),
                    None => b,
                }
            }
            Request::Chat { app, key } => {
                let b = self.http.post(format!(
                    "{base}/api/v1/applications/{}/chats",
                    self.tokens[*app]
                ));
                match key {
                    Some(k) => b.header("Idempotency-Key", k),
                    None => b,
                }
            }
            Request::Read {
                app, chat, number, ..
            } => self.http.get(format!(
                "{base}/api/v1/applications/{}/chats/{chat}/messages/{number}",
                self.tokens[*app]
            )),
        };
        let start_ms = self.history.now_ms();
        let answer = match builder.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                match r.text().await {
                    Ok(text) => Ok((status, text)),
                    Err(e) => Err(describe(&e)),
                }
            }
            Err(e) => Err(describe(&e)),
        };
        let (status, outcome) = match answer {
            Err(e) => (None, Outcome::Indeterminate(e)),
            Ok((status, text)) => {
                let v: Value = serde_json::from_str(&text).unwrap_or_default();
                let error = v["error"]
                    .as_str()
                    .map_or_else(|| text.chars().take(200).collect(), str::to_string);
                let outcome = match (&req, status) {
                    (Request::Read { .. }, 200) => {
                        Outcome::Read(200, v["body"].as_str().unwrap_or_default().to_string())
                    }
                    (Request::Read { .. }, s) => Outcome::Read(s, error),
                    (_, 201) => match v["number"].as_i64() {
                        Some(n) => Outcome::Acked(n),
                        None => Outcome::Indeterminate(format!("201 without a number: {text}")),
                    },
                    (_, s) if (400..500).contains(&s) || s == 503 => Outcome::Refused(s, error),
                    (_, s) => Outcome::Indeterminate(format!("status {s}: {error}")),
                };
                (Some(status), outcome)
            }
        };
        let mut ops = self.history.ops.lock().unwrap();
        let id = ops.len();
        ops.push(Op {
            id,
            worker,
            instance,
            start_ms,
            end_ms: self.history.now_ms(),
            status,
            req,
            outcome: outcome.clone(),
        });
        outcome
    }

    /// A chat of `app` to write to: mostly one of its two newest, so that
    /// older ones go idle (and leave Redis) and now and then come back.
    fn pick_chat(&self, rng: &mut StdRng, app: usize) -> i64 {
        let chats = self.chats.lock().unwrap();
        let list = &chats[app];
        if rng.random_bool(0.6) {
            let newest = &list[list.len().saturating_sub(2)..];
            *newest.choose(rng).unwrap()
        } else {
            *list.choose(rng).unwrap()
        }
    }

    /// A message create, with `key` or without. A keyed create that got no
    /// answer or a 503 is retried (up to 3 sends, on either instance), and a
    /// keyed create that got its 201 is now and then sent again on the other
    /// instance (it must get the same number). Returns the number.
    async fn create_message(
        &self,
        rng: &mut StdRng,
        worker: usize,
        (app, chat): (usize, i64),
        body: String,
        key: Option<String>,
    ) -> Option<i64> {
        let mut instance = rng.random_range(0..self.bases.len());
        let mut number = None;
        let mut replayed = false;
        for _ in 0..3 {
            let req = Request::Message {
                app,
                chat,
                body: body.clone(),
                key: key.clone(),
            };
            match self.perform(worker, instance, req).await {
                Outcome::Acked(n) => {
                    number = number.or(Some(n));
                    if key.is_none() || replayed || !rng.random_bool(0.2) {
                        break;
                    }
                    replayed = true;
                    instance = (instance + 1) % self.bases.len();
                }
                Outcome::Indeterminate(_) | Outcome::Refused(503, _) if key.is_some() => {
                    tokio::time::sleep(Duration::from_millis(rng.random_range(100..600))).await;
                    instance = rng.random_range(0..self.bases.len());
                }
                _ => break,
            }
        }
        number
    }

    /// A GET of one of `acked`, on either instance.
    async fn read_back(&self, rng: &mut StdRng, worker: usize, acked: &[Acked]) {
        if let Some((app, chat, number, body)) = acked.choose(rng).cloned() {
            let req = Request::Read {
                app,
                chat,
                number,
                body,
            };
            self.perform(worker, rng.random_range(0..self.bases.len()), req)
                .await;
        }
    }

    /// A chat create, keyed half of the time (retried like a keyed message).
    async fn create_chat(&self, rng: &mut StdRng, worker: usize, app: usize) {
        let key = rng
            .random_bool(0.5)
            .then(|| format!("{:032x}", rng.random::<u128>()));
        let mut instance = rng.random_range(0..self.bases.len());
        for _ in 0..3 {
            let req = Request::Chat {
                app,
                key: key.clone(),
            };
            match self.perform(worker, instance, req).await {
                Outcome::Acked(n) => {
                    let mut chats = self.chats.lock().unwrap();
                    if !chats[app].contains(&n) {
                        chats[app].push(n);
                    }
                    break;
                }
                Outcome::Indeterminate(_) | Outcome::Refused(503, _) if key.is_some() => {
                    tokio::time::sleep(Duration::from_millis(rng.random_range(100..600))).await;
                    instance = rng.random_range(0..self.bases.len());
                }
                _ => break,
            }
        }
    }
}

/// A transport error in a few words: timeout, connect, or the chain of causes.
fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timeout".into();
    }
    // The causes, without the URL the outermost message repeats.
    let mut causes = Vec::new();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        causes.push(c.to_string());
        cause = c.source();
    }
    if causes.is_empty() {
        e.to_string()
    } else {
        causes.join(": ")
    }
}

/// One client: a seeded mix of message creates (some keyed, some retried),
/// reads of its acknowledged messages, chat creates, creates in a chat that
/// does not exist (404) and key reuse with another body (422).
async fn worker(load: Arc<Workload>, w: usize) {
    let mut rng =
        StdRng::seed_from_u64(load.seed ^ (w as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut acked: Vec<Acked> = Vec::new();
    let mut keyed: Vec<(usize, i64, String)> = Vec::new();
    let mut seq = 0u64;
    while !load.stop.load(Ordering::SeqCst) {
        seq += 1;
        // Unique in the run: the checker finds each request's rows by body.
        let body = format!("c{}-w{w}-{seq} ✓", load.seed);
        if load.lull.load(Ordering::SeqCst) {
            // Reads only, so that counters go idle.
            load.read_back(&mut rng, w, &acked).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        match rng.random_range(0..100) {
            0..20 if !acked.is_empty() => load.read_back(&mut rng, w, &acked).await,
            20..23 => {
                let app = rng.random_range(0..APPS);
                load.create_chat(&mut rng, w, app).await;
            }
            23..26 => {
                let app = rng.random_range(0..APPS);
                let req = Request::Message {
                    app,
                    chat: NO_SUCH_CHAT,
                    body,
                    key: None,
                };
                load.perform(w, rng.random_range(0..load.bases.len()), req)
                    .await;
            }
            26..29 if !keyed.is_empty() => {
                let (app, chat, key) = keyed.choose(&mut rng).cloned().unwrap();
                let req = Request::Message {
                    app,
                    chat,
                    body,
                    key: Some(key),
                };
                load.perform(w, rng.random_range(0..load.bases.len()), req)
                    .await;
            }
            _ => {
                let app = rng.random_range(0..APPS);
                let chat = load.pick_chat(&mut rng, app);
                let key = rng
                    .random_bool(0.4)
                    .then(|| format!("{:032x}", rng.random::<u128>()));
                let number = load
                    .create_message(&mut rng, w, (app, chat), body.clone(), key.clone())
                    .await;
                if let Some(n) = number {
                    acked.push((app, chat, n, body));
                    if let Some(k) = key {
                        keyed.push((app, chat, k));
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(5..40))).await;
    }
}

// ---------------------------------------------------------------------------
// The nemesis: one fault at a time, every 2 to 6 s.
// ---------------------------------------------------------------------------

/// The faults the nemesis picks from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum FaultKind {
    /// SIGKILL one instance, then start it again on its port.
    KillInstance,
    /// `SAVE`: a snapshot that a later restore goes back to.
    RedisSave,
    /// SIGKILL Redis and restart it from the last snapshot.
    RedisRestore,
    /// SIGKILL Redis and restart it with no data.
    RedisEmpty,
    /// Every byte to and from MariaDB held for 1 to 5 s.
    DbFreeze,
    /// Every connection to MariaDB cut, and new ones refused, for 1 to 3 s.
    DbCut,
    /// `POST /admin/flush` on one instance.
    OperatorFlush,
    /// Nothing written for 4 to 6 s: counters go idle and leave Redis.
    Lull,
}

impl FaultKind {
    /// Each kind with its weight.
    const WEIGHTS: [(FaultKind, u32); 8] = [
        (FaultKind::KillInstance, 3),
        (FaultKind::RedisSave, 2),
        (FaultKind::RedisRestore, 2),
        (FaultKind::RedisEmpty, 1),
        (FaultKind::DbFreeze, 2),
        (FaultKind::DbCut, 2),
        (FaultKind::OperatorFlush, 2),
        (FaultKind::Lull, 2),
    ];

    /// Whether Redis loses writes in this fault.
    fn loses_redis_data(self) -> bool {
        matches!(self, FaultKind::RedisRestore | FaultKind::RedisEmpty)
    }
}

/// One fault, when it began (ms since the start of the fault phase).
struct Fault {
    /// When it began.
    at_ms: u64,
    /// Which fault.
    kind: FaultKind,
    /// What was done, for the log.
    what: String,
}

/// Owns the processes it breaks.
struct Nemesis {
    /// The campaign's seed, for the log lines.
    seed: u64,
    /// Its choices: which fault, when, how long.
    rng: StdRng,
    /// Time zero, as the history's.
    started: Instant,
    /// For the operator flush.
    http: reqwest::Client,
    /// The two instances, on `ports`.
    services: Vec<Service>,
    /// Their ports, kept across restarts.
    ports: [u16; 2],
    /// The private Redis of the campaign.
    redis: PrivateRedis,
    /// The services' way to MariaDB.
    proxy: Proxy,
    /// For the lull.
    workload: Arc<Workload>,
    /// Every fault injected.
    log: Vec<Fault>,
    /// When the snapshot a restore would load was taken.
    snapshot_at: Option<u64>,
    /// Idle counters evicted, from the logs of instances since killed.
    evictions: u64,
}

impl Nemesis {
    /// Injects faults until `length` has passed since the start.
    async fn run(&mut self, world: &World, length: Duration) {
        loop {
            let wait = Duration::from_millis(self.rng.random_range(2000..6000));
            if self.started.elapsed() + wait >= length {
                tokio::time::sleep(length.saturating_sub(self.started.elapsed())).await;
                return;
            }
            tokio::time::sleep(wait).await;
            let total: u32 = FaultKind::WEIGHTS.iter().map(|(_, w)| w).sum();
            let mut roll = self.rng.random_range(0..total);
            let kind = FaultKind::WEIGHTS
                .iter()
                .find(|(_, w)| {
                    let hit = roll < *w;
                    roll = roll.saturating_sub(*w);
                    hit
                })
                .unwrap()
                .0;
            self.inject(world, kind).await;
        }
    }

    /// Injects one fault and logs it.
    async fn inject(&mut self, world: &World, kind: FaultKind) {
        let at_ms = self.started.elapsed().as_millis() as u64;
        let (kind, what) = match kind {
            FaultKind::KillInstance => {
                let i = self.rng.random_range(0..self.services.len());
                self.services[i].kill9();
                self.evictions += self.evictions_in_log(world, i);
                let t = Instant::now();
                self.services[i] = world.start(self.ports[i]).await;
                let what = format!(
                    "SIGKILL instance {i} (port {}), started again in {} ms",
                    self.ports[i],
                    t.elapsed().as_millis()
                );
                (kind, what)
            }
            FaultKind::RedisSave => {
                self.redis.save().await;
                self.snapshot_at = Some(at_ms);
                (
                    kind,
                    "Redis SAVE (a snapshot a later restore goes back to)".into(),
                )
            }
            FaultKind::RedisRestore => match self.snapshot_at {
                Some(s) => {
                    self.redis.restart().await;
                    let what = format!(
                        "SIGKILL Redis, restarted from the snapshot of +{:.1} s",
                        s as f64 / 1000.0
                    );
                    (kind, what)
                }
                None => {
                    // Nothing to go back to: take the snapshot instead.
                    self.redis.save().await;
                    self.snapshot_at = Some(at_ms);
                    let what = "Redis SAVE (no snapshot to restore yet)".to_string();
                    (FaultKind::RedisSave, what)
                }
            },
            FaultKind::RedisEmpty => {
                self.redis.kill9();
                let _ = std::fs::remove_file(self.redis.dir().join("dump.rdb"));
                self.redis.restart().await;
                self.snapshot_at = None;
                (kind, "SIGKILL Redis, restarted empty".into())
            }
            FaultKind::DbFreeze => {
                let d = self.rng.random_range(1000..5000);
                self.proxy.freeze();
                tokio::time::sleep(Duration::from_millis(d)).await;
                self.proxy.thaw();
                (kind, format!("MariaDB frozen for {d} ms"))
            }
            FaultKind::DbCut => {
                let d = self.rng.random_range(1000..3000);
                self.proxy.cut();
                tokio::time::sleep(Duration::from_millis(d)).await;
                self.proxy.heal();
                (kind, format!("MariaDB cut for {d} ms"))
            }
            FaultKind::OperatorFlush => {
                let i = self.rng.random_range(0..self.services.len());
                let r = self
                    .http
                    .post(format!("{}/api/v1/admin/flush", self.services[i].base()))
                    .bearer_auth(ADMIN_KEY)
                    .timeout(Duration::from_secs(15))
                    .send()
                    .await;
                let answer = match r {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let v: Value = r.json().await.unwrap_or_default();
                        format!(
                            "{status}, written {}, drained {}",
                            v["written"], v["drained"]
                        )
                    }
                    Err(e) => describe(&e),
                };
                (kind, format!("operator flush on instance {i}: {answer}"))
            }
            FaultKind::Lull => {
                let d = self.rng.random_range(4000..6000);
                self.workload.lull.store(true, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(d)).await;
                self.workload.lull.store(false, Ordering::SeqCst);
                (
                    kind,
                    format!("no writes for {d} ms (idle counters leave Redis)"),
                )
            }
        };
        self.logged(at_ms, kind, what);
    }

    /// Prints the fault and adds it to the log.
    fn logged(&mut self, at_ms: u64, kind: FaultKind, what: String) {
        eprintln!(
            "CHAOS_SEED={} +{:.1} s fault: {what}",
            self.seed,
            at_ms as f64 / 1000.0
        );
        self.log.push(Fault { at_ms, kind, what });
    }

    /// Lets every byte through again.
    fn calm(&self, world: &World) {
        self.proxy.thaw();
        self.proxy.heal();
        eprintln!(
            "CHAOS_SEED={} +{:.1} s healed; {} s more of workload, then drain and check (logs: {})",
            self.seed,
            self.started.elapsed().as_secs_f64(),
            TAIL.as_secs(),
            world.log_path(self.ports[0]).display()
        );
    }

    /// Idle counters instance `i` reported evicting, from its log.
    fn evictions_in_log(&self, world: &World, i: usize) -> u64 {
        let log = std::fs::read_to_string(world.log_path(self.ports[i])).unwrap_or_default();
        log.lines()
            .filter(|l| l.contains("idle counters evicted"))
            .filter_map(|l| {
                let rest = l.split("evicted=").nth(1)?;
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    }

    /// Evictions in the logs of the running instances.
    fn evictions_so_far(&self, world: &World) -> Vec<u64> {
        (0..self.services.len())
            .map(|i| self.evictions_in_log(world, i))
            .collect()
    }
}

// ---------------------------------------------------------------------------
// The checker: the history against MariaDB.
// ---------------------------------------------------------------------------

/// What MariaDB holds at the end, per application (by index).
struct Stored {
    /// Messages: `(chat, number) → body`.
    messages: Vec<HashMap<(i64, i64), String>>,
    /// Chat numbers.
    chats: Vec<HashSet<i64>>,
    /// Skipped numbers per counter (chat number; 0 is the chat counter).
    skips: Vec<HashMap<i64, Vec<RangeInclusive<i64>>>>,
    /// Every stored body, with where it is: `(app, chat, number)`.
    bodies: HashMap<String, Vec<(usize, i64, i64)>>,
}

impl Stored {
    /// Reads it, directly (never through the proxy).
    async fn read(world: &World, tokens: &[String]) -> Stored {
        let mut stored = Stored {
            messages: Vec::new(),
            chats: Vec::new(),
            skips: Vec::new(),
            bodies: HashMap::new(),
        };
        for (app, token) in tokens.iter().enumerate() {
            let mut messages = HashMap::new();
            for (chat, number, body) in world.stored(token).await {
                stored
                    .bodies
                    .entry(body.clone())
                    .or_default()
                    .push((app, chat, number));
                messages.insert((chat, number), body);
            }
            stored.messages.push(messages);
            stored
                .chats
                .push(world.stored_chats(token).await.into_iter().collect());
            stored.skips.push(world.skips(token).await);
        }
        stored
    }

    /// Whether `number` of the counter of `chat` (0: the chat counter) of
    /// `app` was skipped, or, for a message, its chat's number was.
    fn skipped(&self, app: usize, chat: i64, number: i64) -> bool {
        let within = |counter: i64, n: i64| {
            self.skips[app]
                .get(&counter)
                .is_some_and(|rs| rs.iter().any(|r| r.contains(&n)))
        };
        within(chat, number) || (chat != 0 && within(0, chat))
    }
}

/// How the checker asks the service about a number it does not find stored.
struct Lookups<'a> {
    /// The client.
    http: &'a reqwest::Client,
    /// The instance asked.
    base: &'a str,
    /// The applications' tokens, by index.
    tokens: &'a [String],
}

impl Lookups<'_> {
    /// GET of a chat (`chat` 0: `number` is a chat) or a message: status and
    /// error text (a 503 is asked again, for up to 10 s).
    async fn get(&self, app: usize, chat: i64, number: i64) -> (u16, String) {
        let token = &self.tokens[app];
        let url = if chat == 0 {
            format!("{}/api/v1/applications/{token}/chats/{number}", self.base)
        } else {
            format!(
                "{}/api/v1/applications/{token}/chats/{chat}/messages/{number}",
                self.base
            )
        };
        let mut last = (0, String::new());
        for _ in 0..20 {
            match self.http.get(&url).send().await {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let v: Value = r.json().await.unwrap_or_default();
                    last = (status, v["error"].as_str().unwrap_or_default().to_string());
                    if status != 503 {
                        return last;
                    }
                }
                Err(e) => last = (0, describe(&e)),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        last
    }
}

/// Figures of the run for the summary.
#[derive(Default)]
struct Figures {
    /// Acknowledged creates whose number answers 404 "skipped".
    skipped: usize,
    /// Bodies stored although every request that sent them went unanswered.
    indeterminate_stored: usize,
    /// Reads that answered 404 for a number since recorded as skipped.
    reads_of_skipped: usize,
    /// Keyed requests that got another number after Redis lost their key.
    keys_forgotten: usize,
    /// Message creates refused with 404 in a chat that is stored in the
    /// end (acknowledged earlier, never skipped): where they happened.
    refused_in_live_chats: Vec<String>,
}

/// What the checker found.
struct Verdict {
    /// One line per anomaly, each naming the seed.
    anomalies: Vec<String>,
    /// Figures for the summary.
    figures: Figures,
}

/// A scope of numbers: the chats of an application (`chat` 0), or the
/// messages of a chat.
type Scope = (usize, i64);

/// What identifies a create for idempotency: scope, key and body; an
/// unkeyed create is only itself (its op id).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
enum Identity {
    /// A keyed create: scope, key and body.
    Keyed(Scope, String, String),
    /// An unkeyed create: the op's id.
    Once(usize),
}

/// The scope, identity and body of a create op (None for a read).
fn create_of(op: &Op) -> Option<(Scope, Identity, Option<&str>)> {
    match &op.req {
        Request::Message {
            app,
            chat,
            body,
            key,
        } => {
            let scope = (*app, *chat);
            let identity = match key {
                Some(k) => Identity::Keyed(scope, k.clone(), body.clone()),
                None => Identity::Once(op.id),
            };
            Some((scope, identity, Some(body.as_str())))
        }
        Request::Chat { app, key } => {
            let scope = (*app, 0);
            let identity = match key {
                Some(k) => Identity::Keyed(scope, k.clone(), String::new()),
                None => Identity::Once(op.id),
            };
            Some((scope, identity, None))
        }
        Request::Read { .. } => None,
    }
}

/// Checks the history against what is stored, rule by rule:
/// 1. no number of a scope is acknowledged to two different creates (a
///    keyed request sent again is the same create; the same keyed request
///    gets one number, unless Redis lost data in between and at most one
///    of its numbers is stored);
/// 2. every acknowledged create is stored under its number (a message with
///    its own body), or its number answers 404 "skipped";
/// 3. no body sent only in refused requests (4xx, 503) is stored;
/// 4. no body is stored twice (an unanswered create at most once);
/// 5. a read of an acknowledged message shows its body (200), or answers
///    503, or 404 for a number since recorded as skipped;
///
/// and no answer is a 5xx other than 503, and creates succeed again once
/// every fault is healed (at `healed_ms`).
async fn check(
    seed: u64,
    ops: &[Op],
    stored: &Stored,
    faults: &[Fault],
    healed_ms: u64,
    lookups: &Lookups<'_>,
) -> Verdict {
    let mut found = Anomalies {
        seed,
        lines: Vec::new(),
    };
    let mut figures = Figures::default();
    check_answers(ops, healed_ms, &mut found);
    check_numbers(ops, stored, faults, &mut found, &mut figures);
    check_acknowledged(ops, stored, faults, lookups, &mut found, &mut figures).await;
    check_bodies(ops, stored, &mut found, &mut figures);
    check_reads(ops, stored, &mut found, &mut figures);
    // Not a rule, a figure: a create in a chat that exists should not get 404.
    for op in ops {
        if let (Request::Message { app, chat, .. }, Outcome::Refused(404, _)) =
            (&op.req, &op.outcome)
            && *chat != NO_SUCH_CHAT
            && stored.chats[*app].contains(chat)
        {
            figures
                .refused_in_live_chats
                .push(format!("app {app} chat {chat}: {}", op.at()));
        }
    }
    Verdict {
        anomalies: found.lines,
        figures,
    }
}

/// The anomalies found so far.
struct Anomalies {
    /// The campaign's seed, in every line.
    seed: u64,
    /// One line per anomaly.
    lines: Vec<String>,
}

impl Anomalies {
    /// Adds one, under `rule`, naming the seed.
    fn flag(&mut self, rule: &str, detail: String) {
        self.lines
            .push(format!("CHAOS_SEED={} [{rule}] {detail}", self.seed));
    }
}

/// No 5xx but 503, and some create acknowledged after `healed_ms`.
fn check_answers(ops: &[Op], healed_ms: u64, found: &mut Anomalies) {
    for op in ops {
        if let Some(s) = op.status.filter(|s| *s >= 500 && *s != 503) {
            found.flag("5xx", format!("status {s}: {}", op.at()));
        }
    }
    let after_healing = ops
        .iter()
        .filter(|op| op.start_ms >= healed_ms && matches!(op.outcome, Outcome::Acked(_)))
        .count();
    if after_healing == 0 {
        found.flag(
            "liveness",
            format!(
                "no create acknowledged in the {} s after healing",
                TAIL.as_secs()
            ),
        );
    }
}

/// Rule 1: one create per number of a scope, and one number per keyed request.
fn check_numbers(
    ops: &[Op],
    stored: &Stored,
    faults: &[Fault],
    found: &mut Anomalies,
    figures: &mut Figures,
) {
    let mut by_number: BTreeMap<(Scope, i64), Vec<(&Op, Identity)>> = BTreeMap::new();
    let mut by_identity: HashMap<Identity, Vec<(&Op, i64)>> = HashMap::new();
    for op in ops {
        if let (Some((scope, identity, _)), Outcome::Acked(n)) = (create_of(op), &op.outcome) {
            by_number
                .entry((scope, *n))
                .or_default()
                .push((op, identity.clone()));
            by_identity.entry(identity).or_default().push((op, *n));
        }
    }
    for (((app, chat), n), acks) in &by_number {
        let identities: HashSet<&Identity> = acks.iter().map(|(_, i)| i).collect();
        if identities.len() > 1 {
            let what = if *chat == 0 {
                format!("chat number {n} of app {app}")
            } else {
                format!("message number {n} of app {app} chat {chat}")
            };
            let who: Vec<String> = acks
                .iter()
                .map(|(op, _)| format!("{} {:?}", op.at(), op.req))
                .collect();
            found.flag(
                "1 number handed out twice",
                format!(
                    "{what} acknowledged to {} creates: {}",
                    identities.len(),
                    who.join("; ")
                ),
            );
        }
    }
    for (identity, acks) in &by_identity {
        let Identity::Keyed((app, chat), key, body) = identity else {
            continue;
        };
        let numbers: BTreeMap<i64, &Op> = acks.iter().map(|(op, n)| (*n, *op)).collect();
        if numbers.len() < 2 {
            continue;
        }
        let kept = numbers
            .keys()
            .filter(|n| {
                if *chat == 0 {
                    stored.chats[*app].contains(n)
                } else {
                    stored.messages[*app].get(&(*chat, **n)) == Some(body)
                }
            })
            .count();
        let from = acks.iter().map(|(op, _)| op.start_ms).min().unwrap_or(0);
        let to = acks.iter().map(|(op, _)| op.end_ms).max().unwrap_or(0);
        let lost_between = faults
            .iter()
            .any(|f| f.kind.loses_redis_data() && (from..=to).contains(&f.at_ms));
        let who: Vec<String> = numbers
            .iter()
            .map(|(n, op)| format!("{n} by {}", op.at()))
            .collect();
        if kept > 1 || !lost_between {
            found.flag(
                "1 one key, two numbers",
                format!(
                    "key {key} of app {app} chat {chat} got numbers {}; {kept} of them stored; Redis lost data in between: {lost_between}",
                    who.join(", ")
                ),
            );
        } else {
            figures.keys_forgotten += 1;
        }
    }
}

/// Rule 2: every acknowledged create is stored under its number, with its
/// body, or its number answers 404 "skipped" (asked of the service).
async fn check_acknowledged(
    ops: &[Op],
    stored: &Stored,
    faults: &[Fault],
    lookups: &Lookups<'_>,
    found: &mut Anomalies,
    figures: &mut Figures,
) {
    // When Redis lost data after `ms`, if it did.
    let loss_after = |ms: u64| {
        faults
            .iter()
            .find(|f| f.kind.loses_redis_data() && f.at_ms >= ms)
            .map_or("Redis lost no data after it".to_string(), |f| {
                format!(
                    "Redis lost data at +{:.2} s ({})",
                    f.at_ms as f64 / 1000.0,
                    f.what
                )
            })
    };
    let mut looked_up: HashSet<(usize, i64, i64)> = HashSet::new();
    let mut seen: HashSet<(usize, i64, i64, Option<&str>)> = HashSet::new();
    // Every place a body was acknowledged at: a keyed create that Redis
    // forgot (its key lost with the data) and that a retry acknowledged
    // again under another number is stored under that one (rule 1 judges
    // the two numbers).
    let acked_at: HashSet<(usize, i64, i64, &str)> = ops
        .iter()
        .filter_map(|op| match (create_of(op), &op.outcome) {
            (Some(((app, chat), _, Some(body))), Outcome::Acked(n)) => Some((app, chat, *n, body)),
            _ => None,
        })
        .collect();
    for op in ops {
        let (Some(((app, chat), _, body)), Outcome::Acked(n)) = (create_of(op), &op.outcome) else {
            continue;
        };
        if !seen.insert((app, chat, *n, body)) {
            continue;
        }
        let here = if chat == 0 {
            stored.chats[app].contains(n)
        } else {
            match stored.messages[app].get(&(chat, *n)) {
                Some(b) if Some(b.as_str()) == body => true,
                Some(other) => {
                    found.flag(
                        "2 stored with another body",
                        format!(
                            "app {app} chat {chat} number {n} holds {other:?}, acknowledged for {:?} by {}",
                            body.unwrap_or_default(),
                            op.at()
                        ),
                    );
                    continue;
                }
                None => false,
            }
        };
        if let Some(b) = body {
            for place in stored.bodies.get(b).into_iter().flatten() {
                if *place != (app, chat, *n) && !acked_at.contains(&(place.0, place.1, place.2, b))
                {
                    found.flag(
                        "2 stored under another number",
                        format!(
                            "{b:?} acknowledged as {n} by {} is stored at {place:?} (app, chat, number)",
                            op.at()
                        ),
                    );
                }
            }
        }
        if here || !looked_up.insert((app, chat, *n)) {
            continue;
        }
        let (status, error) = lookups.get(app, chat, *n).await;
        if status == 404 && error.contains("skipped") {
            figures.skipped += 1;
        } else {
            let ranges = stored.skips[app].get(&chat).map_or(0, Vec::len);
            found.flag(
                "2 acknowledged and missing",
                format!(
                    "app {app} chat {chat} number {n} ({}) is not stored; GET answers {status} {error:?}; acknowledged by {}; \
                     {}; its counter has {ranges} skipped ranges",
                    body.map_or("a chat".to_string(), |b| format!("{b:?}")),
                    op.at(),
                    loss_after(op.start_ms)
                ),
            );
        }
    }
}

/// Rules 3 and 4: each stored body against the requests that sent it.
fn check_bodies(ops: &[Op], stored: &Stored, found: &mut Anomalies, figures: &mut Figures) {
    let mut sent: HashMap<&str, Vec<&Op>> = HashMap::new();
    for op in ops {
        if let Some((_, _, Some(body))) = create_of(op) {
            sent.entry(body).or_default().push(op);
        }
    }
    for (body, places) in &stored.bodies {
        let senders = sent.get(body.as_str()).cloned().unwrap_or_default();
        let history: Vec<String> = senders.iter().map(|op| op.at()).collect();
        if senders.is_empty() {
            found.flag("3 stored, never sent", format!("{body:?} at {places:?}"));
        } else if senders
            .iter()
            .all(|op| matches!(op.outcome, Outcome::Refused(..)))
        {
            found.flag(
                "3 refused and stored",
                format!(
                    "{body:?} is stored at {places:?} (app, chat, number); every request refused: {}",
                    history.join("; ")
                ),
            );
        } else if senders
            .iter()
            .all(|op| matches!(op.outcome, Outcome::Indeterminate(_) | Outcome::Refused(..)))
        {
            figures.indeterminate_stored += 1;
        }
        if places.len() > 1 {
            found.flag(
                "4 stored twice",
                format!(
                    "{body:?} is stored at {places:?} (app, chat, number); sent by {}",
                    history.join("; ")
                ),
            );
        }
    }
}

/// Rule 5: reads of acknowledged messages.
fn check_reads(ops: &[Op], stored: &Stored, found: &mut Anomalies, figures: &mut Figures) {
    for op in ops {
        let (
            Request::Read {
                app,
                chat,
                number,
                body,
            },
            Outcome::Read(status, got),
        ) = (&op.req, &op.outcome)
        else {
            continue;
        };
        match status {
            200 if got == body => {}
            200 => found.flag(
                "5 read another body",
                format!(
                    "app {app} chat {chat} number {number} read {got:?}, acknowledged {body:?}: {}",
                    op.at()
                ),
            ),
            404 if stored.skipped(*app, *chat, *number)
                && stored.messages[*app].contains_key(&(*chat, *number)) =>
            {
                // Recorded skipped, yet stored: a read of an acknowledged
                // message that was still on its way answered "skipped".
                found.flag(
                    "5 read skipped, but stored",
                    format!(
                        "app {app} chat {chat} number {number} ({body:?}) answered 404 {got:?}, and is stored: {}",
                        op.at()
                    ),
                )
            }
            404 if stored.skipped(*app, *chat, *number) => figures.reads_of_skipped += 1,
            404 => found.flag(
                "5 read 404",
                format!(
                    "app {app} chat {chat} number {number} ({body:?}) answered 404 {got:?}, and is not recorded as skipped: {}",
                    op.at()
                ),
            ),
            503 => {}
            other => found.flag(
                "5 read status",
                format!(
                    "app {app} chat {chat} number {number}: {other} {got:?}: {}",
                    op.at()
                ),
            ),
        }
    }
}

/// Prints the summary line of a run (and the fault log).
fn summary(
    seed: u64,
    ops: &[Op],
    nemesis: &Nemesis,
    figures: &Figures,
    dead: &[String],
    anomalies: &[String],
) {
    let (mut creates, mut acked, mut refused, mut unknown, mut reads) = (0, 0, 0, 0, 0);
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    for op in ops {
        match op.outcome {
            Outcome::Read(..) => reads += 1,
            Outcome::Acked(_) => acked += 1,
            Outcome::Refused(..) => refused += 1,
            Outcome::Indeterminate(_) => unknown += 1,
        }
        if !matches!(op.req, Request::Read { .. }) {
            creates += 1;
        }
        let kind = match op.req {
            Request::Message { .. } => "message",
            Request::Chat { .. } => "chat",
            Request::Read { .. } => "read",
        };
        let status = op.status.map_or("none".to_string(), |s| s.to_string());
        *statuses.entry(format!("{kind} {status}")).or_default() += 1;
        let reason = match &op.outcome {
            Outcome::Refused(s, error) => format!("{kind} refused {s}: {error}"),
            Outcome::Indeterminate(why) => format!("{kind} indeterminate: {why}"),
            _ => continue,
        };
        *reasons
            .entry(reason.chars().take(120).collect())
            .or_default() += 1;
    }
    let mut faults: BTreeMap<FaultKind, u64> = BTreeMap::new();
    for f in &nemesis.log {
        *faults.entry(f.kind).or_default() += 1;
    }
    eprintln!("CHAOS_SEED={seed} fault log:");
    for f in &nemesis.log {
        eprintln!(
            "  +{:6.1} s {:?}: {}",
            f.at_ms as f64 / 1000.0,
            f.kind,
            f.what
        );
    }
    eprintln!("CHAOS_SEED={seed} answers: {statuses:?}");
    let mut reasons: Vec<(String, u64)> = reasons.into_iter().collect();
    reasons.sort_by_key(|r| std::cmp::Reverse(r.1));
    for (reason, n) in reasons.iter().take(10) {
        eprintln!("CHAOS_SEED={seed}   {n:5} × {reason}");
    }
    eprintln!(
        "CHAOS_SEED={seed} summary: {} requests ({creates} creates, {reads} reads), {acked} acknowledged, {refused} refused, \
         {unknown} indeterminate; faults {faults:?}; {} numbers skipped (acknowledged, lost with Redis), {} reads of skipped numbers, \
         {} keys forgotten with Redis, {} unanswered creates stored, {} idle counters evicted, {} dead letters; {} anomalies",
        ops.len(),
        figures.skipped,
        figures.reads_of_skipped,
        figures.keys_forgotten,
        figures.indeterminate_stored,
        nemesis.evictions,
        dead.len(),
        anomalies.len()
    );
    if !figures.refused_in_live_chats.is_empty() {
        eprintln!(
            "CHAOS_SEED={seed} {} message creates refused 404 in chats that are stored, the first: {:?}",
            figures.refused_in_live_chats.len(),
            &figures.refused_in_live_chats[..figures.refused_in_live_chats.len().min(3)]
        );
    }
    for d in dead.iter().take(5) {
        eprintln!("CHAOS_SEED={seed} dead letter: {d}");
    }
}
