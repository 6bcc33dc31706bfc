//! Jobs: one run of a pipeline spec.

use diesel::{
    BoolExpressionMethods, ExpressionMethods, OptionalExtension, QueryDsl, RunQueryDsl,
    SelectableHelper,
    dsl::{count_star, exists},
    prelude::{Insertable, Queryable, Selectable},
    select,
};

use super::{
    INSERT_CHUNK, ModelError, ModelResult,
    datum::{close_attempts, transition},
    sql::Clock,
};
use crate::{
    Millis,
    api::{JobResponse, StatusCounts},
    db::{DbConn, schema::*, with_conn, write_tx},
    pipeline::PipelineSpec,
    plan::{DatumBatch, PlannedDatum, PlannedFile},
    status::{DatumStatus, JobStatus, Outcome},
};

/// A job row.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = jobs)]
pub struct Job {
    pub id: i64,
    pub name: String,
    pub pipeline_name: String,
    /// The validated spec, as JSON.
    pub spec: String,
    pub status: JobStatus,
    pub datum_count: i64,
    pub parallelism: i32,
    pub datum_tries: i32,
    pub datum_timeout_ms: Option<i64>,
    pub egress_uri: String,
    /// The bearer token this job's workers present; it works for this job only.
    pub worker_token: String,
    pub created_at: Millis,
    pub started_at: Option<Millis>,
    pub finished_at: Option<Millis>,
    pub deadline_at: Option<Millis>,
    pub error_message: Option<String>,
    pub retry_of: Option<i64>,
    /// Set while the job's datums are still being inserted (see
    /// [`Job::begin_planning`]); NULL once the plan is complete.
    pub planning_lease_until: Option<Millis>,
    /// The spec's `max_failed_datums` as a count of datums, set once the
    /// plan is complete; NULL without a limit.
    pub max_failed_datums: Option<i64>,
    /// How many datums had failed for good when the job ended; NULL while
    /// it runs.
    pub failed_datums: Option<i64>,
}

#[derive(Insertable)]
#[diesel(table_name = jobs)]
struct NewJob<'a> {
    name: &'a str,
    pipeline_name: &'a str,
    spec: &'a str,
    status: JobStatus,
    datum_count: i64,
    parallelism: i32,
    datum_tries: i32,
    datum_timeout_ms: Option<i64>,
    egress_uri: &'a str,
    worker_token: &'a str,
    created_at: Millis,
    retry_of: Option<i64>,
    planning_lease_until: Option<Millis>,
}

#[derive(Insertable)]
#[diesel(table_name = datums)]
struct NewDatum {
    job_id: i64,
    seq: i64,
    status: DatumStatus,
    attempt: i32,
    max_tries: i32,
    created_at: Millis,
    updated_at: Millis,
    /// The queue position: planning order.
    ready_order: Option<i64>,
}

#[derive(Insertable)]
#[diesel(table_name = input_files)]
struct NewInputFile<'a> {
    job_id: i64,
    datum_id: i64,
    uri: &'a str,
    local_path: &'a str,
}

/// What [`Job::begin_planning`] needs.
#[derive(Debug)]
pub struct NewJobParams<'a> {
    pub spec: &'a PipelineSpec,
    pub retry_of: Option<i64>,
    /// A fresh random token for the job's workers.
    pub worker_token: &'a str,
    /// The unique job name.
    pub name: &'a str,
}

/// The datums a retry runs again.
const RETRIED: [DatumStatus; 2] = [DatumStatus::Error, DatumStatus::Canceled];

