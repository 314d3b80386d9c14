//! The batched enqueue scripts: the one atomic step of a create, which
//! allocates the number and queues the record (one text per kind, chats
//! and messages, in one batch script each; see `BATCH`), with their
//! result codes. The key layout they read and write is in
//! [`super::scripts`] and [`super::keys`]; [`super::coalesce`] sends the
//! batches and [`super::buffer`] reads the replies.

/// Result codes the enqueue scripts return instead of a number (all negative).
pub mod code {
    /// The token is not cached: look it up in MariaDB and seed `id`.
    pub const APP_MISS: i64 = -1;
    /// The application or chat was deleted.
    pub const DELETED: i64 = -2;
    /// The counter of the scope is missing: seed it from MariaDB.
    pub const COUNTER_MISS: i64 = -3;
    /// The pending list is at `MAX_PENDING`: backpressure.
    pub const FULL: i64 = -4;
    /// The counter was not checked against MariaDB in the current epoch (or
    /// no epoch is set): check it with `RECONCILE` and try again.
    pub const UNVERIFIED: i64 = -5;
    /// The `Idempotency-Key` was used before with another request.
    pub const KEY_REUSED: i64 = -6;
    /// The shard's epoch hash records another `QUEUE_SHARDS` than the
    /// caller's (`ARGV[8]`): a reshard is under way or done, and this
    /// instance must not hand out numbers (see [`crate::writebehind::shards`]).
    pub const WRONG_SHARDS: i64 = -7;
    /// The next number is above the scope's bound: reserve a block in
    /// MariaDB, raise the bound, and try again (the reply's third value is
    /// the counter).
    pub const NO_BLOCK: i64 = -8;
    /// The application has `MAX_PENDING_PER_APPLICATION` records waiting:
    /// backpressure on this tenant alone.
    pub const APP_FULL: i64 = -9;
    /// This create's part of a batched enqueue script raised an error (a
    /// Lua error caught by `pcall`; the other creates of the batch are not
    /// affected): answered as Redis unavailable.
    pub const SCRIPT_FAILED: i64 = -10;
}

/// The result codes of [`code`] as Lua locals, spliced at the top of the
/// enqueue scripts, so that the Lua names each code as the Rust does.
fn codes() -> String {
    format!(
        "local APP_MISS, DELETED, COUNTER_MISS, FULL, UNVERIFIED, KEY_REUSED, WRONG_SHARDS, NO_BLOCK, APP_FULL, SCRIPT_FAILED, FIRST_BLOCK = {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}",
        code::APP_MISS,
        code::DELETED,
        code::COUNTER_MISS,
        code::FULL,
        code::UNVERIFIED,
        code::KEY_REUSED,
        code::WRONG_SHARDS,
        code::NO_BLOCK,
        code::APP_FULL,
        code::SCRIPT_FAILED,
        crate::store::numbering::FIRST_BLOCK
    )
}

/// The opening shared by the enqueue scripts: the application (`KEYS[1]`,
/// its `id`: [`code::APP_MISS`] when not cached, [`code::DELETED`]) read
/// with the scope's counter, checked epoch and bound (`c[2]`, `c[3]`,
/// `c[4]`: one HMGET per scope and batch, see [`BATCH`]'s `scope_row`),
/// the idempotency replay, then the shard's epoch (`KEYS[3]`; another
/// `QUEUE_SHARDS` than `ARGV[8]` is [`code::WRONG_SHARDS`]) as `epoch`, nil
/// when none is set or when it was set on another server: the doubt check.
/// The epoch hash and the `run_id` are read once per batch (see [`BATCH`]).
const OPENING: &str = r#"
local c = scope_row(KEYS[1], --SCOPE)
local id = c[1]
if not id then return {APP_MISS, 0, 0, 0, 0} end
if id == 'deleted' then return {DELETED, 0, 0, 0, 0} end
--REPLAY_KEY
local e = epoch_hash(KEYS[3])
if e[2] and e[2] ~= ARGV[8] then return {WRONG_SHARDS, 0, 0, 0, 0} end
local epoch = e[1]
if epoch and not same_lineage(e[3], e[4]) then epoch = nil end
"#;

/// Keys per create in a batched enqueue script.
pub const KEYS_PER_CREATE: usize = 7;
/// Arguments per create in a batched enqueue script.
pub const ARGS_PER_CREATE: usize = 10;

