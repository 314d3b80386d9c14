//! Assembling and running the service: pools, the write-behind core, the
//! flusher task and the HTTP server, with graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use poem::listener::{Acceptor, AcceptorExt, BoxAcceptor, Listener, TcpListener};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::http::admin::KeyDigest;
use crate::http::connections::{ConnectionLimits, GuardedAcceptor};
use crate::http::ratelimit::{self, RateLimit};
use crate::http::{self, AppState};
use crate::jobs::counts::{CountsRefresher, DirtyMarks};
use crate::jobs::indexer::Indexer;
use crate::store;
use crate::store::replicas::Pools;
use crate::store::search::SearchBackend;
use crate::store::search::meili::MeiliSearch;
use crate::writebehind::flusher::FlushSettings;
use crate::writebehind::group_commit::GroupCommit;
use crate::writebehind::keys::Keys;
use crate::writebehind::live::{Live, LiveSettings};
use crate::writebehind::{Buffer, Flusher, Numbering, WriteBehind};

/// Loads `.env` from the working directory when present; variables already
/// set in the environment win.
pub fn load_dotenv() {
    let _ = dotenvy::dotenv();
}

/// A built service: bound to its port, with its flusher, not yet serving.
pub struct Application {
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    acceptor: BoxAcceptor,
    state: AppState,
    flusher: Arc<Flusher>,
    counts: Arc<CountsRefresher>,
    indexer: Arc<Indexer>,
}

/// Opens the way to Redis, lazily (the service starts while Redis is down):
/// a pool on one node (`REDIS_URL`, or the master `REDIS_SENTINELS` name),
/// or a Redis Cluster connection (`REDIS_CLUSTER_NODES`). Errors: invalid
/// URLs, or both a cluster and sentinels.
pub fn redis_pool(config: &Config) -> anyhow::Result<crate::redis::RedisHandle> {
    if !config.redis_cluster_nodes.is_empty() {
        anyhow::ensure!(
            config.redis_sentinels.is_empty(),
            "REDIS_CLUSTER_NODES and REDIS_SENTINELS cannot both be set: a Redis Cluster fails over by itself"
        );
        return crate::redis::RedisHandle::cluster(
            &config.redis_cluster_nodes,
            config.redis_timeout(),
        )
        .context("REDIS_CLUSTER_NODES is invalid");
    }
    Ok(crate::redis::pool_with_epoch(
        crate::redis::RedisTarget::from_config(config),
        config.redis_pool_size,
        config.redis_timeout(),
        Some(
            Keys::from_config(config)
                .shards()
                .map(|s| s.epoch())
                .collect(),
        ),
    )
    .context("REDIS_URL or REDIS_SENTINELS is invalid")?
    .into())
}

/// Flusher settings from the configuration.
pub fn flush_settings(config: &Config) -> FlushSettings {
    FlushSettings {
        chat_batch_size: config.chat_batch_size.get(),
        message_batch_size: config.message_batch_size.get(),
        interval: config.flush_interval,
        max_age: (config.flush_max_age_ms > 0)
            .then(|| Duration::from_millis(config.flush_max_age_ms)),
        lease: config.lease,
        orphan_max_age: config.orphan_max_age,
        shutdown_timeout: config.shutdown_timeout,
        fault_delay: Duration::from_millis(config.fault_flush_delay_ms),
        workers: config.flush_workers.get(),
        causal_mark_ttl: (!config.database_read_urls.is_empty())
            .then(|| crate::store::replicas::mark_ttl(config.read_replica_max_lag_secs)),
    }
}

