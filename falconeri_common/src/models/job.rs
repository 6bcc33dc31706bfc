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
    skipped::{SkippedDatum, SkippedRun, fold_runs, reserve_skipped_ids},
    sql::Clock,
    taken_key,
};
use crate::{
    Millis,
    api::{JobResponse, StatusCounts, VanishedDatum},
    db::{DbConn, schema::*, with_conn, write_tx},
    fingerprint::DatumKeys,
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
    /// Skips datums an earlier job of the pipeline computed.
    pub incremental: bool,
    /// Datums planned as skipped (stored `done` with `skipped_from`).
    pub skipped_count: i64,
    /// The earlier run an incremental job was compared with.
    pub previous_job_id: Option<i64>,
    /// Successful datums of `previous_job_id` without a datum of the same
    /// inputs here; set when an incremental job's planning ends.
    pub vanished_count: Option<i64>,
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
    incremental: bool,
    run_key: Option<&'a str>,
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
    fingerprint: Option<String>,
    input_key: Option<String>,
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

/// For each fingerprint of `$wanted` (a slice of `&str`) that has one: the
/// newest datum that ran and succeeded (`done`, not itself skipped) in an
/// earlier job (id below `$job`) of the pipeline `$pipeline`, as a map from
/// fingerprint to (datum id, job id). Per [`INSERT_CHUNK`] fingerprints,
/// one look-up through the partial index `datums_done_fingerprint` and one
/// of the candidates' jobs by primary key: nothing of the earlier jobs is
/// read but the matching rows. The statement names no other column of
/// `datums` an index starts with (the job and pipeline are checked after),
/// so neither database can prefer scanning an earlier job's datums. A
/// macro because it runs on the connection inside `write_tx!`, whose type
/// differs per backend.
macro_rules! find_matches {
    ($c:expr, $job:expr, $pipeline:expr, $wanted:expr) => {{
        let mut found: std::collections::HashMap<String, (i64, i64)> =
            std::collections::HashMap::new();
        for chunk in $wanted.chunks(INSERT_CHUNK) {
            let rows: Vec<(Option<String>, i64, i64)> = datums::table
                .filter(datums::fingerprint.eq_any(chunk))
                // Literal, so SQLite sees the partial index's own terms.
                .filter(diesel::dsl::sql::<diesel::sql_types::Bool>(
                    "datums.status = 'done' AND datums.skipped_from IS NULL",
                ))
                .select((datums::fingerprint, datums::id, datums::job_id))
                .load($c)?;
            let mut jobs: Vec<i64> = rows
                .iter()
                .map(|row| row.2)
                .filter(|job| *job < $job)
                .collect();
            jobs.sort_unstable();
            jobs.dedup();
            let same_pipeline: std::collections::HashSet<i64> = if jobs.is_empty() {
                std::collections::HashSet::new()
            } else {
                jobs::table
                    .filter(jobs::id.eq_any(&jobs))
                    .filter(jobs::pipeline_name.eq($pipeline))
                    .select(jobs::id)
                    .load::<i64>($c)?
                    .into_iter()
                    .collect()
            };
            for (fingerprint, datum, job) in rows {
                if let Some(fingerprint) = fingerprint
                    && same_pipeline.contains(&job)
                {
                    let newest = found.entry(fingerprint).or_insert((datum, job));
                    if datum > newest.0 {
                        *newest = (datum, job);
                    }
                }
            }
        }
        found
    }};
}

/// A failed datum to run again, with its fingerprint where it has one.
pub type RetriedDatum = (PlannedDatum, Option<DatumKeys>);

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
                datums: chunk.to_vec(),
                ..DatumBatch::default()
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
    pub fn begin_planning(
        conn: &mut DbConn,
        params: NewJobParams<'_>,
        now: Millis,
        lease_until: Millis,
    ) -> ModelResult<Job> {
        Job::begin_planning_keyed(conn, params, None, now, lease_until)
    }

    /// [`Job::begin_planning`] for a job that carries an idempotency key
    /// (`run_key`, unique among jobs): a second job with the same key is
    /// refused with a conflict at this INSERT, before anything is listed.
    /// A schedule keys its runs by tick, so a tick's run is made once even
    /// when a replica re-drives a tick whose taker died.
    #[tracing::instrument(level = "debug", skip_all, fields(name = params.name, run_key))]
    pub fn begin_planning_keyed(
        conn: &mut DbConn,
        params: NewJobParams<'_>,
        run_key: Option<&str>,
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
            incremental: params.spec.incremental,
            run_key,
        };
        with_conn!(conn, c => diesel::insert_into(jobs::table)
            .values(&new_job)
            .returning(Job::as_returning())
            .get_result(c))
        .map_err(|err| taken_key(err, run_key))
    }

    /// The job carrying the idempotency key `run_key`, if one exists (it
    /// may still be being planned: see `planning_lease_until`).
    pub fn find_by_run_key(conn: &mut DbConn, run_key: &str) -> ModelResult<Option<Job>> {
        Ok(with_conn!(conn, c => jobs::table
            .filter(jobs::run_key.eq(run_key))
            .select(Job::as_select())
            .first(c)
            .optional())?)
    }

    /// Appends the next batch of a job's plan in one short transaction,
    /// renews its planning lease to `lease_until`, and returns the job's
    /// datum count so far. An empty batch only renews the lease. Fails with
    /// a conflict once the job is no longer `ready` and being planned
    /// (canceled meanwhile, or abandoned after its lease ran out).
    ///
    /// For an incremental job, each datum of the batch whose fingerprint
    /// matches a datum that ran and succeeded in an earlier job of the same
    /// pipeline is inserted as skipped (see `find_matches!`), without
    /// its input files: the datum it points to has them.
    pub fn append_datums(
        conn: &mut DbConn,
        id: i64,
        batch: &DatumBatch,
        now: Millis,
        lease_until: Millis,
    ) -> ModelResult<i64> {
        let added = i64::try_from(batch.datums.len()).unwrap_or(i64::MAX);
        let key = |i: usize| batch.keys.get(i).and_then(Option::as_ref);
        write_tx!(conn, c => {
            let renewed: Option<(i64, i32, bool, String)> = diesel::update(jobs::table)
                .filter(jobs::id.eq(id))
                .filter(jobs::status.eq(JobStatus::Ready))
                .filter(jobs::planning_lease_until.is_not_null())
                .set((
                    jobs::planning_lease_until.eq(Some(lease_until)),
                    jobs::datum_count.eq(jobs::datum_count + added),
                ))
                .returning((
                    jobs::datum_count,
                    jobs::datum_tries,
                    jobs::incremental,
                    jobs::pipeline_name,
                ))
                .get_result(c)
                .optional()?;
            let Some((count, max_tries, incremental, pipeline)) = renewed else {
                return Err(ModelError::Conflict(format!(
                    "job {id} is no longer being planned (canceled, or its planning lease ran out)"
                )));
            };
            let known = |i: usize| match incremental {
                true => batch.known.get(i).copied().flatten(),
                false => None,
            };
            let matches = if incremental {
                // What the planner matched from the previous run needs no
                // look-up; the rest goes to the index.
                let wanted: Vec<&str> = batch
                    .keys
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| known(*i).is_none())
                    .filter_map(|(_, keys)| keys.as_ref())
                    .chain(
                        batch
                            .continued_keys
                            .iter()
                            .filter(|_| batch.continued_known.is_none()),
                    )
                    .map(|keys| keys.fingerprint.as_str())
                    .collect();
                find_matches!(c, id, &pipeline, &wanted)
            } else {
                std::collections::HashMap::new()
            };
            // A datum's match: the planner's, else the index's.
            let matched_at = |i: usize| {
                known(i).or_else(|| {
                    key(i).and_then(|keys| matches.get(keys.fingerprint.as_str()).copied())
                })
            };
            let first_seq = count - added;
            let mut files = Vec::new();
            // This batch's skipped datums, in seq order; they become runs.
            let mut skips: Vec<SkippedDatum> = Vec::new();
            if !batch.continued.is_empty() || batch.continued_keys.is_some() {
                let datum_id: i64 = datums::table
                    .filter(datums::job_id.eq(id))
                    .filter(datums::seq.eq(first_seq - 1))
                    .select(datums::id)
                    .first(c)
                    .optional()?
                    .ok_or_else(|| {
                        ModelError::Conflict(format!("job {id} has no datum to continue"))
                    })?;
                let matched = batch.continued_known.filter(|_| incremental).or_else(|| {
                    batch
                        .continued_keys
                        .as_ref()
                        .and_then(|keys| matches.get(keys.fingerprint.as_str()).copied())
                });
                if let Some((from, from_job)) = matched {
                    // A datum whose files spanned batches: it was inserted
                    // ready, and nothing could reserve it yet (the job is
                    // still being planned), so it becomes skipped: its row
                    // and files go, its id moves to a run.
                    diesel::delete(input_files::table.filter(input_files::datum_id.eq(datum_id)))
                        .execute(c)?;
                    diesel::delete(datums::table.find(datum_id)).execute(c)?;
                    skips.push(SkippedDatum {
                        id: datum_id,
                        job_id: id,
                        seq: first_seq - 1,
                        from,
                        from_job,
                        skipped_at: now,
                    });
                } else {
                    files.extend(batch.continued.iter().map(|file| NewInputFile {
                        job_id: id,
                        datum_id,
                        uri: &file.uri,
                        local_path: &file.local_path,
                    }));
                    if let Some(keys) = &batch.continued_keys {
                        diesel::update(datums::table.find(datum_id))
                            .set((
                                datums::fingerprint.eq(Some(&keys.fingerprint)),
                                datums::input_key.eq(Some(&keys.input_key)),
                            ))
                            .execute(c)?;
                    }
                }
            }
            let matched: Vec<Option<(i64, i64)>> =
                (0..batch.datums.len()).map(matched_at).collect();
            // Ids for the skipped ones in one block, so an unchanged
            // rerun's blocks follow each other and its runs join across
            // batches (unless another planner took a block in between,
            // which only splits a run).
            let skipped_here = matched.iter().filter(|m| m.is_some()).count();
            let skipped_here = i64::try_from(skipped_here).unwrap_or(0);
            let first_id = match skipped_here {
                0 => 0,
                n => reserve_skipped_ids!(c, n)?,
            };
            let mut ids = first_id..first_id + skipped_here;
            for (i, m) in matched.iter().enumerate() {
                // An id is taken only for a matched datum (taking one for
                // every datum lost the skips after the first that ran).
                let Some((from, from_job)) = m else { continue };
                let datum_id = ids.next().ok_or_else(|| {
                    ModelError::Conflict(format!("job {id}: fewer datum ids than skips"))
                })?;
                skips.push(SkippedDatum {
                    id: datum_id,
                    job_id: id,
                    seq: first_seq + i64::try_from(i).unwrap_or(0),
                    from: *from,
                    from_job: *from_job,
                    skipped_at: now,
                });
            }
            for (chunk_index, chunk) in batch.datums.chunks(INSERT_CHUNK).enumerate() {
                let offset = chunk_index * INSERT_CHUNK;
                let chunk_seq = first_seq + i64::try_from(offset).unwrap_or(0);
                let ran: Vec<(usize, &PlannedDatum)> = chunk
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| matched[offset + i].is_none())
                    .collect();
                if ran.is_empty() {
                    continue;
                }
                let rows: Vec<NewDatum> = ran
                    .iter()
                    .map(|&(i, _)| {
                        let seq = chunk_seq + i64::try_from(i).unwrap_or(0);
                        let keys = key(offset + i);
                        NewDatum {
                            job_id: id,
                            seq,
                            status: DatumStatus::Ready,
                            attempt: 0,
                            max_tries,
                            created_at: now,
                            updated_at: now,
                            ready_order: Some(seq),
                            fingerprint: keys.map(|keys| keys.fingerprint.clone()),
                            input_key: keys.map(|keys| keys.input_key.clone()),
                        }
                    })
                    .collect();
                diesel::insert_into(datums::table).values(&rows).execute(c)?;
                let chunk_end = chunk_seq + i64::try_from(chunk.len()).unwrap_or(0);
                let ids: Vec<i64> = datums::table
                    .filter(datums::job_id.eq(id))
                    .filter(datums::seq.ge(chunk_seq).and(datums::seq.lt(chunk_end)))
                    .order(datums::seq)
                    .select(datums::id)
                    .load(c)?;
                for (datum_id, (_, datum)) in ids.into_iter().zip(&ran) {
                    files.extend(datum.files.iter().map(|file| NewInputFile {
                        job_id: id,
                        datum_id,
                        uri: &file.uri,
                        local_path: &file.local_path,
                    }));
                }
            }
            let skipped = i64::try_from(skips.len()).unwrap_or(0);
            if !skips.is_empty() {
                // One row per run of skipped datums, the job's last run
                // extended where this batch continues it.
                let last: Option<SkippedRun> = skipped_runs::table
                    .filter(skipped_runs::job_id.eq(id))
                    .order(skipped_runs::first_seq.desc())
                    .select(SkippedRun::as_select())
                    .first(c)
                    .optional()?;
                let (grown, fresh) = fold_runs(last.as_ref(), &skips);
                if let (Some(len), Some(last)) = (grown, &last) {
                    diesel::update(skipped_runs::table.find(last.id))
                        .set(skipped_runs::len.eq(len))
                        .execute(c)?;
                }
                for chunk in fresh.chunks(INSERT_CHUNK) {
                    diesel::insert_into(skipped_runs::table).values(chunk).execute(c)?;
                }
            }
            for file_chunk in files.chunks(INSERT_CHUNK) {
                diesel::insert_into(input_files::table).values(file_chunk).execute(c)?;
            }
            if skipped > 0 {
                diesel::update(jobs::table.find(id))
                    .set(jobs::skipped_count.eq(jobs::skipped_count + skipped))
                    .execute(c)?;
            }
            Ok::<_, ModelError>(count)
        })
    }

    /// Marks a job's plan complete, so it may start. The job is returned as
    /// it is: a job canceled while it was planned stays canceled. An
    /// incremental job is first compared with the previous run of its
    /// pipeline ([`Job::previous_run`]): how many of that run's successful
    /// datums have no datum with the same inputs here (reads only, before
    /// the one write). A percentage `max_failed_datums` becomes a count here, now that the
    /// datum count is known.
    pub fn finish_planning(conn: &mut DbConn, id: i64) -> ModelResult<Job> {
        let job = Job::find(conn, id)?;
        let (previous, vanished) = match job.incremental {
            true => match Job::previous_run(conn, &job)? {
                Some(previous) => (
                    Some(previous),
                    Some(Job::count_vanished(conn, id, previous)?),
                ),
                None => (None, None),
            },
            false => (None, None),
        };
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
                jobs::previous_job_id.eq(previous),
                jobs::vanished_count.eq(vanished),
            ))
            .returning(Job::as_returning())
            .get_result(c)
            .optional())?;
        finished.ok_or_else(|| ModelError::Conflict(format!("job {id} is no longer being planned")))
    }

    /// The run of `job`'s pipeline before it that an incremental job is
    /// compared with for vanished inputs: the newest earlier job of the
    /// pipeline that was fully planned and is not a retry (a retry holds
    /// only the failed datums of its job, not a whole run).
    pub fn previous_run(conn: &mut DbConn, job: &Job) -> ModelResult<Option<i64>> {
        Ok(with_conn!(conn, c => jobs::table
            .filter(jobs::pipeline_name.eq(&job.pipeline_name))
            .filter(jobs::id.lt(job.id))
            .filter(jobs::planning_lease_until.is_null())
            .filter(jobs::retry_of.is_null())
            .order(jobs::id.desc())
            .select(jobs::id)
            .first(c)
            .optional())?)
    }

    /// How many successful datums of `previous` (ran or skipped: both have
    /// outputs) have no datum with the same input key in job `id`. The
    /// stretches of `previous` that `id`'s runs of skipped datums point at
    /// are passed over whole; only the rest is read (see
    /// `skipped::vanished`), so an unchanged rerun costs a few statements.
    pub fn count_vanished(conn: &mut DbConn, id: i64, previous: i64) -> ModelResult<i64> {
        const PAGE: i64 = 10_000;
        let mut count = 0;
        let mut after = 0;
        loop {
            let page = super::skipped::vanished(conn, id, previous, after, PAGE)?;
            count += i64::try_from(page.len()).unwrap_or(0);
            match page.last() {
                Some(last) if i64::try_from(page.len()).unwrap_or(0) >= PAGE => after = last.id,
                _ => return Ok(count),
            }
        }
    }

    /// A page of job `id`'s vanished datums (see [`Job::count_vanished`]):
    /// those of its previous run with an id above `after`, at most `limit`,
    /// each with the first few input files and outputs of the datum that
    /// ran it, and the `after` of the next page (None on the last). Empty
    /// for a job that is not incremental or had no previous run.
    pub fn vanished(
        conn: &mut DbConn,
        id: i64,
        after: i64,
        limit: i64,
    ) -> ModelResult<(Vec<VanishedDatum>, Option<i64>)> {
        const SHOWN: i64 = 5;
        let job = Job::find(conn, id)?;
        let Some(previous) = job.previous_job_id else {
            return Ok((Vec::new(), None));
        };
        let rows = super::skipped::vanished(conn, id, previous, after, limit)?;
        let next = (i64::try_from(rows.len()).unwrap_or(i64::MAX) >= limit)
            .then(|| rows.last().map(|row| row.id))
            .flatten();
        let mut vanished = Vec::with_capacity(rows.len());
        for row in rows {
            let (datum_id, ran_as) = (row.id, row.ran_as);
            let (inputs, input_count, outputs, output_count) = with_conn!(conn, c => {
                let inputs: Vec<String> = input_files::table
                    .filter(input_files::datum_id.eq(ran_as))
                    .order(input_files::id)
                    .limit(SHOWN)
                    .select(input_files::uri)
                    .load(c)?;
                let input_count: i64 = input_files::table
                    .filter(input_files::datum_id.eq(ran_as))
                    .select(count_star())
                    .first(c)?;
                let outputs: Vec<String> = output_files::table
                    .filter(output_files::datum_id.eq(ran_as))
                    .order(output_files::id)
                    .limit(SHOWN)
                    .select(output_files::uri)
                    .load(c)?;
                let output_count: i64 = output_files::table
                    .filter(output_files::datum_id.eq(ran_as))
                    .select(count_star())
                    .first(c)?;
                Ok::<_, diesel::result::Error>((inputs, input_count, outputs, output_count))
            })?;
            vanished.push(VanishedDatum {
                datum_id,
                job_id: previous,
                ran_as_datum_id: ran_as,
                ran_in_job_id: row.ran_in,
                inputs,
                input_count,
                outputs,
                output_count,
            });
        }
        Ok((vanished, next))
    }

    /// Ends a fully planned `ready` job with nothing to run (an incremental
    /// job whose every datum was skipped) as `done`, without workers.
    /// Returns the job as it is now (a canceled one stays canceled).
    pub fn finish_without_workers(conn: &mut DbConn, id: i64, now: Millis) -> ModelResult<Job> {
        let runnable = Job::has_ready_datums(conn, id)?;
        if !runnable {
            with_conn!(conn, c => diesel::update(jobs::table)
                .filter(jobs::id.eq(id))
                .filter(jobs::status.eq(JobStatus::Ready))
                .filter(jobs::planning_lease_until.is_null())
                .set((
                    jobs::status.eq(JobStatus::Done),
                    jobs::started_at.eq(Some(now)),
                    jobs::finished_at.eq(Some(now)),
                ))
                .execute(c))?;
        }
        Job::find(conn, id)
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
                diesel::delete(skipped_runs::table.filter(skipped_runs::job_id.eq(id)))
                    .execute(c)?;
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
        let jobs: Vec<(i64, String, i64)> = with_conn!(conn, c => jobs::table
            .filter(jobs::status.eq(JobStatus::Running))
            .order(jobs::id.desc())
            .limit(limit)
            .select((jobs::id, jobs::name, jobs::skipped_count))
            .load(c))?;
        let ids: Vec<i64> = jobs.iter().map(|(id, _, _)| *id).collect();
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
            .map(|(id, name, skipped)| {
                let mut counts = counts.remove(&id).unwrap_or_default();
                counts.move_skipped(skipped);
                (name, counts)
            })
            .collect())
    }

    /// How many of the job's datums are in each state, on one snapshot.
    pub fn counts(conn: &mut DbConn, id: i64) -> ModelResult<StatusCounts> {
        // Counted without reading the largest group of a big job: see
        // `models::counts`.
        let mut counts = StatusCounts::default();
        if let Some((by_status, skipped)) = super::counts::job_counts(conn, id)? {
            for (status, n) in super::counts::stored().iter().zip(by_status) {
                counts.add(*status, n);
            }
            counts.move_skipped(skipped);
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
        let (datums, next) = Job::failed_datums(conn, id, after, limit)?;
        Ok((datums.into_iter().map(|(datum, _)| datum).collect(), next))
    }

    /// [`Job::failed_datum_inputs`] with each datum's fingerprint, which a
    /// retry copies: the same spec and the same files make the same result.
    pub fn failed_datums(
        conn: &mut DbConn,
        id: i64,
        after: i64,
        limit: i64,
    ) -> ModelResult<(Vec<RetriedDatum>, Option<i64>)> {
        let found: Vec<(i64, Option<String>, Option<String>)> = with_conn!(conn, c => datums::table
            .filter(datums::job_id.eq(id))
            .filter(datums::status.eq_any(RETRIED))
            .filter(datums::id.gt(after))
            .order(datums::id)
            .select((datums::id, datums::fingerprint, datums::input_key))
            .limit(limit)
            .load(c))?;
        let ids: Vec<i64> = found.iter().map(|row| row.0).collect();
        let (Some(&first), Some(&last)) = (ids.first(), ids.last()) else {
            return Ok((Vec::new(), None));
        };
        let mut keys = found.into_iter().map(|(datum_id, fingerprint, input_key)| {
            let keys = fingerprint
                .zip(input_key)
                .map(|(fingerprint, input_key)| DatumKeys {
                    fingerprint,
                    input_key,
                });
            (datum_id, keys)
        });
        let rows: Vec<(i64, String, String)> = with_conn!(conn, c => input_files::table
            .inner_join(datums::table)
            .filter(datums::job_id.eq(id))
            .filter(datums::status.eq_any(RETRIED))
            .filter(datums::id.between(first, last))
            .order((input_files::datum_id, input_files::id))
            .select((input_files::datum_id, input_files::uri, input_files::local_path))
            .load(c))?;
        let mut planned: Vec<(PlannedDatum, Option<DatumKeys>)> = Vec::new();
        let mut current = None;
        for (datum_id, uri, local_path) in rows {
            if current != Some(datum_id) {
                // Both lists are in datum order; a datum without files
                // (none is planned so) has its keys passed over.
                let datum_keys = keys
                    .by_ref()
                    .find(|(id, _)| *id == datum_id)
                    .and_then(|(_, keys)| keys);
                planned.push((PlannedDatum { files: Vec::new() }, datum_keys));
                current = Some(datum_id);
            }
            if let Some((datum, _)) = planned.last_mut() {
                datum.files.push(PlannedFile {
                    uri,
                    local_path,
                    identity: String::new(),
                });
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
            incremental: job.incremental,
            previous_job_id: job.previous_job_id,
            vanished_count: job.vanished_count,
        }
    }
}
