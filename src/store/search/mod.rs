//! Full-text search of messages within one chat, with two backends:
//!
//! - [`terms`] (the default, `MEILI_URL` unset): a term index scoped by chat
//!   in MariaDB, BM25-ranked, tokenized by charabia (CJK included).
//! - [`meili`]: Meilisearch (when `MEILI_URL` is set): typo tolerance, prefix
//!   search, ranking rules.
//!
//! Both are written the same way, off the flush path: after a message batch
//! is committed to MariaDB, its acknowledgement queues an [`IndexOp`] in a
//! durable Redis list, which the search indexer ([`crate::jobs::indexer`])
//! applies. So results lag the database by about a second while the engine
//! keeps up (`chat_search_lag_seconds` in `/metrics`), and the flush never
//! waits for the index.
//!
//! Either way the hits are read back from MariaDB by number, so a result is
//! always the stored, live message: never one of another chat, never a
//! deleted one, never a stale body.

pub mod meili;
pub mod terms;

use chrono::NaiveDateTime;
use serde::{Deserialize, Serialize};
use sqlx::MySqlPool;

use crate::domain::Page;
use crate::store::messages::MessageRow;

/// One indexed message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageDoc {
    /// `{chat_id}-{number}`: unique, and derived from the row's unique key.
    pub id: String,
    /// `applications.id` (for deleting an application's documents).
    pub application_id: u64,
    /// `chats.id` (the search scope).
    pub chat_id: u64,
    /// Number within the chat.
    pub number: i64,
    /// The body.
    pub body: String,
    /// When the message was created or last edited (UTC), as read from
    /// MariaDB; not sent to Meilisearch. The indexer reports the search lag
    /// from it.
    #[serde(skip)]
    pub changed_at: Option<chrono::NaiveDateTime>,
}

impl MessageDoc {
    /// The document of message `number` of chat `chat_id`.
    pub fn new(application_id: u64, chat_id: u64, number: i64, body: String) -> Self {
        Self {
            id: doc_id(chat_id, number),
            application_id,
            chat_id,
            number,
            body,
            changed_at: None,
        }
    }
}

/// Document id of message `number` of chat `chat_id`.
pub fn doc_id(chat_id: u64, number: i64) -> String {
    format!("{chat_id}-{number}")
}

/// A change to the index, queued durably in Redis (`pending:search`) and
/// applied by the indexer ([`crate::jobs::indexer`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum IndexOp {
    /// Bring these messages, given as `(chat_id, number)`, in line with
    /// MariaDB: the indexer reads them at apply time, replaces the live ones
    /// (one add_or_replace) and deletes the rest. Reading at apply time makes
    /// the order of ops irrelevant: the index always converges to the
    /// database. Queued once per flushed batch, and by each edit and delete.
    Sync {
        /// `(chat_id, number)` of each message.
        messages: Vec<(u64, i64)>,
    },
    /// Delete every document of a chat.
    DeleteChat {
        /// `chats.id`
        chat_id: u64,
    },
    /// Delete every document of an application.
    DeleteApplication {
        /// `applications.id`
        application_id: u64,
    },
}

/// A search hit: the stored message and its relevance (0 to 1, higher is
/// better; see [`terms`] and [`meili`]).
#[derive(Debug, Clone)]
pub struct ScoredRow {
    /// The message as stored.
    pub row: MessageRow,
    /// The engine's relevance score.
    pub score: f64,
}

/// Longest accepted query, in bytes.
pub const MAX_QUERY_BYTES: usize = 512;

/// Why a search failed.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// The search engine could not be reached or answered with an error.
    #[error("search engine unavailable: {0}")]
    Unavailable(String),
    /// MariaDB failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The search ran past its time limit (`SEARCH_TIMEOUT_MS`); MariaDB
    /// interrupted its statement (`max_statement_time`), so nothing of it
    /// goes on running. Answered 503 with `Retry-After`.
    #[error("the search ran past its time limit")]
    TimedOut,
    /// The cursor (`after`) is not one of this query's walks, or not a
    /// cursor at all. Answered 422.
    #[error("{0}")]
    Cursor(&'static str),
}

