//! Figure 14 (issue 23): the request path against its physical limit.
//!
//! A create is one Redis script, so the limit of this design on given cores
//! is a server that does one minimal script per request: the *script
//! ceiling*, the same route and 201 as the service, one multiplexed
//! connection, and one Lua script doing `HINCRBY` of a per-chat counter and
//! `RPUSH` of the record. Interleaved per run, closed loop (figure 7's
//! load: 2 applications × 100 chats, 64 connections): the service with its
//! flusher idle (thresholds out of reach), the script ceiling, and the
//! service with its flusher running (default settings); the ratios to the
//! script ceiling are per run. Each run also gives the CPU (user + system,
//! from `/proc`) that the server and Redis spent per `201`, in µs: on
//! shared cores the rates follow the sum of the two, so this says which
//! side a gap is on.
//!
//! Then, for each build with its flusher idle, an open-loop run at half its
//! peak (the mean closed-loop rate of its runs; oha `-q` with
//! `--latency-correction`): p50, p99, p99.9. And scale-out: this build as
//! two processes on one database and one Redis, each under its own
//! closed-loop load at once, per run: the rate of both, its ratio to one
//! process, and Redis's CPU per create (so the creates/s one Redis master
//! carries, measured with more than one service process).

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use poem_openapi::OpenApi;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use serde_json::{Value, json};

use crate::sustained::cpu_secs;
use crate::{
    Created, CreatedResp, Input, Opts, Proc, free_port, post_closed, rps, stat, status_share,
    url_regex, wait_up,
};

/// The minimal script: the counter and the push, nothing else.
const MINIMAL: &str = r#"
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('RPUSH', KEYS[2], ARGV[1] .. '\t' .. n .. '\t' .. ARGV[2])
return n
"#;

/// The script ceiling's server (see the module docs).
pub struct ScriptCeilingApi {
    conn: redis::aio::MultiplexedConnection,
    script: redis::Script,
    prefix: String,
}

impl ScriptCeilingApi {
    /// A server on `redis_url`, its keys under `prefix`.
    pub async fn new(redis_url: &str, prefix: String) -> anyhow::Result<Self> {
        Ok(Self {
            conn: redis::Client::open(redis_url)?
                .get_multiplexed_async_connection()
                .await?,
            script: redis::Script::new(MINIMAL),
            prefix,
        })
    }
}

#[OpenApi]
impl ScriptCeilingApi {
    /// One minimal script per create.
    #[oai(
        path = "/api/v1/applications/:token/chats/:number/messages",
        method = "post"
    )]
    async fn create(
        &self,
        token: Path<String>,
        number: Path<i64>,
        input: Json<Input>,
    ) -> poem::Result<CreatedResp> {
        let mut conn = self.conn.clone();
        let n: i64 = self
            .script
            .key(format!("{}{{{}}}:counters", self.prefix, token.0))
            .key(format!("{}{{{}}}:pending", self.prefix, token.0))
            .arg(number.0)
            .arg(&input.0.body)
            .invoke_async(&mut conn)
            .await
            .map_err(poem::error::InternalServerError)?;
        Ok(CreatedResp::Created(Json(Created { number: n })))
    }
}

/// Options of `bench request-path`.
#[derive(clap::Args, Clone)]
pub struct RequestPathOpts {
    #[command(flatten)]
    pub opts: Opts,
    /// Other builds of the service (paths, comma-separated), each measured
    /// with its flusher idle in the same runs, interleaved: the build
    /// before a change, say.
    #[arg(long, value_delimiter = ',')]
    pub compare_bin: Vec<String>,
    /// The one-hot-chat variant: every create goes to chat 1 of its
    /// application (2 chats in all) instead of 100 chats each.
    #[arg(long)]
    pub hot_chat: bool,
}

