//! The worker protocol: reserve (a long-poll, one datum or a batch),
//! heartbeat, and the final reports done, error and release (one datum, or
//! a batch in one request). Every write after a reservation carries its
//! [`Claim`]; a stale one gets `409 Conflict` and changes nothing.
//!
//! The hot path touches the database as little as it can: the worker's
//! token and the job's spec come from caches, the clock is read inside the
//! statements, a reservation is one transaction of two statements (the
//! claim, which also returns the input files, and the attempt rows), and so
//! is a `done` without outputs. A `done` with outputs is two such
//! transactions with the publishing in between, outside any transaction.

use axum::{Json, extract::State};
use falconeri_common::{
    api::{
        AttemptStats, BatchHeartbeatRequest, BatchHeartbeatResponse, BatchOutcome, BatchReport,
        BatchReportRequest, BatchReportResponse, BatchReportResult, Claim, DatumSummary,
        DoneRequest, DoneResponse, ErrorDetail, ErrorRequest, HeartbeatRequest, HeartbeatResponse,
        KilledFor, NewOutputFile, ReleaseRequest, Reservation, ReserveRequest, ReserveResponse,
    },
    failure_policy::{ExitAction, ExitRule, Matched, match_exit},
    models::{Clock, Completed, Datum, Job, ModelError, Report, ReserveWant, Reserved},
    pipeline::MAX_DATUMS_PER_RESERVATION,
    status::{DatumStatus, JobStatus},
    storage::{attempt_staging_uri, publish_outputs, storage_for},
};
use tokio::time::Instant;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    auth::Principal,
    error::{ApiJson, ApiPath, AppError, AppResult},
    openapi::{
        BadRequest, Conflict, Forbidden, Internal, NotFound, PayloadTooLarge, Unauthorized,
        Unavailable,
    },
    state::{AppState, Change, JobInfo, JobWaiters},
};

/// Longest output tail the server stores per datum.
const MAX_OUTPUT_BYTES: usize = 1024 * 1024;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(reserve))
        .routes(routes!(heartbeat_batch))
        .routes(routes!(report_batch))
        .routes(routes!(heartbeat))
        .routes(routes!(done))
        .routes(routes!(error))
        .routes(routes!(release))
}

/// Reserves the next ready datum (or up to `max_datums` of them), waiting
/// (up to the capped `wait_ms`) for one to appear: a datum made ready wakes
/// one waiting worker of its job, so the answer comes within milliseconds
/// of work existing, and long-polls of other jobs are not disturbed.
#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/reserve",
    tag = "workers",
    summary = "Reserve datums (long-poll)",
    params(("id" = i64, Path, description = "The job's id")),
    request_body = ReserveRequest,
    responses(
        (status = 200, description = "A reservation, or why there is none", body = ReserveResponse),
        BadRequest, Unauthorized, Forbidden, NotFound, Conflict, PayloadTooLarge, Unavailable,
        Internal,
    ),
)]
async fn reserve(
    principal: Principal,
    State(state): State<AppState>,
    ApiPath(job_id): ApiPath<i64>,
    ApiJson(request): ApiJson<ReserveRequest>,
) -> AppResult<Json<ReserveResponse>> {
    let arrived = Instant::now();
    principal.require_job(job_id)?;
    check_worker_id(&request.worker_id)?;
    let deadline = arrived + state.capped_wait(request.wait_ms);
    let answer = reserve_for(
        &state,
        job_id,
        &request.worker_id,
        request.max_datums,
        request.resume,
        deadline,
    )
    .await?;
    crate::metrics::reserve_answered(&answer, arrived.elapsed());
    Ok(Json(answer))
}

/// What a reservation of `worker_id` in `job_id` gets, waiting until
/// `deadline` for a datum to become ready (a deadline already past asks
/// once: the `next` of a report).
async fn reserve_for(
    state: &AppState,
    job_id: i64,
    worker_id: &str,
    max_datums: Option<u32>,
    resume: bool,
    deadline: Instant,
) -> AppResult<ReserveResponse> {
    let lease_ms = state.config().lease_ms();
    let info = state.job_info(job_id).await?;
    let max = reservation_size(&info, max_datums);
    let waiters = state.waiters(job_id);
    let timeout_ms = info.datum_timeout_ms;
    loop {
        // Registered before the database is asked, so a datum made ready
        // in between still wakes this request.
        let woken = waiters.ready.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let want = ReserveWant {
            worker_id: worker_id.to_owned(),
            max,
            resume,
        };
        let (group_state, group_waiters) = (state.clone(), waiters.clone());
        let submitted = Instant::now();
        let reserved = waiters
            .reserving
            .submit(vec![want], move |wants| {
                reserve_group(
                    group_state.clone(),
                    group_waiters.clone(),
                    job_id,
                    wants,
                    lease_ms,
                    timeout_ms,
                )
            })
            .await?
            .pop()
            .unwrap_or_default();
        if !reserved.is_empty() {
            crate::metrics::dispatched(reserved.len(), submitted.elapsed());
            return reserve_answer(state, &info, reserved, max_datums.is_some());
        }
        // Nothing to hand out: the cold path looks at the job itself.
        let job = state.db(move |conn| Job::find(conn, job_id)).await?;
        match job.status() {
            status if status.is_terminal() => return Ok(ReserveResponse::Finished),
            JobStatus::Running => {
                // Outside the transaction: finishing removes the staging
                // area first, which is storage I/O.
                if let Some(ended) = crate::babysitter::finish_if_complete(state, &job, 0).await? {
                    crate::babysitter::wind_down_detached(state, ended).await;
                    return Ok(ReserveResponse::Finished);
                }
            }
            _ => {}
        }
        if Instant::now() >= deadline {
            return Ok(ReserveResponse::Wait);
        }
        tokio::select! {
            _ = &mut woken => continue,
            _ = tokio::time::sleep_until(deadline) => return Ok(ReserveResponse::Wait),
            _ = state.shutting_down() => return Ok(ReserveResponse::Wait),
        }
    }
}

