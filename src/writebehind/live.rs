//! Live events of a chat (`GET …/chats/{number}/events`): a capped Redis
//! Stream per chat, written by the same scripts that make the change, read
//! by one reader task per group of chats and fanned out to this instance's
//! subscribers.
//!
//! **Writing.** While a chat's *live flag* exists ([`ShardKeys::live_flag`],
//! a key with a time to live that every instance holding a subscriber of
//! the chat renews every [`FLAG_REFRESH`]), the enqueue script appends
//! `message.created` to the chat's stream ([`ShardKeys::live_stream`]) in
//! the same atomic step that queues the record (see
//! [`super::scripts::enqueue_message`]): the event exists if and only if the
//! create was acknowledged, and the request path stays one round trip. With
//! no subscriber the script does one `EXISTS` more and nothing else. Edits,
//! message deletes and chat deletes are SQL; once committed they append
//! their event with [`APPEND`] (one round trip, the same flag test).
//!
//! **Reading.** The subscribers of one instance share one reader per group
//! (on one Redis node: one group for every chat; on a Redis Cluster: one
//! group per shard, since one `XREAD` may only name keys of one hash slot),
//! each on a connection of its own: `XREAD BLOCK` over the group's watched
//! streams and the group's wake stream ([`ShardKeys::live_wake`], written when
//! a chat is newly watched so that the blocked call returns). Each event is
//! fanned out to the chat's subscribers through a bounded channel each
//! (`LIVE_SUBSCRIBER_BUFFER`); a subscriber whose channel is full is dropped
//! (its stream ends once it has sent what it holds, and the client resumes
//! from its last id).
//!
//! **Ids and resume.** An event's SSE id is `{generation}-{stream entry id}`,
//! followed by the subscriber's [`ResumePoint`] once known
//! (`.{last created}.{changes}`). The generation
//! ([`ShardKeys::live_generation`]) is made when the stream is created, so a
//! stream lost with Redis (a restart, a failover, a flush) and made again is
//! told apart. A resume (`Last-Event-ID` or `?after=`) continues from the
//! stream when it still holds everything after that id: same generation,
//! the id not past the stream's last, nothing after it trimmed (the id not
//! below the stream's first entry), and no `open` marker after it. An `open`
//! marker is appended whenever the flag is set anew on a stream (the flag
//! had expired: creates made meanwhile were not recorded).
//!
//! **Replay.** Where the stream was trimmed past the id, or an `open`
//! marker follows it, and the generation's change count
//! ([`ShardKeys::live_changes`]) shows no edit or delete since, the creates
//! missed are replayed from MariaDB plus the write-behind buffer (a
//! [`Replayer`], made by the HTTP layer), then the stream goes on. In every
//! other case the subscriber gets a `reset` event: it re-lists with the
//! cursor API, and the stream continues after the reset's id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::Value;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::keys::{Keys, ShardKeys};
use crate::redis::RedisHandle;

/// How often an instance renews the live flags of the chats it watches.
pub const FLAG_REFRESH: Duration = Duration::from_secs(5);

/// A live flag's time to live: four renewals, so that a slow renewal never
/// lets it lapse while a subscriber is there.
pub const FLAG_TTL: Duration = Duration::from_secs(20);

/// How long a chat's stream (and its generation) outlive the last
/// subscriber's renewal, in seconds: a client that reconnects within it
/// resumes without a `reset`.
pub const STREAM_TTL_SECS: u64 = 3600;

/// The default cap of a chat's stream (`LIVE_STREAM_MAXLEN`): about this
/// many events are kept for resumes.
pub const DEFAULT_STREAM_MAXLEN: u64 = 1_000;

/// How long a reader waits after a read that found events before it reads
/// again, so that each read, fan-out and write carries several events under
/// load (it adds at most this much to a delivery).
const GATHER: Duration = Duration::from_millis(2);

/// Entries a reader asks for per stream and call, and a catch-up per page.
const READ_COUNT: usize = 512;

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
/// deletes (`KEYS[5]`, [`ShardKeys::live_changes`]) starts at 0 with a new
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

/// What [`WATCH`] reports of a chat's stream, read in one atomic step.
struct Watched {
    /// The stream's generation.
    generation: String,
    /// Its last entry's id.
    last: StreamId,
    /// Its first entry's id (`0-0`: empty): an id of this generation below
    /// it was trimmed, and so may be what followed it.
    first: StreamId,
    /// The generation's change count (see [`APPEND`]).
    changes: u64,
}

/// Why a `reset` follows an `open` marker.
const UNRECORDED: &str = "events were not recorded for a while (no subscriber, or Redis lost them)";

/// The creates a resume missed, read from MariaDB plus the write-behind
/// buffer (the read-your-writes path), one page per call: given the last
/// number the subscriber has and the replay's upper bound (`None` on the
/// first call: the chat's last number handed out, fixed then), the page.
/// Made by the HTTP layer for the chat it looked up.
pub type Replayer = Arc<
    dyn Fn(
            i64,
            Option<i64>,
        ) -> futures_util::future::BoxFuture<'static, Result<ReplayPage, ReplayError>>
        + Send
        + Sync,
>;

/// One page of a replay.
#[derive(Debug, Clone, Default)]
pub struct ReplayPage {
    /// The live (not deleted) messages of the page, by number: `(number,
    /// body, created_at µs since the epoch)`.
    pub messages: Vec<(i64, String, i64)>,
    /// Every number up to this one is accounted for (sent, deleted, or
    /// skipped by the numbering).
    pub through: i64,
    /// The replay's upper bound: it is done when `through` reaches it.
    pub upper: i64,
}

/// Why a replay stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The missed creates cannot be proven complete (more than
    /// `LIVE_REPLAY_MAX`, or some not stored in time): the subscriber gets
    /// a `reset`.
    #[error("{0}")]
    Unprovable(&'static str),
    /// MariaDB or Redis failed: the stream ends, and the client resumes.
    #[error("replay failed: {0}")]
    Unavailable(String),
}

/// A replay in progress: the subscriber has every create up to `after`;
/// the replay ends at `upper` (fixed by the first page), and the stream's
/// entries after `anchor` follow it.
#[derive(Debug, Clone, Copy)]
struct ReplayCursor {
    after: i64,
    upper: Option<i64>,
    anchor: StreamId,
}

