//! A read-only look into the buffer for operators
//! (`GET /api/v1/admin/queues`): per queue, its depth, the age of its head,
//! the batches being processed (owner, lease), and its dead letters.
//!
//! Two Redis round trips (pipelines) per shard, whatever the depth: LLEN and
//! LINDEX are O(1), and the batch table holds one entry per claimed batch.
//! The shards' figures are summed (the oldest head is the oldest of theirs).

use std::collections::HashMap;

use super::buffer::{Buffer, BufferError};
use super::keys::{Kind, ShardKeys};
use crate::domain::record::{ChatRecord, MessageRecord};

/// A batch claimed by a flusher (or the indexer) and not yet acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchInfo {
    /// The batch's id (the UUID in its processing key).
    pub id: String,
    /// The instance that claimed it (`INSTANCE_ID`); `None` if unknown.
    pub owner: Option<String>,
    /// When it was claimed, in ms since the epoch; `None` if unknown.
    pub claimed_at_ms: Option<i64>,
    /// When its lease runs out, in ms since the epoch. Past it, any instance
    /// may recover the batch.
    pub lease_expires_at_ms: i64,
    /// Records in the batch.
    pub records: u64,
}

/// The state of one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueStats {
    /// Which queue.
    pub queue: Kind,
    /// Records waiting in `pending:{queue}`.
    pub pending: u64,
    /// Bytes of the queue's records, pending or claimed (counted exactly as
    /// they enter and leave; 0 for the search queue).
    pub pending_bytes: u64,
    /// Creation time (ms since the epoch) of the record at the head of the
    /// queue, the next one to be flushed: the oldest, except for messages
    /// deferred to the tail while they wait for their chat. `None` when empty
    /// (or for search ops queued by a version that did not stamp them).
    pub oldest_created_at_ms: Option<i64>,
    /// Batches being processed, oldest claim first.
    pub batches: Vec<BatchInfo>,
    /// Entries in `deadletter:{queue}`.
    pub dead_letters: u64,
}

impl QueueStats {
    /// Age at `now_ms` of the record at the head of the queue (zero if its
    /// clock was ahead); `None` when the queue is empty.
    pub fn oldest_age(&self, now_ms: i64) -> Option<std::time::Duration> {
        self.oldest_created_at_ms
            .map(|at| std::time::Duration::from_millis((now_ms - at).max(0) as u64))
    }
}

/// Creation time, in ms since the epoch, of a raw record of `queue`.
fn created_at_ms(queue: Kind, raw: &[u8]) -> Option<i64> {
    match queue {
        Kind::Chats => ChatRecord::decode(raw).ok().map(|r| r.created_at_us / 1000),
        Kind::Messages => MessageRecord::decode(raw)
            .ok()
            .map(|r| r.created_at_us / 1000),
        Kind::Search => serde_json::from_slice::<serde_json::Value>(raw)
            .ok()
            .and_then(|v| v.get("queued_at_ms")?.as_i64()),
    }
}

impl Buffer {
    /// The state of every queue ([`Kind::EVERY_QUEUE`], in that order), over
    /// every shard; refreshes the per-shard depths and bytes that load
    /// shedding and the total limits read. Errors: Redis unavailable.
    pub async fn inspect(&self) -> Result<Vec<QueueStats>, BufferError> {
        let mut total: Vec<QueueStats> = Kind::EVERY_QUEUE
            .iter()
            .map(|&queue| QueueStats {
                queue,
                pending: 0,
                pending_bytes: 0,
                oldest_created_at_ms: None,
                batches: Vec::new(),
                dead_letters: 0,
            })
            .collect();
        for shard in self.keys().shards() {
            for (t, s) in total.iter_mut().zip(self.inspect_shard(&shard).await?) {
                // What the shedder and the totals' check know of this shard.
                self.observe_queue(s.queue, shard.index(), s.pending, s.pending_bytes);
                t.pending += s.pending;
                t.pending_bytes += s.pending_bytes;
                t.dead_letters += s.dead_letters;
                t.oldest_created_at_ms = match (t.oldest_created_at_ms, s.oldest_created_at_ms) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                t.batches.extend(s.batches);
            }
        }
        for s in &mut total {
            s.batches.sort_by_key(|b| b.claimed_at_ms);
        }
        Ok(total)
    }

