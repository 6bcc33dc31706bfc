//! Datums: the unit of work a worker reserves, runs and reports on, and
//! every transition of their lifecycle (see [`crate::status`] for the
//! diagram).
//!
//! The queue's invariants live here:
//! - a datum is reserved by exactly one worker per attempt, and every later
//!   write names that attempt and owner (a [`Claim`]); a write whose claim is
//!   stale changes nothing and fails with [`ModelError::Conflict`];
//! - every transition that ends a claim closes the datum's open attempt row
//!   (`attempts`) with its [`Outcome`], in the same transaction, locking the
//!   datum row first and the attempt row second (one order everywhere, so
//!   two transitions never deadlock on them);
//! - no transition does storage I/O: outputs are published between
//!   [`Datum::begin_publishing`] and [`Datum::finish_publishing`], outside
//!   any transaction.

use diesel::{
    ExpressionMethods, OptionalExtension, QueryDsl, QueryableByName, RunQueryDsl, SelectableHelper,
    prelude::{Insertable, Queryable, Selectable},
    sql_types::{BigInt, Integer, Nullable, Text},
};

use super::{
    INSERT_CHUNK, ModelError, ModelResult,
    sql::{Clock, Stmt, fill, int_list},
    stats::{record_attempt_stats, stats_array, stats_assignments, stats_from_array},
};
use crate::{
    Millis,
    api::{
        AttemptResponse, AttemptStats, Claim, DatumSummary, InputFileResponse, NewOutputFile,
        OutputFileResponse,
    },
    db::{DbConn, schema::*, with_conn},
    status::{DatumStatus, Outcome},
    text::escape_nul,
};

/// A datum row.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, QueryableByName)]
#[diesel(table_name = datums)]
pub struct Datum {
    pub id: i64,
    pub job_id: i64,
    /// Position within the job, in planning order.
    pub seq: i64,
    pub status: DatumStatus,
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
    /// The datum's place in its job's queue while it is ready (its `seq`:
    /// planning order, also after a requeue); NULL in every other state (a
    /// CHECK constraint keeps the two in step).
    pub ready_order: Option<i64>,
    /// What the datum's result depends on (`fingerprint.rs`), and which
    /// files it has; NULL for datums planned before incremental runs.
    pub fingerprint: Option<String>,
    pub input_key: Option<String>,
    /// Set for a skipped datum: the earlier datum (and its job) that ran
    /// with the same fingerprint. Such a row's `status` is `done`; the API
    /// shows it as `skipped` ([`Datum::shown_status`]).
    pub skipped_from: Option<i64>,
    pub skipped_from_job: Option<i64>,
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

/// An output file row. Written when publishing starts, it is published
/// once its datum is `done`.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = output_files)]
pub struct OutputFile {
    pub id: i64,
    pub job_id: i64,
    pub datum_id: i64,
    pub uri: String,
    pub size: i64,
    pub created_at: Millis,
    /// The attempt whose staging area holds (or held) the file.
    pub attempt: i32,
    /// The path relative to the staging area and to the egress.
    pub staged_path: String,
}

/// One attempt at a datum.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = attempts)]
pub struct Attempt {
    pub id: i64,
    pub job_id: i64,
    pub datum_id: i64,
    /// 1 for the first reservation, then counting up (`Datum::attempt`).
    pub number: i32,
    pub worker_id: String,
    pub started_at: Millis,
    pub finished_at: Option<Millis>,
    /// None while the attempt is the datum's current claim.
    pub outcome: Option<Outcome>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub error_message: Option<String>,
}

#[derive(Insertable)]
#[diesel(table_name = attempts)]
struct NewAttempt<'a> {
    job_id: i64,
    datum_id: i64,
    number: i32,
    worker_id: &'a str,
    started_at: Millis,
}

#[derive(Insertable)]
#[diesel(table_name = output_files)]
struct NewOutputFileRow<'a> {
    job_id: i64,
    datum_id: i64,
    uri: &'a str,
    size: i64,
    created_at: Millis,
    attempt: i32,
    staged_path: &'a str,
}

/// A datum handed to a worker, with its input files.
#[derive(Debug, Clone, PartialEq)]
pub struct Reserved {
    pub datum: Datum,
    pub files: Vec<InputFileResponse>,
}

#[derive(QueryableByName)]
struct ReservedRow {
    #[diesel(embed)]
    datum: Datum,
    #[diesel(sql_type = Nullable<Text>)]
    files: Option<String>,
}

/// A row changed by a transition that ends attempts.
#[derive(QueryableByName, Debug)]
struct EndedRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Integer)]
    attempt: i32,
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

/// What a worker reports with a finished command.
#[derive(Debug, Clone, Copy, Default)]
pub struct Report<'a> {
    /// The tail of the command's output (any NUL is stored as `␀`).
    pub output: &'a str,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// What the worker measured, for the attempt's record.
    pub stats: Option<&'a AttemptStats>,
}

/// The answer to a `done` report.
#[derive(Debug, Clone, PartialEq)]
pub enum Completed {
    /// No outputs: the datum is done.
    Done(Datum),
    /// The datum is `publishing`: move these staged files, then call
    /// [`Datum::finish_publishing`] (or [`Datum::fail_publishing`]).
    Publishing(Datum, Vec<OutputFile>),
}

/// What [`Datum::retry`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct Retried {
    /// The datum, ready again.
    pub datum: Datum,
    /// Its job, as it is now.
    pub job: super::Job,
    /// True if the job had ended and was reopened: its workers must be
    /// started again.
    pub reopened: bool,
}

/// Which datums a listing returns.
#[derive(Debug, Clone, Default)]
pub struct DatumFilter {
    pub status: Option<DatumStatus>,
    /// Datums with at least one attempt that ended this way.
    pub outcome: Option<Outcome>,
    /// Keyset paging: only datums with a larger id.
    pub after: Option<i64>,
}

/// Whether a failed attempt puts its datum back in the queue.
#[derive(Debug, Clone, Copy)]
enum Requeue {
    /// While the datum has tries left (interrupted attempts don't count).
    IfTriesLeft,
    /// Always, without using up a try (`interrupted` goes up).
    Always,
    /// The infrastructure ended the worker: like `Always`, and the datum's
    /// `pod_failures` goes up, until its `max`-th such failure fails it.
    PodFailure { max: i32 },
    /// Never, whatever tries are left (an `on_exit` rule said so).
    Never,
}

impl Requeue {
    /// The states a datum whose attempt ends this way may move to.
    fn targets(self) -> &'static [DatumStatus] {
        match self {
            Requeue::IfTriesLeft | Requeue::PodFailure { .. } => {
                &[DatumStatus::Ready, DatumStatus::Error]
            }
            Requeue::Always => &[DatumStatus::Ready],
            Requeue::Never => &[DatumStatus::Error],
        }
    }
}

/// The one gate of datum transitions outside the prepared hot path: checks
/// that every move from a state of `from` to a state of `to` is one
/// [`DatumStatus::can_move_to`] allows, and answers the SQL guard
/// (`status IN (…)`) the statement must carry so that it moves only rows
/// in `from`. A move the state machine forbids is a bug in falconeri: it is
/// refused before any SQL runs. (The reservation and the one-statement
/// `done` are fixed texts prepared once per connection; their moves,
/// `ready → running` and `running → done`, are checked by a unit test.)
pub(super) fn transition(from: &[DatumStatus], to: &[DatumStatus]) -> ModelResult<String> {
    for &old in from {
        for &new in to {
            if !old.can_move_to(new) {
                return Err(ModelError::Other(anyhow::anyhow!(
                    "forbidden datum transition {old} -> {new}"
                )));
            }
        }
    }
    let names: Vec<String> = from.iter().map(|s| format!("'{}'", s.as_str())).collect();
    Ok(format!("status IN ({})", names.join(", ")))
}

/// How attempts end, for [`end_attempts`].
#[derive(Debug, Clone, Copy)]
struct Ending<'a> {
    outcome: Outcome,
    /// The datum's error message (and the attempt's).
    message: &'a str,
    /// The datum's message instead when it is not requeued.
    final_message: Option<&'a str>,
    /// The attempt's message instead.
    attempt_message: Option<&'a str>,
    /// Replaces the datum's output when set.
    output: Option<&'a str>,
    exit_code: Option<i32>,
    signal: Option<i32>,
    /// The attempt's statistics, when its worker reported them.
    stats: Option<&'a AttemptStats>,
    requeue: Requeue,
}

