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
//! rows, the reverse of `Job::stop`'s order. A crash in between leaves a
//! `fail_job` datum failed and its job running on; the limit, being a
//! count, is found again by the next babysitter pass.

use falconeri_common::{
    failure_policy::ExitAction,
    models::{Job, db_now},
    status::JobStatus,
};

use crate::{
    error::AppResult,
    state::{AppState, Change},
};

/// Why a failure ended its job, for the job's error message.
pub(crate) fn fail_job_reason(
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

/// Stops job `job_id` with `error` and `reason` (a `fail_job` rule
/// matched). A job that already ended keeps its outcome.
pub(crate) async fn fail_job(state: &AppState, job_id: i64, reason: String) -> AppResult<()> {
    let (job, stopped) = state
        .db_retrying(move |conn| {
            let now = db_now(conn)?;
            Job::stop(conn, job_id, JobStatus::Error, Some(&reason), now)
        })
        .await?;
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
