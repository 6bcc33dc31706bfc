//! Skipped datums of incremental jobs, stored as runs.
//!
//! A datum an incremental job skips (its fingerprint matched a datum that
//! ran and succeeded in an earlier job of the pipeline) has no row in
//! `datums`: a run of skipped datums with consecutive seqs that point at
//! datums with consecutive ids of one earlier job is one row of
//! `skipped_runs` (see its migration). An unchanged rerun of 100,000 files
//! is thus a handful of rows, not 100,000 inserts with their indexes, which
//! is what made deciding that nothing must run cost 13–15 times the
//! listing (guide, "Incremental runs").
//!
//! A skipped datum keeps a datum id: each planning batch takes a block of
//! ids from a range of their own (2^52 up, [`reserve_skipped_ids!`]), so no
//! row of `datums` will ever have one of them, and `datum describe ID`, `datum list` and the dashboard find it here
//! ([`Datum::find`] falls back to [`SkippedRun::holding`]). Everything is
//! read a run at a time, so a page of skipped datums costs the same at a
//! million datums as at ten.

use diesel::{
    BoolExpressionMethods, ExpressionMethods, OptionalExtension, QueryDsl, RunQueryDsl,
    SelectableHelper,
    prelude::{Insertable, Queryable, Selectable},
};

use super::{Datum, ModelResult};
use crate::{
    Millis,
    db::{DbConn, schema::*, with_conn},
    status::DatumStatus,
};

/// One run of skipped datums: seqs `first_seq ..` and ids `first_id ..` of
/// job `job_id`, `len` of them, reusing the datums `from_first_id ..` of
/// job `from_job_id`.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = skipped_runs)]
pub struct SkippedRun {
    #[diesel(skip_insertion)]
    pub id: i64,
    pub job_id: i64,
    pub first_seq: i64,
    pub first_id: i64,
    pub len: i64,
    pub from_job_id: i64,
    pub from_first_id: i64,
    pub skipped_at: Millis,
}

/// One skipped datum, as a run holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SkippedDatum {
    pub id: i64,
    pub job_id: i64,
    pub seq: i64,
    /// The datum that ran in its stead, and its job.
    pub from: i64,
    pub from_job: i64,
    pub skipped_at: Millis,
}

/// The first id skipped datums get (2^52): far above any id the `datums`
/// sequence will reach, so no row ever has one of them.
pub const FIRST_SKIPPED_ID: i64 = 1 << 52;

/// The end of that range (2^53, excluded): ids up to it are exact as
/// JavaScript numbers, which is how the dashboard reads them.
pub const SKIPPED_ID_END: i64 = 1 << 53;

/// Takes a block of `$n` (an `i64` above zero) consecutive datum ids for
/// skipped datums on the connection `$c` of a write transaction: one
/// `UPDATE … RETURNING` of the counter `skipped_datum_ids`, whatever `$n`.
/// Evaluates to `Result<i64, ModelError>`, the block's first id.
///
/// Why a counter of its own and not the `datums` sequence, which skipped
/// datums took their ids from before: a block from the sequence was one
/// `nextval` per id (about 8 µs on PostgreSQL: the sequence's lock and a
/// WAL record every 32 values), 0.8 s of deciding an unchanged rerun of
/// 100,000 files, most of what kept PostgreSQL above issue 11's target.
/// `CACHE n` on the sequence would have made `nextval` cheap but handed
/// each connection its own stretch, so row ids would no longer follow
/// insertion order and a batch's ids would rarely be consecutive (runs
/// split at every batch). The counter's row lock, held until the batch
/// commits, keeps two planners' blocks apart (several falconerid replicas
/// on one database included); SQLite's IMMEDIATE transaction does the
/// same there. A block taken by a batch that rolls back is lost, which
/// costs nothing but ids.
macro_rules! reserve_skipped_ids {
    ($c:expr, $n:expr) => {{
        let n: i64 = $n;
        let end: Option<i64> = ::diesel::update(
            $crate::db::schema::skipped_datum_ids::table
                .filter($crate::db::schema::skipped_datum_ids::id.eq(1))
                .filter(
                    $crate::db::schema::skipped_datum_ids::next_id
                        .le($crate::models::skipped::SKIPPED_ID_END - n),
                ),
        )
        .set(
            $crate::db::schema::skipped_datum_ids::next_id
                .eq($crate::db::schema::skipped_datum_ids::next_id + n),
        )
        .returning($crate::db::schema::skipped_datum_ids::next_id)
        .get_result::<i64>($c)
        .optional()?;
        end.map(|end| end - n).ok_or_else(|| {
            $crate::models::ModelError::Conflict(format!(
                "no {n} datum ids left for skipped datums below 2^53"
            ))
        })
    }};
}
pub(crate) use reserve_skipped_ids;

