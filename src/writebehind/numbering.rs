//! Numbering: the counters that hand out chat and message numbers, their
//! durable high-water marks in MariaDB, the epochs and the doubt check.
//!
//! **The promise.** A number is never handed out twice, whatever Redis
//! loses. Two rules make it hold:
//!
//! 1. **A durable high-water mark per scope (the hi/lo pattern).** A scope
//!    (an application's chat counter, or a chat's message counter) hands out
//!    numbers only up to its *bound* (`r`, `r:{n}` in the application's
//!    hash), and a bound is raised in Redis only after MariaDB recorded it
//!    (`number_reservations`, [`crate::store::numbering::reserve`]). Every
//!    scope starts with an implicit first block
//!    ([`crate::store::numbering::FIRST_BLOCK`]), so a small scope never
//!    waits on SQL. When a create leaves less than half a block, the next
//!    block is reserved in the background ([`Numbering::reserve_ahead`]);
//!    only a scope that outran it (MariaDB down for longer than a block
//!    lasts) waits on SQL, and answers 503 while MariaDB is down. Block
//!    sizes follow the scope's rate ([`next_block`]): a block used up within
//!    10 s makes the next one twice as large (up to `NUMBER_BLOCK_MAX`, 2048
//!    by default), one that lasted over a minute makes it half as large
//!    (down to 16). So a hot chat makes one SQL write per about 1,000
//!    creates, and a quiet one skips few numbers when Redis loses data.
//! 2. **A doubt check that no copy of the data carries.** The enqueue
//!    scripts hand out a number only when the scope was checked in the
//!    current epoch and the epoch was set by *this* server process: the
//!    epoch hash records the `run_id` that set it, and the script compares
//!    it with `INFO server`'s `run_id`, which Redis makes at process start
//!    and never writes to a replica, an RDB or an AOF. So a promoted
//!    replica (even after a full resync), a restart from a rewritten AOF or
//!    an older RDB, a missing counter or a reshard all put the scope in
//!    doubt before the first number the changed node hands out. In doubt,
//!    the counter restarts at the scope's recorded bound
//!    ([`Numbering::restart`]), which is at or above every number ever
//!    handed out in it.
//!
//! The numbers between what Redis still had and the restart point are
//! skipped: at most one block per loss event. The range is recorded in
//! MariaDB (`skipped_numbers`), durable, so that a lookup of any of them
//! answers 404 at once, saying it was skipped, however many loss events
//! happened, and `chat_numbers_skipped_total{scope}` counts them.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::{AsyncCommands, Script};
use sqlx::MySqlPool;

use crate::redis::RedisHandle;
use crate::store;
use crate::store::numbering::FIRST_BLOCK;

use super::buffer::BufferError;
use super::keys::Keys;

/// The largest block a scope reserves by default (`NUMBER_BLOCK_MAX`): one
/// SQL write per about 1,000 creates in a hot scope (a block is reserved
/// when half of the last one is left), and at most this many numbers
/// skipped per loss event.
pub const DEFAULT_BLOCK_MAX: i64 = 2048;

/// A block used up faster than this makes the next one twice as large.
pub const GROW_WITHIN: Duration = Duration::from_secs(10);

/// A block that lasted longer than this makes the next one half as large.
pub const SHRINK_AFTER: Duration = Duration::from_secs(60);

/// At most this many scopes' last block sizes are remembered per process;
/// past it the memory starts afresh (each scope's next block is then
/// [`FIRST_BLOCK`] again, and grows back within a few reservations).
const REMEMBERED_SCOPES: usize = 10_000;

/// How long the background reservation pauses after MariaDB failed, in ms,
/// so that a MariaDB outage costs one failed write per pause, not one per
/// create.
const RESERVE_BACKOFF_MS: i64 = 1000;

