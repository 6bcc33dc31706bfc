//! Datums as users see them.

use axum::{Json, extract::State};
use falconeri_common::{api::DatumResponse, models::Datum};

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

/// A datum with its input and output files and its captured output.
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
            let input_files = Datum::input_files(conn, id)?;
            let output_files = Datum::output_files(conn, id)?;
            let attempts = Datum::attempts(conn, id)?;
            let output = datum.output.clone();
            Ok(DatumResponse {
                datum: datum.into(),
                input_files: input_files.into_iter().map(Into::into).collect(),
                output_files: output_files.into_iter().map(Into::into).collect(),
                output,
                attempts: attempts.into_iter().map(Into::into).collect(),
            })
        })
        .await?;
    Ok(Json(response))
}
