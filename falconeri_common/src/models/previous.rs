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
//! The pages can be read ahead, beside the plan ([`PreviousRun::read_ahead`]:
//! falconerid reads them in a task of its own, on a connection of its own,
//! while the listing and the batches' writes go on). Read in line with each
//! batch, the 10 pages of an unchanged rerun of 100,000 files cost about
//! 40 ms each on PostgreSQL (then read through the wrong index, see
//! `read_page`; 5–10 ms each since), one after another with the batches'
//! writes: about half of deciding that nothing must run. Read ahead, a
//! batch waits only for the page holding its own position, which is
//! usually there.
//!
//! Memory is the window: at most [`AHEAD`] seqs past and [`BEHIND`] seqs
//! before the position, one fingerprint each, whatever the job's size;
//! read ahead, plus the pages waiting in the channel (`depth`) and the one
//! being read. With pages of [`PAGE`] seqs and a depth of 2, that is at
//! most 60,000 fingerprints (about 10 MB), whatever the job's size.
//!
//! The window is read outside the batch's write transaction: a `done`
//! datum stays `done` (a retry takes only failed and canceled datums), so
//! a match read a moment earlier is still one.
//!
//! The window holds each fingerprint as its 64 hex digits in a fixed-size
//! array, copied straight from the row's text ([`StoredFingerprint`]), in
//! a map with a fast non-cryptographic hash (`rustc_hash`; the keys are
//! SHA-256 digests, so nobody can aim collisions at it). With a `String` per fingerprint and
//! the standard SipHash, the window's and the batch's maps were the
//! planner's largest cost per datum after the listing itself (issue 11's
//! benchmark, guide: "Incremental runs").

use std::collections::VecDeque;

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
pub const PAGE: i64 = 10_000;
/// Seqs of the first page: a batch's worth, so that the first batch,
/// which waits for it, waits for less.
const FIRST_PAGE: i64 = 2_500;
/// How far past the new plan's position the window reaches.
const AHEAD: i64 = 2 * PAGE;
/// How far before it the window keeps what it read.
const BEHIND: i64 = PAGE;

/// A fingerprint as the text of [`DatumKeys::fingerprint`] (64 hex
/// digits), without a heap allocation. Compared as that text, exactly as
/// the strings were: decoding the hex cost more than it saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Fingerprint([u8; 64]);

impl Fingerprint {
    /// The fingerprint spelled `text`, or `None` for text of another
    /// length (no planned datum has such a fingerprint, so nothing could
    /// match it).
    fn of_text(text: &[u8]) -> Option<Fingerprint> {
        text.try_into().ok().map(Fingerprint)
    }
}

/// A stored fingerprint copied from the row's text, with no `String` per
/// row; `None` for text that cannot be a fingerprint.
#[derive(Debug, diesel::deserialize::FromSqlRow)]
struct StoredFingerprint(Option<Fingerprint>);

impl diesel::deserialize::FromSql<diesel::sql_types::Text, diesel::sqlite::Sqlite>
    for StoredFingerprint
{
    fn from_sql(
        mut value: diesel::sqlite::SqliteValue<'_, '_, '_>,
    ) -> diesel::deserialize::Result<Self> {
        Ok(StoredFingerprint(Fingerprint::of_text(
            value.read_text().as_bytes(),
        )))
    }
}

#[cfg(feature = "postgres")]
impl diesel::deserialize::FromSql<diesel::sql_types::Text, diesel::pg::Pg> for StoredFingerprint {
    fn from_sql(value: diesel::pg::PgValue<'_>) -> diesel::deserialize::Result<Self> {
        Ok(StoredFingerprint(Fingerprint::of_text(value.as_bytes())))
    }
}

/// One page of the previous run: its successful datums with seqs below
/// `to` (and at or above the page before's), in seq order, each as (seq
/// there, fingerprint, datum that ran, its job).
#[derive(Debug)]
pub struct PreviousPage {
    to: i64,
    entries: Vec<(i64, Fingerprint, i64, i64)>,
}

/// Reads the previous run's pages in seq order, [`PAGE`] seqs each (the
/// first one smaller).
#[derive(Debug, Clone)]
pub struct PreviousPages {
    job: i64,
    end: i64,
    read_to: i64,
    page: i64,
}

