//! [`JsonBody`]: the JSON request payload of every operation that takes a
//! body. It is poem-openapi's `Json<T>` with typed errors, so that
//! [`crate::http::error`] tells a malformed body from an invalid one by the error's
//! type rather than by the words of a message that an upgrade could change:
//!
//! - [`MalformedJson`]: the bytes are not JSON (serde_json's syntax, EOF or
//!   I/O categories): 400.
//! - [`InvalidBody`]: the JSON does not match the operation's schema (a
//!   missing field, a wrong type, an unknown key): 422.
//!
//! The spec is the same as `Json<T>`'s: content type
//! `application/json; charset=utf-8`, any `application/*+json` accepted, and
//! `T`'s schema. A body that cannot be read (for example one cut off by the
//! body limit) keeps poem's own error.

use poem::http::StatusCode;
use poem::{FromRequest, Request, RequestBody};
use poem_openapi::impl_apirequest_for_payload;
use poem_openapi::payload::{ParsePayload, Payload};
use poem_openapi::registry::{MetaSchemaRef, Registry};
use poem_openapi::types::{ParseFromJSON, Type};

/// A JSON request body parsed into `T` (see the module docs for its errors).
#[derive(Debug, Clone)]
pub struct JsonBody<T>(pub T);

/// The body is not well-formed JSON: 400. Holds serde_json's error, which
/// names the line and column.
#[derive(Debug, thiserror::Error)]
#[error("malformed JSON: {0}")]
pub struct MalformedJson(pub serde_json::Error);

impl poem::error::ResponseError for MalformedJson {
    fn status(&self) -> StatusCode {
        StatusCode::BAD_REQUEST
    }
}

/// The body is JSON but does not match the schema: 422. Holds
/// poem-openapi's description of the mismatch.
#[derive(Debug, thiserror::Error)]
#[error("invalid request body: {0}")]
pub struct InvalidBody(pub String);

impl poem::error::ResponseError for InvalidBody {
    fn status(&self) -> StatusCode {
        StatusCode::UNPROCESSABLE_ENTITY
    }
}

impl<T: Type> Payload for JsonBody<T> {
    const CONTENT_TYPE: &'static str = "application/json; charset=utf-8";

    fn check_content_type(content_type: &str) -> bool {
        <poem_openapi::payload::Json<T> as Payload>::check_content_type(content_type)
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: ParseFromJSON> ParsePayload for JsonBody<T> {
    const IS_REQUIRED: bool = T::IS_REQUIRED;

    async fn from_request(request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        let data = Vec::<u8>::from_request(request, body).await?;
        let value = if data.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&data).map_err(MalformedJson)?
        };
        T::parse_from_json(Some(value))
            .map(Self)
            .map_err(|e| InvalidBody(e.into_message()).into())
    }
}

impl_apirequest_for_payload!(JsonBody<T>, T: ParseFromJSON);

/// An input object that clients written against Rails implementations may
/// also send wrapped under the resource's name, as Rails' `wrap_parameters`
/// does: `{"name": …}` or `{"application": {"name": …}}`.
pub trait Wrappable: ParseFromJSON {
    /// The key of the wrapped shape, for example `application`.
    const WRAPPER: &'static str;

    /// A flat example, shown by Swagger UI as the default body.
    fn example() -> serde_json::Value;
}

/// A request body accepted flat (`T` itself) or wrapped under
/// [`Wrappable::WRAPPER`]. Both shapes go through `T`'s own parser, so every
/// validation and every error is the same. The spec publishes both, flat
/// first (so that Swagger UI's example is flat), as `oneOf`.
///
/// Errors (422, as [`InvalidBody`]): the wrapper key beside other keys (both
/// shapes at once, or the wrapper with extra keys), and whatever `T` refuses.
#[derive(Debug, Clone)]
pub struct FlatOrWrapped<T>(pub T);

impl<T: Wrappable> Type for FlatOrWrapped<T> {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    /// `T`'s name: the schema is inline, so the name only appears in error
    /// messages, which are then the same for both shapes.
    fn name() -> std::borrow::Cow<'static, str> {
        T::name()
    }

    /// `oneOf` the flat shape and the wrapped one. The flat branch also
    /// declares the wrapper key with a schema nothing matches, so that the
    /// spec, like the parser, refuses both shapes at once; the wrapped
    /// branch holds exactly one key. The example is flat.
    fn schema_ref() -> MetaSchemaRef {
        use poem_openapi::registry::MetaSchema;
        let nothing = MetaSchema {
            description: Some("Not allowed beside the flat fields: send one shape or the other."),
            min_length: Some(1),
            max_length: Some(0),
            ..MetaSchema::new("string")
        };
        let flat = MetaSchema {
            description: Some("The fields themselves (the default)."),
            all_of: vec![T::schema_ref()],
            properties: vec![(T::WRAPPER, MetaSchemaRef::Inline(Box::new(nothing)))],
            ..MetaSchema::new("object")
        };
        let wrapped = MetaSchema {
            description: Some("The same fields, wrapped under the resource's name (Rails style)."),
            required: vec![T::WRAPPER],
            properties: vec![(T::WRAPPER, T::schema_ref())],
            min_properties: Some(1),
            max_properties: Some(1),
            ..MetaSchema::new("object")
        };
        MetaSchemaRef::Inline(Box::new(MetaSchema {
            one_of: vec![
                MetaSchemaRef::Inline(Box::new(flat)),
                MetaSchemaRef::Inline(Box::new(wrapped)),
            ],
            example: Some(T::example()),
            ..MetaSchema::ANY
        }))
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        Some(self)
    }

    fn raw_element_iter<'a>(
        &'a self,
    ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        Box::new(std::iter::once(self))
    }
}

impl<T: Wrappable> ParseFromJSON for FlatOrWrapped<T> {
    fn parse_from_json(value: Option<serde_json::Value>) -> poem_openapi::types::ParseResult<Self> {
        use poem_openapi::types::ParseError;
        let value = value.unwrap_or_default();
        let value = match value {
            serde_json::Value::Object(mut map) if map.contains_key(T::WRAPPER) => {
                if map.len() > 1 {
                    let mut others: Vec<&str> = map
                        .keys()
                        .map(String::as_str)
                        .filter(|k| *k != T::WRAPPER)
                        .collect();
                    others.sort_unstable();
                    return Err(ParseError::custom(format!(
                        "send the fields either flat or wrapped as {{\"{w}\": {{…}}}}, not both: \
                         `{w}` cannot stand beside {}",
                        others
                            .iter()
                            .map(|k| format!("`{k}`"))
                            .collect::<Vec<_>>()
                            .join(", "),
                        w = T::WRAPPER,
                    )));
                }
                match map.remove(T::WRAPPER) {
                    Some(inner @ serde_json::Value::Object(_)) => inner,
                    _ => {
                        return Err(ParseError::custom(format!(
                            "`{}` must be a JSON object holding the fields",
                            T::WRAPPER
                        )));
                    }
                }
            }
            other => other,
        };
        T::parse_from_json(Some(value))
            .map(Self)
            .map_err(ParseError::propagate)
    }
}
