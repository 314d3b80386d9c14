//! `spawn_app()`: the real service on a random port, against its own
//! MariaDB database and its own Redis key prefix, cleaned up on drop.

use std::sync::Arc;
use std::time::Duration;

use chat_api::config::Config;
use chat_api::jobs::counts::{CountsRefresher, DirtyMarks};
use chat_api::startup::Application;
use chat_api::writebehind::{Buffer, Flusher};
use clap::Parser;
use serde_json::{Value, json};
use sqlx::MySqlPool;
use tokio_util::sync::CancellationToken;

/// MariaDB server the tests create their databases on.
pub fn admin_url() -> String {
    std::env::var("TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
}

/// Redis the tests use.
/// A connection to the Redis at `url`.
pub async fn redis_connection(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// `chat-api serve`'s settings as a command of their own, to parse a
/// default configuration and to list its arguments.
#[derive(Parser)]
pub struct Wrapper {
    #[command(flatten)]
    pub config: Config,
}

/// A test configuration: own database and prefix, port 0, and a flush
/// timer of an hour so that tests decide when to flush.
pub fn test_config() -> Config {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let mut config = Wrapper::parse_from(["test"]).config;
    config.database_url = format!("{}/chat_test_{}", admin_url(), &id[..16]);
    config.redis_url = redis_url();
    config.redis_key_prefix = format!("test:{id}:");
    config.bind_addr = "127.0.0.1:0".parse().unwrap();
    config.flush_interval = Duration::from_secs(3600);
    // What is buffered stays buffered until a test flushes or fills a batch.
    config.flush_max_age_ms = 0;
    config.database_max_connections = 5;
    // Rate-limit tests turn it on; the others send bursts from one IP.
    config.rate_limit_per_minute = 0;
    // The per-application search rate too (its own test turns it on).
    config.search_rate_per_minute = 0;
    // Meilisearch tests opt in; the rest use the database backend.
    config.meili_url = None;
    // Tests index when they flush (`TestApp::flush`), not in the background.
    config.search_index_interval_ms = 3_600_000;
    config
}

/// The sum of the samples of metric `name` in Prometheus text `text`, over
/// every label set (`name` may also carry its labels, to pick one sample);
/// 0 if absent.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The keys of a JSON object, sorted (to check that no internal field,
/// such as a database id, leaks into a response).
pub fn keys_of(v: &Value) -> Vec<String> {
    let mut keys: Vec<String> = v
        .as_object()
        .expect("a JSON object")
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

/// A running service.
pub struct TestApp {
    /// `http://127.0.0.1:{port}`
    pub address: String,
    /// `http://127.0.0.1:{port}` of the operator listener, when
    /// `admin_bind_addr` is set.
    pub admin_address: Option<String>,
    /// HTTP client.
    pub client: reqwest::Client,
    /// The service's MariaDB pool.
    pub pool: MySqlPool,
    /// The service's flusher (call `flush_once` to flush now).
    pub flusher: Arc<Flusher>,
    /// The service's buffer.
    pub buffer: Buffer,
    /// The service's numbering (counters, reservations, the doubt check).
    pub numbering: chat_api::writebehind::Numbering,
    /// The counts refresher (call `refresh_counts_once`).
    pub counts: Arc<CountsRefresher>,
    /// The dirty marks of the counts refresh.
    pub marks: DirtyMarks,
    /// The search indexer (`TestApp::flush` runs it once).
    pub indexer: Arc<chat_api::jobs::indexer::Indexer>,
    /// Its configuration.
    pub config: Config,
    shutdown: CancellationToken,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    cleanup: bool,
}

/// Starts the service with the default test configuration.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts the service after `tweak` changed the test configuration.
pub async fn spawn_app_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    let mut config = test_config();
    tweak(&mut config);
    spawn_config(config, true).await
}

/// Starts the service with exactly `config`; `cleanup` drops the database and
/// keys when the returned app is dropped.
pub async fn spawn_config(config: Config, cleanup: bool) -> TestApp {
    chat_api::telemetry::init();
    let app = Application::build(config.clone(), true)
        .await
        .expect("the service builds");
    let address = format!("http://{}", app.addr());
    let admin_address = app.admin_addr().map(|a| format!("http://{a}"));
    let pool = app.state().pool.clone();
    let buffer = app.state().write_behind.buffer().clone();
    let numbering = app.state().write_behind.numbering().clone();
    let flusher = app.flusher();
    let counts = app.counts();
    let marks = app.state().marks.clone();
    let indexer = app.indexer();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(app.run_until(shutdown.clone()));
    TestApp {
        address,
        admin_address,
        client: reqwest::Client::new(),
        pool,
        flusher,
        buffer,
        numbering,
        counts,
        marks,
        indexer,
        config,
        shutdown,
        server: Some(server),
        cleanup,
    }
}

impl TestApp {
    /// The Redis keys of `token`'s queue shard.
    pub fn shard(&self, token: &str) -> chat_api::writebehind::keys::ShardKeys {
        self.buffer.keys().for_token(token)
    }

    /// `{address}/api/v1{path}`
    pub fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.address)
    }

    /// POST JSON.
    pub async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .expect("request sent")
    }

    /// PUT JSON.
    pub async fn put(&self, path: &str, body: Value) -> reqwest::Response {
        self.client
            .put(self.url(path))
            .json(&body)
            .send()
            .await
            .expect("request sent")
    }

    /// GET.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request sent")
    }

    /// GET, and the response body as JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        self.get(path).await.json().await.expect("a JSON body")
    }

    /// DELETE.
    pub async fn delete(&self, path: &str) -> reqwest::Response {
        self.client
            .delete(self.url(path))
            .send()
            .await
            .expect("request sent")
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics_text(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.address))
            .send()
            .await
            .expect("request sent")
            .text()
            .await
            .expect("a text body")
    }

    /// A direct connection to the service's Redis.
    pub async fn redis_conn(&self) -> redis::aio::MultiplexedConnection {
        redis_connection(&self.config.redis_url).await
    }

    /// Creates an application and returns its token.
    pub async fn create_app(&self, name: &str) -> String {
        let r = self.post("/applications", json!({ "name": name })).await;
        assert_eq!(r.status(), 201);
        r.json::<Value>().await.unwrap()["token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Creates a chat and returns its number.
    pub async fn create_chat(&self, token: &str) -> i64 {
        let r = self
            .post(&format!("/applications/{token}/chats"), json!({}))
            .await;
        assert_eq!(r.status(), 201, "{:?}", r.text().await);
        r.json::<Value>().await.unwrap()["number"].as_i64().unwrap()
    }

    /// Creates a message and returns its number.
    pub async fn create_message(&self, token: &str, chat: i64, body: &str) -> i64 {
        let r = self
            .post(
                &format!("/applications/{token}/chats/{chat}/messages"),
                json!({ "body": body }),
            )
            .await;
        assert_eq!(r.status(), 201, "{:?}", r.text().await);
        r.json::<Value>().await.unwrap()["number"].as_i64().unwrap()
    }

    /// Flushes until both queues are empty, then applies the queued search
    /// index changes once (an unreachable Meilisearch leaves them queued).
    /// With `REDIS_DURABILITY=replica` a shard that no replica confirmed
    /// in `REDIS_WAIT_MS` (a loaded machine) is left for the next pass.
    pub async fn flush(&self) -> chat_api::writebehind::FlushReport {
        let mut total = chat_api::writebehind::FlushReport::default();
        for _ in 0..20 {
            total += self.flusher.flush_once().await.expect("flush");
            if self.flusher.pending().await.unwrap() == 0 {
                break;
            }
        }
        self.index().await;
        total
    }

    /// Applies the queued search-index changes once (edits and deletes queue
    /// theirs as they are made). Errors are ignored: Meilisearch tests wait
    /// for their server themselves.
    pub async fn index(&self) {
        let _ = self.indexer.index_once().await;
    }

    /// Stored (live and deleted) message rows of the application's chat:
    /// `(number, body)` by number.
    pub async fn stored_messages(&self, token: &str, chat: i64) -> Vec<(i64, String)> {
        sqlx::query_as(
            "SELECT m.number, m.body FROM messages m JOIN chats c ON c.id = m.chat_id \
             JOIN applications a ON a.id = c.application_id WHERE a.token = ? AND c.number = ? ORDER BY m.number",
        )
        .bind(token)
        .bind(chat)
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    /// Number of rows in `table`.
    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Asks the service to stop (as SIGTERM does) and waits for it to drain.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(s) = self.server.take() {
            s.await.expect("server task").expect("server result");
        }
    }

    /// Polls `check` every 50 ms until it holds or `within` passes.
    pub async fn eventually<F, Fut>(&self, within: Duration, mut check: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if check().await {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if !self.cleanup {
            return;
        }
        let db_url = self.config.database_url.clone();
        let redis = self.config.redis_url.clone();
        let prefix = self.config.redis_key_prefix.clone();
        // Drop may run inside the test's runtime, so clean up from a thread
        // with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                // The database's own server (the tests of read replicas use
                // a primary of their own).
                let (server, name) = db_url.rsplit_once('/').unwrap_or_default();
                let (server, name) = (server.to_string(), name.to_string());
                if let Ok(pool) = MySqlPool::connect(&server).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS `{name}`"
                    )))
                    .execute(&pool)
                    .await;
                }
                if let Ok(client) = redis::Client::open(redis.as_str())
                    && let Ok(mut c) = client.get_multiplexed_async_connection().await
                {
                    let keys: Vec<String> = redis::cmd("KEYS")
                        .arg(format!("{prefix}*"))
                        .query_async(&mut c)
                        .await
                        .unwrap_or_default();
                    if !keys.is_empty() {
                        let _: Result<(), _> =
                            redis::cmd("DEL").arg(keys).query_async(&mut c).await;
                    }
                }
            });
        })
        .join();
    }
}

pub use crate::support::PrivateRedis;

/// POST `body` to `{base}/api/v1{path}` with `Idempotency-Key: key`.
pub async fn send_with_key(
    app: &TestApp,
    base: &str,
    path: &str,
    key: &str,
    body: Value,
) -> reqwest::Result<reqwest::Response> {
    app.client
        .post(format!("{base}/api/v1{path}"))
        .header("Idempotency-Key", key)
        .json(&body)
        .send()
        .await
}

/// [`send_with_key`], which must get an answer.
pub async fn post_with_key(
    app: &TestApp,
    base: &str,
    path: &str,
    key: &str,
    body: Value,
) -> reqwest::Response {
    send_with_key(app, base, path, key, body)
        .await
        .expect("an answer")
}
