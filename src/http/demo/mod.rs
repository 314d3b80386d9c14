//! `GET /demo`: one static page, compiled into the binary, that shows the
//! service live in a browser. It creates an application and a chat (or
//! opens one by token), posts, edits and deletes messages, shows them
//! arriving through two independent `EventSource` subscribers of the chat's
//! event stream, and pages through its history by cursor. Plain HTML and
//! JS with no build step (`index.html`, `demo.js` beside this file); every
//! text from the server is set as `textContent`, never parsed as HTML.
//!
//! Served unless `DEMO_PAGE=false` (then `/demo` is a 404, as any unknown
//! path). The page holds no secret: it reaches only the public API with
//! the token it created or was given. Not part of the OpenAPI document
//! (it is a page, as `/docs` is). Tested in a real browser by
//! `tests/e2e/demo.test.mjs`.

use poem::http::{HeaderValue, header};
use poem::{Endpoint, EndpointExt, Response, Route};

/// The page (`text/html`).
const INDEX_HTML: &str = include_str!("index.html");
/// Its script (`text/javascript`), a separate file so that the
/// Content-Security-Policy can forbid inline script.
const DEMO_JS: &str = include_str!("demo.js");
/// What the page may load and reach: only this origin (its script, the
/// API, the event stream), its inline styles, no frames.
const CSP: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; \
                   style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

/// One static file with its content type and the page's security headers.
fn file(body: &'static str, content_type: &'static str) -> impl Endpoint {
    poem::endpoint::make_sync(move |_| {
        let mut resp = Response::builder()
            .content_type(content_type)
            .header(header::CACHE_CONTROL, "no-cache")
            .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
            .body(body);
        resp.headers_mut().insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        resp
    })
}

/// The routes `/demo` (the page) and `/demo/demo.js` (its script), for
/// nesting at `/demo`. GET and HEAD only (others: 405).
pub fn routes() -> Route {
    Route::new()
        .at(
            "/",
            poem::get(file(INDEX_HTML, "text/html; charset=utf-8")).boxed(),
        )
        .at(
            "/demo.js",
            poem::get(file(DEMO_JS, "text/javascript; charset=utf-8")).boxed(),
        )
}
