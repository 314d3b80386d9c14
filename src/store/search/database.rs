//! The MariaDB FULLTEXT backend: `MATCH … AGAINST` in natural-language mode,
//! scoped to one chat, ranked by relevance.

use sqlx::MySqlPool;

use crate::domain::Page;
use crate::store::messages::MessageRow;

/// Live messages of chat `chat_id` matching `query`, best first (ties by number).
pub async fn search(
    pool: &MySqlPool,
    chat_id: u64,
    query: &str,
    page: Page,
) -> sqlx::Result<Vec<MessageRow>> {
    sqlx::query_as(
        "SELECT id, number, body, created_at, updated_at, deleted_at FROM messages \
         WHERE chat_id = ? AND deleted_at IS NULL AND MATCH(body) AGAINST (? IN NATURAL LANGUAGE MODE) \
         ORDER BY MATCH(body) AGAINST (? IN NATURAL LANGUAGE MODE) DESC, number \
         LIMIT ? OFFSET ?",
    )
    .bind(chat_id)
    .bind(query)
    .bind(query)
    .bind(page.limit_plus_one())
    .bind(page.offset())
    .fetch_all(pool)
    .await
}
