//! The flusher's writes: multi-row, idempotent `INSERT`s of buffered chats
//! and messages, after sorting out records whose parent is gone.
//!
//! Idempotency comes from the unique keys `(application_id, number)` and
//! `(chat_id, number)` with `ON DUPLICATE KEY UPDATE`, so a batch written
//! twice (a flusher died after COMMIT and before its acknowledgement) stores
//! each row once. `INSERT IGNORE` is not used: it would also turn real errors
//! (truncation, a missing parent) into warnings.
//!
//! **Collisions are never silent.** A duplicate key that holds the *same*
//! record (same `created_at`; for a message never edited, the same body too)
//! is an idempotent replay and stays silent. One that holds a *different*
//! record is a collision: Redis handed out a number MariaDB already had (it
//! came back from an older snapshot, or a replica was promoted). The update
//! clause adds 1 to the stored row's `collisions` exactly then, so MariaDB
//! reports that row as changed: with `CLIENT_FOUND_ROWS` (which sqlx sets) a
//! statement's affected rows are 1 per inserted or replayed row and 2 per
//! collision. Only a statement whose count exceeds its rows pays for a
//! read-back, which tells the colliding records apart; they become
//! [`Disposition::Collision`] (dead-lettered, counted, logged), never
//! "written". The stored row keeps its data.

use std::collections::{HashMap, HashSet};

use sqlx::{MySql, MySqlPool, QueryBuilder};

use crate::domain::record::{ChatRecord, MessageRecord};

/// What became of one record of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Stored (or already stored by an earlier attempt).
    Written,
    /// Its application or chat was deleted meanwhile: dropped, and counted.
    ParentDeleted,
    /// Its chat is not stored yet (still buffered): try again later.
    Deferred,
    /// It cannot be written; the reason goes to the dead-letter list.
    DeadLetter(String),
    /// Its unique key already holds another record (see the module docs):
    /// not written; dead-lettered with reason `collision`. Holds what the
    /// stored row has, for the log.
    Collision(String),
}

/// The outcome of writing one batch.
#[derive(Debug, Clone, Default)]
pub struct BatchOutcome {
    /// What became of each record, in batch order.
    pub dispositions: Vec<Disposition>,
    /// The stored records: `(index in the batch, parent id)`, where the
    /// parent is the application (chat batches) or the chat (message batches).
    pub stored: Vec<(usize, u64)>,
}

impl BatchOutcome {
    /// Parents whose cached count changed, each once (for the counts refresh).
    pub fn touched(&self) -> Vec<u64> {
        let set: HashSet<u64> = self.stored.iter().map(|(_, p)| *p).collect();
        set.into_iter().collect()
    }
}

/// Most rows in one multi-row statement.
const MAX_ROWS_PER_STATEMENT: usize = 2_000;
/// Most body bytes in one multi-row statement, well below MariaDB's default
/// `max_allowed_packet` (16 MiB).
const MAX_BYTES_PER_STATEMENT: usize = 4 << 20;
/// MariaDB's "foreign key constraint fails" on insert.
const ER_NO_REFERENCED_ROW: u16 = 1452;

/// Ids of the `applications` among `ids` that still exist.
async fn existing_applications(
    pool: &MySqlPool,
    ids: impl IntoIterator<Item = u64>,
) -> sqlx::Result<HashSet<u64>> {
    let ids: Vec<u64> = ids
        .into_iter()
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let mut found = HashSet::new();
    for chunk in ids.chunks(MAX_ROWS_PER_STATEMENT) {
        let mut qb = QueryBuilder::<MySql>::new("SELECT id FROM applications WHERE id IN (");
        let mut sep = qb.separated(", ");
        for id in chunk {
            sep.push_bind(*id);
        }
        qb.push(")");
        found.extend(qb.build_query_scalar::<u64>().fetch_all(pool).await?);
    }
    Ok(found)
}

/// Settles a batch transaction's `result` (the collisions it found, as
/// `(index, stored record)`): marks the collisions in `out` and returns
/// false; returns true when it failed for a reason of its rows, so that each
/// must now be written alone (and the bad one isolated). Errors: MariaDB
/// unavailable (the caller gives the batch back).
fn rows_must_go_alone(
    result: sqlx::Result<Vec<(usize, String)>>,
    out: &mut [Disposition],
    queue: &str,
) -> sqlx::Result<bool> {
    match result {
        Ok(collided) => {
            for (i, what) in collided {
                out[i] = Disposition::Collision(what);
            }
            Ok(false)
        }
        Err(e) if super::is_unavailable(&e) => Err(e),
        Err(e) => {
            tracing::warn!(error = %e, queue, "bulk insert failed; retrying row by row");
            Ok(true)
        }
    }
}

