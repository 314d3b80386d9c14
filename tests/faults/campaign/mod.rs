//! A seeded, randomized fault campaign against real processes, in the
//! manner of Jepsen: a workload records every request and its answer in a
//! [`History`], a [`Nemesis`] injects one fault at a time at random
//! moments, and a checker ([`check`]) compares the history with what MariaDB
//! holds once everything is healed and flushed.
//!
//! The world: two instances of the service (the binary, as processes), a
//! private Redis in one of four topologies (see [`topology`]: one node with
//! RDB or AOF, Sentinel, Cluster), and
//! MariaDB behind a [`Proxy`] the nemesis freezes or cuts; the checker reads
//! MariaDB directly. Idle counters leave Redis after 2 s
//! (`CHAT_IDLE_SECS`), number blocks are small (`NUMBER_BLOCK_MAX=64`) and
//! flushes frequent, so counters are evicted, brought back and reserved in
//! MariaDB many times a run, with snapshots and restarts in between. After
//! the fault phase everything is healed and the workload runs [`TAIL`] more
//! (creates must succeed again), then both instances flush until Redis holds
//! nothing pending, and the checker runs.
//!
//! `CHAOS_SEED` runs one seed (else [`FIXED_RUNS`], a seed per topology,
//! one after the other), on `CHAOS_TOPOLOGY` (`single`, `aof`, `sentinel`,
//! `cluster` or `all`; default `single`, or every fixed run's);
//! `CHAOS_SECS` is the length of a run's fault phase (default 40).
//! `scripts/chaos` loops over fresh seeds and the topologies. Every line the campaign prints,
//! and every assertion, names its seed: the seed fixes every choice of the
//! workload and the nemesis (not the timing of real processes).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;

mod check;
mod history;
mod nemesis;
mod topology;
mod workload;

use crate::harness::{self, Proxy, Service, World, free_port};
use check::{Lookups, Stored, check, summary};
use history::History;
use nemesis::Nemesis;
use topology::{RedisSide, Topology};
use workload::{Workload, worker};

/// The runs CI makes when `CHAOS_SEED` is not set: a seed per topology.
const FIXED_RUNS: [(u64, Topology); 4] = [
    (20_240_601, Topology::Single),
    (7_340_033, Topology::Sentinel),
    (5_551_212, Topology::Aof),
    (8_675_309, Topology::Cluster),
];
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
    let topologies: Option<Vec<Topology>> = std::env::var("CHAOS_TOPOLOGY").ok().map(|t| {
        if t.trim() == "all" {
            Topology::ALL.to_vec()
        } else {
            vec![
                Topology::parse(&t)
                    .expect("CHAOS_TOPOLOGY is single, aof, sentinel, cluster or all"),
            ]
        }
    });
    let runs: Vec<(u64, Topology)> = match std::env::var("CHAOS_SEED") {
        Ok(s) => {
            let seed = s.trim().parse().expect("CHAOS_SEED is a u64");
            topologies
                .unwrap_or_else(|| vec![Topology::Single])
                .into_iter()
                .map(|t| (seed, t))
                .collect()
        }
        Err(_) => FIXED_RUNS
            .into_iter()
            .filter(|(_, t)| topologies.as_ref().is_none_or(|ts| ts.contains(t)))
            .collect(),
    };
    let mut failed = Vec::new();
    for (seed, topology) in runs {
        let run = format!(
            "CHAOS_SEED={seed} CHAOS_TOPOLOGY={} CHAOS_SECS={secs}",
            topology.name()
        );
        // A run that panics (its setup, say) is a failure of that run, named
        // with its seed; the next runs still go.
        match tokio::spawn(campaign(seed, topology, Duration::from_secs(secs))).await {
            Ok(anomalies) if anomalies.is_empty() => {}
            Ok(anomalies) => failed.push(format!(
                "{run}: {} anomalies, the first: {}",
                anomalies.len(),
                anomalies[0]
            )),
            Err(e) => failed.push(format!("{run}: panicked: {}", panic_message(e))),
        }
    }
    if !failed.is_empty() {
        // Last in the output, without a backtrace after it, so that a
        // log cut to its head and tail (as CI's excerpt is) still shows it.
        let report = format!("campaign failed:\n{}", failed.join("\n"));
        eprintln!("{report}");
        std::panic::resume_unwind(Box::new(report));
    }
}

/// What a panicked task said.
fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "(a panic without a message)".into()),
        Err(e) => e.to_string(),
    }
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
async fn campaign(seed: u64, topology: Topology, length: Duration) -> Vec<String> {
    eprintln!(
        "campaign CHAOS_SEED={seed} CHAOS_TOPOLOGY={}: {} s of faults",
        topology.name(),
        length.as_secs()
    );
    let redis = RedisSide::start(topology).await;
    let settled = redis.settle().await;
    eprintln!("CHAOS_SEED={seed} Redis at the start: {settled}");
    let proxy = Proxy::start(mysql_upstream().await).await;
    let mut env = settings();
    env.extend(redis.env());
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
        topology,
        redis,
        proxy,
        workload: workload.clone(),
        log: Vec::new(),
        evictions: 0,
    };
    nemesis.run(&world, length).await;
    // Healed, the workload goes on for a while: creation must resume, and
    // counters in doubt are used again.
    nemesis.calm(&world);
    let settled = nemesis.redis.settle().await;
    eprintln!("CHAOS_SEED={seed} Redis {settled}");
    let healed_ms = workload.history.now_ms();
    tokio::time::sleep(TAIL).await;
    workload.stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }

    // Drain; the Redis connection of the world follows restarts.
    if let Some(url) = nemesis.redis.master_url().await {
        world.reconnect_redis(&url).await;
    }
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
