//! Jobs: create, list, find, describe, statistics, follow, retry, cancel.

use axum::{
    Json, body::Bytes, extract::State, extract::rejection::BytesRejection, http::StatusCode,
};
use falconeri_common::{
    api::{
        CreateJobQuery, DatumListQuery, DatumListResponse, JobDescribeResponse, JobListQuery,
        JobListResponse, JobResponse, JobStatsResponse, ProgressQuery, ProgressResponse,
        VanishedListResponse, VanishedQuery,
    },
    models::{Datum, DatumFilter, Job, browse::JobFilter, db_now, stats::job_stats},
    pipeline::PipelineSpec,
    status::{DatumStatus, JobStatus},
};

use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    auth::Principal,
    babysitter,
    error::{ApiPath, ApiQuery, AppError, AppResult},
    openapi::{
        BadRequest, Conflict, Forbidden, Internal, NotFound, PayloadTooLarge, Unauthorized,
        Unavailable,
    },
    start_job,
    state::AppState,
    state::Change,
};

/// How long a woken progress long-poll gathers further changes.
const PROGRESS_COALESCE: std::time::Duration = std::time::Duration::from_millis(100);

/// How many running and failed datums `describe` shows.
const DESCRIBE_LIMIT: i64 = 50;

/// How many vanished datums `describe` shows; the rest are paged by
/// `GET /v1/jobs/{id}/vanished`.
const DESCRIBE_VANISHED: i64 = 10;

/// The default and largest page of `GET /v1/jobs/{id}/vanished`.
const VANISHED_PAGE: i64 = 100;
const VANISHED_MAX: i64 = 1_000;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(show))
        .routes(routes!(show_by_name))
        .routes(routes!(describe))
        .routes(routes!(progress))
        .routes(routes!(retry))
        .routes(routes!(cancel))
        .routes(routes!(datums))
        .routes(routes!(stats))
        .routes(routes!(vanished))
}

/// The body is the pipeline spec itself, exactly as users write it; the
/// `incremental` query parameter, when given, overrides its `incremental`.
#[utoipa::path(
    post,
    operation_id = "create_job",
    path = "/v1/jobs",
    tag = "jobs",
    summary = "Start a job",
    params(CreateJobQuery),
    request_body(
        content = ref("#/components/schemas/PipelineSpec"),
        content_type = "application/json",
        description = "The pipeline spec, as users write it",
    ),
    responses(
        (status = 201, description = "The job, planned and starting", body = JobResponse),
        BadRequest, Unauthorized, Forbidden, Conflict, PayloadTooLarge, Unavailable, Internal,
    ),
)]
async fn create(
    principal: Principal,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<CreateJobQuery>,
    body: Result<Bytes, BytesRejection>,
) -> AppResult<(StatusCode, Json<JobResponse>)> {
    principal.require_admin()?;
    let body = body?;
    let text = super::body_text(&body, "the spec")?;
    let mut spec = PipelineSpec::from_json(text).map_err(AppError::InvalidSpec)?;
    if let Some(incremental) = query.incremental {
        spec.incremental = incremental;
    }
    let job = start_job::create(&state, spec, start_job::Source::Inputs, None).await?;
    Ok((StatusCode::CREATED, Json(job.into())))
}

/// The newest jobs first, optionally of one state or with a name that
/// contains some text.
#[utoipa::path(
    get,
    operation_id = "list_jobs",
    path = "/v1/jobs",
    tag = "jobs",
    summary = "List jobs",
    params(JobListQuery),
    responses(
        (status = 200, description = "The newest jobs", body = JobListResponse),
        BadRequest, Unauthorized, Forbidden, Unavailable, Internal,
    ),
)]
async fn list(
    principal: Principal,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<JobListQuery>,
) -> AppResult<Json<JobListResponse>> {
    principal.require_admin()?;
    let limit = query.limit.unwrap_or(100).clamp(1, 10_000);
    let filter = JobFilter {
        status: query.status,
        name: query.name,
    };
    let jobs = state
        .db(move |conn| Job::list_matching(conn, &filter, limit))
        .await?;
    Ok(Json(JobListResponse {
        jobs: jobs.into_iter().map(Into::into).collect(),
    }))
}

