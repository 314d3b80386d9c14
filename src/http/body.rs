//! [`JsonBody`]: the JSON request payload of every operation that takes a
//! body. It is poem-openapi's `Json<T>` with typed errors, so that
//! [`crate::error`] tells a malformed body from an invalid one by the error's
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