/// Writes a batch of chats. Records of deleted applications are dropped.
/// Errors: only when MariaDB is unavailable (see [`super::is_unavailable`]);
/// the caller then gives the batch back, untouched in meaning.
pub async fn write_chats(pool: &MySqlPool, records: &[ChatRecord]) -> sqlx::Result<BatchOutcome> {
    let apps = existing_applications(pool, records.iter().map(|r| r.application_id)).await?;
    let mut out: Vec<Disposition> = records
        .iter()
        .map(|r| {
            if apps.contains(&r.application_id) {
                Disposition::Written
            } else {
                Disposition::ParentDeleted
            }
        })
        .collect();
    let live: Vec<usize> = (0..records.len())
        .filter(|i| out[*i] == Disposition::Written)
        .collect();
    let result = async {
        let mut tx = pool.begin().await?;
        let mut collided = Vec::new();
        for chunk in live.chunks(MAX_ROWS_PER_STATEMENT) {
            let affected = insert_chats(&mut *tx, chunk.iter().map(|i| &records[*i])).await?;
            if affected > chunk.len() as u64 {
                collided.extend(chat_collisions(&mut tx, records, chunk).await?);
            }
        }
        tx.commit().await?;
        Ok::<_, sqlx::Error>(collided)
    }
    .await;
    if rows_must_go_alone(result, &mut out, "chats")? {
        for i in live {
            out[i] = match insert_chats(pool, std::iter::once(&records[i])).await {
                Ok(1) => Disposition::Written,
                Ok(_) => {
                    let mut tx = pool.begin().await?;
                    let what = chat_collisions(&mut tx, records, &[i]).await?;
                    tx.commit().await?;
                    what.into_iter()
                        .next()
                        .map_or(Disposition::Written, |(_, w)| Disposition::Collision(w))
                }
                Err(e) => row_failed(e)?,
            };
        }
    }
    let stored = (0..records.len())
        .filter(|i| out[*i] == Disposition::Written)
        .map(|i| (i, records[i].application_id))
        .collect();
    Ok(BatchOutcome {
        dispositions: out,
        stored,
    })
}

/// Inserts chats; returns the affected rows (1 per inserted or replayed
/// row, 2 per collision: see the module docs).
async fn insert_chats<'a, 'e, E>(
    exec: E,
    rows: impl Iterator<Item = &'a ChatRecord>,
) -> sqlx::Result<u64>
where
    E: sqlx::Executor<'e, Database = MySql>,
{
    let mut qb = QueryBuilder::<MySql>::new(
        "INSERT INTO chats (application_id, number, messages_count, created_at, updated_at) ",
    );
    qb.push_values(rows, |mut b, r| {
        let at = r.created_at().naive_utc();
        b.push_bind(r.application_id)
            .push_bind(r.number)
            .push("0")
            .push_bind(at)
            .push_bind(at);
    });
    qb.push(
        " ON DUPLICATE KEY UPDATE collisions = collisions + (NOT (created_at <=> VALUES(created_at)))",
    );
    Ok(qb.build().execute(exec).await?.rows_affected())
}

/// The chats among `rows` (indexes into `records`) whose key holds another
/// chat: `(index, what the stored row has)`. Reads inside `tx`, after the
/// INSERT, so it sees what the INSERT met.
async fn chat_collisions(
    tx: &mut sqlx::Transaction<'_, MySql>,
    records: &[ChatRecord],
    rows: &[usize],
) -> sqlx::Result<Vec<(usize, String)>> {
    let mut qb = QueryBuilder::<MySql>::new(
        "SELECT application_id, number, created_at FROM chats WHERE (application_id, number) IN (",
    );
    let mut sep = qb.separated(", ");
    for i in rows {
        sep.push("(")
            .push_bind_unseparated(records[*i].application_id)
            .push_unseparated(", ")
            .push_bind_unseparated(records[*i].number)
            .push_unseparated(")");
    }
    qb.push(")");
    let stored: HashMap<(u64, i64), chrono::NaiveDateTime> = qb
        .build_query_as::<(u64, i64, chrono::NaiveDateTime)>()
        .fetch_all(&mut **tx)
        .await?
        .into_iter()
        .map(|(app, n, at)| ((app, n), at))
        .collect();
    Ok(rows
        .iter()
        .filter_map(|&i| {
            let r = &records[i];
            let at = stored.get(&(r.application_id, r.number))?;
            (*at != r.created_at().naive_utc()).then(|| {
                (
                    i,
                    format!(
                        "chat {} of application {} is already stored, created at {at}; this one was created at {}",
                        r.number,
                        r.application_id,
                        r.created_at().naive_utc()
                    ),
                )
            })
        })
        .collect())
}

