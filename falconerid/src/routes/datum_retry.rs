//! `POST /v1/datums/{id}/retry`: one more try for a datum that failed in a
//! job that still runs (the dashboard's "Retry" button on a datum).

use axum::{Json, extract::State};
use falconeri_common::{
    api::DatumSummary,
    models::{Datum, db_now},
};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    auth::Principal,
    error::{ApiPath, AppResult},
    openapi::{BadRequest, Conflict, Forbidden, Internal, NotFound, Unauthorized, Unavailable},
    state::{AppState, Change},
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(retry))
}

/// Moves a failed datum of a running job back to `ready` with one more
/// try, ahead of the datums not yet tried. A datum of a job that has ended
/// is retried with the job (`POST /v1/jobs/{id}/retry`): 409 here.
#[utoipa::path(
    post,
    operation_id = "retry_datum",
    path = "/v1/datums/{id}/retry",
    tag = "datums",
    summary = "Give a failed datum of a running job one more try",
    params(("id" = i64, Path, description = "The datum's id")),
    responses(
        (status = 200, description = "The datum, ready again", body = DatumSummary),
        BadRequest, Unauthorized, Forbidden, NotFound, Conflict, Unavailable, Internal,
    ),
)]
async fn retry(
    principal: Principal,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> AppResult<Json<DatumSummary>> {
    principal.require_admin()?;
    let datum = state
        .db(move |conn| {
            let now = db_now(conn)?;
            Datum::retry_failed(conn, id, now)
        })
        .await?;
    state.notify(Change::DatumsReady {
        job_id: datum.job_id,
        n: 1,
    });
    state.notify(Change::Progress {
        job_id: datum.job_id,
    });
    Ok(Json(datum.into()))
}
