//! Liveness, readiness and version.

use std::time::Duration;

use axum::Json;
use falconeri_common::api::VersionResponse;
use serde_json::{Value, json};

use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    auth::Principal,
    error::{AppError, AppResult},
    openapi::{Internal, Unauthorized, Unavailable},
    state::AppState,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(version))
}

/// The body of `/healthz` and `/readyz`.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[allow(dead_code)] // Describes the JSON the handlers build.
struct HealthStatus {
    /// `ok` (`/healthz`) or `ready` (`/readyz`).
    status: String,
}

/// The process answers: no dependencies checked.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    summary = "Liveness",
    responses((status = 200, description = "The process answers", body = HealthStatus)),
    security(()),
)]
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
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    summary = "Readiness: the database answers",
    responses(
        (status = 200, description = "The database answers", body = HealthStatus),
        Unavailable,
    ),
    security(()),
)]
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

/// The server's version, database and executor.
#[utoipa::path(
    get,
    path = "/v1/version",
    tag = "health",
    summary = "Version, database and executor",
    responses(
        (status = 200, description = "The server's version", body = VersionResponse),
        Unauthorized,
        Unavailable,
        Internal,
    ),
)]
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
