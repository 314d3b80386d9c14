//! The write-behind core.
//!
//! Creating a chat or a message never touches SQL on the hot path: one Redis
//! script allocates the number and queues the record (see [`scripts`]), and
//! the client gets its `201` at once. The [`flusher::Flusher`] later writes
//! the queues to MariaDB in batches. The invariants:
//!
//! 1. **Unique numbers, gapless while Redis keeps its writes.** A number is
//!    handed out only in the same atomic step that queues its record, and
//!    only at or below its scope's bound, which MariaDB recorded first; a
//!    counter is used only once checked in the current epoch on the server
//!    that answers, and restarts at its recorded bound when in doubt (see
//!    [`numbering`]). So a Redis that lost data never hands out a number
//!    twice. A record that still lands on a taken number (a split brain) is
//!    a collision (see [`crate::store::bulk`]).
//! 2. **Every acknowledged record is stored exactly once.** Batches move
//!    atomically from pending to a leased processing list, are written with
//!    idempotent INSERTs, then acknowledged; expired leases are recovered.
//! 3. **Nothing blocks the queue.** Records of deleted parents are dropped and
//!    counted; records that cannot be written go to a dead-letter list.
//!
//! Reading order: [`WriteBehind`] (what the HTTP layer calls), [`buffer`]
//! (Redis calls), [`coalesce`] (a shard's creates in one script call),
//! [`numbering`] (counters, bounds, the doubt check), [`enqueue`] (a
//! create's atomic step) and [`scripts`] (the others), [`lease`] (how queues are drained), [`flusher`] and
//! [`after_commit`], then [`crate::store::bulk`].

pub mod after_commit;
pub mod buffer;
pub mod coalesce;
pub mod deadletter;
pub mod enqueue;
pub mod flusher;
pub mod group_commit;
pub mod inspect;
pub mod keys;
pub mod lease;
pub mod live;
pub mod numbering;
pub mod scripts;
pub mod shards;
pub mod shedding;

use std::time::Duration;

use sqlx::MySqlPool;

pub use buffer::{Buffer, BufferError, Enqueue, Idempotency, KeyState, now_ms};
pub use flusher::{FlushHandle, FlushReport, Flusher};
pub use keys::Kind;
pub use numbering::{CounterScope, Numbering};

use crate::store;

/// How many times a create re-runs its script after filling a cold cache
/// (the epoch, the token, then the counter); more means the cache keeps
/// vanishing.
const MAX_SEED_ROUNDS: usize = 4;

/// How many times a create re-runs its script after reserving a block of
/// numbers (concurrent creates may use a block up before this one's turn).
const MAX_RESERVE_ROUNDS: usize = 16;

/// What a create allocates a number for.
#[derive(Debug, Clone, Copy)]
enum Target<'a> {
    /// A chat of the application.
    Chat,
    /// A message of chat `chat_number`, with its body.
    Message { chat_number: i64, body: &'a str },
}

impl Target<'_> {
    /// The counter that numbers it.
    fn scope(self) -> CounterScope {
        match self {
            Target::Chat => CounterScope::Chats,
            Target::Message { chat_number, .. } => CounterScope::Messages { chat_number },
        }
    }
}

/// A freshly allocated and queued record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocated {
    /// Its number in its scope.
    pub number: i64,
    /// When it was allocated, in µs since the epoch (its `created_at`); for
    /// a replay, when this request was made.
    pub created_at_us: i64,
    /// The request repeated an earlier one with the same `Idempotency-Key`:
    /// `number` is the earlier one's, and nothing new was queued.
    pub replayed: bool,
}

/// The request path's entry to the core: allocate+enqueue, and waiting for
/// buffered records to be stored (read-your-writes). Cheap to clone.
#[derive(Clone)]
pub struct WriteBehind {
    buffer: Buffer,
    numbering: Numbering,
    pool: MySqlPool,
    flush: FlushHandle,
    chat_batch_size: u64,
    message_batch_size: u64,
    read_your_writes_timeout: Duration,
}

