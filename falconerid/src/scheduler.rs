//! The scheduler: starts exactly one run (a job, or a workflow run) per
//! tick of each schedule, across replicas and crashes.
//!
//! [`run`] sleeps until the earliest `next_run_at` or pending lease
//! (`tokio::time::sleep_until` inside a `tokio::select!` that also wakes
//! on schedule changes, here or on another replica), then does what is
//! due with [`tick_at`]:
//!
//! - Taking a tick is one guarded UPDATE moving `next_run_at` from the due
//!   tick to the next one after now and recording the due tick as pending,
//!   leased to this replica (`Schedule::take_tick`): exactly one replica's
//!   update changes the row, and that replica makes the run, outside any
//!   transaction, renewing its lease meanwhile.
//! - The run carries the tick's idempotency key (`Schedule::run_key`,
//!   unique among jobs and among workflow runs), so it is made once: a
//!   second attempt is refused at its first INSERT. Recording the run
//!   clears the pending tick.
//! - A pending tick whose lease ran out (its replica died between taking
//!   the tick and recording the run) is taken over by any replica's next
//!   pass, which records the run found by its key or makes it.
//!
//! A tick missed while every falconerid was down is found due at start-up
//! and runs once; the ticks missed with it are skipped.

use std::{convert::Infallible, time::Duration};

use falconeri_common::{
    Millis,
    models::{Job, Schedule, Workflow, db_now},
    pipeline::PipelineSpec,
    schedule::{CronSchedule, Due, due},
    workflow::WorkflowSpec,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{
    error::AppResult,
    state::{AppState, Change},
};

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

/// Takes every tick due at `now`, and every pending tick whose taker's
/// lease ran out by `now` (the clock is passed in, so tests jump to any
/// instant), and makes their runs in tasks of their own. Returns those
/// tasks and when the scheduler has something to do next.
pub async fn tick_at(
    state: &AppState,
    now: Millis,
) -> AppResult<(Vec<JoinHandle<()>>, Option<Millis>)> {
    let lease_ms = pending_lease_ms(state);
    let mut tasks = Vec::new();
    let abandoned = state
        .db(move |conn| Schedule::list_abandoned(conn, now))
        .await?;
    for schedule in abandoned {
        let Some(tick) = schedule.pending_tick else {
            continue;
        };
        let token = new_token();
        let (id, owner) = (schedule.id, token.clone());
        let won = state
            .db(move |conn| {
                Schedule::take_over_pending(
                    conn,
                    id,
                    tick,
                    now,
                    &owner,
                    now.saturating_add(lease_ms),
                )
            })
            .await?;
        if won {
            tracing::info!(
                schedule = schedule.name,
                tick,
                "re-driving a scheduled run whose falconerid stopped before recording it"
            );
            tasks.push(spawn_run(state, schedule, tick, token));
        }
    }
    let due_now = state.db(move |conn| Schedule::list_due(conn, now)).await?;
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
        let token = new_token();
        let (id, owner) = (schedule.id, token.clone());
        let won = state
            .db(move |conn| {
                Schedule::take_tick(
                    conn,
                    id,
                    due_at,
                    next,
                    now,
                    &owner,
                    now.saturating_add(lease_ms),
                )
            })
            .await?;
        if !won {
            // Another replica took this tick.
            continue;
        }
        tasks.push(spawn_run(state, schedule, due_at, token));
    }
    let next = state.db(Schedule::next_due).await?;
    Ok((tasks, next))
}

/// A fresh owner token for a pending tick.
fn new_token() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// How long a pending tick stays its taker's without renewal: as a
/// workflow step's claim, two leases, renewed every half lease while the
/// run is made.
fn pending_lease_ms(state: &AppState) -> i64 {
    crate::chain::claim_lease_ms(state)
}

/// Makes the run of a tick this server owns, in a task of its own: nothing
/// may cut it short.
fn spawn_run(state: &AppState, schedule: Schedule, tick: Millis, token: String) -> JoinHandle<()> {
    let state = state.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = drive(&state, &schedule, tick, &token) => {}
            never = renew_pending(&state, schedule.id, token.clone()) => match never {},
        }
        state.notify(Change::Schedules);
    })
}

