//! `GET /v1/jobs/{id}/attempts`: a job's newest attempts, for the
//! dashboard's timeline of what each worker ran.

use axum::{Json, extract::State};
use falconeri_common::{
    api::{JobAttempt, JobAttemptsQuery, JobAttemptsResponse},
    models::{Attempt, Job},
};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    auth::Principal,
    error::{ApiPath, ApiQuery, AppResult},
    openapi::{BadRequest, Forbidden, Internal, NotFound, Unauthorized, Unavailable},
    state::AppState,
};

/// The most attempts one answer holds: a timeline wider than this is
/// unreadable anyway, and the answer stays small at any job size.
const MAX_ATTEMPTS: i64 = 5_000;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(newest))
}

/// The job's newest attempts, newest first, with their worker, times and
/// outcome.
#[utoipa::path(
    get,
    operation_id = "list_job_attempts",
    path = "/v1/jobs/{id}/attempts",
    tag = "jobs",
    summary = "A job's newest attempts",
    params(("id" = i64, Path, description = "The job's id"), JobAttemptsQuery),
    responses(
        (status = 200, description = "The newest attempts", body = JobAttemptsResponse),
        BadRequest, Unauthorized, Forbidden, NotFound, Unavailable, Internal,
    ),
)]
async fn newest(
    principal: Principal,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(query): ApiQuery<JobAttemptsQuery>,
) -> AppResult<Json<JobAttemptsResponse>> {
    principal.require_admin()?;
    let limit = query.limit.unwrap_or(500).clamp(1, MAX_ATTEMPTS);
    let attempts = state
        .db(move |conn| {
            Job::find(conn, id)?;
            Attempt::newest_of_job(conn, id, limit)
        })
        .await?;
    Ok(Json(JobAttemptsResponse {
        attempts: attempts
            .into_iter()
            .map(|attempt| JobAttempt {
                datum_id: attempt.datum_id,
                number: attempt.number,
                worker_id: attempt.worker_id,
                started_at: attempt.started_at,
                finished_at: attempt.finished_at,
                outcome: attempt.outcome,
            })
            .collect(),
    }))
}
