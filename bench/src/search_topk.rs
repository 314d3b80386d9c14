//! Figure 21 (issue 38): search latency of the term index in one chat of
//! `--messages` (1,000,000 by default) messages of 14 words drawn uniformly
//! from a 20,000-word vocabulary (`v0` … `v19999`), with three words
//! planted: `rare` in one message, `tenth` in about 10% and `half` in about
//! 50% (independently drawn, so `half tenth` meet in about 5%). For each
//! query shape (`rare`, `tenth`, `half`, `half tenth`), and for page 10 of
//! `half` and of `half tenth` by cursor (20 hits a page), p50 and p99 of
//! `--reps` searches through the service's code (`SearchBackend::search`:
//! top-k, then the page's messages read back), against the same searches by
//! the algorithm before issue 38 in the same run (`terms::search_all`, the
//! statement and `rank` of the old `terms::search`: every posting of the
//! query's terms in the chat, ranked, then the page cut, then read back),
//! `--before-reps` times each.
//!
//! The chat is written in bulk, not through the API: the messages and the
//! postings (from `terms::analyze`, as the indexer writes them, sorted by
//! key) go in by `LOAD DATA INFILE` from files under `/tmp` (MariaDB on the
//! same machine reads them), then each term's document count
//! (`search_terms`) and the chat's statistics (`search_chats`); where the
//! server cannot read the files, by multi-row `INSERT`s of them. The
//! indexer's own speed is figure 8's; this figure is about reading.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use chat_api::store::search::{SearchBackend, Window, terms};
use serde_json::{Value, json};
use sqlx::MySqlPool;

use crate::{Env, Opts};

/// Options of `bench search-topk`.
#[derive(clap::Args, Clone)]
pub struct SearchTopkOpts {
    #[command(flatten)]
    pub opts: Opts,
    /// Messages in the chat.
    #[arg(long, default_value_t = 1_000_000)]
    pub messages: u64,
    /// Timed searches per shape with top-k.
    #[arg(long, default_value_t = 200)]
    pub reps: usize,
    /// Timed searches per shape with the algorithm before issue 38.
    #[arg(long, default_value_t = 30)]
    pub before_reps: usize,
    /// Write the chat with INSERTs, not `LOAD DATA INFILE` (which needs
    /// MariaDB on this machine and the `FILE` privilege; without them the
    /// bench falls back to INSERTs by itself).
    #[arg(long)]
    pub no_load_data: bool,
}

/// Vocabulary size.
const VOCABULARY: u64 = 20_000;
/// Words per message.
const WORDS: u64 = 14;
/// Hits per page.
const PER_PAGE: u32 = 20;

/// splitmix64: a deterministic stream, so that every run writes the same chat.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Message `n`'s body: 14 vocabulary words, with `half`, `tenth` and
/// `rare` planted in place of the first three where drawn.
fn body(n: u64, rare: u64) -> String {
    let mut words: Vec<String> = (0..WORDS)
        .map(|i| format!("v{}", mix(n * 64 + i) % VOCABULARY))
        .collect();
    if mix(n ^ 0x4841_4c46).is_multiple_of(2) {
        words[0] = "half".into();
    }
    if mix(n ^ 0x5445_4e54).is_multiple_of(10) {
        words[1] = "tenth".into();
    }
    if n == rare {
        words[2] = "rare".into();
    }
    words.join(" ")
}

