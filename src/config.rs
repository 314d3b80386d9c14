//! Every setting of the service, read from the environment (and from `.env`
//! when present, see [`crate::startup::load_dotenv`]).
//!
//! Each field is also a command-line flag, so `chat-api serve --help` lists
//! them with their defaults. An invalid value stops start-up with clap's
//! message, which names the variable (`[env: CHAT_BATCH_SIZE=abc]`).

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use clap::Args;

/// `DATABASE_URL`'s default: the `chat` user `scripts/services.sh` creates
/// (all rights on the `chat%` databases), not root.
pub const DEFAULT_DATABASE_URL: &str = "mysql://chat:chat@127.0.0.1:3306/chat_api";

/// The settings that may hold a secret, each of which can instead be read
/// from the file named by `<NAME>_FILE` (Docker and Kubernetes secrets are
/// mounted as files): a value in a file stays out of the process's
/// environment, of `docker inspect` and of `ps e`.
pub const SECRET_FILE_VARIABLES: [&str; 6] = [
    "DATABASE_URL",
    "DATABASE_READ_URLS",
    "REDIS_URL",
    "REDIS_CLUSTER_NODES",
    "MEILI_API_KEY",
    "ADMIN_API_KEY",
];

/// The value of secret `name` from the file `<name>_FILE` names, read with
/// `var` (the environment, in the service), without its trailing line end;
/// `None` when `<name>_FILE` is unset. An empty variable counts as unset.
/// Errors: both `name` and `<name>_FILE` set (which one wins would be a
/// guess), or the file cannot be read.
pub fn secret_from_file(
    name: &str,
    var: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<Option<String>> {
    // An empty variable counts as unset (compose writes `NAME: ${NAME:-}`).
    let set = |n: &str| var(n).filter(|v| !v.is_empty());
    let Some(path) = set(&format!("{name}_FILE")) else {
        return Ok(None);
    };
    anyhow::ensure!(
        set(name).is_none(),
        "{name} and {name}_FILE are both set: set one of them"
    );
    let text = std::fs::read_to_string(&path)
        .map_err(|e| anyhow::anyhow!("{name}_FILE: cannot read {path}: {e}"))?;
    Ok(Some(text.trim_end_matches(['\n', '\r']).to_string()))
}

/// Settings of a running service (`serve`) and of the flusher inside it.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// MariaDB (or MySQL) connection URL, with its password (hidden in
    /// `--help`), or the content of the file `DATABASE_URL_FILE` names. The
    /// default user is `chat` (the one `scripts/services.sh` creates), not
    /// root.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = DEFAULT_DATABASE_URL,
        hide_env_values = true
    )]
    pub database_url: String,

    /// Maximum number of pooled MariaDB connections.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 10)]
    pub database_max_connections: u32,

    /// MariaDB replicas for reads (comma-separated URLs, each a replica of
    /// `DATABASE_URL` by GTID, same database name). Lists, lookups of
    /// stored records, search on the MariaDB backend and the operator
    /// listings are spread over them, each read of an application or chat
    /// waiting first for that scope's last write (read-your-writes, see
    /// `src/store/replicas.rs`). Unset: every read goes to the primary.
    #[arg(
        long,
        env = "DATABASE_READ_URLS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub database_read_urls: Vec<String>,

    /// Milliseconds a read waits on a replica for the last write of its
    /// scope (`MASTER_GTID_WAIT`) before it goes to the primary instead.
    #[arg(long, env = "READ_REPLICA_WAIT_MS", default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub read_replica_wait_ms: u64,

    /// Seconds a replica may lag and stay in rotation, checked every
    /// second: its `Seconds_Behind_Master`, and how long ago the oldest
    /// primary GTID position it has not applied was first seen. One that
    /// lags more, whose SQL thread is stopped, or that does not answer,
    /// gets no reads until it is back within the limit. A write's GTID is
    /// kept in Redis for this plus 10 s.
    #[arg(long, env = "READ_REPLICA_MAX_LAG_SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub read_replica_max_lag_secs: u64,

    /// Redis connection URL (`redis://:PASSWORD@host:6379` with
    /// `requirepass`; hidden in `--help`), or the content of the file
    /// `REDIS_URL_FILE` names. Redis holds the counters and the
    /// write-behind buffer.
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    pub redis_url: String,

    /// Prefix of every Redis key the service uses, so that several deployments
    /// (or tests) can share one Redis.
    #[arg(long, env = "REDIS_KEY_PREFIX", default_value = "chat:")]
    pub redis_key_prefix: String,

    /// Redis Cluster nodes (comma-separated `redis://` URLs, any of its
    /// nodes; the rest are discovered). When set, the service runs against
    /// the cluster: each queue shard's keys share one hash slot, so every
    /// script runs on one master, and the shards spread over the masters.
    /// Replaces `REDIS_URL`; not with `REDIS_SENTINELS`.
    #[arg(
        long,
        env = "REDIS_CLUSTER_NODES",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub redis_cluster_nodes: Vec<String>,

    /// Redis Sentinel addresses (comma-separated `host:port`). When set, the
    /// service asks them for the master named `REDIS_SENTINEL_MASTER` and
    /// follows a failover by itself (503 during the switch, then 201 again);
    /// `REDIS_URL` then gives only the password and database.
    #[arg(long, env = "REDIS_SENTINELS", value_delimiter = ',')]
    pub redis_sentinels: Vec<String>,

    /// The master's name in the sentinels' configuration (`sentinel monitor
    /// <name> …`), with `REDIS_SENTINELS`.
    #[arg(long, env = "REDIS_SENTINEL_MASTER", default_value = "mymaster")]
    pub redis_sentinel_master: String,

    /// Seconds a counter (a chat's, or an application's chat counter) must
    /// stay unchanged, with everything it handed out stored in MariaDB,
    /// before it is evicted from Redis; it comes back exactly on its next
    /// use (see `src/jobs/idle.rs`). Bounds Redis's memory per chat. 0: never.
    #[arg(long, env = "CHAT_IDLE_SECS", default_value_t = 3600)]
    pub chat_idle_secs: u64,

    /// The largest block of numbers a counter reserves in MariaDB at once
    /// (see docs/numbering.md). A scope's block holds about two minutes of
    /// its own create rate, from 16 up to this, and the next one is reserved
    /// in the background when half of it is left, so that creates ride out
    /// a MariaDB stall of about a minute. Larger: fewer SQL writes and a
    /// longer stall ridden out in a hot chat. Smaller: fewer numbers skipped
    /// when Redis loses data (under 1.5 blocks never handed out per scope
    /// and loss event).
    #[arg(long, env = "NUMBER_BLOCK_MAX", default_value_t = 2048, value_parser = clap::value_parser!(i64).range(16..=1_000_000))]
    pub number_block_max: i64,

    /// Time limit of each SQL statement numbering runs on the request path
    /// (reserving a block, restarting a counter), in milliseconds. Past it
    /// the create answers 503 instead of waiting on a MariaDB that hangs.
    #[arg(long, env = "NUMBERING_SQL_TIMEOUT_MS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    pub numbering_sql_timeout_ms: u64,

    /// Maximum number of pooled Redis connections.
    #[arg(long, env = "REDIS_POOL_SIZE", default_value_t = 16)]
    pub redis_pool_size: u32,

    /// Time limit of one Redis command from the request path, in milliseconds.
    /// Past it the request answers 503 instead of hanging.
    #[arg(long, env = "REDIS_TIMEOUT_MS", default_value_t = 2000)]
    pub redis_timeout_ms: u64,

    /// What a `201` for a chat or a message promises about Redis:
    /// `memory` (it is in Redis's memory; the default), `replica` (at least
    /// one replica has it: a group-commit round of `WAIT 1 REDIS_WAIT_MS` on
    /// a connection of its own after the enqueue, else 503), or `fsync` (start-up refuses a Redis whose `appendfsync` is not
    /// `always`, so it is on the primary's disk).
    #[arg(long, env = "REDIS_DURABILITY", value_enum, default_value_t = Durability::Memory)]
    pub redis_durability: Durability,

    /// With `REDIS_DURABILITY=replica`: how long a create waits for a replica
    /// to confirm its write, in milliseconds (less than `REDIS_TIMEOUT_MS`).
    #[arg(long, env = "REDIS_WAIT_MS", default_value_t = 500)]
    pub redis_wait_ms: u64,

    /// Address and port the HTTP server listens on (port 0 picks a free port).
    #[arg(long, env = "BIND_ADDR", default_value = "127.0.0.1:3000")]
    pub bind_addr: SocketAddr,

    /// Address and port of a second, operator-only listener (port 0 picks a
    /// free port). When set, the operator surface (`/api/v1/admin/...`,
    /// `/metrics` and the key-protected `GET /api/v1/applications`) is served
    /// only there, and the public listener (`BIND_ADDR`) answers 404 for it.
    /// Unset: everything is served on `BIND_ADDR`.
    #[arg(long, env = "ADMIN_BIND_ADDR")]
    pub admin_bind_addr: Option<SocketAddr>,

    /// Serve `GET /api/v1/applications` (every application, with its token)
    /// to anyone, as the original chat-system challenge did. Every token is
    /// then public, so anyone can read, change and delete every application:
    /// for demos only. Default false: the listing needs the operator key.
    #[arg(long, env = "PUBLIC_APPLICATION_LIST")]
    pub public_application_list: bool,

    /// Serve the live demo page at `GET /demo` (see [`crate::http::demo`]):
    /// it creates applications and posts messages through the public API,
    /// as any client may, and holds no secret. Default true; false hides
    /// it (then `/demo` is a 404).
    #[arg(long, env = "DEMO_PAGE", default_value_t = true, action = clap::ArgAction::Set)]
    pub demo_page: bool,

    /// Shards the queues are cut into: an application's records go to shard
    /// `CRC16(token) mod QUEUE_SHARDS`, and every key of a shard carries one
    /// Redis Cluster hash tag, so shards spread over a cluster's masters and
    /// flush in parallel. Recorded in Redis at the first start-up; an instance
    /// started with another count refuses to start until `chat-api reshard`
    /// has moved the data (see docs/scaling.md). `MAX_PENDING`,
    /// `PENDING_HIGH_WATER` and `MAX_PENDING_BYTES` are split evenly over the
    /// shards.
    #[arg(long, env = "QUEUE_SHARDS", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub queue_shards: u16,

    /// Flush tasks per instance. A pass hands the shards out in turn, one
    /// shard to one task at a time, so two tasks never write the same
    /// shard's batches at once; within a shard, chats go before messages.
    #[arg(long, env = "FLUSH_WORKERS", default_value = "2")]
    pub flush_workers: NonZeroUsize,

    /// Pending chats that wake the flusher (rows per multi-row INSERT).
    #[arg(long, env = "CHAT_BATCH_SIZE", default_value = "500")]
    pub chat_batch_size: NonZeroUsize,

    /// Pending messages that wake the flusher (rows per multi-row INSERT).
    /// 5000 was the fastest of 250, 1000, 2000 and 5000 in BENCHMARKS.md (figure 3).
    #[arg(long, env = "MESSAGE_BATCH_SIZE", default_value = "5000")]
    pub message_batch_size: NonZeroUsize,

    /// Seconds between timer-triggered flushes; also the longest time a record
    /// waits in Redis before it is written to MariaDB (while MariaDB is up).
    #[arg(long, env = "FLUSH_INTERVAL_SECS", default_value = "60", value_parser = parse_nonzero_secs)]
    pub flush_interval: Duration,

    /// Longest time, in ms, a shard that holds records goes without a flush
    /// (the maximum age of a batch, Vector's `batch.timeout_secs`): the
    /// flusher checks every quarter of it, so a record waits in Redis at
    /// most 1.25 times this (plus the write) while MariaDB is up, whatever
    /// the rate. It bounds how late a message becomes searchable. 0 turns
    /// it off: then only `*_BATCH_SIZE` and `FLUSH_INTERVAL_SECS` trigger.
    #[arg(long, env = "FLUSH_MAX_AGE_MS", default_value_t = 2000)]
    pub flush_max_age_ms: u64,

    /// Pending records per queue, in total over every shard, past which
    /// creation answers 503 with `Retry-After` (backpressure). A single
    /// application may fill it up to `MAX_PENDING_PER_APPLICATION`.
    #[arg(long, env = "MAX_PENDING", default_value_t = 1_000_000)]
    pub max_pending: u64,

    /// Records one application may have waiting to be stored (chats and
    /// messages, pending or claimed) before its creates answer 503 with
    /// `Retry-After`, so that one tenant cannot take the whole buffer;
    /// counted exactly in the enqueue script. Default: a tenth of
    /// `MAX_PENDING`; 0: no cap.
    #[arg(long, env = "MAX_PENDING_PER_APPLICATION")]
    pub max_pending_per_application: Option<u64>,

    /// Pending records per queue, in total over every shard, past which a
    /// growing share of creates is
    /// refused with 503 and `Retry-After`, before `MAX_PENDING` is reached:
    /// 0 at this mark, rising linearly to 90% at `MAX_PENDING` (load
    /// shedding, so that clients slow down before the cliff). A value at or
    /// above `MAX_PENDING` turns it off.
    #[arg(long, env = "PENDING_HIGH_WATER", default_value_t = 500_000)]
    pub pending_high_water: u64,

    /// How long an `Idempotency-Key` is remembered, in seconds: a retry with
    /// the same key within it gets the first answer and creates nothing.
    #[arg(long, env = "IDEMPOTENCY_TTL_SECS", default_value = "86400", value_parser = parse_nonzero_secs)]
    pub idempotency_ttl: Duration,

    /// How long an application create under an `Idempotency-Key` holds the
    /// key as in progress, in seconds: a second request meanwhile gets 409.
    /// A create whose process died mid-way leaves its key in progress this
    /// long; then a retry starts again.
    #[arg(long, env = "IDEMPOTENCY_IN_PROGRESS_SECS", default_value = "60", value_parser = parse_nonzero_secs)]
    pub idempotency_in_progress: Duration,

    /// Bytes of queued records per queue, in total over every shard (counted
    /// exactly as records enter and leave), past which creation answers 503
    /// with `Retry-After`, like `MAX_PENDING`; 0: no limit. Keeps a MariaDB
    /// outage from filling Redis with large messages.
    #[arg(long, env = "MAX_PENDING_BYTES", default_value_t = 536_870_912)]
    pub max_pending_bytes: u64,

    /// Largest accepted message body, in bytes of UTF-8.
    #[arg(long, env = "MAX_MESSAGE_BYTES", default_value_t = 65_536, value_parser = clap::value_parser!(u32).range(1..=16_000_000))]
    pub max_message_bytes: u32,

    /// Largest accepted HTTP request body, in bytes; larger requests get 413.
    #[arg(long, env = "MAX_REQUEST_BYTES", default_value_t = 1_048_576)]
    pub max_request_bytes: usize,

    /// How long a flusher owns a claimed batch, in seconds. A batch whose lease
    /// expired without an acknowledgement is claimed again by any instance.
    #[arg(long, env = "LEASE_SECS", default_value = "30", value_parser = parse_nonzero_secs)]
    pub lease: Duration,

    /// How long a message may wait for its chat to reach MariaDB before it is
    /// dead-lettered, in seconds.
    #[arg(long, env = "ORPHAN_MAX_AGE_SECS", default_value = "3600", value_parser = parse_nonzero_secs)]
    pub orphan_max_age: Duration,

    /// How long GET, PUT or DELETE of a still-buffered record waits for the
    /// flush that stores it, in milliseconds, before answering 503.
    #[arg(long, env = "READ_YOUR_WRITES_TIMEOUT_MS", default_value_t = 5000)]
    pub read_your_writes_timeout_ms: u64,

    /// When to refresh `chats_count` and `messages_count`: a cron expression
    /// with six fields, seconds first (default: every minute).
    #[arg(long, env = "COUNTS_REFRESH_CRON", default_value = "0 * * * * *", value_parser = parse_cron)]
    pub counts_refresh_cron: cron::Schedule,

    /// Ids per counts UPDATE statement.
    #[arg(long, env = "COUNTS_BATCH_SIZE", default_value = "500")]
    pub counts_batch_size: NonZeroUsize,

    /// Requests per minute allowed to one client IP; 0 disables the limit.
    #[arg(long, env = "RATE_LIMIT_PER_MINUTE", default_value_t = 600)]
    pub rate_limit_per_minute: u32,

    /// Requests one client IP may send at once before the per-minute rate
    /// applies (the bucket size).
    #[arg(long, env = "RATE_LIMIT_BURST", default_value_t = 100)]
    pub rate_limit_burst: u32,

    /// Length of the prefix that identifies one IPv6 client for the rate
    /// limit, in bits (0 to 128). One host usually controls a whole /64, so
    /// keying on the full address would let it rotate addresses to escape the
    /// limit. IPv4 clients are keyed by their full address.
    #[arg(long, env = "RATE_LIMIT_IPV6_PREFIX", default_value_t = 64, value_parser = clap::value_parser!(u8).range(0..=128))]
    pub rate_limit_ipv6_prefix: u8,

    /// Comma-separated CIDRs of reverse proxies whose `X-Forwarded-For` is
    /// trusted (for example `10.0.0.0/8,127.0.0.1/32`). Empty: trust none,
    /// and the client IP is the socket's peer address.
    #[arg(long, env = "TRUSTED_PROXIES", default_value = "", value_parser = parse_cidrs)]
    pub trusted_proxies: TrustedProxies,

    /// Fault injection for the crash tests: the flusher sleeps this long
    /// between committing a batch and acknowledging it, in milliseconds, so
    /// that a kill can land inside a flush. 0 (the default) in production.
    #[arg(long, env = "FAULT_FLUSH_DELAY_MS", default_value_t = 0, hide = true)]
    pub fault_flush_delay_ms: u64,

    /// Start even when Redis may evict keys (`maxmemory-policy` other than
    /// `noeviction`), with a warning. Eviction silently loses buffered
    /// records and counters, so by default the service refuses to start.
    #[arg(long, env = "ALLOW_REDIS_EVICTION")]
    pub allow_redis_eviction: bool,

    /// Meilisearch URL (for example `http://127.0.0.1:7700`). Unset: search
    /// uses the term index in MariaDB instead (`src/store/search/terms.rs`).
    #[arg(long, env = "MEILI_URL")]
    pub meili_url: Option<String>,

    /// Meilisearch API key (the master key or a key allowed to search,
    /// index documents and change settings). Optional.
    #[arg(long, env = "MEILI_API_KEY", hide_env_values = true)]
    pub meili_api_key: Option<String>,

    /// How often the search indexer looks for queued index changes, in
    /// milliseconds (either backend). A message is searchable about this
    /// long after its flush, plus the time to index it.
    #[arg(long, env = "SEARCH_INDEX_INTERVAL_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub search_index_interval_ms: u64,

    /// Time limit of one search, in milliseconds: every SQL statement of a
    /// search of the term index runs under what is left of it (MariaDB's
    /// `max_statement_time`, which interrupts the statement on the server),
    /// and a Meilisearch request is abandoned past it. Past it the search
    /// answers 503 with `Retry-After`.
    #[arg(long, env = "SEARCH_TIMEOUT_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub search_timeout_ms: u64,

    /// Searches per minute allowed to one application (all its chats and
    /// clients together), on top of the per-IP limit; 0 disables it. Past
    /// it the search answers 429 with `Retry-After`, and other applications'
    /// searches are not affected.
    #[arg(long, env = "SEARCH_RATE_PER_MINUTE", default_value_t = 600)]
    pub search_rate_per_minute: u32,

    /// Searches one application may send at once before
    /// `SEARCH_RATE_PER_MINUTE` applies (the bucket size).
    #[arg(long, env = "SEARCH_RATE_BURST", default_value_t = 60)]
    pub search_rate_burst: u32,

    /// Batches of index changes the search indexer applies at once (each
    /// its own transaction or Meilisearch task). 2 lets MariaDB write the
    /// term index on two cores.
    #[arg(long, env = "SEARCH_INDEX_WORKERS", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub search_index_workers: u64,

    /// Name of the Meilisearch index.
    #[arg(long, env = "MEILI_INDEX", default_value = "messages")]
    pub meili_index: String,

    /// Bearer key of the operator API (`/api/v1/admin/...`). Unset: the
    /// operator API is off and every admin path answers 404. Use a long random
    /// value (for example `openssl rand -base64 32`); it is compared in
    /// constant time and never logged. Set it in the environment rather than
    /// as a flag, which other users can read in `ps`.
    #[arg(long, env = "ADMIN_API_KEY", hide_env_values = true)]
    pub admin_api_key: Option<secrecy::SecretString>,

    /// Name of this instance, shown as the owner of the batches it is
    /// flushing (`GET /api/v1/admin/queues`). Default: `{hostname}-{pid}`.
    #[arg(long, env = "INSTANCE_ID")]
    pub instance_id: Option<String>,

    /// Seconds a client connection may stay silent (nothing read or written)
    /// between requests (keep-alive), or within a request's body or
    /// response, before it is closed. Keep it above the longest request
    /// (`POST /admin/flush`, 30 s). See `src/http/connections.rs`.
    #[arg(long, env = "IDLE_TIMEOUT_SECS", default_value = "60", value_parser = parse_nonzero_secs)]
    pub idle_timeout: Duration,

    /// Seconds a request's header may take, from its first byte, before the
    /// connection is closed, however slowly it keeps sending (slowloris).
    #[arg(long, env = "HEADER_READ_TIMEOUT_SECS", default_value = "10", value_parser = parse_nonzero_secs)]
    pub header_read_timeout: Duration,

    /// Client connections open at once (both listeners together); past it
    /// new connections wait in the listen backlog until one closes. Keep it
    /// below the process's open-file limit (`ulimit -n`) minus the pools.
    #[arg(long, env = "MAX_CONNECTIONS", default_value = "10000", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Seconds the service gives itself on SIGTERM/Ctrl-C to drain the buffer.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECS", default_value = "30", value_parser = parse_nonzero_secs)]
    pub shutdown_timeout: Duration,

    /// Seconds between the comment lines (`:`) a live event stream
    /// (`…/chats/{number}/events`) sends while nothing happens, so that
    /// proxies and `IDLE_TIMEOUT_SECS` keep it open.
    #[arg(long, env = "STREAM_HEARTBEAT_SECS", default_value = "15", value_parser = parse_nonzero_secs)]
    pub stream_heartbeat: Duration,

    /// Milliseconds a client of a live event stream waits before it
    /// reconnects (the stream's `retry:` field).
    #[arg(long, env = "STREAM_RETRY_MS", default_value_t = 2000)]
    pub stream_retry_ms: u64,

    /// Live event streams one application may hold open, over every
    /// instance (more: 429); 0: no limit.
    #[arg(long, env = "MAX_STREAMS_PER_APPLICATION", default_value_t = 100)]
    pub max_streams_per_application: usize,

    /// Events a live subscriber may have waiting to be sent; a slower one
    /// is closed (it resumes from its last event id).
    #[arg(long, env = "LIVE_SUBSCRIBER_BUFFER", default_value = "1024", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub live_subscriber_buffer: u64,

    /// About how many events each watched chat's Redis stream keeps for
    /// resumes (`XADD MAXLEN ~`); an older resume replays the creates it
    /// missed from MariaDB (see `LIVE_REPLAY_MAX`), or gets a `reset` event.
    /// Bounds a watched chat's stream to about this many bodies in Redis.
    #[arg(long, env = "LIVE_STREAM_MAXLEN", default_value = "1000", value_parser = clap::value_parser!(u64).range(1..))]
    pub live_stream_maxlen: u64,

    /// Most messages a resume older than the chat's stream replays from
    /// MariaDB plus the write-behind buffer (in pages of 100); a resume that
    /// missed more gets a `reset` event (the client re-lists by cursor).
    /// 0: never replay.
    #[arg(long, env = "LIVE_REPLAY_MAX", default_value_t = 10_000)]
    pub live_replay_max: u64,
}

