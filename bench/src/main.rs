//! The benchmark driver behind `bench/run`: everything of BENCHMARKS.md in one
//! run, on loopback, with `oha` as the HTTP load generator.
//!
//! Subcommands: `all` (the driver), and the two comparison servers it
//! starts as separate processes: `ceiling` (a bare poem-openapi endpoint that
//! answers the same 201 without Redis) and `baseline` (one synchronous,
//! transactional INSERT per request, the design write-behind replaces).

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi, param::Path};
use serde_json::{Value, json};
use sqlx::MySqlPool;

mod block_wait;
mod live;
mod numbering;
mod page_depth;
mod plots;
mod read_replica;
mod reindex;
mod request_path;
mod script_cost;
mod search_lag;
mod search_quality;
mod search_topk;
#[path = "../../tests/support/mod.rs"]
mod support;
mod sustained;

use support::free_port;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run every benchmark and write the report.
    All(Opts),
    /// Only figures 9 to 11: the sustainable rate, CPU per record, and the
    /// request-path and backpressure levers.
    Sustainable(Opts),
    /// Only figure 7: the cost of each `REDIS_DURABILITY` mode.
    Durability(Opts),
    /// Only the flush rate with message text at several stored sizes, with
    /// InnoDB FULLTEXT (the search backend before issue 25), the term index
    /// (flush, then the indexer) and no index, and search latency in a
    /// 20-message and a 100,000-message chat (figures 8 and 15).
    FlushText(FlushTextOpts),
    /// Only figure 12: the flush rate at 1, 2 and 4 `FLUSH_WORKERS`.
    FlushWorkers(Opts),
    /// Only figure 13: what numbering costs (the doubt check on every
    /// create, and the reservations), against another build when given.
    Numbering(numbering::NumberingOpts),
    /// Only figure 19: the p99 of creates with blocks of `NUMBER_BLOCK_MAX`
    /// against blocks so large that no create waits on SQL, on one hot chat
    /// and on 1,000 chats.
    BlockWait(Opts),
    /// Only figure 14: the request path against a server that runs one
    /// minimal script per create.
    RequestPath(request_path::RequestPathOpts),
    /// Only Redis's CPU per create of the enqueue script, on Redis alone
    /// (no HTTP, no service): this build's batched script, other texts of
    /// it (`--variant`), and the script ceiling's, interleaved (issue 36).
    ScriptCost(script_cost::ScriptCostOpts),
    /// Only figure 16: the search lag while text creates run at 0.6 of
    /// their peak.
    SearchLag(Opts),
    /// Only figure 18: precision at 5 of each search backend on a judged
    /// set of queries over the chatterbot corpus.
    SearchQuality(Opts),
    /// Only figure 21: search latency of the term index in one chat of
    /// 1,000,000 messages, per query shape and for page 10 by cursor, with
    /// top-k and with the algorithm before issue 38, in one run.
    SearchTopk(search_topk::SearchTopkOpts),
    /// Only figure 20: `chat-api reindex` into the term index and into
    /// Meilisearch (`MEILI_URL`), on the same 200,000 stored messages.
    Reindex(reindex::ReindexOpts),
    /// Only figure 22: a page of a 1,000,000-message chat by cursor
    /// (`after`) against by OFFSET (`page`), at several depths.
    PageDepth(page_depth::PageDepthOpts),
    /// Only figure 17: message list reads with 0 and 1 MariaDB replica
    /// while creates run at half their peak, and the primary's CPU per read.
    ReadReplica(Opts),
    /// Only figure 23: live events: delivery from a create's 201 to its
    /// event at 1,000 subscribers on 100 chats, at half the peak of the
    /// request path alone and at half the peak with the subscribers, events
    /// lost or duplicated, the request path with and without subscribers,
    /// and RSS per idle subscriber.
    Live(live::LiveOpts),
    /// Serve the ceiling endpoint on `port`.
    Ceiling { port: u16 },
    /// Draw the SVG figures again from saved results, without running
    /// anything (figure 8 only if its file exists).
    Plot {
        /// `bench all`'s results.
        #[arg(long, default_value = "bench/out/results.json")]
        results: String,
        /// `bench flush-text`'s results.
        #[arg(long, default_value = "bench/out/flush_text.json")]
        flush_text: String,
        /// Where to write the SVG files.
        #[arg(long, default_value = FIGURES_DIR)]
        figures: String,
    },
    /// Serve the script-ceiling endpoint on `port` (figure 14), its keys
    /// under `prefix` on `redis_url`.
    ScriptCeiling {
        port: u16,
        redis_url: String,
        prefix: String,
    },
    /// Serve the baseline endpoint on `port` against `database_url`.
    Baseline { port: u16, database_url: String },
}

/// Options of `flush-text`.
#[derive(clap::Args, Clone)]
struct FlushTextOpts {
    #[command(flatten)]
    opts: Opts,
    /// Stored messages before each measurement (comma-separated, ascending).
    #[arg(long, value_delimiter = ',', default_value = "0,1000000,10000000")]
    levels: Vec<u64>,
    /// Search indexes to measure, of `fulltext`, `terms` and `none`
    /// (comma-separated): the FULLTEXT one takes longest to fill at 10M.
    #[arg(long, value_delimiter = ',', default_value = "fulltext,terms,none")]
    variants: Vec<String>,
    /// Records flushed at each level.
    #[arg(long, default_value_t = 100_000)]
    records: u64,
    /// Rows per INSERT (`MESSAGE_BATCH_SIZE`).
    #[arg(long, default_value_t = 5000)]
    batch: usize,
    /// Messages of the large chat of figure 15.
    #[arg(long, default_value_t = 100_000)]
    search_chat: u64,
}

#[derive(clap::Args, Clone)]
struct Opts {
    /// MariaDB server (no database part).
    #[arg(
        long,
        env = "BENCH_MYSQL_URL",
        default_value = "mysql://root@127.0.0.1:3306"
    )]
    mysql: String,
    /// Redis URL.
    #[arg(
        long,
        env = "BENCH_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    redis: String,
    /// Runs per figure (the report gives median, min and max).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds per load run.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Concurrent connections of the closed-loop runs.
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// Runs per batch size of the flush benchmark (each writes `flush_records` rows).
    #[arg(long, default_value_t = 1)]
    flush_runs: usize,
    /// Records pre-filled for the flush benchmark, per batch size.
    #[arg(long, default_value_t = 1_000_000)]
    flush_records: u64,
    /// Seconds of the sustained-balance run.
    #[arg(long, default_value_t = 60)]
    balance_secs: u64,
    /// Stored messages at the base scale of the cost-growth figure (10× at the large one).
    #[arg(long, default_value_t = 100_000)]
    stored_messages: u64,
    /// Seconds each rate of the sustainable-rate bisection is held (figure 9).
    #[arg(long, default_value_t = 120)]
    hold_secs: u64,
    /// Steps of the sustainable-rate bisection (figure 9).
    #[arg(long, default_value_t = 4)]
    bisect_steps: usize,
    /// Records created, then flushed, for the CPU-per-record figure (10).
    #[arg(long, default_value_t = 200_000)]
    cpu_records: u64,
    /// Where to write results.json and results.md.
    #[arg(long, default_value = "bench/out")]
    out: String,
    /// Also write BENCHMARKS.md's table.
    #[arg(long)]
    write_benchmarks_md: bool,
}

/// Median, min and max of a figure.
#[derive(Debug, Clone, Copy, serde::Serialize)]
struct Stat {
    median: f64,
    min: f64,
    max: f64,
}

fn stat(mut v: Vec<f64>) -> Stat {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Stat {
        median: v[v.len() / 2],
        min: v[0],
        max: v[v.len() - 1],
    }
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // (A figure may have killed it already.)
        support::terminate(&mut self.0, Duration::from_secs(30));
    }
}

