//! The Redis connection pool: bb8 over `bb8-redis`, with one change.
//!
//! `bb8-redis` checks a connection with a PING on every checkout
//! (`test_on_check_out`), which would double the round trips of the request
//! path, and its `has_broken` always says no, so without that PING a dead
//! connection (Redis restarted) would stay in the pool forever. Here checkout
//! tests are off, and a connection is reported broken once a command on it
//! failed at the connection level ([`RedisConn::note`]); bb8 then replaces it
//! the next time it comes back to the pool.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bb8_redis::RedisConnectionManager;
use redis::aio::MultiplexedConnection;

/// The pool type used everywhere.
pub type RedisPool = bb8::Pool<RedisManager>;

/// A pooled multiplexed connection and its broken flag.
pub struct RedisConn {
    /// The connection (a cheap handle onto one pipelined socket).
    pub conn: MultiplexedConnection,
    broken: Arc<AtomicBool>,
}

/// A handle that can flag its pooled connection as broken after use.
#[derive(Clone)]
pub struct BrokenFlag(Arc<AtomicBool>);

impl BrokenFlag {
    /// Flags the connection when `err` means the connection itself failed.
    pub fn note(&self, err: &redis::RedisError) {
        if err.is_io_error()
            || err.is_connection_dropped()
            || err.is_connection_refusal()
            || err.is_timeout()
        {
            self.0.store(true, Ordering::Relaxed);
        }
    }

    /// Flags the connection unconditionally (for example after a time-out).
    pub fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl RedisConn {
    /// A clone of the connection and its flag, so that the pool slot can be
    /// given back at once while the clone is used.
    pub fn split(&self) -> (MultiplexedConnection, BrokenFlag) {
        (self.conn.clone(), BrokenFlag(self.broken.clone()))
    }
}

/// `bb8_redis::RedisConnectionManager` with a working `has_broken`.
pub struct RedisManager {
    inner: RedisConnectionManager,
}

impl bb8::ManageConnection for RedisManager {
    type Connection = RedisConn;
    type Error = redis::RedisError;

    async fn connect(&self) -> Result<RedisConn, redis::RedisError> {
        Ok(RedisConn {
            conn: self.inner.connect().await?,
            broken: Arc::default(),
        })
    }

    async fn is_valid(&self, c: &mut RedisConn) -> Result<(), redis::RedisError> {
        self.inner.is_valid(&mut c.conn).await
    }

    fn has_broken(&self, c: &mut RedisConn) -> bool {
        c.broken.load(Ordering::Relaxed)
    }
}

/// Opens a pool on `url` lazily (the service starts while Redis is down):
/// at most `max_size` connections, `timeout` to get one.
/// Errors: an invalid URL.
pub fn pool(url: &str, max_size: u32, timeout: Duration) -> redis::RedisResult<RedisPool> {
    let inner = RedisConnectionManager::new(url)?;
    Ok(bb8::Pool::builder()
        .max_size(max_size)
        .connection_timeout(timeout)
        .test_on_check_out(false)
        .build_unchecked(RedisManager { inner }))
}

/// What the start-up check found out about the Redis server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSafety {
    /// `maxmemory-policy` (for example `noeviction`).
    pub maxmemory_policy: String,
    /// Whether AOF persistence is on (`aof_enabled:1`).
    pub aof_enabled: bool,
}

impl ServerSafety {
    /// Whether Redis may evict keys to make room.
    pub fn may_evict(&self) -> bool {
        self.maxmemory_policy != "noeviction"
    }
}

/// Reads `maxmemory-policy` and `aof_enabled` from `INFO` (which, unlike
/// `CONFIG GET`, managed Redis services allow). Errors: Redis unavailable.
pub async fn server_safety(pool: &RedisPool) -> anyhow::Result<ServerSafety> {
    let (mut c, _) = get(pool).await?;
    let memory: String = redis::cmd("INFO").arg("memory").query_async(&mut c).await?;
    let persistence: String = redis::cmd("INFO")
        .arg("persistence")
        .query_async(&mut c)
        .await?;
    let field = |text: &str, name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(':')))
            .map(|v| v.trim().to_string())
    };
    Ok(ServerSafety {
        maxmemory_policy: field(&memory, "maxmemory_policy").unwrap_or_else(|| "unknown".into()),
        aof_enabled: field(&persistence, "aof_enabled").as_deref() == Some("1"),
    })
}

/// Gets a connection clone and its flag from the pool. Errors: no connection
/// could be made in time.
pub async fn get(
    pool: &RedisPool,
) -> Result<(MultiplexedConnection, BrokenFlag), bb8::RunError<redis::RedisError>> {
    Ok(pool.get().await?.split())
}
