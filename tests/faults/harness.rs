//! The fault-test harness: the service as a real process (the release binary
//! when `CHAT_API_BIN` names it, as `scripts/test` does), its own database
//! and Redis prefix, a load generator that records every answer, a TCP proxy
//! the test can cut, and the checks of the write-behind promise.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::MySqlPool;

/// MariaDB server the tests create their databases on.
pub fn mysql_url() -> String {
    std::env::var("TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
}

/// Redis the tests use.
pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The binary under test: `CHAT_API_BIN` (the release build) or the debug build.
pub fn binary() -> String {
    std::env::var("CHAT_API_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_chat-api").to_string())
}

pub use crate::support::{PrivateRedis, Proxy, eventually, free_port};

/// Settings of one test: database, prefix and environment of the processes.
pub struct World {
    /// Database name.
    pub db: String,
    /// Redis key prefix.
    pub prefix: String,
    /// Environment shared by every process of the test.
    pub env: Vec<(String, String)>,
    /// Pool on the test database (direct, never through a proxy).
    pub pool: MySqlPool,
    /// Redis connection (direct; to the cluster when `REDIS_CLUSTER_NODES`
    /// is set).
    pub redis: chat_api::redis::RedisConnection,
}

/// `QUEUE_SHARDS` of every service the fault tests start.
pub const SHARDS: u16 = 4;

impl World {
    /// A fresh database and prefix; `database_url`/`redis_url` default to the
    /// direct ones, and `extra` adds to or overrides the environment.
    pub async fn new(extra: &[(&str, String)]) -> World {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let db = format!("chat_fault_{}", &id[..12]);
        let prefix = format!("fault:{id}:");
        let mut env: Vec<(String, String)> = vec![
            ("DATABASE_URL".into(), format!("{}/{db}", mysql_url())),
            ("REDIS_URL".into(), redis_url()),
            ("REDIS_KEY_PREFIX".into(), prefix.clone()),
            ("QUEUE_SHARDS".into(), SHARDS.to_string()),
            ("RATE_LIMIT_PER_MINUTE".into(), "0".into()),
            ("RUST_LOG".into(), "warn,chat_api=info".into()),
            ("LOG_FORMAT".into(), "text".into()),
        ];
        for (k, v) in extra {
            env.retain(|(key, _)| key != k);
            env.push((k.to_string(), v.clone()));
        }
        chat_api::store::ensure_database(&format!("{}/{db}", mysql_url()))
            .await
            .unwrap();
        let pool = MySqlPool::connect(&format!("{}/{db}", mysql_url()))
            .await
            .unwrap();
        chat_api::store::migrate(&pool).await.unwrap();
        let direct_redis = env
            .iter()
            .find(|(k, _)| k == "REDIS_URL")
            .map(|(_, v)| v.clone())
            .unwrap_or_else(redis_url);
        let cluster: Vec<String> = env
            .iter()
            .find(|(k, _)| k == "REDIS_CLUSTER_NODES")
            .map(|(_, v)| v.split(',').map(str::to_string).collect())
            .unwrap_or_default();
        let redis = if cluster.is_empty() {
            chat_api::redis::RedisConnection::Node(
                redis::Client::open(direct_redis)
                    .unwrap()
                    .get_multiplexed_async_connection()
                    .await
                    .unwrap(),
            )
        } else {
            chat_api::redis::RedisHandle::cluster(&cluster, Duration::from_secs(5))
                .unwrap()
                .get()
                .await
                .unwrap()
                .0
        };
        World {
            db,
            prefix,
            env,
            pool,
            redis,
        }
    }

    /// The key names the services use.
    pub fn keys(&self) -> chat_api::writebehind::keys::Keys {
        chat_api::writebehind::keys::Keys::with_shards(self.prefix.clone(), SHARDS)
    }

    /// The dead-letter entries of the messages queue, every shard's.
    pub async fn dead_letters(&self) -> Vec<String> {
        let mut c = self.redis.clone();
        let mut dead = Vec::new();
        for shard in self.keys().shards() {
            let entries: Vec<String> = redis::cmd("LRANGE")
                .arg(shard.dead_letter(chat_api::writebehind::Kind::Messages))
                .arg(0)
                .arg(-1)
                .query_async(&mut c)
                .await
                .unwrap();
            dead.extend(entries);
        }
        dead
    }

    /// Opens a new direct Redis connection (after the test restarted Redis).
    pub async fn reconnect_redis(&mut self, url: &str) {
        self.redis = chat_api::redis::RedisConnection::Node(
            redis::Client::open(url)
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap(),
        );
    }

