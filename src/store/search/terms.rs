//! The default search backend: a term index scoped by chat, in MariaDB
//! (tables `search_postings`, `search_documents` and `search_chats`,
//! migration `20261203000006_search_terms.sql`).
//!
//! **Why not InnoDB FULLTEXT.** InnoDB maintained its FULLTEXT index inside
//! every flush's transaction (0.16× of the flush rate without it at a
//! million stored messages), and a search ranked every matching message of
//! every chat before keeping the chat's (1.3 s for a 20-message chat among a
//! million messages). Here the index is written by the search indexer
//! ([`crate::jobs::indexer`]) after the flush, and its primary key starts
//! with the chat, so a search reads only its own chat's postings.
//!
//! **Terms.** [`analyze`] tokenizes with `charabia`, Meilisearch's tokenizer:
//! words are segmented by script (Chinese with jieba; Thai, Khmer and the
//! rest by their rules; Japanese and Korean, without their dictionaries, as
//! whole runs) and normalized (lowercase, diacritics and width folded,
//! Chinese to one form), and separators are dropped. A term is stored as the
//! first 8 bytes of the SHA-256 of its normalized form ([`term_hash`]): fixed
//! width keys, stable across versions; two terms share a hash with
//! probability about 2⁻⁶⁴ per pair. No stopwords and no minimum length:
//! BM25 gives common words little weight by itself.
//!
//! **Ranking.** Okapi BM25 (Robertson and Zaragoza, "The Probabilistic
//! Relevance Framework: BM25 and Beyond", 2009) with `k1` = 1.2 and `b` =
//! 0 (no length normalization, for why see `B` below), over the chat's own messages
//! (its document count and average length, in `search_chats`), divided by the score's upper bound for the
//! query: the sum over the query's terms of `idf × (k1 + 1)`. So a score is
//! in [0, 1), higher is better; it is 0 when no query term occurs, grows with
//! how many of the query's terms the message holds (rare ones weigh more) and
//! how often, and is comparable across chats and queries as "the share of
//! the best possible match".
//!
//! **Retrieval.** A search reads about what its page needs, not every
//! posting of its terms: [`top_k`], Fagin's threshold algorithm over each
//! term's postings in impact order (`tf` descending, then number; index
//! `search_postings_impact`), with the terms' document frequencies kept in
//! `search_terms` (migration `20261207000008_search_topk.sql`). It returns
//! what [`rank`] (the whole ranking, as searches ran before) would, bit for
//! bit; [`search_all`] keeps that for tests and the bench. Every statement
//! of a search runs under what is left of `SEARCH_TIMEOUT_MS`.

use std::collections::HashMap;

use sha2::{Digest, Sha256};
use sqlx::{MySql, MySqlPool, QueryBuilder, Transaction};

use super::MessageDoc;

/// BM25's term-frequency saturation.
const K1: f64 = 1.2;
/// BM25's length normalization: none (BM25 with `b` = 0, also called
/// BM15). Chat messages are short (8.6 words on average in the chatterbot
/// corpus), and at the usual 0.75 a one- or two-word message that shares a
/// word with the query outranks the message that answers it ("Sort of."
/// first for "sort an array in python"): on the judged set of `bench
/// search-quality` (figure 18), precision at 5 was 0.61 at 0.75, 0.67 at
/// 0.3 and 0.72 at 0. Work on tweet-length texts found the same (Ferguson
/// et al., "An Investigation of Term Weighting Approaches for Microblog
/// Retrieval", ECIR 2012).
const B: f64 = 0.0;
/// Distinct terms of a query that count (the rest are ignored).
pub const MAX_QUERY_TERMS: usize = 32;
/// Posting rows per `INSERT` statement.
const ROWS_PER_INSERT: usize = 4000;
/// Rows removed per `DELETE` statement when a chat's index goes.
const ROWS_PER_DELETE: u64 = 10_000;

/// The terms of one text.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Analyzed {
    /// Distinct term hashes ([`term_hash`]) with their count in the text,
    /// sorted by hash.
    pub terms: Vec<(u64, u16)>,
    /// Number of terms in the text (with repeats).
    pub length: u32,
}

/// The hash under which a normalized term is stored: the first 8 bytes of
/// its SHA-256, big-endian.
pub fn term_hash(normalized: &str) -> u64 {
    let digest = Sha256::digest(normalized.as_bytes());
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// Tokenizes and normalizes `text` with charabia (see the module docs) and
/// counts its terms. Separators and punctuation are not terms.
pub fn analyze(text: &str) -> Analyzed {
    use charabia::Tokenize;
    let mut counts: HashMap<u64, u16> = HashMap::new();
    let mut length = 0u32;
    for token in text.tokenize() {
        if !token.is_word() || token.lemma().is_empty() {
            continue;
        }
        length = length.saturating_add(1);
        let tf = counts.entry(term_hash(token.lemma())).or_default();
        *tf = tf.saturating_add(1);
    }
    let mut terms: Vec<(u64, u16)> = counts.into_iter().collect();
    terms.sort_unstable();
    Analyzed { terms, length }
}

/// The distinct term hashes of a query, at most [`MAX_QUERY_TERMS`], in the
/// order they first occur.
pub fn query_terms(query: &str) -> Vec<u64> {
    use charabia::Tokenize;
    let mut terms = Vec::new();
    for token in query.tokenize() {
        if !token.is_word() || token.lemma().is_empty() {
            continue;
        }
        let h = term_hash(token.lemma());
        if !terms.contains(&h) {
            terms.push(h);
            if terms.len() == MAX_QUERY_TERMS {
                break;
            }
        }
    }
    terms
}

fn encode_terms(terms: &[(u64, u16)]) -> Vec<u8> {
    terms.iter().flat_map(|(h, _)| h.to_be_bytes()).collect()
}

fn decode_terms(blob: &[u8]) -> impl Iterator<Item = u64> + '_ {
    blob.chunks_exact(8)
        .map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes")))
}

