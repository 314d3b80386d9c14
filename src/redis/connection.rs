//! The Redis connection pool: bb8 over `bb8-redis`, with two changes.
//!
//! `bb8-redis` checks a connection with a PING on every checkout
//! (`test_on_check_out`), which would double the round trips of the request
//! path, and its `has_broken` always says no, so without that PING a dead
//! connection (Redis restarted) would stay in the pool forever. Here checkout
//! tests are off, and a connection is reported broken once a command on it
//! failed at the connection level ([`BrokenFlag::note`]); bb8 then replaces it
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

impl RedisTarget {
    /// Where the Redis pool connects: the sentinels' master when
    /// `REDIS_SENTINELS` is set, else `REDIS_URL`.
    pub fn from_config(config: &crate::config::Config) -> Self {
        if config.redis_sentinels.is_empty() {
            Self::Url(config.redis_url.clone())
        } else {
            Self::Sentinel {
                sentinels: config.redis_sentinels.clone(),
                master: config.redis_sentinel_master.clone(),
                url: config.redis_url.clone(),
            }
        }
    }
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

/// Raises the epoch when the server is not the one that set it: its
/// lineage ([`LINEAGE`]: `run_id` and `master_replid`) differs from the
/// recorded one (a restart, a failover, a restore, a promotion back) or the
/// record is missing (lost, or never made).
///
/// An epoch is the server's clock in microseconds when it was raised (plus
/// the key's place in the call, since a script sees one frozen `TIME`, so
/// that shards raised together differ: a counter moved by a reshard keeps
/// its old shard's epoch and must be in doubt in the new one), so that it
/// is new even when the hash itself was lost (a counter would start again at
/// a value that counters still carry); it is only ever compared for
/// equality.
///
/// There is one epoch per queue shard (see [`crate::writebehind::keys`]), so
/// that on Redis Cluster each is checked on the master that holds its shard.
///
/// The enqueue scripts make the same `run_id` comparison themselves, on
/// every create, so a changed node is caught before its first number even
/// when no new connection ran this check (a Redis Cluster client, or a
/// replica that received the epoch hash in a full resync): see
/// [`crate::writebehind::numbering`]. A `run_id` is made at process start
/// and never written to a replica, an RDB or an AOF; a marker key, even one
/// written under `redis.set_repl(redis.REPL_NONE)`, reaches replicas in a
/// full resync's snapshot and the AOF in a rewrite, so none is used.
///
/// KEYS: the epoch hashes (`epoch`, `run_id`), one per shard; several only on
/// a single Redis, where they share one slot space. Returns `{epoch of the
/// first, raised any (0/1)}`.
pub const CHECK_EPOCH: &str = r#"
--LINEAGE
local l = lineage()
if not named(l) then return redis.error_reply(@UNNAMED_LINEAGE@) end
local first, raised = nil, 0
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
for i, key in ipairs(KEYS) do
  local epoch = redis.call('HGET', key, 'epoch')
  local rec = redis.call('HMGET', key, 'run_id', 'replid')
  if not epoch or not same_lineage(rec[1], rec[2]) then
    -- TIME is frozen for a whole script (Redis 7.2): each shard's epoch is
    -- offset by its place, so no two shards raised together share one.
    epoch = string.format('%.0f', now + i - 1)
    redis.call('HSET', key, 'epoch', epoch, 'run_id', l[1], 'replid', l[2])
    raised = 1
  end
  first = first or epoch
end
return {first, raised}
"#;

/// The Lua functions every script judging the epoch uses (spliced where a
/// script says `--LINEAGE`): `lineage()`, the server's `{run_id,
/// master_replid, master_replid2}` from one `INFO server replication` call
/// (several sections in one call: Redis 7.0 and later; read once per
/// script), and `same_lineage(run_id, replid)`, whether an epoch hash's
/// recorded `run_id` and `replid` fields name this server's lineage.
///
/// The `run_id` names the server process (made at start, never copied to a
/// replica, an RDB or an AOF). The `master_replid` follows the data's
/// replication history: a node promoted to master takes a new one and keeps
/// the old as `master_replid2`, so a master that failed over, resynced from
/// the new master and was promoted back (a manual `CLUSTER FAILOVER`) no
/// longer matches, although its `run_id` does. A master also takes a new
/// replid, with `master_replid2` cleared to zeros, when it makes or frees its
/// replication backlog (the first replica attaching, or none for
/// `repl-backlog-ttl`): no data is lost then, so a changed replid counts only
/// while `master_replid2` is set (Redis's `shiftReplicationId` against
/// `changeReplicationId` in `replication.c`). A hash without `replid` (written
/// before it was recorded) is judged by its `run_id` alone on a node never
/// promoted, so an upgrade raises no epoch by itself.
pub const LINEAGE: &str = r#"
-- {run_id, master_replid, master_replid2} from an INFO reply, '' for a
-- field it lacks.
local function parse_lineage(info)
  -- A plain find of the field's line, then the hex digits there: a
  -- pattern search ('run_id:(%x+)') tries the pattern at each of the
  -- reply's ~900 bytes, about 11-13 us of Redis CPU for the three fields
  -- against 3 us (BENCHMARKS.md, "Figure 14 with the key layout, the
  -- lineage read and one lane per kind").
  local function field(name)
    local i = string.find(info, name, 1, true)
    return i and string.match(info, '^%x+', i + #name) or ''
  end
  return {field('\nrun_id:'), field('\nmaster_replid:'), field('\nmaster_replid2:')}
end
local LINEAGE
local function lineage()
  if not LINEAGE then LINEAGE = parse_lineage(redis.call('INFO', 'server', 'replication')) end
  return LINEAGE
end
-- Whether a lineage names its server: a server or proxy whose INFO leaves
-- out run_id or master_replid would match every other one of its kind
-- (docs/numbering.md, O14), so it matches nothing.
local function named(l)
  return l[1] ~= '' and l[2] ~= ''
end
local function same_lineage(run_id, replid)
  local l = lineage()
  if not named(l) or run_id ~= l[1] then return false end
  if replid == l[2] then return true end
  return string.find(l[3], '^0+$') ~= nil
end
"#;

/// [`CHECK_EPOCH`] with [`LINEAGE`] spliced in.
pub fn check_epoch_script() -> String {
    CHECK_EPOCH
        .replace("--LINEAGE", LINEAGE)
        .replace("@UNNAMED_LINEAGE@", &format!("'{UNNAMED_LINEAGE}'"))
}

/// The error [`CHECK_EPOCH`] answers instead of setting an epoch on a
/// server whose `INFO server replication` leaves out `run_id` or
/// `master_replid` (a proxy, or a managed service that hides them): the
/// numbering could not tell a restarted or failed-over Redis there
/// (docs/numbering.md, O14). Its error code is [`UNNAMED_LINEAGE_CODE`];
/// [`check_epoch`] logs it at error level.
pub const UNNAMED_LINEAGE: &str = "UNNAMEDLINEAGE chat-api: this Redis reports no run_id or master_replid in INFO server replication, so a restart or failover behind it could not be told (docs/numbering.md, O14); connect to Redis itself, not through a proxy";

/// The error code of [`UNNAMED_LINEAGE`].
pub const UNNAMED_LINEAGE_CODE: &str = "UNNAMEDLINEAGE";

/// Runs [`CHECK_EPOCH`] on `conn` against `epoch_keys` (at least one);
/// returns the epoch in force in the first. Logs a warning when it raised
/// one. Errors: Redis failed, or refused the server
/// ([`UNNAMED_LINEAGE`], logged at error level).
pub async fn check_epoch(
    conn: &mut impl redis::aio::ConnectionLike,
    epoch_keys: &[String],
) -> redis::RedisResult<i64> {
    static SCRIPT: std::sync::LazyLock<redis::Script> =
        std::sync::LazyLock::new(|| redis::Script::new(&check_epoch_script()));
    let (epoch, raised): (i64, i64) = SCRIPT
        .key(epoch_keys)
        .invoke_async(conn)
        .await
        .inspect_err(|e| {
            if e.code() == Some(UNNAMED_LINEAGE_CODE) {
                tracing::error!(error = %e, "the epoch check refused this Redis: no number is handed out on it");
            }
        })?;
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
/// `CONFIG GET`, managed Redis services allow), on every master of a
/// cluster: the first that may evict, and AOF on only if on everywhere.
/// Errors: Redis unavailable.
pub async fn server_safety(redis: &RedisHandle) -> anyhow::Result<ServerSafety> {
    let (mut c, _) = redis.get().await?;
    let memory = c.info_all("memory").await?;
    let persistence = c.info_all("persistence").await?;
    let field = |text: &str, name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(':')))
            .map(|v| v.trim().to_string())
    };
    let policies: Vec<String> = memory
        .iter()
        .map(|m| field(m, "maxmemory_policy").unwrap_or_else(|| "unknown".into()))
        .collect();
    Ok(ServerSafety {
        maxmemory_policy: policies
            .iter()
            .find(|p| p.as_str() != "noeviction")
            .or(policies.first())
            .cloned()
            .unwrap_or_else(|| "unknown".into()),
        aof_enabled: !persistence.is_empty()
            && persistence
                .iter()
                .all(|p| field(p, "aof_enabled").as_deref() == Some("1")),
    })
}

/// Gets a connection clone and its flag from the pool. Errors: no connection
/// could be made in time.
pub async fn get(
    pool: &RedisPool,
) -> Result<(MultiplexedConnection, BrokenFlag), bb8::RunError<redis::RedisError>> {
    Ok(pool.get().await?.split())
}

/// A connection to one Redis node (from the pool) or to a Redis Cluster
/// (which routes each command by its key's slot). Cheap to clone; every
/// command and script of the service goes through it.
#[derive(Clone)]
pub enum RedisConnection {
    /// One server (`REDIS_URL`, or the master Sentinel names).
    Node(MultiplexedConnection),
    /// A Redis Cluster (`REDIS_CLUSTER_NODES`).
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Self::Node(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::Node(c) => c.req_packed_commands(cmd, offset, count),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Node(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// The Redis hash slot of `key` (CRC16 of its hash tag, or of the whole key
/// without one, modulo 16384), as the Redis Cluster specification defines it.
pub fn key_slot(key: &str) -> u16 {
    const CRC16: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_XMODEM);
    let bytes = key.as_bytes();
    let hashed = match key.find('{') {
        Some(open) => match key[open + 1..].find('}') {
            Some(len) if len > 0 => &bytes[open + 1..open + 1 + len],
            _ => bytes,
        },
        None => bytes,
    };
    CRC16.checksum(hashed) % 16384
}

impl RedisConnection {
    /// `WAIT replicas timeout_ms` on the node that holds `key` (on a cluster,
    /// the master of its slot; on one node, the node): how many replicas
    /// have this connection's writes. Errors: Redis failed.
    pub async fn wait_replicas(
        &mut self,
        key: &str,
        replicas: u32,
        timeout: Duration,
    ) -> redis::RedisResult<i64> {
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(replicas).arg(timeout.as_millis() as u64);
        match self {
            Self::Node(c) => cmd.query_async(c).await,
            Self::Cluster(c) => {
                use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
                let route = Route::new(key_slot(key), SlotAddr::Master);
                let value = c
                    .route_command(
                        cmd,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                    )
                    .await?;
                Ok(redis::from_redis_value(value)?)
            }
        }
    }

    /// The text of `INFO section` from every node that holds data: the one
    /// node, or every master of a cluster. Errors: Redis failed.
    pub async fn info_all(&mut self, section: &str) -> redis::RedisResult<Vec<String>> {
        let mut cmd = redis::cmd("INFO");
        cmd.arg(section);
        self.query_all_masters(cmd).await
    }

    /// Runs `cmd` on the one node, or on every master of a cluster, and
    /// returns each answer. Errors: Redis failed.
    pub async fn query_all_masters<T: redis::FromRedisValue>(
        &mut self,
        cmd: redis::Cmd,
    ) -> redis::RedisResult<Vec<T>> {
        match self {
            Self::Node(c) => Ok(vec![cmd.query_async(c).await?]),
            Self::Cluster(c) => {
                use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
                let value = c
                    .route_command(
                        cmd,
                        RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None)),
                    )
                    .await?;
                // One answer per node: a map of address → answer.
                let per_node: Vec<(String, T)> = match value {
                    redis::Value::Map(pairs) => pairs
                        .into_iter()
                        .map(|(k, v)| {
                            Ok((redis::from_redis_value(k)?, redis::from_redis_value(v)?))
                        })
                        .collect::<redis::RedisResult<_>>()?,
                    other => redis::from_redis_value(other)?,
                };
                Ok(per_node.into_iter().map(|(_, v)| v).collect())
            }
        }
    }

