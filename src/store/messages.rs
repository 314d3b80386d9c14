//! SQL of the `messages` table (reads, edits, deletes; inserts are in [`super::bulk`]).

use chrono::{DateTime, NaiveDateTime, Utc};
use sqlx::{MySqlConnection, MySqlPool};

use crate::domain::Window;

/// One live row of `messages`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MessageRow {
    /// Internal id; never sent to clients.
    pub id: u64,
    /// Number within the chat.
    pub number: i64,
    /// Body, byte for byte.
    pub body: String,
    /// Creation time (UTC).
    pub created_at: NaiveDateTime,
    /// Last edit (UTC).
    pub updated_at: NaiveDateTime,
    /// Set when deleted (the row is a tombstone).
    pub deleted_at: Option<NaiveDateTime>,
}

/// One window of the chat's live messages, by number (a page by `OFFSET`,
/// or those numbered above a cursor: a range scan of the `(chat_id,
/// number)` key whatever its depth), with one row more than the window
/// holds when more follow. The key is forced: left to itself, MariaDB
/// 10.11 reads it by `ref` on `chat_id` alone and filters `number > ?` by
/// index condition pushdown, walking the chat from its first message
/// (60 ms at depth 500,000 of a 1,000,000-message chat, against 0.4 ms
/// for the `range` read the hint gives; BENCHMARKS.md, figure 22).
pub async fn list(pool: &MySqlPool, chat_id: u64, window: Window) -> sqlx::Result<Vec<MessageRow>> {
    sqlx::query_as(
        "SELECT id, number, body, created_at, updated_at, deleted_at FROM messages FORCE INDEX (messages_chat_number_key) \
         WHERE chat_id = ? AND number > ? AND deleted_at IS NULL \
         ORDER BY number LIMIT ? OFFSET ?",
    )
    .bind(chat_id)
    .bind(window.after())
    .bind(window.limit_plus_one())
    .bind(window.offset())
    .fetch_all(pool)
    .await
}

/// The message `number` of the chat, if stored, live or deleted (check
/// `deleted_at`).
pub async fn find(pool: &MySqlPool, chat_id: u64, number: i64) -> sqlx::Result<Option<MessageRow>> {
    sqlx::query_as(
        "SELECT id, number, body, created_at, updated_at, deleted_at FROM messages \
         WHERE chat_id = ? AND number = ?",
    )
    .bind(chat_id)
    .bind(number)
    .fetch_optional(pool)
    .await
}

/// Every stored message of chat `chat_id` numbered in `(after, to]`, live
/// or deleted (a tombstone: check `deleted_at`), by number: a range read of
/// the `(chat_id, number)` key (forced, as in [`list`]). For a live
/// resume's replay, which must account for every number in the range.
pub async fn range(
    pool: &MySqlPool,
    chat_id: u64,
    after: i64,
    to: i64,
) -> sqlx::Result<Vec<MessageRow>> {
    sqlx::query_as(
        "SELECT id, number, body, created_at, updated_at, deleted_at FROM messages FORCE INDEX (messages_chat_number_key) \
         WHERE chat_id = ? AND number > ? AND number <= ? ORDER BY number",
    )
    .bind(chat_id)
    .bind(after)
    .bind(to)
    .fetch_all(pool)
    .await
}

/// The highest message number stored in chat `chat_id` (0 when none).
pub async fn last_number(pool: &MySqlPool, chat_id: u64) -> sqlx::Result<i64> {
    let n: Option<i64> = sqlx::query_scalar("SELECT MAX(number) FROM messages WHERE chat_id = ?")
        .bind(chat_id)
        .fetch_one(pool)
        .await?;
    Ok(n.unwrap_or(0))
}

/// The live messages of chat `chat_id` among `numbers`, in the order of
/// `numbers` (missing and deleted ones left out).
pub async fn find_many_live(
    pool: &MySqlPool,
    chat_id: u64,
    numbers: &[i64],
) -> sqlx::Result<Vec<MessageRow>> {
    if numbers.is_empty() {
        return Ok(Vec::new());
    }
    let mut qb = sqlx::QueryBuilder::<sqlx::MySql>::new(
        "SELECT id, number, body, created_at, updated_at, deleted_at FROM messages WHERE deleted_at IS NULL AND chat_id = ",
    );
    qb.push_bind(chat_id).push(" AND number IN (");
    let mut sep = qb.separated(", ");
    for n in numbers {
        sep.push_bind(*n);
    }
    qb.push(")");
    let rows: Vec<MessageRow> = qb.build_query_as().fetch_all(pool).await?;
    let mut by_number: std::collections::HashMap<i64, MessageRow> =
        rows.into_iter().map(|r| (r.number, r)).collect();
    Ok(numbers.iter().filter_map(|n| by_number.remove(n)).collect())
}

/// Number of live messages (for `reindex`'s progress bar).
pub async fn count_live(pool: &MySqlPool) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM messages WHERE deleted_at IS NULL")
        .fetch_one(pool)
        .await
}

/// Replaces the body of a stored message, on `conn` (a connection of the
/// primary, so that its GTID can be read after). Returns whether it was live.
pub async fn update_body(
    conn: &mut MySqlConnection,
    id: u64,
    body: &str,
    now: DateTime<Utc>,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE messages SET body = ?, updated_at = ? WHERE id = ? AND deleted_at IS NULL",
    )
    .bind(body)
    .bind(now.naive_utc())
    .bind(id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Soft-deletes a stored message, on `conn` (as for [`update_body`]): the
/// body is erased and the row stays as a tombstone so its number is never
/// reused nor its flush replayed. Returns whether it was live.
pub async fn delete(conn: &mut MySqlConnection, id: u64, now: DateTime<Utc>) -> sqlx::Result<bool> {
    let done = sqlx::query("UPDATE messages SET body = '', deleted_at = ?, updated_at = ? WHERE id = ? AND deleted_at IS NULL")
        .bind(now.naive_utc())
        .bind(now.naive_utc())
        .bind(id)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() > 0)
}
