//! The job chain: starts each workflow step's job once its upstream steps
//! are done, cancels the steps below a failed one, and resumes them when
//! the failed step's job is retried (`job retry`) or the run is
//! (`workflow retry`, which puts failed steps back to `waiting`: a step
//! whose job could not be created is started anew, one whose job failed
//! starts a retry of that job).
//!
//! [`run`] is a loop woken by changes, not a poll: every job that starts or
//! ends bumps `AppState::workflow_changes` (here, or on another replica
//! through the PostgreSQL notifications `listen.rs` relays), and so does
//! every step transition. It also runs at the babysitter's interval, which
//! only matters to put back steps whose claim ran out (a falconerid died
//! while creating a step's job).
//!
//! Each pass ([`advance`]) reads the active runs and applies the rules of
//! `falconeri_common::workflow::next_actions` as guarded writes. A step is
//! started by the one replica whose `WorkflowStep::claim` moved it
//! `waiting → starting`; that replica creates the job (listing storage,
//! outside any transaction) in a task of its own, renewing the claim
//! meanwhile, and records the job (`mark_started`) or the failure
//! (`mark_failed`), both guarded by the claim's token.

use std::convert::Infallible;

use falconeri_common::{
    Millis,
    db::DbConn,
    models::{Job, ModelResult, Workflow, WorkflowStep, db_now, step_views},
    pipeline::PipelineSpec,
    status::JobStatus,
    workflow::StepAction,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{
    error::{AppError, AppResult},
    start_job,
    state::{AppState, Change},
};

/// Runs passes on every change and at the babysitter's interval until
/// `cancel` fires.
pub async fn run(state: AppState, cancel: CancellationToken) {
    let mut changes = state.workflow_changes();
    let mut interval = tokio::time::interval(state.config().babysitter_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Marked seen before the pass reads the database, so a change made
        // during the pass wakes the next one.
        changes.borrow_and_update();
        if let Err(err) = advance(&state).await {
            tracing::warn!(error = format!("{err:#}"), "workflow pass failed");
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            changed = changes.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            _ = interval.tick() => {}
        }
    }
    tracing::debug!("workflow chain stopped");
}

/// One pass over every active run. Returns the tasks creating the jobs of
/// the steps this server claimed (the loop lets them run on; tests await
/// them).
pub async fn advance(state: &AppState) -> AppResult<Vec<JoinHandle<()>>> {
    let (released, active) = state
        .db(|conn| {
            let now = db_now(conn)?;
            Ok((
                WorkflowStep::release_stale_claims(conn, now)?,
                Workflow::list_active(conn)?,
            ))
        })
        .await?;
    if released > 0 {
        tracing::info!(
            released,
            "steps whose start was cut short will be started again"
        );
    }
    let mut tasks = Vec::new();
    for id in active {
        tasks.extend(advance_workflow(state, id).await?);
    }
    Ok(tasks)
}

/// A step this server claimed, to start.
struct Claimed {
    step_id: i64,
    name: String,
    token: String,
    spec: PipelineSpec,
    incremental: bool,
    /// The step's failed job, for a step reopened by `workflow retry`: its
    /// failed and canceled datums are retried instead of a new job.
    retry_of: Option<i64>,
}

/// Applies the chain rules to one run.
async fn advance_workflow(state: &AppState, workflow_id: i64) -> AppResult<Vec<JoinHandle<()>>> {
    let lease_ms = claim_lease_ms(state);
    let (claimed, changed) = state
        .db(move |conn| {
            let now = db_now(conn)?;
            let workflow = Workflow::find(conn, workflow_id)?;
            let mut changed = WorkflowStep::adopt_retries(conn, workflow_id, now)? > 0;
            let steps = Workflow::steps(conn, workflow_id)?;
            let views = step_views(&steps)?;
            let mut claimed = Vec::new();
            for action in falconeri_common::workflow::next_actions(&views) {
                match action {
                    StepAction::Cancel(i, reason) => {
                        if let Some(s) = steps.get(i) {
                            changed |= WorkflowStep::cancel(conn, s.step.id, &reason, now)?;
                        }
                    }
                    StepAction::Resume(i) => {
                        if let Some(s) = steps.get(i) {
                            changed |= WorkflowStep::resume(conn, s.step.id, now)?;
                        }
                    }
                    StepAction::Start(i) => {
                        let Some(s) = steps.get(i) else { continue };
                        let token = hex::encode(rand::random::<[u8; 16]>());
                        // Exactly one replica's guarded UPDATE wins.
                        if WorkflowStep::claim(
                            conn,
                            s.step.id,
                            &token,
                            now,
                            now.saturating_add(lease_ms),
                        )? {
                            changed = true;
                            match s.step.spec() {
                                Ok(spec) => claimed.push(Claimed {
                                    step_id: s.step.id,
                                    name: s.step.name.clone(),
                                    token,
                                    spec,
                                    incremental: workflow.incremental,
                                    retry_of: s.step.job_id,
                                }),
                                Err(err) => {
                                    WorkflowStep::mark_failed(
                                        conn,
                                        s.step.id,
                                        &token,
                                        &format!("its stored spec is unreadable: {err:#}"),
                                        now,
                                    )?;
                                }
                            }
                        }
                    }
                }
            }
            Ok((claimed, changed))
        })
        .await?;
    if changed {
        state.notify(Change::Workflows);
    }
    Ok(claimed
        .into_iter()
        .map(|claimed| {
            let state = state.clone();
            // A task of its own: nothing may cut a claimed start short.
            tokio::spawn(async move { start_step(&state, claimed).await })
        })
        .collect())
}

/// How long a claim on a step holds without renewal: one lease, renewed
/// every third of it while the job is created.
pub(crate) fn claim_lease_ms(state: &AppState) -> i64 {
    state.config().lease_ms().saturating_mul(2)
}

/// Creates a claimed step's job and records the outcome.
async fn start_step(state: &AppState, claimed: Claimed) {
    let Claimed {
        step_id,
        name,
        token,
        spec,
        incremental,
        retry_of,
    } = claimed;
    tracing::info!(step = name, retry_of, "starting workflow step");
    let created = tokio::select! {
        created = create_step_job(state, spec, incremental, retry_of) => created,
        never = renew_claim(state, step_id, token.clone()) => match never {},
    };
    let outcome = match &created {
        Ok(job) => {
            let (job_id, token) = (job.id, token.clone());
            state
                .db(move |conn| {
                    let now = db_now(conn)?;
                    WorkflowStep::mark_started(conn, step_id, &token, job_id, now)
                })
                .await
        }
        Err(err) => {
            let reason = format!("cannot create its job: {err}");
            let token = token.clone();
            state
                .db(move |conn| {
                    let now = db_now(conn)?;
                    WorkflowStep::mark_failed(conn, step_id, &token, &reason, now)
                })
                .await
        }
    };
    match (outcome, created) {
        (Ok(true), _) => {}
        (Ok(false), Ok(job)) if Some(job.id) != retry_of => {
            // Our claim ran out while the job was planned and another
            // replica took the step over: this job is one too many.
            tracing::warn!(
                step = name,
                job = job.name,
                "lost the claim on a workflow step while creating its job; canceling that job"
            );
            let id = job.id;
            let stopped = state
                .db_retrying(move |conn| {
                    let now = db_now(conn)?;
                    Job::stop(
                        conn,
                        id,
                        JobStatus::Canceled,
                        Some("a duplicate start of a workflow step"),
                        now,
                    )
                })
                .await;
            if let Ok((job, true)) = stopped {
                crate::babysitter::wind_down_detached(state, job).await;
            }
        }
        // Lost the claim, having made nothing (or found the step's old
        // job reopened, which is not ours to cancel).
        (Ok(false), _) => {}
        (Err(err), _) => {
            // The claim runs out and the step is started again.
            tracing::warn!(
                step = name,
                error = format!("{err:#}"),
                "cannot record a step's start"
            );
        }
    }
    state.notify(Change::Workflows);
}

/// Creates a claimed step's job: a new job of its spec, or for a step
/// reopened by `workflow retry`, a retry of its failed job (the job
/// `job retry` would make). If that job is no longer failed (a `datum
/// retry` reopened it meanwhile), the step takes it as it is.
async fn create_step_job(
    state: &AppState,
    spec: PipelineSpec,
    incremental: bool,
    retry_of: Option<i64>,
) -> AppResult<Job> {
    let Some(failed) = retry_of else {
        return create_run_job(state, spec, incremental, None).await;
    };
    let job = state.db(move |conn| Job::find(conn, failed)).await?;
    if !matches!(job.status(), JobStatus::Error | JobStatus::Canceled) {
        return Ok(job);
    }
    let spec = job
        .spec()
        .map_err(|err| AppError::Internal(err.context("stored spec is unreadable")))?;
    start_job::create(
        state,
        spec,
        start_job::Source::FailedDatumsOf(job.id),
        Some(job.id),
    )
    .await
}

/// Keeps the claim on a step alive while its job is created.
async fn renew_claim(state: &AppState, step_id: i64, token: String) -> Infallible {
    let what = format!("workflow step {step_id}");
    keep_renewing(state, what, move |conn, until| {
        WorkflowStep::renew_claim(conn, step_id, &token, until)
    })
    .await
}

/// Renews a claim (a workflow step's, a scheduled tick's) every half lease,
/// to `claim_lease_ms` from the database's clock, until the caller drops
/// it; a failed renewal is logged and tried again at the next tick.
pub(crate) async fn keep_renewing<F>(state: &AppState, what: String, renew: F) -> Infallible
where
    F: Fn(&mut DbConn, Millis) -> ModelResult<bool> + Clone + Send + 'static,
{
    let lease_ms = claim_lease_ms(state);
    let mut ticks = tokio::time::interval(state.config().lease / 2);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let renew = renew.clone();
        let renewed = state
            .db(move |conn| {
                let now = db_now(conn)?;
                renew(conn, now.saturating_add(lease_ms))
            })
            .await;
        if let Err(err) = renewed {
            tracing::warn!(
                claim = what,
                error = format!("{err:#}"),
                "cannot renew a claim"
            );
        }
    }
}

/// Creates and starts a job of `spec` for a workflow step or a schedule.
///
/// The one place a run's `incremental` flag (a schedule's `--incremental`,
/// kept on its workflow runs) reaches job creation: like `job run
/// --incremental`, it turns incremental on; without it the spec decides.
///
/// `run_key` is the job's idempotency key (a schedule's tick), if any.
pub async fn create_run_job(
    state: &AppState,
    mut spec: PipelineSpec,
    incremental: bool,
    run_key: Option<String>,
) -> AppResult<Job> {
    spec.incremental |= incremental;
    start_job::create_keyed(state, spec, start_job::Source::Inputs, None, run_key).await
}
