//! Figure 23 (issue 35): live events. The service as shipped, 100 chats
//! (10 applications of 10), `--subscribers` event streams spread evenly over
//! them (10 per chat by default), all in this process:
//!
//! 1. the closed-loop create rate and the service's and Redis's CPU per
//!    create (from `/proc`), with no subscriber, then with the subscribers
//!    open (the request-path cost of the design);
//! 2. creates paced at half the peak without subscribers for `--secs`,
//!    then at half the peak with them (the first is above what the service
//!    carries with 1,000 subscribers on these 2 cores, client included): for
//!    every subscriber and every create of its chat, the delay from the
//!    create's 201 (as this client got it) to the event (as this client got
//!    it): p50, p99, max in ms; and the events lost (a create of the chat
//!    the subscriber never got) and duplicated (got twice);
//! 3. `--idle` idle subscribers opened on the 100 chats: the service's RSS
//!    (`VmRSS`) before and after, per stream it reports opened
//!    (`chat_live_streams_open`), in KiB.
//!
//! During the paced run the CPU per create of the service and Redis, and of
//! this client (its share of the cores), are given too.
//!
//! The client shares the machine's cores with the service, Redis and
//! MariaDB: it parses every event of every subscriber, so the delays include
//! its own queueing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::sustained::{cpu_secs, redis_pid};
use crate::{Env, Opts, free_port, seed, wait_up};

/// A subscriber task of the delivery part: the `(number, arrival)` of each
/// `message.created` it got, and whether its stream ended before the stop
/// (the service closed it, for example as too slow: the bench does not
/// resume, so its later events count as lost).
type Subscriber = tokio::task::JoinHandle<(Vec<(i64, Instant)>, bool)>;

/// Options of `bench live`.
#[derive(clap::Args, Clone)]
pub struct LiveOpts {
    #[command(flatten)]
    pub opts: Opts,
    /// Subscribers during the delivery run, spread over the 100 chats.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Idle subscribers for the memory figure.
    #[arg(long, default_value_t = 10_000)]
    pub idle: usize,
}

const CHATS_PER_APP: u32 = 10;
const APPS: usize = 10;

/// The chats: `(token, number)`.
fn chats(tokens: &[String]) -> Vec<(String, i64)> {
    tokens
        .iter()
        .flat_map(|t| (1..=i64::from(CHATS_PER_APP)).map(move |n| (t.clone(), n)))
        .collect()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// One create; its number and when its 201 arrived.
async fn create(c: &reqwest::Client, base: &str, token: &str, chat: i64) -> Option<(i64, Instant)> {
    let r = c
        .post(format!("{base}/applications/{token}/chats/{chat}/messages"))
        .json(&json!({ "body": "see you at the station at seven" }))
        .send()
        .await
        .ok()?;
    if r.status() != 201 {
        return None;
    }
    let at = Instant::now();
    let v: Value = r.json().await.ok()?;
    Some((v["number"].as_i64()?, at))
}

/// Closed loop for `secs` with `connections` loops over the chats: creates
/// per second.
async fn closed_loop(base: &str, chats: &[(String, i64)], secs: u64, connections: u32) -> f64 {
    let c = reqwest::Client::new();
    let end = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let counts = futures::future::join_all((0..connections as usize).map(|i| {
        let (c, base) = (c.clone(), base.to_string());
        async move {
            let mut n = 0u64;
            let mut k = i;
            while Instant::now() < end {
                let (t, chat) = &chats[k % chats.len()];
                if create(&c, &base, t, *chat).await.is_some() {
                    n += 1;
                }
                k += connections as usize;
            }
            n
        }
    }))
    .await;
    counts.iter().sum::<u64>() as f64 / started.elapsed().as_secs_f64()
}

/// A subscriber of chat `k`: every `message.created` number and when it
/// arrived, until `stop`; and whether its stream ended before that.
///
/// It works on the bytes as they come (no UTF-8 copy, no JSON tree): the
/// client shares the 2 cores with the service, so each microsecond it spends
/// per event is queueing in the delays it measures.
fn subscribe(c: reqwest::Client, url: String, mut stop: watch::Receiver<bool>) -> Subscriber {
    tokio::spawn(async move {
        let mut got = Vec::new();
        let Ok(r) = c.get(url).send().await else {
            return (got, true);
        };
        let mut body = r.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let chunk = tokio::select! {
                _ = stop.changed() => return (got, false),
                c = body.next() => c,
            };
            let Some(Ok(bytes)) = chunk else {
                return (got, true);
            };
            let now = Instant::now();
            buf.extend_from_slice(&bytes);
            let mut start = 0;
            while let Some(end) = memchr::memmem::find(&buf[start..], b"\n\n") {
                let frame = &buf[start..start + end];
                start += end + 2;
                if let Some(n) = created_number(frame) {
                    got.push((n, now));
                }
            }
            buf.drain(..start);
        }
    })
}

