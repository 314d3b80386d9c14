//! Dead letters: records that a flush (or the search indexer) could not
//! write, kept in `deadletter:{queue}` with the reason, so that nothing is
//! lost and an operator can look at them, replay them once the cause is
//! fixed, or discard them (`/api/v1/admin/dead-letters`).
//!
//! **Entry format.** One JSON object per list element:
//! `{"record": "...", "reason": "...", "at": "RFC 3339"}`, where `record` is
//! the raw buffered record when it is UTF-8 (it always is for records built by
//! our scripts), and `record_base64` replaces it when it is not, so a replay
//! puts back exactly the bytes that failed.
//!
//! **Ids.** An entry's id is content-addressed: the first 16 bytes of the
//! SHA-256 of the stored entry, in hex (32 characters). Entries are unique
//! (a record is unique, and `at` has nanoseconds), so ids are too, and they
//! stay valid while entries before them are removed, with no id to store.
//!
//! **Replay** moves records back to the tail of their pending list with
//! [`super::scripts::REPLAY`], which removes the entry and pushes its record
//! in one atomic step: a record is replayed at most once, even when two
//! operators replay at the same time. A replayed record that fails again is
//! dead-lettered again, with a new reason and time.

use std::collections::HashSet;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::buffer::{Buffer, BufferError};
use super::keys::{Kind, ShardKeys};
use crate::domain::record::MessageRecord;

/// Entries read from Redis per LRANGE while scanning a dead-letter list.
const SCAN_CHUNK: isize = 1000;

/// Entries replayed per script call and read per chunk when replaying all
/// (keeps each atomic step short and memory to one chunk of records).
pub const REPLAY_CHUNK: usize = 200;

/// A dead-letter entry as stored.
#[derive(Debug, Serialize, Deserialize)]
struct StoredEntry {
    /// The raw record, when it is UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    record: Option<String>,
    /// The raw record in standard base64, when it is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    record_base64: Option<String>,
    /// Why it could not be written.
    reason: String,
    /// When it failed (its last failure), RFC 3339.
    at: String,
}

impl StoredEntry {
    /// The raw record bytes, if the entry holds them.
    fn raw(&self) -> Option<Vec<u8>> {
        match (&self.record, &self.record_base64) {
            (Some(r), _) => Some(r.as_bytes().to_vec()),
            (None, Some(b)) => BASE64.decode(b).ok(),
            (None, None) => None,
        }
    }
}

/// The reason of a dead letter whose number already held another record in
/// MariaDB (see [`crate::store::bulk`]).
pub const COLLISION: &str = "collision";

/// Builds the dead-letter entry of `raw`, which failed for `reason`, now.
pub fn entry(raw: &[u8], reason: &str) -> String {
    let (record, record_base64) = match std::str::from_utf8(raw) {
        Ok(s) => (Some(s.to_owned()), None),
        Err(_) => (None, Some(BASE64.encode(raw))),
    };
    serde_json::to_string(&StoredEntry {
        record,
        record_base64,
        reason: reason.to_owned(),
        at: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
    })
    .expect("a dead-letter entry serialises")
}

/// The id of a stored entry: 32 hex characters (see the module docs).
pub fn entry_id(entry: &[u8]) -> String {
    hex::encode(&Sha256::digest(entry)[..16])
}

/// One dead-lettered record, as operators see it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// Content-addressed id (see [`entry_id`]).
    pub id: String,
    /// The queue it came from.
    pub queue: Kind,
    /// The record (lossy UTF-8 for display; a replay uses the exact bytes).
    pub record: String,
    /// Why it could not be written.
    pub reason: String,
    /// Its last failure; `None` if the entry is unreadable.
    pub failed_at: Option<DateTime<Utc>>,
}

