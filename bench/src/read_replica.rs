//! Figure 17 (issue 26): reads on a MariaDB replica.
//!
//! A primary with a binary log and its GTID replica of the bench's own
//! (`scripts/replication`, on free loopback ports), one database of 10
//! applications × 100 chats with 100 stored messages each. In each run, the
//! service is started twice on it: reading from the primary only, then with
//! `DATABASE_READ_URLS` naming the replica. Each time, creates run paced at
//! half their closed-loop peak (oha `-q`) while a closed loop reads message
//! list pages (`GET …/chats/{n}/messages?page={1..5}`, 20 messages a page);
//! the figure is the read rate, and the CPU the primary's and the replica's
//! `mariadbd` spent per 1,000 reads (from `/proc`, including the flush of
//! the creates, which is the same in both). On one 2-core machine the
//! replica shares the cores with everything else: the point is the
//! primary's load, not the raw rate.

use std::time::Duration;

use serde_json::{Value, json};

use super::sustained::{cpu_secs, post_open};
use super::{Env, Opts, f, free_port, oha, post_closed, rps, s, seed, stat, url_regex, wait_up};

/// Message list pages 1 to 5 of any chat of `tokens` on `port`.
fn list_regex(port: u16, tokens: &[String]) -> String {
    format!(
        "http://127.0.0.1:{port}/api/v1/applications/({})/chats/([1-9][0-9]?|100)/messages\\?page=[1-5]",
        tokens.join("|")
    )
}

/// Figure 17 (see the module docs).
pub async fn read_replica(opts: &Opts) -> anyhow::Result<Value> {
    let pair = super::support::ReplicationPair::start();
    let mut on_pair = opts.clone();
    on_pair.mysql = pair.primary.clone();
    let (env, pool) = Env::fresh(&on_pair).await?;
    let mut r = redis::Client::open(opts.redis.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let port = free_port();
    let svc = env.start_service(port, &[]);
    wait_up(port, "/health/live").await;
    let tokens = seed(port, 10, 100).await;
    super::store_messages(&pool, 100_000).await?;
    eprintln!("figure 17: closed-loop create peak…");
    let peak = rps(&post_closed(
        &url_regex(port, &tokens, 100),
        opts.secs,
        opts.connections,
    ));
    drop(svc);
    let rate = (peak / 2.0).max(10.0) as u64;
    let replica_url = format!("{}/{}", pair.replica, env.db);
    let half = (opts.connections / 2).max(1);
    let mut figures = serde_json::Map::new();
    for run in 0..opts.runs {
        for (label, extra) in [
            ("primary_only", vec![]),
            (
                "one_replica",
                vec![("DATABASE_READ_URLS", replica_url.as_str())],
            ),
        ] {
            eprintln!(
                "figure 17, run {}, {label}: creates at {rate} req/s, list reads closed-loop, {} s…",
                run + 1,
                opts.secs
            );
            let port = free_port();
            let svc = env.start_service(port, &extra);
            wait_up(port, "/health/live").await;
            let creates = {
                let (url, secs) = (url_regex(port, &tokens, 100), opts.secs);
                std::thread::spawn(move || post_open(&url, rate, secs, half))
            };
            let (p0, r0) = (cpu_secs(pair.pid("primary")), cpu_secs(pair.pid("replica")));
            let reads = oha(&[
                "-z".into(),
                format!("{}s", opts.secs),
                "-c".into(),
                half.to_string(),
                "--rand-regex-url".into(),
                list_regex(port, &tokens),
            ]);
            let (p1, r1) = (cpu_secs(pair.pid("primary")), cpu_secs(pair.pid("replica")));
            let created = creates
                .join()
                .map_err(|_| anyhow::anyhow!("oha panicked"))?;
            drop(svc);
            let read_rps = rps(&reads);
            let read_count = (read_rps * opts.secs as f64).max(1.0);
            let ok = super::status_share(&reads, "200");
            anyhow::ensure!(
                ok > 0.99,
                "reads answered 200: {:?}",
                reads["statusCodeDistribution"]
            );
            let entry = figures
                .entry(label)
                .or_insert_with(|| json!({"read_rps": [], "create_rps": [], "primary_cpu_ms_per_1k_reads": [], "replica_cpu_ms_per_1k_reads": []}));
            for (key, v) in [
                ("read_rps", read_rps),
                ("create_rps", rps(&created)),
                ("primary_cpu_ms_per_1k_reads", (p1 - p0) * 1e6 / read_count),
                ("replica_cpu_ms_per_1k_reads", (r1 - r0) * 1e6 / read_count),
            ] {
                entry[key].as_array_mut().unwrap().push(json!(v));
            }
        }
    }
    let mut out = serde_json::Map::new();
    out.insert("create_peak_rps".into(), json!(peak));
    out.insert("create_rate".into(), json!(rate));
    for (label, v) in &figures {
        let mut m = serde_json::Map::new();
        for (key, values) in v.as_object().unwrap() {
            let values: Vec<f64> = values
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_f64)
                .collect();
            m.insert(key.clone(), json!(stat(values)));
        }
        out.insert(label.clone(), Value::Object(m));
    }
    let median = |label: &str, key: &str| out[label][key]["median"].as_f64().unwrap_or(f64::NAN);
    let ratios = json!({
        "read_rps_replica_vs_primary_only": median("one_replica", "read_rps") / median("primary_only", "read_rps"),
        "primary_cpu_per_read_replica_vs_primary_only": median("one_replica", "primary_cpu_ms_per_1k_reads") / median("primary_only", "primary_cpu_ms_per_1k_reads"),
    });
    out.insert("ratios".into(), ratios);
    eprintln!("figure 17: {}", Value::Object(out.clone()));
    env.drop_all(&pool, &mut r).await?;
    drop(pair);
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(Value::Object(out))
}

/// The rows of figure 17 in BENCHMARKS.md's table.
pub fn markdown(d: &Value) -> String {
    let mut out = String::new();
    for (label, name) in [
        ("primary_only", "primary only"),
        ("one_replica", "one replica"),
    ] {
        let v = &d[label];
        out += &format!(
            "| 17. list reads with creates at {} req/s (half the peak), {name}: reads/s; creates/s; primary / replica mariadbd CPU ms per 1,000 reads | {}; {}; {} / {} | |\n",
            d["create_rate"],
            s(&v["read_rps"]),
            s(&v["create_rps"]),
            s(&v["primary_cpu_ms_per_1k_reads"]),
            s(&v["replica_cpu_ms_per_1k_reads"]),
        );
    }
    out += &format!(
        "| 17. one replica ÷ primary only, same run: reads/s; primary CPU per read | {}; {} | primary CPU per read < 1 |\n",
        f(&d["ratios"]["read_rps_replica_vs_primary_only"]),
        f(&d["ratios"]["primary_cpu_per_read_replica_vs_primary_only"]),
    );
    out
}
