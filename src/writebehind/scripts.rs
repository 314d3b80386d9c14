//! The Lua scripts that make each write-behind step atomic in Redis.
//!
//! Redis runs a script to completion before any other command, so each one is
//! a transaction: a number is never handed out without its record being
//! queued, and a batch is never in two places at once. They are sent with
//! EVALSHA by [`redis::Script`], which loads them again after a Redis restart.
//! The enqueue scripts, a create's one step, are in [`super::enqueue`]
//! (re-exported here); this module holds the key layout and the others.
//!
//! Key layout (all under `REDIS_KEY_PREFIX` and the shard's hash tag, as in
//! `chat:{3}:app:{token}`; see [`super::keys`]):
//! - `app:{token}` hash: `id` = `applications.id` (or `deleted`), `chats` =
//!   the last chat number handed out, and one field per chat number = the
//!   last message number handed out in that chat (or `deleted`).
//! - `pending:{kind}` list: records waiting for a flush.
//! - `processing:{kind}:{batch}` list, `leases`, `batches`: claimed batches
//!   and their leases (see [`super::lease`]).
//! - `deadletter:{kind}` list: records that could not be written, with the reason.
//! - `epoch` hash: `epoch`, raised each time Redis may have lost data, and the
//!   lineage of the server that raised it: its `run_id` and `replid` (see
//!   [`crate::redis::CHECK_EPOCH`], [`crate::redis::LINEAGE`]).
//! - In `app:{token}`, `v` = the epoch in which the chat counter was last
//!   checked, and `v:{n}` = the same for chat `n`'s message counter; `r` and
//!   `r:{n}` = their bounds: the highest number each may hand out, reserved
//!   in MariaDB first ([`crate::store::numbering::FIRST_BLOCK`] when absent);
//!   `t:{field}` and `u:{field}` = the deletes in flight on a field and the
//!   value to put back if all of them fail (see [`TOMBSTONE`]); `k:{field}`
//!   = skipped ranges waiting to be recorded in MariaDB (see
//!   [`super::numbering::RESTART`]); `h` = 80 bytes of `h`, which keep a
//!   hash of 64 fields or more in Redis's hashtable encoding, so that each
//!   field lookup is O(1) (see [`super::enqueue`]'s `BATCH`).
//!
//! ## Numbers that survive Redis losing data
//!
//! The enqueue scripts hand out a number only when its scope was checked in
//! the current epoch *on this very server lineage* (the epoch hash's
//! `run_id` and `replid` are the ones `INFO server replication` reports now,
//! see [`crate::redis::LINEAGE`]) and only at or below the scope's bound,
//! which MariaDB recorded first (docs/numbering.md). Otherwise they answer
//! [`code::UNVERIFIED`] or [`code::NO_BLOCK`] and the caller restarts the
//! counter at its reservation or reserves a new block (see
//! [`super::numbering`]).

use redis::Script;

pub use super::enqueue::{ARGS_PER_CREATE, KEYS_PER_CREATE, code, enqueue_chat, enqueue_message};

/// Tombstones an application or a chat: sets its field (`id`, or the chat's
/// number) to `deleted`, so that no number is handed out in it any more and
/// no cache fill (HSETNX) brings it back. A delete runs this *before* its SQL
/// delete, so that no create can be acknowledged after the delete answers.
///
/// The tombstone belongs to every delete in flight on the field, not to the
/// last one: `t:{field}` counts them, and the first of them saves the value
/// to put back in `u:{field}` (empty: none). Then [`COMMIT_TOMBSTONE`] (a
/// delete committed) makes it final, and [`UNTOMBSTONE`] (a delete failed)
/// puts the value back only when every delete in flight failed and none
/// committed; so one request's failure never undoes another's delete. An
/// application's hash then expires after the given time (its counters go
/// with it); a chat's field stays (it is one field of its application).
///
/// KEYS: app hash. ARGV: field, time to live in seconds (0: none).
/// Returns the field's previous value (nil when it had none).
pub const TOMBSTONE: &str = r#"#!lua flags=allow-oom
local prev = redis.call('HGET', KEYS[1], ARGV[1])
local inflight = 't:' .. ARGV[1]
if not redis.call('HGET', KEYS[1], inflight) and prev ~= 'deleted' then
  redis.call('HSET', KEYS[1], 'u:' .. ARGV[1], prev or '')
end
redis.call('HINCRBY', KEYS[1], inflight, 1)
redis.call('HSET', KEYS[1], ARGV[1], 'deleted')
if tonumber(ARGV[2]) > 0 then redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2])) end
return prev
"#;

