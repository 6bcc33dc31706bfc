//! The one error type of the HTTP boundary.
//!
//! Policy: models return typed [`ModelError`]s, handlers return [`AppError`],
//! and only this module knows status codes. Every error answers with the JSON
//! [`ErrorBody`]; internal failures are logged in full and answered with a
//! short message, never a panic.

use axum::{
    Json,
    extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use falconeri_common::{
    api::{ErrorBody, ErrorDetail},
    models::ModelError,
    pipeline::SpecError,
};

/// An error answered to an HTTP client.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    BadRequest(String),
    #[error("invalid pipeline spec")]
    InvalidSpec(SpecError),
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("this route does not answer that method")]
    MethodNotAllowed,
    #[error("the request body is larger than this server accepts")]
    PayloadTooLarge,
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// Result of a handler.
pub type AppResult<T> = Result<T, AppError>;

impl From<ModelError> for AppError {
    fn from(err: ModelError) -> AppError {
        match err {
            ModelError::NotFound(what) => AppError::NotFound(what),
            ModelError::Conflict(why) => AppError::Conflict(why),
            ModelError::Database(err) => {
                AppError::Internal(anyhow::Error::new(err).context("database error"))
            }
            ModelError::Publish(err) => AppError::Internal(err.context("cannot publish outputs")),
            ModelError::Other(err) => AppError::Internal(err),
        }
    }
}

impl From<JsonRejection> for AppError {
    fn from(rejection: JsonRejection) -> AppError {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return AppError::PayloadTooLarge;
        }
        AppError::BadRequest(format!("invalid JSON body: {}", rejection.body_text()))
    }
}

impl From<BytesRejection> for AppError {
    fn from(rejection: BytesRejection) -> AppError {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return AppError::PayloadTooLarge;
        }
        AppError::BadRequest(rejection.body_text())
    }
}

impl From<QueryRejection> for AppError {
    fn from(rejection: QueryRejection) -> AppError {
        AppError::BadRequest(rejection.body_text())
    }
}

impl From<PathRejection> for AppError {
    fn from(rejection: PathRejection) -> AppError {
        AppError::BadRequest(rejection.body_text())
    }
}

impl AppError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            AppError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            AppError::InvalidSpec(_) => (StatusCode::BAD_REQUEST, "invalid_spec"),
            AppError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            AppError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            AppError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            AppError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            AppError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            AppError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            AppError::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            AppError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

/// The JSON detail of an error, as its response carries it (and as a batch
/// report carries one report's refusal). Internal errors are logged here,
/// with the request id the answer names.
pub fn detail_of(err: AppError) -> ErrorDetail {
    let (_, code) = err.status_and_code();
    let (message, problems) = match err {
        AppError::InvalidSpec(err) => (
            format!("invalid pipeline spec:\n{err}"),
            err.problems.clone(),
        ),
        AppError::Internal(err) => {
            // The details (SQL, paths, a backend's words) go to the log
            // only; the client gets an id to find them by.
            let request_id = format!("{:016x}", rand::random::<u64>());
            tracing::error!(request_id, error = format!("{err:#}"), "internal error");
            (
                format!("internal error (request id {request_id}); the server log has the details"),
                Vec::new(),
            )
        }
        other => (other.to_string(), Vec::new()),
    };
    ErrorDetail {
        code: code.to_owned(),
        message,
        problems,
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, _) = self.status_and_code();
        let body = ErrorBody {
            error: detail_of(self),
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// A JSON body extractor whose failures are [`AppError`]s (JSON, not text).
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(AppError))]
pub struct ApiJson<T>(pub T);

/// A query extractor whose failures are [`AppError`]s.
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(AppError))]
pub struct ApiQuery<T>(pub T);

/// A path extractor whose failures are [`AppError`]s.
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(AppError))]
pub struct ApiPath<T>(pub T);
