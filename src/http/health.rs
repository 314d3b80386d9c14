//! Liveness and readiness probes (not rate-limited).

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
    /// `ok` or `unavailable`.
    pub status: String,
    /// Whether MariaDB answered `SELECT 1` within 2 s.
    pub database: bool,
    /// Whether Redis answered `PING` within 2 s.
    pub redis: bool,
}

/// Readiness answer.
#[derive(ApiResponse)]
pub enum ReadinessResponse {
    /// Ready: MariaDB and Redis both answer.
    #[oai(status = 200)]
    Ready(Json<Readiness>),
    /// Not ready: a dependency does not answer.
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
    /// 200 when MariaDB and Redis both answer, else 503.
    #[oai(path = "/health/ready", method = "get")]
    async fn ready(&self, state: Data<&AppState>) -> ReadinessResponse {
        let db = async { sqlx::query("SELECT 1").execute(&state.pool).await.is_ok() };
        let redis = async {
            state
                .write_behind
                .buffer()
                .redis()
                .call(PROBE_TIMEOUT, |mut c| async move {
                    redis::cmd("PING").query_async::<String>(&mut c).await
                })
                .await
                .is_ok()
        };
        let (database, redis) = tokio::join!(
            async {
                tokio::time::timeout(PROBE_TIMEOUT, db)
                    .await
                    .unwrap_or(false)
            },
            async {
                tokio::time::timeout(PROBE_TIMEOUT, redis)
                    .await
                    .unwrap_or(false)
            },
        );
        let ok = database && redis;
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
