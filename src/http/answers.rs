//! Which error statuses each operation documents: [`Errors<S>`] is
//! [`ApiError`] as an operation's error type, with the spec listing only the
//! statuses of its [`StatusSet`] `S`.
//!
//! One error enum serves every handler, so its derived `ApiResponse` would
//! document all of its statuses on every operation (a GET with 413 and 415,
//! a tenant operation with 401, 500 everywhere). Each operation instead names
//! the set of statuses it can answer with; `tests/api/openapi.rs` holds every
//! operation's set to a table, so that changing one is deliberate.
//!
//! What goes in a set (besides the operation's success):
//! - 400, 413, 415: the operation has a JSON body (malformed, larger than
//!   `MAX_REQUEST_BYTES`, another content type);
//! - 401: the operator surface (an operator key is checked);
//! - 404: a token, number or admin path (the operator API answers 404 while
//!   `ADMIN_API_KEY` is unset);
//! - 409: an application create whose `Idempotency-Key`'s first request is
//!   still in progress (only application creates hold a key in progress);
//! - 422: a body, a query parameter or a header that is well-formed but
//!   invalid;
//! - 429: every path under `/api/v1` is rate-limited;
//! - 503: every operation here reaches Redis, MariaDB or Meilisearch.
//!
//! 500 is in no set: it is a fault of the service, not an answer the API
//! offers (the cause is logged). The response is still sent if it happens.

use std::marker::PhantomData;

use poem::{IntoResponse, Response};
use poem_openapi::ApiResponse;
use poem_openapi::registry::{MetaResponses, Registry};

use super::error::ApiError;

/// A set of error statuses an operation documents.
pub trait StatusSet: Send + Sync + 'static {
    /// The statuses, ascending.
    const STATUSES: &'static [u16];
}

/// [`ApiError`], documented with the statuses of `S` only.
///
/// Converts from everything that converts into [`ApiError`], so `?` works in
/// handlers as before.
pub struct Errors<S: StatusSet>(pub ApiError, PhantomData<S>);

impl<S: StatusSet> std::fmt::Debug for Errors<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<S: StatusSet, E: Into<ApiError>> From<E> for Errors<S> {
    fn from(e: E) -> Self {
        Self(e.into(), PhantomData)
    }
}

impl<S: StatusSet> IntoResponse for Errors<S> {
    fn into_response(self) -> Response {
        self.0.into_response()
    }
}

impl<S: StatusSet> From<Errors<S>> for poem::Error {
    fn from(e: Errors<S>) -> Self {
        e.0.into()
    }
}

impl<S: StatusSet> ApiResponse for Errors<S> {
    fn meta() -> MetaResponses {
        let mut meta = ApiError::meta();
        meta.responses
            .retain(|r| r.status.is_some_and(|s| S::STATUSES.contains(&s)));
        meta
    }

    fn register(registry: &mut Registry) {
        ApiError::register(registry);
    }
}

macro_rules! status_sets {
    ($($(#[$doc:meta])* $name:ident = [$($status:literal),+];)+) => {$(
        $(#[$doc])*
        pub struct $name;
        impl StatusSet for $name {
            const STATUSES: &'static [u16] = &[$($status),+];
        }
    )+};
}

status_sets! {
    /// A record addressed by its token and numbers, with no body and no
    /// query: get, delete.
    Lookup = [404, 429, 503];
    /// A page of a tenant's records, or a search: `page`, `per_page` or
    /// `q` can be out of range (422).
    Listing = [404, 422, 429, 503];
    /// A chat create: no body; an `Idempotency-Key` can be invalid or
    /// reused (422). Never 409: no chat create holds its key in progress.
    CreateChat = [404, 422, 429, 503];
    /// An application create: a JSON body, and an `Idempotency-Key` that
    /// can be in progress (409).
    CreateApplication = [400, 404, 409, 413, 415, 422, 429, 503];
    /// A message create: a JSON body; never 409, as for chats.
    CreateMessage = [400, 404, 413, 415, 422, 429, 503];
    /// A live event stream: a resume id can be malformed (422), and the
    /// cap on open streams answers 429.
    Streaming = [404, 422, 429, 503];
    /// An edit with a JSON body.
    Update = [400, 404, 413, 415, 422, 429, 503];
    /// An operator operation with no parameter.
    Operator = [401, 404, 429, 503];
    /// An operator operation with query parameters (listings, dead letters).
    OperatorQuery = [401, 404, 422, 429, 503];
    /// An operator operation with a JSON body.
    OperatorBody = [400, 401, 404, 413, 415, 422, 429, 503];
}
