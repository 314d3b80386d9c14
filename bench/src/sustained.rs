//! Figures 9 to 11 (issue 13): the rate that holds, where the CPU goes, and
//! the levers tried on the request path and on backpressure.
//!
//! - Figure 9, **sustainable rate**: the highest open-loop create rate (oha `-q`)
//!   at which the pending depth stays bounded for `--hold-secs`, found by
//!   bisection between 0 and the closed-loop peak of the same run.
//! - Figure 10, **CPU per record**: CPU seconds per 10,000 records of the service,
//!   Redis, MariaDB and the load generator (from `/proc`), on the request
//!   path (the flusher idle) and on the flush path (draining what the
//!   request path queued). Their sum bounds the sustainable rate:
//!   `cores ÷ (request + flush CPU per record)`.
//! - Figure 11, **levers**: `REDIS_POOL_SIZE` 1, 2, 4 and 16 (each pooled connection
//!   is a multiplexed socket that concurrent requests share), and load
//!   shedding past `PENDING_HIGH_WATER` against the cliff at `MAX_PENDING`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::MySqlPool;

use super::{
    Env, Opts, Proc, f, free_port, oha, post_closed, rps, seed, stat, status_share, url_regex,
    wait_up,
};

/// CPU seconds (user + system) used so far by process `pid`; 0 if it is gone.
pub(crate) fn cpu_secs(pid: i32) -> f64 {
    procfs::process::Process::new(pid)
        .and_then(|p| p.stat())
        .map(|s| (s.utime + s.stime) as f64 / procfs::ticks_per_second() as f64)
        .unwrap_or(0.0)
}

/// CPU seconds of this process's children that were waited for (the oha
/// runs: `Command::output` waits).
fn children_cpu_secs() -> f64 {
    procfs::process::Process::myself()
        .and_then(|p| p.stat())
        .map(|s| (s.cutime + s.cstime) as f64 / procfs::ticks_per_second() as f64)
        .unwrap_or(0.0)
}

/// The MariaDB server's pid (`mariadbd`, or `mysqld` on older builds).
fn mariadb_pid() -> Option<i32> {
    procfs::process::all_processes()
        .ok()?
        .filter_map(Result::ok)
        .find(|p| {
            p.stat()
                .is_ok_and(|s| s.comm == "mariadbd" || s.comm == "mysqld")
        })
        .map(|p| p.pid)
}

/// The pid of the Redis server behind `r` (`INFO server`'s `process_id`).
pub(crate) async fn redis_pid(r: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<i32> {
    let info: String = redis::cmd("INFO").arg("server").query_async(r).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no process_id in INFO server"))
}

/// CPU seconds of the watched processes at one instant.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    service: f64,
    redis: f64,
    mariadb: f64,
    load: f64,
}

impl Cpu {
    fn read(service: i32, redis: i32, mariadb: Option<i32>) -> Cpu {
        Cpu {
            service: cpu_secs(service),
            redis: cpu_secs(redis),
            mariadb: mariadb.map(cpu_secs).unwrap_or(0.0),
            load: children_cpu_secs(),
        }
    }

    /// `self - earlier`, per 10,000 of `records`, as JSON.
    fn per_10k(&self, earlier: &Cpu, records: u64) -> Value {
        let k = 10_000.0 / records.max(1) as f64;
        let (s, r, m, l) = (
            (self.service - earlier.service) * k,
            (self.redis - earlier.redis) * k,
            (self.mariadb - earlier.mariadb) * k,
            (self.load - earlier.load) * k,
        );
        json!({ "service": s, "redis": r, "mariadb": m, "load_generator": l,
                "total": s + r + m + l, "records": records })
    }
}

/// Length of the pending messages lists under `prefix`, summed over the
/// service's [`super::SERVICE_SHARDS`] shards (one pipelined round trip).
pub(crate) async fn depth(r: &mut redis::aio::MultiplexedConnection, prefix: &str) -> u64 {
    depth_of(r, prefix, chat_api::writebehind::Kind::Messages).await
}

/// [`depth`] of the pending lists of queue `kind`.
pub(crate) async fn depth_of(
    r: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    kind: chat_api::writebehind::Kind,
) -> u64 {
    let keys = chat_api::writebehind::keys::Keys::with_shards(prefix, super::SERVICE_SHARDS);
    let mut pipe = redis::pipe();
    for shard in keys.shards() {
        pipe.llen(shard.pending(kind));
    }
    pipe.query_async::<Vec<u64>>(r)
        .await
        .map(|lens| lens.iter().sum())
        .unwrap_or(0)
}

