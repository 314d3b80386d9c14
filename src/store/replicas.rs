//! Reads on MariaDB replicas, with read-your-writes kept by GTID.
//!
//! Writes go to the primary (`DATABASE_URL`). Reads that may lag
//! (lists, lookups of stored records, search on the MariaDB backend, the
//! operator listings) go to a replica of `DATABASE_READ_URLS`, round robin
//! over those in rotation, after a *causal wait*:
//!
//! 1. each write a client can observe keeps the GTID it committed
//!    (`@@last_gtid` on the connection that committed, or the primary's
//!    `@@gtid_binlog_pos` after a flush's batch, which is at or after it)
//!    under its [`ReadScope`] in Redis, for `READ_REPLICA_MAX_LAG_SECS`
//!    plus 10 s ([`Pools::mark_ttl`]);
//! 2. a read of that scope on a replica first runs
//!    `MASTER_GTID_WAIT(gtid, READ_REPLICA_WAIT_MS)`; if the replica has not
//!    applied the write by then, the read goes to the primary instead
//!    ([`Pools::for_read`]);
//! 3. a read whose scope has no mark (no write within the mark's life, so
//!    on every replica still in rotation) needs no wait, nor one whose mark
//!    the replica had applied at the last check ([`covers`]).
//!
//! This is the causal read of MariaDB MaxScale's readwritesplit
//! (`causal_reads`, which also waits with `MASTER_GTID_WAIT` and falls back
//! to the primary) and of ProxySQL's GTID-consistent reads, scoped per
//! application or chat instead of per connection, so that every instance of
//! the service sees the marks.
//!
//! A background check ([`Pools::check_replicas`], every second) reads the
//! primary's binary log position in the service's GTID domain, remembering
//! when it first saw each ([`PositionHistory`]), then each replica's `SHOW
//! SLAVE STATUS` and `@@gtid_slave_pos`. A replica's lag is the larger of
//! its `Seconds_Behind_Master` and the age of the oldest primary position
//! it has not applied (its *GTID lag*). One that does not answer, whose SQL
//! thread is stopped (`Seconds_Behind_Master` is NULL), or that lags more
//! than `READ_REPLICA_MAX_LAG_SECS` is taken out of rotation, and put back
//! once it is within the limit again.
//!
//! Why GTID positions and not `Seconds_Behind_Master` alone: that reads 0
//! while the IO thread waits on a half-open link to the primary (for up to
//! `slave_net_timeout`, 60 s by default), since the SQL thread has applied
//! all it received; a causal mark lives max lag + 10 s, so such a replica,
//! kept in rotation, would serve a write made 20 s earlier stale once its
//! mark expired (issue 39, point 8; docs/numbering.md, I4). A write the
//! primary committed is first seen at most one check later, so a replica
//! that has not applied it is out within max lag plus two checks, before
//! its mark expires. This is the heartbeat idea of pt-heartbeat (a
//! timestamp written on the primary, read on the replica) with the GTID
//! sequence number as the heartbeat and the check's clock as the stamp:
//! nothing is written to the primary.
//!
//! Not on replicas: the application lookup by token (the credential check:
//! a deleted application's token must stop working at once), every read
//! inside a write path, the wait for a buffered record's flush, the
//! flusher, the counts refresh and migrations.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sqlx::mysql::MySqlConnectOptions;
use sqlx::{MySqlConnection, MySqlPool};

/// Period of the background check of the replicas' lag.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// How long a causal mark is kept with `max_lag_secs`
/// (`READ_REPLICA_MAX_LAG_SECS`): that + 10 s. A replica that has not
/// applied a write that long after it is out of rotation (judged by GTID
/// positions, within two checks, [`CHECK_INTERVAL`]: see the module docs),
/// so once a mark expires every replica in rotation has applied it.
pub fn mark_ttl(max_lag_secs: u64) -> Duration {
    Duration::from_secs(max_lag_secs + 10)
}

