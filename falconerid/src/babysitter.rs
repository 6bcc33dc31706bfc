//! The babysitter: a cancellable background loop that keeps jobs moving when
//! workers don't. Each pass expires leases, enforces `datum_timeout` and
//! `job_timeout`, releases datums of workers that died (without using up a
//! try when the infrastructure ended them), replaces workers that exited
//! early (or, where the platform replaces them, as with a Kubernetes Job,
//! fails a job whose pool failed or vanished), finishes publishing that a
//! crashed falconerid left half done, and finishes jobs with nothing left to
//! run.
//!
//! Every rule is a guarded statement or a lock-and-re-check transaction in
//! the models, so any number of babysitters (one per falconerid replica) may
//! run at once.

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
    time::Duration,
};

use anyhow::Result;
use falconeri_common::{
    api::NewOutputFile,
    models::{Clock, Datum, DeadOwners, Job, OutputFile, PodFailure, db_now},
    status::JobStatus,
    storage::{attempt_staging_uri, job_staging_uri, publish_outputs, storage_for},
};
use tokio_util::sync::CancellationToken;

use crate::{
    executor::{PoolState, WorkerLaunch},
    state::AppState,
    state::Change,
};

/// Runs passes every `babysitter_interval` until `cancel` fires.
pub async fn run(state: AppState, cancel: CancellationToken) {
    // Leases live in the database and kept running while this server was
    // down: give workers one lease to reach the new server before their
    // silence counts against them.
    let babysitter = Babysitter {
        leases_trusted_after: Some(tokio::time::Instant::now() + state.config().lease),
        ..Babysitter::default()
    };
    let mut interval = tokio::time::interval(state.config().babysitter_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = interval.tick() => {
                // A failed pass is logged and retried on the next tick; the
                // loop itself never dies.
                if let Err(err) = babysitter.tick(&state).await {
                    tracing::warn!(error = format!("{err:#}"), "babysitter pass failed");
                }
            }
        }
    }
    tracing::debug!("babysitter stopped");
}

/// What follows the end of a job, however it ended: its workers are
/// stopped and the outputs its attempts staged but never published are
/// removed. Failures are logged, not returned: the job's outcome stands.
pub async fn wind_down(state: &AppState, job: &Job) {
    let _ending = state.lock_job_ending(job.id).await;
    // A `datum retry` may have reopened the job since it ended: then the
    // workers and staging are the new run's, and stay.
    let id = job.id;
    match state.db(move |conn| Job::find(conn, id)).await {
        Ok(now) if !now.status().is_terminal() => {
            tracing::info!(job = job.name, "job reopened before its wind-down; skipped");
            return;
        }
        Ok(_) => {}
        // Winding down a job that ended is the safe side.
        Err(err) => tracing::warn!(job = job.name, error = %err, "cannot re-read the job"),
    }
    if let Err(err) = state.executor().stop_workers(job.id).await {
        tracing::warn!(
            job = job.name,
            error = format!("{err:#}"),
            "cannot stop workers"
        );
    }
    remove_staging(job).await;
}

/// Finishes the job if none of its datums can run any more, removing its
/// staging area *first*: once a client sees the job `done`, the egress holds
/// the outputs and nothing else. (Nothing stages for a job whose datums have
/// all ended, but a stale attempt might still; its own report settles it.)
/// `skew_ms` is the babysitter's test clock skew.
pub async fn finish_if_complete(
    state: &AppState,
    job: &Job,
    skew_ms: i64,
) -> crate::error::AppResult<Option<Job>> {
    let id = job.id;
    if state
        .db(move |conn| Job::has_unfinished_datums(conn, id))
        .await?
    {
        return Ok(None);
    }
    remove_staging(job).await;
    let notifier = state.clone();
    state
        .db(move |conn| {
            let now = db_now(conn)? + skew_ms;
            let finished = Job::finish_if_complete(conn, id, now)?;
            if finished.is_some() {
                notifier.notify(Change::JobState { job_id: id });
            }
            Ok(finished)
        })
        .await
}

