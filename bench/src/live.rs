//! Figure 23 (issue 35): live delivery through the chat event streams
//! (`GET …/chats/{number}/events`, server-sent events).
//!
//! Two instances of the service share one MariaDB and one Redis; one
//! application has `--chats` chats. Three parts, in one run:
//!
//! 1. **Delivery.** `--subscribers` streams (by default 1,000 on 100
//!    chats, every other one on the other instance) are opened; creates
//!    then run *open loop* at `--load` (0.5) of the peak rate, measured
//!    just before by a closed loop of 64 clients, for `--secs`, spread
//!    over the chats and both instances. Each subscriber notes when each
//!    `message.created` arrives; the figure is the time from a create's
//!    201 (as its client saw it) to its event at each subscriber of its
//!    chat: p50, p99, max in ms (an event that comes before its 201 counts
//!    0), and the events lost (a 201 whose event a subscriber of its chat
//!    never got) and duplicated (an event got twice). Target: p99 ≤ 50
//!    ms, 0 lost, 0 duplicated.
//! 2. **Request-path cost.** Closed-loop creates (64 clients, `--cost-secs`
//!    each) with no subscriber, then with a subscriber on every chat,
//!    interleaved `--runs` times: the rate, and the CPU (user + system,
//!    from `/proc`) that the two instances and Redis spent per 201, in µs.
//!    The ratios with ÷ without, per run, say what the events add; with
//!    `--compare-bin` (a build without live events), the no-subscriber
//!    runs of that build are interleaved too, and their ratio says what
//!    the feature costs when no one subscribes.
//! 3. **Idle subscribers.** A fresh instance; its resident memory (VmRSS,
//!    KiB) before and after `--idle` streams are opened and held (spread
//!    over the chats): the KiB per idle subscriber.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::{Value, json};

use crate::sustained::{cpu_secs, redis_pid};
use crate::{Env, Opts, free_port, seed, wait_up};

/// Options of `bench live`.
#[derive(clap::Args, Clone)]
pub struct LiveOpts {
    #[command(flatten)]
    pub opts: Opts,
    /// Chats of the one application.
    #[arg(long, default_value_t = 100)]
    pub chats: u32,
    /// Subscribers of the delivery part, spread over the chats.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Seconds of the open-loop load of the delivery part.
    #[arg(long, default_value_t = 20)]
    pub load_secs: u64,
    /// Rate of the open-loop load, as a share of the peak rate.
    #[arg(long, default_value_t = 0.5)]
    pub load: f64,
    /// Seconds of each closed-loop run of the cost part (and of the peak).
    #[arg(long, default_value_t = 8)]
    pub cost_secs: u64,
    /// Idle subscribers held for the memory part.
    #[arg(long, default_value_t = 10_000)]
    pub idle: usize,
    /// Another build of the service (without live events), for the
    /// no-subscriber cost (part 2).
    #[arg(long)]
    pub compare_bin: Option<String>,
}

/// Settings of every instance: streams and subscribers far above the
/// figure's counts, and the flusher on its defaults.
fn settings(opts: &LiveOpts) -> Vec<(&'static str, String)> {
    let cap = (opts.idle.max(opts.subscribers) * 2).to_string();
    vec![
        ("MAX_STREAMS_PER_APPLICATION", cap),
        ("RATE_LIMIT_PER_MINUTE", "1000000000".into()),
        ("RATE_LIMIT_BURST", "1000000".into()),
    ]
}

/// A started instance: its port and process.
struct Instance {
    port: u16,
    proc: crate::Proc,
}

