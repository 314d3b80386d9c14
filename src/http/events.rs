//! `GET /api/v1/applications/{token}/chats/{number}/events`: a chat's live
//! events as server-sent events (see [`crate::writebehind::live`]).

use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use poem::web::Data;
use poem::web::sse::Event;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::EventStream;
use poem_openapi::types::ToJSON;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::answers::{Errors, Streaming};
use super::reads::Via;
use super::{ApiTags, AppState, lookup};
use crate::http::error::ApiError;
use crate::writebehind::live::{Delivery, EventId, EventKind, LiveError, LiveEvent};

/// The live event stream.
pub struct EventsApi;

/// One event of a chat's stream: the SSE `data:` line, as JSON. The SSE
/// `event:` line names its type, and its `id:` orders it among the chat's
/// events (send it back as `Last-Event-ID` to resume).
///
/// - `message.created`: `number`, `body`, `created_at`;
/// - `message.updated`: `number`, `body`, `updated_at`;
/// - `message.deleted`: `number`;
/// - `chat.deleted`: `number` (the chat's); the stream ends;
/// - `reset`: `reason`. Events before it may be missing (the resume id is
///   older than what is kept, or the stream was lost with Redis): re-list
///   the chat's messages with the cursor API, then go on with the events
///   after this one.
#[derive(Debug, Clone, Default, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct ChatEvent {
    /// The message's number (`message.*`), or the chat's (`chat.deleted`).
    pub number: Option<i64>,
    /// The message's body (`message.created`, `message.updated`).
    pub body: Option<String>,
    /// Creation time, RFC 3339 UTC (`message.created`).
    pub created_at: Option<String>,
    /// Edit time, RFC 3339 UTC (`message.updated`).
    pub updated_at: Option<String>,
    /// Why events may be missing (`reset`).
    pub reason: Option<String>,
    /// How it is framed: `retry:`, or the event's id and type.
    #[oai(skip)]
    pub frame: Frame,
}

/// How a [`ChatEvent`] is written on the stream.
#[derive(Debug, Clone, Default)]
pub enum Frame {
    /// `retry: {ms}` (the first frame).
    #[default]
    Retry,
    /// `id:`, `event:` and `data:`.
    Event {
        /// The SSE id.
        id: String,
        /// The SSE event type.
        kind: &'static str,
        /// The `data:` JSON, made once per event for every subscriber.
        data: Arc<str>,
    },
}

