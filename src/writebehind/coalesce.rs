//! Request-path coalescing: the creates of one kind that arrive while its
//! enqueue script is running go to Redis together, in one run of the
//! batched enqueue script (see [`super::enqueue`]'s `BATCH`).
//!
//! Each create is still one Redis round trip, and still one atomic step:
//! a script runs alone on the server, so a batch is exactly its creates run
//! one after the other. What a batch saves is Redis's cost per script call
//! (parsing, the `EVALSHA` lookup, the reply) and what every create of a
//! shard reads alike (the epoch hash and the `INFO server` run id), which
//! was most of the enqueue script's Redis CPU beside its real work.
//!
//! **Lanes.** On one Redis server (alone or under Sentinel) a *lane* per
//! kind takes the creates of every shard: the batched script reads each
//! create's keys, shard's epoch hash and usage hash included, from the
//! create's own `KEYS`, so one call may hold creates of several shards, and
//! what a call costs whatever its size (the `EVALSHA`, the lineage's `INFO`,
//! the reply) is shared by all the creates waiting, not by those of one of
//! `QUEUE_SHARDS` shards (about 6 creates a call at figure 14's load with 16
//! lanes, about 12 with one; BENCHMARKS.md, "Figure 14 with the key
//! layout, the lineage read and one lane per kind"). On Redis Cluster a
//! script may touch one hash slot only, so there is a lane per shard and
//! kind.
//!
//! The batching adapts to load without a timer, as a database's group
//! commit does: a lane sends what has queued up
//! as soon as one of its [`IN_FLIGHT`] calls is free, so a lone create goes
//! at once, and under load a batch holds what arrived during the previous
//! call, at most [`MAX_BATCH`] creates. A create whose deadline
//! (`REDIS_TIMEOUT_MS` from its start) passed while it queued is answered
//! "timed out" without being sent, so nothing it did not wait for is queued.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use redis::Script;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use crate::redis::RedisHandle;

use super::enqueue::{ARGS_PER_CREATE, KEYS_PER_CREATE};
use super::keys::Kind;
use super::scripts::Scripts;

/// Most creates in one script call. Bounds a call's Redis time (about 15 µs
/// a create, so about 1 ms) and its bytes (a body is at most the API's
/// limit).
pub const MAX_BATCH: usize = 64;

/// Script calls a lane keeps in flight: two, so that Redis has the next
/// batch while the reply of the last one travels back.
pub const IN_FLIGHT: usize = 2;

/// What one create's part of the batched script answers: `{number or code,
/// a, b, bound, application id}` (see [`super::enqueue::enqueue_chat`]).
pub type Reply = (i64, i64, i64, i64, i64);

/// Why a create got no reply: Redis failed or did not answer in time, or
/// the create's part of the script failed. The buffer answers it as
/// "Redis unavailable" (503).
#[derive(Debug, Clone)]
pub struct Unavailable(pub String);

/// One create's keys and arguments, in the script's order.
pub struct Create {
    /// [`KEYS_PER_CREATE`] keys.
    pub keys: [String; KEYS_PER_CREATE],
    /// [`ARGS_PER_CREATE`] arguments.
    pub args: [Vec<u8>; ARGS_PER_CREATE],
}

/// A queued create, with when to give up and where to answer.
struct Waiting {
    create: Create,
    deadline: Instant,
    answer: oneshot::Sender<Result<Reply, Unavailable>>,
}

/// The lanes of one buffer: per kind, or per shard and kind on Redis
/// Cluster (see the module docs), started on first use. Cheap to clone; a
/// lane's task ends when the last clone is dropped.
#[derive(Clone)]
pub struct Coalescer {
    lanes: Arc<Vec<OnceLock<mpsc::UnboundedSender<Waiting>>>>,
    /// How many shards have lanes of their own: every shard on Redis
    /// Cluster, else 1 (shard 0's lanes take every shard's creates).
    lane_shards: u16,
    caller: Caller,
}

impl Coalescer {
    /// Lanes for `shards` shards, calling `redis` with `scripts`, each call
    /// bounded by `timeout` (`REDIS_TIMEOUT_MS`).
    pub fn new(redis: RedisHandle, scripts: Arc<Scripts>, shards: u16, timeout: Duration) -> Self {
        let lane_shards = if redis.is_cluster() { shards } else { 1 };
        Self {
            lanes: Arc::new(
                (0..usize::from(lane_shards) * 2)
                    .map(|_| OnceLock::new())
                    .collect(),
            ),
            lane_shards,
            caller: Caller {
                redis,
                scripts,
                timeout,
            },
        }
    }

