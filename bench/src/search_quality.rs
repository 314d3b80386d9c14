//! Figure 18: how relevant each search backend's first five hits are, on a
//! judged set of queries over a real corpus.
//!
//! The corpus is the one `scripts/load_corpus.py` loads (chatterbot-corpus
//! from PyPI): here its English part, every distinct line once (1,901 lines,
//! files in name order), posted through the API as the messages of one chat,
//! so that every query is ranked against the whole of it. The judged set,
//! `bench/judged/chatterbot-english.json`, gives each query an information
//! need and the lines that meet it (judged by reading every line that shares
//! a word with the query, and the top 5 of each backend: TREC's pooling).
//!
//! For each backend the run asks each query for its first 5 hits and counts
//! the relevant ones: precision at 5, divided by `min(5, relevant lines)`
//! when a query has fewer than 5 (R-capped, so that a perfect answer scores
//! 1), averaged over the queries. Backends, in one run on one database:
//! - `fulltext`: InnoDB FULLTEXT in natural-language mode, the MariaDB
//!   backend before issue 25 (its index built here again, its query as it
//!   was);
//! - `terms`: the term index, today's default backend, through the API;
//! - `meilisearch`: through the API of a second service with `MEILI_URL`,
//!   when `MEILI_URL` is set; otherwise reported as skipped.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Env, Opts, free_port, wait_up};

/// The judged queries, relative to the repository's root.
const JUDGED: &str = "bench/judged/chatterbot-english.json";

/// Hits counted per query.
const K: usize = 5;

/// The corpus lines, from `scripts/load_corpus.sh --dump-lines english`
/// (which installs chatterbot-corpus into `.venv-corpus` on first use).
fn corpus_lines() -> anyhow::Result<Vec<String>> {
    let out = std::process::Command::new("bash")
        .args(["scripts/load_corpus.sh", "--dump-lines", "english"])
        .stderr(std::process::Stdio::inherit())
        .output()?;
    anyhow::ensure!(out.status.success(), "load_corpus.sh --dump-lines failed");
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Posts `lines` as the messages of a new chat of a new application of the
/// service on `port`, in order; returns the token (the chat is number 1).
async fn load_chat(port: u16, lines: &[String]) -> anyhow::Result<String> {
    let c = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}/api/v1");
    let app: Value = c
        .post(format!("{base}/applications"))
        .json(&json!({"name": "judged corpus"}))
        .send()
        .await?
        .json()
        .await?;
    let token = app["token"].as_str().unwrap_or_default().to_string();
    let chat = c
        .post(format!("{base}/applications/{token}/chats"))
        .send()
        .await?;
    anyhow::ensure!(chat.status() == 201, "chat create: {}", chat.status());
    for line in lines {
        let r = c
            .post(format!("{base}/applications/{token}/chats/1/messages"))
            .json(&json!({ "body": line }))
            .send()
            .await?;
        anyhow::ensure!(r.status() == 201, "message create: {}", r.status());
    }
    Ok(token)
}

