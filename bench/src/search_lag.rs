//! Figure 16: search keeps up with a sustained rate of text messages.
//!
//! The service runs as shipped (the term index, `SEARCH_INDEX_WORKERS` 2).
//! A closed-loop run of creates with a 14-word body finds the peak; then
//! creates are paced at a share of it for `hold_secs`, while the pending
//! messages and the search queue are sampled every second. 5 s after the
//! run, the search lag of the messages it made searchable is read from
//! `chat_search_lag_seconds` in `/metrics` (the bucket counts before it are
//! subtracted), as p50 and p99: the upper bound of the first bucket that
//! holds the quantile; the last records of the run, below every shard's
//! `MESSAGE_BATCH_SIZE`, are flushed by age (`FLUSH_MAX_AGE_MS`, 2 s) and
//! counted too. oha sends one body for every request, so every
//! message has the same 14 words: each still writes 14 posting rows.

use std::time::Duration;

use serde_json::{Value, json};

use super::sustained::depth;
use super::{Env, Opts, free_port, oha, rps, seed, status_share, url_regex, wait_up};

/// The body of every create: 14 words, about 90 bytes, as a chat line.
const TEXT_BODY: &str =
    r#"{"body":"see you at the station near the old bridge around seven tonight then dinner"}"#;

/// Share of the closed-loop peak the paced run asks for.
const SHARE: f64 = 0.6;

/// oha arguments of a POST run with [`TEXT_BODY`].
fn post_args(url_regex: &str, secs: u64, connections: u32, rate: Option<u64>) -> Vec<String> {
    let mut args: Vec<String> = vec!["-z".into(), format!("{secs}s")];
    if let Some(rate) = rate {
        args.extend(["-q".into(), rate.to_string(), "--latency-correction".into()]);
    }
    args.extend([
        "-c".into(),
        connections.to_string(),
        "-m".into(),
        "POST".into(),
        "-H".into(),
        "content-type: application/json".into(),
        "-d".into(),
        TEXT_BODY.into(),
        "--rand-regex-url".into(),
        url_regex.into(),
    ]);
    args
}

/// Pending search ops over the service's shards.
async fn search_depth(r: &mut redis::aio::MultiplexedConnection, prefix: &str) -> u64 {
    super::sustained::depth_of(r, prefix, chat_api::writebehind::Kind::Search).await
}

/// `chat_search_lag_seconds` buckets: `(upper bound in s, cumulative count)`.
async fn lag_buckets(port: u16) -> anyhow::Result<Vec<(f64, f64)>> {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter_map(|l| l.strip_prefix("chat_search_lag_seconds_bucket{le=\""))
        .filter_map(|l| {
            let (le, count) = l.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect())
}

/// The upper bound of the first bucket holding quantile `q` of the counts
/// `after − before`.
fn quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<f64> {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, n)| {
            let was = before.iter().find(|b| b.0 == *le).map_or(0.0, |b| b.1);
            (*le, n - was)
        })
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    delta
        .iter()
        .find(|(_, n)| *n >= q * total)
        .map(|(le, _)| *le)
}

/// Figure 16 (see the module docs).
pub async fn search_lag(opts: &Opts) -> anyhow::Result<Value> {
    let (env, pool) = Env::fresh(opts).await?;
    let mut r = redis::Client::open(opts.redis.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let port = free_port();
    let service = env.start_service(port, &[]);
    wait_up(port, "/health/live").await;
    let tokens = seed(port, 10, 100).await;
    let url = url_regex(port, &tokens, 100);
    eprintln!("figure 16: closed-loop peak with text bodies…");
    let peak = rps(&oha(&post_args(&url, opts.secs, opts.connections, None)));
    let wait_empty = |r: &mut redis::aio::MultiplexedConnection| {
        let mut r = r.clone();
        let prefix = env.prefix.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(600);
            while std::time::Instant::now() < deadline
                && (depth(&mut r, &prefix).await > 0 || search_depth(&mut r, &prefix).await > 0)
            {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    wait_empty(&mut r).await;
    let before = lag_buckets(port).await?;
    let rate = (peak * SHARE) as u64;
    eprintln!(
        "figure 16: {rate} req/s ({SHARE} of the peak {peak:.0}) for {} s…",
        opts.hold_secs
    );
    let sampler = super::sustained::sample_depths(
        &r,
        &env.prefix,
        opts.hold_secs,
        &[
            chat_api::writebehind::Kind::Messages,
            chat_api::writebehind::Kind::Search,
        ],
    );
    let args = post_args(&url, opts.hold_secs, opts.connections, Some(rate));
    let report = tokio::task::spawn_blocking(move || oha(&args)).await?;
    let samples: Vec<(u64, u64)> = sampler.await?.iter().map(|row| (row[0], row[1])).collect();
    // The lag of what the run made searchable, 5 s after it ended: the last
    // records, below every shard's MESSAGE_BATCH_SIZE once the load stops,
    // are flushed by age within 2.5 s and indexed within the next second.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = lag_buckets(port).await?;
    let drain_started = std::time::Instant::now();
    wait_empty(&mut r).await;
    let drain_secs = drain_started.elapsed().as_secs_f64();
    let half = samples.len() / 2;
    let max_of =
        |f: fn(&(u64, u64)) -> u64, from: usize| samples[from..].iter().map(f).max().unwrap_or(0);
    let out = json!({
        "peak_rps": peak,
        "rate": rate,
        "achieved_rps": rps(&report),
        "share_201": status_share(&report, "201"),
        "pending_max": max_of(|s| s.0, 0),
        "pending_max_second_half": max_of(|s| s.0, half),
        "search_queue_max": max_of(|s| s.1, 0),
        "search_queue_max_second_half": max_of(|s| s.1, half),
        "search_queue_last": samples.last().map(|s| s.1),
        "drain_secs": drain_secs,
        "lag_p50_s": quantile(&before, &after, 0.5),
        "lag_p99_s": quantile(&before, &after, 0.99),
    });
    eprintln!("figure 16: {out}");
    drop(service);
    env.drop_all(&pool, &mut r).await?;
    Ok(out)
}

/// The row of figure 16 in BENCHMARKS.md's table.
pub fn markdown(d: &Value) -> String {
    let n = |v: &Value| v.as_f64().map_or("-".into(), |x| format!("{x:.0}"));
    format!(
        "| 16. text creates paced at {} req/s (0.6 × the peak {}): achieved req/s; 201 share; pending max; search queue max (ops); search lag p50 / p99 s (bucket bounds) | {}; {:.3}; {}; {}; {} / {} | lag p99 ≤ 5 s |\n",
        n(&d["rate"]),
        n(&d["peak_rps"]),
        n(&d["achieved_rps"]),
        d["share_201"].as_f64().unwrap_or(0.0),
        n(&d["pending_max"]),
        n(&d["search_queue_max"]),
        d["lag_p50_s"],
        d["lag_p99_s"],
    )
}
