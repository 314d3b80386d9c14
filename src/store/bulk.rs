//! The flusher's writes: multi-row, idempotent `INSERT`s of buffered chats
//! and messages, after sorting out records whose parent is gone.
//!
//! Idempotency comes from the unique keys `(application_id, number)` and
//! `(chat_id, number)` with `ON DUPLICATE KEY UPDATE id = id` (a no-op), so
//! a batch written twice (a flusher died after COMMIT and before its
//! acknowledgement) stores each row once. `INSERT IGNORE` is not used: it
//! would also turn real errors (truncation, a missing parent) into warnings.

use std::collections::{HashMap, HashSet};

use sqlx::{MySql, MySqlPool, QueryBuilder};

use crate::writebehind::record::{ChatRecord, MessageRecord};

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
        for chunk in live.chunks(MAX_ROWS_PER_STATEMENT) {
            insert_chats(&mut *tx, chunk.iter().map(|i| &records[*i])).await?;
        }
        tx.commit().await
    }
    .await;
    match result {
        Ok(()) => {}
        Err(e) if super::is_unavailable(&e) => return Err(e),
        Err(e) => {
            tracing::warn!(error = %e, "bulk insert of chats failed; retrying row by row");
            for i in live {
                out[i] = one_by_one(insert_chats(pool, std::iter::once(&records[i])).await)?;
            }
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

async fn insert_chats<'a, 'e, E>(
    exec: E,
    rows: impl Iterator<Item = &'a ChatRecord>,
) -> sqlx::Result<()>
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
    qb.push(" ON DUPLICATE KEY UPDATE id = id");
    qb.build().execute(exec).await.map(|_| ())
}

/// Maps the result of a single-row insert to the record's disposition.
fn one_by_one(result: sqlx::Result<()>) -> sqlx::Result<Disposition> {
    match result {
        Ok(()) => Ok(Disposition::Written),
        Err(e) if super::is_unavailable(&e) => Err(e),
        Err(e) if super::error_number(&e) == Some(ER_NO_REFERENCED_ROW) => {
            Ok(Disposition::ParentDeleted)
        }
        Err(e) => Ok(Disposition::DeadLetter(e.to_string())),
    }
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
///   created before `orphan_cutoff_ms` (ms since the epoch), then dead-lettered.
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
            None if r.created_at_ms < orphan_cutoff_ms => Disposition::DeadLetter(format!(
                "chat {} of application {} never reached the database",
                r.chat_number, r.application_id
            )),
            None => Disposition::Deferred,
        };
        out.push(d);
    }

    let result = async {
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
            insert_messages(
                &mut *tx,
                rows[start..end]
                    .iter()
                    .map(|(i, chat_id)| (&records[*i], *chat_id)),
            )
            .await?;
            start = end;
        }
        tx.commit().await
    }
    .await;
    match result {
        Ok(()) => {}
        Err(e) if super::is_unavailable(&e) => return Err(e),
        Err(e) => {
            tracing::warn!(error = %e, "bulk insert of messages failed; retrying row by row");
            for &(i, chat_id) in &rows {
                out[i] = one_by_one(
                    insert_messages(pool, std::iter::once((&records[i], chat_id))).await,
                )?;
            }
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

async fn insert_messages<'a, 'e, E>(
    exec: E,
    rows: impl Iterator<Item = (&'a MessageRecord, u64)>,
) -> sqlx::Result<()>
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
    qb.push(" ON DUPLICATE KEY UPDATE id = id");
    qb.build().execute(exec).await.map(|_| ())
}