async fn wait_up(port: u16, path: &str) {
    let c = reqwest::Client::new();
    for _ in 0..200 {
        if c.get(format!("http://127.0.0.1:{port}{path}"))
            .send()
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing answers on port {port}");
}

fn rss_peak_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Runs oha and returns its JSON report.
fn oha(args: &[String]) -> Value {
    let out = Command::new("oha")
        .args(["--no-tui", "--output-format", "json"])
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("oha is installed (bench/run installs it with cargo install oha)");
    assert!(out.status.success(), "oha failed");
    serde_json::from_slice(&out.stdout).expect("oha JSON")
}

fn rps(report: &Value) -> f64 {
    report["summary"]["requestsPerSec"].as_f64().unwrap_or(0.0)
}

fn status_share(report: &Value, code: &str) -> f64 {
    let dist = report["statusCodeDistribution"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let total: f64 = dist.values().filter_map(Value::as_f64).sum();
    dist.get(code).and_then(Value::as_f64).unwrap_or(0.0) / total.max(1.0)
}

fn body_100() -> String {
    json!({ "body": "b".repeat(100) }).to_string()
}

/// A closed-loop POST run of `secs` against the URL pattern.
fn post_closed(url_regex: &str, secs: u64, connections: u32) -> Value {
    oha(&[
        "-z".into(),
        format!("{secs}s"),
        "-c".into(),
        connections.to_string(),
        "-m".into(),
        "POST".into(),
        "-H".into(),
        "content-type: application/json".into(),
        "-d".into(),
        body_100(),
        "--rand-regex-url".into(),
        url_regex.into(),
    ])
}

fn url_regex(port: u16, tokens: &[String], chats: u32) -> String {
    let chat_re = if chats == 100 {
        "([1-9][0-9]?|100)".to_string()
    } else {
        format!("(1|{})", chats)
    };
    format!(
        "http://127.0.0.1:{port}/api/v1/applications/({})/chats/{chat_re}/messages",
        tokens.join("|")
    )
}

/// Drops the databases of `envs`. Errors: MariaDB failed.
async fn drop_databases(opts: &Opts, envs: &[Env]) -> anyhow::Result<()> {
    let admin = MySqlPool::connect(&opts.mysql).await?;
    for env in envs {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS `{}`",
            env.db
        )))
        .execute(&admin)
        .await?;
    }
    Ok(())
}

/// A database `db` and key prefix `prefix` on `opts`' servers, migrated
/// when `migrate` (a build under comparison migrates its own), with a
/// service from `binary` started on them (`extra` settings), waited for,
/// and seeded with figure 7's 2 applications × 100 chats: the env, the
/// service's port, its tokens and its process. Errors: MariaDB failed.
async fn seeded_service(
    opts: Opts,
    db: String,
    prefix: String,
    binary: &str,
    migrate: bool,
    extra: &[(&str, &str)],
) -> anyhow::Result<(Env, u16, Vec<String>, Proc)> {
    let env = Env { opts, db, prefix };
    chat_api::store::ensure_database(&env.database_url()).await?;
    if migrate {
        let pool = MySqlPool::connect(&env.database_url()).await?;
        chat_api::store::migrate(&pool).await?;
        pool.close().await;
    }
    let port = free_port();
    let svc = env.start_binary(binary, port, extra);
    wait_up(port, "/health/live").await;
    let tokens = seed(port, 2, 100).await;
    Ok((env, port, tokens, svc))
}

/// The service this build made.
const SERVICE_BINARY: &str = "target/release/chat-api";

struct Env {
    opts: Opts,
    db: String,
    prefix: String,
}

impl Env {
    fn database_url(&self) -> String {
        format!("{}/{}", self.opts.mysql, self.db)
    }

    fn start_service(&self, port: u16, extra: &[(&str, &str)]) -> Proc {
        self.start_binary(SERVICE_BINARY, port, extra)
    }

    /// [`Env::start_service`] with another build of the service (`bench
    /// numbering --compare-bin`).
    fn start_binary(&self, binary: &str, port: u16, extra: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(binary);
        cmd.arg("serve")
            .env("DATABASE_URL", self.database_url())
            .env("REDIS_URL", &self.opts.redis)
            .env("REDIS_KEY_PREFIX", &self.prefix)
            .env("QUEUE_SHARDS", SERVICE_SHARDS.to_string())
            .env("BIND_ADDR", format!("127.0.0.1:{port}"))
            .env("RATE_LIMIT_PER_MINUTE", "1000000000")
            .env("RATE_LIMIT_BURST", "1000000")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        Proc(
            cmd.spawn()
                .expect("target/release/chat-api exists (bench/run builds it)"),
        )
    }
}