impl SearchError {
    /// `e`, or [`SearchError::TimedOut`] when it is MariaDB's
    /// `max_statement_time` interruption (error 1969; 3024 is MySQL's).
    pub fn from_sql(e: sqlx::Error) -> Self {
        let interrupted = e
            .as_database_error()
            .and_then(|d| d.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>())
            .is_some_and(|m| matches!(m.number(), 1969 | 3024));
        if interrupted {
            Self::TimedOut
        } else {
            Self::Database(e)
        }
    }
}

/// A position in one walk through a search's ranking, handed to clients as
/// an opaque string (`meta.next_cursor`, sent back as `after`): the last
/// hit returned, and what the walk ranks by, so that its pages neither
/// repeat nor skip a hit while messages are created and deleted (see
/// docs/search.md). Encoded as URL-safe base64 of a small JSON object; a
/// forged one can only misplace its own walk in its own chat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    /// The page this cursor opens (from 2).
    #[serde(rename = "p")]
    pub page: u32,
    /// Hits returned before that page.
    #[serde(rename = "o")]
    pub offset: u64,
    /// Score of the last hit returned (as its bits: a walk compares scores
    /// exactly).
    #[serde(rename = "s", with = "f64_bits")]
    pub score: f64,
    /// Its number.
    #[serde(rename = "n")]
    pub number: i64,
    /// [`query_fingerprint`] of the query the walk is for.
    #[serde(rename = "q")]
    pub query: u64,
    /// The term index's statistics of the walk (`None` with Meilisearch,
    /// whose ranking scores do not depend on the rest of the chat).
    #[serde(rename = "t", default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<terms::Stats>,
}

/// An `f64` (de)serialized as its IEEE 754 bits, exactly.
mod f64_bits {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(v.to_bits())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        u64::deserialize(d).map(f64::from_bits)
    }
}

/// Longest accepted cursor, in bytes.
pub const MAX_CURSOR_BYTES: usize = 2048;

impl Cursor {
    /// The opaque string form.
    pub fn encode(&self) -> String {
        use base64::Engine;
        let json = serde_json::to_vec(self).expect("a cursor serializes");
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    /// Reads a string made by [`Cursor::encode`]. Errors (a message for a
    /// 422): too long, not base64, not a cursor.
    pub fn decode(text: &str) -> Result<Self, &'static str> {
        use base64::Engine;
        if text.len() > MAX_CURSOR_BYTES {
            return Err("after is longer than any cursor");
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .map_err(
                |_| "after is not a cursor of this API (give meta.next_cursor as it was sent)",
            )?;
        let cursor: Cursor = serde_json::from_slice(&bytes).map_err(
            |_| "after is not a cursor of this API (give meta.next_cursor as it was sent)",
        )?;
        if cursor.page < 2 || !cursor.score.is_finite() {
            return Err("after is not a cursor of this API (give meta.next_cursor as it was sent)");
        }
        Ok(cursor)
    }
}

/// The query's fingerprint in a [`Cursor`]: a cursor serves only the query
/// it was made for.
pub fn query_fingerprint(query: &str) -> u64 {
    terms::term_hash(query)
}

/// Which hits a search returns.
#[derive(Debug, Clone)]
pub enum Window {
    /// A page by number (`page`, `per_page`).
    Page(Page),
    /// The page after a cursor, of `per_page` hits.
    After(Cursor, u32),
}

impl Window {
    /// Hits per page.
    pub fn per_page(&self) -> u32 {
        match self {
            Window::Page(p) => p.per_page,
            Window::After(_, n) => *n,
        }
    }

    /// The page number, from 1.
    pub fn page(&self) -> u32 {
        match self {
            Window::Page(p) => p.page,
            Window::After(c, _) => c.page,
        }
    }

