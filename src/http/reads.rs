//! Where a handler's read runs, and what a handler's write leaves for the
//! reads after it: the HTTP side of [`crate::store::replicas`].
//!
//! A read of an application's chats or of a chat's messages asks Redis for
//! the scope's read-your-writes mark (the GTID of its last write, if recent)
//! and gets a replica that has applied it, or the primary. A write a client
//! can observe (an edit, a delete) keeps its GTID as the mark of the scopes
//! whose reads could show it. Without `DATABASE_READ_URLS` both are free:
//! every read runs on the primary and no mark is kept.

use std::future::Future;

use sqlx::MySqlPool;

use crate::http::AppState;
use crate::store::replicas::ReadScope;

/// Which server a lookup may read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The primary: a lookup inside a write path (edit, delete), which must
    /// see the latest row.
    Primary,
    /// A replica that has applied the scope's last write, else the primary.
    Replica,
}

/// The pool for a read of `scope` in `token`'s application, `via` the
/// primary or a caught-up replica ([`crate::store::replicas::Pools::for_read`]).
/// Redis unreachable (no mark can be read): the primary, which is never
/// behind.
pub async fn pool_for<'a>(
    state: &'a AppState,
    token: &str,
    scope: ReadScope,
    via: Via,
) -> &'a MySqlPool {
    if via == Via::Primary || !state.reads.keeps_marks() {
        return &state.pool;
    }
    match state
        .write_behind
        .buffer()
        .causal_mark(token, &scope.mark())
        .await
    {
        Ok(mark) => state.reads.for_read(mark.as_deref()).await,
        Err(e) => {
            tracing::warn!(error = %e, "read-your-writes mark unreadable; reading from the primary");
            &state.pool
        }
    }
}

/// An error of a read that another server may not give: the replica went
/// away (see [`crate::store::is_unavailable`]).
pub trait ReplicaFailure {
    /// Whether the read should be tried again on the primary.
    fn replica_failed(&self) -> bool;
}

impl ReplicaFailure for sqlx::Error {
    fn replica_failed(&self) -> bool {
        crate::store::is_unavailable(self)
    }
}

impl ReplicaFailure for crate::store::search::SearchError {
    fn replica_failed(&self) -> bool {
        matches!(self, Self::Database(e) if crate::store::is_unavailable(e))
    }
}

/// Runs `query` (given the pool, by value) on the pool for `scope`
/// ([`pool_for`]); when it ran on a replica and failed because the replica
/// went away (down since the last check, at most
/// [`crate::store::replicas::CHECK_INTERVAL`] ago), runs it again on the
/// primary (`chat_read_primary_fallbacks_total{reason="read_failed"}`).
/// Errors: those of `query` on the primary.
pub async fn read<T, E, Q, F>(
    state: &AppState,
    token: &str,
    scope: ReadScope,
    via: Via,
    query: Q,
) -> Result<T, E>
where
    E: ReplicaFailure + std::fmt::Display,
    Q: Fn(MySqlPool) -> F,
    F: Future<Output = Result<T, E>>,
{
    let pool = pool_for(state, token, scope, via).await;
    on_replica_or_primary(state, pool, query).await
}

/// [`read`] of one row that may not be on the replica yet: a miss there
/// (`None`) is asked of the primary, which decides (the row may have been
/// stored since the replica's last apply, or never). Errors: as [`read`].
pub async fn find<T, E, Q, F>(
    state: &AppState,
    token: &str,
    scope: ReadScope,
    via: Via,
    query: Q,
) -> Result<Option<T>, E>
where
    E: ReplicaFailure + std::fmt::Display,
    Q: Fn(MySqlPool) -> F,
    F: Future<Output = Result<Option<T>, E>>,
{
    let pool = pool_for(state, token, scope, via).await;
    match on_replica_or_primary(state, pool, &query).await? {
        None if !std::ptr::eq(pool, &state.pool) => query(state.pool.clone()).await,
        found => Ok(found),
    }
}

/// [`read`] for a read of no scope (the application list, the operator
/// listings): any replica in rotation, no wait.
pub async fn read_unscoped<T, E, Q, F>(state: &AppState, query: Q) -> Result<T, E>
where
    E: ReplicaFailure + std::fmt::Display,
    Q: Fn(MySqlPool) -> F,
    F: Future<Output = Result<T, E>>,
{
    let pool = state.reads.for_read(None).await;
    on_replica_or_primary(state, pool, query).await
}

async fn on_replica_or_primary<T, E, Q, F>(
    state: &AppState,
    pool: &MySqlPool,
    query: Q,
) -> Result<T, E>
where
    E: ReplicaFailure + std::fmt::Display,
    Q: Fn(MySqlPool) -> F,
    F: Future<Output = Result<T, E>>,
{
    // (The query gets the pool by value, a cheap handle, so that its
    // future borrows nothing of ours and stays `Send` in a handler.)
    match query(pool.clone()).await {
        Err(e) if !std::ptr::eq(pool, &state.pool) && e.replica_failed() => {
            tracing::warn!(error = %e, "a read on a replica failed; reading from the primary");
            crate::telemetry::metrics::primary_fallback(
                crate::store::replicas::Fallback::ReadFailed.as_str(),
            );
            query(state.pool.clone()).await
        }
        done => done,
    }
}

/// Keeps `gtid` (the GTID a write committed, `None` when there is none to
/// keep) as the last write of each of `scopes` of `token`'s application,
/// for [`crate::store::replicas::Pools::mark_ttl`]. A failure (Redis down)
/// is logged: the write stands, and reads of those scopes may then lag
/// behind it by at most `READ_REPLICA_MAX_LAG_SECS` (replicas that lag more
/// get no reads).
pub async fn keep_marks(state: &AppState, token: &str, scopes: &[ReadScope], gtid: Option<String>) {
    let Some(gtid) = gtid else {
        return;
    };
    let scopes: Vec<String> = scopes.iter().map(ReadScope::mark).collect();
    if let Err(e) = state
        .write_behind
        .buffer()
        .keep_causal_marks(token, &scopes, &gtid, state.reads.mark_ttl())
        .await
    {
        tracing::warn!(error = %e, "could not keep a read-your-writes mark; replica reads of this scope may lag until the replicas catch up");
    }
}
