//! The one error type of the API, [`ApiError`], with one HTTP status per
//! variant, and [`json_errors`], which turns every other failure poem can
//! produce (bad JSON, unknown route, oversized body…) into the same
//! `{"error": "..."}` shape.
//!
//! Causes of 500s are logged with their whole chain and never sent to the
//! client.

use poem::Response;
use poem::http::StatusCode;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object};

/// Body of every error response.
#[derive(Debug, Clone, Object, serde::Serialize, serde::Deserialize)]
pub struct ErrorBody {
    /// What went wrong, in words a person can act on. On a 422 about a body
    /// field it starts with the field's pointer: ``invalid request body:
    /// `/body`: expected a string, found an integer``.
    pub error: String,
    /// On a 422 about a request body: the JSON Pointer (RFC 6901) of the
    /// field at fault, for example `/body` or `/message/body` (empty for
    /// the body as a whole). Absent on every other error.
    #[oai(skip_serializing_if_is_none)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pointer: Option<String>,
}

impl ErrorBody {
    /// An error with no pointer.
    pub fn new(msg: impl Into<String>) -> Self {
        ErrorBody {
            error: msg.into(),
            pointer: None,
        }
    }

    fn json(msg: impl Into<String>) -> Json<Self> {
        Json(Self::new(msg))
    }
}

/// Every error an operation can answer with.
#[derive(Debug, ApiResponse)]
pub enum ApiError {
    /// 400: the request is malformed (for example invalid JSON).
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// 401: the operator key is missing or wrong (the operator API, and
    /// the key-protected `GET /api/v1/applications`).
    #[oai(status = 401)]
    Unauthorized(
        Json<ErrorBody>,
        /// `Bearer realm="admin"`.
        #[oai(header = "WWW-Authenticate")]
        String,
    ),
    /// 404: no application, chat or message with that token or number; on
    /// the operator surface, every path while the operator API is off
    /// (`ADMIN_API_KEY` unset).
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// 409: an application create with the same `Idempotency-Key` is still
    /// in progress; retry once it has answered.
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
    /// 413: the request body is larger than `MAX_REQUEST_BYTES`.
    #[oai(status = 413)]
    PayloadTooLarge(Json<ErrorBody>),
    /// 415: the body is not sent as `Content-Type: application/json`.
    #[oai(status = 415)]
    UnsupportedMediaType(Json<ErrorBody>),
    /// 422: well-formed but invalid input: a field of the body, a query
    /// parameter (`page`, `per_page`, `q`…) or a header (`Idempotency-Key`);
    /// the error says which.
    #[oai(status = 422)]
    Unprocessable(Json<ErrorBody>),
    /// 429: the client's IP is over its rate limit (`RATE_LIMIT_PER_MINUTE`);
    /// retry after `Retry-After` seconds.
    #[oai(status = 429)]
    TooManyRequests(
        Json<ErrorBody>,
        /// Whole seconds to wait, rounded up.
        #[oai(header = "Retry-After")]
        u64,
        /// The client's bucket: requests it may send at once
        /// (`RATE_LIMIT_BURST`), refilled at `RATE_LIMIT_PER_MINUTE`.
        #[oai(header = "X-RateLimit-Limit")]
        u32,
        /// Requests left in the bucket (0 here).
        #[oai(header = "X-RateLimit-Remaining")]
        u32,
        /// Whole seconds until the bucket is full again, rounded up.
        #[oai(header = "X-RateLimit-Reset")]
        u64,
    ),
    /// 503: the write buffer is full, or Redis or MariaDB cannot be reached;
    /// retry after the given number of seconds.
    #[oai(status = 503)]
    Unavailable(
        Json<ErrorBody>,
        /// Whole seconds to wait before retrying.
        #[oai(header = "Retry-After")]
        u64,
    ),
    /// 500: a fault of the service; the cause is logged, not sent.
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
}

impl ApiError {
    /// 401 with `WWW-Authenticate: Bearer realm="admin"`.
    pub fn unauthorized() -> Self {
        Self::Unauthorized(
            Json(ErrorBody::new(UNAUTHORIZED_MESSAGE)),
            WWW_AUTHENTICATE.into(),
        )
    }

    /// 404 with the given message.
    pub fn not_found(msg: impl Into<String>) -> Self {
        Self::NotFound(ErrorBody::json(msg))
    }