    /// Hits before this page.
    pub fn offset(&self) -> u64 {
        match self {
            Window::Page(p) => p.offset().max(0) as u64,
            Window::After(c, _) => c.offset,
        }
    }
}

/// One page of search results.
#[derive(Debug, Clone)]
pub struct SearchPage {
    /// The hits of the page, at most `per_page`, as stored (a hit whose
    /// message went since it was indexed is left out).
    pub rows: Vec<ScoredRow>,
    /// Whether hits follow this page.
    pub more: bool,
    /// The cursor of the next page, when hits follow.
    pub next: Option<Cursor>,
}

/// Times a page fetches the hits after the last one again, when hits of
/// messages deleted since they were indexed left it short.
const MAX_REFILLS: usize = 8;

/// Hits of Meilisearch re-read before a cursor's offset, so that a cursor
/// still finds its last hit after that many hits ranked before it were
/// created or deleted.
pub const MEILI_CURSOR_SLACK: usize = 50;

/// The configured backend.
#[derive(Clone)]
pub enum SearchBackend {
    /// The term index in MariaDB ([`terms`]).
    Database(MySqlPool),
    /// Meilisearch, with MariaDB to read hits back.
    Meili(meili::MeiliSearch, MySqlPool),
}

impl SearchBackend {
    /// `"database"` or `"meilisearch"` (for logs).
    pub fn name(&self) -> &'static str {
        match self {
            SearchBackend::Database(_) => "database",
            SearchBackend::Meili(..) => "meilisearch",
        }
    }

