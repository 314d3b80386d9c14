//! The lease queue: the one claim / renew / acknowledge / give back /
//! recover machinery of the service, over Lua scripts so that each step is
//! atomic in Redis.
//!
//! Three users drain a queue with it: the flusher (the `pending:chats` and
//! `pending:messages` lists, to MariaDB), the search indexer
//! (`pending:search`, to Meilisearch) and the counts refresher (the
//! `dirty:apps` and `dirty:chats` sets, to `chats_count` and
//! `messages_count`). For each of them:
//!
//! 1. [`LeaseQueue::claim`] moves up to N items from the waiting list or set
//!    to a fresh processing key, records its lease deadline in the shard's
//!    leases sorted set and its owner in the batches hash, in one step. A
//!    list gives its oldest items, in order; a set gives any N members, each
//!    to one claimer only (SPOP), so several instances share the work
//!    without doing it twice.
//! 2. While the lease runs, only the claimer touches the batch; a long piece
//!    of work extends it with [`LeaseQueue::renew`].
//! 3. [`LeaseQueue::ack`] drops the batch once its work is done, and makes
//!    the writes that follow from it ([`HandOn`]: records deferred to the
//!    tail, dead letters, dirty marks, search-index ops) in the same step, so
//!    that they happen exactly when the batch leaves. It does nothing when
//!    the lease was lost (the batch was recovered by someone else, who will
//!    do the work again, idempotently).
//! 4. [`LeaseQueue::give_back`] puts a batch whose work failed for a passing
//!    reason back at the head of its list (or into its set), so that it is
//!    retried first.
//! 5. [`LeaseQueue::recover_expired`] does the same for batches whose lease
//!    ran out (their claimer died or hung); any instance runs it.
//!
//! This is the reliable-queue pattern of Redis's `LMOVE` documentation
//! (<https://redis.io/docs/latest/commands/lmove/#pattern-reliable-queue>),
//! with a lease deadline instead of a separate watchdog's guess.
//!
//! The scripts that move batches run with `allow-oom`: under `maxmemory`
//! with `noeviction`, a full Redis still drains; only creation, which adds
//! records, is refused. Their result codes are the constants of [`code`],
//! defined once in Rust and spliced into the Lua as named locals.

use std::sync::Arc;
use std::time::Duration;

use redis::Script;

use super::BufferError;
use crate::redis::{RedisHandle, now_ms};

/// Result codes of the scripts that need the caller to hold the lease
/// ([`LeaseQueue::renew`], [`LeaseQueue::ack`]). The same names are locals
/// of the Lua, spliced in by the same code that builds each script.
pub mod code {
    /// The caller held the lease: the step was done.
    pub const HELD: i64 = 1;
    /// The lease had run out and the batch was recovered (or acknowledged)
    /// by someone else: nothing was done.
    pub const LEASE_LOST: i64 = 0;
}

/// Items per command inside a script (Lua's `unpack` has a limit on the
/// stack; 1,000 is far below it). Even, for HSET's pairs.
const CHUNK: usize = 1000;

/// Where one shard's batches of a family of queues are leased, and how a
/// processing key names the queue it came from: a batch of
/// `{prefix}{processing}{name}:{uuid}` goes back to `{prefix}{waiting}{name}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSet {
    /// Sorted set: processing key → lease deadline (ms since the Unix epoch).
    pub leases: String,
    /// Hash: processing key → `{owner}\t{claimed_at_ms}` (for operators, see
    /// `GET /api/v1/admin/queues`).
    pub batches: String,
    /// The shard's key prefix, hash tag included (`chat:{3}:`).
    pub prefix: String,
    /// The processing keys' segment (`processing:`, `dirtyproc:`).
    pub processing: &'static str,
    /// The waiting keys' segment (`pending:`, `dirty:`).
    pub waiting: &'static str,
}

/// One queue of one shard: its waiting list or set, and its lease set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queue {
    /// The queue's name in keys (`chats`, `messages`, `search`, `apps`).
    pub name: &'static str,
    /// The leases of the queue's family in its shard.
    pub lease_set: LeaseSet,
}

impl Queue {
    /// Where items wait: a list (`RPUSH`ed by producers) or a set (`SADD`ed).
    pub fn waiting(&self) -> String {
        let s = &self.lease_set;
        format!("{}{}{}", s.prefix, s.waiting, self.name)
    }

    /// A fresh processing key for a batch (`batch`: a UUID).
    pub fn processing(&self, batch: &str) -> String {
        let s = &self.lease_set;
        format!("{}{}{}:{batch}", s.prefix, s.processing, self.name)
    }
}

