//! The Lua scripts of the live events (see [`super`]): each runs as one
//! atomic step on the chat's shard (every key carries its hash tag).

/// Makes the chat watched (the flag set or renewed) and reports its stream.
///
/// Creates the stream with an `open` marker (and a new generation, `ARGV[3]`)
/// when it or its generation is missing; appends an `open` marker when the
/// flag had lapsed on an existing stream (creates made meanwhile were not
/// recorded); renews the flag (`ARGV[1]` ms), the stream and the generation
/// (`ARGV[2]` s).
///
/// Also records the chat (`ARGV[5]`) in its application's set of watched
/// chats (`KEYS[4]`, renewed with the stream), so that an application's
/// delete can end their streams. The generation's count of edits and
/// deletes (`KEYS[5]`, [`ShardKeys::live_changes`](crate::writebehind::keys::ShardKeys::live_changes)) starts at 0 with a new
/// generation; each `open` marker carries it (field `k`).
///
/// KEYS: flag, stream, generation, the application's watched chats, the
/// change count. ARGV: flag ms, stream s, new generation, `MAXLEN ~`, the
/// chat's number. Returns `{generation, last id, first id, change count}`,
/// the last three read in the same atomic step (the first id is `0-0` for
/// an empty stream; trimming does not move `max-deleted-entry-id` on Redis
/// 7.0, so the first entry is what tells what was trimmed).
pub const WATCH: &str = r#"
local gen = redis.call('GET', KEYS[3])
if not gen or redis.call('EXISTS', KEYS[2]) == 0 then
  gen = ARGV[3]
  redis.call('DEL', KEYS[2])
  redis.call('SET', KEYS[3], gen)
  redis.call('SET', KEYS[5], '0')
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 't', 'open', 'g', gen, 'k', '0')
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
elseif redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
  local k = redis.call('GET', KEYS[5]) or '0'
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 't', 'open', 'g', gen, 'k', k)
else
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[3], ARGV[2])
redis.call('EXPIRE', KEYS[5], ARGV[2])
redis.call('SADD', KEYS[4], ARGV[5])
redis.call('EXPIRE', KEYS[4], ARGV[2])
local last = '0-0'
local info = redis.call('XINFO', 'STREAM', KEYS[2])
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' then last = info[i + 1] end
end
local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
local first_id = '0-0'
if first[1] then first_id = first[1][1] end
return {gen, last, first_id, redis.call('GET', KEYS[5]) or '0'}
"#;

/// Counts an edit, a message delete or a chat delete (after its SQL
/// committed) in the generation's change count, while the chat's stream has
/// a generation, and appends its event to the stream, with that count
/// (field `k`), while the live flag exists. The count is kept even when no
/// one watches, so that a resume can tell whether it missed a change.
///
/// KEYS: flag, stream, generation, change count. ARGV: `MAXLEN ~`, the
/// count's time to live (s), then the entry's field/value pairs. Returns 1
/// when appended, 0 when no one watches.
pub const APPEND: &str = r#"
local k = nil
if redis.call('EXISTS', KEYS[3]) == 1 then
  k = redis.call('INCR', KEYS[4])
  redis.call('EXPIRE', KEYS[4], ARGV[2])
end
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if k then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'k', k, unpack(ARGV, 3))
else
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, 3))
end
return 1
"#;

/// Admits one more event stream of an application, over every instance:
/// drops the streams whose lease ended (their instance died), refuses when
/// `ARGV[3]` (`MAX_STREAMS_PER_APPLICATION`; 0: no cap) are open, else adds
/// `ARGV[1]` with a lease of `ARGV[2]` ms (renewed by [`RENEW`]).
///
/// KEYS: the application's streams ([`ShardKeys::live_streams`](crate::writebehind::keys::ShardKeys::live_streams)). Returns 1
/// when admitted, 0 when full.
pub const ADMIT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local max = tonumber(ARGV[3])
if max > 0 and redis.call('ZCARD', KEYS[1]) >= max then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"#;

/// Renews the leases of an application's streams open on this instance
/// (`ARGV[2..]`) by `ARGV[1]` ms (those another call removed stay
/// removed), and removes those whose lease ended.
///
/// KEYS: the application's streams. Returns how many were renewed.
pub const RENEW: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local renewed = 0
for i = 2, #ARGV do
  renewed = renewed + redis.call('ZADD', KEYS[1], 'XX', 'CH', now + tonumber(ARGV[1]), ARGV[i])
end
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return renewed
"#;

/// Makes an event that [`APPEND`] may have failed to record visible: counts
/// a change (while the stream has a generation: a resume across it cannot
/// prove it missed nothing, and gets a `reset`), and drops the live flag (the
/// next renewal appends an `open` marker: the connected subscribers get a
/// `reset`).
///
/// KEYS: flag, generation, change count. Returns 1.
pub const MISSED: &str = r#"
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('INCR', KEYS[3]) end
redis.call('DEL', KEYS[1])
return 1
"#;
