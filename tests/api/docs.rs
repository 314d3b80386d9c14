//! Each fact once, and true: every setting of `chat-api serve` is documented
//! in docs/configuration.md and .env.example, and nothing is documented there
//! that the service does not read.

use std::collections::BTreeSet;

use clap::CommandFactory;

use crate::helpers::Wrapper;

/// The environment variables `chat-api serve` reads (hidden ones aside):
/// its configuration, plus `SKIP_MIGRATIONS` (a flag of `serve` itself) and
/// the logging variables of `chat_api::telemetry` (`NO_COLOR` included).
fn settings() -> BTreeSet<String> {
    Wrapper::command()
        .get_arguments()
        .filter(|a| !a.is_hide_set())
        .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
        .chain(["SKIP_MIGRATIONS", "RUST_LOG", "LOG_FORMAT", "NO_COLOR"].map(String::from))
        .collect()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn every_setting_is_in_the_configuration_page_and_env_example_and_nothing_else() {
    let settings = settings();
    assert!(settings.contains("QUEUE_SHARDS") && settings.contains("REDIS_CLUSTER_NODES"));
    // Rows of the table: | `NAME` | default | meaning |
    let documented: BTreeSet<String> = read("docs/configuration.md")
        .lines()
        .filter_map(|l| l.strip_prefix("| `")?.split('`').next().map(str::to_string))
        .filter(|n| {
            n.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        })
        .collect();
    // NAME=value, or # NAME=value for the ones left unset.
    let example: BTreeSet<String> = read(".env.example")
        .lines()
        .map(|l| l.trim_start_matches('#').trim())
        .filter_map(|l| l.split_once('=').map(|(n, _)| n.to_string()))
        .filter(|n| {
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        })
        .collect();
    let missing_doc: Vec<_> = settings.difference(&documented).collect();
    let stale_doc: Vec<_> = documented.difference(&settings).collect();
    let missing_example: Vec<_> = settings.difference(&example).collect();
    let stale_example: Vec<_> = example.difference(&settings).collect();
    assert!(
        missing_doc.is_empty() && stale_doc.is_empty(),
        "docs/configuration.md: missing {missing_doc:?}, not a setting {stale_doc:?}"
    );
    assert!(
        missing_example.is_empty() && stale_example.is_empty(),
        ".env.example: missing {missing_example:?}, not a setting {stale_example:?}"
    );
}

/// The configuration table is whole: every variable row of
/// docs/configuration.md is in one table, with no text between rows (a
/// paragraph inside it ends the table, and Markdown renders the rows after
/// it as a run-on paragraph), and the page has each heading once.
#[test]
fn the_configuration_table_is_one_table() {
    let page = read("docs/configuration.md");
    let lines: Vec<&str> = page.lines().collect();
    let rows: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].starts_with("| `"))
        .collect();
    assert!(rows.len() > 40, "the rows were read");
    let (first, last) = (rows[0], *rows.last().unwrap());
    assert!(
        lines[first - 1].starts_with("|---") && lines[first - 2].starts_with("| variable"),
        "the table starts with its header"
    );
    let outside: Vec<(usize, &str)> = (first..=last)
        .filter(|&i| !lines[i].starts_with('|'))
        .map(|i| (i + 1, lines[i]))
        .collect();
    assert!(
        outside.is_empty(),
        "lines inside the table that are not rows: {outside:?}"
    );
    let mut headings: Vec<&str> = lines
        .iter()
        .filter(|l| l.starts_with('#'))
        .map(|l| l.trim_start_matches('#').trim())
        .collect();
    let count = headings.len();
    headings.sort();
    headings.dedup();
    assert_eq!(headings.len(), count, "a heading repeats");
}

#[test]
fn the_readme_is_a_front_door_and_its_links_resolve() {
    let readme = read("README.md");
    assert!(
        readme.lines().count() <= 160,
        "README.md is {} lines",
        readme.lines().count()
    );
    for cmd in ["scripts/run", "scripts/test"] {
        assert!(
            readme.contains(&format!("```sh\n{cmd}\n```")),
            "the README gives `{cmd}`"
        );
    }
    for link in readme
        .split("](")
        .skip(1)
        .filter_map(|s| s.split(')').next())
    {
        let path = link.split('#').next().unwrap();
        if path.is_empty() || path.starts_with("http") {
            continue;
        }
        assert!(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(path)
                .exists(),
            "README links to {link}, which does not exist"
        );
    }
}

/// Copies `from` (a file or a directory, recursively) to `to`.
fn copy_all(from: &std::path::Path, to: &std::path::Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            copy_all(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap();
    }
}

