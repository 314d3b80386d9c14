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
}

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

    /// One page (fetched with `LIMIT per_page + 1`) of the live messages of
    /// chat `chat_id` that match `query`, best match first, with their
    /// scores; the term index and the hits are read from `read` (the
    /// primary, or a replica that has the chat's last write, see
    /// [`crate::store::replicas`]). Errors: the engine or MariaDB unavailable.
    pub async fn search(
        &self,
        read: &MySqlPool,
        chat_id: u64,
        query: &str,
        page: Page,
    ) -> Result<Vec<ScoredRow>, SearchError> {
        let (hits, pool) = match self {
            SearchBackend::Database(_) => (terms::search(read, chat_id, query, page).await?, read),
            SearchBackend::Meili(m, _) => (m.search(chat_id, query, page).await?, read),
        };
        let numbers: Vec<i64> = hits.iter().map(|&(n, _)| n).collect();
        let scores: std::collections::HashMap<i64, f64> = hits.into_iter().collect();
        let rows = crate::store::messages::find_many_live(pool, chat_id, &numbers).await?;
        Ok(rows
            .into_iter()
            .map(|row| ScoredRow {
                score: scores.get(&row.number).copied().unwrap_or(0.0),
                row,
            })
            .collect())
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