impl DeadLetter {
    fn parse(queue: Kind, raw_entry: &[u8]) -> Self {
        let id = entry_id(raw_entry);
        match serde_json::from_slice::<StoredEntry>(raw_entry) {
            Ok(e) => Self {
                id,
                queue,
                record: e
                    .raw()
                    .map(|r| String::from_utf8_lossy(&r).into_owned())
                    .unwrap_or_default(),
                reason: e.reason,
                failed_at: DateTime::parse_from_rfc3339(&e.at)
                    .ok()
                    .map(|t| t.with_timezone(&Utc)),
            },
            Err(_) => Self {
                id,
                queue,
                record: String::from_utf8_lossy(raw_entry).into_owned(),
                reason: "unreadable dead-letter entry (not written by this service)".into(),
                failed_at: None,
            },
        }
    }
}

/// What a replay or a discard did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Records replayed, or entries discarded.
    pub count: u64,
    /// Ids that were asked for and found (and acted on, unless another
    /// operator acted on them first).
    pub found: HashSet<String>,
}

/// The outcomes of several shards, added up.
impl std::ops::AddAssign for Outcome {
    fn add_assign(&mut self, other: Self) {
        self.count += other.count;
        self.found.extend(other.found);
    }
}

impl Buffer {
    /// Number of entries in the dead-letter lists of `queue`, over every
    /// shard. Errors: Redis unavailable.
    pub async fn dead_letter_len(&self, queue: Kind) -> Result<u64, BufferError> {
        let mut total = 0;
        for shard in self.keys().shards() {
            total += self.list_len(shard.dead_letter(queue)).await?;
        }
        Ok(total)
    }

    /// Up to `count` entries of the dead-letter lists of `queue` from position
    /// `offset`, the shards' lists taken one after the other in shard order
    /// (0 = the oldest of shard 0). Errors: Redis unavailable.
    pub async fn dead_letters(
        &self,
        queue: Kind,
        offset: u64,
        count: u64,
    ) -> Result<Vec<DeadLetter>, BufferError> {
        let (mut offset, mut out) = (offset, Vec::new());
        for shard in self.keys().shards() {
            let want = count - out.len() as u64;
            if want == 0 {
                break;
            }
            let len = self.list_len(shard.dead_letter(queue)).await?;
            if offset >= len {
                offset -= len;
                continue;
            }
            let raw = self
                .dead_letter_range(&shard, queue, offset as isize, want as isize)
                .await?;
            offset = 0;
            out.extend(raw.iter().map(|e| DeadLetter::parse(queue, e)));
        }
        Ok(out)
    }

    /// Up to `count` (at least 1) raw entries of `queue`'s dead-letter list
    /// in `shard` from position `start`.
    async fn dead_letter_range(
        &self,
        shard: &ShardKeys,
        queue: Kind,
        start: isize,
        count: isize,
    ) -> Result<Vec<Vec<u8>>, BufferError> {
        let key = shard.dead_letter(queue);
        self.with_conn(|mut c| async move { c.lrange(key, start, start + count - 1).await })
            .await
    }

    /// The entries of `queue`'s dead-letter list whose id is in `ids`,
    /// scanning the list in chunks (so memory holds one chunk plus the
    /// matches, at most `ids.len()`).
    async fn select_dead_letters(
        &self,
        shard: &ShardKeys,
        queue: Kind,
        ids: &HashSet<String>,
    ) -> Result<Vec<Vec<u8>>, BufferError> {
        let mut selected = Vec::new();
        let mut start: isize = 0;
        loop {
            let chunk = self
                .dead_letter_range(shard, queue, start, SCAN_CHUNK)
                .await?;
            let n = chunk.len() as isize;
            selected.extend(chunk.into_iter().filter(|e| ids.contains(&entry_id(e))));
            if n < SCAN_CHUNK {
                return Ok(selected);
            }
            start += n;
        }
    }

