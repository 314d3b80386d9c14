//! `/api/v1/admin/queues`, `/admin/dead-letters`, `/admin/flush`: what is in
//! the write-behind buffer, and the levers an operator needs (replay or
//! discard dead letters, flush now). The work is in
//! [`crate::writebehind::inspect`], [`crate::writebehind::deadletter`] and
//! [`crate::writebehind::Flusher::flush_all`].

use crate::http::answers::{Errors, Operator, OperatorBody, OperatorQuery};
use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::Query;
use poem_openapi::payload::Json;
use poem_openapi::{Enum, Object, OpenApi};

use super::AdminKey;
use crate::domain::Page;
use crate::domain::record::ms_to_utc;
use crate::http::body::JsonBody;
use crate::http::error::ApiError;
use crate::http::fields::Hex128;
use crate::http::schemas::Meta;
use crate::http::{ApiTags, AppState};
use crate::writebehind::Kind;
use crate::writebehind::flusher::FlushError;

/// How long `POST /admin/flush` keeps flushing before it reports, in seconds.
/// The flush runs in its own task, so a client that gives up does not cut a
/// batch in half.
pub const FLUSH_BUDGET_SECS: u64 = 30;

/// Most ids one replay or discard request may name.
pub const MAX_IDS: usize = 1000;

/// A queue of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, serde::Serialize, serde::Deserialize)]
#[oai(rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum QueueName {
    /// Chats waiting to be written to MariaDB.
    Chats,
    /// Messages waiting to be written to MariaDB.
    Messages,
    /// Changes waiting to be applied to Meilisearch (only with `MEILI_URL`).
    Search,
}

impl From<QueueName> for Kind {
    fn from(q: QueueName) -> Self {
        match q {
            QueueName::Chats => Kind::Chats,
            QueueName::Messages => Kind::Messages,
            QueueName::Search => Kind::Search,
        }
    }
}

impl From<Kind> for QueueName {
    fn from(k: Kind) -> Self {
        match k {
            Kind::Chats => QueueName::Chats,
            Kind::Messages => QueueName::Messages,
            Kind::Search => QueueName::Search,
        }
    }
}

/// A batch claimed by a flusher (or the search indexer), not yet acknowledged.
#[derive(Debug, Clone, Object, serde::Serialize, serde::Deserialize)]
pub struct BatchView {
    /// The batch's id.
    pub id: String,
    /// The instance that claimed it (its `INSTANCE_ID`), or null if unknown.
    #[oai(nullable)]
    pub owner: Option<String>,
    /// When it was claimed, or null if unknown.
    #[oai(nullable)]
    #[oai(serialize_with = "crate::http::schemas::micros_or_null")]
    pub claimed_at: Option<DateTime<Utc>>,
    /// When its lease runs out. After that, any instance moves the batch back
    /// to the head of its queue (within `LEASE_SECS`).
    #[oai(serialize_with = "crate::http::schemas::micros")]
    pub lease_expires_at: DateTime<Utc>,
    /// Seconds until the lease runs out; negative when it has expired and the
    /// batch waits for recovery.
    pub lease_expires_in_secs: f64,
    /// Records in the batch.
    pub records: u64,
}

/// The state of one queue.
#[derive(Debug, Clone, Object, serde::Serialize, serde::Deserialize)]
pub struct QueueView {
    /// Which queue.
    pub queue: QueueName,
    /// Records waiting to be flushed (not counting claimed batches).
    pub pending: u64,
    /// Bytes of the queue's records, pending or claimed, counted exactly as
    /// they enter and leave (what `MAX_PENDING_BYTES` limits; 0 for the
    /// search queue).
    pub pending_bytes: u64,
    /// Age of the record at the head of the queue, the next to be flushed, in
    /// seconds (the oldest pending record, except for messages deferred to
    /// the tail while they wait for their chat); null when the queue is empty.
    #[oai(nullable)]
    pub oldest_pending_age_secs: Option<f64>,
    /// Batches being processed, oldest claim first.
    pub processing: Vec<BatchView>,
    /// Records in the queue's dead-letter list (see `/admin/dead-letters`).
    pub dead_letters: u64,
}

