//! Datums: the unit of work a worker reserves, runs and reports on.
//!
//! The queue's invariant lives here: a datum is reserved by exactly one
//! worker per attempt, and every later write names that attempt and owner
//! (a [`Claim`]); a write whose claim is stale changes nothing and fails with
//! [`ModelError::Conflict`].

use diesel::{
    BoolExpressionMethods, ExpressionMethods, OptionalExtension, QueryDsl, QueryableByName,
    RunQueryDsl, SelectableHelper,
    prelude::{Insertable, Queryable, Selectable},
};

use super::{INSERT_CHUNK, ModelError, ModelResult};
use crate::{
    Millis,
    api::{Claim, DatumSummary, InputFileResponse, NewOutputFile, OutputFileResponse},
    db::{DbConn, schema::*, with_conn, write_tx},
    status::DatumStatus,
};

/// A datum row.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, QueryableByName)]
#[diesel(table_name = datums)]
pub struct Datum {
    pub id: i64,
    pub job_id: i64,
    /// Position within the job, in planning order.
    pub seq: i64,
    pub status: String,
    /// How many times the datum has been reserved; the current claim's attempt.
    pub attempt: i32,
    /// Attempts interrupted by the infrastructure; they don't use up tries.
    pub interrupted: i32,
    pub max_tries: i32,
    pub owner: Option<String>,
    pub lease_expires_at: Option<Millis>,
    /// When the current attempt times out (`datum_timeout`).
    pub deadline_at: Option<Millis>,
    pub started_at: Option<Millis>,
    pub finished_at: Option<Millis>,
    pub output: Option<String>,
    pub error_message: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
    /// Attempts whose worker the infrastructure ended (evicted, preempted,
    /// OOM-killed); also counted in `interrupted`.
    pub pod_failures: i32,
}

/// An input file row.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = input_files)]
pub struct InputFile {
    pub id: i64,
    pub job_id: i64,
    pub datum_id: i64,
    pub uri: String,
    pub local_path: String,
}

/// An output file row: published only by a guarded write.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = output_files)]
pub struct OutputFile {
    pub id: i64,
    pub job_id: i64,
    pub datum_id: i64,
    pub uri: String,
    pub size: i64,
    pub created_at: Millis,
}

#[derive(Insertable)]
#[diesel(table_name = output_files)]
struct NewOutputFileRow<'a> {
    job_id: i64,
    datum_id: i64,
    uri: &'a str,
    size: i64,
    created_at: Millis,
}

/// A worker the infrastructure ended, for [`Datum::record_pod_failures`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFailure {
    pub worker_id: String,
    /// Why, for the datum's error message (e.g. `OOMKilled: …`).
    pub message: String,
}

/// Workers an executor knows to be gone, for [`Datum::release_dead_owners`].
#[derive(Debug, Clone, Default)]
pub struct DeadOwners {
    pub job_id: i64,
    pub worker_ids: Vec<String>,
}

const READY: &str = "ready";
const RUNNING: &str = "running";

/// Fails the current attempt of every running datum matching `$filter`, in
/// one write transaction: requeued while tries remain, else `error`. Each
/// statement re-checks its rows, so concurrent babysitters are safe.
macro_rules! fail_attempts {
    ($conn:expr, $filter:expr, $message:expr, $now:expr) => {
        write_tx!($conn, c => {
            let requeued = diesel::update(datums::table)
                .filter(datums::status.eq(RUNNING))
                .filter($filter)
                .filter(tries_left())
                .set(requeue_set($message, $now))
                .execute(c)?;
            let failed = diesel::update(datums::table)
                .filter(datums::status.eq(RUNNING))
                .filter($filter)
                .set(fail_set($message, $now))
                .execute(c)?;
            Ok::<_, ModelError>(requeued + failed)
        })
    };
}

/// The reservation statement on PostgreSQL. `SKIP LOCKED` lets concurrent
/// reservations pass each other; the outer `status = 'ready'` re-checks the
/// row after the lock, so a datum is never handed out twice.
#[cfg(feature = "postgres")]
const PG_RESERVE: &str = "\
UPDATE datums SET status = 'running', attempt = attempt + 1, owner = $1, \
    lease_expires_at = $2, deadline_at = $3, started_at = $4, updated_at = $4, finished_at = NULL \
WHERE id = (SELECT id FROM datums WHERE job_id = $5 AND status = 'ready' \
            ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) \
  AND status = 'ready' \
RETURNING *";

