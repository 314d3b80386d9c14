//! Figure 20 (issue 37, finding 14): `chat-api reindex` into each search
//! backend, on the same stored messages (`--messages`, 200,000 by default,
//! 14 words each over 100 chats, [`crate::insert_text_rows`]), in one run,
//! the backends interleaved over `--runs`: messages per second into the
//! term index in MariaDB and into Meilisearch (`MEILI_URL`, `MEILI_API_KEY`;
//! without `MEILI_URL` that half is skipped and the figure says so), and the
//! ratio of the two (target: Meilisearch at least the term index's rate).
//! Each Meilisearch run writes a fresh index, so every run adds documents
//! rather than replacing them; each term-index run starts from empty
//! postings.
//!
//! The rate is the command's own: the messages it reports over the wall
//! time of the whole process (start-up and the last task's wait included).

use std::process::Command;
use std::time::Instant;

use serde_json::{Value, json};
use sqlx::MySqlPool;

use crate::{Env, Opts, SERVICE_BINARY, app_with_100_chats, insert_text_rows, stat};

/// Options of `bench reindex`.
#[derive(clap::Args, Clone)]
pub struct ReindexOpts {
    #[command(flatten)]
    pub opts: Opts,
    /// Stored messages to reindex.
    #[arg(long, default_value_t = 200_000)]
    pub messages: u64,
    /// Messages per batch of the command (`chat-api reindex --batch-size`).
    #[arg(long, default_value_t = 5000)]
    pub batch_size: u64,
    /// Meilisearch server (the Meilisearch half is skipped without it).
    #[arg(long, env = "MEILI_URL")]
    pub meili_url: Option<String>,
    /// Its API key, if it has one.
    #[arg(long, env = "MEILI_API_KEY")]
    pub meili_api_key: Option<String>,
}

/// Runs `chat-api reindex --batch-size {batch_size}` with `env`: messages
/// per second (the stored
/// count over the process's wall time). Errors: the command failed.
fn reindex_rate(env: &[(&str, String)], messages: u64, batch_size: u64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let out = Command::new(SERVICE_BINARY)
        .arg("reindex")
        .arg("--batch-size")
        .arg(batch_size.to_string())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()?;
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        out.status.success(),
        "chat-api reindex failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("  {}", String::from_utf8_lossy(&out.stdout).trim());
    Ok(messages as f64 / secs)
}

/// Figure 20 (see the module docs).
pub async fn reindex(o: &ReindexOpts) -> anyhow::Result<Value> {
    let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let env = Env {
        opts: o.opts.clone(),
        db: format!("chat_bench_{id}_reindex"),
        prefix: format!("bench:{id}:reindex:"),
    };
    chat_api::store::ensure_database(&env.database_url()).await?;
    let pool = MySqlPool::connect(&env.database_url()).await?;
    chat_api::store::migrate(&pool).await?;
    let app = app_with_100_chats(&pool, "reindex").await?;
    eprintln!("figure 20: {} stored messages…", o.messages);
    insert_text_rows(&pool, app, None, 0, o.messages).await?;
    let base = vec![
        ("DATABASE_URL", env.database_url()),
        ("REDIS_URL", o.opts.redis.clone()),
        ("REDIS_KEY_PREFIX", env.prefix.clone()),
    ];
    let mut terms = Vec::new();
    let mut meili = Vec::new();
    for run in 0..o.opts.runs {
        eprintln!("figure 20, run {}: the term index…", run + 1);
        for table in ["search_postings", "search_documents", "search_chats"] {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table}")))
                .execute(&pool)
                .await;
        }
        terms.push(reindex_rate(&base, o.messages, o.batch_size)?);
        if let Some(url) = &o.meili_url {
            eprintln!("figure 20, run {}: Meilisearch…", run + 1);
            let mut env = base.clone();
            env.push(("MEILI_URL", url.clone()));
            env.push(("MEILI_INDEX", format!("bench_{id}_{run}")));
            if let Some(key) = &o.meili_api_key {
                env.push(("MEILI_API_KEY", key.clone()));
            }
            meili.push(reindex_rate(&env, o.messages, o.batch_size)?);
        }
    }
    pool.close().await;
    let admin = MySqlPool::connect(&o.opts.mysql).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE `{}`", env.db)))
        .execute(&admin)
        .await?;
    let ratios: Vec<f64> = meili.iter().zip(&terms).map(|(m, t)| m / t).collect();
    Ok(json!({
        "messages": o.messages,
        "term_index_per_sec": stat(terms.clone()),
        "meilisearch_per_sec": if meili.is_empty() { Value::Null } else { json!(stat(meili.clone())) },
        "meilisearch_over_term_index": if ratios.is_empty() { Value::Null } else { json!(stat(ratios)) },
    }))
}

/// Figure 20's lines for BENCHMARKS.md.
pub fn markdown(figure: &Value) -> String {
    let cell = |v: &Value, digits: usize| match (
        v["median"].as_f64(),
        v["min"].as_f64(),
        v["max"].as_f64(),
    ) {
        (Some(m), Some(lo), Some(hi)) => format!("{m:.digits$} ({lo:.digits$}–{hi:.digits$})"),
        _ => "not measured (MEILI_URL unset)".to_string(),
    };
    format!(
        "| reindex of {} messages | messages/s, median (min–max) |\n|---|---|\n\
         | term index (MariaDB) | {} |\n| Meilisearch | {} |\n| Meilisearch ÷ term index | {} |",
        figure["messages"],
        cell(&figure["term_index_per_sec"], 0),
        cell(&figure["meilisearch_per_sec"], 0),
        cell(&figure["meilisearch_over_term_index"], 2),
    )
}
