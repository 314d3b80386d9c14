//! Figure 13 (issue 22): what the numbering promise costs on the request
//! path. Each create runs the doubt check (the enqueue script reads
//! `INFO server` to compare the epoch's `run_id` with its server's) and, a
//! few times per block, a reservation in MariaDB in the background.
//!
//! For this build, and for the others that `--compare-bin` names (for
//! example the build before the high-water mark), interleaved over the
//! runs, each with its own database and key prefix on the same Redis and
//! MariaDB: the closed-loop create rate (req/s) and p99 (ms), the ratio to
//! the last build named in the same run, the Redis CPU per create of the
//! enqueue script (`INFO commandstats`, µs), and for this build the SQL
//! writes per 1,000 creates (`chat_number_reservations_total`).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::{Opts, post_closed, rps, stat, status_share, url_regex};

/// Options of `bench numbering`.
#[derive(clap::Args, Clone)]
pub struct NumberingOpts {
    #[command(flatten)]
    pub opts: Opts,
    /// Other builds of `chat-api` to compare with (comma-separated paths;
    /// each migrates its own database at start and is named by its file
    /// name). Ratios are to the last one. Without it, only this build is
    /// measured.
    #[arg(long, value_delimiter = ',')]
    pub compare_bin: Vec<String>,
}

/// What `INFO commandstats` says since the last `CONFIG RESETSTAT`
/// (scripts' inner commands included): per command, `(name, usec in all,
/// usec per call, calls)`, the costliest first.
async fn command_stats(
    redis: &mut redis::aio::MultiplexedConnection,
) -> anyhow::Result<Vec<(String, f64, f64, u64)>> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(redis)
        .await?;
    let mut rows: Vec<(String, f64, f64, u64)> = info
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |f: &str| rest.split(',').find_map(|x| x.strip_prefix(f));
            Some((
                name.to_string(),
                field("usec=")?.parse().ok()?,
                field("usec_per_call=")?.trim().parse().ok()?,
                field("calls=")?.parse().ok()?,
            ))
        })
        .collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(rows)
}

/// A counter of the service's `/metrics`, summed over its labels.
async fn metric(port: u16, name: &str) -> f64 {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .and_then(|r| r.error_for_status())
        .unwrap_or_else(|e| panic!("GET /metrics: {e}"))
        .text()
        .await
        .unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Figure 13 (see the module docs).
pub async fn numbering_cost(n: &NumberingOpts) -> anyhow::Result<Value> {
    let opts = &n.opts;
    let mut redis = redis::Client::open(opts.redis.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let mut builds = vec![("this".to_string(), crate::SERVICE_BINARY.to_string())];
    for other in &n.compare_bin {
        let name = std::path::Path::new(other)
            .file_name()
            .map_or_else(|| other.clone(), |f| f.to_string_lossy().into_owned());
        builds.push((name, other.clone()));
    }
    let reference = builds
        .last()
        .map(|(name, _)| name.clone())
        .unwrap_or_default();
    let mut services = Vec::new();
    let mut envs = Vec::new();
    for (name, binary) in &builds {
        let n = services.len();
        let (env, port, tokens, svc) = crate::seeded_service(
            opts.clone(),
            format!("chat_bench_{id}_{n}"),
            format!("bench:{id}:{n}:"),
            binary,
            name == "this",
            &[],
        )
        .await?;
        services.push((name.clone(), port, tokens, svc));
        envs.push(env);
    }
    // build → (req/s, p99 ms, ÷ the reference build, Redis µs per create) per run.
    type Runs = (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>);
    let mut figures: BTreeMap<String, Runs> = BTreeMap::new();
    let mut creates = 0.0;
    for run in 0..opts.runs {
        let mut rates = BTreeMap::new();
        for (name, port, tokens, _) in &services {
            eprintln!("figure 13, run {}: the {name} build…", run + 1);
            let _: () = redis::cmd("CONFIG")
                .arg("RESETSTAT")
                .query_async(&mut redis)
                .await?;
            let report = post_closed(&url_regex(*port, tokens, 100), opts.secs, opts.connections);
            assert!(
                status_share(&report, "201") > 0.99,
                "the {name} build answered 201: {:?}",
                report["statusCodeDistribution"]
            );
            let stats = command_stats(&mut redis).await?;
            let usec = stats.iter().find(|c| c.0 == "evalsha").map_or(0.0, |c| c.2);
            let top: Vec<String> = stats
                .iter()
                .take(8)
                .map(|(name, _, per_call, calls)| format!("{name} {per_call}µs×{calls}"))
                .collect();
            eprintln!("  Redis CPU by command: {}", top.join(", "));
            let rate = rps(&report);
            if name == "this" {
                creates += rate * opts.secs as f64;
            }
            rates.insert(name.clone(), rate);
            let p99 = report["latencyPercentiles"]["p99"].as_f64().unwrap_or(0.0) * 1000.0;
            let entry = figures.entry(name.clone()).or_default();
            entry.0.push(rate);
            entry.1.push(p99);
            entry.3.push(usec);
        }
        if let Some(base) = rates.get(&reference).copied() {
            for (name, rate) in &rates {
                if *name != reference {
                    let ratios = &mut figures.get_mut(name).expect("measured").2;
                    ratios.push(rate / base.max(1.0));
                }
            }
        }
    }
    let reservations = metric(services[0].1, "chat_number_reservations_total").await;
    crate::drop_databases(opts, &envs).await?;
    drop(services);
    let mut out = serde_json::Map::new();
    for (name, (rate, p99, ratio, usec)) in figures {
        let mut v = json!({ "create_rps": stat(rate), "p99_ms": stat(p99), "redis_usec_per_create": stat(usec) });
        if !ratio.is_empty() {
            v["vs_reference"] = json!(stat(ratio));
            v["reference"] = json!(reference);
        }
        out.insert(name, v);
    }
    out.insert(
        "reservations_per_1000_creates".into(),
        json!(reservations * 1000.0 / creates.max(1.0)),
    );
    Ok(Value::Object(out))
}

/// The rows of figure 13 in BENCHMARKS.md's table.
pub fn markdown(d: &Value) -> String {
    let mut out = String::new();
    for (name, v) in d.as_object().into_iter().flatten() {
        if !v.is_object() {
            continue;
        }
        let vs = match v["reference"].as_str() {
            Some(r) => format!("; ÷ {r}, same run: {}", crate::s(&v["vs_reference"])),
            None => String::new(),
        };
        out += &format!(
            "| 13. numbering, {name} build: create req/s; p99 ms; Redis µs per create | {}; {}; {}{vs} | |\n",
            crate::s(&v["create_rps"]),
            crate::s(&v["p99_ms"]),
            crate::s(&v["redis_usec_per_create"]),
        );
    }
    out += &format!(
        "| 13. numbering: SQL reservations per 1,000 creates (this build; 200 chats, each growing its blocks from 16) | {:.2} | ≤ 1 in a hot chat |\n",
        d["reservations_per_1000_creates"].as_f64().unwrap_or(0.0)
    );
    out
}
