//! SQL of the `applications` table. Applications are written synchronously:
//! they are rare, and their token must be valid the moment it is returned.

use chrono::{DateTime, NaiveDateTime, Utc};
use sqlx::MySqlPool;

use crate::domain::Page;

/// One row of `applications`, as the API shows it (plus the internal id).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AppRow {
    /// Internal id; never sent to clients.
    pub id: u64,
    /// Public token.
    pub token: String,
    /// Name, byte for byte.
    pub name: String,
    /// Cached count of live chats (refreshed by the counts job).
    pub chats_count: u64,
    /// Creation time (UTC).
    pub created_at: NaiveDateTime,
    /// Last change of the name (UTC).
    pub updated_at: NaiveDateTime,
}

const COLUMNS: &str = "id, token, name, chats_count, created_at, updated_at";

/// Inserts an application. Errors: a unique violation on the token (which
/// at 192 random bits does not happen) or an unreachable database.
pub async fn create(
    pool: &MySqlPool,
    token: &str,
    name: &str,
    now: DateTime<Utc>,
) -> sqlx::Result<AppRow> {
    let now = now.naive_utc();
    let id = sqlx::query(
        "INSERT INTO applications (token, name, chats_count, created_at, updated_at) VALUES (?, ?, 0, ?, ?)",
    )
    .bind(token)
    .bind(name)
    .bind(now)
    .bind(now)
    .execute(pool)
    .await?
    .last_insert_id();
    Ok(AppRow {
        id,
        token: token.into(),
        name: name.into(),
        chats_count: 0,
        created_at: now,
        updated_at: now,
    })
}

/// One page of applications in creation order.
pub async fn list(pool: &MySqlPool, page: Page) -> sqlx::Result<Vec<AppRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM applications ORDER BY created_at, id LIMIT ? OFFSET ?"
    )))
    .bind(page.limit_plus_one())
    .bind(page.offset())
    .fetch_all(pool)
    .await
}

/// The application with `token`, if any.
pub async fn find(pool: &MySqlPool, token: &str) -> sqlx::Result<Option<AppRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM applications WHERE token = ?"
    )))
    .bind(token)
    .fetch_optional(pool)
    .await
}

/// Renames the application with `token`; `None` if there is none.
pub async fn rename(
    pool: &MySqlPool,
    token: &str,
    name: &str,
    now: DateTime<Utc>,
) -> sqlx::Result<Option<AppRow>> {
    let done = sqlx::query("UPDATE applications SET name = ?, updated_at = ? WHERE token = ?")
        .bind(name)
        .bind(now.naive_utc())
        .bind(token)
        .execute(pool)
        .await?;
    if done.rows_affected() == 0 {
        // MariaDB counts rows changed, not matched: a same-name rename still
        // changes updated_at, so 0 means no such token.
        return Ok(None);
    }
    find(pool, token).await
}

/// Deletes the application with `token` and, by cascade, its chats and
/// messages. Returns whether it existed.
pub async fn delete(pool: &MySqlPool, token: &str) -> sqlx::Result<bool> {
    let done = sqlx::query("DELETE FROM applications WHERE token = ?")
        .bind(token)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// The id of the application with `token`, if any (to seed the Redis cache).
pub async fn find_id(pool: &MySqlPool, token: &str) -> sqlx::Result<Option<u64>> {
    sqlx::query_scalar("SELECT id FROM applications WHERE token = ?")
        .bind(token)
        .fetch_optional(pool)
        .await
}

/// The highest chat number ever stored for the application, deleted chats
/// included (their tombstones keep the number), or 0. Seeds a cold counter.
pub async fn last_chat_number(pool: &MySqlPool, application_id: u64) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT COALESCE(MAX(number), 0) FROM chats WHERE application_id = ?")
        .bind(application_id)
        .fetch_one(pool)
        .await
}
