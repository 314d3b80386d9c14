//! A Redis Cluster of the test's own (3 masters, 3 replicas) on free loopback
//! ports, started by `scripts/redis-cluster` and stopped on drop. Shared by
//! the API tests and the fault tests (`#[path]`-included by both).

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

/// A running cluster.
pub struct PrivateCluster {
    dir: PathBuf,
    /// The nodes' ports (each also uses port + 10000 for the cluster bus).
    pub ports: Vec<u16>,
    /// `REDIS_CLUSTER_NODES` for it.
    pub nodes: String,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/redis-cluster")
}

/// A port that is free, and whose cluster-bus port (+10000) is free too.
fn free_cluster_port(taken: &[u16]) -> u16 {
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if port < 55_000
            && !taken.contains(&port)
            && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok()
        {
            return port;
        }
    }
}

impl PrivateCluster {
    /// Starts six nodes and joins them; returns once every node reports
    /// `cluster_state:ok`. Panics when Redis cannot start (it needs Debian's
    /// `redis-server` and `redis-cli`).
    pub fn start() -> PrivateCluster {
        let mut ports = Vec::new();
        while ports.len() < 6 {
            let p = free_cluster_port(&ports);
            ports.push(p);
        }
        let dir =
            std::env::temp_dir().join(format!("chat-cluster-{}", uuid::Uuid::new_v4().simple()));
        let out = Command::new("bash")
            .arg(script())
            .arg("start")
            .arg(&dir)
            .args(ports.iter().map(u16::to_string))
            .output()
            .expect("bash runs scripts/redis-cluster");
        let cluster = PrivateCluster {
            dir,
            ports,
            nodes: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        };
        assert!(
            out.status.success(),
            "scripts/redis-cluster start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        cluster
    }

    /// The node URLs, one by one.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.split(',').map(str::to_string).collect()
    }

    /// The port of the master that serves `key`'s hash slot now. Panics
    /// when none does (during a failover, see [`Self::serving`]).
    pub fn master_of(&self, key: &str) -> u16 {
        self.serving(key)
            .unwrap_or_else(|| panic!("no master serves the slot of {key}"))
    }

    /// The port of the master that serves `key`'s hash slot now, as the
    /// first node that answers sees it; `None` while none does.
    pub fn serving(&self, key: &str) -> Option<u16> {
        let slot = chat_api::redis::key_slot(key);
        for &port in &self.ports {
            let out = Command::new("redis-cli")
                .args(["-p", &port.to_string(), "cluster", "nodes"])
                .output()
                .unwrap();
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let fields: Vec<&str> = line.split_whitespace().collect();
                if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                    continue;
                }
                let serves = fields[8..].iter().any(|range| match range.split_once('-') {
                    Some((lo, hi)) => {
                        lo.parse::<u16>().is_ok_and(|lo| lo <= slot)
                            && hi.parse::<u16>().is_ok_and(|hi| slot <= hi)
                    }
                    None => range.parse::<u16>().is_ok_and(|s| s == slot),
                });
                if serves {
                    let addr = fields[1].split('@').next().unwrap_or_default();
                    return addr.rsplit(':').next()?.parse().ok();
                }
            }
            if out.status.success() && !out.stdout.is_empty() {
                break;
            }
        }
        None
    }

    /// SIGKILLs the node on `port` (its replica takes over after
    /// `cluster-node-timeout`, 2 s).
    pub fn kill9(&self, port: u16) {
        self.signal(port, "KILL");
    }

    /// The port of a replica of the master on `master`, as the first node
    /// that answers sees it (`None` when it has none now).
    pub fn replica_of(&self, master: u16) -> Option<u16> {
        let nodes = |port: u16| {
            let out = Command::new("redis-cli")
                .args(["-p", &port.to_string(), "cluster", "nodes"])
                .output()
                .ok()?;
            Some(String::from_utf8_lossy(&out.stdout).to_string())
        };
        for &port in &self.ports {
            let Some(text) = nodes(port) else { continue };
            let fields: Vec<Vec<&str>> = text
                .lines()
                .map(|l| l.split_whitespace().collect())
                .filter(|f: &Vec<&str>| f.len() >= 8)
                .collect();
            let port_of = |f: &Vec<&str>| -> Option<u16> {
                f[1].split('@').next()?.rsplit(':').next()?.parse().ok()
            };
            let Some(master_id) = fields
                .iter()
                .find(|f| port_of(f) == Some(master))
                .map(|f| f[0])
            else {
                continue;
            };
            if let Some(replica) = fields
                .iter()
                .find(|f| f[3] == master_id && f[2].contains("slave") && !f[2].contains("fail"))
            {
                return port_of(replica);
            }
        }
        None
    }

    /// SIGKILLs the node on `port` and starts it again with its cluster
    /// config but no RDB: a replica then does a full resync with its master.
    pub fn restart_without_rdb(&self, port: u16) {
        let status = Command::new("bash")
            .arg(script())
            .arg("restart")
            .arg(&self.dir)
            .arg(port.to_string())
            .status()
            .unwrap();
        assert!(status.success(), "scripts/redis-cluster restart {port}");
    }

    /// Sends `signal` (`STOP`, `CONT`) to the node on `port`.
    pub fn signal(&self, port: u16, signal: &str) {
        let pid = std::fs::read_to_string(self.dir.join(port.to_string()).join("redis.pid"))
            .expect("the node's pid file");
        Command::new("kill")
            .args([&format!("-{signal}"), pid.trim()])
            .status()
            .unwrap();
    }

    /// Whether every live node reports `cluster_state:ok`.
    pub fn ok(&self) -> bool {
        self.ports.iter().all(|p| {
            Command::new("redis-cli")
                .args(["-p", &p.to_string(), "cluster", "info"])
                .output()
                .map(|o| {
                    let text = String::from_utf8_lossy(&o.stdout);
                    text.is_empty() || text.contains("cluster_state:ok")
                })
                .unwrap_or(true)
        })
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}