    /// Every key matching `pattern`, from every node that holds data (SCAN,
    /// so Redis is never blocked; on a cluster, SCAN on each master).
    /// Errors: Redis failed.
    pub async fn scan_all(&mut self, pattern: &str) -> redis::RedisResult<Vec<String>> {
        match self {
            Self::Node(c) => {
                use redis::AsyncCommands;
                let mut iter = c.scan_match::<_, String>(pattern).await?;
                let mut keys = Vec::new();
                while let Some(k) = futures_util::StreamExt::next(&mut iter).await {
                    keys.push(k?);
                }
                Ok(keys)
            }
            Self::Cluster(c) => {
                use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
                let masters = cluster_masters(c).await?;
                let mut keys = Vec::new();
                for (host, port) in masters {
                    let mut cursor: u64 = 0;
                    loop {
                        let mut cmd = redis::cmd("SCAN");
                        cmd.arg(cursor)
                            .arg("MATCH")
                            .arg(pattern)
                            .arg("COUNT")
                            .arg(1000);
                        let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port,
                        });
                        let (next, batch): (u64, Vec<String>) =
                            redis::from_redis_value(c.route_command(cmd, route).await?)?;
                        keys.extend(batch);
                        if next == 0 {
                            break;
                        }
                        cursor = next;
                    }
                }
                Ok(keys)
            }
        }
    }
}

