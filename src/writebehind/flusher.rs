//! The flusher: drains the pending lists into MariaDB in batches.
//!
//! **Who owns a batch, and when it is acknowledged.** A batch is moved
//! atomically from `pending:{kind}` to a fresh `processing:{kind}:{uuid}`
//! list, with a lease in the `leases` sorted set ([`super::lease::LeaseQueue::claim`]). While
//! the lease runs, only its claimer touches it. The claimer writes it with
//! idempotent multi-row INSERTs and COMMITs, and only then acknowledges it
//! ([`super::lease::LeaseQueue::ack`]), which deletes the processing list and lease. So:
//! - crash before COMMIT: nothing was written; the lease expires and any
//!   instance moves the batch back to the head of its pending list
//!   ([`Flusher::recover_once`], at start-up and every lease period);
//! - crash after COMMIT, before the acknowledgement: the same happens, and
//!   the second write is a no-op thanks to the unique keys;
//! - MariaDB unreachable: the batch is given back at once ([`super::lease::LeaseQueue::give_back`])
//!   and the flusher retries with exponential backoff; meanwhile the request
//!   path keeps queueing until `MAX_PENDING` (then 503).
//!
//! Chats are flushed before messages, so a message normally finds its chat.
//! When it does not (the chat sits in another flusher's batch), the message is
//! deferred to the tail of the queue; after `ORPHAN_MAX_AGE_SECS` it is
//! dead-lettered instead. Records whose application or chat was deleted are
//! dropped and counted. Neither ever blocks the queue.
//!
//! **When it runs** (the policy of Vector's batcher, by count or by age):
//! every shard when a request pushes a list to its batch size (it wakes the
//! flusher through a [`Notify`], no polling) and every `FLUSH_INTERVAL_SECS`;
//! and one shard when this instance has not flushed it for
//! `FLUSH_MAX_AGE_MS` (checked every quarter of that; an empty shard's
//! flush is its two LLENs), so that with 16 shards a slow trickle into each does not
//! wait for a batch size that only the sum of the shards reaches. On
//! shutdown it drains what is pending before returning.

use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;
use sqlx::MySqlPool;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::after_commit::{AfterCommit, Committed};
use super::buffer::{Buffer, BufferError, now_ms};
use super::keys::{Kind, ShardKeys};
use super::lease::{Batch, Collection, HandOn};
use crate::domain::record::{ChatRecord, DecodeError, MessageRecord};
use crate::store::bulk::{self, BatchOutcome, Disposition};

/// Batch sizes, timer and lease of the flusher.
#[derive(Debug, Clone)]
pub struct FlushSettings {
    /// Records per chat batch (`CHAT_BATCH_SIZE`).
    pub chat_batch_size: usize,
    /// Records per message batch (`MESSAGE_BATCH_SIZE`).
    pub message_batch_size: usize,
    /// Timer period (`FLUSH_INTERVAL_SECS`).
    pub interval: Duration,
    /// Longest a shard that holds records goes without a flush
    /// (`FLUSH_MAX_AGE_MS`); `None`: no age trigger.
    pub max_age: Option<Duration>,
    /// Lease of a claimed batch (`LEASE_SECS`).
    pub lease: Duration,
    /// Age past which a message whose chat never arrived is dead-lettered.
    pub orphan_max_age: Duration,
    /// Time given to the final drain on shutdown.
    pub shutdown_timeout: Duration,
    /// Fault injection (`FAULT_FLUSH_DELAY_MS`): a pause between COMMIT and
    /// acknowledgement, zero in production.
    pub fault_delay: Duration,
    /// Flush tasks that share a pass (`FLUSH_WORKERS`), at least 1.
    pub workers: usize,
    /// With read replicas: how long the read-your-writes mark of each
    /// batch's parents lives (see [`crate::store::replicas`]); `None`
    /// without replicas (no mark is kept).
    pub causal_mark_ttl: Option<Duration>,
}

impl FlushSettings {
    /// Batch size of `kind`.
    pub fn batch_size(&self, kind: Kind) -> usize {
        match kind {
            Kind::Messages => self.message_batch_size,
            _ => self.chat_batch_size,
        }
    }
}