impl WriteBehind {
    /// Assembles the core from its parts.
    pub fn new(
        buffer: Buffer,
        numbering: Numbering,
        pool: MySqlPool,
        flush: FlushHandle,
        chat_batch_size: usize,
        message_batch_size: usize,
        read_your_writes_timeout: Duration,
    ) -> Self {
        Self {
            buffer,
            numbering,
            pool,
            flush,
            chat_batch_size: chat_batch_size as u64,
            message_batch_size: message_batch_size as u64,
            read_your_writes_timeout,
        }
    }

    /// The Redis buffer.
    pub fn buffer(&self) -> &Buffer {
        &self.buffer
    }

    /// The counters, their reservations and the doubt check.
    pub fn numbering(&self) -> &Numbering {
        &self.numbering
    }

    /// Allocates the next chat number of the application `token` and queues
    /// the chat. One Redis round trip when the cache is warm; on a cold cache,
    /// MariaDB fills it first. Returns `None` when the application does not
    /// exist. Errors: buffer full, Redis or MariaDB unavailable.
    pub async fn create_chat(
        &self,
        token: &str,
        idem: Option<&Idempotency>,
    ) -> Result<Option<Allocated>, BufferError> {
        self.allocate(token, Target::Chat, idem).await
    }

    /// Allocates the next message number of chat `chat_number` of the
    /// application `token` and queues the message. Returns `None` when the
    /// application or the chat does not exist (a chat still buffered exists).
    /// With `idem`, a request that repeats an earlier one with the same
    /// `Idempotency-Key` gets the earlier number and queues nothing.
    /// Errors: buffer full, Redis or MariaDB unavailable, the key reused with
    /// another request.
    pub async fn create_message(
        &self,
        token: &str,
        chat_number: i64,
        body: &str,
        idem: Option<&Idempotency>,
    ) -> Result<Option<Allocated>, BufferError> {
        self.allocate(token, Target::Message { chat_number, body }, idem)
            .await
    }

    /// Runs the enqueue script of `target`, filling a cold cache from MariaDB
    /// (the token, then the counter) and trying again, at most
    /// [`MAX_SEED_ROUNDS`] times. Wakes the flusher when the queue reaches its
    /// batch size.
    async fn allocate(
        &self,
        token: &str,
        target: Target<'_>,
        idem: Option<&Idempotency>,
    ) -> Result<Option<Allocated>, BufferError> {
        let (mut seeds, mut reserves) = (0, 0);
        while seeds < MAX_SEED_ROUNDS && reserves < MAX_RESERVE_ROUNDS {
            let created_at_us = crate::redis::now_us();
            let reply = match target {
                Target::Chat => self.buffer.enqueue_chat(token, created_at_us, idem).await?,
                Target::Message { chat_number, body } => {
                    self.buffer
                        .enqueue_message(token, chat_number, created_at_us, body, idem)
                        .await?
                }
            };
            match reply {
                Enqueue::Queued {
                    number,
                    pending,
                    replayed,
                    bound,
                    application_id,
                } => {
                    self.numbering.reserve_ahead(
                        token,
                        application_id,
                        target.scope(),
                        number,
                        bound,
                    );
                    let batch_size = match target {
                        Target::Chat => self.chat_batch_size,
                        Target::Message { .. } => self.message_batch_size,
                    };
                    if pending >= batch_size {
                        self.flush.wake();
                    }
                    return Ok(Some(Allocated {
                        number,
                        created_at_us,
                        replayed,
                    }));
                }
                Enqueue::Deleted => return Ok(None),
                Enqueue::NoBlock {
                    application_id,
                    counter,
                } => {
                    reserves += 1;
                    self.numbering
                        .reserve(token, application_id, target.scope(), counter)
                        .await?;
                }
                Enqueue::AppMiss => {
                    seeds += 1;
                    if !self.seed_app(token).await? {
                        return Ok(None);
                    }
                }
                Enqueue::CounterMiss {
                    application_id,
                    epoch,
                }
                | Enqueue::Unverified {
                    application_id,
                    epoch,
                } => {
                    seeds += 1;
                    let missing = matches!(reply, Enqueue::CounterMiss { .. });
                    if !self
                        .reconcile(token, target, application_id, epoch, missing)
                        .await?
                    {
                        return Ok(None);
                    }
                }
            }
        }
        Err(BufferError::Unavailable(if seeds >= MAX_SEED_ROUNDS {
            "the Redis cache was evicted while seeding it".into()
        } else {
            "concurrent creates used up every block of numbers reserved for this one".into()
        }))
    }

