//! Numbering: the counters that hand out chat and message numbers, their
//! durable high-water marks in MariaDB, the epochs and the doubt check.
//! The protocol, its state, transitions and invariants are written down in
//! `docs/numbering.md`; each script below names the invariants it keeps
//! (I1: a number is handed out at most once per scope; I2: every
//! acknowledged number is stored under it or recorded as skipped; I3: a
//! bound is recorded in MariaDB before Redis hands out a number under it).
//!
//! **The promise.** A number is never handed out twice, whatever Redis
//! loses. Three rules make it hold:
//!
//! 1. **A durable high-water mark per scope (the hi/lo pattern).** A scope
//!    (an application's chat counter, or a chat's message counter) hands out
//!    numbers only up to its *bound* (`r`, `r:{n}` in the application's
//!    hash), and a bound is raised in Redis only after MariaDB recorded it
//!    (`number_reservations`, [`crate::store::numbering::reserve`]), as a
//!    compare-and-set on the bound this Redis holds, so that two Redis
//!    lineages (an old master still reached after a failover, and the new
//!    one) never reserve the same range. Every scope starts with an implicit
//!    first block ([`crate::store::numbering::FIRST_BLOCK`]). When a create
//!    leaves less than half of the scope's last block, the next block is
//!    reserved past the bound in the background ([`Numbering::reserve_ahead`]),
//!    so no create waits on SQL in steady state. A block holds about
//!    [`RESERVE_SECS`] of the scope's own rate ([`next_block`]), so half of
//!    one, what is left when the next is reserved, rides out a MariaDB stall
//!    of about a minute; only a scope that outran it waits on SQL, and
//!    answers 503 past `NUMBERING_SQL_TIMEOUT_MS`.
//! 2. **A doubt check that no copy of the data carries.** The enqueue
//!    scripts hand out a number only when the scope was checked in the
//!    current epoch and the epoch was set by *this* server lineage (its
//!    `run_id` and `master_replid`, [`crate::redis::LINEAGE`]). So a promoted
//!    replica, a restart from a rewritten AOF or an older RDB, a missing
//!    counter or a reshard all put the scope in doubt before the first
//!    number the changed node hands out. In doubt, the counter restarts
//!    above the scope's recorded bound ([`Numbering::restart`]), which is at
//!    or above every number ever handed out in it.
//! 3. **An evicted counter comes back exactly only when nothing was lost.**
//!    The idle sweep records the epoch of an eviction in MariaDB before it
//!    evicts ([`crate::store::numbering::mark_evicted`]), and evicts only a
//!    counter checked in the current epoch on this lineage; a missing
//!    counter comes back at MariaDB's highest number only when its scope
//!    was evicted in the current epoch. Any other missing counter (lost with
//!    Redis) restarts above its bound.
//!
//! The numbers between what Redis still had and the restart point are
//! skipped: at most one block per loss event. The range is written in the
//! same script that moves the counter (`k:{field}` in the application's
//! hash), then recorded in MariaDB (`skipped_numbers`) and cleared, so that
//! a lookup of any of them answers 404 at once, saying it was skipped, even
//! when MariaDB failed in between (the idle sweep records what is left), and
//! `chat_numbers_skipped_total{scope}` counts them.

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

/// A block holds this many seconds of its scope's own create rate (see
/// [`next_block`]); the next is reserved when half of it is left, so a
/// scope keeps about half of this in reserve: how long its creates ride out
/// a MariaDB stall.
pub const RESERVE_SECS: f64 = 120.0;

/// At most this many scopes' last block sizes are remembered per process;
/// past it the least recently reserved is forgotten (its next block is then
/// [`FIRST_BLOCK`] again, and grows back within a few reservations).
const REMEMBERED_SCOPES: usize = 10_000;

/// How long the background reservation pauses after MariaDB failed, in ms,
/// so that a MariaDB outage costs one failed write per pause, not one per
/// create.
const RESERVE_BACKOFF_MS: i64 = 1000;

/// Compare-and-set attempts of a reservation before the scope is put in
/// doubt (see [`Numbering::reserve`]); the waits between them (50, 100 ms)
/// let a concurrent instance on the same Redis raise the bound it reserved.
const CAS_ATTEMPTS: u64 = 3;

