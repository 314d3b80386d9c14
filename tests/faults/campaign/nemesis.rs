//! The nemesis: one fault at a time, every 2 to 6 s.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rand::Rng;
use rand::rngs::StdRng;
use serde_json::Value;

use super::topology::{RedisSide, Topology};
use super::workload::{Workload, describe};
use super::{ADMIN_KEY, TAIL};
use crate::harness::{Proxy, Service, World};

/// The faults the nemesis picks from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum FaultKind {
    /// SIGKILL one instance, then start it again on its port.
    KillInstance,
    /// `SAVE`: a snapshot that a later restore goes back to.
    RedisSave,
    /// SIGKILL Redis and restart it from the last snapshot.
    RedisRestore,
    /// SIGKILL Redis and restart it with no data.
    RedisEmpty,
    /// `BGREWRITEAOF` and a copy of the AOF that a later restore goes back to.
    AofCopy,
    /// SIGKILL Redis and restart it from its own AOF (fsync always).
    AofRestart,
    /// SIGKILL Redis and restart it from the older AOF copy.
    AofOlder,
    /// SIGKILL the master: its replica is promoted (by the sentinels or the
    /// cluster); it comes back empty as a replica.
    MasterKilled,
    /// A graceful failover (`SENTINEL FAILOVER`, `CLUSTER FAILOVER`).
    Switchover,
    /// A replica restarted empty: a full resync.
    ReplicaResync,
    /// The sentinels cut from the master promote the replica; one instance
    /// follows them, the other stays on the old master, until the partition
    /// heals and the old master is demoted.
    SplitBrain,
    /// The slot of a shard migrated to another cluster master, key by key.
    Reshard,
    /// Every byte to and from MariaDB held for 1 to 5 s.
    DbFreeze,
    /// Every connection to MariaDB cut, and new ones refused, for 1 to 3 s.
    DbCut,
    /// `POST /admin/flush` on one instance.
    OperatorFlush,
    /// Nothing written for 4 to 6 s: counters go idle and leave Redis.
    Lull,
}

impl FaultKind {
    /// The faults of every topology, each with its weight (the topology
    /// adds its Redis faults, [`Topology::faults`]).
    const COMMON: [(FaultKind, u32); 5] = [
        (FaultKind::KillInstance, 3),
        (FaultKind::DbFreeze, 2),
        (FaultKind::DbCut, 2),
        (FaultKind::OperatorFlush, 2),
        (FaultKind::Lull, 2),
    ];

    /// Whether Redis may lose writes in this fault (acknowledged ones
    /// included, where the topology's durability allows it).
    pub(super) fn loses_redis_data(self) -> bool {
        matches!(
            self,
            FaultKind::RedisRestore
                | FaultKind::RedisEmpty
                | FaultKind::AofOlder
                | FaultKind::MasterKilled
                | FaultKind::SplitBrain
        )
    }
}

/// One fault, when it began (ms since the start of the fault phase).
pub(super) struct Fault {
    /// When it began.
    pub(super) at_ms: u64,
    /// Which fault.
    pub(super) kind: FaultKind,
    /// What was done, for the log.
    pub(super) what: String,
}

/// Owns the processes it breaks.
pub(super) struct Nemesis {
    /// The campaign's seed, for the log lines.
    pub(super) seed: u64,
    /// Its choices: which fault, when, how long.
    pub(super) rng: StdRng,
    /// Time zero, as the history's.
    pub(super) started: Instant,
    /// For the operator flush.
    pub(super) http: reqwest::Client,
    /// The two instances, on `ports`.
    pub(super) services: Vec<Service>,
    /// Their ports, kept across restarts.
    pub(super) ports: [u16; 2],
    /// Which topology the Redis side is.
    pub(super) topology: Topology,
    /// The Redis processes of the campaign.
    pub(super) redis: RedisSide,
    /// The services' way to MariaDB.
    pub(super) proxy: Proxy,
    /// For the lull.
    pub(super) workload: Arc<Workload>,
    /// Every fault injected.
    pub(super) log: Vec<Fault>,
    /// Idle counters evicted, from the logs of instances since killed.
    pub(super) evictions: u64,
}

impl Nemesis {
    /// Injects faults until `length` has passed since the start.
    pub(super) async fn run(&mut self, world: &World, length: Duration) {
        loop {
            let wait = Duration::from_millis(self.rng.random_range(2000..6000));
            if self.started.elapsed() + wait >= length {
                tokio::time::sleep(length.saturating_sub(self.started.elapsed())).await;
                return;
            }
            tokio::time::sleep(wait).await;
            let weights: Vec<(FaultKind, u32)> = FaultKind::COMMON
                .iter()
                .chain(self.topology.faults())
                .copied()
                .collect();
            let total: u32 = weights.iter().map(|(_, w)| w).sum();
            let mut roll = self.rng.random_range(0..total);
            let kind = weights
                .iter()
                .find(|(_, w)| {
                    let hit = roll < *w;
                    roll = roll.saturating_sub(*w);
                    hit
                })
                .unwrap()
                .0;
            self.inject(world, kind).await;
        }
    }