/// Deletes the job's staging prefix, logging a failure: the job's outcome
/// stands either way.
async fn remove_staging(job: &Job) {
    let staging = job_staging_uri(&job.egress_uri, job.id);
    let deleted = match storage_for(&staging) {
        Ok(storage) => storage.delete_prefix(&staging).await,
        Err(err) => Err(err),
    };
    if let Err(err) = deleted {
        tracing::warn!(
            job = job.name,
            error = format!("{err:#}"),
            "cannot remove staged outputs"
        );
    }
}

/// [`wind_down`] in a task of its own, then tells long-polls the job ended.
/// Handlers await it, but a client that hangs up (a worker stopped by this
/// very wind-down, say) cannot cut the clean-up short.
pub async fn wind_down_detached(state: &AppState, job: Job) {
    let state = state.clone();
    let task = tokio::spawn(async move {
        wind_down(&state, &job).await;
        state.notify(Change::JobState { job_id: job.id });
    });
    if let Err(err) = task.await {
        tracing::warn!(error = %err, "job clean-up task failed");
    }
}

/// How long a job may sit in `ready` (inserted, workers not yet confirmed)
/// before the babysitter takes it over: longer than any start takes.
const STALE_READY_MS: i64 = 60_000;

/// How many times in a row starting a job's workers may fail before the job
/// fails.
const MAX_FAILED_STARTS: u32 = 3;

/// How many stale publishing datums one pass finishes.
const STALE_PUBLISHING_BATCH: i64 = 100;

/// The longest wait before replacing crashed workers.
const MAX_CRASH_BACKOFF: Duration = Duration::from_secs(30);

/// How a job's crashed workers are being replaced.
#[derive(Debug)]
struct CrashBackoff {
    /// Dead workers that had reserved a datum, as of the last pass.
    crashes_seen: usize,
    /// Passes in a row that found new crashes.
    streak: u32,
    /// No replacement before this.
    not_before: tokio::time::Instant,
}

/// Memory between passes: how each job's workers are being replaced.
#[derive(Debug, Default)]
pub struct Babysitter {
    /// Per job: the crash backoff of its workers.
    restarts: Mutex<HashMap<i64, CrashBackoff>>,
    failed_starts: Mutex<HashMap<i64, u32>>,
    /// Lease expiry waits until then (see [`run`]).
    leases_trusted_after: Option<tokio::time::Instant>,
    /// Added to the database clock; tests use it to jump past leases and
    /// timeouts instead of sleeping.
    clock_skew_ms: i64,
}

impl Babysitter {
    /// A babysitter that sees the clock `skew_ms` ahead (for tests).
    pub fn with_clock_skew(skew_ms: i64) -> Babysitter {
        Babysitter {
            clock_skew_ms: skew_ms,
            ..Babysitter::default()
        }
    }

    /// One pass over every rule, timed for `/metrics`.
    pub async fn tick(&self, state: &AppState) -> Result<()> {
        let started = std::time::Instant::now();
        let result = self.pass(state).await;
        crate::metrics::babysitter_pass(started.elapsed());
        result
    }

