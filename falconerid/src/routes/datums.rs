//! Datums as users see them.

use axum::{Json, extract::State};
use falconeri_common::{
    api::{AttemptResponse, DatumResponse},
    models::{Datum, stats::attempt_stats},
};

use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    auth::Principal,
    error::{ApiPath, AppResult},
    openapi::{BadRequest, Forbidden, Internal, NotFound, Unauthorized, Unavailable},
    state::AppState,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(show))
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
