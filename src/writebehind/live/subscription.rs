//! One client's subscription to a chat's events: the replay from MariaDB,
//! the catch-up from the stream, the live events, and the gap checks that
//! keep each event once and in order (see [`super`]).

use std::sync::Arc;

use tokio::sync::mpsc;

use super::{
    EventId, EventKind, Guard, Live, LiveEvent, Parsed, ResumePoint, StreamId, UNRECORDED,
    parse_entry,
};

/// The creates a resume missed, read from MariaDB plus the write-behind
/// buffer (the read-your-writes path), one page per call: given the last
/// number the subscriber has and the replay's upper bound (`None` on the
/// first call: the chat's last number handed out, fixed then), the page.
/// Made by the HTTP layer for the chat it looked up.
pub type Replayer = Arc<
    dyn Fn(
            i64,
            Option<i64>,
        ) -> futures_util::future::BoxFuture<'static, Result<ReplayPage, ReplayError>>
        + Send
        + Sync,
>;

/// One page of a replay.
#[derive(Debug, Clone, Default)]
pub struct ReplayPage {
    /// The live (not deleted) messages of the page, by number: `(number,
    /// body, created_at µs since the epoch)`.
    pub messages: Vec<(i64, String, i64)>,
    /// Every number up to this one is accounted for (sent, deleted, or
    /// skipped by the numbering).
    pub through: i64,
    /// The replay's upper bound: it is done when `through` reaches it.
    pub upper: i64,
}

/// Why a replay stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The missed creates cannot be proven complete (more than
    /// `LIVE_REPLAY_MAX`, or some not stored in time): the subscriber gets
    /// a `reset`.
    #[error("{0}")]
    Unprovable(&'static str),
    /// MariaDB or Redis failed: the stream ends, and the client resumes.
    #[error("replay failed: {0}")]
    Unavailable(String),
}

/// A replay in progress: the subscriber has every create up to `after`;
/// the replay ends at `upper` (fixed by the first page), and the stream's
/// entries after `anchor` follow it.
#[derive(Debug, Clone, Copy)]
pub(super) struct ReplayCursor {
    pub(super) after: i64,
    pub(super) upper: Option<i64>,
    pub(super) anchor: StreamId,
}

/// One client's subscription: what it still has to replay from MariaDB
/// and to catch up on from the stream, then the live events, each once and
/// in order.
pub struct Subscription {
    pub(super) live: Live,
    pub(super) stream_key: String,
    pub(super) generation: String,
    pub(super) last: StreamId,
    pub(super) catch_up_to: Option<StreamId>,
    pub(super) pending: std::collections::VecDeque<Pending>,
    /// The highest message number sent (see [`ResumePoint`]), when known.
    pub(super) last_created: Option<i64>,
    /// The generation's change count at the last event sent, when known.
    pub(super) changes: Option<u64>,
    pub(super) replay: Option<ReplayCursor>,
    pub(super) replayer: Option<Replayer>,
    /// The stream's events read after a gap, held until its replay is done.
    pub(super) held: std::collections::VecDeque<Pending>,
    pub(super) rx: mpsc::Receiver<Arc<LiveEvent>>,
    pub(super) _guard: Guard,
    pub(super) done: bool,
}

/// What a subscription has to do before it reads on.
pub(super) enum Pending {
    /// Send this event (from the stream: checked for gaps).
    Event(Arc<LiveEvent>),
    /// Send this replayed create (from MariaDB: numbers skipped or deleted
    /// leave holes that are no gap).
    Replayed(Arc<LiveEvent>),
    /// A replay page was sent: every create up to this number is accounted
    /// for, so the stream's own copies of them are not sent again.
    Through(i64),
}

/// One event to send, with its SSE id for this subscriber (which carries
/// the subscriber's [`ResumePoint`] when known).
pub struct Delivery {
    /// The event.
    pub event: Arc<LiveEvent>,
    /// Its SSE id for this subscriber.
    pub id: EventId,
}