impl PreviousPages {
    /// The next page, or `None` past the previous run's end.
    pub fn next_page(&mut self, conn: &mut DbConn) -> ModelResult<Option<PreviousPage>> {
        if self.read_to >= self.end {
            return Ok(None);
        }
        let size = match self.read_to {
            0 => FIRST_PAGE.min(self.page),
            _ => self.page,
        };
        let (from, to) = (self.read_to, (self.read_to + size).min(self.end));
        let entries = read_page(conn, self.job, from, to)?;
        self.read_to = to;
        Ok(Some(PreviousPage { to, entries }))
    }
}

/// Where [`PreviousRun`] gets its pages.
#[derive(Debug)]
enum Pages {
    /// Read with the connection the batch is matched on.
    InLine(PreviousPages),
    /// Read ahead by someone else ([`PreviousRun::read_ahead`]); the
    /// reader as it was handed over, to go on in line if it stops.
    Ahead(
        tokio::sync::mpsc::Receiver<ModelResult<PreviousPage>>,
        PreviousPages,
    ),
}

/// The previous run of an incremental job, read in seq order as its plan
/// advances (see the module doc).
#[derive(Debug)]
pub struct PreviousRun {
    pages: Pages,
    /// The previous run's datum count: its seqs are `0 .. end`.
    end: i64,
    /// Seqs below this are read (those above `BEHIND` of the position
    /// still held).
    read_to: i64,
    /// The furthest seq of the previous run matched so far.
    position: i64,
    /// Fingerprint to (seq there, datum that ran, its job).
    window: rustc_hash::FxHashMap<Fingerprint, (i64, i64, i64)>,
    /// The window's fingerprints in seq order, to drop the oldest.
    order: VecDeque<(i64, Fingerprint)>,
}

impl PreviousRun {
    /// The previous run of job `job` ([`Job::previous_run`]), if it is
    /// incremental and has one.
    pub fn open(conn: &mut DbConn, job: &Job) -> ModelResult<Option<PreviousRun>> {
        PreviousRun::open_paged(conn, job, PAGE)
    }