impl Config {
    /// Replaces each secret setting ([`SECRET_FILE_VARIABLES`]) whose
    /// `<NAME>_FILE` is set in the environment with that file's content
    /// (lists split on commas). Errors: as [`secret_from_file`].
    pub fn read_secret_files(&mut self) -> anyhow::Result<()> {
        self.read_secret_files_with(|name| std::env::var(name).ok())
    }

    /// [`Self::read_secret_files`] with the variables read by `var`.
    pub fn read_secret_files_with(
        &mut self,
        var: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<()> {
        let list = |v: String| -> Vec<String> {
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        };
        if let Some(v) = secret_from_file("DATABASE_URL", &var)? {
            self.database_url = v;
        }
        if let Some(v) = secret_from_file("DATABASE_READ_URLS", &var)? {
            self.database_read_urls = list(v);
        }
        if let Some(v) = secret_from_file("REDIS_URL", &var)? {
            self.redis_url = v;
        }
        if let Some(v) = secret_from_file("REDIS_CLUSTER_NODES", &var)? {
            self.redis_cluster_nodes = list(v);
        }
        if let Some(v) = secret_from_file("MEILI_API_KEY", &var)? {
            self.meili_api_key = Some(v);
        }
        if let Some(v) = secret_from_file("ADMIN_API_KEY", &var)? {
            self.admin_api_key = Some(v.into());
        }
        Ok(())
    }

    /// Time limit of one Redis call on the request path.
    pub fn redis_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms)
    }

    /// `MAX_PENDING_PER_APPLICATION`, or its default: a tenth of
    /// `MAX_PENDING` (at least 1).
    pub fn max_pending_per_application(&self) -> u64 {
        self.max_pending_per_application
            .unwrap_or((self.max_pending / 10).max(1))
    }

    /// This instance's name: `INSTANCE_ID`, or `{hostname}-{pid}`.
    pub fn instance_id(&self) -> String {
        self.instance_id.clone().unwrap_or_else(|| {
            format!(
                "{}-{}",
                gethostname::gethostname().to_string_lossy(),
                std::process::id()
            )
        })
    }

    /// The time limit of one search (`SEARCH_TIMEOUT_MS`).
    pub fn search_timeout(&self) -> Duration {
        Duration::from_millis(self.search_timeout_ms)
    }

    /// The search indexer's poll interval (`SEARCH_INDEX_INTERVAL_MS`).
    pub fn search_index_interval(&self) -> Duration {
        Duration::from_millis(self.search_index_interval_ms)
    }

    /// Bound on waiting for a buffered record to reach MariaDB.
    pub fn read_your_writes_timeout(&self) -> Duration {
        Duration::from_millis(self.read_your_writes_timeout_ms)
    }
}