/// Writes the chat (see the module docs); returns the seconds it took.
async fn seed(
    pool: &MySqlPool,
    chat: u64,
    app: u64,
    messages: u64,
    load_data: bool,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let dir = std::path::PathBuf::from(format!(
        "/tmp/bench-search-topk-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ));
    std::fs::create_dir_all(&dir)?;
    // mariadbd reads the files as its own user.
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let rare = messages / 2 + 1;
    let mut postings: Vec<(u64, u64, u16, u32)> = Vec::with_capacity((messages * WORDS) as usize);
    let mut total_length = 0u64;
    {
        let mut out = std::io::BufWriter::new(std::fs::File::create(dir.join("messages.tsv"))?);
        for n in 1..=messages {
            let text = body(n, rare);
            writeln!(
                out,
                "{chat}\t{n}\t{text}\t2026-12-07 00:00:00.000000\t2026-12-07 00:00:00.000000"
            )?;
            let analyzed = terms::analyze(&text);
            total_length += u64::from(analyzed.length);
            postings.extend(
                analyzed
                    .terms
                    .iter()
                    .map(|&(h, tf)| (h, n, tf, analyzed.length)),
            );
        }
    }
    postings.sort_unstable();
    let mut df: HashMap<u64, i64> = HashMap::new();
    {
        let mut out = std::io::BufWriter::new(std::fs::File::create(dir.join("postings.tsv"))?);
        for (h, n, tf, len) in &postings {
            writeln!(out, "{chat}\t{h}\t{n}\t{tf}\t{len}")?;
            *df.entry(*h).or_default() += 1;
        }
    }
    let rows = postings.len();
    drop(postings);
    eprintln!(
        "figure 21: {messages} messages, {rows} postings written to files in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    for file in ["messages.tsv", "postings.tsv"] {
        std::fs::set_permissions(
            dir.join(file),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )?;
    }
    let mut conn = pool.acquire().await?;
    for (file, table, columns) in [
        (
            "messages.tsv",
            "messages",
            "chat_id, number, body, created_at, updated_at",
        ),
        (
            "postings.tsv",
            "search_postings",
            "chat_id, term, number, tf, length",
        ),
    ] {
        let path = dir.join(file);
        let loaded = if load_data {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "LOAD DATA INFILE '{}' INTO TABLE {table} ({columns})",
                path.display()
            )))
            .execute(&mut *conn)
            .await
            .map_err(|e| eprintln!("figure 21: LOAD DATA INFILE failed ({e}); INSERTs instead"))
            .is_ok()
        } else {
            false
        };
        if !loaded {
            insert_tsv(&mut conn, &path, table, columns).await?;
        }
        eprintln!(
            "figure 21: {table} loaded at {:.0} s",
            started.elapsed().as_secs_f64()
        );
    }
    let df: Vec<(u64, i64)> = df.into_iter().collect();
    for chunk in df.chunks(4000) {
        let values: Vec<String> = chunk
            .iter()
            .map(|(h, d)| format!("({chat},{h},{d})"))
            .collect();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "INSERT INTO search_terms (chat_id, term, documents) VALUES {}",
            values.join(",")
        )))
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query(
        "INSERT INTO search_chats (chat_id, application_id, documents, length) VALUES (?, ?, ?, ?)",
    )
    .bind(chat)
    .bind(app)
    .bind(messages as i64)
    .bind(total_length as i64)
    .execute(&mut *conn)
    .await?;
    sqlx::raw_sql("ANALYZE TABLE search_postings, search_terms, messages")
        .execute(&mut *conn)
        .await?;
    std::fs::remove_dir_all(&dir)?;
    Ok(started.elapsed().as_secs_f64())
}