/// How long [`PositionHistory`] remembers primary positions: a replica
/// further behind reads as lagging about this much (its lag saturates
/// here), which is far past any `READ_REPLICA_MAX_LAG_SECS`.
pub const LAG_HORIZON: Duration = Duration::from_secs(3600);

/// The primary's binary log positions in the service's GTID domain, each
/// with when a check first saw it, oldest first: one entry per check that
/// saw the position move, kept for [`LAG_HORIZON`] (plus the newest entry
/// older than that), so at most one hour of checks. A replica's GTID lag is
/// the age of the oldest entry it has not applied ([`Self::lag`]).
#[derive(Debug, Default)]
pub struct PositionHistory {
    /// The GTID domain the positions are in (`@@gtid_domain_id` of the
    /// primary); `None` before the first position.
    domain: Option<u32>,
    /// (sequence number, first seen), sequence numbers increasing.
    seen: VecDeque<(u64, Instant)>,
    /// Whether the front of `seen` is the first position of a fresh
    /// history, whose age is not known (it counts LAG_HORIZON more).
    first_age_unknown: bool,
}

impl PositionHistory {
    /// Records `position` (`domain-server-seq`, the primary's, as
    /// [`binlog_position`] reads it) as seen at `now`, if it is past the
    /// last one. A position of another domain, or lower than the last one
    /// (the binary log was reset, or another primary took over with a lower
    /// sequence number), starts the history again. Unparsable: ignored.
    pub fn observe(&mut self, position: &str, now: Instant) {
        let Some(&[(domain, seq)]) = parse_position(position).as_deref() else {
            return;
        };
        let last = self.seen.back().map(|(s, _)| *s);
        if self.domain != Some(domain) || last.is_some_and(|l| seq < l) {
            self.domain = Some(domain);
            self.seen.clear();
        }
        if last.is_none_or(|l| seq > l) || self.seen.is_empty() {
            // The first position of a fresh history (a process that just
            // started, or a reset) may be of any age: marks other instances
            // wrote up to max lag + 10 s ago may need it. It counts as seen
            // LAG_HORIZON ago, so a replica stays out of rotation until it
            // has applied it (a healthy replica, within the next check);
            // see `lag`.
            if self.seen.is_empty() {
                self.first_age_unknown = true;
            }
            self.seen.push_back((seq, now));
        }
        // Keep the newest entry older than the horizon: a replica behind it
        // still reads as lagging at least that long.
        while self.seen.len() > 1
            && self
                .seen
                .get(1)
                .is_some_and(|(_, t)| now.saturating_duration_since(*t) > LAG_HORIZON)
        {
            self.seen.pop_front();
            self.first_age_unknown = false;
        }
    }

    /// How long ago the oldest recorded primary position that `applied` (a
    /// replica's `@@gtid_current_pos`) does not include was first seen
    /// (plus [`LAG_HORIZON`] for the first position of a fresh history,
    /// whose age is unknown): zero
    /// when it includes them all (or nothing is recorded yet). A replica
    /// with nothing in the domain is behind every position; an unparsable
    /// `applied` is too.
    pub fn lag(&self, applied: &str, now: Instant) -> Duration {
        let Some(domain) = self.domain else {
            return Duration::ZERO;
        };
        let applied_seq = parse_position(applied)
            .and_then(|p| p.into_iter().find(|(d, _)| *d == domain))
            .map_or(0, |(_, s)| s);
        match self.seen.iter().position(|(seq, _)| *seq > applied_seq) {
            None => Duration::ZERO,
            Some(i) => {
                let age = now.saturating_duration_since(self.seen[i].1);
                if i == 0 && self.first_age_unknown {
                    age + LAG_HORIZON
                } else {
                    age
                }
            }
        }
    }
}

/// What a causal mark is kept for: the rows a read may show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadScope {
    /// An application's chats (its chat list and chat lookups), by id.
    Application(u64),
    /// A chat's messages (its message list, lookups and search), by id.
    Chat(u64),
}