    /// [`Buffer::inspect`] of one shard.
    async fn inspect_shard(&self, keys: &ShardKeys) -> Result<Vec<QueueStats>, BufferError> {
        // Per queue: pending length, head record, dead-letter length, bytes.
        type Head = (u64, Option<Vec<u8>>, u64, Option<u64>);
        // Processing key and lease deadline (ms), as ZRANGE … WITHSCORES gives them.
        type Lease = (String, f64);
        let (heads, leases, owners): (Vec<Head>, Vec<Lease>, HashMap<String, String>) = {
            let keys = keys.clone();
            self.with_conn(|mut c| async move {
                let mut pipe = redis::pipe();
                for q in Kind::EVERY_QUEUE {
                    let pending = keys.pending(q);
                    pipe.cmd("LLEN").arg(&pending);
                    pipe.cmd("LINDEX").arg(&pending).arg(0);
                    pipe.cmd("LLEN").arg(keys.dead_letter(q));
                    pipe.cmd("HGET")
                        .arg(keys.usage())
                        .arg(format!("bytes:{}", q.as_str()));
                }
                pipe.cmd("ZRANGE")
                    .arg(keys.leases())
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES");
                pipe.cmd("HGETALL").arg(keys.batches());
                let mut values: Vec<redis::Value> = pipe.query_async(&mut c).await?;
                let owners = redis::from_redis_value(values.pop().unwrap_or(redis::Value::Nil))?;
                let leases = redis::from_redis_value(values.pop().unwrap_or(redis::Value::Nil))?;
                let mut heads = Vec::new();
                for v in values.chunks(4) {
                    heads.push((
                        redis::from_redis_value_ref(&v[0])?,
                        redis::from_redis_value_ref(&v[1])?,
                        redis::from_redis_value_ref(&v[2])?,
                        redis::from_redis_value_ref(&v[3])?,
                    ));
                }
                Ok((heads, leases, owners))
            })
            .await?
        };
        let sizes: Vec<u64> = if leases.is_empty() {
            Vec::new()
        } else {
            let batch_keys: Vec<String> = leases.iter().map(|(k, _)| k.clone()).collect();
            self.with_conn(|mut c| async move {
                let mut pipe = redis::pipe();
                for k in &batch_keys {
                    pipe.llen(k);
                }
                pipe.query_async(&mut c).await
            })
            .await?
        };
        let mut stats: Vec<QueueStats> = Kind::EVERY_QUEUE
            .iter()
            .zip(heads)
            .map(
                |(&queue, (pending, head, dead_letters, bytes))| QueueStats {
                    queue,
                    pending,
                    pending_bytes: bytes.unwrap_or(0),
                    oldest_created_at_ms: head.and_then(|raw| created_at_ms(queue, &raw)),
                    batches: Vec::new(),
                    dead_letters,
                },
            )
            .collect();
        let processing_prefix = format!("{}processing:", keys.prefix());
        for ((key, deadline), records) in leases.into_iter().zip(sizes) {
            // `{prefix}processing:{queue}:{id}`
            let Some(rest) = key.strip_prefix(&processing_prefix) else {
                continue;
            };
            let Some((queue, id)) = rest.split_once(':') else {
                continue;
            };
            let Some(s) = stats.iter_mut().find(|s| s.queue.as_str() == queue) else {
                continue;
            };
            let (owner, claimed_at_ms) = match owners.get(&key).and_then(|v| v.split_once('\t')) {
                Some((o, t)) => (Some(o.to_owned()), t.parse().ok()),
                None => (None, None),
            };
            s.batches.push(BatchInfo {
                id: id.to_owned(),
                owner,
                claimed_at_ms,
                lease_expires_at_ms: deadline as i64,
                records,
            });
        }
        Ok(stats)
    }
}
