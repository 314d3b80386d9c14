//! What the service writes to its log: never a token, at any level.

use std::time::Duration;

use serde_json::json;

use crate::harness::{PrivateRedis, World, free_port};
use crate::numbering::{Client, env};

/// No token in any log line, at any level: the whole API flow of one
/// application at `RUST_LOG=debug`, everything the process writes captured,
/// and the token never in it (the request lines carry the route template
/// and the token's fingerprint instead).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_reaches_the_log_even_at_debug() {
    let redis = PrivateRedis::start().await;
    let mut settings = env(&redis);
    settings.push(("RUST_LOG", "debug".into()));
    let world = World::new(&settings).await;
    let port = free_port();
    let mut service = world.start(port).await;
    let client = Client::new(service.base());
    let token = client.app_with_chats(2).await;
    let http = reqwest::Client::new();
    let api = format!("{}/api/v1/applications/{token}", service.base());
    let mut statuses = Vec::new();
    for (method, path, body) in [
        (
            "POST",
            "/chats/1/messages",
            Some(json!({"body": "hello logs"})),
        ),
        ("GET", "/chats/1/messages/1", None),
        (
            "PUT",
            "/chats/1/messages/1",
            Some(json!({"body": "edited"})),
        ),
        ("GET", "/chats/1/messages?page=1&per_page=5", None),
        ("GET", "/chats/1/messages/search?q=edited", None),
        ("GET", "/chats", None),
        ("GET", "", None),
        ("PUT", "", Some(json!({"name": "renamed"}))),
        ("POST", "/chats/1/messages", Some(json!({"body": 5}))),
        ("GET", "/chats/99", None),
        ("DELETE", "/chats/1/messages/1", None),
        ("DELETE", "/chats/2", None),
        ("DELETE", "", None),
    ] {
        let mut req = http.request(method.parse().unwrap(), format!("{api}{path}"));
        if let Some(b) = body {
            req = req.json(&b);
        }
        statuses.push(req.send().await.unwrap().status().as_u16());
    }
    assert!(
        service.terminate(Duration::from_secs(30)),
        "SIGTERM exits 0"
    );
    let log = std::fs::read_to_string(format!(
        "{}/fault-{}-{port}.log",
        std::env::temp_dir().display(),
        world.db
    ))
    .unwrap();
    let fingerprint = chat_api::telemetry::token_fingerprint(&token);
    eprintln!(
        "no token in the log: {} lines at debug, statuses {statuses:?}, {} lines name the fingerprint {fingerprint}",
        log.lines().count(),
        log.matches(&fingerprint).count()
    );
    assert!(log.contains("DEBUG"), "debug logs were written");
    assert!(!log.contains(&token), "the token is in the log");
    assert!(log.contains(&fingerprint), "requests carry its fingerprint");
    assert!(
        log.contains("/api/v1/applications/:param0/chats"),
        "and their route template"
    );
    world.cleanup().await;
}