/// Restarts a counter at its recorded bound (or marks its chat deleted) and
/// marks it checked for the epoch the caller read before querying MariaDB;
/// creates the counter when it is missing. Does nothing to an application
/// that is missing or deleted in Redis, nor to a scope already checked in
/// this epoch (by a concurrent request), so that it restarts once per event.
///
/// KEYS: app hash. ARGV: counter field (`chats` or a chat number), checked
/// field (`v` or `v:{n}`), bound field (`r` or `r:{n}`), floor (the number
/// to restart at: the recorded bound, or MariaDB's highest number if higher),
/// the new bound (already reserved in MariaDB), epoch, deleted (`1`: the
/// chat is deleted in MariaDB), MariaDB's highest number of the scope. A
/// counter [`EVICT`] removed in this same epoch (the hash's `e` field) comes
/// back exactly at MariaDB's highest number, skipping nothing: it was equal
/// to it when evicted, and Redis lost nothing since. Returns `{applied
/// (0/1), the counter before (-1: none, or deleted; -2: back from an
/// eviction)}`.
pub const RESTART: &str = r#"
local id = redis.call('HGET', KEYS[1], 'id')
if not id or id == 'deleted' then return {0, -1} end
if redis.call('HGET', KEYS[1], ARGV[2]) == ARGV[6] then return {0, -1} end
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local before = -1
if ARGV[7] == '1' then
  redis.call('HSET', KEYS[1], ARGV[1], 'deleted')
elseif not cur and redis.call('HGET', KEYS[1], 'e') == ARGV[6] then
  -- Evicted idle and wholly stored, with no loss since: exactly where it was.
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[8], ARGV[3], ARGV[5])
  before = -2
elseif cur ~= 'deleted' then
  before = tonumber(cur or '-1')
  redis.call('HSET', KEYS[1], ARGV[1], math.max(tonumber(cur or '0'), tonumber(ARGV[4])))
  local bound = tonumber(redis.call('HGET', KEYS[1], ARGV[3]) or '0')
  if bound < tonumber(ARGV[5]) then redis.call('HSET', KEYS[1], ARGV[3], ARGV[5]) end
end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[6])
return {1, before}
"#;

/// Evicts idle counters from an application's hash, so that Redis's memory
/// does not grow with every chat ever created: each given field (`chats`
/// or a chat number) goes, with its checked epoch and bound, only if it
/// still holds the expected value (no create since the caller looked) and
/// no delete is in flight on it; the hash then records the shard's epoch in
/// `e`, so that [`RESTART`] brings the counter back exactly. An `e` from an
/// earlier epoch (Redis may have lost data since those evictions) becomes
/// `doubt` for good: every evicted counter of the hash then restarts at its
/// reservation, as any counter in doubt does.
///
/// KEYS: app hash, the shard's epoch hash. ARGV: pairs of (field, expected
/// value). Returns the number of counters evicted.
pub const EVICT: &str = r#"
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if not epoch or not redis.call('HGET', KEYS[1], 'id') then return 0 end
local n = 0
for i = 1, #ARGV, 2 do
  local f = ARGV[i]
  if redis.call('HGET', KEYS[1], f) == ARGV[i + 1] and not redis.call('HGET', KEYS[1], 't:' .. f) then
    if f == 'chats' then
      redis.call('HDEL', KEYS[1], 'chats', 'v', 'r')
    else
      redis.call('HDEL', KEYS[1], f, 'v:' .. f, 'r:' .. f)
    end
    n = n + 1
  end
end
if n > 0 then
  -- Counters evicted in an earlier epoch may have lost numbers since: they
  -- and any evicted from now on restart at their reservation ('doubt').
  local e = redis.call('HGET', KEYS[1], 'e')
  redis.call('HSET', KEYS[1], 'e', (e and e ~= epoch) and 'doubt' or epoch)
end
return n
"#;

/// Raises a scope's bound to `ARGV[2]` (never lowers it), after MariaDB
/// recorded it. Does nothing to an application missing or deleted in Redis.
///
/// KEYS: app hash. ARGV: bound field, new bound. Returns 1 if raised.
pub const RAISE_BOUND: &str = r#"
local id = redis.call('HGET', KEYS[1], 'id')
if not id or id == 'deleted' then return 0 end
local bound = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if bound >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"#;

/// Which counter of an application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CounterScope {
    /// The application's chat counter.
    Chats,
    /// The message counter of one of its chats.
    Messages {
        /// The chat's number.
        chat_number: i64,
    },
}