/// What [`apply_sync`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Messages indexed for the first time.
    pub added: u64,
    /// Messages indexed again (edited, or replayed).
    pub replaced: u64,
    /// Messages removed from the index.
    pub removed: u64,
    /// Posting rows written.
    pub postings: u64,
}

/// Brings the index of the given messages in line with MariaDB, in one
/// transaction: each of `docs` (live messages) is indexed with its current
/// body, replacing what was indexed for it before; each of `gone`
/// (`(chat_id, number)` of messages no longer live) is removed. Idempotent:
/// applying the same call twice leaves the same index. The documents'
/// rows are locked first (`FOR UPDATE`), so two indexers applying the same
/// messages at once serialize (or one fails on a deadlock and its batch is
/// retried). Errors: MariaDB failed (nothing was changed).
pub async fn apply_sync(
    pool: &MySqlPool,
    docs: &[MessageDoc],
    gone: &[(u64, i64)],
) -> sqlx::Result<SyncReport> {
    let mut report = SyncReport::default();
    if docs.is_empty() && gone.is_empty() {
        return Ok(report);
    }
    let keys: Vec<(u64, i64)> = docs
        .iter()
        .map(|d| (d.chat_id, d.number))
        .chain(gone.iter().copied())
        .collect();
    // READ COMMITTED: no gap locks, so indexers writing other messages of
    // the same chats at once do not block or deadlock on the gaps between
    // their rows (the rows of the messages themselves stay locked).
    let mut conn = pool.acquire().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        .execute(&mut *conn)
        .await?;
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let old = lock_documents(&mut tx, &keys).await?;
    // Per chat: (application, change of documents, change of length).
    let mut stats: HashMap<u64, (u64, i64, i64)> = HashMap::new();
    let mut stale: Vec<(u64, i64, Vec<u64>)> = Vec::new();
    // Per (chat, term): the change of its document frequency.
    let mut df: HashMap<(u64, u64), i64> = HashMap::new();
    for (chat_id, number) in gone {
        if let Some((length, terms)) = old.get(&(*chat_id, *number)) {
            let terms: Vec<u64> = decode_terms(terms).collect();
            for h in &terms {
                *df.entry((*chat_id, *h)).or_default() -= 1;
            }
            stale.push((*chat_id, *number, terms));
            let s = stats.entry(*chat_id).or_insert((0, 0, 0));
            s.1 -= 1;
            s.2 -= i64::from(*length);
            report.removed += 1;
        }
    }
    let mut postings: Vec<(u64, u64, i64, u16, u32)> = Vec::new();
    let mut documents: Vec<(u64, i64, u32, Vec<u8>)> = Vec::with_capacity(docs.len());
    for doc in docs {
        let analyzed = analyze(&doc.body);
        let s = stats
            .entry(doc.chat_id)
            .or_insert((doc.application_id, 0, 0));
        s.0 = doc.application_id;
        match old.get(&(doc.chat_id, doc.number)) {
            Some((length, terms)) => {
                // Sorted: written from `Analyzed::terms`.
                let terms: Vec<u64> = decode_terms(terms).collect();
                for (h, _) in &analyzed.terms {
                    if terms.binary_search(h).is_err() {
                        *df.entry((doc.chat_id, *h)).or_default() += 1;
                    }
                }
                // Terms no longer in the body lose their postings; the rest
                // are overwritten below.
                let kept: Vec<u64> = terms
                    .into_iter()
                    .filter(|h| analyzed.terms.binary_search_by_key(h, |t| t.0).is_err())
                    .collect();
                for h in &kept {
                    *df.entry((doc.chat_id, *h)).or_default() -= 1;
                }
                if !kept.is_empty() {
                    stale.push((doc.chat_id, doc.number, kept));
                }
                s.2 += i64::from(analyzed.length) - i64::from(*length);
                report.replaced += 1;
            }
            None => {
                s.1 += 1;
                s.2 += i64::from(analyzed.length);
                report.added += 1;
                for (h, _) in &analyzed.terms {
                    *df.entry((doc.chat_id, *h)).or_default() += 1;
                }
            }
        }
        postings.extend(
            analyzed
                .terms
                .iter()
                .map(|&(h, tf)| (doc.chat_id, h, doc.number, tf, analyzed.length)),
        );
        documents.push((
            doc.chat_id,
            doc.number,
            analyzed.length,
            encode_terms(&analyzed.terms),
        ));
    }
    delete_postings(&mut tx, &stale).await?;
    report.postings = postings.len() as u64;
    // In key order: fewer page splits, and locks taken in one order.
    postings.sort_unstable();
    // Every value is an integer the service computed, so the rows are
    // written as SQL literals over the text protocol: a prepared statement
    // of 20,000 placeholders cost more to prepare and bind than to insert.
    for chunk in postings.chunks(ROWS_PER_INSERT) {
        use std::fmt::Write;
        let mut sql = String::with_capacity(64 + chunk.len() * 48);
        sql.push_str("INSERT INTO search_postings (chat_id, term, number, tf, length) VALUES ");
        for (i, (c, h, n, tf, len)) in chunk.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let _ = write!(sql, "{sep}({c},{h},{n},{tf},{len})");
        }
        sql.push_str(" ON DUPLICATE KEY UPDATE tf = VALUES(tf), length = VALUES(length)");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await?;
    }
    for chunk in documents.chunks(ROWS_PER_INSERT / 4) {
        let mut qb = QueryBuilder::<MySql>::new(
            "INSERT INTO search_documents (chat_id, number, length, terms) ",
        );
        qb.push_values(chunk, |mut b, (c, n, len, terms)| {
            b.push_bind(*c)
                .push_bind(*n)
                .push_bind(*len)
                .push_bind(terms.as_slice());
        });
        qb.push(" ON DUPLICATE KEY UPDATE length = VALUES(length), terms = VALUES(terms)");
        qb.build().execute(&mut *tx).await?;
    }
    // In key order, as the postings: two indexers lock the same rows in
    // one order.
    let mut df: Vec<((u64, u64), i64)> = df.into_iter().filter(|(_, d)| *d != 0).collect();
    df.sort_unstable();
    for chunk in df.chunks(ROWS_PER_INSERT) {
        use std::fmt::Write;
        let mut sql = String::with_capacity(64 + chunk.len() * 48);
        sql.push_str("INSERT INTO search_terms (chat_id, term, documents) VALUES ");
        for (i, ((c, h), d)) in chunk.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let _ = write!(sql, "{sep}({c},{h},{d})");
        }
        sql.push_str(" ON DUPLICATE KEY UPDATE documents = documents + VALUES(documents)");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await?;
    }
    let removed: Vec<(u64, i64)> = gone
        .iter()
        .filter(|k| old.contains_key(k))
        .copied()
        .collect();
    for chunk in removed.chunks(1000) {
        let mut qb = QueryBuilder::<MySql>::new("DELETE FROM search_documents WHERE ");
        crate::store::push_chat_numbers(&mut qb, "", chunk);
        qb.build().execute(&mut *tx).await?;
    }
    // By chat id: two indexers lock the chats' rows in the same order.
    let mut stats: Vec<(u64, u64, i64, i64)> = stats
        .into_iter()
        .filter(|(_, (_, d, l))| *d != 0 || *l != 0)
        .map(|(c, (a, d, l))| (c, a, d, l))
        .collect();
    stats.sort_unstable();
    for chunk in stats.chunks(1000) {
        let mut qb = QueryBuilder::<MySql>::new(
            "INSERT INTO search_chats (chat_id, application_id, documents, length) ",
        );
        qb.push_values(chunk, |mut b, (c, a, d, l)| {
            b.push_bind(*c).push_bind(*a).push_bind(*d).push_bind(*l);
        });
        qb.push(
            " ON DUPLICATE KEY UPDATE documents = documents + VALUES(documents), \
             length = length + VALUES(length)",
        );
        qb.build().execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(report)
}

