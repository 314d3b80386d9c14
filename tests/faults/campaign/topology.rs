//! The Redis side of a campaign: how the services reach Redis, and the
//! faults that topology can suffer.
//!
//! - [`Topology::Single`]: one node, RDB only; `SAVE`, then SIGKILL and a
//!   restart from that older snapshot, or a restart with no data.
//! - [`Topology::Aof`]: one node with `appendonly yes` and
//!   `appendfsync always`; SIGKILL and a restart from its AOF (nothing
//!   acknowledged is lost), or from a copy of an older, rewritten AOF.
//! - [`Topology::Sentinel`]: a master, a replica and three sentinels,
//!   `REDIS_DURABILITY=replica`; the master SIGKILLed (the replica is
//!   promoted, the old master comes back empty as its replica), a graceful
//!   `SENTINEL FAILOVER`, the replica restarted empty (a full resync), and a
//!   split brain: the sentinels lose the master (it answers their `PING`
//!   with an ACL error, `ACL SETUSER default -ping`: to them it is down,
//!   while clients and its replica link go on) and promote the replica,
//!   one instance is restarted and follows them to the new master while the
//!   other stays on the old one, and after a while the partition heals and
//!   the sentinels demote the old master.
//! - [`Topology::Cluster`]: three masters with a replica each,
//!   `REDIS_DURABILITY=replica`; a master
//!   SIGKILLed (its replica takes over; it comes back empty as a replica), a
//!   graceful `CLUSTER FAILOVER`, a replica restarted empty (a full resync),
//!   and a reshard: the slot of one application's shard migrated to another
//!   master key by key (`MIGRATING`/`IMPORTING`, `MIGRATE`, `SETSLOT NODE`)
//!   while the workload runs.

use std::process::Command;
use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;

use super::nemesis::FaultKind;
use crate::cluster::PrivateCluster;
use crate::harness::{PrivateRedis, Sentinels, eventually};

/// Where the services' Redis runs (`CHAOS_TOPOLOGY`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Topology {
    /// One node, RDB snapshots only.
    Single,
    /// One node, AOF with an fsync per write.
    Aof,
    /// Master, replica and three sentinels.
    Sentinel,
    /// Three masters with a replica each.
    Cluster,
}

impl Topology {
    /// Every topology, in the order `all` runs them.
    pub(super) const ALL: [Topology; 4] = [
        Topology::Single,
        Topology::Aof,
        Topology::Sentinel,
        Topology::Cluster,
    ];

    /// Parses `single`, `aof`, `sentinel` or `cluster`.
    pub(super) fn parse(s: &str) -> Option<Topology> {
        Topology::ALL
            .into_iter()
            .find(|t| t.name() == s.trim().to_ascii_lowercase())
    }

    /// Its name in `CHAOS_TOPOLOGY` and in the campaign's lines.
    pub(super) fn name(self) -> &'static str {
        match self {
            Topology::Single => "single",
            Topology::Aof => "aof",
            Topology::Sentinel => "sentinel",
            Topology::Cluster => "cluster",
        }
    }

    /// The Redis faults of this topology, each with its weight (the
    /// nemesis adds those every topology has).
    pub(super) fn faults(self) -> &'static [(FaultKind, u32)] {
        match self {
            Topology::Single => &[
                (FaultKind::RedisSave, 2),
                (FaultKind::RedisRestore, 2),
                (FaultKind::RedisEmpty, 1),
            ],
            Topology::Aof => &[
                (FaultKind::AofCopy, 2),
                (FaultKind::AofRestart, 2),
                (FaultKind::AofOlder, 2),
            ],
            Topology::Sentinel => &[
                (FaultKind::MasterKilled, 2),
                (FaultKind::Switchover, 2),
                (FaultKind::ReplicaResync, 1),
                (FaultKind::SplitBrain, 2),
            ],
            Topology::Cluster => &[
                (FaultKind::MasterKilled, 2),
                (FaultKind::Switchover, 2),
                (FaultKind::ReplicaResync, 1),
                (FaultKind::Reshard, 2),
            ],
        }
    }
}

