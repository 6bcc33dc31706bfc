//! Schedules: create, list, delete, pause, resume. Admin only. The
//! scheduler that starts their runs is `crate::scheduler`.

use axum::{
    Json, body::Bytes, extract::State, extract::rejection::BytesRejection, http::StatusCode,
};
use falconeri_common::{
    models::{NewSchedule, Schedule, db_now},
    pipeline::{PipelineSpec, SpecError, SpecProblem, parse_json},
    schedule::{
        CronSchedule, DEFAULT_TIMEZONE, ScheduleKind, ScheduleListResponse, ScheduleRequest,
        ScheduleResponse,
    },
    workflow::WorkflowSpec,
};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    auth::Principal,
    error::{ApiPath, AppError, AppResult},
    openapi::{
        BadRequest, Conflict, Forbidden, Internal, NotFound, PayloadTooLarge, Unauthorized,
        Unavailable,
    },
    state::{AppState, Change},
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(delete))
        .routes(routes!(pause))
        .routes(routes!(resume))
}

/// The API's view of a schedule row.
fn response(schedule: Schedule) -> ScheduleResponse {
    let kind = if schedule.target_kind == "workflow" {
        ScheduleKind::Workflow
    } else {
        ScheduleKind::Job
    };
    let target: serde_json::Value = serde_json::from_str(&schedule.target).unwrap_or_default();
    let target_name = match kind {
        ScheduleKind::Workflow => &target["workflow"]["name"],
        ScheduleKind::Job => &target["pipeline"]["name"],
    }
    .as_str()
    .unwrap_or_default()
    .to_owned();
    let next_run_local = CronSchedule::parse(&schedule.cron, &schedule.timezone)
        .ok()
        .zip(schedule.next_run_at)
        .map(|(cron, at)| cron.local_time(at));
    ScheduleResponse {
        id: schedule.id,
        name: schedule.name,
        cron: schedule.cron,
        timezone: schedule.timezone,
        kind,
        target_name,
        incremental: schedule.incremental,
        paused: schedule.paused,
        next_run_at: schedule.next_run_at,
        next_run_local,
        last_run_at: schedule.last_run_at,
        last_run: schedule.last_run,
        last_error: schedule.last_error,
        created_at: schedule.created_at,
    }
}

/// Problems under `prefix` (`job`, `workflow`).
fn prefixed(prefix: &str, err: SpecError) -> Vec<SpecProblem> {
    err.problems
        .into_iter()
        .map(|p| SpecProblem {
            path: if p.path == falconeri_common::pipeline::ROOT_PATH {
                prefix.to_owned()
            } else {
                format!("{prefix}.{}", p.path)
            },
            message: p.message,
        })
        .collect()
}

/// Checks a request: the name, the cron expression and zone, and exactly
/// one valid target. Every problem names its JSON path.
fn validate(request: &ScheduleRequest) -> Result<(CronSchedule, &'static str, String), SpecError> {
    let mut problems = Vec::new();
    let name = &request.name;
    if name.is_empty()
        || name.len() > 63
        || !name.starts_with(|c: char| c.is_ascii_alphabetic())
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        problems.push(SpecProblem {
            path: "name".to_owned(),
            message: "must be 1 to 63 ASCII letters, digits, '-' and '_', starting with a letter"
                .to_owned(),
        });
    }
    let timezone = request.timezone.as_deref().unwrap_or(DEFAULT_TIMEZONE);
    let cron = CronSchedule::parse(&request.cron, timezone)
        .map_err(|err| problems.extend(err.problems))
        .ok();
    let target = match (&request.job, &request.workflow) {
        (Some(job), None) => PipelineSpec::from_json(&job.to_string())
            .map_err(|err| problems.extend(prefixed("job", err)))
            .ok()
            .and_then(|spec| serde_json::to_string(&spec).ok())
            .map(|json| ("job", json)),
        (None, Some(workflow)) => WorkflowSpec::from_json(&workflow.to_string())
            .map_err(|err| problems.extend(prefixed("workflow", err)))
            .ok()
            .and_then(|spec| serde_json::to_string(&spec).ok())
            .map(|json| ("workflow", json)),
        _ => {
            problems.push(SpecProblem {
                path: falconeri_common::pipeline::ROOT_PATH.to_owned(),
                message: "give exactly one of `job` (a pipeline spec) and `workflow`".to_owned(),
            });
            None
        }
    };
    match (cron, target) {
        (Some(cron), Some((kind, target))) if problems.is_empty() => Ok((cron, kind, target)),
        _ => Err(SpecError { problems }),
    }
}

