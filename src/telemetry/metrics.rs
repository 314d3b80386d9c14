//! Prometheus metrics, through the `metrics` facade and
//! `metrics-exporter-prometheus` (served as text at `/metrics`).
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `chat_pending_records` | gauge | `queue` | records waiting in Redis |
//! | `chat_pending_bytes` | gauge | `queue` | bytes of the records pending or claimed (what `MAX_PENDING_BYTES` limits) |
//! | `chat_pending_oldest_age_seconds` | gauge | `queue` | age of the oldest pending record |
//! | `chat_max_pending_records`, `chat_max_pending_bytes` | gauge | | `MAX_PENDING` and `MAX_PENDING_BYTES` in force (bytes 0: no limit) |
//! | `chat_pending_high_water_records` | gauge | | `PENDING_HIGH_WATER` in force: past it, load shedding refuses a share of creates (off when at or above `MAX_PENDING`) |
//! | `chat_flush_max_wait_seconds` | gauge | | the longest a record should wait in Redis while MariaDB is up: 1.25 × `FLUSH_MAX_AGE_MS`, or `FLUSH_INTERVAL_SECS` when that is 0 |
//! | `chat_read_replica_max_lag_seconds` | gauge | | `READ_REPLICA_MAX_LAG_SECS` in force (exported only with read replicas) |
//! | `chat_dead_letters` | gauge | `queue` | records in the dead-letter list now (sampled every 5 s) |
//! | `chat_dead_letters_replayed_total`, `chat_dead_letters_discarded_total` | counter | `queue` | dead letters an operator replayed or discarded |
//! | `chat_dependency_up` | gauge | `dependency` | 1 if `redis`, `mariadb` or `search` (the search backend: Meilisearch's `/health`, or MariaDB for the term index) answered its last probe (every 5 s), else 0 |
//! | `chat_flushed_records_total` | counter | `queue` | records written to MariaDB |
//! | `chat_flush_batch_size` | histogram | `queue` | records per flushed batch |
//! | `chat_flush_duration_seconds` | histogram | `queue` | time to write and acknowledge a batch |
//! | `chat_flush_failures_total` | counter | | flush passes that failed (MariaDB/Redis down) |
//! | `chat_dead_lettered_records_total` | counter | `queue` | records moved to the dead-letter list |
//! | `chat_dropped_records_total` | counter | `queue` | records dropped: their parent was deleted |
//! | `chat_collisions_total` | counter | `queue` | records whose number already held another record (dead-lettered) |
//! | `chat_recovered_batches_total` | counter | | batches recovered from expired leases |
//! | `chat_number_reservations_total` | counter | `scope` | blocks of numbers reserved in MariaDB (`chats` or `messages` counters) |
//! | `chat_numbers_skipped_total` | counter | `scope` | numbers skipped when a counter restarted at its reservation after Redis may have lost data |
//! | `chat_search_lag_seconds` | histogram | | per indexed message: from its creation or last edit to the moment it is searchable |
//! | `chat_search_index_failures_total` | counter | | indexer passes that failed (the search backend unreachable); their ops stay queued |
//! | `chat_live_streams_open` | gauge | | live event streams (`…/events`) open on this instance |
//! | `chat_live_overflows_total` | counter | | live event subscribers dropped because their buffer (`LIVE_SUBSCRIBER_BUFFER`) filled: slow consumers; they resume from their last id |
//! | `chat_backpressure_rejections_total` | counter | | 503s because the buffer was full |
//! | `chat_load_shed_total` | counter | | 503s before Redis because a pending list was past `PENDING_HIGH_WATER` (load shedding) |
//! | `chat_rate_limited_total` | counter | | 429s from the rate limit |
//! | `chat_read_replica_in_rotation` | gauge | `replica` | 1 while reads may go to the replica (`host:port`), else 0 |
//! | `chat_read_replica_lag_seconds` | gauge | `replica` | at the last check (every second), the larger of its `Seconds_Behind_Master` and its GTID lag: how long ago a check first saw the oldest primary GTID position (the service's domain) it has not applied, in whole seconds rounded up, at most about an hour; -1 unknown |
//! | `chat_read_replica_reads_total` | counter | `replica` | reads sent to the replica |
//! | `chat_read_replica_waits_total` | counter | `replica` | causal waits (`MASTER_GTID_WAIT`) for a scope's last write |
//! | `chat_read_replica_wait_timeouts_total` | counter | `replica` | waits that ran past `READ_REPLICA_WAIT_MS` |
//! | `chat_read_primary_fallbacks_total` | counter | `reason` | replica reads sent to the primary instead: `no_replica` in rotation, `wait_timed_out`, `wait_failed`, `read_failed` (the replica went away mid-read) |
//! | `http_request_duration_seconds` | histogram | `method`, `route`, `status` | request latency |
//! | `chat_http_connections_open` | gauge | | client connections open (at most `MAX_CONNECTIONS`) |
//! | `chat_http_connections_timed_out_total` | counter | `reason` | connections closed by `HEADER_READ_TIMEOUT_SECS` (`header`) or `IDLE_TIMEOUT_SECS` (`idle`) |

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use poem::Response;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global recorder once per process and returns its handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let latency = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ];
            let sizes = [
                1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
            ];
            PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("http_request_duration_seconds".into()),
                    &latency,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("chat_flush_duration_seconds".into()),
                        &latency,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full("chat_flush_batch_size".into()), &sizes)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("chat_search_lag_seconds".into()),
                        &[
                            0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
                        ],
                    )
                })
                .expect("valid buckets")
                .install_recorder()
                .inspect(|_| zero_counters())
                .expect("no other metrics recorder is installed")
        })
        .clone()
}