/// The masters of a cluster, `(host, port)` each, from `CLUSTER SHARDS`'s
/// older sibling `CLUSTER SLOTS` (Redis 3.0+). Errors: Redis failed.
async fn cluster_masters(
    c: &mut redis::cluster_async::ClusterConnection,
) -> redis::RedisResult<Vec<(String, u16)>> {
    let slots: Vec<Vec<redis::Value>> = redis::cmd("CLUSTER").arg("SLOTS").query_async(c).await?;
    let mut masters: Vec<(String, u16)> = Vec::new();
    for range in slots {
        // [start, end, [host, port, id, …], replicas…]
        let Some(master) = range.get(2) else { continue };
        let node: Vec<redis::Value> = redis::from_redis_value_ref(master)?;
        if node.len() < 2 {
            continue;
        }
        let host: String = redis::from_redis_value_ref(&node[0])?;
        let port: u16 = redis::from_redis_value_ref(&node[1])?;
        if !masters.contains(&(host.clone(), port)) {
            masters.push((host, port));
        }
    }
    Ok(masters)
}

/// Where the service's Redis calls go: the pool of one node, or a Redis
/// Cluster connection (made on first use, so that the service starts while
/// the cluster is down). Cheap to clone.
#[derive(Clone)]
pub enum RedisHandle {
    /// One server, pooled (see [`RedisManager`]).
    Pool(RedisPool),
    /// A Redis Cluster.
    Cluster(Arc<ClusterTarget>),
}