impl ReadScope {
    /// The scope's name in the mark keys: `a:{id}` or `c:{id}`.
    pub fn mark(&self) -> String {
        match self {
            ReadScope::Application(id) => format!("a:{id}"),
            ReadScope::Chat(id) => format!("c:{id}"),
        }
    }
}

/// One replica and what the background check last saw of it.
pub struct Replica {
    /// `host:port` (never the URL: it may hold a password), for logs and
    /// metric labels.
    pub name: String,
    /// Its pool (connections made on first use).
    pub pool: MySqlPool,
    in_rotation: AtomicBool,
    /// Seconds behind the primary at the last check (the larger of its
    /// `Seconds_Behind_Master` and its GTID lag); -1 unknown.
    lag_secs: AtomicI64,
    /// Its `@@gtid_slave_pos` at the last check: what it had applied then.
    applied: std::sync::Mutex<String>,
}

impl Replica {
    /// Whether reads may go to it now.
    pub fn in_rotation(&self) -> bool {
        self.in_rotation.load(Ordering::Relaxed)
    }

    /// Its lag at the last check, in seconds: the larger of its
    /// `Seconds_Behind_Master` and the age of the oldest primary position
    /// it had not applied (`None` unknown: down, or its SQL thread
    /// stopped).
    pub fn lag_secs(&self) -> Option<i64> {
        Some(self.lag_secs.load(Ordering::Relaxed)).filter(|l| *l >= 0)
    }
}

/// The primary and the read replicas.
#[derive(Clone)]
pub struct Pools {
    primary: MySqlPool,
    replicas: Arc<[Replica]>,
    wait: Duration,
    max_lag_secs: u64,
    next: Arc<AtomicUsize>,
    /// The primary's positions the checks saw, for the GTID lag.
    positions: Arc<std::sync::Mutex<PositionHistory>>,
}

/// Why a read that could have gone to a replica went to the primary (a
/// label of `chat_read_primary_fallbacks_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// No replica is in rotation.
    NoReplica,
    /// The replica had not applied the scope's last write within
    /// `READ_REPLICA_WAIT_MS`.
    WaitTimedOut,
    /// The wait failed (the replica went away).
    WaitFailed,
    /// The read itself failed on the replica (it went away after the wait).
    ReadFailed,
}

impl Fallback {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::NoReplica => "no_replica",
            Fallback::WaitTimedOut => "wait_timed_out",
            Fallback::WaitFailed => "wait_failed",
            Fallback::ReadFailed => "read_failed",
        }
    }
}

impl Pools {
    /// Every read on `primary`: no replicas.
    pub fn primary_only(primary: MySqlPool) -> Self {
        Self {
            primary,
            replicas: Arc::from(Vec::new()),
            wait: Duration::from_millis(200),
            max_lag_secs: 5,
            next: Arc::new(AtomicUsize::new(0)),
            positions: Default::default(),
        }
    }

    /// `primary` and lazy pools on `read_urls` (each of `max_connections`),
    /// none in rotation until a check ([`Pools::check_replicas`]) finds it fit. `wait`: the
    /// causal wait's bound; `max_lag_secs`: the lag that takes a replica
    /// out of rotation. Errors: a URL that does not parse.
    pub fn new(
        primary: MySqlPool,
        read_urls: &[String],
        max_connections: u32,
        wait: Duration,
        max_lag_secs: u64,
    ) -> anyhow::Result<Self> {
        let mut replicas = Vec::with_capacity(read_urls.len());
        for url in read_urls {
            let opts: MySqlConnectOptions = url
                .parse()
                .map_err(|e| anyhow::anyhow!("DATABASE_READ_URLS holds an invalid URL: {e}"))?;
            let name = format!("{}:{}", opts.get_host(), opts.get_port());
            replicas.push(Replica {
                name,
                pool: super::connect_lazy(url, max_connections)?,
                in_rotation: AtomicBool::new(false),
                lag_secs: AtomicI64::new(-1),
                applied: std::sync::Mutex::new(String::new()),
            });
        }
        Ok(Self {
            primary,
            replicas: Arc::from(replicas),
            wait,
            max_lag_secs,
            next: Arc::new(AtomicUsize::new(0)),
            positions: Default::default(),
        })
    }