    async fn pass(&self, state: &AppState) -> Result<()> {
        let mut changed = false;

        let skew = self.clock_skew_ms;
        let trust_leases = self
            .leases_trusted_after
            .is_none_or(|after| tokio::time::Instant::now() >= after);
        // A job whose planning stopped renewing its lease (its falconerid
        // died mid-listing) must never run half-planned: delete it.
        let abandoned = state
            .db(move |conn| {
                let now = db_now(conn)? + skew;
                Job::delete_abandoned_plans(conn, now)
            })
            .await?;
        for name in abandoned {
            tracing::warn!(job = name, "deleted a job whose planning was cut short");
            changed = true;
        }

        // A job left in `ready` (its start was cut short by a crash or a
        // failed write) would wait forever: take it over.
        let stale = state
            .db(move |conn| {
                let now = db_now(conn)? + skew;
                Job::list_ready_before(conn, now - STALE_READY_MS)
            })
            .await?;
        for job in stale {
            changed |= self.take_over(state, job).await;
        }

        let (expired, timed_out, past_deadline) = state
            .db_retrying(move |conn| {
                let now = db_now(conn)? + skew;
                // Deadlines first: a datum past both its deadline and its
                // lease failed because it was too slow, and says so.
                let timed_out = Datum::expire_deadlines(conn, now)?;
                let expired = if trust_leases {
                    Datum::expire_leases(conn, now)?
                } else {
                    0
                };
                let mut stopped = Vec::new();
                for job in Job::list_past_deadline(conn, now)? {
                    let message = "job timed out (job_timeout)";
                    let (job, did_stop) =
                        Job::stop(conn, job.id, JobStatus::Error, Some(message), now)?;
                    if did_stop {
                        stopped.push(job);
                    }
                }
                Ok((expired, timed_out, stopped))
            })
            .await?;
        if expired + timed_out > 0 {
            tracing::info!(
                expired,
                timed_out,
                "failed attempts of silent or slow datums"
            );
            changed = true;
        }
        // Publishing cut short (its falconerid died between the two guarded
        // writes): finish it. The publishing lease tells which are stale.
        let stale_publishing = state
            .db(move |conn| {
                let now = db_now(conn)? + skew;
                Datum::stale_publishing(conn, now, STALE_PUBLISHING_BATCH)
            })
            .await?;
        for (datum, outputs) in stale_publishing {
            changed |= self.finish_publishing(state, datum, outputs).await;
        }
        for job in past_deadline {
            tracing::info!(job = job.name, "job timed out");
            wind_down(state, &job).await;
            changed = true;
        }

        // A `fail_job` rule matched a report whose falconerid died before
        // it stopped the job: stop it now.
        changed |= crate::failures::finish_requested_stops(state).await? > 0;

        // Taken before any executor is asked: a datum reserved before this
        // instant had its worker before the executor's answer.
        let (running, observed_after) = state
            .db(|conn| Ok((Job::list_running(conn)?, db_now(conn)?)))
            .await?;
        for job in running {
            // One job's trouble (an unreadable spec, an executor error) must
            // not stop the rules for every other job.
            let name = job.name.clone();
            match self.watch_job(state, job, observed_after).await {
                Ok(job_changed) => changed |= job_changed,
                Err(err) => {
                    tracing::warn!(
                        job = name,
                        error = format!("{err:#}"),
                        "babysitter rule failed"
                    )
                }
            }
        }
        if changed {
            // Leases and deadlines expire across jobs: wake every running
            // job's waiters (a pass changes something only now and then).
            let running = state.db(Job::list_running).await?;
            for job in running {
                state.notify(Change::JobState { job_id: job.id });
            }
        }
        Ok(())
    }

    /// Finishes the publishing of a datum whose publisher died: takes it
    /// over (a guarded write, so one babysitter does it), moves the staged
    /// outputs that are left (moving is idempotent: a file already moved is
    /// found in the egress), and marks it done under the same claim; or
    /// fails the attempt if the files cannot be moved. Returns true if
    /// anything changed.
    async fn finish_publishing(
        &self,
        state: &AppState,
        datum: Datum,
        outputs: Vec<OutputFile>,
    ) -> bool {
        let Some(claim) = datum.claim() else {
            return false;
        };
        let (id, skew) = (datum.id, self.clock_skew_ms);
        let lease_ms = state.config().lease_ms();
        let taken = {
            let claim = claim.clone();
            state
                .db(move |conn| {
                    let now = db_now(conn)? + skew;
                    Datum::take_over_publishing(conn, id, &claim, now, lease_ms)
                })
                .await
        };
        if !matches!(taken, Ok(true)) {
            return false;
        }
        let result: anyhow::Result<()> = async {
            let info = state.job_info(datum.job_id).await?;
            let staging = attempt_staging_uri(&info.egress_uri, info.id, id, claim.attempt);
            let files: Vec<NewOutputFile> = outputs
                .iter()
                .map(|o| NewOutputFile {
                    path: o.staged_path.clone(),
                    size: o.size,
                })
                .collect();
            let (egress, claim) = (info.egress_uri.clone(), claim.clone());
            let published = {
                let (staging, files) = (staging.clone(), files.clone());
                tokio::spawn(async move { publish_outputs(&staging, &egress, &files).await })
                    .await
                    .map_err(|err| anyhow::anyhow!("publishing task failed: {err}"))?
            };
            match published {
                Ok(_) => {
                    state
                        .db(move |conn| Datum::finish_publishing(conn, id, &claim, None, Clock::DB))
                        .await?;
                    tracing::info!(datum = id, "finished publishing cut short by a crash");
                }
                Err(err) => {
                    let reason = format!("cannot publish outputs: {err:#}");
                    state
                        .db(move |conn| {
                            Datum::fail_publishing(conn, id, &claim, &reason, Clock::DB)
                        })
                        .await?;
                }
            }
            if let Ok(storage) = storage_for(&staging) {
                let _ = storage.delete_prefix(&staging).await;
            }
            Ok(())
        }
        .await;
        if let Err(err) = result {
            tracing::warn!(
                datum = id,
                error = format!("{err:#}"),
                "cannot finish publishing"
            );
        }
        state.notify(Change::JobState {
            job_id: datum.job_id,
        });
        true
    }

