//! Workflows: run one (its steps start as the chain allows), list, show,
//! follow, retry. Admin only. The chain itself is `crate::chain`.

use axum::{
    Json, body::Bytes, extract::State, extract::rejection::BytesRejection, http::StatusCode,
};
use falconeri_common::{
    api::{ProgressQuery, WorkflowListQuery},
    models::{NewWorkflowParams, Workflow, WorkflowStep, db_now, workflow_response},
    workflow::{WorkflowListResponse, WorkflowProgressResponse, WorkflowResponse, WorkflowSpec},
};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    auth::Principal,
    error::{ApiPath, ApiQuery, AppError, AppResult},
    openapi::{
        BadRequest, Conflict, Forbidden, Internal, NotFound, PayloadTooLarge, Unauthorized,
        Unavailable,
    },
    state::{AppState, Change},
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(show))
        .routes(routes!(show_by_name))
        .routes(routes!(progress))
        .routes(routes!(retry))
}

/// Reads a run and its steps as the API shows them.
async fn load(state: &AppState, id: i64) -> AppResult<WorkflowResponse> {
    state
        .db(move |conn| {
            let workflow = Workflow::find(conn, id)?;
            let steps = Workflow::steps(conn, id)?;
            workflow_response(workflow, steps)
        })
        .await
}

/// Stores a workflow run with every step waiting; the chain starts the
/// steps that wait for nothing at once. A run with the idempotency key
/// `run_key` (a schedule's tick) is refused (409) if one exists.
pub async fn start(
    state: &AppState,
    spec: WorkflowSpec,
    schedule_id: Option<i64>,
    incremental: bool,
    run_key: Option<String>,
) -> AppResult<WorkflowResponse> {
    let name = format!(
        "{}-{}",
        spec.workflow.name.to_lowercase().replace('_', "-"),
        hex::encode(rand::random::<[u8; 3]>())
    );
    let workflow = state
        .db(move |conn| {
            let now = db_now(conn)?;
            Workflow::create(
                conn,
                NewWorkflowParams {
                    spec: &spec,
                    name: &name,
                    schedule_id,
                    incremental,
                    run_key: run_key.as_deref(),
                },
                now,
            )
        })
        .await?;
    state.notify(Change::Workflows);
    load(state, workflow.id).await
}

/// The body is a workflow whose steps' specs are inline (the CLI reads
/// spec files named by path and sends their contents).
#[utoipa::path(
    post,
    operation_id = "run_workflow",
    path = "/v1/workflows",
    tag = "workflows",
    summary = "Run a workflow",
    request_body(
        content = Object,
        content_type = "application/json",
        description = "The workflow: `workflow.name`, and `steps`, each a `name`, a pipeline \
            `spec` (inline) and an optional `after` (names of steps it waits for)",
    ),
    responses(
        (status = 201, description = "The run, its steps waiting or starting", body = WorkflowResponse),
        BadRequest, Unauthorized, Forbidden, Conflict, PayloadTooLarge, Unavailable, Internal,
    ),
)]
async fn create(
    principal: Principal,
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> AppResult<(StatusCode, Json<WorkflowResponse>)> {
    principal.require_admin()?;
    let body = body?;
    let text = super::body_text(&body, "the workflow")?;
    let spec = WorkflowSpec::from_json(text).map_err(AppError::InvalidSpec)?;
    let workflow = start(&state, spec, None, false, None).await?;
    Ok((StatusCode::CREATED, Json(workflow)))
}

/// The newest runs first.
#[utoipa::path(
    get,
    operation_id = "list_workflows",
    path = "/v1/workflows",
    tag = "workflows",
    summary = "List workflow runs",
    params(WorkflowListQuery),
    responses(
        (status = 200, description = "The newest runs", body = WorkflowListResponse),
        BadRequest, Unauthorized, Forbidden, Unavailable, Internal,
    ),
)]
async fn list(
    principal: Principal,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<WorkflowListQuery>,
) -> AppResult<Json<WorkflowListResponse>> {
    principal.require_admin()?;
    let limit = query.limit.unwrap_or(100).clamp(1, 1_000);
    let workflows = state
        .db(move |conn| {
            Workflow::list(conn, limit)?
                .into_iter()
                .map(|workflow| {
                    let steps = Workflow::steps(conn, workflow.id)?;
                    workflow_response(workflow, steps)
                })
                .collect()
        })
        .await?;
    Ok(Json(WorkflowListResponse { workflows }))
}

