//! The Redis side of the write-behind core on the request path:
//! allocate+enqueue, counter checks, tombstones, idempotency keys. The queues
//! are drained through [`super::lease`].
//!
//! Every call is one Redis round trip (one script) with a time limit
//! (`REDIS_TIMEOUT_MS`), so a Redis that hangs turns into a prompt 503.

use std::future::Future;
use std::time::Duration;

use crate::redis::{RedisConnection, RedisHandle};
use redis::AsyncCommands;

use super::coalesce::Reply;
use super::keys::{Keys, Kind, ShardKeys};
use super::lease::LeaseQueue;
use super::scripts::{Scripts, code};

pub use crate::redis::{RedisPool, now_ms};

/// How long a deleted application's tombstone (its hash, marked deleted)
/// outlives it in Redis, in seconds. It only has to outlast a racing cache
/// fill (milliseconds); after it, MariaDB answers "not found" on its own. A
/// chat's tombstone is one field of its application's hash and does not
/// expire by itself: it goes when the application's hash does.
pub const TOMBSTONE_TTL_SECS: u64 = 24 * 3600;

/// Seconds a client is told to wait (`Retry-After`) when the buffer is full.
pub const FULL_RETRY_AFTER_SECS: u64 = 5;

/// Why a write to the buffer failed.
#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    /// The pending list is at `MAX_PENDING`, or its records take
    /// `MAX_PENDING_BYTES` (backpressure).
    #[error("the write buffer is full")]
    Full {
        /// Seconds to tell the client to wait.
        retry_after_secs: u64,
    },
    /// The application has `MAX_PENDING_PER_APPLICATION` records waiting
    /// (backpressure on this tenant alone).
    #[error("this application's share of the write buffer is full")]
    ApplicationFull {
        /// Seconds to tell the client to wait.
        retry_after_secs: u64,
    },
    /// The pending list is past `PENDING_HIGH_WATER` and this create was
    /// refused before Redis, to slow clients down (see
    /// [`super::shedding`]).
    #[error("the write buffer is filling faster than it drains")]
    Shed {
        /// Seconds to tell the client to wait.
        retry_after_secs: u64,
    },
    /// Redis could not be reached, failed, or did not answer in time.
    #[error("Redis unavailable: {0}")]
    Unavailable(String),
    /// A record is buffered but its flush did not store it within
    /// `READ_YOUR_WRITES_TIMEOUT_MS` (MariaDB slow or down).
    #[error("the record is still being written")]
    NotYetStored,
    /// The `Idempotency-Key` was used before, within its lifetime, with
    /// another request (another body, chat or operation): 422.
    #[error("the Idempotency-Key was already used with another request")]
    KeyReused,
    /// `REDIS_DURABILITY=replica`: the record reached the primary but no
    /// replica confirmed it within `REDIS_WAIT_MS`. It may still be stored;
    /// a retry with the same `Idempotency-Key` gets its number.
    #[error("no Redis replica confirmed the write in time")]
    NotReplicated,
    /// The record under this number was acknowledged but could not be
    /// stored: it is in the dead-letter list, with this reason.
    #[error("the record was dead-lettered: {0}")]
    Lost(String),
    /// The number is in a range a counter skipped when it restarted at its
    /// reservation after Redis may have lost data (see
    /// [`super::numbering`]): nothing is, or will be, stored under it.
    #[error("the number was skipped after Redis lost data")]
    Skipped,
    /// MariaDB failed while seeding a cold counter.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl From<redis::RedisError> for BufferError {
    fn from(e: redis::RedisError) -> Self {
        Self::Unavailable(e.to_string())
    }
}