/// The processes of a topology, and what its faults need to remember.
pub(super) enum RedisSide {
    /// [`Topology::Single`].
    Single {
        /// The node.
        redis: PrivateRedis,
        /// When the snapshot a restore would load was taken (ms).
        snapshot_at: Option<u64>,
    },
    /// [`Topology::Aof`].
    Aof {
        /// The node.
        redis: PrivateRedis,
        /// When the AOF copy a restore would load was taken (ms).
        copy_at: Option<u64>,
    },
    /// [`Topology::Sentinel`].
    Sentinel {
        /// The two nodes (either may be the master).
        nodes: [PrivateRedis; 2],
        /// The three sentinels.
        sentinels: Sentinels,
    },
    /// [`Topology::Cluster`].
    Cluster {
        /// The six nodes.
        cluster: PrivateCluster,
    },
}

impl RedisSide {
    /// Starts the processes of `topology`.
    pub(super) async fn start(topology: Topology) -> RedisSide {
        match topology {
            Topology::Single => RedisSide::Single {
                redis: PrivateRedis::start().await,
                snapshot_at: None,
            },
            Topology::Aof => RedisSide::Aof {
                redis: PrivateRedis::start_with(&[
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "always",
                ])
                .await,
                copy_at: None,
            },
            Topology::Sentinel => {
                let primary = PrivateRedis::start().await;
                let port = primary.port.to_string();
                let replica = PrivateRedis::start_with(&["--replicaof", "127.0.0.1", &port]).await;
                replica.wait_in_sync().await;
                let sentinels = Sentinels::start(primary.port, 1).await;
                RedisSide::Sentinel {
                    nodes: [primary, replica],
                    sentinels,
                }
            }
            Topology::Cluster => RedisSide::Cluster {
                cluster: PrivateCluster::start(),
            },
        }
    }

    /// What the services are told of it.
    pub(super) fn env(&self) -> Vec<(&'static str, String)> {
        match self {
            RedisSide::Single { redis, .. } | RedisSide::Aof { redis, .. } => {
                vec![("REDIS_URL", redis.url())]
            }
            RedisSide::Sentinel { nodes, sentinels } => vec![
                ("REDIS_URL", nodes[0].url()),
                ("REDIS_SENTINELS", sentinels.addresses()),
                ("REDIS_SENTINEL_MASTER", "mymaster".into()),
                // A 201 waits for the replica: what a master acknowledged
                // is on the node a failover promotes (a split brain's old
                // master acknowledges nothing once its replica is gone).
                ("REDIS_DURABILITY", "replica".into()),
                ("REDIS_WAIT_MS", "500".into()),
            ],
            RedisSide::Cluster { cluster } => vec![
                ("REDIS_CLUSTER_NODES", cluster.nodes.clone()),
                // The replica durability's flush rule per shard (a master
                // killed leaves its promoted replica without a replica
                // until the old one is back).
                ("REDIS_DURABILITY", "replica".into()),
                ("REDIS_WAIT_MS", "500".into()),
            ],
        }
    }

    /// The URL of the node that serves writes now (`None` on a cluster,
    /// whose connection follows its slots by itself).
    pub(super) async fn master_url(&self) -> Option<String> {
        match self {
            RedisSide::Single { redis, .. } | RedisSide::Aof { redis, .. } => Some(redis.url()),
            RedisSide::Sentinel { sentinels, .. } => sentinels
                .master_port()
                .await
                .map(|p| format!("redis://127.0.0.1:{p}")),
            RedisSide::Cluster { .. } => None,
        }
    }