/// The indexed length and term hashes of each of `keys` that is indexed,
/// with its row locked until the transaction ends.
async fn lock_documents(
    tx: &mut Transaction<'_, MySql>,
    keys: &[(u64, i64)],
) -> sqlx::Result<HashMap<(u64, i64), (u32, Vec<u8>)>> {
    let mut old = HashMap::new();
    for chunk in keys.chunks(1000) {
        let mut qb = QueryBuilder::<MySql>::new(
            "SELECT chat_id, number, length, terms FROM search_documents WHERE ",
        );
        crate::store::push_chat_numbers(&mut qb, "", chunk);
        qb.push(" FOR UPDATE");
        let rows: Vec<(u64, i64, u32, Vec<u8>)> = qb.build_query_as().fetch_all(&mut **tx).await?;
        old.extend(rows.into_iter().map(|(c, n, l, t)| ((c, n), (l, t))));
    }
    Ok(old)
}

/// Deletes the postings `(chat, number, terms)` of `stale`.
async fn delete_postings(
    tx: &mut Transaction<'_, MySql>,
    stale: &[(u64, i64, Vec<u64>)],
) -> sqlx::Result<()> {
    for (chat_id, number, terms) in stale {
        for chunk in terms.chunks(1000) {
            let mut qb = QueryBuilder::<MySql>::new("DELETE FROM search_postings WHERE chat_id = ");
            qb.push_bind(*chat_id).push(" AND term IN (");
            let mut sep = qb.separated(", ");
            for h in chunk {
                sep.push_bind(*h);
            }
            qb.push(") AND number = ").push_bind(*number);
            qb.build().execute(&mut **tx).await?;
        }
    }
    Ok(())
}

/// Removes chat `chat_id`'s whole index, in statements of at most
/// 10,000 rows (each committed, so a long removal that is
/// interrupted resumes where it stopped). Errors: MariaDB failed.
pub async fn delete_chat(pool: &MySqlPool, chat_id: u64) -> sqlx::Result<()> {
    for table in ["search_postings", "search_documents", "search_terms"] {
        loop {
            let sql = format!("DELETE FROM {table} WHERE chat_id = ? LIMIT {ROWS_PER_DELETE}");
            let done = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(chat_id)
                .execute(pool)
                .await?
                .rows_affected();
            if done < ROWS_PER_DELETE {
                break;
            }
        }
    }
    sqlx::query("DELETE FROM search_chats WHERE chat_id = ?")
        .bind(chat_id)
        .execute(pool)
        .await?;
    Ok(())
}

