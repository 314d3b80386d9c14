//! The monitoring pack (`deploy/`), tested for real: `promtool` checks and
//! unit-tests the alert rules, then a real Prometheus (Debian's package, on
//! a free loopback port, its own data directory) scrapes a real service
//! under a short load, and every query of the Grafana dashboard and of the
//! alert rules is run through Prometheus's HTTP API: each panel returns
//! data, each alert expression is valid, and every metric an alert names
//! exists, so that no panel or alert names a metric that does not exist.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Load, PrivateRedis, World, free_port, setup_app};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// Runs `tool args` in `dir` and panics with its output unless it succeeds.
fn run(tool: &str, args: &[&str], dir: &Path) {
    let out = Command::new(tool)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("{tool} is not installed ({e}): `scripts/test` installs Debian's `prometheus` package")
        });
    assert!(
        out.status.success(),
        "{tool} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Prometheus on a free loopback port, scraping `target` every second and
/// evaluating `deploy/prometheus/alerts.yml`; killed on drop.
struct Prometheus {
    child: Child,
    base: String,
    dir: PathBuf,
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("chat-prometheus-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let rules = deploy().join("prometheus/alerts.yml");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: chat-api\n    static_configs:\n      - targets: ['{target}']\n",
            rules.display()
        );
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "prometheus is installed (`scripts/test` installs Debian's `prometheus` package)",
            );
        Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
            dir,
        }
    }

    /// The result vector of an instant query; panics if Prometheus refuses it.
    async fn query(&self, http: &reqwest::Client, expr: &str) -> Vec<Value> {
        let r: Value = http
            .get(format!("{}/api/v1/query", self.base))
            .query(&[("query", expr)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["status"], "success", "{expr}: {r}");
        r["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `expr:` of every rule of `alerts.yml` (one line each, by the file's
/// convention), with its alert's name.
fn alert_exprs() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(deploy().join("prometheus/alerts.yml")).unwrap();
    let mut out = Vec::new();
    let mut name = String::new();
    for line in text.lines().map(str::trim) {
        if let Some(n) = line.strip_prefix("- alert:") {
            name = n.trim().to_string();
        } else if let Some(e) = line.strip_prefix("expr:") {
            out.push((name.clone(), e.trim().to_string()));
        }
    }
    out
}

/// The metric names in a PromQL expression (`chat_…`, `http_…`).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names: Vec<String> = expr
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("chat_") || w.starts_with("http_"))
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_and_alert_of_the_monitoring_pack_queries_real_metrics() {
    let rules_dir = deploy().join("prometheus");
    run("promtool", &["check", "rules", "alerts.yml"], &rules_dir);
    run(
        "promtool",
        &["test", "rules", "alerts.test.yml"],
        &rules_dir,
    );

    let redis = PrivateRedis::start().await;
    let world = World::new(&[
        ("REDIS_URL", redis.url()),
        ("FLUSH_INTERVAL_SECS", "1".into()),
        ("MESSAGE_BATCH_SIZE", "200".into()),
        ("SEARCH_INDEX_INTERVAL_MS", "200".into()),
    ])
    .await;
    let port = free_port();
    let service = world.start(port).await;
    let prometheus = Prometheus::start(&format!("127.0.0.1:{port}"));
    let token = setup_app(&service.base(), 4).await;
    let load = Load::start("monitoring", vec![service.base()], &token, 4, 4);
    let http = reqwest::Client::new();
    // Load for 12 s under 1 s scrapes: every rate has samples to work on.
    tokio::time::sleep(Duration::from_secs(12)).await;

    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy().join("grafana/chat-api.json")).unwrap(),
    )
    .unwrap();
    let mut empty = Vec::new();
    let panels = dashboard["panels"].as_array().unwrap();
    for panel in panels {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            if prometheus.query(&http, expr).await.is_empty() {
                empty.push(format!("{}: {expr}", panel["title"]));
            }
        }
    }
    let alerts = alert_exprs();
    assert!(alerts.len() >= 10, "the rules were read: {alerts:?}");
    for (alert, expr) in &alerts {
        // Valid PromQL (it may well return nothing: the alert is not firing).
        prometheus.query(&http, expr).await;
        for name in metric_names(expr) {
            if prometheus
                .query(&http, &format!("count({{__name__=\"{name}\"}})"))
                .await
                .is_empty()
            {
                empty.push(format!("alert {alert}: no series of {name}"));
            }
        }
    }
    // Prometheus evaluates the rules itself: none is in error.
    let rules: Value = http
        .get(format!("{}/api/v1/rules", prometheus.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let evaluated: Vec<&Value> = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert_eq!(evaluated.len(), alerts.len(), "every rule is loaded");
    for rule in &evaluated {
        assert_ne!(rule["health"], "err", "{rule}");
    }
    let statuses = load.statuses();
    load.stop().await;
    eprintln!(
        "{} panels and {} alerts checked against Prometheus; the load got {statuses:?}",
        panels.len(),
        alerts.len(),
    );
    assert!(
        empty.is_empty(),
        "queries without data:\n{}",
        empty.join("\n")
    );
    drop(prometheus);
    drop(service);
    world.cleanup().await;
}