    /// Runs `create` of `kind` on shard `shard`, in the next batch of its
    /// lane, and answers its reply: the create's own outcome, even when
    /// its batch answered after the create's own deadline (`REDIS_TIMEOUT_MS`
    /// from now; a batch's call is bounded by its latest create's deadline,
    /// so a create waits at most about twice that). Errors: [`Unavailable`]
    /// when Redis fails or its batch did not answer within its limit (the
    /// create may then have been applied: indeterminate, as any time-out).
    pub async fn enqueue(
        &self,
        kind: Kind,
        shard: u16,
        create: Create,
    ) -> Result<Reply, Unavailable> {
        let deadline = Instant::now() + self.caller.timeout;
        let (answer, reply) = oneshot::channel();
        let waiting = Waiting {
            create,
            deadline,
            answer,
        };
        let index = usize::from(shard % self.lane_shards) * 2 + usize::from(kind == Kind::Messages);
        match self.lanes.get(index) {
            Some(lane) => {
                let lane = lane.get_or_init(|| self.start_lane(kind));
                if let Err(mpsc::error::SendError(waiting)) = lane.send(waiting) {
                    // The lane's task is gone (its runtime shut down): alone.
                    self.caller.run(kind, vec![waiting]).await;
                }
            }
            None => self.caller.run(kind, vec![waiting]).await,
        }
        // Answered by its own outcome: a batch's call is bounded by its
        // latest waiter's deadline, and a create whose own deadline passed
        // while its batch ran may still have been applied, so it waits for
        // the batch's answer (the caller always sends one: a reply, the
        // call's error, or "timed out before it was sent") instead of
        // answering 503 for a create that Redis then acknowledged.
        match reply.await {
            Ok(reply) => reply,
            Err(_) => Err(Unavailable("the enqueue lane stopped".into())),
        }
    }

    /// Starts a lane's task: it takes what has queued (up to
    /// [`MAX_BATCH`]) whenever one of its [`IN_FLIGHT`] calls is free.
    fn start_lane(&self, kind: Kind) -> mpsc::UnboundedSender<Waiting> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Waiting>();
        // The task holds what it calls Redis with, not the lanes: the last
        // Buffer's drop closes the channel and ends the task.
        let caller = self.caller.clone();
        tokio::spawn(async move {
            let calls = Arc::new(Semaphore::new(IN_FLIGHT));
            let mut batch = Vec::with_capacity(MAX_BATCH);
            loop {
                let Ok(permit) = calls.clone().acquire_owned().await else {
                    return;
                };
                if rx.recv_many(&mut batch, MAX_BATCH).await == 0 {
                    return;
                }
                let batch = std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH));
                let caller = caller.clone();
                tokio::spawn(async move {
                    caller.run(kind, batch).await;
                    drop(permit);
                });
            }
        });
        tx
    }
}

/// What a lane's task needs to call Redis (not the lanes themselves, so
/// that the task does not keep its own channel open).
#[derive(Clone)]
struct Caller {
    redis: RedisHandle,
    scripts: Arc<Scripts>,
    timeout: Duration,
}

impl Caller {
    /// Sends `batch` (what is still within its deadline) in one script call
    /// and answers each create with its part of the reply, or all with the
    /// call's error.
    async fn run(&self, kind: Kind, batch: Vec<Waiting>) {
        let now = Instant::now();
        let (live, expired): (Vec<_>, Vec<_>) = batch.into_iter().partition(|w| w.deadline > now);
        for w in expired {
            let _ = w
                .answer
                .send(Err(Unavailable("timed out before it was sent".into())));
        }
        if live.is_empty() {
            return;
        }
        let script: &Script = match kind {
            Kind::Messages => &self.scripts.enqueue_message,
            _ => &self.scripts.enqueue_chat,
        };
        let mut inv = script.prepare_invoke();
        for w in &live {
            for k in &w.create.keys {
                inv.key(k);
            }
            for a in &w.create.args {
                inv.arg(a.as_slice());
            }
        }
        // Bounded by the latest deadline of the batch; an earlier one's
        // waiter still gets the batch's answer (see `enqueue`).
        let limit = live
            .iter()
            .map(|w| w.deadline)
            .max()
            .unwrap_or(now)
            .saturating_duration_since(now);
        let result: Result<Vec<Reply>, _> = self
            .redis
            .call(limit, |mut c| async move { inv.invoke_async(&mut c).await })
            .await;
        let why = match result {
            Ok(replies) if replies.len() == live.len() => {
                for (w, reply) in live.into_iter().zip(replies) {
                    let _ = w.answer.send(Ok(reply));
                }
                return;
            }
            Ok(replies) => format!(
                "the enqueue script answered {} replies for {} creates",
                replies.len(),
                live.len()
            ),
            Err(e) => e.to_string(),
        };
        for w in live {
            let _ = w.answer.send(Err(Unavailable(why.clone())));
        }
    }
}
