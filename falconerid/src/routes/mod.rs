//! The HTTP API: one module per resource, each exposing a `router()`.
//! Handlers extract, call one model or service function, and answer an API
//! type from `falconeri_common::api`, never a database row.
//!
//! Every route is registered here or in a module's `router()` through
//! utoipa-axum's `routes!`, from the handler's `#[utoipa::path]` attribute,
//! never with a bare `Router::route`: [`api`] is then the one table of
//! routes from which both the router and the OpenAPI document
//! ([`crate::openapi`]) are built. A new resource adds its module's
//! `router()` to [`api`]; its handlers carry the attribute.

mod attempts;
mod datums;
mod health;
mod jobs;
mod logs;
pub mod schedules;
pub(crate) mod workers;
pub mod workflows;

use axum::Router;
use utoipa::OpenApi;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{error::AppError, state::AppState};

/// A request body that is a document users write (a spec, a workflow, a
/// schedule) as text: `what` names it in the 400 when it is not UTF-8.
fn body_text<'a>(body: &'a [u8], what: &str) -> Result<&'a str, AppError> {
    std::str::from_utf8(body).map_err(|_| AppError::BadRequest(format!("{what} is not UTF-8")))
}

/// Every route, with its OpenAPI description.
pub fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(crate::openapi::ApiDoc::openapi())
        .merge(health::router())
        .merge(jobs::router())
        .merge(datums::router())
        .merge(logs::router())
        .merge(workers::router())
        .merge(attempts::router())
        .merge(workflows::router())
        .merge(schedules::router())
        .routes(routes!(crate::metrics::scrape))
        .routes(routes!(crate::openapi::serve))
}

/// Every route, and JSON answers for unknown routes and methods.
pub fn router() -> Router<AppState> {
    let (router, _) = api().split_for_parts();
    router
        .fallback(|| async { AppError::NotFound("route".to_owned()) })
        .method_not_allowed_fallback(|| async { AppError::MethodNotAllowed })
}