/// Restarts a counter above its recorded bound (or marks its chat deleted)
/// and marks it checked for the epoch the caller read before querying
/// MariaDB; creates the counter when it is missing. Does nothing when the
/// shard's epoch or lineage changed since (the caller asks again), to an
/// application that is missing or deleted in Redis, nor to a scope already
/// checked in this epoch (by a concurrent request), so that it restarts once
/// per event.
///
/// Keeps I1 and I2 (docs/numbering.md): the counter moves to at least
/// `floor`, which is at or above every number handed out in the scope, and
/// the range it jumps over (what Redis still had, or MariaDB's highest when
/// it had nothing, up to `floor`) is written to `k:{field}` in the same
/// step, so that a lookup answers "skipped" before MariaDB records it.
/// Exact mode (`ARGV[9]` = 1, the scope's eviction is recorded in this very
/// epoch): a missing counter comes back at MariaDB's highest number,
/// skipping nothing, since it was equal to it when evicted and Redis lost
/// nothing since; a counter present is left alone (not applied), and so is
/// one evicted again since the caller read the hash's eviction generation
/// `g` (`ARGV[11]`, read before MariaDB's highest number: another restart,
/// a create, a flush and an eviction in between would leave that highest
/// number stale, below a number handed out; O12 in docs/numbering.md).
///
/// KEYS: app hash, the shard's epoch hash. ARGV: counter field (`chats` or
/// a chat number), checked field (`v` or `v:{n}`), bound field (`r` or
/// `r:{n}`), floor, the new bound (already reserved in MariaDB), epoch,
/// deleted (`1`: the chat is deleted in MariaDB), MariaDB's highest number
/// of the scope, exact (`1`/`0`), the ranges below MariaDB's highest
/// number that it never stored (`a-b,…`, see
/// [`crate::store::numbering::gaps`]; written to `k:{field}` with the rest
/// only when the counter is missing: a counter Redis kept covers its
/// queued records), the eviction generation read (`g`, `0` when absent).
/// Returns `{applied (0/1), the counter kept (-1: none
/// applied or deleted; -2: exact)}`.
pub const RESTART: &str = r#"
--LINEAGE
local e = redis.call('HMGET', KEYS[2], 'epoch', 'run_id', 'replid')
if e[1] ~= ARGV[6] or not same_lineage(e[2], e[3]) then return {0, -1} end
local id = redis.call('HGET', KEYS[1], 'id')
if not id or id == 'deleted' then return {0, -1} end
if redis.call('HGET', KEYS[1], ARGV[2]) == ARGV[6] then return {0, -1} end
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[7] == '1' then
  redis.call('HSET', KEYS[1], ARGV[1], 'deleted', ARGV[2], ARGV[6])
  return {1, -1}
end
if ARGV[9] == '1' then
  if cur then return {0, -1} end
  if (redis.call('HGET', KEYS[1], 'g') or '0') ~= ARGV[11] then return {0, -1} end
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[8], ARGV[3], ARGV[5], ARGV[2], ARGV[6])
  return {1, -2}
end
if cur == 'deleted' then
  -- A delete in flight: its tombstone stays.
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[6])
  return {1, -1}
