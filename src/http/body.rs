//! [`JsonBody`]: the JSON request payload of every operation that takes a
//! body. It is poem-openapi's `Json<T>` with typed errors, so that
//! [`crate::http::error`] tells a malformed body from an invalid one by the error's
//! type rather than by the words of a message that an upgrade could change:
//!
//! - [`MalformedJson`]: the bytes are not JSON (serde_json's syntax, EOF or
//!   I/O categories): 400.
//! - [`InvalidBody`]: the JSON does not match the operation's schema: 422,
//!   naming the field at fault by its JSON Pointer (RFC 6901), for example
//!   `/body`, and the rule it broke: missing or null, wrong type, blank, too
//!   long, both shapes at once (see [`FlatOrWrapped`]).
//!
//! **Unknown keys are ignored** (a tolerant reader): a body may carry keys
//! this version does not define, so that clients can send fields a later
//! version adds, and Rails clients can send their usual extra parameters.
//! The schemas allow them (no `additionalProperties: false`).
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

/// The body is JSON but does not match the schema: 422.
#[derive(Debug, thiserror::Error)]
#[error("invalid request body: {}{detail}", if pointer.is_empty() { String::new() } else { format!("`{pointer}`: ") })]
pub struct InvalidBody {
    /// The JSON Pointer (RFC 6901) of the field at fault, for example
    /// `/body` or `/message/body`; empty for the body as a whole.
    pub pointer: String,
    /// The rule it broke, in words.
    pub detail: String,
}

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

impl<T: Locate> ParsePayload for JsonBody<T> {
    const IS_REQUIRED: bool = T::IS_REQUIRED;

    async fn from_request(request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        let data = Vec::<u8>::from_request(request, body).await?;
        let value = if data.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&data).map_err(MalformedJson)?
        };
        match T::parse_from_json(Some(value)) {
            Ok(parsed) => Ok(Self(parsed)),
            Err(e) => {
                // Parsed again only on this error path, so that a valid body
                // is not copied (it can be `MAX_REQUEST_BYTES` long).
                let value = serde_json::from_slice(&data).unwrap_or_default();
                Err(T::locate(&value, e.into_message()).into())
            }
        }
    }
}

impl_apirequest_for_payload!(JsonBody<T>, T: Locate);

/// A body type that can say which field made its parse fail.
/// poem-openapi's messages name the type (`occurred while parsing
/// "MessageInput"`), not the field; this finds the field.
pub trait Locate: ParseFromJSON {
    /// The field of `value` at fault, given the parser's `message` (used
    /// for the rule when the check is not structural).
    fn locate(value: &serde_json::Value, message: String) -> InvalidBody;
}

/// [`Locate`] for a body that is a poem-openapi `Object`.
macro_rules! locate_object {
    ($($t:ty),+) => {$(
        impl $crate::http::body::Locate for $t {
            fn locate(value: &serde_json::Value, message: String) -> $crate::http::body::InvalidBody {
                $crate::http::body::locate_in_object::<$t>(value, message, "")
            }
        }
    )+};
}
pub(crate) use locate_object;

