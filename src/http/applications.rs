//! `/api/v1/applications`: applications are written to MariaDB synchronously.

use crate::http::answers::{CreateApplication, Errors, Lookup, OperatorQuery, Update};
use poem::web::Data;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};

use super::admin::OptionalAdminKey;
use super::body::{FlatOrWrapped, JsonBody};
use super::fields::IdempotencyKey;
use super::schemas::{Application, ApplicationInput, ApplicationList, Meta};
use super::{ApiTags, AppState, lookup};
use crate::domain::{AppName, Page, is_plausible_token, new_token};
use crate::http::error::ApiError;
use crate::store;
use crate::store::search::IndexOp;
use crate::writebehind::{Idempotency, KeyState};

/// Operations on applications.
pub struct ApplicationsApi;

/// 201 with the new application.
#[derive(ApiResponse)]
pub enum CreatedApplication {
    /// The application was created; keep its token.
    #[oai(status = 201)]
    Created(Json<Application>),
}

/// 204 with no body.
#[derive(ApiResponse)]
pub enum Deleted {
    /// Deleted.
    #[oai(status = 204)]
    NoContent,
}

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Applications")]
impl ApplicationsApi {
    /// Create an application
    ///
    /// The server generates its token (192 random bits, URL-safe).
    #[oai(path = "/applications", method = "post")]
    async fn create(
        &self,
        state: Data<&AppState>,
        req: &poem::Request,
        /// Makes a retry safe: the same key from the same client (IP) with
        /// the same name within `IDEMPOTENCY_TTL_SECS` (default a day) gets
        /// the same application, and creates nothing; with another name it is
        /// a 422, and while the first request is in progress (at most
        /// `IDEMPOTENCY_IN_PROGRESS_SECS`, default 60 s) a 409. It must be
        /// unguessable: a UUID, or at least 22 URL-safe base64 characters
        /// (128 bits); anything else is a 422.
        #[oai(name = "Idempotency-Key")]
        idempotency_key: Header<Option<IdempotencyKey>>,
        input: JsonBody<FlatOrWrapped<ApplicationInput>>,
    ) -> Result<CreatedApplication, Errors<CreateApplication>> {
        let name = AppName::parse(input.0.0.name.0)?;
        let buffer = state.write_behind.buffer();
        // No application, hence no token, exists yet to scope the key by: it
        // is scoped by the client, so that no other client can learn a token
        // by replaying a key it guessed.
        let idem = match idempotency_key.0 {
            None => None,
            Some(k) => {
                if !crate::domain::is_unguessable_key(&k.0) {
                    return Err(ApiError::unprocessable(
                        "an application create's Idempotency-Key must be unguessable: a UUID, or at least 22 URL-safe base64 characters (128 bits)",
                    ).into());
                }
                let Some(client) = super::ratelimit::client_ip(req, &state.config.trusted_proxies)
                else {
                    return Err(ApiError::unprocessable(
                        "an Idempotency-Key on an application create needs the client's address, and this connection has none",
                    ).into());
                };
                Some(Idempotency::new(
                    &[client.to_string().as_bytes(), k.0.as_bytes()],
                    &[b"POST applications", name.as_str().as_bytes()],
                ))
            }
        };
        if let Some(idem) = &idem {
            match buffer.begin_application_key(idem).await? {
                KeyState::New => {}
                KeyState::Done(token) => {
                    let app = lookup::application(&state, &token).await?;
                    return Ok(CreatedApplication::Created(Json(app.into())));
                }
                KeyState::InProgress => {
                    return Err(ApiError::conflict(
                        "a request with this Idempotency-Key is still in progress; retry once it has answered",
                    ).into());
                }
            }
        }
        let token = new_token();
        let created =
            store::applications::create(&state.pool, &token, name.as_str(), crate::domain::now())
                .await;
        if let Some(idem) = &idem {
            let made = created.as_ref().ok().map(|_| token.as_str());
            if let Err(e) = buffer.finish_application_key(idem, made).await {
                tracing::warn!(error = %e, "could not record the outcome of an Idempotency-Key; a retry within its lifetime answers 409");
            }
        }
        let row = created?;
        // Warm the Redis cache so the first chat costs one round trip. Best
        // effort: a cold cache is filled on the first miss anyway.
        let buffer = state.write_behind.buffer();
        if let Err(e) = async {
            buffer.seed_app(&token, row.id).await?;
            // A new application has no chat anywhere: its counter starts
            // checked at 0 (with no epoch set yet, the first create checks it).
            state
                .write_behind
                .numbering()
                .start_application(&token)
                .await
        }
        .await
        {
            tracing::warn!(error = %e, "could not warm the cache for a new application");
        }
        Ok(CreatedApplication::Created(Json(row.into())))
    }