end
local kept = tonumber(cur or ARGV[8])
local floor = tonumber(ARGV[4])
local ranges = {}
if not cur and ARGV[10] ~= '' then ranges[#ranges + 1] = ARGV[10] end
if kept < floor then ranges[#ranges + 1] = string.format('%d-%d', kept + 1, floor) end
if #ranges > 0 then
  local k, range = 'k:' .. ARGV[1], table.concat(ranges, ',')
  local old = redis.call('HGET', KEYS[1], k)
  redis.call('HSET', KEYS[1], k, old and (old .. ',' .. range) or range)
end
redis.call('HSET', KEYS[1], ARGV[1], string.format('%d', math.max(kept, floor)))
local bound = tonumber(redis.call('HGET', KEYS[1], ARGV[3]) or '0')
if bound < tonumber(ARGV[5]) then redis.call('HSET', KEYS[1], ARGV[3], ARGV[5]) end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[6])
return {1, kept}
"#;

/// Evicts idle counters from an application's hash, so that Redis's memory
/// does not grow with every chat ever created. Each given field (`chats`
/// or a chat number) goes, with its checked epoch and bound, only if it
/// still holds the expected value (no create since the caller looked), it
/// was checked in `epoch` (a counter in doubt is never evicted: it would
/// come back as if it were not), no delete is in flight on it and no
/// skipped range of it waits to be recorded; and only when `epoch` is the
/// shard's current one, set by this lineage. The caller recorded `epoch`
/// as the scopes' eviction epoch in MariaDB first, which is what lets
/// [`RESTART`] bring them back exactly (keeps I1: docs/numbering.md). A
/// deleted chat's tombstone (`deleted`) goes whatever its epoch: MariaDB
/// keeps the deletion.
///
/// Each EVICT that takes a field adds 1 to the hash's eviction generation
/// `g`, which an exact [`RESTART`] checks (O12).
///
/// KEYS: app hash, the shard's epoch hash. ARGV: epoch, then pairs of
/// (field, expected value). Returns the fields evicted (so that the caller
/// clears the MariaDB mark of those it marked and that stayed: O11).
pub const EVICT: &str = r#"
--LINEAGE
local e = redis.call('HMGET', KEYS[2], 'epoch', 'run_id', 'replid')
if e[1] ~= ARGV[1] or not same_lineage(e[2], e[3]) then return {} end
if not redis.call('HGET', KEYS[1], 'id') then return {} end
local taken = {}
for i = 2, #ARGV, 2 do
  local f = ARGV[i]
  local checked, bound = 'v:' .. f, 'r:' .. f
  if f == 'chats' then checked, bound = 'v', 'r' end
  local c = redis.call('HMGET', KEYS[1], f, checked, 't:' .. f, 'k:' .. f)
  if c[1] == ARGV[i + 1] and (c[1] == 'deleted' or c[2] == ARGV[1]) and not c[3] and not c[4] then
    redis.call('HDEL', KEYS[1], f, checked, bound)
    taken[#taken + 1] = f
  end
end
-- The hash-wide eviction epoch of earlier versions is no longer read.
if #taken > 0 then
  redis.call('HDEL', KEYS[1], 'e')
  redis.call('HINCRBY', KEYS[1], 'g', 1)
end
return taken
"#;

/// Reads the application hash's eviction generation `g` (0 when absent)
/// with the shard's epoch, on one server in one step: the generation an
/// exact [`RESTART`] compares is then from the server whose epoch the
/// restart has, not from the other server of a split brain, whose copy of
/// the hash counts on apart and could hold the same value by chance (keeps
/// I1 for O12; found by review, not reachable in the model, whose restart
/// reads epoch and generation in one step).
///
/// KEYS: app hash, the shard's epoch hash. ARGV: the epoch. Returns the
/// generation, or -1 when the epoch there is not `ARGV[1]`, set by this
/// lineage.
pub const GENERATION: &str = r#"
--LINEAGE
local e = redis.call('HMGET', KEYS[2], 'epoch', 'run_id', 'replid')
if e[1] ~= ARGV[1] or not same_lineage(e[2], e[3]) then return -1 end
return tonumber(redis.call('HGET', KEYS[1], 'g') or '0')
"#;

/// Raises a scope's bound to `ARGV[2]`, after MariaDB recorded it (keeps
/// I3), only if the bound is still `ARGV[3]`, the one the caller's
/// compare-and-set went from: in a split brain an instance's calls may
/// reach either server, and a step won from one server's bound must not
/// raise the other's past numbers it never owned (found by the model check,
/// `numbering_model.rs`, findings 2a and 2c). Does nothing to an
/// application missing or deleted in Redis.
///
/// KEYS: app hash. ARGV: bound field, new bound, the bound it must still be
/// (an absent bound reads as `ARGV[4]`, the first block). Returns 1 if
/// raised.
pub const RAISE_BOUND: &str = r#"
local id = redis.call('HGET', KEYS[1], 'id')
if not id or id == 'deleted' then return 0 end
local bound = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or ARGV[4])
if bound ~= tonumber(ARGV[3]) or bound >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"#;

/// Puts a scope in doubt when its bound is still the one whose
/// compare-and-set kept failing (MariaDB's mark moved past it: another
/// Redis lineage reserved, or a raise was lost): its checked field becomes
/// `doubt`, so the next create restarts it above the recorded bound (keeps
/// I1 under split brain).
///
/// KEYS: app hash. ARGV: checked field, bound field, the bound seen (an
/// absent bound reads as the first block's). Returns 1 if put in doubt.
pub const DOUBT: &str = r#"
local bound = redis.call('HGET', KEYS[1], ARGV[2]) or ARGV[4]
if bound ~= ARGV[3] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], 'doubt')
return 1
"#;

/// Clears a scope's skipped ranges waiting to be recorded (`k:{field}`,
/// written by [`RESTART`]) once MariaDB recorded them, if no restart added
/// another meanwhile (keeps I2).
///
/// KEYS: app hash. ARGV: the `k:` field, the value recorded. Returns 1 if
/// cleared.
pub const CLEAR_SKIPS: &str = r#"
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
"#;

/// Settles a chat tombstone that no request will settle (its SQL delete
/// and its [`super::scripts::UNTOMBSTONE`] both failed), if it is still as
/// the idle sweep saw it for a whole period: field `deleted`, the same
/// count of deletes in flight. Live in MariaDB: the saved value comes back
/// and the counter is put in doubt (its checked field removed), so its
/// next create restarts it above its bound (keeps I1). Deleted: the
/// tombstone is made final.
///
/// KEYS: app hash. ARGV: field, the deletes in flight seen, live (`1`/`0`).
/// Returns 1 if settled.
pub const REPAIR_TOMBSTONE: &str = r#"
local inflight, undo = 't:' .. ARGV[1], 'u:' .. ARGV[1]
if redis.call('HGET', KEYS[1], ARGV[1]) ~= 'deleted' then return 0 end
if redis.call('HGET', KEYS[1], inflight) ~= ARGV[2] then return 0 end
if ARGV[3] == '1' then
  local prev = redis.call('HGET', KEYS[1], undo)
  if prev and prev ~= '' then
    redis.call('HSET', KEYS[1], ARGV[1], prev)
  else
    redis.call('HDEL', KEYS[1], ARGV[1])
  end
  redis.call('HDEL', KEYS[1], 'v:' .. ARGV[1])
end
redis.call('HDEL', KEYS[1], inflight, undo)
return 1
"#;

/// The ranges of a `k:{field}` value (`first-last[,first-last…]`); a range
/// that does not parse is left out.
pub fn parse_skips(value: &str) -> Vec<std::ops::RangeInclusive<i64>> {
    value
        .split(',')
        .filter_map(|r| {
            let (a, b) = r.split_once('-')?;
            Some(a.parse().ok()?..=b.parse().ok()?)
        })
        .collect()
}

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