/// The primary and the read replicas of `DATABASE_READ_URLS`, each checked
/// once (a replica is in rotation only once it answers within
/// `READ_REPLICA_MAX_LAG_SECS`). Errors: a URL that does not parse, or a
/// primary that answers but writes no binary log (no GTIDs: no replica can
/// follow it, and read-your-writes could not be kept).
async fn read_pools(config: &Config, primary: &sqlx::MySqlPool) -> anyhow::Result<Pools> {
    if config.database_read_urls.is_empty() {
        return Ok(Pools::primary_only(primary.clone()));
    }
    let pools = Pools::new(
        primary.clone(),
        &config.database_read_urls,
        config.database_max_connections,
        Duration::from_millis(config.read_replica_wait_ms),
        config.read_replica_max_lag_secs,
    )?;
    match crate::store::replicas::primary_logs_binary(primary).await {
        Ok(true) => {}
        Ok(false) => anyhow::bail!(
            "DATABASE_READ_URLS is set, but the primary (DATABASE_URL) writes no binary log \
             (log_bin is off): it has no GTIDs, so no replica can follow it"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "could not ask the primary whether it logs binary; reads go to it until the replicas are checked")
        }
    }
    pools.check_replicas().await;
    tracing::info!(
        replicas = pools.replicas().len(),
        in_rotation = pools.replicas().iter().filter(|r| r.in_rotation()).count(),
        "read replicas"
    );
    Ok(pools)
}

/// With the term index (`MEILI_URL` unset), warns when messages are stored
/// but none is indexed: after an upgrade from the FULLTEXT backend,
/// `chat-api reindex` builds the index of the stored messages (new ones are
/// indexed as they are flushed). MariaDB unreachable: only logged, as for
/// the rest of start-up.
async fn check_term_index(search: &SearchBackend) {
    let SearchBackend::Database(pool) = search else {
        return;
    };
    match crate::store::search::terms::needs_reindex(pool).await {
        Ok(true) => tracing::warn!(
            "messages are stored but the search index is empty: run `chat-api reindex` \
             to make them searchable (new messages are indexed as they are flushed)"
        ),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "could not check the search index"),
    }
}

/// Shortest accepted `ADMIN_API_KEY`, in bytes.
pub const MIN_ADMIN_KEY_BYTES: usize = 16;

/// Refuses an `ADMIN_API_KEY` that is too short to resist guessing, without
/// echoing it; an empty one (`ADMIN_API_KEY=`) means unset. Logs whether the
/// operator API is on.
fn check_admin_key(config: &mut Config) -> anyhow::Result<()> {
    use secrecy::ExposeSecret;
    if config
        .admin_api_key
        .as_ref()
        .is_some_and(|k| k.expose_secret().is_empty())
    {
        config.admin_api_key = None;
    }
    match &config.admin_api_key {
        Some(key) if key.expose_secret().len() < MIN_ADMIN_KEY_BYTES => anyhow::bail!(
            "ADMIN_API_KEY is shorter than {MIN_ADMIN_KEY_BYTES} bytes; use a long random value (for example `openssl rand -base64 32`)"
        ),
        Some(_) => tracing::info!("operator API on at /api/v1/admin (ADMIN_API_KEY set)"),
        None => tracing::info!("operator API off (ADMIN_API_KEY unset)"),
    }
    Ok(())
}