/// How many datums one reservation hands out: what the worker asks for
/// (one when it asks for no batch), within the spec's and the server's
/// limits.
fn reservation_size(info: &JobInfo, max_datums: Option<u32>) -> u32 {
    match max_datums {
        Some(max) => max
            .min(info.spec.datums_per_reservation)
            .clamp(1, MAX_DATUMS_PER_RESERVATION),
        None => 1,
    }
}

/// The answer to a reservation that got `reserved` (not empty): a batch
/// when the worker asked for one, else its one datum.
fn reserve_answer(
    state: &AppState,
    info: &JobInfo,
    reserved: Vec<Reserved>,
    batch: bool,
) -> AppResult<ReserveResponse> {
    let mut reservations: Vec<Reservation> = reserved
        .into_iter()
        .map(|r| reservation(state, r, info))
        .collect::<AppResult<_>>()?;
    Ok(if batch {
        ReserveResponse::Batch { reservations }
    } else {
        match reservations.pop() {
            Some(one) => ReserveResponse::Reserved(Box::new(one)),
            None => ReserveResponse::Wait,
        }
    })
}

/// The datums each of `workers` got from one reservation statement, in
/// `workers` order. A worker named twice in one group (a retried request)
/// gets the same answer twice: the datums it holds.
fn by_worker(workers: &[&str], reserved: Vec<Reserved>) -> Vec<Vec<Reserved>> {
    let mut held: std::collections::HashMap<String, Vec<Reserved>> =
        std::collections::HashMap::new();
    for r in reserved {
        if let Some(owner) = r.datum.owner.clone() {
            held.entry(owner).or_default().push(r);
        }
    }
    workers
        .iter()
        .map(|w| held.get(*w).cloned().unwrap_or_default())
        .collect()
}

/// Serves the reservations of one job gathered while the last statement
/// ran (see [`crate::combine`]): one statement for all of them, then each
/// worker gets the datums it now holds.
async fn reserve_group(
    state: AppState,
    waiters: std::sync::Arc<JobWaiters>,
    job_id: i64,
    wants: Vec<ReserveWant>,
    lease_ms: i64,
    timeout_ms: Option<i64>,
) -> AppResult<Vec<Vec<Reserved>>> {
    let workers: Vec<String> = wants.iter().map(|w| w.worker_id.clone()).collect();
    let reserved = state
        .clone()
        .db(move |conn| {
            let reserved = Datum::reserve_many(
                conn,
                job_id,
                &wants,
                &waiters.frontier,
                Clock::DB,
                lease_ms,
                timeout_ms,
            )?;
            // The statement has committed: a follower woken now sees it.
            if !reserved.is_empty() {
                state.notify(Change::Progress { job_id });
            }
            Ok(reserved)
        })
        .await?;
    let workers: Vec<&str> = workers.iter().map(String::as_str).collect();
    Ok(by_worker(&workers, reserved))
}

fn reservation(state: &AppState, reserved: Reserved, info: &JobInfo) -> AppResult<Reservation> {
    let Reserved { datum, files } = reserved;
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
        timeout_ms: info.datum_timeout_ms.and_then(|ms| u64::try_from(ms).ok()),
        cmd: info.spec.transform.cmd.clone(),
        env: info.spec.transform.env.clone(),
        staging_uri: attempt_staging_uri(&info.egress_uri, info.id, datum.id, datum.attempt),
        input_files: files,
    })
}

/// A report's statistics within what the document allows; the error
/// names the field under `path`.
fn check_stats(stats: Option<&AttemptStats>, path: &str) -> AppResult<()> {
    match stats.map(AttemptStats::check) {
        Some(Err(problem)) => Err(AppError::BadRequest(format!("{path}.{problem}"))),
        _ => Ok(()),
    }
}

fn check_worker_id(worker_id: &str) -> AppResult<()> {
    if worker_id.is_empty() || worker_id.len() > 253 {
        return Err(AppError::BadRequest(
            "worker_id must be 1 to 253 characters".to_owned(),
        ));
    }
    Ok(())
}

/// The claim as the models should check it: a worker may write only to
/// datums of its own job.
fn scoped(principal: &Principal, claim: &Claim) -> Claim {
    Claim {
        scope: match principal {
            Principal::Admin => None,
            Principal::Worker { job_id } => Some(*job_id),
        },
        ..claim.clone()
    }
}