/// The state of the buffer.
#[derive(Debug, Clone, Object, serde::Serialize, serde::Deserialize)]
pub struct QueuesView {
    /// The instance that answered (`INSTANCE_ID`).
    pub instance: String,
    /// Every queue: chats, messages, search.
    pub queues: Vec<QueueView>,
}

/// A record that could not be written.
#[derive(Debug, Clone, Object, serde::Serialize, serde::Deserialize)]
pub struct DeadLetterView {
    /// Its id, for replay and discard (32 hex characters).
    pub id: String,
    /// The queue it came from.
    pub queue: QueueName,
    /// The buffered record: tab-separated fields (see `src/domain/record.rs`),
    /// or a JSON op for the search queue.
    pub record: String,
    /// Why it could not be written.
    pub reason: String,
    /// When it last failed, or null if the entry is unreadable.
    #[oai(nullable)]
    #[oai(serialize_with = "crate::http::schemas::micros_or_null")]
    pub failed_at: Option<DateTime<Utc>>,
}

/// A page of dead letters, oldest first.
#[derive(Debug, Clone, Object, serde::Serialize, serde::Deserialize)]
pub struct DeadLetterList {
    /// The entries of this page.
    pub dead_letters: Vec<DeadLetterView>,
    /// Entries in the queue's dead-letter list.
    pub total: u64,
    /// Pagination.
    pub meta: Meta,
}

/// Which dead letters to replay.
#[derive(Debug, Clone, Object, serde::Serialize, serde::Deserialize)]
pub struct ReplayRequest {
    /// Only this queue; omitted or null: every queue, chats first (so a
    /// replayed message finds its replayed chat).
    #[oai(nullable)]
    pub queue: Option<QueueName>,
    /// Only these entries (ids from `GET /admin/dead-letters`); omitted or
    /// null: every entry.
    #[oai(nullable, validator(max_items = 1000))]
    pub ids: Option<Vec<Hex128>>,
}

crate::http::body::locate_object!(ReplayRequest);

/// What a replay did.
#[derive(Debug, Clone, Object, serde::Serialize, serde::Deserialize)]
pub struct ReplayResult {
    /// Records put back on their queue (they are flushed with the next batch).
    pub replayed: u64,
    /// Ids asked for that are not (or no longer) dead letters.
    pub not_found: Vec<String>,
}

/// What a discard did.
#[derive(Debug, Clone, Object, serde::Serialize, serde::Deserialize)]
pub struct DiscardResult {
    /// Entries removed for good.
    pub discarded: u64,
    /// Ids asked for that are not (or no longer) dead letters.
    pub not_found: Vec<String>,
}

/// What a forced flush did.
#[derive(Debug, Clone, Object, serde::Serialize, serde::Deserialize)]
pub struct FlushResult {
    /// Records written to MariaDB.
    pub written: u64,
    /// Records dropped because their application or chat was deleted.
    pub dropped: u64,
    /// Messages put back to wait for their chat.
    pub deferred: u64,
    /// Records moved to a dead-letter list.
    pub dead_lettered: u64,
    /// Batches flushed.
    pub batches: u64,
    /// Search-index changes applied (to Meilisearch, or to the term index
    /// in MariaDB without `MEILI_URL`).
    pub search_ops_applied: u64,
    /// Whether the chats and messages queues were empty at the end. False
    /// when only messages waiting for their chat are left, or when the flush
    /// ran out of its `budget_ms` (it stopped after the batch in hand).
    pub drained: bool,
    /// How long it took, in milliseconds.
    pub elapsed_ms: u64,
    /// How long it may flush before it reports, in milliseconds.
    pub budget_ms: u64,
}

/// Turns a list of requested ids into a set. Errors: 422 when there are too many.
fn id_set(ids: Option<Vec<Hex128>>) -> Result<Option<HashSet<String>>, ApiError> {
    match ids {
        Some(ids) if ids.len() > MAX_IDS => Err(ApiError::unprocessable(format!(
            "at most {MAX_IDS} ids per request"
        ))),
        other => Ok(other.map(|v| v.into_iter().map(|id| id.0).collect())),
    }
}

