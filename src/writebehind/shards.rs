//! The shard count the data in Redis was written with, and `reshard`, which
//! changes it.
//!
//! An application's keys live in shard `CRC16(token) mod QUEUE_SHARDS` (see
//! [`super::keys`]). An instance started with another count would look for
//! its counters in the wrong shard, find none, and re-seed them from MariaDB
//! while records pending in the old shard still hold higher numbers: it
//! would hand a number out twice. So the count is recorded in Redis at the
//! first start-up ([`check_shard_count`]), every instance compares its own
//! with it at start-up and every few seconds after, and refuses creates
//! while they differ. Only [`reshard`] changes the record.
//!
//! A reshard also writes the count into each shard's epoch hash (field
//! `shards`), which the enqueue scripts compare with the caller's count in
//! the same atomic step that hands out a number
//! ([`super::scripts::code::WRONG_SHARDS`]). So an instance with the old
//! count cannot hand out one more number once a reshard has begun, whether or
//! not its periodic check has run yet.

use std::time::Duration;

use redis::AsyncCommands;

use super::buffer::{Buffer, BufferError};
use super::keys::{Keys, Kind};

/// The value of the shard-count key while [`reshard`] runs: it matches no
/// instance's count, so every instance refuses creates meanwhile.
pub const RESHARDING: &str = "resharding";

/// What Redis says of this instance's shard count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardCheck {
    /// Redis records the same count (or had none and now records ours).
    Same,
    /// Redis records another count, or a reshard is under way (the value).
    Differs(String),
}

/// Records the buffer's shard count in Redis when none is recorded yet, and
/// compares it with the recorded one. Errors: Redis unavailable.
pub async fn check_shard_count(buffer: &Buffer) -> Result<ShardCheck, BufferError> {
    let key = buffer.keys().shard_count_key();
    let ours = buffer.keys().shard_count().to_string();
    let recorded: String = buffer
        .with_conn(|mut c| async move {
            let _: bool = c.set_nx(&key, &ours).await?;
            c.get(&key).await
        })
        .await?;
    Ok(if recorded == buffer.keys().shard_count().to_string() {
        ShardCheck::Same
    } else {
        ShardCheck::Differs(recorded)
    })
}

/// [`check_shard_count`], and its outcome recorded in `buffer`: creates are
/// refused while the counts differ (a reshard under way, or done under this
/// instance) and allowed again once they match. Returns why they are
/// refused, when they are. Errors: Redis unavailable (nothing recorded).
pub async fn enforce_shard_count(buffer: &Buffer) -> Result<Option<String>, BufferError> {
    let reason = match check_shard_count(buffer).await? {
        ShardCheck::Same => None,
        ShardCheck::Differs(recorded) => {
            Some(mismatch_message(buffer.keys().shard_count(), &recorded))
        }
    };
    buffer.set_shard_mismatch(reason.clone());
    Ok(reason)
}

/// The error a start-up or a create reports while the counts differ.
pub fn mismatch_message(ours: u16, recorded: &str) -> String {
    if recorded == RESHARDING {
        return "a `chat-api reshard` is under way: creates are refused until it ends and the instances run with its QUEUE_SHARDS".into();
    }
    format!(
        "QUEUE_SHARDS is {ours} but the data in Redis was written with {recorded} shards: start with QUEUE_SHARDS={recorded}, \
         or stop every instance and run `chat-api reshard --to {ours}` (see docs/scaling.md)"
    )
}

/// What [`reshard`] moved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReshardReport {
    /// Application hashes moved to another shard.
    pub apps: u64,
    /// `Idempotency-Key` records moved to another shard.
    pub idempotency_keys: u64,
    /// Dirty marks carried over to the new shard 0.
    pub dirty_marks: u64,
}