/// Removes the index of every chat of application `application_id`
/// ([`delete_chat`] for each). Errors: MariaDB failed.
pub async fn delete_application(pool: &MySqlPool, application_id: u64) -> sqlx::Result<()> {
    let chats: Vec<u64> =
        sqlx::query_scalar("SELECT chat_id FROM search_chats WHERE application_id = ?")
            .bind(application_id)
            .fetch_all(pool)
            .await?;
    for chat_id in chats {
        delete_chat(pool, chat_id).await?;
    }
    Ok(())
}

/// BM25 statistics a search ranks by, read once at the first page of a walk
/// and carried by its cursor ([`super::Cursor`]), so that every page of one
/// walk ranks by the same order while messages are created and deleted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    /// Indexed messages of the chat (BM25's N).
    pub documents: i64,
    /// Indexed messages holding each query term (its df), in the order of
    /// [`query_terms`].
    pub df: Vec<i64>,
}

/// Where a search of the term index starts.
#[derive(Debug, Clone, PartialEq)]
pub enum Start {
    /// Skip this many hits of the ranking (a `page`).
    Offset(usize),
    /// The hits ranked after the hit `(score, number)` under `stats` (a
    /// cursor).
    After {
        /// Score of the last hit already returned.
        score: f64,
        /// Its number.
        number: i64,
        /// The statistics of the walk.
        stats: Stats,
    },
}

/// One page of the term index: hits, and the statistics they were ranked by.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Found {
    /// `(number, score)`, best first, ties by number.
    pub hits: Vec<(i64, f64)>,
    /// The statistics ranked by (`None` when the query has no term or the
    /// chat no indexed message).
    pub stats: Option<Stats>,
}

/// BM25's idf of a term held by `df` of `documents` messages (the form that
/// stays positive: Robertson and Zaragoza 2009, eq. 3.3 plus one).
fn idf(documents: f64, df: f64) -> f64 {
    (1.0 + (documents - df + 0.5) / (df + 0.5)).ln()
}

// Top-k relies on a posting's contribution depending on its tf alone.
const _: () = assert!(B == 0.0, "top_k assumes BM25 with b = 0");

/// BM25 contribution of one term of weight `idf` occurring `tf` times (with
/// `b` = 0 the message's length does not count). The same expression, in
/// the same order, as [`rank`], so that scores are equal bit for bit.
fn weight(idf: f64, tf: u16) -> f64 {
    let tf = f64::from(tf);
    let norm = K1 * (1.0 - B + B);
    idf * tf * (K1 + 1.0) / (tf + norm)
}

