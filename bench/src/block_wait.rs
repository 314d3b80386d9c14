//! Figure 19 (issue 39): no create waits on SQL in steady state. A block
//! of numbers is reserved in the background when half of the last one is
//! left, so the request path's p99 with blocks of `NUMBER_BLOCK_MAX` (2048
//! by default) should be that of blocks so large that no create ever
//! reaches its bound (1,000,000).
//!
//! Two services of this build, one per block size, each with its own
//! database and key prefix on the same Redis and MariaDB; two loads, one hot
//! chat and 1,000 chats of one application, each warmed up (blocks grow
//! with the rate), then measured closed-loop (`--connections`, 64 by
//! default) for `--secs`, interleaved over `--runs`. Reported: the create
//! rate, p99 and p99.9 (ms) of each, and per run the ratio of the default's
//! p99 to the large blocks' (target ≤ 1.25).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::{Opts, post_closed, rps, stat, status_share};

/// The block sizes compared: a name and the service's extra environment.
const VARIANTS: [(&str, &[(&str, &str)]); 2] = [
    ("NUMBER_BLOCK_MAX=2048 (default)", &[]),
    (
        "NUMBER_BLOCK_MAX=1000000",
        &[("NUMBER_BLOCK_MAX", "1000000")],
    ),
];

/// The URL pattern of a load over `chats` chats of `token` (1: one hot chat).
fn load_url(port: u16, token: &str, chats: u32) -> String {
    let chat = if chats == 1 {
        "1".to_string()
    } else {
        format!("([1-9][0-9]{{0,{}}}|{chats})", chats.to_string().len() - 2)
    };
    format!("http://127.0.0.1:{port}/api/v1/applications/({token})/chats/{chat}/messages")
}

/// Figure 19 (see the module docs).
pub async fn block_wait(opts: &Opts) -> anyhow::Result<Value> {
    let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let mut services = Vec::new();
    let mut envs = Vec::new();
    for (n, (name, extra)) in VARIANTS.iter().enumerate() {
        let (env, port, _, svc) = crate::seeded_service(
            opts.clone(),
            format!("chat_bench_{id}_{n}"),
            format!("bench:{id}:{n}:"),
            crate::SERVICE_BINARY,
            true,
            extra,
        )
        .await?;
        let token = crate::seed(port, 1, 1000).await.remove(0);
        services.push((*name, port, token, svc));
        envs.push(env);
    }
    let loads = [("one hot chat", 1u32), ("1,000 chats", 1000)];
    for (load, chats) in loads {
        for (name, port, token, _) in &services {
            eprintln!("figure 19: warming up {name} on {load}…");
            post_closed(&load_url(*port, token, chats), 3, opts.connections);
        }
    }
    // (load, variant) → (req/s, p99 ms, p99.9 ms) per run; load → p99 ratios.
    type Runs = (Vec<f64>, Vec<f64>, Vec<f64>);
    let mut figures: BTreeMap<(String, String), Runs> = BTreeMap::new();
    let mut ratios: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for run in 0..opts.runs {
        for (load, chats) in loads {
            let mut p99s = Vec::new();
            for (name, port, token, _) in &services {
                eprintln!("figure 19, run {}: {name} on {load}…", run + 1);
                let report =
                    post_closed(&load_url(*port, token, chats), opts.secs, opts.connections);
                assert!(
                    status_share(&report, "201") > 0.99,
                    "{name} on {load} answered 201: {:?}",
                    report["statusCodeDistribution"]
                );
                let ms = |p: &str| report["latencyPercentiles"][p].as_f64().unwrap_or(0.0) * 1000.0;
                let entry = figures
                    .entry((load.to_string(), name.to_string()))
                    .or_default();
                entry.0.push(rps(&report));
                entry.1.push(ms("p99"));
                entry.2.push(ms("p99.9"));
                p99s.push(ms("p99"));
            }
            ratios
                .entry(load.to_string())
                .or_default()
                .push(p99s[0] / p99s[1].max(0.001));
        }
    }
    crate::drop_databases(opts, &envs).await?;
    drop(services);
    let mut out = serde_json::Map::new();
    for ((load, name), (rate, p99, p999)) in figures {
        out.insert(
            format!("{load}, {name}"),
            json!({ "create_rps": stat(rate), "p99_ms": stat(p99), "p99_9_ms": stat(p999) }),
        );
    }
    for (load, r) in ratios {
        out.insert(format!("{load}: p99 ratio"), json!(stat(r)));
    }
    Ok(Value::Object(out))
}

/// The rows of figure 19 in BENCHMARKS.md's table.
pub fn markdown(d: &Value) -> String {
    let mut out = String::new();
    for (name, v) in d.as_object().into_iter().flatten() {
        if v.get("create_rps").is_some() {
            out += &format!(
                "| 19. {name}: create req/s; p99 ms; p99.9 ms | {}; {}; {} | |\n",
                crate::s(&v["create_rps"]),
                crate::s(&v["p99_ms"]),
                crate::s(&v["p99_9_ms"]),
            );
        } else {
            out += &format!(
                "| 19. {name}, NUMBER_BLOCK_MAX=2048 ÷ 1000000, same run | {} | ≤ 1.25 |\n",
                crate::s(v)
            );
        }
    }
    out
}
