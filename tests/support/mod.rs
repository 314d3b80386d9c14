//! Helpers shared by the API tests, the fault tests and the benchmarks
//! (each includes this file with `#[path]`): free ports, polling, stopping a
//! child process, and a private `redis-server`.

#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Polls `check` every 200 ms until it holds or `within` passes; returns
/// whether it held.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// SIGTERM to `child`, then waits up to `within` for it to exit, and
/// SIGKILLs it if it did not. Returns whether it exited 0 on its own. (A
/// child that is gone already is fine.)
pub fn terminate(child: &mut Child, within: Duration) -> bool {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stderr(Stdio::null())
        .status();
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return status.success();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private `redis-server` on a free loopback port, persisting only when
/// told to (`SAVE`, RDB; no AOF), in a directory of its own; killed on drop.
pub struct PrivateRedis {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
    dir: std::path::PathBuf,
    extra: Vec<String>,
}

impl PrivateRedis {
    /// Starts it and waits until it answers PING.
    pub async fn start() -> PrivateRedis {
        PrivateRedis::start_with(&[]).await
    }

    /// [`Self::start`] with more `redis-server` arguments (for example
    /// `--replicaof 127.0.0.1 6379`).
    pub async fn start_with(extra: &[&str]) -> PrivateRedis {
        let dir =
            std::env::temp_dir().join(format!("chat-redis-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut redis = PrivateRedis {
            child: None,
            port: free_port(),
            dir,
            extra: extra.iter().map(|a| a.to_string()).collect(),
        };
        redis.spawn().await;
        redis
    }

    /// Starts one from a copy of the snapshot `rdb` (another server's
    /// `dump.rdb`): a stand-in for a copy of that server promoted or
    /// restored beside it.
    pub async fn start_from(rdb: &std::path::Path) -> PrivateRedis {
        let dir =
            std::env::temp_dir().join(format!("chat-redis-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(rdb, dir.join("dump.rdb")).unwrap();
        let mut redis = PrivateRedis {
            child: None,
            port: free_port(),
            dir,
            extra: Vec::new(),
        };
        redis.spawn().await;
        redis
    }

    /// Its working directory (`dump.rdb`, `appendonlydir/`).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// `redis://127.0.0.1:{port}`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--dbfilename",
                "dump.rdb",
            ])
            .args(["--maxmemory-policy", "noeviction", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts (Debian package redis-server)");
        self.child = Some(child);
        let url = self.url();
        let up = eventually(Duration::from_secs(10), || {
            let url = url.clone();
            async move {
                match redis::Client::open(url) {
                    Ok(c) => match c.get_multiplexed_async_connection().await {
                        Ok(mut conn) => redis::cmd("PING")
                            .query_async::<String>(&mut conn)
                            .await
                            .is_ok(),
                        Err(_) => false,
                    },
                    Err(_) => false,
                }
            }
        })
        .await;
        assert!(up, "the private redis-server answers on {}", self.port);
    }

    /// Waits until this replica is in sync with its master
    /// (`master_link_status:up`).
    pub async fn wait_in_sync(&self) {
        let url = self.url();
        let synced = eventually(Duration::from_secs(20), || {
            let url = url.clone();
            async move {
                let Ok(mut c) = redis::Client::open(url)
                    .unwrap()
                    .get_multiplexed_async_connection()
                    .await
                else {
                    return false;
                };
                redis::cmd("INFO")
                    .arg("replication")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok_and(|info| info.contains("master_link_status:up"))
            }
        })
        .await;
        assert!(
            synced,
            "the replica on {} synced with its master",
            self.port
        );
    }

    /// A connection to the server. Errors: it does not answer.
    pub async fn connection(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        redis::Client::open(self.url())?
            .get_multiplexed_async_connection()
            .await
    }

    /// `INFO replication`'s role, master, link and offset lines, joined by
    /// spaces (for a failing test to print).
    pub async fn role(&self) -> String {
        let Ok(mut c) = self.connection().await else {
            return "unreachable".into();
        };
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut c)
            .await
            .unwrap_or_default();
        info.lines()
            .filter(|l| {
                [
                    "role:",
                    "master_port:",
                    "master_link_status:",
                    "master_sync_in_progress:",
                    "master_replid:",
                    "master_repl_offset:",
                ]
                .iter()
                .any(|f| l.starts_with(f))
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// `CONFIG SET name value`.
    pub async fn config_set(&self, name: &str, value: &str) {
        let mut c = self.connection().await.unwrap();
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg(name)
            .arg(value)
            .query_async(&mut c)
            .await
            .unwrap();
    }

    /// `SAVE`: a snapshot of now, in `dump.rdb`.
    pub async fn save(&self) {
        let mut c = self.connection().await.unwrap();
        let _: () = redis::cmd("SAVE").query_async(&mut c).await.unwrap();
    }

    /// Sends `signal` (`STOP`, `CONT`) to the server.
    pub fn signal(&self, signal: &str) {
        if let Some(c) = &self.child {
            Command::new("kill")
                .args([format!("-{signal}"), c.id().to_string()])
                .status()
                .unwrap();
        }
    }

    /// SIGKILL: everything since the last `SAVE` is gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port, from the last snapshot.
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn().await;
    }

    /// [`Self::restart`] with these `redis-server` arguments instead of
    /// those it was started with (for example `--replicaof` the node that
    /// is master now); later restarts keep them.
    pub async fn restart_with(&mut self, extra: &[&str]) {
        self.extra = extra.iter().map(|a| a.to_string()).collect();
        self.restart().await;
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A MariaDB primary with a binary log and its GTID replica, started by
/// `scripts/replication` on free loopback ports in a directory of their
/// own; stopped (and the directory removed) on drop. For the read-replica
/// tests and figure 17.
pub struct ReplicationPair {
    dir: std::path::PathBuf,
    /// `mysql://chat:chat@127.0.0.1:{port}` of the primary (no database).
    pub primary: String,
    /// The same of the replica.
    pub replica: String,
}

impl ReplicationPair {
    /// `scripts/replication` of this checkout (from the crate's own
    /// directory, the workspace root or `bench/`).
    fn script() -> std::path::PathBuf {
        let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let own = here.join("scripts/replication");
        if own.exists() {
            own
        } else {
            here.join("../scripts/replication")
        }
    }

    /// Starts the pair (about 4 s). Panics when the script fails, with its
    /// output.
    pub fn start() -> ReplicationPair {
        let dir = std::env::temp_dir().join(format!("chat-repl-{}", uuid::Uuid::new_v4().simple()));
        let out = Command::new("bash")
            .arg(Self::script())
            .arg("start")
            .arg(&dir)
            .output()
            .expect("bash runs");
        assert!(
            out.status.success(),
            "scripts/replication start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let env = std::fs::read_to_string(dir.join("env")).expect("the pair's env file");
        let get = |name: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("{name} missing from the pair's env"))
                .to_string()
        };
        ReplicationPair {
            primary: get("TEST_PRIMARY_URL"),
            replica: get("TEST_REPLICA_URL"),
            dir,
        }
    }

    /// The pid of its `primary` or `replica` server (0 if unknown).
    pub fn pid(&self, name: &str) -> i32 {
        std::fs::read_to_string(self.dir.join(name).join("pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for ReplicationPair {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(Self::script())
            .arg("stop")
            .arg(&self.dir)
            .output();
    }
}

/// A TCP proxy a test can cut (every open connection dropped, new ones
/// accepted and closed at once) or freeze (connections stay open and
/// nothing passes, as over a half-open link or to a `SIGSTOP`ped server).
pub struct Proxy {
    /// Where clients connect.
    pub addr: std::net::SocketAddr,
    cut: Arc<std::sync::atomic::AtomicBool>,
    frozen: Arc<std::sync::atomic::AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// A proxy on a free loopback port forwarding to `upstream`.
    pub async fn start(upstream: std::net::SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let frozen = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (c2, k2, f2) = (cut.clone(), conns.clone(), frozen.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                if c2.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let frozen = f2.clone();
                let h = tokio::spawn(async move {
                    if let Ok(outbound) = tokio::net::TcpStream::connect(upstream).await {
                        let (ri, wi) = inbound.into_split();
                        let (ro, wo) = outbound.into_split();
                        tokio::select! {
                            _ = pump(ri, wo, frozen.clone()) => {}
                            _ = pump(ro, wi, frozen) => {}
                        }
                    }
                });
                k2.lock().unwrap().push(h.abort_handle());
            }
        });
        Proxy {
            addr,
            cut,
            frozen,
            conns,
            task,
        }
    }

    /// Freezes every connection, open or new, as a `SIGSTOP` of the
    /// upstream server would: connections stay open, and nothing passes
    /// either way until [`Self::thaw`].
    pub fn freeze(&self) {
        self.frozen.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Lets bytes pass again after [`Self::freeze`].
    pub fn thaw(&self) {
        self.frozen
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Cuts every connection, now and until [`Self::heal`].
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }

    /// Lets connections through again.
    pub fn heal(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Copies `from` to `to`, holding every byte while `frozen` is set.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while frozen.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while frozen.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }
}