/// The last block this process reserved for a scope.
#[derive(Debug, Clone, Copy)]
pub struct LastBlock {
    /// How long ago it was reserved.
    pub ago: Duration,
    /// Its size, in numbers.
    pub size: i64,
    /// Numbers the scope handed out since.
    pub used: i64,
}

/// The size of a scope's next block, given its last one (`None`: none
/// reserved by this process): [`RESERVE_SECS`] of the scope's rate since
/// that reservation (numbers used over the time, at least 1 s), at most 4
/// times and at least half the last block, between [`FIRST_BLOCK`] and
/// `max`. The rate is estimated from how fast the last block went, the way
/// a hi/lo allocator sizes its next block (see for example Hibernate's
/// "pooled" optimizer, which keeps the block in the sequence increment).
pub fn next_block(last: Option<LastBlock>, max: i64) -> i64 {
    let max = max.max(FIRST_BLOCK);
    let Some(last) = last else {
        return FIRST_BLOCK;
    };
    let rate = last.used.max(0) as f64 / last.ago.as_secs_f64().max(1.0);
    let wanted = (rate * RESERVE_SECS).ceil() as i64;
    wanted
        .clamp(last.size / 2, last.size.saturating_mul(4))
        .clamp(FIRST_BLOCK, max)
}

/// The numbering of one deployment: counters in Redis, bounds and skipped
/// ranges in MariaDB. Cheap to clone.
#[derive(Clone)]
pub struct Numbering {
    redis: RedisHandle,
    keys: Keys,
    pool: MySqlPool,
    timeout: Duration,
    sql_timeout: Duration,
    block_max: i64,
    scripts: Arc<NumberingScripts>,
    /// Scopes (`{token}\t{bound field}`) with a background reservation
    /// under way in this process.
    in_flight: Arc<Mutex<HashSet<String>>>,
    /// Each scope's last block reserved by this process: when, its size,
    /// and the counter then.
    blocks: Arc<Mutex<HashMap<String, Reserved>>>,
    /// Scopes with a reservation under way (one at a time per scope:
    /// [`Numbering::reserve`]).
    reserving: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    /// No background reservation before this time (ms since the epoch):
    /// MariaDB failed the last one.
    backoff_until_ms: Arc<AtomicI64>,
}

/// A block this process reserved for a scope: when, its size, and the
/// scope's counter then.
type Reserved = (Instant, i64, i64);

/// The numbering scripts, hashed once.
struct NumberingScripts {
    generation: Script,
    restart: Script,
    raise_bound: Script,
    evict: Script,
    doubt: Script,
    clear_skips: Script,
    repair_tombstone: Script,
}