impl Datum {
    /// The datum's status (an unknown value reads as `error`).
    pub fn status(&self) -> DatumStatus {
        self.status.parse().unwrap_or(DatumStatus::Error)
    }

    /// The claim of the current attempt.
    pub fn claim(&self) -> Option<Claim> {
        self.owner.as_ref().map(|owner| Claim {
            worker_id: owner.clone(),
            attempt: self.attempt,
        })
    }

    /// One datum by id.
    pub fn find(conn: &mut DbConn, id: i64) -> ModelResult<Datum> {
        with_conn!(conn, c => datums::table
            .find(id)
            .select(Datum::as_select())
            .first(c)
            .optional())?
        .ok_or_else(|| ModelError::NotFound(format!("datum {id}")))
    }

    /// Datums of a job in id order, optionally of one status.
    pub fn list(
        conn: &mut DbConn,
        job_id: i64,
        status: Option<DatumStatus>,
        limit: i64,
    ) -> ModelResult<Vec<Datum>> {
        Ok(with_conn!(conn, c => {
            let mut query = datums::table
                .filter(datums::job_id.eq(job_id))
                .order(datums::id)
                .limit(limit)
                .select(Datum::as_select())
                .into_boxed();
            if let Some(status) = status {
                query = query.filter(datums::status.eq(status.as_str()));
            }
            query.load(c)
        })?)
    }

    /// Reserves the next ready datum of a job for `worker_id`: one atomic
    /// statement that bumps the attempt, records the owner, and sets the lease
    /// (and `datum_timeout` deadline) from `now`, the database clock.
    #[tracing::instrument(level = "debug", skip(conn))]
    pub fn reserve_next(
        conn: &mut DbConn,
        job_id: i64,
        worker_id: &str,
        now: Millis,
        lease_ms: i64,
        timeout_ms: Option<i64>,
    ) -> ModelResult<Option<Datum>> {
        let lease = now.saturating_add(lease_ms);
        let deadline = timeout_ms.map(|t| now.saturating_add(t));
        // A worker asks for work only when it holds none. If it still holds
        // a datum, the answer to its last reservation was lost (a reset
        // connection, a worker restarted under the same name): hand the
        // same claim back rather than strand that datum until its lease
        // runs out and costs it a try.
        let held: Vec<Datum> = with_conn!(conn, c => diesel::update(datums::table)
            .filter(datums::job_id.eq(job_id))
            .filter(datums::owner.eq(worker_id))
            .filter(datums::status.eq(RUNNING))
            .set((
                datums::lease_expires_at.eq(Some(lease)),
                datums::updated_at.eq(now),
            ))
            .returning(Datum::as_returning())
            .get_results(c))?;
        if let Some(datum) = held.into_iter().min_by_key(|d| d.id) {
            return Ok(Some(datum));
        }
        let datum = match conn {
            DbConn::Sqlite(c) => {
                let c: &mut diesel::SqliteConnection = &mut *c;
                // SQLite has one writer at a time: inside BEGIN IMMEDIATE the
                // pick and the update cannot interleave with another reserve.
                c.immediate_transaction(|c| {
                    let next: Option<i64> = datums::table
                        .filter(datums::job_id.eq(job_id))
                        .filter(datums::status.eq(READY))
                        .order(datums::id)
                        .select(datums::id)
                        .first(c)
                        .optional()?;
                    let Some(next) = next else { return Ok(None) };
                    diesel::update(datums::table)
                        .filter(datums::id.eq(next))
                        .filter(datums::status.eq(READY))
                        .set((
                            datums::status.eq(RUNNING),
                            datums::attempt.eq(datums::attempt + 1),
                            datums::owner.eq(Some(worker_id)),
                            datums::lease_expires_at.eq(Some(lease)),
                            datums::deadline_at.eq(deadline),
                            datums::started_at.eq(Some(now)),
                            datums::updated_at.eq(now),
                            datums::finished_at.eq(None::<i64>),
                        ))
                        .returning(Datum::as_returning())
                        .get_result(c)
                        .optional()
                })?
            }
            #[cfg(feature = "postgres")]
            DbConn::Postgres(c) => {
                use diesel::sql_types::{BigInt, Nullable, Text};
                let c: &mut diesel::PgConnection = &mut *c;
                diesel::sql_query(PG_RESERVE)
                    .bind::<Text, _>(worker_id)
                    .bind::<BigInt, _>(lease)
                    .bind::<Nullable<BigInt>, _>(deadline)
                    .bind::<BigInt, _>(now)
                    .bind::<BigInt, _>(job_id)
                    .get_result::<Datum>(c)
                    .optional()?
            }
        };
        Ok(datum)
    }

