//! Datums as users see them.

use axum::{Json, Router, extract::State, routing::get};
use falconeri_common::{api::DatumResponse, models::Datum};

use crate::{
    auth::Principal,
    error::{ApiPath, AppResult},
    state::AppState,
};

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/datums/{id}", get(show))
}

/// A datum with its input and output files and its captured output.
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