    /// The primary: every write, and every read inside a write path.
    pub fn primary(&self) -> &MySqlPool {
        &self.primary
    }

    /// The replicas (empty without `DATABASE_READ_URLS`).
    pub fn replicas(&self) -> &[Replica] {
        &self.replicas
    }

    /// Whether writes must keep their GTID: replicas are configured.
    pub fn keeps_marks(&self) -> bool {
        !self.replicas.is_empty()
    }

    /// How long a causal mark is kept ([`mark_ttl`] of
    /// `READ_REPLICA_MAX_LAG_SECS`).
    pub fn mark_ttl(&self) -> Duration {
        mark_ttl(self.max_lag_secs)
    }

    /// The pool a read of a scope whose last write committed `mark` (its
    /// GTID, `None` when no mark is kept) may run on: the next replica in
    /// rotation once it has applied `mark` (`MASTER_GTID_WAIT`, up to
    /// `READ_REPLICA_WAIT_MS`), else the primary. Never fails: the primary
    /// is the fallback of every failure (counted by reason).
    pub async fn for_read(&self, mark: Option<&str>) -> &MySqlPool {
        if self.replicas.is_empty() {
            return &self.primary;
        }
        let Some(replica) = self.pick() else {
            return self.fall_back(Fallback::NoReplica);
        };
        let Some(gtid) = mark else {
            crate::telemetry::metrics::replica_read(&replica.name);
            return &replica.pool;
        };
        // Applied by the last check (at most CHECK_INTERVAL ago; a
        // replica's applied position only grows): no wait needed.
        if covers(&replica.applied.lock().expect("not poisoned"), gtid) {
            crate::telemetry::metrics::replica_read(&replica.name);
            return &replica.pool;
        }
        crate::telemetry::metrics::replica_wait(&replica.name);
        // MASTER_GTID_WAIT answers 0 once the position is applied, -1 on
        // timeout (seconds, fractions allowed).
        let waited: sqlx::Result<Option<i64>> = sqlx::query_scalar("SELECT MASTER_GTID_WAIT(?, ?)")
            .bind(gtid)
            .bind(self.wait.as_secs_f64())
            .fetch_one(&replica.pool)
            .await;
        match waited {
            Ok(Some(0)) => {
                crate::telemetry::metrics::replica_read(&replica.name);
                &replica.pool
            }
            Ok(_) => {
                crate::telemetry::metrics::replica_wait_timed_out(&replica.name);
                self.fall_back(Fallback::WaitTimedOut)
            }
            Err(e) => {
                tracing::warn!(replica = %replica.name, error = %e, "causal wait on a replica failed; reading from the primary");
                self.fall_back(Fallback::WaitFailed)
            }
        }
    }

    fn fall_back(&self, why: Fallback) -> &MySqlPool {
        crate::telemetry::metrics::primary_fallback(why.as_str());
        &self.primary
    }