/// The image build (issue 37, finding 15): `.git` stays out of the build
/// context, dependencies are cached between builds (BuildKit cache mounts
/// of the registry and the target directory), and the health check takes
/// its port from `BIND_ADDR` rather than a fixed 3000.
#[test]
fn the_dockerfile_caches_dependencies_and_checks_the_configured_port() {
    let ignored: Vec<String> = read(".dockerignore").lines().map(str::to_string).collect();
    assert!(
        ignored.iter().any(|l| l == ".git"),
        ".dockerignore keeps .git out"
    );
    let dockerfile = read("Dockerfile");
    let build = dockerfile
        .lines()
        .skip_while(|l| !l.starts_with("RUN --mount"))
        .take_while(|l| l.ends_with('\\'))
        .collect::<Vec<_>>()
        .join("\n");
    for cache in ["target=/usr/local/cargo/registry", "target=/src/target"] {
        assert!(build.contains(cache), "the build caches {cache}: {build}");
    }
    let health = dockerfile
        .split("HEALTHCHECK")
        .nth(1)
        .expect("a HEALTHCHECK")
        .lines()
        .take(2)
        .collect::<String>();
    assert!(
        health.contains("${BIND_ADDR##*:}") && !health.contains(":3000"),
        "the health check follows BIND_ADDR: {health}"
    );
}

/// The Dockerfile's build stage copies every file cargo reads to load the
/// workspace (no Docker engine runs here: this is the part of `docker
/// build` that can run). Its `COPY` lines are replayed into an empty
/// directory, where `cargo metadata --locked` must succeed.
#[test]
fn the_dockerfile_copies_what_cargo_needs_to_load_the_workspace() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::temp_dir().join(format!("chat-docker-{}", uuid::Uuid::new_v4().simple()));
    let dockerfile = read("Dockerfile");
    let build_stage = dockerfile
        .split("\nFROM ")
        .find(|stage| stage.contains(" AS build"))
        .expect("a build stage");
    let mut copies = 0;
    for line in build_stage.lines() {
        let Some(args) = line.strip_prefix("COPY ") else {
            continue;
        };
        let mut paths: Vec<&str> = args.split_whitespace().collect();
        let dest = paths.pop().unwrap();
        for source in paths {
            let from = root.join(source);
            let to = if dest.ends_with('/') {
                dir.join(dest).join(from.file_name().unwrap())
            } else {
                dir.join(dest)
            };
            copy_all(&from, &to);
            copies += 1;
        }
    }
    assert!(copies >= 3, "the build stage copies the sources");
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--locked",
            "--offline",
            "--no-deps",
            "--format-version",
            "1",
        ])
        .current_dir(&dir)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "cargo cannot load the workspace from what the Dockerfile copies: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// docker-compose.yml is safe by default (issue 37, finding 11). No Docker
/// engine runs here, so the file is read: every secret is required
/// (`${VAR:?…}`, never a default), every service's log is rotated, every
/// image is pinned, Redis has a `maxmemory` and a password, and
/// Meilisearch runs in production mode.
#[test]
fn compose_requires_its_secrets_rotates_logs_and_bounds_redis() {
    let text = read("docker-compose.yml");
    let compose: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    // `${NAME:-default}` or `${NAME-default}` of a secret: a silent default.
    let mut defaults = Vec::new();
    for (i, _) in text.match_indices("${") {
        let inner = &text[i + 2..i + 2 + text[i + 2..].find('}').unwrap()];
        let name: String = inner
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let secret = ["PASSWORD", "MASTER_KEY"].iter().any(|s| name.contains(s));
        if secret && !inner[name.len()..].is_empty() && !inner[name.len()..].starts_with(":?") {
            defaults.push(inner.to_string());
        }
        if secret && inner.len() == name.len() {
            // `${NAME}` is fine once the same file requires it elsewhere.
            assert!(
                text.contains(&format!("${{{name}:?")),
                "{name} is used but never required"
            );
        }
    }
    assert!(defaults.is_empty(), "secrets with a default: {defaults:?}");
    let services = compose["services"].as_mapping().unwrap();
    for (name, service) in services {
        let name = name.as_str().unwrap();
        // `<<: *anchor` merges (serde_yaml does not apply merge keys).
        let get = |key: &str| {
            service
                .get(key)
                .or_else(|| service.get("<<").and_then(|m| m.get(key)))
                .cloned()
        };
        let logging = get("logging").unwrap_or_else(|| panic!("{name}: no logging options"));
        assert!(
            logging["options"]["max-size"].as_str().is_some()
                && logging["options"]["max-file"].as_str().is_some(),
            "{name}: logs are not rotated"
        );
        if let Some(image) = get("image") {
            let image = image.as_str().unwrap();
            let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
            assert!(
                !tag.is_empty() && tag != "latest",
                "{name}: image {image} is not pinned"
            );
        }
    }
    let redis = serde_yaml::to_string(&services["redis"]["command"]).unwrap();
    assert!(
        redis.contains("--maxmemory ") && redis.contains("requirepass"),
        "Redis has a maxmemory and a password: {redis}"
    );
    assert_eq!(
        services["meilisearch"]["environment"]["MEILI_ENV"].as_str(),
        Some("production")
    );
    for exporter in ["redis-exporter", "mysqld-exporter"] {
        let profiles = &services[exporter]["profiles"];
        assert_eq!(profiles[0].as_str(), Some("monitoring"), "{exporter}");
    }
}
