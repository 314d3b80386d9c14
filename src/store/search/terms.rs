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

use std::collections::HashMap;

use sha2::{Digest, Sha256};
use sqlx::{MySql, MySqlPool, QueryBuilder, Transaction};

use super::MessageDoc;
use crate::domain::Page;

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
    for (chat_id, number) in gone {
        if let Some((length, terms)) = old.get(&(*chat_id, *number)) {
            stale.push((*chat_id, *number, decode_terms(terms).collect()));
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
                let terms: Vec<u64> = decode_terms(terms).collect();
                // Terms no longer in the body lose their postings; the rest
                // are overwritten below.
                let kept: Vec<u64> = terms
                    .into_iter()
                    .filter(|h| analyzed.terms.binary_search_by_key(h, |t| t.0).is_err())
                    .collect();
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
    for table in ["search_postings", "search_documents"] {
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

/// Numbers of the indexed messages of chat `chat_id` that hold at least one
/// term of `query`, best first (ties by number), each with its score (see
/// the module docs): one page, fetched with `LIMIT per_page + 1`. Reads the
/// chat's statistics row and its postings of the query's terms, nothing of
/// other chats. Errors: MariaDB failed.
pub async fn search(
    pool: &MySqlPool,
    chat_id: u64,
    query: &str,
    page: Page,
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
    qb.push(")");
    let postings: Vec<(u64, i64, u16, u32)> = qb.build_query_as().fetch_all(pool).await?;
    let ranked = rank(&terms, documents as f64, length as f64, &postings);
    let start = (page.offset().max(0) as usize).min(ranked.len());
    let end = (start + page.limit_plus_one().max(0) as usize).min(ranked.len());
    Ok(ranked[start..end].to_vec())
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
