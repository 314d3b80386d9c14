//! Cross-application listings for operators (`GET /api/v1/admin/chats` and
//! `/admin/messages`): live chats and messages of every application, newest
//! first, paged with a keyset cursor.
//!
//! Keyset ("seek") pagination, not OFFSET: a page is the rows strictly after
//! the last row of the previous page in `(created_at, id)` order, read from
//! the `*_created_idx` indexes, so page 10,000 costs what page 1 costs and
//! rows inserted meanwhile never shift a page (see Markus Winand, "We need
//! tool support for keyset pagination", use-the-index-luke.com/no-offset).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::NaiveDateTime;
use sqlx::{MySql, MySqlPool, QueryBuilder};

/// Where a page ends: the `(created_at, id)` of its last row. Opaque to
/// clients: URL-safe base64 of `{created_at in µs since the epoch}.{id}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// `created_at` of the last row shown.
    pub created_at: NaiveDateTime,
    /// `id` of the last row shown (the tie-breaker).
    pub id: u64,
}

impl Cursor {
    /// The cursor's text form.
    pub fn encode(&self) -> String {
        let micros = self.created_at.and_utc().timestamp_micros();
        URL_SAFE_NO_PAD.encode(format!("{micros}.{}", self.id))
    }

    /// Parses a cursor made by [`Self::encode`]; `None` for anything else.
    pub fn decode(s: &str) -> Option<Self> {
        let raw = URL_SAFE_NO_PAD.decode(s.as_bytes()).ok()?;
        let text = std::str::from_utf8(&raw).ok()?;
        let (micros, id) = text.split_once('.')?;
        let created_at = chrono::DateTime::from_timestamp_micros(micros.parse().ok()?)?.naive_utc();
        // MariaDB's DATETIME range; anything else was not made by us.
        if !(1000..=9999).contains(&chrono::Datelike::year(&created_at)) {
            return None;
        }
        Some(Self {
            created_at,
            id: id.parse().ok()?,
        })
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
/// (all when `None`), newest first.
pub async fn chats(
    pool: &MySqlPool,
    after: Option<Cursor>,
    limit: i64,
) -> sqlx::Result<Vec<ChatListing>> {
    let mut qb = QueryBuilder::<MySql>::new(
        "SELECT c.id, a.token AS application_token, c.number, c.messages_count, \
         c.created_at, c.updated_at \
         FROM chats c JOIN applications a ON a.id = c.application_id \
         WHERE c.deleted_at IS NULL",
    );
    seek(&mut qb, "c", after, limit);
    qb.build_query_as().fetch_all(pool).await
}

/// Up to `limit` live messages of all applications created before `after`
/// (all when `None`), newest first.
pub async fn messages(
    pool: &MySqlPool,
    after: Option<Cursor>,
    limit: i64,
) -> sqlx::Result<Vec<MessageListing>> {
    let mut qb = QueryBuilder::<MySql>::new(
        "SELECT m.id, a.token AS application_token, c.number AS chat_number, m.number, \
         m.body, m.created_at, m.updated_at \
         FROM messages m JOIN chats c ON c.id = m.chat_id \
         JOIN applications a ON a.id = c.application_id \
         WHERE m.deleted_at IS NULL AND c.deleted_at IS NULL",
    );
    seek(&mut qb, "m", after, limit);
    qb.build_query_as().fetch_all(pool).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c = Cursor {
            created_at: chrono::DateTime::from_timestamp_micros(1_763_780_000_123_456)
                .unwrap()
                .naive_utc(),
            id: 42,
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        let far = URL_SAFE_NO_PAD.encode(format!("{}.1", i64::MAX / 2));
        for bad in [
            &far,
            "",
            "x",
            "!!!",
            &URL_SAFE_NO_PAD.encode("12"),
            &URL_SAFE_NO_PAD.encode("a.b"),
        ] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
    }
}
