//! Cross-application listings for operators (`GET /api/v1/admin/chats` and
//! `/admin/messages`): live chats and messages of every application, newest
//! first, paged with a keyset cursor.
//!
//! Keyset ("seek") pagination, not OFFSET: a page is the rows strictly after
//! the last row of the previous page in `(created_at, id)` order, read from
//! the `*_created_idx` indexes, so page 10,000 costs what page 1 costs and
//! rows inserted meanwhile never shift a page (see Markus Winand, "We need
//! tool support for keyset pagination", use-the-index-luke.com/no-offset).
//!
//! `STRAIGHT_JOIN` makes MariaDB read the listed table first, backwards
//! along its `(created_at, id)` index, and join each row to its parents by
//! primary key. Without it, with few applications, the optimizer starts from
//! `applications`, joins every row and sorts: measured on 300,000 messages,
//! a page read 301,010 index entries that way, and 21 entries plus 42 key
//! lookups this way, on page 1 and at row 150,000 alike.

use chrono::{NaiveDate, NaiveDateTime, NaiveTime};
use sqlx::{MySql, MySqlPool, QueryBuilder};

/// Where a page ends: the `(created_at, id)` of its last row. Its text
/// form is 32 hex characters: `created_at` in µs since the epoch (i64) and
/// `id` (u64), both big-endian. Every such string is a valid cursor (times
/// outside MariaDB's DATETIME range are clamped to it), so a cursor can only
/// be malformed, never "unknown".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// `created_at` of the last row shown.
    pub created_at: NaiveDateTime,
    /// `id` of the last row shown (the tie-breaker).
    pub id: u64,
}

impl Cursor {
    /// The cursor's 16 bytes (see the type's docs).
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.created_at.and_utc().timestamp_micros().to_be_bytes());
        out[8..].copy_from_slice(&self.id.to_be_bytes());
        out
    }

    /// The cursor's text form: its 16 bytes in lowercase hex.
    pub fn encode(&self) -> String {
        hex::encode(self.to_bytes())
    }

    /// The cursor spelled by `bytes`.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        let (micros, id) = bytes.split_at(8);
        let micros = i64::from_be_bytes(micros.try_into().expect("8 bytes"));
        let id = u64::from_be_bytes(id.try_into().expect("8 bytes"));
        // MariaDB's DATETIME range: 1000-01-01 to 9999-12-31.
        let lo = NaiveDate::from_ymd_opt(1000, 1, 1)
            .expect("a date")
            .and_time(NaiveTime::MIN);
        let hi = NaiveDate::from_ymd_opt(9999, 12, 31)
            .expect("a date")
            .and_hms_micro_opt(23, 59, 59, 999_999)
            .expect("a time");
        let created_at = chrono::DateTime::from_timestamp_micros(micros)
            .map(|t| t.naive_utc())
            .unwrap_or(if micros < 0 { lo } else { hi })
            .clamp(lo, hi);
        Self { created_at, id }
    }
}

/// A live chat with its application's token.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ChatListing {
    /// Internal id (the cursor's tie-breaker; never sent as such).
    pub id: u64,
    /// Token of the owning application.
    pub application_token: String,
    /// Number within the application.
    pub number: i64,
    /// Cached count of live messages.
    pub messages_count: u64,
    /// Creation time (UTC).
    pub created_at: NaiveDateTime,
    /// Last change (UTC).
    pub updated_at: NaiveDateTime,
}

/// A live message with its application's token and chat number.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MessageListing {
    /// Internal id (the cursor's tie-breaker; never sent as such).
    pub id: u64,
    /// Token of the application that owns the chat.
    pub application_token: String,
    /// Number of the chat within its application.
    pub chat_number: i64,
    /// Number within the chat.
    pub number: i64,
    /// Body, byte for byte.
    pub body: String,
    /// Creation time (UTC).
    pub created_at: NaiveDateTime,
    /// Last edit (UTC).
    pub updated_at: NaiveDateTime,
}

/// Appends "after the cursor, newest first, `limit` rows" for table alias `t`.
fn seek(qb: &mut QueryBuilder<MySql>, t: &str, after: Option<Cursor>, limit: i64) {
    if let Some(c) = after {
        qb.push(format!(" AND ({t}.created_at < "))
            .push_bind(c.created_at)
            .push(format!(" OR ({t}.created_at = "))
            .push_bind(c.created_at)
            .push(format!(" AND {t}.id < "))
            .push_bind(c.id)
            .push("))");
    }
    qb.push(format!(" ORDER BY {t}.created_at DESC, {t}.id DESC LIMIT "))
        .push_bind(limit);
}

/// Up to `limit` live chats of all applications created before `after`
/// (all when `None`), newest first. Errors: MariaDB failures.
pub async fn chats(
    pool: &MySqlPool,
    after: Option<Cursor>,
    limit: i64,
) -> sqlx::Result<Vec<ChatListing>> {
    let mut qb = QueryBuilder::<MySql>::new(
        "SELECT STRAIGHT_JOIN c.id, a.token AS application_token, c.number, c.messages_count, \
         c.created_at, c.updated_at \
         FROM chats c JOIN applications a ON a.id = c.application_id \
         WHERE c.deleted_at IS NULL",
    );
    seek(&mut qb, "c", after, limit);
    qb.build_query_as().fetch_all(pool).await
}

/// Up to `limit` live messages of all applications created before `after`
/// (all when `None`), newest first. Errors: MariaDB failures.
pub async fn messages(
    pool: &MySqlPool,
    after: Option<Cursor>,
    limit: i64,
) -> sqlx::Result<Vec<MessageListing>> {
    // A deleted chat's messages are removed with it, so `m.deleted_at` is
    // the only liveness test needed.
    let mut qb = QueryBuilder::<MySql>::new(
        "SELECT STRAIGHT_JOIN m.id, a.token AS application_token, c.number AS chat_number, \
         m.number, m.body, m.created_at, m.updated_at \
         FROM messages m JOIN chats c ON c.id = m.chat_id \
         JOIN applications a ON a.id = c.application_id \
         WHERE m.deleted_at IS NULL",
    );
    seek(&mut qb, "m", after, limit);
    qb.build_query_as().fetch_all(pool).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_any_bytes_are_a_cursor() {
        let c = Cursor {
            created_at: chrono::DateTime::from_timestamp_micros(1_763_780_000_123_456)
                .unwrap()
                .naive_utc(),
            id: 42,
        };
        assert_eq!(Cursor::from_bytes(c.to_bytes()), c);
        assert_eq!(c.encode().len(), 32);
        for bytes in [[0u8; 16], [0xff; 16], [0x7f; 16], [0x80; 16]] {
            let year = chrono::Datelike::year(&Cursor::from_bytes(bytes).created_at);
            assert!((1000..=9999).contains(&year), "{bytes:?} → {year}");
        }
    }
}
