//! `GET /api/v1/applications/{token}/chats/{number}/messages/search`.

use crate::http::answers::{Errors, Listing};
use poem::web::Data;
use poem_openapi::OpenApi;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;

use super::reads::{self, Via};
use super::schemas::{SearchMeta, SearchResults};
use super::{ApiTags, AppState, lookup};
use crate::domain::Page;
use crate::http::error::ApiError;
use crate::store::replicas::ReadScope;
use crate::store::search::{Cursor, MAX_QUERY_BYTES, SearchError, Window};

/// The `query` parameter, the alias of `q`: `None` when absent. Errors
/// (422): given twice, or blank.
fn query_alias(req: &poem::Request) -> Result<Option<String>, ApiError> {
    #[derive(serde::Deserialize)]
    struct Alias {
        query: Option<String>,
    }
    let alias = req
        .params::<Alias>()
        .map_err(|e| ApiError::unprocessable(format!("invalid parameter `query`: {e}")))?
        .query;
    if alias.as_deref().is_some_and(crate::domain::is_blank) {
        return Err(ApiError::unprocessable(
            "invalid parameter `query`: must not be blank (empty, or only spaces, tabs, CRs and LFs)",
        ));
    }
    Ok(alias)
}

/// Full-text search.
pub struct SearchApi;

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Messages")]
impl SearchApi {
    /// Search messages of a chat
    ///
    /// Full-text search of the chat's message bodies, best match first, each
    /// hit with its relevance `score` (0 to 1, higher is better); only
    /// messages of this chat are ever returned. Results may lag new messages
    /// and edits by about a second after their flush. With Meilisearch (when
    /// the service has `MEILI_URL`) matching is typo-tolerant and by prefix;
    /// without it, the service's own term index matches whole words (any
    /// length, case and diacritics folded, Chinese segmented into words),
    /// ranked by BM25 over the chat's messages.
    ///
    /// Pages: `page` and `per_page`, or, for deep pages, `after` with the
    /// `meta.next_cursor` of the previous page (a walk by cursor neither
    /// repeats nor skips a hit while messages are created and deleted, and
    /// for a one-word query each page costs what the first does). Each search has a time limit
    /// (503 with `Retry-After` past it), and each application a search rate
    /// of its own (429 with `Retry-After` past it).
    #[oai(
        path = "/applications/:token/chats/:number/messages/search",
        method = "get"
    )]
    // Each argument is a parameter of the operation, as the spec lists them.
    #[allow(clippy::too_many_arguments)]
    async fn search(
        &self,
        state: Data<&AppState>,
        /// The application's token.
        token: Path<String>,
        /// The chat's number.
        number: Path<i64>,
        /// What to look for: 1 to 512 bytes, at least one character not a
        /// space, tab, CR or LF. `query` is accepted as another name for it
        /// (clients of Rails implementations send that); with both, they must
        /// be equal.
        q: Query<crate::http::fields::SearchTerms>,
        req: &poem::Request,
        /// Page number, from 1.
        #[oai(validator(minimum(value = "1"), maximum(value = "100000")))]
        page: Query<Option<i64>>,
        /// Items per page, 1 to 100 (default 20).
        #[oai(validator(minimum(value = "1"), maximum(value = "100")))]
        per_page: Query<Option<i64>>,
        /// The cursor of the page to return: the previous page's
        /// `meta.next_cursor`, with the same `q`. Not with `page`.
        #[oai(validator(min_length = 1, max_length = 2048))]
        after: Query<Option<String>>,
    ) -> Result<Json<SearchResults>, Errors<Listing>> {
        let query = match (q.0.0.map(|q| q.0), query_alias(req)?) {
            (Some(q), Some(alias)) if q != alias => {
                return Err(ApiError::unprocessable(
                    "q and query name the same parameter; send one of them, or the same value in both",
                ).into());
            }
            (Some(q), _) | (None, Some(q)) => q,
            (None, None) => {
                return Err(ApiError::unprocessable(
                    "the query parameter q (or its alias query) is required",
                )
                .into());
            }
        };
        if crate::domain::is_blank(&query) {
            return Err(ApiError::unprocessable("q must not be empty").into());
        }
        if query.len() > MAX_QUERY_BYTES {
            return Err(ApiError::unprocessable(format!(
                "q is {} bytes long; the maximum is {MAX_QUERY_BYTES}",
                query.len()
            ))
            .into());
        }
        let window = match after.0 {
            None => Window::Page(Page::parse(page.0, per_page.0)?),
            // A cursor takes precedence over `page`.
            Some(cursor) => {
                let per_page = Page::parse(None, per_page.0)?.per_page;
                let cursor = Cursor::decode(&cursor).map_err(ApiError::unprocessable)?;
                Window::After(cursor, per_page)
            }
        };
        let app = lookup::application(&state, &token.0).await?;
        state.search_rate.check(app.id)?;
        let chat = lookup::chat(&state, &app, number.0, Via::Replica).await?;
        let scope = ReadScope::Chat(chat.id);
        let (search, chat_id, q, window) = (&state.search, chat.id, query.as_str(), &window);
        let timeout = state.config.search_timeout();
        let found = reads::read(&state, &app.token, scope, Via::Replica, |pool| async move {
            search.search(&pool, chat_id, q, window, timeout).await
        })
        .await
        .map_err(|e| match e {
            SearchError::Database(e) => e.into(),
            SearchError::Unavailable(cause) => {
                tracing::warn!(%cause, "search engine unavailable");
                ApiError::unavailable("the search engine is unavailable; retry later", 5)
            }
            SearchError::TimedOut => {
                tracing::warn!(chat_id, "search past SEARCH_TIMEOUT_MS");
                ApiError::unavailable(
                    format!(
                        "the search ran past its time limit of {} ms (SEARCH_TIMEOUT_MS); \
                         retry later, or search for rarer words",
                        timeout.as_millis()
                    ),
                    1,
                )
            }
            SearchError::Cursor(why) => ApiError::unprocessable(why),
        })?;
        let page = window.page();
        let meta = SearchMeta {
            page,
            per_page: window.per_page(),
            next_page: found.more.then_some(page + 1),
            previous_page: (page > 1).then(|| page - 1),
            next_cursor: found.next.map(|c| c.encode()),
        };
        Ok(Json(SearchResults {
            messages: found.rows.into_iter().map(Into::into).collect(),
            meta,
        }))
    }
}
