//! The one error type of the HTTP boundary.
//!
//! Policy: models return typed [`ModelError`]s, handlers return [`AppError`],
//! and only this module knows status codes. Every error answers with the JSON
//! [`ErrorBody`]; internal failures are logged in full and answered with a
//! short message, never a panic.
//!
//! The extractors [`ApiJson`], [`ApiPath`] and [`ApiQuery`] also refuse a
//! NUL byte in any field with a 400 naming it, for every route alike:
//! PostgreSQL cannot store one in text (SQLite can), so without this the
//! same request would be a 500 on one database and accepted on the other.
//! The worker's free text ([`FREE_TEXT_FIELDS`]) is let through; the models
//! store it through `falconeri_common::text::escape_nul`.

use axum::{
    Json,
    body::Bytes,
    extract::{
        FromRequest, FromRequestParts, RawPathParams, Request,
        rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection},
    },
    http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use falconeri_common::{
    api::{ErrorBody, ErrorDetail},
    models::ModelError,
    nul_check::nul_paths,
    pipeline::{SpecError, SpecProblem},
    text::escape_nul,
};
use serde::{Serialize, de::DeserializeOwned};

/// An error answered to an HTTP client.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    BadRequest(String),
    /// One field of the request holds what no field may: a NUL byte.
    #[error("{place} `{field}` {problem}")]
    InvalidField {
        place: FieldPlace,
        field: String,
        problem: &'static str,
    },
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

/// Where in a request an [`AppError::InvalidField`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldPlace {
    /// A member of the JSON body, named by its path (`claim.worker_id`).
    Body,
    /// A parameter of the URL path (`name` in `/v1/jobs/by-name/{name}`).
    Path,
    /// A parameter of the query string.
    Query,
}

impl std::fmt::Display for FieldPlace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FieldPlace::Body => "JSON field",
            FieldPlace::Path => "path parameter",
            FieldPlace::Query => "query parameter",
        })
    }
}

/// What [`AppError::InvalidField`] says of a NUL byte.
const NUL_PROBLEM: &str = "must not contain a NUL byte";

/// Members of a JSON body that are free text from a worker's command (what
/// it printed, why it failed or stopped): they may hold any character, and
/// a NUL in them is stored as U+2400 (`␀`) instead of being refused.
pub const FREE_TEXT_FIELDS: &[&str] = &["output", "error", "reason"];

impl AppError {
    /// The NUL-byte refusal for `field` at `place`; `field` is shown escaped.
    fn nul_in(place: FieldPlace, field: &str) -> AppError {
        AppError::InvalidField {
            place,
            field: escape_nul(field).into_owned(),
            problem: NUL_PROBLEM,
        }
    }
}