/// Ranking order: higher score first, then lower number.
fn by_rank(a: &(i64, f64), b: &(i64, f64)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Sorted and random access to one chat's postings (MariaDB in
/// production, a vector in tests), for [`top_k`].
pub trait Postings {
    /// Up to `limit` postings `(tf, number)` of `term`, in impact order
    /// (`tf` descending, then `number` ascending), strictly after the
    /// posting `after` of that order (from the first when `None`).
    fn sorted(
        &mut self,
        term: u64,
        after: Option<(u16, i64)>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<(u16, i64)>, super::SearchError>> + Send;

    /// The postings `(term, number, tf)` of `terms` in the messages
    /// `numbers`, in any order (a message that lacks a term has none).
    fn lookup(
        &mut self,
        terms: &[u64],
        numbers: &[i64],
    ) -> impl Future<Output = Result<Vec<(u64, i64, u16)>, super::SearchError>> + Send;
}

/// Postings read per term in the first round of [`top_k`], at least.
const FIRST_BATCH: usize = 32;
/// Postings read per term in one round of [`top_k`], at most (beyond `k`).
const MAX_BATCH: usize = 4096;

/// The first `k` hits of the ranking of [`rank`] (the same scores, bit for
/// bit, and the same order, ties by number) that come after `after`
/// (`(score, number)`, exclusive), reading only as many postings as needed:
/// Fagin's threshold algorithm (Fagin, Lotem and Naor, "Optimal Aggregation
/// Algorithms for Middleware", PODS 2001) over impact-ordered lists.
///
/// Each round reads the next batch of each term's postings in impact order
/// (sorted access, [`Postings::sorted`]), scores every message seen for the
/// first time from all its postings of the query (random access,
/// [`Postings::lookup`]), and keeps the best `k`. A message not seen yet
/// holds each term at most at the tf where that term's list stopped, so its
/// score is at most the threshold `T`, the sum of those contributions; and
/// it equals `T` only if it holds every unfinished term at exactly that tf,
/// after the list's position, so with a number above every list's last.
/// The search stops when the `k`-th best ranks before any such message
/// (at or above `T`: at `T` it holds every unfinished term at exactly the
/// list's last tf, and was seen in one of those lists, so its number is
/// below the tying one's), or when every list is read. Batches double each round (from
/// `max(k, 32)` to `max(k, 4096)`).
///
/// One term is one list: the first batch is the answer. With a cursor on
/// one term, the list starts right after the cursor's posting, so a deep
/// page costs what the first does. Errors: the source's.
pub async fn top_k<P: Postings>(
    src: &mut P,
    terms: &[u64],
    stats: &Stats,
    after: Option<(f64, i64)>,
    k: usize,
) -> Result<Vec<(i64, f64)>, super::SearchError> {
    top_k_batched(src, terms, stats, after, k, k.max(FIRST_BATCH)).await
}

/// [`top_k`] with a first batch of `first` postings per term (the tests
/// take it small, so that every search runs many rounds).
async fn top_k_batched<P: Postings>(
    src: &mut P,
    terms: &[u64],
    stats: &Stats,
    after: Option<(f64, i64)>,
    k: usize,
    first: usize,
) -> Result<Vec<(i64, f64)>, super::SearchError> {
    if k == 0 || terms.is_empty() || stats.documents <= 0 || stats.df.len() != terms.len() {
        return Ok(Vec::new());
    }
    let documents = stats.documents as f64;
    let idfs: Vec<f64> = stats.df.iter().map(|&n| idf(documents, n as f64)).collect();
    let bound: f64 = idfs.iter().map(|i| i * (K1 + 1.0)).sum();
    // Lists in ascending term order, the order [`rank`] sums a message's
    // contributions in (it reads postings in key order).
    let mut order: Vec<usize> = (0..terms.len()).collect();
    order.sort_by_key(|&i| terms[i]);
    let list_terms: Vec<u64> = order.iter().map(|&i| terms[i]).collect();
    let list_idf: Vec<f64> = order.iter().map(|&i| idfs[i]).collect();
    let score = |tfs: &[u16]| -> f64 {
        let mut s = 0.0;
        for (j, &tf) in tfs.iter().enumerate() {
            if tf > 0 {
                s += weight(list_idf[j], tf);
            }
        }
        s / bound
    };
    let is_after = |hit: &(i64, f64)| match after {
        Some((s, n)) => by_rank(hit, &(n, s)) == std::cmp::Ordering::Greater,
        None => true,
    };
    let m = list_terms.len();
    let mut pos: Vec<Option<(u16, i64)>> = vec![None; m];
    // One term and a cursor: its list in impact order is the ranking, so
    // start right after the cursor's posting (when its score is one of
    // this term's: a cursor of this walk).
    if m == 1
        && let Some((s, n)) = after
    {
        let t = s * bound / list_idf[0];
        // weight / (idf (k1 + 1)) = tf / (tf + k1): tf = k1 t / (1 - t).
        let guess = (K1 * t / (1.0 - t)).round().clamp(1.0, f64::from(u16::MAX)) as u16;
        pos[0] = (guess.saturating_sub(2)..=guess.saturating_add(2))
            .find(|&tf| tf > 0 && score(&[tf]).to_bits() == s.to_bits())
            .map(|tf| (tf, n));
    }
    let mut done = vec![false; m];
    let mut seen: std::collections::HashSet<i64> = std::collections::HashSet::new();
    let mut best: Vec<(i64, f64)> = Vec::new();
    let mut batch = first.max(1);
    loop {
        let mut fresh: Vec<i64> = Vec::new();
        let mut single: HashMap<i64, u16> = HashMap::new();
        for j in 0..m {
            if done[j] {
                continue;
            }
            let got = src.sorted(list_terms[j], pos[j], batch).await?;
            if got.len() < batch {
                done[j] = true;
            }
            if let Some(&last) = got.last() {
                pos[j] = Some(last);
            }
            for (tf, n) in got {
                if seen.insert(n) {
                    fresh.push(n);
                    if m == 1 {
                        single.insert(n, tf);
                    }
                }
            }
        }
        let mut tfs: HashMap<i64, Vec<u16>> = HashMap::with_capacity(fresh.len());
        if m == 1 {
            tfs.extend(single.into_iter().map(|(n, tf)| (n, vec![tf])));
        } else {
            for chunk in fresh.chunks(1000) {
                for (h, n, tf) in src.lookup(&list_terms, chunk).await? {
                    if let Ok(j) = list_terms.binary_search(&h) {
                        tfs.entry(n).or_insert_with(|| vec![0; m])[j] = tf;
                    }
                }
            }
        }
        for n in fresh {
            let Some(v) = tfs.get(&n) else { continue };
            let hit = (n, score(v));
            if !is_after(&hit) {
                continue;
            }
            if best.len() == k && by_rank(&hit, &best[k - 1]) != std::cmp::Ordering::Less {
                continue;
            }
            let at = best.partition_point(|b| by_rank(b, &hit) == std::cmp::Ordering::Less);
            best.insert(at, hit);
            best.truncate(k);
        }
        if done.iter().all(|d| *d) {
            break;
        }
        if best.len() == k {
            let mut threshold = 0.0;
            let mut highest = i64::MIN;
            for j in 0..m {
                if let (false, Some((tf, n))) = (done[j], pos[j]) {
                    threshold += weight(list_idf[j], tf);
                    highest = highest.max(n);
                }
            }
            let threshold = threshold / bound;
            // An unseen message scores at most `T`; one that ties holds
            // each unfinished term at its list's last tf, after that
            // list's last posting in impact order, so at a number above
            // `highest`. The k-th best ranks before it when it scores more,
            // or ties at a number at most `highest`. Otherwise read on: a
            // k-th best tied at `T` with a higher number (it scored `T`
            // from other terms' tfs, or from a finished list) would rank
            // after such a message (the proptest below found it).
            let (nk, sk) = best[k - 1];
            if sk > threshold || (sk == threshold && nk <= highest) {
                break;
            }
        }
        batch = (batch * 2).min(MAX_BATCH.max(k));
    }
    Ok(best)
}

/// [`Postings`] of one chat in MariaDB, each statement under what is left
/// of the search's time limit (`SET STATEMENT max_statement_time`): past
/// it, MariaDB interrupts the statement itself, so nothing goes on running.
struct SqlPostings<'c> {
    conn: &'c mut sqlx::MySqlConnection,
    chat_id: u64,
    deadline: tokio::time::Instant,
}

impl SqlPostings<'_> {
    /// The statement `sql` (integers the service computed, written as
    /// literals: no prepare and no parse per distinct list) under the time
    /// left. Errors: [`super::SearchError::TimedOut`] when none is left or
    /// MariaDB interrupted it; MariaDB failed.
    async fn run(&mut self, sql: &str) -> Result<Vec<sqlx::mysql::MySqlRow>, super::SearchError> {
        let left = self
            .deadline
            .checked_duration_since(tokio::time::Instant::now())
            .filter(|d| d.as_micros() >= 1000)
            .ok_or(super::SearchError::TimedOut)?;
        let sql = format!(
            "SET STATEMENT max_statement_time = {:.3} FOR {sql}",
            left.as_secs_f64()
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut *self.conn)
            .await
            .map_err(super::SearchError::from_sql)
    }

    /// [`Stats`] of `terms`: `None` when the chat has no indexed message.
    async fn stats(&mut self, terms: &[u64]) -> Result<Option<Stats>, super::SearchError> {
        use sqlx::Row;
        let chat = self.chat_id;
        let rows = self
            .run(&format!(
                "SELECT documents FROM search_chats WHERE chat_id = {chat}"
            ))
            .await?;
        let documents: i64 = match rows.first() {
            Some(r) => r.try_get(0)?,
            None => return Ok(None),
        };
        if documents <= 0 {
            return Ok(None);
        }
        let list = join(terms);
        let rows = self
            .run(&format!(
                "SELECT term, documents FROM search_terms WHERE chat_id = {chat} AND term IN ({list})"
            ))
            .await?;
        let mut df = vec![0i64; terms.len()];
        for r in rows {
            let (h, n): (u64, i64) = (r.try_get(0)?, r.try_get(1)?);
            if let Some(i) = terms.iter().position(|t| *t == h) {
                df[i] = n.max(0);
            }
        }
        Ok(Some(Stats { documents, df }))
    }
}

