//! `GET /api/v1/admin/chats` and `/admin/messages`: live chats and messages of
//! every application, newest first, with cursor pagination (see
//! [`crate::store::listings`]). Only stored records appear: records still in
//! the buffer show up after their flush.

use crate::http::answers::{Errors, OperatorQuery};
use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::Query;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use super::AdminKey;
use crate::http::error::ApiError;
use crate::http::fields::Hex128;
use crate::http::{ApiTags, AppState};
use crate::store::listings::{self, Cursor};

/// Items per page when `per_page` is omitted.
const DEFAULT_PER_PAGE: i64 = 20;

/// A chat, with the token of its application.
#[derive(Debug, Clone, Object, serde::Serialize, serde::Deserialize)]
pub struct AdminChat {
    /// Token of the owning application.
    pub application_token: String,
    /// Number within the application.
    pub number: i64,
    /// Number of messages; refreshed periodically, so it may lag.
    pub messages_count: u64,
    /// Creation time, RFC 3339 UTC.
    #[oai(serialize_with = "crate::http::schemas::micros")]
    pub created_at: DateTime<Utc>,
    /// Last update time, RFC 3339 UTC.
    #[oai(serialize_with = "crate::http::schemas::micros")]
    pub updated_at: DateTime<Utc>,
}

/// A message, with the token of its application and its chat's number.
#[derive(Debug, Clone, Object, serde::Serialize, serde::Deserialize)]
pub struct AdminMessage {
    /// Token of the application that owns the chat.
    pub application_token: String,
    /// Number of the chat within its application.
    pub chat_number: i64,
    /// Number within the chat.
    pub number: i64,
    /// Body, byte for byte.
    pub body: String,
    /// Creation time, RFC 3339 UTC.
    #[oai(serialize_with = "crate::http::schemas::micros")]
    pub created_at: DateTime<Utc>,
    /// Last edit time, RFC 3339 UTC.
    #[oai(serialize_with = "crate::http::schemas::micros")]
    pub updated_at: DateTime<Utc>,
}

/// Where a cursor-paged list continues.
#[derive(Debug, Clone, Object, serde::Serialize, serde::Deserialize)]
pub struct CursorMeta {
    /// Items per page (1 to 100).
    pub per_page: u32,
    /// Pass it as `after` to get the next page; null on the last page.
    #[oai(nullable)]
    pub next_cursor: Option<String>,
}

/// A page of chats across applications, newest first.
#[derive(Debug, Clone, Object, serde::Serialize, serde::Deserialize)]
pub struct AdminChatList {
    /// Chats, newest first.
    pub chats: Vec<AdminChat>,
    /// Pagination.
    pub meta: CursorMeta,
}

/// A page of messages across applications, newest first.
#[derive(Debug, Clone, Object, serde::Serialize, serde::Deserialize)]
pub struct AdminMessageList {
    /// Messages, newest first.
    pub messages: Vec<AdminMessage>,
    /// Pagination.
    pub meta: CursorMeta,
}

/// Checks `per_page` and reads the cursor. Errors: 422 when `per_page` is
/// out of 1..=100 (a malformed cursor never gets here: it fails to parse).
fn parse(after: Option<Hex128>, per_page: Option<i64>) -> Result<(Option<Cursor>, i64), ApiError> {
    let per_page = per_page.unwrap_or(DEFAULT_PER_PAGE);
    if !(1..=100).contains(&per_page) {
        return Err(ApiError::unprocessable(
            "per_page must be between 1 and 100",
        ));
    }
    Ok((after.map(|a| Cursor::from_bytes(a.bytes())), per_page))
}

/// Trims rows fetched with `LIMIT per_page + 1` and makes the next cursor.
fn page<T>(mut rows: Vec<T>, per_page: i64, cursor: impl Fn(&T) -> Cursor) -> (Vec<T>, CursorMeta) {
    let more = rows.len() as i64 > per_page;
    rows.truncate(per_page as usize);
    let next_cursor = more
        .then(|| rows.last().map(|r| cursor(r).encode()))
        .flatten();
    (
        rows,
        CursorMeta {
            per_page: per_page as u32,
            next_cursor,
        },
    )
}

/// Listings across applications.
pub struct ListingsAdminApi;

#[OpenApi(prefix_path = "/api/v1/admin", tag = "ApiTags::Admin")]
impl ListingsAdminApi {
    /// List chats of every application
    ///
    /// Stored, live chats of all applications, newest first (by creation
    /// time), each with its application's token. Page with `after`, the
    /// previous page's `meta.next_cursor`.
    #[oai(path = "/chats", method = "get")]
    async fn chats(
        &self,
        state: Data<&AppState>,
        _key: AdminKey,
        /// Cursor: `meta.next_cursor` of the previous page; omitted: the newest.
        after: Query<Option<Hex128>>,
        /// Items per page, 1 to 100 (default 20).
        #[oai(validator(minimum(value = "1"), maximum(value = "100")))]
        per_page: Query<Option<i64>>,
    ) -> Result<Json<AdminChatList>, Errors<OperatorQuery>> {
        let (after, per_page) = parse(after.0, per_page.0)?;
        let rows = crate::http::reads::read_unscoped(&state, |pool| async move {
            listings::chats(&pool, after, per_page + 1).await
        })
        .await?;
        let (rows, meta) = page(rows, per_page, |r| Cursor {
            created_at: r.created_at,
            id: r.id,
        });
        Ok(Json(AdminChatList {
            chats: rows
                .into_iter()
                .map(|r| AdminChat {
                    application_token: r.application_token,
                    number: r.number,
                    messages_count: r.messages_count,
                    created_at: r.created_at.and_utc(),
                    updated_at: r.updated_at.and_utc(),
                })
                .collect(),
            meta,
        }))
    }

    /// List messages of every application
    ///
    /// Stored, live messages of all applications, newest first (by creation
    /// time), each with its application's token and chat number. Page with
    /// `after`, the previous page's `meta.next_cursor`.
    #[oai(path = "/messages", method = "get")]
    async fn messages(
        &self,
        state: Data<&AppState>,
        _key: AdminKey,
        /// Cursor: `meta.next_cursor` of the previous page; omitted: the newest.
        after: Query<Option<Hex128>>,
        /// Items per page, 1 to 100 (default 20).
        #[oai(validator(minimum(value = "1"), maximum(value = "100")))]
        per_page: Query<Option<i64>>,
    ) -> Result<Json<AdminMessageList>, Errors<OperatorQuery>> {
        let (after, per_page) = parse(after.0, per_page.0)?;
        let rows = crate::http::reads::read_unscoped(&state, |pool| async move {
            listings::messages(&pool, after, per_page + 1).await
        })
        .await?;
        let (rows, meta) = page(rows, per_page, |r| Cursor {
            created_at: r.created_at,
            id: r.id,
        });
        Ok(Json(AdminMessageList {
            messages: rows
                .into_iter()
                .map(|r| AdminMessage {
                    application_token: r.application_token,
                    chat_number: r.chat_number,
                    number: r.number,
                    body: r.body,
                    created_at: r.created_at.and_utc(),
                    updated_at: r.updated_at.and_utc(),
                })
                .collect(),
            meta,
        }))
    }
}
