//! `/ui/api/…`: the dashboard's way into the REST API.
//!
//! A request here is checked against the browser's session (401 without
//! one), its action checked for CSRF and origin (403), its path checked
//! against the short list of what the dashboard calls (404 otherwise), and
//! then handed in-process to the REST router as an admin call. So the
//! dashboard shows exactly what the API answers, the long-polls and log
//! streams included, while the API itself never looks at cookies.

use axum::{
    Extension, Router,
    body::Body,
    extract::{Request, State},
    http::{Method, header},
    response::Response,
};
use tower::ServiceExt;

use super::session;
use crate::{
    error::{AppError, AppResult},
    state::AppState,
};

/// Where the gateway is mounted; what follows is a REST API path.
pub const PREFIX: &str = "/ui/api/";

/// The REST router the gateway calls.
#[derive(Clone)]
pub struct Gateway {
    pub api: Router,
}

/// Forwards a dashboard call to the REST API as the admin.
pub async fn forward(
    State(state): State<AppState>,
    Extension(gateway): Extension<Gateway>,
    request: Request,
) -> AppResult<Response> {
    let current = session::require(&state, request.headers()).await?;
    // The path as sent, still percent-encoded: decoding it here would turn
    // an encoded `/` in a job name into a path separator.
    let path = request
        .uri()
        .path()
        .strip_prefix(PREFIX)
        .unwrap_or_default()
        .to_owned();
    let method = request.method().clone();
    let segments: Vec<&str> = path.split('/').collect();
    match method {
        Method::GET if readable(&segments) => {}
        Method::POST if action(&segments) => {
            session::check_action(request.headers(), &current, None)?;
        }
        Method::GET | Method::POST => {
            return Err(AppError::NotFound(format!("dashboard route /{path}")));
        }
        _ => return Err(AppError::MethodNotAllowed),
    }
    let uri = match request.uri().query() {
        Some(query) => format!("/{path}?{query}"),
        None => format!("/{path}"),
    };
    let mut inner = Request::builder().method(method).uri(uri).header(
        header::AUTHORIZATION,
        format!("Bearer {}", state.config().token),
    );
    if let Some(accept) = request.headers().get(header::ACCEPT) {
        inner = inner.header(header::ACCEPT, accept);
    }
    // Actions take no body; nothing the browser sent is passed on but the
    // path, the query and what it accepts.
    let inner = inner
        .body(Body::empty())
        .map_err(|err| AppError::BadRequest(format!("bad dashboard request: {err}")))?;
    match gateway.api.oneshot(inner).await {
        Ok(response) => Ok(response),
        Err(never) => match never {},
    }
}

/// GETs the dashboard reads: jobs and datums (lists, details, statistics,
/// progress, attempts, logs).
fn readable(segments: &[&str]) -> bool {
    matches!(segments, ["v1", "jobs" | "datums", ..])
}

/// POSTs the dashboard may send: cancel or retry a job, retry a datum.
fn action(segments: &[&str]) -> bool {
    matches!(
        segments,
        ["v1", "jobs", id, "cancel" | "retry"] | ["v1", "datums", id, "retry"]
            if !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(path: &str) -> Vec<&str> {
        path.split('/').collect()
    }

    #[test]
    fn only_the_dashboards_actions_pass() {
        assert!(action(&split("v1/jobs/7/cancel")));
        assert!(action(&split("v1/jobs/7/retry")));
        assert!(action(&split("v1/datums/12/retry")));
        assert!(!action(&split("v1/jobs")));
        assert!(!action(&split("v1/jobs/7/reserve")));
        assert!(!action(&split("v1/datums/12/logs")));
        assert!(!action(&split("v1/jobs/x/cancel")));
        assert!(!action(&split("v1/jobs/7/cancel/more")));
    }

    #[test]
    fn reads_are_jobs_and_datums_only() {
        assert!(readable(&split("v1/jobs")));
        assert!(readable(&split("v1/jobs/7/progress")));
        assert!(readable(&split("v1/datums/3/logs")));
        assert!(!readable(&split("metrics")));
        assert!(!readable(&split("v1/openapi.json")));
    }
}