/// Folds `skipped` (one job's skipped datums, in seq order, each with its
/// id) into runs: `last`, the job's last run so far, is extended where
/// the first ones continue it (same job pointed at, and seq, id and
/// pointer each one more). Returns the new length of `last` if it grew,
/// and the new runs to insert. Pure, so its rules have unit tests.
pub(crate) fn fold_runs(
    last: Option<&SkippedRun>,
    skipped: &[SkippedDatum],
) -> (Option<i64>, Vec<SkippedRun>) {
    let continues = |run: &SkippedRun, d: &SkippedDatum| {
        run.job_id == d.job_id
            && run.from_job_id == d.from_job
            && run.first_seq + run.len == d.seq
            && run.first_id + run.len == d.id
            && run.from_first_id + run.len == d.from
    };
    let mut grown = last.cloned();
    let mut fresh: Vec<SkippedRun> = Vec::new();
    for d in skipped {
        if let Some(run) = fresh.last_mut() {
            if continues(run, d) {
                run.len += 1;
                continue;
            }
        } else if let Some(run) = grown.as_mut()
            && continues(run, d)
        {
            run.len += 1;
            continue;
        }
        fresh.push(SkippedRun {
            id: 0,
            job_id: d.job_id,
            first_seq: d.seq,
            first_id: d.id,
            len: 1,
            from_job_id: d.from_job,
            from_first_id: d.from,
            skipped_at: d.skipped_at,
        });
    }
    let grew = match (last, grown) {
        (Some(before), Some(after)) if after.len != before.len => Some(after.len),
        _ => None,
    };
    (grew, fresh)
}

impl SkippedRun {
    /// The last datum id of the run, inclusive.
    pub fn last_id(&self) -> i64 {
        self.first_id + self.len - 1
    }

    /// The run's datum at offset `i` (below `len`).
    pub fn datum(&self, i: i64) -> SkippedDatum {
        SkippedDatum {
            id: self.first_id + i,
            job_id: self.job_id,
            seq: self.first_seq + i,
            from: self.from_first_id + i,
            from_job: self.from_job_id,
            skipped_at: self.skipped_at,
        }
    }

