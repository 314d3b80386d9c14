//! SQL of the `chats` table (reads and deletes; inserts are in [`super::bulk`]).

use chrono::{DateTime, NaiveDateTime, Utc};
use sqlx::{MySqlConnection, MySqlPool};

use crate::domain::Window;

/// One live row of `chats`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ChatRow {
    /// Internal id; never sent to clients.
    pub id: u64,
    /// Number within the application.
    pub number: i64,
    /// Cached count of live messages (refreshed by the counts job).
    pub messages_count: u64,
    /// Creation time (UTC).
    pub created_at: NaiveDateTime,
    /// Last change (UTC).
    pub updated_at: NaiveDateTime,
    /// Set when deleted (the row is a tombstone).
    pub deleted_at: Option<NaiveDateTime>,
}

/// One window of the application's live chats, by number (a page by
/// `OFFSET`, or those numbered above a cursor), with one row more than the
/// window holds when more follow. The key is forced, as for
/// [`super::messages::list`] (a `range` read from the cursor, not a `ref`
/// walk from the application's first chat).
pub async fn list(
    pool: &MySqlPool,
    application_id: u64,
    window: Window,
) -> sqlx::Result<Vec<ChatRow>> {
    sqlx::query_as(
        "SELECT id, number, messages_count, created_at, updated_at, deleted_at FROM chats FORCE INDEX (chats_application_number_key) \
         WHERE application_id = ? AND number > ? AND deleted_at IS NULL \
         ORDER BY number LIMIT ? OFFSET ?",
    )
    .bind(application_id)
    .bind(window.after())
    .bind(window.limit_plus_one())
    .bind(window.offset())
    .fetch_all(pool)
    .await
}

/// The chat `number` of the application, if stored, live or deleted (check
/// `deleted_at`).
pub async fn find(
    pool: &MySqlPool,
    application_id: u64,
    number: i64,
) -> sqlx::Result<Option<ChatRow>> {
    sqlx::query_as(
        "SELECT id, number, messages_count, created_at, updated_at, deleted_at FROM chats \
         WHERE application_id = ? AND number = ?",
    )
    .bind(application_id)
    .bind(number)
    .fetch_optional(pool)
    .await
}

/// Soft-deletes a stored chat and removes its messages, in one transaction
/// on `conn` (a connection of the primary, so that its GTID can be read
/// after). The chat row stays as a tombstone (see the migration). Returns
/// whether a live chat was deleted.
pub async fn delete(
    conn: &mut MySqlConnection,
    chat_id: u64,
    now: DateTime<Utc>,
) -> sqlx::Result<bool> {
    let mut tx = sqlx::Connection::begin(conn).await?;
    let done = sqlx::query(
        "UPDATE chats SET deleted_at = ?, updated_at = ? WHERE id = ? AND deleted_at IS NULL",
    )
    .bind(now.naive_utc())
    .bind(now.naive_utc())
    .bind(chat_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM messages WHERE chat_id = ?")
        .bind(chat_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(done.rows_affected() > 0)
}

/// Whether the chat `number` of the application exists and is live, and its
/// highest message number ever stored (deleted messages included), for
/// seeding a cold message counter. `None` if no live chat.
pub async fn last_message_number(
    pool: &MySqlPool,
    application_id: u64,
    number: i64,
) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar(
        "SELECT COALESCE((SELECT MAX(m.number) FROM messages m WHERE m.chat_id = c.id), 0) \
         FROM chats c WHERE c.application_id = ? AND c.number = ? AND c.deleted_at IS NULL",
    )
    .bind(application_id)
    .bind(number)
    .fetch_optional(pool)
    .await
}

/// What MariaDB says of chat `number` of application `application_id`, for
/// re-checking its message counter: `None` when no such chat is stored (it
/// may still be buffered), else whether it is deleted and its highest
/// message number, deleted messages included (0 when it has none).
/// Errors: MariaDB failed.
pub async fn message_floor(
    pool: &MySqlPool,
    application_id: u64,
    number: i64,
) -> sqlx::Result<Option<(bool, i64)>> {
    let row: Option<(i64, i64)> = sqlx::query_as(
        "SELECT c.deleted_at IS NOT NULL, \
         COALESCE((SELECT MAX(m.number) FROM messages m WHERE m.chat_id = c.id), 0) \
         FROM chats c WHERE c.application_id = ? AND c.number = ?",
    )
    .bind(application_id)
    .bind(number)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(deleted, max)| (deleted != 0, max)))
}

/// The highest message number ever stored (deleted ones included; 0 when
/// none) of each of the application's chats `numbers` that MariaDB has, as
/// `(chat number, highest)`. Errors: MariaDB failed.
pub async fn highest_message_numbers(
    pool: &MySqlPool,
    application_id: u64,
    numbers: &[i64],
) -> sqlx::Result<Vec<(i64, i64)>> {
    let mut out = Vec::new();
    for chunk in numbers.chunks(1000) {
        let mut q = sqlx::QueryBuilder::new(
            "SELECT c.number, COALESCE((SELECT MAX(m.number) FROM messages m WHERE m.chat_id = c.id), 0) \
             FROM chats c WHERE c.application_id = ",
        );
        q.push_bind(application_id).push(" AND c.number IN (");
        let mut list = q.separated(", ");
        for n in chunk {
            list.push_bind(*n);
        }
        q.push(")");
        out.extend(q.build_query_as::<(i64, i64)>().fetch_all(pool).await?);
    }
    Ok(out)
}