/// Makes a tombstone final after its SQL delete committed: forgets the
/// deletes in flight and the value to put back (see [`TOMBSTONE`]), so that
/// a concurrent delete that fails leaves it in place, and sets the field to
/// `deleted` again.
///
/// KEYS: app hash. ARGV: field.
pub const COMMIT_TOMBSTONE: &str = r#"#!lua flags=allow-oom
redis.call('HDEL', KEYS[1], 't:' .. ARGV[1], 'u:' .. ARGV[1])
-- The tombstone again, in case something put the field back meanwhile
-- (the idle sweep settles a tombstone whose delete ran longer than a sweep
-- period by MariaDB's word, which said "live" before this commit).
redis.call('HSET', KEYS[1], ARGV[1], 'deleted')
return 1
"#;

/// Undoes [`TOMBSTONE`] after a failed SQL delete, only when it was the
/// last delete in flight on the field and none committed: puts the saved
/// value back (or removes the field when it had none, so that it is filled
/// from MariaDB again), puts a chat's counter in doubt (a restart may have
/// run on the tombstone meanwhile) and removes the expiry. Returns 1 if it
/// undid it.
///
/// KEYS: app hash. ARGV: field.
pub const UNTOMBSTONE: &str = r#"#!lua flags=allow-oom
local inflight, undo = 't:' .. ARGV[1], 'u:' .. ARGV[1]
if redis.call('HGET', KEYS[1], ARGV[1]) ~= 'deleted' then return 0 end
if not redis.call('HGET', KEYS[1], inflight) then return 0 end
if redis.call('HINCRBY', KEYS[1], inflight, -1) > 0 then return 0 end
local prev = redis.call('HGET', KEYS[1], undo)
redis.call('HDEL', KEYS[1], inflight, undo)
if not prev then return 0 end
if prev == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], prev)
end
-- A restart may have marked the tombstone checked while the delete ran; the
-- value put back was not checked with it: the counter restarts on its next
-- create (docs/numbering.md, I1).
if ARGV[1] ~= 'id' then redis.call('HDEL', KEYS[1], 'v:' .. ARGV[1]) end
redis.call('PERSIST', KEYS[1])
return 1
"#;

/// Starts a create that runs outside Redis (an application, in MariaDB)
/// under an `Idempotency-Key`: records the key as in progress, unless it is
/// known.
///
/// KEYS: the key's record (`{fingerprint}\t{result}`, result empty while in
/// progress). ARGV: fingerprint, the in-progress lifetime in seconds
/// (`IDEMPOTENCY_IN_PROGRESS_SECS`: a create that died mid-way holds its
/// key that long, then a retry starts again).
/// Returns `{0, ''}` new, `{1, result}` done before, `{2, ''}` another request
/// used the key, `{3, ''}` the same request is still in progress.
pub const BEGIN_KEY: &str = r#"
local seen = redis.call('GET', KEYS[1])
if not seen then
  redis.call('SET', KEYS[1], ARGV[1] .. '\t', 'EX', tonumber(ARGV[2]))
  return {0, ''}
end
local fp, result = string.match(seen, '^(%x+)\t(.*)$')
if fp ~= ARGV[1] then return {2, ''} end
if result == '' then return {3, ''} end
return {1, result}
"#;

