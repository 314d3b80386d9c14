//! `/api/v1/applications/{token}/chats`: creation is write-behind.

use crate::http::answers::{CreateChat, Errors, Listing, Lookup};
use poem::web::Data;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};

use super::applications::Deleted;
use super::fields::IdempotencyKey;
use super::reads::{self, Via};
use super::schemas::{Chat, ChatList, Created, NumberedMeta};
use super::{ApiTags, AppState, lookup};
use crate::domain::{Window, is_plausible_token};
use crate::http::error::ApiError;
use crate::store;
use crate::store::replicas::ReadScope;
use crate::store::search::IndexOp;
use crate::writebehind::Idempotency;

/// Operations on chats.
pub struct ChatsApi;

/// 200 with a page of chats.
#[derive(ApiResponse)]
pub enum ChatPage {
    /// A page of chats, by number.
    #[oai(status = 200)]
    Ok(
        Json<ChatList>,
        /// The next page (RFC 8288: `<…>; rel="next"`), absent on the last.
        #[oai(header = "Link")]
        Option<String>,
    ),
}

/// 201 with the number of the new chat or message.
#[derive(ApiResponse)]
pub enum CreatedNumber {
    /// Created: the number is final and the record will be stored.
    #[oai(status = 201)]
    Created(Json<Created>),
}

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Chats")]
impl ChatsApi {
    /// Create a chat
    ///
    /// Answers at once with the chat's number; the chat is written to the
    /// database in the background. It can be used (messages, GET) right away.
    #[oai(path = "/applications/:token/chats", method = "post")]
    async fn create(
        &self,
        state: Data<&AppState>,
        /// The application's token.
        token: Path<String>,
        /// Makes a retry safe: a request with the same key in the same
        /// application within `IDEMPOTENCY_TTL_SECS` (default a day) gets the
        /// same answer and creates nothing. A UUID, for example.
        #[oai(name = "Idempotency-Key")]
        idempotency_key: Header<Option<IdempotencyKey>>,
    ) -> Result<CreatedNumber, Errors<CreateChat>> {
        if !is_plausible_token(&token.0) {
            return Err(ApiError::not_found("no application with this token").into());
        }
        let idem = idempotency_key
            .0
            .map(|k| Idempotency::new(&[k.0.as_bytes()], &[b"POST chats"]));
        match state
            .write_behind
            .create_chat(&token.0, idem.as_ref())
            .await?
        {
            Some(a) => Ok(CreatedNumber::Created(Json(Created { number: a.number }))),
            None => Err(ApiError::not_found("no application with this token").into()),
        }
    }

    /// List chats
    ///
    /// By number. Chats created in the last flush interval may not be listed
    /// yet. Pages by `page`/`per_page`, or after a cursor by `after`/`limit`
    /// (the number of the last chat you have; `meta.next_after` and the
    /// `Link` header give the next one), whose cost does not grow with its
    /// depth. With both kinds given, the cursor wins (`page` is ignored).
    #[oai(path = "/applications/:token/chats", method = "get")]
    #[allow(clippy::too_many_arguments)]
    async fn list(
        &self,
        state: Data<&AppState>,
        /// The application's token.
        token: Path<String>,
        /// Page number, from 1.
        #[oai(validator(minimum(value = "1"), maximum(value = "100000")))]
        page: Query<Option<i64>>,
        /// Items per page, 1 to 100 (default 20).
        #[oai(validator(minimum(value = "1"), maximum(value = "100")))]
        per_page: Query<Option<i64>>,
        /// Cursor: list the chats numbered above this one (0: from the first).
        #[oai(validator(minimum(value = "0")))]
        after: Query<Option<i64>>,
        /// Items per page after a cursor, 1 to 100 (default `per_page`, else
        /// 20).
        #[oai(validator(minimum(value = "1"), maximum(value = "100")))]
        limit: Query<Option<i64>>,
    ) -> Result<ChatPage, Errors<Listing>> {
        let window = Window::parse(page.0, per_page.0, after.0, limit.0)?;
        let app = lookup::application(&state, &token.0).await?;
        let scope = ReadScope::Application(app.id);
        let app_id = app.id;
        let rows = reads::read(&state, &app.token, scope, Via::Replica, |pool| async move {
            store::chats::list(&pool, app_id, window).await
        })
        .await?;
        let (rows, meta) = NumberedMeta::paginate(window, rows, |r| r.number);
        let link = meta.link_next(&format!("/api/v1/applications/{}/chats", app.token));
        Ok(ChatPage::Ok(
            Json(ChatList {
                chats: rows.into_iter().map(Into::into).collect(),
                meta,
            }),
            link,
        ))
    }

    /// Get a chat
    #[oai(path = "/applications/:token/chats/:number", method = "get")]
    async fn get(
        &self,
        state: Data<&AppState>,
        /// The application's token.
        token: Path<String>,
        /// The chat's number.
        number: Path<i64>,
    ) -> Result<Json<Chat>, Errors<Lookup>> {
        let app = lookup::application(&state, &token.0).await?;
        Ok(Json(
            lookup::chat(&state, &app, number.0, Via::Replica)
                .await?
                .into(),
        ))
    }

    /// Delete a chat
    ///
    /// Removes its messages, including those still buffered. Its number is
    /// not reused. No message in it is acknowledged after this answers 204;
    /// when Redis cannot be reached, it answers 503 and deletes nothing.
    #[oai(path = "/applications/:token/chats/:number", method = "delete")]
    async fn delete(
        &self,
        state: Data<&AppState>,
        /// The application's token.
        token: Path<String>,
        /// The chat's number.
        number: Path<i64>,
    ) -> Result<Deleted, Errors<Lookup>> {
        let app = lookup::application(&state, &token.0).await?;
        let chat = lookup::chat(&state, &app, number.0, Via::Primary).await?;
        // Tombstone first, in the step that stops new numbers: no message can
        // be acknowledged after this answers. No tombstone, no delete (503).
        // Messages still buffered for this chat are dropped at flush time.
        let buffer = state.write_behind.buffer();
        let tombstone = buffer.tombstone_chat(&app.token, chat.number).await?;
        let deleted = state
            .reads
            .observed(async |c| store::chats::delete(c, chat.id, crate::domain::now()).await)
            .await;
        let gtid = match deleted {
            Ok((_, gtid)) => gtid,
            Err(e) => {
                if let Err(undo) = buffer.untombstone(&tombstone).await {
                    tracing::error!(error = %undo, "the delete failed and its Redis tombstone could not be lifted: messages to this chat answer 404 until it is");
                }
                return Err(e.into());
            }
        };
        let scopes = [ReadScope::Application(app.id), ReadScope::Chat(chat.id)];
        reads::keep_marks(&state, &app.token, &scopes, gtid).await;
        if let Err(e) = buffer.commit_tombstone(&tombstone).await {
            tracing::warn!(error = %e, "the delete committed; its Redis tombstone stays, marked in flight");
        }
        state
            .publish(
                &app.token,
                chat.number,
                crate::writebehind::live::EventKind::ChatDeleted,
            )
            .await;
        state
            .queue_index(&app.token, IndexOp::DeleteChat { chat_id: chat.id })
            .await;
        if let Err(e) = state.marks.mark(&app.token, &[app.id], &[]).await {
            tracing::warn!(error = %e, "could not mark the application's chats_count dirty");
        }
        Ok(Deleted::NoContent)
    }
}