    /// The next replica in rotation, round robin.
    fn pick(&self) -> Option<&Replica> {
        let n = self.replicas.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &self.replicas[(start + i) % n])
            .find(|r| r.in_rotation())
    }

    /// Runs `write` on one connection of the primary and returns its
    /// result with the GTID it committed (`@@last_gtid` on that
    /// connection), read only when replicas are configured (`None`
    /// otherwise). Errors: those of `write`, or the connection failing.
    pub async fn observed<T>(
        &self,
        write: impl AsyncFnOnce(&mut MySqlConnection) -> sqlx::Result<T>,
    ) -> sqlx::Result<(T, Option<String>)> {
        let mut conn = self.primary.acquire().await?;
        let out = write(&mut conn).await?;
        let gtid = if self.keeps_marks() {
            last_gtid(&mut conn).await?
        } else {
            None
        };
        Ok((out, gtid))
    }

    /// One round of the background check: the primary's position is
    /// recorded, then each replica's lag (the larger of its
    /// `Seconds_Behind_Master` and its GTID lag, see the module docs)
    /// decides whether it stays in rotation. Logs every change; updates the
    /// lag gauge. A primary that does not answer adds no position (the
    /// replicas are judged by those already seen).
    pub async fn check_replicas(&self) {
        if self.replicas.is_empty() {
            return;
        }
        // The primary first, then the replicas: a position is only judged
        // against what a replica applied after it was seen.
        match tokio::time::timeout(Duration::from_secs(2), binlog_position(&self.primary)).await {
            Ok(Ok(Some(position))) => self
                .positions
                .lock()
                .expect("not poisoned")
                .observe(&position, Instant::now()),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not read the primary's GTID position")
            }
            Err(_) => tracing::warn!("the primary's GTID position not read within 2 s"),
        }
        for replica in self.replicas.iter() {
            let status = replica_status(&replica.pool).await;
            if let Ok((_, Some(applied))) = &status {
                applied.clone_into(&mut replica.applied.lock().expect("not poisoned"));
            }
            let lag = status.map(|(lag, applied)| {
                let behind = self
                    .positions
                    .lock()
                    .expect("not poisoned")
                    .lag(applied.as_deref().unwrap_or(""), Instant::now());
                // Whole seconds, rounded up: a position unapplied for 1.2 s
                // is over a 1 s limit.
                let gtid_lag = behind.as_millis().div_ceil(1000) as i64;
                lag.map(|l| l.max(gtid_lag))
            });
            let fit = matches!(lag, Ok(Some(l)) if l <= self.max_lag_secs as i64);
            replica.lag_secs.store(
                lag.as_ref().ok().copied().flatten().unwrap_or(-1),
                Ordering::Relaxed,
            );
            crate::telemetry::metrics::replica_state(&replica.name, replica.lag_secs(), fit);
            if replica.in_rotation.swap(fit, Ordering::Relaxed) != fit {
                match (&lag, fit) {
                    (_, true) => {
                        tracing::info!(replica = %replica.name, "replica back in rotation")
                    }
                    (Ok(Some(l)), false) => {
                        tracing::warn!(replica = %replica.name, lag_secs = l, max = self.max_lag_secs, "replica lags too far; out of rotation")
                    }
                    (Ok(None), false) => {
                        tracing::warn!(replica = %replica.name, "replica is not applying (SQL thread stopped or not a replica); out of rotation")
                    }
                    (Err(e), false) => {
                        tracing::warn!(replica = %replica.name, error = %e, "replica unreachable; out of rotation")
                    }
                }
            }
        }
    }
}

/// `Seconds_Behind_Master` of the replica behind `pool` (`None` when it is
/// not applying: NULL, its SQL or IO thread stopped, or not a replica at
/// all) and its `@@gtid_current_pos` (what it has applied).
/// Errors: it cannot be reached within 2 s.
async fn replica_status(pool: &MySqlPool) -> sqlx::Result<(Option<i64>, Option<String>)> {
    use sqlx::Row;
    let status = async {
        let row = sqlx::query("SHOW SLAVE STATUS")
            .fetch_optional(pool)
            .await?;
        // (SHOW SLAVE STATUS has only the IO thread's position.)
        // `gtid_current_pos`: what its SQL thread applied, or, for a former
        // primary's own transactions (a switchover back), what its binary
        // log has (`gtid_slave_pos` lacks those).
        let applied: Option<String> = sqlx::query_scalar("SELECT @@gtid_current_pos")
            .fetch_one(pool)
            .await?;
        Ok::<_, sqlx::Error>((row, applied))
    };
    let (row, applied) = tokio::time::timeout(Duration::from_secs(2), status)
        .await
        .map_err(|_| sqlx::Error::PoolTimedOut)??;
    let lag = row.and_then(|row| {
        row.try_get::<Option<u64>, _>("Seconds_Behind_Master")
            .ok()
            .flatten()
            .map(|l| l as i64)
    });
    Ok((lag, applied))
}