fn join<T: std::fmt::Display>(values: &[T]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(values.len() * 21);
    for (i, v) in values.iter().enumerate() {
        let _ = write!(s, "{}{v}", if i == 0 { "" } else { "," });
    }
    s
}

impl Postings for SqlPostings<'_> {
    async fn sorted(
        &mut self,
        term: u64,
        after: Option<(u16, i64)>,
        limit: usize,
    ) -> Result<Vec<(u16, i64)>, super::SearchError> {
        use sqlx::Row;
        let chat = self.chat_id;
        let from = match after {
            Some((tf, n)) => format!(" AND (tf < {tf} OR (tf = {tf} AND number > {n}))"),
            None => String::new(),
        };
        let rows = self
            .run(&format!(
                "SELECT tf, number FROM search_postings FORCE INDEX (search_postings_impact) \
                 WHERE chat_id = {chat} AND term = {term}{from} \
                 ORDER BY tf DESC, number LIMIT {limit}"
            ))
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    async fn lookup(
        &mut self,
        terms: &[u64],
        numbers: &[i64],
    ) -> Result<Vec<(u64, i64, u16)>, super::SearchError> {
        use sqlx::Row;
        if numbers.is_empty() {
            return Ok(Vec::new());
        }
        let chat = self.chat_id;
        let rows = self
            .run(&format!(
                "SELECT term, number, tf FROM search_postings \
                 WHERE chat_id = {chat} AND term IN ({}) AND number IN ({})",
                join(terms),
                join(numbers)
            ))
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect()
    }
}