/// Admits one more event stream of an application, over every instance:
/// drops the streams whose lease ended (their instance died), refuses when
/// `ARGV[3]` (`MAX_STREAMS_PER_APPLICATION`; 0: no cap) are open, else adds
/// `ARGV[1]` with a lease of `ARGV[2]` ms (renewed by [`RENEW`]).
///
/// KEYS: the application's streams ([`ShardKeys::live_streams`]). Returns 1
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

/// A Redis Stream entry id, `{ms}-{seq}`, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct StreamId(pub u64, pub u64);

impl StreamId {
    /// Parses `{ms}-{seq}` (`None` for anything else).
    pub fn parse(s: &str) -> Option<Self> {
        let (ms, seq) = s.split_once('-')?;
        Some(Self(ms.parse().ok()?, seq.parse().ok()?))
    }

    /// The id just before this one (`0-0` stays `0-0`).
    pub fn pred(self) -> Self {
        match self {
            Self(0, 0) => self,
            Self(ms, 0) => Self(ms - 1, u64::MAX),
            Self(ms, seq) => Self(ms, seq - 1),
        }
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// An event's SSE id: the stream's generation and the entry's id,
/// `{generation}-{ms}-{seq}`, and where the subscriber stood when it was
/// sent (`.{last created}.{changes}`, see [`ResumePoint`]) when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventId {
    /// The stream's generation (hex, no `-`).
    pub generation: String,
    /// The entry's id in the stream.
    pub entry: StreamId,
    /// What the subscriber had been sent by then, when known: lets a resume
    /// that the stream cannot serve replay from MariaDB.
    pub point: Option<ResumePoint>,
}

/// Where a subscriber stood at an event: every `message.created` numbered
/// up to `last_created` had been sent (or came before it subscribed), and
/// the generation's change count (edits and deletes, [`APPEND`]) was
/// `changes`. A resume from it that the stream no longer covers replays
/// the creates numbered above `last_created` from MariaDB plus the
/// write-behind buffer, if the change count is still `changes` (no edit or
/// delete was missed); else it gets a `reset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumePoint {
    /// The highest message number sent (or before the subscription).
    pub last_created: i64,
    /// The generation's change count.
    pub changes: u64,
}

impl EventId {
    /// Parses an SSE id made by [`EventId`]'s `Display` (`None` for anything
    /// else: the caller answers 422).
    pub fn parse(s: &str) -> Option<Self> {
        let (s, point) = match s.split_once('.') {
            None => (s, None),
            Some((id, rest)) => {
                let (n, c) = rest.split_once('.')?;
                let point = ResumePoint {
                    last_created: n.parse().ok().filter(|n| *n >= 0)?,
                    changes: c.parse().ok()?,
                };
                (id, Some(point))
            }
        };
        let mut parts = s.rsplitn(3, '-');
        let seq = parts.next()?.parse().ok()?;
        let ms = parts.next()?.parse().ok()?;
        let generation = parts.next()?;
        if generation.is_empty()
            || generation.len() > 64
            || !generation.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return None;
        }
        Some(Self {
            generation: generation.to_string(),
            entry: StreamId(ms, seq),
            point,
        })
    }
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.generation, self.entry)?;
        if let Some(p) = self.point {
            write!(f, ".{}.{}", p.last_created, p.changes)?;
        }
        Ok(())
    }
}

/// What happened, as the stream records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// `message.created`: number, body, `created_at` (µs since the epoch).
    MessageCreated {
        /// The message's number.
        number: i64,
        /// Its body.
        body: String,
        /// Creation time, µs since the Unix epoch.
        created_at_us: i64,
    },
    /// `message.updated`: number, new body, `updated_at` (µs).
    MessageUpdated {
        /// The message's number.
        number: i64,
        /// Its new body.
        body: String,
        /// Edit time, µs since the Unix epoch.
        updated_at_us: i64,
    },
    /// `message.deleted`: number.
    MessageDeleted {
        /// The message's number.
        number: i64,
    },
    /// `chat.deleted`: the stream ends after it.
    ChatDeleted,
    /// `reset`: events may be missing before this one (the stream was lost,
    /// trimmed past the resume id, or not recorded for a while): re-list,
    /// then continue after this id.
    Reset {
        /// Why, for people.
        reason: &'static str,
    },
}

impl EventKind {
    /// The SSE event type (`message.created`, …, `reset`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::MessageCreated { .. } => "message.created",
            Self::MessageUpdated { .. } => "message.updated",
            Self::MessageDeleted { .. } => "message.deleted",
            Self::ChatDeleted => "chat.deleted",
            Self::Reset { .. } => "reset",
        }
    }

    /// The stream entry's fields for [`APPEND`] (not for resets).
    fn fields(&self) -> Vec<(&'static str, String)> {
        match self {
            Self::MessageCreated {
                number,
                body,
                created_at_us,
            } => vec![
                ("t", self.name().into()),
                ("n", number.to_string()),
                ("b", body.clone()),
                ("c", created_at_us.to_string()),
            ],
            Self::MessageUpdated {
                number,
                body,
                updated_at_us,
            } => vec![
                ("t", self.name().into()),
                ("n", number.to_string()),
                ("b", body.clone()),
                ("u", updated_at_us.to_string()),
            ],
            Self::MessageDeleted { number } => {
                vec![("t", self.name().into()), ("n", number.to_string())]
            }
            Self::ChatDeleted | Self::Reset { .. } => vec![("t", self.name().into())],
        }
    }
}

/// One event as a subscriber gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveEvent {
    /// Its SSE id.
    pub id: EventId,
    /// What happened.
    pub kind: EventKind,
    /// The generation's change count after it (field `k`): on edits,
    /// deletes and the `reset` of an `open` marker; `None` where not known.
    pub change: Option<u64>,
    /// Its wire form, made once for all of a chat's subscribers by the
    /// first that sends it (the HTTP layer fills it).
    pub rendered: std::sync::OnceLock<Arc<str>>,
}

/// A stream entry read from Redis: its id and fields.
type Entry = (StreamId, HashMap<String, String>);

/// What an entry means: an event, an `open` marker (with the generation
/// it names), or nothing this version knows; with the change count `k`
/// when the entry has one.
enum Parsed {
    Event(EventKind, Option<u64>),
    Open(String, Option<u64>),
    Unknown,
}

