//! Validated values. Each `parse` returns an [`Invalid`] (the HTTP layer's 422) on bad
//! input, so invalid data never travels past the HTTP edge.

pub mod record;

use base64::Engine;
use chrono::{DateTime, SubsecRound, Utc};
use rand::RngCore;

/// Why a value is not valid: a sentence for the client. The HTTP layer
/// answers it with 422.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl Invalid {
    /// An error saying `msg`.
    pub fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }
}

/// An application's name: 1 to 255 characters (Unicode scalar values, which is
/// what a `VARCHAR(255)` in utf8mb4 counts), not blank.
#[derive(Debug, Clone)]
pub struct AppName(String);

impl AppName {
    /// Longest name, in characters.
    pub const MAX_CHARS: usize = 255;

    /// Checks a client-supplied name. Errors: 422 when blank or too long.
    pub fn parse(s: String) -> Result<Self, Invalid> {
        if is_blank(&s) {
            return Err(Invalid::new("name must not be blank"));
        }
        let chars = s.chars().count();
        if chars > Self::MAX_CHARS {
            return Err(Invalid::new(format!(
                "name is {chars} characters long; the maximum is {}",
                Self::MAX_CHARS
            )));
        }
        Ok(Self(s))
    }

    /// The name, byte for byte as the client sent it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A message body: 1 byte up to `MAX_MESSAGE_BYTES` bytes of UTF-8, not blank.
#[derive(Debug, Clone)]
pub struct MessageBody(String);

impl MessageBody {
    /// Checks a client-supplied body against `max_bytes`. Errors: 422 when
    /// blank (empty or whitespace only) or longer than `max_bytes` bytes.
    pub fn parse(s: String, max_bytes: u32) -> Result<Self, Invalid> {
        if is_blank(&s) {
            return Err(Invalid::new("body must not be blank"));
        }
        if s.len() > max_bytes as usize {
            return Err(Invalid::new(format!(
                "body is {} bytes long; the maximum is {max_bytes} bytes (MAX_MESSAGE_BYTES)",
                s.len()
            )));
        }
        Ok(Self(s))
    }

