//! The search indexer: applies the changes queued in `pending:search` to
//! Meilisearch (only when `MEILI_URL` is set).
//!
//! The flusher feeds it: [`SearchFeed`] is the after-commit job that queues
//! one upsert per stored message batch, in the batch's acknowledgement.
//!
//! The queue is durable (Redis) and is drained with the lease queue
//! ([`crate::writebehind::lease`]): a batch of ops is owned
//! under a lease, applied, then acknowledged. While Meilisearch is down (or
//! answers with an internal error), the batch is given back and retried with
//! exponential backoff, so nothing is lost; the batch of a dead indexer comes
//! back when its lease expires. An op that Meilisearch rejects as invalid is
//! dead-lettered (`deadletter:search`) with the reason.
//!
//! **Leases.** A batch may take longer than its lease (50 ops, each a
//! Meilisearch task waited for). So the indexer renews the lease before each
//! op once a third of it has passed, bounds each op to half the lease (a
//! slower op counts as Meilisearch failing: the batch is given back and
//! retried with backoff), and stops, acknowledging nothing, when it finds
//! the lease lost (another instance recovered the batch and applies it).
//! So no batch is applied by two indexers at once, nor again and again.
//!
//! **Lag.** While Meilisearch is up, a message is searchable about
//! [`POLL_INTERVAL`] plus Meilisearch's own processing time after its flush;
//! during an outage, until the outage ends (plus at most the backoff, 30 s).

use std::sync::Arc;
use std::time::Duration;

use sqlx::MySqlPool;
use tokio_util::sync::CancellationToken;

use crate::store::search::meili::{ApplyError, IndexOp, MeiliSearch, doc_id};
use crate::writebehind::after_commit::{AfterCommit, Committed};
use crate::writebehind::buffer::search_op_json;
use crate::writebehind::keys::ShardKeys;
use crate::writebehind::lease::{Collection, HandOn};
use crate::writebehind::{Buffer, BufferError, Kind};

/// How often the indexer looks for queued ops.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Ops claimed per batch.
const OPS_PER_BATCH: usize = 50;

