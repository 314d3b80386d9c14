//! The edge: every request's way in and out of the service, in one
//! endpoint, one future and one pass, in place of a stack of eight poem
//! middlewares. Each layer of the stack was a future of its own around the
//! next, polled through every level on each wake-up and moved as a whole
//! into the box poem's server makes of it: about 5 µs of CPU per create on
//! a 25 µs request path (`bench request-path`, issue 36). The steps, and
//! what each answers, are those of the stack, in its order:
//!
//! 1. the request span (`crate::telemetry::request_span`), in which the
//!    handler runs, and the state handlers read (`Data<&AppState>`);
//! 2. the per-IP rate limit ([`RateLimit::admit`]): a 429 answers at once;
//! 3. the body-size limit ([`BodyLimit::admit`]): a declared length over
//!    `MAX_REQUEST_BYTES` is a 413, any other body is counted as read;
//! 4. the operator gate ([`admin::gate`]): a 404 for the operator surface
//!    where it is off;
//! 5. the route, then: 413 if the body went past the limit
//!    ([`BodyLimit::check`]), and every error made a JSON answer
//!    ([`json_errors`]);
//! 6. `Cache-Control: no-store` on `/api/` answers (not on a 429 of step
//!    2, as before);
//! 7. the `X-RateLimit-*` headers ([`RateLimit::stamp`]);
//! 8. the route label of an answer that never reached the router
//!    (`label_route`), the latency metric
//!    (`crate::telemetry::metrics::track_request`) and the log line
//!    (`crate::telemetry::log_response`).

use poem::{Endpoint, IntoResponse, Request, Response, Result};
use tracing::Instrument;

use super::admin::{self, OperatorSurface};
use super::error::json_errors;
use super::limits::BodyLimit;
use super::ratelimit::{Admission, RateLimit};
use super::{AppState, label_route, no_store};
use crate::telemetry;

/// The edge around `inner` (the router); see the module docs.
pub struct Edge<E> {
    /// The routes.
    pub inner: E,
    /// Shared with every handler.
    pub state: AppState,
    /// Where the operator surface is served.
    pub surface: OperatorSurface,
    /// `MAX_REQUEST_BYTES`.
    pub body_limit: BodyLimit,
    /// The per-IP limit.
    pub rate_limit: RateLimit,
}

impl<E: Endpoint> Endpoint for Edge<E> {
    type Output = Response;

    /// Answers every request with a response (never an error): see the
    /// module docs for the steps. Everything after the span is made runs
    /// in it, so a line logged by any step (the rate limiter, an unhandled
    /// error) carries the request's route and app.
    async fn call(&self, req: Request) -> Result<Response> {
        let started = std::time::Instant::now();
        let span = telemetry::request_span(&req);
        let method = req.method().clone();
        let resp = self.answer(req).instrument(span.clone()).await;
        telemetry::metrics::track_request(&method, started, &resp);
        telemetry::log_response(&span, started, &resp);
        Ok(resp)
    }
}

impl<E: Endpoint> Edge<E> {
    /// Steps 2 to 8 up to the route label (see the module docs).
    async fn answer(&self, mut req: Request) -> Response {
        // A reference count, not a copy of the path (`Uri` holds `Bytes`).
        let uri = req.uri().clone();
        let path = uri.path();
        let mut resp = match self.rate_limit.admit(&req) {
            Admission::Refused(refused) => refused,
            admission => {
                req.extensions_mut().insert(self.state.clone());
                let result = match self.body_limit.admit(&mut req) {
                    Err(too_large) => Err(too_large),
                    Ok(admitted) => match admin::gate(&req, &self.surface) {
                        Some(not_found) => Ok(not_found),
                        None => {
                            let result = self.inner.call(req).await;
                            self.body_limit
                                .check(admitted, result.map(IntoResponse::into_response))
                        }
                    },
                };
                let mut resp = json_errors(result, path);
                no_store(path, &mut resp);
                if let Admission::Allowed(remaining) = admission {
                    self.rate_limit.stamp(remaining, &mut resp);
                }
                resp
            }
        };
        label_route(path, &mut resp);
        resp
    }
}