impl Application {
    /// Connects, optionally migrates, and binds `BIND_ADDR` (port 0 picks one).
    /// Errors: invalid URLs, failed migrations, or a port that cannot be bound.
    pub async fn build(config: Config, run_migrations: bool) -> anyhow::Result<Self> {
        let pool = store::connect_lazy(&config.database_url, config.database_max_connections)?;
        if run_migrations {
            store::ensure_database(&config.database_url)
                .await
                .context("could not create the database")?;
            store::migrate(&pool)
                .await
                .context("could not run migrations")?;
        }
        let mut config = config;
        check_admin_key(&mut config)?;
        crate::telemetry::metrics::install();
        anyhow::ensure!(
            !config.redis_key_prefix.contains(['{', '}']),
            "REDIS_KEY_PREFIX must not contain braces: the keys' hash tags are its shard numbers in braces"
        );
        let redis = redis_pool(&config)?;
        check_redis(&redis, config.allow_redis_eviction).await?;
        check_durability(&redis, &config).await?;
        let marks = DirtyMarks::new(
            redis.clone(),
            Keys::from_config(&config),
            config.redis_timeout(),
        )
        .with_owner(config.instance_id());
        let buffer = Buffer::new(
            redis,
            Keys::from_config(&config),
            config.redis_timeout(),
            config.max_pending,
        )
        .with_owner(config.instance_id())
        .with_idempotency_ttl(config.idempotency_ttl)
        .with_in_progress_lifetime(config.idempotency_in_progress)
        .with_max_pending_bytes(config.max_pending_bytes)
        .with_max_pending_per_application(config.max_pending_per_application())
        .with_high_water(config.pending_high_water)
        .with_live_stream_maxlen(config.live_stream_maxlen);
        let buffer = match config.redis_durability {
            crate::config::Durability::Replica => {
                // A connection of its own, whose WAITs block nothing else.
                let mut one = config.clone();
                one.redis_pool_size = 1;
                buffer.with_group_commit(GroupCommit::start(
                    redis_pool(&one)?,
                    &Keys::from_config(&config),
                    Duration::from_millis(config.redis_wait_ms),
                    config.redis_timeout(),
                ))
            }
            _ => buffer,
        };
        check_shards(&buffer).await?;
        let flusher = Arc::new(
            Flusher::new(buffer.clone(), pool.clone(), flush_settings(&config))
                .with_after_commit(Arc::new(marks.clone()))
                .with_after_commit(Arc::new(crate::jobs::indexer::SearchFeed)),
        );
        let counts = Arc::new(CountsRefresher::new(
            marks.clone(),
            pool.clone(),
            config.counts_batch_size.get(),
            config.lease,
        ));
        let rate_limit = RateLimit::new(
            config.rate_limit_per_minute,
            config.rate_limit_burst,
            config.trusted_proxies.clone(),
            config.rate_limit_ipv6_prefix,
        );
        if config.rate_limit_per_minute == 0 {
            tracing::warn!("rate limit disabled (RATE_LIMIT_PER_MINUTE=0)");
        } else {
            tracing::info!(
                per_minute = config.rate_limit_per_minute,
                burst = config.rate_limit_burst,
                trusted_proxies = ?config.trusted_proxies.0,
                ipv6_prefix = config.rate_limit_ipv6_prefix,
                "rate limit per client IP"
            );
        }
        let search_rate = http::ratelimit::SearchRate::new(
            config.search_rate_per_minute,
            config.search_rate_burst,
        );
        let buffer_for_indexer = buffer.clone();
        let numbering = Numbering::new(
            buffer.redis().clone(),
            Keys::from_config(&config),
            pool.clone(),
            config.redis_timeout(),
            config.number_block_max,
            std::time::Duration::from_millis(config.numbering_sql_timeout_ms),
        );
        let write_behind = WriteBehind::new(
            buffer,
            numbering,
            pool.clone(),
            flusher.handle(),
            config.chat_batch_size.get(),
            config.message_batch_size.get(),
            config.read_your_writes_timeout(),
        );
        let (acceptor, addr, admin_addr) = bind(&mut config).await?;
        if config.public_application_list {
            tracing::warn!(
                "PUBLIC_APPLICATION_LIST is on: GET /api/v1/applications shows every application's \
                 token to anyone, and a token grants full access to its application; use it for demos only"
            );
        }
        let meili = match &config.meili_url {
            Some(url) => Some(
                MeiliSearch::new(url, config.meili_api_key.as_deref(), &config.meili_index)
                    .map_err(|e| anyhow::anyhow!("MEILI_URL or MEILI_API_KEY is invalid: {e}"))?,
            ),
            None => None,
        };
        let search = match &meili {
            Some(meili) => SearchBackend::Meili(meili.clone(), pool.clone()),
            None => SearchBackend::Database(pool.clone()),
        };
        let indexer = Arc::new(
            Indexer::new(
                buffer_for_indexer.clone(),
                pool.clone(),
                meili,
                config.lease,
                config.search_index_interval(),
            )
            .with_workers(config.search_index_workers as usize),
        );
        tracing::info!(backend = search.name(), index = %config.meili_index, "search backend");
        check_term_index(&search).await;
        let admin_key = config.admin_api_key.as_ref().map(KeyDigest::of);
        let reads = read_pools(&config, &pool).await?;
        let live = live_events(&config, buffer_for_indexer.redis().clone());
        let state = AppState::new(http::Services {
            live,
            reads,
            pool,
            write_behind,
            config: Arc::new(config),
            marks,
            rate_limit,
            search_rate,
            search,
            flusher: flusher.clone(),
            indexer: indexer.clone(),
            admin_key,
            database_up: Arc::default(),
        });
        Ok(Self {
            addr,
            admin_addr,
            acceptor,
            state,
            flusher,
            counts,
            indexer,
        })
    }