/// The requested ids that no queue had.
fn missing(asked: &Option<HashSet<String>>, found: &HashSet<String>) -> Vec<String> {
    let mut v: Vec<String> = asked
        .iter()
        .flatten()
        .filter(|id| !found.contains(*id))
        .cloned()
        .collect();
    v.sort();
    v
}

/// Seconds from now until `at_ms` (negative if past).
fn secs_until(at_ms: i64) -> f64 {
    (at_ms - crate::writebehind::now_ms()) as f64 / 1000.0
}

/// The buffer's queues and dead letters.
pub struct QueuesAdminApi;

#[OpenApi(prefix_path = "/api/v1/admin", tag = "ApiTags::Admin")]
impl QueuesAdminApi {
    /// Inspect the queues
    ///
    /// For each queue: records pending, the age of the oldest, the batches
    /// being processed (owner instance and lease expiry), and the dead-letter
    /// count. Read straight from Redis, so it is exact at the moment of the call.
    #[oai(path = "/queues", method = "get")]
    async fn queues(
        &self,
        state: Data<&AppState>,
        _key: AdminKey,
    ) -> Result<Json<QueuesView>, Errors<Operator>> {
        let buffer = state.write_behind.buffer();
        let stats = buffer.inspect().await?;
        let now = crate::writebehind::now_ms();
        let queues = stats
            .into_iter()
            .map(|s| QueueView {
                queue: s.queue.into(),
                pending: s.pending,
                pending_bytes: s.pending_bytes,
                oldest_pending_age_secs: s.oldest_age(now).map(|d| d.as_secs_f64()),
                processing: s
                    .batches
                    .into_iter()
                    .map(|b| BatchView {
                        id: b.id,
                        owner: b.owner,
                        claimed_at: b.claimed_at_ms.map(ms_to_utc),
                        lease_expires_at: ms_to_utc(b.lease_expires_at_ms),
                        lease_expires_in_secs: secs_until(b.lease_expires_at_ms),
                        records: b.records,
                    })
                    .collect(),
                dead_letters: s.dead_letters,
            })
            .collect();
        Ok(Json(QueuesView {
            instance: buffer.owner().to_owned(),
            queues,
        }))
    }

    /// List dead letters
    ///
    /// The records of one queue that could not be written, oldest first,
    /// with the reason and the time of their last failure.
    #[oai(path = "/dead-letters", method = "get")]
    async fn dead_letters(
        &self,
        state: Data<&AppState>,
        _key: AdminKey,
        /// The queue.
        queue: Query<QueueName>,
        /// Page number, from 1.
        #[oai(validator(minimum(value = "1"), maximum(value = "100000")))]
        page: Query<Option<i64>>,
        /// Items per page, 1 to 100 (default 20).
        #[oai(validator(minimum(value = "1"), maximum(value = "100")))]
        per_page: Query<Option<i64>>,
    ) -> Result<Json<DeadLetterList>, Errors<OperatorQuery>> {
        let page = Page::parse(page.0, per_page.0)?;
        let kind: Kind = queue.0.into();
        let buffer = state.write_behind.buffer();
        let total = buffer.dead_letter_len(kind).await?;
        let entries = buffer
            .dead_letters(kind, page.offset() as u64, page.limit_plus_one() as u64)
            .await?;
        let (entries, meta) = Meta::paginate(page, entries);
        Ok(Json(DeadLetterList {
            dead_letters: entries
                .into_iter()
                .map(|d| DeadLetterView {
                    id: d.id,
                    queue: d.queue.into(),
                    record: d.record,
                    reason: d.reason,
                    failed_at: d.failed_at,
                })
                .collect(),
            total,
            meta,
        }))
    }