/// Whether the GTID position `applied` (`domain-server-seq`, one per
/// domain, comma-separated, as `@@gtid_slave_pos`) includes every GTID of
/// `wanted` (one GTID or such a position): in each of `wanted`'s domains,
/// `applied` has a sequence number at least as high (sequence numbers grow
/// within a domain, across servers). Anything unparsable: false (wait).
/// MariaDB's GTID model: <https://mariadb.com/kb/en/gtid/>.
pub fn covers(applied: &str, wanted: &str) -> bool {
    let (Some(applied), Some(wanted)) = (parse_position(applied), parse_position(wanted)) else {
        return false;
    };
    !wanted.is_empty()
        && wanted
            .iter()
            .all(|(domain, seq)| applied.iter().any(|(d, s)| d == domain && s >= seq))
}

/// A GTID position (`domain-server-seq`, comma-separated) as `(domain,
/// sequence number)` pairs; `None` if any entry does not parse.
fn parse_position(pos: &str) -> Option<Vec<(u32, u64)>> {
    pos.split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(|g| {
            let mut parts = g.split('-');
            let domain = parts.next()?.parse().ok()?;
            let _server: u32 = parts.next()?.parse().ok()?;
            let seq = parts.next()?.parse().ok()?;
            parts.next().is_none().then_some((domain, seq))
        })
        .collect()
}

/// The GTID of the last transaction committed on `conn` (`@@last_gtid`),
/// `None` when it wrote none or the primary has no binary log. Errors: the
/// connection failed.
pub async fn last_gtid(conn: &mut MySqlConnection) -> sqlx::Result<Option<String>> {
    let gtid: Option<String> = sqlx::query_scalar("SELECT @@last_gtid")
        .fetch_one(&mut *conn)
        .await?;
    Ok(gtid.filter(|g| !g.is_empty()))
}

/// The primary's binary log position in the domain this service writes in
/// (the entry of `@@gtid_binlog_pos` for `@@gtid_domain_id`): at or after
/// every transaction this service committed before this call. Only that
/// domain: a mark with another domain's position (another writer's, or an
/// old one) would wait on a replica that does not replicate it, forever
/// (issue 39, point 8). `None` without a binary log. Errors: the primary
/// cannot be reached.
pub async fn binlog_position(pool: &MySqlPool) -> sqlx::Result<Option<String>> {
    let (pos, domain): (Option<String>, i64) =
        sqlx::query_as("SELECT @@gtid_binlog_pos, CAST(@@gtid_domain_id AS SIGNED)")
            .fetch_one(pool)
            .await?;
    Ok(pos.and_then(|p| own_domain(&p, domain)))
}

/// The entry of GTID list `pos` (`domain-server-seq,…`) in `domain`.
pub fn own_domain(pos: &str, domain: i64) -> Option<String> {
    pos.split(',')
        .map(str::trim)
        .find(|g| g.split('-').next().and_then(|d| d.parse::<i64>().ok()) == Some(domain))
        .map(str::to_string)
}

/// Whether the primary writes a binary log (`@@log_bin`), without which it
/// has no GTIDs and no replica can follow it. Errors: it cannot be reached.
pub async fn primary_logs_binary(pool: &MySqlPool) -> sqlx::Result<bool> {
    let on: i64 = sqlx::query_scalar("SELECT @@log_bin")
        .fetch_one(pool)
        .await?;
    Ok(on == 1)
}

#[cfg(test)]
mod tests {
    use super::covers;

