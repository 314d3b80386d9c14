//! The records buffered in Redis, and their wire format.
//!
//! The Lua scripts in [`crate::writebehind::scripts`] build each record by concatenation,
//! so the request path does no serialisation at all. Fields are separated by
//! a tab; a message body comes last and may itself hold tabs (or any byte).
//!
//! ```text
//! chat:    {application_id}\t{number}\t{created_at_us}
//! message: {application_id}\t{chat_number}\t{number}\t{created_at_us}\t{body}
//! ```
//!
//! A message the flusher deferred (its chat was not stored yet) goes back to
//! the queue prefixed with `d{first_deferred_ms}\t`, so that it is aged from
//! its first deferral rather than from its creation: a backlog that waited
//! out a long MariaDB outage is not dead-lettered on arrival. (Application
//! ids are digits, so the prefix cannot be mistaken for one.)

use chrono::{DateTime, Utc};

/// A chat that has its number but is not yet in MariaDB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatRecord {
    /// `applications.id` of the owning application.
    pub application_id: u64,
    /// The chat's number within its application (from 1).
    pub number: i64,
    /// When the number was allocated, in microseconds since the Unix epoch
    /// (see [`created_at_us`] for records written in milliseconds).
    pub created_at_us: i64,
}

/// A message that has its number but is not yet in MariaDB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRecord {
    /// `applications.id` of the application that owns the chat.
    pub application_id: u64,
    /// Number of the chat within its application.
    pub chat_number: i64,
    /// The message's number within its chat (from 1).
    pub number: i64,
    /// When the number was allocated, in microseconds since the Unix epoch
    /// (see [`created_at_us`] for records written in milliseconds).
    pub created_at_us: i64,
    /// The body, byte for byte as the client sent it.
    pub body: String,
    /// When the flusher first deferred it, in ms since the Unix epoch
    /// (`None`: never deferred).
    pub deferred_since_ms: Option<i64>,
}

/// Why a buffered record could not be decoded (it goes to the dead-letter list).
#[derive(Debug, thiserror::Error)]
#[error("undecodable record: {0}")]
pub struct DecodeError(pub &'static str);

fn field<'a, T: std::str::FromStr>(
    it: &mut impl Iterator<Item = &'a [u8]>,
    name: &'static str,
) -> Result<T, DecodeError> {
    let raw = it.next().ok_or(DecodeError(name))?;
    std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(DecodeError(name))
}

impl ChatRecord {
    /// Decodes `{application_id}\t{number}\t{created_at_us}`.
    pub fn decode(raw: &[u8]) -> Result<Self, DecodeError> {
        let mut it = raw.splitn(3, |b| *b == b'\t');
        Ok(Self {
            application_id: field(&mut it, "application_id")?,
            number: field(&mut it, "number")?,
            created_at_us: created_at_us(field(&mut it, "created_at")?),
        })
    }

    /// Creation time as a UTC timestamp.
    pub fn created_at(&self) -> DateTime<Utc> {
        us_to_utc(self.created_at_us)
    }
}

impl MessageRecord {
    /// Decodes `{application_id}\t{chat_number}\t{number}\t{created_at_us}\t{body}`,
    /// with or without the `d{first_deferred_ms}\t` prefix.
    pub fn decode(raw: &[u8]) -> Result<Self, DecodeError> {
        let (deferred_since_ms, raw) = match raw.strip_prefix(b"d") {
            Some(rest) => {
                let mut it = rest.splitn(2, |b| *b == b'\t');
                let since = field(&mut it, "deferred_since_ms")?;
                (Some(since), it.next().ok_or(DecodeError("record"))?)
            }
            None => (None, raw),
        };
        let mut it = raw.splitn(5, |b| *b == b'\t');
        let application_id = field(&mut it, "application_id")?;
        let chat_number = field(&mut it, "chat_number")?;
        let number = field(&mut it, "number")?;
        let created_at_us = created_at_us(field(&mut it, "created_at")?);
        let body = it.next().ok_or(DecodeError("body"))?;
        let body =
            String::from_utf8(body.to_vec()).map_err(|_| DecodeError("body is not UTF-8"))?;
        Ok(Self {
            application_id,
            chat_number,
            number,
            created_at_us,
            body,
            deferred_since_ms,
        })
    }

    /// Creation time as a UTC timestamp.
    pub fn created_at(&self) -> DateTime<Utc> {
        us_to_utc(self.created_at_us)
    }

    /// `raw` as it goes back to the queue when deferred at `now_ms`: stamped
    /// with its first deferral, unless it already is.
    pub fn stamp_deferred(raw: &[u8], now_ms: i64) -> std::borrow::Cow<'_, [u8]> {
        if raw.starts_with(b"d") {
            return raw.into();
        }
        let mut stamped = format!("d{now_ms}\t").into_bytes();
        stamped.extend_from_slice(raw);
        stamped.into()
    }

    /// `raw` without its `d{first_deferred_ms}\t` stamp, if it has one: a
    /// replayed record starts its orphan clock again, so a message replayed
    /// together with its chat is deferred while the chat is in another
    /// flusher's batch, not dead-lettered at once for an old deferral.
    pub fn unstamp_deferred(raw: &[u8]) -> &[u8] {
        match raw.strip_prefix(b"d") {
            Some(rest) => match rest.iter().position(|b| *b == b'\t') {
                Some(tab) if rest[..tab].iter().all(u8::is_ascii_digit) => &rest[tab + 1..],
                _ => raw,
            },
            None => raw,
        }
    }
}

