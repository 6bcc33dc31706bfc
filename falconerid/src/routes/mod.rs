//! The HTTP API: one module per resource, each exposing a `router()`.
//! Handlers extract, call one model or service function, and answer an API
//! type from `falconeri_common::api`, never a database row.

mod datums;
mod health;
mod jobs;
mod logs;
pub(crate) mod workers;

use axum::Router;

use crate::{error::AppError, state::AppState};

/// Every route.
pub fn router() -> Router<AppState> {
    Router::new()
        .merge(health::router())
        .merge(jobs::router())
        .merge(datums::router())
        .merge(logs::router())
        .merge(workers::router())
        .fallback(|| async { AppError::NotFound("route".to_owned()) })
        .method_not_allowed_fallback(|| async { AppError::MethodNotAllowed })
}
