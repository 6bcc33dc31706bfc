//! Liveness, readiness and version.

use std::time::Duration;

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

/// How long `/readyz` waits for a connection and its answer. Probes
/// (Kubernetes' default timeout is 1 s) want an answer quickly, whatever
/// `--db-wait` says, and a database that takes longer than this to answer
/// `SELECT 1` is not ready.
const READY_BUDGET: Duration = Duration::from_secs(1);

/// The database answers too: 503 within [`READY_BUDGET`] (plus a margin for
/// a busy machine) when it does not.
async fn readyz(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> AppResult<Json<Value>> {
    let pool = state.pool().clone();
    let probe = tokio::task::spawn_blocking(move || pool.is_ready(READY_BUDGET));
    // `is_ready` keeps its budget unless a query hangs on a dead socket; the
    // answer must not hang with it (the blocking probe ends on its own).
    let ready = matches!(
        tokio::time::timeout(READY_BUDGET + READY_BUDGET / 2, probe).await,
        Ok(Ok(true))
    );
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