/// The number of a `message.created` SSE frame: the digits after the first
/// `"number":` of its `data:` JSON (a body's quotes are escaped, so a body
/// cannot hold that key); `None` for any other frame.
fn created_number(frame: &[u8]) -> Option<i64> {
    memchr::memmem::find(frame, b"event: message.created")?;
    let at = memchr::memmem::find(frame, b"\"number\":")? + 9;
    let digits = frame[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    std::str::from_utf8(&frame[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

/// The creates of one paced run: `(chat index, number, when its 201
/// arrived)`, and the rate achieved.
struct Paced {
    creates: Vec<(usize, i64, Instant)>,
    achieved: f64,
}

/// Creates paced at `rate` per second for `secs` over `chats` (at most
/// 512 in flight), then 3 s for the last events to arrive.
async fn paced(
    client: &reqwest::Client,
    base: &str,
    chats: &[(String, i64)],
    rate: f64,
    secs: u64,
) -> anyhow::Result<Paced> {
    let made: Arc<std::sync::Mutex<Vec<(usize, i64, Instant)>>> = Arc::default();
    let started = tokio::time::Instant::now();
    let total = (rate * secs as f64) as usize;
    let gate = Arc::new(tokio::sync::Semaphore::new(512));
    let mut sends = Vec::with_capacity(total);
    for i in 0..total {
        tokio::time::sleep_until(started + Duration::from_secs_f64(i as f64 / rate)).await;
        let permit = gate.clone().acquire_owned().await?;
        let (c, base, made) = (client.clone(), base.to_string(), made.clone());
        let k = i % chats.len();
        let (t, n) = chats[k].clone();
        sends.push(tokio::spawn(async move {
            if let Some((number, at)) = create(&c, &base, &t, n).await {
                made.lock().unwrap().push((k, number, at));
            }
            drop(permit);
        }));
    }
    futures::future::join_all(sends).await;
    let achieved = made.lock().unwrap().len() as f64 / started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let creates = made.lock().unwrap().clone();
    Ok(Paced { creates, achieved })
}

/// For the creates of one paced run and what each subscriber (of chat
/// index `k`) got: every delay from a create's 201 to its event at a
/// subscriber in ms (sorted), the events lost (a create of its chat a
/// subscriber never got) and duplicated (a create got twice).
fn deliveries(
    creates: &[(usize, i64, Instant)],
    got: &[(usize, Vec<(i64, Instant)>)],
) -> (Vec<f64>, u64, u64) {
    let mut by_chat: HashMap<usize, HashMap<i64, Instant>> = HashMap::new();
    for (k, n, at) in creates {
        by_chat.entry(*k).or_default().insert(*n, *at);
    }
    let (mut delays, mut lost, mut duplicated) = (Vec::new(), 0u64, 0u64);
    for (k, events) in got {
        let Some(expected) = by_chat.get(k) else {
            continue;
        };
        let mut seen: HashMap<i64, u32> = HashMap::new();
        for (n, at) in events {
            if let Some(sent) = expected.get(n) {
                *seen.entry(*n).or_default() += 1;
                delays.push(at.saturating_duration_since(*sent).as_secs_f64() * 1000.0);
            }
        }
        duplicated += seen.values().map(|c| u64::from(c - 1)).sum::<u64>();
        lost += expected.keys().filter(|n| !seen.contains_key(n)).count() as u64;
    }
    delays.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (delays, lost, duplicated)
}

fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// Figure 23 (see the module docs).
pub async fn live(o: &LiveOpts) -> anyhow::Result<Value> {
    let opts = &o.opts;
    let (env, pool) = Env::fresh(opts).await?;
    let mut r = redis::Client::open(opts.redis.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let redis = redis_pid(&mut r).await?;
    let port = free_port();
    let svc = env.start_service(
        port,
        &[
            ("MAX_STREAMS_PER_APPLICATION", "0"),
            ("MAX_CONNECTIONS", "30000"),
        ],
    );
    let pid = svc.0.id();
    wait_up(port, "/health/live").await;
    let tokens = seed(port, APPS, CHATS_PER_APP).await;
    let chats = chats(&tokens);
    let base = format!("http://127.0.0.1:{port}/api/v1");
    let cpu = || cpu_secs(pid as i32) + cpu_secs(redis);

    // 1. The request path without and with subscribers.
    eprintln!("figure 23: closed loop, no subscriber…");
    let (cpu0, t0) = (cpu(), Instant::now());
    let peak = closed_loop(&base, &chats, opts.secs, opts.connections).await;
    let cpu_per_create_without =
        (cpu() - cpu0) * 1e6 / (peak * t0.elapsed().as_secs_f64()).max(1.0);
    let (stop, stopped) = watch::channel(false);
    let client = reqwest::Client::new();
    let subscribers: Vec<(usize, Subscriber)> = (0..o.subscribers)
        .map(|i| {
            let k = i % chats.len();
            let (t, n) = &chats[k];
            let url = format!("{base}/applications/{t}/chats/{n}/events");
            (k, subscribe(client.clone(), url, stopped.clone()))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    eprintln!("figure 23: closed loop, {} subscribers…", o.subscribers);
    let (cpu1, t1) = (cpu(), Instant::now());
    let peak_subscribed = closed_loop(&base, &chats, opts.secs, opts.connections).await;
    let cpu_per_create_with =
        (cpu() - cpu1) * 1e6 / (peak_subscribed * t1.elapsed().as_secs_f64()).max(1.0);

    // 2. Delivery at half the peak: of the request path alone (the rate
    // the issue names), then of the service with these subscribers (what
    // the same machine can carry with them).
    let me = std::process::id() as i32;
    let mut paced_runs = Vec::new();
    for rate in [peak / 2.0, peak_subscribed / 2.0] {
        let rate = rate.max(1.0);
        eprintln!("figure 23: {rate:.0} creates/s for {} s…", opts.secs);
        let (cpu2, client2) = (cpu(), cpu_secs(me));
        let made = paced(&client, &base, &chats, rate, opts.secs).await?;
        let n = made.creates.len().max(1) as f64;
        paced_runs.push((
            rate,
            made,
            (cpu() - cpu2) * 1e6 / n,
            (cpu_secs(me) - client2) * 1e6 / n,
        ));
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let _ = stop.send(true);
    let mut got = Vec::with_capacity(subscribers.len());
    let mut closed_early = 0;
    for (k, handle) in subscribers {
        let (events, early) = handle.await?;
        closed_early += usize::from(early);
        got.push((k, events));
    }
    // Every event got twice, over the whole run (the closed loops too).
    let duplicated_all: usize = got
        .iter()
        .map(|(_, events)| {
            let mut numbers: Vec<i64> = events.iter().map(|(n, _)| *n).collect();
            numbers.sort_unstable();
            numbers.windows(2).filter(|w| w[0] == w[1]).count()
        })
        .sum();
    let paced_out: Vec<Value> = paced_runs
        .into_iter()
        .map(|(rate, made, cpu_us, client_us)| {
            let (delays, lost, duplicated) = deliveries(&made.creates, &got);
            json!({
                "paced_rate": rate,
                "achieved_rps": made.achieved,
                "creates": made.creates.len(),
                "paced_cpu_us_per_create": cpu_us,
                "paced_client_cpu_us_per_create": client_us,
                "deliveries": delays.len(),
                "delivery_p50_ms": quantile(&delays, 0.5),
                "delivery_p99_ms": quantile(&delays, 0.99),
                "delivery_max_ms": quantile(&delays, 1.0),
                "lost": lost,
                "duplicated": duplicated,
            })
        })
        .collect();

    // 3. Memory per idle subscriber.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_before = rss_kib(pid);
    let open_before = chat_api_open_streams(port).await;
    let (stop_idle, idle_stopped) = watch::channel(false);
    let mut idle = Vec::with_capacity(o.idle);
    for i in 0..o.idle {
        let (t, n) = &chats[i % chats.len()];
        let url = format!("{base}/applications/{t}/chats/{n}/events");
        idle.push(subscribe(client.clone(), url, idle_stopped.clone()));
        if i % 500 == 499 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let open = chat_api_open_streams(port).await;
    let rss_after = rss_kib(pid);
    let _ = stop_idle.send(true);
    futures::future::join_all(idle).await;

    let out = json!({
        "subscribers": o.subscribers,
        "chats": chats.len(),
        "peak_rps_without_subscribers": peak,
        "peak_rps_with_subscribers": peak_subscribed,
        "cpu_us_per_create_without": cpu_per_create_without,
        "cpu_us_per_create_with": cpu_per_create_with,
        "paced": paced_out,
        "duplicated_all_runs": duplicated_all,
        "streams_ended_early": closed_early,
        "idle_subscribers": o.idle,
        "idle_streams_open": open - open_before,
        "rss_kib_before": rss_before,
        "rss_kib_after": rss_after,
        "rss_kib_per_idle_subscriber": (rss_after as f64 - rss_before as f64) / (open - open_before).max(1.0),
    });
    drop(svc);
    env.drop_all(&pool, &mut r).await?;
    Ok(out)
}

/// `chat_live_streams_open` from the service's `/metrics`.
async fn chat_api_open_streams(port: u16) -> f64 {
    let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await else {
        return 0.0;
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("chat_live_streams_open "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The rows of figure 23 for BENCHMARKS.md.
pub fn markdown(d: &Value) -> String {
    let f = |k: &str| d[k].as_f64().unwrap_or(f64::NAN);
    let runs = d["paced"].as_array().cloned().unwrap_or_default();
    let mut out = String::new();
    for (run, what) in runs.iter().zip([
        "half the peak of the request path alone",
        "half the peak with these subscribers",
    ]) {
        let g = |k: &str| run[k].as_f64().unwrap_or(f64::NAN);
        out.push_str(&format!(
            "| 23. live events: {} subscribers on {} chats, creates paced at {:.0}/s ({what}; {:.0}/s achieved): 201 → event p50 / p99 / max ms; lost; duplicated | {:.1} / {:.1} / {:.1}; {}; {} | p99 ≤ 50 ms; 0; 0 |\n\
             | 23. during that paced run, CPU µs per create: service + Redis; this client (parsing every event) | {:.1}; {:.1} | |\n",
            d["subscribers"],
            d["chats"],
            g("paced_rate"),
            g("achieved_rps"),
            g("delivery_p50_ms"),
            g("delivery_p99_ms"),
            g("delivery_max_ms"),
            run["lost"],
            run["duplicated"],
            g("paced_cpu_us_per_create"),
            g("paced_client_cpu_us_per_create"),
        ));
    }
    out.push_str(&format!(
        "| 23. subscriber streams the service ended before the bench stopped (too slow, or an error; not resumed, so their later events count as lost); events got twice over the whole run | {}; {} | 0; 0 |\n",
        d["streams_ended_early"], d["duplicated_all_runs"],
    ));
    out.push_str(&format!(
        "| 23. request path: creates/s closed loop without / with the subscribers; service + Redis CPU µs per create | {:.0} / {:.0}; {:.1} / {:.1} | within 5% |\n\
         | 23. {} idle subscribers ({} open): service RSS KiB before / after; KiB per subscriber | {} / {}; {:.1} | bounded |\n",
        f("peak_rps_without_subscribers"),
        f("peak_rps_with_subscribers"),
        f("cpu_us_per_create_without"),
        f("cpu_us_per_create_with"),
        d["idle_subscribers"],
        f("idle_streams_open"),
        d["rss_kib_before"],
        d["rss_kib_after"],
        f("rss_kib_per_idle_subscriber"),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::created_number;

    #[test]
    fn created_number_reads_only_message_created_frames() {
        let frame = br#"id: g-1-0.5.0
event: message.created
data: {"number":57,"body":"say \"number\":9","created_at":"2026-12-07T00:00:00Z"}"#;
        assert_eq!(created_number(frame), Some(57));
        let frame = br#"id: g-2-0.5.0
event: message.deleted
data: {"number":57}"#;
        assert_eq!(created_number(frame), None);
    }
}
