//! The durable side of numbering (see [`crate::writebehind::numbering`]):
//! each scope's reserved high-water mark, and the ranges a counter skipped
//! when it restarted at it. Tables `number_reservations` and
//! `skipped_numbers` (migration `20261203000005`).
//!
//! A scope is an application's chat counter (`chat_number` 0) or the message
//! counter of its chat `chat_number`.

use sqlx::MySqlPool;

/// The numbers every scope may use before its first reservation: a scope
/// without a row in `number_reservations` has handed out at most this many,
/// so the request path needs no SQL for a scope's first numbers.
pub const FIRST_BLOCK: i64 = 16;

/// The reserved high-water mark of the scope, [`FIRST_BLOCK`] when it has
/// no row. Errors: MariaDB unavailable.
pub async fn reserved_to(
    pool: &MySqlPool,
    application_id: u64,
    chat_number: i64,
) -> sqlx::Result<i64> {
    let row: Option<i64> = sqlx::query_scalar(
        "SELECT reserved_to FROM number_reservations WHERE application_id = ? AND chat_number = ?",
    )
    .bind(application_id)
    .bind(chat_number)
    .fetch_optional(pool)
    .await?;
    Ok(row.unwrap_or(FIRST_BLOCK).max(FIRST_BLOCK))
}

/// Raises the scope's reserved high-water mark to at least `to` (never
/// lowers it: `GREATEST`), committed before this returns, so that Redis may
/// then hand out numbers up to `to`. Errors: MariaDB unavailable, or a
/// foreign-key error (1452) when the application is gone.
pub async fn reserve(
    pool: &MySqlPool,
    application_id: u64,
    chat_number: i64,
    to: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO number_reservations (application_id, chat_number, reserved_to, updated_at) \
         VALUES (?, ?, ?, UTC_TIMESTAMP(6)) \
         ON DUPLICATE KEY UPDATE reserved_to = GREATEST(reserved_to, VALUES(reserved_to)), \
         updated_at = VALUES(updated_at)",
    )
    .bind(application_id)
    .bind(chat_number)
    .bind(to)
    .execute(pool)
    .await?;
    Ok(())
}

/// Records that the scope skipped `first..=last` at a restart (idempotent:
/// a second record of the same restart keeps the wider range). Errors:
/// MariaDB unavailable.
pub async fn record_skip(
    pool: &MySqlPool,
    application_id: u64,
    chat_number: i64,
    first: i64,
    last: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO skipped_numbers (application_id, chat_number, first_number, last_number, skipped_at) \
         VALUES (?, ?, ?, ?, UTC_TIMESTAMP(6)) \
         ON DUPLICATE KEY UPDATE last_number = GREATEST(last_number, VALUES(last_number))",
    )
    .bind(application_id)
    .bind(chat_number)
    .bind(first)
    .bind(last)
    .execute(pool)
    .await?;
    Ok(())
}

/// Whether `number` lies in a range the scope skipped. One index range scan
/// over the scope's rows (one per loss event). Errors: MariaDB unavailable.
pub async fn is_skipped(
    pool: &MySqlPool,
    application_id: u64,
    chat_number: i64,
    number: i64,
) -> sqlx::Result<bool> {
    let found: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM skipped_numbers WHERE application_id = ? AND chat_number = ? \
         AND first_number <= ? AND last_number >= ? LIMIT 1",
    )
    .bind(application_id)
    .bind(chat_number)
    .bind(number)
    .bind(number)
    .fetch_optional(pool)
    .await?;
    Ok(found.is_some())
}

/// Every range the scope skipped, oldest first (tests and tools).
/// Errors: MariaDB unavailable.
pub async fn skipped_ranges(
    pool: &MySqlPool,
    application_id: u64,
    chat_number: i64,
) -> sqlx::Result<Vec<std::ops::RangeInclusive<i64>>> {
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT first_number, last_number FROM skipped_numbers \
         WHERE application_id = ? AND chat_number = ? ORDER BY first_number",
    )
    .bind(application_id)
    .bind(chat_number)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(a, b)| a..=b).collect())
}