impl CounterScope {
    /// The scope's field names in the application's hash: counter, checked
    /// epoch, bound.
    fn fields(self) -> (String, String, String) {
        match self {
            Self::Chats => ("chats".into(), "v".into(), "r".into()),
            Self::Messages { chat_number } => (
                chat_number.to_string(),
                format!("v:{chat_number}"),
                format!("r:{chat_number}"),
            ),
        }
    }

    /// The scope's `chat_number` in MariaDB's numbering tables (0: the
    /// application's chat counter).
    pub fn chat_number(self) -> i64 {
        match self {
            Self::Chats => 0,
            Self::Messages { chat_number } => chat_number,
        }
    }

    /// The scope's label in metrics.
    fn label(self) -> &'static str {
        match self {
            Self::Chats => "chats",
            Self::Messages { .. } => "messages",
        }
    }
}

/// The size of a scope's next block, given its last one (`None`: none
/// reserved by this process) and how long ago that was reserved: twice the
/// last within [`GROW_WITHIN`], half of it after [`SHRINK_AFTER`], else the
/// same; between [`FIRST_BLOCK`] and `max`. The rate is estimated from how
/// fast the last block went, the way a hi/lo allocator sizes its next block
/// (see for example Hibernate's "pooled" optimizer, which keeps the block in
/// the sequence increment).
pub fn next_block(last: Option<(Duration, i64)>, max: i64) -> i64 {
    let size = match last {
        None => FIRST_BLOCK,
        Some((ago, block)) if ago < GROW_WITHIN => block.saturating_mul(2),
        Some((ago, block)) if ago > SHRINK_AFTER => block / 2,
        Some((_, block)) => block,
    };
    size.clamp(FIRST_BLOCK, max.max(FIRST_BLOCK))
}

/// The numbering of one deployment: counters in Redis, bounds and skipped
/// ranges in MariaDB. Cheap to clone.
#[derive(Clone)]
pub struct Numbering {
    redis: RedisHandle,
    keys: Keys,
    pool: MySqlPool,
    timeout: Duration,
    block_max: i64,
    restart: Arc<Script>,
    raise_bound: Arc<Script>,
    evict: Arc<Script>,
    /// Scopes (`{token}\t{bound field}`) with a background reservation
    /// under way in this process.
    in_flight: Arc<Mutex<HashSet<String>>>,
    /// Each scope's last block reserved by this process, and when.
    blocks: Arc<Mutex<HashMap<String, (Instant, i64)>>>,
    /// Scopes with a reservation on the request path under way (one at a
    /// time per scope: [`Numbering::reserve`]).
    reserving: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    /// No background reservation before this time (ms since the epoch):
    /// MariaDB failed the last one.
    backoff_until_ms: Arc<AtomicI64>,
}

impl Numbering {
    /// Numbering over `redis` (keys under `keys`, calls bounded by
    /// `timeout`) and MariaDB `pool`, with blocks of at most `block_max`
    /// numbers (`NUMBER_BLOCK_MAX`).
    pub fn new(
        redis: RedisHandle,
        keys: Keys,
        pool: MySqlPool,
        timeout: Duration,
        block_max: i64,
    ) -> Self {
        Self {
            redis,
            keys,
            pool,
            timeout,
            block_max: block_max.max(FIRST_BLOCK),
            restart: Arc::new(Script::new(RESTART)),
            raise_bound: Arc::new(Script::new(RAISE_BOUND)),
            evict: Arc::new(Script::new(EVICT)),
            in_flight: Default::default(),
            blocks: Default::default(),
            reserving: Default::default(),
            backoff_until_ms: Default::default(),
        }
    }

    /// Runs `f` on a Redis connection within the time limit.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, BufferError>
    where
        F: FnOnce(crate::redis::RedisConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        Ok(self.redis.call(self.timeout, f).await?)
    }