    /// Where [`Self::start`] writes the log of the service on `port` (a
    /// restart on the same port starts it afresh).
    pub fn log_path(&self, port: u16) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("fault-{}-{port}.log", self.db))
    }

    /// Points the services' `DATABASE_URL` at `proxy` (same credentials and
    /// database), so that the test can cut or freeze MariaDB for them; the
    /// world's own pool stays direct.
    pub fn database_through(&mut self, proxy: &Proxy) {
        let direct = mysql_url();
        let creds = direct
            .trim_start_matches("mysql://")
            .split('@')
            .next()
            .unwrap()
            .to_string();
        let url = format!("mysql://{creds}@{}/{}", proxy.addr, self.db);
        self.env.retain(|(k, _)| k != "DATABASE_URL");
        self.env.push(("DATABASE_URL".into(), url));
    }

    /// [`Self::start`] with some variables of the environment overridden
    /// (for example another `REDIS_URL`).
    pub async fn start_with(&self, port: u16, overrides: &[(&str, String)]) -> Service {
        let mut env = self.env.clone();
        for (k, v) in overrides {
            env.retain(|(key, _)| key != k);
            env.push((k.to_string(), v.clone()));
        }
        World {
            db: self.db.clone(),
            prefix: self.prefix.clone(),
            env,
            pool: self.pool.clone(),
            redis: self.redis.clone(),
        }
        .start(port)
        .await
    }

    /// Starts a service process on `port`, and waits until it answers.
    pub async fn start(&self, port: u16) -> Service {
        let log = std::fs::File::create(self.log_path(port)).unwrap();
        let child = Command::new(binary())
            .arg("serve")
            // Only a test that asks for Meilisearch gets it.
            .env_remove("MEILI_URL")
            .env_remove("MEILI_API_KEY")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("BIND_ADDR", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the service binary starts");
        let service = Service { child, port };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut service = service;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = service.child.try_wait() {
                let log = std::fs::read_to_string(self.log_path(port)).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                panic!(
                    "the service on port {port} exited at start ({status}); its log ends: {tail:?}"
                );
            }
            if client
                .get(format!("{}/health/live", service.base()))
                .send()
                .await
                .is_ok()
            {
                return service;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the service did not come up on port {port}");
    }

    /// Records waiting or in flight in Redis: pending chats and messages plus
    /// the records of leased batches.
    pub async fn in_redis(&self) -> (u64, u64) {
        let mut c = self.redis.clone();
        let (mut pending, mut leases) = (0, 0);
        for shard in self.keys().shards() {
            use chat_api::writebehind::Kind;
            let (chats, messages, leased): (u64, u64, u64) = redis::pipe()
                .llen(shard.pending(Kind::Chats))
                .llen(shard.pending(Kind::Messages))
                .zcard(shard.leases())
                .query_async(&mut c)
                .await
                .unwrap();
            pending += chats + messages;
            leases += leased;
        }
        (pending, leases)
    }

    /// The leased batches: processing key → lease deadline (ms since the epoch).
    pub async fn leases(&self) -> Vec<(String, i64)> {
        let mut c = self.redis.clone();
        let mut all = Vec::new();
        for shard in self.keys().shards() {
            let leases: Vec<(String, i64)> = redis::cmd("ZRANGE")
                .arg(shard.leases())
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .query_async(&mut c)
                .await
                .unwrap();
            all.extend(leases);
        }
        all
    }

    /// Waits until nothing is pending nor leased (a live service drains it).
    pub async fn wait_drained(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let (pending, leases) = self.in_redis().await;
            if pending == 0 && leases == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not drained in {within:?}: {pending} pending, {leases} leased batches"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stored messages of the application: `(chat number, number, body)`.
    pub async fn stored(&self, token: &str) -> Vec<(i64, i64, String)> {
        sqlx::query_as(
            "SELECT c.number, m.number, m.body FROM messages m JOIN chats c ON c.id = m.chat_id \
             JOIN applications a ON a.id = c.application_id WHERE a.token = ? ORDER BY c.number, m.number",
        )
        .bind(token)
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    /// Stored chat numbers of the application, in order.
    pub async fn stored_chats(&self, token: &str) -> Vec<i64> {
        sqlx::query_scalar(
            "SELECT c.number FROM chats c JOIN applications a ON a.id = c.application_id \
             WHERE a.token = ? ORDER BY c.number",
        )
        .bind(token)
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    /// The message numbers each chat's counter skipped when it restarted at
    /// its reservation after Redis lost data (`skipped_numbers`, see
    /// `src/writebehind/numbering.rs`): chat number → ranges. The
    /// application's chat counter is under chat number 0.
    pub async fn skips(&self, token: &str) -> HashMap<i64, Vec<std::ops::RangeInclusive<i64>>> {
        let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
            "SELECT s.chat_number, s.first_number, s.last_number FROM skipped_numbers s \
             JOIN applications a ON a.id = s.application_id WHERE a.token = ? \
             ORDER BY s.chat_number, s.first_number",
        )
        .bind(token)
        .fetch_all(&self.pool)
        .await
        .unwrap();
        let mut skips: HashMap<i64, Vec<std::ops::RangeInclusive<i64>>> = HashMap::new();
        for (chat, first, last) in rows {
            skips.entry(chat).or_default().push(first..=last);
        }
        skips
    }

    /// Drops the database and the keys.
    pub async fn cleanup(self) {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS `{}`",
            self.db
        )))
        .execute(&self.pool)
        .await;
        let mut c = self.redis.clone();
        let keys = c
            .scan_all(&format!("{}*", self.prefix))
            .await
            .unwrap_or_default();
        for key in keys {
            let _: Result<(), _> = redis::cmd("DEL").arg(key).query_async(&mut c).await;
        }
    }
}