/// A batch claimed from a [`Queue`]: its claimer owns it until its lease runs out.
#[derive(Debug)]
pub struct Batch {
    /// The queue it came from.
    pub queue: Queue,
    /// The processing key that holds it.
    pub key: String,
    /// The items, oldest first for a list.
    pub items: Vec<Vec<u8>>,
}

/// What a [`HandOn`] writes its items into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Collection {
    /// `RPUSH` to the tail of a list.
    List,
    /// `SADD` to a set.
    Set,
    /// `HSET` of (field, value) pairs in a hash.
    Hash,
    /// `HINCRBY` of (field, increment) pairs in a hash; a field that falls
    /// to 0 or below is removed (a count of what a queue holds).
    Counts,
    /// `SET … PX` of string keys that expire: the first item is the life
    /// in ms, then (suffix, value) pairs; each key is the hand-on's key (a
    /// prefix in the shard, so in its hash slot) followed by the suffix.
    Expiring,
}

impl Collection {
    fn as_str(self) -> &'static str {
        match self {
            Collection::List => "list",
            Collection::Set => "set",
            Collection::Hash => "hash",
            Collection::Counts => "counts",
            Collection::Expiring => "expiring",
        }
    }
}

/// A write that follows from a batch and is made by its acknowledgement, in
/// the same script: it happens if and only if the batch leaves its queue.
/// The key must be in the batch's shard (same hash tag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandOn {
    /// The list, set or hash written.
    pub key: String,
    /// Its type, which picks the command.
    pub into: Collection,
    /// The items (for [`Collection::Hash`], field and value alternately).
    pub items: Vec<Vec<u8>>,
}

