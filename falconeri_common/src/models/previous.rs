//! An incremental job's previous run, read in planning order beside the
//! new plan, so that most of its datums are matched without an index
//! look-up.
//!
//! A rerun over mostly unchanged inputs plans the same datums in the same
//! order as the run before it (planning order depends only on the spec and
//! the paths). Looking each new fingerprint up in `datums_done_fingerprint`
//! cost one index probe per datum, which was most of deciding that nothing
//! must run (issue 11's benchmark). Instead, the previous run's datums are
//! read a page at a time in seq order (a range of `datums_job_seq`, and of
//! `skipped_runs_job_seq` with one range read of the ran datums per run)
//! into a window around the position the new plan has reached there; a
//! new datum whose fingerprint is in the window is matched at once. Only
//! the rest (new or changed inputs, or a stretch too far from where the
//! previous run stands, say after many removals) goes to the index as
//! before, so what is skipped is the same: a datum matching one that ran
//! and succeeded in an earlier job of the pipeline.
//!
//! Memory is the window: at most [`AHEAD`] seqs past and [`BEHIND`] seqs
//! before the position, one fingerprint each, whatever the job's size.
//!
//! The window is read outside the batch's write transaction: a `done`
//! datum stays `done` (a retry takes only failed and canceled datums), so
//! a match read a moment earlier is still one.

use std::collections::{HashMap, VecDeque};

use diesel::{
    BoolExpressionMethods, ExpressionMethods, OptionalExtension, QueryDsl, RunQueryDsl,
    SelectableHelper,
};

use super::{Job, ModelResult, SkippedRun};
use crate::{
    db::{DbConn, schema::*, with_conn},
    fingerprint::DatumKeys,
    plan::DatumBatch,
    status::DatumStatus,
};

/// Seqs of the previous run read per page.
const PAGE: i64 = 10_000;
/// How far past the new plan's position the window reaches.
const AHEAD: i64 = 2 * PAGE;
/// How far before it the window keeps what it read.
const BEHIND: i64 = PAGE;

/// The previous run of an incremental job, read in seq order as its plan
/// advances (see the module doc).
#[derive(Debug)]
pub struct PreviousRun {
    job: i64,
    /// The previous run's datum count: its seqs are `0 .. end`.
    end: i64,
    /// Seqs below this are read (those above `BEHIND` of the position
    /// still held).
    read_to: i64,
    /// The furthest seq of the previous run matched so far.
    position: i64,
    /// Fingerprint to (seq there, datum that ran, its job).
    window: HashMap<String, (i64, i64, i64)>,
    /// The window's fingerprints in seq order, to drop the oldest.
    order: VecDeque<(i64, String)>,
}

impl PreviousRun {
    /// The previous run of job `job` ([`Job::previous_run`]), if it is
    /// incremental and has one.
    pub fn open(conn: &mut DbConn, job: &Job) -> ModelResult<Option<PreviousRun>> {
        if !job.incremental {
            return Ok(None);
        }
        let Some(previous) = Job::previous_run(conn, job)? else {
            return Ok(None);
        };
        let end: i64 = with_conn!(conn, c => jobs::table
            .find(previous)
            .select(jobs::datum_count)
            .first(c))?;
        Ok(Some(PreviousRun {
            job: previous,
            end,
            read_to: 0,
            position: 0,
            window: HashMap::new(),
            order: VecDeque::new(),
        }))
    }

    /// Matches what it can of `batch`, whose first datum has seq
    /// `first_seq`, into `batch.known`.
    pub fn fill(
        &mut self,
        conn: &mut DbConn,
        first_seq: i64,
        batch: &mut DatumBatch,
    ) -> ModelResult<()> {
        if let Some(keys) = &batch.continued_keys
            && let Some(found) = self.resolve(conn, first_seq - 1, &[Some(keys)])?[0]
        {
            batch.known.insert(keys.fingerprint.clone(), found);
        }
        let keys: Vec<Option<&DatumKeys>> = batch.keys.iter().map(Option::as_ref).collect();
        let found = self.resolve(conn, first_seq, &keys)?;
        let known: Vec<(String, (i64, i64))> = keys
            .iter()
            .zip(found)
            .filter_map(|(keys, found)| Some((keys.as_ref()?.fingerprint.clone(), found?)))
            .collect();
        batch.known.extend(known);
        Ok(())
    }