    /// The bound address of the public listener (`BIND_ADDR`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bound address of the operator listener, when `ADMIN_BIND_ADDR` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The shared state (tests use its pool and buffer).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// The flusher (tests call `flush_once` on it directly).
    pub fn flusher(&self) -> Arc<Flusher> {
        self.flusher.clone()
    }

    /// The search indexer (tests call `index_once` on it directly).
    pub fn indexer(&self) -> Arc<Indexer> {
        self.indexer.clone()
    }

    /// The counts refresher (tests call `refresh_counts_once` on it directly).
    pub fn counts(&self) -> Arc<CountsRefresher> {
        self.counts.clone()
    }

    /// Serves until `shutdown` is cancelled; then stops accepting, finishes
    /// in-flight requests, drains the buffer and returns.
    pub async fn run_until(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let tasks = TaskTracker::new();
        let flusher_stop = CancellationToken::new();
        tasks.spawn(self.flusher.clone().run(flusher_stop.clone()));
        let jobs_stop = CancellationToken::new();
        let schedule = self.state.config.counts_refresh_cron.clone();
        let counts = self.counts.clone();
        let stop = jobs_stop.clone();
        tasks.spawn(async move { counts.run(schedule, stop).await });
        if let Some(limiter) = self.state.rate_limit.limiter() {
            tasks.spawn(every(
                Duration::from_secs(60),
                jobs_stop.clone(),
                move || {
                    let limiter = limiter.clone();
                    async move {
                        let tracked = ratelimit::prune(&limiter);
                        tracing::debug!(tracked, "rate-limit state pruned");
                    }
                },
            ));
        }
        if let Some(limiter) = self.state.search_rate.limiter() {
            tasks.spawn(every(
                Duration::from_secs(60),
                jobs_stop.clone(),
                move || {
                    let limiter = limiter.clone();
                    async move {
                        limiter.retain_recent();
                        limiter.shrink_to_fit();
                    }
                },
            ));
        }
        tasks.spawn(self.indexer.clone().run(jobs_stop.clone()));
        if self.state.reads.keeps_marks() {
            let reads = self.state.reads.clone();
            tasks.spawn(every(
                crate::store::replicas::CHECK_INTERVAL,
                jobs_stop.clone(),
                move || {
                    let reads = reads.clone();
                    async move { reads.check_replicas().await }
                },
            ));
        }
        let buffer = self.state.write_behind.buffer().clone();
        let pool = self.state.pool.clone();
        let search = self.state.search.clone();
        let database_up = self.state.database_up.clone();
        let config = &self.state.config;
        // A record waits at most 1.25 × FLUSH_MAX_AGE_MS while MariaDB is
        // up (see its doc), or FLUSH_INTERVAL_SECS when that is off.
        let max_wait = match config.flush_max_age_ms {
            0 => config.flush_interval,
            ms => Duration::from_millis(ms + ms / 4),
        };
        crate::telemetry::metrics::limits_set(
            config.max_pending,
            config.max_pending_bytes,
            config.pending_high_water,
            max_wait,
        );
        if self.state.reads.keeps_marks() {
            crate::telemetry::metrics::replica_max_lag_set(config.read_replica_max_lag_secs);
        }
        tasks.spawn(every(
            Duration::from_secs(5),
            jobs_stop.clone(),
            move || {
                sample_queues(
                    buffer.clone(),
                    pool.clone(),
                    search.clone(),
                    database_up.clone(),
                )
            },
        ));
        // New connections run the epoch check already; this catches a key
        // lost without a restart (see crate::redis), and a shard
        // count changed under a running instance (a reshard).
        if self.state.config.chat_idle_secs > 0 {
            let sweep = Arc::new(crate::jobs::idle::IdleCounters::new(
                self.state.write_behind.numbering().clone(),
            ));
            tasks.spawn(every(
                Duration::from_secs(self.state.config.chat_idle_secs),
                jobs_stop.clone(),
                move || {
                    let sweep = sweep.clone();
                    async move {
                        match sweep.sweep_once().await {
                            Ok(r) if r.evicted > 0 => {
                                tracing::info!(evicted = r.evicted, applications = r.applications, "idle counters evicted from Redis");
                            }
                            Ok(_) => {}
                            Err(e) => tracing::warn!(error = %e, "idle-counter sweep failed; it runs again next period"),
                        }
                    }
                },
            ));
        }
        let buffer = self.state.write_behind.buffer().clone();
        let numbering = self.state.write_behind.numbering().clone();
        tasks.spawn(every(
            Duration::from_secs(2),
            jobs_stop.clone(),
            move || {
                let (buffer, numbering) = (buffer.clone(), numbering.clone());
                async move {
                    if let Err(e) = numbering.check_all_epochs().await {
                        tracing::debug!(error = %e, "epoch check failed; Redis seems down");
                    }
                    recheck_shards(&buffer).await;
                }
            },
        ));
        // Live event streams never end by themselves: on shutdown each ends
        // cleanly, so that its client resumes on another instance, and the
        // server's drain below is not held up by them.
        let live = self.state.live.clone();
        let (stop_live, jobs_done) = (shutdown.clone(), jobs_stop.clone());
        tasks.spawn(async move {
            tokio::select! {
                _ = stop_live.cancelled() => {}
                _ = jobs_done.cancelled() => {}
            }
            live.close();
        });
        tracing::info!(addr = %self.addr, "serving");
        let server = poem::Server::new_with_acceptor(self.acceptor);
        let result = server
            .run_with_graceful_shutdown(
                http::routes(self.state),
                shutdown.cancelled_owned(),
                Some(std::time::Duration::from_secs(10)),
            )
            .await;
        // Requests are done: no more records can arrive from this instance.
        jobs_stop.cancel();
        flusher_stop.cancel();
        tasks.close();
        tasks.wait().await;
        tracing::info!("stopped");
        result.context("HTTP server failed")
    }
}