    /// Extends the lease of a datum the claimant still holds.
    pub fn heartbeat(
        conn: &mut DbConn,
        id: i64,
        claim: &Claim,
        now: Millis,
        lease_ms: i64,
    ) -> ModelResult<Millis> {
        let lease = now.saturating_add(lease_ms);
        let n = with_conn!(conn, c => diesel::update(datums::table)
            .filter(held(id, claim))
            .set((datums::lease_expires_at.eq(Some(lease)), datums::updated_at.eq(now)))
            .execute(c))?;
        if n == 0 {
            return Err(Datum::why_stale(conn, id, claim));
        }
        Ok(lease)
    }

    /// Marks a held datum done and publishes its output files, atomically:
    /// with a stale claim nothing is written and `publish` is not called.
    ///
    /// `publish` moves the staged files to the egress and returns their
    /// final URIs (in `files` order). It runs while the datum's row is
    /// locked (the whole database on SQLite) and the claim is known to be
    /// current; if it fails, nothing is recorded and the datum stays running.
    #[tracing::instrument(level = "debug", skip(conn, output, files, publish))]
    pub fn mark_done<P>(
        conn: &mut DbConn,
        id: i64,
        claim: &Claim,
        output: &str,
        files: &[NewOutputFile],
        now: Millis,
        publish: P,
    ) -> ModelResult<Datum>
    where
        P: FnOnce(&Datum) -> anyhow::Result<Vec<String>>,
    {
        let result = write_tx!(conn, c => {
            let updated: Option<Datum> = diesel::update(datums::table)
                .filter(held(id, claim))
                .set((
                    datums::status.eq(DatumStatus::Done.as_str()),
                    datums::output.eq(Some(output)),
                    datums::error_message.eq(None::<String>),
                    datums::finished_at.eq(Some(now)),
                    datums::updated_at.eq(now),
                    datums::lease_expires_at.eq(None::<i64>),
                    datums::deadline_at.eq(None::<i64>),
                ))
                .returning(Datum::as_returning())
                .get_result(c)
                .optional()?;
            if let Some(datum) = &updated {
                let uris = publish(datum).map_err(ModelError::Publish)?;
                for chunk in output_rows(datum, files, &uris, now).chunks(INSERT_CHUNK) {
                    diesel::insert_into(output_files::table).values(chunk).execute(c)?;
                }
            }
            Ok::<_, ModelError>(updated)
        })?;
        result.ok_or_else(|| Datum::why_stale(conn, id, claim))
    }

    /// Records a failed attempt on a held datum: back to `ready` while tries
    /// remain, else `error`.
    #[tracing::instrument(level = "debug", skip(conn, output))]
    pub fn mark_error(
        conn: &mut DbConn,
        id: i64,
        claim: &Claim,
        output: &str,
        error: &str,
        now: Millis,
    ) -> ModelResult<Datum> {
        let result = write_tx!(conn, c => {
            // Two guarded statements, of which at most one can match: the
            // first requeues (tries left), the second fails for good.
            let requeued = diesel::update(datums::table)
                .filter(held(id, claim))
                .filter(tries_left())
                .set((
                    datums::status.eq(READY),
                    datums::owner.eq(None::<String>),
                    datums::output.eq(Some(output)),
                    datums::error_message.eq(Some(error)),
                    datums::updated_at.eq(now),
                    datums::lease_expires_at.eq(None::<i64>),
                    datums::deadline_at.eq(None::<i64>),
                ))
                .returning(Datum::as_returning())
                .get_result(c)
                .optional()?;
            if requeued.is_some() {
                return Ok::<_, ModelError>(requeued);
            }
            Ok(diesel::update(datums::table)
                .filter(held(id, claim))
                .set((
                    datums::status.eq(DatumStatus::Error.as_str()),
                    datums::output.eq(Some(output)),
                    datums::error_message.eq(Some(error)),
                    datums::finished_at.eq(Some(now)),
                    datums::updated_at.eq(now),
                    datums::lease_expires_at.eq(None::<i64>),
                    datums::deadline_at.eq(None::<i64>),
                ))
                .returning(Datum::as_returning())
                .get_result(c)
                .optional()?)
        })?;
        result.ok_or_else(|| Datum::why_stale(conn, id, claim))
    }