/// Why an indexing pass stopped early (its batch was given back).
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// Meilisearch unreachable or failing.
    #[error(transparent)]
    Meili(#[from] ApplyError),
    /// Redis unavailable.
    #[error(transparent)]
    Buffer(#[from] BufferError),
    /// MariaDB unavailable.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Applies queued index changes.
pub struct Indexer {
    buffer: Buffer,
    pool: MySqlPool,
    meili: MeiliSearch,
    lease: Duration,
}

impl Indexer {
    /// An indexer reading `buffer`'s search queue.
    pub fn new(buffer: Buffer, pool: MySqlPool, meili: MeiliSearch, lease: Duration) -> Self {
        Self {
            buffer,
            pool,
            meili,
            lease,
        }
    }

    /// Applies every op queued when it starts, shard by shard. Returns the
    /// number applied. Errors: Meilisearch, Redis or MariaDB unavailable (the
    /// batch in hand is given back first).
    pub async fn index_once(&self) -> Result<u64, IndexError> {
        let mut applied = 0;
        for shard in self.buffer.keys().shards() {
            applied += self.index_shard(&shard).await?;
        }
        Ok(applied)
    }

    /// [`Self::index_once`] in one shard.
    async fn index_shard(&self, shard: &ShardKeys) -> Result<u64, IndexError> {
        let mut budget = self.buffer.shard_pending_len(shard, Kind::Search).await?;
        let queue = shard.record_queue(Kind::Search);
        let leases = self.buffer.lease_queue();
        let mut applied = 0;
        while budget > 0 {
            let Some(batch) = leases.claim(&queue, OPS_PER_BATCH, self.lease).await? else {
                break;
            };
            budget = budget.saturating_sub(batch.items.len() as u64);
            let mut dead = Vec::new();
            let mut renewed = tokio::time::Instant::now();
            for raw in &batch.items {
                if renewed.elapsed() > self.lease / 3 {
                    if !leases.renew(&batch, self.lease).await? {
                        tracing::warn!(key = %batch.key, "index batch's lease lost; its recoverer applies it");
                        return Ok(applied);
                    }
                    renewed = tokio::time::Instant::now();
                }
                let result = match serde_json::from_slice::<IndexOp>(raw) {
                    Ok(op) => match tokio::time::timeout(self.lease / 2, self.apply(&op)).await {
                        Ok(result) => result,
                        Err(_) => Err(IndexError::Meili(ApplyError::Unreachable(format!(
                            "an index op took longer than half the lease ({} ms)",
                            (self.lease / 2).as_millis()
                        )))),
                    },
                    Err(e) => Err(IndexError::Meili(ApplyError::Rejected(format!(
                        "undecodable op: {e}"
                    )))),
                };
                match result {
                    Ok(()) => applied += 1,
                    Err(IndexError::Meili(ApplyError::Rejected(reason))) => {
                        tracing::error!(%reason, op = %String::from_utf8_lossy(raw), "index op dead-lettered");
                        dead.push(crate::writebehind::deadletter::entry(raw, &reason).into_bytes());
                    }
                    Err(e) => {
                        if let Err(re) = leases.give_back(&batch).await {
                            tracing::warn!(error = %re, "could not release index batch; it returns when its lease expires");
                        }
                        return Err(e);
                    }
                }
            }
            let dead_letters = HandOn {
                key: shard.dead_letter(Kind::Search),
                into: Collection::List,
                items: dead,
            };
            if !leases.ack(&batch, &[dead_letters]).await? {
                tracing::warn!(key = %batch.key, "index batch's lease lost before its acknowledgement; its recoverer applies it again (idempotently)");
                return Ok(applied);
            }
        }
        Ok(applied)
    }

    async fn apply(&self, op: &IndexOp) -> Result<(), IndexError> {
        match op {
            IndexOp::Sync { messages } => {
                let docs = crate::store::messages::search_docs(&self.pool, messages).await?;
                let live: std::collections::HashSet<&str> =
                    docs.iter().map(|d| d.id.as_str()).collect();
                let gone: Vec<String> = messages
                    .iter()
                    .map(|(c, n)| doc_id(*c, *n))
                    .filter(|id| !live.contains(id.as_str()))
                    .collect();
                Ok(self.meili.replace_and_delete(&docs, &gone).await?)
            }
            other => Ok(self.meili.apply_delete(other).await?),
        }
    }

    /// Sets up the index, then applies queued ops every [`POLL_INTERVAL`]
    /// until `stop`, backing off while Meilisearch is down.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut backoff = new_backoff();
        let mut ready = false;
        loop {
            let step = async {
                if !ready {
                    self.meili.ensure_index().await?;
                    ready = true;
                    tracing::info!("Meilisearch index ready");
                }
                self.index_once().await
            };
            let delay = match step.await {
                Ok(_) => {
                    backoff = new_backoff();
                    POLL_INTERVAL
                }
                Err(e) => {
                    let d = backoff.next().unwrap_or(Duration::from_secs(30));
                    tracing::warn!(error = %e, retry_in_ms = d.as_millis() as u64, "indexing failed; ops stay queued");
                    d
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}

fn new_backoff() -> impl Iterator<Item = Duration> {
    crate::writebehind::flusher::retry_backoff(Duration::from_millis(500), Duration::from_secs(30))
}

/// The after-commit job of the indexer: for a message batch that stored
/// messages, queues one [`IndexOp::Sync`] of them on the shard's
/// `pending:search` (registered only when `MEILI_URL` is set).
pub struct SearchFeed;

impl AfterCommit for SearchFeed {
    fn hand_on(&self, committed: &Committed<'_>) -> Result<Vec<HandOn>, BufferError> {
        if committed.kind != Kind::Messages || committed.stored_messages.is_empty() {
            return Ok(Vec::new());
        }
        let op = IndexOp::Sync {
            messages: committed.stored_messages.to_vec(),
        };
        Ok(vec![HandOn {
            key: committed.shard.pending(Kind::Search),
            into: Collection::List,
            items: vec![search_op_json(&op)?.into_bytes()],
        }])
    }
}