/// Exports every counter at 0 from the start, for each label value it can
/// take, so that a counter exists before its first event: an alert or panel
/// on `increase(chat_collisions_total[…])` then sees 0, not "no data", and
/// the first event counts as an increase (Prometheus's advice on
/// instrumentation: "avoid missing metrics").
fn zero_counters() {
    for name in [
        "chat_flush_failures_total",
        "chat_recovered_batches_total",
        "chat_backpressure_rejections_total",
        "chat_load_shed_total",
        "chat_rate_limited_total",
        "chat_search_index_failures_total",
        "chat_live_overflows_total",
    ] {
        counter!(name).increment(0);
    }
    for queue in ["chats", "messages"] {
        for name in [
            "chat_flushed_records_total",
            "chat_dead_lettered_records_total",
            "chat_dropped_records_total",
            "chat_collisions_total",
        ] {
            counter!(name, "queue" => queue).increment(0);
        }
        for name in [
            "chat_dead_letters_replayed_total",
            "chat_dead_letters_discarded_total",
        ] {
            counter!(name, "queue" => queue).increment(0);
        }
        for name in [
            "chat_number_reservations_total",
            "chat_numbers_skipped_total",
        ] {
            counter!(name, "scope" => queue).increment(0);
        }
    }
    for reason in ["no_replica", "wait_timed_out", "wait_failed", "read_failed"] {
        counter!("chat_read_primary_fallbacks_total", "reason" => reason).increment(0);
    }
    for reason in ["header", "idle"] {
        counter!("chat_http_connections_timed_out_total", "reason" => reason).increment(0);
    }
    gauge!("chat_http_connections_open").increment(0.0);
    gauge!("chat_live_streams_open").increment(0.0);
}

/// Renders every metric in the Prometheus text format.
pub fn render() -> String {
    install().render()
}

/// A block of numbers reserved in MariaDB for a `scope` (`chats` or
/// `messages`) counter.
pub fn number_reservation(scope: &'static str) {
    counter!("chat_number_reservations_total", "scope" => scope).increment(1);
}

/// `n` numbers of a `scope` counter skipped at a restart after Redis may
/// have lost data.
pub fn numbers_skipped(scope: &'static str, n: u64) {
    counter!("chat_numbers_skipped_total", "scope" => scope).increment(n);
}

/// Records that one message became searchable `lag` after its creation or
/// last edit (`chat_search_lag_seconds`).
pub fn search_indexed(lag: Duration) {
    histogram!("chat_search_lag_seconds").record(lag.as_secs_f64());
}

/// A flushed batch: its size in records, written count, and duration.
pub fn batch_flushed(
    queue: &'static str,
    records: usize,
    written: u64,
    dropped: u64,
    dead: u64,
    took: Duration,
) {
    histogram!("chat_flush_batch_size", "queue" => queue).record(records as f64);
    histogram!("chat_flush_duration_seconds", "queue" => queue).record(took.as_secs_f64());
    counter!("chat_flushed_records_total", "queue" => queue).increment(written);
    counter!("chat_dropped_records_total", "queue" => queue).increment(dropped);
    counter!("chat_dead_lettered_records_total", "queue" => queue).increment(dead);
}

