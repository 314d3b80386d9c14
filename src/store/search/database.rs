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

/// Name of the FULLTEXT index on `messages.body` (migration
/// `20261121000002_messages_fulltext.sql`).
pub const FULLTEXT_INDEX: &str = "messages_body_fulltext";

/// Whether the FULLTEXT index on `messages.body` exists in the connected
/// database (`information_schema.STATISTICS`). Errors: MariaDB failed.
pub async fn fulltext_index_exists(pool: &MySqlPool) -> sqlx::Result<bool> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.STATISTICS \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'messages' AND INDEX_NAME = ?",
    )
    .bind(FULLTEXT_INDEX)
    .fetch_one(pool)
    .await?;
    Ok(n > 0)
}

/// Drops the FULLTEXT index on `messages.body` (`chat-api fulltext drop`),
/// for deployments that search with Meilisearch: InnoDB maintains it on every
/// flushed row, and it made the flush 4 to 7 times slower on realistic
/// message text in `bench flush-text` (BENCHMARKS.md). Fast (InnoDB drops
/// the index's auxiliary tables). Does nothing when it is already gone.
/// Errors: MariaDB failed.
pub async fn drop_fulltext_index(pool: &MySqlPool) -> sqlx::Result<bool> {
    if !fulltext_index_exists(pool).await? {
        return Ok(false);
    }
    sqlx::query("ALTER TABLE messages DROP INDEX messages_body_fulltext")
        .execute(pool)
        .await?;
    Ok(true)
}

/// Builds the FULLTEXT index on `messages.body` again (`chat-api fulltext
/// create`), as its migration made it; needed to search with MariaDB
/// (`MEILI_URL` unset). Takes time in proportion to the stored messages,
/// and writes to `messages` wait while it is built (InnoDB cannot build a
/// FULLTEXT index with `LOCK=NONE`), so the flusher pauses meanwhile: run it
/// in a quiet hour. Does nothing when it exists. Errors: MariaDB failed.
pub async fn create_fulltext_index(pool: &MySqlPool) -> sqlx::Result<bool> {
    if fulltext_index_exists(pool).await? {
        return Ok(false);
    }
    sqlx::query("ALTER TABLE messages ADD FULLTEXT INDEX messages_body_fulltext (body)")
        .execute(pool)
        .await?;
    Ok(true)
}