/// What one run of an enqueue script answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueue {
    /// The record is queued under this number; the list now holds `pending` records.
    Queued {
        /// The allocated number.
        number: i64,
        /// Length of the pending list after the push (0 for a replay).
        pending: u64,
        /// The `Idempotency-Key` was seen before with the same request: the
        /// number is the one handed out then, and nothing new was queued.
        replayed: bool,
        /// The scope's bound when the number was handed out (-1 for a
        /// replay), for [`super::numbering::Numbering::reserve_ahead`].
        bound: i64,
        /// `applications.id`
        application_id: u64,
    },
    /// The scope used up its bound: reserve a block and try again (see
    /// [`super::numbering`]).
    NoBlock {
        /// `applications.id`
        application_id: u64,
        /// The last number handed out in the scope.
        counter: i64,
    },
    /// The token is not cached yet.
    AppMiss,
    /// The scope's counter is not cached yet; the application's id is given.
    CounterMiss {
        /// `applications.id`
        application_id: u64,
        /// The epoch in force (0: none is set yet).
        epoch: i64,
    },
    /// The scope's counter was not checked against MariaDB in this epoch
    /// (see [`super::scripts`]).
    Unverified {
        /// `applications.id`
        application_id: u64,
        /// The epoch in force (0: none is set yet).
        epoch: i64,
    },
    /// The application or chat was deleted.
    Deleted,
}

/// Handle on the buffer in Redis. Cheap to clone.
#[derive(Clone)]
pub struct Buffer {
    redis: RedisHandle,
    keys: Keys,
    scripts: std::sync::Arc<Scripts>,
    timeout: Duration,
    max_pending: u64,
    max_pending_bytes: u64,
    max_pending_per_application: u64,
    lease_queue: LeaseQueue,
    idempotency_ttl_secs: u64,
    in_progress_secs: u64,
    group_commit: Option<super::group_commit::GroupCommit>,
    shedder: super::shedding::LoadShedder,
    /// Set while Redis records another `QUEUE_SHARDS` than ours (see
    /// [`super::shards`]): the reason creates are refused.
    shard_mismatch: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    shard_mismatch_flag: std::sync::Arc<std::sync::atomic::AtomicBool>,
    coalescer: super::coalesce::Coalescer,
    live_stream_maxlen: u64,
}

/// A client's `Idempotency-Key` for one create: the key's digest, and the
/// fingerprint of what the request asks for, so that the key reused with
/// another request is told apart (IETF draft
/// `draft-ietf-httpapi-idempotency-key-header`).
#[derive(Debug, Clone)]
pub struct Idempotency {
    /// Hex SHA-256 of the header's value (any length, any bytes).
    pub key: String,
    /// Hex SHA-256 of the request's operation and content.
    pub fingerprint: String,
}

/// Hex SHA-256 of `parts`, each prefixed by its length (so that no two
/// different lists of parts hash alike by concatenation).
pub fn digest(parts: &[&[u8]]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    hex::encode(h.finalize())
}

impl Idempotency {
    /// The key made of `key_parts` (the header's value, and for an
    /// application create the client too) for a request made of `parts`
    /// (operation name, path parameters, body).
    pub fn new(key_parts: &[&[u8]], parts: &[&[u8]]) -> Self {
        Self {
            key: digest(key_parts),
            fingerprint: digest(parts),
        }
    }
}

impl Buffer {
    /// A buffer over `redis` (a pool, or a cluster), with keys under `keys`,
    /// calls bounded by `timeout`, and backpressure at `max_pending` records
    /// per queue.
    pub fn new(
        redis: impl Into<RedisHandle>,
        keys: Keys,
        timeout: Duration,
        max_pending: u64,
    ) -> Self {
        let redis = redis.into();
        let shards = keys.shard_count();
        let scripts: std::sync::Arc<Scripts> = Default::default();
        Self {
            coalescer: super::coalesce::Coalescer::new(
                redis.clone(),
                scripts.clone(),
                shards,
                timeout,
            ),
            lease_queue: LeaseQueue::new(redis.clone(), timeout, "unnamed"),
            redis,
            keys,
            scripts,
            timeout,
            max_pending,
            max_pending_bytes: 0,
            max_pending_per_application: 0,
            idempotency_ttl_secs: 86_400,
            in_progress_secs: DEFAULT_IN_PROGRESS_SECS,
            group_commit: None,
            // Off (the high-water mark at the top), but keeping every
            // shard's depth for the total limits.
            shedder: super::shedding::LoadShedder::new(u64::MAX, max_pending, shards),
            shard_mismatch: Default::default(),
            shard_mismatch_flag: Default::default(),
            live_stream_maxlen: super::live::DEFAULT_STREAM_MAXLEN,
        }
    }

