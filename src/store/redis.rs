//! The Redis connection pool: bb8 over `bb8-redis`, with two changes.
//!
//! `bb8-redis` checks a connection with a PING on every checkout
//! (`test_on_check_out`), which would double the round trips of the request
//! path, and its `has_broken` always says no, so without that PING a dead
//! connection (Redis restarted) would stay in the pool forever. Here checkout
//! tests are off, and a connection is reported broken once a command on it
//! failed at the connection level ([`RedisConn::note`]); bb8 then replaces it
//! the next time it comes back to the pool.
//!
//! And every new connection first runs the **epoch check** ([`CHECK_EPOCH`])
//! when the pool is given an epoch key: Redis may come back with less than
//! it had (a restart with AOF `everysec` or without persistence, a replica
//! promoted by a failover, an older backup restored), and each of those
//! changes the server's `run_id` or loses the key. The check then raises the
//! epoch, which tells the write-behind core to re-check its counters against
//! MariaDB before it hands out another number (see
//! [`crate::writebehind::scripts`]). All of those events break the old
//! connections, so no number is handed out on the new server before its
//! check has run; a background task also runs the check every few seconds,
//! for a key lost without a restart (`FLUSHALL`).
//!
//! With Redis Sentinel ([`RedisTarget::Sentinel`]) every new connection asks
//! the sentinels for the current master (the redis crate's
//! [`redis::sentinel::SentinelClient`], which also checks that the node it
//! names answers `ROLE` as a master). A failover breaks the connections to
//! the old master: killed, it refuses them; demoted, it answers `READONLY`,
//! which [`BrokenFlag::note`] also counts as broken. Requests answer 503 until
//! the sentinels name the promoted replica, then the pool connects to it, and
//! its epoch check (a new `run_id`) makes every counter re-check itself.

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
    /// `READONLY` (a master demoted by a failover) and `MASTERDOWN` (a
    /// replica that lost its master) count too: the next connection asks
    /// the sentinels again.
    pub fn note(&self, err: &redis::RedisError) {
        if err.is_io_error()
            || err.is_connection_dropped()
            || err.is_connection_refusal()
            || err.is_timeout()
            || matches!(err.code(), Some("READONLY" | "MASTERDOWN"))
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

/// Where the pool connects.
pub enum RedisTarget {
    /// One server, by URL (`REDIS_URL`).
    Url(String),
    /// The master that Redis Sentinel names (`REDIS_SENTINELS`,
    /// `REDIS_SENTINEL_MASTER`); `url` gives the password and database the
    /// master wants (its host and port are not used).
    Sentinel {
        /// Sentinel addresses, `host:port` each.
        sentinels: Vec<String>,
        /// The master's name in the sentinels' configuration.
        master: String,
        /// `REDIS_URL`, for the credentials and database only.
        url: String,
    },
}

enum Connector {
    Url(RedisConnectionManager),
    // The client caches its sentinel connections, so it is `&mut` to use.
    Sentinel(tokio::sync::Mutex<redis::sentinel::SentinelClient>),
}

/// `bb8_redis::RedisConnectionManager` with a working `has_broken`, the
/// epoch check on every new connection when `epoch_keys` is set, and the
/// master named by Redis Sentinel when the target is one.
pub struct RedisManager {
    inner: Connector,
    epoch_keys: Option<Vec<String>>,
    response_timeout: Duration,
}

/// Raises the epoch when the server is not the one that set it: its `run_id`
/// differs from the recorded one (a restart, a failover, a restore) or the
/// record is missing (lost, or never made).
///
/// An epoch is the server's clock in microseconds when it was raised, so
/// that it is new even when the hash itself was lost (a counter would start
/// again at a value that counters still carry); it is only ever compared for
/// equality.
///
/// There is one epoch per queue shard (see [`crate::writebehind::keys`]), so
/// that on Redis Cluster each is checked on the master that holds its shard.
///
/// KEYS: the epoch hashes (`epoch`, `run_id`), one per shard; several only on
/// a single Redis, where they share one slot space. Returns `{epoch of the
/// first, raised any (0/1)}`.
pub const CHECK_EPOCH: &str = r#"
local run_id = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
local first, raised = nil, 0
for _, key in ipairs(KEYS) do
  local epoch = redis.call('HGET', key, 'epoch')
  if not epoch or redis.call('HGET', key, 'run_id') ~= run_id then
    local t = redis.call('TIME')
    epoch = t[1] .. string.format('%06d', tonumber(t[2]))
    redis.call('HSET', key, 'epoch', epoch, 'run_id', run_id)
    raised = 1
  end
  first = first or epoch
end
return {first, raised}
"#;

/// Runs [`CHECK_EPOCH`] on `conn` against `epoch_keys` (at least one);
/// returns the epoch in force in the first. Logs a warning when it raised
/// one. Errors: Redis failed.
pub async fn check_epoch(
    conn: &mut MultiplexedConnection,
    epoch_keys: &[String],
) -> redis::RedisResult<i64> {
    static SCRIPT: std::sync::LazyLock<redis::Script> =
        std::sync::LazyLock::new(|| redis::Script::new(CHECK_EPOCH));
    let (epoch, raised): (i64, i64) = SCRIPT.key(epoch_keys).invoke_async(conn).await?;
    if raised == 1 {
        tracing::warn!(
            epoch,
            "Redis is not the server the counters were last checked on (restart, failover or restore) \
             or lost the epoch key: every counter is re-checked against MariaDB on its next use"
        );
    }
    Ok(epoch)
}

impl bb8::ManageConnection for RedisManager {
    type Connection = RedisConn;
    type Error = redis::RedisError;

    async fn connect(&self) -> Result<RedisConn, redis::RedisError> {
        let mut conn = match &self.inner {
            Connector::Url(manager) => manager.connect().await?,
            Connector::Sentinel(client) => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.response_timeout))
                    .set_response_timeout(Some(self.response_timeout));
                let mut client = client.lock().await;
                tokio::time::timeout(
                    self.response_timeout,
                    client.get_async_connection_with_config(&config),
                )
                .await
                .map_err(|_| {
                    redis::RedisError::from(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no master from the sentinels in REDIS_TIMEOUT_MS",
                    ))
                })??
            }
        };
        // Every command on this connection (and its clones) gives up after
        // the configured time, whichever path sent it.
        conn.set_response_timeout(self.response_timeout);
        if let Some(keys) = &self.epoch_keys {
            check_epoch(&mut conn, keys).await?;
        }
        Ok(RedisConn {
            conn,
            broken: Arc::default(),
        })
    }

    async fn is_valid(&self, c: &mut RedisConn) -> Result<(), redis::RedisError> {
        redis::cmd("PING").query_async::<()>(&mut c.conn).await
    }

    fn has_broken(&self, c: &mut RedisConn) -> bool {
        c.broken.load(Ordering::Relaxed)
    }
}