/// What a `201` promises about Redis (`REDIS_DURABILITY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Durability {
    /// In Redis's memory: lost if Redis dies before persisting or
    /// replicating it (as with AOF `everysec`, up to about a second).
    Memory,
    /// On at least one replica too (`WAIT 1 REDIS_WAIT_MS`), else 503; and
    /// a batch is flushed to MariaDB only once a replica has it, so that a
    /// failover never drops the Redis side of a stored record.
    Replica,
    /// On the primary's disk: Redis must run `appendfsync always`.
    Fsync,
}

/// Parses a whole, non-zero number of seconds.
fn parse_nonzero_secs(s: &str) -> Result<Duration, String> {
    let secs: u64 = s
        .trim()
        .parse()
        .map_err(|e| format!("expected whole seconds: {e}"))?;
    if secs == 0 {
        return Err("must be at least 1 second".into());
    }
    Ok(Duration::from_secs(secs))
}

/// Parses a six-field cron expression (seconds first), as the `cron` crate does.
fn parse_cron(s: &str) -> Result<cron::Schedule, String> {
    use std::str::FromStr;
    cron::Schedule::from_str(s.trim()).map_err(|e| {
        format!("not a six-field cron expression (sec min hour day month weekday): {e}")
    })
}

/// The proxies whose `X-Forwarded-For` header is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(pub Vec<ipnet::IpNet>);