const RESERVE_HELD_OR_NEXT: &str = "\
UPDATE datums SET \
    attempt = CASE WHEN status = 'ready' THEN attempt + 1 ELSE attempt END, \
    started_at = CASE WHEN status = 'ready' THEN {now} ELSE started_at END, \
    deadline_at = CASE WHEN status = 'ready' THEN {deadline} ELSE deadline_at END, \
    status = 'running', ready_order = NULL, owner = {worker}, \
    lease_expires_at = {now} + {lease}, updated_at = {now}, finished_at = NULL \
WHERE id IN ( \
    SELECT id FROM datums \
    WHERE {resume} AND job_id = {job} AND owner = {worker} AND status = 'running' \
    UNION ALL \
    SELECT id FROM ( \
        SELECT id FROM datums \
        WHERE job_id = {job} AND ready_order IS NOT NULL \
          AND NOT EXISTS (SELECT 1 FROM datums h WHERE {resume} AND h.job_id = {job} \
                          AND h.owner = {worker} AND h.status = 'running') \
          AND EXISTS (SELECT 1 FROM jobs j WHERE j.id = {job} AND j.status = 'running') \
        ORDER BY ready_order LIMIT {max}) AS next \
) AND (status = 'ready' OR (status = 'running' AND owner = {worker})) \
RETURNING *, {files} AS files";
/// One statement that reserves for several workers at once on PostgreSQL
/// (the server gathers the reservations that arrive while one runs; see
/// `falconerid`'s `combine` module): each worker gets back what it still
/// holds `running` in the job, or else the next `k` ready datums in queue
/// order. The picks are numbered in queue order and dealt out to the
/// workers that hold nothing, `k` each, in request order.
///
/// The queue is read in two index ranges: the requeued datums (negative
/// `ready_order`, see [`REQUEUED_BELOW_FRESH`]), then the fresh ones from
/// `{frontier}` on (see [`Frontier`]). The second range is only read when
/// the first did not fill the group, and each is locked row by row as the
/// limit pulls it, so no row is locked that is not handed out.
///
/// The update reaches the rows through the primary key: it joins `unnest`
/// of arrays built from the assignment, which the planner estimates as a
/// handful of rows, never as a scan of the job's datums. The claim and its
/// attempt rows commit together (a data-modifying CTE), and the input files
/// come back with each datum, so a reservation is one round trip.
const RESERVE_MANY_PG: &str = "\
WITH req AS ( \
    SELECT r.owner, r.k, r.resume, r.ord \
    FROM unnest({workers}, {maxes}, {resumes}) WITH ORDINALITY AS r (owner, k, resume, ord)), \
held AS ( \
    SELECT d.id, d.owner FROM datums d \
    WHERE d.job_id = {job} AND d.status = 'running' \
      AND d.owner = ANY(ARRAY(SELECT owner FROM req WHERE resume))), \
need AS ( \
    SELECT owner, k, SUM(k) OVER (ORDER BY ord) - k AS first FROM req \
    WHERE owner NOT IN (SELECT owner FROM held)), \
total AS (SELECT COALESCE(SUM(k), 0) AS want FROM need), \
pick AS ( \
    SELECT p.id, ROW_NUMBER() OVER (ORDER BY p.ready_order) - 1 AS n FROM ( \
        SELECT id, ready_order FROM ( \
            SELECT * FROM ( \
                SELECT id, ready_order FROM datums \
                WHERE job_id = {job} AND ready_order < 0 \
                ORDER BY ready_order LIMIT (SELECT want FROM total) \
                FOR UPDATE SKIP LOCKED) AS requeued \
            UNION ALL \
            SELECT * FROM ( \
                SELECT id, ready_order FROM datums \
                WHERE job_id = {job} AND ready_order >= {frontier} \
                ORDER BY ready_order LIMIT (SELECT want FROM total) \
                FOR UPDATE SKIP LOCKED) AS fresh) AS u \
        WHERE EXISTS (SELECT 1 FROM jobs j WHERE j.id = {job} AND j.status = 'running') \
        LIMIT (SELECT want FROM total)) AS p), \
assign AS ( \
    SELECT id, owner, 0 AS k FROM held \
    UNION ALL \
    SELECT pick.id, need.owner, need.k FROM pick \
    JOIN need ON pick.n >= need.first AND pick.n < need.first + need.k), \
claimed AS ( \
    UPDATE datums d SET \
        attempt = CASE WHEN d.status = 'ready' THEN d.attempt + 1 ELSE d.attempt END, \
        started_at = CASE WHEN d.status = 'ready' THEN {now} ELSE d.started_at END, \
        deadline_at = CASE WHEN d.status = 'ready' THEN {now} + {timeout} * a.k \
                           ELSE d.deadline_at END, \
        status = 'running', ready_order = NULL, owner = a.owner, \
        lease_expires_at = {now} + {lease}, updated_at = {now}, finished_at = NULL \
    FROM unnest(ARRAY(SELECT id FROM assign ORDER BY id), \
                ARRAY(SELECT owner FROM assign ORDER BY id), \
                ARRAY(SELECT k FROM assign ORDER BY id)) AS a (id, owner, k) \
    WHERE d.id = a.id \
      AND (d.status = 'ready' OR (d.status = 'running' AND d.owner = a.owner)) \
    RETURNING d.*), \
recorded AS ( \
    INSERT INTO attempts (job_id, datum_id, number, worker_id, started_at) \
    SELECT job_id, id, attempt, owner, started_at FROM claimed \
    ON CONFLICT (datum_id, number) DO NOTHING) \
SELECT claimed.*, \
    (SELECT CAST(json_agg(json_build_array(f.uri, f.local_path) ORDER BY f.id) AS TEXT) \
     FROM input_files f WHERE f.datum_id = claimed.id) AS files \
FROM claimed";

/// Where one server last found fresh datums of a job in the queue: a
/// lower bound of the fresh part, so that the next reservation starts
/// there. Why: on PostgreSQL the queue index keeps an entry for every datum
/// claimed since the table was last vacuumed; a pick that starts at the
/// beginning of the job walks all of them, and on a million-datum job that
/// is hundreds of thousands of entries per pick. The frontier is a hint
/// only: a reservation that comes up short looks again from the start, so
/// a fresh datum left behind it (a concurrent claim that rolled back) is
/// still handed out, last. SQLite removes index entries at once and needs
/// none.
#[derive(Debug, Default)]
pub struct Frontier(std::sync::atomic::AtomicI64);