/// What became of a tick's run.
enum Made {
    /// The run exists (made now, or earlier by a replica that died before
    /// recording it): its name.
    Run(String),
    /// A job with the tick's key is still being planned, by a replica
    /// that may have lost its lease but lives on, or by one that died (its
    /// planning lease then runs out and the job is removed). The pending
    /// tick is left to run out and be taken over again.
    Planning,
}

/// Makes (or finds) the run of `schedule`'s pending tick `tick` and
/// records it, or records why it could not be made.
async fn drive(state: &AppState, schedule: &Schedule, tick: Millis, token: &str) {
    tracing::info!(schedule = schedule.name, tick, "starting a scheduled run");
    let key = Schedule::run_key(schedule.id, tick);
    let made = match find_run(state, schedule, &key).await {
        Ok(Some(found)) => Ok(found),
        Ok(None) => match make_run(state, schedule, key.clone()).await {
            Ok(name) => Ok(Made::Run(name)),
            // Refused because a run with this key appeared meanwhile, or
            // failed after its job row was made (canceled while planned):
            // the key says whether a run exists.
            Err(err) => match find_run(state, schedule, &key).await {
                Ok(Some(found)) => Ok(found),
                _ => Err(err),
            },
        },
        Err(err) => Err(format!("cannot look the run up: {err:#}")),
    };
    let (id, owner) = (schedule.id, token.to_owned());
    let recorded = match made {
        Ok(Made::Run(name)) => {
            state
                .db(move |conn| Schedule::record_run(conn, id, tick, &name))
                .await
        }
        Ok(Made::Planning) => return,
        Err(err) => {
            tracing::warn!(
                schedule = schedule.name,
                error = err,
                "a scheduled run could not start"
            );
            state
                .db(move |conn| Schedule::record_error(conn, id, tick, &owner, &err))
                .await
        }
    };
    if let Err(err) = recorded {
        // The pending tick stays; once its lease runs out, a replica finds
        // the run by its key and records it.
        tracing::warn!(error = format!("{err:#}"), "cannot record a scheduled run");
    }
}

/// The run carrying `key`, if one exists.
async fn find_run(state: &AppState, schedule: &Schedule, key: &str) -> AppResult<Option<Made>> {
    let key = key.to_owned();
    let workflow = schedule.target_kind == "workflow";
    state
        .db(move |conn| {
            Ok(if workflow {
                Workflow::find_by_run_key(conn, &key)?.map(|run| Made::Run(run.name))
            } else {
                Job::find_by_run_key(conn, &key)?.map(|job| {
                    if job.planning_lease_until.is_some() {
                        Made::Planning
                    } else {
                        Made::Run(job.name)
                    }
                })
            })
        })
        .await
}

/// Makes the run of a tick, keyed `key`; its name, or why it failed.
async fn make_run(state: &AppState, schedule: &Schedule, key: String) -> Result<String, String> {
    match schedule.target_kind.as_str() {
        "workflow" => match serde_json::from_str::<WorkflowSpec>(&schedule.target) {
            Ok(spec) => crate::routes::workflows::start(
                state,
                spec,
                Some(schedule.id),
                schedule.incremental,
                Some(key),
            )
            .await
            .map(|run| run.name)
            .map_err(|err| err.to_string()),
            Err(err) => Err(format!("the stored workflow is unreadable: {err}")),
        },
        _ => match serde_json::from_str::<PipelineSpec>(&schedule.target) {
            Ok(spec) => crate::chain::create_run_job(state, spec, schedule.incremental, Some(key))
                .await
                .map(|job| job.name)
                .map_err(|err| err.to_string()),
            Err(err) => Err(format!("the stored spec is unreadable: {err}")),
        },
    }
}

/// Keeps this server's lease on a pending tick while its run is made.
async fn renew_pending(state: &AppState, id: i64, token: String) -> Infallible {
    let what = format!("pending run of schedule {id}");
    crate::chain::keep_renewing(state, what, move |conn, until| {
        Schedule::renew_pending(conn, id, &token, until)
    })
    .await
}