/// The first [`K`] hits' bodies of `q` in chat 1 of `token`.
async fn api_top(port: u16, token: &str, q: &str) -> anyhow::Result<Vec<String>> {
    let url = reqwest::Url::parse_with_params(
        &format!("http://127.0.0.1:{port}/api/v1/applications/{token}/chats/1/messages/search"),
        &[("q", q), ("per_page", &K.to_string())],
    )?;
    let page: Value = reqwest::get(url).await?.json().await?;
    Ok(page["messages"]
        .as_array()
        .map(|hits| {
            hits.iter()
                .filter_map(|h| h["body"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

/// The first [`K`] hits of each query in chat 1 of `token`, through the API.
async fn api_tops(port: u16, token: &str, queries: &[Value]) -> anyhow::Result<Vec<Vec<String>>> {
    let mut tops = Vec::new();
    for q in queries {
        tops.push(api_top(port, token, q["q"].as_str().unwrap_or_default()).await?);
    }
    Ok(tops)
}

/// [`precision`] of `backend`'s hits, shown as [`show`] does.
fn judge(backend: &str, queries: &[Value], tops: &[Vec<String>]) -> Vec<f64> {
    let p = precision(queries, tops);
    show(backend, queries, tops, &p);
    p
}

/// Waits until `ready` holds (polled every 200 ms), at most `limit`.
async fn until<F: std::future::Future<Output = bool>>(
    limit: Duration,
    mut ready: impl FnMut() -> F,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !ready().await {
        anyhow::ensure!(Instant::now() < deadline, "not ready within {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// The lines judged relevant to query `q`.
fn relevant(q: &Value) -> HashSet<&str> {
    q["relevant"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// Precision at [`K`] of each query (R-capped) from each query's hits.
fn precision(queries: &[Value], tops: &[Vec<String>]) -> Vec<f64> {
    queries
        .iter()
        .zip(tops)
        .map(|(q, top)| {
            let relevant = relevant(q);
            let hits = top.iter().filter(|b| relevant.contains(b.as_str())).count();
            hits as f64 / relevant.len().clamp(1, K) as f64
        })
        .collect()
}

/// Prints each query's hits with a mark for the judged ones (to extend the
/// pool when a backend finds a line nobody judged).
fn show(backend: &str, queries: &[Value], tops: &[Vec<String>], p: &[f64]) {
    for ((q, top), p) in queries.iter().zip(tops).zip(p) {
        let relevant = relevant(q);
        eprintln!("figure 18 [{backend}] {:?}: P@5 {p:.2}", q["q"]);
        for b in top {
            let mark = if relevant.contains(b.as_str()) {
                "+"
            } else {
                " "
            };
            let short: String = b.chars().take(90).collect();
            eprintln!("    {mark} {}", short.replace('\n', " "));
        }
    }
}

fn mean(p: &[f64]) -> f64 {
    p.iter().sum::<f64>() / p.len().max(1) as f64
}

/// Figure 18 (see the module docs).
pub async fn search_quality(opts: &Opts) -> anyhow::Result<Value> {
    let judged: Value = serde_json::from_str(&std::fs::read_to_string(JUDGED)?)?;
    let queries = judged["queries"].as_array().cloned().unwrap_or_default();
    let lines = corpus_lines()?;
    let mut r = redis::Client::open(opts.redis.as_str())?
        .get_multiplexed_async_connection()
        .await?;

    // Today's backend: the term index, through the API. The old backend's
    // FULLTEXT index is built first, as migration 2 had it: rows flushed
    // into it are indexed as they come (on MariaDB 10.11, an index added
    // to this table after migration 6 dropped its first one found no row).
    let (env, pool) = Env::fresh(opts).await?;
    sqlx::query(super::OLD_FULLTEXT).execute(&pool).await?;
    let port = free_port();
    let service = env.start_service(port, &[]);
    wait_up(port, "/health/live").await;
    eprintln!("figure 18: {} lines into one chat…", lines.len());
    let token = load_chat(port, &lines).await?;
    let n = lines.len() as i64;
    until(Duration::from_secs(120), || async {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM search_documents")
            .fetch_one(&pool)
            .await
            .is_ok_and(|c| c == n)
    })
    .await?;
    let terms = judge("terms", &queries, &api_tops(port, &token, &queries).await?);
    drop(service);

    // The backend before issue 25, on the same stored rows.
    let chat_id: u64 = sqlx::query_scalar("SELECT id FROM chats WHERE number = 1")
        .fetch_one(&pool)
        .await?;
    let mut tops = Vec::new();
    for q in &queries {
        tops.push(
            super::old_fulltext_search(
                &pool,
                chat_id,
                q["q"].as_str().unwrap_or_default(),
                K as i64,
            )
            .await?,
        );
    }
    let fulltext = judge("fulltext", &queries, &tops);
    env.drop_all(&pool, &mut r).await?;

    // Meilisearch, where a server is given.
    let meili = match std::env::var("MEILI_URL") {
        Ok(url) if !url.is_empty() => {
            let (env, pool) = Env::fresh(opts).await?;
            let port = free_port();
            let index = format!("judged_{}", &env.prefix[6..14]);
            let service = env.start_service(
                port,
                &[("MEILI_URL", url.as_str()), ("MEILI_INDEX", index.as_str())],
            );
            wait_up(port, "/health/live").await;
            let token = load_chat(port, &lines).await?;
            // Indexed once the last line is found by a word of its own.
            let last = lines.last().cloned().unwrap_or_default();
            until(Duration::from_secs(120), || async {
                api_top(port, &token, &last)
                    .await
                    .is_ok_and(|t| t.contains(&last))
            })
            .await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let p = judge(
                "meilisearch",
                &queries,
                &api_tops(port, &token, &queries).await?,
            );
            drop(service);
            env.drop_all(&pool, &mut r).await?;
            json!({ "p_at_5": mean(&p), "per_query": p })
        }
        _ => {
            eprintln!("figure 18: Meilisearch SKIPPED (MEILI_URL is not set)");
            json!({ "skipped": "MEILI_URL is not set" })
        }
    };
    let names: Vec<&str> = queries.iter().filter_map(|q| q["q"].as_str()).collect();
    Ok(json!({
        "messages": lines.len(),
        "queries": names,
        "fulltext": { "p_at_5": mean(&fulltext), "per_query": fulltext },
        "terms": { "p_at_5": mean(&terms), "per_query": terms },
        "meilisearch": meili,
    }))
}

/// The row of figure 18 in BENCHMARKS.md's table.
pub fn markdown(d: &Value) -> String {
    let p = |v: &Value| {
        v["p_at_5"]
            .as_f64()
            .map_or("skipped (no `MEILI_URL`)".into(), |x| format!("{x:.2}"))
    };
    format!(
        "| 18. precision at 5 (R-capped), {} judged queries over {} corpus lines in one chat: FULLTEXT (before) / term index / Meilisearch | {} / {} / {} | term index ≥ FULLTEXT |\n",
        d["queries"].as_array().map_or(0, Vec::len),
        d["messages"],
        p(&d["fulltext"]),
        p(&d["terms"]),
        p(&d["meilisearch"]),
    )
}