    /// [`PreviousRun::open`] with pages of `page` seqs instead of [`PAGE`]
    /// (tests: page boundaries without 10,000 datums).
    pub fn open_paged(conn: &mut DbConn, job: &Job, page: i64) -> ModelResult<Option<PreviousRun>> {
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
            pages: Pages::InLine(PreviousPages {
                job: previous,
                end,
                read_to: 0,
                page: page.max(1),
            }),
            end,
            read_to: 0,
            position: 0,
            window: rustc_hash::FxHashMap::default(),
            order: VecDeque::new(),
        }))
    }

    /// From now on, takes its pages from a channel of `depth` pages
    /// instead of reading them: returns the reader, whose pages (or its
    /// error) the caller sends in order, from a task of its own. Should
    /// the channel close before the last page (the reader could not get
    /// a connection, say), the rest is read in line as before. Called
    /// before the first page is read, once.
    pub fn read_ahead(
        &mut self,
        depth: usize,
    ) -> (
        PreviousPages,
        tokio::sync::mpsc::Sender<ModelResult<PreviousPage>>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel(depth.max(1));
        let reader = match &self.pages {
            Pages::InLine(reader) | Pages::Ahead(_, reader) => reader.clone(),
        };
        self.pages = Pages::Ahead(rx, reader.clone());
        (reader, tx)
    }

    /// Matches what it can of `batch`, whose first datum has seq
    /// `first_seq`, into `batch.known` (by position) and
    /// `batch.continued_known`.
    pub fn fill(
        &mut self,
        conn: &mut DbConn,
        first_seq: i64,
        batch: &mut DatumBatch,
    ) -> ModelResult<()> {
        if let Some(keys) = &batch.continued_keys {
            batch.continued_known = self.resolve(conn, first_seq - 1, &[Some(keys)])?[0];
        }
        let keys: Vec<Option<&DatumKeys>> = batch.keys.iter().map(Option::as_ref).collect();
        batch.known = self.resolve(conn, first_seq, &keys)?;
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
            let found = keys
                .and_then(|keys| Fingerprint::of_text(keys.fingerprint.as_bytes()))
                .and_then(|fingerprint| self.window.get(&fingerprint).copied());
            out.push(found.map(|(at, ran, ran_in)| {
                self.position = self.position.max(at);
                (ran, ran_in)
            }));
        }
        Ok(out)
    }

    /// Reads ahead to [`AHEAD`] past the position (or past `seq`, if the
    /// new plan has gone further) and drops what fell [`BEHIND`]. Pages
    /// read ahead by another task are waited for only up to the one
    /// holding that seq; the ones after it are taken if they are there.
    fn advance(&mut self, conn: &mut DbConn, seq: i64) -> ModelResult<()> {
        let at = self.position.max(seq);
        let page = match &self.pages {
            Pages::InLine(reader) | Pages::Ahead(_, reader) => reader.page,
        };
        // AHEAD and BEHIND, for this page size.
        let (ahead, behind) = (page * (AHEAD / PAGE), page * (BEHIND / PAGE));
        while self.read_to < self.end && self.read_to < at + ahead {
            let page = match &mut self.pages {
                Pages::InLine(reader) => reader.next_page(conn)?,
                Pages::Ahead(rx, reader) => {
                    let next = match rx.try_recv() {
                        Ok(page) => Some(page),
                        // Beyond the page holding `at`, only what is there.
                        Err(_) if self.read_to > at => break,
                        Err(tokio::sync::mpsc::error::TryRecvError::Empty) => rx.blocking_recv(),
                        Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => None,
                    };
                    match next {
                        Some(page) => Some(page?),
                        None => {
                            // The reader stopped early: go on in line from
                            // where it stood.
                            reader.read_to = self.read_to;
                            self.pages = Pages::InLine(reader.clone());
                            continue;
                        }
                    }
                }
            };
            let Some(page) = page else { break };
            self.read_to = page.to;
            self.window.reserve(page.entries.len());
            for (seq, fingerprint, ran, ran_in) in page.entries {
                self.order.push_back((seq, fingerprint));
                self.window.insert(fingerprint, (seq, ran, ran_in));
            }
        }
        while let Some((first, _)) = self.order.front() {
            if *first >= at - behind {
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
}

/// The successful datums of job `job` with seqs `from .. to`, as (seq,
/// fingerprint, datum that ran, its job), in seq order.
fn read_page(
    conn: &mut DbConn,
    job: i64,
    from: i64,
    to: i64,
) -> ModelResult<Vec<(i64, Fingerprint, i64, i64)>> {
    // Datums that ran there: the job's rows in the seq range, through
    // `datums_job_seq`, the fingerprint only for those that ran and
    // succeeded. The condition is in the select list, not the filter, so
    // that the range is the only filter: with `status = 'done'` there,
    // PostgreSQL planned with the statistics of a table that had just
    // grown (no ANALYZE yet, a few rows per job estimated) and chose
    // `datums_job_status_id`, reading every done datum of the job for
    // each page (100,000 rows per page of 10,000, 30–60 ms each).
    let rows: Vec<(i64, Option<StoredFingerprint>, i64)> = with_conn!(conn, c => datums::table
        .filter(datums::job_id.eq(job))
        .filter(datums::seq.ge(from).and(datums::seq.lt(to)))
        .select((
            datums::seq,
            diesel::dsl::sql::<diesel::sql_types::Nullable<diesel::sql_types::Text>>(
                "CASE WHEN datums.status = 'done' AND datums.skipped_from IS NULL \
                 THEN datums.fingerprint END",
            ),
            datums::id,
        ))
        .load(c))?;
    let mut page: Vec<(i64, Fingerprint, i64, i64)> = rows
        .into_iter()
        .filter_map(|(seq, fp, id)| Some((seq, fp?.0?, id, job)))
        .collect();
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
        let ran: Vec<(i64, Option<StoredFingerprint>)> = with_conn!(conn, c => datums::table
            .filter(datums::id.ge(first).and(datums::id.le(last)))
            .filter(datums::status.eq(DatumStatus::Done))
            .select((datums::id, datums::fingerprint))
            .load(c))?;
        page.extend(ran.into_iter().filter_map(|(id, fp)| {
            Some((
                run.first_seq + (id - run.from_first_id),
                fp?.0?,
                id,
                run.from_job_id,
            ))
        }));
    }
    page.sort_unstable_by_key(|entry| entry.0);
    Ok(page)
}