/// Up to `limit` hits of chat `chat_id` for `query` from `start` (see
/// [`Start`]), best first, ties by number, each with its score (see the
/// module docs), by [`top_k`]: a search reads about what its page needs,
/// not every posting of its terms. The statistics are read once per walk
/// (at a page, not after a cursor). Every statement runs within what is
/// left of `timeout` for the whole search. Errors:
/// [`super::SearchError::TimedOut`] past `timeout`; a cursor of another
/// query ([`super::SearchError::Cursor`]); MariaDB failed.
pub async fn search(
    pool: &MySqlPool,
    chat_id: u64,
    query: &str,
    start: Start,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<Found, super::SearchError> {
    let terms = query_terms(query);
    if terms.is_empty() || limit == 0 {
        return Ok(Found::default());
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut conn = tokio::time::timeout_at(deadline, pool.acquire())
        .await
        .map_err(|_| super::SearchError::TimedOut)??;
    let mut src = SqlPostings {
        conn: &mut conn,
        chat_id,
        deadline,
    };
    let (stats, after, skip) = match start {
        Start::Offset(skip) => match src.stats(&terms).await? {
            Some(stats) => (stats, None, skip),
            None => return Ok(Found::default()),
        },
        Start::After {
            score,
            number,
            stats,
        } => {
            if stats.df.len() != terms.len() {
                return Err(super::SearchError::Cursor(
                    "the cursor belongs to another query",
                ));
            }
            (stats, Some((score, number)), 0)
        }
    };
    let ranked = top_k(&mut src, &terms, &stats, after, skip.saturating_add(limit)).await?;
    Ok(Found {
        hits: ranked.into_iter().skip(skip).collect(),
        stats: Some(stats),
    })
}

/// The whole ranking of chat `chat_id` for `query`, as the term index
/// ranked before top-k (every posting of the query's terms read and
/// scored by [`rank`]): the oracle of the tests and the "before" of `bench
/// search-topk`. Errors: MariaDB failed.
pub async fn search_all(
    pool: &MySqlPool,
    chat_id: u64,
    query: &str,
) -> sqlx::Result<Vec<(i64, f64)>> {
    let terms = query_terms(query);
    if terms.is_empty() {
        return Ok(Vec::new());
    }
    let stats: Option<(i64, i64)> =
        sqlx::query_as("SELECT documents, length FROM search_chats WHERE chat_id = ?")
            .bind(chat_id)
            .fetch_optional(pool)
            .await?;
    let Some((documents, length)) = stats.filter(|(d, _)| *d > 0) else {
        return Ok(Vec::new());
    };
    let mut qb = QueryBuilder::<MySql>::new(
        "SELECT term, number, tf, length FROM search_postings WHERE chat_id = ",
    );
    qb.push_bind(chat_id).push(" AND term IN (");
    let mut sep = qb.separated(", ");
    for h in &terms {
        sep.push_bind(*h);
    }
    qb.push(") ORDER BY term, number");
    let postings: Vec<(u64, i64, u16, u32)> = qb.build_query_as().fetch_all(pool).await?;
    Ok(rank(&terms, documents as f64, length as f64, &postings))
}

/// Scores `postings` (`(term, number, tf, length)`) of a chat of
/// `documents` messages of total `length` terms for the query `terms`, best
/// first, ties by number (see the module docs).
pub fn rank(
    terms: &[u64],
    documents: f64,
    length: f64,
    postings: &[(u64, i64, u16, u32)],
) -> Vec<(i64, f64)> {
    let mut df: HashMap<u64, f64> = HashMap::new();
    for (h, ..) in postings {
        *df.entry(*h).or_default() += 1.0;
    }
    let idf = |h: &u64| {
        let n = df.get(h).copied().unwrap_or(0.0);
        (1.0 + (documents - n + 0.5) / (n + 0.5)).ln()
    };
    let bound: f64 = terms.iter().map(|h| idf(h) * (K1 + 1.0)).sum();
    let average = (length / documents).max(1.0);
    let mut scores: HashMap<i64, f64> = HashMap::new();
    for (h, number, tf, len) in postings {
        let tf = f64::from(*tf);
        let norm = K1 * (1.0 - B + B * f64::from(*len) / average);
        *scores.entry(*number).or_default() += idf(h) * tf * (K1 + 1.0) / (tf + norm);
    }
    let mut ranked: Vec<(i64, f64)> = scores
        .into_iter()
        .map(|(n, s)| (n, if bound > 0.0 { s / bound } else { 0.0 }))
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked
}

/// Whether messages are stored but none is indexed (after an upgrade from
/// the FULLTEXT backend: `chat-api reindex` builds the index). Errors:
/// MariaDB failed.
pub async fn needs_reindex(pool: &MySqlPool) -> sqlx::Result<bool> {
    let (messages, indexed): (i64, i64) = sqlx::query_as(
        "SELECT EXISTS(SELECT 1 FROM messages WHERE deleted_at IS NULL), \
         EXISTS(SELECT 1 FROM search_documents)",
    )
    .fetch_one(pool)
    .await?;
    Ok(messages == 1 && indexed == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn analysis_normalizes_and_counts() {
        let a = analyze("Hello, hello WORLD! Café");
        assert_eq!(a.length, 4);
        assert!(a.terms.contains(&(term_hash("hello"), 2)));
        assert!(a.terms.contains(&(term_hash("world"), 1)));
        assert!(a.terms.contains(&(term_hash("cafe"), 1)));
        assert_eq!(query_terms("HELLO hello"), vec![term_hash("hello")]);
    }

    #[test]
    fn chinese_is_segmented_into_words() {
        let a = analyze("我们在北京的天安门广场");
        assert!(a.length >= 5, "{a:?}");
        assert_eq!(query_terms("北京").len(), 1);
        let beijing = query_terms("北京")[0];
        assert!(a.terms.iter().any(|(h, _)| *h == beijing));
    }

    /// Postings in memory, with the semantics of the SQL of
    /// [`SqlPostings`], for [`top_k`] against the oracle [`rank`].
    struct Memory {
        /// `(term, number, tf)`.
        postings: Vec<(u64, i64, u16)>,
        /// Postings read by sorted access.
        read: usize,
    }

    impl Postings for Memory {
        async fn sorted(
            &mut self,
            term: u64,
            after: Option<(u16, i64)>,
            limit: usize,
        ) -> Result<Vec<(u16, i64)>, crate::store::search::SearchError> {
            let mut list: Vec<(u16, i64)> = self
                .postings
                .iter()
                .filter(|p| p.0 == term)
                .map(|p| (p.2, p.1))
                .collect();
            list.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            let list: Vec<(u16, i64)> = list
                .into_iter()
                .filter(|(tf, n)| match after {
                    Some((atf, an)) => *tf < atf || (*tf == atf && *n > an),
                    None => true,
                })
                .take(limit)
                .collect();
            self.read += list.len();
            Ok(list)
        }

        async fn lookup(
            &mut self,
            terms: &[u64],
            numbers: &[i64],
        ) -> Result<Vec<(u64, i64, u16)>, crate::store::search::SearchError> {
            Ok(self
                .postings
                .iter()
                .filter(|p| terms.contains(&p.0) && numbers.contains(&p.1))
                .copied()
                .collect())
        }
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
            .block_on(f)
    }

    /// A chat: for each message, the tf (0 = absent) of each vocabulary
    /// word; tf 1 most of the time, so that scores tie often.
    fn chats() -> impl proptest::strategy::Strategy<Value = (usize, Vec<Vec<u16>>)> {
        use proptest::prelude::*;
        (1usize..7).prop_flat_map(|words| {
            let tf = prop_oneof![6 => Just(0u16), 6 => Just(1u16), 1 => 2u16..4, 1 => Just(9u16)];
            (
                Just(words),
                prop::collection::vec(prop::collection::vec(tf, words), 1..200),
            )
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(300))]

        /// Top-k equals today's full ranking ([`rank`], the oracle): the
        /// same first pages, ties included, score for score (bit for bit),
        /// by offset and by cursor walks, for any page size.
        #[test]
        fn top_k_is_the_full_ranking(
            (words, chat) in chats(),
            query_mask in 1u32..64,
            extra_documents in 0usize..50,
            k in 1usize..25,
            first in 1usize..40,
        ) {
            let vocabulary: Vec<u64> = (0..words).map(|w| term_hash(&format!("w{w}"))).collect();
            // Query words, in an order of their own, and one no message has.
            let mut query: Vec<u64> = (0..6)
                .filter(|w| query_mask & (1 << w) != 0)
                .map(|w| term_hash(&format!("w{w}")))
                .collect();
            query.reverse();
            let mut postings: Vec<(u64, i64, u16, u32)> = Vec::new();
            for (i, tfs) in chat.iter().enumerate() {
                for (w, &tf) in tfs.iter().enumerate() {
                    if tf > 0 {
                        postings.push((vocabulary[w], i as i64 + 1, tf, 14));
                    }
                }
            }
            // Key order, as MariaDB returns them to the oracle.
            postings.sort_unstable_by_key(|p| (p.0, p.1));
            let documents = (chat.len() + extra_documents) as i64;
            let mut relevant: Vec<(u64, i64, u16, u32)> =
                postings.iter().filter(|p| query.contains(&p.0)).copied().collect();
            relevant.sort_unstable_by_key(|p| (p.0, p.1));
            let oracle = rank(&query, documents as f64, documents as f64 * 14.0, &relevant);
            let stats = Stats {
                documents,
                df: query
                    .iter()
                    .map(|h| relevant.iter().filter(|p| p.0 == *h).count() as i64)
                    .collect(),
            };
            let mut memory = Memory {
                postings: postings.iter().map(|p| (p.0, p.1, p.2)).collect(),
                read: 0,
            };
            let bits = |v: &[(i64, f64)]| v.iter().map(|(n, s)| (*n, s.to_bits())).collect::<Vec<_>>();
            // By offset: pages 1 to 3.
            for page in 0..3 {
                let got = block_on(top_k_batched(&mut memory, &query, &stats, None, (page + 1) * k, first)).unwrap();
                let want: Vec<(i64, f64)> = oracle.iter().take((page + 1) * k).copied().collect();
                proptest::prop_assert_eq!(bits(&got), bits(&want), "page {} of {}", page + 1, k);
            }
            // By cursor: the whole walk, page after page.
            let mut walk: Vec<(i64, f64)> = Vec::new();
            loop {
                let after = walk.last().map(|&(n, s)| (s, n));
                let got = block_on(top_k_batched(&mut memory, &query, &stats, after, k, first)).unwrap();
                let last = got.len() < k;
                walk.extend(got);
                if last || walk.len() > oracle.len() {
                    break;
                }
            }
            proptest::prop_assert_eq!(bits(&walk), bits(&oracle));
        }
    }

    /// A common word's first page reads about a page of postings, not the
    /// word's list (the point of top-k).
    #[test]
    fn a_common_word_reads_about_one_page() {
        let (a, b) = (term_hash("a"), term_hash("b"));
        let mut postings = Vec::new();
        for n in 1..=10_000i64 {
            postings.push((a, n, 1));
            if n % 10 == 0 {
                postings.push((b, n, 1));
            }
        }
        let stats = Stats {
            documents: 10_000,
            df: vec![10_000, 1_000],
        };
        let mut memory = Memory { postings, read: 0 };
        let one = Stats {
            documents: 10_000,
            df: vec![10_000],
        };
        let got = block_on(top_k(&mut memory, &[a], &one, None, 21)).unwrap();
        assert_eq!(got.len(), 21);
        assert!(memory.read <= 32, "read {}", memory.read);
        memory.read = 0;
        let got = block_on(top_k(&mut memory, &[a, b], &stats, None, 21)).unwrap();
        assert_eq!(got[0].0, 10, "both words first: {got:?}");
        assert!(memory.read <= 200, "read {}", memory.read);
    }

    #[test]
    fn scores_are_between_0_and_1_and_best_first() {
        let (a, b) = (term_hash("a"), term_hash("b"));
        let postings = [(a, 1, 1, 10), (b, 1, 1, 10), (a, 2, 1, 10), (a, 3, 3, 10)];
        let ranked = rank(&[a, b], 10.0, 100.0, &postings);
        assert_eq!(ranked[0].0, 1, "both terms beat one: {ranked:?}");
        assert_eq!(ranked[1].0, 3, "more occurrences beat fewer");
        assert!(ranked.iter().all(|(_, s)| (0.0..1.0).contains(s)));
    }
}
