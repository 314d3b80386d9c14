//! The monitoring pack (`deploy/`), tested like code.
//!
//! - [`the_rules_are_complete_and_documented`] (no services): `promtool`
//!   checks and unit-tests the rules (`alerts.test.yml`: a firing and a
//!   quiet case for every alert, checked here); every alert has a severity,
//!   a summary, a description and a `runbook_url` into a section of
//!   `docs/runbook.md`; every selector names its `job`; every metric the code
//!   registers is in both metrics tables (`src/telemetry/metrics.rs`,
//!   `docs/operations.md`); every metric a rule or panel names is one the
//!   code registers, or an exporter's (by prefix).
//! - [`every_panel_and_alert_of_the_monitoring_pack_queries_real_metrics`]:
//!   a real Prometheus (Debian's package, on a free loopback port, its own
//!   data directory) scrapes a real service under a short load, a real
//!   redis_exporter and a real mysqld_exporter (Debian's
//!   `prometheus-redis-exporter` and `prometheus-mysqld-exporter`, on free
//!   ports), and every query of the Grafana dashboard and of the rules is
//!   run through its HTTP API: each panel returns data, each expression is
//!   valid, and every metric a rule names has series (but the few that
//!   exist only with read replicas, [`CONDITIONAL`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Load, PrivateRedis, World, free_port, mysql_url, setup_app};

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

/// A Prometheus on a free loopback port, scraping each `(job, target)`
/// every second and evaluating `deploy/prometheus/alerts.yml`; killed on
/// drop.
struct Prometheus {
    child: Child,
    base: String,
    dir: PathBuf,
}

impl Prometheus {
    fn start(jobs: &[(&str, String)]) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("chat-prometheus-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let rules = deploy().join("prometheus/alerts.yml");
        let mut config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n",
            rules.display()
        );
        for (job, target) in jobs {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n"
            ));
        }
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

/// An exporter process (Debian's package) on a free loopback port; killed
/// on drop.
struct Exporter {
    child: Child,
    /// `127.0.0.1:port`, its `/metrics`.
    target: String,
}