/// Puts dead-lettered records back on their pending list (tail), each only
/// if its entry is still in the dead-letter list, so a record is replayed at
/// most once however many operators press the button; its number leaves the
/// `lost` hash, and it is counted in the shard's usage hash again (its bytes,
/// and its application's records: the id before the first tab).
///
/// KEYS: dead-letter list, pending list, lost hash, usage hash. ARGV: the
/// usage field of the queue's bytes (`bytes:{kind}`; empty for the search
/// queue, whose records are not counted: its acknowledgement never counts
/// them out), then triples of
/// (entry, record, lost field or empty). Returns the number of records
/// replayed.
pub const REPLAY: &str = r#"
local n = 0
for i = 2, #ARGV, 3 do
  if redis.call('LREM', KEYS[1], 1, ARGV[i]) == 1 then
    redis.call('RPUSH', KEYS[2], ARGV[i + 1])
    if ARGV[i + 2] ~= '' then redis.call('HDEL', KEYS[3], ARGV[i + 2]) end
    if ARGV[1] ~= '' then
      redis.call('HINCRBY', KEYS[4], ARGV[1], #ARGV[i + 1])
      local app = string.match(ARGV[i + 1], '^(%d+)\t')
      if app then redis.call('HINCRBY', KEYS[4], 'app:' .. app, 1) end
    end
    n = n + 1
  end
end
return n
"#;

/// Empties a dead-letter list, and removes the `lost` mark of each of its
/// records (a record dead-lettered keeps its number in the `lost` hash so
/// that a lookup answers at once; discarded, the mark would stay forever).
/// The mark is `{ARGV[1]}:` and the record's first fields joined by `:`
/// (`c:{app}:{n}` from a chat's `app\tn\t…`, `m:{app}:{chat}:{n}` from a
/// message's `app\tchat\tn\t…`: [`crate::domain::record`]); an entry whose
/// record is not UTF-8 (`record_base64`) keeps its mark.
///
/// KEYS: the list, the lost hash. ARGV: `c` (chats) or `m` (messages), or
/// empty (the search queue: no marks). Returns how many entries it held.
pub const DISCARD_ALL: &str = r#"
local entries = redis.call('LRANGE', KEYS[1], 0, -1)
if ARGV[1] ~= '' then
  local parts = ARGV[1] == 'm' and 3 or 2
  for _, e in ipairs(entries) do
    local ok, entry = pcall(cjson.decode, e)
    if ok and type(entry) == 'table' and type(entry['record']) == 'string' then
      local fields = {}
      -- A deferred message carries its deferral stamp first (d{ms}\t).
      local rec = string.gsub(entry['record'], '^d%d+\t', '')
      for f in string.gmatch(rec, '[^\t]+') do
        fields[#fields + 1] = f
        if #fields == parts then break end
      end
      if #fields == parts then
        redis.call('HDEL', KEYS[2], ARGV[1] .. ':' .. table.concat(fields, ':'))
      end
    end
  end
end
redis.call('DEL', KEYS[1])
return #entries
"#;

/// The Lua function `merge_gtid(old, new)` (spliced into the scripts that
/// write read-your-writes marks): the domains of the new GTID list
/// (`domain-server-seq,…`), each with the higher sequence number of the two
/// marks, so that a mark never moves backwards (docs/numbering.md, I4): a
/// flush's older position written after an edit's newer one keeps the
/// edit's. Domains only the old mark has are dropped: the service writes in
/// one domain, and a mark of an older version held the whole binlog
/// position, whose other domains a replica may never cover. `old` may be nil or
/// false (no mark yet). Sequence numbers are compared as Lua numbers
/// (exact below 2^53).
pub const MERGE_GTID: &str = r#"
local function merge_gtid(old, new)
  if not old then return new end
  local was = {}
  for d, sv, n in string.gmatch(old, '(%d+)%-(%d+)%-(%d+)') do was[d] = {d .. '-' .. sv .. '-' .. n, tonumber(n)} end
  local out = {}
  for d, sv, n in string.gmatch(new, '(%d+)%-(%d+)%-(%d+)') do
    local w = was[d]
    if w and w[2] > tonumber(n) then out[#out + 1] = w[1] else out[#out + 1] = d .. '-' .. sv .. '-' .. n end
  end
  return table.concat(out, ',')
end
"#;

/// Keeps a read-your-writes mark on each key, merged with the mark there
/// ([`MERGE_GTID`]), for the given time.
///
/// KEYS: the mark keys (in one shard). ARGV: life in ms, GTID list.
pub const KEEP_MARKS: &str = r#"
for _, key in ipairs(KEYS) do
  redis.call('SET', key, merge_gtid(redis.call('GET', key), ARGV[2]), 'PX', ARGV[1])
end
return 1
"#;

/// The scripts, hashed once at start-up.
pub struct Scripts {
    /// See [`enqueue_chat`].
    pub enqueue_chat: Script,
    /// See [`enqueue_message`].
    pub enqueue_message: Script,
    /// See [`BEGIN_KEY`].
    pub begin_key: Script,
    /// See [`TOMBSTONE`].
    pub tombstone: Script,
    /// See [`UNTOMBSTONE`].
    pub untombstone: Script,
    /// See [`COMMIT_TOMBSTONE`].
    pub commit_tombstone: Script,
    /// See [`REPLAY`].
    pub replay: Script,
    /// See [`DISCARD_ALL`].
    pub discard_all: Script,
    /// See [`KEEP_MARKS`].
    pub keep_marks: Script,
}

impl Default for Scripts {
    fn default() -> Self {
        Self {
            enqueue_chat: Script::new(&enqueue_chat()),
            enqueue_message: Script::new(&enqueue_message()),
            begin_key: Script::new(BEGIN_KEY),
            tombstone: Script::new(TOMBSTONE),
            untombstone: Script::new(UNTOMBSTONE),
            commit_tombstone: Script::new(COMMIT_TOMBSTONE),
            replay: Script::new(REPLAY),
            discard_all: Script::new(DISCARD_ALL),
            keep_marks: Script::new(&format!("{MERGE_GTID}{KEEP_MARKS}")),
        }
    }
}