    /// Injects one fault and logs it.
    pub(super) async fn inject(&mut self, world: &World, kind: FaultKind) {
        let at_ms = self.started.elapsed().as_millis() as u64;
        let (kind, what) = match kind {
            FaultKind::KillInstance => {
                let i = self.rng.random_range(0..self.services.len());
                self.services[i].kill9();
                self.evictions += evictions_in_log(world, self.ports[i]);
                let t = Instant::now();
                self.services[i] = world.start(self.ports[i]).await;
                let what = format!(
                    "SIGKILL instance {i} (port {}), started again in {} ms",
                    self.ports[i],
                    t.elapsed().as_millis()
                );
                (kind, what)
            }
            FaultKind::DbFreeze => {
                let d = self.rng.random_range(1000..5000);
                self.proxy.freeze();
                tokio::time::sleep(Duration::from_millis(d)).await;
                self.proxy.thaw();
                (kind, format!("MariaDB frozen for {d} ms"))
            }
            FaultKind::DbCut => {
                let d = self.rng.random_range(1000..3000);
                self.proxy.cut();
                tokio::time::sleep(Duration::from_millis(d)).await;
                self.proxy.heal();
                (kind, format!("MariaDB cut for {d} ms"))
            }
            FaultKind::OperatorFlush => {
                let i = self.rng.random_range(0..self.services.len());
                let r = self
                    .http
                    .post(format!("{}/api/v1/admin/flush", self.services[i].base()))
                    .bearer_auth(ADMIN_KEY)
                    .timeout(Duration::from_secs(15))
                    .send()
                    .await;
                let answer = match r {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let v: Value = r.json().await.unwrap_or_default();
                        format!(
                            "{status}, written {}, drained {}",
                            v["written"], v["drained"]
                        )
                    }
                    Err(e) => describe(&e),
                };
                (kind, format!("operator flush on instance {i}: {answer}"))
            }
            FaultKind::Lull => {
                let d = self.rng.random_range(4000..6000);
                self.workload.lull.store(true, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(d)).await;
                self.workload.lull.store(false, Ordering::SeqCst);
                (
                    kind,
                    format!("no writes for {d} ms (idle counters leave Redis)"),
                )
            }
            redis_fault => {
                let Nemesis {
                    redis,
                    rng,
                    services,
                    ports,
                    evictions,
                    ..
                } = self;
                // The split brain's instance that follows the sentinels.
                let restart_one = || async move {
                    services[0].kill9();
                    *evictions += evictions_in_log(world, ports[0]);
                    services[0] = world.start(ports[0]).await;
                    "instance 0 restarted (it asks the sentinels again)".to_string()
                };
                redis.inject(redis_fault, rng, at_ms, restart_one).await
            }
        };
        self.logged(at_ms, kind, what);
    }

    /// Prints the fault and adds it to the log.
    pub(super) fn logged(&mut self, at_ms: u64, kind: FaultKind, what: String) {
        eprintln!(
            "CHAOS_SEED={} +{:.1} s fault: {what}",
            self.seed,
            at_ms as f64 / 1000.0
        );
        self.log.push(Fault { at_ms, kind, what });
    }

    /// Lets every byte through again.
    pub(super) fn calm(&self, world: &World) {
        self.proxy.thaw();
        self.proxy.heal();
        eprintln!(
            "CHAOS_SEED={} +{:.1} s healed; {} s more of workload, then drain and check (logs: {})",
            self.seed,
            self.started.elapsed().as_secs_f64(),
            TAIL.as_secs(),
            world.log_path(self.ports[0]).display()
        );
    }

    /// Evictions in the logs of the running instances.
    pub(super) fn evictions_so_far(&self, world: &World) -> Vec<u64> {
        (0..self.services.len())
            .map(|i| evictions_in_log(world, self.ports[i]))
            .collect()
    }
}

/// Idle counters the instance on `port` reported evicting, from its log.
fn evictions_in_log(world: &World, port: u16) -> u64 {
    let log = std::fs::read_to_string(world.log_path(port)).unwrap_or_default();
    log.lines()
        .filter(|l| l.contains("idle counters evicted"))
        .filter_map(|l| {
            let rest = l.split("evicted=").nth(1)?;
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}
