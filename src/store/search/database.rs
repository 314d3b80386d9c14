//! The MariaDB FULLTEXT backend: `MATCH … AGAINST` in natural-language mode,
//! scoped to one chat, ranked by relevance.
//!
//! The score is the value of `MATCH … AGAINST` itself: InnoDB's TF-IDF
//! relevance (see MariaDB's "Full-Text Index Overview"), a non-negative
//! number with no upper bound that grows with how often the query's words
//! occur in the body and how rare they are among the indexed rows. Scores
//! compare hits of one query only.

use sqlx::MySqlPool;

use super::ScoredRow;
use crate::domain::Page;

/// Live messages of chat `chat_id` matching `query`, best first (ties by
/// number), with their relevance.
pub async fn search(
    pool: &MySqlPool,
    chat_id: u64,
    query: &str,
    page: Page,
) -> sqlx::Result<Vec<ScoredRow>> {
    sqlx::query_as(
        "SELECT id, number, body, created_at, updated_at, deleted_at, \
         CAST(MATCH(body) AGAINST (? IN NATURAL LANGUAGE MODE) AS DOUBLE) AS score FROM messages \
         WHERE chat_id = ? AND deleted_at IS NULL AND MATCH(body) AGAINST (? IN NATURAL LANGUAGE MODE) \
         ORDER BY score DESC, number \
         LIMIT ? OFFSET ?",
    )
    .bind(query)
    .bind(chat_id)
    .bind(query)
    .bind(page.limit_plus_one())
    .bind(page.offset())
    .fetch_all(pool)
    .await
}