/// The live events ([`crate::writebehind::live`]) over `redis`, each reader
/// on a connection of its own (a pool of one on one node, a cluster
/// connection of its own on a Redis Cluster), so that its `XREAD BLOCK`
/// holds up nothing else.
fn live_events(config: &Config, redis: crate::redis::RedisHandle) -> Live {
    let own = config.clone();
    Live::new(
        redis,
        move || {
            if !own.redis_cluster_nodes.is_empty() {
                return Ok(crate::redis::RedisHandle::cluster(
                    &own.redis_cluster_nodes,
                    own.redis_timeout(),
                )?);
            }
            Ok(crate::redis::pool_with_epoch(
                crate::redis::RedisTarget::from_config(&own),
                1,
                own.redis_timeout(),
                None,
            )?
            .into())
        },
        Keys::from_config(config),
        LiveSettings {
            max_streams_per_application: config.max_streams_per_application,
            subscriber_buffer: config.live_subscriber_buffer as usize,
            stream_maxlen: config.live_stream_maxlen,
            timeout: config.redis_timeout(),
        },
    )
}

/// Binds `BIND_ADDR` and, when set, `ADMIN_BIND_ADDR` (port 0 picks a free
/// port; the picked ports are written back into `config`, so that the
/// operator gate knows which listener a request came in on). Returns one
/// acceptor for both, the public address and the operator address.
/// Errors: a port that cannot be bound, named by its variable.
async fn bind(
    config: &mut Config,
) -> anyhow::Result<(BoxAcceptor, SocketAddr, Option<SocketAddr>)> {
    let public = TcpListener::bind(config.bind_addr)
        .into_acceptor()
        .await
        .with_context(|| format!("could not bind BIND_ADDR={}", config.bind_addr))?;
    let addr = bound_addr(&public)?;
    config.bind_addr = addr;
    let limits = ConnectionLimits {
        header_read_timeout: config.header_read_timeout,
        idle_timeout: config.idle_timeout,
        max_connections: config.max_connections as usize,
    };
    let Some(admin_bind) = config.admin_bind_addr else {
        // Slow and silent connections are closed, and their number capped,
        // so clients cannot hold file descriptors forever (src/http/connections.rs).
        return Ok((GuardedAcceptor::new(public, limits).boxed(), addr, None));
    };
    let admin = TcpListener::bind(admin_bind)
        .into_acceptor()
        .await
        .with_context(|| format!("could not bind ADMIN_BIND_ADDR={admin_bind}"))?;
    let admin_addr = bound_addr(&admin)?;
    config.admin_bind_addr = Some(admin_addr);
    tracing::info!(addr = %admin_addr, "operator listener: /api/v1/admin, /metrics and the application listing are served only here");
    Ok((
        GuardedAcceptor::new(public.combine(admin), limits).boxed(),
        addr,
        Some(admin_addr),
    ))
}