/// Removes the staging area of an attempt once its final report is settled
/// and the attempt is known to be the caller's: accepted, or refused because
/// the attempt the claim names has since ended (stale). A report refused
/// for any other reason (a claim naming an attempt that is not the caller's,
/// a datum of another job, a server error the worker will retry) deletes
/// nothing, so a wrong claim can never delete another attempt's outputs.
fn settle_staging(staging: String) {
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

#[utoipa::path(
    post,
    path = "/v1/datums/{id}/heartbeat",
    tag = "workers",
    summary = "Extend a datum's lease",
    params(("id" = i64, Path, description = "The datum's id")),
    request_body = HeartbeatRequest,
    responses(
        (status = 200, description = "The new lease", body = HeartbeatResponse),
        BadRequest, Unauthorized, Forbidden, NotFound, Conflict, PayloadTooLarge, Unavailable,
        Internal,
    ),
)]
async fn heartbeat(
    principal: Principal,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(request): ApiJson<HeartbeatRequest>,
) -> AppResult<Json<HeartbeatResponse>> {
    let lease_ms = state.config().lease_ms();
    let claim = scoped(&principal, &request.claim);
    let lease_expires_at = state
        .db(move |conn| Datum::heartbeat(conn, id, &claim, Clock::DB, lease_ms))
        .await?;
    Ok(Json(HeartbeatResponse { lease_expires_at }))
}

/// Extends the leases of a batch's datums; answers which are still held.
#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/heartbeat",
    tag = "workers",
    summary = "Extend the leases of a batch",
    params(("id" = i64, Path, description = "The job's id")),
    request_body = BatchHeartbeatRequest,
    responses(
        (status = 200, description = "The datums still held", body = BatchHeartbeatResponse),
        BadRequest, Unauthorized, Forbidden, NotFound, Conflict, PayloadTooLarge, Unavailable,
        Internal,
    ),
)]
async fn heartbeat_batch(
    principal: Principal,
    State(state): State<AppState>,
    ApiPath(job_id): ApiPath<i64>,
    ApiJson(request): ApiJson<BatchHeartbeatRequest>,
) -> AppResult<Json<BatchHeartbeatResponse>> {
    principal.require_job(job_id)?;
    let lease_ms = state.config().lease_ms();
    let claims: Vec<(i64, Claim)> = request
        .claims
        .iter()
        .map(|c| (c.datum_id, scoped(&Principal::Worker { job_id }, &c.claim)))
        .collect();
    let (held, lease) = state
        .db(move |conn| {
            let mut held = Vec::new();
            let mut lease = 0;
            for (id, claim) in &claims {
                match Datum::heartbeat(conn, *id, claim, Clock::DB, lease_ms) {
                    Ok(until) => {
                        held.push(*id);
                        lease = until;
                    }
                    Err(ModelError::Conflict(_) | ModelError::NotFound(_)) => {}
                    Err(err) => return Err(err),
                }
            }
            Ok((held, lease))
        })
        .await?;
    Ok(Json(BatchHeartbeatResponse {
        held,
        lease_expires_at: lease,
    }))
}

/// How a final report ended, for the staging clean-up.
// Short-lived, one per report of a batch and moved, not copied around:
// boxing the datum would only add an allocation per report.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Settled {
    /// Accepted; the datum as it is now.
    Accepted(Datum),
    /// Refused: the attempt the claim named is over (the datum moved on).
    /// Its staging area is the caller's own and may go.
    Stale(ModelError),
    /// Refused for another reason; nothing is deleted.
    Refused(ModelError),
}

/// One final report, whatever its kind, on the blocking database thread.
/// Publishing (storage I/O) never happens here: a `done` with outputs stops
/// at `publishing` and is finished by [`publish_and_finish`].
fn settle_report(
    conn: &mut falconeri_common::db::DbConn,
    info: &JobInfo,
    id: i64,
    claim: &Claim,
    outcome: &BatchOutcome,
    publish_lease_ms: i64,
) -> Result<Settled, ModelError> {
    let result = match outcome {
        BatchOutcome::Done {
            output,
            output_files,
            exit_code,
            stats,
        } => {
            let report = Report {
                output: output_tail(output),
                exit_code: *exit_code,
                signal: None,
                stats: stats.as_ref(),
            };
            Datum::complete(
                conn,
                id,
                claim,
                &report,
                output_files,
                &info.egress_uri,
                Clock::DB,
                publish_lease_ms,
            )
            .map(|completed| match completed {
                Completed::Done(datum) | Completed::Publishing(datum, _) => datum,
            })
        }
        BatchOutcome::Error {
            output,
            error,
            exit_code,
            signal,
            stats,
            killed_for,
        } => {
            let report = Report {
                output: output_tail(output),
                exit_code: *exit_code,
                signal: *signal,
                stats: stats.as_ref(),
            };
            // The spec's `on_exit` rules decide whether a try is left to
            // use; without a matching rule, the datum is retried.
            match exit_rule(&info.spec.on_exit, *exit_code, *signal, *killed_for) {
                Some(Matched { rule, action }) if action != ExitAction::Retry => {
                    let message = format!(
                        "{error} (on_exit[{rule}]: {}, not retried)",
                        action.as_str()
                    );
                    if action == ExitAction::FailJob {
                        let reason =
                            crate::failures::fail_job_reason(id, *exit_code, *signal, rule);
                        crate::failures::fail_datum_requesting_stop(
                            conn, id, claim, &report, &message, &reason,
                        )
                    } else {
                        Datum::fail_now(conn, id, claim, &report, &message, Clock::DB)
                    }
                }
                _ => Datum::fail(conn, id, claim, &report, error, Clock::DB),
            }
        }
        BatchOutcome::Release { reason } => Datum::release(conn, id, claim, reason, Clock::DB),
    };
    Ok(match result {
        Ok(datum) => Settled::Accepted(datum),
        Err(err @ ModelError::Conflict(_)) => {
            // Stale only if the claim's attempt really was this worker's
            // and is over: the attempt record says so.
            let attempt_was_callers = Datum::attempts(conn, id)?.iter().any(|a| {
                a.number == claim.attempt && a.worker_id == claim.worker_id && a.outcome.is_some()
            });
            if attempt_was_callers {
                Settled::Stale(err)
            } else {
                Settled::Refused(err)
            }
        }
        Err(err @ ModelError::NotFound(_)) => Settled::Refused(err),
        Err(err) => return Err(err),
    })
}

