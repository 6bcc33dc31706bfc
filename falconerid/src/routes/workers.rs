//! The worker protocol: reserve (a long-poll), heartbeat, done, error, output
//! files. Every write after a reservation carries its [`Claim`]; a stale one
//! gets `409 Conflict` and changes nothing.

use axum::{Json, Router, extract::State, routing::post};
use falconeri_common::{
    Millis,
    api::{
        Claim, DatumSummary, DoneRequest, ErrorRequest, HeartbeatRequest, HeartbeatResponse,
        NewOutputFile, OutputFilesRequest, ReleaseRequest, Reservation, ReserveRequest,
        ReserveResponse,
    },
    db::DbConn,
    models::{Datum, InputFile, Job, ModelError, ModelResult, db_now},
    storage::{attempt_staging_uri, publish_outputs, storage_for},
};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::{
    auth::Principal,
    error::{ApiJson, ApiPath, AppError, AppResult},
    state::AppState,
};

/// Longest output tail the server stores per datum.
const MAX_OUTPUT_BYTES: usize = 1024 * 1024;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/jobs/{id}/reserve", post(reserve))
        .route("/v1/datums/{id}/heartbeat", post(heartbeat))
        .route("/v1/datums/{id}/done", post(done))
        .route("/v1/datums/{id}/error", post(error))
        .route("/v1/datums/{id}/release", post(release))
        .route("/v1/datums/{id}/output-files", post(output_files))
}

enum Attempt {
    Reserved(Box<(Datum, Vec<InputFile>, Job)>),
    Wait,
    /// Nothing to reserve: the job may be complete.
    NoneReady(Box<Job>),
    /// The job has ended.
    Finished,
}

/// Reserves the next ready datum, waiting (up to the capped `wait_ms`) for
/// one to appear: the answer comes within milliseconds of work existing.
async fn reserve(
    principal: Principal,
    State(state): State<AppState>,
    ApiPath(job_id): ApiPath<i64>,
    ApiJson(request): ApiJson<ReserveRequest>,
) -> AppResult<Json<ReserveResponse>> {
    principal.require_job(job_id)?;
    check_worker_id(&request.worker_id)?;
    let deadline = Instant::now() + state.capped_wait(request.wait_ms);
    let lease_ms = state.config().lease_ms();
    loop {
        let mut changes = state.subscribe();
        let worker_id = request.worker_id.clone();
        let notifier = state.clone();
        let attempt = state
            .db(move |conn| {
                let job = Job::find(conn, job_id)?;
                let status = job.status();
                if status.is_terminal() {
                    return Ok(Attempt::Finished);
                }
                if status != falconeri_common::status::JobStatus::Running {
                    return Ok(Attempt::Wait);
                }
                let now = db_now(conn)?;
                let reserved = Datum::reserve_next(
                    conn,
                    job_id,
                    &worker_id,
                    now,
                    lease_ms,
                    job.datum_timeout_ms,
                )?;
                match reserved {
                    Some(datum) => {
                        notifier.notify_change();
                        let files = Datum::input_files(conn, datum.id)?;
                        Ok(Attempt::Reserved(Box::new((datum, files, job))))
                    }
                    None => Ok(Attempt::NoneReady(Box::new(job))),
                }
            })
            .await?;
        match attempt {
            Attempt::Reserved(reserved) => {
                let (datum, files, job) = *reserved;
                return Ok(Json(ReserveResponse::Reserved(Box::new(reservation(
                    &state, datum, files, &job,
                )?))));
            }
            Attempt::NoneReady(job) => {
                // Outside the transaction: finishing removes the staging
                // area first, which is storage I/O.
                if let Some(ended) = crate::babysitter::finish_if_complete(&state, &job, 0).await? {
                    crate::babysitter::wind_down_detached(&state, ended).await;
                    return Ok(Json(ReserveResponse::Finished));
                }
            }
            Attempt::Finished => return Ok(Json(ReserveResponse::Finished)),
            Attempt::Wait => {}
        }
        tokio::select! {
            _ = changes.changed() => continue,
            _ = tokio::time::sleep_until(deadline) => {
                return Ok(Json(ReserveResponse::Wait));
            }
            _ = state.shutting_down() => return Ok(Json(ReserveResponse::Wait)),
        }
    }
}