/// The JSON type of `value`, in words: `a string`, `null`…
fn kind(value: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Whether `value` is of the OpenAPI type `ty` (`string`, `integer`…).
fn is_of_type(value: &serde_json::Value, ty: &str) -> bool {
    use serde_json::Value;
    match (ty, value) {
        ("string", Value::String(_)) | ("boolean", Value::Bool(_)) => true,
        ("array", Value::Array(_)) | ("object", Value::Object(_)) => true,
        ("number", Value::Number(_)) => true,
        ("integer", Value::Number(n)) => n.is_i64() || n.is_u64(),
        // Any other schema type (for example `oneOf` wrappers) is left to
        // the parser.
        (other, _) => !matches!(
            other,
            "string" | "boolean" | "array" | "object" | "number" | "integer"
        ),
    }
}

/// poem-openapi's `message` without its wrapping: drops `failed to parse
/// "X": ` and ` (occurred while parsing "X")`, and words a failed
/// validator (`field `name` verification failed. maxLength(255)`) as the
/// rule it names.
fn rule(message: &str) -> String {
    let mut m = message.trim();
    if let Some(at) = m.find(" (occurred while parsing \"") {
        m = &m[..at];
    }
    while let Some(rest) = m.strip_prefix("failed to parse \"") {
        match rest.find("\": ") {
            Some(at) => m = &rest[at + 3..],
            None => break,
        }
    }
    if let Some(at) = m.find("verification failed. ") {
        return format!("breaks {}", &m[at + "verification failed. ".len()..]);
    }
    m.to_string()
}

/// The field of the object `value` that made `T`'s parse fail, checked in
/// this order: not an object; a required field missing or null; a field of
/// the wrong JSON type; else the first field that fails alone (with the
/// other required fields beside it), its rule taken from the parser.
/// `prefix` is prepended to every pointer (`/message` inside a wrapper).
pub(crate) fn locate_in_object<T: ParseFromJSON>(
    value: &serde_json::Value,
    message: String,
    prefix: &str,
) -> InvalidBody {
    use poem_openapi::registry::MetaSchemaRef;
    let at = |field: &str, detail: String| InvalidBody {
        pointer: format!("{prefix}/{field}"),
        detail,
    };
    let mut registry = Registry::new();
    T::register(&mut registry);
    let schema = match T::schema_ref() {
        MetaSchemaRef::Reference(name) => registry.schemas.get(&name).cloned(),
        MetaSchemaRef::Inline(schema) => Some(*schema),
    };
    let whole = |detail: String| InvalidBody {
        pointer: prefix.to_string(),
        detail,
    };
    let Some(schema) = schema.filter(|s| s.ty == "object") else {
        return whole(rule(&message));
    };
    let Some(object) = value.as_object() else {
        return whole(format!("expected a JSON object, found {}", kind(value)));
    };
    for field in &schema.required {
        match object.get(*field) {
            None => return at(field, "required, and missing".into()),
            Some(serde_json::Value::Null) => return at(field, "required, and null".into()),
            Some(_) => {}
        }
    }
    for (field, property) in &schema.properties {
        let Some(v) = object.get(*field).filter(|v| !v.is_null()) else {
            continue;
        };
        let ty = match property {
            MetaSchemaRef::Inline(p) => p.ty,
            MetaSchemaRef::Reference(name) => registry.schemas.get(name).map_or("", |p| p.ty),
        };
        if !is_of_type(v, ty) {
            return at(
                field,
                format!("expected {}, found {}", article(ty), kind(v)),
            );
        }
    }
    for (field, _) in &schema.properties {
        let Some(v) = object.get(*field) else {
            continue;
        };
        let mut alone = serde_json::Map::new();
        for required in &schema.required {
            if let Some(r) = object.get(*required) {
                alone.insert((*required).to_string(), r.clone());
            }
        }
        alone.insert((*field).to_string(), v.clone());
        if let Err(e) = T::parse_from_json(Some(serde_json::Value::Object(alone))) {
            return at(field, rule(e.message()));
        }
    }
    whole(rule(&message))
}

/// `a string`, `an integer`, `an array`…
fn article(ty: &str) -> String {
    match ty.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => format!("an {ty}"),
        _ => format!("a {ty}"),
    }
}

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

impl<T: Wrappable> Locate for FlatOrWrapped<T> {
    /// Inside the wrapper, pointers start with it (`/message/body`); both
    /// shapes at once, or a wrapper that is not an object, point at the
    /// wrapper.
    fn locate(value: &serde_json::Value, message: String) -> InvalidBody {
        match value.as_object().and_then(|o| o.get(T::WRAPPER)) {
            Some(inner) if inner.is_object() && value.as_object().is_some_and(|o| o.len() == 1) => {
                locate_in_object::<T>(inner, message, &format!("/{}", T::WRAPPER))
            }
            Some(_) => InvalidBody {
                pointer: format!("/{}", T::WRAPPER),
                detail: rule(&message),
            },
            None => locate_in_object::<T>(value, message, ""),
        }
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