/// Settles a batch on PostgreSQL: every `done` without outputs in one
/// statement ([`Datum::complete_many`]), the rest (and any whose claim was
/// refused, to learn why) one by one. Answers in request order.
fn settle_many_on_postgres(
    conn: &mut falconeri_common::db::DbConn,
    reports: &[(BatchReport, Claim)],
    settle_each: impl Fn(
        &mut falconeri_common::db::DbConn,
        &[(BatchReport, Claim)],
    ) -> Result<Vec<Settled>, ModelError>,
) -> Result<Vec<Settled>, ModelError> {
    let fast: Vec<(i64, Claim, Report<'_>)> = reports
        .iter()
        .filter_map(|(report, claim)| match &report.outcome {
            BatchOutcome::Done {
                output,
                output_files,
                exit_code,
                stats,
            } if output_files.is_empty() => Some((
                report.datum_id,
                claim.clone(),
                Report {
                    output: output_tail(output),
                    exit_code: *exit_code,
                    signal: None,
                    stats: stats.as_ref(),
                },
            )),
            _ => None,
        })
        .collect();
    let mut done: std::collections::HashMap<i64, Datum> =
        Datum::complete_many(conn, &fast, Clock::DB)?
            .into_iter()
            .map(|datum| (datum.id, datum))
            .collect();
    let mut settled: Vec<Option<Settled>> = Vec::with_capacity(reports.len());
    let mut rest: Vec<(BatchReport, Claim)> = Vec::new();
    for (report, claim) in reports {
        match done.remove(&report.datum_id) {
            Some(datum) => settled.push(Some(Settled::Accepted(datum))),
            None => {
                settled.push(None);
                rest.push((report.clone(), claim.clone()));
            }
        }
    }
    let mut rest = if rest.is_empty() {
        Vec::new()
    } else {
        conn.write_transaction(|conn| settle_each(conn, &rest))?
    }
    .into_iter();
    settled
        .into_iter()
        .map(|s| s.or_else(|| rest.next()))
        .collect::<Option<Vec<Settled>>>()
        .ok_or_else(|| ModelError::Other(anyhow::anyhow!("a report went unsettled")))
}

/// Tells waiting workers about a datum that went back to the queue, and
/// followers about the change.
fn notify_ended(state: &AppState, datum: &Datum) {
    if datum.status() == falconeri_common::status::DatumStatus::Ready {
        state.notify(Change::DatumsReady {
            job_id: datum.job_id,
            n: 1,
        });
    } else {
        state.notify(Change::Progress {
            job_id: datum.job_id,
        });
    }
}

/// The second phase of a `done` with outputs: moves the staged files into
/// the egress (no transaction open), then marks the datum done under its
/// claim, or fails the attempt if the files cannot be moved.
async fn publish_and_finish(
    state: &AppState,
    info: &JobInfo,
    datum: Datum,
    claim: &Claim,
    files: &[NewOutputFile],
    exit_code: Option<i32>,
) -> AppResult<Datum> {
    let staging = attempt_staging_uri(&info.egress_uri, info.id, datum.id, claim.attempt);
    let published = publish_detached(staging, info.egress_uri.clone(), files.to_vec()).await;
    let (id, claim) = (datum.id, claim.clone());
    let notifier = state.clone();
    match published {
        Ok(_) => Ok(state
            .db(move |conn| {
                let datum = Datum::finish_publishing(conn, id, &claim, exit_code, Clock::DB)?;
                notifier.notify(Change::Progress {
                    job_id: datum.job_id,
                });
                Ok(datum)
            })
            .await?),
        Err(err) => {
            // Retrying would fail the same way (an output colliding with a
            // directory in the egress, say), so the attempt fails here,
            // with the reason, and is retried if it has tries left. The
            // worker hears 409: the datum is no longer its own.
            let reason = format!("cannot publish outputs: {err:#}");
            let message = reason.clone();
            state
                .db(move |conn| {
                    let datum = Datum::fail_publishing(conn, id, &claim, &message, Clock::DB)?;
                    notify_ended(&notifier, &datum);
                    Ok(datum)
                })
                .await?;
            Err(AppError::Conflict(format!(
                "{reason}; the attempt was recorded as failed"
            )))
        }
    }
}

/// Moves staged outputs into the egress, on owned data (the storage
/// futures borrow, and a handler's future must be `Send` for any lifetime).
async fn publish_detached(
    staging: String,
    egress: String,
    files: Vec<NewOutputFile>,
) -> anyhow::Result<Vec<String>> {
    tokio::spawn(async move { publish_outputs(&staging, &egress, &files).await })
        .await
        .map_err(|err| anyhow::anyhow!("publishing task failed: {err}"))?
}

/// A final report of one datum, through the same path as a batch, and
/// what its `next` reserved in the same database task (empty when it asked
/// for none or none could be had there; see [`ReportItem::next`]).
async fn final_report(
    state: &AppState,
    principal: &Principal,
    id: i64,
    claim: &Claim,
    outcome: BatchOutcome,
    next: Option<&NextAsk>,
) -> AppResult<(DatumSummary, Vec<Reserved>)> {
    let job_id = match principal {
        Principal::Worker { job_id } => *job_id,
        Principal::Admin => {
            state
                .db(move |conn| Ok(Datum::find(conn, id)?.job_id))
                .await?
        }
    };
    let report = BatchReport {
        datum_id: id,
        claim: claim.clone(),
        outcome,
    };
    let (mut results, reserved) =
        settle_batch(state, principal, job_id, vec![report], next).await?;
    match results.pop() {
        Some(Ok(datum)) => Ok((datum.into(), reserved)),
        Some(Err(err)) => Err(err),
        None => Err(AppError::Internal(anyhow::anyhow!("a report went missing"))),
    }
}

/// One final report as the reporting combiner gathers it.
#[derive(Debug, Clone)]
pub(crate) struct ReportItem {
    report: BatchReport,
    /// The claim as the models check it (scoped to the worker's job).
    claim: Claim,
    /// The reporting worker's next reservation, made in the same database
    /// task and transaction once the report is accepted and final (not
    /// `publishing`): one hop to the database thread, one group and one
    /// commit for both, where a reservation after the report took a second
    /// of each. Without a result there (nothing ready, the report refused
    /// or publishing) the handler reserves through the usual path, which
    /// also tells a finished job from an empty queue.
    next: Option<ReserveWant>,
}

/// A settled report, and the datums its `next` reserved.
pub(crate) struct SettledItem {
    settled: Settled,
    next: Vec<Reserved>,
}

/// The first phase of a group of reports of one job, in one transaction,
/// so a group of K reports costs one commit, not K; each report is still
/// its own guarded writes (a savepoint on SQLite), and a refusal is an
/// answer, not an error that would undo the others. Then the `next`
/// reservations of the accepted ones, in one statement of the same
/// transaction (see [`ReportItem::next`]).
async fn settle_group(
    state: AppState,
    info: std::sync::Arc<JobInfo>,
    items: Vec<ReportItem>,
    lease_ms: i64,
) -> AppResult<Vec<SettledItem>> {
    let waiters = state.waiters(info.id);
    state
        .clone()
        .db(move |conn| {
            let reports: Vec<(BatchReport, Claim)> = items
                .iter()
                .map(|item| (item.report.clone(), item.claim.clone()))
                .collect();
            let settle_all = |conn: &mut falconeri_common::db::DbConn,
                              reports: &[(BatchReport, Claim)]| {
                reports
                    .iter()
                    .map(|(report, claim)| {
                        settle_report(
                            conn,
                            &info,
                            report.datum_id,
                            claim,
                            &report.outcome,
                            lease_ms,
                        )
                    })
                    .collect::<Result<Vec<_>, ModelError>>()
            };
            let asks_of = |settled: &[Settled]| -> Vec<Option<ReserveWant>> {
                items
                    .iter()
                    .zip(settled)
                    .map(|(item, settled)| match (settled, &item.next) {
                        (Settled::Accepted(datum), Some(want))
                            if datum.status() != DatumStatus::Publishing =>
                        {
                            Some(want.clone())
                        }
                        _ => None,
                    })
                    .collect()
            };
            let postgres = conn.backend() == falconeri_common::db::Backend::Postgres;
            let settle = |conn: &mut falconeri_common::db::DbConn| {
                // A single report is its own transaction already; wrapping
                // it would only add a savepoint.
                if reports.len() == 1 {
                    settle_all(conn, &reports)
                } else if postgres {
                    settle_many_on_postgres(conn, &reports, settle_all)
                } else {
                    conn.write_transaction(|conn| settle_all(conn, &reports))
                }
            };
            let reserve = |conn: &mut falconeri_common::db::DbConn, wants: &[ReserveWant]| {
                Datum::reserve_many(
                    conn,
                    info.id,
                    wants,
                    &waiters.frontier,
                    Clock::DB,
                    lease_ms,
                    info.datum_timeout_ms,
                )
            };
            // With a `next` to make, the reports and the reservation commit
            // together: one commit per group rather than two, which on
            // PostgreSQL (a commit waits for its WAL to reach the disk)
            // brought the worker's report-and-reserve round trip down by a
            // fifth in `bench/dispatch`. A failed reservation then undoes
            // the group's reports too; their workers hear an error and send
            // them again, which is safe as nothing of theirs stood.
            let (settled, asks, reserved) = if items.iter().any(|i| i.next.is_some()) {
                conn.write_transaction(|conn| {
                    let settled = settle(conn)?;
                    let asks = asks_of(&settled);
                    let wants: Vec<ReserveWant> = asks.iter().flatten().cloned().collect();
                    let reserved = if wants.is_empty() {
                        Vec::new()
                    } else {
                        reserve(conn, &wants)?
                    };
                    Ok::<_, ModelError>((settled, asks, reserved))
                })?
            } else {
                let settled = settle(conn)?;
                let asks = vec![None; settled.len()];
                (settled, asks, Vec::new())
            };
            // Only once committed: a worker woken earlier would not see
            // the change yet, and its wake-up would be spent.
            for settled in &settled {
                if let Settled::Accepted(datum) = settled {
                    notify_ended(&state, datum);
                }
            }
            if !reserved.is_empty() {
                state.notify(Change::Progress { job_id: info.id });
            }
            let workers: Vec<&str> = asks
                .iter()
                .flatten()
                .map(|w| w.worker_id.as_str())
                .collect();
            let mut reserved = by_worker(&workers, reserved).into_iter();
            Ok(settled
                .into_iter()
                .zip(asks)
                .map(|(settled, ask)| SettledItem {
                    settled,
                    next: ask.and_then(|_| reserved.next()).unwrap_or_default(),
                })
                .collect())
        })
        .await
}

/// Settles reports of one job: every report's first phase in one database
/// task, then the publishing of those that have outputs (several at once),
/// then the staging clean-up of the attempts that are over. Each report is
/// settled on its own; one's failure never changes another.
async fn settle_batch(
    state: &AppState,
    principal: &Principal,
    job_id: i64,
    reports: Vec<BatchReport>,
    next: Option<&NextAsk>,
) -> AppResult<(Vec<AppResult<Datum>>, Vec<Reserved>)> {
    principal.require_job(job_id)?;
    let info = state.job_info(job_id).await?;
    let lease_ms = state.config().lease_ms();
    let next = next.map(|ask| ReserveWant {
        worker_id: ask.worker_id.clone(),
        max: reservation_size(&info, ask.max_datums),
        resume: false,
    });
    let last = reports.len().saturating_sub(1);
    let items: Vec<ReportItem> = reports
        .into_iter()
        .enumerate()
        .map(|(i, report)| {
            let claim = scoped(&Principal::Worker { job_id }, &report.claim);
            ReportItem {
                report,
                claim,
                // The batch's one reservation goes with its last report.
                next: if i == last { next.clone() } else { None },
            }
        })
        .collect();
    // The first phase of the reports of this job that arrive while one
    // group is being settled runs in the next group, together (see
    // `crate::combine`).
    let submitted = Instant::now();
    let settled_items = {
        let (group_state, info) = (state.clone(), info.clone());
        state
            .waiters(job_id)
            .reporting
            .submit(items.clone(), move |items| {
                settle_group(group_state.clone(), info.clone(), items, lease_ms)
            })
            .await?
    };
    let mut reserved = Vec::new();
    let mut phase_one = Vec::with_capacity(settled_items.len());
    for item in settled_items {
        reserved.extend(item.next);
        phase_one.push(item.settled);
    }
    if !reserved.is_empty() {
        crate::metrics::dispatched(reserved.len(), submitted.elapsed());
    }
    let reports: Vec<(BatchReport, Claim)> = items
        .into_iter()
        .map(|item| (item.report, item.claim))
        .collect();
    let consequence = failure_consequence(&info, &reports, &phase_one);
    let mut results = Vec::with_capacity(reports.len());
    for ((report, claim), settled) in reports.iter().zip(phase_one) {
        let staging =
            attempt_staging_uri(&info.egress_uri, info.id, report.datum_id, claim.attempt);
        let result = match settled {
            Settled::Accepted(datum)
                if datum.status() == falconeri_common::status::DatumStatus::Publishing =>
            {
                let (files, exit_code) = match &report.outcome {
                    BatchOutcome::Done {
                        output_files,
                        exit_code,
                        ..
                    } => (output_files.as_slice(), *exit_code),
                    _ => (&[][..], None),
                };
                // In a task of its own: a worker that hangs up must not cut
                // publishing short (the babysitter would finish it, but only
                // once the publishing lease ran out).
                let task = {
                    let (state, info, claim) = (state.clone(), info.clone(), claim.clone());
                    let files = files.to_vec();
                    tokio::spawn(async move {
                        publish_and_finish(&state, &info, datum, &claim, &files, exit_code).await
                    })
                };
                let finished = task.await.unwrap_or_else(|err| {
                    Err(AppError::Internal(anyhow::anyhow!(
                        "publishing task failed: {err}"
                    )))
                });
                // Published or failed for good: the staged copies are spent.
                if !matches!(
                    finished,
                    Err(AppError::Internal(_) | AppError::Unavailable(_))
                ) {
                    settle_staging(staging);
                }
                finished
            }
            Settled::Accepted(datum) => {
                settle_staging(staging);
                Ok(datum)
            }
            Settled::Stale(err) => {
                settle_staging(staging);
                Err(err.into())
            }
            Settled::Refused(err) => Err(err.into()),
        };
        crate::metrics::report_settled(&report.outcome, &result);
        results.push(result);
    }
    // A publish that failed for good is a failure too, seen only now.
    let published_failure = results
        .iter()
        .any(|r| matches!(r, Ok(datum) if datum.status() == DatumStatus::Error));
    // The reports are settled and their answers stand: a failure to stop
    // the job is logged (the babysitter checks the limit again), never
    // turned into an error the worker would retry its reports for.
    let enforced = match consequence {
        Consequence::FailJob(reason) => crate::failures::fail_job(state, job_id, reason).await,
        Consequence::CheckLimit => crate::failures::enforce_limit(state, job_id)
            .await
            .map(drop),
        Consequence::None if published_failure && info.spec.max_failed_datums.is_some() => {
            crate::failures::enforce_limit(state, job_id)
                .await
                .map(drop)
        }
        Consequence::None => Ok(()),
    };
    if let Err(err) = enforced {
        tracing::warn!(job_id, error = %err, "cannot apply the job's failure policy");
    }
    Ok((results, reserved))
}

/// The `on_exit` rule that decides a failure report, if any. None when the
/// worker killed the command itself (its `datum_timeout`): the signal is
/// then the worker's, and an exit status the command's answer to it, not
/// how the command failed, so the failure is retried like any other. An
/// older worker sends no `killed_for`, and its report is matched as before.
fn exit_rule(
    rules: &[ExitRule],
    exit_code: Option<i32>,
    signal: Option<i32>,
    killed_for: Option<KilledFor>,
) -> Option<Matched> {
    match killed_for {
        Some(KilledFor::DatumTimeout) => None,
        None => match_exit(rules, exit_code, signal),
    }
}

/// What a group of settled reports means for their job.
enum Consequence {
    None,
    /// A `fail_job` rule matched a failure: stop the job with this reason.
    FailJob(String),
    /// A datum failed for good and the job has a `max_failed_datums`.
    CheckLimit,
}

/// Looks at the reports that failed a datum for good: the first whose
/// exit status a `fail_job` rule matches ends the job; otherwise any such
/// failure makes the job's limit worth checking (one indexed count).
fn failure_consequence(
    info: &JobInfo,
    reports: &[(BatchReport, Claim)],
    settled: &[Settled],
) -> Consequence {
    let mut failed = false;
    for ((report, _), settled) in reports.iter().zip(settled) {
        let Settled::Accepted(datum) = settled else {
            continue;
        };
        if datum.status() != DatumStatus::Error {
            continue;
        }
        failed = true;
        if let BatchOutcome::Error {
            exit_code,
            signal,
            killed_for,
            ..
        } = &report.outcome
            && let Some(Matched {
                rule,
                action: ExitAction::FailJob,
            }) = exit_rule(&info.spec.on_exit, *exit_code, *signal, *killed_for)
        {
            return Consequence::FailJob(crate::failures::fail_job_reason(
                datum.id, *exit_code, *signal, rule,
            ));
        }
    }
    if failed && info.spec.max_failed_datums.is_some() {
        Consequence::CheckLimit
    } else {
        Consequence::None
    }
}

#[utoipa::path(
    post,
    path = "/v1/datums/{id}/done",
    tag = "workers",
    summary = "Report a datum done",
    params(("id" = i64, Path, description = "The datum's id")),
    request_body = DoneRequest,
    responses(
        (status = 200, description = "The datum, done (and the next reservation, if asked)", body = DoneResponse),
        BadRequest, Unauthorized, Forbidden, NotFound, Conflict, PayloadTooLarge, Unavailable,
        Internal,
    ),
)]
async fn done(
    principal: Principal,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(request): ApiJson<DoneRequest>,
) -> AppResult<Json<DoneResponse>> {
    check_stats(request.stats.as_ref(), "stats")?;
    let outcome = BatchOutcome::Done {
        output: request.output,
        output_files: request.output_files,
        exit_code: request.exit_code,
        stats: request.stats,
    };
    let arrived = Instant::now();
    let ask = request.next.map(|next| NextAsk {
        worker_id: request.claim.worker_id.clone(),
        max_datums: next.max_datums,
    });
    let (datum, reserved) = final_report(
        &state,
        &principal,
        id,
        &request.claim,
        outcome,
        ask.as_ref(),
    )
    .await?;
    // Only once the report is accepted: a refused one answered above.
    let next = match ask {
        Some(ask) => Some(next_answer(&state, datum.job_id, &ask, reserved, arrived).await?),
        None => None,
    };
    Ok(Json(DoneResponse { datum, next }))
}