/// The disposition of a record whose single-row insert failed. Errors: the
/// failure itself when MariaDB is unavailable.
fn row_failed(e: sqlx::Error) -> sqlx::Result<Disposition> {
    if super::is_unavailable(&e) {
        return Err(e);
    }
    if super::error_number(&e) == Some(ER_NO_REFERENCED_ROW) {
        return Ok(Disposition::ParentDeleted);
    }
    Ok(Disposition::DeadLetter(e.to_string()))
}

/// A stored chat, as the message flush needs it.
#[derive(Debug, Clone, Copy, sqlx::FromRow)]
struct ChatRef {
    id: u64,
    application_id: u64,
    number: i64,
    deleted: i64,
}

/// Writes a batch of messages.
///
/// Each record's chat is looked up by `(application_id, chat_number)`:
/// - found and live: the message is inserted;
/// - found but deleted, or its application is gone: dropped ([`Disposition::ParentDeleted`]);
/// - not stored yet (its chat is still buffered, perhaps in another
///   flusher's batch): [`Disposition::Deferred`], unless the record was
///   first deferred before `orphan_cutoff_ms` (ms since the epoch), then
///   dead-lettered. A record is aged from its first deferral, not from its
///   creation, so a backlog after a long MariaDB outage is not dead-lettered
///   on arrival.
///
/// Errors: only when MariaDB is unavailable.
pub async fn write_messages(
    pool: &MySqlPool,
    records: &[MessageRecord],
    orphan_cutoff_ms: i64,
) -> sqlx::Result<BatchOutcome> {
    let pairs: Vec<(u64, i64)> = records
        .iter()
        .map(|r| (r.application_id, r.chat_number))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    // The chats are read inside the insert's transaction with shared locks,
    // so a concurrent chat delete (which removes the chat's messages) waits
    // for this COMMIT and then removes these messages too.
    let mut tx = pool.begin().await?;
    let mut chats: HashMap<(u64, i64), ChatRef> = HashMap::with_capacity(pairs.len());
    for chunk in pairs.chunks(MAX_ROWS_PER_STATEMENT) {
        let mut qb = QueryBuilder::<MySql>::new(
            "SELECT id, application_id, number, deleted_at IS NOT NULL AS deleted FROM chats WHERE ",
        );
        for (i, (app, number)) in chunk.iter().enumerate() {
            if i > 0 {
                qb.push(" OR ");
            }
            qb.push("(application_id = ")
                .push_bind(*app)
                .push(" AND number = ")
                .push_bind(*number)
                .push(")");
        }
        qb.push(" LOCK IN SHARE MODE");
        for c in qb.build_query_as::<ChatRef>().fetch_all(&mut *tx).await? {
            chats.insert((c.application_id, c.number), c);
        }
    }
    let missing_apps: Vec<u64> = records
        .iter()
        .filter(|r| !chats.contains_key(&(r.application_id, r.chat_number)))
        .map(|r| r.application_id)
        .collect();
    let apps = if missing_apps.is_empty() {
        HashSet::new()
    } else {
        existing_applications(pool, missing_apps).await?
    };

    let mut out = Vec::with_capacity(records.len());
    let mut rows: Vec<(usize, u64)> = Vec::with_capacity(records.len());
    for (i, r) in records.iter().enumerate() {
        let d = match chats.get(&(r.application_id, r.chat_number)) {
            Some(c) if c.deleted != 0 => Disposition::ParentDeleted,
            Some(c) => {
                rows.push((i, c.id));
                Disposition::Written
            }
            None if !apps.contains(&r.application_id) => Disposition::ParentDeleted,
            None if r.deferred_since_ms.is_some_and(|t| t < orphan_cutoff_ms) => {
                Disposition::DeadLetter(format!(
                    "chat {} of application {} never reached the database",
                    r.chat_number, r.application_id
                ))
            }
            None => Disposition::Deferred,
        };
        out.push(d);
    }

    let result = async {
        let mut collided = Vec::new();
        let mut start = 0;
        while start < rows.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < rows.len()
                && end - start < MAX_ROWS_PER_STATEMENT
                && (end == start
                    || bytes + records[rows[end].0].body.len() <= MAX_BYTES_PER_STATEMENT)
            {
                bytes += records[rows[end].0].body.len();
                end += 1;
            }
            let statement = &rows[start..end];
            let affected = insert_messages(
                &mut *tx,
                statement
                    .iter()
                    .map(|(i, chat_id)| (&records[*i], *chat_id)),
            )
            .await?;
            if affected > statement.len() as u64 {
                collided.extend(message_collisions(&mut tx, records, statement).await?);
            }
            start = end;
        }
        tx.commit().await?;
        Ok::<_, sqlx::Error>(collided)
    }
    .await;
    if rows_must_go_alone(result, &mut out, "messages")? {
        for &(i, chat_id) in &rows {
            out[i] = insert_message_alone(pool, records, i, chat_id).await?;
        }
    }
    let stored = rows
        .into_iter()
        .filter(|(i, _)| out[*i] == Disposition::Written)
        .collect();
    Ok(BatchOutcome {
        dispositions: out,
        stored,
    })
}

