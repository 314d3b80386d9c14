//! The operator API, `/api/v1/admin/...`: a look into the write-behind
//! buffer and levers on it ([`queues`]), and listings across applications
//! ([`listings`]). Tenants never reach it:
//!
//! - It is off unless `ADMIN_API_KEY` is set; then every admin path answers
//!   404 ([`gate`]), exactly like a route that does not exist.
//! - Every operation requires `Authorization: Bearer <ADMIN_API_KEY>`
//!   ([`AdminKey`], declared as an OpenAPI security scheme, so Swagger UI
//!   shows an Authorize button). A missing or wrong key answers 401 with
//!   `WWW-Authenticate: Bearer` (RFC 6750 §3).
//! - The key is compared in constant time: both sides are hashed with
//!   SHA-256 and the digests compared with `subtle`, so neither the content
//!   nor the length of the key leaks through timing. The key lives in a
//!   `secrecy::SecretString`, whose `Debug` prints `[REDACTED]`, so it cannot
//!   reach a log line by accident.

pub mod listings;
pub mod queues;

use poem::{IntoResponse, Request, Response};
use poem_openapi::SecurityScheme;
use poem_openapi::auth::Bearer;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AppState;
use crate::http::error::ApiError;

/// Path prefix of every admin operation.
pub const PREFIX: &str = "/api/v1/admin";

/// The operator key: `Authorization: Bearer <ADMIN_API_KEY>`.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", checker = "check_key")]
pub struct AdminKey(());

/// The operator key where it may be waived (`PUBLIC_APPLICATION_LIST`): the
/// spec declares the key as optional, and the handler decides.
#[derive(SecurityScheme)]
pub enum OptionalAdminKey {
    /// The right key was sent.
    Key(AdminKey),
    /// No key, or a wrong one.
    #[oai(fallback)]
    Missing,
}

/// The SHA-256 of `ADMIN_API_KEY`, computed once at start-up. Comparing
/// digests of equal length in constant time hides both the key's content and
/// its length.
#[derive(Clone, Copy)]
pub struct KeyDigest([u8; 32]);

impl KeyDigest {
    /// The digest of `key`.
    pub fn of(key: &secrecy::SecretString) -> Self {
        Self(Sha256::digest(key.expose_secret().as_bytes()).into())
    }

    /// Whether `token` is the key (constant time).
    pub fn matches(&self, token: &str) -> bool {
        Sha256::digest(token.as_bytes()).ct_eq(&self.0).into()
    }
}

/// Accepts the bearer token when it equals `ADMIN_API_KEY` (constant time).
/// Errors: poem-openapi's `AuthorizationError`, which [`crate::error`] turns
/// into a JSON 401 with `WWW-Authenticate`.
async fn check_key(req: &Request, bearer: Bearer) -> poem::Result<()> {
    let key = req.data::<AppState>().and_then(|s| s.admin_key);
    if key.is_some_and(|k| k.matches(&bearer.token)) {
        return Ok(());
    }
    tracing::warn!(path = %req.uri().path(), "admin request with a wrong key");
    Err(poem_openapi::error::AuthorizationError.into())
}

/// Whether `path` is an admin path (`/api/v1/admin` or below it).
fn is_admin_path(path: &str) -> bool {
    path.strip_prefix(PREFIX)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Path of the application listing (`GET`), which shows every token.
pub const APPLICATION_LIST_PATH: &str = "/api/v1/applications";

/// Whether the request is the application listing (`GET` or `HEAD` of
/// [`APPLICATION_LIST_PATH`], with or without a trailing slash).
fn is_application_list(req: &Request) -> bool {
    use poem::http::Method;
    (req.method() == Method::GET || req.method() == Method::HEAD)
        && req.uri().path().trim_end_matches('/') == APPLICATION_LIST_PATH
}

/// Where the operator surface is served, fixed at start-up.
#[derive(Debug, Clone, Copy)]
pub struct OperatorSurface {
    /// `ADMIN_API_KEY` is set: the operator API is on.
    pub enabled: bool,
    /// `PUBLIC_APPLICATION_LIST`: the listing is open to anyone, so it is
    /// not part of the operator surface.
    pub public_application_list: bool,
    /// `ADMIN_BIND_ADDR` as bound: when set, the operator surface is served
    /// only on this listener.
    pub admin_listener: Option<std::net::SocketAddr>,
}

impl OperatorSurface {
    /// Whether `req` asks for the key-protected part of the operator
    /// surface: an admin path, or the listing unless it is public.
    fn is_protected(&self, req: &Request) -> bool {
        is_admin_path(req.uri().path())
            || (!self.public_application_list && is_application_list(req))
    }

    /// Whether `req` must not be served on the listener it came in on: with
    /// `ADMIN_BIND_ADDR` set, the operator surface (`/metrics` included) on
    /// the public listener.
    fn is_off_listener(&self, req: &Request) -> bool {
        let Some(admin) = self.admin_listener else {
            return false;
        };
        let on_admin = req.local_addr().as_socket_addr() == Some(&admin);
        !on_admin && (self.is_protected(req) || req.uri().path() == "/metrics")
    }
}

/// Answers 404, exactly like a route that does not exist, before any other
/// check, so that a probe learns nothing (not even that a key exists):
/// - while the operator API is off (`ADMIN_API_KEY` unset), on every admin
///   path and on the application listing (unless `PUBLIC_APPLICATION_LIST`);
/// - with `ADMIN_BIND_ADDR` set, on the public listener, for the operator
///   surface and `/metrics`.
///
/// The 404 to answer instead of the route, or `None` to go on.
pub fn gate(req: &Request, surface: &OperatorSurface) -> Option<Response> {
    if (!surface.enabled && surface.is_protected(req)) || surface.is_off_listener(req) {
        return Some(ApiError::not_found("no such route; see /docs for the API").into_response());
    }
    None
}