#[utoipa::path(
    get,
    operation_id = "show_job",
    path = "/v1/jobs/{id}",
    tag = "jobs",
    summary = "A job",
    params(("id" = i64, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The job", body = JobResponse),
        BadRequest, Unauthorized, Forbidden, NotFound, Unavailable, Internal,
    ),
)]
async fn show(
    principal: Principal,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> AppResult<Json<JobResponse>> {
    principal.require_admin()?;
    let job = state.db(move |conn| Job::find(conn, id)).await?;
    Ok(Json(job.into()))
}

#[utoipa::path(
    get,
    operation_id = "show_job_by_name",
    path = "/v1/jobs/by-name/{name}",
    tag = "jobs",
    summary = "A job, by its name",
    params((
        "name" = String,
        Path,
        description = "The job's name",
        pattern = "^[^\\u0000]*$"
    )),
    responses(
        (status = 200, description = "The job", body = JobResponse),
        BadRequest, Unauthorized, Forbidden, NotFound, Unavailable, Internal,
    ),
)]
async fn show_by_name(
    principal: Principal,
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> AppResult<Json<JobResponse>> {
    principal.require_admin()?;
    let job = state.db(move |conn| Job::find_by_name(conn, &name)).await?;
    Ok(Json(job.into()))
}

#[utoipa::path(
    get,
    operation_id = "describe_job",
    path = "/v1/jobs/{id}/describe",
    tag = "jobs",
    summary = "A job, its counts and the datums worth a look",
    params(("id" = i64, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The job described", body = JobDescribeResponse),
        BadRequest, Unauthorized, Forbidden, NotFound, Unavailable, Internal,
    ),
)]
async fn describe(
    principal: Principal,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> AppResult<Json<JobDescribeResponse>> {
    principal.require_admin()?;
    let response = state
        .db(move |conn| {
            let job = Job::find(conn, id)?;
            let counts = Job::counts(conn, id)?;
            let running = Datum::list(conn, id, Some(DatumStatus::Running), DESCRIBE_LIMIT)?;
            let failed = Datum::list(conn, id, Some(DatumStatus::Error), DESCRIBE_LIMIT)?;
            let vanished = match job.vanished_count {
                Some(n) if n > 0 => Job::vanished(conn, id, 0, DESCRIBE_VANISHED)?.0,
                _ => Vec::new(),
            };
            Ok(JobDescribeResponse {
                job: job.into(),
                counts,
                running: running.into_iter().map(Into::into).collect(),
                failed: failed.into_iter().map(Into::into).collect(),
                vanished,
            })
        })
        .await?;
    Ok(Json(response))
}

/// A job's statistics over its attempts: phase percentiles, throughput,
/// the slowest attempts, errors grouped, and suggested resource requests,
/// all computed by the database (`models::stats`).
#[utoipa::path(
    get,
    operation_id = "job_stats",
    path = "/v1/jobs/{id}/stats",
    tag = "jobs",
    summary = "A job's statistics over its attempts",
    params(("id" = i64, Path, description = "The job's id")),
    responses(
        (status = 200, description = "Phase percentiles, throughput, slowest attempts, errors and suggested requests", body = JobStatsResponse),
        BadRequest, Unauthorized, Forbidden, NotFound, Unavailable, Internal,
    ),
)]
async fn stats(
    principal: Principal,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> AppResult<Json<JobStatsResponse>> {
    principal.require_admin()?;
    let response = state
        .db(move |conn| {
            Job::find(conn, id)?;
            job_stats(conn, id)
        })
        .await?;
    Ok(Json(response))
}

/// A long-poll: answers when anything changed since `since`, or after the
/// wait. Clients follow a job without sleeping between requests.
#[utoipa::path(
    get,
    operation_id = "job_progress",
    path = "/v1/jobs/{id}/progress",
    tag = "jobs",
    summary = "Follow a job (long-poll)",
    params(("id" = i64, Path, description = "The job's id"), ProgressQuery),
    responses(
        (status = 200, description = "The job and its counts", body = ProgressResponse),
        BadRequest, Unauthorized, Forbidden, NotFound, Unavailable, Internal,
    ),
)]
async fn progress(
    principal: Principal,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(query): ApiQuery<ProgressQuery>,
) -> AppResult<Json<ProgressResponse>> {
    principal.require_admin()?;
    let waiters = state.waiters(id);
    let mut changes = waiters.progress.subscribe();
    if query.since == Some(*changes.borrow_and_update()) {
        let wait = state.capped_wait(query.wait_ms);
        // Any outcome means "answer now"; a timeout is not an error here.
        let woken = tokio::time::timeout(wait, async {
            tokio::select! {
                _ = changes.changed() => true,
                _ = state.shutting_down() => false,
            }
        })
        .await;
        if let Ok(true) = woken {
            // Changes come in bursts (a datum per few milliseconds on a busy
            // job); gathering them keeps followers from re-counting a big
            // job hundreds of times a second.
            tokio::time::sleep(PROGRESS_COALESCE).await;
        }
    }
    let generation = *waiters.progress.borrow();
    let (job, counts) = state
        .db(move |conn| Ok((Job::find(conn, id)?, Job::counts(conn, id)?)))
        .await?;
    Ok(Json(ProgressResponse {
        job: job.into(),
        counts,
        generation,
    }))
}