    /// Publishes and records output files of a held datum before it is done
    /// (for workers that publish as they go). Guarded like `mark_done`.
    pub fn record_output_files<P>(
        conn: &mut DbConn,
        id: i64,
        claim: &Claim,
        files: &[NewOutputFile],
        now: Millis,
        publish: P,
    ) -> ModelResult<()>
    where
        P: FnOnce(&Datum) -> anyhow::Result<Vec<String>>,
    {
        let ok = write_tx!(conn, c => {
            // Touching the row locks it and checks the claim in one step.
            let held: Option<Datum> = diesel::update(datums::table)
                .filter(held(id, claim))
                .set(datums::updated_at.eq(now))
                .returning(Datum::as_returning())
                .get_result(c)
                .optional()?;
            if let Some(datum) = &held {
                let uris = publish(datum).map_err(ModelError::Publish)?;
                for chunk in output_rows(datum, files, &uris, now).chunks(INSERT_CHUNK) {
                    diesel::insert_into(output_files::table).values(chunk).execute(c)?;
                }
            }
            Ok::<_, ModelError>(held.is_some())
        })?;
        if ok {
            Ok(())
        } else {
            Err(Datum::why_stale(conn, id, claim))
        }
    }

    /// Gives a held datum back without using up a try: its worker was
    /// stopped by the executor (a cancel, a server shutdown, a node going
    /// away), not failed by its command.
    #[tracing::instrument(level = "debug", skip(conn))]
    pub fn release(
        conn: &mut DbConn,
        id: i64,
        claim: &Claim,
        reason: &str,
        now: Millis,
    ) -> ModelResult<Datum> {
        let released: Option<Datum> = with_conn!(conn, c => diesel::update(datums::table)
            .filter(held(id, claim))
            .set((
                datums::status.eq(READY),
                datums::owner.eq(None::<String>),
                datums::interrupted.eq(datums::interrupted + 1),
                datums::error_message.eq(Some(reason)),
                datums::updated_at.eq(now),
                datums::lease_expires_at.eq(None::<i64>),
                datums::deadline_at.eq(None::<i64>),
            ))
            .returning(Datum::as_returning())
            .get_result(c)
            .optional())?;
        released.ok_or_else(|| Datum::why_stale(conn, id, claim))
    }

    /// Explains a failed guarded write: the datum does not exist (404) or the
    /// claim is stale (409).
    fn why_stale(conn: &mut DbConn, id: i64, claim: &Claim) -> ModelError {
        match Datum::find(conn, id) {
            Err(err) => err,
            Ok(datum) => ModelError::Conflict(format!(
                "datum {id} is no longer held by {} (attempt {}): it is {} at attempt {}{}",
                claim.worker_id,
                claim.attempt,
                datum.status,
                datum.attempt,
                datum
                    .owner
                    .map(|owner| format!(" owned by {owner}"))
                    .unwrap_or_default()
            )),
        }
    }

    /// Expires the leases of running datums whose workers stopped
    /// heartbeating. Returns how many datums were affected.
    pub fn expire_leases(conn: &mut DbConn, now: Millis) -> ModelResult<usize> {
        let message = "lease expired: the worker stopped heartbeating";
        fail_attempts!(conn, datums::lease_expires_at.lt(now), message, now)
    }

    /// Fails the current attempt of running datums past their
    /// `datum_timeout` deadline.
    pub fn expire_deadlines(conn: &mut DbConn, now: Millis) -> ModelResult<usize> {
        let message = "datum timed out (datum_timeout)";
        fail_attempts!(conn, datums::deadline_at.lt(now), message, now)
    }