impl Subscription {
    /// The next event, or `None` when the stream ends: after `chat.deleted`,
    /// when this subscriber was too slow (its buffer filled), on shutdown,
    /// or when Redis or MariaDB failed during a replay or a catch-up. The
    /// client then resumes from its last id.
    pub async fn next(&mut self) -> Option<Delivery> {
        loop {
            if self.done {
                return None;
            }
            match self.pending.pop_front() {
                Some(Pending::Event(event)) => match self.consider(event) {
                    Some(d) => return Some(d),
                    None => continue,
                },
                Some(Pending::Replayed(event)) => match self.emit(event) {
                    Some(d) => return Some(d),
                    None => continue,
                },
                Some(Pending::Through(through)) => {
                    self.last_created = Some(self.last_created.unwrap_or(0).max(through));
                    continue;
                }
                None => {}
            }
            if let Some(cursor) = self.replay {
                self.replay_page(cursor).await?;
                continue;
            }
            if let Some(to) = self.catch_up_to {
                if self.last >= to {
                    self.catch_up_to = None;
                    continue;
                }
                let page = tokio::select! {
                    _ = self.live.0.closing.cancelled() => return None,
                    r = self.live.0.range(&self.stream_key, self.last, to) => r,
                };
                let Ok(page) = page else {
                    return None;
                };
                if page.is_empty() {
                    self.catch_up_to = None;
                    continue;
                }
                for (id, fields) in page {
                    // Advances `last` even past unknown entries.
                    self.last = self.last.max(id);
                    match parse_entry(&fields) {
                        Parsed::Event(kind, change) => {
                            self.pending
                                .push_back(Pending::Event(Arc::new(LiveEvent::new(
                                    self.generation.clone(),
                                    id,
                                    kind,
                                    change,
                                ))))
                        }
                        Parsed::Open(generation, change) => {
                            let same = generation.is_empty() || generation == self.generation;
                            // Not recorded for a while, but no edit or
                            // delete meanwhile: the creates are replayed
                            // from MariaDB, then the entries after the
                            // marker (read again from there).
                            if same
                                && change.is_some()
                                && change == self.changes
                                && self.replayer.is_some()
                                && let Some(after) = self.last_created
                            {
                                self.replay = Some(ReplayCursor {
                                    after,
                                    upper: None,
                                    anchor: id,
                                });
                                break;
                            }
                            if !same {
                                self.generation = generation;
                            }
                            self.pending
                                .push_back(Pending::Event(Arc::new(LiveEvent::new(
                                    self.generation.clone(),
                                    id,
                                    EventKind::Reset { reason: UNRECORDED },
                                    change.filter(|_| same),
                                ))));
                        }
                        Parsed::Unknown => {}
                    }
                }
                continue;
            }
            let event = self.rx.recv().await?;
            // Already sent (from the catch-up, or before a resume's id).
            if event.id.generation == self.generation && event.id.entry <= self.last {
                continue;
            }
            self.generation = event.id.generation.clone();
            self.last = event.id.entry;
            if let Some(d) = self.consider(event) {
                return Some(d);
            }
        }
    }

    /// Sends `event`, read from the stream, unless it shows that events
    /// before it were lost (trimmed before they were read, or never
    /// recorded): message numbers and change counts each follow on by one
    /// in a chat's stream. A create past a gap starts a replay from
    /// MariaDB (which sends it too) or, without a replayer, a `reset` first;
    /// an edit or delete past a gap comes after a `reset`.
    fn consider(&mut self, event: Arc<LiveEvent>) -> Option<Delivery> {
        let reason = match &event.kind {
            EventKind::MessageCreated { number, .. } => match self.last_created {
                Some(n) if *number > n.saturating_add(1) => {
                    if self.replayer.is_some() {
                        self.replay = Some(ReplayCursor {
                            after: n,
                            upper: None,
                            anchor: event.id.entry,
                        });
                        // What was read after it waits for the replay.
                        self.held = std::mem::take(&mut self.pending);
                        return None;
                    }
                    Some("creates before this one were not recorded, or no longer kept")
                }
                _ => None,
            },
            EventKind::MessageUpdated { .. }
            | EventKind::MessageDeleted { .. }
            | EventKind::ChatDeleted => match (self.changes, event.change) {
                (Some(c), Some(k)) if k != c.saturating_add(1) => {
                    Some("edits or deletes before this one were not recorded, or no longer kept")
                }
                _ => None,
            },
            EventKind::Reset { .. } => None,
        };
        if let Some(reason) = reason {
            self.pending.push_front(Pending::Replayed(event.clone()));
            return self.emit(Arc::new(LiveEvent::new(
                event.id.generation.clone(),
                event.id.entry.pred(),
                EventKind::Reset { reason },
                None,
            )));
        }
        self.emit(event)
    }