/// Writes one message on its own (the fallback after a failed batch), under
/// the same lock as the batch path: its chat is read with a shared lock in
/// the insert's transaction, so a chat deleted meanwhile drops the message
/// instead of storing it under a tombstone. Errors: MariaDB unavailable.
async fn insert_message_alone(
    pool: &MySqlPool,
    records: &[MessageRecord],
    i: usize,
    chat_id: u64,
) -> sqlx::Result<Disposition> {
    let attempt = async {
        let mut tx = pool.begin().await?;
        let live: Option<i64> = sqlx::query_scalar(
            "SELECT deleted_at IS NULL FROM chats WHERE id = ? LOCK IN SHARE MODE",
        )
        .bind(chat_id)
        .fetch_optional(&mut *tx)
        .await?;
        if live != Some(1) {
            return Ok(Disposition::ParentDeleted);
        }
        let affected = insert_messages(&mut *tx, std::iter::once((&records[i], chat_id))).await?;
        let disposition = if affected > 1 {
            message_collisions(&mut tx, records, &[(i, chat_id)])
                .await?
                .into_iter()
                .next()
                .map_or(Disposition::Written, |(_, w)| Disposition::Collision(w))
        } else {
            Disposition::Written
        };
        tx.commit().await?;
        Ok(disposition)
    }
    .await;
    attempt.or_else(row_failed)
}

/// The messages among `rows` (`(index into records, chat id)`) whose key
/// holds another message: `(index, what the stored row has)`. A stored row
/// is the same message when its `created_at` is the record's and, unless it
/// was edited since (`updated_at` moved), its body too. Reads inside `tx`.
async fn message_collisions(
    tx: &mut sqlx::Transaction<'_, MySql>,
    records: &[MessageRecord],
    rows: &[(usize, u64)],
) -> sqlx::Result<Vec<(usize, String)>> {
    type Stored = (
        u64,
        i64,
        chrono::NaiveDateTime,
        chrono::NaiveDateTime,
        String,
    );
    let mut qb = QueryBuilder::<MySql>::new(
        "SELECT chat_id, number, created_at, updated_at, body FROM messages WHERE (chat_id, number) IN (",
    );
    let mut sep = qb.separated(", ");
    for (i, chat_id) in rows {
        sep.push("(")
            .push_bind_unseparated(*chat_id)
            .push_unseparated(", ")
            .push_bind_unseparated(records[*i].number)
            .push_unseparated(")");
    }
    qb.push(")");
    let stored: HashMap<(u64, i64), Stored> = qb
        .build_query_as::<Stored>()
        .fetch_all(&mut **tx)
        .await?
        .into_iter()
        .map(|row| ((row.0, row.1), row))
        .collect();
    Ok(rows
        .iter()
        .filter_map(|&(i, chat_id)| {
            let r = &records[i];
            let (_, _, created, updated, body) = stored.get(&(chat_id, r.number))?;
            let at = r.created_at().naive_utc();
            let same = *created == at && (updated != created || *body == r.body);
            (!same).then(|| {
                (
                    i,
                    format!(
                        "message {} of chat {} (application {}) is already stored, created at {created} with {} bytes of body; this one was created at {at} with {} bytes",
                        r.number,
                        r.chat_number,
                        r.application_id,
                        body.len(),
                        r.body.len()
                    ),
                )
            })
        })
        .collect())
}

/// Inserts messages; returns the affected rows (1 per inserted or replayed
/// row, 2 per collision: see the module docs).
async fn insert_messages<'a, 'e, E>(
    exec: E,
    rows: impl Iterator<Item = (&'a MessageRecord, u64)>,
) -> sqlx::Result<u64>
where
    E: sqlx::Executor<'e, Database = MySql>,
{
    let mut qb = QueryBuilder::<MySql>::new(
        "INSERT INTO messages (chat_id, number, body, created_at, updated_at) ",
    );
    qb.push_values(rows, |mut b, (r, chat_id)| {
        let at = r.created_at().naive_utc();
        b.push_bind(chat_id)
            .push_bind(r.number)
            .push_bind(r.body.as_str())
            .push_bind(at)
            .push_bind(at);
    });
    // The body is compared byte for byte (its collation is case-insensitive,
    // left from the FULLTEXT index of migration 2), and only on a row never
    // edited since.
    qb.push(
        " ON DUPLICATE KEY UPDATE collisions = collisions + (NOT (created_at <=> VALUES(created_at)) \
         OR (updated_at = created_at AND NOT (BINARY body <=> BINARY VALUES(body))))",
    );
    Ok(qb.build().execute(exec).await?.rows_affected())
}
