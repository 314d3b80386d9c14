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

mod event;
mod scripts;
mod subscription;

use event::{Entry, Parsed, parse_entries, parse_entry, parse_xread};
pub use event::{EventId, EventKind, LiveEvent, ResumePoint, StreamId};
pub use scripts::{ADMIT, APPEND, MISSED, RENEW, WATCH};
pub use subscription::{Delivery, ReplayError, ReplayPage, Replayer, Subscription};
use subscription::{Pending, ReplayCursor};

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
        let event = LiveEvent::new(
            self.generation.to_string(),
            position,
            EventKind::Reset { reason },
            change,
        );
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
        let reset = reset.map(|reason| {
            LiveEvent::new(
                generation.to_string(),
                last,
                EventKind::Reset { reason },
                Some(changes),
            )
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
                let event = LiveEvent::new(hub.generation.to_string(), id, kind, change);
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
