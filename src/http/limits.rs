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
use poem::{Body, Endpoint, Middleware, Request, Result};

/// Middleware that caps request bodies at `max` bytes.
pub struct BodyLimit {
    max: usize,
}

impl BodyLimit {
    /// Caps bodies at `max` bytes.
    pub fn new(max: usize) -> Self {
        Self { max }
    }
}

impl<E: Endpoint> Middleware<E> for BodyLimit {
    type Output = BodyLimitEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        BodyLimitEndpoint {
            inner,
            max: self.max,
        }
    }
}

/// Endpoint made by [`BodyLimit`].
pub struct BodyLimitEndpoint<E> {
    inner: E,
    max: usize,
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

impl<E: Endpoint> Endpoint for BodyLimitEndpoint<E> {
    type Output = E::Output;

    async fn call(&self, mut req: Request) -> Result<Self::Output> {
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
            return self.inner.call(req).await;
        }
        let exceeded = Arc::new(AtomicBool::new(false));
        req.set_body(limited(body, self.max, exceeded.clone()));
        let result = self.inner.call(req).await;
        if exceeded.load(Ordering::Relaxed) {
            return Err(too_large(self.max));
        }
        result
    }
}