    /// Waits (at most 60 s) until the topology is whole again after the
    /// last fault: on Sentinel, the master the sentinels name answers
    /// `ROLE` as a master and the other node as its replica with the link
    /// up (a `SENTINEL FAILOVER` just before the end leaves the old master
    /// taking writes no replica confirms until the sentinels demote it,
    /// about 10 s later); on Cluster, every node says `cluster_state:ok`
    /// and every master has a replica online. Also waited for before the
    /// setup: a create under replica durability needs a replica.
    /// The liveness rule counts from then. Says how long it waited, or
    /// that it gave up.
    pub(super) async fn settle(&self) -> String {
        let started = std::time::Instant::now();
        let settled = eventually(Duration::from_secs(60), || async {
            match self {
                RedisSide::Single { .. } | RedisSide::Aof { .. } => true,
                RedisSide::Sentinel { nodes, sentinels } => {
                    let Some(master) = sentinels.master_port().await else {
                        return false;
                    };
                    let mut whole = true;
                    for node in nodes {
                        let want = if node.port == master {
                            "master".to_string()
                        } else {
                            format!("slave\t127.0.0.1\t{master}\tconnected")
                        };
                        whole &= role(node.port).await.is_some_and(|r| r.starts_with(&want));
                    }
                    whole
                }
                RedisSide::Cluster { cluster } => {
                    let ports: Vec<u16> = cluster
                        .urls()
                        .iter()
                        .filter_map(|u| u.rsplit(':').next()?.parse().ok())
                        .collect();
                    ports.iter().all(|port| {
                        cluster
                            .cli(*port, &["CLUSTER", "INFO"])
                            .contains("cluster_state:ok")
                    }) && cluster.masters().iter().all(|m| {
                        // Replica durability: each master's replica online.
                        cluster
                            .cli(*m, &["INFO", "replication"])
                            .contains("state=online")
                    })
                }
            }
        })
        .await;
        let waited = started.elapsed().as_secs_f64();
        if settled {
            format!("settled in {waited:.1} s")
        } else {
            format!("not settled after {waited:.1} s")
        }
    }

    /// Injects the Redis fault `kind` (one of [`Topology::faults`]) and
    /// says what was done, with the kind actually injected (a restore with
    /// nothing to restore takes the snapshot instead). `at_ms` is now, on
    /// the campaign's clock. The split brain needs the services:
    /// `restart_one` restarts one instance (it then asks the sentinels for
    /// the master again) and is called once the replica is promoted.
    pub(super) async fn inject<F, Fut>(
        &mut self,
        kind: FaultKind,
        rng: &mut StdRng,
        at_ms: u64,
        restart_one: F,
    ) -> (FaultKind, String)
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = String>,
    {
        match self {
            RedisSide::Single { redis, snapshot_at } => match kind {
                FaultKind::RedisRestore if snapshot_at.is_some() => {
                    redis.restart().await;
                    let s = snapshot_at.unwrap_or_default();
                    (
                        kind,
                        format!(
                            "SIGKILL Redis, restarted from the snapshot of +{:.1} s",
                            s as f64 / 1000.0
                        ),
                    )
                }
                FaultKind::RedisSave | FaultKind::RedisRestore => {
                    redis.save().await;
                    *snapshot_at = Some(at_ms);
                    (
                        FaultKind::RedisSave,
                        "Redis SAVE (a snapshot a later restore goes back to)".into(),
                    )
                }
                _ => {
                    redis.kill9();
                    let _ = std::fs::remove_file(redis.dir().join("dump.rdb"));
                    redis.restart().await;
                    *snapshot_at = None;
                    (
                        FaultKind::RedisEmpty,
                        "SIGKILL Redis, restarted empty".into(),
                    )
                }
            },
            RedisSide::Aof { redis, copy_at } => match kind {
                FaultKind::AofOlder if copy_at.is_some() => {
                    redis.kill9();
                    let dir = redis.dir().join("appendonlydir");
                    let _ = std::fs::remove_dir_all(&dir);
                    copy_dir(&aof_copy(redis), &dir);
                    redis.restart().await;
                    let s = copy_at.unwrap_or_default();
                    (
                        kind,
                        format!(
                            "SIGKILL Redis, restarted from the rewritten AOF copied at +{:.1} s",
                            s as f64 / 1000.0
                        ),
                    )
                }
                FaultKind::AofCopy | FaultKind::AofOlder => {
                    rewrite_aof(redis).await;
                    let copy = aof_copy(redis);
                    let _ = std::fs::remove_dir_all(&copy);
                    copy_dir(&redis.dir().join("appendonlydir"), &copy);
                    *copy_at = Some(at_ms);
                    (
                        FaultKind::AofCopy,
                        "BGREWRITEAOF, and a copy of the AOF a later restore goes back to".into(),
                    )
                }
                _ => {
                    redis.restart().await;
                    (
                        FaultKind::AofRestart,
                        "SIGKILL Redis, restarted from its own AOF".into(),
                    )
                }
            },
            RedisSide::Sentinel { nodes, sentinels } => {
                sentinel_fault(nodes, sentinels, kind, rng, restart_one).await
            }
            RedisSide::Cluster { cluster } => cluster_fault(cluster, kind, rng).await,
        }
    }
}