#[utoipa::path(
    get,
    operation_id = "show_workflow",
    path = "/v1/workflows/{id}",
    tag = "workflows",
    summary = "A workflow run and its steps",
    params(("id" = i64, Path, description = "The run's id")),
    responses(
        (status = 200, description = "The run", body = WorkflowResponse),
        BadRequest, Unauthorized, Forbidden, NotFound, Unavailable, Internal,
    ),
)]
async fn show(
    principal: Principal,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> AppResult<Json<WorkflowResponse>> {
    principal.require_admin()?;
    Ok(Json(load(&state, id).await?))
}

#[utoipa::path(
    get,
    operation_id = "show_workflow_by_name",
    path = "/v1/workflows/by-name/{name}",
    tag = "workflows",
    summary = "A workflow run, by its name",
    params((
        "name" = String,
        Path,
        description = "The run's name",
        pattern = "^[^\\u0000]*$"
    )),
    responses(
        (status = 200, description = "The run", body = WorkflowResponse),
        BadRequest, Unauthorized, Forbidden, NotFound, Unavailable, Internal,
    ),
)]
async fn show_by_name(
    principal: Principal,
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> AppResult<Json<WorkflowResponse>> {
    principal.require_admin()?;
    let id = state
        .db(move |conn| Ok(Workflow::find_by_name(conn, &name)?.id))
        .await?;
    Ok(Json(load(&state, id).await?))
}

/// A long-poll: answers when any job or step changed since `since`, or
/// after the wait.
#[utoipa::path(
    get,
    operation_id = "workflow_progress",
    path = "/v1/workflows/{id}/progress",
    tag = "workflows",
    summary = "Follow a workflow run (long-poll)",
    params(("id" = i64, Path, description = "The run's id"), ProgressQuery),
    responses(
        (status = 200, description = "The run", body = WorkflowProgressResponse),
        BadRequest, Unauthorized, Forbidden, NotFound, Unavailable, Internal,
    ),
)]
async fn progress(
    principal: Principal,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(query): ApiQuery<ProgressQuery>,
) -> AppResult<Json<WorkflowProgressResponse>> {
    principal.require_admin()?;
    let mut changes = state.workflow_changes();
    if query.since == Some(*changes.borrow_and_update()) {
        let wait = state.capped_wait(query.wait_ms);
        // Any outcome means "answer now"; a timeout is not an error here.
        let _ = tokio::time::timeout(wait, async {
            tokio::select! {
                _ = changes.changed() => {}
                _ = state.shutting_down() => {}
            }
        })
        .await;
    }
    let generation = *changes.borrow();
    let workflow = load(&state, id).await?;
    Ok(Json(WorkflowProgressResponse {
        workflow,
        generation,
    }))
}

/// Retries a run's failed steps: each step whose job could not be created
/// waits again (the chain creates its job anew), and each whose job ended
/// `error` or `canceled` waits again to start a retry of that job's failed
/// and canceled datums (as `job retry` makes). The steps canceled below
/// them resume. Each step is reopened by one guarded UPDATE and started by
/// the one replica whose claim wins, so racing retries start it once.
#[utoipa::path(
    post,
    operation_id = "retry_workflow",
    path = "/v1/workflows/{id}/retry",
    tag = "workflows",
    summary = "Retry a workflow run's failed steps",
    params(("id" = i64, Path, description = "The run's id")),
    responses(
        (status = 200, description = "The run, its retried steps waiting or starting", body = WorkflowResponse),
        BadRequest, Unauthorized, Forbidden, NotFound, Conflict, Unavailable, Internal,
    ),
)]
async fn retry(
    principal: Principal,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> AppResult<Json<WorkflowResponse>> {
    principal.require_admin()?;
    let (name, reopened) = state
        .db(move |conn| {
            let workflow = Workflow::find(conn, id)?;
            let now = db_now(conn)?;
            Ok((workflow.name, WorkflowStep::reopen_failed(conn, id, now)?))
        })
        .await?;
    if reopened == 0 {
        return Err(AppError::Conflict(format!(
            "workflow run {name} has no failed or canceled step to retry \
             (a step canceled for its upstream resumes when that one is retried)"
        )));
    }
    tracing::info!(workflow = name, steps = reopened, "workflow run retried");
    state.notify(Change::Workflows);
    Ok(Json(load(&state, id).await?))
}