impl From<ModelError> for AppError {
    fn from(err: ModelError) -> AppError {
        match err {
            ModelError::NotFound(what) => AppError::NotFound(what),
            ModelError::Conflict(why) => AppError::Conflict(why),
            // The connection died under the request (the database
            // restarted, or the backend was terminated). The pool drops that
            // connection (see `falconeri_common::db`), so trying again is the
            // cure: a 503, which clients retry, not a 500.
            ModelError::Database(err) if falconeri_common::db::is_closed_connection(&err) => {
                AppError::Unavailable(format!("the database connection was lost: {err}"))
            }
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
            AppError::BadRequest(_) | AppError::InvalidField { .. } => {
                (StatusCode::BAD_REQUEST, "bad_request")
            }
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
    let message = err.to_string();
    let (message, problems) = match err {
        AppError::InvalidSpec(err) => (
            format!("invalid pipeline spec:\n{err}"),
            err.problems.clone(),
        ),
        AppError::InvalidField { field, problem, .. } => (
            message,
            vec![SpecProblem {
                path: field,
                message: problem.to_owned(),
            }],
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

/// A JSON body extractor whose failures are [`AppError`]s (JSON, not text),
/// and which refuses a NUL byte anywhere but in [`FREE_TEXT_FIELDS`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Serialize,
{
    type Rejection = AppError;

    async fn from_request(request: Request, state: &S) -> Result<Self, AppError> {
        if !has_json_content_type(request.headers()) {
            return Err(AppError::BadRequest(
                "invalid JSON body: Expected request with `Content-Type: application/json`"
                    .to_owned(),
            ));
        }
        let body = Bytes::from_request(request, state).await?;
        let value = match Json::<T>::from_bytes(&body) {
            Ok(Json(value)) => value,
            // Only a body that failed is looked at again: the hot path
            // parses once.
            Err(rejection) => match with_whole_floats_as_integers(&body)
                .and_then(|value| serde_json::from_value::<T>(value).ok())
            {
                Some(value) => value,
                None => return Err(rejection.into()),
            },
        };
        check_json_for_nul(&body, &value)?;
        Ok(ApiJson(value))
    }
}

/// The body with every number that is a whole float (`3.0`) turned into
/// that integer, or None when it has none (or is not JSON). JSON Schema,
/// and so the OpenAPI document, counts `3.0` as an integer, and clients
/// whose numbers are all floats send them so; serde would refuse them for
/// an integer field. Beyond 2^53 a float no longer names one integer, so
/// those stay floats (and are refused).
fn with_whole_floats_as_integers(body: &[u8]) -> Option<serde_json::Value> {
    fn fix(value: &mut serde_json::Value) -> bool {
        const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
        match value {
            serde_json::Value::Number(n) if !n.is_i64() && !n.is_u64() => {
                match n.as_f64() {
                    #[allow(clippy::cast_possible_truncation)] // Checked whole and in range.
                    Some(f) if f.fract() == 0.0 && f.abs() <= EXACT => {
                        *value = serde_json::Value::from(f as i64);
                        true
                    }
                    _ => false,
                }
            }
            // Every member is visited, so no short-circuiting `any`.
            serde_json::Value::Array(items) => {
                let mut changed = false;
                for item in items {
                    changed |= fix(item);
                }
                changed
            }
            serde_json::Value::Object(members) => {
                let mut changed = false;
                for member in members.values_mut() {
                    changed |= fix(member);
                }
                changed
            }
            _ => false,
        }
    }
    let mut value: serde_json::Value = serde_json::from_slice(body).ok()?;
    fix(&mut value).then_some(value)
}

/// Whether the request says its body is JSON (`application/json`, or an
/// `application/…+json` type), as axum's own `Json` requires.
fn has_json_content_type(headers: &HeaderMap) -> bool {
    let Some(Ok(content_type)) = headers.get(header::CONTENT_TYPE).map(|v| v.to_str()) else {
        return false;
    };
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    let subtype = subtype.to_ascii_lowercase();
    kind.eq_ignore_ascii_case("application") && (subtype == "json" || subtype.ends_with("+json"))
}

/// Refuses a NUL in any member of the request `parsed` from the JSON
/// `body` but the free-text ones. JSON can only spell a NUL as the escape
/// `\u0000` (a raw one is a syntax error), so one scan of the raw text
/// clears nearly every request; only for a body that has the escape is the
/// request turned back into JSON, to name the field. That JSON holds only
/// the members the server reads: a NUL in a member it ignores (the
/// document allows unknown members) never reaches the database, and is
/// not refused.
fn check_json_for_nul<T: Serialize>(body: &[u8], parsed: &T) -> Result<(), AppError> {
    // Valid JSON is valid UTF-8: the parse above succeeded.
    let Ok(text) = std::str::from_utf8(body) else {
        return Ok(());
    };
    if !text.contains("\\u0000") {
        return Ok(());
    }
    let value = serde_json::to_value(parsed)
        .map_err(|err| AppError::Internal(anyhow::Error::new(err).context("request to JSON")))?;
    // The escape may have been inside free text, in an ignored member, or
    // been an escaped backslash followed by `u0000`: only a real NUL in a
    // member the server reads, outside free text, counts.
    match nul_paths(&value, FREE_TEXT_FIELDS).first() {
        Some(path) => Err(AppError::nul_in(FieldPlace::Body, path)),
        None => Ok(()),
    }
}

/// A query extractor whose failures are [`AppError`]s, and which refuses a
/// NUL byte (`%00`) in any parameter.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, AppError> {
        check_query_for_nul(&parts.uri)?;
        let axum::extract::Query(value) = axum::extract::Query::<T>::try_from_uri(&parts.uri)?;
        Ok(ApiQuery(value))
    }
}

/// Refuses a NUL in any query parameter, named or naming. A URI cannot
/// hold a raw NUL, so it can only come percent-encoded as `%00`; the query
/// is decoded only when that appears.
fn check_query_for_nul(uri: &axum::http::Uri) -> Result<(), AppError> {
    let Some(query) = uri.query() else {
        return Ok(());
    };
    if !query.contains("%00") {
        return Ok(());
    }
    let axum::extract::Query(pairs) =
        axum::extract::Query::<Vec<(String, String)>>::try_from_uri(uri)?;
    for (name, value) in &pairs {
        if name.contains('\0') || value.contains('\0') {
            return Err(AppError::nul_in(FieldPlace::Query, name));
        }
    }
    Ok(())
}

/// A path extractor whose failures are [`AppError`]s, and which refuses a
/// NUL byte (`%00`) in any path parameter.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        // Checked before the typed parse, so `/v1/jobs/1%00` is refused as
        // a NUL like any other parameter, not as a bad number. Parameters
        // that are not UTF-8 are left to the typed parse, which names them.
        if let Ok(params) = RawPathParams::from_request_parts(parts, state).await
            && let Some((name, _)) = params.iter().find(|(_, value)| value.contains('\0'))
        {
            return Err(AppError::nul_in(FieldPlace::Path, name));
        }
        let axum::extract::Path(value) =
            axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(ApiPath(value))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn whole_floats_become_integers_and_nothing_else_changes() {
        let body = json!({"a": 2.0, "b": [1.5, -3.0, 7], "c": 1e300, "d": "4.0"}).to_string();
        assert_eq!(
            with_whole_floats_as_integers(body.as_bytes()),
            Some(json!({"a": 2, "b": [1.5, -3, 7], "c": 1e300, "d": "4.0"}))
        );
        // Nothing to change: the original error stands.
        assert_eq!(with_whole_floats_as_integers(br#"{"a": 1.5}"#), None);
        assert_eq!(with_whole_floats_as_integers(b"not json"), None);
    }
}