/// Where the AOF copy of `redis` is kept.
fn aof_copy(redis: &PrivateRedis) -> std::path::PathBuf {
    redis.dir().join("aof-copy")
}

/// `cp -r from to`.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    let status = Command::new("cp")
        .arg("-r")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success(), "cp -r {from:?} {to:?}");
}

/// `BGREWRITEAOF`, waiting until it finished.
async fn rewrite_aof(redis: &PrivateRedis) {
    let mut c = connect(&redis.url()).await.expect("the AOF node answers");
    let _: Result<(), _> = redis::cmd("BGREWRITEAOF").query_async(&mut c).await;
    let done = eventually(Duration::from_secs(20), || {
        let mut c = c.clone();
        async move {
            redis::cmd("INFO")
                .arg("persistence")
                .query_async::<String>(&mut c)
                .await
                .is_ok_and(|i| {
                    i.contains("aof_rewrite_in_progress:0") && i.contains("aof_rewrite_scheduled:0")
                })
        }
    })
    .await;
    assert!(done, "BGREWRITEAOF finished");
}

/// A connection to `url`, if it answers.
async fn connect(url: &str) -> Option<redis::aio::MultiplexedConnection> {
    redis::Client::open(url)
        .ok()?
        .get_multiplexed_async_connection()
        .await
        .ok()
}

/// One fault of the sentinel topology.
async fn sentinel_fault<F, Fut>(
    nodes: &mut [PrivateRedis; 2],
    sentinels: &Sentinels,
    kind: FaultKind,
    rng: &mut StdRng,
    restart_one: F,
) -> (FaultKind, String)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = String>,
{
    let Some(master_port) = sentinels.master_port().await else {
        return (kind, "no fault: no sentinel names a master".into());
    };
    let m = usize::from(nodes[1].port == master_port);
    let r = 1 - m;
    let replica_port = nodes[r].port;
    let promoted = |to: u16| async move {
        eventually(Duration::from_secs(30), || async {
            sentinels.master_port().await == Some(to)
        })
        .await
    };
    match kind {
        FaultKind::MasterKilled => {
            nodes[m].kill9();
            let ok = promoted(replica_port).await;
            // It comes back empty, as a replica of the new master.
            restart_as_replica(&mut nodes[m], replica_port).await;
            (
                kind,
                format!(
                    "SIGKILL the master (port {master_port}); replica {replica_port} promoted: {ok}; the old master back empty as its replica"
                ),
            )
        }
        FaultKind::Switchover => {
            let answer = match sentinel_connection(sentinels).await {
                Some(mut c) => redis::cmd("SENTINEL")
                    .arg("FAILOVER")
                    .arg("mymaster")
                    .query_async::<String>(&mut c)
                    .await
                    .map_err(|e| e.to_string()),
                None => Err("no sentinel answers".into()),
            };
            let ok = answer.is_ok() && promoted(replica_port).await;
            (
                kind,
                format!("SENTINEL FAILOVER: {answer:?}; replica {replica_port} promoted: {ok}"),
            )
        }
        FaultKind::ReplicaResync => {
            restart_as_replica(&mut nodes[r], master_port).await;
            (
                kind,
                format!("replica {replica_port} restarted empty: a full resync from {master_port}"),
            )
        }
        _ => {
            // Split brain.
            let hold = rng.random_range(2000..5000);
            deny_ping(master_port, true).await;
            let ok = promoted(replica_port).await;
            let moved = restart_one().await;
            tokio::time::sleep(Duration::from_millis(hold)).await;
            deny_ping(master_port, false).await;
            // The sentinels see the old master again and demote it.
            let demoted = eventually(Duration::from_secs(30), || async {
                let Some(mut c) = connect(&format!("redis://127.0.0.1:{master_port}")).await else {
                    return false;
                };
                redis::cmd("ROLE")
                    .query_async::<redis::Value>(&mut c)
                    .await
                    .is_ok_and(|v| format!("{v:?}").contains("slave"))
            })
            .await;
            (
                FaultKind::SplitBrain,
                format!(
                    "split brain: master {master_port} cut from the sentinels; replica {replica_port} promoted: {ok}; {moved} \
                     (the other stays on the old master) for {hold} ms; healed, old master demoted: {demoted}"
                ),
            )
        }
    }
}