/// Samples the depth of the pending lists of each of `kinds` under `prefix`
/// once a second for `secs` seconds, in a task of its own; its result holds
/// one row per second, one depth (records) per kind, in the order of `kinds`.
/// The one sampler of figures 4, 9, 11 and 16.
pub(crate) fn sample_depths(
    r: &redis::aio::MultiplexedConnection,
    prefix: &str,
    secs: u64,
    kinds: &'static [chat_api::writebehind::Kind],
) -> tokio::task::JoinHandle<Vec<Vec<u64>>> {
    let mut r = r.clone();
    let prefix = prefix.to_string();
    tokio::spawn(async move {
        let mut samples = Vec::with_capacity(secs as usize);
        for _ in 0..secs {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let mut row = Vec::with_capacity(kinds.len());
            for &kind in kinds {
                row.push(depth_of(&mut r, &prefix, kind).await);
            }
            samples.push(row);
        }
        samples
    })
}

/// Runs `load` (an oha invocation) while sampling the pending messages
/// every second ([`sample_depths`]); returns oha's report and the samples
/// (records, one per second).
pub(crate) async fn under_load(
    r: &redis::aio::MultiplexedConnection,
    prefix: &str,
    secs: u64,
    load: impl FnOnce() -> Value + Send + 'static,
) -> anyhow::Result<(Value, Vec<u64>)> {
    let sampler = sample_depths(r, prefix, secs, &[chat_api::writebehind::Kind::Messages]);
    let report = tokio::task::spawn_blocking(load).await?;
    let samples = sampler.await?.into_iter().map(|row| row[0]).collect();
    Ok((report, samples))
}

/// Open-loop POSTs of 100-byte messages at `rate` requests/s for `secs`.
pub(crate) fn post_open(url_regex: &str, rate: u64, secs: u64, connections: u32) -> Value {
    oha(&[
        "-z".into(),
        format!("{secs}s"),
        "-q".into(),
        rate.to_string(),
        "-c".into(),
        connections.to_string(),
        "--latency-correction".into(),
        "-m".into(),
        "POST".into(),
        "-H".into(),
        "content-type: application/json".into(),
        "-d".into(),
        super::body_100(),
        "--rand-regex-url".into(),
        url_regex.into(),
    ])
}

fn mean(v: &[u64]) -> f64 {
    v.iter().sum::<u64>() as f64 / v.len().max(1) as f64
}

/// Growth of the pending depth over the second half of `samples`: the mean
/// of the last window minus the mean of the window that starts halfway
/// (windows of 10 samples, fewer in short runs), in records.
fn second_half_growth(samples: &[u64]) -> f64 {
    let n = samples.len();
    if n < 4 {
        return 0.0;
    }
    let w = (n / 4).clamp(1, 10);
    let half = n / 2;
    mean(&samples[n - w..]) - mean(&samples[half..half + w])
}

