//! The counts refresh: `applications.chats_count` and `chats.messages_count`
//! are cached columns, recomputed only for the rows that changed.
//!
//! **Dirty marks.** The flusher (after each COMMIT, before acknowledging its
//! batch) and every delete add the ids of the applications and chats they
//! touched to the Redis sets `dirty:apps` and `dirty:chats` (the flusher
//! through [`DirtyMarks`]' after-commit job, deletes with [`DirtyMarks::mark`]). A crash between a flush's COMMIT and its mark loses
//! nothing: the batch is not acknowledged yet, so it is written again (a
//! no-op) and marked then.
//!
//! **Taking marks** uses the lease queue of the flusher
//! ([`crate::writebehind::lease`]): its claim SPOPs up to `COUNTS_BATCH_SIZE`
//! ids into a fresh processing set with a lease; the UPDATE runs; then the
//! batch is acknowledged. A refresh that
//! fails puts its ids back; a refresher that dies leaves a lease that expires,
//! and any instance then puts the ids back ([`DirtyMarks::recover_expired`]).
//! SPOP hands each id to one instance only, so several instances share the
//! work without doing it twice.
//!
//! **Cost** is proportional to what changed: each count is an index range
//! scan of the unique keys `(chat_id, number)` / `(application_id, number)`,
//! read without locks, and each UPDATE touches only the listed primary keys
//! (see `update_counts` for why the two are apart).
//!
//! **Lag.** A count is exact after the refresh that follows the flush of the
//! change, so the worst case is `FLUSH_INTERVAL_SECS` plus the cron period
//! (default 60 s + 60 s), plus the lease when a refresher dies.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::{MySql, MySqlPool, QueryBuilder};
use tokio_util::sync::CancellationToken;

use crate::redis::RedisHandle;
use crate::writebehind::BufferError;
use crate::writebehind::after_commit::{AfterCommit, Committed};
use crate::writebehind::keys::{Keys, Kind, ShardKeys};
use crate::writebehind::lease::{Batch, Collection, HandOn, LeaseQueue};

/// Which cached column a mark is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `applications.chats_count`; marks are application ids.
    Apps,
    /// `chats.messages_count`; marks are chat ids.
    Chats,
}

impl Scope {
    /// The scope's name in keys (`dirty:apps`, `dirty:chats`).
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Apps => "apps",
            Scope::Chats => "chats",
        }
    }
}

/// The dirty marks in Redis, one set per scope in each queue shard (see
/// [`crate::writebehind::keys`]), drained with the lease queue. Cheap to clone.
#[derive(Clone)]
pub struct DirtyMarks {
    redis: RedisHandle,
    timeout: Duration,
    keys: Keys,
    leases: LeaseQueue,
}

/// Ids taken for one refresh step, owned under a lease until acknowledged.
#[derive(Debug)]
pub struct TakenMarks {
    /// What the ids are.
    pub scope: Scope,
    /// The ids.
    pub ids: Vec<u64>,
    /// The leased batch holding them.
    pub batch: Batch,
}

impl DirtyMarks {
    /// Marks under `keys` (`REDIS_KEY_PREFIX` and `QUEUE_SHARDS`), every
    /// call bounded by `timeout` (`REDIS_TIMEOUT_MS`).
    pub fn new(redis: impl Into<RedisHandle>, keys: Keys, timeout: Duration) -> Self {
        let redis = redis.into();
        Self {
            leases: LeaseQueue::new(redis.clone(), timeout, "counts"),
            redis,
            timeout,
            keys,
        }
    }

    /// The same marks, claiming refresh batches in the name of `owner`
    /// (`INSTANCE_ID`, shown to operators; "counts" until set).
    pub fn with_owner(mut self, owner: impl Into<String>) -> Self {
        self.leases = self.leases.with_owner(owner.into());
        self
    }

