//! Datums as users see them, and `datum retry`.

use axum::{Json, extract::State};
use falconeri_common::{
    api::{AttemptResponse, DatumResponse, DatumRetryResponse},
    models::{Datum, db_now, stats::attempt_stats},
};

use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    auth::Principal,
    error::{ApiPath, AppResult},
    openapi::{BadRequest, Conflict, Forbidden, Internal, NotFound, Unauthorized, Unavailable},
    start_job,
    state::{AppState, Change},
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(show))
        .routes(routes!(retry))
}

/// A datum with its input and output files, its captured output, and
/// every attempt with the statistics its worker measured.
#[utoipa::path(
    get,
    operation_id = "show_datum",
    path = "/v1/datums/{id}",
    tag = "datums",
    summary = "A datum, its files, output and attempts",
    params(("id" = i64, Path, description = "The datum's id")),
    responses(
        (status = 200, description = "The datum", body = DatumResponse),
        BadRequest, Unauthorized, Forbidden, NotFound, Unavailable, Internal,
    ),
)]
async fn show(
    principal: Principal,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> AppResult<Json<DatumResponse>> {
    principal.require_admin()?;
    let response = state
        .db(move |conn| {
            let datum = Datum::find(conn, id)?;
            // A skipped datum's files and outputs are those of the datum
            // that ran in its stead.
            let ran_as = datum.skipped_from.unwrap_or(id);
            let input_files = Datum::input_files(conn, ran_as)?;
            let output_files = Datum::output_files(conn, ran_as)?;
            let attempts = Datum::attempts(conn, id)?;
            let mut stats = attempt_stats(conn, id)?.into_iter().peekable();
            let attempts = attempts
                .into_iter()
                .map(|attempt| {
                    let mut response = AttemptResponse::from(attempt);
                    // Both are in attempt order.
                    response.stats = stats
                        .next_if(|(number, _)| *number == response.number)
                        .map(|(_, stats)| stats);
                    response
                })
                .collect();
            let output = datum.output.clone();
            let fingerprint = datum.fingerprint.clone();
            Ok(DatumResponse {
                datum: datum.into(),
                input_files: input_files.into_iter().map(Into::into).collect(),
                output_files: output_files.into_iter().map(Into::into).collect(),
                output,
                attempts,
                fingerprint,
            })
        })
        .await?;
    Ok(Json(response))
}

/// Runs a datum that ended `error` or `canceled` again: it goes back to
/// its job's queue with a fresh budget of `datum_tries` (its attempts stay
/// on record). A job still running picks it up; a job that ended is
/// reopened and its workers are started again, and it ends anew once the
/// datum does. Any other datum is a 409.
#[utoipa::path(
    post,
    operation_id = "retry_datum",
    path = "/v1/datums/{id}/retry",
    tag = "datums",
    summary = "Run a failed or canceled datum again",
    params(("id" = i64, Path, description = "The datum's id")),
    responses(
        (status = 200, description = "The datum, ready again, and its job", body = DatumRetryResponse),
        BadRequest, Unauthorized, Forbidden, NotFound, Conflict, Unavailable, Internal,
    ),
)]
async fn retry(
    principal: Principal,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> AppResult<Json<DatumRetryResponse>> {
    principal.require_admin()?;
    // The datum's job, to wait for its wind-down if it just ended (a retry
    // that reopens the job must not race it; see `lock_job_ending`).
    let job_id = state.db(move |conn| Datum::find(conn, id)).await?.job_id;
    let ending = state.lock_job_ending(job_id).await;
    let retried = state
        .db_retrying(move |conn| {
            let now = db_now(conn)?;
            Datum::retry(conn, id, now)
        })
        .await?;
    if retried.reopened {
        state.notify(Change::JobState { job_id });
        start_job::restart_workers(&state, &retried.job, 1).await?;
    }
    drop(ending);
    state.notify(Change::DatumsReady { job_id, n: 1 });
    Ok(Json(DatumRetryResponse {
        datum: retried.datum.into(),
        job: retried.job.into(),
        reopened: retried.reopened,
    }))
}
