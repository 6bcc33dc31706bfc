//! The scheduler: starts one run (a job, or a workflow run) per tick of
//! each schedule.
//!
//! [`run`] sleeps until the earliest `next_run_at` (`tokio::time::sleep_until`
//! inside a `tokio::select!` that also wakes on schedule changes, here or on
//! another replica), then takes every due tick with [`tick_at`]. Taking a
//! tick is one guarded UPDATE moving `next_run_at` from the due tick to the
//! next one after now (`Schedule::take_tick`): exactly one replica's update
//! changes the row, and that replica starts the run, outside any
//! transaction. A tick missed while every falconerid was down is found due
//! at start-up and runs once; the ticks missed with it are skipped.

use std::time::Duration;

use falconeri_common::{
    Millis,
    models::{Schedule, db_now},
    pipeline::PipelineSpec,
    schedule::{CronSchedule, Due, due},
    workflow::WorkflowSpec,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{error::AppResult, state::AppState};

/// The longest the scheduler sleeps without looking again: a bound in
/// case the database clock and this machine's drift apart, not a poll.
const MAX_SLEEP: Duration = Duration::from_secs(3600);

/// After a failed pass, the scheduler looks again this much later.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// Runs until `cancel` fires.
pub async fn run(state: AppState, cancel: CancellationToken) {
    let mut changes = state.schedule_changes();
    loop {
        changes.borrow_and_update();
        let wake_in = match pass(&state).await {
            Ok(Some(delay)) => delay.min(MAX_SLEEP),
            Ok(None) => MAX_SLEEP,
            Err(err) => {
                tracing::warn!(error = format!("{err:#}"), "scheduler pass failed");
                RETRY_AFTER
            }
        };
        let deadline = tokio::time::Instant::now() + wake_in;
        tokio::select! {
            _ = cancel.cancelled() => break,
            changed = changes.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
    tracing::debug!("scheduler stopped");
}

/// One pass at the database's clock: starts the due runs, and says how
/// long until the next tick.
async fn pass(state: &AppState) -> AppResult<Option<Duration>> {
    let now = state.db(db_now).await?;
    let (_, next) = tick_at(state, now).await?;
    Ok(next.map(|at| Duration::from_millis(u64::try_from(at - now).unwrap_or(0))))
}

/// Takes every tick due at `now` (the clock is passed in, so tests jump
/// to any instant) and starts their runs in tasks of their own. Returns
/// those tasks and the next tick due.
pub async fn tick_at(
    state: &AppState,
    now: Millis,
) -> AppResult<(Vec<JoinHandle<()>>, Option<Millis>)> {
    let due_now = state.db(move |conn| Schedule::list_due(conn, now)).await?;
    let mut tasks = Vec::new();
    for schedule in due_now {
        let Some(due_at) = schedule.next_run_at else {
            continue;
        };
        let cron = match CronSchedule::parse(&schedule.cron, &schedule.timezone) {
            Ok(cron) => cron,
            Err(err) => {
                // Validated at creation; a row this falconeri cannot read
                // is paused rather than retried forever.
                tracing::warn!(schedule = schedule.name, error = %err, "unreadable schedule; pausing it");
                let name = schedule.name.clone();
                state
                    .db(move |conn| Schedule::set_paused(conn, &name, true, None))
                    .await?;
                continue;
            }
        };
        let Due::Run { next } = due(&cron, due_at, now) else {
            continue;
        };
        let id = schedule.id;
        let won = state
            .db(move |conn| Schedule::take_tick(conn, id, due_at, next, now))
            .await?;
        if !won {
            // Another replica took this tick.
            continue;
        }
        let state = state.clone();
        tasks.push(tokio::spawn(
            async move { start_run(&state, schedule).await },
        ));
    }
    let next = state.db(Schedule::next_due).await?;
    Ok((tasks, next))
}

/// Starts the run of one tick and records it on the schedule.
async fn start_run(state: &AppState, schedule: Schedule) {
    tracing::info!(schedule = schedule.name, "starting a scheduled run");
    let started: Result<String, String> = match schedule.target_kind.as_str() {
        "workflow" => match serde_json::from_str::<WorkflowSpec>(&schedule.target) {
            Ok(spec) => crate::routes::workflows::start(
                state,
                spec,
                Some(schedule.id),
                schedule.incremental,
            )
            .await
            .map(|run| run.name)
            .map_err(|err| err.to_string()),
            Err(err) => Err(format!("the stored workflow is unreadable: {err}")),
        },
        _ => match serde_json::from_str::<PipelineSpec>(&schedule.target) {
            Ok(spec) => crate::chain::create_run_job(state, spec, schedule.incremental)
                .await
                .map(|job| job.name)
                .map_err(|err| err.to_string()),
            Err(err) => Err(format!("the stored spec is unreadable: {err}")),
        },
    };
    if let Err(err) = &started {
        tracing::warn!(
            schedule = schedule.name,
            error = err,
            "a scheduled run could not start"
        );
    }
    let id = schedule.id;
    let recorded = state
        .db(move |conn| match &started {
            Ok(name) => Schedule::record_run(conn, id, Some(name), None),
            Err(err) => Schedule::record_run(conn, id, None, Some(err)),
        })
        .await;
    if let Err(err) = recorded {
        tracing::warn!(error = format!("{err:#}"), "cannot record a scheduled run");
    }
}
