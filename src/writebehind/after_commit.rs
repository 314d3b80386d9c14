//! What follows a commit: the jobs that must hear of every flushed batch
//! (the counts refresh, the search indexer) tell the flusher what to write
//! through [`AfterCommit`], so that the flusher names none of them.
//!
//! Their writes are not made after the acknowledgement, nor before it: they
//! are [`HandOn`]s of the acknowledging script (see [`super::lease`]), so
//! they happen exactly when the batch leaves its queue. A flusher that dies
//! between COMMIT and acknowledgement leaves the batch to be recovered and
//! written again (a no-op), and its hand-ons are made then; a full Redis
//! (`noeviction`) cannot refuse them while accepting the acknowledgement.

use super::BufferError;
use super::keys::{Kind, ShardKeys};
use super::lease::HandOn;

/// What one flushed batch committed to MariaDB.
#[derive(Debug, Clone, Copy)]
pub struct Committed<'a> {
    /// The batch's queue ([`Kind::Chats`] or [`Kind::Messages`]).
    pub kind: Kind,
    /// The shard it came from; hand-on keys must be in it.
    pub shard: &'a ShardKeys,
    /// The parents whose children changed: application ids for a chat
    /// batch, chat ids for a message batch.
    pub parents: &'a [u64],
    /// The messages this batch stored, as `(chat id, number)` (empty for a
    /// chat batch).
    pub stored_messages: &'a [(u64, i64)],
}

/// A job that follows each commit of the flusher.
pub trait AfterCommit: Send + Sync {
    /// The writes that follow `committed`, made by its batch's
    /// acknowledgement. Errors: a write could not be encoded; the batch is
    /// then left to its lease and written again.
    fn hand_on(&self, committed: &Committed<'_>) -> Result<Vec<HandOn>, BufferError>;
}