    /// The run's datums with ids in `from ..= to`.
    pub fn datums_between(&self, from: i64, to: i64) -> impl Iterator<Item = SkippedDatum> + '_ {
        let first = (from - self.first_id).max(0);
        let last = (to - self.first_id).min(self.len - 1);
        (first..=last).map(|i| self.datum(i))
    }

    /// The run holding the skipped datum `id`, if any: one probe of
    /// `skipped_runs_first_id`.
    pub fn holding(conn: &mut DbConn, id: i64) -> ModelResult<Option<SkippedRun>> {
        let run: Option<SkippedRun> = with_conn!(conn, c => skipped_runs::table
            .filter(skipped_runs::first_id.le(id))
            .order(skipped_runs::first_id.desc())
            .select(SkippedRun::as_select())
            .first(c)
            .optional())?;
        Ok(run.filter(|run| id <= run.last_id()))
    }

    /// Job `job_id`'s runs holding a datum id above `after`, in id order,
    /// at most `limit` of them (enough for `limit` datums).
    pub fn page_by_id(
        conn: &mut DbConn,
        job_id: i64,
        after: i64,
        limit: i64,
    ) -> ModelResult<Vec<SkippedRun>> {
        // The run holding `after` starts at or below it; every later one
        // starts above it.
        let holding: Option<SkippedRun> = with_conn!(conn, c => skipped_runs::table
            .filter(skipped_runs::job_id.eq(job_id))
            .filter(skipped_runs::first_id.le(after))
            .order(skipped_runs::first_id.desc())
            .select(SkippedRun::as_select())
            .first(c)
            .optional())?;
        let mut runs: Vec<SkippedRun> = holding
            .filter(|run| run.last_id() > after)
            .into_iter()
            .collect();
        let later: Vec<SkippedRun> = with_conn!(conn, c => skipped_runs::table
            .filter(skipped_runs::job_id.eq(job_id))
            .filter(skipped_runs::first_id.gt(after))
            .order(skipped_runs::first_id)
            .limit(limit)
            .select(SkippedRun::as_select())
            .load(c))?;
        runs.extend(later);
        Ok(runs)
    }

    /// Job `job_id`'s runs in planning order, from the one starting after
    /// seq `after_seq`, at most `limit`.
    pub fn page_by_seq(
        conn: &mut DbConn,
        job_id: i64,
        after_seq: i64,
        limit: i64,
    ) -> ModelResult<Vec<SkippedRun>> {
        Ok(with_conn!(conn, c => skipped_runs::table
            .filter(skipped_runs::job_id.eq(job_id))
            .filter(skipped_runs::first_seq.gt(after_seq))
            .order(skipped_runs::first_seq)
            .limit(limit)
            .select(SkippedRun::as_select())
            .load(c))?)
    }

    /// Job `job_id`'s runs pointing at datums `from ..= to` (ran in job
    /// `from_job`): `skipped_runs_job_from`, bounded by `limit`.
    pub fn pointing_into(
        conn: &mut DbConn,
        job_id: i64,
        from: i64,
        to: i64,
        limit: i64,
    ) -> ModelResult<Vec<SkippedRun>> {
        // A run starting below `from` may still reach into it: the one
        // starting last below it (runs of one job point at disjoint
        // datums, one datum matching one fingerprint per job).
        let below: Option<SkippedRun> = with_conn!(conn, c => skipped_runs::table
            .filter(skipped_runs::job_id.eq(job_id))
            .filter(skipped_runs::from_first_id.lt(from))
            .order(skipped_runs::from_first_id.desc())
            .select(SkippedRun::as_select())
            .first(c)
            .optional())?;
        let mut runs: Vec<SkippedRun> = below
            .filter(|run| run.from_first_id + run.len > from)
            .into_iter()
            .collect();
        let inside: Vec<SkippedRun> = with_conn!(conn, c => skipped_runs::table
            .filter(skipped_runs::job_id.eq(job_id))
            .filter(
                skipped_runs::from_first_id
                    .ge(from)
                    .and(skipped_runs::from_first_id.le(to)),
            )
            .order(skipped_runs::from_first_id)
            .limit(limit)
            .select(SkippedRun::as_select())
            .load(c))?;
        runs.extend(inside);
        Ok(runs)
    }

    /// How many runs job `job_id` has (tests and the benchmark: O(runs)).
    pub fn count(conn: &mut DbConn, job_id: i64) -> ModelResult<i64> {
        Ok(with_conn!(conn, c => skipped_runs::table
            .filter(skipped_runs::job_id.eq(job_id))
            .count()
            .get_result(c))?)
    }
}

impl SkippedDatum {
    /// The datum as [`Datum`] shows it: `done` with `skipped_from` set (the
    /// API calls it `skipped`), and the fingerprint and input key of the
    /// datum it reuses, which are its own.
    pub fn to_datum(self, max_tries: i32, keys: Option<(Option<String>, Option<String>)>) -> Datum {
        let (fingerprint, input_key) = keys.unwrap_or((None, None));
        Datum {
            id: self.id,
            job_id: self.job_id,
            seq: self.seq,
            status: DatumStatus::Done,
            attempt: 0,
            interrupted: 0,
            max_tries,
            owner: None,
            lease_expires_at: None,
            deadline_at: None,
            started_at: None,
            finished_at: Some(self.skipped_at),
            output: None,
            error_message: None,
            created_at: self.skipped_at,
            updated_at: self.skipped_at,
            pod_failures: 0,
            ready_order: None,
            fingerprint,
            input_key,
            skipped_from: Some(self.from),
            skipped_from_job: Some(self.from_job),
        }
    }
}