    /// 409 with the given message.
    pub fn conflict(msg: impl Into<String>) -> Self {
        Self::Conflict(ErrorBody::json(msg))
    }

    /// 422 with the given message.
    pub fn unprocessable(msg: impl Into<String>) -> Self {
        Self::Unprocessable(ErrorBody::json(msg))
    }

    /// 429 for a cap other than the rate limit (open event streams): the
    /// message says which; `Retry-After: retry_after_secs`, the cap as
    /// `X-RateLimit-Limit`, 0 remaining, reset after `retry_after_secs`.
    pub fn too_many(msg: impl Into<String>, retry_after_secs: u64, limit: u32) -> Self {
        Self::TooManyRequests(
            ErrorBody::json(msg),
            retry_after_secs,
            limit,
            0,
            retry_after_secs,
        )
    }

    /// 503 with `Retry-After: retry_after_secs`.
    pub fn unavailable(msg: impl Into<String>, retry_after_secs: u64) -> Self {
        Self::Unavailable(ErrorBody::json(msg), retry_after_secs)
    }

    /// 500; logs `cause` with its chain and sends a generic message.
    pub fn internal(cause: anyhow::Error) -> Self {
        tracing::error!(error = ?cause, "internal error");
        Self::Internal(ErrorBody::json(
            "internal error; it has been logged, please report it if it persists",
        ))
    }
}

impl From<sqlx::Error> for ApiError {
    /// A database that cannot be reached is a 503 (retry later); any other
    /// database error is a fault of ours (500, logged).
    fn from(err: sqlx::Error) -> Self {
        if crate::store::is_unavailable(&err) {
            tracing::warn!(error = %err, "MariaDB unavailable");
            return Self::unavailable("the database is unavailable; retry later", 5);
        }
        Self::internal(anyhow::Error::new(err).context("database query failed"))
    }
}

impl From<crate::writebehind::BufferError> for ApiError {
    fn from(err: crate::writebehind::BufferError) -> Self {
        use crate::writebehind::BufferError;
        match err {
            BufferError::Full { retry_after_secs } => {
                crate::telemetry::metrics::backpressure_rejected();
                Self::unavailable("the write buffer is full; retry later", retry_after_secs)
            }
            BufferError::ApplicationFull { retry_after_secs } => {
                crate::telemetry::metrics::backpressure_rejected();
                Self::unavailable(
                    "this application has MAX_PENDING_PER_APPLICATION records waiting to be stored; retry later",
                    retry_after_secs,
                )
            }
            BufferError::Shed { retry_after_secs } => {
                crate::telemetry::metrics::load_shed();
                Self::unavailable(
                    "the write buffer is filling faster than it drains (past PENDING_HIGH_WATER); slow down and retry later",
                    retry_after_secs,
                )
            }
            BufferError::Unavailable(cause) => {
                tracing::warn!(error = %cause, "Redis unavailable");
                Self::unavailable("the write buffer (Redis) is unavailable; retry later", 2)
            }
            BufferError::NotYetStored => Self::unavailable(
                "the record is still being written to the database; retry shortly",
                2,
            ),
            BufferError::NotReplicated => {
                tracing::warn!("no Redis replica confirmed a write within REDIS_WAIT_MS");
                Self::unavailable(
                    "the write was not confirmed by a Redis replica in time (REDIS_DURABILITY=replica); retry, with the same Idempotency-Key to get the same number if it was stored",
                    1,
                )
            }
            BufferError::Lost(reason) => Self::not_found(format!(
                "this number was handed out, but its record could not be stored: it is in the dead-letter list ({reason}); an operator can replay it"
            )),
            BufferError::Skipped => Self::not_found(
                "this number was skipped when Redis lost data (a restart, failover or restore): nothing is stored under it; a create acknowledged under it was lost with Redis's unpersisted or unreplicated writes (see REDIS_DURABILITY)",
            ),
            BufferError::KeyReused => Self::unprocessable(
                "this Idempotency-Key was already used with another request (another body, chat or operation); use a new key for a new request",
            ),
            BufferError::Database(e) => e.into(),
        }
    }
}

