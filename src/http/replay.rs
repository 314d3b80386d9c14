//! The replay of a live resume older than its chat's stream: the creates
//! the client missed, read from MariaDB plus the write-behind buffer (the
//! read-your-writes path: a number handed out but not stored yet is waited
//! for), one page at a time (see [`crate::writebehind::live::Replayer`]).

use std::sync::Arc;

use futures_util::FutureExt;

use crate::http::AppState;
use crate::store::{self, applications::AppRow, chats::ChatRow, messages::MessageRow};
use crate::writebehind::live::{ReplayError, ReplayPage, Replayer};
use crate::writebehind::{BufferError, CounterScope};

/// Message numbers per replay page (the cursor API's largest page).
pub const PAGE: i64 = 100;

/// The replayer of chat `chat` of `app`, or `None` when
/// `LIVE_REPLAY_MAX` is 0 (never replay: such a resume gets a `reset`).
pub fn replayer(state: &AppState, app: &AppRow, chat: &ChatRow) -> Option<Replayer> {
    let max = state.config.live_replay_max;
    if max == 0 {
        return None;
    }
    let target = Target {
        state: state.clone(),
        token: app.token.clone().into(),
        app_id: app.id,
        chat_id: chat.id,
        chat_number: chat.number,
        max,
    };
    let target = Arc::new(target);
    Some(Arc::new(move |after, upper| {
        let target = target.clone();
        async move { target.page(after, upper).await }.boxed()
    }))
}

/// The chat a replayer reads.
struct Target {
    state: AppState,
    token: Arc<str>,
    app_id: u64,
    chat_id: u64,
    chat_number: i64,
    /// `LIVE_REPLAY_MAX`.
    max: u64,
}

fn unavailable(e: impl std::fmt::Display) -> ReplayError {
    ReplayError::Unavailable(e.to_string())
}

impl Target {
    /// The page after number `after`: at most [`PAGE`] numbers, each
    /// stored (live or deleted) or skipped by the numbering, up to `upper`
    /// (on the first page, `None`: the last number the chat's counter
    /// handed out, or, with no counter in Redis, the last stored).
    ///
    /// Errors: [`ReplayError::Unprovable`] when more than `LIVE_REPLAY_MAX`
    /// numbers were missed, or a missed number is neither stored within
    /// `READ_YOUR_WRITES_TIMEOUT_MS` nor skipped (its record may be
    /// dead-lettered); [`ReplayError::Unavailable`] when MariaDB or Redis
    /// failed.
    async fn page(&self, after: i64, upper: Option<i64>) -> Result<ReplayPage, ReplayError> {
        let state = &self.state;
        let upper = match upper {
            Some(upper) => upper,
            None => {
                let counters = state
                    .write_behind
                    .buffer()
                    .counters(&self.token, self.chat_number)
                    .await
                    .map_err(unavailable)?;
                let upper = match counters.last_message {
                    Some(last) => last,
                    None => store::messages::last_number(&state.pool, self.chat_id)
                        .await
                        .map_err(unavailable)?,
                };
                if u64::try_from(upper.saturating_sub(after)).unwrap_or(0) > self.max {
                    return Err(ReplayError::Unprovable(
                        "more messages were created since that id than a resume replays \
                         (LIVE_REPLAY_MAX); re-list the chat",
                    ));
                }
                upper
            }
        };
        let to = upper.min(after.saturating_add(PAGE));
        if to <= after {
            return Ok(ReplayPage {
                messages: Vec::new(),
                through: after,
                upper: after,
            });
        }
        let rows = self.range(after, to).await?;
        // Numbers not stored: skipped at a restart (never acknowledged), or
        // buffered (waited for, as a GET waits).
        let mut waiting = Vec::new();
        for number in (after + 1..=to).filter(|n| !has(&rows, *n)) {
            let skipped = state
                .write_behind
                .numbering()
                .is_skipped(
                    &self.token,
                    self.app_id,
                    CounterScope::Messages {
                        chat_number: self.chat_number,
                    },
                    number,
                )
                .await
                .map_err(unavailable)?;
            if !skipped {
                waiting.push(number);
            }
        }
        let rows = if waiting.is_empty() {
            rows
        } else {
            let waited = state
                .write_behind
                .await_stored(
                    || async { Ok::<_, BufferError>(true) },
                    || async {
                        let rows =
                            store::messages::range(&state.pool, self.chat_id, after, to).await?;
                        Ok(waiting.iter().all(|n| has(&rows, *n)).then_some(rows))
                    },
                )
                .await;
            match waited {
                Ok(Some(rows)) => rows,
                Ok(None) | Err(BufferError::NotYetStored) => {
                    return Err(ReplayError::Unprovable(
                        "some messages created since that id are not stored yet; re-list the chat",
                    ));
                }
                Err(e) => return Err(unavailable(e)),
            }
        };
        Ok(ReplayPage {
            messages: rows
                .into_iter()
                .filter(|r| r.deleted_at.is_none())
                .map(|r| (r.number, r.body, r.created_at.and_utc().timestamp_micros()))
                .collect(),
            through: to,
            upper,
        })
    }

    async fn range(&self, after: i64, to: i64) -> Result<Vec<MessageRow>, ReplayError> {
        store::messages::range(&self.state.pool, self.chat_id, after, to)
            .await
            .map_err(unavailable)
    }
}

/// Whether `rows` (by number) hold `number`.
fn has(rows: &[MessageRow], number: i64) -> bool {
    rows.binary_search_by_key(&number, |r| r.number).is_ok()
}