fn parse_entry(fields: &HashMap<String, String>) -> Parsed {
    let get = |k: &str| fields.get(k).map(String::as_str).unwrap_or_default();
    let num = |k: &str| get(k).parse::<i64>().unwrap_or_default();
    let change = fields.get("k").and_then(|k| k.parse().ok());
    let event = match get("t") {
        "message.created" => EventKind::MessageCreated {
            number: num("n"),
            body: get("b").to_string(),
            created_at_us: num("c"),
        },
        "message.updated" => EventKind::MessageUpdated {
            number: num("n"),
            body: get("b").to_string(),
            updated_at_us: num("u"),
        },
        "message.deleted" => EventKind::MessageDeleted { number: num("n") },
        "chat.deleted" => EventKind::ChatDeleted,
        "open" => return Parsed::Open(get("g").to_string(), change),
        _ => return Parsed::Unknown,
    };
    Parsed::Event(event, change)
}

/// Settings of the live events (see docs/configuration.md).
#[derive(Debug, Clone)]
pub struct LiveSettings {
    /// `MAX_STREAMS_PER_APPLICATION`: open streams per application, over
    /// every instance ([`ADMIT`]; 0: no limit).
    pub max_streams_per_application: usize,
    /// `LIVE_SUBSCRIBER_BUFFER`: events held per subscriber before it is
    /// dropped as too slow.
    pub subscriber_buffer: usize,
    /// `LIVE_STREAM_MAXLEN`: each chat's stream keeps about this many events.
    pub stream_maxlen: u64,
    /// `REDIS_TIMEOUT_MS`: each Redis call's limit.
    pub timeout: Duration,
}

/// Why a subscription was refused.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// The application has `MAX_STREAMS_PER_APPLICATION` streams open (over
    /// every instance).
    #[error("this application has {0} event streams open, the most allowed")]
    TooMany(usize),
    /// The instance is shutting down.
    #[error("the service is shutting down")]
    Closing,
    /// Redis failed or did not answer in time.
    #[error("Redis unavailable: {0}")]
    Unavailable(String),
}

impl From<redis::RedisError> for LiveError {
    fn from(e: redis::RedisError) -> Self {
        Self::Unavailable(e.to_string())
    }
}

/// A watched chat.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ChatRef {
    token: Arc<str>,
    chat: i64,
}

/// A watched chat on this instance: its stream's generation, the last entry
/// the reader forwarded, and its subscribers' channels.
struct Hub {
    /// The chat's stream key and reader group, made once.
    key: Arc<str>,
    group: u16,
    generation: Arc<str>,
    position: StreamId,
    subscribers: Vec<(u64, mpsc::Sender<Arc<LiveEvent>>)>,
}