    /// Reserves the next block of `scope` in MariaDB, the counter being at
    /// `counter`, then raises the bound in Redis. Called on the request path
    /// only when the scope used up its bound ([`super::scripts::code::NO_BLOCK`]).
    /// Errors: MariaDB (the create answers 503) or Redis unavailable.
    pub async fn reserve(
        &self,
        token: &str,
        application_id: u64,
        scope: CounterScope,
        counter: i64,
    ) -> Result<(), BufferError> {
        // One reservation at a time per scope in this process: the creates
        // that found the bound used up together wait for one SQL write, not
        // one each (single flight).
        let slot = Self::slot(token, scope);
        let lock = self
            .reserving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(slot.clone())
            .or_default()
            .clone();
        let result = {
            let _turn = lock.lock().await;
            self.reserve_now(token, application_id, scope, counter, &slot)
                .await
        };
        let mut reserving = self.reserving.lock().unwrap_or_else(|e| e.into_inner());
        // Ours and the map's: nobody else waits on it.
        if Arc::strong_count(&lock) <= 2 {
            reserving.remove(&slot);
        }
        result
    }

    /// [`Numbering::reserve`] once this process's turn for the scope came:
    /// nothing when the bound was raised past `counter` meanwhile.
    async fn reserve_now(
        &self,
        token: &str,
        application_id: u64,
        scope: CounterScope,
        counter: i64,
        slot: &str,
    ) -> Result<(), BufferError> {
        let key = self.keys.for_token(token).app(token);
        let (_, _, bound_field) = scope.fields();
        let bound: Option<i64> = {
            let (key, field) = (key.clone(), bound_field.clone());
            self.call(|mut c| async move { c.hget(key, field).await })
                .await?
        };
        if bound.unwrap_or(FIRST_BLOCK) > counter {
            return Ok(());
        }
        let block = {
            let blocks = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
            next_block(
                blocks.get(slot).map(|(at, b)| (at.elapsed(), *b)),
                self.block_max,
            )
        };
        let to = counter + block;
        store::numbering::reserve(&self.pool, application_id, scope.chat_number(), to).await?;
        crate::telemetry::metrics::number_reservation(scope.label());
        {
            let mut blocks = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
            if blocks.len() >= REMEMBERED_SCOPES && !blocks.contains_key(slot) {
                blocks.clear();
            }
            blocks.insert(slot.to_string(), (Instant::now(), block));
        }
        self.call(|mut c| async move {
            self.raise_bound
                .key(key)
                .arg(bound_field)
                .arg(to)
                .invoke_async::<i64>(&mut c)
                .await
        })
        .await?;
        Ok(())
    }

    /// The name of a scope in the in-process maps.
    fn slot(token: &str, scope: CounterScope) -> String {
        format!("{token}\t{}", scope.fields().2)
    }