fn clamp_i32(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn duration_ms(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl Job {
    /// The job's status.
    pub fn status(&self) -> JobStatus {
        self.status
    }

    /// The job's pipeline spec.
    pub fn spec(&self) -> anyhow::Result<PipelineSpec> {
        Ok(serde_json::from_str(&self.spec)?)
    }

    /// Inserts a job in state `ready` with all of `datums`: the whole plan
    /// at once, for plans already in memory (tests, small tools). Start-up
    /// streams instead, through [`Job::begin_planning`].
    pub fn create(
        conn: &mut DbConn,
        params: NewJobParams<'_>,
        datums: &[PlannedDatum],
        now: Millis,
    ) -> ModelResult<Job> {
        let lease = now.saturating_add(60_000);
        let job = Job::begin_planning(conn, params, now, lease)?;
        for chunk in datums.chunks(INSERT_CHUNK) {
            let batch = DatumBatch {
                continued: Vec::new(),
                datums: chunk.to_vec(),
            };
            Job::append_datums(conn, job.id, &batch, now, lease)?;
        }
        Job::finish_planning(conn, job.id)
    }

    /// Inserts a job in state `ready` with no datums yet, holding a
    /// planning lease until `lease_until`. Its datums follow in batches
    /// ([`Job::append_datums`], each renewing the lease) as its inputs are
    /// listed, so a job of a million datums never has its plan in memory
    /// and never holds one long write transaction (on SQLite that would
    /// stall every other writer). Nothing starts the job until
    /// [`Job::finish_planning`]; if the planner dies first, the lease runs
    /// out and [`Job::delete_abandoned_plans`] removes it.
    #[tracing::instrument(level = "debug", skip_all, fields(name = params.name))]
    pub fn begin_planning(
        conn: &mut DbConn,
        params: NewJobParams<'_>,
        now: Millis,
        lease_until: Millis,
    ) -> ModelResult<Job> {
        let spec_json = serde_json::to_string(params.spec).map_err(anyhow::Error::from)?;
        let new_job = NewJob {
            name: params.name,
            pipeline_name: &params.spec.pipeline.name,
            spec: &spec_json,
            status: JobStatus::Ready,
            datum_count: 0,
            parallelism: clamp_i32(params.spec.parallelism_spec.constant),
            datum_tries: clamp_i32(params.spec.datum_tries),
            datum_timeout_ms: params.spec.datum_timeout.as_ref().map(|d| duration_ms(d.0)),
            egress_uri: &params.spec.egress.uri,
            worker_token: params.worker_token,
            created_at: now,
            retry_of: params.retry_of,
            planning_lease_until: Some(lease_until),
        };
        Ok(with_conn!(conn, c => diesel::insert_into(jobs::table)
            .values(&new_job)
            .returning(Job::as_returning())
            .get_result(c))?)
    }

    /// Appends the next batch of a job's plan in one short transaction,
    /// renews its planning lease to `lease_until`, and returns the job's
    /// datum count so far. An empty batch only renews the lease. Fails with
    /// a conflict once the job is no longer `ready` and being planned
    /// (canceled meanwhile, or abandoned after its lease ran out).
    pub fn append_datums(
        conn: &mut DbConn,
        id: i64,
        batch: &DatumBatch,
        now: Millis,
        lease_until: Millis,
    ) -> ModelResult<i64> {
        let added = i64::try_from(batch.datums.len()).unwrap_or(i64::MAX);
        write_tx!(conn, c => {
            let renewed: Option<(i64, i32)> = diesel::update(jobs::table)
                .filter(jobs::id.eq(id))
                .filter(jobs::status.eq(JobStatus::Ready))
                .filter(jobs::planning_lease_until.is_not_null())
                .set((
                    jobs::planning_lease_until.eq(Some(lease_until)),
                    jobs::datum_count.eq(jobs::datum_count + added),
                ))
                .returning((jobs::datum_count, jobs::datum_tries))
                .get_result(c)
                .optional()?;
            let Some((count, max_tries)) = renewed else {
                return Err(ModelError::Conflict(format!(
                    "job {id} is no longer being planned (canceled, or its planning lease ran out)"
                )));
            };
            let first_seq = count - added;
            let mut files = Vec::new();
            if !batch.continued.is_empty() {
                let datum_id: i64 = datums::table
                    .filter(datums::job_id.eq(id))
                    .filter(datums::seq.eq(first_seq - 1))
                    .select(datums::id)
                    .first(c)
                    .optional()?
                    .ok_or_else(|| {
                        ModelError::Conflict(format!("job {id} has no datum to continue"))
                    })?;
                files.extend(batch.continued.iter().map(|file| NewInputFile {
                    job_id: id,
                    datum_id,
                    uri: &file.uri,
                    local_path: &file.local_path,
                }));
            }
            for (chunk_index, chunk) in batch.datums.chunks(INSERT_CHUNK).enumerate() {
                let chunk_seq = first_seq + i64::try_from(chunk_index * INSERT_CHUNK).unwrap_or(0);
                let rows: Vec<NewDatum> = (0..chunk.len())
                    .map(|i| NewDatum {
                        job_id: id,
                        seq: chunk_seq + i64::try_from(i).unwrap_or(0),
                        status: DatumStatus::Ready,
                        attempt: 0,
                        max_tries,
                        created_at: now,
                        updated_at: now,
                        ready_order: Some(chunk_seq + i64::try_from(i).unwrap_or(0)),
                    })
                    .collect();
                diesel::insert_into(datums::table).values(&rows).execute(c)?;
                let ids: Vec<i64> = datums::table
                    .filter(datums::job_id.eq(id))
                    .filter(datums::seq.ge(chunk_seq))
                    .order(datums::seq)
                    .select(datums::id)
                    .limit(i64::try_from(chunk.len()).unwrap_or(i64::MAX))
                    .load(c)?;
                for (datum_id, datum) in ids.into_iter().zip(chunk) {
                    files.extend(datum.files.iter().map(|file| NewInputFile {
                        job_id: id,
                        datum_id,
                        uri: &file.uri,
                        local_path: &file.local_path,
                    }));
                }
            }
            for file_chunk in files.chunks(INSERT_CHUNK) {
                diesel::insert_into(input_files::table).values(file_chunk).execute(c)?;
            }
            Ok::<_, ModelError>(count)
        })
    }

    /// Marks a job's plan complete, so it may start. The job is returned as
    /// it is: a job canceled while it was planned stays canceled.
    /// A percentage `max_failed_datums` becomes a count here, now that the
    /// datum count is known.
    pub fn finish_planning(conn: &mut DbConn, id: i64) -> ModelResult<Job> {
        let job = Job::find(conn, id)?;
        let max_failed = job
            .spec()
            .ok()
            .and_then(|spec| spec.max_failed_datums)
            .map(|limit| limit.limit(job.datum_count));
        let finished: Option<Job> = with_conn!(conn, c => diesel::update(jobs::table)
            .filter(jobs::id.eq(id))
            .filter(jobs::planning_lease_until.is_not_null())
            .set((
                jobs::planning_lease_until.eq(None::<Millis>),
                jobs::max_failed_datums.eq(max_failed),
            ))
            .returning(Job::as_returning())
            .get_result(c)
            .optional())?;
        finished.ok_or_else(|| ModelError::Conflict(format!("job {id} is no longer being planned")))
    }

    /// Deletes a job that is still being planned, with its datums and
    /// input files: its inputs could not be planned, and a half-planned job
    /// must never run. Returns false if it was not being planned.
    pub fn abandon_planning(conn: &mut DbConn, id: i64) -> ModelResult<bool> {
        write_tx!(conn, c => {
            let planning = jobs::table
                .filter(jobs::id.eq(id))
                .filter(jobs::planning_lease_until.is_not_null())
                .select(jobs::id)
                .first::<i64>(c)
                .optional()?
                .is_some();
            if planning {
                let datum_ids = datums::table.filter(datums::job_id.eq(id)).select(datums::id);
                diesel::delete(input_files::table.filter(input_files::datum_id.eq_any(datum_ids)))
                    .execute(c)?;
                diesel::delete(datums::table.filter(datums::job_id.eq(id))).execute(c)?;
                diesel::delete(jobs::table.filter(jobs::id.eq(id))).execute(c)?;
            }
            Ok::<_, ModelError>(planning)
        })
    }

    /// Deletes the jobs whose planning lease ran out before `now`: the
    /// falconerid planning them died or lost its database. Returns their
    /// names.
    pub fn delete_abandoned_plans(conn: &mut DbConn, now: Millis) -> ModelResult<Vec<String>> {
        let stale: Vec<(i64, String)> = with_conn!(conn, c => jobs::table
            .filter(jobs::planning_lease_until.lt(now))
            .select((jobs::id, jobs::name))
            .load(c))?;
        let mut deleted = Vec::new();
        for (id, name) in stale {
            if Job::abandon_planning(conn, id)? {
                deleted.push(name);
            }
        }
        Ok(deleted)
    }

    /// Moves a `ready` job to `running` once its workers were asked to start,
    /// and sets its deadline from `job_timeout`.
    pub fn mark_running(conn: &mut DbConn, id: i64, now: Millis) -> ModelResult<Job> {
        let job = Job::find(conn, id)?;
        let deadline = job
            .spec()
            .ok()
            .and_then(|spec| spec.job_timeout)
            .map(|timeout| now.saturating_add(duration_ms(timeout.0)));
        let started: Option<Job> = with_conn!(conn, c => diesel::update(jobs::table)
            .filter(jobs::id.eq(id))
            .filter(jobs::status.eq(JobStatus::Ready))
            .set((
                jobs::status.eq(JobStatus::Running),
                jobs::started_at.eq(Some(now)),
                jobs::deadline_at.eq(deadline),
            ))
            .returning(Job::as_returning())
            .get_result(c)
            .optional())?;
        match started {
            Some(job) => Ok(job),
            // Not `ready` any more (canceled meanwhile, say): as it is now.
            None => Job::find(conn, id),
        }
    }

    /// One job by id.
    pub fn find(conn: &mut DbConn, id: i64) -> ModelResult<Job> {
        with_conn!(conn, c => jobs::table
            .find(id)
            .select(Job::as_select())
            .first(c)
            .optional())?
        .ok_or_else(|| ModelError::NotFound(format!("job {id}")))
    }

    /// One job by its unique name.
    pub fn find_by_name(conn: &mut DbConn, name: &str) -> ModelResult<Job> {
        with_conn!(conn, c => jobs::table
            .filter(jobs::name.eq(name))
            .select(Job::as_select())
            .first(c)
            .optional())?
        .ok_or_else(|| ModelError::NotFound(format!("job {name:?}")))
    }

    /// The job whose workers hold `token`, if any.
    pub fn find_by_worker_token(conn: &mut DbConn, token: &str) -> ModelResult<Option<Job>> {
        Ok(with_conn!(conn, c => jobs::table
            .filter(jobs::worker_token.eq(token))
            .select(Job::as_select())
            .first(c)
            .optional())?)
    }

    /// The newest jobs first.
    pub fn list(conn: &mut DbConn, limit: i64) -> ModelResult<Vec<Job>> {
        Ok(with_conn!(conn, c => jobs::table
            .order(jobs::id.desc())
            .limit(limit)
            .select(Job::as_select())
            .load(c))?)
    }

    /// Every job in state `running`.
    pub fn list_running(conn: &mut DbConn) -> ModelResult<Vec<Job>> {
        Ok(with_conn!(conn, c => jobs::table
            .filter(jobs::status.eq(JobStatus::Running))
            .order(jobs::id)
            .select(Job::as_select())
            .load(c))?)
    }

    /// How many datums of each of the newest `limit` running jobs are in
    /// each state: one indexed GROUP BY over those jobs' datums (the
    /// `datums (job_id, status)` index answers it without reading a row),
    /// after a look-up of the jobs by their status index. For falconerid's
    /// `/metrics`, whose scrapes must cost at most this, whatever ran before.
    pub fn running_counts(
        conn: &mut DbConn,
        limit: i64,
    ) -> ModelResult<Vec<(String, StatusCounts)>> {
        let jobs: Vec<(i64, String)> = with_conn!(conn, c => jobs::table
            .filter(jobs::status.eq(JobStatus::Running))
            .order(jobs::id.desc())
            .limit(limit)
            .select((jobs::id, jobs::name))
            .load(c))?;
        let ids: Vec<i64> = jobs.iter().map(|(id, _)| *id).collect();
        let rows: Vec<(i64, String, i64)> = with_conn!(conn, c => datums::table
            .filter(datums::job_id.eq_any(&ids))
            .group_by((datums::job_id, datums::status))
            .select((datums::job_id, datums::status, count_star()))
            .load(c))?;
        let mut counts: std::collections::HashMap<i64, StatusCounts> =
            std::collections::HashMap::new();
        for (job_id, status, n) in rows {
            if let Ok(status) = status.parse::<DatumStatus>() {
                counts.entry(job_id).or_default().add(status, n);
            }
        }
        Ok(jobs
            .into_iter()
            .map(|(id, name)| (name, counts.remove(&id).unwrap_or_default()))
            .collect())
    }

    /// How many of the job's datums are in each state (one indexed GROUP BY).
    pub fn counts(conn: &mut DbConn, id: i64) -> ModelResult<StatusCounts> {
        let rows: Vec<(String, i64)> = with_conn!(conn, c => datums::table
            .filter(datums::job_id.eq(id))
            .group_by(datums::status)
            .select((datums::status, count_star()))
            .load(c))?;
        let mut counts = StatusCounts::default();
        for (status, n) in rows {
            if let Ok(status) = status.parse::<DatumStatus>() {
                counts.add(status, n);
            }
        }
        Ok(counts)
    }

    /// True if some datum of the job is ready or running.
    pub fn has_unfinished_datums(conn: &mut DbConn, id: i64) -> ModelResult<bool> {
        Ok(with_conn!(conn, c => select(exists(
            datums::table
                .filter(datums::job_id.eq(id))
                .filter(datums::status.eq_any(DatumStatus::UNFINISHED)),
        ))
        .get_result(c))?)
    }

    /// True if some datum of the job waits to run.
    pub fn has_ready_datums(conn: &mut DbConn, id: i64) -> ModelResult<bool> {
        Ok(with_conn!(conn, c => select(exists(
            datums::table
                .filter(datums::job_id.eq(id))
                .filter(datums::status.eq(DatumStatus::Ready)),
        ))
        .get_result(c))?)
    }

    /// Stops an unfinished job with `status` (canceled by a user, or error for
    /// a timeout): its ready and running datums become canceled. Returns the
    /// job, and whether this call was the one that stopped it.
    #[tracing::instrument(level = "debug", skip(conn))]
    pub fn stop(
        conn: &mut DbConn,
        id: i64,
        status: JobStatus,
        message: Option<&str>,
        now: Millis,
    ) -> ModelResult<(Job, bool)> {
        let stopped = conn.write_transaction(|conn| {
            // The conditional UPDATE locks the row and re-checks its state, so
            // two babysitters (or a user and a babysitter) can't both act.
            let n = with_conn!(conn, c => diesel::update(jobs::table)
                .filter(jobs::id.eq(id))
                .filter(jobs::status.eq_any([JobStatus::Ready, JobStatus::Running]))
                .set((
                    jobs::status.eq(status),
                    jobs::finished_at.eq(Some(now)),
                    jobs::error_message.eq(message),
                ))
                .execute(c))?;
            if n == 1 {
                transition(&DatumStatus::UNFINISHED, &[DatumStatus::Canceled])?;
                // Datums first, then their open attempts: the lock order of
                // every transition.
                let ended: Vec<(i64, i32)> = with_conn!(conn, c => diesel::update(datums::table)
                    .filter(datums::job_id.eq(id))
                    .filter(datums::status.eq_any(DatumStatus::UNFINISHED))
                    .set((
                        datums::status.eq(DatumStatus::Canceled),
                        datums::ready_order.eq(None::<i64>),
                        datums::finished_at.eq(Some(now)),
                        datums::updated_at.eq(now),
                        datums::lease_expires_at.eq(None::<i64>),
                        datums::deadline_at.eq(None::<i64>),
                    ))
                    .returning((datums::id, datums::attempt))
                    .get_results(c))?;
                close_attempts(
                    conn,
                    &ended,
                    Outcome::Canceled,
                    message,
                    None,
                    None,
                    None,
                    Clock::At(now),
                )?;
                let failed = Job::count_failed(conn, id)?;
                with_conn!(conn, c => diesel::update(jobs::table)
                    .filter(jobs::id.eq(id))
                    .set(jobs::failed_datums.eq(Some(failed)))
                    .execute(c))?;
            }
            Ok::<_, ModelError>(n == 1)
        })?;
        Ok((Job::find(conn, id)?, stopped))
    }

    /// If no datum of a running job can run any more, marks it `done` (or
    /// `error` if any datum failed for good). Costs two indexed EXISTS
    /// queries, whatever the job's size. It takes the write lock, so callers
    /// ask [`Job::has_unfinished_datums`] first, with a plain read: most
    /// passes find work left and should not queue for the lock (SQLite has
    /// one writer) to learn that. (falconerid must also delete the job's
    /// staging area in between, which is why the read is not in here.)
    #[tracing::instrument(level = "debug", skip(conn))]
    pub fn finish_if_complete(conn: &mut DbConn, id: i64, now: Millis) -> ModelResult<Option<Job>> {
        let finished = write_tx!(conn, c => {
            // Lock and re-check: only a running job can finish.
            let locked = diesel::update(jobs::table)
                .filter(jobs::id.eq(id))
                .filter(jobs::status.eq(JobStatus::Running))
                .set(jobs::status.eq(JobStatus::Running))
                .execute(c)?;
            if locked == 0 {
                return Ok::<_, ModelError>(false);
            }
            let unfinished: bool = select(exists(
                datums::table
                    .filter(datums::job_id.eq(id))
                    .filter(datums::status.eq_any(DatumStatus::UNFINISHED)),
            ))
            .get_result(c)?;
            if unfinished {
                return Ok(false);
            }
            // Counted only when some exist: the common, clean end costs
            // two EXISTS probes, whatever the job's size.
            let count = |c: &mut _, status: DatumStatus| -> diesel::QueryResult<i64> {
                let any: bool = select(exists(
                    datums::table
                        .filter(datums::job_id.eq(id))
                        .filter(datums::status.eq(status)),
                ))
                .get_result(c)?;
                if !any {
                    return Ok(0);
                }
                datums::table
                    .filter(datums::job_id.eq(id))
                    .filter(datums::status.eq(status))
                    .select(count_star())
                    .get_result(c)
            };
            let failed = count(c, DatumStatus::Error)?;
            // Canceled datums outlive their job's cancel only when a
            // `datum retry` reopened it for some of them.
            let canceled = count(c, DatumStatus::Canceled)?;
            let limit: Option<i64> = jobs::table
                .find(id)
                .select(jobs::max_failed_datums)
                .first(c)?;
            let (status, message) = JobStatus::when_ended(failed, limit, canceled);
            diesel::update(jobs::table)
                .filter(jobs::id.eq(id))
                .set((
                    jobs::status.eq(status),
                    jobs::finished_at.eq(Some(now)),
                    jobs::error_message.eq(message),
                    jobs::failed_datums.eq(Some(failed)),
                ))
                .execute(c)?;
            Ok(true)
        })?;
        if finished {
            Ok(Some(Job::find(conn, id)?))
        } else {
            Ok(None)
        }
    }

    /// How many of the job's datums failed for good (one indexed count).
    pub fn count_failed(conn: &mut DbConn, id: i64) -> ModelResult<i64> {
        Ok(with_conn!(conn, c => datums::table
            .filter(datums::job_id.eq(id))
            .filter(datums::status.eq(DatumStatus::Error))
            .select(count_star())
            .get_result(c))?)
    }

    /// Fails a running job whose failed datums went past its
    /// `max_failed_datums`, at once and the way `job_timeout` does (its
    /// unfinished datums are canceled): once the limit is crossed the job
    /// cannot end `done`, so running the rest would only waste the
    /// cluster. Returns the job if this call stopped it. A job without a
    /// limit is left alone (it runs every datum, then ends `error`).
    #[tracing::instrument(level = "debug", skip(conn))]
    pub fn fail_if_over_limit(conn: &mut DbConn, id: i64, now: Millis) -> ModelResult<Option<Job>> {
        let job = Job::find(conn, id)?;
        let Some(limit) = job.max_failed_datums else {
            return Ok(None);
        };
        if job.status != JobStatus::Running {
            return Ok(None);
        }
        let failed = Job::count_failed(conn, id)?;
        if failed <= limit {
            return Ok(None);
        }
        let message = format!(
            "{failed} datums failed, more than max_failed_datums allows ({limit}); the job was \
             stopped"
        );
        let (job, stopped) = Job::stop(conn, id, JobStatus::Error, Some(&message), now)?;
        Ok(stopped.then_some(job))
    }

    /// Jobs still `ready`, fully planned, that were created before
    /// `before`: their start was interrupted.
    pub fn list_ready_before(conn: &mut DbConn, before: Millis) -> ModelResult<Vec<Job>> {
        Ok(with_conn!(conn, c => jobs::table
            .filter(jobs::status.eq(JobStatus::Ready))
            .filter(jobs::planning_lease_until.is_null())
            .filter(jobs::created_at.lt(before))
            .select(Job::as_select())
            .load(c))?)
    }

    /// Running jobs whose `job_timeout` has passed.
    pub fn list_past_deadline(conn: &mut DbConn, now: Millis) -> ModelResult<Vec<Job>> {
        Ok(with_conn!(conn, c => jobs::table
            .filter(jobs::status.eq(JobStatus::Running))
            .filter(jobs::deadline_at.is_not_null().and(jobs::deadline_at.lt(now)))
            .select(Job::as_select())
            .load(c))?)
    }

    /// The input files of job `id`'s failed and canceled datums (a job that
    /// gave up, or was canceled, leaves work a retry should redo), in datum
    /// order, a page
    /// at a time: at most `limit` datums after datum id `after` (0 for the
    /// first page), and the id to pass as `after` for the next page (None
    /// once this page is the last). A retry of a million failed datums thus
    /// never loads them all at once.
    pub fn failed_datum_inputs(
        conn: &mut DbConn,
        id: i64,
        after: i64,
        limit: i64,
    ) -> ModelResult<(Vec<PlannedDatum>, Option<i64>)> {
        let ids: Vec<i64> = with_conn!(conn, c => datums::table
            .filter(datums::job_id.eq(id))
            .filter(datums::status.eq_any(RETRIED))
            .filter(datums::id.gt(after))
            .order(datums::id)
            .select(datums::id)
            .limit(limit)
            .load(c))?;
        let (Some(&first), Some(&last)) = (ids.first(), ids.last()) else {
            return Ok((Vec::new(), None));
        };
        let rows: Vec<(i64, String, String)> = with_conn!(conn, c => input_files::table
            .inner_join(datums::table)
            .filter(datums::job_id.eq(id))
            .filter(datums::status.eq_any(RETRIED))
            .filter(datums::id.between(first, last))
            .order((input_files::datum_id, input_files::id))
            .select((input_files::datum_id, input_files::uri, input_files::local_path))
            .load(c))?;
        let mut planned: Vec<PlannedDatum> = Vec::new();
        let mut current = None;
        for (datum_id, uri, local_path) in rows {
            if current != Some(datum_id) {
                planned.push(PlannedDatum { files: Vec::new() });
                current = Some(datum_id);
            }
            if let Some(datum) = planned.last_mut() {
                datum.files.push(PlannedFile { uri, local_path });
            }
        }
        let next = (i64::try_from(ids.len()).unwrap_or(i64::MAX) >= limit).then_some(last);
        Ok((planned, next))
    }
}

impl From<Job> for JobResponse {
    fn from(job: Job) -> JobResponse {
        let status = job.status();
        JobResponse {
            id: job.id,
            name: job.name,
            pipeline_name: job.pipeline_name,
            status,
            datum_count: job.datum_count,
            parallelism: job.parallelism,
            egress_uri: job.egress_uri,
            created_at: job.created_at,
            started_at: job.started_at,
            finished_at: job.finished_at,
            deadline_at: job.deadline_at,
            error_message: job.error_message,
            retry_of: job.retry_of,
            max_failed_datums: job.max_failed_datums,
            failed_datums: job.failed_datums,
        }
    }
}