/// The batch around one create's enqueue text (`--ONE`, its `KEYS[i]` and
/// `ARGV[i]` made `KEYS[k + i]` and `ARGV[a + i]`, `k` and `a` the offsets
/// of the create's own keys and arguments: no table is copied per create):
/// runs it for each create of the batch in turn, [`KEYS_PER_CREATE`] keys
/// and [`ARGS_PER_CREATE`] arguments each, and answers the array of their
/// replies, in order. A script runs atomically, so the batch is the same as
/// its creates' scripts run one after the other; each create runs under
/// `pcall`, so that an error in one ([`code::SCRIPT_FAILED`]) leaves the
/// others as they would have been alone.
///
/// **Work per batch, not per create.** What the creates of a batch read
/// alike is read once: the epoch hash, the server's `run_id` from `INFO
/// server` (about 5 µs of Redis CPU, measured with `INFO commandstats`; the
/// `run_id` because nothing else a script can read is both node-local and
/// never copied), each scope's row of its application hash (`scope_row`),
/// each pending list's length (`pending_len`), the shard's usage counts
/// (`usage_of`) and each chat's live flag (`is_live`). Each is kept in a
/// Lua table as the batch's own creates change it, so a create sees exactly
/// what it would have read had the creates before it written through.
///
/// What they write alike is written once, after the last create
/// (`write_queued`): one HSET of the counters per application hash, one
/// RPUSH of every record per pending list, one HSET of the usage counts. A
/// create is *queued* (`queue`, `count_in`) only after everything in it
/// that can fail in Lua, and before its own writes (its idempotency key,
/// its live event), as the counter and record were written before them when
/// each create wrote through; so a create answered with a number is in
/// those writes, and a key or an event never names a number that is not.
/// Those writes cannot fail where the per-create ones did not: Redis
/// refuses a script's writes (out of memory, a replica, too few replicas)
/// only before its first write, and then refuses every write of the call,
/// so either nothing of the batch is written, or its queued writes all are.
/// If they fail even so, every queued create is answered
/// [`code::SCRIPT_FAILED`] (indeterminate, as any 503 of Redis's).
///
/// **O(1) lookups in the application hash.** The first batch that writes
/// counters to an application hash of 64 fields or more (about 20 chats)
/// without the field `h` writes it too, with an 80-byte value: longer than
/// Redis's `hash-max-listpack-value` (64 bytes by default), which keeps the
/// hash in the hashtable encoding for good (`hashTypeTryConversion` in
/// Redis's `t_hash.c`; a hash never converts back). Otherwise a hash stays
/// a listpack up to `hash-max-listpack-entries` fields (128 by default, 512
/// in Debian's `redis.conf`; 3 per chat), and each field a create reads or
/// writes is a scan of the whole listpack (`lpFind`, 14.5% of Redis's
/// samples in issue 36's profile). A smaller hash stays a listpack, whose
/// scan is short, so that the many small applications do not each pay a
/// hashtable's fixed cost. Whether the hash holds `h` is read with the
/// scope's row; a hash without it costs one `HLEN` per batch. What it
/// paid, and the bytes per chat counter before and after: BENCHMARKS.md,
/// "Figure 14 with the key layout, the lineage read and one lane per kind".
const BATCH: &str = r#"
--CODES
--LINEAGE
local EPOCHS = {}
local function epoch_hash(k)
  if not EPOCHS[k] then EPOCHS[k] = redis.call('HMGET', k, 'epoch', 'shards', 'run_id', 'replid') end
  return EPOCHS[k]
end
-- A scope's row of its application hash, {id, counter, checked epoch,
-- bound, hashtable hint} as HMGET answers them, with the counter as the
-- batch moved it; HINTED[k]: the hash holds the hint.
local ROWS, HINTED = {}, {}
local function scope_row(k, counter, checked, bound)
  if not ROWS[k] then ROWS[k] = {} end
  local row = ROWS[k][counter]
  if not row then
    row = redis.call('HMGET', k, 'id', counter, checked, bound, 'h')
    ROWS[k][counter] = row
    if row[5] then HINTED[k] = true end
  end
  return row
end
-- A pending list's length, with the batch's records.
local LENS = {}
local function pending_len(k)
  if not LENS[k] then LENS[k] = redis.call('LLEN', k) end
  return LENS[k]
end
-- A usage hash's counts (numbers), with what the batch counted in.
local USAGE, USAGE_DIRTY, USAGE_KEYS = {}, {}, {}
local function usage_of(k, bytes_field, app_field)
  if not USAGE[k] then USAGE[k], USAGE_DIRTY[k] = {}, {} end
  local u = USAGE[k]
  if not u[bytes_field] or not u[app_field] then
    local got = redis.call('HMGET', k, bytes_field, app_field)
    u[bytes_field] = u[bytes_field] or tonumber(got[1] or '0')
    u[app_field] = u[app_field] or tonumber(got[2] or '0')
  end
  return u