    /// After a create got `number` under `bound`: when less than half of
    /// the scope's last block is left, reserves the next block in the background (once per
    /// scope at a time in this process, and not while MariaDB is failing),
    /// so that the request path does not wait on SQL.
    pub fn reserve_ahead(
        &self,
        token: &str,
        application_id: u64,
        scope: CounterScope,
        number: i64,
        bound: i64,
    ) {
        // No block is larger than block_max: with half of it left, none is
        // due, and the create pays neither the slot's name nor the lock.
        if bound < 0 || bound - number >= self.block_max / 2 {
            return;
        }
        let slot = Self::slot(token, scope);
        let last_block = self
            .blocks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&slot)
            .map_or(FIRST_BLOCK, |(_, b)| *b);
        if bound - number >= last_block / 2 {
            return;
        }
        if crate::redis::now_ms() < self.backoff_until_ms.load(Ordering::Relaxed) {
            return;
        }
        {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            if !in_flight.insert(slot.clone()) {
                return;
            }
        }
        let this = self.clone();
        let token = token.to_string();
        tokio::spawn(async move {
            if let Err(e) = this.reserve(&token, application_id, scope, number).await {
                this.backoff_until_ms.store(
                    crate::redis::now_ms() + RESERVE_BACKOFF_MS,
                    Ordering::Relaxed,
                );
                tracing::warn!(error = %e, application_id, ?scope, "could not reserve the next block of numbers ahead; the scope reserves on the request path once its bound is used up");
            }
            this.in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&slot);
        });
    }

    /// Restarts the counter of `scope` after a doubt (see the module
    /// docs): reads MariaDB's recorded bound and highest number of the
    /// scope, deleted rows included, reserves a block past them, restarts
    /// the counter there (or marks its chat deleted) and marks it checked in
    /// `epoch` (read by the script before this, so a newer epoch is checked
    /// again). Records the numbers skipped. `missing`: Redis has no counter
    /// for the scope, so a chat that MariaDB does not have does not exist.
    ///
    /// Returns false when the scope does not exist (the chat is unknown).
    /// Errors: Redis or MariaDB unavailable.
    pub async fn restart(
        &self,
        token: &str,
        application_id: u64,
        scope: CounterScope,
        epoch: i64,
        missing: bool,
    ) -> Result<bool, BufferError> {
        let (highest, deleted) = match scope {
            CounterScope::Chats => (
                store::applications::last_chat_number(&self.pool, application_id).await?,
                false,
            ),
            CounterScope::Messages { chat_number } => {
                match store::chats::message_floor(&self.pool, application_id, chat_number).await? {
                    // Unknown to both: no such chat.
                    None if missing => return Ok(false),
                    // Known to Redis only: a chat still buffered.
                    None => (0, false),
                    Some((deleted, last)) => (last, deleted),
                }
            }
        };
        let recorded =
            store::numbering::reserved_to(&self.pool, application_id, scope.chat_number()).await?;
        let floor = recorded.max(highest);
        // After a doubt the scope's rate is unknown: a first block, which
        // the background reservation grows if the scope is hot.
        let bound = floor + FIRST_BLOCK;
        if !deleted {
            store::numbering::reserve(&self.pool, application_id, scope.chat_number(), bound)
                .await?;
        }
        let (applied, before) = self
            .run_restart(token, scope, floor, bound, epoch, deleted, highest)
            .await?;
        // What Redis still had, or MariaDB's highest when Redis had nothing:
        // every number above it up to the floor is skipped.
        if before == -2 {
            return Ok(true);
        }
        let kept = if before >= 0 { before } else { highest };
        if applied == 1 && !deleted && kept < floor {
            store::numbering::record_skip(
                &self.pool,
                application_id,
                scope.chat_number(),
                kept + 1,
                floor,
            )
            .await?;
            crate::telemetry::metrics::numbers_skipped(scope.label(), (floor - kept) as u64);
            tracing::warn!(
                application_id,
                ?scope,
                first = kept + 1,
                last = floor,
                epoch,
                "counter restarted at its recorded bound after Redis may have lost data; the numbers between were skipped"
            );
        }
        Ok(true)
    }

    /// Starts the chat counter of an application just created in MariaDB
    /// (it has no chat anywhere) at 0, checked in the current epoch of its
    /// shard, if one is set (else its first create checks it). Errors:
    /// Redis unavailable.
    pub async fn start_application(&self, token: &str) -> Result<(), BufferError> {
        let Some(epoch) = self.current_epoch(token).await? else {
            return Ok(());
        };
        self.run_restart(token, CounterScope::Chats, 0, FIRST_BLOCK, epoch, false, 0)
            .await?;
        Ok(())
    }

    /// Runs [`RESTART`] on `scope` of `token`'s application: the counter to
    /// `floor` (or exactly `highest`, back from an eviction), its bound to
    /// `bound`, checked in `epoch`, or marked `deleted`. Returns `{applied,
    /// the counter before}` as the script does. Errors: Redis unavailable.
    #[allow(clippy::too_many_arguments)]
    async fn run_restart(
        &self,
        token: &str,
        scope: CounterScope,
        floor: i64,
        bound: i64,
        epoch: i64,
        deleted: bool,
        highest: i64,
    ) -> Result<(i64, i64), BufferError> {
        let key = self.keys.for_token(token).app(token);
        let (counter, checked, bound_field) = scope.fields();
        self.call(|mut c| async move {
            self.restart
                .key(key)
                .arg(counter)
                .arg(checked)
                .arg(bound_field)
                .arg(floor)
                .arg(bound)
                .arg(epoch)
                .arg(if deleted { "1" } else { "0" })
                .arg(highest)
                .invoke_async(&mut c)
                .await
        })
        .await
    }

    /// The epoch in force in `token`'s shard, as the enqueue scripts read it
    /// (`None`: none is set yet). One HGET, unlike [`Numbering::check_epoch`].
    /// Errors: Redis unavailable.
    pub async fn current_epoch(&self, token: &str) -> Result<Option<i64>, BufferError> {
        let key = self.keys.for_token(token).epoch();
        self.call(|mut c| async move { c.hget(key, "epoch").await })
            .await
    }

    /// Runs the epoch check of `token`'s shard now (see
    /// [`crate::redis::CHECK_EPOCH`]); returns the epoch in force.
    /// Errors: Redis unavailable.
    pub async fn check_epoch(&self, token: &str) -> Result<i64, BufferError> {
        let keys = vec![self.keys.for_token(token).epoch()];
        self.call(|mut c| async move { crate::redis::check_epoch(&mut c, &keys).await })
            .await
    }

    /// Runs the epoch check of every shard now: on one node, one script for
    /// all of them (they share its keyspace, as the pool's connection check
    /// does); on a Redis Cluster, one per shard, each on the master that
    /// holds it. Errors: Redis unavailable.
    pub async fn check_all_epochs(&self) -> Result<(), BufferError> {
        let epochs: Vec<String> = self.keys.shards().map(|s| s.epoch()).collect();
        let groups: Vec<Vec<String>> = if self.redis.is_cluster() {
            epochs.into_iter().map(|key| vec![key]).collect()
        } else {
            vec![epochs]
        };
        for keys in groups {
            self.call(|mut c| async move { crate::redis::check_epoch(&mut c, &keys).await })
                .await?;
        }
        Ok(())
    }

    /// Evicts the counters `fields` of `token`'s application, each only if
    /// it still holds its expected value (see [`EVICT`]): `(field,
    /// value)` pairs, the field `chats` or a chat number. Returns how many
    /// went. Errors: Redis unavailable.
    pub async fn evict(
        &self,
        token: &str,
        fields: &[(String, String)],
    ) -> Result<u64, BufferError> {
        if fields.is_empty() {
            return Ok(0);
        }
        let shard = self.keys.for_token(token);
        let (app, epoch) = (shard.app(token), shard.epoch());
        self.call(|mut c| async move {
            let mut inv = self.evict.key(app);
            inv.key(epoch);
            for (field, value) in fields {
                inv.arg(field).arg(value);
            }
            inv.invoke_async(&mut c).await
        })
        .await
    }

    /// The Redis handle, keys and MariaDB pool numbering works on (for the
    /// idle-counter sweep).
    pub fn parts(&self) -> (&RedisHandle, &Keys, &MySqlPool, Duration) {
        (&self.redis, &self.keys, &self.pool, self.timeout)
    }

    /// Whether `number` of `scope` was skipped at a restart (see the module
    /// docs). Errors: MariaDB unavailable.
    pub async fn is_skipped(
        &self,
        application_id: u64,
        scope: CounterScope,
        number: i64,
    ) -> Result<bool, BufferError> {
        Ok(
            store::numbering::is_skipped(&self.pool, application_id, scope.chat_number(), number)
                .await?,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_follow_the_rate_between_the_first_block_and_the_cap() {
        let s = Duration::from_secs;
        assert_eq!(next_block(None, 2048), FIRST_BLOCK);
        assert_eq!(next_block(Some((s(1), 16)), 2048), 32, "used up fast: grow");
        assert_eq!(next_block(Some((s(1), 2048)), 2048), 2048, "capped");
        assert_eq!(next_block(Some((s(30), 512)), 2048), 512, "steady");
        assert_eq!(next_block(Some((s(120), 512)), 2048), 256, "slow: shrink");
        assert_eq!(next_block(Some((s(120), 16)), 2048), FIRST_BLOCK);
        assert_eq!(next_block(Some((s(1), 1024)), 1), FIRST_BLOCK);
    }
}