/// What one [`Flusher::flush_once`] did, in records (or batches).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FlushReport {
    /// Batches claimed.
    pub batches: u64,
    /// Records stored in MariaDB.
    pub written: u64,
    /// Records dropped because their application or chat was deleted.
    pub dropped: u64,
    /// Messages sent back to wait for their chat.
    pub deferred: u64,
    /// Records moved to the dead-letter list.
    pub dead_lettered: u64,
    /// Batches written after their lease had been lost (written again by the
    /// recoverer; harmless, as writes are idempotent).
    pub lost_leases: u64,
}

impl FlushReport {
    /// Whether the pass claimed batches but only deferred them: what is left
    /// is messages waiting for a chat that is not coming, and flushing again
    /// now would do nothing more.
    pub fn only_deferred(&self) -> bool {
        self.batches > 0 && self.written + self.dropped + self.dead_lettered == 0
    }
}

impl std::ops::AddAssign for FlushReport {
    fn add_assign(&mut self, o: Self) {
        self.batches += o.batches;
        self.written += o.written;
        self.dropped += o.dropped;
        self.deferred += o.deferred;
        self.dead_lettered += o.dead_lettered;
        self.lost_leases += o.lost_leases;
    }
}

/// Why a flush stopped early. The batch in hand was given back first.
#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    /// MariaDB could not be reached.
    #[error("database unavailable: {0}")]
    Database(#[from] sqlx::Error),
    /// Redis could not be reached.
    #[error(transparent)]
    Buffer(#[from] BufferError),
    /// The write did not finish within half a lease.
    #[error("the write took longer than half a lease")]
    Timeout,
}

/// The flusher of one service instance.
pub struct Flusher {
    buffer: Buffer,
    pool: MySqlPool,
    settings: FlushSettings,
    /// The jobs that follow each commit (see [`super::after_commit`]).
    after_commit: Vec<Arc<dyn AfterCommit>>,
    /// Woken by the request path when a list reaches its batch size, and by
    /// read-your-writes waiters. Holds at most one permit, so wake-ups that
    /// arrive during a flush cause exactly one more flush.
    wake: Arc<Notify>,
    /// Incremented after every flush attempt; waiters watch it.
    generation: watch::Sender<u64>,
    /// When this instance last began to flush each shard (by shard index),
    /// for the age trigger.
    last_flushed: std::sync::Mutex<Vec<tokio::time::Instant>>,
}

/// A cheap handle to wake the flusher and wait for its next pass.
#[derive(Clone)]
pub struct FlushHandle {
    wake: Arc<Notify>,
    generation: watch::Receiver<u64>,
}

impl FlushHandle {
    /// Asks for a flush now (size trigger). Never blocks.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Asks for a flush and waits until a flush pass that started after this
    /// call has ended, or until `timeout`. Returns false on timeout.
    pub async fn flush_and_wait(&self, timeout: Duration) -> bool {
        let mut rx = self.generation.clone();
        let seen = *rx.borrow_and_update();
        self.wake();
        // The pass running now may have claimed before our record arrived,
        // so wait for the one after it as well.
        tokio::time::timeout(timeout, async {
            while *rx.borrow_and_update() < seen + 2 {
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await
        .is_ok()
    }
}

impl Flusher {
    /// A flusher over `buffer` writing to `pool`.
    pub fn new(buffer: Buffer, pool: MySqlPool, settings: FlushSettings) -> Self {
        let shards = usize::from(buffer.keys().shard_count());
        Self {
            pool,
            settings,
            after_commit: Vec::new(),
            wake: Arc::new(Notify::new()),
            generation: watch::Sender::new(0),
            last_flushed: std::sync::Mutex::new(vec![tokio::time::Instant::now(); shards]),
            buffer,
        }
    }

    /// The same flusher, telling `job` of each commit (its writes are made
    /// by the batch's acknowledgement).
    pub fn with_after_commit(mut self, job: Arc<dyn AfterCommit>) -> Self {
        self.after_commit.push(job);
        self
    }

    /// A handle for the request path.
    pub fn handle(&self) -> FlushHandle {
        FlushHandle {
            wake: self.wake.clone(),
            generation: self.generation.subscribe(),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &FlushSettings {
        &self.settings
    }

    /// One flush pass over every shard. `FLUSH_WORKERS` tasks share it: each
    /// takes the next shard not yet taken (an atomic counter), so two tasks
    /// never write one shard's batches at once, and a slow shard does not
    /// hold the others back. See [`Self::flush_shard`] for one shard.
    ///
    /// Errors: MariaDB or Redis unavailable, or a write slower than half a
    /// lease; the batch in hand was given back to its pending list. The
    /// other workers finish their shard first; what they flushed stays
    /// flushed.
    pub async fn flush_once(&self) -> Result<FlushReport, FlushError> {
        let all: Vec<u16> = (0..self.buffer.keys().shard_count()).collect();
        self.flush_shards(&all).await
    }

    /// Flushes the shards that this instance has not begun to flush for
    /// `max_age` (the age trigger). A flush of an empty shard is its two
    /// LLENs and nothing more, and counts as a flush, so an idle service
    /// asks each shard once per `max_age`. Errors: as [`Self::flush_once`].
    pub async fn flush_aged(&self, max_age: Duration) -> Result<FlushReport, FlushError> {
        let now = tokio::time::Instant::now();
        let stale: Vec<u16> = {
            let last = self.last_flushed.lock().expect("not poisoned");
            (0..self.buffer.keys().shard_count())
                .filter(|&i| now.duration_since(last[usize::from(i)]) >= max_age)
                .collect()
        };
        if stale.is_empty() {
            return Ok(FlushReport::default());
        }
        self.flush_shards(&stale).await
    }

    /// One flush pass over `shards` (indexes), shared by the
    /// `FLUSH_WORKERS` tasks as [`Self::flush_once`] describes.
    async fn flush_shards(&self, shards: &[u16]) -> Result<FlushReport, FlushError> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let next = AtomicUsize::new(0);
        let unconfirmed = std::sync::Mutex::new(Vec::new());
        let worker = || async {
            let mut report = FlushReport::default();
            loop {
                let Some(&i) = shards.get(next.fetch_add(1, Ordering::Relaxed)) else {
                    return Ok::<_, FlushError>(report);
                };
                match self.flush_shard(&self.buffer.keys().shard(i)).await {
                    Ok(r) => report += r,
                    // REDIS_DURABILITY=replica and no replica confirmed
                    // this shard's batch (on a cluster, its master's replica
                    // is down or resyncing): the other shards go on, and
                    // this one is tried again next pass.
                    Err(FlushError::Buffer(BufferError::NotReplicated)) => {
                        unconfirmed.lock().expect("not poisoned").push(i);
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        let results =
            futures_util::future::join_all((0..self.settings.workers.max(1)).map(|_| worker()))
                .await;
        let mut report = FlushReport::default();
        let mut error = None;
        for r in results {
            match r {
                Ok(r) => report += r,
                Err(e) => error = Some(e),
            }
        }
        if report.batches > 0 {
            tracing::info!(?report, "flushed");
        }
        let unconfirmed = unconfirmed.into_inner().expect("not poisoned");
        if !unconfirmed.is_empty() {
            tracing::warn!(
                shards = ?unconfirmed,
                "not flushed: no Redis replica confirmed these shards' records (REDIS_DURABILITY=replica); tried again next pass"
            );
        }
        match error {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    /// Flushes one shard: chats, then messages. For each, claims and writes
    /// batches until it has taken as many records as were pending when it
    /// started (so a pass ends under constant load) or the list is empty.
    /// Errors: as [`Self::flush_once`].
    pub async fn flush_shard(&self, shard: &ShardKeys) -> Result<FlushReport, FlushError> {
        let mut report = FlushReport::default();
        if let Some(at) = self
            .last_flushed
            .lock()
            .expect("not poisoned")
            .get_mut(usize::from(shard.index()))
        {
            *at = tokio::time::Instant::now();
        }
        for kind in Kind::FLUSHED_TO_DATABASE {
            let mut budget = self.buffer.shard_pending_len(shard, kind).await?;
            let queue = shard.record_queue(kind);
            while budget > 0 {
                let Some(batch) = self
                    .buffer
                    .lease_queue()
                    .claim(&queue, self.settings.batch_size(kind), self.settings.lease)
                    .await?
                else {
                    break;
                };
                budget = budget.saturating_sub(batch.items.len() as u64);
                report += self.flush_batch(kind, shard, batch).await?;
            }
        }
        Ok(report)
    }

    /// Writes one claimed batch and acknowledges it, or gives it back.
    async fn flush_batch(
        &self,
        kind: Kind,
        shard: &ShardKeys,
        batch: Batch,
    ) -> Result<FlushReport, FlushError> {
        // REDIS_DURABILITY=replica: a batch is written only once a replica
        // has it (and every record before it). A master cut off from its
        // replica (a split brain, or the seconds of a switchover before the
        // sentinels demote the old master) keeps accepting creates, each
        // answered 503 "not confirmed"; were its flusher to store them, the
        // failover would then drop the Redis side (numbers, idempotency
        // keys) of records MariaDB holds, and a client's retry with the same
        // Idempotency-Key would be stored a second time under a new number
        // (found by the fault campaign, Sentinel topology). Given back, they
        // are lost with the old master's data, as their 503 allowed.
        if !self
            .buffer
            .confirmed_by_replica(shard.index(), &batch.key)
            .await
        {
            self.give_back(&batch).await;
            return Err(BufferError::NotReplicated.into());
        }
        let started = std::time::Instant::now();
        let write = tokio::time::timeout(self.settings.lease / 2, self.write(kind, &batch)).await;
        let (outcome, stored_messages) = match write {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => {
                self.give_back(&batch).await;
                return Err(e.into());
            }
            Err(_) => {
                self.give_back(&batch).await;
                return Err(FlushError::Timeout);
            }
        };
        if !self.settings.fault_delay.is_zero() {
            tokio::time::sleep(self.settings.fault_delay).await;
        }
        // What follows the commit (dirty marks, index updates) is written by
        // the acknowledgement itself (one script), so a full Redis cannot
        // refuse it while accepting the acknowledgement, or the other way round.
        let touched = outcome.touched();
        // With read replicas, the parents' reads wait for this batch: the
        // primary's binlog position now is at or after its commit.
        let causal = match self.settings.causal_mark_ttl {
            Some(ttl) if !touched.is_empty() => {
                match crate::store::replicas::binlog_position(&self.pool).await {
                    Ok(Some(gtid)) => Some((ttl, gtid)),
                    Ok(None) => None,
                    Err(e) => {
                        self.give_back(&batch).await;
                        return Err(e.into());
                    }
                }
            }
            _ => None,
        };
        let committed = Committed {
            kind,
            shard,
            parents: &touched,
            stored_messages: &stored_messages,
        };
        let mut hand_on = Vec::new();
        for job in &self.after_commit {
            hand_on.extend(job.hand_on(&committed)?);
        }
        let mut report = FlushReport {
            batches: 1,
            ..Default::default()
        };
        let deferred_at = now_ms();
        let (mut deferred, mut dead, mut lost) = (Vec::new(), Vec::new(), Vec::new());
        for (raw, d) in batch.items.iter().zip(&outcome.dispositions) {
            match d {
                Disposition::Written => report.written += 1,
                Disposition::ParentDeleted => report.dropped += 1,
                Disposition::Deferred => {
                    deferred.push(MessageRecord::stamp_deferred(raw, deferred_at).into_owned())
                }
                Disposition::DeadLetter(reason) => {
                    tracing::error!(kind = kind.as_str(), %reason, record = %String::from_utf8_lossy(raw), "record dead-lettered");
                    dead.push(crate::writebehind::deadletter::entry(raw, reason).into_bytes());
                    if let Some(field) = crate::writebehind::deadletter::lost_field(kind, raw) {
                        lost.push(field.into_bytes());
                        lost.push(reason.clone().into_bytes());
                    }
                }
                Disposition::Collision(stored) => {
                    tracing::error!(
                        kind = kind.as_str(),
                        %stored,
                        record = %String::from_utf8_lossy(raw),
                        "collision: the record's number already holds another record; dead-lettered"
                    );
                    crate::telemetry::metrics::collision(kind.as_str());
                    dead.push(
                        crate::writebehind::deadletter::entry(
                            raw,
                            crate::writebehind::deadletter::COLLISION,
                        )
                        .into_bytes(),
                    );
                    // No lost mark: the number's row in MariaDB is another
                    // record, which a lookup finds and shows.
                }
            }
        }
        report.deferred = deferred.len() as u64;
        report.dead_lettered = dead.len() as u64;
        if let Some((ttl, gtid)) = causal {
            hand_on.push(causal_marks(kind, shard, &touched, &gtid, ttl));
        }
        let usage = usage_delta(kind, &batch.items, &deferred);
        for (key, into, items) in [
            (shard.usage(), Collection::Counts, usage),
            (shard.pending(kind), Collection::List, deferred),
            (shard.dead_letter(kind), Collection::List, dead),
            (shard.lost(), Collection::Hash, lost),
        ] {
            if !items.is_empty() {
                hand_on.push(HandOn { key, into, items });
            }
        }
        if !self.buffer.lease_queue().ack(&batch, &hand_on).await? {
            tracing::warn!(key = %batch.key, "lease lost before acknowledgement; the recovered copy will be written again idempotently");
            report.lost_leases = 1;
        }
        crate::telemetry::metrics::batch_flushed(
            kind.as_str(),
            batch.items.len(),
            report.written,
            report.dropped,
            report.dead_lettered,
            started.elapsed(),
        );
        Ok(report)
    }

    /// Decodes a batch and writes it; undecodable records are dead-lettered.
    /// For a message batch, also returns the stored messages as `(chat id,
    /// number)`.
    async fn write(
        &self,
        kind: Kind,
        batch: &Batch,
    ) -> Result<(BatchOutcome, Vec<(u64, i64)>), sqlx::Error> {
        match kind {
            Kind::Messages => {
                let (records, slots) = decode_all(&batch.items, MessageRecord::decode);
                let cutoff = now_ms() - self.settings.orphan_max_age.as_millis() as i64;
                let written = bulk::write_messages(&self.pool, &records, cutoff).await?;
                let stored = written
                    .stored
                    .iter()
                    .map(|&(i, chat_id)| (chat_id, records[i].number))
                    .collect();
                Ok((merge(slots, written), stored))
            }
            _ => {
                let (records, slots) = decode_all(&batch.items, ChatRecord::decode);
                let written = bulk::write_chats(&self.pool, &records).await?;
                Ok((merge(slots, written), Vec::new()))
            }
        }
    }

    /// Releases a batch after a failed write; if even that fails, the lease
    /// expiry will bring it back.
    async fn give_back(&self, batch: &Batch) {
        if let Err(e) = self.buffer.lease_queue().give_back(batch).await {
            tracing::warn!(error = %e, key = %batch.key, "could not release batch; it returns when its lease expires");
        }
    }

    /// Moves batches whose lease expired (their flusher died) back to their
    /// pending lists, in every shard. Returns `(batches, records)` recovered.
    pub async fn recover_once(&self) -> Result<(u64, u64), BufferError> {
        let mut total = (0, 0);
        for shard in self.buffer.keys().shards() {
            let (b, r) = self
                .buffer
                .lease_queue()
                .recover_expired(&shard.record_leases())
                .await?;
            total.0 += b;
            total.1 += r;
        }
        if total.0 > 0 {
            crate::telemetry::metrics::batches_recovered(total.0);
            tracing::warn!(
                batches = total.0,
                records = total.1,
                "recovered batches from expired leases"
            );
        }
        Ok(total)
    }

    /// Pending records in both queues.
    pub async fn pending(&self) -> Result<u64, BufferError> {
        Ok(self.buffer.pending_len(Kind::Chats).await?
            + self.buffer.pending_len(Kind::Messages).await?)
    }

    /// Runs until `shutdown`, then drains what is pending (within
    /// `SHUTDOWN_TIMEOUT_SECS`). Only schedules: the work is in
    /// [`Self::flush_once`] and [`Self::recover_once`].
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        if let Err(e) = self.recover_once().await {
            tracing::warn!(error = %e, "start-up recovery failed; will retry");
        }
        let start = tokio::time::Instant::now();
        let mut timer =
            tokio::time::interval_at(start + self.settings.interval, self.settings.interval);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut recovery =
            tokio::time::interval_at(start + self.settings.lease, self.settings.lease);
        recovery.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The age trigger looks every quarter of the age (at least every 50 ms).
        let mut age_check = self.settings.max_age.map(|age| {
            let period = (age / 4).max(Duration::from_millis(50));
            let mut i = tokio::time::interval_at(start + period, period);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            (age, i)
        });
        let mut backoff = new_backoff();
        loop {
            let aged = async {
                match &mut age_check {
                    Some((age, check)) => {
                        check.tick().await;
                        *age
                    }
                    None => std::future::pending().await,
                }
            };
            let pass = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => None,
                _ = timer.tick() => None,
                age = aged => Some(age),
                _ = recovery.tick() => {
                    if let Err(e) = self.recover_once().await {
                        tracing::warn!(error = %e, "recovery failed");
                    }
                    continue;
                }
            };
            let result = match pass {
                None => self.flush_once().await,
                Some(age) => self.flush_aged(age).await,
            };
            self.generation.send_modify(|g| *g += 1);
            match result {
                Ok(_) => backoff = new_backoff(),
                Err(e) => {
                    crate::telemetry::metrics::flush_failed();
                    let delay = backoff.next().unwrap_or(Duration::from_secs(10));
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "flush failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    self.wake.notify_one();
                }
            }
        }
        self.drain().await;
    }

    /// Flushes until both pending lists are empty, or only messages waiting
    /// for their chat are left, or `budget` has passed (then it finishes the
    /// batch in hand and stops). For operators (`POST /api/v1/admin/flush`);
    /// safe beside the running flusher, as claims are atomic.
    ///
    /// Returns what was done and whether the lists were drained. Errors: as
    /// [`Self::flush_once`]; what was flushed before the error stays flushed.
    pub async fn flush_all(&self, budget: Duration) -> Result<(FlushReport, bool), FlushError> {
        let deadline = tokio::time::Instant::now() + budget;
        let mut total = FlushReport::default();
        loop {
            let report = self.flush_once().await;
            self.generation.send_modify(|g| *g += 1);
            let report = report?;
            total += report;
            if report.batches == 0
                || report.only_deferred()
                || tokio::time::Instant::now() >= deadline
            {
                return Ok((total, self.pending().await? == 0));
            }
        }
    }

    /// Flushes until both pending lists are empty or the shutdown timeout passes.
    async fn drain(&self) {
        let drained = tokio::time::timeout(self.settings.shutdown_timeout, async {
            loop {
                let result = self.flush_once().await;
                self.generation.send_modify(|g| *g += 1);
                let step = match result {
                    // Nothing more a drain can do.
                    Ok(r) if r.only_deferred() => return,
                    Ok(_) => self.pending().await.map_err(FlushError::from),
                    Err(e) => Err(e),
                };
                match step {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "drain step failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        })
        .await;
        match drained {
            Ok(()) => tracing::info!("buffer drained"),
            Err(_) => tracing::error!(
                "shutdown timeout passed before the buffer drained; the rest stays in Redis for the next instance"
            ),
        }
    }
}

fn new_backoff() -> impl Iterator<Item = Duration> {
    retry_backoff(Duration::from_millis(200), Duration::from_secs(10))
}

/// The read-your-writes marks of a committed batch: each parent's scope
/// (an application for a chat batch, a chat for a message batch) gets
/// `gtid` for `ttl` (see [`crate::store::replicas`]).
fn causal_marks(
    kind: Kind,
    shard: &ShardKeys,
    parents: &[u64],
    gtid: &str,
    ttl: Duration,
) -> HandOn {
    use crate::store::replicas::ReadScope;
    let mut items = Vec::with_capacity(1 + 2 * parents.len());
    items.push(ttl.as_millis().to_string().into_bytes());
    for &id in parents {
        let scope = match kind {
            Kind::Messages => ReadScope::Chat(id),
            _ => ReadScope::Application(id),
        };
        items.push(scope.mark().into_bytes());
        items.push(gtid.as_bytes().to_vec());
    }
    HandOn {
        key: shard.causal(),
        into: Collection::Expiring,
        items,
    }
}

/// Delays between retries of a background job whose dependency is down:
/// exponential from `min` to `max`, with jitter, never giving up (backon).
pub fn retry_backoff(min: Duration, max: Duration) -> impl Iterator<Item = Duration> {
    backon::ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Decodes each raw record; returns the decoded ones and, per input slot,
/// either the index into them or the decode error.
fn decode_all<T>(
    raw: &[Vec<u8>],
    decode: fn(&[u8]) -> Result<T, DecodeError>,
) -> (Vec<T>, Vec<Result<usize, DecodeError>>) {
    let mut records = Vec::with_capacity(raw.len());
    let slots = raw
        .iter()
        .map(|r| {
            decode(r).map(|rec| {
                records.push(rec);
                records.len() - 1
            })
        })
        .collect();
    (records, slots)
}

/// Puts the dispositions of decoded records back in batch order.
fn merge(slots: Vec<Result<usize, DecodeError>>, written: BatchOutcome) -> BatchOutcome {
    let dispositions = slots
        .into_iter()
        .map(|s| match s {
            Ok(i) => written.dispositions[i].clone(),
            Err(e) => Disposition::DeadLetter(e.to_string()),
        })
        .collect();
    BatchOutcome {
        dispositions,
        stored: written.stored,
    }
}

/// The change in the shard's usage hash (see
/// [`super::keys::ShardKeys::usage`]) when a batch of `kind` leaves its
/// queue and its `deferred` records go back to it: its bytes and each
/// application's records counted out, the deferred ones counted in again;
/// as (field, increment) pairs for [`Collection::Counts`].
fn usage_delta(kind: Kind, batch: &[Vec<u8>], deferred: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut bytes = 0i64;
    let mut apps: std::collections::BTreeMap<&[u8], i64> = Default::default();
    for (records, sign) in [(batch, -1), (deferred, 1)] {
        for raw in records {
            bytes += sign * raw.len() as i64;
            if let Some(app) = crate::domain::record::application_id_of(raw) {
                *apps.entry(app).or_default() += sign;
            }
        }
    }
    let mut items = vec![
        format!("bytes:{}", kind.as_str()).into_bytes(),
        bytes.to_string().into_bytes(),
    ];
    for (app, delta) in apps {
        if delta != 0 {
            let mut field = b"app:".to_vec();
            field.extend_from_slice(app);
            items.push(field);
            items.push(delta.to_string().into_bytes());
        }
    }
    items
}

#[cfg(test)]
mod usage_tests {
    use super::*;

    #[test]
    fn a_batch_counts_out_its_bytes_and_records_and_its_deferred_ones_back_in() {
        let batch = vec![
            b"7\t1\t100".to_vec(),
            b"7\t2\t100".to_vec(),
            b"9\t1\t100".to_vec(),
        ];
        let deferred = vec![b"9\t1\t100\t5".to_vec()];
        let items: Vec<String> = usage_delta(Kind::Chats, &batch, &deferred)
            .into_iter()
            .map(|i| String::from_utf8(i).unwrap())
            .collect();
        assert_eq!(items, ["bytes:chats", "-12", "app:7", "-2"]);
    }

    /// A message deferred once carries its deferral stamp (`d{ms}\t`) when
    /// it is claimed again: it is counted out of its application, not of an
    /// `app:d{ms}` field (issue 39, point 9).
    #[test]
    fn a_deferred_record_is_counted_out_of_its_own_application() {
        let stamped = crate::domain::record::MessageRecord::stamp_deferred(
            b"9\t1\t3\t100\tbody",
            1_800_000_000_000,
        )
        .into_owned();
        let items: Vec<String> = usage_delta(Kind::Messages, std::slice::from_ref(&stamped), &[])
            .into_iter()
            .map(|i| String::from_utf8(i).unwrap())
            .collect();
        assert_eq!(
            items,
            [
                "bytes:messages".to_string(),
                format!("-{}", stamped.len()),
                "app:9".into(),
                "-1".into()
            ]
        );
    }
}
