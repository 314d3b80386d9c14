//! Figure 22 (issue 35): a page of a long chat by cursor against by
//! `OFFSET`. One chat holds `--messages` stored messages (1,000,000 by
//! default, numbers 1 to N, inserted by SQL); at each depth of `--depths`,
//! `GET …/messages?after={depth}&limit=20` and
//! `GET …/messages?page={depth / 20 + 1}&per_page=20` (the same 20
//! messages) are timed in turn, `--samples` times each, on one keep-alive
//! connection: the p50 and p99 of each (ms, the whole HTTP round trip), and
//! the ratio cursor ÷ OFFSET of the p50s (target: the cursor page ≤ 5 ms at
//! any depth). The cursor reads 21 rows of the `(chat_id, number)` key from
//! the cursor on; OFFSET reads and skips every row before its page.

use std::time::Instant;

use serde_json::{Value, json};

use crate::{Env, Opts, free_port, seed, wait_up};

/// Options of `bench page-depth`.
#[derive(clap::Args, Clone)]
pub struct PageDepthOpts {
    #[command(flatten)]
    pub opts: Opts,
    /// Stored messages of the one chat.
    #[arg(long, default_value_t = 1_000_000)]
    pub messages: u64,
    /// Depths (messages before the page), comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0,10000,100000,500000,980000"
    )]
    pub depths: Vec<u64>,
    /// Timed requests of each kind at each depth.
    #[arg(long, default_value_t = 50)]
    pub samples: usize,
}

/// The `q`-quantile (0..1) of `v`, in the unit of `v`.
fn quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * q).round() as usize]
}

/// Milliseconds of one GET of `url`, which must answer 200 with 20
/// messages starting after `first_after`.
async fn timed(c: &reqwest::Client, url: &str, first_after: u64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let r = c.get(url).send().await?;
    anyhow::ensure!(r.status() == 200, "{url}: {}", r.status());
    let body: Value = r.json().await?;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let first = body["messages"][0]["number"].as_u64();
    anyhow::ensure!(
        first == Some(first_after + 1),
        "{url}: the page starts at {first:?}, not {}",
        first_after + 1
    );
    Ok(ms)
}

/// Figure 22 (see the module docs).
pub async fn page_depth(o: &PageDepthOpts) -> anyhow::Result<Value> {
    let (env, pool) = Env::fresh(&o.opts).await?;
    let port = free_port();
    let _svc = env.start_service(port, &[]);
    wait_up(port, "/health/live").await;
    let token = seed(port, 1, 1).await.remove(0);
    let chat_id: u64 = sqlx::query_scalar("SELECT id FROM chats LIMIT 1")
        .fetch_one(&pool)
        .await?;
    eprintln!("figure 22: {} stored messages in one chat…", o.messages);
    // In steps of 100,000 rows (the sequence engine's tables of MariaDB).
    let mut from = 0;
    while from < o.messages {
        let n = (o.messages - from).min(100_000);
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO messages (chat_id, number, body, created_at, updated_at) \
             SELECT ?, ? + s.seq, CONCAT('message ', ? + s.seq), NOW(6), NOW(6) FROM seq_1_to_{n} s"
        )))
        .bind(chat_id)
        .bind(from)
        .bind(from)
        .execute(&pool)
        .await?;
        from += n;
    }
    let c = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}/api/v1/applications/{token}/chats/1/messages");
    let mut rows = Vec::new();
    for &depth in o.depths.iter().filter(|d| **d + 20 <= o.messages) {
        let depth = depth / 20 * 20;
        let cursor_url = format!("{base}?after={depth}&limit=20");
        let offset_url = format!("{base}?page={}&per_page=20", depth / 20 + 1);
        // One untimed pass each: the pages' rows in the buffer pool.
        timed(&c, &cursor_url, depth).await?;
        timed(&c, &offset_url, depth).await?;
        let (mut cursor, mut offset) = (Vec::new(), Vec::new());
        for _ in 0..o.samples {
            cursor.push(timed(&c, &cursor_url, depth).await?);
            offset.push(timed(&c, &offset_url, depth).await?);
        }
        let (c50, o50) = (quantile(&mut cursor, 0.5), quantile(&mut offset, 0.5));
        eprintln!("  depth {depth}: cursor p50 {c50:.2} ms, OFFSET p50 {o50:.2} ms");
        rows.push(json!({
            "depth": depth,
            "cursor_p50_ms": c50,
            "cursor_p99_ms": quantile(&mut cursor, 0.99),
            "offset_p50_ms": o50,
            "offset_p99_ms": quantile(&mut offset, 0.99),
            "cursor_over_offset": c50 / o50,
        }));
    }
    let mut r = redis::Client::open(o.opts.redis.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    env.drop_all(&pool, &mut r).await?;
    Ok(json!({ "messages": o.messages, "samples": o.samples, "depths": rows }))
}

/// Figure 22's lines for BENCHMARKS.md.
pub fn markdown(figure: &Value) -> String {
    let mut out = format!(
        "| 22. page of 20 in a chat of {} messages, depth | cursor p50 / p99 (ms) | OFFSET p50 / p99 (ms) | cursor ÷ OFFSET (p50) |\n|---|---|---|---|\n",
        figure["messages"]
    );
    for r in figure["depths"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "| {} | {:.2} / {:.2} | {:.2} / {:.2} | {:.3} |\n",
            r["depth"],
            r["cursor_p50_ms"].as_f64().unwrap_or(f64::NAN),
            r["cursor_p99_ms"].as_f64().unwrap_or(f64::NAN),
            r["offset_p50_ms"].as_f64().unwrap_or(f64::NAN),
            r["offset_p99_ms"].as_f64().unwrap_or(f64::NAN),
            r["cursor_over_offset"].as_f64().unwrap_or(f64::NAN),
        ));
    }
    out
}