/// Turns an error poem produced outside our handlers (or one of ours) into a
/// JSON response: unknown route 404, bad JSON 400, failed schema check or
/// out-of-range parameter 422, a path that does not parse 404, and so on.
///
/// `path` is the request's (some answers name the route's allowed methods).
pub fn json_errors(result: poem::Result<Response>, path: &str) -> Response {
    match result {
        Ok(resp) => resp,
        Err(err) => {
            // The router's pattern rides on the error; the rebuilt answer
            // keeps it, for the `route` label of the latency metric.
            let pattern = err.data::<poem::PathPattern>().cloned();
            let mut resp = error_response(err, path);
            if let Some(p) = pattern {
                resp.set_data(p);
            }
            resp
        }
    }
}

/// 405 with the `Allow` header RFC 9110 requires, listing the methods the
/// spec declares for the path.
fn method_not_allowed(path: &str) -> Response {
    let allow = crate::http::allowed_methods(path).join(", ");
    let body = serde_json::to_vec(&ErrorBody::new(format!(
        "method not allowed on this route; allowed: {allow}"
    )))
    .unwrap_or_default();
    Response::builder()
        .status(StatusCode::METHOD_NOT_ALLOWED)
        .header("allow", allow)
        .content_type("application/json; charset=utf-8")
        .body(body)
}

fn error_response(err: poem::Error, path: &str) -> Response {
    use crate::http::body::{InvalidBody, MalformedJson};
    use poem_openapi::error::{
        AuthorizationError, ContentTypeError, ParseParamError, ParsePathError,
        ParseRequestPayloadError,
    };
    if err.is_from_response() {
        return err.into_response();
    }
    if err.is::<AuthorizationError>() {
        return unauthorized_response();
    }
    let mut pointer = None;
    let (status, msg) = if let Some(e) = err.downcast_ref::<MalformedJson>() {
        (StatusCode::BAD_REQUEST, e.to_string())
    } else if let Some(e) = err.downcast_ref::<InvalidBody>() {
        pointer = Some(e.pointer.clone());
        (StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
    } else if let Some(e) = err.downcast_ref::<ParseRequestPayloadError>() {
        // Only poem-openapi's own payloads raise it; every body of this API
        // is a `JsonBody`, so this is a body of some other content type that
        // did not parse.
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("invalid request body: {}", e.reason),
        )
    } else if let Some(e) = err.downcast_ref::<ParseParamError>() {
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("invalid parameter `{}`: {}", e.name, e.reason),
        )
    } else if let Some(e) = err.downcast_ref::<ParsePathError>() {
        (
            StatusCode::NOT_FOUND,
            format!("no resource at this path: {}", e.reason),
        )
    } else if let Some(e) = err.downcast_ref::<ContentTypeError>() {
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("{e}; send `Content-Type: application/json`"),
        )
    } else {
        let status = err.status();
        if status == StatusCode::METHOD_NOT_ALLOWED {
            return method_not_allowed(path);
        }
        let msg = match status {
            StatusCode::NOT_FOUND => "no such route; see /docs for the API".to_string(),

            s if s.is_server_error() => {
                tracing::error!(error = %err, "unhandled error");
                "internal error".to_string()
            }
            _ => err.to_string(),
        };
        (status, msg)
    };
    let body = serde_json::to_vec(&ErrorBody {
        error: msg,
        pointer,
    })
    .unwrap_or_default();
    Response::builder()
        .status(status)
        .content_type("application/json; charset=utf-8")
        .body(body)
}

/// A value the domain refused ([`crate::domain::Invalid`]) is a 422.
impl From<crate::domain::Invalid> for ApiError {
    fn from(e: crate::domain::Invalid) -> Self {
        Self::unprocessable(e.0)
    }
}

/// Message of every 401 of the operator surface.
pub(crate) const UNAUTHORIZED_MESSAGE: &str =
    "missing or wrong operator key; send `Authorization: Bearer <ADMIN_API_KEY>`";

/// `WWW-Authenticate` of every 401 of the operator surface (RFC 6750 §3).
pub(crate) const WWW_AUTHENTICATE: &str = "Bearer realm=\"admin\"";

/// The 401 of the operator API, as JSON with `WWW-Authenticate: Bearer`.
pub fn unauthorized_response() -> Response {
    let body = serde_json::to_vec(&ErrorBody::new(UNAUTHORIZED_MESSAGE)).unwrap_or_default();
    Response::builder()
        .status(StatusCode::UNAUTHORIZED)
        .header("www-authenticate", WWW_AUTHENTICATE)
        .content_type("application/json; charset=utf-8")
        .body(body)
}
