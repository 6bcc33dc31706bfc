//! A job's datums by status, counted without reading the largest group.
//!
//! `GROUP BY status` over a job's datums reads one index entry per datum:
//! at 1,000,000 datums that took 420–570 ms on PostgreSQL and 120 ms on
//! SQLite (bench/dashboard), on every progress answer of every follower.
//! Keeping the counts up to date where datums change status (a counter row
//! per job, or a trigger) would put a write, and a lock every worker of
//! the job queues on, into the reserve and done statements, which are
//! tuned for dispatch throughput (issue 9). So the counts are read, but
//! cleverly:
//!
//! - the rows of a job's datums always number `jobs.datum_count` minus
//!   `jobs.skipped_count` (skipped datums are runs in `skipped_runs`, not
//!   rows; planning adds datums and both counts in one transaction; only
//!   deleting the whole job removes them), and at most one status can
//!   hold more than half;
//! - each status is counted through `datums_job_status_id` with a cap
//!   (`LIMIT 4096` inside the count: a bounded index range); the ones
//!   under it are exact;
//! - of the statuses that reached it, the one likely largest is not
//!   counted but derived: `datum_count` minus all the others, which are
//!   counted in full. The guess: `ready` if the done datums' ids span
//!   less than half the job (two probes of the same index: the smallest
//!   and largest done id bound how many there can be), else `done`. A
//!   wrong guess only costs reading.
//!
//! A job that is mostly done (or mostly ready, at its start) is counted by
//! reading its other datums and 4,096 of the big group (at 1,000,000
//! datums, 95 % finished: 9 ms on a vacuumed PostgreSQL, 4 ms on SQLite);
//! the worst case, two groups of half the job each, reads half the job.
//! Everything runs in one snapshot
//! ([`DbConn::snapshot_read`]), so the counts are exact and add up to the
//! job's datums, as before.

use diesel::{QueryableByName, sql_types::BigInt};

use super::{ModelResult, sql::Stmt};
use crate::{db::DbConn, status::DatumStatus};

/// The statuses stored in `datums.status`. Skipped datums have no row
/// (they are runs in `skipped_runs`); [`job_counts`] adds them to `done`.
const STORED: [DatumStatus; 6] = [
    DatumStatus::Ready,
    DatumStatus::Running,
    DatumStatus::Publishing,
    DatumStatus::Done,
    DatumStatus::Error,
    DatumStatus::Canceled,
];

/// The first round's cap: a small job is counted exactly in one statement.
const FIRST_CAP: i64 = 4096;

/// Counts of the [`STORED`] statuses of a job of `total` datums, given
/// `count_capped(statuses, cap)`, which answers `min(count, cap)` for each
/// status asked, and `ready_likely`, whether the ready datums are likely
/// the largest group (see [`job_counts`]). `None` if the counts cannot add up to `total`
/// (the caller then counts every datum).
pub(crate) fn count_by_rounds(
    total: i64,
    ready_likely: bool,
    mut count_capped: impl FnMut(&[DatumStatus], i64) -> ModelResult<Vec<i64>>,
) -> ModelResult<Option<[i64; 6]>> {
    const READY: usize = 0;
    const DONE: usize = 3;
    let mut counts = [0i64; 6];
    // First round: every status, capped. The small ones are exact.
    let cap = FIRST_CAP.min(total / 2 + 1).max(1);
    let mut big = Vec::new();
    for (i, n) in count_capped(&STORED, cap)?.into_iter().enumerate() {
        if n < cap {
            counts[i] = n;
        } else {
            big.push(i);
        }
    }
    // The big one likely largest is left out and derived; the other big
    // ones are counted in full. A wrong guess costs reading, never
    // exactness: every other status is counted.
    let derived = match big.as_slice() {
        [] => return Ok(Some(counts)),
        [only] => *only,
        _ if big.contains(&READY) && ready_likely => READY,
        _ if big.contains(&DONE) => DONE,
        _ => big[0],
    };
    let rest: Vec<usize> = big.into_iter().filter(|&i| i != derived).collect();
    if !rest.is_empty() {
        let statuses: Vec<DatumStatus> = rest.iter().map(|&i| STORED[i]).collect();
        for (&i, n) in rest
            .iter()
            .zip(count_capped(&statuses, total.saturating_add(1))?)
        {
            counts[i] = n;
        }
    }
    let value = total - counts.iter().sum::<i64>();
    // It reached the cap: below it, the datum count and the rows
    // disagree, so don't trust either.
    if value < cap {
        return Ok(None);
    }
    counts[derived] = value;
    Ok(Some(counts))
}

