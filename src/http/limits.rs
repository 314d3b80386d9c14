//! The request-body limit (`MAX_REQUEST_BYTES`): a body larger than the
//! limit gets 413, however it is framed.
//!
//! - A declared `Content-Length` over the limit is refused before anything
//!   is read.
//! - Every other body (HTTP/1.1 chunked, HTTP/2 or h2c without
//!   `content-length`, or a declared length within the limit) is wrapped in a
//!   counting stream that fails as soon as it has yielded more than the
//!   limit. Whatever the handler or extractor then makes of that failure, the
//!   answer is 413. So the service never holds more than the limit plus one
//!   read chunk of a body in memory, and a client streaming hundreds of MiB
//!   is cut off after the first `MAX_REQUEST_BYTES`.
//!
//! Unlike poem's `SizeLimit`, it does not require a `Content-Length`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::StreamExt;
use poem::http::StatusCode;
use poem::{Body, Request, Result};

/// Caps request bodies at `max` bytes: [`BodyLimit::admit`] before the
/// handler, [`BodyLimit::check`] after it (see [`crate::http::edge`]).
#[derive(Clone, Copy)]
pub struct BodyLimit {
    max: usize,
}

/// What [`BodyLimit::admit`] let through: whether the body's stream was
/// wrapped, and the flag it sets when the body went past the limit.
pub struct Admitted(Option<Arc<AtomicBool>>);

impl BodyLimit {
    /// Caps bodies at `max` bytes.
    pub fn new(max: usize) -> Self {
        Self { max }
    }

    /// Before the handler: refuses a declared `Content-Length` over the
    /// limit (413, as a `poem::Error`), and wraps any other non-empty body
    /// in a counting stream that fails past the limit.
    pub fn admit(&self, req: &mut Request) -> Result<Admitted> {
        let declared = req
            .headers()
            .get(poem::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max as u64) {
            return Err(too_large(self.max));
        }
        let body = req.take_body();
        if declared == Some(0) || body.is_empty() {
            req.set_body(body);
            return Ok(Admitted(None));
        }
        let exceeded = Arc::new(AtomicBool::new(false));
        req.set_body(limited(body, self.max, exceeded.clone()));
        Ok(Admitted(Some(exceeded)))
    }

    /// After the handler: its `result`, or 413 when the body went past the
    /// limit, whatever the handler made of the failed read.
    pub fn check<T>(&self, admitted: Admitted, result: Result<T>) -> Result<T> {
        match admitted.0 {
            Some(exceeded) if exceeded.load(Ordering::Relaxed) => Err(too_large(self.max)),
            _ => result,
        }
    }
}

fn too_large(max: usize) -> poem::Error {
    poem::Error::from_string(
        format!("request body is larger than {max} bytes (MAX_REQUEST_BYTES)"),
        StatusCode::PAYLOAD_TOO_LARGE,
    )
}

/// Wraps `body` so that reading past `max` bytes fails with an I/O error and
/// sets `exceeded`. Errors of the underlying body pass through unchanged.
fn limited(body: Body, max: usize, exceeded: Arc<AtomicBool>) -> Body {
    let mut seen: usize = 0;
    let stream = body.into_bytes_stream().map(move |chunk| {
        let chunk = chunk?;
        seen = seen.saturating_add(chunk.len());
        if seen > max {
            exceeded.store(true, Ordering::Relaxed);
            return Err(std::io::Error::other(format!(
                "request body is larger than {max} bytes (MAX_REQUEST_BYTES)"
            )));
        }
        Ok(chunk)
    });
    Body::from_bytes_stream(stream)
}