impl Instance {
    fn start(env: &Env, binary: &str, extra: &[(&'static str, String)]) -> Instance {
        let port = free_port();
        let extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Instance {
            port,
            proc: env.start_binary(binary, port, &extra),
        }
    }

    fn pid(&self) -> i32 {
        self.proc.0.id() as i32
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}/api/v1", self.port)
    }
}

/// One subscriber's stream: every `message.created` as `(number, when)`.
type Arrivals = Vec<(i64, Instant)>;

/// Opens the event stream of `chat` on `base` (waits for its 200) and
/// returns a task that notes every `message.created` until `stop`.
async fn subscribe(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    chat: u32,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<tokio::task::JoinHandle<Arrivals>> {
    let r = client
        .get(format!("{base}/applications/{token}/chats/{chat}/events"))
        .send()
        .await?;
    anyhow::ensure!(r.status() == 200, "subscribe: {}", r.status());
    let mut events = r.bytes_stream().eventsource();
    Ok(tokio::spawn(async move {
        let mut got = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            match tokio::time::timeout(Duration::from_millis(200), events.next()).await {
                Ok(Some(Ok(e))) if e.event == "message.created" => {
                    let at = Instant::now();
                    if let Some(n) = serde_json::from_str::<Value>(&e.data)
                        .ok()
                        .and_then(|d| d["number"].as_i64())
                    {
                        got.push((n, at));
                    }
                }
                Ok(Some(Ok(_))) | Err(_) => {}
                Ok(Some(Err(_))) | Ok(None) => break,
            }
        }
        got
    }))
}

/// A closed loop of `clients` clients creating messages on the chats of
/// `token`, over `bases` in turn, for `secs`: the 201s.
async fn closed_loop(bases: &[String], token: &str, chats: u32, clients: usize, secs: u64) -> u64 {
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(secs);
    let body = json!({"body": "b".repeat(100)});
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (done, body, token) = (done.clone(), body.clone(), token.to_string());
            let bases = bases.to_vec();
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut i = c;
                while Instant::now() < until {
                    let base = &bases[i % bases.len()];
                    let chat = i as u32 % chats + 1;
                    let url = format!("{base}/applications/{token}/chats/{chat}/messages");
                    if let Ok(r) = client.post(url).json(&body).send().await
                        && r.status() == 201
                    {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    i += clients;
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    done.load(Ordering::Relaxed)
}

/// The `q`-quantile (0..1) of sorted `v`.
fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 - 1.0) * q).round() as usize]
}

/// Part 1: delivery latency, lost and duplicated events.
async fn delivery(o: &LiveOpts, instances: &[Instance], token: &str) -> anyhow::Result<Value> {
    let bases: Vec<String> = instances.iter().map(Instance::base).collect();
    let peak =
        closed_loop(&bases, token, o.chats, 64, o.cost_secs).await as f64 / o.cost_secs as f64;
    let rate = peak * o.load;
    // The subscribers, every other one on the other instance.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut subs = Vec::new();
    for s in 0..o.subscribers {
        let chat = s as u32 % o.chats + 1;
        let task = subscribe(&client, &bases[s % bases.len()], token, chat, stop.clone()).await?;
        subs.push((chat, task));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The open loop: create k is sent at k / rate s, whatever came back.
    let total = (rate * o.load_secs as f64) as u64;
    let started = Instant::now();
    let creator = reqwest::Client::new();
    let body = json!({"body": "live"});
    let mut sent = Vec::with_capacity(total as usize);
    for k in 0..total {
        let at = started + Duration::from_secs_f64(k as f64 / rate);
        tokio::time::sleep_until(at.into()).await;
        let chat = k as u32 % o.chats + 1;
        let url = format!(
            "{}/applications/{token}/chats/{chat}/messages",
            bases[k as usize % bases.len()]
        );
        let (creator, body) = (creator.clone(), body.clone());
        sent.push((
            chat,
            tokio::spawn(async move {
                let r = creator.post(url).json(&body).send().await.ok()?;
                let acked = Instant::now();
                if r.status() != 201 {
                    return None;
                }
                let n = r.json::<Value>().await.ok()?["number"].as_i64()?;
                Some((n, acked))
            }),
        ));
    }
    let mut acked: HashMap<u32, HashMap<i64, Instant>> = HashMap::new();
    let mut refused = 0u64;
    for (chat, t) in sent {
        match t.await? {
            Some((n, at)) => {
                acked.entry(chat).or_default().insert(n, at);
            }
            None => refused += 1,
        }
    }
    let offered = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut lost, mut duplicated, mut latencies) = (0u64, 0u64, Vec::new());
    for (chat, task) in subs {
        let got = task.await?;
        let want = acked.get(&chat).cloned().unwrap_or_default();
        let mut seen: HashMap<i64, u32> = HashMap::new();
        for (n, at) in &got {
            *seen.entry(*n).or_default() += 1;
            if let Some(t201) = want.get(n) {
                latencies.push(at.saturating_duration_since(*t201).as_secs_f64() * 1000.0);
            }
        }
        duplicated += seen.values().map(|c| u64::from(c - 1)).sum::<u64>();
        lost += want.keys().filter(|n| !seen.contains_key(n)).count() as u64;
    }
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Ok(json!({
        "peak_per_s": peak,
        "offered_per_s": total as f64 / offered,
        "creates_acked": acked.values().map(HashMap::len).sum::<usize>(),
        "creates_refused": refused,
        "subscribers": o.subscribers,
        "events_expected": latencies.len() as u64 + lost,
        "p50_ms": quantile(&latencies, 0.5),
        "p99_ms": quantile(&latencies, 0.99),
        "max_ms": latencies.last().copied().unwrap_or(f64::NAN),
        "lost": lost,
        "duplicated": duplicated,
    }))
}