    /// The matches of a batch whose first datum has seq `first_seq`: for
    /// each of `keys`, the datum (and its job) of the previous run's
    /// window that ran with the same fingerprint, where there is one.
    /// `None`s are for the index to settle.
    pub fn resolve(
        &mut self,
        conn: &mut DbConn,
        first_seq: i64,
        keys: &[Option<&DatumKeys>],
    ) -> ModelResult<Vec<Option<(i64, i64)>>> {
        let mut out = Vec::with_capacity(keys.len());
        for (i, keys) in keys.iter().enumerate() {
            let seq = first_seq + i64::try_from(i).unwrap_or(0);
            self.advance(conn, seq)?;
            let found = keys.and_then(|keys| self.window.get(keys.fingerprint.as_str()).copied());
            out.push(found.map(|(at, ran, ran_in)| {
                self.position = self.position.max(at);
                (ran, ran_in)
            }));
        }
        Ok(out)
    }

    /// Reads ahead to [`AHEAD`] past the position (or past `seq`, if the
    /// new plan has gone further) and drops what fell [`BEHIND`].
    fn advance(&mut self, conn: &mut DbConn, seq: i64) -> ModelResult<()> {
        let at = self.position.max(seq);
        while self.read_to < self.end && self.read_to < at + AHEAD {
            let (from, to) = (self.read_to, (self.read_to + PAGE).min(self.end));
            self.read_page(conn, from, to)?;
            self.read_to = to;
        }
        while let Some((first, _)) = self.order.front() {
            if *first >= at - BEHIND {
                break;
            }
            if let Some((seq, fingerprint)) = self.order.pop_front()
                && self.window.get(&fingerprint).is_some_and(|e| e.0 == seq)
            {
                self.window.remove(&fingerprint);
            }
        }
        Ok(())
    }

    /// Adds the previous run's successful datums with seqs `from .. to`.
    fn read_page(&mut self, conn: &mut DbConn, from: i64, to: i64) -> ModelResult<()> {
        let job = self.job;
        let mut page: Vec<(i64, String, i64, i64)> = Vec::new();
        // Datums that ran there.
        let rows: Vec<(i64, Option<String>, i64)> = with_conn!(conn, c => datums::table
            .filter(datums::job_id.eq(job))
            .filter(datums::seq.ge(from).and(datums::seq.lt(to)))
            .filter(datums::status.eq(DatumStatus::Done))
            .filter(datums::skipped_from.is_null())
            .select((datums::seq, datums::fingerprint, datums::id))
            .load(c))?;
        page.extend(
            rows.into_iter()
                .filter_map(|(seq, fp, id)| fp.map(|fp| (seq, fp, id, job))),
        );
        // Datums it skipped: the run holding `from`, and those starting
        // after it below `to`; each one range read of the datums it points
        // at (which ran, and keep the fingerprint).
        let holding: Option<SkippedRun> = with_conn!(conn, c => skipped_runs::table
            .filter(skipped_runs::job_id.eq(job))
            .filter(skipped_runs::first_seq.le(from))
            .order(skipped_runs::first_seq.desc())
            .select(SkippedRun::as_select())
            .first(c)
            .optional())?;
        let mut runs: Vec<SkippedRun> = holding.into_iter().collect();
        runs.extend(with_conn!(conn, c => skipped_runs::table
            .filter(skipped_runs::job_id.eq(job))
            .filter(skipped_runs::first_seq.gt(from).and(skipped_runs::first_seq.lt(to)))
            .order(skipped_runs::first_seq)
            .select(SkippedRun::as_select())
            .load::<SkippedRun>(c))?);
        for run in runs {
            let lo = (from - run.first_seq).max(0);
            let hi = (to - run.first_seq).min(run.len);
            if lo >= hi {
                continue;
            }
            let (first, last) = (run.from_first_id + lo, run.from_first_id + hi - 1);
            let ran: Vec<(i64, Option<String>)> = with_conn!(conn, c => datums::table
                .filter(datums::id.ge(first).and(datums::id.le(last)))
                .filter(datums::status.eq(DatumStatus::Done))
                .select((datums::id, datums::fingerprint))
                .load(c))?;
            page.extend(ran.into_iter().filter_map(|(id, fp)| {
                fp.map(|fp| {
                    (
                        run.first_seq + (id - run.from_first_id),
                        fp,
                        id,
                        run.from_job_id,
                    )
                })
            }));
        }
        page.sort_unstable_by_key(|entry| entry.0);
        for (seq, fingerprint, ran, ran_in) in page {
            self.order.push_back((seq, fingerprint.clone()));
            self.window.insert(fingerprint, (seq, ran, ran_in));
        }
        Ok(())
    }
}
