//! `GET /api/v1/applications/{token}/chats/{number}/messages/search`.

use poem::web::Data;
use poem_openapi::OpenApi;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;

use super::schemas::{Meta, SearchResults};
use super::{ApiTags, AppState, lookup};
use crate::domain::Page;
use crate::error::ApiError;
use crate::store::search::{MAX_QUERY_BYTES, SearchError};

/// Full-text search.
pub struct SearchApi;

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Messages")]
impl SearchApi {
    /// Search messages of a chat
    ///
    /// Full-text search of the chat's message bodies, best match first, each
    /// hit with its relevance `score` (higher is better); only messages of
    /// this chat are ever returned. With Meilisearch (when the
    /// service has `MEILI_URL`) matching is typo-tolerant and works in any
    /// script, and results may lag new messages by about a second after
    /// their flush; without it, MariaDB's FULLTEXT index matches whole words
    /// of 3 or more characters, ignores stopwords, and has no typo tolerance.
    #[oai(
        path = "/applications/:token/chats/:number/messages/search",
        method = "get"
    )]
    async fn search(
        &self,
        state: Data<&AppState>,
        /// The application's token.
        token: Path<String>,
        /// The chat's number.
        number: Path<i64>,
        /// What to look for: 1 to 512 bytes, at least one character not a
        /// space, tab, CR or LF.
        q: Query<crate::http::text::NonBlank>,
        /// Page number, from 1.
        #[oai(validator(minimum(value = "1"), maximum(value = "100000")))]
        page: Query<Option<i64>>,
        /// Items per page, 1 to 100 (default 20).
        #[oai(validator(minimum(value = "1"), maximum(value = "100")))]
        per_page: Query<Option<i64>>,
    ) -> Result<Json<SearchResults>, ApiError> {
        let query = q.0.0;
        if crate::domain::is_blank(&query) {
            return Err(ApiError::unprocessable("q must not be empty"));
        }
        if query.len() > MAX_QUERY_BYTES {
            return Err(ApiError::unprocessable(format!(
                "q is {} bytes long; the maximum is {MAX_QUERY_BYTES}",
                query.len()
            )));
        }
        let page = Page::parse(page.0, per_page.0)?;
        let app = lookup::application(&state, &token.0).await?;
        let chat = lookup::chat(&state, &app, number.0).await?;
        let rows = state
            .search
            .search(chat.id, &query, page)
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