    /// Runs [`super::scripts::REPLAY`] on `entries` (each with its readable
    /// record; the others are logged and skipped). Returns the records
    /// replayed and the number of unreadable entries.
    async fn replay_entries(
        &self,
        shard: &ShardKeys,
        queue: Kind,
        entries: Vec<Vec<u8>>,
    ) -> Result<(u64, usize), BufferError> {
        let mut unreadable = 0;
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = entries
            .into_iter()
            .filter_map(|entry| {
                let raw = serde_json::from_slice::<StoredEntry>(&entry)
                    .ok()
                    .and_then(|s| s.raw());
                if raw.is_none() {
                    unreadable += 1;
                    tracing::warn!(id = %entry_id(&entry), "dead letter without a readable record; not replayed");
                }
                // A replay restarts the orphan clock (see `unstamp_deferred`).
                raw.map(|raw| {
                    let raw = match queue {
                        Kind::Messages => MessageRecord::unstamp_deferred(&raw).to_vec(),
                        _ => raw,
                    };
                    (entry, raw)
                })
            })
            .collect();
        let mut replayed = 0;
        for chunk in pairs.chunks(REPLAY_CHUNK) {
            let dead = shard.dead_letter(queue);
            let pending = shard.pending(queue);
            let n: u64 = self
                .with_conn(|mut c| async move {
                    let mut inv = self.scripts().replay.key(dead);
                    inv.key(pending).key(shard.lost()).key(shard.usage());
                    inv.arg(match queue {
                        Kind::Search => String::new(),
                        _ => format!("bytes:{}", queue.as_str()),
                    });
                    for (entry, raw) in chunk {
                        let lost = lost_field(queue, raw).unwrap_or_default();
                        inv.arg(entry.as_slice()).arg(raw.as_slice()).arg(lost);
                    }
                    inv.invoke_async(&mut c).await
                })
                .await?;
            replayed += n;
        }
        Ok((replayed, unreadable))
    }

    /// Puts dead-lettered records of `queue` back at the tail of its pending
    /// list: those whose id is in `ids`, or all of them when `ids` is `None`.
    /// Each is replayed at most once (see the module docs). Replaying all
    /// works from the head in chunks of [`REPLAY_CHUNK`] and stops after as
    /// many entries as the list held when it started, so memory holds one
    /// chunk, and records that fail again meanwhile are not replayed twice in
    /// one call. The caller wakes the flusher.
    /// Errors: Redis unavailable (what was replayed stays replayed).
    pub async fn replay_dead_letters(
        &self,
        queue: Kind,
        ids: Option<&HashSet<String>>,
    ) -> Result<Outcome, BufferError> {
        self.over_shards(|shard| async move { self.replay_in_shard(&shard, queue, ids).await })
            .await
    }

    /// `step` in every shard, one after the other, its outcomes summed.
    /// Errors: the first of `step`'s (what was done stays done).
    async fn over_shards<F, Fut>(&self, step: F) -> Result<Outcome, BufferError>
    where
        F: Fn(ShardKeys) -> Fut,
        Fut: std::future::Future<Output = Result<Outcome, BufferError>>,
    {
        let mut outcome = Outcome::default();
        for shard in self.keys().shards() {
            outcome += step(shard).await?;
        }
        Ok(outcome)
    }

    /// [`Buffer::replay_dead_letters`] in one shard.
    async fn replay_in_shard(
        &self,
        shard: &ShardKeys,
        queue: Kind,
        ids: Option<&HashSet<String>>,
    ) -> Result<Outcome, BufferError> {
        let mut outcome = Outcome::default();
        if let Some(ids) = ids {
            let selected = self.select_dead_letters(shard, queue, ids).await?;
            outcome.found = selected.iter().map(|e| entry_id(e)).collect();
            outcome.count = self.replay_entries(shard, queue, selected).await?.0;
            return Ok(outcome);
        }
        let total = self.list_len(shard.dead_letter(queue)).await? as usize;
        // Unreadable entries stay at the head; skip past them.
        let mut skip = 0usize;
        let mut seen = 0usize;
        while seen < total {
            let want = (total - seen).min(REPLAY_CHUNK);
            let chunk = self
                .dead_letter_range(shard, queue, skip as isize, want as isize)
                .await?;
            if chunk.is_empty() {
                break;
            }
            seen += chunk.len();
            let (replayed, unreadable) = self.replay_entries(shard, queue, chunk).await?;
            outcome.count += replayed;
            skip += unreadable;
        }
        Ok(outcome)
    }