fn reservation(
    state: &AppState,
    datum: Datum,
    files: Vec<InputFile>,
    job: &Job,
) -> AppResult<Reservation> {
    let spec = job
        .spec()
        .map_err(|err| AppError::Internal(err.context("stored spec is unreadable")))?;
    let claim = datum
        .claim()
        .ok_or_else(|| AppError::Internal(anyhow::anyhow!("reserved datum has no owner")))?;
    let lease = state.config().lease;
    Ok(Reservation {
        datum_id: datum.id,
        job_id: datum.job_id,
        claim,
        lease_expires_at: datum.lease_expires_at.unwrap_or_default(),
        // Three heartbeats per lease: one lost request is not fatal.
        heartbeat_interval_ms: u64::try_from(lease.as_millis() / 3)
            .unwrap_or(10_000)
            .max(100),
        timeout_ms: job.datum_timeout_ms.and_then(|ms| u64::try_from(ms).ok()),
        cmd: spec.transform.cmd,
        env: spec.transform.env,
        staging_uri: attempt_staging_uri(&job.egress_uri, job.id, datum.id, datum.attempt),
        input_files: files.into_iter().map(Into::into).collect(),
    })
}

fn check_worker_id(worker_id: &str) -> AppResult<()> {
    if worker_id.is_empty() || worker_id.len() > 253 {
        return Err(AppError::BadRequest(
            "worker_id must be 1 to 253 characters".to_owned(),
        ));
    }
    Ok(())
}

/// The job of datum `id`, once the caller is known to be allowed to write
/// to it: the admin, or a worker of that job.
async fn datum_job(state: &AppState, principal: &Principal, id: i64) -> AppResult<Job> {
    let job = state
        .db(move |conn| {
            let datum = Datum::find(conn, id)?;
            Job::find(conn, datum.job_id)
        })
        .await?;
    principal.require_job(job.id)?;
    Ok(job)
}

/// Where the attempt named by `claim` staged its outputs.
fn staging_of(job: &Job, datum_id: i64, claim: &Claim) -> String {
    attempt_staging_uri(&job.egress_uri, job.id, datum_id, claim.attempt)
}

/// Removes an attempt's staging area once its final report is settled:
/// accepted, or refused for good (stale, gone). After a server error the
/// worker retries, so the staged files stay.
fn settle<T>(staging: String, result: AppResult<T>) -> AppResult<T> {
    if matches!(
        result,
        Ok(_) | Err(AppError::Conflict(_)) | Err(AppError::NotFound(_))
    ) {
        tokio::spawn(async move {
            let deleted = match storage_for(&staging) {
                Ok(storage) => storage.delete_prefix(&staging).await,
                Err(err) => Err(err),
            };
            if let Err(err) = deleted {
                tracing::warn!(
                    staging,
                    error = format!("{err:#}"),
                    "cannot remove staged outputs"
                );
            }
        });
    }
    result
}

/// A `publish` callback for the models: moves staged files to the egress.
/// It runs on the blocking database thread, under the datum's lock.
fn publisher(
    staging: String,
    egress: String,
    files: Vec<NewOutputFile>,
) -> impl FnOnce(&Datum) -> anyhow::Result<Vec<String>> + Send + 'static {
    let runtime = tokio::runtime::Handle::current();
    move |_datum| runtime.block_on(publish_outputs(&staging, &egress, &files))
}

/// Keeps the last `MAX_OUTPUT_BYTES` of a captured output, on a char boundary.
fn output_tail(output: &str) -> &str {
    if output.len() <= MAX_OUTPUT_BYTES {
        return output;
    }
    let mut start = output.len() - MAX_OUTPUT_BYTES;
    while !output.is_char_boundary(start) {
        start += 1;
    }
    &output[start..]
}

async fn heartbeat(
    principal: Principal,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(request): ApiJson<HeartbeatRequest>,
) -> AppResult<Json<HeartbeatResponse>> {
    datum_job(&state, &principal, id).await?;
    let lease_ms = state.config().lease_ms();
    let lease_expires_at = state
        .db(move |conn| {
            let now = db_now(conn)?;
            Datum::heartbeat(conn, id, &request.claim, now, lease_ms)
        })
        .await?;
    Ok(Json(HeartbeatResponse { lease_expires_at }))
}

