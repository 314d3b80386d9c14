//! Resolving tokens and numbers to stored rows, shared by the handlers.
//!
//! A chat or message that has a number but is still buffered is waited for
//! (read-your-writes, [`crate::writebehind::WriteBehind::await_stored`]), so
//! GET, PUT and DELETE behave as if it were already stored.

use crate::domain::is_plausible_token;
use crate::domain::record::{chat_lost_field, message_lost_field};
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::reads::{self, Via};
use crate::store::replicas::ReadScope;
use crate::store::{self, applications::AppRow, chats::ChatRow, messages::MessageRow};
use crate::writebehind::{BufferError, CounterScope};

/// The application with `token`. Errors: 404 if none.
pub async fn application(state: &AppState, token: &str) -> Result<AppRow, ApiError> {
    if !is_plausible_token(token) {
        return Err(no_application());
    }
    store::applications::find(&state.pool, token)
        .await?
        .ok_or_else(no_application)
}

fn no_application() -> ApiError {
    ApiError::not_found("no application with this token")
}

fn no_chat(number: i64) -> ApiError {
    ApiError::not_found(format!("no chat number {number} in this application"))
}

fn no_message(number: i64) -> ApiError {
    ApiError::not_found(format!("no message number {number} in this chat"))
}

/// Errors with [`BufferError::Lost`] when the record under `field` was
/// dead-lettered: no flush will store it, so the lookup answers at once.
async fn not_lost(
    buffer: &crate::writebehind::Buffer,
    token: &str,
    field: String,
) -> Result<(), BufferError> {
    match buffer.lost_reason(token, field).await? {
        Some(reason) => Err(BufferError::Lost(reason)),
        None => Ok(()),
    }
}

/// Whether `number` of `scope`, not in MariaDB yet, is on its way there:
/// whether its counter handed it out (`allocated`). Errors with
/// [`BufferError::Skipped`] when it lies in a range its counter skipped at a
/// restart (recorded in MariaDB, see [`crate::writebehind::numbering`]), and
/// with [`BufferError::Lost`] when its record (field `lost_field` of the
/// lost hash) was dead-lettered: then no flush will store it.
async fn on_its_way(
    state: &AppState,
    app: &AppRow,
    scope: CounterScope,
    number: i64,
    allocated: bool,
    lost_field: impl FnOnce() -> String,
) -> Result<bool, BufferError> {
    let write_behind = &state.write_behind;
    if !allocated {
        // Beyond what Redis's counter handed out, or no counter: a counter
        // that Redis lost with this number and that no create used since
        // would never record the number as skipped (I2), so the lookup
        // checks the counter as a create would, restarting it if in doubt.
        write_behind.settle(&app.token, app.id, scope).await?;
    }
    if write_behind
        .numbering()
        .is_skipped(&app.token, app.id, scope, number)
        .await?
    {
        return Err(BufferError::Skipped);
    }
    if allocated {
        not_lost(write_behind.buffer(), &app.token, lost_field()).await?;
    }
    Ok(allocated)
}

/// The live chat `number` of `app`, waiting for its flush if it is buffered.
/// Read `via` a replica (a GET) or the primary (inside a write); a row the
/// replica does not have yet is looked for on the primary, as a buffered
/// one is. Errors: 404 if none, or if its record was dead-lettered (saying
/// so); 503 if buffered and not stored in time or Redis down.
pub async fn chat(
    state: &AppState,
    app: &AppRow,
    number: i64,
    via: Via,
) -> Result<ChatRow, ApiError> {
    if number < 1 {
        return Err(no_chat(number));
    }
    let scope = ReadScope::Application(app.id);
    let app_id = app.id;
    let found = reads::find(state, &app.token, scope, via, |pool| async move {
        store::chats::find(&pool, app_id, number).await
    })
    .await?;
    let row = match found {
        Some(c) => Some(c),
        None => {
            let buffer = state.write_behind.buffer();
            state
                .write_behind
                .await_stored(
                    || async {
                        let counters = buffer.counters(&app.token, number).await?;
                        on_its_way(
                            state,
                            app,
                            CounterScope::Chats,
                            number,
                            counters.chat_allocated,
                            || chat_lost_field(app.id, number),
                        )
                        .await
                    },
                    || store::chats::find(&state.pool, app.id, number),
                )
                .await?
        }
    };
    row.filter(|c| c.deleted_at.is_none())
        .ok_or_else(|| no_chat(number))
}

/// The live message `number` of chat `chat_number`, waiting for its flush if
/// it is buffered; read `via` as for [`chat`]. Errors: 404 if none, 503 as
/// for [`chat`].
pub async fn message(
    state: &AppState,
    app: &AppRow,
    chat: &ChatRow,
    number: i64,
    via: Via,
) -> Result<MessageRow, ApiError> {
    if number < 1 {
        return Err(no_message(number));
    }
    let scope = ReadScope::Chat(chat.id);
    let chat_id = chat.id;
    let found = reads::find(state, &app.token, scope, via, |pool| async move {
        store::messages::find(&pool, chat_id, number).await
    })
    .await?;
    let row = match found {
        Some(m) => Some(m),
        None => {
            let buffer = state.write_behind.buffer();
            state
                .write_behind
                .await_stored(
                    || async {
                        let counters = buffer.counters(&app.token, chat.number).await?;
                        on_its_way(
                            state,
                            app,
                            CounterScope::Messages {
                                chat_number: chat.number,
                            },
                            number,
                            counters.last_message.is_some_and(|last| number <= last),
                            || message_lost_field(app.id, chat.number, number),
                        )
                        .await
                    },
                    || store::messages::find(&state.pool, chat.id, number),
                )
                .await?
        }
    };
    // A deleted record's row stays as a tombstone: it is stored, and gone.
    row.filter(|m| m.deleted_at.is_none())
        .ok_or_else(|| no_message(number))
}