/// Who asked for the `next` of a report, and for how many datums.
#[derive(Debug)]
struct NextAsk {
    worker_id: String,
    max_datums: Option<u32>,
}

/// The `next` of an accepted report: the datums reserved with it, or,
/// when none were, a reservation through the usual path (which tells a
/// finished job from an empty queue).
async fn next_answer(
    state: &AppState,
    job_id: i64,
    ask: &NextAsk,
    reserved: Vec<Reserved>,
    arrived: Instant,
) -> AppResult<ReserveResponse> {
    if reserved.is_empty() {
        return reserve_next(state, job_id, &ask.worker_id, ask.max_datums).await;
    }
    let info = state.job_info(job_id).await?;
    let answer = reserve_answer(state, &info, reserved, ask.max_datums.is_some())?;
    crate::metrics::reserve_answered(&answer, arrived.elapsed());
    Ok(answer)
}

/// The `next` of a report: a reservation that does not wait, and need not
/// look for held datums (the worker was answered until now; a worker that
/// loses this answer asks `reserve` with `resume` next).
async fn reserve_next(
    state: &AppState,
    job_id: i64,
    worker_id: &str,
    max_datums: Option<u32>,
) -> AppResult<ReserveResponse> {
    let arrived = Instant::now();
    let answer = reserve_for(state, job_id, worker_id, max_datums, false, arrived).await?;
    crate::metrics::reserve_answered(&answer, arrived.elapsed());
    Ok(answer)
}