/// 200 with the chat's event stream.
#[derive(ApiResponse)]
pub enum Events {
    /// `text/event-stream`: a `retry:` line, then the chat's events as they
    /// happen (each a `ChatEvent`), and a comment line every
    /// `STREAM_HEARTBEAT_SECS`. It ends after `chat.deleted`, on shutdown,
    /// or when the client reads too slowly (`LIVE_SUBSCRIBER_BUFFER`): then
    /// resume with `Last-Event-ID`.
    #[oai(status = 200)]
    Ok(EventStream<BoxStream<'static, ChatEvent>>),
}

/// RFC 3339 UTC, in microseconds, of `us` µs since the epoch.
fn rfc3339(us: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
}

/// The framing of one live event of chat `chat`, its JSON made once for
/// every subscriber of the chat (the first one to send it makes it); its
/// id is the subscriber's own.
fn chat_event(delivery: Delivery, chat: i64) -> ChatEvent {
    let event: Arc<LiveEvent> = delivery.event;
    let data = event
        .rendered
        .get_or_init(|| content(&event, chat).to_json_string().into())
        .clone();
    ChatEvent {
        frame: Frame::Event {
            id: delivery.id.to_string(),
            kind: event.kind.name(),
            data,
        },
        ..Default::default()
    }
}

/// The JSON content of one live event of chat `chat`.
fn content(event: &LiveEvent, chat: i64) -> ChatEvent {
    let mut out = ChatEvent::default();
    match event.kind.clone() {
        EventKind::MessageCreated {
            number,
            body,
            created_at_us,
        } => {
            out.number = Some(number);
            out.body = Some(body);
            out.created_at = rfc3339(created_at_us);
        }
        EventKind::MessageUpdated {
            number,
            body,
            updated_at_us,
        } => {
            out.number = Some(number);
            out.body = Some(body);
            out.updated_at = rfc3339(updated_at_us);
        }
        EventKind::MessageDeleted { number } => out.number = Some(number),
        EventKind::ChatDeleted => out.number = Some(chat),
        EventKind::Reset { reason } => out.reason = Some(reason.to_string()),
    }
    out
}

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Chats")]
impl EventsApi {
    /// Follow a chat's events
    ///
    /// Server-sent events (`text/event-stream`, as browsers' `EventSource`
    /// reads them): `message.created` as soon as a create is acknowledged
    /// (before it is stored), `message.updated`, `message.deleted`,
    /// `chat.deleted`, and `reset` (see the `ChatEvent` schema). Each event's
    /// `id:` orders it among the chat's events; reconnecting with
    /// `Last-Event-ID` (or `?after=`) delivers every event after it, in
    /// order and once each, then the live ones. A resume older than what the
    /// chat's stream keeps (`LIVE_STREAM_MAXLEN` events, about an hour after
    /// the last subscriber left) replays the creates it missed from the
    /// database and the write-behind buffer (`message.created` each, by
    /// number, with its current body; at most `LIVE_REPLAY_MAX`), when no
    /// edit or delete happened since; otherwise, or after the stream was
    /// lost with Redis, it gets a `reset` first. At most
    /// `MAX_STREAMS_PER_APPLICATION` streams per application, over every
    /// instance (429).
    #[oai(path = "/applications/:token/chats/:number/events", method = "get")]
    async fn events(
        &self,
        state: Data<&AppState>,
        /// The application's token.
        token: Path<String>,
        /// The chat's number.
        number: Path<i64>,
        /// The id of the last event the client has (browsers send it on
        /// reconnecting): the stream resumes after it. Wins over `after`;
        /// empty is none.
        #[oai(name = "Last-Event-ID")]
        last_event_id: Header<Option<String>>,
        /// The id of the last event the client has, as `Last-Event-ID`.
        after: Query<Option<String>>,
    ) -> Result<Events, Errors<Streaming>> {
        let resume = match last_event_id
            .0
            .filter(|id| !id.trim().is_empty())
            .or(after.0.filter(|id| !id.trim().is_empty()))
        {
            None => None,
            Some(id) => Some(EventId::parse(id.trim()).ok_or_else(|| {
                ApiError::unprocessable(
                    "Last-Event-ID or after: not an event id of this API ({generation}-{ms}-{seq})",
                )
            })?),
        };
        let app = lookup::application(&state, &token.0).await?;
        let chat = lookup::chat(&state, &app, number.0, Via::Primary).await?;
        let replayer = super::replay::replayer(&state, &app, &chat);
        let subscription = state
            .live
            .subscribe(&app.token, chat.number, resume, replayer)
            .await
            .map_err(|e| match e {
                LiveError::TooMany(max) => ApiError::too_many(
                    format!(
                        "this application already has {max} event streams open \
                         (MAX_STREAMS_PER_APPLICATION); close one, or retry later"
                    ),
                    5,
                    max as u32,
                ),
                LiveError::Closing => ApiError::unavailable("the service is shutting down", 1),
                LiveError::Unavailable(why) => {
                    tracing::warn!(error = %why, "could not open a live event stream");
                    ApiError::unavailable("Redis is unavailable", 1)
                }
            })?;
        // Looked up again now that the chat is watched: a delete that
        // committed before the flag was set appended no `chat.deleted`
        // (no one watched), so it is seen here instead (404).
        let still = crate::store::chats::find(&state.pool, app.id, chat.number)
            .await
            .map_err(ApiError::from)?;
        if still.is_none_or(|c| c.deleted_at.is_some()) {
            return Err(ApiError::not_found(format!(
                "no chat number {} in this application",
                chat.number
            ))
            .into());
        }
        let chat_number = chat.number;
        let retry = ChatEvent::default();
        let events = futures_util::stream::unfold(subscription, move |mut sub| async move {
            sub.next().await.map(|e| (chat_event(e, chat_number), sub))
        });
        let retry_ms = state.config.stream_retry_ms;
        let stream = futures_util::stream::once(async move { retry })
            .chain(events)
            .boxed();
        Ok(Events::Ok(
            EventStream::new(stream)
                .keep_alive(state.config.stream_heartbeat)
                .to_event(move |e| match &e.frame {
                    Frame::Retry => Event::retry(retry_ms),
                    Frame::Event { id, kind, data } => Event::message(data.to_string())
                        .id(id.clone())
                        .event_type(*kind),
                }),
        ))
    }
}
