//! Redis's CPU per create of the enqueue script alone (issue 36), without
//! HTTP, the service or MariaDB in the measurement: one single-threaded
//! process's CPU time, and the scripts' own time in it. On a shared machine
//! even that moves ±15% from one round to the next, so a variant is judged
//! by its ratio to this build's in the same run, over many runs.
//!
//! On one Redis, interleaved in each run and in alternating order:
//! - **the script ceiling**: figure 14's minimal script (`HINCRBY` of a
//!   per-chat counter and `RPUSH` of the record), one `EVALSHA` per create,
//!   `--ceiling-in-flight` calls in flight on one multiplexed connection,
//!   as the ceiling's server sends them;
//! - **this build**: the batched message script the service sends
//!   (`chat_api::writebehind::enqueue::enqueue_message`), `--batch` creates
//!   per call and the coalescer's [`IN_FLIGHT`] calls in flight, with the
//!   keys and arguments the service gives a create (`Buffer::enqueue`):
//!   2 applications, creates spread over `--chats` chats, every scope
//!   checked in the current epoch with a bound out of reach (no create
//!   needs SQL), no `Idempotency-Key`, no subscriber;
//! - **each `--variant`**: another text of the batched script (a Lua file
//!   with the same keys and arguments; `--print-script` prints this
//!   build's), sent the same way, so that a change to the Lua is measured
//!   before it is built into the service.
//!
//! Each round sends `--creates` creates and reads Redis's CPU time
//! (`/proc/{pid}/stat`, user + system, 10 ms ticks: a round should cost
//! Redis a second or more) before and after; a batched round checks that
//! every create was answered with a number, so an early return (a limit, a
//! missing counter) cannot pass for a cheap create. Reported per script:
//! µs of Redis CPU per create, its ratio to the ceiling's in the same run,
//! and the creates/s one Redis master could carry at that cost (10⁶ ÷ µs).

use futures::StreamExt;
use serde_json::{Value, json};

use chat_api::writebehind::coalesce::IN_FLIGHT;
use chat_api::writebehind::enqueue::{ARGS_PER_CREATE, KEYS_PER_CREATE};
use chat_api::writebehind::keys::{Keys, Kind};

use crate::sustained::{cpu_secs, redis_pid};
use crate::{Opts, stat};

/// Options of `bench script-cost`.
#[derive(clap::Args, Clone)]
pub struct ScriptCostOpts {
    #[command(flatten)]
    pub opts: Opts,
    /// Creates per round of each script.
    #[arg(long, default_value_t = 100_000)]
    pub creates: usize,
    /// Creates per call of the batched script (about 12 at figure 14's
    /// load).
    #[arg(long, default_value_t = 12)]
    pub batch: usize,
    /// Chats over which the creates are spread, over 2 applications (1:
    /// one hot chat per application).
    #[arg(long, default_value_t = 100)]
    pub chats: i64,
    /// Bytes of each message body.
    #[arg(long, default_value_t = 100)]
    pub body_bytes: usize,
    /// Calls of the ceiling's script in flight (figure 14's 64
    /// connections).
    #[arg(long, default_value_t = 64)]
    pub ceiling_in_flight: usize,
    /// Lua files holding other texts of the batched message script
    /// (comma-separated), each measured beside this build's.
    #[arg(long, value_delimiter = ',')]
    pub variant: Vec<String>,
    /// Prints this build's batched message script, and nothing else.
    #[arg(long)]
    pub print_script: bool,
}

/// Figure 14's minimal script (see [`crate::request_path`]).
const MINIMAL: &str = r#"
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('RPUSH', KEYS[2], ARGV[1] .. '\t' .. n .. '\t' .. ARGV[2])
return n
"#;

/// A bound no counter reaches in a benchmark.
const BOUND_OUT_OF_REACH: i64 = 1_000_000_000_000;

/// The two applications, their hashes seeded as the service leaves a
/// scope it checked: `(token, application id)`.
async fn seed(
    r: &mut redis::aio::MultiplexedConnection,
    keys: &Keys,
    chats: i64,
) -> anyhow::Result<Vec<(String, i64)>> {
    let mut apps = Vec::new();
    for id in 1..=2 {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let shard = keys.for_token(&token);
        let epoch = chat_api::redis::check_epoch(r, &[shard.epoch()]).await?;
        let mut fields: Vec<(String, String)> = vec![
            ("id".into(), id.to_string()),
            ("chats".into(), chats.to_string()),
            ("v".into(), epoch.to_string()),
            ("r".into(), BOUND_OUT_OF_REACH.to_string()),
        ];
        for n in 1..=chats {
            fields.push((n.to_string(), "0".into()));
            fields.push((format!("v:{n}"), epoch.to_string()));
            fields.push((format!("r:{n}"), BOUND_OUT_OF_REACH.to_string()));
        }
        let _: () = redis::cmd("HSET")
            .arg(shard.app(&token))
            .arg(fields)
            .query_async(r)
            .await?;
        apps.push((token, id));
    }
    Ok(apps)
}

