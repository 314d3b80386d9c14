//! Full-text search of messages within one chat, with two backends:
//!
//! - [`meili`]: Meilisearch (when `MEILI_URL` is set): typo tolerance, prefix
//!   search, any script. Documents are indexed after their batch is committed
//!   to MariaDB, through a durable queue in Redis (see
//!   [`crate::jobs::indexer`]), so results lag the database by about a second
//!   while Meilisearch is up, and by the outage while it is not.
//! - [`database`]: MariaDB's InnoDB FULLTEXT index, queried with
//!   `MATCH … AGAINST` in natural-language mode: words of at least 3
//!   characters (`innodb_ft_min_token_size`), no stopwords, no typo
//!   tolerance, and words split on spaces and punctuation only (so CJK text
//!   matches only whole space-delimited runs of 3 or more characters).
//!
//! Either way the hits are read back from MariaDB by number, so a result is
//! always the stored, live message: never one of another chat, never a
//! deleted one, never a stale body.

pub mod database;
pub mod meili;

use sqlx::MySqlPool;

use crate::domain::Page;
use crate::store::messages::MessageRow;

/// A search hit: the stored message and its relevance (higher is better;
/// the scale depends on the backend, see [`database`] and [`meili`]).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ScoredRow {
    /// The message as stored.
    #[sqlx(flatten)]
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
    /// MariaDB FULLTEXT.
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

    /// Whether documents must be sent to an external index.
    pub fn meili(&self) -> Option<&meili::MeiliSearch> {
        match self {
            SearchBackend::Meili(m, _) => Some(m),
            SearchBackend::Database(_) => None,
        }
    }

    /// One page (fetched with `LIMIT per_page + 1`) of the live messages of
    /// chat `chat_id` that match `query`, best match first, with their
    /// scores. Errors: the engine or MariaDB unavailable.
    pub async fn search(
        &self,
        chat_id: u64,
        query: &str,
        page: Page,
    ) -> Result<Vec<ScoredRow>, SearchError> {
        match self {
            SearchBackend::Database(pool) => {
                Ok(database::search(pool, chat_id, query, page).await?)
            }
            SearchBackend::Meili(m, pool) => {
                let hits = m.search(chat_id, query, page).await?;
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
    }
}