/// Figure 14 (see the module docs), with `compare_bin`'s builds beside;
/// with `hot_chat`, every create goes to chat 1 of its application.
pub async fn request_path(
    opts: &Opts,
    compare_bin: &[String],
    hot_chat: bool,
) -> anyhow::Result<Value> {
    let chats = if hot_chat { 1 } else { 100 };
    let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let idle: &[(&str, &str)] = &[
        ("MESSAGE_BATCH_SIZE", "100000000"),
        ("CHAT_BATCH_SIZE", "100000000"),
        ("FLUSH_INTERVAL_SECS", "86400"),
        ("FLUSH_MAX_AGE_MS", "0"),
        ("MAX_PENDING", "100000000"),
        ("PENDING_HIGH_WATER", "100000000"),
        ("MAX_PENDING_PER_APPLICATION", "0"),
    ];
    let mut envs = Vec::new();
    let mut targets: Vec<(String, u16, Vec<String>, Proc)> = Vec::new();
    // (name, binary, settings) of each measured service.
    type Measured<'a> = (String, &'a str, &'a [(&'a str, &'a str)]);
    let mut runs: Vec<Measured> = vec![
        ("service, flusher idle".into(), crate::SERVICE_BINARY, idle),
        (
            "service, flusher running".into(),
            crate::SERVICE_BINARY,
            &[][..],
        ),
    ];
    for bin in compare_bin {
        runs.push((format!("build {bin}, flusher idle"), bin.as_str(), idle));
    }
    for (name, binary, extra) in runs {
        let n = targets.len();
        let (env, port, tokens, svc) = crate::seeded_service(
            opts.clone(),
            format!("chat_bench_{id}_{n}"),
            format!("bench:{id}:{n}:"),
            binary,
            // A build under comparison migrates its own database.
            binary == crate::SERVICE_BINARY,
            extra,
        )
        .await?;
        targets.push((name, port, tokens, svc));
        envs.push(env);
    }
    let port = free_port();
    let ceiling = Proc(
        Command::new(std::env::current_exe()?)
            .args([
                "script-ceiling",
                &port.to_string(),
                &opts.redis,
                &format!("bench:{id}:script:"),
            ])
            .stdout(Stdio::null())
            .spawn()?,
    );
    wait_up(port, "/").await;
    let tokens = targets[0].2.clone();
    targets.insert(1, ("script ceiling".into(), port, tokens, ceiling));
    let redis_pid = {
        let mut r = redis::Client::open(opts.redis.as_str())?
            .get_multiplexed_async_connection()
            .await?;
        crate::sustained::redis_pid(&mut r).await?
    };
    // name → (req/s, p99 ms, ÷ script ceiling, server and Redis CPU µs per
    // create) per run.
    #[derive(Default)]
    struct Runs {
        rate: Vec<f64>,
        p99: Vec<f64>,
        p999: Vec<f64>,
        ratio: Vec<f64>,
        server_cpu: Vec<f64>,
        redis_cpu: Vec<f64>,
    }
    let mut figures: BTreeMap<String, Runs> = BTreeMap::new();
    for run in 0..opts.runs {
        let mut rates = BTreeMap::new();
        for (name, port, tokens, proc) in &targets {
            eprintln!("figure 14, run {}: {name}…", run + 1);
            let pid = proc.0.id() as i32;
            let (server0, redis0) = (cpu_secs(pid), cpu_secs(redis_pid));
            let report = post_closed(
                &url_regex(*port, tokens, chats),
                opts.secs,
                opts.connections,
            );
            let (server1, redis1) = (cpu_secs(pid), cpu_secs(redis_pid));
            let created = report["statusCodeDistribution"]["201"]
                .as_f64()
                .unwrap_or(0.0)
                .max(1.0);
            assert!(
                status_share(&report, "201") > 0.99,
                "{name} answered 201: {:?}",
                report["statusCodeDistribution"]
            );
            let rate = rps(&report);
            rates.insert(name.clone(), rate);
            let ms = |p: &str| report["latencyPercentiles"][p].as_f64().unwrap_or(0.0) * 1000.0;
            let e = figures.entry(name.clone()).or_default();
            e.rate.push(rate);
            e.p99.push(ms("p99"));
            e.p999.push(ms("p99.9"));
            e.server_cpu.push((server1 - server0) * 1e6 / created);
            e.redis_cpu.push((redis1 - redis0) * 1e6 / created);
        }
        let ceiling = rates.get("script ceiling").copied().unwrap_or(1.0);
        for (name, rate) in &rates {
            figures
                .get_mut(name)
                .expect("measured")
                .ratio
                .push(rate / ceiling.max(1.0));
        }
    }
    // Open loop at half the peak of each build, flusher idle: requests at
    // a fixed rate whatever the answers' pace, latencies corrected for
    // coordinated omission (oha's `--latency-correction`).
    let mut open_loop = serde_json::Map::new();
    for (name, port, tokens, _) in &targets {
        if !name.ends_with("flusher idle") {
            continue;
        }
        let peak = figures.get(name).map(|r| mean(&r.rate)).unwrap_or(0.0);
        let rate = (peak / 2.0).max(1.0) as u64;
        eprintln!("figure 14, open loop at {rate}/s: {name}…");
        let report = crate::sustained::post_open(
            &url_regex(*port, tokens, chats),
            rate,
            opts.secs,
            opts.connections,
        );
        let ms = |p: &str| report["latencyPercentiles"][p].as_f64().unwrap_or(0.0) * 1000.0;
        open_loop.insert(
            name.clone(),
            json!({
                "rate": rate,
                "achieved_rps": rps(&report),
                "p50_ms": ms("p50"),
                "p99_ms": ms("p99"),
                "p99_9_ms": ms("p99.9"),
            }),
        );
    }
    // Scale-out: this build as two processes against the one Redis, each
    // driven by its own load, flusher idle: the rate of both together and
    // Redis's CPU per create, against one process in the same runs.
    let (one_name, one_port, one_tokens, one_proc) = &targets[0];
    assert_eq!(one_name, "service, flusher idle");
    let second_port = free_port();
    let second = envs[0].start_service(second_port, idle);
    wait_up(second_port, "/health/live").await;
    let mut two = Runs::default();
    for run in 0..opts.runs {
        eprintln!("figure 14, run {}: two processes, one Redis…", run + 1);
        let pids = [one_proc.0.id() as i32, second.0.id() as i32];
        let server0: f64 = pids.iter().map(|p| cpu_secs(*p)).sum();
        let redis0 = cpu_secs(redis_pid);
        let urls = [
            url_regex(*one_port, one_tokens, chats),
            url_regex(second_port, one_tokens, chats),
        ];
        let (secs, connections) = (opts.secs, opts.connections);
        let loads: Vec<_> = urls
            .into_iter()
            .map(|url| std::thread::spawn(move || post_closed(&url, secs, connections)))
            .collect();
        let reports: Vec<Value> = loads
            .into_iter()
            .map(|t| t.join().expect("oha ran"))
            .collect();
        let server1: f64 = pids.iter().map(|p| cpu_secs(*p)).sum();
        let redis1 = cpu_secs(redis_pid);
        let created: f64 = reports
            .iter()
            .map(|r| r["statusCodeDistribution"]["201"].as_f64().unwrap_or(0.0))
            .sum::<f64>()
            .max(1.0);
        two.rate.push(reports.iter().map(rps).sum());
        two.server_cpu.push((server1 - server0) * 1e6 / created);
        two.redis_cpu.push((redis1 - redis0) * 1e6 / created);
        two.p99.push(
            reports
                .iter()
                .map(|r| r["latencyPercentiles"]["p99"].as_f64().unwrap_or(0.0) * 1000.0)
                .fold(0.0, f64::max),
        );
    }
    drop(second);
    let one_rate = figures.get(one_name).map(|r| mean(&r.rate)).unwrap_or(1.0);
    let scale_out = json!({
        "create_rps": stat(two.rate.clone()),
        "vs_one_process": mean(&two.rate) / one_rate.max(1.0),
        "p99_ms_worst_of_two": stat(two.p99),
        "server_cpu_us_per_create": stat(two.server_cpu),
        "redis_cpu_us_per_create": stat(two.redis_cpu.clone()),
        "creates_per_redis_master": stat(
            two.redis_cpu.iter().map(|us| 1e6 / us.max(0.001)).collect()
        ),
    });
    crate::drop_databases(opts, &envs).await?;
    drop(targets);
    let mut redis = redis::Client::open(opts.redis.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let pattern = format!("bench:{id}:*");
    let keys: Vec<String> = redis::AsyncCommands::keys(&mut redis, pattern).await?;
    for k in keys {
        let _: () = redis::AsyncCommands::del(&mut redis, k).await?;
    }
    let mut out: serde_json::Map<String, Value> = figures
        .into_iter()
        .map(|(name, r)| {
            (
                name,
                json!({
                    "create_rps": stat(r.rate),
                    "p99_ms": stat(r.p99),
                    "p99_9_ms": stat(r.p999),
                    "vs_script_ceiling": stat(r.ratio),
                    "server_cpu_us_per_create": stat(r.server_cpu),
                    // What one Redis master's thread carries at this
                    // CPU per create: 10^6 µs ÷ µs per create.
                    "creates_per_redis_master": stat(
                        r.redis_cpu.iter().map(|us| 1e6 / us.max(0.001)).collect()
                    ),
                    "redis_cpu_us_per_create": stat(r.redis_cpu),
                }),
            )
        })
        .collect();
    out.insert(
        "open loop at half the peak".into(),
        Value::Object(open_loop),
    );
    out.insert("two processes, one Redis".into(), scale_out);
    Ok(Value::Object(out))
}

/// The mean of `v` (0 when empty).
fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / (v.len().max(1) as f64)
}