/// Creates a schedule; its first run is at the first tick after now.
#[utoipa::path(
    post,
    operation_id = "create_schedule",
    path = "/v1/schedules",
    tag = "schedules",
    summary = "Create a schedule",
    request_body = ScheduleRequest,
    responses(
        (status = 201, description = "The schedule, with its first tick", body = ScheduleResponse),
        BadRequest, Unauthorized, Forbidden, Conflict, PayloadTooLarge, Unavailable, Internal,
    ),
)]
async fn create(
    principal: Principal,
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> AppResult<(StatusCode, Json<ScheduleResponse>)> {
    principal.require_admin()?;
    let body = body?;
    let request: ScheduleRequest =
        parse_json(super::body_text(&body, "the schedule")?).map_err(AppError::InvalidSpec)?;
    let (cron, kind, target) = validate(&request).map_err(AppError::InvalidSpec)?;
    let timezone = request
        .timezone
        .clone()
        .unwrap_or_else(|| DEFAULT_TIMEZONE.to_owned());
    let schedule = state
        .db(move |conn| {
            let now = db_now(conn)?;
            Schedule::create(
                conn,
                &NewSchedule {
                    name: &request.name,
                    cron: &request.cron,
                    timezone: &timezone,
                    target_kind: kind,
                    target: &target,
                    incremental: request.incremental,
                    paused: false,
                    next_run_at: cron.next_after(now),
                    created_at: now,
                },
            )
        })
        .await?;
    state.notify(Change::Schedules);
    Ok((StatusCode::CREATED, Json(response(schedule))))
}

/// Every schedule, by name.
#[utoipa::path(
    get,
    operation_id = "list_schedules",
    path = "/v1/schedules",
    tag = "schedules",
    summary = "List schedules",
    responses(
        (status = 200, description = "Every schedule", body = ScheduleListResponse),
        Unauthorized, Forbidden, Unavailable, Internal,
    ),
)]
async fn list(
    principal: Principal,
    State(state): State<AppState>,
) -> AppResult<Json<ScheduleListResponse>> {
    principal.require_admin()?;
    let schedules = state.db(Schedule::list).await?;
    Ok(Json(ScheduleListResponse {
        schedules: schedules.into_iter().map(response).collect(),
    }))
}

/// Deletes a schedule; runs it started are left alone.
#[utoipa::path(
    delete,
    operation_id = "delete_schedule",
    path = "/v1/schedules/{name}",
    tag = "schedules",
    summary = "Delete a schedule",
    params(("name" = String, Path, description = "The schedule's name", pattern = "^[^\\u0000]*$")),
    responses(
        (status = 200, description = "The deleted schedule", body = ScheduleResponse),
        BadRequest, Unauthorized, Forbidden, NotFound, Unavailable, Internal,
    ),
)]
async fn delete(
    principal: Principal,
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> AppResult<Json<ScheduleResponse>> {
    principal.require_admin()?;
    let shown = name.clone();
    let deleted = state
        .db(move |conn| {
            let schedule = Schedule::find_by_name(conn, &name)?;
            Ok(Schedule::delete(conn, &name)?.then_some(schedule))
        })
        .await?;
    let Some(schedule) = deleted else {
        return Err(AppError::NotFound(format!("schedule {shown:?}")));
    };
    state.notify(Change::Schedules);
    Ok(Json(response(schedule)))
}

/// Pauses a schedule: no tick runs until it is resumed.
#[utoipa::path(
    post,
    operation_id = "pause_schedule",
    path = "/v1/schedules/{name}/pause",
    tag = "schedules",
    summary = "Pause a schedule",
    params(("name" = String, Path, description = "The schedule's name", pattern = "^[^\\u0000]*$")),
    responses(
        (status = 200, description = "The paused schedule", body = ScheduleResponse),
        BadRequest, Unauthorized, Forbidden, NotFound, Unavailable, Internal,
    ),
)]
async fn pause(
    principal: Principal,
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> AppResult<Json<ScheduleResponse>> {
    principal.require_admin()?;
    let schedule = state
        .db(move |conn| Schedule::set_paused(conn, &name, true, None))
        .await?;
    state.notify(Change::Schedules);
    Ok(Json(response(schedule)))
}

/// Resumes a schedule from the first tick after now: the ticks that passed
/// while it was paused do not run.
#[utoipa::path(
    post,
    operation_id = "resume_schedule",
    path = "/v1/schedules/{name}/resume",
    tag = "schedules",
    summary = "Resume a paused schedule",
    params(("name" = String, Path, description = "The schedule's name", pattern = "^[^\\u0000]*$")),
    responses(
        (status = 200, description = "The schedule, with its next tick", body = ScheduleResponse),
        BadRequest, Unauthorized, Forbidden, NotFound, Unavailable, Internal,
    ),
)]
async fn resume(
    principal: Principal,
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> AppResult<Json<ScheduleResponse>> {
    principal.require_admin()?;
    let schedule = state
        .db(move |conn| {
            let schedule = Schedule::find_by_name(conn, &name)?;
            let now = db_now(conn)?;
            let next = CronSchedule::parse(&schedule.cron, &schedule.timezone)
                .ok()
                .and_then(|cron| cron.next_after(now));
            Schedule::set_paused(conn, &name, false, next)
        })
        .await?;
    state.notify(Change::Schedules);
    Ok(Json(response(schedule)))
}
