//! The search indexer: applies the changes queued in `pending:search` to the
//! search index: Meilisearch when `MEILI_URL` is set, else the term index in
//! MariaDB ([`crate::store::search::terms`]). Either way the flush never
//! waits for the index.
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
//! dead-lettered (`deadletter:search`) with the reason. The term index
//! retries every MariaDB failure the same way (a deadlock between two
//! indexers included).
//!
//! **Leases.** A batch may take longer than its lease (50 ops, each a
//! Meilisearch task waited for). So the indexer renews the lease before each
//! op once a third of it has passed, bounds each op to half the lease (a
//! slower op counts as Meilisearch failing: the batch is given back and
//! retried with backoff), and stops, acknowledging nothing, when it finds
//! the lease lost (another instance recovered the batch and applies it).
//! So no batch is applied by two indexers at once, nor again and again.
//!
//! **Lag.** While the engine is up, a message is searchable at most the
//! poll interval (`SEARCH_INDEX_INTERVAL_MS`, 1 s: an indexer that found
//! work polls again at once) plus the engine's own processing time after
//! its flush; during an outage, until the outage ends
//! (plus at most the backoff, 30 s). Each indexed message's lag, from its
//! creation or last edit to the moment it is searchable, goes to the
//! `chat_search_lag_seconds` histogram.

use std::sync::Arc;
use std::time::Duration;

use sqlx::MySqlPool;
use tokio_util::sync::CancellationToken;

use crate::store::search::meili::{ApplyError, MeiliSearch};
use crate::store::search::{IndexOp, doc_id, terms};
use crate::writebehind::after_commit::{AfterCommit, Committed};
use crate::writebehind::buffer::search_op_json;
use crate::writebehind::keys::ShardKeys;
use crate::writebehind::lease::{Collection, HandOn};
use crate::writebehind::{Buffer, BufferError, Kind};

/// Ops claimed per batch with Meilisearch (each op is one task waited for).
const MEILI_OPS_PER_BATCH: usize = 50;

/// Ops claimed per batch with the term index. Their syncs are merged and
/// written [`TERMS_KEYS_PER_TRANSACTION`] messages at a time, so that small
/// flushed batches do not cost a commit (an fsync) each.
const TERMS_OPS_PER_BATCH: usize = 8;

/// Messages per term-index transaction when syncs are merged.
const TERMS_KEYS_PER_TRANSACTION: usize = 5000;

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
    /// Meilisearch, or `None` for the term index in `pool`.
    meili: Option<MeiliSearch>,
    lease: Duration,
    interval: Duration,
    workers: usize,
}

impl Indexer {
    /// An indexer reading `buffer`'s search queue into `meili`, or into the
    /// term index in `pool` when `meili` is `None`, every `interval`, under
    /// leases of `lease`.
    pub fn new(
        buffer: Buffer,
        pool: MySqlPool,
        meili: Option<MeiliSearch>,
        lease: Duration,
        interval: Duration,
    ) -> Self {
        Self {
            buffer,
            pool,
            meili,
            lease,
            interval,
            workers: 1,
        }
    }

    /// The same indexer with `workers` (at least 1) batches applied at once
    /// (`SEARCH_INDEX_WORKERS`): each worker claims its own batches under
    /// its own lease, from any shard.
    pub fn with_workers(mut self, workers: usize) -> Self {
        self.workers = workers.max(1);
        self
    }

    /// Applies every op queued when it starts, in every shard, with up to
    /// the configured workers at once. Returns the number applied. Errors:
    /// Meilisearch, Redis or MariaDB unavailable (the batch in hand is given
    /// back first; the other workers finish theirs).
    pub async fn index_once(&self) -> Result<u64, IndexError> {
        let shards: Vec<ShardKeys> = self.buffer.keys().shards().collect();
        // Each shard is visited by every worker once (a busy shard is shared;
        // a drained one is left at once), in turns taken from `next`.
        let next = std::sync::atomic::AtomicUsize::new(0);
        let workers: Vec<_> = (0..self.workers)
            .map(|_| self.index_worker(&shards, &next))
            .collect();
        let mut applied = 0;
        for r in futures_util::future::join_all(workers).await {
            applied += r?;
        }
        Ok(applied)
    }

