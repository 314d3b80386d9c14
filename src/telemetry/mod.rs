//! Structured logs through `tracing`. `RUST_LOG` filters (default `info`);
//! `LOG_FORMAT=json` switches to one JSON object per line. Text logs are
//! coloured only on a terminal, and never when `NO_COLOR` is set to
//! anything but the empty string (<https://no-color.org>): no escape codes
//! under Docker or in a log file.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; a second call does nothing (tests).
pub fn init() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let ansi = !no_color && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

pub mod metrics;

/// The short, non-reversible name of an application token in logs: the
/// first 8 hex digits of its SHA-256. A token is its application's only
/// credential, so no log line carries one; the fingerprint still lets an
/// operator follow one application's requests.
pub fn token_fingerprint(token: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(token.as_bytes())[..4])
}

/// The token in a request path (`/api/v1/applications/{token}/…`), if any.
fn path_token(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/api/v1/applications/")?;
    let token = rest.split('/').next()?;
    (!token.is_empty()).then_some(token)
}

/// The `app` field of a request's span: the fingerprint of the token in
/// the path ([`token_fingerprint`]), or `-`. Hashed only when a subscriber
/// records the span (a SHA-256 per request was about 2.4 µs of CPU with
/// `RUST_LOG=warn`, which records no request span).
struct PathApp<'a>(&'a str);

impl std::fmt::Display for PathApp<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match path_token(self.0) {
            Some(token) => f.write_str(&token_fingerprint(token)),
            None => f.write_str("-"),
        }
    }
}

/// The request log, in place of `poem::middleware::Tracing`, whose span
/// carries the full URI and so every token: a span `request` with the
/// method, the route template (`/api/v1/applications/:param0/chats`, once
/// routed), the token's fingerprint ([`token_fingerprint`]) and the client
/// address, and one line at the end with the status and the duration in ms
/// (`info`; `warn` for a 5xx). The query string is never logged.
///
/// [`request_span`] opens the span (the handler runs in it); [`log_response`]
/// writes the line.
pub fn request_span(req: &poem::Request) -> tracing::Span {
    tracing::info_span!(
        "request",
        method = %req.method(),
        route = tracing::field::Empty,
        app = %PathApp(req.uri().path()),
        remote_addr = %req.remote_addr(),
    )
}

/// The line at the end of a request (see [`request_span`]): the route on
/// the span, then the status and the duration since `started`, in ms.
pub fn log_response(span: &tracing::Span, started: std::time::Instant, resp: &poem::Response) {
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let _entered = span.enter();
    if let Some(p) = resp.data::<poem::PathPattern>() {
        span.record("route", p.0.as_ref());
    }
    let status = resp.status().as_u16();
    if status >= 500 {
        tracing::warn!(status, duration_ms = ms, "response");
    } else {
        tracing::info!(status, duration_ms = ms, "response");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_token_is_logged_as_a_fingerprint() {
        let token = "PuzRDSX5aaaaaaaaaaaaaaaaaaaaaaaa";
        assert_eq!(
            path_token(&format!("/api/v1/applications/{token}/chats/1")),
            Some(token)
        );
        assert_eq!(path_token("/api/v1/applications"), None);
        assert_eq!(path_token("/health/live"), None);
        let f = token_fingerprint(token);
        assert_eq!(f.len(), 8);
        assert!(!token.contains(&f));
        let path = format!("/api/v1/applications/{token}/chats/1/messages");
        assert_eq!(PathApp(&path).to_string(), f);
        assert_eq!(PathApp("/metrics").to_string(), "-");
    }
}
