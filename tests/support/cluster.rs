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
        // A port found free may be taken by another test's process before
        // its node binds it (tests run in parallel): the cluster then
        // fails to form, and is started again on other ports.
        let mut failures = Vec::new();
        for _ in 0..3 {
            match Self::try_start() {
                Ok(cluster) => return cluster,
                Err(why) => failures.push(why),
            }
        }
        panic!("scripts/redis-cluster start failed 3 times: {failures:#?}");
    }

    /// One try of [`Self::start`], on six fresh ports; on failure the
    /// nodes it started are stopped, and the script's error returned.
    fn try_start() -> Result<PrivateCluster, String> {
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
        if out.status.success() {
            Ok(cluster)
        } else {
            // Dropping it stops what was started.
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
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
    /// The ports of the masters that serve slots and are not failed, as
    /// the first node that answers `CLUSTER NODES` sees them.
    pub fn masters(&self) -> Vec<u16> {
        for &port in &self.ports {
            let text = self.cli(port, &["cluster", "nodes"]);
            let masters: Vec<u16> = text
                .lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
                .filter(|f| {
                    f.len() >= 9
                        && f[2].contains("master")
                        && !f[2].contains("fail")
                        && f[7] == "connected"
                })
                .filter_map(|f| f[1].split('@').next()?.rsplit(':').next()?.parse().ok())
                .collect();
            if !masters.is_empty() {
                return masters;
            }
        }
        Vec::new()
    }

    /// `redis-cli -p {port} args…`: what it printed (stdout, trimmed; the
    /// error text when it could not run).
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        match Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
        {
            Ok(out) => String::from_utf8_lossy(&out.stdout).trim().to_string(),
            Err(e) => e.to_string(),
        }
    }

    /// A reshard of one slot: a slot that holds keys on master `from`
    /// (that of a key `RANDOMKEY` names) moves to master `to` the way
    /// `redis-cli --cluster reshard` moves it: `SETSLOT … IMPORTING` on
    /// `to`, `MIGRATING` on `from`, the keys sent over with `MIGRATE` in
    /// batches of 100, then `SETSLOT … NODE` on both and on every other
    /// master. Returns the slot and what happened, in a few words.
    pub fn migrate_one_slot(&self, from: u16, to: u16) -> (u16, String) {
        let key = self.cli(from, &["randomkey"]);
        if key.is_empty() {
            return (0, "no key on the source master".into());
        }
        let slot = chat_api::redis::key_slot(&key);
        let s = slot.to_string();
        let from_id = self.cli(from, &["cluster", "myid"]);
        let to_id = self.cli(to, &["cluster", "myid"]);
        self.cli(to, &["cluster", "setslot", &s, "importing", &from_id]);
        self.cli(from, &["cluster", "setslot", &s, "migrating", &to_id]);
        let mut moved = 0;
        loop {
            let keys = self.cli(from, &["cluster", "getkeysinslot", &s, "100"]);
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let port = to.to_string();
            let mut args = vec!["migrate", "127.0.0.1", &port, "", "0", "5000", "keys"];
            args.extend(keys.iter().copied());
            let out = self.cli(from, &args);
            if out != "OK" {
                return (slot, format!("MIGRATE failed after {moved} keys: {out}"));
            }
            moved += keys.len();
        }
        self.cli(to, &["cluster", "setslot", &s, "node", &to_id]);
        self.cli(from, &["cluster", "setslot", &s, "node", &to_id]);
        for m in self.masters() {
            if m != from && m != to {
                self.cli(m, &["cluster", "setslot", &s, "node", &to_id]);
            }
        }
        (slot, format!("{moved} keys moved"))
    }

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
