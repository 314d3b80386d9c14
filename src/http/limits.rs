//! The request-body limit (`MAX_REQUEST_BYTES`): larger bodies get 413
//! before any parsing. Unlike poem's `SizeLimit`, it does not require a
//! `Content-Length` (a chunked body is counted as it is read).

use poem::http::StatusCode;
use poem::{Body, Endpoint, Middleware, Request, Result};
use tokio::io::AsyncReadExt;

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
        if declared.is_none()
            && req
                .headers()
                .contains_key(poem::http::header::TRANSFER_ENCODING)
        {
            let mut buf = Vec::new();
            req.take_body()
                .into_async_read()
                .take(self.max as u64 + 1)
                .read_to_end(&mut buf)
                .await
                .map_err(|e| poem::Error::from_string(e.to_string(), StatusCode::BAD_REQUEST))?;
            if buf.len() > self.max {
                return Err(too_large(self.max));
            }
            req.set_body(Body::from(buf));
        }
        self.inner.call(req).await
    }
}