/// One create's keys and arguments, as `Buffer::enqueue` builds them for a
/// message with no `Idempotency-Key`.
fn create(
    keys: &Keys,
    token: &str,
    chat: i64,
    body: &str,
) -> ([String; KEYS_PER_CREATE], [String; ARGS_PER_CREATE]) {
    let shard = keys.for_token(token);
    let app = shard.app(token);
    (
        [
            app.clone(),
            shard.pending(Kind::Messages),
            shard.epoch(),
            app,
            shard.usage(),
            shard.live_flag(token, chat),
            shard.live_stream(token, chat),
        ],
        [
            "100000000".into(),
            chat_api::writebehind::now_ms()
                .saturating_mul(1000)
                .to_string(),
            chat.to_string(),
            body.into(),
            String::new(),
            "86400".into(),
            "0".into(),
            keys.shard_count().to_string(),
            "0".into(),
            "1000".into(),
        ],
    )
}

/// The `i`-th create's application and chat: consecutive creates go to
/// different chats, as figure 14's load spreads them.
fn target(i: usize, apps: &[(String, i64)], chats: i64) -> (&str, i64) {
    let app = &apps[i % apps.len()].0;
    (app, (i / apps.len()) as i64 % chats + 1)
}

/// Sends `o.creates` creates through the batched `script`; errors when a
/// create was not answered with a number.
async fn batched_round(
    conn: &redis::aio::MultiplexedConnection,
    script: &redis::Script,
    keys: &Keys,
    apps: &[(String, i64)],
    o: &ScriptCostOpts,
    body: &str,
) -> anyhow::Result<()> {
    let calls = o.creates.div_ceil(o.batch);
    let mut results = futures::stream::iter(0..calls)
        .map(|c| {
            let mut conn = conn.clone();
            let mut invocation = script.prepare_invoke();
            for i in c * o.batch..((c + 1) * o.batch).min(o.creates) {
                let (app, chat) = target(i, apps, o.chats);
                let (k, a) = create(keys, app, chat, body);
                for key in k {
                    invocation.key(key);
                }
                for arg in a {
                    invocation.arg(arg);
                }
            }
            async move { invocation.invoke_async::<Vec<Vec<i64>>>(&mut conn).await }
        })
        .buffer_unordered(IN_FLIGHT);
    while let Some(replies) = results.next().await {
        for reply in replies? {
            anyhow::ensure!(
                reply.first().is_some_and(|n| *n > 0),
                "a create was not numbered (reply {reply:?}): the benchmark would measure an early return"
            );
        }
    }
    Ok(())
}

/// Sends `o.creates` creates through the minimal script, one call each.
async fn ceiling_round(
    conn: &redis::aio::MultiplexedConnection,
    script: &redis::Script,
    prefix: &str,
    apps: &[(String, i64)],
    o: &ScriptCostOpts,
    body: &str,
) -> anyhow::Result<()> {
    let mut results = futures::stream::iter(0..o.creates)
        .map(|i| {
            let mut conn = conn.clone();
            let (app, chat) = target(i, apps, o.chats);
            let mut invocation = script.prepare_invoke();
            invocation
                .key(format!("{prefix}{{{app}}}:counters"))
                .key(format!("{prefix}{{{app}}}:pending"))
                .arg(chat)
                .arg(body);
            async move { invocation.invoke_async::<i64>(&mut conn).await }
        })
        .buffer_unordered(o.ceiling_in_flight);
    while let Some(n) = results.next().await {
        n?;
    }
    Ok(())
}

/// What the runs of [`script_cost`] measured, per script (outer index) and
/// run (inner).
struct Measured {
    /// µs of Redis CPU per create.
    usec: Vec<Vec<f64>>,
    /// `usec` ÷ the ceiling's in the same run.
    ratio: Vec<Vec<f64>>,
    /// µs of `EVALSHA` per create (`INFO commandstats`: the scripts' own
    /// time, without reading the calls and writing the replies).
    script: Vec<Vec<f64>>,
    /// `script` ÷ this build's in the same run: the paired comparison of
    /// a variant, steadier than either figure alone.
    vs_this_build: Vec<Vec<f64>>,
}