/// Waits until the pending messages under `prefix` are below `below`
/// (at most `max`).
async fn drained(
    r: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    below: u64,
    max: Duration,
) {
    let deadline = Instant::now() + max;
    while Instant::now() < deadline && depth(r, prefix).await >= below {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The noise of a depth that is bounded: the flusher wakes at
/// `MESSAGE_BATCH_SIZE` pending records (5000 by default) and takes that
/// many at a time, so a depth that keeps up saws between 0 and about that.
const DEPTH_NOISE: f64 = 5000.0;

/// Figure 9: the sustainable create rate.
pub async fn sustainable(opts: &Opts) -> anyhow::Result<Value> {
    let (env, pool) = Env::fresh(opts).await?;
    let mut r = redis::Client::open(opts.redis.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let (sp, cp) = (free_port(), free_port());
    let service = env.start_service(sp, &[]);
    let _ceiling = Proc(
        Command::new(std::env::current_exe()?)
            .args(["ceiling", &cp.to_string()])
            .stdout(Stdio::null())
            .spawn()?,
    );
    wait_up(sp, "/health/live").await;
    wait_up(cp, "/").await;
    let tokens = seed(sp, 10, 100).await;
    let url = url_regex(sp, &tokens, 100);

    let (mut peaks, mut ceilings) = (vec![], vec![]);
    for run in 0..opts.runs {
        eprintln!("figure 9, run {}: closed-loop peak and ceiling…", run + 1);
        peaks.push(rps(&post_closed(&url, opts.secs, opts.connections)));
        ceilings.push(rps(&post_closed(
            &url_regex(cp, &tokens, 100),
            opts.secs,
            opts.connections,
        )));
        drained(
            &mut r,
            &env.prefix,
            DEPTH_NOISE as u64,
            Duration::from_secs(300),
        )
        .await;
    }
    let peak = stat(peaks.clone()).median;
    let ceiling = stat(ceilings.clone()).median;

    // Bisection between 0 (bounded) and the peak (not, or it would be the rate).
    let (mut lo, mut hi) = (0.0f64, peak);
    let mut steps = Vec::new();
    for step in 0..opts.bisect_steps {
        let rate = ((lo + hi) / 2.0).max(10.0) as u64;
        eprintln!(
            "figure 9, step {}: {rate} req/s for {} s…",
            step + 1,
            opts.hold_secs
        );
        let (u, secs, conns) = (url.clone(), opts.hold_secs, opts.connections);
        let (report, samples) = under_load(&r, &env.prefix, secs, move || {
            post_open(&u, rate, secs, conns)
        })
        .await?;
        let achieved = rps(&report);
        let ok = status_share(&report, "201");
        let growth = second_half_growth(&samples);
        let bounded = achieved >= 0.95 * rate as f64 && ok > 0.99 && growth <= DEPTH_NOISE;
        eprintln!(
            "  achieved {achieved:.0} req/s, 201 share {ok:.3}, depth growth over the second half {growth:.0}: {}",
            if bounded { "bounded" } else { "not bounded" }
        );
        steps.push(json!({ "rate": rate, "achieved_rps": achieved, "share_201": ok,
            "second_half_growth": growth, "bounded": bounded,
            "depth_first": samples.first(), "depth_max": samples.iter().max(), "depth_last": samples.last(),
            "depth_per_second": samples,
            "p99_ms": report["latencyPercentiles"]["p99"].as_f64().unwrap_or(0.0) * 1000.0 }));
        if bounded {
            lo = rate as f64;
        } else {
            hi = rate as f64;
        }
        drained(
            &mut r,
            &env.prefix,
            DEPTH_NOISE as u64,
            Duration::from_secs(600),
        )
        .await;
    }
    drop(service);
    env.drop_all(&pool, &mut r).await?;
    Ok(
        json!({ "sustainable_rps": lo, "peak_rps": stat(peaks), "ceiling_rps": stat(ceilings),
        "vs_peak": lo / peak.max(1.0), "vs_ceiling": lo / ceiling.max(1.0),
        "hold_secs": opts.hold_secs, "steps": steps }),
    )
}

/// Figure 10: CPU per 10,000 records on the request path and on the flush
/// path, and the bounds they imply on 2 cores… or however many there are.
pub async fn cpu_per_record(opts: &Opts) -> anyhow::Result<Value> {
    let (env, pool) = Env::fresh(opts).await?;
    let mut r = redis::Client::open(opts.redis.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let rpid = redis_pid(&mut r).await?;
    let mpid = mariadb_pid();
    let n = opts.cpu_records;

    // The request path, with the flusher idle (it wakes at a threshold never reached).
    let port = free_port();
    let idle_flusher = [
        ("MESSAGE_BATCH_SIZE", "100000000"),
        ("FLUSH_INTERVAL_SECS", "86400"),
        ("FLUSH_MAX_AGE_MS", "0"),
        ("MAX_PENDING", "100000000"),
        ("PENDING_HIGH_WATER", "100000000"),
    ];
    let mut service = env.start_service(port, &idle_flusher);
    wait_up(port, "/health/live").await;
    let tokens = seed(port, 10, 100).await;
    eprintln!("figure 10: {n} creates with the flusher idle…");
    let spid = service.0.id() as i32;
    let before = Cpu::read(spid, rpid, mpid);
    let url = url_regex(port, &tokens, 100);
    let report = tokio::task::spawn_blocking({
        let (url, c) = (url.clone(), opts.connections);
        move || {
            oha(&[
                "-n".into(),
                n.to_string(),
                "-c".into(),
                c.to_string(),
                "-m".into(),
                "POST".into(),
                "-H".into(),
                "content-type: application/json".into(),
                "-d".into(),
                super::body_100(),
                "--rand-regex-url".into(),
                url,
            ])
        }
    })
    .await?;
    let after = Cpu::read(spid, rpid, mpid);
    let queued = depth(&mut r, &env.prefix).await;
    anyhow::ensure!(
        status_share(&report, "201") > 0.99,
        "the request path answered 201: {:?}",
        report["statusCodeDistribution"]
    );
    let request = after.per_10k(&before, queued);
    // SIGKILL: a graceful stop would flush inside the figure's service.
    service.0.kill()?;
    service.0.wait()?;

    // The flush path: a service with default settings drains the queue.
    eprintln!("figure 10: draining {queued} records…");
    let port = free_port();
    let started = Instant::now();
    let drainer = env.start_service(port, &[]);
    let dpid = drainer.0.id() as i32;
    let before = Cpu::read(dpid, rpid, mpid);
    let expected = queued as i64;
    loop {
        let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM messages")
            .fetch_one(&pool)
            .await?;
        if stored >= expected {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "the drain stalled at {stored} of {expected}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let after = Cpu::read(dpid, rpid, mpid);
    let flush_secs = started.elapsed().as_secs_f64();
    let flush = after.per_10k(&before, queued);
    drop(drainer);
    env.drop_all(&pool, &mut r).await?;

    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;
    let req_total = request["total"].as_f64().unwrap_or(0.0);
    let flush_total = flush["total"].as_f64().unwrap_or(0.0);
    Ok(
        json!({ "records": queued, "request_path": request, "flush_path": flush,
        "flush_rows_per_sec": queued as f64 / flush_secs,
        "bound_peak_rps": cores * 10_000.0 / req_total.max(1e-9),
        "bound_sustainable_rps": cores * 10_000.0 / (req_total + flush_total).max(1e-9),
        "bound_sustainable_vs_peak": req_total / (req_total + flush_total).max(1e-9) }),
    )
}

/// Figure 11: the levers. `REDIS_POOL_SIZE` 1, 2, 4, 16 (closed-loop create
/// rate, interleaved per run, ratio to 16 per run); then the closed-loop
/// peak for `balance_secs` with `MAX_PENDING` 200,000, once with shedding
/// from a high-water mark of 50,000 and once without.
pub async fn levers(opts: &Opts) -> anyhow::Result<Value> {
    let (env, pool) = Env::fresh(opts).await?;
    let mut r = redis::Client::open(opts.redis.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let sizes = ["1", "2", "4", "16"];
    let mut tokens = Vec::new();
    let mut by_size: Vec<(Vec<f64>, Vec<f64>)> = vec![(vec![], vec![]); sizes.len()];
    for run in 0..opts.runs {
        let mut base = vec![0.0; sizes.len()];
        for (i, size) in sizes.iter().enumerate() {
            eprintln!("figure 11, run {}: REDIS_POOL_SIZE={size}…", run + 1);
            let port = free_port();
            let svc = env.start_service(port, &[("REDIS_POOL_SIZE", size)]);
            wait_up(port, "/health/live").await;
            if tokens.is_empty() {
                tokens = seed(port, 10, 100).await;
            }
            base[i] = rps(&post_closed(
                &url_regex(port, &tokens, 100),
                opts.secs,
                opts.connections,
            ));
            drop(svc);
            drained(&mut r, &env.prefix, 1, Duration::from_secs(5)).await;
        }
        let default = base[sizes.len() - 1].max(1.0);
        for (i, rate) in base.into_iter().enumerate() {
            by_size[i].0.push(rate);
            by_size[i].1.push(rate / default);
        }
    }
    let mut pool_sizes = serde_json::Map::new();
    for (size, (rates, ratios)) in sizes.iter().zip(by_size) {
        pool_sizes.insert(
            size.to_string(),
            json!({ "create_rps": stat(rates), "vs_16": stat(ratios) }),
        );
    }

    let mut shedding = serde_json::Map::new();
    for (label, high_water) in [("cliff", "200000"), ("shed", "50000")] {
        eprintln!(
            "figure 11: {} s at the peak, MAX_PENDING 200000, PENDING_HIGH_WATER {high_water}…",
            opts.balance_secs
        );
        let prefix = format!("{}{label}:", env.prefix);
        let lenv = Env {
            opts: opts.clone(),
            db: env.db.clone(),
            prefix: prefix.clone(),
        };
        let port = free_port();
        let svc = lenv.start_service(
            port,
            &[
                ("MAX_PENDING", "200000"),
                ("PENDING_HIGH_WATER", high_water),
            ],
        );
        wait_up(port, "/health/live").await;
        let ltokens = seed(port, 10, 100).await;
        let (u, secs, c) = (
            url_regex(port, &ltokens, 100),
            opts.balance_secs,
            opts.connections,
        );
        let (report, samples) =
            under_load(&r, &prefix, secs, move || post_closed(&u, secs, c)).await?;
        let total = rps(&report);
        let ok = status_share(&report, "201");
        shedding.insert(
            label.into(),
            json!({ "high_water": high_water,
            "rps": total, "created_rps": total * ok, "share_503": status_share(&report, "503"),
            "p99_ms": report["latencyPercentiles"]["p99"].as_f64().unwrap_or(0.0) * 1000.0,
            "depth_max": samples.iter().max(), "depth_last": samples.last() }),
        );
        drop(svc);
    }
    env.drop_all(&pool, &mut r).await?;
    Ok(json!({ "redis_pool_size": pool_sizes, "shedding": shedding }))
}

/// The rows of figures 9 to 11 in BENCHMARKS.md's table.
pub fn markdown(sustained: &Value, cpu: &Value, levers: &Value) -> String {
    let mut out = String::new();
    let v = sustained;
    out += &format!(
        "| 9. sustainable create rate (req/s, depth bounded for {} s) | {} | |\n",
        v["hold_secs"],
        f(&v["sustainable_rps"])
    );
    out += &format!(
        "| 9. sustainable ÷ closed-loop peak ({}), same run | {} | ≥ 0.6 |\n",
        f(&v["peak_rps"]["median"]),
        f(&v["vs_peak"])
    );
    out += &format!(
        "| 9. sustainable ÷ ceiling ({}), same run | {} | ≥ 0.4 |\n",
        f(&v["ceiling_rps"]["median"]),
        f(&v["vs_ceiling"])
    );
    for (path, label) in [
        ("request_path", "request path"),
        ("flush_path", "flush path"),
    ] {
        let c = &cpu[path];
        out += &format!(
            "| 10. CPU s per 10,000 records, {label}: service / Redis / MariaDB / oha = total | {} / {} / {} / {} = {} | |\n",
            f(&c["service"]),
            f(&c["redis"]),
            f(&c["mariadb"]),
            f(&c["load_generator"]),
            f(&c["total"])
        );
    }
    out += &format!(
        "| 10. bounds from CPU: peak / sustainable req/s; sustainable ÷ peak | {} / {}; {} | |\n",
        f(&cpu["bound_peak_rps"]),
        f(&cpu["bound_sustainable_rps"]),
        f(&cpu["bound_sustainable_vs_peak"])
    );
    if let Some(sizes) = levers["redis_pool_size"].as_object() {
        for (size, v) in sizes {
            out += &format!(
                "| 11. REDIS_POOL_SIZE={size}: create req/s; ÷ 16, same run | {}; {} | |\n",
                super::s(&v["create_rps"]),
                super::s(&v["vs_16"])
            );
        }
    }
    for label in ["cliff", "shed"] {
        let v = &levers["shedding"][label];
        out += &format!(
            "| 11. peak load, MAX_PENDING 200000, PENDING_HIGH_WATER {}: 201/s; 503 share; p99 ms; depth max / last | {}; {}; {}; {} / {} | |\n",
            v["high_water"].as_str().unwrap_or("-"),
            f(&v["created_rps"]),
            f(&v["share_503"]),
            f(&v["p99_ms"]),
            v["depth_max"],
            v["depth_last"]
        );
    }
    out
}

impl Env {
    /// A fresh database (migrated) and key prefix.
    pub async fn fresh(opts: &Opts) -> anyhow::Result<(Env, MySqlPool)> {
        let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let env = Env {
            opts: opts.clone(),
            db: format!("chat_bench_{id}"),
            prefix: format!("bench:{id}:"),
        };
        chat_api::store::ensure_database(&env.database_url()).await?;
        let pool = MySqlPool::connect(&env.database_url()).await?;
        chat_api::store::migrate(&pool).await?;
        Ok((env, pool))
    }

    /// Drops the database and every key under the prefix.
    pub async fn drop_all(
        &self,
        pool: &MySqlPool,
        r: &mut redis::aio::MultiplexedConnection,
    ) -> anyhow::Result<()> {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE `{}`", self.db)))
            .execute(pool)
            .await?;
        pool.close().await;
        super::cleanup_prefix(r, &self.prefix).await
    }
}