    /// Releases datums held by workers the executor knows are gone, without
    /// waiting for their leases to run out. The attempt counts as a try: a
    /// command that kills its worker must not be retried forever.
    pub fn release_dead_owners(
        conn: &mut DbConn,
        dead: &DeadOwners,
        now: Millis,
    ) -> ModelResult<usize> {
        if dead.worker_ids.is_empty() {
            return Ok(0);
        }
        let message = "the worker holding this datum exited";
        fail_attempts!(
            conn,
            datums::job_id
                .eq(dead.job_id)
                .and(datums::owner.eq_any(&dead.worker_ids)),
            message,
            now
        )
    }

    /// Gives back the datums held by workers the infrastructure ended
    /// (evicted, preempted, OOM-killed, node lost): such an attempt is
    /// interrupted, not a try, and the failure is recorded on the datum
    /// (`pod_failures`, and why in `error_message`). So that a datum which
    /// always exhausts its memory cannot loop forever, its
    /// `max_pod_failures`-th such failure fails it for good. Guarded like
    /// every babysitter rule: only a datum still running under that owner
    /// changes. Returns how many datums were affected.
    pub fn record_pod_failures(
        conn: &mut DbConn,
        job_id: i64,
        failures: &[PodFailure],
        max_pod_failures: i32,
        now: Millis,
    ) -> ModelResult<usize> {
        let mut changed = 0;
        for failure in failures {
            let requeue_message = format!(
                "{} (the datum is retried; this does not use up a try, but {max_pod_failures} \
                 such failures fail it)",
                failure.message
            );
            let fail_message = format!(
                "{} (the datum's worker pods failed {max_pod_failures} times; giving up)",
                failure.message
            );
            let owner: &str = &failure.worker_id;
            let owned = || {
                datums::job_id
                    .eq(job_id)
                    .and(datums::owner.eq(owner))
                    .and(datums::status.eq(RUNNING))
            };
            changed += write_tx!(conn, c => {
                let requeued = diesel::update(datums::table)
                    .filter(owned())
                    .filter((datums::pod_failures + 1).lt(max_pod_failures))
                    .set((
                        datums::status.eq(READY),
                        datums::owner.eq(None::<String>),
                        datums::interrupted.eq(datums::interrupted + 1),
                        datums::pod_failures.eq(datums::pod_failures + 1),
                        datums::error_message.eq(Some(&requeue_message)),
                        datums::updated_at.eq(now),
                        datums::lease_expires_at.eq(None::<i64>),
                        datums::deadline_at.eq(None::<i64>),
                    ))
                    .execute(c)?;
                let failed = diesel::update(datums::table)
                    .filter(owned())
                    .set((
                        datums::status.eq(DatumStatus::Error.as_str()),
                        datums::pod_failures.eq(datums::pod_failures + 1),
                        datums::error_message.eq(Some(&fail_message)),
                        datums::finished_at.eq(Some(now)),
                        datums::updated_at.eq(now),
                        datums::lease_expires_at.eq(None::<i64>),
                        datums::deadline_at.eq(None::<i64>),
                    ))
                    .execute(c)?;
                Ok::<_, ModelError>(requeued + failed)
            })?;
        }
        Ok(changed)
    }

    /// The owners of the job's running datums, each with when it reserved
    /// (the earliest, should one hold several): the babysitter acts only on
    /// workers that hold something, so a list of long-gone workers costs no
    /// writes.
    pub fn running_owners(conn: &mut DbConn, job_id: i64) -> ModelResult<Vec<(String, Millis)>> {
        let rows: Vec<(Option<String>, Option<Millis>)> = with_conn!(conn, c => datums::table
            .filter(datums::job_id.eq(job_id))
            .filter(datums::status.eq(RUNNING))
            .select((datums::owner, datums::started_at))
            .load(c))?;
        let mut owners: std::collections::BTreeMap<String, Millis> = Default::default();
        for (owner, started_at) in rows {
            if let Some(owner) = owner {
                let started_at = started_at.unwrap_or(Millis::MAX);
                owners
                    .entry(owner)
                    .and_modify(|t| *t = (*t).min(started_at))
                    .or_insert(started_at);
            }
        }
        Ok(owners.into_iter().collect())
    }

    /// The datum's input files.
    pub fn input_files(conn: &mut DbConn, id: i64) -> ModelResult<Vec<InputFile>> {
        Ok(with_conn!(conn, c => input_files::table
            .filter(input_files::datum_id.eq(id))
            .order(input_files::id)
            .select(InputFile::as_select())
            .load(c))?)
    }