/// A Redis Cluster client and its connection once made.
pub struct ClusterTarget {
    client: redis::cluster::ClusterClient,
    conn: tokio::sync::OnceCell<redis::cluster_async::ClusterConnection>,
}

impl From<RedisPool> for RedisHandle {
    fn from(pool: RedisPool) -> Self {
        Self::Pool(pool)
    }
}

impl RedisHandle {
    /// A handle on the Redis Cluster reachable through `nodes` (`redis://`
    /// URLs, any of its nodes), every command bounded by `timeout`. Errors:
    /// an invalid URL.
    pub fn cluster(nodes: &[String], timeout: Duration) -> redis::RedisResult<Self> {
        let client = redis::cluster::ClusterClientBuilder::new(nodes.to_vec())
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .build()?;
        Ok(Self::Cluster(Arc::new(ClusterTarget {
            client,
            conn: tokio::sync::OnceCell::new(),
        })))
    }

    /// A connection and the flag to report it broken (the pool replaces a
    /// broken node connection; a cluster connection reconnects by itself, so
    /// its flag is not looked at). Errors: no connection in time.
    pub async fn get(&self) -> redis::RedisResult<(RedisConnection, BrokenFlag)> {
        match self {
            Self::Pool(pool) => {
                let (c, flag) = get(pool).await.map_err(|e| match e {
                    bb8::RunError::User(e) => e,
                    bb8::RunError::TimedOut => redis::RedisError::from(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no Redis connection from the pool in time",
                    )),
                })?;
                Ok((RedisConnection::Node(c), flag))
            }
            Self::Cluster(target) => {
                let conn = target
                    .conn
                    .get_or_try_init(|| target.client.get_async_connection())
                    .await?
                    .clone();
                Ok((RedisConnection::Cluster(conn), BrokenFlag(Arc::default())))
            }
        }
    }

    /// Whether this is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }
}
