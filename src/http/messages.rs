//! `/api/v1/applications/{token}/chats/{number}/messages`: creation is write-behind.

use crate::http::answers::{CreateMessage, Errors, Listing, Lookup, Update};
use poem::web::Data;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};

use super::applications::Deleted;
use super::body::{FlatOrWrapped, JsonBody};
use super::chats::CreatedNumber;
use super::fields::IdempotencyKey;
use super::reads::{self, Via};
use super::schemas::{Created, Message, MessageInput, MessageList, NumberedMeta};
use super::{ApiTags, AppState, lookup};
use crate::domain::{MessageBody, Window, is_plausible_token};
use crate::http::error::ApiError;
use crate::store;
use crate::store::replicas::ReadScope;
use crate::store::search::IndexOp;
use crate::writebehind::Idempotency;
use crate::writebehind::live::EventKind;

/// Operations on messages.
pub struct MessagesApi;

/// 200 with a page of messages.
#[derive(ApiResponse)]
pub enum MessagePage {
    /// A page of messages, by number.
    #[oai(status = 200)]
    Ok(
        Json<MessageList>,
        /// The next page (RFC 8288: `<…>; rel="next"`), absent on the last.
        #[oai(header = "Link")]
        Option<String>,
    ),
}

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Messages")]
impl MessagesApi {
    /// Create a message
    ///
    /// Answers at once with the message's number; the message is written to
    /// the database in the background. It can be read, edited and deleted
    /// right away. Works in a chat created a moment ago.
    #[oai(path = "/applications/:token/chats/:number/messages", method = "post")]
    async fn create(
        &self,
        state: Data<&AppState>,
        /// The application's token.
        token: Path<String>,
        /// The chat's number.
        number: Path<i64>,
        /// Makes a retry safe: a request with the same key in the same
        /// application within `IDEMPOTENCY_TTL_SECS` (default a day) gets the
        /// same answer and creates nothing; the same key with another body or
        /// chat is a 422. A UUID, for example.
        #[oai(name = "Idempotency-Key")]
        idempotency_key: Header<Option<IdempotencyKey>>,
        input: JsonBody<FlatOrWrapped<MessageInput>>,
    ) -> Result<CreatedNumber, Errors<CreateMessage>> {
        let body = MessageBody::parse(input.0.0.body.0, state.config.max_message_bytes)?;
        if !is_plausible_token(&token.0) || number.0 < 1 {
            return Err(ApiError::not_found("no such application or chat").into());
        }
        let idem = idempotency_key.0.map(|k| {
            Idempotency::new(
                &[k.0.as_bytes()],
                &[
                    b"POST messages",
                    number.0.to_string().as_bytes(),
                    body.as_str().as_bytes(),
                ],
            )
        });
        match state
            .write_behind
            .create_message(&token.0, number.0, body.as_str(), idem.as_ref())
            .await?
        {
            Some(a) => Ok(CreatedNumber::Created(Json(Created { number: a.number }))),
            None => Err(ApiError::not_found(format!(
                "no chat number {} in this application",
                number.0
            ))
            .into()),
        }
    }

    /// List messages
    ///
    /// By number. Messages created in the last flush interval may not be
    /// listed yet. Pages by `page`/`per_page`, or after a cursor by
    /// `after`/`limit` (the number of the last message you have;
    /// `meta.next_after` and the `Link` header give the next one), whose cost
    /// does not grow with its depth. With both kinds given, the cursor
    /// wins (`page` is ignored).
    #[oai(path = "/applications/:token/chats/:number/messages", method = "get")]
    #[allow(clippy::too_many_arguments)]
    async fn list(
        &self,
        state: Data<&AppState>,
        /// The application's token.
        token: Path<String>,
        /// The chat's number.
        number: Path<i64>,
        /// Page number, from 1.
        #[oai(validator(minimum(value = "1"), maximum(value = "100000")))]
        page: Query<Option<i64>>,
        /// Items per page, 1 to 100 (default 20).
        #[oai(validator(minimum(value = "1"), maximum(value = "100")))]
        per_page: Query<Option<i64>>,
        /// Cursor: list the messages numbered above this one (0: from the
        /// first).
        #[oai(validator(minimum(value = "0")))]
        after: Query<Option<i64>>,
        /// Items per page after a cursor, 1 to 100 (default `per_page`, else
        /// 20).
        #[oai(validator(minimum(value = "1"), maximum(value = "100")))]
        limit: Query<Option<i64>>,
    ) -> Result<MessagePage, Errors<Listing>> {
        let window = Window::parse(page.0, per_page.0, after.0, limit.0)?;
        let app = lookup::application(&state, &token.0).await?;
        let chat = lookup::chat(&state, &app, number.0, Via::Replica).await?;
        let scope = ReadScope::Chat(chat.id);
        let chat_id = chat.id;
        let rows = reads::read(&state, &app.token, scope, Via::Replica, |pool| async move {
            store::messages::list(&pool, chat_id, window).await
        })
        .await?;
        let (rows, meta) = NumberedMeta::paginate(window, rows, |r| r.number);
        let link = meta.link_next(&format!(
            "/api/v1/applications/{}/chats/{}/messages",
            app.token, chat.number
        ));
        Ok(MessagePage::Ok(
            Json(MessageList {
                messages: rows.into_iter().map(Into::into).collect(),
                meta,
            }),
            link,
        ))
    }