/// The `ROLE` reply of the node at `port`, its fields joined by tabs
/// (`master\t…`, `slave\thost\tport\tstate\t…`); `None` when it does not
/// answer.
async fn role(port: u16) -> Option<String> {
    let mut c = connect(&format!("redis://127.0.0.1:{port}")).await?;
    let reply: redis::Value = redis::cmd("ROLE").query_async(&mut c).await.ok()?;
    let redis::Value::Array(fields) = reply else {
        return None;
    };
    Some(
        fields
            .iter()
            .map(|f| match f {
                redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                redis::Value::SimpleString(s) => s.clone(),
                redis::Value::Int(i) => i.to_string(),
                _ => String::new(),
            })
            .collect::<Vec<_>>()
            .join("\t"),
    )
}

/// Kills `node`, drops its data, and starts it again as a replica of
/// `master_port` (a full resync).
async fn restart_as_replica(node: &mut PrivateRedis, master_port: u16) {
    node.kill9();
    let _ = std::fs::remove_file(node.dir().join("dump.rdb"));
    let port = master_port.to_string();
    node.restart_with(&["--replicaof", "127.0.0.1", &port])
        .await;
}

/// Makes the node at `port` answer `PING` with an ACL error (`deny`) or
/// normally again. Sentinels judge a node by its `PING` replies: to them it
/// is down after `down-after-milliseconds`, while clients (the service
/// sends no `PING` on its request path) and its replica link go on: a
/// partition between the sentinels and the master.
async fn deny_ping(port: u16, deny: bool) {
    let Some(mut c) = connect(&format!("redis://127.0.0.1:{port}")).await else {
        return;
    };
    let _: Result<(), _> = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("default")
        .arg(if deny { "-ping" } else { "+ping" })
        .query_async(&mut c)
        .await;
}

/// A connection to the first sentinel that answers.
async fn sentinel_connection(sentinels: &Sentinels) -> Option<redis::aio::MultiplexedConnection> {
    for port in &sentinels.ports {
        if let Some(c) = connect(&format!("redis://127.0.0.1:{port}")).await {
            return Some(c);
        }
    }
    None
}

/// One fault of the cluster topology.
async fn cluster_fault(
    cluster: &PrivateCluster,
    kind: FaultKind,
    rng: &mut StdRng,
) -> (FaultKind, String) {
    let masters = cluster.masters();
    let Some(&master) = masters.get(rng.random_range(0..masters.len().max(1))) else {
        return (kind, "no fault: no master found".into());
    };
    match kind {
        FaultKind::MasterKilled => {
            let replica = cluster.replica_of(master);
            cluster.kill9(master);
            let ok = eventually(Duration::from_secs(30), || async {
                replica.is_some_and(|r| cluster.masters().contains(&r))
            })
            .await;
            cluster.restart_without_rdb(master);
            (
                kind,
                format!(
                    "SIGKILL master {master}; replica {replica:?} promoted: {ok}; the old master back empty"
                ),
            )
        }
        FaultKind::Switchover => match cluster.replica_of(master) {
            Some(replica) => {
                let out = cluster.cli(replica, &["cluster", "failover"]);
                let ok = eventually(Duration::from_secs(20), || async {
                    cluster.masters().contains(&replica)
                })
                .await;
                (
                    kind,
                    format!(
                        "CLUSTER FAILOVER on {replica} (replica of {master}): {out}; promoted: {ok}"
                    ),
                )
            }
            None => (kind, format!("no fault: master {master} has no replica")),
        },
        FaultKind::ReplicaResync => match cluster.replica_of(master) {
            Some(replica) => {
                cluster.restart_without_rdb(replica);
                (
                    kind,
                    format!("replica {replica} of {master} restarted empty: a full resync"),
                )
            }
            None => (kind, format!("no fault: master {master} has no replica")),
        },
        _ => {
            let to = masters
                .iter()
                .copied()
                .filter(|m| *m != master)
                .nth(rng.random_range(0..2))
                .unwrap_or(master);
            let (slot, moved) = cluster.migrate_one_slot(master, to);
            let what = if moved.starts_with("no key") {
                format!("no reshard: master {master} holds no key")
            } else {
                format!("reshard: slot {slot} moved from {master} to {to} ({moved})")
            };
            (FaultKind::Reshard, what)
        }
    }
}