/// Inserts the tab-separated rows of `path` into `table` (`columns`) in
/// multi-row `INSERT`s of 2,000 rows, every value quoted: the way when
/// the server cannot read the file (another host, or no `FILE` privilege).
async fn insert_tsv(
    conn: &mut sqlx::MySqlConnection,
    path: &std::path::Path,
    table: &str,
    columns: &str,
) -> anyhow::Result<()> {
    use std::io::BufRead;
    let lines: Vec<String> = std::io::BufReader::new(std::fs::File::open(path)?)
        .lines()
        .collect::<Result<_, _>>()?;
    for chunk in lines.chunks(2000) {
        let mut qb =
            sqlx::QueryBuilder::<sqlx::MySql>::new(format!("INSERT INTO {table} ({columns}) "));
        qb.push_values(chunk, |mut b, line| {
            for field in line.split('\t') {
                b.push_bind(field.to_owned());
            }
        });
        qb.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// p50 and p99 (nearest rank) of `ms`, and their count.
fn percentiles(mut ms: Vec<f64>) -> Value {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((q * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
    json!({"p50_ms": at(0.50), "p99_ms": at(0.99), "max_ms": ms[ms.len() - 1], "searches": ms.len()})
}

/// The page `page` (from 1) of `q` the way the term index searched before
/// issue 38: the whole ranking, then the page, then its messages.
async fn before(pool: &MySqlPool, chat: u64, q: &str, page: u32) -> anyhow::Result<usize> {
    let ranked = terms::search_all(pool, chat, q).await?;
    let from = ((page - 1) * PER_PAGE) as usize;
    let numbers: Vec<i64> = ranked
        .iter()
        .skip(from)
        .take(PER_PAGE as usize + 1)
        .map(|h| h.0)
        .collect();
    Ok(
        chat_api::store::messages::find_many_live(pool, chat, &numbers)
            .await?
            .len()
            .min(PER_PAGE as usize),
    )
}

/// The window of page 10 of `q` by cursor: pages 1 to 9 walked by cursor.
async fn page_10(
    search: &SearchBackend,
    pool: &MySqlPool,
    chat: u64,
    q: &str,
) -> anyhow::Result<Window> {
    let page = chat_api::domain::Page::parse(Some(1), Some(i64::from(PER_PAGE)))?;
    let mut window = Window::Page(page);
    for _ in 1..10 {
        let found = search
            .search(pool, chat, q, &window, Duration::from_secs(60))
            .await?;
        let next = found
            .next
            .ok_or_else(|| anyhow::anyhow!("{q}: fewer than 10 pages"))?;
        window = Window::After(next, PER_PAGE);
    }
    Ok(window)
}

/// Runs figure 21 (see the module docs).
pub async fn search_topk(o: &SearchTopkOpts) -> anyhow::Result<Value> {
    let (env, pool) = Env::fresh(&o.opts).await?;
    let app = sqlx::query("INSERT INTO applications (token, name, created_at, updated_at) VALUES (?, 'topk', NOW(6), NOW(6))")
        .bind(chat_api::domain::new_token())
        .execute(&pool)
        .await?
        .last_insert_id();
    let chat = sqlx::query("INSERT INTO chats (application_id, number, created_at, updated_at) VALUES (?, 1, NOW(6), NOW(6))")
        .bind(app)
        .execute(&pool)
        .await?
        .last_insert_id();
    let seed_secs = seed(&pool, chat, app, o.messages, !o.no_load_data).await?;
    let search = SearchBackend::Database(pool.clone());
    let first = Window::Page(chat_api::domain::Page::parse(
        Some(1),
        Some(i64::from(PER_PAGE)),
    )?);
    let mut shapes = serde_json::Map::new();
    let cases: [(&str, &str, bool); 6] = [
        ("a word in 1 message", "rare", false),
        ("a word in 10%", "tenth", false),
        ("a word in 50%", "half", false),
        ("two words, 50% and 10%", "half tenth", false),
        ("page 10 of the word in 50%, by cursor", "half", true),
        ("page 10 of the two words, by cursor", "half tenth", true),
    ];
    for (name, q, deep) in cases {
        let window = if deep {
            page_10(&search, &pool, chat, q).await?
        } else {
            first.clone()
        };
        let df: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(documents), 0) FROM search_terms WHERE chat_id = ? AND term = ?",
        )
        .bind(chat)
        .bind(terms::query_terms(q)[0])
        .fetch_one(&pool)
        .await?;
        // Warm both, once.
        let hits = search
            .search(&pool, chat, q, &window, Duration::from_secs(60))
            .await?
            .rows
            .len();
        let page = if deep { 10 } else { 1 };
        let old_hits = before(&pool, chat, q, page).await?;
        let mut after_ms = Vec::with_capacity(o.reps);
        for _ in 0..o.reps {
            let t = Instant::now();
            search
                .search(&pool, chat, q, &window, Duration::from_secs(60))
                .await?;
            after_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        let mut before_ms = Vec::with_capacity(o.before_reps);
        for _ in 0..o.before_reps {
            let t = Instant::now();
            before(&pool, chat, q, page).await?;
            before_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        let v = json!({
            "query": q,
            "page": page,
            "first_word_messages": df,
            "hits": hits,
            "hits_before": old_hits,
            "top_k": percentiles(after_ms),
            "before": percentiles(before_ms),
        });
        eprintln!("figure 21: {name}: {v}");
        shapes.insert(name.into(), v);
    }
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE `{}`", env.db)))
        .execute(&pool)
        .await?;
    Ok(json!({
        "messages": o.messages,
        "vocabulary": VOCABULARY,
        "words_per_message": WORDS,
        "per_page": PER_PAGE,
        "seed_secs": seed_secs,
        "shapes": Value::Object(shapes),
    }))
}

/// Figure 21's rows of BENCHMARKS.md.
pub fn markdown(d: &Value) -> String {
    let f = |v: &Value| format!("{:.2}", v.as_f64().unwrap_or(f64::NAN));
    let mut out = String::new();
    if let Some(shapes) = d["shapes"].as_object() {
        for (name, v) in shapes {
            out += &format!(
                "| 21. {} messages, `{}` ({} messages hold `{}`), {name}: top-k p50 / p99 ms; before p50 / p99 ms | {} / {}; {} / {} | p50 ≤ 10, p99 ≤ 30 |\n",
                d["messages"],
                v["query"].as_str().unwrap_or("?"),
                v["first_word_messages"],
                v["query"]
                    .as_str()
                    .unwrap_or("?")
                    .split(' ')
                    .next()
                    .unwrap_or("?"),
                f(&v["top_k"]["p50_ms"]),
                f(&v["top_k"]["p99_ms"]),
                f(&v["before"]["p50_ms"]),
                f(&v["before"]["p99_ms"]),
            );
        }
    }
    out
}
