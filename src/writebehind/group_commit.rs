//! `REDIS_DURABILITY=replica` without blocking anyone: group commit of the
//! replica acknowledgements.
//!
//! `WAIT numreplicas timeout` blocks the connection it is sent on until the
//! replicas have every write that connection made. Sent on the shared,
//! multiplexed connection after each create, as before, it held up every
//! other request, the flusher's claims and the lookups behind it for up to
//! `REDIS_WAIT_MS` whenever a replica was slow or down.
//!
//! Instead, one dedicated connection per Redis master (one for a single
//! node or Sentinel, one per queue shard on a Redis Cluster, each on the
//! master of its shard) runs *rounds*: it writes a beacon (`SET` of its own
//! key) and then sends `WAIT 1 REDIS_WAIT_MS`. A master applies commands one
//! at a time, so the beacon's replication offset is past every write the
//! master made before it, whichever connection made it; when a replica has
//! the beacon, it has them all. A create whose script has returned asks for
//! the next round that has not started yet, so that round's beacon comes
//! after its write; many creates share one round, as a database's group
//! commit shares one log flush among the transactions waiting for it.
//!
//! A create waits at most `REDIS_WAIT_MS` for its round; past it, or when
//! the round's `WAIT` saw no replica, it answers the not-replicated 503 (the
//! record may still be stored: a retry with the same `Idempotency-Key` gets
//! its number). Request and flusher connections never block.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::AsyncCommands;
use tokio::sync::{Notify, watch};

use crate::redis::RedisHandle;

use super::keys::Keys;

/// One master's rounds: the next round to start, whether anyone waits for
/// it, and the last round done and the last one a replica confirmed.
struct Rounds {
    /// The beacon key (on a cluster, in the shard's hash slot).
    key: String,
    /// `(next round to start, someone waits for it)`.
    next: Mutex<(u64, bool)>,
    /// Wakes the round loop.
    wake: Notify,
    /// `(last round done, last round a replica confirmed)`.
    done: watch::Sender<(u64, u64)>,
}

/// The group commit of one deployment: a round loop per master. Cheap to
/// clone.
#[derive(Clone)]
pub struct GroupCommit {
    rounds: Arc<Vec<Arc<Rounds>>>,
    per_shard: bool,
    wait: Duration,
    /// The rounds' own handle, for [`Self::holds`].
    redis: RedisHandle,
    /// Its time limit per call (`REDIS_TIMEOUT_MS`).
    timeout: Duration,
}

impl GroupCommit {
    /// Starts the round loops on `redis`, a handle of their own (a pool of
    /// one connection, or a cluster connection of its own: its `WAIT`s must
    /// block nothing else), each `WAIT` bounded by `wait` (`REDIS_WAIT_MS`)
    /// and each round's Redis call by `wait` plus `timeout`. Call within a
    /// Tokio runtime; the loops end when the last clone is dropped.
    pub fn start(redis: RedisHandle, keys: &Keys, wait: Duration, timeout: Duration) -> Self {
        let per_shard = redis.is_cluster();
        let beacons: Vec<String> = if per_shard {
            keys.shards().map(|s| s.replica_beacon()).collect()
        } else {
            keys.shards().take(1).map(|s| s.replica_beacon()).collect()
        };
        let rounds: Vec<Arc<Rounds>> = beacons
            .into_iter()
            .map(|key| {
                Arc::new(Rounds {
                    key,
                    next: Mutex::new((1, false)),
                    wake: Notify::new(),
                    done: watch::channel((0, 0)).0,
                })
            })
            .collect();
        for r in &rounds {
            let (rounds, redis) = (r.clone(), redis.clone());
            tokio::spawn(async move {
                loop {
                    // Ours alone: the GroupCommit is gone.
                    if Arc::strong_count(&rounds) == 1 {
                        return;
                    }
                    let notified = rounds.wake.notified();
                    let round = {
                        let mut next = rounds.next.lock().unwrap_or_else(|e| e.into_inner());
                        if next.1 {
                            next.1 = false;
                            next.0 += 1;
                            Some(next.0 - 1)
                        } else {
                            None
                        }
                    };
                    let Some(round) = round else {
                        // Woken by a waiter, or checked again now and then
                        // so that the loop notices it is no longer needed.
                        let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
                        continue;
                    };
                    let key = rounds.key.clone();
                    let replicated = redis
                        .call(wait + timeout, |mut c| async move {
                            c.set::<_, _, ()>(&key, round).await?;
                            c.wait_replicas(&key, 1, wait).await
                        })
                        .await
                        .is_ok_and(|n| n >= 1);
                    rounds.done.send_modify(|(done, ok)| {
                        *done = round;
                        if replicated {
                            *ok = round;
                        }
                    });
                }
            });
        }
        Self {
            rounds: Arc::new(rounds),
            per_shard,
            wait,
            redis,
            timeout,
        }
    }

    /// Whether `key` exists on the master the rounds run on (on a cluster,
    /// the master of its slot). The flusher asks it after a round confirmed
    /// its batch: the batch's processing key is on the master the round
    /// confirmed, so the batch was claimed on that master and not on
    /// another one the main pool still reaches (a split brain's old
    /// master), whose confirmation this would not be. False when Redis
    /// fails.
    pub async fn holds(&self, key: &str) -> bool {
        let key = key.to_string();
        self.redis
            .call(self.timeout, |mut c| async move {
                redis::cmd("EXISTS")
                    .arg(&key)
                    .query_async::<i64>(&mut c)
                    .await
            })
            .await
            .is_ok_and(|n| n == 1)
    }

    /// Waits until a replica has every write made on shard `shard`'s master
    /// before this call: true when one confirmed within `REDIS_WAIT_MS`.
    pub async fn replicated(&self, shard: u16) -> bool {
        let index = if self.per_shard {
            usize::from(shard)
        } else {
            0
        };
        let Some(rounds) = self.rounds.get(index) else {
            return false;
        };
        let mut done = rounds.done.subscribe();
        let target = {
            let mut next = rounds.next.lock().unwrap_or_else(|e| e.into_inner());
            next.1 = true;
            next.0
        };
        rounds.wake.notify_one();
        tokio::time::timeout(self.wait, async {
            loop {
                let (last, ok) = *done.borrow_and_update();
                // A later round covers every earlier write too.
                if ok >= target {
                    return true;
                }
                if last >= target || done.changed().await.is_err() {
                    return false;
                }
            }
        })
        .await
        .unwrap_or(false)
    }
}