    /// Starts the workers of a job whose start did not finish, then marks
    /// it running. Starting is idempotent on executors with a managed pool
    /// (a Kubernetes Job that exists already counts as started), so several
    /// babysitters may do this at once. Returns true if anything changed.
    async fn take_over(&self, state: &AppState, job: Job) -> bool {
        tracing::warn!(
            job = job.name,
            "taking over a job whose start did not finish"
        );
        let started = match job.spec() {
            Ok(spec) => {
                let launch = WorkerLaunch::for_job(&job, spec, state.worker_endpoint());
                let count = u32::try_from(job.parallelism).unwrap_or(1).max(1);
                state.executor().start_workers(&launch, count).await
            }
            Err(err) => Err(err),
        };
        let result = match started {
            Ok(()) => {
                let (id, skew) = (job.id, self.clock_skew_ms);
                state
                    .db(move |conn| {
                        let now = db_now(conn)? + skew;
                        Job::mark_running(conn, id, now)
                    })
                    .await
                    .map(|_| ())
                    .map_err(anyhow::Error::from)
            }
            Err(err) => {
                let failures = self.failed_starts_of(job.id, |n| *n += 1);
                if failures >= MAX_FAILED_STARTS {
                    let message = format!("cannot start workers: {err:#}");
                    self.give_up(state, &job, message).await
                } else {
                    Err(err)
                }
            }
        };
        if let Err(err) = result {
            tracing::warn!(
                job = job.name,
                error = format!("{err:#}"),
                "cannot take over the job"
            );
        }
        true
    }