    /// The same buffer, capping each chat's live stream at about `maxlen`
    /// events (`LIVE_STREAM_MAXLEN`, see [`super::live`]).
    pub fn with_live_stream_maxlen(mut self, maxlen: u64) -> Self {
        self.live_stream_maxlen = maxlen.max(1);
        self
    }

    /// Each chat's live stream's cap (see [`Self::with_live_stream_maxlen`]).
    pub fn live_stream_maxlen(&self) -> u64 {
        self.live_stream_maxlen
    }

    /// Records whether Redis holds another shard count than ours (`Some`:
    /// why creates are refused, with what to do), as found by
    /// [`super::shards::check_shard_count`].
    pub fn set_shard_mismatch(&self, reason: Option<String>) {
        use std::sync::atomic::Ordering;
        let mut guard = self
            .shard_mismatch
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        self.shard_mismatch_flag
            .store(reason.is_some(), Ordering::Relaxed);
        *guard = reason;
    }

    /// Errors with [`BufferError::Unavailable`] while the shard counts differ.
    fn check_shards(&self) -> Result<(), BufferError> {
        if !self
            .shard_mismatch_flag
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Ok(());
        }
        let guard = self
            .shard_mismatch
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match guard.as_ref() {
            Some(reason) => Err(BufferError::Unavailable(reason.clone())),
            None => Ok(()),
        }
    }

    /// The same buffer, answering a create only once a replica has its
    /// write (`REDIS_DURABILITY=replica`): after the enqueue script, it waits
    /// for a round of `group_commit` (see [`super::group_commit`]); no
    /// replica within `REDIS_WAIT_MS` is [`BufferError::NotReplicated`].
    pub fn with_group_commit(mut self, group_commit: super::group_commit::GroupCommit) -> Self {
        self.group_commit = Some(group_commit);
        self
    }

    /// The same buffer, refusing creation (503) once a shard's queued
    /// records of a kind would take more than `max` bytes (counted exactly,
    /// see [`super::keys::ShardKeys::usage`]); 0: no limit.
    pub fn with_max_pending_bytes(mut self, max: u64) -> Self {
        self.max_pending_bytes = max;
        self
    }

    /// The same buffer, refusing an application's creates (503) while it has
    /// `max` records queued (`MAX_PENDING_PER_APPLICATION`), so that one
    /// tenant cannot take the whole buffer; 0: no limit.
    pub fn with_max_pending_per_application(mut self, max: u64) -> Self {
        self.max_pending_per_application = max;
        self
    }

    /// The same buffer, shedding a growing share of creates once a pending
    /// list passes `high_water` records (`PENDING_HIGH_WATER`, see
    /// [`super::shedding`]).
    pub fn with_high_water(mut self, high_water: u64) -> Self {
        self.shedder = super::shedding::LoadShedder::new(
            high_water,
            self.max_pending,
            self.keys.shard_count(),
        );
        self
    }

    /// The same buffer, remembering `Idempotency-Key`s for `ttl` (whole
    /// seconds, at least 1).
    pub fn with_idempotency_ttl(mut self, ttl: Duration) -> Self {
        self.idempotency_ttl_secs = ttl.as_secs().max(1);
        self
    }

    /// The same buffer, holding an application create's `Idempotency-Key`
    /// as in progress for at most `lifetime` (whole seconds, at least 1;
    /// `IDEMPOTENCY_IN_PROGRESS_SECS`): a create that died mid-way answers
    /// 409 that long, then a retry starts again.
    pub fn with_in_progress_lifetime(mut self, lifetime: Duration) -> Self {
        self.in_progress_secs = lifetime.as_secs().max(1);
        self
    }

    /// The same buffer, claiming batches in the name of `owner` (the
    /// instance id shown to operators).
    pub fn with_owner(mut self, owner: impl Into<String>) -> Self {
        self.lease_queue = self.lease_queue.with_owner(owner.into());
        self
    }

    /// The name batches are claimed under.
    pub fn owner(&self) -> &str {
        self.lease_queue.owner()
    }

    /// The lease queue that drains the buffer's queues (see
    /// [`super::lease`]), with the same time limit and owner.
    pub fn lease_queue(&self) -> &LeaseQueue {
        &self.lease_queue
    }

    /// Records what a sample found of `kind`'s queue in shard `shard`:
    /// `pending` records and `bytes` queued, for load shedding and the total
    /// limits.
    pub(super) fn observe_queue(&self, kind: Kind, shard: u16, pending: u64, bytes: u64) {
        self.shedder.observe(kind, shard, pending);
        self.shedder.observe_bytes(kind, shard, bytes);
    }

    /// The Lua scripts.
    pub(super) fn scripts(&self) -> &Scripts {
        &self.scripts
    }

    /// The key names in use.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Where Redis calls go (for health checks and admin).
    pub fn redis(&self) -> &RedisHandle {
        &self.redis
    }

    /// Runs `f` on a pooled connection, within the time limit (see
    /// [`RedisHandle::call`]). Errors: [`BufferError::Unavailable`] when
    /// Redis fails or is too slow.
    pub(crate) async fn with_conn<T, F, Fut>(&self, f: F) -> Result<T, BufferError>
    where
        F: FnOnce(RedisConnection) -> Fut,
        Fut: Future<Output = Result<T, redis::RedisError>>,
    {
        Ok(self.redis.call(self.timeout, f).await?)
    }

    fn decode_enqueue(&self, reply: Reply) -> Result<Enqueue, BufferError> {
        let (code_or_number, a, b, bound, id) = reply;
        let reply = (code_or_number, a, b);
        Ok(match reply {
            (n, len, replayed) if n > 0 => Enqueue::Queued {
                number: n,
                pending: len as u64,
                replayed: replayed == 1,
                bound,
                application_id: id as u64,
            },
            (code::NO_BLOCK, id, counter) => Enqueue::NoBlock {
                application_id: id as u64,
                counter,
            },
            (code::KEY_REUSED, _, _) => return Err(BufferError::KeyReused),
            (code::WRONG_SHARDS, _, _) => {
                return Err(BufferError::Unavailable(format!(
                    "the shard's epoch records another shard count than QUEUE_SHARDS={}: a reshard is under way or done; restart with its count",
                    self.keys.shard_count()
                )));
            }
            (code::APP_MISS, _, _) => Enqueue::AppMiss,
            (code::COUNTER_MISS, id, epoch) => Enqueue::CounterMiss {
                application_id: id as u64,
                epoch,
            },
            (code::UNVERIFIED, id, epoch) => Enqueue::Unverified {
                application_id: id as u64,
                epoch,
            },
            (code::DELETED, _, _) => Enqueue::Deleted,
            (code::FULL, _, _) => {
                return Err(BufferError::Full {
                    retry_after_secs: FULL_RETRY_AFTER_SECS,
                });
            }
            (code::APP_FULL, _, _) => {
                return Err(BufferError::ApplicationFull {
                    retry_after_secs: FULL_RETRY_AFTER_SECS,
                });
            }
            (code::SCRIPT_FAILED, _, _) => {
                return Err(BufferError::Unavailable("the enqueue script failed".into()));
            }
            other => {
                return Err(BufferError::Unavailable(format!(
                    "unexpected script reply {other:?}"
                )));
            }
        })
    }

    /// The idempotency key and fingerprint arguments of an enqueue script:
    /// the key's Redis name (the app hash again when there is none, so that
    /// every key of the script is the application's) and the fingerprint
    /// (empty when none).
    fn idempotency_args(
        shard: &ShardKeys,
        token: &str,
        idem: Option<&Idempotency>,
    ) -> (String, String) {
        match idem {
            Some(i) => (shard.idempotency(token, &i.key), i.fingerprint.clone()),
            None => (shard.app(token), String::new()),
        }
    }

    /// Allocates a chat number in `token`'s application and queues the chat;
    /// with `idem`, answers the number of an earlier request with the same
    /// key and fingerprint instead. Errors: buffer full, Redis unavailable,
    /// the key reused with another request, no replica in time (`replica`
    /// durability).
    pub async fn enqueue_chat(
        &self,
        token: &str,
        created_at_us: i64,
        idem: Option<&Idempotency>,
    ) -> Result<Enqueue, BufferError> {
        self.enqueue(Kind::Chats, token, created_at_us, None, idem)
            .await
    }

    /// Allocates a message number in chat `chat_number` of `token`'s
    /// application and queues the message with `body`; `idem` and errors as
    /// in [`Buffer::enqueue_chat`].
    pub async fn enqueue_message(
        &self,
        token: &str,
        chat_number: i64,
        created_at_us: i64,
        body: &str,
        idem: Option<&Idempotency>,
    ) -> Result<Enqueue, BufferError> {
        self.enqueue(
            Kind::Messages,
            token,
            created_at_us,
            Some((chat_number, body)),
            idem,
        )
        .await
    }

    /// Runs the enqueue script of `kind` (see [`super::scripts::enqueue_chat`]
    /// and [`super::scripts::enqueue_message`], which take the same keys and
    /// arguments; a chat has no chat number nor body), then, with `replica`
    /// durability, waits for a replica on the same connection.
    async fn enqueue(
        &self,
        kind: Kind,
        token: &str,
        created_at_us: i64,
        message: Option<(i64, &str)>,
        idem: Option<&Idempotency>,
    ) -> Result<Enqueue, BufferError> {
        self.check_shards()?;
        if !self.shedder.admit(kind) {
            return Err(BufferError::Shed {
                retry_after_secs: super::shedding::SHED_RETRY_AFTER_SECS,
            });
        }
        let shard = self.keys.for_token(token);
        let app = shard.app(token);
        let pending = shard.pending(kind);
        let epoch = shard.epoch();
        let (idem_key, fingerprint) = Self::idempotency_args(&shard, token, idem);
        let usage = shard.usage();
        // The limits are totals over the shards. This shard may hold what
        // the others, as last seen (every answer, and the 5 s sampling),
        // leave of them; its script holds it to that exactly. So one
        // application, in one shard, can fill the whole buffer.
        let max_pending = self
            .max_pending
            .saturating_sub(self.shedder.depth_elsewhere(kind, shard.index()));
        let max_pending_bytes = match self.max_pending_bytes {
            0 => 0,
            max => max
                .saturating_sub(self.shedder.bytes_elsewhere(kind, shard.index()))
                .max(1),
        };
        let (chat_number, body, live_flag, live_stream) = match message {
            Some((chat, body)) => (
                chat.to_string(),
                body,
                shard.live_flag(token, chat),
                shard.live_stream(token, chat),
            ),
            None => (String::new(), "", app.clone(), app.clone()),
        };
        let create = super::coalesce::Create {
            keys: [app, pending, epoch, idem_key, usage, live_flag, live_stream],
            args: [
                max_pending.to_string().into_bytes(),
                created_at_us.to_string().into_bytes(),
                chat_number.into_bytes(),
                body.as_bytes().to_vec(),
                fingerprint.into_bytes(),
                self.idempotency_ttl_secs.to_string().into_bytes(),
                max_pending_bytes.to_string().into_bytes(),
                self.keys.shard_count().to_string().into_bytes(),
                self.max_pending_per_application.to_string().into_bytes(),
                self.live_stream_maxlen.to_string().into_bytes(),
            ],
        };
        let reply = self
            .coalescer
            .enqueue(kind, shard.index(), create)
            .await
            .map_err(|super::coalesce::Unavailable(why)| BufferError::Unavailable(why))?;
        // A replay queued nothing and reports no depth.
        if reply.0 > 0 && reply.2 == 0 {
            self.shedder.observe(kind, shard.index(), reply.1 as u64);
        }
        let enqueue = self.decode_enqueue(reply)?;
        if let (Some(group_commit), Enqueue::Queued { .. }) = (&self.group_commit, &enqueue) {
            // Off the shared connection: see super::group_commit.
            if !group_commit.replicated(shard.index()).await {
                return Err(BufferError::NotReplicated);
            }
        }
        Ok(enqueue)
    }

    /// With `REDIS_DURABILITY=replica`, whether a replica has every write
    /// that shard `shard`'s master made before this call (one round of the
    /// group commit, at most `REDIS_WAIT_MS`; see [`super::group_commit`]),
    /// and that master holds `processing_key` (the batch was claimed on the
    /// master the round confirmed, not on an old master of a split brain
    /// that a pooled connection still reaches); always true under the other
    /// durabilities. The flusher asks it before it writes a claimed batch
    /// to MariaDB (see `Flusher::flush_batch`).
    pub async fn confirmed_by_replica(&self, shard: u16, processing_key: &str) -> bool {
        match &self.group_commit {
            Some(group_commit) => {
                group_commit.replicated(shard).await && group_commit.holds(processing_key).await
            }
            None => true,
        }
    }

    /// Caches `token` → `application_id`, unless a value (or a tombstone) is
    /// already there (HSETNX), so a racing delete always wins.
    pub async fn seed_app(&self, token: &str, application_id: u64) -> Result<(), BufferError> {
        self.seed_field(token, "id", application_id as i64).await
    }

    /// Starts an application create under `idem`, whose key is already the
    /// digest of the client and its `Idempotency-Key` (see
    /// [`super::scripts::BEGIN_KEY`]). Errors: Redis unavailable, or
    /// [`BufferError::KeyReused`].
    pub async fn begin_application_key(&self, idem: &Idempotency) -> Result<KeyState, BufferError> {
        let key = self.keys.application_idempotency(&idem.key);
        let (state, result): (i64, String) = self
            .with_conn(|mut c| async move {
                self.scripts
                    .begin_key
                    .key(key)
                    .arg(&idem.fingerprint)
                    .arg(self.in_progress_secs)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        match state {
            0 => Ok(KeyState::New),
            1 => Ok(KeyState::Done(result)),
            2 => Err(BufferError::KeyReused),
            _ => Ok(KeyState::InProgress),
        }
    }

    /// Records the token an application create under `idem` made (`Some`),
    /// or forgets the key after it failed (`None`), so a retry starts again.
    /// Errors: Redis unavailable.
    pub async fn finish_application_key(
        &self,
        idem: &Idempotency,
        token: Option<&str>,
    ) -> Result<(), BufferError> {
        let key = self.keys.application_idempotency(&idem.key);
        let value = token.map(|t| format!("{}\t{t}", idem.fingerprint));
        self.with_conn(|mut c| async move {
            match value {
                Some(v) => {
                    c.set_ex::<_, _, ()>(key, v, self.idempotency_ttl_secs)
                        .await
                }
                None => c.del::<_, ()>(key).await,
            }
        })
        .await
    }

    /// The reason the record of `token`'s application under `field` of the
    /// lost hash (see [`super::deadletter::lost_field`]) was dead-lettered, if it
    /// was and was not replayed since. Errors: Redis unavailable.
    pub async fn lost_reason(
        &self,
        token: &str,
        field: String,
    ) -> Result<Option<String>, BufferError> {
        let key = self.keys.for_token(token).lost();
        self.with_conn(|mut c| async move { c.hget(key, field).await })
            .await
    }

    /// The GTID of the last write to `scope` (see
    /// [`crate::store::replicas::ReadScope::mark`]) of `token`'s
    /// application, while its read-your-writes mark lives. Errors: Redis
    /// unavailable.
    pub async fn causal_mark(
        &self,
        token: &str,
        scope: &str,
    ) -> Result<Option<String>, BufferError> {
        let key = format!("{}{scope}", self.keys.for_token(token).causal());
        self.with_conn(|mut c| async move { c.get(key).await })
            .await
    }

    /// Keeps `gtid` as the last write of each of `scopes` of `token`'s
    /// application for `ttl`, merged per GTID domain with the mark there,
    /// so that a mark never moves backwards ([`super::scripts::KEEP_MARKS`];
    /// one round trip; the keys share the shard's hash slot). Errors: Redis
    /// unavailable.
    pub async fn keep_causal_marks(
        &self,
        token: &str,
        scopes: &[String],
        gtid: &str,
        ttl: Duration,
    ) -> Result<(), BufferError> {
        if scopes.is_empty() {
            return Ok(());
        }
        let prefix = self.keys.for_token(token).causal();
        let mut inv = self.scripts.keep_marks.prepare_invoke();
        for scope in scopes {
            inv.key(format!("{prefix}{scope}"));
        }
        inv.arg(ttl.as_millis() as u64).arg(gtid);
        self.with_conn(|mut c| async move { inv.invoke_async::<()>(&mut c).await })
            .await
    }

    async fn seed_field(&self, token: &str, field: &str, value: i64) -> Result<(), BufferError> {
        let key = self.keys.for_token(token).app(token);
        self.with_conn(|mut c| async move { c.hset_nx::<_, _, _, ()>(key, field, value).await })
            .await
    }

    /// The last chat number handed out in `token`'s application and the last
    /// message number handed out in its chat `chat_number`, as far as Redis
    /// knows (`None` where unknown or deleted). Used to tell a buffered record
    /// (wait for its flush) from a missing one (404).
    pub async fn counters(&self, token: &str, chat_number: i64) -> Result<Counters, BufferError> {
        let key = self.keys.for_token(token).app(token);
        let (id, chat): (Option<String>, Option<String>) = self
            .with_conn(|mut c| async move {
                redis::cmd("HMGET")
                    .arg(key)
                    .arg("id")
                    .arg(chat_number)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let live = id.as_deref().is_some_and(|v| v != "deleted");
        let chat_counter = chat.filter(|_| live).and_then(|v| v.parse().ok());
        Ok(Counters {
            chat_allocated: chat_counter.is_some(),
            last_message: chat_counter,
        })
    }

    /// Tombstones an application in Redis (see
    /// [`super::scripts::TOMBSTONE`]): no more numbers are handed out in it.
    /// Returns what [`Buffer::untombstone`] needs to undo it. Errors: Redis
    /// unavailable (then nothing changed, or the tombstone is in place).
    pub async fn tombstone_app(&self, token: &str) -> Result<Tombstone, BufferError> {
        self.tombstone(token, "id".into(), TOMBSTONE_TTL_SECS).await
    }

    /// Tombstones chat `chat_number` of `token`'s application (see
    /// [`Buffer::tombstone_app`]).
    pub async fn tombstone_chat(
        &self,
        token: &str,
        chat_number: i64,
    ) -> Result<Tombstone, BufferError> {
        self.tombstone(token, chat_number.to_string(), 0).await
    }

    async fn tombstone(
        &self,
        token: &str,
        field: String,
        ttl_secs: u64,
    ) -> Result<Tombstone, BufferError> {
        let key = self.keys.for_token(token).app(token);
        let f = field.clone();
        self.with_conn(|mut c| async move {
            self.scripts
                .tombstone
                .key(key)
                .arg(f)
                .arg(ttl_secs)
                .invoke_async::<Option<String>>(&mut c)
                .await
        })
        .await?;
        Ok(Tombstone {
            token: token.to_string(),
            field,
        })
    }

    /// Makes a tombstone final once its SQL delete committed (see
    /// [`super::scripts::COMMIT_TOMBSTONE`]). Errors: Redis unavailable
    /// (the tombstone then stays, owned by a delete that will never undo it:
    /// it is final all the same).
    pub async fn commit_tombstone(&self, tombstone: &Tombstone) -> Result<(), BufferError> {
        self.tombstone_step(&self.scripts.commit_tombstone, tombstone)
            .await
    }

    /// Undoes a tombstone after the SQL delete failed, unless another delete
    /// of the same record is in flight or committed (see
    /// [`super::scripts::UNTOMBSTONE`]). Errors: Redis unavailable.
    pub async fn untombstone(&self, tombstone: &Tombstone) -> Result<(), BufferError> {
        self.tombstone_step(&self.scripts.untombstone, tombstone)
            .await
    }

    async fn tombstone_step(
        &self,
        script: &redis::Script,
        tombstone: &Tombstone,
    ) -> Result<(), BufferError> {
        let key = self.keys.for_token(&tombstone.token).app(&tombstone.token);
        let field = tombstone.field.clone();
        self.with_conn(|mut c| async move {
            script.key(key).arg(field).invoke_async::<i64>(&mut c).await
        })
        .await
        .map(|_| ())
    }

    /// Queues a change to the search index in `token`'s shard (durable;
    /// applied by the indexer), stamped with `queued_at_ms`.
    pub async fn push_search_op(
        &self,
        token: &str,
        op: &crate::store::search::IndexOp,
    ) -> Result<(), BufferError> {
        let key = self.keys.for_token(token).pending(Kind::Search);
        let json = search_op_json(op)?;
        self.with_conn(|mut c| async move { c.rpush::<_, _, ()>(key, json).await })
            .await
    }

    /// The string at `key` (for tools). Errors: Redis unavailable.
    pub async fn raw_get(&self, key: &str) -> Result<Option<String>, BufferError> {
        let key = key.to_string();
        self.with_conn(|mut c| async move { c.get(key).await })
            .await
    }

    /// Length of the list at `key`. Errors: Redis unavailable.
    pub(crate) async fn list_len(&self, key: String) -> Result<u64, BufferError> {
        self.with_conn(|mut c| async move { c.llen(key).await })
            .await
    }

    /// Number of records waiting in the pending lists of `kind`, over every
    /// shard (one LLEN per shard: on a cluster, the shards are on several
    /// nodes, so they cannot share a pipeline).
    pub async fn pending_len(&self, kind: Kind) -> Result<u64, BufferError> {
        let mut total = 0;
        for shard in self.keys.shards() {
            total += self.list_len(shard.pending(kind)).await?;
        }
        Ok(total)
    }

    /// Number of records waiting in `shard`'s pending list of `kind`.
    pub async fn shard_pending_len(
        &self,
        shard: &ShardKeys,
        kind: Kind,
    ) -> Result<u64, BufferError> {
        self.list_len(shard.pending(kind)).await
    }

    /// Removes every key under the prefix, on every node (tests and `reset`
    /// only). One DEL per hash slot, as a cluster requires.
    pub async fn delete_all_keys(&self) -> Result<u64, BufferError> {
        let pattern = format!("{}*", self.keys.prefix());
        self.with_conn(|mut c| async move {
            let keys = c.scan_all(&pattern).await?;
            let mut by_slot: std::collections::HashMap<u16, Vec<String>> = Default::default();
            for k in keys {
                by_slot
                    .entry(crate::redis::key_slot(&k))
                    .or_default()
                    .push(k);
            }
            let mut deleted = 0;
            for keys in by_slot.into_values() {
                deleted += c.del::<_, u64>(keys).await?;
            }
            Ok(deleted)
        })
        .await
    }
}

/// A tombstone just set: what committing or undoing it names.
#[derive(Debug, Clone)]
pub struct Tombstone {
    token: String,
    field: String,
}

/// How long an application create's `Idempotency-Key` stays in progress by
/// default, in seconds (`IDEMPOTENCY_IN_PROGRESS_SECS`).
pub const DEFAULT_IN_PROGRESS_SECS: u64 = 60;

/// Where an application create under an `Idempotency-Key` stands (see
/// [`Buffer::begin_application_key`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyState {
    /// The key is new: go ahead, then [`Buffer::finish_application_key`].
    New,
    /// The same request succeeded before: here is its token.
    Done(String),
    /// The same request is still in progress.
    InProgress,
}

/// What Redis knows of a chat's counters (see [`Buffer::counters`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counters {
    /// The chat number was handed out and the chat is not deleted.
    pub chat_allocated: bool,
    /// Last message number handed out in the chat.
    pub last_message: Option<i64>,
}

/// The queued form of a search-index change: its JSON, stamped with
/// `queued_at_ms` so operators can see how long the oldest op has waited.
/// Errors: the op does not serialise (a bug), as [`BufferError::Unavailable`].
pub fn search_op_json(op: &crate::store::search::IndexOp) -> Result<String, BufferError> {
    let mut value =
        serde_json::to_value(op).map_err(|e| BufferError::Unavailable(e.to_string()))?;
    value["queued_at_ms"] = now_ms().into();
    Ok(value.to_string())
}
