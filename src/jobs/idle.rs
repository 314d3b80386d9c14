//! Bounded Redis memory per chat: counters of idle chats leave Redis.
//!
//! Each chat keeps a counter, its checked epoch and its bound in its
//! application's hash, and a create costs no SQL, so without this Redis
//! would grow with every chat ever created (and one tenant could grow it
//! until `noeviction` refuses every tenant's creates). Every
//! `CHAT_IDLE_SECS` this sweep looks at every application hash; a counter
//! (a chat's, or the application's chat counter) that held the same value
//! at the last sweep, a whole period ago, and equals MariaDB's highest
//! number of its scope (so everything it handed out is stored) is evicted.
//! The sweep first records the shard's current epoch as the scope's
//! eviction epoch in MariaDB ([`crate::store::numbering::mark_evicted`]),
//! then runs [`crate::writebehind::numbering::EVICT`], which checks
//! atomically that no create came since, that the counter was checked in
//! that epoch on this Redis lineage (a counter in doubt is never evicted)
//! and that the epoch is still current. The scopes it marked whose counters
//! EVICT did not take lose their mark again
//! ([`crate::store::numbering::unmark_evicted`]), so that a mark never
//! outlives the counter it was written for. A deleted chat's tombstone goes
//! the same way once idle (MariaDB keeps the deletion).
//!
//! On its next use the counter is missing, and
//! [`crate::writebehind::numbering::RESTART`] brings it back exactly at
//! MariaDB's highest number, skipping nothing, only when MariaDB recorded
//! its eviction in the shard's current epoch (Redis lost nothing since);
//! otherwise it restarts above its reservation like any counter in doubt.
//! So no number is handed out twice (docs/numbering.md, I1).
//!
//! The sweep also records the skipped ranges that a restart left waiting in
//! Redis (`k:{field}`) when MariaDB failed right after it (I2).
//!
//! The sweep remembers, per application hash, the counters it saw (in this
//! process: as much memory as the counters themselves, freed with them).

use std::collections::HashMap;

use crate::store;
use crate::store::numbering::FIRST_BLOCK;
use crate::writebehind::{BufferError, Numbering};

/// Fields asked of each `HSCAN` call, and counters evicted per
/// [`crate::writebehind::numbering::EVICT`] call. Redis runs one command
/// at a time: one `HGETALL` or one script over a million-chat hash would
/// stall every tenant's creates for as long (and a call past
/// `REDIS_TIMEOUT_MS` marks the shared connection broken), so each call
/// stays a bounded piece of work.
const PAGE: usize = 1000;

/// The idle-counter sweep of one process.
pub struct IdleCounters {
    numbering: Numbering,
    /// App hash key → counter field → value, at the last sweep.
    seen: tokio::sync::Mutex<HashMap<String, HashMap<String, String>>>,
}

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    /// Application hashes looked at.
    pub applications: u64,
    /// Counters evicted.
    pub evicted: u64,
    /// Skipped ranges recorded in MariaDB that a restart had left waiting
    /// in Redis.
    pub skips_recorded: usize,
    /// Chat tombstones repaired: left in place with a delete in flight for
    /// a whole period (see [`crate::writebehind::numbering::REPAIR_TOMBSTONE`]).
    pub repaired: u64,
}

impl IdleCounters {
    /// A sweep over `numbering`'s Redis and MariaDB.
    pub fn new(numbering: Numbering) -> Self {
        Self {
            numbering,
            seen: Default::default(),
        }
    }

