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

/// What MariaDB records of a scope's numbering: its reserved high-water
/// mark ([`FIRST_BLOCK`] when it has no row) and the epoch in which the idle
/// sweep last evicted its counter from Redis (`None`: never).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    /// The highest number the scope may hand out.
    pub reserved_to: i64,
    /// See [`mark_evicted`].
    pub evicted_epoch: Option<i64>,
}

/// The scope's [`Reservation`]. Errors: MariaDB unavailable.
pub async fn reservation(
    pool: &MySqlPool,
    application_id: u64,
    chat_number: i64,
) -> sqlx::Result<Reservation> {
    let row: Option<(i64, Option<i64>)> = sqlx::query_as(
        "SELECT reserved_to, evicted_epoch FROM number_reservations \
         WHERE application_id = ? AND chat_number = ?",
    )
    .bind(application_id)
    .bind(chat_number)
    .fetch_optional(pool)
    .await?;
    let (reserved_to, evicted_epoch) = row.unwrap_or((FIRST_BLOCK, None));
    Ok(Reservation {
        reserved_to: reserved_to.max(FIRST_BLOCK),
        evicted_epoch,
    })
}

/// The reserved high-water mark of the scope, [`FIRST_BLOCK`] when it has
/// no row. Errors: MariaDB unavailable.
pub async fn reserved_to(
    pool: &MySqlPool,
    application_id: u64,
    chat_number: i64,
) -> sqlx::Result<i64> {
    Ok(reservation(pool, application_id, chat_number)
        .await?
        .reserved_to)
}

/// Raises the scope's reserved high-water mark from `expected` to `to`, as
/// a compare-and-set, committed before this returns, so that Redis may then
/// hand out numbers up to `to`. `expected` is the bound the caller's Redis
/// holds ([`FIRST_BLOCK`] when it holds none: the scope may have no row
/// yet). Returns false, changing nothing, when the recorded mark is not
/// `expected`: another Redis lineage (an old master after a failover, a
/// copy restored beside it) or a concurrent caller moved it, and the range
/// `(expected, to]` may be someone else's. So the values the mark takes form
/// one chain, each step owned by one caller, and the ranges callers hand out
/// are disjoint (docs/numbering.md, invariant I1).
///
/// Errors: MariaDB unavailable, or a foreign-key error (1452) when the
/// application is gone.
pub async fn reserve(
    pool: &MySqlPool,
    application_id: u64,
    chat_number: i64,
    expected: i64,
    to: i64,
) -> sqlx::Result<bool> {
    let updated = sqlx::query(
        "UPDATE number_reservations SET reserved_to = ?, evicted_epoch = NULL, \
         updated_at = UTC_TIMESTAMP(6) \
         WHERE application_id = ? AND chat_number = ? AND reserved_to = ?",
    )
    .bind(to)
    .bind(application_id)
    .bind(chat_number)
    .bind(expected)
    .execute(pool)
    .await?;
    if updated.rows_affected() > 0 {
        return Ok(true);
    }
    if expected > FIRST_BLOCK {
        return Ok(false);
    }
    // No row yet (the implicit first block), unless a concurrent caller
    // just inserted one: a duplicate key is a lost race.
    match sqlx::query(
        "INSERT INTO number_reservations (application_id, chat_number, reserved_to, updated_at) \
         VALUES (?, ?, ?, UTC_TIMESTAMP(6))",
    )
    .bind(application_id)
    .bind(chat_number)
    .bind(to)
    .execute(pool)
    .await
    {
        Ok(_) => Ok(true),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(false),
        Err(e) => Err(e),
    }
}

/// Records that the idle sweep is about to evict these scopes' counters
/// in `epoch`, before it does: `(chat_number, bound)` pairs of one
/// application, the bound being the one its Redis holds. A counter missing
/// from Redis later comes back exactly at MariaDB's highest number only
/// when its scope was marked in the current epoch (see
/// [`crate::writebehind::numbering`]). A scope is marked only where the
/// recorded mark is still that bound (else its mark is cleared): if another
/// Redis lineage reserved past it (split brain), the counter must restart
/// above the mark, not come back exactly; and every reservation clears the
/// mark ([`reserve`]), for the same reason. A scope without a row gets one
/// at its bound. Errors: MariaDB unavailable.
pub async fn mark_evicted(
    pool: &MySqlPool,
    application_id: u64,
    scopes: &[(i64, i64)],
    epoch: i64,
) -> sqlx::Result<()> {
    if scopes.is_empty() {
        return Ok(());
    }
    let mut q = sqlx::QueryBuilder::new(
        "INSERT INTO number_reservations (application_id, chat_number, reserved_to, evicted_epoch, updated_at) ",
    );
    q.push_values(scopes, |mut row, (n, bound)| {
        row.push_bind(application_id)
            .push_bind(*n)
            .push_bind(*bound)
            .push_bind(epoch)
            .push("UTC_TIMESTAMP(6)");
    });
    q.push(
        " ON DUPLICATE KEY UPDATE evicted_epoch = \
         IF(reserved_to = VALUES(reserved_to), VALUES(evicted_epoch), NULL)",
    );
    q.build().execute(pool).await?;
    Ok(())
}