/// Opens a pool on `url` lazily (the service starts while Redis is down):
/// at most `max_size` connections, `timeout` to get one.
/// Errors: an invalid URL.
pub fn pool(url: &str, max_size: u32, timeout: Duration) -> redis::RedisResult<RedisPool> {
    pool_with_epoch(RedisTarget::Url(url.into()), max_size, timeout, None)
}

/// [`pool`], whose new connections first run the epoch check on
/// `epoch_keys`, every shard's (see the module docs). `timeout` bounds getting a connection
/// and every command sent on one (`REDIS_TIMEOUT_MS`). Errors: an invalid
/// URL or sentinel address.
pub fn pool_with_epoch(
    target: RedisTarget,
    max_size: u32,
    timeout: Duration,
    epoch_keys: Option<Vec<String>>,
) -> redis::RedisResult<RedisPool> {
    let inner = match target {
        RedisTarget::Url(url) => Connector::Url(RedisConnectionManager::new(url)?),
        RedisTarget::Sentinel {
            sentinels,
            master,
            url,
        } => {
            use redis::IntoConnectionInfo;
            let settings = url.into_connection_info()?.redis_settings().clone();
            let node = redis::sentinel::SentinelNodeConnectionInfo::default()
                .set_redis_connection_info(settings);
            let sentinels: Vec<String> = sentinels
                .iter()
                .map(|a| format!("redis://{}", a.trim()))
                .collect();
            Connector::Sentinel(tokio::sync::Mutex::new(
                redis::sentinel::SentinelClient::build(
                    sentinels,
                    master,
                    Some(node),
                    redis::sentinel::SentinelServerType::Master,
                )?,
            ))
        }
    };
    Ok(bb8::Pool::builder()
        .max_size(max_size)
        .connection_timeout(timeout)
        .test_on_check_out(false)
        .build_unchecked(RedisManager {
            inner,
            epoch_keys,
            response_timeout: timeout,
        }))
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