/// Creates `apps` applications of `chats` chats each, stored; returns tokens.
async fn seed(port: u16, apps: usize, chats: u32) -> Vec<String> {
    let c = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}/api/v1");
    let mut tokens = Vec::new();
    for i in 0..apps {
        let a: Value = c
            .post(format!("{base}/applications"))
            .json(&json!({"name": format!("bench {i}")}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let t = a["token"].as_str().unwrap().to_string();
        let posts = (0..chats).map(|_| c.post(format!("{base}/applications/{t}/chats")).send());
        for r in futures::future::join_all(posts).await {
            assert_eq!(r.unwrap().status(), 201);
        }
        tokens.push(t);
    }
    // Reading the last chat of each application waits for its flush.
    for t in &tokens {
        assert_eq!(
            c.get(format!("{base}/applications/{t}/chats/{chats}"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    tokens
}

async fn all(opts: Opts) -> anyhow::Result<()> {
    std::fs::create_dir_all(&opts.out)?;
    let (env, pool) = Env::fresh(&opts).await?;
    let redis = redis::Client::open(opts.redis.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let mut results: BTreeMap<String, Value> = BTreeMap::new();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    results.insert(
        "machine".into(),
        json!({ "cores": cores, "date": chrono::Utc::now().to_rfc3339() }),
    );

    // The three servers.
    let (sp, cp, bp) = (free_port(), free_port(), free_port());
    let service = env.start_service(sp, &[]);
    let exe = std::env::current_exe()?;
    let _ceiling = Proc(
        Command::new(&exe)
            .args(["ceiling", &cp.to_string()])
            .stdout(Stdio::null())
            .spawn()?,
    );
    let _baseline = Proc(
        Command::new(&exe)
            .args(["baseline", &bp.to_string(), &env.database_url()])
            .stdout(Stdio::null())
            .spawn()?,
    );
    wait_up(sp, "/health/live").await;
    wait_up(cp, "/").await;
    wait_up(bp, "/").await;
    eprintln!("seeding 10 applications × 100 chats…");
    let tokens = seed(sp, 10, 100).await;

    // 1. Create throughput, interleaved so that each run's ratios share the machine's mood.
    let (mut s_rps, mut c_rps, mut b_rps, mut vs_c, mut vs_b) =
        (vec![], vec![], vec![], vec![], vec![]);
    for run in 0..opts.runs {
        eprintln!(
            "figure 1, run {}: ceiling, service, baseline ({} s each)…",
            run + 1,
            opts.secs
        );
        let c = rps(&post_closed(
            &url_regex(cp, &tokens, 100),
            opts.secs,
            opts.connections,
        ));
        let s_report = post_closed(&url_regex(sp, &tokens, 100), opts.secs, opts.connections);
        assert!(
            status_share(&s_report, "201") > 0.99,
            "the service answered 201: {:?}",
            s_report["statusCodeDistribution"]
        );
        let s = rps(&s_report);
        let b = rps(&post_closed(
            &url_regex(bp, &tokens, 100),
            opts.secs,
            opts.connections,
        ));
        s_rps.push(s);
        c_rps.push(c);
        b_rps.push(b);
        vs_c.push(s / c);
        vs_b.push(s / b);
    }
    let service_max = stat(s_rps.clone()).median;
    results.insert(
        "create_throughput".into(),
        json!({ "per_run": { "service": s_rps, "ceiling": c_rps, "baseline": b_rps },
                "service_rps": stat(s_rps), "ceiling_rps": stat(c_rps), "baseline_rps": stat(b_rps),
                "service_vs_ceiling": stat(vs_c), "service_vs_baseline": stat(vs_b) }),
    );

    // 2. Latency, open loop at half the measured maximum.
    let rate = (service_max / 2.0).max(10.0) as u64;
    let (mut p50, mut p99, mut p999) = (vec![], vec![], vec![]);
    for run in 0..opts.runs {
        eprintln!("figure 2, run {}: open loop at {rate} requests/s…", run + 1);
        let r = sustained::post_open(
            &url_regex(sp, &tokens, 100),
            rate,
            opts.secs,
            opts.connections,
        );
        let p = &r["latencyPercentiles"];
        p50.push(p["p50"].as_f64().unwrap_or(0.0) * 1000.0);
        p99.push(p["p99"].as_f64().unwrap_or(0.0) * 1000.0);
        p999.push(p["p99.9"].as_f64().unwrap_or(0.0) * 1000.0);
    }
    results.insert(
        "latency_ms".into(),
        json!({ "rate_rps": rate, "p50": stat(p50), "p99": stat(p99), "p99_9": stat(p999) }),
    );

    // 4. Sustained balance: the maximum rate for balance_secs, pending depth each second.
    eprintln!(
        "figure 4: {} s at the maximum rate, sampling the queue…",
        opts.balance_secs
    );
    let url = url_regex(sp, &tokens, 100);
    let (secs, conns) = (opts.balance_secs, opts.connections);
    let (balance_report, depth) = sustained::under_load(&redis, &env.prefix, secs, move || {
        post_closed(&url, secs, conns)
    })
    .await?;
    results.insert(
        "sustained_balance".into(),
        json!({ "rps": rps(&balance_report), "pending_depth_per_second": depth,
                "max_depth": depth.iter().max(), "final_depth": depth.last() }),
    );
    let peak_rss = rss_peak_kib(service.0.id());
    drop(service);

    // 5. Memory: Redis bytes per pending message (no flusher on this prefix).
    let mem_prefix = format!("{}mem:", env.prefix);
    let mut r = redis.clone();
    let used = |info: String| -> i64 {
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let n_mem = 100_000u64.min(opts.flush_records);
    let before = used(redis::cmd("INFO").arg("memory").query_async(&mut r).await?);
    prefill(
        &mut r,
        &format!("{mem_prefix}pending:messages"),
        1,
        100,
        n_mem,
    )
    .await?;
    let after = used(redis::cmd("INFO").arg("memory").query_async(&mut r).await?);
    let per_record = (after - before) as f64 / n_mem as f64;
    let _: () = redis::cmd("DEL")
        .arg(format!("{mem_prefix}pending:messages"))
        .query_async(&mut r)
        .await?;
    results.insert(
        "memory".into(),
        json!({ "redis_bytes_per_pending_message": per_record, "ratio_to_body": per_record / 100.0,
                "service_peak_rss_mib": peak_rss as f64 / 1024.0 }),
    );

    // 3. Flush throughput from a pre-filled queue, at several batch sizes.
    let mut flush = serde_json::Map::new();
    for size in [250usize, 1000, 2000, 5000] {
        let mut rates = vec![];
        for run in 0..opts.flush_runs {
            eprintln!(
                "figure 3: batch size {size}, run {}: {} records…",
                run + 1,
                opts.flush_records
            );
            rates.push(flush_rate(&env, &pool, &mut r, size, opts.flush_records).await?);
        }
        flush.insert(size.to_string(), json!(stat(rates)));
    }
    results.insert("flush_rows_per_sec".into(), Value::Object(flush));

    results.insert(
        "flush_workers_rows_per_sec".into(),
        flush_workers(&env, &pool, &mut r, &opts).await?,
    );

    // 6. Cost growth: 10× applications, chats and stored messages.
    let mut growth = serde_json::Map::new();
    for (label, apps, stored) in [
        ("base", 10usize, opts.stored_messages),
        ("x10", 100, opts.stored_messages * 10),
    ] {
        eprintln!("figure 6, {label}: {apps} applications × 100 chats, {stored} stored messages…");
        let (genv, gpool) = Env::fresh(&opts).await?;
        let port = free_port();
        let svc = genv.start_service(port, &[]);
        wait_up(port, "/health/live").await;
        let gtokens = seed(port, apps, 100).await;
        store_messages(&gpool, stored).await?;
        let mut rates = vec![];
        for _ in 0..opts.runs {
            rates.push(rps(&post_closed(
                &url_regex(port, &gtokens, 100),
                opts.secs,
                opts.connections,
            )));
        }
        // Reads of one chat, and a counts refresh of one dirty chat.
        let read = oha(&[
            "-n".into(),
            "2000".into(),
            "-c".into(),
            "8".into(),
            format!(
                "http://127.0.0.1:{port}/api/v1/applications/{}/chats/7",
                gtokens[0]
            ),
        ]);
        let read_p50 = read["latencyPercentiles"]["p50"].as_f64().unwrap_or(0.0) * 1000.0;
        let refresh_ms = refresh_one(&genv, &gpool).await?;
        growth.insert(label.into(), json!({ "applications": apps, "chats": apps * 100, "stored_messages": stored,
            "create_rps": stat(rates), "read_one_chat_p50_ms": read_p50, "refresh_one_chat_ms": refresh_ms }));
        drop(svc);
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE `{}`", genv.db)))
            .execute(&pool)
            .await?;
        cleanup_prefix(&mut r, &genv.prefix).await?;
    }
    let base = growth["base"]["create_rps"]["median"]
        .as_f64()
        .unwrap_or(1.0);
    let large = growth["x10"]["create_rps"]["median"]
        .as_f64()
        .unwrap_or(0.0);
    growth.insert("create_rps_ratio_x10_to_base".into(), json!(large / base));
    results.insert("cost_growth".into(), Value::Object(growth));

    results.insert("durability".into(), durability_cost(&opts).await?);
    results.insert("sustainable".into(), sustained::sustainable(&opts).await?);
    results.insert(
        "cpu_per_record".into(),
        sustained::cpu_per_record(&opts).await?,
    );
    results.insert("levers".into(), sustained::levers(&opts).await?);

    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE `{}`", env.db)))
        .execute(&pool)
        .await?;
    cleanup_prefix(&mut r, &env.prefix).await?;

    let json_text = serde_json::to_string_pretty(&results)?;
    std::fs::write(format!("{}/results.json", opts.out), &json_text)?;
    let results_value = serde_json::to_value(&results)?;
    draw(&opts, |dir| plots::render_results(&results_value, dir))?;
    let md = markdown(&results);
    std::fs::write(format!("{}/results.md", opts.out), &md)?;
    if opts.write_benchmarks_md {
        let doc = std::fs::read_to_string("BENCHMARKS.md")?;
        let start = doc
            .find("<!-- results:start -->")
            .expect("BENCHMARKS.md has a results marker");
        let end = doc
            .find("<!-- results:end -->")
            .expect("BENCHMARKS.md has a results end marker");
        let doc = format!(
            "{}<!-- results:start -->\n{md}{}",
            &doc[..start],
            &doc[end..]
        );
        std::fs::write("BENCHMARKS.md", doc)?;
    }
    println!("{md}");
    Ok(())
}

/// Where BENCHMARKS.md finds the figures' SVG files.
const FIGURES_DIR: &str = "bench/figures";

/// Draws figures with `render` into `<out>/figures/`, and into
/// [`FIGURES_DIR`] too with `--write-benchmarks-md`; prints each file.
fn draw(
    opts: &Opts,
    render: impl Fn(&std::path::Path) -> anyhow::Result<Vec<std::path::PathBuf>>,
) -> anyhow::Result<()> {
    let mut dirs = vec![std::path::Path::new(&opts.out).join("figures")];
    if opts.write_benchmarks_md {
        dirs.push(FIGURES_DIR.into());
    }
    for dir in dirs {
        for file in render(&dir)? {
            eprintln!("drew {}", file.display());
        }
    }
    Ok(())
}

/// A `redis-server` of the bench's own on a free loopback port, in a fresh
/// directory, with `args`; killed (and its directory removed) on drop.
struct BenchRedis {
    proc: Option<Proc>,
    port: u16,
    dir: std::path::PathBuf,
}

impl BenchRedis {
    async fn start(args: &[&str]) -> anyhow::Result<BenchRedis> {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!(
            "chat-bench-redis-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir)?;
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&dir)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let redis = BenchRedis {
            proc: Some(Proc(child)),
            port,
            dir,
        };
        let client = redis::Client::open(redis.url())?;
        for _ in 0..200 {
            if let Ok(mut c) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
            {
                return Ok(redis);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("redis-server did not answer on {port}")
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for BenchRedis {
    fn drop(&mut self) {
        self.proc.take();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Figure 7: what each `REDIS_DURABILITY` mode costs. One primary with one
/// replica serves `memory` and `replica` (so that the only difference is the
/// `WAIT`), a second Redis with `appendonly yes`, `appendfsync always` serves
/// `fsync`. For each mode, interleaved over the runs: closed-loop create
/// throughput (req/s) and its p99 (ms), and the ratio to `memory` in the
/// same run.
async fn durability_cost(opts: &Opts) -> anyhow::Result<Value> {
    let primary = BenchRedis::start(&["--appendonly", "no"]).await?;
    let replica = BenchRedis::start(&[
        "--appendonly",
        "no",
        "--replicaof",
        "127.0.0.1",
        &primary.port.to_string(),
    ])
    .await?;
    let fsync = BenchRedis::start(&["--appendonly", "yes", "--appendfsync", "always"]).await?;
    // The replica is in sync before the figure starts.
    let mut c = redis::Client::open(replica.url())?
        .get_multiplexed_async_connection()
        .await?;
    for _ in 0..200 {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut c)
            .await?;
        if info.contains("master_link_status:up") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let modes = [
        ("memory", primary.url()),
        ("replica", primary.url()),
        ("fsync", fsync.url()),
    ];
    let mut services = Vec::new();
    let mut envs = Vec::new();
    for (mode, url) in &modes {
        let (env, port, tokens, svc) = seeded_service(
            Opts {
                redis: url.clone(),
                ..opts.clone()
            },
            format!("chat_bench_{id}_{mode}"),
            format!("bench:{id}:{mode}:"),
            SERVICE_BINARY,
            true,
            &[("REDIS_DURABILITY", mode)],
        )
        .await?;
        services.push((mode.to_string(), port, tokens, svc));
        envs.push(env);
    }
    // mode → (req/s, p99 ms, ÷ memory) per run.
    type Runs = (Vec<f64>, Vec<f64>, Vec<f64>);
    let mut figures: BTreeMap<String, Runs> = BTreeMap::new();
    for run in 0..opts.runs {
        let mut memory_rps = 0.0;
        for (mode, port, tokens, _) in &services {
            eprintln!("figure 7, run {}: REDIS_DURABILITY={mode}…", run + 1);
            let report = post_closed(&url_regex(*port, tokens, 100), opts.secs, opts.connections);
            assert!(
                status_share(&report, "201") > 0.99,
                "REDIS_DURABILITY={mode} answered 201: {:?}",
                report["statusCodeDistribution"]
            );
            let rate = rps(&report);
            if mode == "memory" {
                memory_rps = rate;
            }
            let p99 = report["latencyPercentiles"]["p99"].as_f64().unwrap_or(0.0) * 1000.0;
            let entry = figures.entry(mode.clone()).or_default();
            entry.0.push(rate);
            entry.1.push(p99);
            entry.2.push(rate / memory_rps.max(1.0));
        }
    }
    drop_databases(opts, &envs).await?;
    drop(services);
    let mut out = serde_json::Map::new();
    for (mode, (rate, p99, ratio)) in figures {
        out.insert(
            mode,
            json!({ "create_rps": stat(rate), "p99_ms": stat(p99), "vs_memory": stat(ratio) }),
        );
    }
    Ok(Value::Object(out))
}

/// The rows of figure 7 in BENCHMARKS.md's table.
fn durability_markdown(d: &Value) -> String {
    let mut out = String::new();
    for mode in ["memory", "replica", "fsync"] {
        let v = &d[mode];
        out += &format!(
            "| 7. REDIS_DURABILITY={mode}: create req/s; p99 ms; ÷ memory, same run | {}; {}; {} | |\n",
            s(&v["create_rps"]),
            s(&v["p99_ms"]),
            s(&v["vs_memory"])
        );
    }
    out
}

/// About 100 bytes of message text: 14 words drawn from a vocabulary of
/// 20,000 (`w0` … `w19999`, skewed towards the small ones, as words are) by
/// the generator `state`, so that the FULLTEXT index has real work to do.
fn message_text(state: &mut u64) -> String {
    let mut words = Vec::with_capacity(14);
    for _ in 0..14 {
        *state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let r = (*state >> 33) % 20_000;
        words.push(format!("w{}", r * r / 20_000));
    }
    words.join(" ")
}

/// The FULLTEXT index that the MariaDB search backend used before the term
/// index (migration 2, dropped by migration 6): rebuilt here to measure
/// today's backend against the old one in the same run.
const OLD_FULLTEXT: &str = "ALTER TABLE messages ADD FULLTEXT INDEX messages_body_fulltext (body)";

/// The old backend's search (InnoDB FULLTEXT, natural-language mode, scoped
/// by `chat_id` in the WHERE clause), as it ran before the term index: the
/// first `limit` hits' bodies, best first.
async fn old_fulltext_search(
    pool: &MySqlPool,
    chat_id: u64,
    q: &str,
    limit: i64,
) -> anyhow::Result<Vec<String>> {
    let rows: Vec<(String, f64)> = sqlx::query_as(
        "SELECT body, CAST(MATCH(body) AGAINST (? IN NATURAL LANGUAGE MODE) AS DOUBLE) AS score FROM messages \
         WHERE chat_id = ? AND deleted_at IS NULL AND MATCH(body) AGAINST (? IN NATURAL LANGUAGE MODE) \
         ORDER BY score DESC, number LIMIT ?",
    )
    .bind(q)
    .bind(chat_id)
    .bind(q)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(body, _)| body).collect())
}

/// Indexes the live messages with `id > *after` into the term index, as
/// `chat-api reindex` does, and moves `after` past them.
async fn index_stored(pool: &MySqlPool, after: &mut u64) -> anyhow::Result<u64> {
    let mut n = 0;
    loop {
        let (docs, last) = chat_api::store::search::search_docs_after(pool, *after, 5000).await?;
        let Some(last) = last else { break };
        chat_api::store::search::terms::apply_sync(pool, &docs, &[]).await?;
        n += docs.len() as u64;
        *after = last;
    }
    Ok(n)
}

/// Inserts an application named `name` with chats 1 to 100 in SQL (for
/// [`insert_text_rows`]); its id. Errors: MariaDB failed.
async fn app_with_100_chats(pool: &MySqlPool, name: &str) -> anyhow::Result<u64> {
    let app = sqlx::query("INSERT INTO applications (token, name, created_at, updated_at) VALUES (?, ?, NOW(6), NOW(6))")
        .bind(chat_api::domain::new_token())
        .bind(name)
        .execute(pool)
        .await?
        .last_insert_id();
    sqlx::query("INSERT INTO chats (application_id, number, created_at, updated_at) SELECT ?, seq, NOW(6), NOW(6) FROM seq_1_to_100")
        .bind(app)
        .execute(pool)
        .await?;
    Ok(app)
}

/// Inserts `n` messages of 14 words (`w…`, the shape of [`message_text`]) in
/// SQL, numbered from `first`, into chat `chat_id`, or spread over chats 1 to
/// 100 of application `app` when `chat_id` is `None`. `seq_1_to_n` is
/// MariaDB's sequence engine.
async fn insert_text_rows(
    pool: &MySqlPool,
    app: u64,
    chat_id: Option<u64>,
    first: u64,
    n: u64,
) -> anyhow::Result<()> {
    let words = "CONCAT_WS(' ', \
        CONCAT('w', s.seq % 19997), CONCAT('w', (s.seq * 7) % 4999), CONCAT('w', (s.seq * 13) % 997), \
        CONCAT('w', (s.seq * 31) % 2003), CONCAT('w', (s.seq * 17) % 15013), CONCAT('w', (s.seq * 3) % 97), \
        CONCAT('w', (s.seq * 11) % 9973), CONCAT('w', (s.seq * 19) % 199), CONCAT('w', (s.seq * 23) % 12007), \
        CONCAT('w', (s.seq * 29) % 499), CONCAT('w', (s.seq * 37) % 19001), CONCAT('w', (s.seq * 41) % 59), \
        CONCAT('w', (s.seq * 43) % 7001), CONCAT('w', (s.seq * 47) % 3001))";
    let sql = match chat_id {
        None => format!(
            "INSERT INTO messages (chat_id, number, body, created_at, updated_at) \
             SELECT c.id, {first} + s.seq, {words}, NOW(6), NOW(6) \
             FROM seq_1_to_{n} s JOIN chats c ON c.application_id = {app} AND c.number = 1 + s.seq % 100"
        ),
        Some(chat) => format!(
            "INSERT INTO messages (chat_id, number, body, created_at, updated_at) \
             SELECT {chat}, {first} + s.seq, {words}, NOW(6), NOW(6) FROM seq_1_to_{n} s"
        ),
    };
    sqlx::query(sqlx::AssertSqlSafe(sql)).execute(pool).await?;
    Ok(())
}

/// Figure 8: messages per second the flusher writes, with message text
/// ([`message_text`]), at each stored size of `levels`, with each search
/// index: `fulltext`, the InnoDB FULLTEXT index that the MariaDB backend
/// kept up inside every flush before the term index; `terms`, today's
/// default (the flush, then the indexer writing the term index from the
/// queued ops; both rates and the combined one, `records ÷ (flush time +
/// index time)`, are reported); `none` (Meilisearch: nothing in MariaDB).
/// The stored rows are added in SQL between measurements, with text of the
/// same shape (and indexed, for `terms`).
///
/// Figure 15, at the last level: search latency (p50, p99 of 40 searches
/// of `w10`, a word in about 4% of the stored messages) in a 20-message chat
/// and in a 100,000-message chat, with the old FULLTEXT backend and the term
/// index.
async fn flush_text(o: &FlushTextOpts) -> anyhow::Result<Value> {
    let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let mut r = redis::Client::open(o.opts.redis.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let mut out = serde_json::Map::new();
    let mut search = serde_json::Map::new();
    let mut seed = 42u64;
    for variant in ["fulltext", "terms", "none"] {
        if !o.variants.iter().any(|v| v == variant) {
            continue;
        }
        let env = Env {
            opts: o.opts.clone(),
            db: format!("chat_bench_{id}_{variant}"),
            prefix: format!("bench:{id}:{variant}:"),
        };
        chat_api::store::ensure_database(&env.database_url()).await?;
        let pool = MySqlPool::connect(&env.database_url()).await?;
        chat_api::store::migrate(&pool).await?;
        if variant == "fulltext" {
            sqlx::query(OLD_FULLTEXT).execute(&pool).await?;
        }
        // The application the stored rows belong to.
        let stored_app = app_with_100_chats(&pool, "stored").await?;
        let (mut stored, mut indexed_to) = (0u64, 0u64);
        let mut rates = serde_json::Map::new();
        for &level in &o.levels {
            while stored < level {
                let n = 100_000.min(level - stored);
                let started = Instant::now();
                insert_text_rows(&pool, stored_app, None, stored, n).await?;
                stored += n;
                eprintln!(
                    "figure 8, {variant}: {stored} stored ({:.0} rows/s in SQL)",
                    n as f64 / started.elapsed().as_secs_f64()
                );
            }
            if variant == "terms" {
                let started = Instant::now();
                let n = index_stored(&pool, &mut indexed_to).await?;
                eprintln!(
                    "figure 8, terms: indexed {n} stored rows ({:.0} rows/s)",
                    n as f64 / started.elapsed().as_secs_f64().max(1e-9)
                );
            }
            // A fresh application and queue for this measurement.
            let prefix = format!("{}{level}:", env.prefix);
            let app = sqlx::query("INSERT INTO applications (token, name, created_at, updated_at) VALUES (?, 'flush', NOW(6), NOW(6))")
                .bind(chat_api::domain::new_token())
                .execute(&pool)
                .await?
                .last_insert_id();
            sqlx::query("INSERT INTO chats (application_id, number, created_at, updated_at) SELECT ?, seq, NOW(6), NOW(6) FROM seq_1_to_100")
                .bind(app)
                .execute(&pool)
                .await?;
            let key = pending_key(&prefix, 0);
            let now = chrono::Utc::now().timestamp_millis();
            let mut i = 0u64;
            while i < o.records {
                let mut cmd = redis::cmd("RPUSH");
                cmd.arg(&key);
                for _ in 0..5000.min(o.records - i) {
                    let (chat, number) = (1 + i % 100, 1 + i / 100);
                    cmd.arg(format!(
                        "{app}\t{chat}\t{number}\t{now}\t{}",
                        message_text(&mut seed)
                    ));
                    i += 1;
                }
                cmd.query_async::<()>(&mut r).await?;
            }
            let drained = drain_with(
                &o.opts.redis,
                &prefix,
                &pool,
                o.batch,
                1,
                1,
                variant == "terms",
            )
            .await?;
            anyhow::ensure!(
                drained.written == o.records,
                "wrote {} of {}",
                drained.written,
                o.records
            );
            let rate = drained.written as f64 / drained.flush_secs;
            let result = match variant {
                "terms" => {
                    let combined =
                        drained.written as f64 / (drained.flush_secs + drained.index_secs);
                    eprintln!(
                        "figure 8, terms: {level} stored: flush {rate:.0} rows/s, index {:.0} rows/s, combined {combined:.0} rows/s",
                        drained.written as f64 / drained.index_secs
                    );
                    json!({"flush": rate, "index": drained.written as f64 / drained.index_secs, "combined": combined})
                }
                _ => {
                    eprintln!("figure 8, {variant}: {level} stored: {rate:.0} rows/s");
                    json!(rate)
                }
            };
            stored += o.records;
            rates.insert(level.to_string(), result);
            cleanup_prefix(&mut r, &prefix).await?;
        }
        if variant == "terms" {
            index_stored(&pool, &mut indexed_to).await?;
        }
        if variant != "none" {
            search.insert(
                variant.into(),
                search_latency(&pool, variant, o.search_chat).await?,
            );
        }
        out.insert(variant.into(), Value::Object(rates));
        pool.close().await;
        let admin = MySqlPool::connect(&o.opts.mysql).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE `{}`", env.db)))
            .execute(&admin)
            .await?;
    }
    out.insert("search".into(), Value::Object(search));
    Ok(Value::Object(out))
}

/// Figure 15 for one backend (`fulltext` or `terms`): p50 and p99 of 40
/// searches of `w10` in a new 20-message chat and in a new chat of
/// `large` messages (text of the stored rows' shape, indexed first for
/// `terms`), in ms.
async fn search_latency(pool: &MySqlPool, variant: &str, large: u64) -> anyhow::Result<Value> {
    let app = sqlx::query("INSERT INTO applications (token, name, created_at, updated_at) VALUES (?, 'search', NOW(6), NOW(6))")
        .bind(chat_api::domain::new_token())
        .execute(pool)
        .await?
        .last_insert_id();
    let mut out = serde_json::Map::new();
    for (name, size) in [("small_chat", 20u64), ("large_chat", large)] {
        let chat = sqlx::query("INSERT INTO chats (application_id, number, created_at, updated_at) VALUES (?, ?, NOW(6), NOW(6))")
            .bind(app)
            .bind(size as i64)
            .execute(pool)
            .await?
            .last_insert_id();
        // The stored rows' text: `w10` is in some of even 20 messages.
        let mut done = 0;
        while done < size {
            let n = 100_000.min(size - done);
            insert_text_rows(pool, app, Some(chat), done, n).await?;
            done += n;
        }
        if variant == "terms" {
            // Only this chat's rows are new: every older row is indexed.
            let first: Option<u64> =
                sqlx::query_scalar("SELECT MIN(id) - 1 FROM messages WHERE chat_id = ?")
                    .bind(chat)
                    .fetch_one(pool)
                    .await?;
            let mut after = first.unwrap_or(0);
            index_stored(pool, &mut after).await?;
        }
        let mut took = Vec::with_capacity(40);
        let mut hits = 0;
        for _ in 0..40 {
            let started = Instant::now();
            hits = match variant {
                "fulltext" => old_fulltext_search(pool, chat, "w10", 21).await?.len(),
                _ => chat_api::store::search::terms::search(
                    pool,
                    chat,
                    "w10",
                    chat_api::store::search::terms::Start::Offset(0),
                    21,
                    Duration::from_secs(60),
                )
                .await?
                .hits
                .len(),
            };
            took.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        took.sort_by(f64::total_cmp);
        eprintln!(
            "figure 15, {variant}, {name} ({size} messages): p50 {:.2} ms, p99 {:.2} ms, {hits} hits on the first page",
            took[19], took[39]
        );
        out.insert(
            name.into(),
            json!({"messages": size, "p50_ms": took[19], "p99_ms": took[39], "hits": hits}),
        );
    }
    Ok(Value::Object(out))
}

/// The rows of figures 8 and 15 in BENCHMARKS.md's table.
fn flush_text_markdown(d: &Value) -> String {
    let mut out = String::new();
    if let Some(levels) = d["none"].as_object() {
        for (level, none) in levels {
            let none = none.as_f64().unwrap_or(f64::NAN);
            let old = d["fulltext"][level].as_f64().unwrap_or(f64::NAN);
            let terms = &d["terms"][level];
            let combined = terms["combined"].as_f64().unwrap_or(f64::NAN);
            out += &format!(
                "| 8. flush rows/s with message text, {level} stored: FULLTEXT (before) / term index: flush, index, combined / none; combined ÷ none, FULLTEXT ÷ none | {} / {}, {}, {} / {}; {}, {} | ≥ 0.6 |\n",
                f(&json!(old)),
                f(&terms["flush"]),
                f(&terms["index"]),
                f(&json!(combined)),
                f(&json!(none)),
                f(&json!(combined / none)),
                f(&json!(old / none)),
            );
        }
    }
    for chat in ["small_chat", "large_chat"] {
        let (old, new) = (&d["search"]["fulltext"][chat], &d["search"]["terms"][chat]);
        out += &format!(
            "| 15. search latency, {} messages in the chat: FULLTEXT (before) p50 / p99 ms; term index p50 / p99 ms | {} / {}; {} / {} | |\n",
            new["messages"],
            f(&old["p50_ms"]),
            f(&old["p99_ms"]),
            f(&new["p50_ms"]),
            f(&new["p99_ms"]),
        );
    }
    out
}

/// Flushes everything queued under `prefix` (Redis at `redis_url`) into
/// `pool` with an in-process flusher at `batch` rows per INSERT, until the
/// queue is empty; returns the rows written and the rate (rows/s).
async fn drain(
    redis_url: &str,
    prefix: &str,
    pool: &MySqlPool,
    batch: usize,
    shards: u16,
    workers: usize,
) -> anyhow::Result<(u64, f64)> {
    let d = drain_with(redis_url, prefix, pool, batch, shards, workers, false).await?;
    Ok((d.written, d.written as f64 / d.flush_secs))
}

/// What [`drain_with`] measured.
struct Drained {
    /// Records written to MariaDB.
    written: u64,
    /// Time to flush them, in seconds.
    flush_secs: f64,
    /// Time for the indexer to apply the queued search ops afterwards, in
    /// seconds (0 without `index`).
    index_secs: f64,
}

/// [`drain`], and with `index` the search indexer too (2 workers, the
/// default `SEARCH_INDEX_WORKERS`), as the service runs them: the flush queues one search op per batch (`SearchFeed`), and the
/// indexer then writes the term index from them until none is left.
async fn drain_with(
    redis_url: &str,
    prefix: &str,
    pool: &MySqlPool,
    batch: usize,
    shards: u16,
    workers: usize,
    index: bool,
) -> anyhow::Result<Drained> {
    use chat_api::writebehind::flusher::FlushSettings;
    use chat_api::writebehind::keys::Keys;
    let rpool = chat_api::redis::pool(redis_url, 4, Duration::from_secs(5))?;
    let keys = Keys::with_shards(prefix.to_string(), shards);
    let marks = chat_api::jobs::counts::DirtyMarks::new(
        rpool.clone(),
        keys.clone(),
        Duration::from_secs(5),
    );
    let buffer = chat_api::writebehind::Buffer::new(rpool, keys, Duration::from_secs(5), u64::MAX);
    let settings = FlushSettings {
        chat_batch_size: batch,
        message_batch_size: batch,
        interval: Duration::from_secs(3600),
        max_age: None,
        lease: Duration::from_secs(60),
        orphan_max_age: Duration::from_secs(3600),
        shutdown_timeout: Duration::from_secs(30),
        fault_delay: Duration::ZERO,
        workers,
        causal_mark_ttl: None,
    };
    // As the service does: the counts refresh's marks follow each commit.
    let mut flusher = chat_api::writebehind::Flusher::new(buffer.clone(), pool.clone(), settings)
        .with_after_commit(std::sync::Arc::new(marks));
    if index {
        flusher =
            flusher.with_after_commit(std::sync::Arc::new(chat_api::jobs::indexer::SearchFeed));
    }
    let started = Instant::now();
    let mut written = 0;
    while flusher.pending().await? > 0 {
        written += flusher.flush_once().await?.written;
    }
    let flush_secs = started.elapsed().as_secs_f64();
    let started = Instant::now();
    if index {
        let indexer = chat_api::jobs::indexer::Indexer::new(
            buffer.clone(),
            pool.clone(),
            None,
            Duration::from_secs(60),
            Duration::from_secs(1),
        )
        .with_workers(2);
        while buffer
            .pending_len(chat_api::writebehind::Kind::Search)
            .await?
            > 0
        {
            indexer.index_once().await?;
        }
    }
    Ok(Drained {
        written,
        flush_secs,
        index_secs: started.elapsed().as_secs_f64(),
    })
}

/// `QUEUE_SHARDS` of the service the bench starts (the default).
pub(crate) const SERVICE_SHARDS: u16 = 16;

/// The pending messages list of shard `shard` under `prefix`.
fn pending_key(prefix: &str, shard: u16) -> String {
    chat_api::writebehind::keys::Keys::with_shards(prefix, shard + 1)
        .shard(shard)
        .pending(chat_api::writebehind::Kind::Messages)
}

/// Pushes `n` message records for chats 1..=`chats` of application `app` (numbers from 1).
async fn prefill(
    r: &mut redis::aio::MultiplexedConnection,
    key: &str,
    app: u64,
    chats: i64,
    n: u64,
) -> anyhow::Result<()> {
    let body = "b".repeat(100);
    let now = chrono::Utc::now().timestamp_millis();
    let mut i = 0u64;
    while i < n {
        let mut pipe = redis::pipe();
        let mut cmd = redis::cmd("RPUSH");
        cmd.arg(key);
        for _ in 0..5000.min(n - i) {
            let chat = 1 + (i as i64 % chats);
            let number = 1 + (i as i64 / chats);
            cmd.arg(format!("{app}\t{chat}\t{number}\t{now}\t{body}"));
            i += 1;
        }
        pipe.add_command(cmd).ignore();
        pipe.query_async::<()>(r).await?;
    }
    Ok(())
}

/// Messages per second the flusher writes from a pre-filled queue.
async fn flush_rate(
    env: &Env,
    pool: &MySqlPool,
    r: &mut redis::aio::MultiplexedConnection,
    batch: usize,
    n: u64,
) -> anyhow::Result<f64> {
    let prefix = format!("{}flush{}:", env.prefix, uuid::Uuid::new_v4().simple());
    // A fresh application with 100 stored chats.
    let app = sqlx::query("INSERT INTO applications (token, name, created_at, updated_at) VALUES (?, 'flush', NOW(6), NOW(6))")
        .bind(chat_api::domain::new_token())
        .execute(pool)
        .await?
        .last_insert_id();
    sqlx::query("INSERT INTO chats (application_id, number, created_at, updated_at) SELECT ?, seq, NOW(6), NOW(6) FROM seq_1_to_100")
        .bind(app)
        .execute(pool)
        .await?;
    prefill(r, &pending_key(&prefix, 0), app, 100, n).await?;
    let (written, rate) = drain(&env.opts.redis, &prefix, pool, batch, 1, 1).await?;
    anyhow::ensure!(written == n, "wrote {written} of {n}");
    sqlx::query("DELETE FROM applications WHERE id = ?")
        .bind(app)
        .execute(pool)
        .await?;
    cleanup_prefix(r, &prefix).await?;
    Ok(rate)
}

/// Figure 12: the same drain over [`SERVICE_SHARDS`] shards at 1, 2 and 4
/// flush workers (`FLUSH_WORKERS`), `flush_runs` runs each.
async fn flush_workers(
    env: &Env,
    pool: &MySqlPool,
    r: &mut redis::aio::MultiplexedConnection,
    opts: &Opts,
) -> anyhow::Result<Value> {
    let mut workers = serde_json::Map::new();
    for w in [1usize, 2, 4] {
        let mut rates = vec![];
        for run in 0..opts.flush_runs {
            eprintln!(
                "figure 12: {w} flush workers, run {}: {} records over {SERVICE_SHARDS} shards…",
                run + 1,
                opts.flush_records
            );
            rates.push(flush_rate_sharded(env, pool, r, w, opts.flush_records).await?);
        }
        workers.insert(w.to_string(), json!(stat(rates)));
    }
    Ok(Value::Object(workers))
}

/// Figure 12: messages per second `workers` flush tasks write from a queue
/// pre-filled over [`SERVICE_SHARDS`] shards (one application and 100 chats
/// per shard, batches of 5000).
async fn flush_rate_sharded(
    env: &Env,
    pool: &MySqlPool,
    r: &mut redis::aio::MultiplexedConnection,
    workers: usize,
    n: u64,
) -> anyhow::Result<f64> {
    let prefix = format!("{}workers{}:", env.prefix, uuid::Uuid::new_v4().simple());
    let keys = chat_api::writebehind::keys::Keys::with_shards(prefix.clone(), SERVICE_SHARDS);
    let per_shard = n / u64::from(SERVICE_SHARDS);
    let mut apps = vec![];
    for shard in keys.shards() {
        let app = sqlx::query("INSERT INTO applications (token, name, created_at, updated_at) VALUES (?, 'flush', NOW(6), NOW(6))")
            .bind(chat_api::domain::new_token())
            .execute(pool)
            .await?
            .last_insert_id();
        sqlx::query("INSERT INTO chats (application_id, number, created_at, updated_at) SELECT ?, seq, NOW(6), NOW(6) FROM seq_1_to_100")
            .bind(app)
            .execute(pool)
            .await?;
        prefill(
            r,
            &shard.pending(chat_api::writebehind::Kind::Messages),
            app,
            100,
            per_shard,
        )
        .await?;
        apps.push(app);
    }
    let (written, rate) = drain(
        &env.opts.redis,
        &prefix,
        pool,
        5000,
        SERVICE_SHARDS,
        workers,
    )
    .await?;
    anyhow::ensure!(
        written == per_shard * u64::from(SERVICE_SHARDS),
        "wrote {written} of {}",
        per_shard * u64::from(SERVICE_SHARDS)
    );
    for app in apps {
        sqlx::query("DELETE FROM applications WHERE id = ?")
            .bind(app)
            .execute(pool)
            .await?;
    }
    cleanup_prefix(r, &prefix).await?;
    Ok(rate)
}

/// Stores `n` messages across the stored chats, straight in SQL (setup only).
async fn store_messages(pool: &MySqlPool, n: u64) -> anyhow::Result<()> {
    let chats: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM chats")
        .fetch_one(pool)
        .await?;
    let per_chat = (n as i64 / chats.max(1)).max(1);
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO messages (chat_id, number, body, created_at, updated_at) \
         SELECT c.id, 1000000 + s.seq, REPEAT('s', 100), NOW(6), NOW(6) FROM chats c JOIN seq_1_to_{per_chat} s"
    )))
    .execute(pool)
    .await?;
    Ok(())
}

/// Milliseconds to refresh the counts of one dirty chat.
async fn refresh_one(env: &Env, pool: &MySqlPool) -> anyhow::Result<f64> {
    let rpool = chat_api::redis::pool(&env.opts.redis, 2, Duration::from_secs(5))?;
    let marks = chat_api::jobs::counts::DirtyMarks::new(
        rpool,
        chat_api::writebehind::keys::Keys::new(format!("{}refresh:", env.prefix)),
        Duration::from_secs(5),
    );
    let refresher = chat_api::jobs::counts::CountsRefresher::new(
        marks.clone(),
        pool.clone(),
        500,
        Duration::from_secs(60),
    );
    let chat_id: u64 = sqlx::query_scalar("SELECT id FROM chats ORDER BY id LIMIT 1 OFFSET 50")
        .fetch_one(pool)
        .await?;
    let mut times = vec![];
    for _ in 0..5 {
        marks.mark("bench", &[], &[chat_id]).await?;
        let started = Instant::now();
        refresher.refresh_counts_once().await?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(stat(times).median)
}

async fn cleanup_prefix(
    r: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
) -> anyhow::Result<()> {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(r)
        .await?;
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(keys).query_async(r).await?;
    }
    Ok(())
}

/// The rows of figure 12 (from the medians of `figure`: workers → stat).
fn markdown_flush_workers(figure: &Value) -> String {
    let mut out = String::new();
    if let Some(fw) = figure.as_object() {
        let one = fw
            .get("1")
            .and_then(|v| v["median"].as_f64())
            .unwrap_or(0.0);
        for (w, v) in fw {
            let ratio = v["median"].as_f64().unwrap_or(0.0) / one.max(1.0);
            out += &format!(
                "| 12. flush with FLUSH_WORKERS={w}, {SERVICE_SHARDS} shards (rows/s); ÷ 1 worker | {}; {ratio:.2} | |\n",
                f(&v["median"])
            );
        }
    }
    out
}

fn f(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if x >= 100.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.2}"),
        None => "-".into(),
    }
}

fn s(v: &Value) -> String {
    format!("{} ({} – {})", f(&v["median"]), f(&v["min"]), f(&v["max"]))
}

fn markdown(r: &BTreeMap<String, Value>) -> String {
    let m = &r["machine"];
    let c = &r["create_throughput"];
    let l = &r["latency_ms"];
    let b = &r["sustained_balance"];
    let mem = &r["memory"];
    let g = &r["cost_growth"];
    let mut out = format!(
        "Run on {} with {} cores. Figures: median (min – max) over the runs.\n\n| figure | value | target |\n|---|---|---|\n",
        m["date"].as_str().unwrap_or("?"),
        m["cores"]
    );
    out += &format!(
        "| 1. create throughput, service (req/s) | {} | |\n",
        s(&c["service_rps"])
    );
    out += &format!(
        "| 1. ceiling: bare poem-openapi 201 (req/s) | {} | |\n",
        s(&c["ceiling_rps"])
    );
    out += &format!(
        "| 1. baseline: one transactional INSERT per request (req/s) | {} | |\n",
        s(&c["baseline_rps"])
    );
    out += &format!(
        "| 1. service ÷ ceiling, same run | {} | ≥ 0.5 |\n",
        s(&c["service_vs_ceiling"])
    );
    out += &format!(
        "| 1. service ÷ baseline, same run | {} | ≥ 10 |\n",
        s(&c["service_vs_baseline"])
    );
    out += &format!(
        "| 2. latency at {} req/s (half the max), p50 ms | {} | |\n",
        l["rate_rps"],
        s(&l["p50"])
    );
    out += &format!("| 2. p99 ms | {} | < 5 |\n", s(&l["p99"]));
    out += &format!("| 2. p99.9 ms | {} | |\n", s(&l["p99_9"]));
    if let Some(fl) = r["flush_rows_per_sec"].as_object() {
        for (size, v) in fl {
            out += &format!(
                "| 3. flush throughput, batch {size} (rows/s) | {} | ≥ 50000 at the best size |\n",
                s(v)
            );
        }
    }
    out += &markdown_flush_workers(r.get("flush_workers_rows_per_sec").unwrap_or(&Value::Null));
    let depth: Vec<u64> = b["pending_depth_per_second"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    out += &format!(
        "| 4. sustained balance: {} req/s; pending depth max / final | {} / {} | bounded |\n",
        f(&b["rps"]),
        b["max_depth"],
        b["final_depth"]
    );
    out += &format!(
        "| 5. Redis bytes per pending message (100-byte body) | {} ({}× the body) | ≤ 2.5× |\n",
        f(&mem["redis_bytes_per_pending_message"]),
        f(&mem["ratio_to_body"])
    );
    out += &format!(
        "| 5. service peak RSS under load (MiB) | {} | < 100 |\n",
        f(&mem["service_peak_rss_mib"])
    );
    out += &format!(
        "| 6. create throughput, base scale (req/s) | {} | |\n",
        s(&g["base"]["create_rps"])
    );
    out += &format!(
        "| 6. create throughput, 10× scale (req/s) | {} | |\n",
        s(&g["x10"]["create_rps"])
    );
    out += &format!(
        "| 6. 10× ÷ base | {} | ≥ 0.9 |\n",
        f(&g["create_rps_ratio_x10_to_base"])
    );
    out += &format!(
        "| 6. read one chat p50 ms, base / 10× | {} / {} | flat |\n",
        f(&g["base"]["read_one_chat_p50_ms"]),
        f(&g["x10"]["read_one_chat_p50_ms"])
    );
    out += &format!(
        "| 6. counts refresh of one dirty chat ms, base / 10× | {} / {} | flat |\n",
        f(&g["base"]["refresh_one_chat_ms"]),
        f(&g["x10"]["refresh_one_chat_ms"])
    );
    out += &durability_markdown(&r["durability"]);
    out += &sustained::markdown(&r["sustainable"], &r["cpu_per_record"], &r["levers"]);
    out += &format!("\nPending depth each second of figure 4: {depth:?}\n");
    out
}

// ---- the comparison servers ----

#[derive(Object)]
struct Created {
    number: i64,
}

#[derive(ApiResponse)]
enum CreatedResp {
    #[oai(status = 201)]
    Created(Json<Created>),
}

#[derive(Object)]
struct Input {
    body: String,
}

struct CeilingApi;

#[OpenApi]
impl CeilingApi {
    /// The same 201 as the service, touching nothing.
    #[oai(
        path = "/api/v1/applications/:token/chats/:number/messages",
        method = "post"
    )]
    async fn create(
        &self,
        token: Path<String>,
        number: Path<i64>,
        input: Json<Input>,
    ) -> CreatedResp {
        let _ = (token, number, input);
        CreatedResp::Created(Json(Created { number: 1 }))
    }
}

struct BaselineApi {
    pool: MySqlPool,
}

#[OpenApi]
impl BaselineApi {
    /// One transaction per request: lock the chat, take MAX(number) + 1, INSERT, COMMIT.
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
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(poem::error::InternalServerError)?;
        let chat_id: u64 = sqlx::query_scalar(
            "SELECT c.id FROM chats c JOIN applications a ON a.id = c.application_id WHERE a.token = ? AND c.number = ? FOR UPDATE",
        )
        .bind(&token.0)
        .bind(number.0)
        .fetch_one(&mut *tx)
        .await
        .map_err(poem::error::NotFound)?;
        let n: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(number), 0) + 1 FROM messages WHERE chat_id = ?",
        )
        .bind(chat_id)
        .fetch_one(&mut *tx)
        .await
        .map_err(poem::error::InternalServerError)?;
        sqlx::query("INSERT INTO messages (chat_id, number, body, created_at, updated_at) VALUES (?, ?, ?, NOW(6), NOW(6))")
            .bind(chat_id)
            .bind(n)
            .bind(&input.0.body)
            .execute(&mut *tx)
            .await
            .map_err(poem::error::InternalServerError)?;
        tx.commit()
            .await
            .map_err(poem::error::InternalServerError)?;
        Ok(CreatedResp::Created(Json(Created { number: n })))
    }
}

async fn serve<T: OpenApi + 'static>(api: T, port: u16) -> anyhow::Result<()> {
    let svc = poem_openapi::OpenApiService::new(api, "bench", "1");
    let app = poem::Route::new()
        .nest("/", svc)
        .at("/", poem::get(poem::endpoint::make_sync(|_| "ok")));
    poem::Server::new(poem::listener::TcpListener::bind(("127.0.0.1", port)))
        .run(app)
        .await?;
    Ok(())
}

/// Saves `figure` as `<out>/<name>.json` and prints it, then its
/// BENCHMARKS.md row(s). Errors: the file could not be written.
fn report(
    opts: &Opts,
    name: &str,
    figure: &Value,
    markdown: fn(&Value) -> String,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&opts.out)?;
    let pretty = serde_json::to_string_pretty(figure)?;
    std::fs::write(format!("{}/{name}.json", opts.out), &pretty)?;
    println!("{pretty}");
    println!("{}", markdown(figure));
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::All(opts) => all(opts).await,
        Cmd::FlushText(opts) => {
            let figure = flush_text(&opts).await?;
            std::fs::create_dir_all(&opts.opts.out)?;
            std::fs::write(
                format!("{}/flush_text.json", opts.opts.out),
                serde_json::to_string_pretty(&figure)?,
            )?;
            draw(&opts.opts, |dir| plots::render_flush_text(&figure, dir))?;
            println!("{}", serde_json::to_string_pretty(&figure)?);
            println!("{}", flush_text_markdown(&figure));
            Ok(())
        }
        Cmd::Sustainable(opts) => {
            let sustainable = sustained::sustainable(&opts).await?;
            let cpu = sustained::cpu_per_record(&opts).await?;
            let levers = sustained::levers(&opts).await?;
            let all =
                json!({ "sustainable": sustainable, "cpu_per_record": cpu, "levers": levers });
            std::fs::create_dir_all(&opts.out)?;
            std::fs::write(
                format!("{}/sustainable.json", opts.out),
                serde_json::to_string_pretty(&all)?,
            )?;
            println!("{}", serde_json::to_string_pretty(&all)?);
            println!("{}", sustained::markdown(&sustainable, &cpu, &levers));
            Ok(())
        }
        Cmd::FlushWorkers(opts) => {
            let (env, pool) = Env::fresh(&opts).await?;
            let mut r = redis::Client::open(opts.redis.as_str())?
                .get_multiplexed_async_connection()
                .await?;
            let figure = json!({
                "flush_workers_rows_per_sec": flush_workers(&env, &pool, &mut r, &opts).await?
            });
            println!("{}", serde_json::to_string_pretty(&figure)?);
            println!(
                "{}",
                markdown_flush_workers(&figure["flush_workers_rows_per_sec"])
            );
            Ok(())
        }
        Cmd::BlockWait(opts) => {
            let figure = block_wait::block_wait(&opts).await?;
            println!("{}", serde_json::to_string_pretty(&figure)?);
            println!("{}", block_wait::markdown(&figure));
            Ok(())
        }
        Cmd::Numbering(opts) => {
            let figure = numbering::numbering_cost(&opts).await?;
            println!("{}", serde_json::to_string_pretty(&figure)?);
            println!("{}", numbering::markdown(&figure));
            Ok(())
        }
        Cmd::Durability(opts) => {
            let figure = durability_cost(&opts).await?;
            println!("{}", durability_markdown(&figure));
            Ok(())
        }
        Cmd::Plot {
            results,
            flush_text,
            figures,
        } => {
            let read = |path: &str| -> anyhow::Result<Value> {
                Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
            };
            let dir = std::path::Path::new(&figures);
            let mut written = plots::render_results(&read(&results)?, dir)?;
            if std::path::Path::new(&flush_text).exists() {
                written.extend(plots::render_flush_text(&read(&flush_text)?, dir)?);
            }
            for file in written {
                println!("{}", file.display());
            }
            Ok(())
        }
        Cmd::Ceiling { port } => serve(CeilingApi, port).await,
        Cmd::SearchLag(opts) => {
            let figure = search_lag::search_lag(&opts).await?;
            println!("{}", serde_json::to_string_pretty(&figure)?);
            println!("{}", search_lag::markdown(&figure));
            Ok(())
        }
        Cmd::SearchQuality(opts) => {
            let figure = search_quality::search_quality(&opts).await?;
            report(&opts, "search_quality", &figure, search_quality::markdown)
        }
        Cmd::SearchTopk(o) => {
            let figure = search_topk::search_topk(&o).await?;
            report(&o.opts, "search_topk", &figure, search_topk::markdown)
        }
        Cmd::Reindex(o) => {
            let figure = reindex::reindex(&o).await?;
            println!("{}", serde_json::to_string_pretty(&figure)?);
            println!("{}", reindex::markdown(&figure));
            Ok(())
        }
        Cmd::Live(o) => {
            let figure = live::live(&o).await?;
            println!("{}", serde_json::to_string_pretty(&figure)?);
            println!("{}", live::markdown(&figure));
            Ok(())
        }
        Cmd::PageDepth(o) => {
            let figure = page_depth::page_depth(&o).await?;
            println!("{}", serde_json::to_string_pretty(&figure)?);
            println!("{}", page_depth::markdown(&figure));
            Ok(())
        }
        Cmd::ReadReplica(opts) => {
            let figure = read_replica::read_replica(&opts).await?;
            report(&opts, "read_replica", &figure, read_replica::markdown)
        }
        Cmd::RequestPath(o) => {
            let figure = request_path::request_path(&o.opts, &o.compare_bin, o.hot_chat).await?;
            println!("{}", serde_json::to_string_pretty(&figure)?);
            println!("{}", request_path::markdown(&figure));
            Ok(())
        }
        Cmd::ScriptCost(o) => {
            if o.print_script {
                print!("{}", chat_api::writebehind::enqueue::enqueue_message());
                return Ok(());
            }
            let figure = script_cost::script_cost(&o).await?;
            println!("{}", serde_json::to_string_pretty(&figure)?);
            println!("{}", script_cost::markdown(&figure));
            Ok(())
        }
        Cmd::ScriptCeiling {
            port,
            redis_url,
            prefix,
        } => {
            serve(
                request_path::ScriptCeilingApi::new(&redis_url, prefix).await?,
                port,
            )
            .await
        }
        Cmd::Baseline { port, database_url } => {
            let pool = sqlx::mysql::MySqlPoolOptions::new()
                .max_connections(32)
                .connect(&database_url)
                .await?;
            serve(BaselineApi { pool }, port).await
        }
    }
}
