//! Assembling and running the service: pools, the write-behind core, the
//! flusher task and the HTTP server, with graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use bb8_redis::RedisConnectionManager;
use poem::listener::{Acceptor, Listener, TcpListener};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::http::{self, AppState};
use crate::store;
use crate::writebehind::flusher::FlushSettings;
use crate::writebehind::keys::Keys;
use crate::writebehind::{Buffer, Flusher, WriteBehind};

/// Loads `.env` from the working directory when present; variables already
/// set in the environment win.
pub fn load_dotenv() {
    let _ = dotenvy::dotenv();
}

/// A built service: bound to its port, with its flusher, not yet serving.
pub struct Application {
    addr: SocketAddr,
    acceptor: poem::listener::TcpAcceptor,
    state: AppState,
    flusher: Arc<Flusher>,
}

/// Opens the Redis pool (lazily: the service starts while Redis is down).
pub fn redis_pool(config: &Config) -> anyhow::Result<bb8::Pool<RedisConnectionManager>> {
    let manager =
        RedisConnectionManager::new(config.redis_url.as_str()).context("REDIS_URL is invalid")?;
    Ok(bb8::Pool::builder()
        .max_size(config.redis_pool_size)
        .connection_timeout(config.redis_timeout())
        .build_unchecked(manager))
}

/// Flusher settings from the configuration.
pub fn flush_settings(config: &Config) -> FlushSettings {
    FlushSettings {
        chat_batch_size: config.chat_batch_size.get(),
        message_batch_size: config.message_batch_size.get(),
        interval: config.flush_interval,
        lease: config.lease,
        orphan_max_age: config.orphan_max_age,
        shutdown_timeout: config.shutdown_timeout,
    }
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
        let redis = redis_pool(&config)?;
        let buffer = Buffer::new(
            redis,
            Keys::new(config.redis_key_prefix.clone()),
            config.redis_timeout(),
            config.max_pending,
        );
        let flusher = Arc::new(Flusher::new(
            buffer.clone(),
            pool.clone(),
            flush_settings(&config),
        ));
        let wb = WriteBehind::new(
            buffer,
            pool.clone(),
            flusher.handle(),
            config.chat_batch_size.get(),
            config.message_batch_size.get(),
            config.read_your_writes_timeout(),
        );
        let acceptor = TcpListener::bind(config.bind_addr)
            .into_acceptor()
            .await
            .with_context(|| format!("could not bind BIND_ADDR={}", config.bind_addr))?;
        let addr = acceptor
            .local_addr()
            .first()
            .and_then(|a| a.as_socket_addr().copied())
            .context("no local address")?;
        let state = AppState {
            pool,
            wb,
            config: Arc::new(config),
        };
        Ok(Self {
            addr,
            acceptor,
            state,
            flusher,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The shared state (tests use its pool and buffer).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// The flusher (tests call `flush_once` on it directly).
    pub fn flusher(&self) -> Arc<Flusher> {
        self.flusher.clone()
    }

    /// Serves until `shutdown` is cancelled; then stops accepting, finishes
    /// in-flight requests, drains the buffer and returns.
    pub async fn run_until(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let tasks = TaskTracker::new();
        let flusher_stop = CancellationToken::new();
        tasks.spawn(self.flusher.clone().run(flusher_stop.clone()));
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
        flusher_stop.cancel();
        tasks.close();
        tasks.wait().await;
        tracing::info!("stopped");
        result.context("HTTP server failed")
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