/// Skipped datums as [`Datum`]s, with the keys of the datums they reuse
/// (one range read per run) and their job's `datum_tries`.
pub(crate) fn skipped_datums(
    conn: &mut DbConn,
    skipped: &[SkippedDatum],
) -> ModelResult<Vec<Datum>> {
    let mut out = Vec::with_capacity(skipped.len());
    let mut tries = std::collections::HashMap::new();
    let mut i = 0;
    while i < skipped.len() {
        // A stretch of consecutive pointers into one job: one read.
        let mut j = i + 1;
        while j < skipped.len()
            && skipped[j].from == skipped[j - 1].from + 1
            && skipped[j].from_job == skipped[i].from_job
        {
            j += 1;
        }
        let (from, to) = (skipped[i].from, skipped[j - 1].from);
        let keys: Vec<(i64, Option<String>, Option<String>)> = with_conn!(conn, c => datums::table
                .filter(datums::id.ge(from).and(datums::id.le(to)))
                .order(datums::id)
                .select((datums::id, datums::fingerprint, datums::input_key))
                .load(c))?;
        let keys: std::collections::HashMap<i64, (Option<String>, Option<String>)> = keys
            .into_iter()
            .map(|(id, fingerprint, input_key)| (id, (fingerprint, input_key)))
            .collect();
        for datum in &skipped[i..j] {
            let job_id = datum.job_id;
            let max_tries = match tries.get(&job_id) {
                Some(&n) => n,
                None => {
                    let n: i32 = with_conn!(conn, c => jobs::table
                        .find(job_id)
                        .select(jobs::datum_tries)
                        .first(c))?;
                    tries.insert(job_id, n);
                    n
                }
            };
            out.push(datum.to_datum(max_tries, keys.get(&datum.from).cloned()));
        }
        i = j;
    }
    Ok(out)
}

/// A successful datum of an incremental job's previous run whose inputs
/// the job no longer has: its id, and the datum that ran it (itself, or
/// the one it was skipped for) with that datum's job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Vanished {
    pub id: i64,
    pub ran_as: i64,
    pub ran_in: i64,
}

/// Runs read per query while scanning.
const RUN_PAGE: i64 = 1_000;

/// Ids of ran datums whose input keys are read per query (a run's
/// datums point at consecutive ids, so a page is one index range).
const KEY_PAGE: i64 = 10_000;

/// Finds the vanished datums of job `job` against its previous run
/// `previous` (see `Job::count_vanished`), with ids above `after`, in id
/// order, at most `limit`. A datum of `previous` is vanished when `job`
/// has no datum with its input key: no row with it, and no skipped datum
/// whose ran datum has it.
///
/// Cheap when little changed: `previous`'s datums whose ran datum one of
/// `job`'s runs points at are passed over a whole stretch at a time
/// (ranges of ids, never read one by one); only the rest are checked one
/// at a time ([`has_key`]). Memory is one page of runs or rows.
pub(crate) fn vanished(
    conn: &mut DbConn,
    job: i64,
    previous: i64,
    after: i64,
    limit: i64,
) -> ModelResult<Vec<Vanished>> {
    let pipeline_jobs = earlier_jobs(conn, job)?;
    let mut rows = vanished_rows(conn, job, previous, after, limit, &pipeline_jobs)?;
    rows.extend(vanished_skipped(
        conn,
        job,
        previous,
        after,
        limit,
        &pipeline_jobs,
    )?);
    rows.sort_unstable_by_key(|v| v.id);
    rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    Ok(rows)
}

/// The jobs of `job`'s pipeline before it: where a ran datum with a given
/// input key may be.
fn earlier_jobs(conn: &mut DbConn, job: i64) -> ModelResult<Vec<i64>> {
    let pipeline: String = with_conn!(conn, c => jobs::table
        .find(job)
        .select(jobs::pipeline_name)
        .first(c))?;
    Ok(with_conn!(conn, c => jobs::table
        .filter(jobs::pipeline_name.eq(&pipeline))
        .filter(jobs::id.lt(job))
        .select(jobs::id)
        .load(c))?)
}