    /// One page (`window`) of the live messages of chat `chat_id` that
    /// match `query`, best match first, with their scores, and the cursor of
    /// the next page; the term index and the hits are read from `read` (the
    /// primary, or a replica that has the chat's last write, see
    /// [`crate::store::replicas`]). The term index reads about what the page
    /// needs ([`terms::top_k`]), each statement within what is left of
    /// `timeout`; Meilisearch's request is bounded by `timeout` too. A
    /// cursor of the term index carries the walk's statistics; one of
    /// Meilisearch its offset, and the page starts after its last hit when
    /// that is among the [`MEILI_CURSOR_SLACK`] hits before the offset or
    /// the page's (else at the offset). Errors: the engine or MariaDB
    /// unavailable; past `timeout` ([`SearchError::TimedOut`]); a cursor of
    /// another query or backend ([`SearchError::Cursor`]).
    pub async fn search(
        &self,
        read: &MySqlPool,
        chat_id: u64,
        query: &str,
        window: &Window,
        timeout: std::time::Duration,
    ) -> Result<SearchPage, SearchError> {
        let per_page = window.per_page() as usize;
        let fingerprint = query_fingerprint(query);
        if let Window::After(c, _) = window
            && c.query != fingerprint
        {
            return Err(SearchError::Cursor("the cursor belongs to another query"));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let left = || {
            deadline
                .checked_duration_since(tokio::time::Instant::now())
                .filter(|d| !d.is_zero())
                .ok_or(SearchError::TimedOut)
        };
        // `meili_next`: Meilisearch's offset right after the hits fetched.
        let (mut hits, stats, mut meili_next) = match (self, window) {
            (SearchBackend::Database(_), _) => {
                let start = match window {
                    Window::Page(p) => terms::Start::Offset(p.offset().max(0) as usize),
                    Window::After(c, _) => terms::Start::After {
                        score: c.score,
                        number: c.number,
                        stats: c.stats.clone().ok_or(SearchError::Cursor(
                            "the cursor was made by another search backend",
                        ))?,
                    },
                };
                let found =
                    terms::search(read, chat_id, query, start, per_page + 1, left()?).await?;
                (found.hits, found.stats, 0)
            }
            (SearchBackend::Meili(m, _), Window::Page(p)) => {
                let offset = p.offset().max(0) as usize;
                let hits =
                    tokio::time::timeout(left()?, m.search(chat_id, query, offset, per_page + 1))
                        .await
                        .map_err(|_| SearchError::TimedOut)??;
                let next = offset + hits.len();
                (hits, None, next)
            }
            (SearchBackend::Meili(m, _), Window::After(c, _)) => {
                if c.stats.is_some() {
                    return Err(SearchError::Cursor(
                        "the cursor was made by another search backend",
                    ));
                }
                let offset = usize::try_from(c.offset).unwrap_or(usize::MAX);
                let from = offset.saturating_sub(MEILI_CURSOR_SLACK);
                let wanted = (offset - from) + MEILI_CURSOR_SLACK + per_page + 1;
                let hits = tokio::time::timeout(left()?, m.search(chat_id, query, from, wanted))
                    .await
                    .map_err(|_| SearchError::TimedOut)??;
                let start = match hits.iter().position(|&(n, _)| n == c.number) {
                    Some(i) => i + 1,
                    None => offset - from,
                };
                let hits: Vec<(i64, f64)> =
                    hits.into_iter().skip(start).take(per_page + 1).collect();
                let next = from + start + hits.len();
                (hits, None, next)
            }
        };
        // The hits of up to `per_page + 1` live messages, in ranking order:
        // a hit whose message went since it was indexed (its delete not
        // applied to the index yet) is left out, and the hits after it are
        // fetched in its place, so that a walk does not end early.
        let mut rows: Vec<ScoredRow> = Vec::with_capacity(per_page + 1);
        for refill in 0.. {
            let want = per_page + 1 - rows.len();
            let exhausted = hits.len() < want;
            let last = hits.last().copied();
            let numbers: Vec<i64> = hits.iter().map(|&(n, _)| n).collect();
            let scores: std::collections::HashMap<i64, f64> = hits.into_iter().collect();
            rows.extend(
                crate::store::messages::find_many_live(read, chat_id, &numbers)
                    .await?
                    .into_iter()
                    .map(|row| ScoredRow {
                        score: scores.get(&row.number).copied().unwrap_or(0.0),
                        row,
                    }),
            );
            let Some((number, score)) = last else { break };
            if rows.len() > per_page || exhausted || refill == MAX_REFILLS {
                break;
            }
            let want = per_page + 1 - rows.len();
            hits = match (self, &stats) {
                (SearchBackend::Database(_), Some(stats)) => {
                    let start = terms::Start::After {
                        score,
                        number,
                        stats: stats.clone(),
                    };
                    terms::search(read, chat_id, query, start, want, left()?)
                        .await?
                        .hits
                }
                (SearchBackend::Database(_), None) => break,
                (SearchBackend::Meili(m, _), _) => {
                    let hits =
                        tokio::time::timeout(left()?, m.search(chat_id, query, meili_next, want))
                            .await
                            .map_err(|_| SearchError::TimedOut)??;
                    meili_next += hits.len();
                    hits
                }
            };
        }
        let more = rows.len() > per_page;
        rows.truncate(per_page);
        // The next page starts after the last hit returned.
        let next = match (more, rows.last()) {
            (true, Some(last)) => Some(Cursor {
                page: window.page() + 1,
                offset: window.offset() + per_page as u64,
                score: last.score,
                number: last.row.number,
                query: fingerprint,
                stats,
            }),
            _ => None,
        };
        Ok(SearchPage { rows, more, next })
    }
}

/// Search documents of the live messages among `keys` (`(chat_id, number)`),
/// with their application; keys of missing or deleted messages are left out.
pub async fn search_docs(pool: &MySqlPool, keys: &[(u64, i64)]) -> sqlx::Result<Vec<MessageDoc>> {
    let mut docs = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(1000) {
        let mut qb = sqlx::QueryBuilder::<sqlx::MySql>::new(
            "SELECT c.application_id, m.chat_id, m.number, m.body, m.updated_at FROM messages m JOIN chats c ON c.id = m.chat_id \
             WHERE m.deleted_at IS NULL AND c.deleted_at IS NULL AND ",
        );
        crate::store::push_chat_numbers(&mut qb, "m.", chunk);
        let rows: Vec<(u64, u64, i64, String, NaiveDateTime)> =
            qb.build_query_as().fetch_all(pool).await?;
        docs.extend(rows.into_iter().map(|(a, c, n, b, at)| {
            let mut doc = MessageDoc::new(a, c, n, b);
            doc.changed_at = Some(at);
            doc
        }));
    }
    Ok(docs)
}

/// Search documents of live messages with `id > after_id`, by id, at most
/// `limit`, with the last id seen (for `reindex`, a keyset scan).
pub async fn search_docs_after(
    pool: &MySqlPool,
    after_id: u64,
    limit: i64,
) -> sqlx::Result<(Vec<MessageDoc>, Option<u64>)> {
    let rows: Vec<(u64, u64, u64, i64, String)> = sqlx::query_as(
        "SELECT m.id, c.application_id, m.chat_id, m.number, m.body FROM messages m JOIN chats c ON c.id = m.chat_id \
         WHERE m.id > ? AND m.deleted_at IS NULL AND c.deleted_at IS NULL ORDER BY m.id LIMIT ?",
    )
    .bind(after_id)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let last = rows.last().map(|r| r.0);
    let docs = rows
        .into_iter()
        .map(|(_, a, c, n, b)| MessageDoc::new(a, c, n, b))
        .collect();
    Ok((docs, last))
}