impl Numbering {
    /// Numbering over `redis` (keys under `keys`, calls bounded by
    /// `timeout`) and MariaDB `pool` (each statement bounded by
    /// `sql_timeout`, `NUMBERING_SQL_TIMEOUT_MS`), with blocks of at most
    /// `block_max` numbers (`NUMBER_BLOCK_MAX`).
    pub fn new(
        redis: RedisHandle,
        keys: Keys,
        pool: MySqlPool,
        timeout: Duration,
        block_max: i64,
        sql_timeout: Duration,
    ) -> Self {
        let lineage = |text: &str| Script::new(&text.replace("--LINEAGE", crate::redis::LINEAGE));
        Self {
            redis,
            keys,
            pool,
            timeout,
            sql_timeout,
            block_max: block_max.max(FIRST_BLOCK),
            scripts: Arc::new(NumberingScripts {
                generation: lineage(GENERATION),
                restart: lineage(RESTART),
                raise_bound: Script::new(RAISE_BOUND),
                evict: lineage(EVICT),
                doubt: Script::new(DOUBT),
                clear_skips: Script::new(CLEAR_SKIPS),
                repair_tombstone: Script::new(REPAIR_TOMBSTONE),
            }),
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

    /// Runs one SQL step within `NUMBERING_SQL_TIMEOUT_MS`: past it, the
    /// step is dropped (its connection closed) and this answers a MariaDB
    /// time-out (503), so that a MariaDB that hangs without failing does not
    /// hold creates. A dropped write may still commit: every caller treats
    /// that as a lost compare-and-set, never as a reservation made.
    async fn sql<T>(
        &self,
        step: impl std::future::Future<Output = sqlx::Result<T>>,
    ) -> Result<T, BufferError> {
        match tokio::time::timeout(self.sql_timeout, step).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(BufferError::Database(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "numbering SQL past NUMBERING_SQL_TIMEOUT_MS",
            )))),
        }
    }

    /// Makes sure `scope` may hand out the number after `counter`: called
    /// on the request path only when the scope used up its bound
    /// ([`super::scripts::code::NO_BLOCK`]). Reserves the next block in
    /// MariaDB as a compare-and-set on the bound this Redis holds, then
    /// raises the bound in Redis. When the compare-and-set keeps failing
    /// (3 attempts, 50 and 100 ms apart), MariaDB's mark is past this Redis's bound
    /// (another lineage reserved: split brain, or a raise was lost): the
    /// scope is put in doubt ([`DOUBT`]), and the caller's next try
    /// restarts it above the recorded bound.
    /// Errors: MariaDB (the create answers 503) or Redis unavailable.
    pub async fn reserve(
        &self,
        token: &str,
        application_id: u64,
        scope: CounterScope,
        counter: i64,
    ) -> Result<(), BufferError> {
        self.reserve_single_flight(token, application_id, scope, counter, false)
            .await
    }

    /// [`Numbering::reserve`] one at a time per scope in this process: the
    /// creates that found the bound used up together wait for one SQL
    /// write, not one each (single flight). `ahead`: the background
    /// reservation, due while less than half the last block is left.
    async fn reserve_single_flight(
        &self,
        token: &str,
        application_id: u64,
        scope: CounterScope,
        counter: i64,
        ahead: bool,
    ) -> Result<(), BufferError> {
        let slot = Self::slot(token, scope);
        self.one_at_a_time(&slot, async || {
            self.reserve_now(token, application_id, scope, counter, ahead, &slot)
                .await
        })
        .await
    }

    /// Runs `f` holding the scope's turn (`slot`) in this process: one
    /// reservation or restart of a scope at a time (the map entry goes when
    /// nobody else waits on it).
    async fn one_at_a_time<T>(&self, slot: &str, f: impl AsyncFnOnce() -> T) -> T {
        let lock = self
            .reserving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(slot.to_string())
            .or_default()
            .clone();
        let result = {
            let _turn = lock.lock().await;
            f().await
        };
        let mut reserving = self.reserving.lock().unwrap_or_else(|e| e.into_inner());
        // Ours and the map's: nobody else waits on it.
        if Arc::strong_count(&lock) <= 2 {
            reserving.remove(slot);
        }
        result
    }

    /// The last block this process reserved for `slot`, seen at `counter`.
    fn last_block(&self, slot: &str, counter: i64) -> Option<LastBlock> {
        let blocks = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
        blocks.get(slot).map(|(at, size, then)| LastBlock {
            ago: at.elapsed(),
            size: *size,
            used: counter - then,
        })
    }

    /// [`Numbering::reserve_single_flight`] once this process's turn for the
    /// scope came: nothing when the bound was raised far enough meanwhile
    /// (past `counter`; for `ahead`, by half the last block).
    async fn reserve_now(
        &self,
        token: &str,
        application_id: u64,
        scope: CounterScope,
        counter: i64,
        ahead: bool,
        slot: &str,
    ) -> Result<(), BufferError> {
        let key = self.keys.for_token(token).app(token);
        let (_, checked_field, bound_field) = scope.fields();
        let mut bound = FIRST_BLOCK;
        for attempt in 0..CAS_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
            }
            bound = {
                let (key, field) = (key.clone(), bound_field.clone());
                self.call(|mut c| async move { c.hget::<_, _, Option<i64>>(key, field).await })
                    .await?
                    .unwrap_or(FIRST_BLOCK)
            };
            let last = self.last_block(slot, counter);
            let enough = if ahead {
                bound - counter >= last.map_or(FIRST_BLOCK, |l| l.size) / 2
            } else {
                bound > counter
            };
            if enough {
                return Ok(());
            }
            let block = next_block(last, self.block_max);
            let to = bound.max(counter) + block;
            let won = self
                .sql(store::numbering::reserve(
                    &self.pool,
                    application_id,
                    scope.chat_number(),
                    bound,
                    to,
                ))
                .await?;
            if !won {
                continue;
            }
            crate::telemetry::metrics::number_reservation(scope.label());
            {
                let mut blocks = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
                if blocks.len() >= REMEMBERED_SCOPES
                    && !blocks.contains_key(slot)
                    && let Some(oldest) = blocks
                        .iter()
                        .min_by_key(|(_, (at, _, _))| *at)
                        .map(|(k, _)| k.clone())
                {
                    blocks.remove(&oldest);
                }
                blocks.insert(slot.to_string(), (Instant::now(), block, counter));
            }
            self.raise_bound(token, scope, to, bound).await?;
            return Ok(());
        }
        let doubted: i64 = self
            .call(|mut c| async move {
                self.scripts
                    .doubt
                    .key(key)
                    .arg(checked_field)
                    .arg(bound_field)
                    .arg(bound)
                    .arg(FIRST_BLOCK)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        tracing::warn!(
            application_id,
            ?scope,
            bound,
            doubted,
            "MariaDB's reserved bound moved past this Redis's (another Redis lineage reserved, or a raise was lost): the counter restarts above it"
        );
        Ok(())
    }

    /// Runs [`RAISE_BOUND`]: `scope`'s bound to `to`, if it is still
    /// `from` (the bound the caller's compare-and-set went from). Errors:
    /// Redis unavailable.
    async fn raise_bound(
        &self,
        token: &str,
        scope: CounterScope,
        to: i64,
        from: i64,
    ) -> Result<(), BufferError> {
        let key = self.keys.for_token(token).app(token);
        let field = scope.fields().2;
        self.call(|mut c| async move {
            self.scripts
                .raise_bound
                .key(key)
                .arg(field)
                .arg(to)
                .arg(from)
                .arg(FIRST_BLOCK)
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
    /// the scope's last block is left, reserves the next block past the
    /// bound in the background (once per scope at a time in this process,
    /// and not while MariaDB is failing), so that the request path does not
    /// wait on SQL.
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
            .map_or(FIRST_BLOCK, |(_, b, _)| *b);
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
            if let Err(e) = this
                .reserve_single_flight(&token, application_id, scope, number, true)
                .await
            {
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
    /// docs): reads MariaDB's recorded bound, eviction epoch and highest
    /// number of the scope (deleted rows included). A counter missing from
    /// Redis whose eviction MariaDB recorded in `epoch` comes back exactly
    /// at the highest number. Any other restarts at the recorded bound (or
    /// the highest number, if higher), with a first block past it reserved
    /// as a compare-and-set (retried on a lost race), or is marked deleted;
    /// it is marked checked in `epoch` (read by the script before this, so a
    /// newer epoch is checked again). The numbers skipped are recorded.
    /// `missing`: Redis has no counter for the scope, so a chat that MariaDB
    /// does not have does not exist.
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
        // One restart at a time per scope in this process (the creates that
        // found it in doubt together wait for one), and none once another,
        // here or on another instance, checked it in this epoch: concurrent
        // restarts would each move the reservation, all but one in vain.
        let slot = Self::slot(token, scope);
        self.one_at_a_time(&slot, async || {
            if self.checked(token, scope).await?.1 == Some(epoch.to_string()) {
                return Ok(true);
            }
            // After a doubt the scope's rate is unknown: its blocks start
            // again from the first.
            self.blocks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&slot);
            self.restart_now(token, application_id, scope, epoch, missing)
                .await
        })
        .await
    }

    /// [`Numbering::restart`] once this process's turn for the scope came.
    async fn restart_now(
        &self,
        token: &str,
        application_id: u64,
        scope: CounterScope,
        epoch: i64,
        missing: bool,
    ) -> Result<bool, BufferError> {
        // Read before MariaDB's highest number: an exact restart applies
        // only if no eviction came between (O12). Another epoch there: the
        // caller asks again.
        let Some(generation) = self.eviction_generation(token, epoch).await? else {
            return Ok(true);
        };
        let (highest, deleted) = match scope {
            CounterScope::Chats => (
                self.sql(store::applications::last_chat_number(
                    &self.pool,
                    application_id,
                ))
                .await?,
                false,
            ),
            CounterScope::Messages { chat_number } => {
                match self
                    .sql(store::chats::message_floor(
                        &self.pool,
                        application_id,
                        chat_number,
                    ))
                    .await?
                {
                    // Unknown to both: no such chat.
                    None if missing => return Ok(false),
                    // Known to Redis only: a chat still buffered.
                    None => (0, false),
                    Some((deleted, last)) => (last, deleted),
                }
            }
        };
        let chat_number = scope.chat_number();
        let recorded = self
            .sql(store::numbering::reservation(
                &self.pool,
                application_id,
                chat_number,
            ))
            .await?;
        if missing && !deleted && recorded.evicted_epoch == Some(epoch) {
            // Evicted in this very epoch, equal to MariaDB's highest then;
            // if the counter is back meanwhile, the caller asks again.
            let bound = recorded.reserved_to.max(highest);
            self.run_restart(
                token,
                scope,
                highest,
                bound,
                epoch,
                false,
                highest,
                Some(generation),
                "",
            )
            .await?;
            return Ok(true);
        }
        let mut reserved_to = recorded.reserved_to;
        let mut attempts = 0;
        let (floor, bound, won_from) = loop {
            let floor = reserved_to.max(highest);
            // After a doubt the scope's rate is unknown: a first block,
            // which the background reservation grows if the scope is hot.
            let bound = floor + FIRST_BLOCK;
            if deleted
                || self
                    .sql(store::numbering::reserve(
                        &self.pool,
                        application_id,
                        chat_number,
                        reserved_to,
                        bound,
                    ))
                    .await?
            {
                break (floor, bound, reserved_to);
            }
            // Lost: another restart (another instance on this Redis, or
            // another lineage) moved the reservation. If it was one on this
            // Redis that checked the scope, nothing is left to do.
            if self.checked(token, scope).await?.1 == Some(epoch.to_string()) {
                return Ok(true);
            }
            attempts += 1;
            if attempts >= CAS_ATTEMPTS {
                return Err(BufferError::Unavailable(
                    "concurrent restarts of this counter kept moving its reservation".into(),
                ));
            }
            reserved_to = self
                .sql(store::numbering::reserved_to(
                    &self.pool,
                    application_id,
                    chat_number,
                ))
                .await?;
        };
        // A missing counter may have been lost with records below MariaDB's
        // highest number still queued (flushed out of order).
        let gaps = if missing && !deleted {
            self.sql(store::numbering::gaps(
                &self.pool,
                application_id,
                chat_number,
                highest,
            ))
            .await?
            .iter()
            .map(|r| format!("{}-{}", r.start(), r.end()))
            .collect::<Vec<_>>()
            .join(",")
        } else {
            String::new()
        };
        let (applied, kept) = self
            .run_restart(
                token, scope, floor, bound, epoch, deleted, highest, None, &gaps,
            )
            .await?;
        if applied == 0 && !deleted {
            // Another restart checked the scope first; the step this one
            // won is committed, so Redis may use it too if its bound is
            // still where this step went from (the same Redis: the
            // reservation stays where its bound is).
            self.raise_bound(token, scope, bound, won_from).await?;
        }
        if applied == 1 && !deleted && kept >= 0 && kept < floor {
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
        if let Err(e) = self
            .record_skips(token, application_id, &scope.fields().0)
            .await
        {
            // They stay in `k:{field}`, where lookups see them; the idle
            // sweep records them later.
            tracing::warn!(error = %e, application_id, ?scope, "could not record skipped numbers yet");
        }
        Ok(true)
    }

    /// Records in MariaDB the skipped ranges of `token`'s counter `field`
    /// (`chats` or a chat number) that wait in its `k:{field}`, then clears
    /// them (see [`RESTART`], [`CLEAR_SKIPS`]). Returns how many ranges it
    /// recorded. Errors: Redis or MariaDB unavailable (what is left stays).
    pub async fn record_skips(
        &self,
        token: &str,
        application_id: u64,
        field: &str,
    ) -> Result<usize, BufferError> {
        let key = self.keys.for_token(token).app(token);
        let k = format!("k:{field}");
        let value: Option<String> = {
            let (key, k) = (key.clone(), k.clone());
            self.call(|mut c| async move { c.hget(key, k).await })
                .await?
        };
        let Some(value) = value else {
            return Ok(0);
        };
        let chat_number = if field == "chats" {
            0
        } else {
            field.parse().unwrap_or(0)
        };
        let ranges = parse_skips(&value);
        for range in &ranges {
            self.sql(store::numbering::record_skip(
                &self.pool,
                application_id,
                chat_number,
                *range.start(),
                *range.end(),
            ))
            .await?;
        }
        self.call(|mut c| async move {
            self.scripts
                .clear_skips
                .key(key)
                .arg(k)
                .arg(value)
                .invoke_async::<i64>(&mut c)
                .await
        })
        .await?;
        Ok(ranges.len())
    }

    /// Starts the chat counter of an application just created in MariaDB
    /// (it has no chat anywhere) at 0, checked in the current epoch of its
    /// shard, if one is set (else its first create checks it). Errors:
    /// Redis unavailable.
    pub async fn start_application(&self, token: &str) -> Result<(), BufferError> {
        let Some(epoch) = self.current_epoch(token).await? else {
            return Ok(());
        };
        self.run_restart(
            token,
            CounterScope::Chats,
            0,
            FIRST_BLOCK,
            epoch,
            false,
            0,
            None,
            "",
        )
        .await?;
        Ok(())
    }

    /// Runs [`RESTART`] on `scope` of `token`'s application: the counter to
    /// `floor` (or, `exact` with the eviction generation read before
    /// `highest`, back at `highest`), its bound to `bound`, checked in
    /// `epoch`, or marked `deleted`. Returns `{applied, the counter kept}`
    /// as the script does. Errors: Redis unavailable.
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
        exact: Option<i64>,
        gaps: &str,
    ) -> Result<(i64, i64), BufferError> {
        let shard = self.keys.for_token(token);
        let (key, epoch_key) = (shard.app(token), shard.epoch());
        let (counter, checked, bound_field) = scope.fields();
        self.call(|mut c| async move {
            self.scripts
                .restart
                .key(key)
                .key(epoch_key)
                .arg(counter)
                .arg(checked)
                .arg(bound_field)
                .arg(floor)
                .arg(bound)
                .arg(epoch)
                .arg(if deleted { "1" } else { "0" })
                .arg(highest)
                .arg(if exact.is_some() { "1" } else { "0" })
                .arg(gaps)
                .arg(exact.unwrap_or(0))
                .invoke_async(&mut c)
                .await
        })
        .await
    }

    /// Whether `scope`'s counter is in `token`'s application hash, and the
    /// epoch it was last checked in (`v` or `v:{n}`; `doubt` when put in
    /// doubt). Errors: Redis unavailable.
    pub async fn checked(
        &self,
        token: &str,
        scope: CounterScope,
    ) -> Result<(bool, Option<String>), BufferError> {
        let key = self.keys.for_token(token).app(token);
        let (counter, checked, _) = scope.fields();
        let (value, checked): (Option<String>, Option<String>) = self
            .call(|mut c| async move {
                redis::cmd("HMGET")
                    .arg(key)
                    .arg(counter)
                    .arg(checked)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok((value.is_some(), checked))
    }

    /// The eviction generation of `token`'s application hash (`g`: how many
    /// [`EVICT`] calls took a counter from it; 0 when absent), which an
    /// exact [`RESTART`] checks is unchanged (O12), read by [`GENERATION`]
    /// with the shard's epoch: `None` when the epoch there is not `epoch`
    /// (another server of a split brain, or the epoch moved; the caller
    /// asks again). Errors: Redis unavailable.
    pub async fn eviction_generation(
        &self,
        token: &str,
        epoch: i64,
    ) -> Result<Option<i64>, BufferError> {
        let shard = self.keys.for_token(token);
        let (app, epoch_key) = (shard.app(token), shard.epoch());
        let generation: i64 = self
            .call(|mut c| async move {
                self.scripts
                    .generation
                    .key(app)
                    .key(epoch_key)
                    .arg(epoch)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok((generation >= 0).then_some(generation))
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
    /// it still holds its expected value and was checked in `epoch`, the
    /// shard's current one (see [`EVICT`]): `(field, value)` pairs, the
    /// field `chats` or a chat number. The caller recorded `epoch` as their
    /// eviction epoch in MariaDB first
    /// ([`crate::store::numbering::mark_evicted`]). Returns the fields that
    /// went (the others stay: a create came since, or the epoch moved).
    /// Errors: Redis unavailable.
    pub async fn evict(
        &self,
        token: &str,
        epoch: i64,
        fields: &[(String, String)],
    ) -> Result<Vec<String>, BufferError> {
        if fields.is_empty() {
            return Ok(Vec::new());
        }
        let shard = self.keys.for_token(token);
        let (app, epoch_key) = (shard.app(token), shard.epoch());
        self.call(|mut c| async move {
            let mut inv = self.scripts.evict.key(app);
            inv.key(epoch_key).arg(epoch);
            for (field, value) in fields {
                inv.arg(field).arg(value);
            }
            inv.invoke_async(&mut c).await
        })
        .await
    }

    /// Runs [`REPAIR_TOMBSTONE`] on chat `field` of `token`'s application,
    /// whose tombstone was seen with `in_flight` deletes in flight for a
    /// whole sweep period; `live`: MariaDB holds the chat, not deleted.
    /// Returns whether it settled it. Errors: Redis unavailable.
    pub async fn repair_tombstone(
        &self,
        token: &str,
        field: &str,
        in_flight: &str,
        live: bool,
    ) -> Result<bool, BufferError> {
        let key = self.keys.for_token(token).app(token);
        let done: i64 = self
            .call(|mut c| async move {
                self.scripts
                    .repair_tombstone
                    .key(key)
                    .arg(field)
                    .arg(in_flight)
                    .arg(if live { "1" } else { "0" })
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(done == 1)
    }

    /// The Redis handle, keys and MariaDB pool numbering works on (for the
    /// idle-counter sweep).
    pub fn parts(&self) -> (&RedisHandle, &Keys, &MySqlPool, Duration) {
        (&self.redis, &self.keys, &self.pool, self.timeout)
    }

    /// Whether `number` of `scope` was skipped at a restart (see the module
    /// docs): recorded in MariaDB, or still waiting in Redis to be recorded.
    /// Errors: MariaDB or Redis unavailable.
    pub async fn is_skipped(
        &self,
        token: &str,
        application_id: u64,
        scope: CounterScope,
        number: i64,
    ) -> Result<bool, BufferError> {
        if store::numbering::is_skipped(&self.pool, application_id, scope.chat_number(), number)
            .await?
        {
            return Ok(true);
        }
        let key = self.keys.for_token(token).app(token);
        let k = format!("k:{}", scope.fields().0);
        let waiting: Option<String> = self
            .call(|mut c| async move { c.hget(key, k).await })
            .await?;
        Ok(waiting.is_some_and(|v| parse_skips(&v).iter().any(|r| r.contains(&number))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last(secs: u64, size: i64, used: i64) -> Option<LastBlock> {
        Some(LastBlock {
            ago: Duration::from_secs(secs),
            size,
            used,
        })
    }

    #[test]
    fn a_block_holds_two_minutes_of_the_scopes_rate_within_bounds() {
        assert_eq!(next_block(None, 2048), FIRST_BLOCK);
        // 5 creates/s: 600 numbers wanted, at most 4 times the last block.
        assert_eq!(next_block(last(10, 64, 50), 2048), 256);
        assert_eq!(next_block(last(10, 256, 50), 2048), 600);
        assert_eq!(next_block(last(1, 2048, 5000), 2048), 2048, "capped");
        // Idle: at most halved per block.
        assert_eq!(next_block(last(600, 512, 1), 2048), 256);
        assert_eq!(next_block(last(600, 16, 0), 2048), FIRST_BLOCK);
        // A burst within a second counts as one second.
        assert_eq!(next_block(last(0, 16, 8), 2048), 64);
        assert_eq!(next_block(last(1, 1024, 100), 1), FIRST_BLOCK);
    }

    #[test]
    fn skipped_ranges_parse_and_bad_ones_are_left_out() {
        assert_eq!(parse_skips("4-16"), vec![4..=16]);
        assert_eq!(parse_skips("4-16,20-40"), vec![4..=16, 20..=40]);
        assert_eq!(parse_skips("x,5-6"), vec![5..=6]);
    }
}

#[cfg(test)]
#[path = "numbering_model.rs"]
mod model;