impl Exporter {
    /// `binary` with `args` and `--web.listen-address` on a free port, and
    /// the environment `env`.
    fn start(binary: &str, args: &[String], env: &[(&str, String)]) -> Exporter {
        let target = format!("127.0.0.1:{}", free_port());
        let child = Command::new(binary)
            .args(args)
            .arg(format!("--web.listen-address={target}"))
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{binary} is installed ({e}): `scripts/test` installs Debian's package")
            });
        Exporter { child, target }
    }

    /// redis_exporter on the Redis at `url`.
    fn redis(url: &str) -> Exporter {
        Exporter::start(
            "prometheus-redis-exporter",
            &[format!("--redis.addr={url}")],
            &[],
        )
    }

    /// mysqld_exporter (0.14, `DATA_SOURCE_NAME`) on the MariaDB server of
    /// `TEST_MYSQL_URL`.
    fn mysqld() -> Exporter {
        let url = reqwest::Url::parse(&mysql_url()).expect("TEST_MYSQL_URL is a URL");
        let password = url.password().map(|p| format!(":{p}")).unwrap_or_default();
        let dsn = format!(
            "{}{password}@({}:{})/",
            url.username(),
            url.host_str().unwrap_or("127.0.0.1"),
            url.port().unwrap_or(3306)
        );
        Exporter::start(
            "prometheus-mysqld-exporter",
            &[],
            &[("DATA_SOURCE_NAME", dsn)],
        )
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One rule of `alerts.yml`.
#[derive(Debug, serde::Deserialize)]
struct Rule {
    alert: Option<String>,
    record: Option<String>,
    expr: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// Every rule of `alerts.yml`, alerts and recording rules.
fn rules() -> Vec<Rule> {
    #[derive(serde::Deserialize)]
    struct Group {
        rules: Vec<Rule>,
    }
    #[derive(serde::Deserialize)]
    struct File {
        groups: Vec<Group>,
    }
    let text = std::fs::read_to_string(deploy().join("prometheus/alerts.yml")).unwrap();
    let file: File = serde_yaml::from_str(&text).expect("alerts.yml is YAML");
    file.groups.into_iter().flat_map(|g| g.rules).collect()
}

/// The `(name, expression)` of every rule: alerts by their name, recording
/// rules by the series they record.
fn rule_exprs() -> Vec<(String, String)> {
    rules()
        .into_iter()
        .map(|r| (r.alert.or(r.record).unwrap_or_default(), r.expr))
        .collect()
}

/// The identifiers of a PromQL expression that name series: each word not
/// inside a string, not a function or keyword (a word followed by `(`, or
/// `by`, `on`, `and`…), not a label name in a `{…}` matcher or a `by (…)`
/// list, and not a number. Returns `(name, its matcher text)` (`""`
/// without braces).
fn selectors(expr: &str) -> Vec<(String, String)> {
    const KEYWORDS: [&str; 26] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
        "group",
        "limitk",
    ];
    let bytes: Vec<char> = expr.chars().collect();
    let (mut out, mut i, mut list_depth) = (Vec::new(), 0, 0usize);
    let mut in_list: Vec<bool> = Vec::new();
    while i < bytes.len() {
        let c = bytes[i];
        if c == '"' {
            i += 1;
            while i < bytes.len() && bytes[i] != '"' {
                i += if bytes[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            continue;
        }
        if c == '[' {
            while i < bytes.len() && bytes[i] != ']' {
                i += 1;
            }
            continue;
        }
        if c == '(' {
            in_list.push(list_depth > 0);
            list_depth = 0;
            i += 1;
            continue;
        }
        if c == ')' {
            in_list.pop();
            i += 1;
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric() || bytes[i] == '_' || bytes[i] == ':')
            {
                i += 1;
            }
            let word: String = bytes[start..i].iter().collect();
            let mut j = i;
            while j < bytes.len() && bytes[j] == ' ' {
                j += 1;
            }
            let next = bytes.get(j).copied();
            if KEYWORDS.contains(&word.as_str()) {
                // `by (`, `on (`, `group_left (`: a list of label names.
                list_depth = usize::from(matches!(
                    word.as_str(),
                    "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                ));
                continue;
            }
            list_depth = 0;
            if next == Some('(') || in_list.last() == Some(&true) {
                continue;
            }
            let matcher = if next == Some('{') {
                let end = bytes[j..].iter().position(|&c| c == '}').unwrap() + j;
                let m: String = bytes[j..=end].iter().collect();
                i = end + 1;
                m
            } else {
                String::new()
            };
            out.push((word, matcher));
            continue;
        }
        // A number (`0.8`, `1e9`) is skipped whole.
        if c.is_ascii_digit() {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == '.') {
                i += 1;
            }
            list_depth = 0;
            continue;
        }
        if !c.is_whitespace() {
            list_depth = 0;
        }
        i += 1;
    }
    out
}

/// The metric names of a PromQL expression (recording rules' names, with a
/// `:`, are left out: [`rule_exprs`] defines them).
fn metric_names(expr: &str) -> BTreeSet<String> {
    selectors(expr)
        .into_iter()
        .map(|(name, _)| name)
        .filter(|n| !n.contains(':'))
        .collect()
}

/// A histogram's series name without its `_bucket`, `_count` or `_sum`.
fn base_name(name: &str) -> &str {
    ["_bucket", "_count", "_sum"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name)
}

/// Every metric the service registers: the names in `src/telemetry/metrics.rs`
/// (the only module that records metrics: `counter!`, `gauge!`,
/// `histogram!`, and the lists of counters exported at 0).
fn registered_metrics() -> BTreeSet<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let code = std::fs::read_to_string(root.join("src/telemetry/metrics.rs")).unwrap();
    let mut names = BTreeSet::new();
    for piece in code.split('"').skip(1).step_by(2) {
        let is_name = (piece.starts_with("chat_") || piece.starts_with("http_"))
            && piece.chars().all(|c| c.is_ascii_lowercase() || c == '_');
        if is_name {
            names.insert(piece.to_string());
        }
    }
    names
}

/// Exporters' metrics, allowed in rules and panels by their prefix (the
/// code does not register them): redis_exporter's, mysqld_exporter's, and
/// Prometheus's own `up`.
const EXPORTER_PREFIXES: [&str; 2] = ["redis_", "mysql_"];

/// Metrics that exist only in some deployments: the read replicas' (with
/// `DATABASE_READ_URLS`), a replica's replication status. The real scrape
/// does not have them; [`the_rules_are_complete_and_documented`] still
/// checks that the code registers them.
const CONDITIONAL: [&str; 5] = [
    "chat_read_replica_in_rotation",
    "chat_read_replica_lag_seconds",
    "chat_read_replica_max_lag_seconds",
    "mysql_slave_status_slave_io_running",
    "mysql_slave_status_slave_sql_running",
];

/// The Grafana dashboard's queries, with their panel's title, its
/// variables set as a user would: job `chat-api`, every instance.
fn panel_queries() -> Vec<(String, String)> {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy().join("grafana/chat-api.json")).unwrap(),
    )
    .unwrap();
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push((
                panel["title"].as_str().unwrap_or_default().to_string(),
                target["expr"]
                    .as_str()
                    .unwrap()
                    .replace("$job", "chat-api")
                    .replace("$instance", ".*"),
            ));
        }
    }
    out
}