/// The id ranges among `lo ..= hi` that no run of `job` points into, as
/// far as the runs starting inside it and the one starting last before it
/// tell (a run of `job` pointing at datums that another of its runs also
/// points at is missed here, so what is reported uncovered is checked
/// exactly after).
fn uncovered(conn: &mut DbConn, job: i64, lo: i64, hi: i64) -> ModelResult<Vec<(i64, i64)>> {
    let mut gaps = Vec::new();
    let mut cursor = lo;
    let below: Option<SkippedRun> = with_conn!(conn, c => skipped_runs::table
        .filter(skipped_runs::job_id.eq(job))
        .filter(skipped_runs::from_first_id.lt(lo))
        .order(skipped_runs::from_first_id.desc())
        .select(SkippedRun::as_select())
        .first(c)
        .optional())?;
    if let Some(run) = below {
        cursor = cursor.max(run.from_first_id + run.len);
    }
    let mut start = lo;
    loop {
        let page: Vec<SkippedRun> = with_conn!(conn, c => skipped_runs::table
            .filter(skipped_runs::job_id.eq(job))
            .filter(skipped_runs::from_first_id.ge(start))
            .filter(skipped_runs::from_first_id.le(hi))
            .order(skipped_runs::from_first_id)
            .limit(RUN_PAGE)
            .select(SkippedRun::as_select())
            .load(c))?;
        let full = i64::try_from(page.len()).unwrap_or(0) >= RUN_PAGE;
        for run in &page {
            if run.from_first_id > cursor {
                gaps.push((cursor, run.from_first_id - 1));
            }
            cursor = cursor.max(run.from_first_id + run.len);
            start = run.from_first_id + 1;
        }
        if !full {
            break;
        }
    }
    if cursor <= hi {
        gaps.push((cursor, hi));
    }
    Ok(gaps)
}