#[utoipa::path(
    post,
    path = "/v1/datums/{id}/error",
    tag = "workers",
    summary = "Report a datum failed",
    params(("id" = i64, Path, description = "The datum's id")),
    request_body = ErrorRequest,
    responses(
        (status = 200, description = "The datum after the failure", body = DatumSummary),
        BadRequest, Unauthorized, Forbidden, NotFound, Conflict, PayloadTooLarge, Unavailable,
        Internal,
    ),
)]
async fn error(
    principal: Principal,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(request): ApiJson<ErrorRequest>,
) -> AppResult<Json<DatumSummary>> {
    check_stats(request.stats.as_ref(), "stats")?;
    let outcome = BatchOutcome::Error {
        output: request.output,
        error: request.error,
        exit_code: request.exit_code,
        signal: request.signal,
        stats: request.stats,
        killed_for: request.killed_for,
    };
    let (datum, _) = final_report(&state, &principal, id, &request.claim, outcome, None).await?;
    Ok(Json(datum))
}

/// The worker is being stopped (not failing): the datum goes back to the
/// queue without using up a try.
#[utoipa::path(
    post,
    path = "/v1/datums/{id}/release",
    tag = "workers",
    summary = "Give a datum back",
    params(("id" = i64, Path, description = "The datum's id")),
    request_body = ReleaseRequest,
    responses(
        (status = 200, description = "The datum, ready again", body = DatumSummary),
        BadRequest, Unauthorized, Forbidden, NotFound, Conflict, PayloadTooLarge, Unavailable,
        Internal,
    ),
)]
async fn release(
    principal: Principal,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(request): ApiJson<ReleaseRequest>,
) -> AppResult<Json<DatumSummary>> {
    let outcome = BatchOutcome::Release {
        reason: request.reason,
    };
    let (datum, _) = final_report(&state, &principal, id, &request.claim, outcome, None).await?;
    Ok(Json(datum))
}