    /// One sweep (see the module docs). Errors: Redis or MariaDB
    /// unavailable (what was evicted stays evicted).
    pub async fn sweep_once(&self) -> Result<SweepReport, BufferError> {
        let (redis, keys, pool, timeout) = self.numbering.parts();
        let pattern = format!("{}*app:*", keys.prefix());
        let app_keys: Vec<String> = redis
            .call(
                timeout * 10,
                |mut c| async move { c.scan_all(&pattern).await },
            )
            .await?;
        let mut seen = self.seen.lock().await;
        let mut now_seen = HashMap::with_capacity(app_keys.len());
        let mut report = SweepReport::default();
        for key in app_keys {
            let Some(token) = key.rsplit_once("app:").map(|(_, t)| t.to_string()) else {
                continue;
            };
            let fields = self.read_hash(&key).await?;
            let Some(id) = fields.get("id").and_then(|v| v.parse::<u64>().ok()) else {
                continue;
            };
            report.applications += 1;
            // Per application, a MariaDB error (say, an application that a
            // restored Redis still has and MariaDB no longer) is logged and
            // the sweep goes on with the next.
            for field in fields.keys().filter_map(|f| f.strip_prefix("k:")) {
                match self.numbering.record_skips(&token, id, field).await {
                    Ok(n) => report.skips_recorded += n,
                    Err(BufferError::Database(e)) => {
                        tracing::warn!(error = %e, application_id = id, "could not record skipped numbers")
                    }
                    Err(e) => return Err(e),
                }
            }
            let counters: HashMap<String, String> = fields
                .iter()
                .filter(|(f, _)| {
                    f.as_str() == "chats" || f.parse::<i64>().is_ok() || f.starts_with("t:")
                })
                .map(|(f, v)| (f.clone(), v.clone()))
                .collect();
            let before = seen.remove(&key).unwrap_or_default();
            let unchanged: Vec<(&String, &String)> = counters
                .iter()
                .filter(|(f, v)| before.get(*f) == Some(*v) && !f.starts_with("t:"))
                .collect();
            let mut evict = Vec::new();
            let mut chats = Vec::new();
            for (field, value) in unchanged {
                let in_flight = format!("t:{field}");
                if value == "deleted" && counters.contains_key(&in_flight) {
                    // A delete in flight for a whole period: its SQL delete
                    // and its undo both failed (see repair_tombstone).
                    if before.get(&in_flight) == counters.get(&in_flight) {
                        match self
                            .repair_tombstone(&token, id, field, &counters[&in_flight])
                            .await
                        {
                            Ok(n) => report.repaired += n,
                            Err(BufferError::Database(e)) => {
                                tracing::warn!(error = %e, application_id = id, "could not settle a tombstone")
                            }
                            Err(e) => return Err(e),
                        }
                    }
                } else if value == "deleted" {
                    evict.push((field.clone(), value.clone()));
                } else if field == "chats" {
                    if store::applications::last_chat_number(pool, id)
                        .await?
                        .to_string()
                        == *value
                    {
                        evict.push((field.clone(), value.clone()));
                    }
                } else if let Ok(n) = field.parse::<i64>() {
                    chats.push(n);
                }
            }
            for (number, highest) in store::chats::highest_message_numbers(pool, id, &chats).await?
            {
                let field = number.to_string();
                if counters.get(&field) == Some(&highest.to_string()) {
                    evict.push((field, highest.to_string()));
                }
            }
            if let Some(epoch) = self.numbering.current_epoch(&token).await? {
                // Only counters read checked in the epoch read after them: a
                // Redis loss between the two reads would otherwise mark the
                // new epoch for a counter in doubt (found by the model check,
                // `numbering_model.rs`, finding 1).
                let epoch_text = epoch.to_string();
                evict.retain(|(field, value)| {
                    let checked = if field == "chats" {
                        "v".to_string()
                    } else {
                        format!("v:{field}")
                    };
                    value == "deleted" || fields.get(&checked) == Some(&epoch_text)
                });
                for page in evict.chunks(PAGE) {
                    let scopes: Vec<(i64, i64)> = page
                        .iter()
                        .filter(|(_, value)| value != "deleted")
                        .map(|(field, _)| {
                            let bound = if field == "chats" {
                                "r".to_string()
                            } else {
                                format!("r:{field}")
                            };
                            (
                                field.parse().unwrap_or(0),
                                fields
                                    .get(&bound)
                                    .and_then(|b| b.parse().ok())
                                    .unwrap_or(FIRST_BLOCK),
                            )
                        })
                        .collect();
                    let numbers: Vec<i64> = scopes.iter().map(|(n, _)| *n).collect();
                    let marked = match store::numbering::mark_evicted(pool, id, &scopes, epoch)
                        .await
                    {
                        Ok(()) => store::numbering::marked_evicted(pool, id, &numbers, epoch).await,
                        Err(e) => Err(e),
                    };
                    let marked = match marked {
                        Ok(marked) => marked,
                        Err(e) => {
                            tracing::warn!(error = %e, application_id = id, "could not record evictions; nothing evicted");
                            break;
                        }
                    };
                    // Only what MariaDB marked (a scope whose reservation
                    // moved past this Redis's bound keeps its counter), and
                    // tombstones.
                    let page: Vec<(String, String)> = page
                        .iter()
                        .filter(|(field, value)| {
                            value == "deleted" || marked.contains(&field.parse().unwrap_or(0))
                        })
                        .cloned()
                        .collect();
                    let taken = self.numbering.evict(&token, epoch, &page).await?;
                    report.evicted += taken.len() as u64;
                    // The scopes marked whose counters EVICT did not take
                    // (a create came since the sweep looked, or the epoch
                    // moved) lose their mark again (O11). A failure leaves
                    // marks behind, as before this step existed.
                    let stayed: Vec<i64> = page
                        .iter()
                        .filter(|(field, value)| value != "deleted" && !taken.contains(field))
                        .map(|(field, _)| field.parse().unwrap_or(0))
                        .collect();
                    if let Err(e) = store::numbering::unmark_evicted(pool, id, &stayed, epoch).await
                    {
                        tracing::warn!(error = %e, application_id = id, "could not clear the eviction marks of counters that stayed");
                    }
                }
            }
            let mut left = counters;
            for (field, _) in &evict {
                left.remove(field);
            }
            if !left.is_empty() {
                now_seen.insert(key, left);
            }
        }
        *seen = now_seen;
        Ok(report)
    }

