//! `REDIS_DURABILITY`: `replica` answers 201 only once a replica has the
//! write (503 when none confirms it in time); `fsync` refuses to start on a
//! Redis that does not fsync every write.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chat_api::config::Durability;

use crate::helpers::{spawn_app_with, test_config};

/// A private `redis-server` on a free port with `args`; killed on drop.
struct Server(Child, u16, std::path::PathBuf);

impl Server {
    async fn start(args: &[&str]) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("chat-dur-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(&dir)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let server = Server(child, port, dir);
        for _ in 0..100 {
            if let Ok(c) = redis::Client::open(server.url())
                && let Ok(mut conn) = c.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok()
            {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the private redis-server did not come up");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.1)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.2);
    }
}

/// Waits until `primary` reports `n` replicas, all online (synced).
async fn replicas(primary: &Server, n: usize) {
    let mut c = redis::Client::open(primary.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for _ in 0..100 {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut c)
            .await
            .unwrap();
        if info.contains(&format!("connected_slaves:{n}"))
            && info.matches("state=online").count() == n
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the primary never had {n} replicas");
}

#[tokio::test]
async fn replica_durability_answers_201_only_once_a_replica_has_the_write() {
    let primary = Server::start(&["--maxmemory-policy", "noeviction"]).await;
    let replica = Server::start(&["--replicaof", "127.0.0.1", &primary.1.to_string()]).await;
    replicas(&primary, 1).await;
    let app = spawn_app_with(|c| {
        c.redis_url = primary.url();
        c.redis_durability = Durability::Replica;
        c.redis_wait_ms = 300;
    })
    .await;
    let token = app.create_app("replicated").await;
    let chat = app.create_chat(&token).await;
    assert_eq!(app.create_message(&token, chat, "on two servers").await, 1);

    drop(replica);
    replicas(&primary, 0).await;
    let started = Instant::now();
    let r = app
        .post(
            &format!("/applications/{token}/chats/{chat}/messages"),
            serde_json::json!({"body": "on one server only"}),
        )
        .await;
    assert_eq!(r.status(), 503, "no replica confirmed it");
    assert!(r.headers().contains_key("retry-after"));
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "it waited REDIS_WAIT_MS"
    );
    assert!(r.text().await.unwrap().contains("replica"));
}

#[tokio::test]
async fn fsync_durability_refuses_a_redis_that_does_not_fsync_every_write() {
    let lazy = Server::start(&["--appendonly", "yes", "--appendfsync", "everysec"]).await;
    let mut config = test_config();
    config.redis_url = lazy.url();
    config.redis_durability = Durability::Fsync;
    let refused = chat_api::startup::Application::build(config, true).await;
    let err = format!("{:#}", refused.err().expect("start-up is refused"));
    assert!(err.contains("appendfsync always"), "{err}");

    let strict = Server::start(&["--appendonly", "yes", "--appendfsync", "always"]).await;
    let app = spawn_app_with(|c| {
        c.redis_url = strict.url();
        c.redis_durability = Durability::Fsync;
    })
    .await;
    let token = app.create_app("fsynced").await;
    assert_eq!(app.create_chat(&token).await, 1);
}