/// The scripts' shared prelude: the result codes of [`code`] as Lua locals;
/// `push(command, key, items, first, last)`, which sends `items[first..last]`
/// to `key` with `command` in chunks of [`CHUNK`] (an even number, so that
/// HSET's field and value pairs stay whole); and `give_back(from, to)`,
/// which moves a processing list to the head of its list in order (or a
/// processing set into its set), deletes it and returns how many items it
/// held.
fn prelude() -> String {
    format!(
        r#"
local HELD, LEASE_LOST = {held}, {lost}
local function push(command, key, items, first, last)
  for i = first, last, {chunk} do
    redis.call(command, key, unpack(items, i, math.min(i + {chunk} - 1, last)))
  end
end
local function give_back(from, to)
  if redis.call('TYPE', from).ok == 'set' then
    local n = redis.call('SCARD', from)
    if n > 0 then redis.call('SUNIONSTORE', to, to, from) end
    redis.call('DEL', from)
    return n
  end
  local items = redis.call('LRANGE', from, 0, -1)
  local reversed = {{}}
  for i = #items, 1, -1 do reversed[#reversed + 1] = items[i] end
  push('LPUSH', to, reversed, 1, #reversed)
  redis.call('DEL', from)
  return #items
end
"#,
        held = code::HELD,
        lost = code::LEASE_LOST,
        chunk = CHUNK,
    )
}

/// A script with the [`prelude`] spliced in after its first line (the
/// `#!lua flags=allow-oom` shebang, which must stay first).
fn script(body: &str) -> Script {
    let (shebang, rest) = body.split_once('\n').unwrap_or((body, ""));
    Script::new(&format!(
        "{shebang}\n{}{}{rest}",
        prelude(),
        super::scripts::MERGE_GTID
    ))
}

/// Moves up to N items of the waiting list (its head, in order) or set (any
/// N) to a new processing key of the same type, and records the lease and
/// owner, in one step.
///
/// KEYS: waiting, processing, leases, batches. ARGV: N, lease deadline ms,
/// `{owner}\t{claimed_at_ms}`. Returns the items (empty: nothing waited).
const CLAIM: &str = r#"#!lua flags=allow-oom
local items, add
if redis.call('TYPE', KEYS[1]).ok == 'set' then
  items = redis.call('SPOP', KEYS[1], tonumber(ARGV[1]))
  add = 'SADD'
else
  items = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
  if #items > 0 then redis.call('LTRIM', KEYS[1], #items, -1) end
  add = 'RPUSH'
end
if #items == 0 then return items end
push(add, KEYS[2], items, 1, #items)
redis.call('ZADD', KEYS[3], ARGV[2], KEYS[2])
redis.call('HSET', KEYS[4], KEYS[2], ARGV[3])
return items
"#;

/// Extends a lease if the caller still holds it.
///
/// KEYS: leases. ARGV: processing key, new deadline ms. Returns HELD or
/// LEASE_LOST.
const RENEW: &str = r#"#!lua flags=allow-oom
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[1])
  return HELD
end
return LEASE_LOST
"#;

/// Drops a batch whose work is done and, only if the caller still held its
/// lease, makes its hand-on writes.
///
/// KEYS: leases, processing, batches, then one key per hand-on. ARGV: the
/// number of hand-ons T, then T pairs (`list` / `set` / `hash` / `counts`
/// / `expiring`, item count), then every hand-on's items in order. Returns HELD or LEASE_LOST.
const ACK: &str = r#"#!lua flags=allow-oom
local held = redis.call('ZREM', KEYS[1], KEYS[2])
redis.call('DEL', KEYS[2])
redis.call('HDEL', KEYS[3], KEYS[2])
if held == 0 then return LEASE_LOST end
local commands = {list = 'RPUSH', set = 'SADD', hash = 'HSET'}
local t = tonumber(ARGV[1])
local i = 2 + 2 * t
for h = 1, t do
  local n = tonumber(ARGV[2 * h + 1])
  if ARGV[2 * h] == 'counts' then
    for j = i, i + n - 1, 2 do
      if redis.call('HINCRBY', KEYS[3 + h], ARGV[j], ARGV[j + 1]) <= 0 then
        redis.call('HDEL', KEYS[3 + h], ARGV[j])
      end
    end
  elseif ARGV[2 * h] == 'expiring' then
    for j = i + 1, i + n - 1, 2 do
      local key = KEYS[3 + h] .. ARGV[j]
      redis.call('SET', key, merge_gtid(redis.call('GET', key), ARGV[j + 1]), 'PX', ARGV[i])
    end
  else
    push(commands[ARGV[2 * h]], KEYS[3 + h], ARGV, i, i + n - 1)
  end
  i = i + n
end
return HELD
"#;

/// Gives a batch back to the head of its list, in order (or into its set).
///
/// KEYS: leases, processing, waiting, batches. Returns the items moved (0
/// when the lease had been lost: its recoverer moved them).
const GIVE_BACK: &str = r#"#!lua flags=allow-oom
redis.call('HDEL', KEYS[4], KEYS[2])
if redis.call('ZREM', KEYS[1], KEYS[2]) == 0 then return 0 end
return give_back(KEYS[2], KEYS[3])
"#;

/// Gives back the batches whose lease ran out before `now`, each to the
/// queue its processing key names.
///
/// KEYS: leases, batches. ARGV: now ms, the shard's prefix, most batches per
/// call, the processing segment, the waiting segment (see [`LeaseSet`]).
/// Returns `{batches, items}` recovered.
const RECOVER: &str = r#"#!lua flags=allow-oom
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local items = 0
for _, key in ipairs(expired) do
  redis.call('ZREM', KEYS[1], key)
  redis.call('HDEL', KEYS[2], key)
  local name = string.match(key, ARGV[4] .. '(%w+):[^:]+$')
  if name then
    items = items + give_back(key, ARGV[2] .. ARGV[5] .. name)
  else
    redis.call('DEL', key)
  end
end
return {#expired, items}
"#;

/// The five scripts, hashed once.
struct Scripts {
    claim: Script,
    renew: Script,
    ack: Script,
    give_back: Script,
    recover: Script,
}

/// Handle on the lease queues in Redis. Cheap to clone. Every call is one
/// script, one round trip, within the configured time limit.
#[derive(Clone)]
pub struct LeaseQueue {
    redis: RedisHandle,
    timeout: Duration,
    owner: Arc<str>,
    scripts: Arc<Scripts>,
}

impl LeaseQueue {
    /// A lease queue over `redis`, each call bounded by `timeout`, claiming
    /// as `owner` (`INSTANCE_ID`, shown to operators).
    pub fn new(redis: RedisHandle, timeout: Duration, owner: impl Into<Arc<str>>) -> Self {
        Self {
            redis,
            timeout,
            owner: owner.into(),
            scripts: Arc::new(Scripts {
                claim: script(CLAIM),
                renew: script(RENEW),
                ack: script(ACK),
                give_back: script(GIVE_BACK),
                recover: script(RECOVER),
            }),
        }
    }

    /// Runs one prepared script through the Redis call path, within the
    /// time limit. Errors: [`BufferError::Unavailable`], as every Redis
    /// failure of the write-behind core.
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        inv: redis::ScriptInvocation<'_>,
    ) -> Result<T, BufferError> {
        Ok(self
            .redis
            .call(self.timeout, |mut c| async move {
                inv.invoke_async(&mut c).await
            })
            .await?)
    }

    /// The same queue, claiming as `owner`.
    pub fn with_owner(mut self, owner: impl Into<Arc<str>>) -> Self {
        self.owner = owner.into();
        self
    }

    /// The claimer's name.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Claims up to `max` items of `queue` under a lease of `lease`.
    /// Returns `None` when nothing waits. Errors: Redis unavailable.
    pub async fn claim(
        &self,
        queue: &Queue,
        max: usize,
        lease: Duration,
    ) -> Result<Option<Batch>, BufferError> {
        let key = queue.processing(&uuid::Uuid::new_v4().simple().to_string());
        let now = now_ms();
        let mut inv = self.scripts.claim.prepare_invoke();
        inv.key(queue.waiting())
            .key(&key)
            .key(&queue.lease_set.leases)
            .key(&queue.lease_set.batches)
            .arg(max)
            .arg(now + lease.as_millis() as i64)
            .arg(format!("{}\t{now}", self.owner));
        let items: Vec<Vec<u8>> = self.invoke(inv).await?;
        Ok((!items.is_empty()).then(|| Batch {
            queue: queue.clone(),
            key,
            items,
        }))
    }

    /// Extends `batch`'s lease to `lease` from now. Returns false when it
    /// was lost (then its work must not be done). Errors: Redis unavailable.
    pub async fn renew(&self, batch: &Batch, lease: Duration) -> Result<bool, BufferError> {
        let mut inv = self.scripts.renew.prepare_invoke();
        inv.key(&batch.queue.lease_set.leases)
            .arg(&batch.key)
            .arg(now_ms() + lease.as_millis() as i64);
        let held: i64 = self.invoke(inv).await?;
        Ok(held == code::HELD)
    }

    /// Acknowledges `batch` and makes its `hand_on` writes, atomically.
    /// Returns false when the lease had been lost (then none of it
    /// happened). Errors: Redis unavailable.
    pub async fn ack(&self, batch: &Batch, hand_on: &[HandOn]) -> Result<bool, BufferError> {
        let mut inv = self.scripts.ack.prepare_invoke();
        let set = &batch.queue.lease_set;
        inv.key(&set.leases).key(&batch.key).key(&set.batches);
        inv.arg(hand_on.len());
        for h in hand_on {
            inv.key(&h.key).arg(h.into.as_str()).arg(h.items.len());
        }
        for item in hand_on.iter().flat_map(|h| &h.items) {
            inv.arg(item.as_slice());
        }
        let held: i64 = self.invoke(inv).await?;
        Ok(held == code::HELD)
    }

    /// Gives `batch` back to the head of its queue (its work failed for a
    /// passing reason). Returns the number of items moved back. Errors:
    /// Redis unavailable (the lease expiry then brings the batch back).
    pub async fn give_back(&self, batch: &Batch) -> Result<u64, BufferError> {
        let mut inv = self.scripts.give_back.prepare_invoke();
        let set = &batch.queue.lease_set;
        inv.key(&set.leases)
            .key(&batch.key)
            .key(batch.queue.waiting())
            .key(&set.batches);
        self.invoke(inv).await
    }

    /// Gives back every batch of `set` whose lease ran out, up to 100 per
    /// script. Returns `(batches, items)` recovered. Errors: Redis
    /// unavailable.
    pub async fn recover_expired(&self, set: &LeaseSet) -> Result<(u64, u64), BufferError> {
        const PER_CALL: u64 = 100;
        let mut total = (0, 0);
        loop {
            let mut inv = self.scripts.recover.prepare_invoke();
            inv.key(&set.leases)
                .key(&set.batches)
                .arg(now_ms())
                .arg(&set.prefix)
                .arg(PER_CALL)
                .arg(set.processing)
                .arg(set.waiting);
            let (batches, items): (u64, u64) = self.invoke(inv).await?;
            total.0 += batches;
            total.1 += items;
            if batches < PER_CALL {
                return Ok(total);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prelude_goes_after_the_shebang_and_names_the_codes() {
        let s = format!("{}\n{}", "#!lua flags=allow-oom", prelude());
        assert!(s.starts_with("#!lua flags=allow-oom\n"));
        assert!(s.contains(&format!(
            "local HELD, LEASE_LOST = {}, {}",
            code::HELD,
            code::LEASE_LOST
        )));
        // Every script returns codes by name, never by number.
        for body in [RENEW, ACK] {
            assert!(body.contains("return HELD") && body.contains("return LEASE_LOST"));
        }
    }
}
