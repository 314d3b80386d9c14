//! Strict string types for request fields and parameters: [`NonBlank`] (a
//! name, a body, a search query) and [`Hex128`] (dead-letter ids, listing
//! cursors).
//!
//! poem-openapi's `String` also accepts JSON numbers and booleans (`false`
//! becomes `"false"`), which would store what the client never meant as
//! text and contradict the schema; these accept JSON strings only, so
//! anything else is a 422. Each publishes its rule in the schema (as a
//! pattern) and checks it in code without a regex.

use std::borrow::Cow;

use poem_openapi::registry::{MetaSchema, MetaSchemaRef};
use poem_openapi::types::{ParseError, ParseFromJSON, ParseResult, ToJSON, Type};
use serde_json::Value;

/// The spec's pattern for "not blank": at least one character that is not
/// a space, tab, CR or LF (see [`crate::domain::is_blank`]).
pub const NOT_BLANK_PATTERN: &str = "[^ \\t\\r\\n]";

/// A JSON string (or query parameter) that is not blank, checked without a
/// regex: the schema says `minLength: 1` and `pattern: [^ \t\r\n]`, and the
/// parser applies [`crate::domain::is_blank`], which means the same. (poem-
/// openapi's `pattern` validator compiles its regex on every request.)
/// A blank value is a parse error, which the API answers with 422.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct NonBlank(pub String);

/// Implements poem-openapi's `Type`, `ParseFromJSON`, `ParseFromParameter`
/// and `ToJSON` for a `String` newtype: the schema comes from `$schema()`,
/// a JSON value must be a string (anything else is a type error), and every
/// value, from JSON or a parameter, goes through `$check(String)`.
macro_rules! strict_string {
    ($ty:ident, $schema:path, $check:path) => {
        impl Type for $ty {
            const IS_REQUIRED: bool = true;
            type RawValueType = String;
            type RawElementValueType = String;

            fn name() -> Cow<'static, str> {
                "string".into()
            }

            fn schema_ref() -> MetaSchemaRef {
                MetaSchemaRef::Inline(Box::new($schema()))
            }

            fn as_raw_value(&self) -> Option<&String> {
                Some(&self.0)
            }

            fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a String> + 'a> {
                Box::new(std::iter::once(&self.0))
            }
        }

        impl ParseFromJSON for $ty {
            fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
                match value.unwrap_or_default() {
                    Value::String(s) => $check(s),
                    other => Err(ParseError::expected_type(other)),
                }
            }
        }

        impl poem_openapi::types::ParseFromParameter for $ty {
            fn parse_from_parameter(value: &str) -> ParseResult<Self> {
                $check(value.to_string())
            }
        }

        impl ToJSON for $ty {
            fn to_json(&self) -> Option<Value> {
                Some(Value::String(self.0.clone()))
            }
        }
    };
}

fn non_blank_schema() -> MetaSchema {
    let mut schema = MetaSchema::new("string");
    schema.min_length = Some(1);
    schema.pattern = Some(NOT_BLANK_PATTERN.to_string());
    schema
}

fn non_blank(s: String) -> ParseResult<NonBlank> {
    if crate::domain::is_blank(&s) {
        Err(ParseError::custom(
            "must not be blank (empty, or only spaces, tabs, CRs and LFs)",
        ))
    } else {
        Ok(NonBlank(s))
    }
}

strict_string!(NonBlank, non_blank_schema, non_blank);

/// 128 bits as 32 lowercase hex characters: dead-letter ids and listing
/// cursors. Strict like [`NonBlank`] (a JSON string only), and checked
/// without a regex; the schema publishes the same rule as a pattern. Any other
/// value is a parse error, which the API answers with 422.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Hex128(pub String);

/// The spec's pattern of [`Hex128`].
pub const HEX128_PATTERN: &str = "^[0-9a-f]{32}$";

impl Hex128 {
    /// The 16 bytes it spells.
    pub fn bytes(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        // Checked at parse time, so this cannot fail.
        let _ = hex::decode_to_slice(&self.0, &mut out);
        out
    }
}

fn hex128(s: String) -> ParseResult<Hex128> {
    if s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(Hex128(s))
    } else {
        Err(ParseError::custom(
            "must be 32 lowercase hex characters, as given by this API",
        ))
    }
}

fn hex128_schema() -> MetaSchema {
    let mut schema = MetaSchema::new("string");
    schema.min_length = Some(32);
    schema.max_length = Some(32);
    schema.pattern = Some(HEX128_PATTERN.to_string());
    schema
}

strict_string!(Hex128, hex128_schema, hex128);

/// The search parameter `q`. The spec declares it required (a non-blank
/// string), yet a request without it still parses, as `None`, so that the
/// handler can take its alias `query` instead: OpenAPI 3.0 cannot say "one of
/// these two parameters", and a spec that made both optional would call a
/// request with neither valid. A `q` that is present is checked like
/// [`NonBlank`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchTerms(pub Option<NonBlank>);

impl Type for SearchTerms {
    const IS_REQUIRED: bool = true;
    type RawValueType = String;
    type RawElementValueType = String;

    fn name() -> Cow<'static, str> {
        "string".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(non_blank_schema()))
    }

    fn as_raw_value(&self) -> Option<&String> {
        self.0.as_ref().map(|n| &n.0)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a String> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl poem_openapi::types::ParseFromParameter for SearchTerms {
    fn parse_from_parameter(value: &str) -> ParseResult<Self> {
        non_blank(value.to_string())
            .map(|v| Self(Some(v)))
            .map_err(ParseError::propagate)
    }

    fn parse_from_parameters<I: IntoIterator<Item = A>, A: AsRef<str>>(
        iter: I,
    ) -> ParseResult<Self> {
        match iter.into_iter().next() {
            Some(value) => Self::parse_from_parameter(value.as_ref()),
            None => Ok(Self(None)),
        }
    }
}

/// The `Idempotency-Key` request header (IETF draft
/// `draft-ietf-httpapi-idempotency-key-header`): any value the header can
/// carry (a UUID is a good choice). The service keeps only its SHA-256, so
/// its length costs nothing; HTTP itself trims surrounding spaces, so the
/// spec sets no pattern it could not hold to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct IdempotencyKey(pub String);

fn idempotency_key(s: String) -> ParseResult<IdempotencyKey> {
    Ok(IdempotencyKey(s))
}

fn idempotency_key_schema() -> MetaSchema {
    MetaSchema::new("string")
}

strict_string!(IdempotencyKey, idempotency_key_schema, idempotency_key);