/// CPU seconds of `pids` together.
fn cpu_of(pids: &[i32]) -> f64 {
    pids.iter().map(|p| cpu_secs(*p)).sum()
}

/// One closed-loop cost run: rate (creates/s) and CPU µs per create of
/// the instances and of Redis.
async fn cost_run(
    o: &LiveOpts,
    instances: &[Instance],
    redis: i32,
    token: &str,
) -> (f64, f64, f64) {
    let bases: Vec<String> = instances.iter().map(Instance::base).collect();
    let pids: Vec<i32> = instances.iter().map(Instance::pid).collect();
    let (s0, r0) = (cpu_of(&pids), cpu_secs(redis));
    let n = closed_loop(&bases, token, o.chats, 64, o.cost_secs)
        .await
        .max(1) as f64;
    let (s1, r1) = (cpu_of(&pids), cpu_secs(redis));
    (
        n / o.cost_secs as f64,
        (s1 - s0) * 1e6 / n,
        (r1 - r0) * 1e6 / n,
    )
}

/// Part 2: the request path with and without subscribers (and the other
/// build's without).
async fn cost(
    o: &LiveOpts,
    instances: &[Instance],
    other: Option<&[Instance]>,
    redis: i32,
    token: &str,
) -> anyhow::Result<Value> {
    let mut runs = Vec::new();
    let base = instances[0].base();
    for _ in 0..o.opts.runs {
        let without = cost_run(o, instances, redis, token).await;
        let before = match other {
            Some(other) => Some(cost_run(o, other, redis, token).await),
            None => None,
        };
        // One subscriber per chat, reading (and dropping) what comes.
        let stop = Arc::new(AtomicBool::new(false));
        let client = reqwest::Client::new();
        let mut subs = Vec::new();
        for chat in 1..=o.chats {
            subs.push(subscribe(&client, &base, token, chat, stop.clone()).await?);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let with = cost_run(o, instances, redis, token).await;
        stop.store(true, Ordering::Relaxed);
        for s in subs {
            let _ = s.await;
        }
        let r = |x: (f64, f64, f64)| json!({"rate": x.0, "service_us": x.1, "redis_us": x.2});
        runs.push(json!({
            "without": r(without),
            "with": r(with),
            "before": before.map(r),
            "rate_with_over_without": with.0 / without.0,
            "redis_us_with_over_without": with.2 / without.2,
            "service_us_with_over_without": with.1 / without.1,
            "rate_without_over_before": before.map(|b| without.0 / b.0),
            "redis_us_without_over_before": before.map(|b| without.2 / b.2),
        }));
    }
    Ok(Value::Array(runs))
}

/// Resident memory of `pid`, KiB.
fn rss_kib(pid: i32) -> u64 {
    procfs::process::Process::new(pid)
        .and_then(|p| p.status())
        .ok()
        .and_then(|s| s.vmrss)
        .unwrap_or(0)
}

/// Part 3: KiB of resident memory per idle subscriber.
async fn idle_memory(o: &LiveOpts, env: &Env, token: &str) -> anyhow::Result<Value> {
    let instance = Instance::start(env, crate::SERVICE_BINARY, &settings(o));
    wait_up(instance.port, "/health/live").await;
    let base = instance.base();
    // Warm: one stream opened and closed, so that lazy set-up is not counted.
    let stop = Arc::new(AtomicBool::new(true));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    subscribe(&client, &base, token, 1, stop).await?.await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(instance.pid());
    let stop = Arc::new(AtomicBool::new(false));
    let mut subs = Vec::new();
    for s in 0..o.idle {
        let chat = s as u32 % o.chats + 1;
        subs.push(subscribe(&client, &base, token, chat, stop.clone()).await?);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(instance.pid());
    stop.store(true, Ordering::Relaxed);
    for s in subs {
        let _ = s.await;
    }
    Ok(json!({
        "subscribers": o.idle,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "kib_per_subscriber": (after.saturating_sub(before)) as f64 / o.idle as f64,
    }))
}

/// Runs the three parts; the figure as JSON.
pub async fn live(o: &LiveOpts) -> anyhow::Result<Value> {
    let suffix = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let env = Env {
        opts: o.opts.clone(),
        db: format!("bench_live_{suffix}"),
        prefix: format!("bench-live-{suffix}:"),
    };
    chat_api::store::ensure_database(&env.database_url()).await?;
    let pool = sqlx::MySqlPool::connect(&env.database_url()).await?;
    chat_api::store::migrate(&pool).await?;
    let extra = settings(o);
    let instances = vec![
        Instance::start(&env, crate::SERVICE_BINARY, &extra),
        Instance::start(&env, crate::SERVICE_BINARY, &extra),
    ];
    for i in &instances {
        wait_up(i.port, "/health/live").await;
    }
    let token = seed(instances[0].port, 1, o.chats).await.remove(0);
    let mut redis = redis::Client::open(o.opts.redis.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let redis = redis_pid(&mut redis).await?;
    let other = match &o.compare_bin {
        Some(bin) => {
            let v = vec![
                Instance::start(&env, bin, &extra),
                Instance::start(&env, bin, &extra),
            ];
            for i in &v {
                wait_up(i.port, "/health/live").await;
            }
            Some(v)
        }
        None => None,
    };
    let delivery = delivery(o, &instances, &token).await?;
    let cost = cost(o, &instances, other.as_deref(), redis, &token).await?;
    drop(other);
    drop(instances);
    let idle = idle_memory(o, &env, &token).await?;
    pool.close().await;
    let admin = sqlx::MySqlPool::connect(&o.opts.mysql).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS `{}`",
        env.db
    )))
    .execute(&admin)
    .await?;
    let mut r = redis::Client::open(o.opts.redis.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    crate::cleanup_prefix(&mut r, &env.prefix).await?;
    Ok(json!({"delivery": delivery, "cost": cost, "idle": idle}))
}

/// BENCHMARKS.md's rows for the figure.
pub fn markdown(f: &Value) -> String {
    let d = &f["delivery"];
    let i = &f["idle"];
    let n = |v: &Value| v.as_f64().map_or("–".to_string(), |x| format!("{x:.2}"));
    let mut s = format!(
        "| 23. live delivery: {} subscribers, creates open loop at {:.0}/s (peak {:.0}/s) | p50 {} ms, p99 {} ms, max {} ms | lost {}, duplicated {} (of {} events) |\n",
        d["subscribers"],
        d["offered_per_s"].as_f64().unwrap_or(0.0),
        d["peak_per_s"].as_f64().unwrap_or(0.0),
        n(&d["p50_ms"]),
        n(&d["p99_ms"]),
        n(&d["max_ms"]),
        d["lost"],
        d["duplicated"],
        d["events_expected"],
    );
    for (k, run) in f["cost"].as_array().into_iter().flatten().enumerate() {
        s += &format!(
            "| 23. request path, run {}: with ÷ without a subscriber per chat | rate {} | service µs/create {}, Redis µs/create {} |\n",
            k + 1,
            n(&run["rate_with_over_without"]),
            n(&run["service_us_with_over_without"]),
            n(&run["redis_us_with_over_without"]),
        );
        if !run["before"].is_null() {
            s += &format!(
                "| 23. request path, run {}: no subscriber, this build ÷ the build before | rate {} | Redis µs/create {} |\n",
                k + 1,
                n(&run["rate_without_over_before"]),
                n(&run["redis_us_without_over_before"]),
            );
        }
    }
    s += &format!(
        "| 23. idle subscribers: {} streams held on one instance | {} KiB RSS each | {} → {} KiB |\n",
        i["subscribers"],
        n(&i["kib_per_subscriber"]),
        i["rss_before_kib"],
        i["rss_after_kib"],
    );
    s
}
