//! What a chat's stream holds and what a subscriber is sent: entry ids,
//! event ids with their resume points, event kinds, and the parsing of
//! stream entries (see [`super`]).

use std::collections::HashMap;
use std::sync::Arc;

use redis::Value;

/// A Redis Stream entry id, `{ms}-{seq}`, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct StreamId(pub u64, pub u64);

impl StreamId {
    /// Parses `{ms}-{seq}` (`None` for anything else).
    pub fn parse(s: &str) -> Option<Self> {
        let (ms, seq) = s.split_once('-')?;
        Some(Self(ms.parse().ok()?, seq.parse().ok()?))
    }

    /// The id just before this one (`0-0` stays `0-0`).
    pub fn pred(self) -> Self {
        match self {
            Self(0, 0) => self,
            Self(ms, 0) => Self(ms - 1, u64::MAX),
            Self(ms, seq) => Self(ms, seq - 1),
        }
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// An event's SSE id: the stream's generation and the entry's id,
/// `{generation}-{ms}-{seq}`, and where the subscriber stood when it was
/// sent (`.{last created}.{changes}`, see [`ResumePoint`]) when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventId {
    /// The stream's generation (hex, no `-`).
    pub generation: String,
    /// The entry's id in the stream.
    pub entry: StreamId,
    /// What the subscriber had been sent by then, when known: lets a resume
    /// that the stream cannot serve replay from MariaDB.
    pub point: Option<ResumePoint>,
}

/// Where a subscriber stood at an event: every `message.created` numbered
/// up to `last_created` had been sent (or came before it subscribed), and
/// the generation's change count (edits and deletes, [`super::APPEND`]) was
/// `changes`. A resume from it that the stream no longer covers replays
/// the creates numbered above `last_created` from MariaDB plus the
/// write-behind buffer, if the change count is still `changes` (no edit or
/// delete was missed); else it gets a `reset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumePoint {
    /// The highest message number sent (or before the subscription).
    pub last_created: i64,
    /// The generation's change count.
    pub changes: u64,
}

impl EventId {
    /// Parses an SSE id made by [`EventId`]'s `Display` (`None` for anything
    /// else: the caller answers 422).
    pub fn parse(s: &str) -> Option<Self> {
        let (s, point) = match s.split_once('.') {
            None => (s, None),
            Some((id, rest)) => {
                let (n, c) = rest.split_once('.')?;
                let point = ResumePoint {
                    last_created: n.parse().ok().filter(|n| *n >= 0)?,
                    changes: c.parse().ok()?,
                };
                (id, Some(point))
            }
        };
        let mut parts = s.rsplitn(3, '-');
        let seq = parts.next()?.parse().ok()?;
        let ms = parts.next()?.parse().ok()?;
        let generation = parts.next()?;
        if generation.is_empty()
            || generation.len() > 64
            || !generation.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return None;
        }
        Some(Self {
            generation: generation.to_string(),
            entry: StreamId(ms, seq),
            point,
        })
    }
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.generation, self.entry)?;
        if let Some(p) = self.point {
            write!(f, ".{}.{}", p.last_created, p.changes)?;
        }
        Ok(())
    }
}

/// What happened, as the stream records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// `message.created`: number, body, `created_at` (µs since the epoch).
    MessageCreated {
        /// The message's number.
        number: i64,
        /// Its body.
        body: String,
        /// Creation time, µs since the Unix epoch.
        created_at_us: i64,
    },
    /// `message.updated`: number, new body, `updated_at` (µs).
    MessageUpdated {
        /// The message's number.
        number: i64,
        /// Its new body.
        body: String,
        /// Edit time, µs since the Unix epoch.
        updated_at_us: i64,
    },
    /// `message.deleted`: number.
    MessageDeleted {
        /// The message's number.
        number: i64,
    },
    /// `chat.deleted`: the stream ends after it.
    ChatDeleted,
    /// `reset`: events may be missing before this one (the stream was lost,
    /// trimmed past the resume id, or not recorded for a while): re-list,
    /// then continue after this id.
    Reset {
        /// Why, for people.
        reason: &'static str,
    },
}

impl EventKind {
    /// The SSE event type (`message.created`, …, `reset`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::MessageCreated { .. } => "message.created",
            Self::MessageUpdated { .. } => "message.updated",
            Self::MessageDeleted { .. } => "message.deleted",
            Self::ChatDeleted => "chat.deleted",
            Self::Reset { .. } => "reset",
        }
    }

    /// The stream entry's fields for [`APPEND`] (not for resets).
    pub(super) fn fields(&self) -> Vec<(&'static str, String)> {
        match self {
            Self::MessageCreated {
                number,
                body,
                created_at_us,
            } => vec![
                ("t", self.name().into()),
                ("n", number.to_string()),
                ("b", body.clone()),
                ("c", created_at_us.to_string()),
            ],
            Self::MessageUpdated {
                number,
                body,
                updated_at_us,
            } => vec![
                ("t", self.name().into()),
                ("n", number.to_string()),
                ("b", body.clone()),
                ("u", updated_at_us.to_string()),
            ],
            Self::MessageDeleted { number } => {
                vec![("t", self.name().into()), ("n", number.to_string())]
            }
            Self::ChatDeleted | Self::Reset { .. } => vec![("t", self.name().into())],
        }
    }
}