/// Whether job `job` has a datum with input key `key`, exactly: a row
/// with it, or a run pointing at a ran datum (of `pipeline_jobs`) with it.
fn has_key(conn: &mut DbConn, job: i64, key: &str, pipeline_jobs: &[i64]) -> ModelResult<bool> {
    let row: Option<i64> = with_conn!(conn, c => datums::table
        .filter(datums::job_id.eq(job))
        .filter(datums::input_key.eq(key))
        .select(datums::id)
        .first(c)
        .optional())?;
    if row.is_some() {
        return Ok(true);
    }
    for &earlier in pipeline_jobs {
        let ran: Vec<i64> = with_conn!(conn, c => datums::table
            .filter(datums::job_id.eq(earlier))
            .filter(datums::input_key.eq(key))
            .filter(datums::status.eq(DatumStatus::Done))
            .select(datums::id)
            .load(c))?;
        for id in ran {
            let covering: i64 = with_conn!(conn, c => skipped_runs::table
                .filter(skipped_runs::job_id.eq(job))
                .filter(skipped_runs::from_first_id.le(id))
                .filter((skipped_runs::from_first_id + skipped_runs::len).gt(id))
                .count()
                .get_result(c))?;
            if covering > 0 {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// The vanished datums of `previous` that ran there (rows).
fn vanished_rows(
    conn: &mut DbConn,
    job: i64,
    previous: i64,
    after: i64,
    limit: i64,
    pipeline_jobs: &[i64],
) -> ModelResult<Vec<Vanished>> {
    // Done rows only, as the pages below: that makes it two probes of
    // `datums_job_status_id`. Without the status, PostgreSQL may answer
    // min and max by walking the primary key until it meets the job, all
    // of the table when the job has no rows (a previous run that skipped
    // everything: 0.25 s at 100,000 datums).
    let span: (Option<i64>, Option<i64>) = with_conn!(conn, c => datums::table
        .filter(datums::job_id.eq(previous))
        .filter(datums::status.eq(DatumStatus::Done))
        .select((diesel::dsl::min(datums::id), diesel::dsl::max(datums::id)))
        .first(c))?;
    let (Some(lo), Some(hi)) = span else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (from, to) in uncovered(conn, job, lo.max(after + 1), hi)? {
        let mut next = from;
        loop {
            let page: Vec<(i64, Option<String>)> = with_conn!(conn, c => datums::table
                .filter(datums::job_id.eq(previous))
                .filter(datums::status.eq(DatumStatus::Done))
                .filter(datums::id.ge(next).and(datums::id.le(to)))
                .order(datums::id)
                .limit(RUN_PAGE)
                .select((datums::id, datums::input_key))
                .load(c))?;
            let full = i64::try_from(page.len()).unwrap_or(0) >= RUN_PAGE;
            for (id, key) in page {
                next = id + 1;
                let Some(key) = key else { continue };
                if !has_key(conn, job, &key, pipeline_jobs)? {
                    out.push(Vanished {
                        id,
                        ran_as: id,
                        ran_in: previous,
                    });
                    if i64::try_from(out.len()).unwrap_or(i64::MAX) >= limit {
                        return Ok(out);
                    }
                }
            }
            if !full {
                break;
            }
        }
    }
    Ok(out)
}

/// The vanished datums of `previous` that it skipped itself (runs).
fn vanished_skipped(
    conn: &mut DbConn,
    job: i64,
    previous: i64,
    after: i64,
    limit: i64,
    pipeline_jobs: &[i64],
) -> ModelResult<Vec<Vanished>> {
    let mut out = Vec::new();
    let mut cursor = after;
    loop {
        let runs = SkippedRun::page_by_id(conn, previous, cursor, RUN_PAGE)?;
        let Some(last) = runs.last() else { break };
        let next_cursor = last.last_id();
        for run in &runs {
            // This run's datums with ids above `after`, as pointers.
            let skip = (after + 1 - run.first_id).max(0);
            if skip >= run.len {
                continue;
            }
            let (lo, hi) = (run.from_first_id + skip, run.from_first_id + run.len - 1);
            for (from, to) in uncovered(conn, job, lo, hi)? {
                // A page of keys at a time: an uncovered stretch may be
                // the whole previous run (every input renamed).
                let mut next = from;
                while next <= to {
                    let last = to.min(next + KEY_PAGE - 1);
                    let keys: Vec<(i64, Option<String>)> = with_conn!(conn, c => datums::table
                        .filter(datums::id.ge(next).and(datums::id.le(last)))
                        .order(datums::id)
                        .select((datums::id, datums::input_key))
                        .load(c))?;
                    next = last + 1;
                    for (ran, key) in keys {
                        let Some(key) = key else { continue };
                        if !has_key(conn, job, &key, pipeline_jobs)? {
                            out.push(Vanished {
                                id: run.first_id + (ran - run.from_first_id),
                                ran_as: ran,
                                ran_in: run.from_job_id,
                            });
                            if i64::try_from(out.len()).unwrap_or(i64::MAX) >= limit {
                                return Ok(out);
                            }
                        }
                    }
                }
            }
        }
        if next_cursor <= cursor {
            break;
        }
        cursor = next_cursor;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skip(seq: i64, id: i64, from: i64, from_job: i64) -> SkippedDatum {
        SkippedDatum {
            id,
            job_id: 9,
            seq,
            from,
            from_job,
            skipped_at: 5,
        }
    }

    #[test]
    fn consecutive_skips_are_one_run_and_extend_the_last() {
        let skips: Vec<SkippedDatum> = (0..4).map(|i| skip(10 + i, 100 + i, 50 + i, 1)).collect();
        let (grown, fresh) = fold_runs(None, &skips);
        assert_eq!(grown, None);
        assert_eq!(fresh.len(), 1);
        assert_eq!(
            (fresh[0].first_seq, fresh[0].first_id, fresh[0].len),
            (10, 100, 4)
        );
        assert_eq!(fresh[0].datum(3), skips[3]);
        // The next batch continues it: no new row, a longer one.
        let next: Vec<SkippedDatum> = (4..6).map(|i| skip(10 + i, 100 + i, 50 + i, 1)).collect();
        let (grown, fresh2) = fold_runs(Some(&fresh[0]), &next);
        assert_eq!((grown, fresh2.len()), (Some(6), 0));
    }

    #[test]
    fn a_break_in_seq_id_pointer_or_job_starts_a_run() {
        let skips = [
            skip(0, 100, 50, 1),
            skip(1, 101, 51, 1),
            skip(3, 102, 52, 1), // seq gap: a datum ran between
            skip(4, 104, 53, 1), // id gap: another planner took 103
            skip(5, 105, 60, 1), // pointer jump
            skip(6, 106, 61, 2), // other job
        ];
        let (grown, fresh) = fold_runs(None, &skips);
        assert_eq!(grown, None);
        let lens: Vec<i64> = fresh.iter().map(|r| r.len).collect();
        assert_eq!(lens, vec![2, 1, 1, 1, 1]);
        let last = &fresh[0];
        let (grown, more) = fold_runs(Some(last), &[skip(7, 200, 0, 1)]);
        assert_eq!((grown, more.len()), (None, 1));
    }

    #[test]
    fn datums_between_clips_to_the_run() {
        let run = fold_runs(
            None,
            &[skip(0, 10, 1, 1), skip(1, 11, 2, 1), skip(2, 12, 3, 1)],
        )
        .1
        .remove(0);
        let ids: Vec<i64> = run.datums_between(11, i64::MAX).map(|d| d.id).collect();
        assert_eq!(ids, vec![11, 12]);
        assert_eq!(run.datums_between(0, 10).count(), 1);
    }
}