    /// Removes entries from `queue`'s dead-letter list: those whose id is in
    /// `ids`, or all of them when `ids` is `None` (atomically).
    /// Errors: Redis unavailable.
    pub async fn discard_dead_letters(
        &self,
        queue: Kind,
        ids: Option<&HashSet<String>>,
    ) -> Result<Outcome, BufferError> {
        self.over_shards(|shard| async move { self.discard_in_shard(&shard, queue, ids).await })
            .await
    }

    /// [`Buffer::discard_dead_letters`] in one shard.
    async fn discard_in_shard(
        &self,
        shard: &ShardKeys,
        queue: Kind,
        ids: Option<&HashSet<String>>,
    ) -> Result<Outcome, BufferError> {
        let dead = shard.dead_letter(queue);
        let Some(ids) = ids else {
            let count: u64 = self
                .with_conn(|mut c| async move {
                    let marks = match queue {
                        Kind::Chats => "c",
                        Kind::Messages => "m",
                        Kind::Search => "",
                    };
                    self.scripts()
                        .discard_all
                        .key(dead)
                        .key(shard.lost())
                        .arg(marks)
                        .invoke_async(&mut c)
                        .await
                })
                .await?;
            return Ok(Outcome {
                count,
                found: HashSet::new(),
            });
        };
        let selected = self.select_dead_letters(shard, queue, ids).await?;
        let mut outcome = Outcome::default();
        for chunk in selected.chunks(REPLAY_CHUNK) {
            let dead = dead.clone();
            let removed: Vec<u64> = self
                .with_conn(|mut c| async move {
                    let mut pipe = redis::pipe();
                    for entry in chunk {
                        pipe.lrem(&dead, 1, entry.as_slice());
                    }
                    // Their `lost` marks go too (see scripts::DISCARD_ALL).
                    for entry in chunk {
                        let raw = serde_json::from_slice::<StoredEntry>(entry)
                            .ok()
                            .and_then(|s| s.raw());
                        if let Some(field) = raw.and_then(|r| lost_field(queue, &r)) {
                            pipe.hdel(shard.lost(), field).ignore();
                        }
                    }
                    pipe.query_async(&mut c).await
                })
                .await?;
            outcome.count += removed.iter().sum::<u64>();
            outcome.found.extend(chunk.iter().map(|e| entry_id(e)));
        }
        Ok(outcome)
    }
}

/// The field of a dead-lettered record in the `lost` hash (see
/// [`super::keys::ShardKeys::lost`]): `c:{application_id}:{n}` for a chat,
/// `m:{application_id}:{chat}:{n}` for a message; `None` for a record that
/// does not decode.
pub fn lost_field(kind: Kind, raw: &[u8]) -> Option<String> {
    match kind {
        Kind::Chats => crate::domain::record::ChatRecord::decode(raw)
            .ok()
            .map(|r| crate::domain::record::chat_lost_field(r.application_id, r.number)),
        Kind::Messages => crate::domain::record::MessageRecord::decode(raw)
            .ok()
            .map(|r| {
                crate::domain::record::message_lost_field(r.application_id, r.chat_number, r.number)
            }),
        Kind::Search => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_keep_the_exact_bytes_of_any_record() {
        for raw in [
            &b"7\t3\t12\t1700000000123\thello\tworld"[..],
            b"1\t2\t\xff\xfe",
        ] {
            let e = entry(raw, "boom");
            let stored: StoredEntry = serde_json::from_str(&e).unwrap();
            assert_eq!(stored.raw().unwrap(), raw);
            let parsed = DeadLetter::parse(Kind::Messages, e.as_bytes());
            assert_eq!(parsed.reason, "boom");
            assert!(parsed.failed_at.is_some());
            assert_eq!(parsed.id.len(), 32);
        }
    }

    #[test]
    fn ids_are_content_addressed() {
        let a = entry(b"1\t2\t3", "x");
        assert_eq!(entry_id(a.as_bytes()), entry_id(a.as_bytes()));
        let b = entry(b"1\t2\t4", "x");
        assert_ne!(entry_id(a.as_bytes()), entry_id(b.as_bytes()));
    }
}