/// The first socket address an acceptor is bound to.
fn bound_addr(acceptor: &impl Acceptor) -> anyhow::Result<SocketAddr> {
    acceptor
        .local_addr()
        .first()
        .and_then(|a| a.as_socket_addr().copied())
        .context("no local address")
}

/// Compares `QUEUE_SHARDS` with the count Redis records (recording ours when
/// none is): refuses to start when they differ. A Redis that cannot be
/// reached now is only logged, and creates are refused until the check
/// every 2 s passes. Errors: the counts differ.
async fn check_shards(buffer: &Buffer) -> anyhow::Result<()> {
    use crate::writebehind::shards::enforce_shard_count;
    match tokio::time::timeout(Duration::from_secs(3), enforce_shard_count(buffer)).await {
        Ok(Ok(None)) => Ok(()),
        Ok(Ok(Some(reason))) => anyhow::bail!(reason),
        _ => {
            tracing::warn!(
                "could not compare QUEUE_SHARDS with the count recorded in Redis; Redis seems down: creates are refused until it is checked"
            );
            buffer.set_shard_mismatch(Some("QUEUE_SHARDS is not yet checked against Redis".into()));
            Ok(())
        }
    }
}

/// The periodic form of [`check_shards`] (see
/// [`crate::writebehind::shards::enforce_shard_count`]); Redis unreachable:
/// leaves things as they are.
async fn recheck_shards(buffer: &Buffer) {
    match crate::writebehind::shards::enforce_shard_count(buffer).await {
        Ok(None) => {}
        Ok(Some(reason)) => tracing::error!("{reason}"),
        Err(e) => tracing::debug!(error = %e, "shard count check failed; Redis seems down"),
    }
}

/// Refuses to start when Redis may evict keys (unless allowed), and logs
/// whether AOF persistence is on. A Redis that cannot be reached now is only
/// logged: the service starts, and creation answers 503 until Redis is back.
async fn check_redis(pool: &crate::redis::RedisHandle, allow_eviction: bool) -> anyhow::Result<()> {
    let safety = match tokio::time::timeout(
        Duration::from_secs(3),
        crate::redis::server_safety(pool),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "could not check Redis's eviction policy and persistence; Redis seems down");
            return Ok(());
        }
        Err(_) => {
            tracing::warn!(
                "could not check Redis's eviction policy and persistence: no answer in 3 s"
            );
            return Ok(());
        }
    };
    if safety.may_evict() {
        let msg = format!(
            "Redis maxmemory-policy is `{}`: Redis may evict keys, silently losing buffered records and counters. \
             Set `maxmemory-policy noeviction`, or set ALLOW_REDIS_EVICTION=true to start anyway",
            safety.maxmemory_policy
        );
        if !allow_eviction {
            anyhow::bail!(msg);
        }
        tracing::warn!("{msg} (ALLOW_REDIS_EVICTION is set: starting anyway)");
    }
    if safety.aof_enabled {
        tracing::info!("Redis AOF persistence is on: buffered records survive a Redis restart");
    } else {
        tracing::warn!(
            "Redis AOF persistence is OFF: a Redis restart loses the records not yet flushed (see README)"
        );
    }
    Ok(())
}