/// The shape every final report of an attempt shares: check the caller may
/// write to the datum, run `report` (given the job and the attempt's staging
/// URI, and answering the model call) as a write with the database clock,
/// then settle the attempt's staging area.
async fn final_report<R, F>(
    state: &AppState,
    principal: &Principal,
    id: i64,
    claim: &Claim,
    report: R,
) -> AppResult<Json<DatumSummary>>
where
    R: FnOnce(&Job, &str) -> F,
    F: FnOnce(&mut DbConn, Millis) -> ModelResult<Datum> + Send + 'static,
{
    let job = datum_job(state, principal, id).await?;
    let staging = staging_of(&job, id, claim);
    let call = report(&job, &staging);
    let result = state
        .db_write(move |conn| {
            let now = db_now(conn)?;
            call(conn, now)
        })
        .await;
    let datum = settle(staging, result)?;
    Ok(Json(datum.into()))
}

async fn done(
    principal: Principal,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(request): ApiJson<DoneRequest>,
) -> AppResult<Json<DatumSummary>> {
    let claim = request.claim.clone();
    final_report(&state, &principal, id, &claim, |job, staging| {
        let publish = publisher(
            staging.to_owned(),
            job.egress_uri.clone(),
            request.output_files.clone(),
        );
        move |conn, now| {
            let output = output_tail(&request.output);
            let claim = &request.claim;
            match Datum::mark_done(conn, id, claim, output, &request.output_files, now, publish) {
                // Retrying would fail the same way (an output colliding with a
                // directory in the egress, say), so the attempt fails here,
                // with the reason, and is retried if it has tries left. The
                // worker hears 409: the datum is no longer its own.
                Err(ModelError::Publish(err)) => {
                    let reason = format!("cannot publish outputs: {err:#}");
                    Datum::mark_error(conn, id, claim, output, &reason, now)?;
                    Err(ModelError::Conflict(format!(
                        "{reason}; the attempt was recorded as failed"
                    )))
                }
                other => other,
            }
        }
    })
    .await
}

async fn error(
    principal: Principal,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(request): ApiJson<ErrorRequest>,
) -> AppResult<Json<DatumSummary>> {
    let claim = request.claim.clone();
    final_report(&state, &principal, id, &claim, |_, _| {
        move |conn, now| {
            let output = output_tail(&request.output);
            Datum::mark_error(conn, id, &request.claim, output, &request.error, now)
        }
    })
    .await
}

/// The worker is being stopped (not failing): the datum goes back to the
/// queue without using up a try.
async fn release(
    principal: Principal,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(request): ApiJson<ReleaseRequest>,
) -> AppResult<Json<DatumSummary>> {
    let claim = request.claim.clone();
    final_report(&state, &principal, id, &claim, |_, _| {
        move |conn, now| Datum::release(conn, id, &request.claim, &request.reason, now)
    })
    .await
}

/// Publishes staged files now, before the datum is done.
async fn output_files(
    principal: Principal,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(request): ApiJson<OutputFilesRequest>,
) -> AppResult<Json<Value>> {
    let job = datum_job(&state, &principal, id).await?;
    let staging = staging_of(&job, id, &request.claim);
    let publish = publisher(staging, job.egress_uri.clone(), request.files.clone());
    let count = request.files.len();
    state
        .db(move |conn| {
            let now = db_now(conn)?;
            Datum::record_output_files(conn, id, &request.claim, &request.files, now, publish)
        })
        .await?;
    Ok(Json(json!({ "published": count })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_tail_keeps_the_end_on_a_char_boundary() {
        let long = format!("{}é{}", "a".repeat(10), "b".repeat(MAX_OUTPUT_BYTES - 1));
        let tail = output_tail(&long);
        assert!(tail.len() <= MAX_OUTPUT_BYTES);
        assert!(tail.ends_with('b'));
        assert_eq!(output_tail("short"), "short");
    }
}