impl Frontier {
    fn get(&self) -> i64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Moves the frontier up to the lowest fresh datum `reserved` claimed:
    /// every fresh datum below it was claimed, or locked by a claim then.
    fn passed(&self, reserved: &[Reserved]) {
        // A datum on its first attempt was fresh until this claim (a
        // requeued one has been claimed before); its `seq` was its place.
        if let Some(lowest) = reserved
            .iter()
            .filter(|r| r.datum.attempt == 1)
            .map(|r| r.datum.seq)
            .min()
        {
            self.0
                .fetch_max(lowest, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// What one worker asks of a reservation: up to `max` datums.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReserveWant {
    pub worker_id: String,
    pub max: u32,
    /// Look for datums the worker already holds first (its last answer
    /// was lost). On PostgreSQL that look-up walks the held index's
    /// entries of the worker's past datums not yet vacuumed away, so
    /// workers that know they hold nothing skip it.
    pub resume: bool,
}

impl Datum {
    /// The datum's status.
    pub fn status(&self) -> DatumStatus {
        self.status
    }

    /// The status users see: `skipped` for a skipped datum (stored as
    /// `done` with `skipped_from` set), else the stored one.
    pub fn shown_status(&self) -> DatumStatus {
        match (self.status, self.skipped_from) {
            (DatumStatus::Done, Some(_)) => DatumStatus::Skipped,
            (status, _) => status,
        }
    }

    /// The claim of the current attempt.
    pub fn claim(&self) -> Option<Claim> {
        self.owner.as_ref().map(|owner| Claim {
            worker_id: owner.clone(),
            attempt: self.attempt,
            scope: None,
        })
    }

    /// One datum by id: a row, or a skipped datum of a run.
    pub fn find(conn: &mut DbConn, id: i64) -> ModelResult<Datum> {
        let row = with_conn!(conn, c => datums::table
            .find(id)
            .select(Datum::as_select())
            .first(c)
            .optional())?;
        if let Some(row) = row {
            return Ok(row);
        }
        let run = super::SkippedRun::holding(conn, id)?
            .ok_or_else(|| ModelError::NotFound(format!("datum {id}")))?;
        let skipped = run.datum(id - run.first_id);
        super::skipped::skipped_datums(conn, &[skipped])?
            .pop()
            .ok_or_else(|| ModelError::NotFound(format!("datum {id}")))
    }

    /// Datums of a job in id order, optionally of one status.
    pub fn list(
        conn: &mut DbConn,
        job_id: i64,
        status: Option<DatumStatus>,
        limit: i64,
    ) -> ModelResult<Vec<Datum>> {
        let filter = DatumFilter {
            status,
            ..DatumFilter::default()
        };
        Datum::list_filtered(conn, job_id, &filter, limit)
    }

    /// A page of a job's datums in id order: by status, by the outcome of
    /// any of their attempts, after an id. Each page is one index range
    /// scan, so paging works the same at a million datums.
    pub fn list_filtered(
        conn: &mut DbConn,
        job_id: i64,
        filter: &DatumFilter,
        limit: i64,
    ) -> ModelResult<Vec<Datum>> {
        // Skipped datums are runs (`skipped_runs`): a page of them joins
        // the page of rows, in id order.
        let skipped = match (filter.status, filter.outcome) {
            // A skipped datum never ran, so it has no attempt outcome.
            (Some(DatumStatus::Skipped) | None, None) => {
                let after = filter.after.unwrap_or(0);
                let runs = super::SkippedRun::page_by_id(conn, job_id, after, limit)?;
                let cap = usize::try_from(limit).unwrap_or(usize::MAX);
                let page: Vec<super::SkippedDatum> = runs
                    .iter()
                    .flat_map(|run| run.datums_between(after + 1, i64::MAX))
                    .take(cap)
                    .collect();
                super::skipped::skipped_datums(conn, &page)?
            }
            _ => Vec::new(),
        };
        if filter.status == Some(DatumStatus::Skipped) {
            return Ok(skipped);
        }
        let rows: Vec<Datum> = with_conn!(conn, c => {
            let mut query = datums::table
                .filter(datums::job_id.eq(job_id))
                .order(datums::id)
                .limit(limit)
                .select(Datum::as_select())
                .into_boxed();
            if let Some(status) = filter.status {
                query = query.filter(datums::status.eq(status));
            }
            if let Some(after) = filter.after {
                query = query.filter(datums::id.gt(after));
            }
            if let Some(outcome) = filter.outcome {
                // The page's lower bound goes inside too, so the look-up
                // starts at it in `attempts (job_id, outcome, datum_id)`
                // instead of reading every earlier match.
                let mut with_outcome = attempts::table
                    .filter(attempts::job_id.eq(job_id))
                    .filter(attempts::outcome.eq(outcome))
                    .select(attempts::datum_id)
                    .into_boxed();
                if let Some(after) = filter.after {
                    with_outcome = with_outcome.filter(attempts::datum_id.gt(after));
                }
                query = query.filter(datums::id.eq_any(with_outcome));
            }
            query.load(c)
        })?;
        if skipped.is_empty() {
            return Ok(rows);
        }
        let mut all = rows;
        all.extend(skipped);
        all.sort_unstable_by_key(|datum| datum.id);
        all.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        Ok(all)
    }

    /// Reserves work for `worker_id`: the datums the worker still holds
    /// `running` in the job if any (the answer to its last reservation was
    /// lost; same claim, lease extended, deadline unchanged), else up to
    /// `max` ready datums of a running job, in queue order. See
    /// [`Datum::reserve_many`].
    #[tracing::instrument(level = "debug", skip(conn))]
    pub fn reserve(
        conn: &mut DbConn,
        job_id: i64,
        worker_id: &str,
        max: u32,
        clock: Clock,
        lease_ms: i64,
        timeout_ms: Option<i64>,
    ) -> ModelResult<Vec<Reserved>> {
        let want = ReserveWant {
            worker_id: worker_id.to_owned(),
            max,
            resume: true,
        };
        Datum::reserve_many(
            conn,
            job_id,
            &[want],
            &Frontier::default(),
            clock,
            lease_ms,
            timeout_ms,
        )
    }

    /// [`Datum::reserve`] for several workers of one job at once, in one
    /// statement on PostgreSQL and one transaction on SQLite; each
    /// [`Reserved`] names its worker as the datum's owner. A worker named
    /// twice is served once, with the larger `max`. The clock is read
    /// inside the statement.
    ///
    /// The pick walks the partial index `datums_queue (job_id,
    /// ready_order) WHERE ready_order IS NOT NULL`, which holds ready
    /// datums only and is the only index in `ready_order` order, so its cost
    /// does not grow with the rows already done. On PostgreSQL `SKIP LOCKED`
    /// lets concurrent reservations pass each other, and the outer
    /// `status = 'ready'` re-check after the lock means a datum is never
    /// handed out twice; on SQLite the transaction holds the write lock.
    ///
    /// `timeout_ms` is the job's `datum_timeout`: each datum's server-side
    /// deadline is `max × timeout` from now (a batch runs its datums one
    /// after another; the worker enforces `datum_timeout` per command).
    #[tracing::instrument(level = "debug", skip(conn))]
    pub fn reserve_many(
        conn: &mut DbConn,
        job_id: i64,
        wants: &[ReserveWant],
        frontier: &Frontier,
        clock: Clock,
        lease_ms: i64,
        timeout_ms: Option<i64>,
    ) -> ModelResult<Vec<Reserved>> {
        let mut merged: Vec<ReserveWant> = Vec::with_capacity(wants.len());
        for want in wants {
            let max = want.max.max(1);
            match merged.iter_mut().find(|m| m.worker_id == want.worker_id) {
                Some(seen) => {
                    seen.max = seen.max.max(max);
                    seen.resume |= want.resume;
                }
                None => merged.push(ReserveWant {
                    worker_id: want.worker_id.clone(),
                    max,
                    resume: want.resume,
                }),
            }
        }
        if merged.is_empty() {
            return Ok(Vec::new());
        }
        let backend = conn.backend();
        if backend == crate::db::Backend::Postgres {
            let from = frontier.get();
            let mut reserved = Datum::reserve_many_on_postgres(
                conn, job_id, &merged, from, clock, lease_ms, timeout_ms,
            )?;
            // Short: the queue may have fresh datums below the frontier
            // (a claim that rolled back after passing them by). Ask again
            // from the start, with every worker's held datums looked up,
            // so what the first statement claimed comes back as held.
            let short = merged.iter().any(|want| {
                let got = reserved
                    .iter()
                    .filter(|r| r.datum.owner.as_deref() == Some(want.worker_id.as_str()))
                    .count();
                got < usize::try_from(want.max).unwrap_or(usize::MAX)
            });
            if short && from > 0 {
                let first = reserved;
                // Every worker now may hold what the first statement gave
                // it, and must get exactly that back, not more.
                let again: Vec<ReserveWant> = merged
                    .iter()
                    .map(|want| ReserveWant {
                        resume: true,
                        ..want.clone()
                    })
                    .collect();
                reserved = Datum::reserve_many_on_postgres(
                    conn, job_id, &again, 0, clock, lease_ms, timeout_ms,
                )?;
                frontier.passed(&first);
            } else {
                frontier.passed(&reserved);
            }
            return Ok(reserved);
        }
        conn.write_transaction(|conn| {
            let mut reserved = Vec::new();
            for want in &merged {
                reserved.extend(Datum::reserve_on_sqlite(
                    conn, job_id, want, clock, lease_ms, timeout_ms,
                )?);
            }
            reserved.sort_by_key(|r| r.datum.id);
            Ok(reserved)
        })
    }

    /// One run of [`RESERVE_MANY_PG`] for `wants` (merged: each worker
    /// once), reading fresh datums from `frontier` on.
    fn reserve_many_on_postgres(
        conn: &mut DbConn,
        job_id: i64,
        wants: &[ReserveWant],
        frontier: i64,
        clock: Clock,
        lease_ms: i64,
        timeout_ms: Option<i64>,
    ) -> ModelResult<Vec<Reserved>> {
        let timeout = timeout_ms.map_or("NULL".to_owned(), |t| t.to_string());
        let maxes = format!(
            "ARRAY[{}]::INTEGER[]",
            wants
                .iter()
                .map(|w| w.max.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let resumes = format!(
            "ARRAY[{}]::BOOLEAN[]",
            wants
                .iter()
                .map(|w| w.resume.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        // A NUL cannot be written into the statement's text; it goes the
        // bound way, where PostgreSQL refuses it as it should.
        if clock == Clock::DB && wants.iter().all(|w| !w.worker_id.contains('\0')) {
            let (name, types) = PREPARED_RESERVE;
            if conn.ensure_prepared(name, types, &prepared_reservation_sql())? {
                let workers = format!(
                    "ARRAY[{}]::TEXT[]",
                    wants
                        .iter()
                        .map(|w| sql_literal(&w.worker_id))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                let execute = format!(
                    "EXECUTE {name}({job_id}, {workers}, {maxes}, {lease_ms}, {timeout}, \
                     {frontier}, {resumes})"
                );
                let rows: Vec<ReservedRow> =
                    with_conn!(conn, c => diesel::sql_query(&execute).load(c))?;
                return collect_reserved(rows);
            }
        }
        let mut stmt = Stmt::new(conn.backend());
        let workers = format!(
            "ARRAY[{}]::TEXT[]",
            wants
                .iter()
                .map(|w| stmt.text(Some(&w.worker_id)))
                .collect::<Vec<_>>()
                .join(", ")
        );
        stmt.push(&reserve_many_sql(&ReserveManyParams {
            job: &job_id.to_string(),
            workers: &workers,
            maxes: &maxes,
            resumes: &resumes,
            lease: &lease_ms.to_string(),
            timeout: &format!("CAST({timeout} AS BIGINT)"),
            frontier: &frontier.to_string(),
            now: &clock.sql(conn.backend()),
        }));
        let rows: Vec<ReservedRow> = stmt.load(conn)?;
        collect_reserved(rows)
    }

    /// One worker's reservation on SQLite, inside the caller's write
    /// transaction: the claim, then the new attempts' rows.
    fn reserve_on_sqlite(
        conn: &mut DbConn,
        job_id: i64,
        want: &ReserveWant,
        clock: Clock,
        lease_ms: i64,
        timeout_ms: Option<i64>,
    ) -> ModelResult<Vec<Reserved>> {
        let backend = conn.backend();
        let mut stmt = Stmt::new(backend);
        let worker = stmt.text(Some(&want.worker_id));
        let now = clock.sql(backend);
        let deadline = match timeout_ms {
            Some(t) => format!("{now} + {}", t.saturating_mul(i64::from(want.max))),
            None => "NULL".to_owned(),
        };
        stmt.push(&reservation_sql(&ReservationParams {
            resume: if want.resume { "1" } else { "0" },
            job: &job_id.to_string(),
            worker: &worker,
            max: &want.max.to_string(),
            lease: &lease_ms.to_string(),
            deadline: &deadline,
            now: &now,
        }));
        let rows: Vec<ReservedRow> = stmt.load(conn)?;
        let reserved = collect_reserved(rows)?;
        // Held datums already have their attempt; the conflict clause
        // skips them.
        with_conn!(conn, c => {
            for r in &reserved {
                diesel::insert_into(attempts::table)
                    .values(NewAttempt {
                        job_id: r.datum.job_id,
                        datum_id: r.datum.id,
                        number: r.datum.attempt,
                        worker_id: &want.worker_id,
                        started_at: r.datum.started_at.unwrap_or(r.datum.updated_at),
                    })
                    .on_conflict((attempts::datum_id, attempts::number))
                    .do_nothing()
                    .execute(c)?;
            }
            Ok::<_, diesel::result::Error>(())
        })?;
        Ok(reserved)
    }

    /// PostgreSQL's generic plans of the two hot-path statements, the
    /// reservation and the `done` without outputs (plan only, nothing
    /// runs), one line per element: the plans every execution uses once
    /// PostgreSQL settles on them, for the test that proves neither walks
    /// a job's rows.
    #[doc(hidden)]
    pub fn hot_path_plans(
        conn: &mut DbConn,
        job_id: i64,
    ) -> ModelResult<Vec<(String, Vec<String>)>> {
        #[derive(QueryableByName)]
        struct PlanLine {
            #[diesel(sql_type = Text, column_name = "QUERY PLAN")]
            line: String,
        }
        let statements = [
            (
                PREPARED_RESERVE,
                prepared_reservation_sql(),
                format!(
                    "({job_id}, ARRAY['explain']::TEXT[], ARRAY[1]::INTEGER[], 1000, NULL, 0, ARRAY[true])"
                ),
            ),
            (
                PREPARED_DONE,
                prepared_done_sql(),
                "(ARRAY[1]::BIGINT[], ARRAY[1]::INTEGER[], ARRAY['explain']::TEXT[], \
                 ARRAY['']::TEXT[], ARRAY[0]::INTEGER[], ARRAY[NULL]::INTEGER[], \
                 ARRAY[NULL]::BIGINT[], 'running', ARRAY[1,1,1,1,1,1,1,1,1,1]::BIGINT[])"
                    .to_owned(),
            ),
        ];
        let mut plans = Vec::new();
        for ((name, types), sql, args) in statements {
            if !conn.ensure_prepared(name, types, &sql)? {
                return Err(ModelError::Other(anyhow::anyhow!(
                    "the hot-path statements are prepared on PostgreSQL only"
                )));
            }
            let lines = with_conn!(conn, c => {
                use diesel::connection::SimpleConnection;
                c.batch_execute("SET plan_cache_mode = force_generic_plan")?;
                let lines: Result<Vec<PlanLine>, _> =
                    diesel::sql_query(format!("EXPLAIN (COSTS OFF) EXECUTE {name}{args}")).load(c);
                c.batch_execute("RESET plan_cache_mode")?;
                lines
            })?;
            plans.push((name.to_owned(), lines.into_iter().map(|l| l.line).collect()));
        }
        Ok(plans)
    }

    /// Runs the prepared reservation once for `worker_id` with fresh
    /// datums read from `frontier` on (it claims what it finds), and
    /// answers how many buffers it touched: for the test that proves the
    /// frontier spares a pick the queue entries of datums claimed before.
    #[doc(hidden)]
    pub fn reservation_buffers(
        conn: &mut DbConn,
        job_id: i64,
        worker_id: &str,
        frontier: i64,
    ) -> ModelResult<u64> {
        #[derive(QueryableByName)]
        struct PlanJson {
            #[diesel(sql_type = Text, column_name = "QUERY PLAN")]
            json: String,
        }
        let (name, types) = PREPARED_RESERVE;
        if !conn.ensure_prepared(name, types, &prepared_reservation_sql())? {
            return Err(ModelError::Other(anyhow::anyhow!(
                "the reservation is prepared on PostgreSQL only"
            )));
        }
        let sql = format!(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE {name}({job_id}, \
             ARRAY[{}]::TEXT[], ARRAY[1]::INTEGER[], 1000, NULL, {frontier}, ARRAY[false])",
            sql_literal(worker_id)
        );
        let plans: Vec<PlanJson> = with_conn!(conn, c => diesel::sql_query(&sql).load(c))?;
        let json = plans.first().map(|p| p.json.as_str()).unwrap_or("[]");
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|err| anyhow::anyhow!("unreadable plan: {err}"))?;
        let plan = &value[0]["Plan"];
        let blocks = |key: &str| plan[key].as_u64().unwrap_or(0);
        Ok(blocks("Shared Hit Blocks") + blocks("Shared Read Blocks"))
    }

    /// [`Datum::reserve`] of one datum.
    pub fn reserve_next(
        conn: &mut DbConn,
        job_id: i64,
        worker_id: &str,
        now: impl Into<Clock> + std::fmt::Debug,
        lease_ms: i64,
        timeout_ms: Option<i64>,
    ) -> ModelResult<Option<Datum>> {
        let reserved =
            Datum::reserve(conn, job_id, worker_id, 1, now.into(), lease_ms, timeout_ms)?;
        Ok(reserved.into_iter().next().map(|r| r.datum))
    }

    /// Extends the lease of a datum the claimant still holds (a datum being
    /// published keeps the lease its publisher set).
    pub fn heartbeat(
        conn: &mut DbConn,
        id: i64,
        claim: &Claim,
        now: impl Into<Clock>,
        lease_ms: i64,
    ) -> ModelResult<Millis> {
        let backend = conn.backend();
        let mut stmt = Stmt::new(backend);
        let now = now.into().sql(backend);
        let guard = held_sql(&mut stmt, id, claim, "IN ('running', 'publishing')");
        stmt.push(&format!(
            "UPDATE datums SET \
                lease_expires_at = CASE WHEN status = 'running' THEN {now} + {lease_ms} \
                                        ELSE lease_expires_at END, \
                updated_at = {now} \
             WHERE {guard} RETURNING id, attempt, lease_expires_at"
        ));
        #[derive(QueryableByName)]
        struct Lease {
            #[diesel(sql_type = Nullable<BigInt>)]
            lease_expires_at: Option<i64>,
        }
        let rows: Vec<Lease> = stmt.load(conn)?;
        match rows.into_iter().next() {
            Some(row) => Ok(row.lease_expires_at.unwrap_or_default()),
            None => Err(Datum::why_stale(conn, id, claim)),
        }
    }

    /// A worker reports its command succeeded. Without outputs the datum is
    /// done at once (one transaction: the guarded update and the closing of
    /// the attempt). With outputs it moves to `publishing` under its claim
    /// and the rows of its outputs are written (`egress_uri` joined with
    /// each path), so that whoever publishes, this server or the babysitter
    /// after a crash, knows what to move; the lease becomes the publisher's,
    /// `publish_lease_ms` long.
    #[tracing::instrument(level = "debug", skip(conn, report, files, now))]
    #[allow(clippy::too_many_arguments)]
    pub fn complete(
        conn: &mut DbConn,
        id: i64,
        claim: &Claim,
        report: &Report<'_>,
        files: &[NewOutputFile],
        egress_uri: &str,
        now: impl Into<Clock>,
        publish_lease_ms: i64,
    ) -> ModelResult<Completed> {
        let backend = conn.backend();
        let clock = now.into();
        let now = clock.sql(backend);
        let output = escape_nul(report.output);
        let target = if files.is_empty() {
            DatumStatus::Done
        } else {
            DatumStatus::Publishing
        };
        let from = transition(&[DatumStatus::Running], &[target])?;
        let mut stmt = Stmt::new(backend);
        let guard = held_sql(&mut stmt, id, claim, "= 'running'");
        let output_param = stmt.text(Some(&output));
        let set = if files.is_empty() {
            format!(
                "status = 'done', finished_at = {now}, lease_expires_at = NULL, \
                 error_message = NULL"
            )
        } else {
            format!("status = 'publishing', lease_expires_at = {now} + {publish_lease_ms}")
        };
        stmt.push(&format!(
            "UPDATE datums SET {set}, output = {output_param}, deadline_at = NULL, \
                updated_at = {now} \
             WHERE {guard} AND {from} RETURNING *"
        ));
        if backend == crate::db::Backend::Postgres && files.is_empty() {
            // One statement: the datum and its attempt change together.
            let done = Datum::complete_many(conn, &[(id, claim.clone(), *report)], clock)?;
            return match done.into_iter().next() {
                Some(datum) => Ok(Completed::Done(datum)),
                None => Err(Datum::why_stale(conn, id, claim)),
            };
        }
        let egress = crate::storage::as_prefix(egress_uri);
        let result = conn.write_transaction(|conn| {
            let rows: Vec<Datum> = stmt.load(conn)?;
            let Some(datum) = rows.into_iter().next() else {
                return Ok(None);
            };
            if files.is_empty() {
                close_attempts(
                    conn,
                    &[(datum.id, datum.attempt)],
                    Outcome::Done,
                    None,
                    report.exit_code,
                    report.signal,
                    report.stats,
                    clock,
                )?;
                return Ok(Some(Completed::Done(datum)));
            }
            // The attempt stays open until its outputs are published;
            // its stats are written now, while the report is at hand.
            record_attempt_stats(conn, datum.id, datum.attempt, report.stats)?;
            let created_at = datum.updated_at;
            let uris: Vec<String> = files
                .iter()
                .map(|file| format!("{egress}{}", file.path))
                .collect();
            let rows: Vec<NewOutputFileRow> = files
                .iter()
                .zip(&uris)
                .map(|(file, uri)| NewOutputFileRow {
                    job_id: datum.job_id,
                    datum_id: datum.id,
                    uri,
                    size: file.size,
                    created_at,
                    attempt: datum.attempt,
                    staged_path: &file.path,
                })
                .collect();
            with_conn!(conn, c => {
                for chunk in rows.chunks(INSERT_CHUNK) {
                    diesel::insert_into(output_files::table).values(chunk).execute(c)?;
                }
                Ok::<_, diesel::result::Error>(())
            })?;
            let outputs = Datum::pending_outputs(conn, &datum)?;
            Ok::<_, ModelError>(Some(Completed::Publishing(datum, outputs)))
        })?;
        result.ok_or_else(|| Datum::why_stale(conn, id, claim))
    }

    /// Marks many held datums done at once, none with outputs: one
    /// statement for the whole batch (PostgreSQL only; the batch report of
    /// a worker that reserved many tiny datums). Each row is guarded by its
    /// own claim; the datums whose claims were stale are simply not among
    /// the answer (the caller settles those one by one to learn why).
    pub fn complete_many(
        conn: &mut DbConn,
        reports: &[(i64, Claim, Report<'_>)],
        now: impl Into<Clock>,
    ) -> ModelResult<Vec<Datum>> {
        if reports.is_empty() {
            return Ok(Vec::new());
        }
        let backend = conn.backend();
        if backend != crate::db::Backend::Postgres {
            return Err(ModelError::Other(anyhow::anyhow!(
                "complete_many is for PostgreSQL"
            )));
        }
        let clock = now.into();
        let join = |items: Vec<String>| items.join(", ");
        let int = |value: Option<i64>| value.map_or("NULL".to_owned(), |v| v.to_string());
        let ids = join(reports.iter().map(|(id, _, _)| id.to_string()).collect());
        let attempts = join(
            reports
                .iter()
                .map(|(_, c, _)| c.attempt.to_string())
                .collect(),
        );
        let exit_codes = join(
            reports
                .iter()
                .map(|(_, _, r)| int(r.exit_code.map(i64::from)))
                .collect(),
        );
        let signals = join(
            reports
                .iter()
                .map(|(_, _, r)| int(r.signal.map(i64::from)))
                .collect(),
        );
        let scopes = join(reports.iter().map(|(_, c, _)| int(c.scope)).collect());
        let stats = stats_array(reports.iter().map(|(_, _, r)| r.stats.copied()));
        let outputs: Vec<String> = reports
            .iter()
            .map(|(_, _, r)| escape_nul(r.output).into_owned())
            .collect();
        // Worker ids with a NUL cannot be written into the statement's
        // text; they go the bound way, where PostgreSQL refuses them.
        if clock == Clock::DB && reports.iter().all(|(_, c, _)| !c.worker_id.contains('\0')) {
            let (name, types) = PREPARED_DONE;
            if conn.ensure_prepared(name, types, &prepared_done_sql())? {
                let owners = join(
                    reports
                        .iter()
                        .map(|(_, c, _)| sql_literal(&c.worker_id))
                        .collect(),
                );
                let outputs = join(outputs.iter().map(|o| sql_literal(o)).collect());
                let execute = format!(
                    "EXECUTE {name}(ARRAY[{ids}]::BIGINT[], ARRAY[{attempts}]::INTEGER[], \
                     ARRAY[{owners}]::TEXT[], ARRAY[{outputs}]::TEXT[], \
                     ARRAY[{exit_codes}]::INTEGER[], ARRAY[{signals}]::INTEGER[], \
                     ARRAY[{scopes}]::BIGINT[], 'running', {stats})"
                );
                return Ok(with_conn!(conn, c => diesel::sql_query(&execute).load(c))?);
            }
        }
        let mut stmt = Stmt::new(backend);
        let owners = join(
            reports
                .iter()
                .map(|(_, c, _)| stmt.text(Some(&c.worker_id)))
                .collect(),
        );
        let outputs = join(outputs.iter().map(|o| stmt.text(Some(o))).collect());
        let running = stmt.text(Some("running"));
        stmt.push(&done_many_sql(&DoneManyParams {
            ids: &format!("ARRAY[{ids}]::BIGINT[]"),
            attempts: &format!("ARRAY[{attempts}]::INTEGER[]"),
            owners: &format!("ARRAY[{owners}]::TEXT[]"),
            outputs: &format!("ARRAY[{outputs}]::TEXT[]"),
            exit_codes: &format!("ARRAY[{exit_codes}]::INTEGER[]"),
            signals: &format!("ARRAY[{signals}]::INTEGER[]"),
            scopes: &format!("ARRAY[{scopes}]::BIGINT[]"),
            running: &running,
            stats: &stats,
            now: &clock.sql(backend),
        }));
        stmt.load(conn)
    }

    /// The output rows of the datum's current attempt, in path order.
    fn pending_outputs(conn: &mut DbConn, datum: &Datum) -> ModelResult<Vec<OutputFile>> {
        Ok(with_conn!(conn, c => output_files::table
            .filter(output_files::datum_id.eq(datum.id))
            .filter(output_files::attempt.eq(datum.attempt))
            .order(output_files::id)
            .select(OutputFile::as_select())
            .load(c))?)
    }

    /// Marks a `publishing` datum done once its outputs were moved: guarded
    /// by the claim like every worker write, so of two publishers (a slow
    /// one and the babysitter) exactly one records it.
    pub fn finish_publishing(
        conn: &mut DbConn,
        id: i64,
        claim: &Claim,
        exit_code: Option<i32>,
        now: impl Into<Clock>,
    ) -> ModelResult<Datum> {
        let backend = conn.backend();
        let clock = now.into();
        let now = clock.sql(backend);
        let from = transition(&[DatumStatus::Publishing], &[DatumStatus::Done])?;
        let mut stmt = Stmt::new(backend);
        let guard = held_sql(&mut stmt, id, claim, "= 'publishing'");
        stmt.push(&format!(
            "UPDATE datums SET status = 'done', finished_at = {now}, updated_at = {now}, \
                lease_expires_at = NULL, error_message = NULL \
             WHERE {guard} AND {from} RETURNING *"
        ));
        let done = conn.write_transaction(|conn| {
            let rows: Vec<Datum> = stmt.load(conn)?;
            if let Some(datum) = rows.first() {
                close_attempts(
                    conn,
                    &[(datum.id, datum.attempt)],
                    Outcome::Done,
                    None,
                    exit_code,
                    None,
                    None,
                    clock,
                )?;
            }
            Ok::<_, ModelError>(rows.into_iter().next())
        })?;
        done.ok_or_else(|| Datum::why_stale(conn, id, claim))
    }

    /// Fails a `publishing` datum whose outputs could not be moved (an
    /// output colliding with a directory in the egress, say): its output
    /// rows are deleted and the attempt fails like any other, requeued
    /// while tries remain.
    pub fn fail_publishing(
        conn: &mut DbConn,
        id: i64,
        claim: &Claim,
        reason: &str,
        now: impl Into<Clock>,
    ) -> ModelResult<Datum> {
        let clock = now.into();
        let ending = Ending {
            final_message: None,
            attempt_message: None,
            outcome: Outcome::PublishFailed,
            message: reason,
            output: None,
            exit_code: None,
            signal: None,
            stats: None,
            requeue: Requeue::IfTriesLeft,
        };
        let claim_owned = claim.clone();
        let ended = conn.write_transaction(|conn| {
            let ended = end_attempts(
                conn,
                DatumStatus::Publishing,
                |stmt| held_sql(stmt, id, &claim_owned, "= 'publishing'"),
                &ending,
                clock,
            )?;
            if !ended.is_empty() {
                with_conn!(conn, c => diesel::delete(
                    output_files::table
                        .filter(output_files::datum_id.eq(id))
                        .filter(output_files::attempt.eq(claim_owned.attempt)),
                )
                .execute(c))?;
            }
            Ok::<_, ModelError>(ended)
        })?;
        if ended.is_empty() {
            return Err(Datum::why_stale(conn, id, claim));
        }
        Datum::find(conn, id)
    }

    /// Marks a held datum done, publishing its outputs with `publish`
    /// between the two guarded writes (outside any transaction). For tests
    /// and tools; the server runs the phases itself so publishing happens
    /// off the database thread.
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
        let report = Report {
            output,
            ..Report::default()
        };
        match Datum::complete(conn, id, claim, &report, files, "file:///out/", now, 60_000)? {
            Completed::Done(datum) => Ok(datum),
            Completed::Publishing(datum, _) => match publish(&datum) {
                Ok(_) => Datum::finish_publishing(conn, id, claim, None, now),
                Err(err) => {
                    let reason = format!("cannot publish outputs: {err:#}");
                    Datum::fail_publishing(conn, id, claim, &reason, now)?;
                    Err(ModelError::Publish(err))
                }
            },
        }
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
        now: impl Into<Clock> + std::fmt::Debug,
    ) -> ModelResult<Datum> {
        let report = Report {
            output,
            ..Report::default()
        };
        Datum::fail(conn, id, claim, &report, error, now.into())
    }

    /// [`Datum::mark_error`] with the command's exit status.
    pub fn fail(
        conn: &mut DbConn,
        id: i64,
        claim: &Claim,
        report: &Report<'_>,
        error: &str,
        clock: Clock,
    ) -> ModelResult<Datum> {
        Datum::fail_held(conn, id, claim, report, error, clock, Requeue::IfTriesLeft)
    }

    /// [`Datum::fail`] without a retry, whatever tries are left: an
    /// `on_exit` rule (`fail_datum`, `fail_job`) matched the failure.
    pub fn fail_now(
        conn: &mut DbConn,
        id: i64,
        claim: &Claim,
        report: &Report<'_>,
        error: &str,
        clock: Clock,
    ) -> ModelResult<Datum> {
        Datum::fail_held(conn, id, claim, report, error, clock, Requeue::Never)
    }

    /// A failed attempt reported by its worker, requeued as `requeue` says.
    fn fail_held(
        conn: &mut DbConn,
        id: i64,
        claim: &Claim,
        report: &Report<'_>,
        error: &str,
        clock: Clock,
        requeue: Requeue,
    ) -> ModelResult<Datum> {
        let ending = Ending {
            final_message: None,
            attempt_message: None,
            outcome: Outcome::Error,
            message: error,
            output: Some(report.output),
            exit_code: report.exit_code,
            signal: report.signal,
            stats: report.stats,
            requeue,
        };
        Datum::end_held(conn, id, claim, &ending, clock)
    }

    /// `datum retry`: puts a datum that ended `error` or `canceled` back in
    /// its job's queue with a fresh budget of the job's `datum_tries`
    /// (its attempts stay on record; the next one numbers on). A job that
    /// already ended is reopened (`running` again, its `job_timeout`
    /// counted from `now`), and the answer says so: its workers must be
    /// started again. The job row is locked first, then the datum, the
    /// order of [`Job::stop`], so a retry and a finishing or stopping job
    /// never pass each other: the retried datum either makes the job
    /// unfinished or the retry sees the job ended and reopens it.
    #[tracing::instrument(level = "debug", skip(conn))]
    pub fn retry(conn: &mut DbConn, id: i64, now: Millis) -> ModelResult<Retried> {
        conn.write_transaction(|conn| {
            let datum = Datum::find(conn, id)?;
            if !matches!(datum.status, DatumStatus::Error | DatumStatus::Canceled) {
                return Err(ModelError::Conflict(format!(
                    "datum {id} is {}; only datums that ended error or canceled can be retried",
                    datum.status
                )));
            }
            let job_id = datum.job_id;
            // The lock: a no-op update of the job row.
            let job: super::Job = with_conn!(conn, c => diesel::update(jobs::table)
                .filter(jobs::id.eq(job_id))
                .set(jobs::status.eq(jobs::status))
                .returning(super::Job::as_returning())
                .get_result(c))?;
            let reopened = match job.status {
                crate::status::JobStatus::Running => false,
                crate::status::JobStatus::Ready => {
                    return Err(ModelError::Conflict(format!(
                        "job {} is still starting; retry datum {id} once it runs",
                        job.name
                    )));
                }
                _ => true,
            };
            if reopened {
                let deadline = job.spec().ok().and_then(|spec| spec.job_timeout).map(|t| {
                    now.saturating_add(i64::try_from(t.0.as_millis()).unwrap_or(i64::MAX))
                });
                with_conn!(conn, c => diesel::update(jobs::table)
                    .filter(jobs::id.eq(job_id))
                    .set((
                        jobs::status.eq(crate::status::JobStatus::Running),
                        jobs::finished_at.eq(None::<Millis>),
                        jobs::error_message.eq(None::<String>),
                        jobs::failed_datums.eq(None::<i64>),
                        jobs::deadline_at.eq(deadline),
                    ))
                    .execute(c))?;
            }
            let from = transition(&[datum.status], &[DatumStatus::Ready])?;
            let backend = conn.backend();
            let now_sql = Clock::At(now).sql(backend);
            let mut stmt = Stmt::new(backend);
            stmt.push(&format!(
                "UPDATE datums SET status = 'ready', ready_order = {order}, owner = NULL, \
                    max_tries = attempt - interrupted + {tries}, pod_failures = 0, \
                    finished_at = NULL, lease_expires_at = NULL, deadline_at = NULL, \
                    updated_at = {now_sql} \
                 WHERE id = {id} AND {from} RETURNING *",
                order = requeue_order_sql(&now_sql),
                tries = job.datum_tries,
            ));
            let rows: Vec<Datum> = stmt.load(conn)?;
            let datum = rows.into_iter().next().ok_or_else(|| {
                ModelError::Conflict(format!("datum {id} changed while it was being retried"))
            })?;
            let job = super::Job::find(conn, job_id)?;
            Ok(Retried {
                datum,
                job,
                reopened,
            })
        })
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
        now: impl Into<Clock> + std::fmt::Debug,
    ) -> ModelResult<Datum> {
        let ending = Ending {
            final_message: None,
            attempt_message: None,
            outcome: Outcome::Interrupted,
            message: reason,
            output: None,
            exit_code: None,
            signal: None,
            stats: None,
            requeue: Requeue::Always,
        };
        Datum::end_held(conn, id, claim, &ending, now.into())
    }

    /// Ends the held attempt `claim` of datum `id`, or explains why not.
    fn end_held(
        conn: &mut DbConn,
        id: i64,
        claim: &Claim,
        ending: &Ending<'_>,
        clock: Clock,
    ) -> ModelResult<Datum> {
        let ended = conn.write_transaction(|conn| {
            end_attempts(
                conn,
                DatumStatus::Running,
                |stmt| held_sql(stmt, id, claim, "= 'running'"),
                ending,
                clock,
            )
        })?;
        if ended.is_empty() {
            return Err(Datum::why_stale(conn, id, claim));
        }
        Datum::find(conn, id)
    }

    /// Explains a failed guarded write: the datum does not exist (404) or the
    /// claim is stale (409).
    pub fn why_stale(conn: &mut DbConn, id: i64, claim: &Claim) -> ModelError {
        match Datum::find(conn, id) {
            Err(err) => err,
            // A worker of another job must not learn about this datum.
            Ok(datum) if claim.scope.is_some_and(|job| job != datum.job_id) => {
                ModelError::NotFound(format!("datum {id}"))
            }
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
    pub fn expire_leases(conn: &mut DbConn, now: impl Into<Clock>) -> ModelResult<usize> {
        Datum::expire_running(
            conn,
            "lease_expires_at",
            Outcome::LeaseExpired,
            "lease expired: the worker stopped heartbeating",
            now.into(),
        )
    }

    /// Fails the current attempt of running datums past their
    /// `datum_timeout` deadline.
    pub fn expire_deadlines(conn: &mut DbConn, now: impl Into<Clock>) -> ModelResult<usize> {
        Datum::expire_running(
            conn,
            "deadline_at",
            Outcome::TimedOut,
            "datum timed out (datum_timeout)",
            now.into(),
        )
    }

    /// Fails the attempts of running datums whose `column` (a lease or a
    /// deadline) is before now: requeued while tries remain, else `error`.
    fn expire_running(
        conn: &mut DbConn,
        column: &'static str,
        outcome: Outcome,
        message: &str,
        clock: Clock,
    ) -> ModelResult<usize> {
        let ending = Ending {
            final_message: None,
            attempt_message: None,
            outcome,
            message,
            output: None,
            exit_code: None,
            signal: None,
            stats: None,
            requeue: Requeue::IfTriesLeft,
        };
        let now_sql = clock.sql(conn.backend());
        let ended = conn.write_transaction(|conn| {
            end_attempts(
                conn,
                DatumStatus::Running,
                |_| format!("status = 'running' AND {column} < {now_sql}"),
                &ending,
                clock,
            )
        })?;
        Ok(ended.len())
    }

    /// Datums left `publishing` by a publisher that died (their publishing
    /// lease ran out), with the outputs to move: the babysitter finishes
    /// them. At most `limit`.
    pub fn stale_publishing(
        conn: &mut DbConn,
        now: Millis,
        limit: i64,
    ) -> ModelResult<Vec<(Datum, Vec<OutputFile>)>> {
        let stale: Vec<Datum> = with_conn!(conn, c => datums::table
            .filter(datums::status.eq(DatumStatus::Publishing))
            .filter(datums::lease_expires_at.lt(now))
            .order(datums::id)
            .limit(limit)
            .select(Datum::as_select())
            .load(c))?;
        let mut found = Vec::with_capacity(stale.len());
        for datum in stale {
            let outputs = Datum::pending_outputs(conn, &datum)?;
            found.push((datum, outputs));
        }
        Ok(found)
    }

    /// Takes over a stale `publishing` datum: extends its publishing lease
    /// under the same claim, so one babysitter finishes it while others
    /// leave it alone. False if someone else got there first.
    pub fn take_over_publishing(
        conn: &mut DbConn,
        id: i64,
        claim: &Claim,
        now: Millis,
        publish_lease_ms: i64,
    ) -> ModelResult<bool> {
        let backend = conn.backend();
        let mut stmt = Stmt::new(backend);
        let guard = held_sql(&mut stmt, id, claim, "= 'publishing'");
        stmt.push(&format!(
            "UPDATE datums SET lease_expires_at = {} \
             WHERE {guard} AND lease_expires_at < {now}",
            now.saturating_add(publish_lease_ms)
        ));
        Ok(stmt.execute(conn)? == 1)
    }

    /// Releases datums held by workers the executor knows are gone, without
    /// waiting for their leases to run out. The attempt counts as a try: a
    /// command that kills its worker must not be retried forever.
    pub fn release_dead_owners(
        conn: &mut DbConn,
        dead: &DeadOwners,
        now: impl Into<Clock>,
    ) -> ModelResult<usize> {
        if dead.worker_ids.is_empty() {
            return Ok(0);
        }
        let clock = now.into();
        let ending = Ending {
            final_message: None,
            attempt_message: None,
            outcome: Outcome::WorkerLost,
            message: "the worker holding this datum exited",
            output: None,
            exit_code: None,
            signal: None,
            stats: None,
            requeue: Requeue::IfTriesLeft,
        };
        let mut total = 0;
        for owners in dead.worker_ids.chunks(INSERT_CHUNK) {
            let ended = conn.write_transaction(|conn| {
                end_attempts(
                    conn,
                    DatumStatus::Running,
                    |stmt| {
                        let list: Vec<String> = owners.iter().map(|o| stmt.text(Some(o))).collect();
                        format!(
                            "job_id = {} AND status = 'running' AND owner IN ({})",
                            dead.job_id,
                            list.join(", ")
                        )
                    },
                    &ending,
                    clock,
                )
            })?;
            total += ended.len();
        }
        Ok(total)
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
        now: impl Into<Clock>,
    ) -> ModelResult<usize> {
        let clock = now.into();
        let mut changed = 0;
        for failure in failures {
            // The message says what happens next, which depends on the
            // datum's count: the statement picks one of the two.
            let requeue_message = format!(
                "{} (the datum is retried; this does not use up a try, but {max_pod_failures} \
                 such failures fail it)",
                failure.message
            );
            let fail_message = format!(
                "{} (the datum's worker pods failed {max_pod_failures} times; giving up)",
                failure.message
            );
            let ending = Ending {
                outcome: Outcome::PodFailure,
                message: &requeue_message,
                final_message: Some(&fail_message),
                attempt_message: Some(&failure.message),
                output: None,
                exit_code: None,
                signal: None,
                stats: None,
                requeue: Requeue::PodFailure {
                    max: max_pod_failures,
                },
            };
            let ended = conn.write_transaction(|conn| {
                end_attempts(
                    conn,
                    DatumStatus::Running,
                    |stmt| {
                        let owner = stmt.text(Some(&failure.worker_id));
                        format!("job_id = {job_id} AND owner = {owner} AND status = 'running'")
                    },
                    &ending,
                    clock,
                )
            })?;
            let ended = ended.len();
            changed += ended;
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
            .filter(datums::status.eq(DatumStatus::Running))
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

    /// Which of `worker_ids` ever reserved a datum of the job: a worker
    /// that did and then exited crashed (or was killed) mid-job; one that
    /// did not could not start.
    pub fn workers_that_reserved(
        conn: &mut DbConn,
        job_id: i64,
        worker_ids: &[String],
    ) -> ModelResult<std::collections::HashSet<String>> {
        let mut found = std::collections::HashSet::new();
        for chunk in worker_ids.chunks(INSERT_CHUNK) {
            let rows: Vec<String> = with_conn!(conn, c => attempts::table
                .filter(attempts::job_id.eq(job_id))
                .filter(attempts::worker_id.eq_any(chunk))
                .select(attempts::worker_id)
                .distinct()
                .load(c))?;
            found.extend(rows);
        }
        Ok(found)
    }

    /// The datum's input files.
    pub fn input_files(conn: &mut DbConn, id: i64) -> ModelResult<Vec<InputFile>> {
        Ok(with_conn!(conn, c => input_files::table
            .filter(input_files::datum_id.eq(id))
            .order(input_files::id)
            .select(InputFile::as_select())
            .load(c))?)
    }

    /// The datum's output files: published ones once it is done, or the
    /// ones being published.
    pub fn output_files(conn: &mut DbConn, id: i64) -> ModelResult<Vec<OutputFile>> {
        Ok(with_conn!(conn, c => output_files::table
            .filter(output_files::datum_id.eq(id))
            .order(output_files::id)
            .select(OutputFile::as_select())
            .load(c))?)
    }

    /// Every attempt at the datum, oldest first.
    pub fn attempts(conn: &mut DbConn, id: i64) -> ModelResult<Vec<Attempt>> {
        Ok(with_conn!(conn, c => attempts::table
            .filter(attempts::datum_id.eq(id))
            .order(attempts::number)
            .select(Attempt::as_select())
            .load(c))?)
    }
}

/// The pieces of the reservation statement that vary: SQL expressions,
/// either literals or a prepared statement's parameters.
struct ReservationParams<'a> {
    /// `1` to look for held datums first, `0` not to.
    resume: &'a str,
    job: &'a str,
    worker: &'a str,
    max: &'a str,
    lease: &'a str,
    deadline: &'a str,
    now: &'a str,
}

/// One worker's reservation on SQLite (see [`Datum::reserve_many`]).
fn reservation_sql(p: &ReservationParams<'_>) -> String {
    fill(
        RESERVE_HELD_OR_NEXT,
        &[
            ("now", p.now),
            ("deadline", p.deadline),
            ("worker", p.worker),
            ("lease", p.lease),
            ("job", p.job),
            ("max", p.max),
            ("resume", p.resume),
            (
                "files",
                "(SELECT json_group_array(json_array(f.uri, f.local_path) ORDER BY f.id) \
                 FROM input_files f WHERE f.datum_id = datums.id)",
            ),
        ],
    )
}

/// The SQL expressions [`RESERVE_MANY_PG`] is built from: placeholders of
/// the prepared statement, or literals and binds.
struct ReserveManyParams<'a> {
    job: &'a str,
    /// `TEXT[]` of worker ids.
    workers: &'a str,
    /// `INTEGER[]` of how many datums each worker asks for.
    maxes: &'a str,
    /// `BOOLEAN[]`: whether each worker may hold datums already.
    resumes: &'a str,
    lease: &'a str,
    /// A `BIGINT`: `datum_timeout` in milliseconds, or NULL.
    timeout: &'a str,
    /// A `BIGINT`: where the fresh part of the queue starts, at the lowest.
    frontier: &'a str,
    now: &'a str,
}

/// The multi-worker reservation on PostgreSQL (see [`Datum::reserve_many`]).
fn reserve_many_sql(p: &ReserveManyParams<'_>) -> String {
    fill(
        RESERVE_MANY_PG,
        &[
            ("workers", p.workers),
            ("maxes", p.maxes),
            ("resumes", p.resumes),
            ("timeout", p.timeout),
            ("frontier", p.frontier),
            ("lease", p.lease),
            ("now", p.now),
            ("job", p.job),
        ],
    )
}

/// The text of the prepared reservation, [`PREPARED_RESERVE`].
fn prepared_reservation_sql() -> String {
    reserve_many_sql(&ReserveManyParams {
        job: "$1",
        workers: "$2",
        maxes: "$3",
        lease: "$4",
        timeout: "$5",
        frontier: "$6",
        resumes: "$7",
        now: &Clock::DB.sql(crate::db::Backend::Postgres),
    })
}

/// The name of the prepared reservation on PostgreSQL, and its parameter
/// types: job, workers, how many each, lease (ms), `datum_timeout` (ms,
/// or NULL), frontier, whether each worker may hold datums already.
const PREPARED_RESERVE: (&str, &str) = (
    "falconeri_reserve_many",
    "BIGINT, TEXT[], INTEGER[], BIGINT, BIGINT, BIGINT, BOOLEAN[]",
);

/// The prepared `done` of datums without outputs on PostgreSQL, and its
/// parameter types: datums, attempts, owners, outputs, exit codes,
/// signals, job scopes (one element per datum), `'running'`, and the
/// attempts' statistics (ten per datum, see `stats::stats_array`).
const PREPARED_DONE: (&str, &str) = (
    "falconeri_done_many",
    "BIGINT[], INTEGER[], TEXT[], TEXT[], INTEGER[], INTEGER[], BIGINT[], TEXT, BIGINT[]",
);

/// Marks datums done under their claims and closes their attempts, in one
/// statement (see [`Datum::complete_many`]). The rows are reached through
/// the primary key (`id = ANY(…)`), never by a join the planner might
/// answer with a scan of every running datum.
const DONE_MANY_PG: &str = "\
WITH done AS ( \
    UPDATE datums d SET status = 'done', finished_at = {now}, updated_at = {now}, \
        lease_expires_at = NULL, deadline_at = NULL, error_message = NULL, output = v.output \
    FROM unnest({ids}, {attempts}, {owners}, {outputs}, {scopes}) \
        AS v (id, attempt, owner, output, scope) \
    WHERE d.id = ANY({ids}) AND d.id = v.id AND d.status = {running} \
        AND d.attempt = v.attempt AND d.owner = v.owner \
        AND (v.scope IS NULL OR d.job_id = v.scope) \
    RETURNING d.*), \
closed AS ( \
    UPDATE attempts a SET outcome = 'done', finished_at = {now}, exit_code = e.exit_code, \
        signal = e.signal, {stats_set} \
    FROM done JOIN unnest({ids}, {exit_codes}, {signals}) WITH ORDINALITY \
        AS e (id, exit_code, signal, n) \
        ON e.id = done.id \
    WHERE a.datum_id = done.id AND a.number = done.attempt AND a.outcome IS NULL) \
SELECT * FROM done";

/// The SQL expressions [`DONE_MANY_PG`] is built from (arrays).
struct DoneManyParams<'a> {
    ids: &'a str,
    attempts: &'a str,
    owners: &'a str,
    outputs: &'a str,
    exit_codes: &'a str,
    signals: &'a str,
    scopes: &'a str,
    /// `'running'`, as a parameter: a generic plan then cannot answer the
    /// statement from the partial indexes on running datums (which keep an
    /// entry for every datum that ran since the last VACUUM) and goes
    /// through the primary key.
    running: &'a str,
    /// `BIGINT[]`: ten statistics per datum, in `ids` order.
    stats: &'a str,
    now: &'a str,
}

fn done_many_sql(p: &DoneManyParams<'_>) -> String {
    fill(
        DONE_MANY_PG,
        &[
            ("ids", p.ids),
            ("attempts", p.attempts),
            ("owners", p.owners),
            ("outputs", p.outputs),
            ("exit_codes", p.exit_codes),
            ("signals", p.signals),
            ("scopes", p.scopes),
            ("running", p.running),
            ("stats_set", &stats_from_array(p.stats, "e.n")),
            ("now", p.now),
        ],
    )
}

/// The text of the prepared `done`, [`PREPARED_DONE`].
fn prepared_done_sql() -> String {
    done_many_sql(&DoneManyParams {
        ids: "$1",
        attempts: "$2",
        owners: "$3",
        outputs: "$4",
        exit_codes: "$5",
        signals: "$6",
        scopes: "$7",
        running: "$8",
        stats: "$9",
        now: &Clock::DB.sql(crate::db::Backend::Postgres),
    })
}

/// A string as an SQL literal. `standard_conforming_strings` is on (the
/// default since PostgreSQL 9.1, and what diesel expects), so only quotes
/// need doubling; a NUL never gets here (requests with one are refused,
/// free text is escaped first).
fn sql_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The guard of every worker write as SQL: the datum `id` is in `status`
/// (an SQL predicate such as `= 'running'`), at the claim's attempt, owned
/// by the claim's worker.
fn held_sql(stmt: &mut Stmt, id: i64, claim: &Claim, status: &str) -> String {
    let owner = stmt.text(Some(&claim.worker_id));
    let scope = match claim.scope {
        Some(job_id) => format!(" AND job_id = {job_id}"),
        None => String::new(),
    };
    format!(
        "id = {id} AND status {status} AND attempt = {} AND owner = {owner}{scope}",
        claim.attempt
    )
}

/// How far below every fresh datum a requeued one goes in the queue
/// (`ready_order`): fresh datums stand at their `seq` (0 and up), requeued
/// ones at the time they were requeued minus this, so they come first, in
/// the order they were requeued. Fresh datums never come back to the fresh
/// part of the queue, so where a server last found fresh datums is a lower
/// bound of the fresh part (see [`Frontier`]).
pub(super) const REQUEUED_BELOW_FRESH: i64 = 1 << 62;

/// The `ready_order` of a datum requeued at `now` (SQL).
fn requeue_order_sql(now: &str) -> String {
    format!("({now} - {REQUEUED_BELOW_FRESH})")
}

/// Ends the attempts of the datums matching the SQL predicate `filter`
/// (built with the statement, so it may bind text): one guarded statement
/// moves each datum back to `ready` or to `error` as `ending.requeue`
/// says, and a second closes the attempts it ended. Must run inside a write
/// transaction. Returns the (datum, attempt) pairs ended.
fn end_attempts(
    conn: &mut DbConn,
    from: DatumStatus,
    filter: impl FnOnce(&mut Stmt) -> String,
    ending: &Ending<'_>,
    clock: Clock,
) -> ModelResult<Vec<(i64, i32)>> {
    let guard = transition(&[from], ending.requeue.targets())?;
    let backend = conn.backend();
    let mut stmt = Stmt::new(backend);
    let now = clock.sql(backend);
    let filter = filter(&mut stmt);
    let message = stmt.text(Some(&escape_nul(ending.message)));
    let output = match ending.output {
        Some(output) => stmt.text(Some(&escape_nul(output))),
        None => "output".to_owned(),
    };
    let final_message = match ending.final_message {
        Some(text) => stmt.text(Some(&escape_nul(text))),
        None => message.clone(),
    };
    let (requeue, interrupted, pod_failures) = match ending.requeue {
        Requeue::IfTriesLeft => ("attempt < max_tries + interrupted".to_owned(), "0", ""),
        Requeue::Always => ("1 = 1".to_owned(), "1", ""),
        Requeue::PodFailure { max } => (
            format!("pod_failures + 1 < {max}"),
            "1",
            "pod_failures = pod_failures + 1, ",
        ),
        Requeue::Never => ("1 = 0".to_owned(), "0", ""),
    };
    let requeue_order = requeue_order_sql(&now);
    // Every SET expression reads the row as it was, so `requeue` decides
    // each column by the same, old, counts.
    stmt.push(&format!(
        "UPDATE datums SET \
            status = CASE WHEN {requeue} THEN 'ready' ELSE 'error' END, \
            ready_order = CASE WHEN {requeue} THEN {requeue_order} END, \
            owner = CASE WHEN {requeue} THEN NULL ELSE owner END, \
            interrupted = interrupted + CASE WHEN {requeue} THEN {interrupted} ELSE 0 END, \
            finished_at = CASE WHEN {requeue} THEN finished_at ELSE {now} END, \
            error_message = CASE WHEN {requeue} THEN {message} ELSE {final_message} END, \
            output = {output}, {pod_failures}\
            updated_at = {now}, lease_expires_at = NULL, deadline_at = NULL \
         WHERE ({filter}) AND {guard} \
         RETURNING id, attempt"
    ));
    let rows: Vec<EndedRow> = stmt.load(conn)?;
    let ended: Vec<(i64, i32)> = rows.iter().map(|r| (r.id, r.attempt)).collect();
    close_attempts(
        conn,
        &ended,
        ending.outcome,
        Some(ending.attempt_message.unwrap_or(ending.message)),
        ending.exit_code,
        ending.signal,
        ending.stats,
        clock,
    )?;
    Ok(ended)
}

/// Closes the open attempts `(datum id, attempt number)` with `outcome`.
/// Runs after the statement that changed the datums, inside its
/// transaction: datum rows are always locked before attempt rows.
#[allow(clippy::too_many_arguments)]
pub(super) fn close_attempts(
    conn: &mut DbConn,
    ended: &[(i64, i32)],
    outcome: Outcome,
    message: Option<&str>,
    exit_code: Option<i32>,
    signal: Option<i32>,
    stats: Option<&AttemptStats>,
    clock: Clock,
) -> ModelResult<()> {
    if ended.is_empty() {
        return Ok(());
    }
    let backend = conn.backend();
    for chunk in ended.chunks(INSERT_CHUNK) {
        let mut stmt = Stmt::new(backend);
        let now = clock.sql(backend);
        let message = match message {
            Some(message) => stmt.text(Some(&escape_nul(message))),
            None => "NULL".to_owned(),
        };
        let exit_code = exit_code.map_or("NULL".to_owned(), |c| c.to_string());
        let signal = signal.map_or("NULL".to_owned(), |s| s.to_string());
        let stats = stats_assignments(stats);
        // The open attempt of a datum is the only one without an outcome,
        // so the datum ids alone find them; the numbers double-check.
        // A list of row values, not a chain of ORs: SQLite refuses an
        // expression nested 1,000 deep.
        let pairs: Vec<String> = chunk
            .iter()
            .map(|(id, number)| format!("({id}, {number})"))
            .collect();
        stmt.push(&format!(
            "UPDATE attempts SET outcome = '{}', finished_at = {now}, error_message = {message}, \
                exit_code = {exit_code}, signal = {signal}{stats} \
             WHERE outcome IS NULL AND datum_id IN ({}) \
               AND (datum_id, number) IN (VALUES {})",
            outcome.as_str(),
            int_list(chunk.iter().map(|(id, _)| *id)),
            pairs.join(", "),
        ));
        stmt.execute(conn)?;
    }
    Ok(())
}

/// Reserved datums from the rows of the reservation, in id order.
fn collect_reserved(rows: Vec<ReservedRow>) -> ModelResult<Vec<Reserved>> {
    let mut reserved = rows
        .into_iter()
        .map(|row| {
            Ok(Reserved {
                files: parse_files(row.files.as_deref())?,
                datum: row.datum,
            })
        })
        .collect::<ModelResult<Vec<_>>>()?;
    reserved.sort_by_key(|r| r.datum.id);
    Ok(reserved)
}

/// The input files of a reservation, from the JSON array of
/// `[uri, local_path]` pairs the statement aggregated.
fn parse_files(json: Option<&str>) -> ModelResult<Vec<InputFileResponse>> {
    let Some(json) = json else {
        return Ok(Vec::new());
    };
    let pairs: Vec<(String, String)> = serde_json::from_str(json)
        .map_err(|err| anyhow::anyhow!("unreadable input file list: {err}"))?;
    Ok(pairs
        .into_iter()
        .map(|(uri, local_path)| InputFileResponse { uri, local_path })
        .collect())
}

impl From<Datum> for DatumSummary {
    fn from(datum: Datum) -> DatumSummary {
        DatumSummary {
            id: datum.id,
            job_id: datum.job_id,
            status: datum.shown_status(),
            skipped_from: datum.skipped_from,
            skipped_from_job: datum.skipped_from_job,
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

impl From<Attempt> for AttemptResponse {
    fn from(attempt: Attempt) -> AttemptResponse {
        AttemptResponse {
            number: attempt.number,
            worker_id: attempt.worker_id,
            started_at: attempt.started_at,
            finished_at: attempt.finished_at,
            outcome: attempt.outcome,
            exit_code: attempt.exit_code,
            signal: attempt.signal,
            error_message: attempt.error_message,
            stats: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_are_checked_against_the_state_machine() {
        use DatumStatus::*;
        assert_eq!(
            transition(&[Error, Canceled], &[Ready]).unwrap(),
            "status IN ('error', 'canceled')"
        );
        assert_eq!(
            transition(&[Running], Requeue::IfTriesLeft.targets()).unwrap(),
            "status IN ('running')"
        );
        for (from, to) in [
            (Done, Ready),
            (Ready, Done),
            (Error, Running),
            (Ready, Error),
        ] {
            let err = transition(&[from], &[to]).unwrap_err().to_string();
            assert!(err.contains(&format!("{from} -> {to}")), "{err}");
        }
    }

    /// The prepared hot-path statements are fixed texts that bypass
    /// [`transition`]; the moves they write must be allowed too.
    #[test]
    fn the_hot_path_moves_are_allowed() {
        assert!(RESERVE_MANY_PG.contains("status = 'running'"));
        assert!(DatumStatus::Ready.can_move_to(DatumStatus::Running));
        assert!(DONE_MANY_PG.contains("status = 'done'"));
        assert!(DatumStatus::Running.can_move_to(DatumStatus::Done));
    }
}