    /// Repairs chat `field`'s tombstone, left `deleted` with `in_flight`
    /// deletes in flight for a whole sweep period: the chat's SQL delete
    /// failed and so did the undo ([`crate::writebehind::scripts::UNTOMBSTONE`]),
    /// so no request will ever settle it. MariaDB decides: a chat it holds
    /// live gets its counter back, in doubt (its next create restarts it
    /// above its bound); a deleted or unknown one keeps its tombstone, made
    /// final. Returns 1 if repaired. Errors: Redis or MariaDB unavailable.
    async fn repair_tombstone(
        &self,
        token: &str,
        application_id: u64,
        field: &str,
        in_flight: &str,
    ) -> Result<u64, BufferError> {
        let Ok(chat_number) = field.parse::<i64>() else {
            return Ok(0);
        };
        let (_, _, pool, _) = self.numbering.parts();
        let live = matches!(
            store::chats::message_floor(pool, application_id, chat_number).await?,
            Some((false, _))
        );
        let repaired = self
            .numbering
            .repair_tombstone(token, field, in_flight, live)
            .await?;
        if repaired {
            tracing::warn!(
                application_id,
                chat_number,
                live,
                "repaired a chat tombstone left by a delete whose SQL and undo both failed"
            );
        }
        Ok(u64::from(repaired))
    }

    /// Every field of the hash `key`, read by `HSCAN` pages of about
    /// [`PAGE`] fields (a field may come twice; the map keeps one). A field
    /// present for the whole scan is returned (Redis's `SCAN` guarantee).
    /// Errors: Redis unavailable, or a page not answered within the time
    /// limit.
    async fn read_hash(&self, key: &str) -> Result<HashMap<String, String>, BufferError> {
        let (redis, _, _, timeout) = self.numbering.parts();
        let mut fields = HashMap::new();
        let mut cursor = "0".to_string();
        loop {
            let (next, page): (String, HashMap<String, String>) = {
                let (key, cursor) = (key.to_string(), cursor.clone());
                redis
                    .call(timeout, |mut c| async move {
                        redis::cmd("HSCAN")
                            .arg(key)
                            .arg(cursor)
                            .arg("COUNT")
                            .arg(PAGE)
                            .query_async(&mut c)
                            .await
                    })
                    .await?
            };
            fields.extend(page);
            if next == "0" {
                return Ok(fields);
            }
            cursor = next;
        }
    }
}
