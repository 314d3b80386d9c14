//! [`NonBlank`]: a JSON string field that is only a string, and not blank.
//!
//! poem-openapi's `String` also accepts JSON numbers and booleans (`false`
//! becomes `"false"`), which would store what the client never meant as
//! text and contradict the schema; `NonBlank` accepts JSON strings only, so
//! anything else is a 422.

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

impl Type for NonBlank {
    const IS_REQUIRED: bool = true;
    type RawValueType = String;
    type RawElementValueType = String;

    fn name() -> Cow<'static, str> {
        "string".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        let mut schema = MetaSchema::new("string");
        schema.min_length = Some(1);
        schema.pattern = Some(NOT_BLANK_PATTERN.to_string());
        MetaSchemaRef::Inline(Box::new(schema))
    }

    fn as_raw_value(&self) -> Option<&String> {
        Some(&self.0)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a String> + 'a> {
        Box::new(std::iter::once(&self.0))
    }
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

impl ParseFromJSON for NonBlank {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value.unwrap_or_default() {
            Value::String(s) => non_blank(s),
            other => Err(ParseError::expected_type(other)),
        }
    }
}

impl poem_openapi::types::ParseFromParameter for NonBlank {
    fn parse_from_parameter(value: &str) -> ParseResult<Self> {
        non_blank(value.to_string())
    }
}

impl ToJSON for NonBlank {
    fn to_json(&self) -> Option<Value> {
        Some(Value::String(self.0.clone()))
    }
}