impl TrustedProxies {
    /// Whether `ip` is one of the trusted proxies.
    pub fn contains(&self, ip: &std::net::IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(ip))
    }
}

/// Parses comma-separated CIDRs; a bare address means that one host.
fn parse_cidrs(s: &str) -> Result<TrustedProxies, String> {
    let mut nets = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let net = part
            .parse::<ipnet::IpNet>()
            .or_else(|_| part.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| format!("`{part}` is not a CIDR (like 10.0.0.0/8) or an IP address"))?;
        nets.push(net);
    }
    Ok(TrustedProxies(nets))
}

#[cfg(test)]
mod secret_file_tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }

    fn config() -> Config {
        Cli::parse_from(["chat-api"]).config
    }

    #[test]
    fn secrets_are_read_from_their_files_without_the_line_end() {
        let dir = std::env::temp_dir().join(format!("chat-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("db");
        std::fs::write(&db, "mysql://chat:s3cret@db:3306/chat_api\n").unwrap();
        let key = dir.join("key");
        std::fs::write(&key, "0123456789abcdef0123\r\n").unwrap();
        let replicas = dir.join("replicas");
        std::fs::write(&replicas, "mysql://a/x, mysql://b/x\n").unwrap();
        let env = [
            ("DATABASE_URL_FILE", db.display().to_string()),
            ("ADMIN_API_KEY_FILE", key.display().to_string()),
            ("DATABASE_READ_URLS_FILE", replicas.display().to_string()),
        ];
        let var = |name: &str| env.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone());
        let mut c = config();
        c.read_secret_files_with(var).unwrap();
        assert_eq!(c.database_url, "mysql://chat:s3cret@db:3306/chat_api");
        use secrecy::ExposeSecret;
        assert_eq!(
            c.admin_api_key.as_ref().unwrap().expose_secret(),
            "0123456789abcdef0123"
        );
        assert_eq!(c.database_read_urls, ["mysql://a/x", "mysql://b/x"]);
        assert_eq!(c.redis_url, "redis://127.0.0.1:6379", "untouched");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_empty_variable_beside_its_file_counts_as_unset() {
        let dir = std::env::temp_dir().join(format!("chat-secrets-empty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("key");
        std::fs::write(&key, "0123456789abcdef0123\n").unwrap();
        let env = [
            ("ADMIN_API_KEY", String::new()),
            ("ADMIN_API_KEY_FILE", key.display().to_string()),
        ];
        let var = |name: &str| env.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone());
        let mut c = config();
        c.read_secret_files_with(var).unwrap();
        use secrecy::ExposeSecret;
        assert_eq!(
            c.admin_api_key.as_ref().unwrap().expose_secret(),
            "0123456789abcdef0123"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_secret_set_twice_or_a_missing_file_is_an_error() {
        let both = |name: &str| match name {
            "REDIS_URL" => Some("redis://x".to_string()),
            "REDIS_URL_FILE" => Some("/nonexistent".to_string()),
            _ => None,
        };
        let e = config().read_secret_files_with(both).unwrap_err();
        assert!(e.to_string().contains("both set"), "{e}");
        let missing = |name: &str| (name == "REDIS_URL_FILE").then(|| "/nonexistent/x".to_string());
        let e = config().read_secret_files_with(missing).unwrap_err();
        assert!(e.to_string().contains("REDIS_URL_FILE: cannot read"), "{e}");
    }

    #[test]
    fn help_hides_secret_values_and_the_default_user_is_not_root() {
        use clap::CommandFactory;
        assert!(!DEFAULT_DATABASE_URL.contains("root@"));
        // Each secret's argument hides its environment value in `--help`
        // (clap prints `[env: DATABASE_URL=mysql://chat:s3cret@…]` otherwise).
        let command = Cli::command();
        for name in SECRET_FILE_VARIABLES {
            let arg = command
                .get_arguments()
                .find(|a| a.get_env().is_some_and(|e| e == name))
                .unwrap_or_else(|| panic!("{name} is a setting"));
            assert!(
                arg.is_hide_env_values_set(),
                "{name}: its value shows in --help"
            );
        }
    }
}