    /// The per-job rules. `observed_after` is a database time from before
    /// the executor was asked about the job. Returns true if anything
    /// changed.
    async fn watch_job(&self, state: &AppState, job: Job, observed_after: i64) -> Result<bool> {
        let mut changed = false;
        let observed = state.executor().observe(job.id).await?;
        let workers = observed.workers;
        let dead: Vec<String> = workers
            .iter()
            .filter(|w| !w.alive)
            .map(|w| w.id.clone())
            .collect();
        let failures: Vec<PodFailure> = observed
            .failures
            .iter()
            .map(|f| PodFailure {
                worker_id: f.worker_id.clone(),
                message: format!("worker {} ended: {}: {}", f.worker_id, f.reason, f.message),
            })
            .collect();
        // Owners the executor would have listed if they existed.
        let known: Option<HashSet<String>> = observed.sees_every_worker.then(|| {
            workers
                .iter()
                .map(|w| w.id.clone())
                .chain(failures.iter().map(|f| f.worker_id.clone()))
                .collect()
        });
        let max_pod_failures =
            i32::try_from(state.config().kubernetes_max_pod_failures).unwrap_or(i32::MAX);
        let id = job.id;
        let skew = self.clock_skew_ms;
        let (interrupted, released, has_ready) = state
            .db(move |conn| {
                let now = db_now(conn)? + skew;
                // Only workers holding a datum matter; most passes find none
                // of the dead among them and write nothing.
                let owners = Datum::running_owners(conn, id)?;
                let holds = |worker: &str| owners.iter().any(|(owner, _)| owner == worker);
                let mut failures: Vec<PodFailure> = failures
                    .into_iter()
                    .filter(|f| holds(&f.worker_id))
                    .collect();
                // A worker that is gone without a trace (a pod force-deleted,
                // or lost with its node before anyone saw it fail) was ended
                // by the infrastructure, like an evicted one. Only one that
                // reserved before the executor was asked: a newer one may
                // have started after the executor answered.
                if let Some(known) = &known {
                    for (owner, reserved_at) in &owners {
                        if *reserved_at <= observed_after && !known.contains(owner) {
                            failures.push(PodFailure {
                                message: format!(
                                    "worker {owner} vanished: its pod is gone without a final \
                                     status (force-deleted, or its node was lost)"
                                ),
                                worker_id: owner.clone(),
                            });
                        }
                    }
                }
                let dead = DeadOwners {
                    job_id: id,
                    worker_ids: dead.into_iter().filter(|w| holds(w)).collect(),
                };
                let interrupted =
                    Datum::record_pod_failures(conn, id, &failures, max_pod_failures, now)?;
                let released = Datum::release_dead_owners(conn, &dead, now)?;
                let has_ready = Job::has_ready_datums(conn, id)?;
                Ok((interrupted, released, has_ready))
            })
            .await?;
        // Failures this pass (or an earlier one cut short) decided may
        // have crossed the job's `max_failed_datums`.
        if job.max_failed_datums.is_some() && crate::failures::enforce_limit(state, id).await? {
            self.forget(job.id);
            return Ok(true);
        }
        let finished = finish_if_complete(state, &job, skew).await?;
        if interrupted > 0 {
            tracing::info!(
                job = job.name,
                interrupted,
                "gave back datums of workers the infrastructure ended"
            );
            changed = true;
        }
        if released > 0 {
            tracing::info!(
                job = job.name,
                released,
                "released datums of exited workers"
            );
            changed = true;
        }
        if let Some(finished) = finished {
            tracing::info!(job = finished.name, status = %finished.status, "job finished");
            wind_down(state, &job).await;
            self.forget(job.id);
            return Ok(true);
        }

        match observed.pool {
            // The platform replaces workers and keeps the restart budget.
            PoolState::Active => return Ok(changed),
            // Every worker exited successfully; with work left that means
            // they were stopped gracefully (preempted, drained): the rule
            // below starts a new pool, within the same budget.
            PoolState::Unmanaged | PoolState::Complete => {}
            PoolState::Vanished => {
                let message = "its Kubernetes Job disappeared (deleted outside falconeri?)";
                self.give_up(state, &job, message.to_owned()).await?;
                return Ok(true);
            }
            PoolState::Failed { reason, message } => {
                let message = format!("its Kubernetes Job failed: {reason}: {message}");
                self.give_up(state, &job, message).await?;
                return Ok(true);
            }
        }

        // Replace workers that exited while work remains. A worker that
        // reserved something and then died crashed (or was killed) mid-job:
        // it is replaced, after a backoff that grows while crashes keep
        // coming, and its datums went back to the queue above. Only workers
        // that died before their first reservation count toward giving up:
        // those cannot start at all (a bad image, a broken command).
        let alive = u32::try_from(workers.iter().filter(|w| w.alive).count()).unwrap_or(u32::MAX);
        let wanted = u32::try_from(job.parallelism).unwrap_or(1).max(1);
        let dead_ids: Vec<String> = workers
            .iter()
            .filter(|w| !w.alive)
            .map(|w| w.id.clone())
            .collect();
        let dead_count = dead_ids.len();
        let crashed = if dead_ids.is_empty() {
            0
        } else {
            state
                .db(move |conn| Datum::workers_that_reserved(conn, id, &dead_ids))
                .await?
                .len()
        };
        let never_started = u32::try_from(dead_count - crashed).unwrap_or(u32::MAX);
        if has_ready && alive < wanted {
            let missing = wanted - alive;
            let budget = wanted.saturating_mul(state.config().worker_restarts);
            if never_started > budget {
                let message = format!(
                    "{never_started} workers exited before reserving any datum; giving up \
                     (see the worker logs)"
                );
                self.give_up(state, &job, message).await?;
                return Ok(true);
            }
            if !self.crash_backoff_allows(job.id, crashed) {
                return Ok(changed);
            }
            let spec = job.spec()?;
            let launch = WorkerLaunch::for_job(&job, spec, state.worker_endpoint());
            tracing::info!(
                job = job.name,
                alive,
                starting = missing,
                "starting workers"
            );
            match state.executor().start_workers(&launch, missing).await {
                Ok(()) => {
                    self.failed_starts_of(job.id, |n| *n = 0);
                }
                Err(err) => {
                    let failures = self.failed_starts_of(job.id, |n| *n += 1);
                    tracing::warn!(
                        job = job.name,
                        failures,
                        error = format!("{err:#}"),
                        "cannot start workers"
                    );
                    if failures >= MAX_FAILED_STARTS {
                        let message = format!("cannot start workers: {err:#}");
                        self.give_up(state, &job, message).await?;
                    }
                }
            }
            changed = true;
        }
        Ok(changed)
    }

