//! The job-level side of failure policies: a failure report whose exit
//! code an `on_exit` rule maps to `fail_job` ends its job at once, and a
//! job whose failed datums crossed its `max_failed_datums` is failed as
//! soon as that is seen (by the report that crossed it, or by the
//! babysitter for failures it decided itself: expired leases, timeouts,
//! lost workers). Either way the job is stopped as `job cancel` stops one
//! (its unfinished datums canceled, its workers stopped, its staging
//! removed), with `error` and a reason naming what happened.
//!
//! The datum's failure and the job's stop are two transactions: folding
//! the stop into the report's would lock the job row behind the datum
//! rows, the reverse of `Job::stop`'s order. So the report's transaction
//! records a `JobStopRequest` instead (a row of its own table, touching
//! no job row: see that model for the lock order), the report's handler
//! stops the job right after, and the babysitter finishes any request left
//! by a falconerid that died in between ([`finish_requested_stops`]). The
//! limit, being a count, is found again by the next babysitter pass.

use falconeri_common::{
    api::Claim,
    db::DbConn,
    failure_policy::ExitAction,
    models::{Clock, Datum, Job, JobStopRequest, ModelError, ModelResult, Report, db_now},
    status::JobStatus,
};

use crate::{
    error::AppResult,
    state::{AppState, Change},
};

/// Why a failure ended its job, for the job's error message.
pub fn fail_job_reason(
    datum_id: i64,
    exit_code: Option<i32>,
    signal: Option<i32>,
    rule: usize,
) -> String {
    let how = match (exit_code, signal) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(number)) => format!("was killed by signal {number}"),
        (None, None) => "failed".to_owned(),
    };
    format!(
        "datum {datum_id}'s command {how}, which on_exit[{rule}] maps to {}",
        ExitAction::FailJob.as_str()
    )
}

/// The report's side of a `fail_job` rule, in one transaction: fails
/// datum `id` without a retry and records that its job must stop with
/// `reason`. From this commit on the stop is owed: the report's handler
/// carries it out right after ([`fail_job`]), and the babysitter does if
/// this server dies first ([`finish_requested_stops`]). The request locks
/// no job row, so this transaction (datum rows) and `Job::stop` (job row,
/// then datum rows) never wait for each other in a cycle.
pub fn fail_datum_requesting_stop(
    conn: &mut DbConn,
    id: i64,
    claim: &Claim,
    report: &Report<'_>,
    message: &str,
    reason: &str,
) -> ModelResult<Datum> {
    conn.write_transaction(|conn| {
        let datum = Datum::fail_now(conn, id, claim, report, message, Clock::DB)?;
        let now = db_now(conn)?;
        JobStopRequest::record(conn, datum.job_id, reason, now)?;
        Ok(datum)
    })
}

/// Stops job `job_id` with `error` and `reason` (a `fail_job` rule
/// matched), then deletes its stop request. A job that already ended keeps
/// its outcome; a job that no longer exists only loses its request.
pub(crate) async fn fail_job(state: &AppState, job_id: i64, reason: String) -> AppResult<()> {
    let stopped = state
        .db_retrying(move |conn| {
            let now = db_now(conn)?;
            let stopped = match Job::stop(conn, job_id, JobStatus::Error, Some(&reason), now) {
                Ok(stopped) => Some(stopped),
                Err(ModelError::NotFound(_)) => None,
                Err(err) => return Err(err),
            };
            // After the stop's own transaction: the request is spent.
            JobStopRequest::finish(conn, job_id)?;
            Ok(stopped)
        })
        .await?;
    let Some((job, stopped)) = stopped else {
        return Ok(());
    };
    if stopped {
        tracing::info!(
            job = job.name,
            reason = job.error_message,
            "job failed by on_exit"
        );
        ended(state, job);
    }
    Ok(())
}

/// How many stop requests one babysitter pass finishes; the rest wait for
/// the next pass.
const REQUESTS_PER_PASS: i64 = 100;

/// Finishes the stops that `fail_job` rules requested and nobody carried
/// out (the falconerid that settled the report died first). Run by the
/// babysitter; returns how many jobs it stopped.
pub async fn finish_requested_stops(state: &AppState) -> AppResult<usize> {
    let requests = state
        .db(|conn| JobStopRequest::pending(conn, REQUESTS_PER_PASS))
        .await?;
    let mut stopped = 0;
    for request in requests {
        let job_id = request.job_id;
        let before = state
            .db(move |conn| Ok(Job::find(conn, job_id).ok().map(|job| job.status())))
            .await?;
        fail_job(state, job_id, request.reason).await?;
        if before.is_some_and(|status| !status.is_terminal()) {
            tracing::info!(job_id, "finished a job stop a fail_job rule requested");
            stopped += 1;
        }
    }
    Ok(stopped)
}

/// Fails job `job_id` if its failed datums went past its
/// `max_failed_datums`. Returns true if this call stopped it.
pub(crate) async fn enforce_limit(state: &AppState, job_id: i64) -> AppResult<bool> {
    let stopped = state
        .db_retrying(move |conn| {
            let now = db_now(conn)?;
            Job::fail_if_over_limit(conn, job_id, now)
        })
        .await?;
    Ok(match stopped {
        Some(job) => {
            tracing::info!(
                job = job.name,
                reason = job.error_message,
                "job failed: max_failed_datums crossed"
            );
            ended(state, job);
            true
        }
        None => false,
    })
}

/// Wakes the job's followers and winds it down in the background: the
/// caller may be a worker's report, and that worker is among those the
/// wind-down stops, so the request must not wait for it.
fn ended(state: &AppState, job: Job) {
    state.notify(Change::JobState { job_id: job.id });
    let state = state.clone();
    tokio::spawn(async move { crate::babysitter::wind_down_detached(&state, job).await });
}