    #[test]
    fn a_position_covers_what_it_has_applied_in_every_domain() {
        assert!(covers("0-1-42", "0-1-42"));
        assert!(covers("0-1-43", "0-1-42"));
        assert!(!covers("0-1-41", "0-1-42"));
        // Another server of the same domain (after a failover): by sequence.
        assert!(covers("0-2-50", "0-1-42"));
        assert!(covers("0-1-10,1-1-7", "1-1-7"));
        assert!(!covers("0-1-10", "1-1-7"), "a domain it has not seen");
        assert!(covers("0-1-10,1-1-7", "0-1-9,1-1-7"));
        assert!(!covers("0-1-10,1-1-6", "0-1-9,1-1-7"));
        // Nothing known, or garbage: wait.
        assert!(!covers("", "0-1-1"));
        assert!(!covers("0-1-5", ""));
        assert!(!covers("0-1-x", "0-1-1"));
        assert!(!covers("0-1-5-9", "0-1-1"));
    }
}

#[cfg(test)]
mod domain_tests {
    #[test]
    fn a_flush_mark_keeps_only_the_services_own_domain() {
        assert_eq!(
            super::own_domain("0-1-100,7-2-5", 0).as_deref(),
            Some("0-1-100")
        );
        assert_eq!(
            super::own_domain("0-1-100, 7-2-5", 7).as_deref(),
            Some("7-2-5")
        );
        assert_eq!(super::own_domain("7-2-5", 0), None);
        assert_eq!(super::own_domain("", 0), None);
    }
}

#[cfg(test)]
mod lag_tests {
    use super::{LAG_HORIZON, PositionHistory};
    use std::time::{Duration, Instant};

    #[test]
    fn a_replica_lags_by_the_age_of_the_oldest_primary_position_it_has_not_applied() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut h = PositionHistory::default();
        assert_eq!(h.lag("", t0), Duration::ZERO, "nothing seen yet");
        h.observe("0-1-10", t0);
        h.observe("0-1-10", t0 + s(1));
        h.observe("0-1-12", t0 + s(2));
        h.observe("0-1-15", t0 + s(3));
        let now = t0 + s(5);
        assert_eq!(h.lag("0-1-15", now), Duration::ZERO);
        assert_eq!(h.lag("0-1-16,1-9-3", now), Duration::ZERO);
        assert_eq!(h.lag("0-1-12", now), s(2), "15 first seen 2 s ago");
        assert_eq!(h.lag("0-1-11", now), s(3));
        // 10, the first position of a fresh history, may be of any age: it
        // counts as seen LAG_HORIZON before t0 (not when last seen).
        let first = s(5) + LAG_HORIZON;
        assert_eq!(h.lag("0-1-9", now), first);
        assert_eq!(h.lag("", now), first, "nothing in the domain");
        assert_eq!(h.lag("1-1-99", now), first, "another domain only");
        assert_eq!(h.lag("garbage", now), first);
        // Another server of the same domain: by sequence number.
        assert_eq!(h.lag("0-2-15", now), Duration::ZERO);
        h.observe("not a position", now);
        assert_eq!(h.lag("0-1-12", now), s(2), "ignored");
    }

    #[test]
    fn the_history_starts_again_on_a_reset_and_keeps_an_hour() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut h = PositionHistory::default();
        h.observe("0-1-100", t0);
        h.observe("0-1-5", t0 + s(1));
        assert_eq!(
            h.lag("0-1-4", t0 + s(2)),
            s(1) + LAG_HORIZON,
            "reset: 100 forgotten, 5 the first of a fresh history"
        );
        assert_eq!(h.lag("0-1-5", t0 + s(2)), Duration::ZERO);
        h.observe("7-1-1", t0 + s(3));
        assert_eq!(
            h.lag("0-1-5", t0 + s(4)),
            s(1) + LAG_HORIZON,
            "another domain"
        );
        let mut h = PositionHistory::default();
        for i in 0..10_000u64 {
            h.observe(&format!("0-1-{}", i + 1), t0 + s(i));
        }
        let now = t0 + s(10_000);
        assert!(
            h.seen.len() <= LAG_HORIZON.as_secs() as usize + 2,
            "{}",
            h.seen.len()
        );
        // Far behind: still at least the horizon.
        assert!(h.lag("0-1-1", now) > LAG_HORIZON);
        assert_eq!(h.lag("0-1-9990", now), s(10));
    }
}