    /// Fails a job whose workers can't be kept running, and winds it down.
    /// A job that ended meanwhile (say, finished through another replica)
    /// keeps its outcome.
    async fn give_up(&self, state: &AppState, job: &Job, message: String) -> Result<()> {
        let id = job.id;
        let stop_message = message.clone();
        let (_, stopped) = state
            .db(move |conn| {
                let now = db_now(conn)?;
                Job::stop(conn, id, JobStatus::Error, Some(&stop_message), now)
            })
            .await?;
        if stopped {
            tracing::warn!(job = job.name, message, "giving up on the job");
            wind_down(state, job).await;
        }
        self.forget(job.id);
        Ok(())
    }

    /// Whether workers of a job whose workers have crashed `crashed` times
    /// so far may be replaced now. The first pass that sees a crash replaces
    /// at once; each further pass in a row that sees new crashes doubles the
    /// wait before the next replacement (from half a second up to
    /// [`MAX_CRASH_BACKOFF`]); a pass with no new crash resets it.
    fn crash_backoff_allows(&self, job_id: i64, crashed: usize) -> bool {
        let now = tokio::time::Instant::now();
        let mut backoff = self
            .restarts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = backoff.entry(job_id).or_insert(CrashBackoff {
            crashes_seen: 0,
            streak: 0,
            not_before: now,
        });
        if crashed > entry.crashes_seen {
            entry.crashes_seen = crashed;
            entry.streak = entry.streak.saturating_add(1);
            // The first crash is replaced at once; a crash loop waits
            // 0.5 s, 1 s, 2 s, … up to the maximum.
            let delay = match entry.streak {
                0 | 1 => Duration::ZERO,
                n => Duration::from_millis(500)
                    .saturating_mul(1 << (n - 2).min(8))
                    .min(MAX_CRASH_BACKOFF),
            };
            entry.not_before = now + delay;
            tracing::info!(
                job_id,
                crashed,
                ?delay,
                "workers crashed; replacing them after a backoff"
            );
        } else if now >= entry.not_before {
            entry.streak = 0;
        }
        now >= entry.not_before
    }

    /// Applies `update` to the job's count of failed starts; returns it.
    fn failed_starts_of(&self, job_id: i64, update: impl FnOnce(&mut u32)) -> u32 {
        let mut failed = self
            .failed_starts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = failed.entry(job_id).or_default();
        update(count);
        *count
    }

    fn forget(&self, job_id: i64) {
        self.restarts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&job_id);
        self.failed_starts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&job_id);
    }
}
