//! The HTTP layer: one module per resource, each an `#[OpenApi]` struct;
//! [`routes`] assembles them with Swagger UI, the spec and the edge ([`edge`]: limits, errors, metrics and logs in one pass).

pub mod admin;
pub mod answers;
pub mod applications;
pub mod body;
pub mod chats;
pub mod connections;
pub mod demo;
pub mod edge;
pub mod error;
pub mod events;
pub mod fields;
pub mod health;
pub mod limits;
pub mod lookup;
pub mod messages;
pub mod ratelimit;
pub mod reads;
pub mod replay;
pub mod schemas;
pub mod search;

use std::sync::Arc;

use poem::{Response, Route};
use poem_openapi::{OpenApiService, Tags};
use sqlx::MySqlPool;

use crate::config::Config;
use crate::writebehind::WriteBehind;

/// Everything a handler needs ([`Services`]), shared by reference
/// (`Data<&AppState>`) and read through `Deref` (`state.config`). The edge
/// ([`edge::Edge`]) clones it into every request, so it is one `Arc`:
/// a clone is one reference count, where cloning the services themselves
/// touched a count per pool, queue and setting (about 1% of the service's
/// CPU under a create load, seen with `perf`).
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl AppState {
    /// Shares `services` with every request.
    pub fn new(services: Services) -> Self {
        Self(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

/// What the handlers share (see [`AppState`]).
pub struct Services {
    /// MariaDB primary's pool (writes, and reads inside write paths).
    pub pool: MySqlPool,
    /// The primary and the read replicas (`DATABASE_READ_URLS`), for reads
    /// that may lag ([`reads::pool_for`]).
    pub reads: crate::store::replicas::Pools,
    /// The write-behind core (creates, read-your-writes).
    pub write_behind: WriteBehind,
    /// The live events (`…/events`; see [`crate::writebehind::live`]).
    pub live: crate::writebehind::live::Live,
    /// Settings in force.
    pub config: Arc<Config>,
    /// Dirty marks for the counts refresh (deletes change counts).
    pub marks: crate::jobs::counts::DirtyMarks,
    /// The per-IP rate limit.
    pub rate_limit: ratelimit::RateLimit,
    /// The per-application search rate.
    pub search_rate: ratelimit::SearchRate,
    /// The search backend (Meilisearch or the term index in MariaDB).
    pub search: crate::store::search::SearchBackend,
    /// The flusher (for `POST /admin/flush`).
    pub flusher: Arc<crate::writebehind::Flusher>,
    /// The search indexer.
    pub indexer: Arc<crate::jobs::indexer::Indexer>,
    /// The digest of `ADMIN_API_KEY`; `None` while the operator API is off.
    pub admin_key: Option<admin::KeyDigest>,
    /// Whether MariaDB answered its last probe (every 5 s, by the sampler
    /// that sets `chat_dependency_up`): reported by `/health/ready`, which
    /// does not wait on MariaDB (see [`health`]).
    pub database_up: Arc<std::sync::atomic::AtomicBool>,
}

impl Services {
    /// Queues a change for the search index (either backend). A failure is
    /// logged and otherwise ignored: search hits are always read back from
    /// MariaDB, so a stale document can never show a deleted message or an
    /// outdated body; until the next `reindex` it can only be missing, or
    /// match the words of the body before an edit.
    /// `token`: the application the change is in (its shard's queue).
    pub async fn queue_index(&self, token: &str, op: crate::store::search::IndexOp) {
        if let Err(e) = self.write_behind.buffer().push_search_op(token, &op).await {
            tracing::warn!(error = %e, ?op, "could not queue a search index update");
        }
    }

    /// Appends a live event to chat `chat` of `token`'s application, if
    /// anyone follows it (after the change committed). A failure is logged:
    /// the change stands, and its subscribers miss the event.
    pub async fn publish(&self, token: &str, chat: i64, kind: crate::writebehind::live::EventKind) {
        if let Err(e) = self.live.publish(token, chat, &kind).await {
            tracing::warn!(error = %e, event = kind.name(), "could not append a live event");
        }
    }
}

/// Groups of operations in the spec and Swagger UI.
#[derive(Tags)]
pub enum ApiTags {
    /// Applications own chats and are identified by a token.
    Applications,
    /// Chats, numbered within their application.
    Chats,
    /// Messages, numbered within their chat.
    Messages,
    /// Liveness and readiness probes.
    Health,
    /// The operator API: queues, dead letters, forced flushes, listings
    /// across applications. Off unless `ADMIN_API_KEY` is set; requires
    /// `Authorization: Bearer <ADMIN_API_KEY>`.
    Admin,
}

/// Builds the OpenAPI service with every operation of the API (also used
/// by `chat-api openapi`).
pub fn api() -> OpenApiService<impl poem_openapi::OpenApi, ()> {
    OpenApiService::new(
        (
            applications::ApplicationsApi,
            chats::ChatsApi,
            events::EventsApi,
            search::SearchApi,
            messages::MessagesApi,
            health::HealthApi,
            admin::queues::QueuesAdminApi,
            admin::listings::ListingsAdminApi,
        ),
        "Chat API",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "Applications own chats; chats own messages. Creating a chat or a message is \
         write-behind: the number is allocated in Redis and the record is written to MariaDB \
         in batches, so lists (and counts) lag the creates by about 2.5 s while MariaDB is up \
         (1.25 × `FLUSH_MAX_AGE_MS`, default 2000 ms). A single chat or message can be read, \
         edited and deleted right after its creation. Errors are `{\"error\": \"...\"}`.\n\n\
         **Rate limit.** Every answer under `/api/v1` carries `X-RateLimit-Limit` (the client's \
         bucket), `X-RateLimit-Remaining` (requests left in it) and `X-RateLimit-Reset` (whole \
         seconds until it is full again), successes included; past the limit, 429 with \
         `Retry-After`.\n\n\
         **Tokens.** An application's token is its only credential: whoever holds it can read, \
         change and delete that application and all of its chats and messages. Keep it secret; \
         responses that carry it are `Cache-Control: no-store`. No operation lists tokens to a \
         tenant: the listing of every application needs the operator key \
         (`Authorization: Bearer <ADMIN_API_KEY>`).",
    )
}

/// The methods the spec declares for a concrete request path (for the
/// `Allow` header of a 405), upper-case, for example `["GET", "POST"]`.
pub fn allowed_methods(path: &str) -> Vec<String> {
    spec_route(path)
        .map(|(_, methods)| methods.clone())
        .unwrap_or_default()
}

/// Gives a response that never reached the router (a 429 of
/// the rate limit, a 413 of the body limit) the route pattern of its path
/// ([`route_pattern`]) as poem's `PathPattern`, so that
/// `telemetry::metrics::track_request` counts it under its route like the
/// others (the telemetry layer does not depend on the HTTP layer).
fn label_route(path: &str, resp: &mut Response) {
    if resp.data::<poem::PathPattern>().is_none()
        && let Some(pattern) = route_pattern(path)
    {
        resp.set_data(poem::PathPattern(pattern.into()));
    }
}

/// The route pattern a concrete request path matches, spelled as poem's
/// router spells it (`/api/v1/applications/:param0/chats`: poem-openapi
/// names path parameters `param0`, `param1`… in order), or `None` when no
/// operation of the spec matches. For the `route` label of responses that
/// never reached the router (a 429 of the rate limit, a 413 of the body
/// limit), so they are counted under their route like the others.
pub fn route_pattern(path: &str) -> Option<String> {
    let (segments, _) = spec_route(path)?;
    let mut n = 0;
    let parts: Vec<String> = segments
        .iter()
        .map(|s| {
            if s.starts_with('{') {
                n += 1;
                format!(":param{}", n - 1)
            } else {
                s.clone()
            }
        })
        .collect();
    Some(parts.join("/"))
}

/// The spec's path template (split on `/`) that a concrete path matches,
/// with its methods (see [`allowed_methods`]).
fn spec_route(path: &str) -> Option<&'static (Vec<String>, Vec<String>)> {
    type Routes = Vec<(Vec<String>, Vec<String>)>;
    static ROUTES: std::sync::OnceLock<Routes> = std::sync::OnceLock::new();
    let routes = ROUTES.get_or_init(|| {
        let spec: serde_json::Value = serde_json::from_str(&spec_json()).unwrap_or_default();
        let mut routes = Vec::new();
        if let Some(paths) = spec["paths"].as_object() {
            for (template, ops) in paths {
                let segments = template.split('/').map(str::to_owned).collect();
                let methods = ops
                    .as_object()
                    .map(|o| o.keys().map(|m| m.to_uppercase()).collect())
                    .unwrap_or_default();
                routes.push((segments, methods));
            }
        }
        routes
    });
    let parts: Vec<&str> = path.split('/').collect();
    routes
        .iter()
        .filter(|(segments, _)| {
            segments.len() == parts.len()
                && segments
                    .iter()
                    .zip(&parts)
                    .all(|(s, p)| s.starts_with('{') || s == p)
        })
        // A literal segment (`/messages/search`) wins over a parameter.
        .min_by_key(|(segments, _)| segments.iter().filter(|s| s.starts_with('{')).count())
}

/// The order of the tags in the spec and Swagger UI: the tenant's resources
/// from the outside in, then the probes, then the operator API.
/// poem-openapi lists tags by name, which put Admin first.
const TAG_ORDER: [&str; 5] = ["Applications", "Chats", "Messages", "Health", "Admin"];

/// The spec as JSON (pretty), as served at `/openapi.json` and `/docs`, and
/// written to `openapi/openapi.json`: poem-openapi's spec with its `tags`
/// in the order Applications, Chats, Messages, Health, Admin (a tag not
/// listed goes last).
pub fn spec_json() -> String {
    with_tags_in_order(api().spec())
}

/// `spec` (poem-openapi's) with its `tags` in [`spec_json`]'s order.
fn with_tags_in_order(spec: String) -> String {
    let Ok(mut doc) = serde_json::from_str::<serde_json::Value>(&spec) else {
        return spec;
    };
    if let Some(tags) = doc.get_mut("tags").and_then(|t| t.as_array_mut()) {
        tags.sort_by_key(|t| {
            let name = t["name"].as_str().unwrap_or_default();
            TAG_ORDER
                .iter()
                .position(|n| *n == name)
                .unwrap_or(TAG_ORDER.len())
        });
    }
    serde_json::to_string_pretty(&doc).unwrap_or(spec)
}

/// Swagger UI at `/docs/`, showing [`spec_json`]. poem-openapi's own
/// endpoint embeds its spec verbatim, so its page (`html`, from
/// `swagger_ui_html`) is taken and that spec swapped for ours.
fn swagger_ui(html: String) -> impl poem::Endpoint {
    poem::endpoint::make_sync(move |_| poem::web::Html(html.clone()))
}

/// Serves the Prometheus text format.
#[poem::handler]
fn metrics() -> poem::Response {
    poem::Response::builder()
        .content_type("text/plain; version=0.0.4")
        .body(crate::telemetry::metrics::render())
}

/// Marks every response of the API (`/api/...`) `Cache-Control: no-store`
/// (RFC 9111 §5.2.2.5): they carry tokens (in the body, or in the URL they
/// answer, since a token is part of every tenant path) and tenant data, which
/// no shared or browser cache may keep.
fn no_store(path: &str, resp: &mut Response) {
    if path.starts_with("/api/") {
        resp.headers_mut().insert(
            poem::http::header::CACHE_CONTROL,
            poem::http::HeaderValue::from_static("no-store"),
        );
    }
}

/// All routes: the API, `/openapi.json`, Swagger UI at `/docs`, `/metrics`,
/// the live demo page at `/demo` (unless `DEMO_PAGE=false`),
/// inside the edge ([`edge::Edge`]): logs, latency metrics, the rate limit,
/// `Cache-Control: no-store` on the API, JSON errors, the body-size limit and
/// the operator gate, in one pass.
pub fn routes(state: AppState) -> impl poem::Endpoint + 'static {
    let api = api();
    let generated = api.spec();
    let spec_text = with_tags_in_order(generated.clone());
    let docs = Route::new().at(
        "/",
        swagger_ui(api.swagger_ui_html().replace(&generated, &spec_text)),
    );
    let spec = poem::endpoint::make_sync(move |_| {
        poem::Response::builder()
            .content_type("application/json")
            .body(spec_text.clone())
    });
    let body_limit = limits::BodyLimit::new(state.config.max_request_bytes);
    let rate_limit = state.rate_limit.clone();
    let surface = admin::OperatorSurface {
        enabled: state.admin_key.is_some(),
        public_application_list: state.config.public_application_list,
        admin_listener: state.config.admin_bind_addr,
    };
    let demo = if state.config.demo_page {
        demo::routes()
    } else {
        Route::new()
    };
    let routes = Route::new()
        .nest("/demo", demo)
        .at("/openapi.json", spec)
        .at("/metrics", poem::get(metrics))
        .nest("/docs", docs)
        .nest("/", api);
    edge::Edge {
        inner: routes,
        state,
        surface,
        body_limit,
        rate_limit,
    }
}