    /// List applications (operator key)
    ///
    /// Every application, with its token, in creation order, `per_page`
    /// (default 20, at most 100) per page. A token grants full access to its
    /// application, so this listing is part of the operator surface: it needs
    /// `Authorization: Bearer <ADMIN_API_KEY>` (401 without it), answers 404
    /// while `ADMIN_API_KEY` is unset, and is served only on `ADMIN_BIND_ADDR`
    /// when that is set. A deployment started with
    /// `PUBLIC_APPLICATION_LIST=true` (for demos) serves it to anyone.
    #[oai(path = "/applications", method = "get")]
    async fn list(
        &self,
        state: Data<&AppState>,
        key: OptionalAdminKey,
        /// Page number, from 1.
        #[oai(validator(minimum(value = "1"), maximum(value = "100000")))]
        page: Query<Option<i64>>,
        /// Items per page, 1 to 100 (default 20).
        #[oai(validator(minimum(value = "1"), maximum(value = "100")))]
        per_page: Query<Option<i64>>,
    ) -> Result<Json<ApplicationList>, Errors<OperatorQuery>> {
        if matches!(key, OptionalAdminKey::Missing) && !state.config.public_application_list {
            return Err(ApiError::unauthorized().into());
        }
        let page = Page::parse(page.0, per_page.0)?;
        let rows = super::reads::read_unscoped(&state, |pool| async move {
            store::applications::list(&pool, page).await
        })
        .await?;
        let (rows, meta) = Meta::paginate(page, rows);
        Ok(Json(ApplicationList {
            applications: rows.into_iter().map(Into::into).collect(),
            meta,
        }))
    }

    /// Get an application
    #[oai(path = "/applications/:token", method = "get")]
    async fn get(
        &self,
        state: Data<&AppState>,
        /// The application's token.
        token: Path<String>,
    ) -> Result<Json<Application>, Errors<Lookup>> {
        Ok(Json(lookup::application(&state, &token.0).await?.into()))
    }

    /// Rename an application
    #[oai(path = "/applications/:token", method = "put")]
    async fn update(
        &self,
        state: Data<&AppState>,
        /// The application's token.
        token: Path<String>,
        input: JsonBody<FlatOrWrapped<ApplicationInput>>,
    ) -> Result<Json<Application>, Errors<Update>> {
        if !is_plausible_token(&token.0) {
            return Err(ApiError::not_found("no application with this token").into());
        }
        let name = AppName::parse(input.0.0.name.0)?;
        store::applications::rename(&state.pool, &token.0, name.as_str(), crate::domain::now())
            .await?
            .map(|row| Json(row.into()))
            .ok_or_else(|| ApiError::not_found("no application with this token").into())
    }

    /// Delete an application
    ///
    /// Removes its chats and messages, including those still buffered. No
    /// create in it is acknowledged after this answers 204; when Redis cannot
    /// be reached, it answers 503 and deletes nothing.
    #[oai(path = "/applications/:token", method = "delete")]
    async fn delete(
        &self,
        state: Data<&AppState>,
        /// The application's token.
        token: Path<String>,
    ) -> Result<Deleted, Errors<Lookup>> {
        let app = lookup::application(&state, &token.0).await?;
        // Tombstone first, in the step that stops new numbers: no create can
        // be acknowledged after this answers. No tombstone, no delete (503).
        let buffer = state.write_behind.buffer();
        let tombstone = buffer.tombstone_app(&app.token).await?;
        if let Err(e) = store::applications::delete(&state.pool, &app.token).await {
            if let Err(undo) = buffer.untombstone(&tombstone).await {
                tracing::error!(error = %undo, "the delete failed and its Redis tombstone could not be lifted: creates in this application answer 404 until it is");
            }
            return Err(e.into());
        }
        if let Err(e) = buffer.commit_tombstone(&tombstone).await {
            tracing::warn!(error = %e, "the delete committed; its Redis tombstone stays, marked in flight");
        }
        if let Err(e) = state.live.application_deleted(&app.token).await {
            tracing::warn!(error = %e, "could not end the live event streams of a deleted application");
        }
        state
            .queue_index(
                &app.token,
                IndexOp::DeleteApplication {
                    application_id: app.id,
                },
            )
            .await;
        Ok(Deleted::NoContent)
    }
}