    /// The key names in use.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Marks applications and chats of `token`'s application dirty, in its
    /// shard (one round trip). Errors: Redis unavailable.
    pub async fn mark(&self, token: &str, apps: &[u64], chats: &[u64]) -> Result<(), BufferError> {
        if apps.is_empty() && chats.is_empty() {
            return Ok(());
        }
        let shard = self.keys.for_token(token);
        let mut pipe = redis::pipe();
        if !apps.is_empty() {
            pipe.sadd(shard.dirty(Scope::Apps.as_str()), apps).ignore();
        }
        if !chats.is_empty() {
            pipe.sadd(shard.dirty(Scope::Chats.as_str()), chats)
                .ignore();
        }
        Ok(self
            .redis
            .call(self.timeout, |mut c| async move {
                pipe.query_async::<()>(&mut c).await
            })
            .await?)
    }

    /// Takes up to `max` marks of `scope` in `shard` under a lease of
    /// `lease`. Errors: Redis unavailable.
    pub async fn take(
        &self,
        shard: &ShardKeys,
        scope: Scope,
        max: usize,
        lease: Duration,
    ) -> Result<Option<TakenMarks>, BufferError> {
        let queue = shard.dirty_queue(scope.as_str());
        let Some(batch) = self.leases.claim(&queue, max, lease).await? else {
            return Ok(None);
        };
        // Only this service writes the sets, and only ids: anything else
        // is left out of the update (and dropped with the batch).
        let ids = batch
            .items
            .iter()
            .filter_map(|i| std::str::from_utf8(i).ok()?.parse().ok())
            .collect();
        Ok(Some(TakenMarks { scope, ids, batch }))
    }

    /// Drops taken marks once their counts are updated. Errors: Redis
    /// unavailable (the marks then come back when their lease runs out).
    pub async fn ack(&self, taken: &TakenMarks) -> Result<(), BufferError> {
        self.leases.ack(&taken.batch, &[]).await.map(|_| ())
    }

    /// Puts taken marks back (the update failed). Errors: Redis unavailable.
    pub async fn release(&self, taken: &TakenMarks) -> Result<(), BufferError> {
        self.leases.give_back(&taken.batch).await.map(|_| ())
    }

    /// Puts back the marks of refreshers whose lease expired, in every
    /// shard. Returns the number of leased batches recovered.
    pub async fn recover_expired(&self) -> Result<u64, BufferError> {
        let mut total = 0;
        for shard in self.keys.shards() {
            total += self
                .leases
                .recover_expired(&shard.dirty_lease_set())
                .await?
                .0;
        }
        Ok(total)
    }
}

/// The flusher marks the parents of every committed batch dirty, in the
/// batch's acknowledgement: application ids for chats, chat ids for messages.
impl AfterCommit for DirtyMarks {
    fn hand_on(&self, committed: &Committed<'_>) -> Result<Vec<HandOn>, BufferError> {
        if committed.parents.is_empty() {
            return Ok(Vec::new());
        }
        let scope = match committed.kind {
            Kind::Messages => Scope::Chats,
            _ => Scope::Apps,
        };
        Ok(vec![HandOn {
            key: committed.shard.dirty(scope.as_str()),
            into: Collection::Set,
            items: committed
                .parents
                .iter()
                .map(|id| id.to_string().into_bytes())
                .collect(),
        }])
    }
}

/// What one [`CountsRefresher::refresh_counts_once`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RefreshReport {
    /// Applications whose `chats_count` was recomputed.
    pub apps: u64,
    /// Chats whose `messages_count` was recomputed.
    pub chats: u64,
}

/// Recomputes the counts of dirty rows.
pub struct CountsRefresher {
    marks: DirtyMarks,
    pool: MySqlPool,
    batch_size: usize,
    lease: Duration,
}

impl CountsRefresher {
    /// A refresher taking `batch_size` ids per UPDATE, under `lease`.
    pub fn new(marks: DirtyMarks, pool: MySqlPool, batch_size: usize, lease: Duration) -> Self {
        Self {
            marks,
            pool,
            batch_size,
            lease,
        }
    }

