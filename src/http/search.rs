//! `GET /api/v1/applications/{token}/chats/{number}/messages/search`.

use crate::http::answers::{Errors, Listing};
use poem::web::Data;
use poem_openapi::OpenApi;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;

use super::reads::{self, Via};
use super::schemas::{Meta, SearchResults};
use super::{ApiTags, AppState, lookup};
use crate::domain::Page;
use crate::http::error::ApiError;
use crate::store::replicas::ReadScope;
use crate::store::search::{MAX_QUERY_BYTES, SearchError};

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
        let page = Page::parse(page.0, per_page.0)?;
        let app = lookup::application(&state, &token.0).await?;
        let chat = lookup::chat(&state, &app, number.0, Via::Replica).await?;
        let scope = ReadScope::Chat(chat.id);
        let (search, chat_id, q) = (&state.search, chat.id, query.as_str());
        let rows = reads::read(&state, &app.token, scope, Via::Replica, |pool| async move {
            search.search(&pool, chat_id, q, page).await
        })
        .await
        .map_err(|e| match e {
            SearchError::Database(e) => e.into(),
            SearchError::Unavailable(cause) => {
                tracing::warn!(%cause, "search engine unavailable");
                ApiError::unavailable("the search engine is unavailable; retry later", 5)
            }
        })?;
        let (rows, meta) = Meta::paginate(page, rows);
        Ok(Json(SearchResults {
            messages: rows.into_iter().map(Into::into).collect(),
            meta,
        }))
    }
}