/// One event as a subscriber gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveEvent {
    /// Its SSE id.
    pub id: EventId,
    /// What happened.
    pub kind: EventKind,
    /// The generation's change count after it (field `k`): on edits,
    /// deletes and the `reset` of an `open` marker; `None` where not known.
    pub change: Option<u64>,
    /// Its wire form, made once for all of a chat's subscribers by the
    /// first that sends it (the HTTP layer fills it).
    pub rendered: std::sync::OnceLock<Arc<str>>,
}

impl LiveEvent {
    /// The event `kind` at entry `entry` of generation `generation`, with
    /// the change count `change` after it; its id carries no resume point
    /// (each subscriber adds its own, see [`super::Delivery`]).
    pub fn new(
        generation: impl Into<String>,
        entry: StreamId,
        kind: EventKind,
        change: Option<u64>,
    ) -> Self {
        Self {
            id: EventId {
                generation: generation.into(),
                entry,
                point: None,
            },
            kind,
            change,
            rendered: Default::default(),
        }
    }
}

/// A stream entry read from Redis: its id and fields.
pub(super) type Entry = (StreamId, HashMap<String, String>);

/// What an entry means: an event, an `open` marker (with the generation
/// it names), or nothing this version knows; with the change count `k`
/// when the entry has one.
pub(super) enum Parsed {
    Event(EventKind, Option<u64>),
    Open(String, Option<u64>),
    Unknown,
}

pub(super) fn parse_entry(fields: &HashMap<String, String>) -> Parsed {
    let get = |k: &str| fields.get(k).map(String::as_str).unwrap_or_default();
    let num = |k: &str| get(k).parse::<i64>().unwrap_or_default();
    let change = fields.get("k").and_then(|k| k.parse().ok());
    let event = match get("t") {
        "message.created" => EventKind::MessageCreated {
            number: num("n"),
            body: get("b").to_string(),
            created_at_us: num("c"),
        },
        "message.updated" => EventKind::MessageUpdated {
            number: num("n"),
            body: get("b").to_string(),
            updated_at_us: num("u"),
        },
        "message.deleted" => EventKind::MessageDeleted { number: num("n") },
        "chat.deleted" => EventKind::ChatDeleted,
        "open" => return Parsed::Open(get("g").to_string(), change),
        _ => return Parsed::Unknown,
    };
    Parsed::Event(event, change)
}

/// The entries of an `XRANGE` reply (or of one stream of an `XREAD`).
pub(super) fn parse_entries(v: &Value) -> Vec<Entry> {
    let Value::Array(items) = v else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let Value::Array(pair) = item else {
                return None;
            };
            let id = StreamId::parse(&as_string(pair.first()?)?)?;
            let mut fields = HashMap::new();
            match pair.get(1)? {
                Value::Array(kv) => {
                    for chunk in kv.chunks(2) {
                        if let [k, v] = chunk
                            && let (Some(k), Some(v)) = (as_string(k), as_string(v))
                        {
                            fields.insert(k, v);
                        }
                    }
                }
                Value::Map(kv) => {
                    for (k, v) in kv {
                        if let (Some(k), Some(v)) = (as_string(k), as_string(v)) {
                            fields.insert(k, v);
                        }
                    }
                }
                _ => {}
            }
            Some((id, fields))
        })
        .collect()
}

/// The streams of an `XREAD` reply: key → entries (nil: none).
pub(super) fn parse_xread(v: Value) -> Vec<(String, Vec<Entry>)> {
    match v {
        Value::Array(streams) => streams
            .iter()
            .filter_map(|s| {
                let Value::Array(pair) = s else {
                    return None;
                };
                Some((as_string(pair.first()?)?, parse_entries(pair.get(1)?)))
            })
            .collect(),
        Value::Map(streams) => streams
            .iter()
            .filter_map(|(k, v)| Some((as_string(k)?, parse_entries(v))))
            .collect(),
        _ => Vec::new(),
    }
}

fn as_string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_round_trip_and_order_by_entry() {
        let id = EventId::parse("0123abcd0123abcd-1700000000000-7").unwrap();
        assert_eq!(id.generation, "0123abcd0123abcd");
        assert_eq!(id.entry, StreamId(1_700_000_000_000, 7));
        assert_eq!(id.to_string(), "0123abcd0123abcd-1700000000000-7");
        assert!(StreamId(1, 9) < StreamId(2, 0));
        assert!(StreamId(2, 0) < StreamId(2, 1));
        for bad in [
            "",
            "x",
            "1-2",
            "-1-2",
            "g-1",
            "g-a-1",
            "g!-1-2",
            "g-1-2.",
            "g-1-2.5",
            "g-1-2.-5.0",
            "g-1-2.5.x",
        ] {
            assert_eq!(EventId::parse(bad), None, "{bad}");
        }
        let with_point = EventId::parse("0123abcd-17-3.42.7").unwrap();
        assert_eq!(with_point.entry, StreamId(17, 3));
        assert_eq!(
            with_point.point,
            Some(ResumePoint {
                last_created: 42,
                changes: 7
            })
        );
        assert_eq!(with_point.to_string(), "0123abcd-17-3.42.7");
        assert_eq!(StreamId(5, 0).pred(), StreamId(4, u64::MAX));
        assert_eq!(StreamId(5, 3).pred(), StreamId(5, 2));
        assert_eq!(StreamId(0, 0).pred(), StreamId(0, 0));
    }
}