#[test]
fn the_rules_are_complete_and_documented() {
    let rules_dir = deploy().join("prometheus");
    run("promtool", &["check", "rules", "alerts.yml"], &rules_dir);
    run(
        "promtool",
        &["test", "rules", "alerts.test.yml"],
        &rules_dir,
    );
    // Compose's Prometheus configuration, with the rules at their path
    // here rather than in the container.
    let config = std::fs::read_to_string(rules_dir.join("prometheus.yml"))
        .unwrap()
        .replace(
            "/etc/prometheus/alerts.yml",
            &rules_dir.join("alerts.yml").display().to_string(),
        );
    let config_path =
        std::env::temp_dir().join(format!("chat-prometheus-{}.yml", uuid::Uuid::new_v4()));
    std::fs::write(&config_path, config).unwrap();
    run(
        "promtool",
        &["check", "config", &config_path.display().to_string()],
        &rules_dir,
    );
    let _ = std::fs::remove_file(&config_path);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let runbook = std::fs::read_to_string(root.join("docs/runbook.md")).unwrap();
    let mut problems = Vec::new();
    let rules = rules();
    let alerts: Vec<&Rule> = rules.iter().filter(|r| r.alert.is_some()).collect();
    assert!(alerts.len() >= 30, "the alerts were read: {}", alerts.len());

    // Each alert: severity, summary, description, a runbook section.
    for rule in &alerts {
        let name = rule.alert.as_deref().unwrap();
        let severity = rule.labels.get("severity").map(String::as_str);
        if !matches!(severity, Some("critical" | "warning")) {
            problems.push(format!("{name}: severity {severity:?}"));
        }
        for key in ["summary", "description", "runbook_url"] {
            if rule
                .annotations
                .get(key)
                .is_none_or(|v| v.trim().is_empty())
            {
                problems.push(format!("{name}: no {key}"));
            }
        }
        let url = rule
            .annotations
            .get("runbook_url")
            .cloned()
            .unwrap_or_default();
        if url != format!("docs/runbook.md#{}", name.to_lowercase()) {
            problems.push(format!("{name}: runbook_url {url}"));
        }
        if !runbook.lines().any(|l| l == format!("### {name}")) {
            problems.push(format!(
                "{name}: no `### {name}` section in docs/runbook.md"
            ));
        }
    }
    // Every selector of every rule names its job (a recording rule's series
    // carry the job they were recorded from).
    for (name, expr) in rule_exprs() {
        for (metric, matcher) in selectors(&expr) {
            if !metric.contains(':') && !matcher.contains("job=") {
                problems.push(format!("{name}: `{metric}{matcher}` has no job matcher"));
            }
        }
    }
    // And every selector of every panel (the exporters' panels name
    // theirs, `redis` and `mariadb`; the service's follow the `job`
    // variable).
    for (title, expr) in panel_queries() {
        for (metric, matcher) in selectors(&expr) {
            if !metric.contains(':') && !matcher.contains("job=") {
                problems.push(format!(
                    "panel {title}: `{metric}{matcher}` has no job matcher"
                ));
            }
        }
    }
    // alerts.test.yml: a case where each alert fires, one where it is quiet.
    #[derive(serde::Deserialize)]
    struct Check {
        alertname: String,
        #[serde(default)]
        exp_alerts: Vec<serde_yaml::Value>,
    }
    #[derive(serde::Deserialize)]
    struct Case {
        #[serde(default)]
        alert_rule_test: Vec<Check>,
    }
    #[derive(serde::Deserialize)]
    struct Tests {
        tests: Vec<Case>,
    }
    let tests: Tests =
        serde_yaml::from_str(&std::fs::read_to_string(rules_dir.join("alerts.test.yml")).unwrap())
            .unwrap();
    for rule in &alerts {
        let name = rule.alert.as_deref().unwrap();
        // Fires: some check expects it. Quiet: a case checks it and never
        // expects it (an empty check before a `for:` ran out does not count).
        let of_case = |case: &Case| -> Vec<bool> {
            case.alert_rule_test
                .iter()
                .filter(|c| c.alertname == name)
                .map(|c| !c.exp_alerts.is_empty())
                .collect()
        };
        let fires = tests.tests.iter().any(|t| of_case(t).contains(&true));
        let quiet = tests.tests.iter().any(|t| {
            let checks = of_case(t);
            !checks.is_empty() && !checks.contains(&true)
        });
        if !fires || !quiet {
            problems.push(format!(
                "{name}: alerts.test.yml has {} firing and {} quiet case",
                if fires { "a" } else { "no" },
                if quiet { "a" } else { "no" }
            ));
        }
    }
    // Every metric the code registers is in both metrics tables.
    let registered = registered_metrics();
    assert!(
        registered.len() >= 30,
        "the metrics were read: {registered:?}"
    );
    let code_doc: String = std::fs::read_to_string(root.join("src/telemetry/metrics.rs"))
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("//! |"))
        .collect();
    let operations: String = std::fs::read_to_string(root.join("docs/operations.md"))
        .unwrap()
        .lines()
        .filter(|l| l.starts_with('|'))
        .collect();
    for name in &registered {
        let documented = |table: &str| {
            table.contains(&format!("`{name}`")) || table.contains(&format!("`{name}{{"))
        };
        if !documented(&code_doc) {
            problems.push(format!(
                "{name}: not in the table of src/telemetry/metrics.rs"
            ));
        }
        if !documented(&operations) {
            problems.push(format!(
                "{name}: not in the metrics table of docs/operations.md"
            ));
        }
    }
    // Every metric a rule or panel names exists: registered by the code,
    // or an exporter's.
    let named = rule_exprs()
        .into_iter()
        .chain(panel_queries())
        .flat_map(|(owner, expr)| {
            metric_names(&expr)
                .into_iter()
                .map(move |m| (owner.clone(), m))
        });
    for (owner, metric) in named {
        let known = registered.contains(base_name(&metric))
            || metric == "up"
            || EXPORTER_PREFIXES.iter().any(|p| metric.starts_with(p));
        if !known {
            problems.push(format!("{owner}: names {metric}, which nothing exports"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_selector_scanner_finds_series_and_skips_labels() {
    let found = selectors(
        r#"max by (job, queue) (a_b{job="x",q=~"y|z"}) > on (job) group_left 0.8 * max by (job) (c{job="x"} > 0) or rate(d[5m]) and job:e:ratio_rate5m > (14.4 * 0.001) or absent(up{job="x"})"#,
    );
    let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["a_b", "c", "d", "job:e:ratio_rate5m", "up"]);
    assert_eq!(found[2].1, "", "d has no matcher");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_and_alert_of_the_monitoring_pack_queries_real_metrics() {
    // Redis with a maxmemory, as compose runs it.
    let redis = PrivateRedis::start_with(&["--maxmemory", "256mb"]).await;
    let world = World::new(&[
        ("REDIS_URL", redis.url()),
        ("FLUSH_INTERVAL_SECS", "1".into()),
        ("MESSAGE_BATCH_SIZE", "200".into()),
        ("SEARCH_INDEX_INTERVAL_MS", "200".into()),
    ])
    .await;
    let port = free_port();
    let service = world.start(port).await;
    let redis_exporter = Exporter::redis(&redis.url());
    let mysqld_exporter = Exporter::mysqld();
    let prometheus = Prometheus::start(&[
        ("chat-api", format!("127.0.0.1:{port}")),
        ("redis", redis_exporter.target.clone()),
        ("mariadb", mysqld_exporter.target.clone()),
    ]);
    let token = setup_app(&service.base(), 4).await;
    let load = Load::start("monitoring", vec![service.base()], &token, 4, 4);
    let http = reqwest::Client::new();
    // Load for 12 s under 1 s scrapes: every rate has samples to work on.
    // Reads too, for the read-latency panel.
    let reads_until = std::time::Instant::now() + Duration::from_secs(12);
    while std::time::Instant::now() < reads_until {
        let r = http
            .get(format!(
                "{}/api/v1/applications/{token}/chats",
                service.base()
            ))
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success() || r.status() == 429,
            "{}",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut empty = Vec::new();
    // Every target is up, and each exporter reaches its server.
    for expr in [
        r#"up{job="chat-api"} == 1"#,
        r#"up{job="redis"} == 1"#,
        r#"up{job="mariadb"} == 1"#,
        r#"redis_up{job="redis"} == 1"#,
        r#"mysql_up{job="mariadb"} == 1"#,
    ] {
        if prometheus.query(&http, expr).await.is_empty() {
            empty.push(format!("not up: {expr}"));
        }
    }
    let panels = panel_queries();
    for (title, expr) in &panels {
        let conditional = metric_names(expr)
            .iter()
            .all(|m| CONDITIONAL.contains(&base_name(m)));
        if !conditional && prometheus.query(&http, expr).await.is_empty() {
            empty.push(format!("panel {title}: {expr}"));
        }
    }
    let exprs = rule_exprs();
    for (rule, expr) in &exprs {
        // Valid PromQL (it may well return nothing: the alert is not firing).
        prometheus.query(&http, expr).await;
        for name in metric_names(expr) {
            if CONDITIONAL.contains(&base_name(&name)) {
                continue;
            }
            if prometheus
                .query(&http, &format!("count({{__name__=\"{name}\"}})"))
                .await
                .is_empty()
            {
                empty.push(format!("rule {rule}: no series of {name}"));
            }
        }
    }
    // The recording rules record: the create ratios over 5 minutes exist.
    for record in [
        "job:chat_create_errors:ratio_rate5m",
        "job:chat_create_slow:ratio_rate5m",
    ] {
        if prometheus.query(&http, record).await.is_empty() {
            empty.push(format!("recording rule {record}: no series"));
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
    assert_eq!(evaluated.len(), exprs.len(), "every rule is loaded");
    for rule in &evaluated {
        assert_ne!(rule["health"], "err", "{rule}");
    }
    let statuses = load.statuses();
    load.stop().await;
    eprintln!(
        "{} panel queries and {} rules checked against Prometheus; the load got {statuses:?}",
        panels.len(),
        exprs.len(),
    );
    assert!(
        empty.is_empty(),
        "queries without data:\n{}",
        empty.join("\n")
    );
    drop(prometheus);
    drop(redis_exporter);
    drop(mysqld_exporter);
    drop(service);
    world.cleanup().await;
}