    /// One worker of [`Self::index_once`]: takes turns `(shard, worker)`
    /// from `next` until every shard had each worker once.
    async fn index_worker(
        &self,
        shards: &[ShardKeys],
        next: &std::sync::atomic::AtomicUsize,
    ) -> Result<u64, IndexError> {
        let mut applied = 0;
        loop {
            let turn = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(shard) = shards.get(turn / self.workers) else {
                return Ok(applied);
            };
            applied += self.index_shard(shard).await?;
        }
    }

    /// [`Self::index_once`] in one shard.
    async fn index_shard(&self, shard: &ShardKeys) -> Result<u64, IndexError> {
        let mut budget = self.buffer.shard_pending_len(shard, Kind::Search).await?;
        let queue = shard.record_queue(Kind::Search);
        let leases = self.buffer.lease_queue();
        let mut applied = 0;
        while budget > 0 {
            let per_batch = match self.meili {
                Some(_) => MEILI_OPS_PER_BATCH,
                None => TERMS_OPS_PER_BATCH,
            };
            let Some(batch) = leases.claim(&queue, per_batch, self.lease).await? else {
                break;
            };
            budget = budget.saturating_sub(batch.items.len() as u64);
            let mut dead = Vec::new();
            let mut renewed = tokio::time::Instant::now();
            for (raw, op, ops) in self.work(&batch.items) {
                if renewed.elapsed() > self.lease / 3 {
                    if !leases.renew(&batch, self.lease).await? {
                        tracing::warn!(key = %batch.key, "index batch's lease lost; its recoverer applies it");
                        return Ok(applied);
                    }
                    renewed = tokio::time::Instant::now();
                }
                let result = match op {
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
                    Ok(()) => applied += ops,
                    Err(IndexError::Meili(ApplyError::Rejected(reason))) => {
                        tracing::error!(%reason, op = %String::from_utf8_lossy(&raw), "index op dead-lettered");
                        dead.push(
                            crate::writebehind::deadletter::entry(&raw, &reason).into_bytes(),
                        );
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

    /// The work of a claimed batch, as `(raw op, decoded op, ops it stands
    /// for)`: each op in order for Meilisearch; for the term index, the
    /// deletes and undecodable ops in order, then the messages of every
    /// sync merged, deduplicated and split into syncs of at most
    /// [`TERMS_KEYS_PER_TRANSACTION`] messages (a sync reads the messages
    /// when applied, so merging and reordering syncs cannot change the
    /// result).
    fn work(&self, items: &[Vec<u8>]) -> Vec<(Vec<u8>, Result<IndexOp, serde_json::Error>, u64)> {
        let decoded = items
            .iter()
            .map(|raw| (raw.clone(), serde_json::from_slice::<IndexOp>(raw), 1));
        if self.meili.is_some() {
            return decoded.collect();
        }
        let mut work = Vec::new();
        let mut keys: Vec<(u64, i64)> = Vec::new();
        let mut syncs = 0u64;
        for (raw, op, n) in decoded {
            match op {
                Ok(IndexOp::Sync { messages }) => {
                    keys.extend(messages);
                    syncs += n;
                }
                other => work.push((raw, other, n)),
            }
        }
        keys.sort_unstable();
        keys.dedup();
        let chunks = keys.chunks(TERMS_KEYS_PER_TRANSACTION).count() as u64;
        for (i, chunk) in keys.chunks(TERMS_KEYS_PER_TRANSACTION).enumerate() {
            let op = IndexOp::Sync {
                messages: chunk.to_vec(),
            };
            // The merged ops count once, with the last chunk.
            let ops = if i as u64 + 1 == chunks { syncs } else { 0 };
            let raw = serde_json::to_vec(&op).unwrap_or_default();
            work.push((raw, Ok(op), ops));
        }
        work
    }

    async fn apply(&self, op: &IndexOp) -> Result<(), IndexError> {
        match (op, &self.meili) {
            (IndexOp::Sync { messages }, meili) => {
                let docs = crate::store::search::search_docs(&self.pool, messages).await?;
                let live: std::collections::HashSet<(u64, i64)> =
                    docs.iter().map(|d| (d.chat_id, d.number)).collect();
                let gone: Vec<(u64, i64)> = messages
                    .iter()
                    .filter(|k| !live.contains(k))
                    .copied()
                    .collect();
                match meili {
                    Some(meili) => {
                        let gone: Vec<String> = gone.iter().map(|(c, n)| doc_id(*c, *n)).collect();
                        meili.replace_and_delete(&docs, &gone).await?;
                    }
                    None => {
                        terms::apply_sync(&self.pool, &docs, &gone).await?;
                    }
                }
                let now = chrono::Utc::now().naive_utc();
                for at in docs.iter().filter_map(|d| d.changed_at) {
                    crate::telemetry::metrics::search_indexed(
                        (now - at).to_std().unwrap_or_default(),
                    );
                }
                Ok(())
            }
            (op, Some(meili)) => Ok(meili.apply_delete(op).await?),
            (IndexOp::DeleteChat { chat_id }, None) => {
                Ok(terms::delete_chat(&self.pool, *chat_id).await?)
            }
            (IndexOp::DeleteApplication { application_id }, None) => {
                Ok(terms::delete_application(&self.pool, *application_id).await?)
            }
        }
    }

    /// Sets up the index (Meilisearch), then applies queued ops every
    /// interval until `stop`, backing off while the engine is down.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut backoff = new_backoff();
        let mut ready = false;
        loop {
            let step = async {
                if let (false, Some(meili)) = (ready, &self.meili) {
                    meili.ensure_index().await?;
                    tracing::info!("Meilisearch index ready");
                }
                ready = true;
                self.index_once().await
            };
            let delay = match step.await {
                // Ops were waiting: what came during the pass goes at once
                // (the interval is the poll period of an idle indexer).
                Ok(applied) if applied > 0 => {
                    backoff = new_backoff();
                    Duration::ZERO
                }
                Ok(_) => {
                    backoff = new_backoff();
                    self.interval
                }
                Err(e) => {
                    crate::telemetry::metrics::search_index_failed();
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

/// Meilisearch tasks `reindex` keeps queued at once. Meilisearch merges
/// queued document additions to one index into one batch (its
/// auto-batching), so several in flight let it index many batches in one
/// pass, where waiting for each task before sending the next made every
/// batch a pass of its own (664 messages/s, issue 37). The live indexer
/// keeps `SEARCH_INDEX_WORKERS` (2) in flight.
pub const REINDEX_TASKS_IN_FLIGHT: usize = 8;

/// Rebuilds the search index from MariaDB (`chat-api reindex`): every live
/// message, by id, `batch_size` at a time, into `meili`, or into the term
/// index in `pool` when `meili` is `None`. Into Meilisearch, up to
/// `in_flight` batches are queued (see [`REINDEX_TASKS_IN_FLIGHT`]); the
/// oldest is waited for before the next batch is read, so each batch is
/// sent right after its read. Calls
/// `progress` with each batch's size once it is indexed. Safe while the
/// service runs (documents are replaced, and hits are re-read from
/// MariaDB). Returns the number of messages indexed. Errors: MariaDB or
/// Meilisearch failed (run it again: it starts over, idempotently).
pub async fn reindex(
    pool: &MySqlPool,
    meili: Option<&MeiliSearch>,
    batch_size: i64,
    in_flight: usize,
    progress: impl Fn(u64),
) -> anyhow::Result<u64> {
    let in_flight = in_flight.max(1);
    let (mut after, mut indexed) = (0u64, 0u64);
    // Meilisearch tasks queued and not yet waited for, oldest first, with
    // their batch's size.
    let mut queued = std::collections::VecDeque::new();
    loop {
        // The oldest task is waited for before the next batch is read, so
        // that a batch is sent within moments of its read: an edit or a
        // delete the live indexer applies in between cannot be undone by a
        // body read long before.
        if let Some(meili) = meili
            && queued.len() >= in_flight
        {
            let (task, size) = queued.pop_front().expect("in_flight >= 1");
            meili.wait(task).await?;
            indexed += size;
            progress(size);
        }
        let (docs, last) = crate::store::search::search_docs_after(pool, after, batch_size).await?;
        let Some(last) = last else { break };
        let n = docs.len() as u64;
        match meili {
            Some(meili) => {
                queued.push_back((meili.enqueue_upsert(&docs).await?, n));
            }
            None => {
                terms::apply_sync(pool, &docs, &[]).await?;
                indexed += n;
                progress(n);
            }
        }
        after = last;
    }
    if let Some(meili) = meili {
        for (task, size) in queued {
            meili.wait(task).await?;
            indexed += size;
            progress(size);
        }
    }
    Ok(indexed)
}

fn new_backoff() -> impl Iterator<Item = Duration> {
    crate::writebehind::flusher::retry_backoff(Duration::from_millis(500), Duration::from_secs(30))
}

/// The after-commit job of the indexer: for a message batch that stored
/// messages, queues one [`IndexOp::Sync`] of them on the shard's
/// `pending:search` (for either backend).
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
