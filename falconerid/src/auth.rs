//! Bearer-token authentication.
//!
//! Two kinds of caller: the admin (the CLI, holding the server's token) may
//! do anything; a worker holds its job's token, which works only for that
//! job's worker routes.

use axum::{extract::FromRequestParts, http::request::Parts};
use falconeri_common::models::Job;
use subtle::ConstantTimeEq;

use crate::{
    error::{AppError, AppResult},
    state::AppState,
};

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Admin,
    Worker { job_id: i64 },
}

impl Principal {
    /// Only the admin may pass.
    pub fn require_admin(&self) -> AppResult<()> {
        match self {
            Principal::Admin => Ok(()),
            Principal::Worker { .. } => Err(AppError::Forbidden(
                "a worker token cannot use this route".to_owned(),
            )),
        }
    }

    /// The admin, or a worker of job `job_id`.
    pub fn require_job(&self, job_id: i64) -> AppResult<()> {
        match self {
            Principal::Admin => Ok(()),
            Principal::Worker { job_id: own } if *own == job_id => Ok(()),
            Principal::Worker { .. } => Err(AppError::Forbidden(format!(
                "this worker token is not valid for job {job_id}"
            ))),
        }
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> AppResult<Principal> {
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .ok_or(AppError::Unauthorized)?
            .to_owned();
        let admin = state.config().token.as_bytes();
        if bool::from(token.as_bytes().ct_eq(admin)) {
            return Ok(Principal::Admin);
        }
        // A token never changes job, so a valid one is remembered: the
        // worker's hot path reads no job row to authenticate.
        if let Some(job_id) = state.cached_worker_token(&token) {
            return Ok(Principal::Worker { job_id });
        }
        let lookup = token.clone();
        let job = state
            .db(move |conn| Job::find_by_worker_token(conn, &lookup))
            .await?;
        match job {
            Some(job) => {
                state.cache_worker_token(token, job.id);
                Ok(Principal::Worker { job_id: job.id })
            }
            None => Err(AppError::Unauthorized),
        }
    }
}