    /// Replay dead letters
    ///
    /// Puts dead-lettered records back at the tail of their queue, all of
    /// them or the ids given, and wakes the flusher: use it once the cause is
    /// fixed. Each record is replayed at most once, even when two replays run
    /// at the same time. A record that fails again is dead-lettered again with
    /// the new reason. Replayed records do not count against `MAX_PENDING`.
    #[oai(path = "/dead-letters/replay", method = "post")]
    async fn replay(
        &self,
        state: Data<&AppState>,
        _key: AdminKey,
        request: JsonBody<ReplayRequest>,
    ) -> Result<Json<ReplayResult>, Errors<OperatorBody>> {
        let ids = id_set(request.0.ids)?;
        let queues: Vec<Kind> = match request.0.queue {
            Some(q) => vec![q.into()],
            None => Kind::EVERY_QUEUE.to_vec(),
        };
        let buffer = state.write_behind.buffer();
        let mut replayed = 0;
        let mut found = HashSet::new();
        for kind in queues {
            let outcome = buffer.replay_dead_letters(kind, ids.as_ref()).await?;
            if outcome.count > 0 {
                crate::telemetry::metrics::dead_letters_replayed(kind.as_str(), outcome.count);
                tracing::warn!(
                    queue = kind.as_str(),
                    replayed = outcome.count,
                    "dead letters replayed by an operator"
                );
            }
            replayed += outcome.count;
            found.extend(outcome.found);
        }
        state.flusher.handle().wake();
        Ok(Json(ReplayResult {
            replayed,
            not_found: missing(&ids, &found),
        }))
    }

    /// Discard dead letters
    ///
    /// Removes dead-lettered records of one queue for good: all of them, or
    /// the ids given. Logged with the count.
    #[oai(path = "/dead-letters", method = "delete")]
    async fn discard(
        &self,
        state: Data<&AppState>,
        _key: AdminKey,
        /// The queue.
        queue: Query<QueueName>,
        /// Only these entries (repeat the parameter for several); omitted:
        /// every entry of the queue.
        id: Query<Option<Vec<Hex128>>>,
    ) -> Result<Json<DiscardResult>, Errors<OperatorQuery>> {
        let ids = id_set(id.0)?;
        let kind: Kind = queue.0.into();
        let outcome = state
            .write_behind
            .buffer()
            .discard_dead_letters(kind, ids.as_ref())
            .await?;
        crate::telemetry::metrics::dead_letters_discarded(kind.as_str(), outcome.count);
        tracing::warn!(
            queue = kind.as_str(),
            discarded = outcome.count,
            "dead letters discarded by an operator"
        );
        Ok(Json(DiscardResult {
            discarded: outcome.count,
            not_found: missing(&ids, &outcome.found),
        }))
    }

    /// Flush now
    ///
    /// Writes the chats and messages queues to MariaDB now (and applies the
    /// queued search-index changes), waits,
    /// and reports what was written. Stops when its time budget (`budget_ms`
    /// in the answer) has passed, with what it did.
    #[oai(path = "/flush", method = "post")]
    async fn flush(
        &self,
        state: Data<&AppState>,
        _key: AdminKey,
    ) -> Result<Json<FlushResult>, Errors<Operator>> {
        let started = std::time::Instant::now();
        let flusher = state.flusher.clone();
        let indexer = state.indexer.clone();
        // Its own task: a client that disconnects must not cut a batch in half.
        let task = tokio::spawn(async move {
            let flushed = flusher
                .flush_all(Duration::from_secs(FLUSH_BUDGET_SECS))
                .await;
            let indexed = indexer.index_once().await;
            (flushed, indexed)
        });
        let (flushed, indexed) = task
            .await
            .map_err(|e| ApiError::internal(anyhow::Error::new(e).context("flush task")))?;
        let (report, drained) = flushed.map_err(|e| match e {
            FlushError::Buffer(e) => ApiError::from(e),
            other => {
                tracing::warn!(error = %other, "forced flush failed");
                ApiError::unavailable(format!("flush failed: {other}; retry later"), 5)
            }
        })?;
        let search_ops_applied = match indexed {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "forced index pass failed");
                return Err(ApiError::unavailable(
                    format!("the database flush is done, but the search index is not: {e}"),
                    5,
                )
                .into());
            }
        };
        tracing::info!(?report, drained, "forced flush by an operator");
        Ok(Json(FlushResult {
            written: report.written,
            dropped: report.dropped,
            deferred: report.deferred,
            dead_lettered: report.dead_lettered,
            batches: report.batches,
            search_ops_applied,
            drained,
            elapsed_ms: started.elapsed().as_millis() as u64,
            budget_ms: FLUSH_BUDGET_SECS * 1000,
        }))
    }
}
