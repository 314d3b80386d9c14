//! The Redis layer: the one way the service reaches Redis.
//!
//! - [`connection`]: the pool of one node (bb8, with the epoch check on each
//!   new connection), Sentinel, Redis Cluster, and the connection type every
//!   command and script runs on;
//! - [`RedisHandle::call`]: a call on a pooled connection within the
//!   configured time limit (`REDIS_TIMEOUT_MS`), reporting a connection that
//!   failed or hung as broken. Every Redis call of the write-behind core and
//!   of the jobs goes through it.
//!
//! Above this layer: [`crate::writebehind`] (the scripts and the lease
//! queue) and [`crate::jobs`]. Below it: nothing of this crate.

pub mod connection;

use std::future::Future;
use std::time::Duration;

pub use connection::*;

impl RedisHandle {
    /// Runs `f` on a connection, within `timeout` in all (getting the
    /// connection included). A connection whose command failed at the
    /// connection level, or that did not answer in time, is reported broken
    /// so that the pool replaces it. Errors: Redis failed, refused, or gave
    /// no answer within `timeout` (an I/O `TimedOut` error).
    pub async fn call<T, F, Fut>(&self, timeout: Duration, f: F) -> redis::RedisResult<T>
    where
        F: FnOnce(RedisConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        let timed_out = || {
            redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {} ms", timeout.as_millis()),
            ))
        };
        // A multiplexed connection is a cheap handle onto one pipelined
        // socket: clone it and give the pool slot back at once.
        let (conn, broken) = tokio::time::timeout_at(deadline, self.get())
            .await
            .map_err(|_| timed_out())??;
        match tokio::time::timeout_at(deadline, f(conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                broken.note(&e);
                Err(e)
            }
            Err(_) => {
                // A connection that hangs is as good as dead.
                broken.set();
                Err(timed_out())
            }
        }
    }
}

/// Milliseconds since the Unix epoch, from the system clock (lease
/// deadlines, deferral and queue ages).
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Microseconds since the Unix epoch, from the system clock: a buffered
/// record's `created_at`, at the precision MariaDB's `DATETIME(6)` keeps.
pub fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}