/// Checks that Redis can keep the promise `REDIS_DURABILITY` makes.
/// `replica`: `REDIS_WAIT_MS` must be below `REDIS_TIMEOUT_MS`, and a Redis
/// with no replica now is logged (creation answers 503 until one is back).
/// `fsync`: Redis must answer, with AOF on and `appendfsync always`; anything
/// else, or a Redis that cannot be asked, refuses start-up.
/// Errors: the reasons above, each with what to change.
async fn check_durability(pool: &crate::redis::RedisHandle, config: &Config) -> anyhow::Result<()> {
    use crate::config::Durability;
    match config.redis_durability {
        Durability::Memory => Ok(()),
        Durability::Replica => {
            if config.redis_wait_ms >= config.redis_timeout_ms {
                anyhow::bail!(
                    "REDIS_WAIT_MS ({}) must be below REDIS_TIMEOUT_MS ({}), or every create times out",
                    config.redis_wait_ms,
                    config.redis_timeout_ms
                );
            }
            tracing::info!(
                wait_ms = config.redis_wait_ms,
                "REDIS_DURABILITY=replica: a create answers 201 once a replica has it"
            );
            Ok(())
        }
        Durability::Fsync => {
            let (mut c, _) = pool
                .get()
                .await
                .context("REDIS_DURABILITY=fsync: could not reach Redis to check `appendfsync`")?;
            // On a cluster, every master must fsync.
            let persistence = c
                .info_all("persistence")
                .await
                .context("REDIS_DURABILITY=fsync: INFO persistence failed")?;
            let mut config_get = redis::cmd("CONFIG");
            config_get.arg("GET").arg("appendfsync");
            let fsyncs: Vec<Vec<String>> = c.query_all_masters(config_get).await.context(
                "REDIS_DURABILITY=fsync: CONFIG GET appendfsync failed (is CONFIG allowed?)",
            )?;
            let aof = persistence
                .iter()
                .all(|p| p.lines().any(|l| l.trim() == "aof_enabled:1"));
            let fsync = fsyncs
                .iter()
                .find(|f| f.get(1).map(String::as_str) != Some("always"))
                .or(fsyncs.first())
                .cloned()
                .unwrap_or_default();
            let always = fsync.get(1).map(String::as_str) == Some("always");
            if !aof || !always {
                anyhow::bail!(
                    "REDIS_DURABILITY=fsync needs Redis with `appendonly yes` and `appendfsync always` \
                     (found appendonly {}, appendfsync {})",
                    if aof { "yes" } else { "no" },
                    fsync.get(1).map(String::as_str).unwrap_or("unknown")
                );
            }
            tracing::info!("REDIS_DURABILITY=fsync: Redis fsyncs every write before answering");
            Ok(())
        }
    }
}

/// Runs `step` every `period` until `stop`.
async fn every<F, Fut>(period: Duration, stop: CancellationToken, mut step: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut ticker = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => step().await,
        }
    }
}

/// Publishes the depth, oldest age and dead letters of each queue as
/// gauges, and whether Redis, MariaDB and the search backend answer
/// (`chat_dependency_up`; a probe has 2 s); MariaDB's answer also goes to
/// `database_up`, for `/health/ready`.
async fn sample_queues(
    buffer: Buffer,
    pool: sqlx::MySqlPool,
    search: SearchBackend,
    database_up: Arc<std::sync::atomic::AtomicBool>,
) {
    let probe = Duration::from_secs(2);
    let mariadb = tokio::time::timeout(probe, sqlx::query("SELECT 1").execute(&pool)).await;
    let mariadb_up = matches!(mariadb, Ok(Ok(_)));
    database_up.store(mariadb_up, std::sync::atomic::Ordering::Relaxed);
    crate::telemetry::metrics::dependency_sampled("mariadb", mariadb_up);
    let search_up = match &search {
        // The term index lives in MariaDB.
        SearchBackend::Database(_) => mariadb_up,
        SearchBackend::Meili(meili, _) => tokio::time::timeout(probe, meili.healthy())
            .await
            .unwrap_or(false),
    };
    crate::telemetry::metrics::dependency_sampled("search", search_up);
    let stats = tokio::time::timeout(probe, buffer.inspect()).await;
    crate::telemetry::metrics::dependency_sampled("redis", matches!(stats, Ok(Ok(_))));
    let Ok(Ok(stats)) = stats else {
        return;
    };
    let now = crate::writebehind::now_ms();
    for s in stats {
        crate::telemetry::metrics::queue_sampled(
            s.queue.as_str(),
            s.pending,
            s.pending_bytes,
            s.oldest_age(now).unwrap_or_default(),
            s.dead_letters,
        );
    }
}

/// Cancels the returned token on SIGTERM or Ctrl-C.
pub fn shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {}
            _ = term => {}
        }
        tracing::info!("shutdown requested; draining");
        t.cancel();
    });
    token
}