    /// The datum's published output files.
    pub fn output_files(conn: &mut DbConn, id: i64) -> ModelResult<Vec<OutputFile>> {
        Ok(with_conn!(conn, c => output_files::table
            .filter(output_files::datum_id.eq(id))
            .order(output_files::id)
            .select(OutputFile::as_select())
            .load(c))?)
    }
}

/// The guard of every worker write: the datum is running, at the claim's
/// attempt, owned by the claim's worker.
#[diesel::dsl::auto_type(no_type_alias)]
fn held<'a>(id: i64, claim: &'a Claim) -> _ {
    let worker_id: &'a str = &claim.worker_id;
    let running: &'static str = RUNNING;
    let attempt: i32 = claim.attempt;
    datums::id
        .eq(id)
        .and(datums::status.eq(running))
        .and(datums::attempt.eq(attempt))
        .and(datums::owner.eq(worker_id))
}

/// True while the datum has tries left: interrupted attempts don't count.
fn tries_left()
-> diesel::dsl::Lt<datums::attempt, diesel::dsl::Add<datums::max_tries, datums::interrupted>> {
    datums::attempt.lt(datums::max_tries + datums::interrupted)
}

type RequeueSet<'a> = (
    diesel::dsl::Eq<datums::status, &'static str>,
    diesel::dsl::Eq<datums::owner, Option<String>>,
    diesel::dsl::Eq<datums::error_message, Option<&'a str>>,
    diesel::dsl::Eq<datums::updated_at, i64>,
    diesel::dsl::Eq<datums::lease_expires_at, Option<i64>>,
    diesel::dsl::Eq<datums::deadline_at, Option<i64>>,
);

fn requeue_set(message: &str, now: Millis) -> RequeueSet<'_> {
    (
        datums::status.eq(READY),
        datums::owner.eq(None::<String>),
        datums::error_message.eq(Some(message)),
        datums::updated_at.eq(now),
        datums::lease_expires_at.eq(None::<i64>),
        datums::deadline_at.eq(None::<i64>),
    )
}

type FailSet<'a> = (
    diesel::dsl::Eq<datums::status, &'static str>,
    diesel::dsl::Eq<datums::error_message, Option<&'a str>>,
    diesel::dsl::Eq<datums::finished_at, Option<i64>>,
    diesel::dsl::Eq<datums::updated_at, i64>,
    diesel::dsl::Eq<datums::lease_expires_at, Option<i64>>,
    diesel::dsl::Eq<datums::deadline_at, Option<i64>>,
);

fn fail_set(message: &str, now: Millis) -> FailSet<'_> {
    (
        datums::status.eq("error"),
        datums::error_message.eq(Some(message)),
        datums::finished_at.eq(Some(now)),
        datums::updated_at.eq(now),
        datums::lease_expires_at.eq(None::<i64>),
        datums::deadline_at.eq(None::<i64>),
    )
}

fn output_rows<'a>(
    datum: &Datum,
    files: &[NewOutputFile],
    uris: &'a [String],
    now: Millis,
) -> Vec<NewOutputFileRow<'a>> {
    files
        .iter()
        .zip(uris)
        .map(|(file, uri)| NewOutputFileRow {
            job_id: datum.job_id,
            datum_id: datum.id,
            uri,
            size: file.size,
            created_at: now,
        })
        .collect()
}

impl From<Datum> for DatumSummary {
    fn from(datum: Datum) -> DatumSummary {
        let status = datum.status();
        DatumSummary {
            id: datum.id,
            job_id: datum.job_id,
            status,
            attempt: datum.attempt,
            interrupted: datum.interrupted,
            max_tries: datum.max_tries,
            owner: datum.owner,
            started_at: datum.started_at,
            finished_at: datum.finished_at,
            error_message: datum.error_message,
        }
    }
}

impl From<InputFile> for InputFileResponse {
    fn from(file: InputFile) -> InputFileResponse {
        InputFileResponse {
            uri: file.uri,
            local_path: file.local_path,
        }
    }
}

impl From<OutputFile> for OutputFileResponse {
    fn from(file: OutputFile) -> OutputFileResponse {
        OutputFileResponse {
            uri: file.uri,
            size: file.size,
        }
    }
}
