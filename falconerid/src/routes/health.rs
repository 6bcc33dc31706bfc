//! Liveness, readiness and version.

use axum::{Json, Router, routing::get};
use falconeri_common::api::{VersionResponse, paths};
use serde_json::{Value, json};

use crate::{
    auth::Principal,
    error::{AppError, AppResult},
    state::AppState,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route(paths::HEALTHZ, get(healthz))
        .route(paths::READYZ, get(readyz))
        .route(paths::VERSION, get(version))
}

/// The process answers: no dependencies checked.
async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// The database answers too.
async fn readyz(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> AppResult<Json<Value>> {
    let pool = state.pool().clone();
    let ready = tokio::task::spawn_blocking(move || pool.is_ready())
        .await
        .unwrap_or(false);
    if ready {
        Ok(Json(json!({ "status": "ready" })))
    } else {
        Err(AppError::Unavailable(
            "the database is not answering".to_owned(),
        ))
    }
}

async fn version(
    _principal: Principal,
    axum::extract::State(state): axum::extract::State<AppState>,
) -> Json<VersionResponse> {
    Json(VersionResponse {
        version: falconeri_common::VERSION.to_owned(),
        database: state.pool().backend().name().to_owned(),
        executor: state.executor().name().to_owned(),
    })
}