impl Hub {
    /// Sends `event` to every subscriber; drops those whose buffer is full
    /// (too slow) or gone.
    fn fan_out(&mut self, event: LiveEvent) {
        let event = Arc::new(event);
        self.subscribers
            .retain(|(_, tx)| match tx.try_send(event.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    crate::telemetry::metrics::live_overflow();
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
    }

    /// The stream was made again (another generation), or did not record
    /// for a while: every subscriber gets a `reset` at `position` (with the
    /// change count there, `change`, when known), and the reader starts
    /// over there.
    fn restart(
        &mut self,
        generation: Arc<str>,
        position: StreamId,
        change: Option<u64>,
        reason: &'static str,
    ) {
        self.generation = generation;
        self.position = position;
        let event = LiveEvent {
            id: EventId {
                generation: self.generation.to_string(),
                entry: position,
                point: None,
            },
            kind: EventKind::Reset { reason },
            change,
            rendered: Default::default(),
        };
        self.fan_out(event);
    }
}

#[derive(Default)]
struct State {
    chats: HashMap<ChatRef, Hub>,
    /// The open streams of each application on this instance.
    per_app: HashMap<Arc<str>, std::collections::HashSet<u64>>,
    readers: std::collections::HashSet<u16>,
    refreshing: bool,
    closed: bool,
}

struct Inner {
    redis: RedisHandle,
    connect: Box<dyn Fn() -> anyhow::Result<RedisHandle> + Send + Sync>,
    per_shard: bool,
    keys: Keys,
    settings: LiveSettings,
    state: Mutex<State>,
    wake: Vec<Notify>,
    closing: CancellationToken,
    next_id: AtomicU64,
    watch: redis::Script,
    append: redis::Script,
    missed: redis::Script,
    admit: redis::Script,
    renew: redis::Script,
    /// This instance's name in the stream leases (random).
    instance: String,
}

/// The live events of this instance: subscriptions, readers, fan-out.
/// Cheap to clone.
#[derive(Clone)]
pub struct Live(Arc<Inner>);

impl Live {
    /// Live events over `redis` (the shared handle: scripts and catch-up
    /// reads); `connect` makes a connection of its own for each reader
    /// (`per_shard`: a Redis Cluster, one reader per shard; else one reader
    /// for every chat). Readers start on first use, within a Tokio runtime.
    pub fn new(
        redis: RedisHandle,
        connect: impl Fn() -> anyhow::Result<RedisHandle> + Send + Sync + 'static,
        keys: Keys,
        settings: LiveSettings,
    ) -> Self {
        let per_shard = redis.is_cluster();
        let groups = if per_shard { keys.shard_count() } else { 1 };
        Self(Arc::new(Inner {
            redis,
            connect: Box::new(connect),
            per_shard,
            keys,
            settings,
            state: Mutex::default(),
            wake: (0..groups).map(|_| Notify::new()).collect(),
            closing: CancellationToken::new(),
            next_id: AtomicU64::new(1),
            watch: redis::Script::new(WATCH),
            append: redis::Script::new(APPEND),
            missed: redis::Script::new(MISSED),
            admit: redis::Script::new(ADMIT),
            renew: redis::Script::new(RENEW),
            instance: uuid::Uuid::new_v4().simple().to_string()[..12].to_string(),
        }))
    }

    /// The settings in force.
    pub fn settings(&self) -> &LiveSettings {
        &self.0.settings
    }

    /// Ends every stream (graceful shutdown: each client resumes elsewhere
    /// from its last id) and refuses new ones with [`LiveError::Closing`].
    pub fn close(&self) {
        self.0.closing.cancel();
        let mut state = self.0.lock();
        state.closed = true;
        state.chats.clear();
    }

    /// Open streams on this instance, over every application.
    pub fn open_streams(&self) -> usize {
        self.0.lock().per_app.values().map(|s| s.len()).sum()
    }

    /// Appends `kind` to chat `chat` of `token`'s application's stream, if
    /// anyone watches it (see [`APPEND`]): after an edit or a delete
    /// committed. When that fails, makes the miss visible if Redis still
    /// answers ([`MISSED`]: the subscribers and the resumes across it get a
    /// `reset`). Errors: Redis failed (the change stands; the event is
    /// missing, and is logged by the caller).
    pub async fn publish(&self, token: &str, chat: i64, kind: &EventKind) -> Result<(), LiveError> {
        let appended = self.append(token, chat, kind).await;
        if appended.is_err() {
            let shard = self.0.keys.for_token(token);
            let mut inv = self.0.missed.prepare_invoke();
            inv.key(shard.live_flag(token, chat))
                .key(shard.live_generation(token, chat))
                .key(shard.live_changes(token, chat));
            let marked = self
                .0
                .redis
                .call(self.0.settings.timeout, |mut c| async move {
                    inv.invoke_async::<i64>(&mut c).await
                })
                .await;
            if let Err(e) = marked {
                tracing::warn!(error = %e, "could not mark a missed live event; a resume across it may not see it");
            }
        }
        appended
    }

    /// Runs [`APPEND`] for `kind`.
    async fn append(&self, token: &str, chat: i64, kind: &EventKind) -> Result<(), LiveError> {
        let shard = self.0.keys.for_token(token);
        let mut inv = self.0.append.prepare_invoke();
        inv.key(shard.live_flag(token, chat))
            .key(shard.live_stream(token, chat))
            .key(shard.live_generation(token, chat))
            .key(shard.live_changes(token, chat))
            .arg(self.0.settings.stream_maxlen)
            .arg(STREAM_TTL_SECS);
        for (field, value) in kind.fields() {
            inv.arg(field).arg(value);
        }
        self.0
            .redis
            .call(self.0.settings.timeout, |mut c| async move {
                inv.invoke_async::<i64>(&mut c).await
            })
            .await?;
        Ok(())
    }

    /// Ends the streams of every chat of `token`'s application that anyone
    /// watched lately with `chat.deleted` (after the application's delete
    /// committed): one [`APPEND`] per such chat. Errors: Redis failed (the
    /// delete stands; streams not yet told end at the client's next resume,
    /// with 404).
    pub async fn application_deleted(&self, token: &str) -> Result<(), LiveError> {
        let key = self.0.keys.for_token(token).live_chats(token);
        let chats: Vec<i64> = self
            .0
            .redis
            .call(self.0.settings.timeout, |mut c| async move {
                redis::cmd("SMEMBERS").arg(key).query_async(&mut c).await
            })
            .await?;
        for chat in chats {
            self.publish(token, chat, &EventKind::ChatDeleted).await?;
        }
        Ok(())
    }

    /// Subscribes to chat `chat` of `token`'s application (the caller
    /// checked both exist), from `resume` (the last event id the client
    /// has; `None`: from now). Errors: [`LiveError::TooMany`],
    /// [`LiveError::Closing`], [`LiveError::Unavailable`].
    pub async fn subscribe(
        &self,
        token: &str,
        chat: i64,
        resume: Option<EventId>,
        replayer: Option<Replayer>,
    ) -> Result<Subscription, LiveError> {
        let inner = &self.0;
        let token: Arc<str> = token.into();
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        // Counted first, so that the cap holds under a burst of subscribes.
        let guard = {
            let mut state = inner.lock();
            if state.closed {
                return Err(LiveError::Closing);
            }
            let open = state.per_app.entry(token.clone()).or_default();
            let max = inner.settings.max_streams_per_application;
            if max > 0 && open.len() >= max {
                return Err(LiveError::TooMany(max));
            }
            open.insert(id);
            crate::telemetry::metrics::live_streams(1.0);
            Guard {
                live: self.clone(),
                chat: ChatRef {
                    token: token.clone(),
                    chat,
                },
                id,
            }
        };
        let shard = inner.keys.for_token(&token);
        // Then over every instance.
        let max = inner.settings.max_streams_per_application;
        if max > 0 && !inner.admit(&shard, &token, id).await? {
            return Err(LiveError::TooMany(max));
        }
        let Watched {
            generation,
            last,
            first,
            changes,
        } = inner.watch_chat(&shard, &token, chat).await?;
        // Entries up to here may have been trimmed.
        let trimmed = first.pred();
        let generation: Arc<str> = generation.into();
        let fresh = resume.is_none();
        // Where the subscription starts in the stream, what it knows the
        // client has, and whether it replays from MariaDB first.
        let mut reset = None;
        let mut replay = None;
        let mut point = None;
        let start = match resume {
            None => last,
            Some(r) if *r.generation != *generation => {
                reset = Some("the event stream was lost and made again since that id");
                last
            }
            Some(r) if r.entry > last => {
                reset = Some("the event stream is older than that id");
                last
            }
            Some(r) if r.entry < trimmed => match r.point {
                // Trimmed past the id, but no edit or delete since: the
                // creates missed are replayed, then the stream's entries.
                Some(p) if p.changes == changes && replayer.is_some() => {
                    point = Some(p);
                    replay = Some(ReplayCursor {
                        after: p.last_created,
                        upper: None,
                        anchor: trimmed,
                    });
                    trimmed
                }
                _ => {
                    reset = Some("events after that id are no longer kept");
                    last
                }
            },
            Some(r) => {
                point = r.point;
                r.entry
            }
        };
        let (tx, rx) = mpsc::channel(inner.settings.subscriber_buffer.max(1));
        let (position, new_chat) = {
            let mut state = inner.lock();
            if state.closed {
                return Err(LiveError::Closing);
            }
            let mut new_chat = false;
            let hub = state.chats.entry(guard.chat.clone()).or_insert_with(|| {
                new_chat = true;
                Hub {
                    key: shard.live_stream(&token, chat).into(),
                    group: inner.group(shard.index()),
                    generation: generation.clone(),
                    position: last,
                    subscribers: Vec::new(),
                }
            });
            if hub.generation != generation {
                hub.restart(
                    generation.clone(),
                    last,
                    Some(changes),
                    "the event stream was lost and made again",
                );
            }
            hub.subscribers.push((id, tx));
            let position = hub.position;
            let group = inner.group(shard.index());
            let start_reader = state.readers.insert(group);
            let start_refresh = !std::mem::replace(&mut state.refreshing, true);
            (
                position,
                new_chat.then_some((group, start_reader, start_refresh)),
            )
        };
        if let Some((group, start_reader, start_refresh)) = new_chat {
            if start_reader {
                let live = self.clone();
                tokio::spawn(async move { live.read_loop(group).await });
            }
            if start_refresh {
                let live = self.clone();
                tokio::spawn(async move { live.refresh_loop().await });
            }
            inner.wake(group, &shard).await;
        }
        let reset = reset.map(|reason| LiveEvent {
            id: EventId {
                generation: generation.to_string(),
                entry: last,
                point: None,
            },
            kind: EventKind::Reset { reason },
            change: Some(changes),
            rendered: Default::default(),
        });
        Ok(Subscription {
            live: self.clone(),
            stream_key: shard.live_stream(&token, chat),
            generation: generation.to_string(),
            last: start,
            catch_up_to: (start < position).then_some(position),
            pending: reset
                .into_iter()
                .map(|e| Pending::Event(Arc::new(e)))
                .collect(),
            // A new subscriber has seen no create yet; the change count
            // is the stream's at `last`, where it starts.
            last_created: point.map(|p| p.last_created),
            changes: point.map(|p| p.changes).or(fresh.then_some(changes)),
            replay,
            replayer,
            held: Default::default(),
            rx,
            _guard: guard,
            done: false,
        })
    }

    /// Renews the flag of every chat watched here, every [`FLAG_REFRESH`];
    /// a chat whose stream was made again (Redis lost it) restarts its hub
    /// with a `reset`. Ends with [`Live::close`].
    async fn refresh_loop(self) {
        let inner = &self.0;
        loop {
            tokio::select! {
                _ = inner.closing.cancelled() => return,
                _ = tokio::time::sleep(FLAG_REFRESH) => {}
            }
            inner.renew_leases().await;
            let chats: Vec<ChatRef> = inner.lock().chats.keys().cloned().collect();
            for chat in chats {
                let shard = inner.keys.for_token(&chat.token);
                match inner.watch_chat(&shard, &chat.token, chat.chat).await {
                    Ok(Watched {
                        generation,
                        last,
                        first,
                        changes,
                    }) => {
                        let mut state = inner.lock();
                        let Some(hub) = state.chats.get_mut(&chat) else {
                            continue;
                        };
                        if *hub.generation != *generation {
                            hub.restart(
                                generation.into(),
                                last,
                                Some(changes),
                                "the event stream was lost and made again",
                            );
                        } else if first.pred() > hub.position {
                            // The reader fell behind by more than the
                            // stream keeps: what it did not read is gone.
                            hub.restart(
                                generation.into(),
                                last,
                                Some(changes),
                                "events were trimmed from the stream before they were read",
                            );
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "could not renew a live flag; Redis seems down");
                    }
                }
            }
        }
    }

    /// The reader of `group`: `XREAD BLOCK` over the group's watched chats,
    /// on a connection of its own, fanning out what it reads. Ends with
    /// [`Live::close`].
    async fn read_loop(self, group: u16) {
        let inner = &self.0;
        // Retried until it works: a reader that gave up would leave this
        // instance's subscribers of the group without events for good.
        let conn = loop {
            match (inner.connect)() {
                Ok(c) => break c,
                Err(e) => {
                    tracing::error!(error = %e, "could not make the live reader's Redis connection; retrying");
                    tokio::select! {
                        _ = inner.closing.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        let wake_key = inner.keys.shard(group).live_wake();
        let mut wake_id = StreamId::default();
        // Below the connection's own response limit (REDIS_TIMEOUT_MS).
        let block = (inner.settings.timeout / 2).min(Duration::from_secs(1));
        loop {
            if inner.closing.is_cancelled() {
                return;
            }
            let watched: Vec<(ChatRef, Arc<str>, StreamId)> = {
                let state = inner.lock();
                state
                    .chats
                    .iter()
                    .filter(|(_, hub)| hub.group == group)
                    .map(|(c, hub)| (c.clone(), hub.key.clone(), hub.position))
                    .collect()
            };
            if watched.is_empty() {
                tokio::select! {
                    _ = inner.closing.cancelled() => return,
                    _ = inner.wake[usize::from(group)].notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
            let mut cmd = redis::cmd("XREAD");
            cmd.arg("COUNT")
                .arg(READ_COUNT)
                .arg("BLOCK")
                .arg(block.as_millis() as u64)
                .arg("STREAMS")
                .arg(&wake_key);
            for (_, key, _) in &watched {
                cmd.arg(&**key);
            }
            cmd.arg(wake_id.to_string());
            for (_, _, position) in &watched {
                cmd.arg(position.to_string());
            }
            let read = tokio::select! {
                _ = inner.closing.cancelled() => return,
                r = conn.call(block + inner.settings.timeout, |mut c| async move {
                    cmd.query_async::<Value>(&mut c).await
                }) => r,
            };
            let streams = match read {
                Ok(v) => parse_xread(v),
                Err(e) => {
                    tracing::debug!(error = %e, "live reader: XREAD failed; retrying");
                    tokio::select! {
                        _ = inner.closing.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    }
                    continue;
                }
            };
            let by_key: HashMap<&str, &ChatRef> =
                watched.iter().map(|(c, k, _)| (&**k, c)).collect();
            let got_events = streams
                .iter()
                .any(|(key, e)| *key != wake_key && !e.is_empty());
            {
                let mut state = inner.lock();
                for (key, entries) in streams {
                    if key == wake_key {
                        if let Some((id, _)) = entries.last() {
                            wake_id = *id;
                        }
                        continue;
                    }
                    let Some(chat) = by_key.get(key.as_str()) else {
                        continue;
                    };
                    let Some(hub) = state.chats.get_mut(*chat) else {
                        continue;
                    };
                    deliver(hub, entries);
                }
            }
            // Let the next events gather for a moment: one XREAD, one
            // fan-out and one socket write per subscriber then carry
            // several events, which is most of a delivery's CPU under load.
            if got_events {
                tokio::select! {
                    _ = inner.closing.cancelled() => return,
                    _ = tokio::time::sleep(GATHER) => {}
                }
            }
        }
    }
}

/// Forwards the entries after the hub's position to its subscribers, in
/// order; an `open` marker becomes a `reset` (and names the generation).
fn deliver(hub: &mut Hub, entries: Vec<Entry>) {
    for (id, fields) in entries {
        if id <= hub.position {
            continue;
        }
        hub.position = id;
        match parse_entry(&fields) {
            Parsed::Event(kind, change) => {
                let event = LiveEvent {
                    id: EventId {
                        generation: hub.generation.to_string(),
                        entry: id,
                        point: None,
                    },
                    kind,
                    change,
                    rendered: Default::default(),
                };
                hub.fan_out(event);
            }
            Parsed::Open(generation, change) => {
                let same = generation.is_empty() || *generation == *hub.generation;
                let generation = if same {
                    hub.generation.clone()
                } else {
                    generation.into()
                };
                hub.restart(generation, id, change.filter(|_| same), UNRECORDED);
            }
            Parsed::Unknown => {}
        }
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The reader group of shard `shard`.
    fn group(&self, shard: u16) -> u16 {
        if self.per_shard { shard } else { 0 }
    }

    /// This instance's stream `id` in the application's leases.
    fn member(&self, id: u64) -> String {
        format!("{}:{id}", self.instance)
    }

    /// Runs [`ADMIT`] for stream `id` of `token`'s application: whether it
    /// fits under `MAX_STREAMS_PER_APPLICATION` over every instance.
    async fn admit(&self, shard: &ShardKeys, token: &str, id: u64) -> Result<bool, LiveError> {
        let mut inv = self.admit.prepare_invoke();
        inv.key(shard.live_streams(token))
            .arg(self.member(id))
            .arg(FLAG_TTL.as_millis() as u64)
            .arg(self.settings.max_streams_per_application);
        let admitted: i64 = self
            .redis
            .call(self.settings.timeout, |mut c| async move {
                inv.invoke_async(&mut c).await
            })
            .await?;
        Ok(admitted == 1)
    }

    /// Renews the leases of the streams open here ([`RENEW`]), one call per
    /// application.
    async fn renew_leases(&self) {
        if self.settings.max_streams_per_application == 0 {
            return;
        }
        let open: Vec<(Arc<str>, Vec<u64>)> = self
            .lock()
            .per_app
            .iter()
            .map(|(t, ids)| (t.clone(), ids.iter().copied().collect()))
            .collect();
        for (token, ids) in open {
            let mut inv = self.renew.prepare_invoke();
            inv.key(self.keys.for_token(&token).live_streams(&token))
                .arg(FLAG_TTL.as_millis() as u64);
            for id in ids {
                inv.arg(self.member(id));
            }
            let r = self
                .redis
                .call(self.settings.timeout, |mut c| async move {
                    inv.invoke_async::<i64>(&mut c).await
                })
                .await;
            if let Err(e) = r {
                tracing::debug!(error = %e, "could not renew the stream leases; Redis seems down");
            }
        }
    }

    /// Runs [`WATCH`] on the chat.
    async fn watch_chat(
        &self,
        shard: &ShardKeys,
        token: &str,
        chat: i64,
    ) -> Result<Watched, LiveError> {
        let generation = uuid::Uuid::new_v4().simple().to_string()[..16].to_string();
        let mut inv = self.watch.prepare_invoke();
        inv.key(shard.live_flag(token, chat))
            .key(shard.live_stream(token, chat))
            .key(shard.live_generation(token, chat))
            .key(shard.live_chats(token))
            .key(shard.live_changes(token, chat))
            .arg(FLAG_TTL.as_millis() as u64)
            .arg(STREAM_TTL_SECS)
            .arg(generation)
            .arg(self.settings.stream_maxlen)
            .arg(chat);
        let (generation, last, first, changes): (String, String, String, String) = self
            .redis
            .call(self.settings.timeout, |mut c| async move {
                inv.invoke_async(&mut c).await
            })
            .await?;
        Ok(Watched {
            generation,
            last: StreamId::parse(&last).unwrap_or_default(),
            first: StreamId::parse(&first).unwrap_or_default(),
            changes: changes.parse().unwrap_or_default(),
        })
    }

    /// Wakes the reader of `group` for a newly watched chat: the idle one
    /// here, and a blocked `XREAD` through the shard's wake stream.
    async fn wake(&self, group: u16, shard: &ShardKeys) {
        self.wake[usize::from(group)].notify_one();
        let key = if self.per_shard {
            shard.live_wake()
        } else {
            self.keys.shard(0).live_wake()
        };
        let r = self
            .redis
            .call(self.settings.timeout, |mut c| async move {
                redis::cmd("XADD")
                    .arg(key)
                    .arg("MAXLEN")
                    .arg(1)
                    .arg("*")
                    .arg("w")
                    .arg(1)
                    .query_async::<Value>(&mut c)
                    .await
            })
            .await;
        if let Err(e) = r {
            tracing::debug!(error = %e, "could not wake the live reader; it wakes within a second");
        }
    }

    /// Reads the chat's stream after `after`, up to `to`, at most
    /// [`READ_COUNT`] entries.
    async fn range(
        &self,
        key: &str,
        after: StreamId,
        to: StreamId,
    ) -> Result<Vec<Entry>, LiveError> {
        let key = key.to_string();
        let v = self
            .redis
            .call(self.settings.timeout, |mut c| async move {
                redis::cmd("XRANGE")
                    .arg(&key)
                    .arg(format!("({after}"))
                    .arg(to.to_string())
                    .arg("COUNT")
                    .arg(READ_COUNT)
                    .query_async::<Value>(&mut c)
                    .await
            })
            .await?;
        Ok(parse_entries(&v))
    }
}

/// Removes a subscriber from its chat and from its application's count
/// when its stream ends (the client left, the stream was closed).
struct Guard {
    live: Live,
    chat: ChatRef,
    id: u64,
}

impl Drop for Guard {
    fn drop(&mut self) {
        crate::telemetry::metrics::live_streams(-1.0);
        let mut state = self.live.0.lock();
        if let Some(hub) = state.chats.get_mut(&self.chat) {
            hub.subscribers.retain(|(id, _)| *id != self.id);
            if hub.subscribers.is_empty() {
                state.chats.remove(&self.chat);
            }
        }
        if let Some(open) = state.per_app.get_mut(&self.chat.token) {
            open.remove(&self.id);
            if open.is_empty() {
                state.per_app.remove(&self.chat.token);
            }
        }
        drop(state);
        // Its place in the application's count over every instance (its
        // lease ends anyway within FLAG_TTL if this does not get through).
        let inner = &self.live.0;
        if inner.settings.max_streams_per_application > 0
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let key = inner
                .keys
                .for_token(&self.chat.token)
                .live_streams(&self.chat.token);
            let member = inner.member(self.id);
            let (redis, timeout) = (inner.redis.clone(), inner.settings.timeout);
            runtime.spawn(async move {
                let r = redis
                    .call(timeout, |mut c| async move {
                        redis::cmd("ZREM")
                            .arg(key)
                            .arg(member)
                            .query_async::<i64>(&mut c)
                            .await
                    })
                    .await;
                if let Err(e) = r {
                    tracing::debug!(error = %e, "could not free a stream's place; its lease ends it");
                }
            });
        }
    }
}

/// One client's subscription: what it still has to replay from MariaDB
/// and to catch up on from the stream, then the live events, each once and
/// in order.
pub struct Subscription {
    live: Live,
    stream_key: String,
    generation: String,
    last: StreamId,
    catch_up_to: Option<StreamId>,
    pending: std::collections::VecDeque<Pending>,
    /// The highest message number sent (see [`ResumePoint`]), when known.
    last_created: Option<i64>,
    /// The generation's change count at the last event sent, when known.
    changes: Option<u64>,
    replay: Option<ReplayCursor>,
    replayer: Option<Replayer>,
    /// The stream's events read after a gap, held until its replay is done.
    held: std::collections::VecDeque<Pending>,
    rx: mpsc::Receiver<Arc<LiveEvent>>,
    _guard: Guard,
    done: bool,
}

/// What a subscription has to do before it reads on.
enum Pending {
    /// Send this event (from the stream: checked for gaps).
    Event(Arc<LiveEvent>),
    /// Send this replayed create (from MariaDB: numbers skipped or deleted
    /// leave holes that are no gap).
    Replayed(Arc<LiveEvent>),
    /// A replay page was sent: every create up to this number is accounted
    /// for, so the stream's own copies of them are not sent again.
    Through(i64),
}

/// One event to send, with its SSE id for this subscriber (which carries
/// the subscriber's [`ResumePoint`] when known).
pub struct Delivery {
    /// The event.
    pub event: Arc<LiveEvent>,
    /// Its SSE id for this subscriber.
    pub id: EventId,
}

impl Subscription {
    /// The next event, or `None` when the stream ends: after `chat.deleted`,
    /// when this subscriber was too slow (its buffer filled), on shutdown,
    /// or when Redis or MariaDB failed during a replay or a catch-up. The
    /// client then resumes from its last id.
    pub async fn next(&mut self) -> Option<Delivery> {
        loop {
            if self.done {
                return None;
            }
            match self.pending.pop_front() {
                Some(Pending::Event(event)) => match self.consider(event) {
                    Some(d) => return Some(d),
                    None => continue,
                },
                Some(Pending::Replayed(event)) => match self.emit(event) {
                    Some(d) => return Some(d),
                    None => continue,
                },
                Some(Pending::Through(through)) => {
                    self.last_created = Some(self.last_created.unwrap_or(0).max(through));
                    continue;
                }
                None => {}
            }
            if let Some(cursor) = self.replay {
                self.replay_page(cursor).await?;
                continue;
            }
            if let Some(to) = self.catch_up_to {
                if self.last >= to {
                    self.catch_up_to = None;
                    continue;
                }
                let page = tokio::select! {
                    _ = self.live.0.closing.cancelled() => return None,
                    r = self.live.0.range(&self.stream_key, self.last, to) => r,
                };
                let Ok(page) = page else {
                    return None;
                };
                if page.is_empty() {
                    self.catch_up_to = None;
                    continue;
                }
                for (id, fields) in page {
                    // Advances `last` even past unknown entries.
                    self.last = self.last.max(id);
                    match parse_entry(&fields) {
                        Parsed::Event(kind, change) => {
                            self.pending.push_back(Pending::Event(Arc::new(LiveEvent {
                                id: EventId {
                                    generation: self.generation.clone(),
                                    entry: id,
                                    point: None,
                                },
                                kind,
                                change,
                                rendered: Default::default(),
                            })))
                        }
                        Parsed::Open(generation, change) => {
                            let same = generation.is_empty() || generation == self.generation;
                            // Not recorded for a while, but no edit or
                            // delete meanwhile: the creates are replayed
                            // from MariaDB, then the entries after the
                            // marker (read again from there).
                            if same
                                && change.is_some()
                                && change == self.changes
                                && self.replayer.is_some()
                                && let Some(after) = self.last_created
                            {
                                self.replay = Some(ReplayCursor {
                                    after,
                                    upper: None,
                                    anchor: id,
                                });
                                break;
                            }
                            if !same {
                                self.generation = generation;
                            }
                            self.pending.push_back(Pending::Event(Arc::new(LiveEvent {
                                id: EventId {
                                    generation: self.generation.clone(),
                                    entry: id,
                                    point: None,
                                },
                                kind: EventKind::Reset { reason: UNRECORDED },
                                change: change.filter(|_| same),
                                rendered: Default::default(),
                            })));
                        }
                        Parsed::Unknown => {}
                    }
                }
                continue;
            }
            let event = self.rx.recv().await?;
            // Already sent (from the catch-up, or before a resume's id).
            if event.id.generation == self.generation && event.id.entry <= self.last {
                continue;
            }
            self.generation = event.id.generation.clone();
            self.last = event.id.entry;
            if let Some(d) = self.consider(event) {
                return Some(d);
            }
        }
    }

    /// Sends `event`, read from the stream, unless it shows that events
    /// before it were lost (trimmed before they were read, or never
    /// recorded): message numbers and change counts each follow on by one
    /// in a chat's stream. A create past a gap starts a replay from
    /// MariaDB (which sends it too) or, without a replayer, a `reset` first;
    /// an edit or delete past a gap comes after a `reset`.
    fn consider(&mut self, event: Arc<LiveEvent>) -> Option<Delivery> {
        let reason = match &event.kind {
            EventKind::MessageCreated { number, .. } => match self.last_created {
                Some(n) if *number > n.saturating_add(1) => {
                    if self.replayer.is_some() {
                        self.replay = Some(ReplayCursor {
                            after: n,
                            upper: None,
                            anchor: event.id.entry,
                        });
                        // What was read after it waits for the replay.
                        self.held = std::mem::take(&mut self.pending);
                        return None;
                    }
                    Some("creates before this one were not recorded, or no longer kept")
                }
                _ => None,
            },
            EventKind::MessageUpdated { .. }
            | EventKind::MessageDeleted { .. }
            | EventKind::ChatDeleted => match (self.changes, event.change) {
                (Some(c), Some(k)) if k != c.saturating_add(1) => {
                    Some("edits or deletes before this one were not recorded, or no longer kept")
                }
                _ => None,
            },
            EventKind::Reset { .. } => None,
        };
        if let Some(reason) = reason {
            self.pending.push_front(Pending::Replayed(event.clone()));
            return self.emit(Arc::new(LiveEvent {
                id: EventId {
                    entry: event.id.entry.pred(),
                    ..event.id.clone()
                },
                kind: EventKind::Reset { reason },
                change: None,
                rendered: Default::default(),
            }));
        }
        self.emit(event)
    }

    /// Reads one page of the replay at `cursor` into `pending`; a replay
    /// that cannot be proven complete becomes a `reset` (at the anchor) and
    /// the stream goes on. `None` when the stream must end (MariaDB or Redis
    /// failed, or shutdown).
    async fn replay_page(&mut self, cursor: ReplayCursor) -> Option<()> {
        let replayer = self.replayer.clone()?;
        let page = tokio::select! {
            _ = self.live.0.closing.cancelled() => return None,
            r = replayer(cursor.after, cursor.upper) => r,
        };
        // A resume from any event of the replay comes back here: its id
        // points just before the anchor, which the stream no longer covers.
        let id = EventId {
            generation: self.generation.clone(),
            entry: cursor.anchor.pred(),
            point: None,
        };
        match page {
            Ok(page) => {
                for (number, body, created_at_us) in page.messages {
                    self.pending
                        .push_back(Pending::Replayed(Arc::new(LiveEvent {
                            id: id.clone(),
                            kind: EventKind::MessageCreated {
                                number,
                                body,
                                created_at_us,
                            },
                            change: None,
                            rendered: Default::default(),
                        })));
                }
                let done = page.through >= page.upper;
                if done {
                    self.replay = None;
                } else {
                    self.replay = Some(ReplayCursor {
                        after: page.through,
                        upper: Some(page.upper),
                        ..cursor
                    });
                }
                self.pending.push_back(Pending::Through(page.through));
                if done {
                    let held = std::mem::take(&mut self.held);
                    self.pending.extend(held);
                }
                Some(())
            }
            Err(ReplayError::Unprovable(reason)) => {
                self.replay = None;
                self.pending.push_back(Pending::Event(Arc::new(LiveEvent {
                    id,
                    kind: EventKind::Reset { reason },
                    change: self.changes,
                    rendered: Default::default(),
                })));
                let held = std::mem::take(&mut self.held);
                self.pending.extend(held);
                Some(())
            }
            Err(ReplayError::Unavailable(why)) => {
                tracing::warn!(error = %why, "a live replay failed; the stream ends and its client resumes");
                None
            }
        }
    }

    /// Updates what the subscriber has with `event`, and gives its id for
    /// this subscriber; `None` for a create already sent (the stream's copy
    /// of a replayed one).
    fn emit(&mut self, event: Arc<LiveEvent>) -> Option<Delivery> {
        match &event.kind {
            EventKind::MessageCreated { number, .. } => {
                if self.last_created.is_some_and(|n| *number <= n) {
                    return None;
                }
                self.last_created = Some(*number);
            }
            EventKind::MessageUpdated { .. } | EventKind::MessageDeleted { .. } => {
                self.changes = event.change;
            }
            EventKind::ChatDeleted => {
                self.changes = event.change;
                self.done = true;
            }
            EventKind::Reset { .. } => {
                // The client re-lists: it has every create so far, but
                // which number that is, is not known here.
                self.last_created = None;
                self.changes = event.change;
            }
        }
        let point = match (self.last_created, self.changes) {
            (Some(last_created), Some(changes)) => Some(ResumePoint {
                last_created,
                changes,
            }),
            _ => None,
        };
        Some(Delivery {
            id: EventId {
                point,
                ..event.id.clone()
            },
            event,
        })
    }
}

/// The entries of an `XRANGE` reply (or of one stream of an `XREAD`).
fn parse_entries(v: &Value) -> Vec<Entry> {
    let Value::Array(items) = v else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let Value::Array(pair) = item else {
                return None;
            };
            let id = StreamId::parse(&as_string(pair.first()?)?)?;
            let mut fields = HashMap::new();
            match pair.get(1)? {
                Value::Array(kv) => {
                    for chunk in kv.chunks(2) {
                        if let [k, v] = chunk
                            && let (Some(k), Some(v)) = (as_string(k), as_string(v))
                        {
                            fields.insert(k, v);
                        }
                    }
                }
                Value::Map(kv) => {
                    for (k, v) in kv {
                        if let (Some(k), Some(v)) = (as_string(k), as_string(v)) {
                            fields.insert(k, v);
                        }
                    }
                }
                _ => {}
            }
            Some((id, fields))
        })
        .collect()
}

/// The streams of an `XREAD` reply: key → entries (nil: none).
fn parse_xread(v: Value) -> Vec<(String, Vec<Entry>)> {
    match v {
        Value::Array(streams) => streams
            .iter()
            .filter_map(|s| {
                let Value::Array(pair) = s else {
                    return None;
                };
                Some((as_string(pair.first()?)?, parse_entries(pair.get(1)?)))
            })
            .collect(),
        Value::Map(streams) => streams
            .iter()
            .filter_map(|(k, v)| Some((as_string(k)?, parse_entries(v))))
            .collect(),
        _ => Vec::new(),
    }
}

fn as_string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_round_trip_and_order_by_entry() {
        let id = EventId::parse("0123abcd0123abcd-1700000000000-7").unwrap();
        assert_eq!(id.generation, "0123abcd0123abcd");
        assert_eq!(id.entry, StreamId(1_700_000_000_000, 7));
        assert_eq!(id.to_string(), "0123abcd0123abcd-1700000000000-7");
        assert!(StreamId(1, 9) < StreamId(2, 0));
        assert!(StreamId(2, 0) < StreamId(2, 1));
        for bad in [
            "",
            "x",
            "1-2",
            "-1-2",
            "g-1",
            "g-a-1",
            "g!-1-2",
            "g-1-2.",
            "g-1-2.5",
            "g-1-2.-5.0",
            "g-1-2.5.x",
        ] {
            assert_eq!(EventId::parse(bad), None, "{bad}");
        }
        let with_point = EventId::parse("0123abcd-17-3.42.7").unwrap();
        assert_eq!(with_point.entry, StreamId(17, 3));
        assert_eq!(
            with_point.point,
            Some(ResumePoint {
                last_created: 42,
                changes: 7
            })
        );
        assert_eq!(with_point.to_string(), "0123abcd-17-3.42.7");
        assert_eq!(StreamId(5, 0).pred(), StreamId(4, u64::MAX));
        assert_eq!(StreamId(5, 3).pred(), StreamId(5, 2));
        assert_eq!(StreamId(0, 0).pred(), StreamId(0, 0));
    }
}
