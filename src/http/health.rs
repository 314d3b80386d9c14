//! Liveness and readiness probes (not rate-limited).
//!
//! **What readiness means here.** An instance is ready while Redis answers:
//! creates are write-behind, so they are accepted into Redis and answered
//! while MariaDB is down (the buffer exists to ride out exactly that), and
//! reads of buffered records are served from Redis. A MariaDB outage is
//! common to every instance: failing readiness for it would only make a
//! load balancer drop them all, and turn a degraded service (reads of
//! stored records and creates whose numbering needs a new reservation
//! answer 503, see docs/numbering.md) into no service. MariaDB's state is
//! reported in the answer (`database`, from the last 5-second probe, so the
//! probe never waits on a frozen database), in `chat_dependency_up`, and
//! alerted on by its own rule (`ChatMariaDBUnreachable`). A full buffer is
//! not a reason either: every instance shares it, and creates already
//! answer 503 with `Retry-After`.

use std::time::Duration;

use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::{ApiTags, AppState};

/// Probes.
pub struct HealthApi;

/// Status of the service and of each dependency.
#[derive(Debug, Object, serde::Serialize, serde::Deserialize)]
pub struct Readiness {
    /// `ok` (Redis answers) or `unavailable`.
    pub status: String,
    /// Whether MariaDB answered its last probe (`SELECT 1`, every 5 s, within
    /// 2 s). Reported only: readiness does not depend on it.
    pub database: bool,
    /// Whether Redis answered `PING` within 2 s: what readiness depends on.
    pub redis: bool,
}

/// Readiness answer.
#[derive(ApiResponse)]
pub enum ReadinessResponse {
    /// Ready: Redis answers (MariaDB may be down: creates are buffered).
    #[oai(status = 200)]
    Ready(Json<Readiness>),
    /// Not ready: Redis does not answer.
    #[oai(status = 503)]
    NotReady(Json<Readiness>),
}

/// Liveness answer.
#[derive(Debug, Object, serde::Serialize, serde::Deserialize)]
pub struct Liveness {
    /// Always `ok`.
    pub status: String,
}

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[OpenApi(tag = "ApiTags::Health")]
impl HealthApi {
    /// Liveness
    ///
    /// 200 while the process serves HTTP.
    #[oai(path = "/health/live", method = "get")]
    async fn live(&self) -> Json<Liveness> {
        Json(Liveness {
            status: "ok".into(),
        })
    }

    /// Readiness
    ///
    /// 200 while Redis answers `PING` (within 2 s), else 503. A MariaDB
    /// outage does not make the instance unready: creates are buffered in
    /// Redis meanwhile; `database` reports MariaDB's last probe.
    #[oai(path = "/health/ready", method = "get")]
    async fn ready(&self, state: Data<&AppState>) -> ReadinessResponse {
        let redis = state
            .write_behind
            .buffer()
            .redis()
            .call(PROBE_TIMEOUT, |mut c| async move {
                redis::cmd("PING").query_async::<String>(&mut c).await
            });
        let redis = tokio::time::timeout(PROBE_TIMEOUT, redis)
            .await
            .is_ok_and(|r| r.is_ok());
        let database = state.database_up.load(std::sync::atomic::Ordering::Relaxed);
        let ok = redis;
        let body = Readiness {
            status: if ok { "ok" } else { "unavailable" }.into(),
            database,
            redis,
        };
        if ok {
            ReadinessResponse::Ready(Json(body))
        } else {
            ReadinessResponse::NotReady(Json(body))
        }
    }
}