/// Moves the data written with `from` shards to `to.shard_count()` shards
/// (same prefix; single Redis or Redis Cluster alike).
///
/// 1. Records [`RESHARDING`] as the count, globally and in every old
///    shard's epoch hash, so that no instance hands out another number in the
///    old layout (the scripts compare it atomically), and waits `settle`.
/// 2. Waits, up to `drain_timeout`, until every queue of every old shard is
///    empty: nothing pending, nothing claimed, no dead letter, no search op.
///    A running flusher keeps draining meanwhile.
/// 3. Moves each application hash to its new shard, with its expiry, its
///    counters, bounds and tombstones. A reshard counts as a doubt: the
///    moved counters keep their old shard's checked epochs, which the new
///    shard's epoch does not match, so each restarts at its recorded bound
///    on first use (see [`super::numbering`]). Then the `Idempotency-Key` records, the dirty
///    marks (to new shard 0) and the lost-number records (to every new shard:
///    they are keyed by application id, and few).
/// 4. Records the new count.
///
/// Errors: Redis unavailable, or the queues did not empty in time (then the
/// old count is recorded again and nothing was moved).
pub async fn reshard(
    buffer: &Buffer,
    from: &Keys,
    to: &Keys,
    settle: Duration,
    drain_timeout: Duration,
) -> anyhow::Result<ReshardReport> {
    let count_key = to.shard_count_key();
    let set_count = |value: String| {
        let key = count_key.clone();
        async move {
            buffer
                .with_conn(|mut c| async move { c.set::<_, _, ()>(&key, value).await })
                .await
        }
    };
    set_count(RESHARDING.into()).await?;
    mark_shards(buffer, from, RESHARDING).await?;
    tokio::time::sleep(settle).await;
    let deadline = tokio::time::Instant::now() + drain_timeout;
    loop {
        let busy = queued_in(buffer, from).await?;
        if busy == 0 {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            mark_shards(buffer, from, &from.shard_count().to_string()).await?;
            set_count(from.shard_count().to_string()).await?;
            anyhow::bail!(
                "{busy} records are still pending, claimed, dead-lettered or waiting for the search index in the old shards; \
                 nothing was moved (flush, replay or discard them, then run reshard again)"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut report = ReshardReport::default();
    // One SCAN over every shard's keys for each kind (not one per shard).
    for (key, _, token) in shard_keys(buffer, from, "app:").await? {
        let new = to.for_token(&token);
        let new_key = new.app(&token);
        if new_key == key {
            continue;
        }
        buffer
            .with_conn(|mut c| async move {
                let fields: Vec<(String, String)> = c.hgetall(&key).await?;
                let ttl: i64 = c.pttl(&key).await?;
                if !fields.is_empty() {
                    let _: () = c.hset_multiple(&new_key, &fields).await?;
                    if ttl > 0 {
                        let _: () = c.pexpire(&new_key, ttl).await?;
                    }
                }
                c.del::<_, ()>(&key).await
            })
            .await?;
        report.apps += 1;
    }
    for (key, _, rest) in shard_keys(buffer, from, "idem:").await? {
        let Some((token, digest)) = rest.split_once(':') else {
            continue;
        };
        let new_key = to.for_token(token).idempotency(token, digest);
        if new_key == key {
            continue;
        }
        buffer
            .with_conn(|mut c| async move {
                let value: Option<String> = c.get(&key).await?;
                let ttl: i64 = c.pttl(&key).await?;
                if let Some(v) = value {
                    let opts = redis::SetOptions::default()
                        .with_expiration(redis::SetExpiry::PX(ttl.max(1) as u64));
                    let _: () = c.set_options(&new_key, v, opts).await?;
                }
                c.del::<_, ()>(&key).await
            })
            .await?;
        report.idempotency_keys += 1;
    }
    for old in from.shards() {
        let target = to.shard(0);
        for scope in ["apps", "chats"] {
            let (key, new_key) = (old.dirty(scope), target.dirty(scope));
            if key == new_key {
                continue;
            }
            report.dirty_marks += buffer
                .with_conn(|mut c| async move {
                    let ids: Vec<u64> = c.smembers(&key).await?;
                    if !ids.is_empty() {
                        let _: () = c.sadd(&new_key, &ids).await?;
                    }
                    c.del::<_, ()>(&key).await?;
                    Ok(ids.len() as u64)
                })
                .await?;
        }
        let lost_key = old.lost();
        let lost: Vec<(String, String)> = {
            let key = lost_key.clone();
            buffer
                .with_conn(|mut c| async move { c.hgetall(key).await })
                .await?
        };
        if !lost.is_empty() {
            for new in to.shards() {
                let (key, lost) = (new.lost(), lost.clone());
                buffer
                    .with_conn(
                        |mut c| async move { c.hset_multiple::<_, _, _, ()>(key, &lost).await },
                    )
                    .await?;
            }
            if !to.shards().any(|s| s.lost() == lost_key) {
                buffer
                    .with_conn(|mut c| async move { c.del::<_, ()>(lost_key).await })
                    .await?;
            }
        }
    }
    mark_shards(buffer, to, &to.shard_count().to_string()).await?;
    set_count(to.shard_count().to_string()).await?;
    Ok(report)
}

/// Writes `value` as the `shards` field of every shard's epoch hash under
/// `keys` (see the module docs). Errors: Redis unavailable.
async fn mark_shards(buffer: &Buffer, keys: &Keys, value: &str) -> Result<(), BufferError> {
    for shard in keys.shards() {
        let (key, value) = (shard.epoch(), value.to_string());
        buffer
            .with_conn(|mut c| async move { c.hset::<_, _, _, ()>(key, "shards", value).await })
            .await?;
    }
    Ok(())
}

/// Records in every queue of every shard of `keys`: pending, claimed, dead-
/// lettered and waiting for the search index.
async fn queued_in(buffer: &Buffer, keys: &Keys) -> Result<u64, BufferError> {
    let mut total = 0;
    for shard in keys.shards() {
        total += buffer
            .with_conn(|mut c| async move {
                let mut pipe = redis::pipe();
                for kind in Kind::EVERY_QUEUE {
                    pipe.llen(shard.pending(kind)).llen(shard.dead_letter(kind));
                }
                pipe.zcard(shard.leases()).zcard(shard.dirty_leases());
                let lens: Vec<u64> = pipe.query_async(&mut c).await?;
                Ok(lens.iter().sum::<u64>())
            })
            .await?;
    }
    Ok(total)
}

/// Every key `{prefix}{N}:{kind}{rest}` of the shards of `keys` (N below
/// their count), as `(key, N, rest)`: one SCAN of every node for all the
/// shards at once, so Redis is never blocked and the keyspace is read once.
async fn shard_keys(
    buffer: &Buffer,
    keys: &Keys,
    kind: &str,
) -> Result<Vec<(String, u16, String)>, BufferError> {
    let pattern = format!("{}{{*}}:{kind}*", keys.prefix());
    let found = buffer
        .with_conn(|mut c| async move { c.scan_all(&pattern).await })
        .await?;
    Ok(found
        .into_iter()
        .filter_map(|key| {
            let tagged = key.strip_prefix(keys.prefix())?.strip_prefix('{')?;
            let (index, after) = tagged.split_once("}:")?;
            let index: u16 = index.parse().ok()?;
            let rest = after.strip_prefix(kind)?.to_string();
            (index < keys.shard_count()).then_some((key, index, rest))
        })
        .collect())
}