    /// Reads one page of the replay at `cursor` into `pending`; a replay
    /// that cannot be proven complete becomes a `reset` (at the anchor) and
    /// the stream goes on. `None` when the stream must end (MariaDB or Redis
    /// failed, or shutdown).
    async fn replay_page(&mut self, cursor: ReplayCursor) -> Option<()> {
        let replayer = self.replayer.clone()?;
        let page = tokio::select! {
            _ = self.live.0.closing.cancelled() => return None,
            r = replayer(cursor.after, cursor.upper) => r,
        };
        // A resume from any event of the replay comes back here: its id
        // points just before the anchor, which the stream no longer covers.
        let entry = cursor.anchor.pred();
        match page {
            Ok(page) => {
                for (number, body, created_at_us) in page.messages {
                    self.pending
                        .push_back(Pending::Replayed(Arc::new(LiveEvent::new(
                            self.generation.clone(),
                            entry,
                            EventKind::MessageCreated {
                                number,
                                body,
                                created_at_us,
                            },
                            None,
                        ))));
                }
                let done = page.through >= page.upper;
                if done {
                    self.replay = None;
                } else {
                    self.replay = Some(ReplayCursor {
                        after: page.through,
                        upper: Some(page.upper),
                        ..cursor
                    });
                }
                self.pending.push_back(Pending::Through(page.through));
                if done {
                    let held = std::mem::take(&mut self.held);
                    self.pending.extend(held);
                }
                Some(())
            }
            Err(ReplayError::Unprovable(reason)) => {
                self.replay = None;
                self.pending
                    .push_back(Pending::Event(Arc::new(LiveEvent::new(
                        self.generation.clone(),
                        entry,
                        EventKind::Reset { reason },
                        self.changes,
                    ))));
                let held = std::mem::take(&mut self.held);
                self.pending.extend(held);
                Some(())
            }
            Err(ReplayError::Unavailable(why)) => {
                tracing::warn!(error = %why, "a live replay failed; the stream ends and its client resumes");
                None
            }
        }
    }

    /// Updates what the subscriber has with `event`, and gives its id for
    /// this subscriber; `None` for a create already sent (the stream's copy
    /// of a replayed one).
    fn emit(&mut self, event: Arc<LiveEvent>) -> Option<Delivery> {
        match &event.kind {
            EventKind::MessageCreated { number, .. } => {
                if self.last_created.is_some_and(|n| *number <= n) {
                    return None;
                }
                self.last_created = Some(*number);
            }
            EventKind::MessageUpdated { .. } | EventKind::MessageDeleted { .. } => {
                self.changes = event.change;
            }
            EventKind::ChatDeleted => {
                self.changes = event.change;
                self.done = true;
            }
            EventKind::Reset { .. } => {
                // The client re-lists: it has every create so far, but
                // which number that is, is not known here.
                self.last_created = None;
                self.changes = event.change;
            }
        }
        let point = match (self.last_created, self.changes) {
            (Some(last_created), Some(changes)) => Some(ResumePoint {
                last_created,
                changes,
            }),
            _ => None,
        };
        Some(Delivery {
            id: EventId {
                point,
                ..event.id.clone()
            },
            event,
        })
    }
}