/// The rows of figure 14 in BENCHMARKS.md's table.
pub fn markdown(d: &Value) -> String {
    let mut out = String::new();
    for (name, v) in d["open loop at half the peak"]
        .as_object()
        .into_iter()
        .flatten()
    {
        out += &format!(
            "| 14. {name}, open loop at half its peak ({:.0}/s, latency corrected): achieved req/s; p50, p99, p99.9 ms | {:.0}; {:.2}, {:.2}, {:.2} | p99 ≤ 5 |\n",
            v["rate"].as_f64().unwrap_or(0.0),
            v["achieved_rps"].as_f64().unwrap_or(0.0),
            v["p50_ms"].as_f64().unwrap_or(0.0),
            v["p99_ms"].as_f64().unwrap_or(0.0),
            v["p99_9_ms"].as_f64().unwrap_or(0.0),
        );
    }
    if let Some(v) = d.get("two processes, one Redis") {
        out += &format!(
            "| 14. this build as two processes against one Redis, flusher idle: create req/s (both); ÷ one process; worst p99 ms; CPU µs per create, servers and Redis; creates/s per Redis master | {}; {:.2}; {}; {}, {}; {} | |\n",
            crate::s(&v["create_rps"]),
            v["vs_one_process"].as_f64().unwrap_or(0.0),
            crate::s(&v["p99_ms_worst_of_two"]),
            crate::s(&v["server_cpu_us_per_create"]),
            crate::s(&v["redis_cpu_us_per_create"]),
            crate::s(&v["creates_per_redis_master"]),
        );
    }
    for (name, v) in d.as_object().into_iter().flatten() {
        if name == "open loop at half the peak" || name == "two processes, one Redis" {
            continue;
        }
        out += &format!(
            "| 14. {name}: create req/s; p99 ms; p99.9 ms; ÷ script ceiling, same run; CPU µs per create, server and Redis; creates/s per Redis master | {}; {}; {}; {}; {}, {}; {} | {} |\n",
            crate::s(&v["create_rps"]),
            crate::s(&v["p99_ms"]),
            crate::s(&v["p99_9_ms"]),
            crate::s(&v["vs_script_ceiling"]),
            crate::s(&v["server_cpu_us_per_create"]),
            crate::s(&v["redis_cpu_us_per_create"]),
            crate::s(&v["creates_per_redis_master"]),
            if name == "service, flusher idle" {
                "≥ 0.85"
            } else {
                ""
            },
        );
    }
    out
}