/// A running service process.
pub struct Service {
    child: Child,
    /// Its port.
    pub port: u16,
}

impl Service {
    /// `http://127.0.0.1:{port}`
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A memory figure of the process from `/proc/{pid}/status`, in KiB:
    /// `VmRSS` (resident now) or `VmHWM` (the peak resident set).
    pub fn memory_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} in /proc/pid/status"))
    }

    /// SIGKILL: no chance to flush or acknowledge anything.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then waits; returns whether it exited 0 within `within`.
    pub fn terminate(&mut self, within: Duration) -> bool {
        crate::support::terminate(&mut self.child, within)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Creates an application with `chats` chats through `base`; returns its token.
///
/// Setup is not what a fault test checks, so a transient refusal (503, as
/// when a Redis replica is slow to confirm under `REDIS_DURABILITY=replica`
/// on a loaded machine) or a transport error is retried for up to 30 s.
/// Each create carries its own `Idempotency-Key`, so a retry of a create
/// that was stored after all answers the same number: the application ends
/// with exactly `chats` chats, numbered 1 to `chats`.
pub async fn setup_app(base: &str, chats: usize) -> String {
    let client = reqwest::Client::new();
    let app = create_retrying(
        &client,
        &format!("{base}/api/v1/applications"),
        Some(json!({"name": "fault test"})),
    )
    .await;
    let token = app["token"].as_str().unwrap().to_string();
    for n in 1..=chats {
        let chat = create_retrying(
            &client,
            &format!("{base}/api/v1/applications/{token}/chats"),
            None,
        )
        .await;
        assert_eq!(chat["number"], n, "setup's chat {n}: {chat}");
    }
    token
}

/// POSTs `body` (if any) to `url` with a fresh `Idempotency-Key` until it answers
/// 201 (the same key on every retry), retrying 503s and transport errors
/// for up to 30 s; panics with the last answer otherwise. Returns the
/// created resource.
async fn create_retrying(client: &reqwest::Client, url: &str, body: Option<Value>) -> Value {
    let key = uuid::Uuid::new_v4().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut request = client.post(url).header("Idempotency-Key", &key);
        if let Some(body) = &body {
            request = request.json(body);
        }
        let last = match request.send().await {
            Ok(r) if r.status() == 201 => return r.json().await.unwrap(),
            Ok(r) if r.status() == 503 => format!("503: {}", r.text().await.unwrap_or_default()),
            Ok(r) => panic!(
                "setup: POST {url} answered {}: {}",
                r.status(),
                r.text().await.unwrap_or_default()
            ),
            Err(e) => format!("{e}"),
        };
        if Instant::now() > deadline {
            panic!("setup: POST {url} kept failing for 30 s, the last answer: {last}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What the load saw.
#[derive(Default)]
pub struct Ledger {
    /// 201s: `(chat, number) -> body`.
    pub acked: BTreeMap<(i64, i64), String>,
    /// Bodies sent without a usable answer (transport error or 503): each may
    /// or may not have been stored, but never twice.
    pub unknown: HashSet<String>,
    /// Requests made.
    pub requests: u64,
    /// Statuses seen, with counts.
    pub statuses: BTreeMap<u16, u64>,
    /// 503s that carried `Retry-After`.
    pub retry_after: u64,
}

/// A closed-loop load of message POSTs over `chats` chats by `workers` tasks,
/// spread over `bases` (one service each), until `stop`.
pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    ledger: Arc<Mutex<Ledger>>,
}

impl Load {
    /// Starts the load; `tag` starts every body, so that bodies are unique
    /// across loads.
    pub fn start(tag: &str, bases: Vec<String>, token: &str, chats: i64, workers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let tasks = (0..workers)
            .map(|w| {
                let (stop, ledger, client, token, bases, tag) = (
                    stop.clone(),
                    ledger.clone(),
                    client.clone(),
                    token.to_string(),
                    bases.clone(),
                    tag.to_string(),
                );
                tokio::spawn(async move {
                    let mut seq = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        seq += 1;
                        let chat = 1 + (seq as i64 + w as i64) % chats;
                        let base = &bases[(w + seq as usize) % bases.len()];
                        let body = format!("{tag}w{w}-{seq} ✓");
                        let r = client
                            .post(format!(
                                "{base}/api/v1/applications/{token}/chats/{chat}/messages"
                            ))
                            .json(&json!({ "body": body }))
                            .send()
                            .await;
                        // What the answer says, worked out before taking the lock.
                        let (status, retry_after, number) = match r {
                            Ok(resp) => {
                                let status = resp.status().as_u16();
                                let retry_after = resp.headers().contains_key("retry-after");
                                let number = if status == 201 {
                                    resp.json::<Value>()
                                        .await
                                        .ok()
                                        .and_then(|v| v["number"].as_i64())
                                } else {
                                    None
                                };
                                (Some(status), retry_after, number)
                            }
                            Err(_) => (None, false, None),
                        };
                        {
                            let mut l = ledger.lock().unwrap();
                            l.requests += 1;
                            if let Some(status) = status {
                                *l.statuses.entry(status).or_default() += 1;
                                if status == 503 && retry_after {
                                    l.retry_after += 1;
                                }
                            }
                            match number {
                                Some(n) => {
                                    let prev = l.acked.insert((chat, n), body);
                                    assert!(
                                        prev.is_none(),
                                        "number {n} of chat {chat} acknowledged twice"
                                    );
                                    continue;
                                }
                                None => {
                                    l.unknown.insert(body);
                                }
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
            })
            .collect();
        Load {
            stop,
            tasks,
            ledger,
        }
    }

    /// Stops the load and returns what it saw.
    pub async fn stop(self) -> Ledger {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        Arc::try_unwrap(self.ledger)
            .ok()
            .unwrap()
            .into_inner()
            .unwrap()
    }

    /// Statuses seen so far.
    pub fn statuses(&self) -> BTreeMap<u16, u64> {
        self.ledger.lock().unwrap().statuses.clone()
    }
}

/// The promise: every 201 is stored once with its body; nothing else is
/// stored but bodies whose request got no answer, each at most once; numbers
/// are 1..N with no gap in every chat. Returns the number of stored rows.
pub fn check_promise(ledger: &Ledger, stored: &[(i64, i64, String)]) -> usize {
    let lost = check_promise_explaining(ledger, stored, &|_, _| false);
    assert!(lost.is_empty(), "acknowledged and missing: {lost:?}");
    stored.len()
}

/// [`check_promise`] for a Redis that may lose acknowledged writes: an
/// acknowledged number may be missing, and a chat may have a gap, only where
/// `explained(chat, number)` (the range its counter skipped when it was
/// re-checked); a number is still never stored twice nor under a body other
/// than the one acknowledged. Returns the acknowledged numbers missing.
pub fn check_promise_explaining(
    ledger: &Ledger,
    stored: &[(i64, i64, String)],
    explained: &dyn Fn(i64, i64) -> bool,
) -> Vec<(i64, i64)> {
    let mut lost = Vec::new();
    let mut by_key: HashMap<(i64, i64), &str> = HashMap::new();
    let mut bodies: HashSet<&str> = HashSet::new();
    for (chat, n, body) in stored {
        assert!(
            by_key.insert((*chat, *n), body).is_none(),
            "({chat}, {n}) stored twice"
        );
        assert!(bodies.insert(body), "body {body:?} stored twice");
    }
    for ((chat, n), body) in &ledger.acked {
        match by_key.get(&(*chat, *n)) {
            None if explained(*chat, *n) => lost.push((*chat, *n)),
            found => assert_eq!(
                found.copied(),
                Some(body.as_str()),
                "acknowledged ({chat}, {n}) missing or different"
            ),
        }
    }
    for ((chat, n), body) in &by_key {
        if ledger.acked.get(&(*chat, *n)).map(String::as_str) != Some(*body) {
            assert!(
                ledger.unknown.contains(*body),
                "({chat}, {n}) {body:?} was never acknowledged nor left unanswered"
            );
        }
    }
    let mut per_chat: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for (chat, n, _) in stored {
        per_chat.entry(*chat).or_default().push(*n);
    }
    for (chat, numbers) in per_chat {
        let numbers: HashSet<i64> = numbers.into_iter().collect();
        let last = numbers.iter().copied().max().unwrap_or(0);
        for n in 1..=last {
            assert!(
                numbers.contains(&n) || explained(chat, n),
                "chat {chat} has a gap at {n} that no skip explains"
            );
        }
    }
    lost
}

/// Three Redis Sentinels on loopback watching one master under the name
/// `mymaster` (quorum 2, down after 1 s), each with a config file of its own
/// (sentinels rewrite it); killed on drop.
pub struct Sentinels {
    children: Vec<Child>,
    /// Their ports.
    pub ports: Vec<u16>,
    dir: std::path::PathBuf,
}

impl Sentinels {
    /// Starts three sentinels on `master_port`, and waits until each one
    /// knows the master's `replicas` replicas and the two other sentinels
    /// (so that a failover can be agreed on).
    pub async fn start(master_port: u16, replicas: usize) -> Sentinels {
        let dir =
            std::env::temp_dir().join(format!("chat-sentinel-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut sentinels = Sentinels {
            children: Vec::new(),
            ports: Vec::new(),
            dir,
        };
        for i in 0..3 {
            let port = free_port();
            let conf = sentinels.dir.join(format!("sentinel-{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {}\n\
                     logfile {}\n\
                     sentinel monitor mymaster 127.0.0.1 {master_port} 2\n\
                     sentinel down-after-milliseconds mymaster 1000\n\
                     sentinel failover-timeout mymaster 10000\n\
                     sentinel parallel-syncs mymaster 1\n",
                    sentinels.dir.display(),
                    sentinels.dir.join(format!("sentinel-{i}.log")).display()
                ),
            )
            .unwrap();
            let child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server --sentinel starts (Debian package redis-server)");
            sentinels.children.push(child);
            sentinels.ports.push(port);
        }
        let ports = sentinels.ports.clone();
        let ready = eventually(Duration::from_secs(30), || {
            let ports = ports.clone();
            async move {
                for port in ports {
                    let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}"))
                    else {
                        return false;
                    };
                    let Ok(mut c) = client.get_multiplexed_async_connection().await else {
                        return false;
                    };
                    let Ok(info) = redis::cmd("SENTINEL")
                        .arg("MASTER")
                        .arg("mymaster")
                        .query_async::<HashMap<String, String>>(&mut c)
                        .await
                    else {
                        return false;
                    };
                    let known = |f: &str| info.get(f).and_then(|v| v.parse::<usize>().ok());
                    if known("num-slaves") != Some(replicas)
                        || known("num-other-sentinels") != Some(2)
                    {
                        return false;
                    }
                }
                true
            }
        })
        .await;
        assert!(ready, "the sentinels found the replica and each other");
        sentinels
    }

    /// `host:port,host:port,host:port`, as `REDIS_SENTINELS` takes them.
    pub fn addresses(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Each sentinel's log of failover events (`+sdown`, `+odown`,
    /// `+switch-master`, `+convert-to-slave`, `+config-update-from`…), one
    /// block per sentinel, for a failing test to print.
    pub fn events(&self) -> String {
        (0..self.ports.len())
            .map(|i| {
                let log = std::fs::read_to_string(self.dir.join(format!("sentinel-{i}.log")))
                    .unwrap_or_default();
                let lines: Vec<&str> = log
                    .lines()
                    .filter(|l| l.contains(" +") || l.contains(" -"))
                    .collect();
                format!(
                    "sentinel {i} (port {}):\n{}",
                    self.ports[i],
                    lines.join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The master's port as the first sentinel that answers names it.
    pub async fn master_port(&self) -> Option<u16> {
        for port in &self.ports {
            let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}")) else {
                continue;
            };
            let Ok(mut c) = client.get_multiplexed_async_connection().await else {
                continue;
            };
            if let Ok((_, port)) = redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg("mymaster")
                .query_async::<(String, u16)>(&mut c)
                .await
            {
                return Some(port);
            }
        }
        None
    }
}

impl Drop for Sentinels {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