/// The final reports of several datums of one job, in one request.
#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/report",
    tag = "workers",
    summary = "Report a batch of datums",
    params(("id" = i64, Path, description = "The job's id")),
    request_body = BatchReportRequest,
    responses(
        (status = 200, description = "How each report was settled", body = BatchReportResponse),
        BadRequest, Unauthorized, Forbidden, NotFound, Conflict, PayloadTooLarge, Unavailable,
        Internal,
    ),
)]
async fn report_batch(
    principal: Principal,
    State(state): State<AppState>,
    ApiPath(job_id): ApiPath<i64>,
    ApiJson(request): ApiJson<BatchReportRequest>,
) -> AppResult<Json<BatchReportResponse>> {
    let limit = usize::try_from(MAX_DATUMS_PER_RESERVATION).unwrap_or(usize::MAX);
    if request.reports.len() > limit {
        return Err(AppError::BadRequest(format!(
            "a batch report may hold at most {limit} reports"
        )));
    }
    for (i, report) in request.reports.iter().enumerate() {
        let stats = match &report.outcome {
            BatchOutcome::Done { stats, .. } | BatchOutcome::Error { stats, .. } => stats.as_ref(),
            BatchOutcome::Release { .. } => None,
        };
        check_stats(stats, &format!("reports[{i}].stats"))?;
    }
    // The worker the next datums go to: the one the claims name. Reports
    // naming no worker or several (never a worker's own) get no `next`: the
    // answer leaves it out, and the caller reserves as usual.
    let arrived = Instant::now();
    let ask = request.next.as_ref().and_then(|next| {
        let mut workers = request.reports.iter().map(|r| &r.claim.worker_id);
        let first = workers.next()?;
        let one = workers.all(|w| w == first) && check_worker_id(first).is_ok();
        one.then(|| NextAsk {
            worker_id: first.clone(),
            max_datums: next.max_datums,
        })
    });
    let ids: Vec<i64> = request.reports.iter().map(|r| r.datum_id).collect();
    let (results, reserved) =
        settle_batch(&state, &principal, job_id, request.reports, ask.as_ref()).await?;
    let results = ids
        .into_iter()
        .zip(results)
        .map(|(datum_id, result)| match result {
            Ok(datum) => BatchReportResult {
                datum_id,
                datum: Some(datum.into()),
                error: None,
            },
            Err(err) => BatchReportResult {
                datum_id,
                datum: None,
                error: Some(err.detail()),
            },
        })
        .collect();
    let next = match ask {
        Some(ask) => Some(next_answer(&state, job_id, &ask, reserved, arrived).await?),
        None => None,
    };
    Ok(Json(BatchReportResponse { results, next }))
}