/// A flushed record collided with another stored under its number (see
/// [`crate::store::bulk`]); it was dead-lettered.
pub fn collision(queue: &'static str) {
    counter!("chat_collisions_total", "queue" => queue).increment(1);
}

/// A flush pass failed.
pub fn flush_failed() {
    counter!("chat_flush_failures_total").increment(1);
}

/// Dead letters an operator replayed (`n` records) from `queue`.
pub fn dead_letters_replayed(queue: &'static str, n: u64) {
    counter!("chat_dead_letters_replayed_total", "queue" => queue).increment(n);
}

/// Dead letters an operator discarded (`n` entries) from `queue`.
pub fn dead_letters_discarded(queue: &'static str, n: u64) {
    counter!("chat_dead_letters_discarded_total", "queue" => queue).increment(n);
}

/// Batches recovered from expired leases.
pub fn batches_recovered(n: u64) {
    counter!("chat_recovered_batches_total").increment(n);
}

/// Depth, oldest age (the head record's) and dead-letter count of a queue (sampled).
pub fn queue_sampled(
    queue: &'static str,
    pending: u64,
    pending_bytes: u64,
    oldest_age: Duration,
    dead_letters: u64,
) {
    gauge!("chat_pending_records", "queue" => queue).set(pending as f64);
    gauge!("chat_pending_bytes", "queue" => queue).set(pending_bytes as f64);
    gauge!("chat_pending_oldest_age_seconds", "queue" => queue).set(oldest_age.as_secs_f64());
    gauge!("chat_dead_letters", "queue" => queue).set(dead_letters as f64);
}

/// Whether `dependency` (`redis`, `mariadb` or `search`) answered its last
/// probe (sampled every 5 s): `chat_dependency_up` 1 or 0.
pub fn dependency_sampled(dependency: &'static str, up: bool) {
    gauge!("chat_dependency_up", "dependency" => dependency).set(if up { 1.0 } else { 0.0 });
}

/// The buffer's limits in force, so that alerts can compare the depth with
/// them: `MAX_PENDING` (records, per queue, over all shards) and
/// `MAX_PENDING_BYTES`.
/// `PENDING_HIGH_WATER` too (records, where load shedding starts; at or
/// above `MAX_PENDING` it is off), and the longest healthy wait of a record
/// in Redis, `max_wait` (1.25 × `FLUSH_MAX_AGE_MS`, or
/// `FLUSH_INTERVAL_SECS` when that is 0), from which the flush alert's
/// threshold is derived.
pub fn limits_set(max_pending: u64, max_pending_bytes: u64, high_water: u64, max_wait: Duration) {
    gauge!("chat_max_pending_records").set(max_pending as f64);
    gauge!("chat_max_pending_bytes").set(max_pending_bytes as f64);
    gauge!("chat_pending_high_water_records").set(high_water as f64);
    gauge!("chat_flush_max_wait_seconds").set(max_wait.as_secs_f64());
}

/// `READ_REPLICA_MAX_LAG_SECS` in force (`chat_read_replica_max_lag_seconds`),
/// for the replica-lag alert; exported only when read replicas are set.
pub fn replica_max_lag_set(secs: u64) {
    gauge!("chat_read_replica_max_lag_seconds").set(secs as f64);
}

/// An indexer pass failed (the search backend unreachable); its ops stay
/// queued (`chat_search_index_failures_total`).
pub fn search_index_failed() {
    counter!("chat_search_index_failures_total").increment(1);
}

/// A live-event subscriber dropped because its buffer filled (a slow
/// consumer; `chat_live_overflows_total`).
pub fn live_overflow() {
    counter!("chat_live_overflows_total").increment(1);
}

/// A live event stream opened (+1) or ended (-1)
/// (`chat_live_streams_open`).
pub fn live_streams(delta: f64) {
    gauge!("chat_live_streams_open").increment(delta);
}

/// A create refused with 503 because the buffer was full.
pub fn backpressure_rejected() {
    counter!("chat_backpressure_rejections_total").increment(1);
}

/// A create refused with 503 before Redis, because its pending list was past
/// `PENDING_HIGH_WATER` (load shedding, see [`crate::writebehind::shedding`]).
pub fn load_shed() {
    counter!("chat_load_shed_total").increment(1);
}