/// Which of the application's scopes `chat_numbers` are marked evicted in
/// `epoch` (see [`mark_evicted`], which leaves unmarked a scope whose
/// reservation moved past the bound its Redis holds). Errors: MariaDB
/// unavailable.
pub async fn marked_evicted(
    pool: &MySqlPool,
    application_id: u64,
    chat_numbers: &[i64],
    epoch: i64,
) -> sqlx::Result<std::collections::HashSet<i64>> {
    if chat_numbers.is_empty() {
        return Ok(Default::default());
    }
    let mut q = sqlx::QueryBuilder::new(
        "SELECT chat_number FROM number_reservations WHERE application_id = ",
    );
    q.push_bind(application_id)
        .push(" AND evicted_epoch = ")
        .push_bind(epoch)
        .push(" AND chat_number IN (");
    let mut list = q.separated(", ");
    for n in chat_numbers {
        list.push_bind(*n);
    }
    q.push(")");
    let rows: Vec<i64> = q.build_query_scalar().fetch_all(pool).await?;
    Ok(rows.into_iter().collect())
}

/// Clears the eviction mark `epoch` of the application's scopes
/// `chat_numbers`, where it is still `epoch`: the idle sweep marked them
/// ([`mark_evicted`]) but EVICT did not take their counters (a create came
/// in between, or the epoch moved), so the mark must not outlive the
/// counter it was written for (docs/numbering.md, O11: were that counter
/// to vanish later in the same epoch without an eviction, its restart
/// would trust the mark and resume at MariaDB's highest number). A mark
/// another sweep wrote since for an eviction that did happen may be
/// cleared too; that is safe, only not exact: the counter then restarts
/// above its reservation, as any counter in doubt. Returns how many marks
/// were cleared. Errors: MariaDB unavailable.
pub async fn unmark_evicted(
    pool: &MySqlPool,
    application_id: u64,
    chat_numbers: &[i64],
    epoch: i64,
) -> sqlx::Result<u64> {
    if chat_numbers.is_empty() {
        return Ok(0);
    }
    let mut q = sqlx::QueryBuilder::new(
        "UPDATE number_reservations SET evicted_epoch = NULL WHERE application_id = ",
    );
    q.push_bind(application_id)
        .push(" AND evicted_epoch = ")
        .push_bind(epoch)
        .push(" AND chat_number IN (");
    let mut list = q.separated(", ");
    for n in chat_numbers {
        list.push_bind(*n);
    }
    q.push(")");
    Ok(q.build().execute(pool).await?.rows_affected())
}

/// How far below a scope's highest stored number [`gaps`] looks for
/// numbers never stored, in numbers.
pub const GAP_WINDOW: i64 = 4096;

/// The numbers of the scope in `(highest - GAP_WINDOW, highest)` that
/// MariaDB never stored (deleted rows count as stored), as ranges, lowest
/// first, not counting those already recorded as skipped. A counter that
/// Redis lost while records below its highest stored number were still
/// queued (two batches flushed out of order: two instances, or a deferred
/// message) lost those records too: a restart records these ranges as
/// skipped with the rest (docs/numbering.md, I2). One index range scan of
/// at most [`GAP_WINDOW`] rows. Errors: MariaDB unavailable.
pub async fn gaps(
    pool: &MySqlPool,
    application_id: u64,
    chat_number: i64,
    highest: i64,
) -> sqlx::Result<Vec<std::ops::RangeInclusive<i64>>> {
    let from = (highest - GAP_WINDOW).max(0);
    let numbers: Vec<i64> = if chat_number == 0 {
        sqlx::query_scalar(
            "SELECT number FROM chats WHERE application_id = ? AND number > ? AND number <= ? \
             ORDER BY number",
        )
        .bind(application_id)
        .bind(from)
        .bind(highest)
        .fetch_all(pool)
        .await?
    } else {
        sqlx::query_scalar(
            "SELECT m.number FROM messages m JOIN chats c ON c.id = m.chat_id \
             WHERE c.application_id = ? AND c.number = ? AND m.number > ? AND m.number <= ? \
             ORDER BY m.number",
        )
        .bind(application_id)
        .bind(chat_number)
        .bind(from)
        .bind(highest)
        .fetch_all(pool)
        .await?
    };
    let mut gaps = Vec::new();
    let mut next = from + 1;
    for n in numbers {
        if n > next {
            gaps.push(next..=n - 1);
        }
        next = n + 1;
    }
    if gaps.is_empty() {
        return Ok(gaps);
    }
    let skipped = skipped_ranges(pool, application_id, chat_number).await?;
    Ok(gaps
        .into_iter()
        .filter(|g| {
            !skipped
                .iter()
                .any(|s| s.start() <= g.start() && s.end() >= g.end())
        })
        .collect())
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