/// Starts a new job of the datums that failed or were canceled in a
/// finished job.
#[utoipa::path(
    post,
    operation_id = "retry_job",
    path = "/v1/jobs/{id}/retry",
    tag = "jobs",
    summary = "Retry a finished job's failed and canceled datums, as a new job",
    params(("id" = i64, Path, description = "The job's id")),
    responses(
        (status = 201, description = "The new job", body = JobResponse),
        BadRequest, Unauthorized, Forbidden, NotFound, Conflict, Unavailable, Internal,
    ),
)]
async fn retry(
    principal: Principal,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> AppResult<(StatusCode, Json<JobResponse>)> {
    principal.require_admin()?;
    let (job, (first_failed, _)) = state
        .db(move |conn| {
            Ok((
                Job::find(conn, id)?,
                Job::failed_datum_inputs(conn, id, 0, 1)?,
            ))
        })
        .await?;
    if !job.status().is_terminal() {
        return Err(AppError::Conflict(format!(
            "job {} is still {}; retry it once it has finished",
            job.name, job.status
        )));
    }
    if first_failed.is_empty() {
        return Err(AppError::Conflict(format!(
            "job {} has no failed or canceled datums to retry",
            job.name
        )));
    }
    let spec = job
        .spec()
        .map_err(|err| AppError::Internal(err.context("stored spec is unreadable")))?;
    let retried = start_job::create(
        &state,
        spec,
        start_job::Source::FailedDatumsOf(job.id),
        Some(job.id),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(retried.into())))
}

/// Cancels a job: unfinished datums become canceled and its workers stop
/// (they kill their commands).
#[utoipa::path(
    post,
    operation_id = "cancel_job",
    path = "/v1/jobs/{id}/cancel",
    tag = "jobs",
    summary = "Cancel a job",
    params(("id" = i64, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The canceled job", body = JobResponse),
        BadRequest, Unauthorized, Forbidden, NotFound, Conflict, Unavailable, Internal,
    ),
)]
async fn cancel(
    principal: Principal,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> AppResult<Json<JobResponse>> {
    principal.require_admin()?;
    let (job, stopped) = state
        .db_retrying(move |conn| {
            let now = db_now(conn)?;
            Job::stop(
                conn,
                id,
                JobStatus::Canceled,
                Some("canceled by a user"),
                now,
            )
        })
        .await?;
    if !stopped {
        return Err(AppError::Conflict(format!(
            "job {} already finished ({})",
            job.name, job.status
        )));
    }
    state.notify(Change::JobState { job_id: job.id });
    babysitter::wind_down_detached(&state, job.clone()).await;
    Ok(Json(job.into()))
}

/// A page of a job's datums, by id.
#[utoipa::path(
    get,
    operation_id = "list_job_datums",
    path = "/v1/jobs/{id}/datums",
    tag = "jobs",
    summary = "A job's datums",
    params(("id" = i64, Path, description = "The job's id"), DatumListQuery),
    responses(
        (status = 200, description = "A page of datums", body = DatumListResponse),
        BadRequest, Unauthorized, Forbidden, NotFound, Unavailable, Internal,
    ),
)]
async fn datums(
    principal: Principal,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(query): ApiQuery<DatumListQuery>,
) -> AppResult<Json<DatumListResponse>> {
    principal.require_admin()?;
    let limit = query.limit.unwrap_or(1_000).clamp(1, 100_000);
    let filter = DatumFilter {
        status: query.status,
        outcome: query.outcome,
        after: query.after,
    };
    let datums = state
        .db(move |conn| {
            Job::find(conn, id)?;
            Datum::list_filtered(conn, id, &filter, limit)
        })
        .await?;
    Ok(Json(DatumListResponse {
        datums: datums.into_iter().map(Into::into).collect(),
    }))
}

/// The datums of an incremental job's previous run whose inputs are gone:
/// successful there, with no datum of the same input files in this job.
/// Their outputs were left where they are. Paged by datum id.
#[utoipa::path(
    get,
    operation_id = "job_vanished",
    path = "/v1/jobs/{id}/vanished",
    tag = "jobs",
    summary = "The previous run's datums whose inputs are gone",
    params(("id" = i64, Path, description = "The job's id"), VanishedQuery),
    responses(
        (status = 200, description = "A page of vanished datums", body = VanishedListResponse),
        BadRequest, Unauthorized, Forbidden, NotFound, Unavailable, Internal,
    ),
)]
async fn vanished(
    principal: Principal,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(query): ApiQuery<VanishedQuery>,
) -> AppResult<Json<VanishedListResponse>> {
    principal.require_admin()?;
    let limit = query.limit.unwrap_or(VANISHED_PAGE);
    if !(1..=VANISHED_MAX).contains(&limit) {
        return Err(AppError::BadRequest(format!(
            "limit: must be between 1 and {VANISHED_MAX}"
        )));
    }
    let after = query.after.unwrap_or(0);
    let (vanished, next_after) = state
        .db(move |conn| Job::vanished(conn, id, after, limit))
        .await?;
    Ok(Json(VanishedListResponse {
        vanished,
        next_after,
    }))
}