    /// One refresh: recovers expired marks, then for applications and then
    /// chats, takes marks in batches and recomputes those rows' counts until
    /// no mark is left. Errors: Redis or MariaDB unavailable (the marks in
    /// hand are put back first).
    pub async fn refresh_counts_once(&self) -> anyhow::Result<RefreshReport> {
        self.marks.recover_expired().await?;
        let mut report = RefreshReport::default();
        let shards: Vec<ShardKeys> = self.marks.keys().shards().collect();
        for (scope, shard) in [Scope::Apps, Scope::Chats]
            .into_iter()
            .flat_map(|scope| std::iter::repeat(scope).zip(shards.iter()))
        {
            while let Some(taken) = self
                .marks
                .take(shard, scope, self.batch_size, self.lease)
                .await?
            {
                match tokio::time::timeout(
                    self.lease / 2,
                    update_counts(&self.pool, scope, &taken.ids),
                )
                .await
                {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        let _ = self.marks.release(&taken).await;
                        return Err(e.into());
                    }
                    Err(_) => {
                        let _ = self.marks.release(&taken).await;
                        anyhow::bail!("counts update took longer than half a lease");
                    }
                }
                self.marks.ack(&taken).await?;
                match scope {
                    Scope::Apps => report.apps += taken.ids.len() as u64,
                    Scope::Chats => report.chats += taken.ids.len() as u64,
                }
            }
        }
        if report != RefreshReport::default() {
            tracing::info!(?report, "counts refreshed");
        }
        Ok(report)
    }

    /// Runs `refresh_counts_once` at every time `schedule` gives, until `shutdown`.
    pub async fn run(self: Arc<Self>, schedule: cron::Schedule, shutdown: CancellationToken) {
        loop {
            let Some(next) = schedule.upcoming(chrono::Utc).next() else {
                tracing::warn!("the counts schedule has no upcoming time; counts refresh stops");
                return;
            };
            let wait = (next - chrono::Utc::now()).to_std().unwrap_or_default();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            if let Err(e) = self.refresh_counts_once().await {
                tracing::warn!(error = %e, "counts refresh failed; its marks wait for the next run");
            }
        }
    }
}

/// Recomputes the cached count of each listed row from `COUNT(*)` of its
/// live children, in two statements so that no row lock is held while
/// counting: a non-locking read of the counts (InnoDB's consistent
/// snapshot), then one short UPDATE of the listed rows by primary key.
///
/// An UPDATE with the count as a subquery held the exclusive locks of the
/// listed chats while it counted their messages (seconds, at a few hundred
/// thousand messages), and the flusher's shared-lock read of the same chats
/// (see [`crate::store::bulk::write_messages`]) waited behind it: the
/// reason the flush fell behind under load (issue 13, BENCHMARKS.md figure
/// 9). A row whose children change between the two statements was marked
/// dirty again after that change's COMMIT, so the next refresh corrects it.
/// Errors: MariaDB unavailable.
async fn update_counts(pool: &MySqlPool, scope: Scope, ids: &[u64]) -> sqlx::Result<()> {
    let (count, table, column) = match scope {
        Scope::Apps => (
            "SELECT application_id, COUNT(*) FROM chats WHERE deleted_at IS NULL AND application_id IN (",
            "applications",
            "chats_count",
        ),
        Scope::Chats => (
            "SELECT chat_id, COUNT(*) FROM messages WHERE deleted_at IS NULL AND chat_id IN (",
            "chats",
            "messages_count",
        ),
    };
    let mut qb = QueryBuilder::<MySql>::new(count);
    let mut sep = qb.separated(", ");
    for id in ids {
        sep.push_bind(*id);
    }
    qb.push(") GROUP BY 1");
    let counts: HashMap<u64, i64> = qb
        .build_query_as::<(u64, i64)>()
        .fetch_all(pool)
        .await?
        .into_iter()
        .collect();
    let mut qb = QueryBuilder::<MySql>::new("UPDATE ");
    qb.push(table).push(" SET ").push(column).push(" = CASE id");
    for id in ids {
        qb.push(" WHEN ")
            .push_bind(*id)
            .push(" THEN ")
            .push_bind(counts.get(id).copied().unwrap_or(0));
    }
    qb.push(" END WHERE id IN (");
    let mut sep = qb.separated(", ");
    for id in ids {
        sep.push_bind(*id);
    }
    qb.push(")");
    qb.build().execute(pool).await.map(|_| ())
}