/// A client connection accepted.
pub fn connection_opened() {
    gauge!("chat_http_connections_open").increment(1.0);
}

/// A client connection closed.
pub fn connection_closed() {
    gauge!("chat_http_connections_open").decrement(1.0);
}

/// A client connection closed by a timeout: `reason` is `header` or `idle`.
pub fn connection_timed_out(reason: &'static str) {
    counter!("chat_http_connections_timed_out_total", "reason" => reason).increment(1);
}

/// A read sent to read replica `replica` (`host:port`).
pub fn replica_read(replica: &str) {
    counter!("chat_read_replica_reads_total", "replica" => replica.to_owned()).increment(1);
}

/// A causal wait begun on read replica `replica`.
pub fn replica_wait(replica: &str) {
    counter!("chat_read_replica_waits_total", "replica" => replica.to_owned()).increment(1);
}

/// A causal wait on read replica `replica` that ran past `READ_REPLICA_WAIT_MS`.
pub fn replica_wait_timed_out(replica: &str) {
    counter!("chat_read_replica_wait_timeouts_total", "replica" => replica.to_owned()).increment(1);
}

/// A replica read sent to the primary instead, for `reason` (see
/// [`crate::store::replicas::Fallback`]).
pub fn primary_fallback(reason: &'static str) {
    counter!("chat_read_primary_fallbacks_total", "reason" => reason).increment(1);
}

/// What the background check saw of read replica `replica`: its lag in
/// seconds (`None`: unknown) and whether it is in rotation.
pub fn replica_state(replica: &str, lag_secs: Option<i64>, in_rotation: bool) {
    gauge!("chat_read_replica_lag_seconds", "replica" => replica.to_owned())
        .set(lag_secs.map_or(-1.0, |l| l as f64));
    gauge!("chat_read_replica_in_rotation", "replica" => replica.to_owned()).set(if in_rotation {
        1.0
    } else {
        0.0
    });
}

/// A request refused with 429.
pub fn rate_limited() {
    counter!("chat_rate_limited_total").increment(1);
}

/// The `method` label of a request: one of the nine methods of RFC 9110 §9
/// plus `PATCH` (RFC 5789), or `other`, so that a client inventing methods
/// cannot create series without bound.
pub fn method_label(method: &poem::http::Method) -> &'static str {
    use poem::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::CONNECT => "CONNECT",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// The `status` label of `status`: a static string for the statuses this
/// service answers with (no allocation per request), else its digits.
fn status_label(status: poem::http::StatusCode) -> metrics::SharedString {
    const KNOWN: [&str; 17] = [
        "200", "201", "204", "304", "400", "401", "403", "404", "405", "409", "413", "415", "422",
        "429", "500", "502", "503",
    ];
    let code = status.as_str();
    match KNOWN.iter().find(|k| **k == code) {
        Some(k) => (*k).into(),
        None => code.to_string().into(),
    }
}

/// The `route` label shared by every request that matched no route.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Records one answer's `http_request_duration_seconds` (since `started`) by method (see
/// [`method_label`]), route pattern (for example
/// `/api/v1/applications/:token`, or [`UNMATCHED_ROUTE`] for every path no
/// route matched) and status. The label sets are bounded by the routes, the
/// methods and the statuses the service answers with.
pub fn track_request(method: &poem::http::Method, started: std::time::Instant, resp: &Response) {
    // The pattern's own `Arc<str>`: no copy per request. (A response that
    // never reached the router, a 429 of the rate limit say, is given the
    // pattern of its path by the HTTP layer's edge first.)
    let route: metrics::SharedString = match resp.data::<poem::PathPattern>() {
        Some(p) => p.0.clone().into(),
        None => UNMATCHED_ROUTE.into(),
    };
    histogram!(
        "http_request_duration_seconds",
        "method" => method_label(method),
        "route" => route,
        "status" => status_label(resp.status())
    )
    .record(started.elapsed().as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_label_is_its_digits_whether_known_or_not() {
        use poem::http::StatusCode;
        assert_eq!(status_label(StatusCode::CREATED).as_ref(), "201");
        assert_eq!(
            status_label(StatusCode::SERVICE_UNAVAILABLE).as_ref(),
            "503"
        );
        assert_eq!(status_label(StatusCode::IM_A_TEAPOT).as_ref(), "418");
    }
}