    /// The body, byte for byte as the client sent it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Takes the body out.
    pub fn into_inner(self) -> String {
        self.0
    }
}

/// Whether `s` is blank: empty, or only spaces, tabs, CRs and LFs. This is
/// the same set the spec's `pattern: [^ \t\r\n]` names, so that clients,
/// schema validators and the service agree on what "blank" means.
pub fn is_blank(s: &str) -> bool {
    s.chars().all(|c| matches!(c, ' ' | '\t' | '\r' | '\n'))
}

/// The current time, cut to the microseconds that `DATETIME(6)` stores, so
/// that what a write returns equals what a later read returns.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// Creates an application token: 192 random bits from the OS-seeded CSPRNG,
/// encoded as 32 characters of URL-safe base64 without padding (RFC 4648 §5).
pub fn new_token() -> String {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether `s` can be a token at all (length and alphabet). Anything else is
/// answered 404 without a database lookup.
pub fn is_plausible_token(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Whether `key` has the shape of an unguessable `Idempotency-Key` for an
/// application create: at least 22 characters of the URL-safe base64
/// alphabet (`A-Z a-z 0-9 - _`, 22 of them carry 128 bits; RFC 4648 §5),
/// with optional `=` padding. A UUID (RFC 9562, 36 characters of hex digits
/// and hyphens) is of that shape. The shape cannot prove randomness; it
/// rules out short or structured keys (`1`, `retry-2`) that another client
/// could guess.
pub fn is_unguessable_key(key: &str) -> bool {
    let body = key.trim_end_matches('=');
    body.len() >= 22
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Page of a list: `page` from 1, `per_page` from 1 to [`Page::MAX_PER_PAGE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// 1-based page number.
    pub page: u32,
    /// Rows per page.
    pub per_page: u32,
}

impl Page {
    /// Default rows per page.
    pub const DEFAULT_PER_PAGE: u32 = 20;
    /// Most rows per page.
    pub const MAX_PER_PAGE: u32 = 100;
    /// Highest page number accepted; deeper pages should filter instead.
    pub const MAX_PAGE: u32 = 100_000;

    /// Checks the query parameters. Errors: 422 when out of range.
    pub fn parse(page: Option<i64>, per_page: Option<i64>) -> Result<Self, Invalid> {
        let page = page.unwrap_or(1);
        let per_page = per_page.unwrap_or(Self::DEFAULT_PER_PAGE as i64);
        if !(1..=Self::MAX_PAGE as i64).contains(&page) {
            return Err(Invalid::new(format!(
                "page must be between 1 and {}",
                Self::MAX_PAGE
            )));
        }
        if !(1..=Self::MAX_PER_PAGE as i64).contains(&per_page) {
            return Err(Invalid::new(format!(
                "per_page must be between 1 and {}",
                Self::MAX_PER_PAGE
            )));
        }
        Ok(Self {
            page: page as u32,
            per_page: per_page as u32,
        })
    }

    /// SQL `LIMIT`: one more row than a page, to learn whether a next page exists.
    pub fn limit_plus_one(&self) -> i64 {
        self.per_page as i64 + 1
    }

    /// SQL `OFFSET`.
    pub fn offset(&self) -> i64 {
        (self.page as i64 - 1) * self.per_page as i64
    }
}

/// Which items of a list numbered within its scope (an application's chats,
/// a chat's messages) a request asks for: a page by `page`/`per_page`, or
/// the items after a cursor by `after`/`limit` (keyset pagination: the
/// cost of a page does not grow with its depth, and items created or
/// deleted meanwhile neither repeat nor skip one on a walk). With both
/// kinds given, the cursor wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// `page` and `per_page`: rows skipped by `OFFSET`.
    Page(Page),
    /// `after` and `limit`: the first `limit` items numbered above `after`.
    After {
        /// The cursor: the last number the client has (0: from the start).
        after: i64,
        /// Items per page, 1 to [`Page::MAX_PER_PAGE`].
        limit: u32,
    },
}

impl Window {
    /// Checks the query parameters: `after` or `limit` picks the cursor
    /// (`after` 0 when absent; the size `limit`, else `per_page`, else
    /// [`Page::DEFAULT_PER_PAGE`]; `page` is then ignored: the cursor takes
    /// precedence, as every combination the spec allows is answered), else
    /// a page as [`Page::parse`]. Errors: 422 when a value is out of range.
    pub fn parse(
        page: Option<i64>,
        per_page: Option<i64>,
        after: Option<i64>,
        limit: Option<i64>,
    ) -> Result<Self, Invalid> {
        if after.is_none() && limit.is_none() {
            return Page::parse(page, per_page).map(Window::Page);
        }
        let after = after.unwrap_or(0);
        if after < 0 {
            return Err(Invalid::new("after must be 0 or more"));
        }
        let limit = limit.or(per_page).unwrap_or(Page::DEFAULT_PER_PAGE as i64);
        if !(1..=Page::MAX_PER_PAGE as i64).contains(&limit) {
            return Err(Invalid::new(format!(
                "limit must be between 1 and {}",
                Page::MAX_PER_PAGE
            )));
        }
        Ok(Window::After {
            after,
            limit: limit as u32,
        })
    }

    /// Items per page.
    pub fn size(&self) -> u32 {
        match self {
            Window::Page(p) => p.per_page,
            Window::After { limit, .. } => *limit,
        }
    }

    /// SQL: the number the rows must be above (0 for a page: numbers start
    /// at 1).
    pub fn after(&self) -> i64 {
        match self {
            Window::Page(_) => 0,
            Window::After { after, .. } => *after,
        }
    }

    /// SQL `LIMIT`: one more row than a page, to learn whether more follow.
    pub fn limit_plus_one(&self) -> i64 {
        self.size() as i64 + 1
    }

    /// SQL `OFFSET` (0 after a cursor).
    pub fn offset(&self) -> i64 {
        match self {
            Window::Page(p) => p.offset(),
            Window::After { .. } => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unguessable_keys_are_uuids_or_128_bits_of_url_safe_base64() {
        assert!(is_unguessable_key("8f14e45f-ceea-467f-a0e6-5b9f2c1d0a3b"));
        assert!(is_unguessable_key("q1W2e3R4t5Y6u7I8o9P0aS"));
        assert!(is_unguessable_key("q1W2e3R4t5Y6u7I8o9P0aS=="));
        assert!(!is_unguessable_key("retry-1"));
        assert!(!is_unguessable_key("q1W2e3R4t5Y6u7I8o9P0a"));
        assert!(!is_unguessable_key("q1W2e3R4t5Y6u7I8o9P0aS+/"));
        assert!(!is_unguessable_key("============================"));
    }

    #[test]
    fn tokens_are_url_safe_and_distinct() {
        let a = new_token();
        let b = new_token();
        assert_eq!(a.len(), 32);
        assert!(is_plausible_token(&a));
        assert_ne!(a, b);
    }

    #[test]
    fn names_count_characters_not_bytes() {
        assert!(AppName::parse("é".repeat(255)).is_ok());
        assert!(AppName::parse("é".repeat(256)).is_err());
        assert!(AppName::parse("  ".into()).is_err());
    }

    #[test]
    fn bodies_count_bytes() {
        assert!(MessageBody::parse("é".repeat(5), 10).is_ok());
        assert!(MessageBody::parse("é".repeat(6), 10).is_err());
        assert!(MessageBody::parse("".into(), 10).is_err());
    }

    #[test]
    fn pages_are_bounded() {
        assert!(Page::parse(Some(0), None).is_err());
        assert!(Page::parse(None, Some(101)).is_err());
        assert!(Page::parse(Some(-1), None).is_err());
        let p = Page::parse(Some(3), Some(10)).unwrap();
        assert_eq!((p.offset(), p.limit_plus_one()), (20, 11));
    }

    #[test]
    fn a_window_is_a_page_or_a_cursor_never_both() {
        let w = Window::parse(Some(2), Some(10), None, None).unwrap();
        assert_eq!((w.after(), w.offset(), w.limit_plus_one()), (0, 10, 11));
        let w = Window::parse(None, None, Some(500), Some(30)).unwrap();
        assert_eq!((w.after(), w.offset(), w.limit_plus_one()), (500, 0, 31));
        let w = Window::parse(None, None, None, Some(5)).unwrap();
        assert_eq!(w, Window::After { after: 0, limit: 5 });
        // The cursor takes precedence over a page.
        assert_eq!(
            Window::parse(Some(7), None, Some(3), None).unwrap(),
            Window::After {
                after: 3,
                limit: 20
            }
        );
        assert_eq!(
            Window::parse(None, Some(10), Some(3), Some(5)).unwrap(),
            Window::After { after: 3, limit: 5 }
        );
        assert_eq!(
            Window::parse(None, Some(10), Some(3), None).unwrap(),
            Window::After {
                after: 3,
                limit: 10
            }
        );
        assert!(Window::parse(None, None, Some(-1), None).is_err());
        assert!(Window::parse(None, None, Some(1), Some(0)).is_err());
        assert!(Window::parse(None, None, Some(1), Some(101)).is_err());
    }
}