/// `usec` of `EVALSHA` in `INFO commandstats` since the last `CONFIG
/// RESETSTAT`.
async fn evalsha_usec(r: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<f64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(r)
        .await?;
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:"))
        .and_then(|rest| rest.split(',').find_map(|f| f.strip_prefix("usec=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0))
}

/// The runs of [`script_cost`] (see [`Measured`]).
#[allow(clippy::too_many_arguments)]
async fn measure(
    conn: &redis::aio::MultiplexedConnection,
    scripts: &[(String, Option<redis::Script>)],
    ceiling: &redis::Script,
    keys: &Keys,
    prefix: &str,
    apps: &[(String, i64)],
    o: &ScriptCostOpts,
    pid: i32,
) -> anyhow::Result<Measured> {
    let mut r = conn.clone();
    let body = "x".repeat(o.body_bytes);
    let mut usec: Vec<Vec<f64>> = vec![Vec::new(); scripts.len()];
    let mut ratio: Vec<Vec<f64>> = vec![Vec::new(); scripts.len()];
    let mut script: Vec<Vec<f64>> = vec![Vec::new(); scripts.len()];
    let mut vs_this_build: Vec<Vec<f64>> = vec![Vec::new(); scripts.len()];
    for run in 0..o.opts.runs {
        let mut order: Vec<usize> = (0..scripts.len()).collect();
        if run % 2 == 1 {
            order.reverse();
        }
        let mut this_run = vec![0.0; scripts.len()];
        let mut script_run = vec![0.0; scripts.len()];
        for &s in &order {
            let _: () = redis::cmd("CONFIG")
                .arg("RESETSTAT")
                .query_async(&mut r)
                .await?;
            let before = cpu_secs(pid);
            match &scripts[s].1 {
                None => ceiling_round(conn, ceiling, prefix, apps, o, &body).await?,
                Some(script) => batched_round(conn, script, keys, apps, o, &body).await?,
            }
            let spent = cpu_secs(pid) - before;
            this_run[s] = spent * 1e6 / o.creates as f64;
            script_run[s] = evalsha_usec(&mut r).await? / o.creates as f64;
            // What the round queued goes, outside the measurement.
            let mut doomed: Vec<String> = apps
                .iter()
                .flat_map(|(t, _)| {
                    let shard = keys.for_token(t);
                    [
                        shard.pending(Kind::Messages),
                        shard.usage(),
                        format!("{prefix}{{{t}}}:pending"),
                    ]
                })
                .collect();
            doomed.dedup();
            let _: () = redis::cmd("DEL").arg(doomed).query_async(&mut r).await?;
        }
        for s in 0..scripts.len() {
            usec[s].push(this_run[s]);
            script[s].push(script_run[s]);
            if script_run[1] > 0.0 {
                vs_this_build[s].push(script_run[s] / script_run[1]);
            }
            // (A round too short for one 10 ms tick of the ceiling gives no ratio.)
            if this_run[0] > 0.0 {
                ratio[s].push(this_run[s] / this_run[0]);
            }
        }
        eprintln!(
            "run {}: µs per create, Redis CPU {this_run:.2?}, EVALSHA {script_run:.2?}",
            run + 1
        );
    }
    Ok(Measured {
        usec,
        ratio,
        script,
        vs_this_build,
    })
}

/// `bench script-cost` (see the module docs).
pub async fn script_cost(o: &ScriptCostOpts) -> anyhow::Result<Value> {
    let this_build = chat_api::writebehind::enqueue::enqueue_message();
    let mut scripts: Vec<(String, Option<redis::Script>)> = vec![
        ("script ceiling".into(), None),
        ("this build".into(), Some(redis::Script::new(&this_build))),
    ];
    for path in &o.variant {
        let text = std::fs::read_to_string(path)?;
        scripts.push((path.clone(), Some(redis::Script::new(&text))));
    }
    let ceiling = redis::Script::new(MINIMAL);
    let conn = redis::Client::open(o.opts.redis.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let mut r = conn.clone();
    let pid = redis_pid(&mut r).await?;
    let prefix = format!(
        "bench-script:{}:",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let keys = Keys::with_shards(prefix.clone(), 16);
    let apps = seed(&mut r, &keys, o.chats).await?;
    let measured = measure(&conn, &scripts, &ceiling, &keys, &prefix, &apps, o, pid).await;
    // The seeded hashes, the queues and the ceiling's counters go, whatever
    // the outcome.
    let leftovers: Vec<String> = apps
        .iter()
        .flat_map(|(t, _)| {
            let shard = keys.for_token(t);
            [
                shard.app(t),
                shard.epoch(),
                shard.pending(Kind::Messages),
                shard.usage(),
                format!("{prefix}{{{t}}}:counters"),
                format!("{prefix}{{{t}}}:pending"),
            ]
        })
        .collect();
    let _: () = redis::cmd("DEL").arg(leftovers).query_async(&mut r).await?;
    let Measured {
        usec,
        ratio,
        script,
        vs_this_build,
    } = measured?;
    let mut out = serde_json::Map::new();
    out.insert(
        "load".into(),
        json!({
            "creates_per_round": o.creates,
            "batch": o.batch,
            "chats": o.chats * 2,
            "body_bytes": o.body_bytes,
            "runs": o.opts.runs,
        }),
    );
    for (s, (name, _)) in scripts.iter().enumerate() {
        let u = stat(usec[s].clone());
        out.insert(
            name.clone(),
            json!({
                "redis_usec_per_create": u,
                "evalsha_usec_per_create": stat(script[s].clone()),
                "evalsha_vs_this_build": (!vs_this_build[s].is_empty()).then(|| stat(vs_this_build[s].clone())),
                "vs_ceiling": (!ratio[s].is_empty()).then(|| stat(ratio[s].clone())),
                "creates_per_sec_per_master": (u.median > 0.0).then(|| (1e6 / u.median).round()),
            }),
        );
    }
    Ok(Value::Object(out))
}

/// The table of `bench script-cost`.
pub fn markdown(d: &Value) -> String {
    let load = &d["load"];
    let mut out = format!(
        "Redis CPU per create, Redis alone: {} creates per round, {} per call of the batched script, {} chats, {}-byte bodies, {} runs\n\n\
         | script | Redis µs per create | ÷ the ceiling's, same run | creates/s per master | of which EVALSHA µs | EVALSHA ÷ this build's, same run |\n|---|---|---|---|---|---|\n",
        load["creates_per_round"], load["batch"], load["chats"], load["body_bytes"], load["runs"]
    );
    for (name, v) in d.as_object().into_iter().flatten() {
        if name == "load" {
            continue;
        }
        out += &format!(
            "| {name} | {} | {} | {} | {} | {} |\n",
            crate::s(&v["redis_usec_per_create"]),
            crate::s(&v["vs_ceiling"]),
            v["creates_per_sec_per_master"],
            crate::s(&v["evalsha_usec_per_create"]),
            crate::s(&v["evalsha_vs_this_build"])
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        o: ScriptCostOpts,
    }

    fn opts(extra: &[&str]) -> ScriptCostOpts {
        let redis =
            std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let mut args = vec![
            "bench",
            "--redis",
            &redis,
            "--runs",
            "1",
            "--creates",
            "240",
        ];
        args.extend_from_slice(extra);
        Cli::try_parse_from(args).unwrap().o
    }

    /// This build's script numbers every create of the seeded load (else
    /// the figure would be of an early return), and each script gets a
    /// row.
    #[tokio::test]
    async fn this_builds_script_numbers_every_create_and_each_script_gets_a_row() {
        let d = script_cost(&opts(&[])).await.unwrap();
        for name in ["script ceiling", "this build"] {
            assert!(
                d[name]["redis_usec_per_create"]["median"].is_number(),
                "{name}: {d}"
            );
        }
        assert_eq!(d["load"]["chats"], 200);
    }

    /// A variant whose creates are not numbered (here every create answers
    /// `NO_BLOCK`, as with a bound left at the first block) is refused, not
    /// measured.
    #[tokio::test]
    async fn a_script_that_numbers_nothing_is_refused() {
        let early =
            std::env::temp_dir().join(format!("early-{}.lua", uuid::Uuid::new_v4().simple()));
        std::fs::write(
            &early,
            "local out = {}\nfor i = 1, #KEYS / 7 do out[i] = {-8, 0, 0, 0, 0} end\nreturn out\n",
        )
        .unwrap();
        let err = script_cost(&opts(&["--variant", early.to_str().unwrap()]))
            .await
            .unwrap_err();
        let _ = std::fs::remove_file(&early);
        assert!(err.to_string().contains("was not numbered"), "{err}");
    }
}