end
-- Whether a chat's live flag exists (some instance holds a subscriber).
local LIVE = {}
local function is_live(k)
  if LIVE[k] == nil then LIVE[k] = redis.call('EXISTS', k) == 1 end
  return LIVE[k]
end
-- What the queued creates write after the last one: counters per
-- application hash, records per pending list; and which creates they are.
local COUNTERS, COUNTER_KEYS, RECORDS, RECORD_KEYS, QUEUED = {}, {}, {}, {}, {}
local current
-- Queues the create being run: its scope's counter (`row`, the field
-- `counter` of hash `k`) moves to `n`, and `rec` joins `list`. Returns the
-- list's length with it.
local function queue(row, k, counter, n, list, rec)
  row[2] = n
  if not COUNTERS[k] then COUNTERS[k] = {}; COUNTER_KEYS[#COUNTER_KEYS + 1] = k end
  COUNTERS[k][counter] = n
  if not RECORDS[list] then RECORDS[list] = {}; RECORD_KEYS[#RECORD_KEYS + 1] = list end
  RECORDS[list][#RECORDS[list] + 1] = rec
  LENS[list] = LENS[list] + 1
  QUEUED[#QUEUED + 1] = current
  return LENS[list]
end
-- Counts the queued create in: the counts its limits computed.
local function count_in(k, bytes_field, bytes, app_field, queued)
  local u, dirty = USAGE[k], USAGE_DIRTY[k]
  if not next(dirty) then USAGE_KEYS[#USAGE_KEYS + 1] = k end
  u[bytes_field], u[app_field] = bytes, queued
  dirty[bytes_field], dirty[app_field] = true, true
end
local function write_queued()
  for _, k in ipairs(COUNTER_KEYS) do
    local args = {}
    for f, n in pairs(COUNTERS[k]) do args[#args + 1] = f; args[#args + 1] = n end
    if not HINTED[k] and redis.call('HLEN', k) >= 64 then args[#args + 1] = 'h'; args[#args + 1] = string.rep('h', 80) end
    redis.call('HSET', k, unpack(args))
  end
  for _, k in ipairs(RECORD_KEYS) do redis.call('RPUSH', k, unpack(RECORDS[k])) end
  for _, k in ipairs(USAGE_KEYS) do
    local args = {}
    for f in pairs(USAGE_DIRTY[k]) do args[#args + 1] = f; args[#args + 1] = string.format('%d', USAGE[k][f]) end
    redis.call('HSET', k, unpack(args))
  end
end
-- A server that refuses every write (a demoted master, too few replicas)
-- refused the batch's first write, so nothing of the batch was written:
-- the whole call fails with Redis's own error, which the pool's
-- broken-connection rule sees.
local function refused_by_server(r)
  local msg = type(r) == 'table' and r.err or tostring(r)
  if string.find(msg, '^READONLY') or string.find(msg, '^NOREPLICAS') or string.find(msg, '^MASTERDOWN') then
    return msg
  end
end
local function one(k, a)
--ONE
end
local out = {}
for i = 0, #KEYS / @KEYS_PER@ - 1 do
  current = i + 1
  local ok, r = pcall(one, i * @KEYS_PER@, i * @ARGS_PER@)
  if ok then
    out[i + 1] = r
  else
    local refused = refused_by_server(r)
    if refused then return redis.error_reply(refused) end
    out[i + 1] = {SCRIPT_FAILED, 0, 0, 0, 0}
  end
end
local ok, r = pcall(write_queued)
if not ok then
  local refused = refused_by_server(r)
  if refused then return redis.error_reply(refused) end
  for _, i in ipairs(QUEUED) do out[i] = {SCRIPT_FAILED, 0, 0, 0, 0} end
end
return out
"#;

/// A batched enqueue script: one create's `text` with its shared steps
/// spliced in ([`OPENING`] with [`REPLAY_KEY`], [`LIMITS`], [`COUNT_IN`]
/// and [`REMEMBER_KEY`]), inside [`BATCH`].
fn splice(text: &str, kind: &str, scope: &str) -> String {
    let one = text
        .replace("--OPENING", OPENING)
        .replace("--SCOPE", scope)
        .replace("--REPLAY_KEY", REPLAY_KEY)
        .replace("--LIMITS", LIMITS)
        .replace("--COUNT_IN", COUNT_IN)
        .replace("--REMEMBER_KEY", REMEMBER_KEY)
        .replace("@KIND@", kind)
        .replace("KEYS[", "KEYS[k + ")
        .replace("ARGV[", "ARGV[a + ");
    BATCH
        .replace("--LINEAGE", crate::redis::LINEAGE)
        .replace("--CODES", &codes())
        .replace("--ONE", &one)
        .replace("@KEYS_PER@", &KEYS_PER_CREATE.to_string())
        .replace("@ARGS_PER@", &ARGS_PER_CREATE.to_string())
}

/// The idempotency step shared by the enqueue scripts (spliced into them):
/// with a fingerprint (`ARGV[5]`, empty: no `Idempotency-Key`), a key seen
/// before (`KEYS[4]` = `{fingerprint}\t{number}`) answers its number again,
/// flagged replayed, or [`code::KEY_REUSED`] for another request; a new key is
/// recorded by [`REMEMBER_KEY`] in the same script, after the allocation.
const REPLAY_KEY: &str = r#"
if ARGV[5] ~= '' then
  local seen = redis.call('GET', KEYS[4])
  if seen then
    local fp, num = string.match(seen, '^(%x+)\t(%d+)$')
    if fp ~= ARGV[5] then return {KEY_REUSED, 0, 0, 0, 0} end
    return {tonumber(num), 0, 1, -1, tonumber(id)}
  end
end
"#;

/// The limits shared by the enqueue scripts, checked before anything is
/// written, on the record `rec` about to be queued: the shard's pending list
/// at `MAX_PENDING` (`ARGV[1]`), or its records' bytes plus this one's past
/// `MAX_PENDING_BYTES` (`ARGV[7]`, 0: none), is [`code::FULL`]; the
/// application's queued records at `MAX_PENDING_PER_APPLICATION`
/// (`ARGV[9]`, 0: none) is [`code::APP_FULL`]. The bytes and the per-tenant
/// count are exact, kept in the shard's usage hash (`KEYS[5]`, see
/// [`super::keys::ShardKeys::usage`]): O(1), where Redis's own `MEMORY
/// USAGE` estimate was O(samples) and blind past them. The list's length
/// and the counts are read once per batch and kept with the batch's own
/// creates ([`BATCH`]'s `pending_len` and `usage_of`). The counts after
/// this record (`bytes`, `queued`) are computed here, before the create is
/// queued, as is everything else that can fail in Lua: a create that fails
/// in its `pcall` ([`code::SCRIPT_FAILED`]) has written nothing, unless a
/// Redis write itself failed.
const LIMITS: &str = r#"
local len = pending_len(KEYS[2])
if len >= tonumber(ARGV[1]) then return {FULL, len, 0, 0, 0} end
local app_field = 'app:' .. id
local used = usage_of(KEYS[5], 'bytes:@KIND@', app_field)
local bytes = used['bytes:@KIND@'] + #rec
local queued = used[app_field] + 1
if tonumber(ARGV[7]) > 0 and bytes > tonumber(ARGV[7]) then return {FULL, len, 0, 0, 0} end
if tonumber(ARGV[9]) > 0 and queued > tonumber(ARGV[9]) then return {APP_FULL, len, 0, 0, 0} end
"#;

/// Counts the queued record `rec` in the shard's usage hash (see
/// [`LIMITS`]); the acknowledgement of its batch counts it out. The two
/// counts [`LIMITS`] computed are kept for the batch's next creates and
/// written once, after its last create ([`BATCH`]'s `write_queued`: one
/// HSET of every count the batch changed): the script runs alone, so they
/// are still current.
const COUNT_IN: &str = r#"
count_in(KEYS[5], 'bytes:@KIND@', bytes, app_field, queued)
"#;

/// See [`REPLAY_KEY`]: records `{fingerprint}\t{n}` for `ARGV[6]` seconds.
const REMEMBER_KEY: &str = r#"
if ARGV[5] ~= '' then
  redis.call('SET', KEYS[4], ARGV[5] .. '\t' .. n, 'EX', tonumber(ARGV[6]))
end
"#;

/// Allocates the next chat number and queues the chat record, in one step,
/// for each create of a batch (see the batched script, `BATCH`; below,
/// the keys and arguments of one create).
/// The new chat's message counter starts at 0, checked in this epoch, with
/// the implicit first block as its bound.
///
/// KEYS: app hash, pending chats list, epoch hash, idempotency key (the app
/// hash again when there is none), the shard's usage hash, two unused (the
/// app hash again: the message script's live keys). ARGV: max
/// pending, created_at µs, unused,
/// unused, request fingerprint (empty: no key), key lifetime in seconds, max
/// pending bytes (0: none), the caller's `QUEUE_SHARDS` (a different `shards`
/// field in the epoch hash is [`code::WRONG_SHARDS`]), max pending records
/// per application (0: none), unused.
/// Returns, per create, `{number, pending length, replayed (0/1), bound (-1
/// for a replay), application id}` or `{code, application id, epoch (0 when
/// none is set; the counter for NO_BLOCK), 0, 0}`.
pub fn enqueue_chat() -> String {
    splice(ENQUEUE_CHAT, "chats", "'chats', 'v', 'r'")
}

/// The text of [`enqueue_chat`] before its idempotency steps are spliced in.
const ENQUEUE_CHAT: &str = r#"
--OPENING
if not c[2] then return {COUNTER_MISS, tonumber(id), tonumber(epoch or 0), 0, 0} end
if not epoch or c[3] ~= epoch then return {UNVERIFIED, tonumber(id), tonumber(epoch or 0), 0, 0} end
local n = tonumber(c[2]) + 1
local bound = tonumber(c[4] or FIRST_BLOCK)
if n > bound then return {NO_BLOCK, tonumber(id), n - 1, 0, 0} end
local rec = id .. '\t' .. n .. '\t' .. ARGV[2]
--LIMITS
if redis.call('HSETNX', KEYS[1], tostring(n), 0) == 1 then
  redis.call('HSET', KEYS[1], 'v:' .. n, epoch)
end
len = queue(c, KEYS[1], 'chats', n, KEYS[2], rec)
--COUNT_IN
--REMEMBER_KEY
return {n, len, 0, bound, tonumber(id)}
"#;

/// Allocates the next message number of a chat and queues the message, in
/// one step, for each create of a batch (see `BATCH`).
///
/// KEYS: app hash, pending messages list, epoch hash, idempotency key (the
/// app hash again when there is none), the shard's usage hash, the chat's
/// live flag and live stream (see [`super::live`]). ARGV: max
/// pending, created_at µs, chat
/// number (canonical decimal), body, request fingerprint (empty: no key), key
/// lifetime in seconds, max pending bytes (0: none), the caller's
/// `QUEUE_SHARDS`, max pending records per application (0: none), the live
/// stream's `MAXLEN ~`.
///
/// **Live events.** While the chat's live flag exists (some instance holds
/// a subscriber), the same step appends `message.created` to the chat's
/// stream, so the event exists if and only if the create was queued; with
/// no subscriber it costs one `EXISTS` per chat and batch. The append comes
/// after the create is queued, and Redis refuses a script's writes (out of
/// memory) only before its first write, then all of them: the event and
/// the record are written together or not at all (see `BATCH`).
/// Returns what [`enqueue_chat`] returns.
pub fn enqueue_message() -> String {
    splice(
        ENQUEUE_MESSAGE,
        "messages",
        "ARGV[3], 'v:' .. ARGV[3], 'r:' .. ARGV[3]",
    )
}

/// The text of [`enqueue_message`] before its idempotency steps are spliced in.
const ENQUEUE_MESSAGE: &str = r#"
--OPENING
if not c[2] then return {COUNTER_MISS, tonumber(id), tonumber(epoch or 0), 0, 0} end
if c[2] == 'deleted' then return {DELETED, 0, 0, 0, 0} end
if not epoch or c[3] ~= epoch then return {UNVERIFIED, tonumber(id), tonumber(epoch or 0), 0, 0} end
local n = tonumber(c[2]) + 1
local bound = tonumber(c[4] or FIRST_BLOCK)
if n > bound then return {NO_BLOCK, tonumber(id), n - 1, 0, 0} end
local rec = id .. '\t' .. ARGV[3] .. '\t' .. n .. '\t' .. ARGV[2] .. '\t' .. ARGV[4]
--LIMITS
len = queue(c, KEYS[1], ARGV[3], n, KEYS[2], rec)
--COUNT_IN
--REMEMBER_KEY
if is_live(KEYS[6]) then
  redis.call('XADD', KEYS[7], 'MAXLEN', '~', ARGV[10], '*', 't', 'message.created', 'n', n, 'b', ARGV[4], 'c', ARGV[2])
end
return {n, len, 0, bound, tonumber(id)}
"#;