    /// Restarts the counter of `target` at its recorded bound (see
    /// [`numbering::Numbering::restart`]), after checking that MariaDB still
    /// has the application Redis knows. With no epoch set yet (0), or one
    /// set on another server, runs the epoch check instead (the script then
    /// sees a new epoch and asks again). `missing`: Redis has no counter for
    /// the scope.
    ///
    /// Returns false when the scope does not exist (the application is gone
    /// from MariaDB, which also tombstones it in Redis, or the chat is
    /// unknown). Errors: Redis or MariaDB unavailable.
    async fn reconcile(
        &self,
        token: &str,
        target: Target<'_>,
        application_id: u64,
        epoch: i64,
        missing: bool,
    ) -> Result<bool, BufferError> {
        if epoch == 0 {
            self.numbering.check_epoch(token).await?;
            return Ok(true);
        }
        if !missing
            && store::applications::find_id(&self.pool, token).await? != Some(application_id)
        {
            // Redis came back with an application MariaDB no longer has.
            self.buffer.tombstone_app(token).await?;
            return Ok(false);
        }
        self.numbering
            .restart(token, application_id, target.scope(), epoch, missing)
            .await
    }

    /// Makes sure the counter of `scope` was checked in the current epoch of
    /// `token`'s shard, restarting it if not (see
    /// [`numbering::Numbering::restart`]), so that the numbers Redis lost
    /// with it are recorded as skipped even when no create uses the scope
    /// again: a lookup of a number MariaDB does not have calls this before
    /// it answers 404 (docs/numbering.md, I2). Caches the application's id
    /// first (Redis may have lost its hash). Errors: Redis or MariaDB
    /// unavailable.
    pub async fn settle(
        &self,
        token: &str,
        application_id: u64,
        scope: CounterScope,
    ) -> Result<(), BufferError> {
        // The epoch as the enqueue scripts read it (one HGET: every new
        // connection and a periodic task run the full check, and RESTART
        // itself applies only on a valid epoch).
        let epoch = match self.numbering.current_epoch(token).await? {
            Some(epoch) => epoch,
            None => self.numbering.check_epoch(token).await?,
        };
        let (present, checked) = self.numbering.checked(token, scope).await?;
        if checked.as_deref() == Some(epoch.to_string().as_str()) {
            return Ok(());
        }
        self.buffer.seed_app(token, application_id).await?;
        self.numbering
            .restart(token, application_id, scope, epoch, !present)
            .await?;
        Ok(())
    }

    /// Caches the application's id; false when no such application.
    async fn seed_app(&self, token: &str) -> Result<bool, BufferError> {
        match store::applications::find_id(&self.pool, token).await? {
            Some(id) => {
                self.buffer.seed_app(token, id).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Read-your-writes: looks a record up with `lookup`; while it is
    /// absent and `still_buffered` says its number is allocated (and its
    /// parents not deleted), asks for flushes and looks again, until it
    /// appears or `READ_YOUR_WRITES_TIMEOUT_MS` passes.
    ///
    /// Returns `Ok(None)` when the record does not exist, or stopped being
    /// on its way (its application or chat was deleted while we waited, so
    /// its record was dropped). Errors: a lookup error, Redis unavailable, or
    /// [`BufferError::NotYetStored`] when the flush did not store it in time
    /// (the caller answers 503).
    pub async fn await_stored<T, F, Fut, B, BFut>(
        &self,
        mut still_buffered: B,
        mut lookup: F,
    ) -> Result<Option<T>, BufferError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = sqlx::Result<Option<T>>>,
        B: FnMut() -> BFut,
        BFut: Future<Output = Result<bool, BufferError>>,
    {
        let deadline = tokio::time::Instant::now() + self.read_your_writes_timeout;
        loop {
            if !still_buffered().await? {
                return Ok(None);
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(BufferError::NotYetStored);
            }
            self.flush
                .flush_and_wait(left.min(Duration::from_millis(500)))
                .await;
            if let Some(found) = lookup().await? {
                return Ok(Some(found));
            }
        }
    }
}