    /// Get a message
    #[oai(
        path = "/applications/:token/chats/:number/messages/:message_number",
        method = "get"
    )]
    async fn get(
        &self,
        state: Data<&AppState>,
        /// The application's token.
        token: Path<String>,
        /// The chat's number.
        number: Path<i64>,
        /// The message's number.
        message_number: Path<i64>,
    ) -> Result<Json<Message>, Errors<Lookup>> {
        let app = lookup::application(&state, &token.0).await?;
        let chat = lookup::chat(&state, &app, number.0, Via::Replica).await?;
        Ok(Json(
            lookup::message(&state, &app, &chat, message_number.0, Via::Replica)
                .await?
                .into(),
        ))
    }

    /// Edit a message
    #[oai(
        path = "/applications/:token/chats/:number/messages/:message_number",
        method = "put"
    )]
    async fn update(
        &self,
        state: Data<&AppState>,
        /// The application's token.
        token: Path<String>,
        /// The chat's number.
        number: Path<i64>,
        /// The message's number.
        message_number: Path<i64>,
        input: JsonBody<FlatOrWrapped<MessageInput>>,
    ) -> Result<Json<Message>, Errors<Update>> {
        let body = MessageBody::parse(input.0.0.body.0, state.config.max_message_bytes)?;
        let app = lookup::application(&state, &token.0).await?;
        let chat = lookup::chat(&state, &app, number.0, Via::Primary).await?;
        let msg = lookup::message(&state, &app, &chat, message_number.0, Via::Primary).await?;
        let now = crate::domain::now();
        let (live, gtid) = state
            .reads
            .observed(async |c| store::messages::update_body(c, msg.id, body.as_str(), now).await)
            .await?;
        reads::keep_marks(&state, &app.token, &[ReadScope::Chat(chat.id)], gtid).await;
        if !live {
            return Err(ApiError::not_found(format!(
                "no message number {} in this chat",
                msg.number
            ))
            .into());
        }
        state
            .queue_index(
                &app.token,
                IndexOp::Sync {
                    messages: vec![(chat.id, msg.number)],
                },
            )
            .await;
        let updated = store::messages::find(&state.pool, chat.id, msg.number)
            .await?
            .filter(|m| m.deleted_at.is_none())
            .ok_or_else(|| {
                ApiError::not_found(format!("no message number {} in this chat", msg.number))
            })?;
        let updated: Message = updated.into();
        state
            .publish(
                &app.token,
                chat.number,
                EventKind::MessageUpdated {
                    number: updated.number,
                    body: updated.body.clone(),
                    updated_at_us: updated.updated_at.timestamp_micros(),
                },
            )
            .await;
        Ok(Json(updated))
    }

    /// Delete a message
    ///
    /// Its number is not reused.
    #[oai(
        path = "/applications/:token/chats/:number/messages/:message_number",
        method = "delete"
    )]
    async fn delete(
        &self,
        state: Data<&AppState>,
        /// The application's token.
        token: Path<String>,
        /// The chat's number.
        number: Path<i64>,
        /// The message's number.
        message_number: Path<i64>,
    ) -> Result<Deleted, Errors<Lookup>> {
        let app = lookup::application(&state, &token.0).await?;
        let chat = lookup::chat(&state, &app, number.0, Via::Primary).await?;
        let msg = lookup::message(&state, &app, &chat, message_number.0, Via::Primary).await?;
        let (deleted, gtid) = state
            .reads
            .observed(async |c| store::messages::delete(c, msg.id, crate::domain::now()).await)
            .await?;
        reads::keep_marks(&state, &app.token, &[ReadScope::Chat(chat.id)], gtid).await;
        if deleted {
            state
                .publish(
                    &app.token,
                    chat.number,
                    EventKind::MessageDeleted { number: msg.number },
                )
                .await;
        }
        state
            .queue_index(
                &app.token,
                IndexOp::Sync {
                    messages: vec![(chat.id, msg.number)],
                },
            )
            .await;
        if let Err(e) = state.marks.mark(&app.token, &[], &[chat.id]).await {
            tracing::warn!(error = %e, "could not mark the chat's messages_count dirty");
        }
        Ok(Deleted::NoContent)
    }
}