#[derive(QueryableByName)]
struct Span {
    #[diesel(sql_type = diesel::sql_types::Nullable<BigInt>)]
    first: Option<i64>,
    #[diesel(sql_type = diesel::sql_types::Nullable<BigInt>)]
    last: Option<i64>,
}

#[derive(QueryableByName)]
struct Total {
    #[diesel(sql_type = BigInt)]
    datum_count: i64,
    #[diesel(sql_type = BigInt)]
    skipped_count: i64,
}

/// One round: `min(count, cap)` for each of `statuses` of job `job_id`,
/// in one statement (a capped index range scan each).
fn capped(
    conn: &mut DbConn,
    job_id: i64,
    statuses: &[DatumStatus],
    cap: i64,
) -> ModelResult<Vec<i64>> {
    #[derive(QueryableByName)]
    struct Capped {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let sql = statuses
        .iter()
        .enumerate()
        .map(|(i, status)| {
            format!(
                "SELECT {i} AS k, (SELECT COUNT(*) FROM (SELECT 1 FROM datums \
                 WHERE job_id = {job_id} AND status = '{}' LIMIT {cap}) AS c) AS n",
                status.as_str()
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    let mut stmt = Stmt::new(conn.backend());
    stmt.push(&format!("SELECT n FROM ({sql}) AS rounds ORDER BY k"));
    let rows: Vec<Capped> = stmt.load(conn)?;
    Ok(rows.into_iter().map(|r| r.n).collect())
}

/// Every datum of job `job_id` by status, read in full (`GROUP BY`).
fn grouped(conn: &mut DbConn, job_id: i64) -> ModelResult<[i64; 6]> {
    #[derive(QueryableByName)]
    struct Group {
        #[diesel(sql_type = diesel::sql_types::Text)]
        status: String,
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let mut stmt = Stmt::new(conn.backend());
    stmt.push(&format!(
        "SELECT status, COUNT(*) AS n FROM datums WHERE job_id = {job_id} GROUP BY status"
    ));
    let rows: Vec<Group> = stmt.load(conn)?;
    let mut counts = [0i64; 6];
    for row in rows {
        if let Some(i) = STORED.iter().position(|s| s.as_str() == row.status) {
            counts[i] = row.n;
        }
    }
    Ok(counts)
}

/// Job `job_id`'s datums by status (see the module documentation), and
/// its `skipped_count`; `None` if there is no such job.
pub(crate) fn job_counts(conn: &mut DbConn, job_id: i64) -> ModelResult<Option<([i64; 6], i64)>> {
    conn.snapshot_read(|conn| {
        let mut stmt = Stmt::new(conn.backend());
        stmt.push(&format!(
            "SELECT datum_count, skipped_count FROM jobs WHERE id = {job_id}"
        ));
        let totals: Vec<Total> = stmt.load(conn)?;
        let Some(total) = totals.into_iter().next() else {
            return Ok(None);
        };
        // Done datums lie between the smallest and the largest done id:
        // fewer than half the job fit there early in a job, whose ready
        // datums are then likely the most.
        let mut stmt = Stmt::new(conn.backend());
        stmt.push(&format!(
            // Two subqueries: SQLite reads a MIN or a MAX off the index
            // only when it is the query's sole aggregate.
            "SELECT (SELECT MIN(id) FROM datums WHERE job_id = {job_id} AND status = 'done') \
                AS first, \
             (SELECT MAX(id) FROM datums WHERE job_id = {job_id} AND status = 'done') AS last"
        ));
        let span: Vec<Span> = stmt.load(conn)?;
        let done_span = match span.into_iter().next().map(|s| (s.first, s.last)) {
            Some((Some(first), Some(last))) => last - first + 1,
            _ => 0,
        };
        // Skipped datums have no row: the rows are the rest.
        let rows = total.datum_count - total.skipped_count;
        let ready_likely = done_span < rows / 2;
        let mut counts = match count_by_rounds(rows, ready_likely, |statuses, cap| {
            capped(conn, job_id, statuses, cap)
        })? {
            Some(counts) => counts,
            None => grouped(conn, job_id)?,
        };
        // Reported as `done` rows were before, for the callers to move
        // (`StatusCounts::move_skipped`).
        if let Some(done) = STORED.iter().position(|s| *s == DatumStatus::Done) {
            counts[done] += total.skipped_count;
        }
        Ok(Some((counts, total.skipped_count)))
    })
}

/// The [`STORED`] statuses, in the order of [`job_counts`]' array.
pub(crate) fn stored() -> &'static [DatumStatus; 6] {
    &STORED
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs [`count_by_rounds`] over `truth`, answering from it; returns
    /// the counts and how many index entries the rounds read.
    fn rounds(truth: [i64; 6], total: i64) -> (Option<[i64; 6]>, i64) {
        rounds_guessing(truth, total, truth[0] >= total / 2)
    }

    fn rounds_guessing(truth: [i64; 6], total: i64, guess: bool) -> (Option<[i64; 6]>, i64) {
        let mut read = 0;
        let counts = count_by_rounds(total, guess, |statuses, cap| {
            Ok(statuses
                .iter()
                .map(|s| {
                    let i = STORED.iter().position(|t| t == s).unwrap();
                    let n = truth[i].min(cap);
                    read += n;
                    n
                })
                .collect())
        })
        .unwrap();
        (counts, read)
    }

    #[test]
    fn a_mostly_done_job_is_counted_without_reading_its_done_datums() {
        // 1,000,000 datums: 94 % done, 1 % failed, 64 running, the rest ready.
        let truth = [49_936, 64, 0, 940_000, 10_000, 0];
        let (counts, read) = rounds(truth, 1_000_000);
        assert_eq!(counts, Some(truth));
        // GROUP BY reads 1,000,000 entries; the rounds read the 60,000
        // others (the big ones twice: capped, then in full) and 4,096
        // done ones.
        assert_eq!(read, 60_000 + 3 * 4_096);
        // At the start of a job, the done datums are few.
        let truth = [990_000, 64, 0, 9_936, 0, 0];
        let (counts, read) = rounds(truth, 1_000_000);
        assert_eq!(counts, Some(truth));
        assert_eq!(read, 10_000 + 2 * 4_096);
    }

    #[test]
    fn a_wrong_guess_costs_reading_not_exactness() {
        let truth = [900_000, 0, 0, 100_000, 0, 0];
        let (counts, read) = rounds_guessing(truth, 1_000_000, false);
        assert_eq!(counts, Some(truth));
        assert_eq!(read, 900_000 + 2 * 4_096);
    }

    #[test]
    fn counts_are_exact_in_every_shape() {
        for truth in [
            [0, 0, 0, 0, 0, 0],
            [10, 0, 0, 0, 0, 0],
            [1_000_000, 0, 0, 0, 0, 0],
            [500_000, 0, 0, 500_000, 0, 0],
            [500_001, 0, 0, 499_999, 0, 0],
            [300_000, 300_000, 0, 300_000, 100_000, 0],
            [0, 16, 3, 4_095, 4_096, 4_097],
        ] {
            let total = truth.iter().sum();
            assert_eq!(rounds(truth, total).0, Some(truth), "{truth:?}");
        }
    }

    #[test]
    fn a_datum_count_that_disagrees_is_not_trusted() {
        // The job says 10 datums; 100 rows are ready and 5 done: the
        // ready ones cannot be 10 − 5.
        assert_eq!(rounds([100, 0, 0, 5, 0, 0], 10).0, None);
    }
}