/// The error detail of a refused report, as its own route would answer.
impl AppError {
    fn detail(self) -> ErrorDetail {
        crate::error::detail_of(self)
    }
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

    /// The worker's own kill (its `datum_timeout`) is not the command's way
    /// of failing: no rule matches it, neither by the signal the worker sent
    /// nor by the status a command that caught it exited with, while the
    /// same ending without `killed_for` (another sender, or an older worker)
    /// still matches.
    #[test]
    fn a_timeout_kill_matches_no_rule() {
        let rules: Vec<ExitRule> = serde_json::from_value(serde_json::json!([
            { "exit_codes": [143], "action": "fail_datum" },
            { "signals": ["SIGTERM", "SIGKILL"], "action": "fail_job" },
        ]))
        .unwrap();
        let action = |exit_code, signal, killed_for| {
            exit_rule(&rules, exit_code, signal, killed_for).map(|m| m.action)
        };
        let timeout = Some(KilledFor::DatumTimeout);
        for signal in [15, 9] {
            assert_eq!(action(None, Some(signal), timeout), None, "{signal}");
            assert_eq!(
                action(None, Some(signal), None),
                Some(ExitAction::FailJob),
                "{signal}"
            );
        }
        assert_eq!(action(Some(143), None, timeout), None);
        assert_eq!(action(Some(143), None, None), Some(ExitAction::FailDatum));
    }
}