/// The application id field of a queued chat or message record (the text
/// before its first tab), past a message's deferral stamp
/// (`d{ms}\t`, see [`MessageRecord::stamp_deferred`]): what the usage
/// counts (`app:{id}` in the shard's usage hash) are kept under. `None`
/// when the record has no such field (a search-index op is JSON).
pub fn application_id_of(raw: &[u8]) -> Option<&[u8]> {
    let raw = MessageRecord::unstamp_deferred(raw);
    let end = raw.iter().position(|b| *b == b'\t')?;
    let id = &raw[..end];
    (!id.is_empty() && id.iter().all(u8::is_ascii_digit)).then_some(id)
}

/// The `lost` field of chat `number` of application `application_id`.
pub fn chat_lost_field(application_id: u64, number: i64) -> String {
    format!("c:{application_id}:{number}")
}

/// The `lost` field of message `number` of chat `chat_number`.
pub fn message_lost_field(application_id: u64, chat_number: i64, number: i64) -> String {
    format!("m:{application_id}:{chat_number}:{number}")
}

/// A record's creation time as written, in µs since the Unix epoch. Versions
/// before 2026-12 wrote milliseconds; a value below 10^14 is read as such
/// (10^14 ms is in the year 5138, 10^14 µs was in 1973), so that records
/// queued by an older instance keep their time across an upgrade.
pub fn created_at_us(written: i64) -> i64 {
    const MILLISECONDS_BELOW: i64 = 100_000_000_000_000;
    if written.abs() < MILLISECONDS_BELOW {
        written.saturating_mul(1000)
    } else {
        written
    }
}

/// Microseconds since the Unix epoch to a UTC timestamp (the epoch itself
/// if out of range, which a record built by our scripts never is).
pub fn us_to_utc(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

/// Milliseconds since the Unix epoch to a UTC timestamp (the epoch itself if
/// out of range, which a record built by our scripts never is).
pub fn ms_to_utc(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_bodies_with_tabs_and_nul() {
        let raw = b"7\t3\t12\t1700000000123\ta\tb\0c \xF0\x9F\x98\x80";
        let r = MessageRecord::decode(raw).unwrap();
        assert_eq!((r.application_id, r.chat_number, r.number), (7, 3, 12));
        assert_eq!(r.body, "a\tb\0c 😀");
        assert_eq!(r.created_at().timestamp_millis(), 1_700_000_000_123);
    }

    #[test]
    fn created_at_is_read_in_microseconds_and_in_the_milliseconds_of_older_records() {
        let us = MessageRecord::decode(b"7\t3\t12\t1700000000123456\tb").unwrap();
        assert_eq!(us.created_at().timestamp_micros(), 1_700_000_000_123_456);
        let ms = ChatRecord::decode(b"7\t3\t1700000000123").unwrap();
        assert_eq!(ms.created_at().timestamp_micros(), 1_700_000_000_123_000);
    }

    #[test]
    fn a_deferred_record_keeps_its_first_deferral() {
        let raw = b"7\t3\t12\t1700000000123\tbody";
        assert_eq!(MessageRecord::decode(raw).unwrap().deferred_since_ms, None);
        let once = MessageRecord::stamp_deferred(raw, 1_800_000_000_000).into_owned();
        let twice = MessageRecord::stamp_deferred(&once, 1_900_000_000_000).into_owned();
        assert_eq!(once, twice, "the first deferral is kept");
        let r = MessageRecord::decode(&twice).unwrap();
        assert_eq!(r.deferred_since_ms, Some(1_800_000_000_000));
        assert_eq!((r.number, r.body.as_str()), (12, "body"));
        assert!(MessageRecord::decode(b"dx\t7\t3\t12\t1\tb").is_err());
    }

    #[test]
    fn a_replayed_record_loses_its_deferral_stamp_and_nothing_else() {
        let raw = b"1\t2\t3\t1700000000000\thello";
        let stamped = MessageRecord::stamp_deferred(raw, 1_800_000_000_000);
        assert_eq!(MessageRecord::unstamp_deferred(&stamped), raw);
        assert_eq!(MessageRecord::unstamp_deferred(raw), raw);
        // A body is never taken for a stamp: only a whole record starts with `d`.
        assert_eq!(MessageRecord::unstamp_deferred(b"dx\ty"), b"dx\ty");
    }

    #[test]
    fn rejects_garbage() {
        assert!(ChatRecord::decode(b"x\t1\t2").is_err());
        assert!(MessageRecord::decode(b"1\t2\t3\t4").is_err());
        assert!(MessageRecord::decode(b"1\t2\t3\t4\t\xff").is_err());
    }
}
