//! Attempt statistics: how the measurements a worker reports are written
//! onto the attempt row, and a job's statistics computed from those rows.
//!
//! Everything a job's statistics need is computed by the database, so
//! falconerid holds a few rows per request whatever the job's size.
//! Percentiles are nearest-rank values read with `ORDER BY … LIMIT 1 OFFSET
//! n`, which both databases answer (SQLite has no `percentile_cont`); the
//! offset is counted from whichever end is nearer, so a p95 sorts only the
//! top 5 % (a bounded top-N sort) and only the median sorts half the rows.
//! The rows are reached through `attempts_job_outcome_datum` (by job); the stats
//! columns have no index of their own, since every report would pay for it
//! and these queries are run by people, not workers.
//!
//! A job of more than [`WINDOW`] attempts is measured over its newest
//! [`WINDOW`] attempts only, found by walking the primary key back from
//! its end: at 1,000,000 attempts the full statistics took 7 s on either
//! database (bench/dashboard), which no page can wait for, and
//! precomputing them would add writes to every report (the hot path).
//! The answer says so (`window`), and its throughput is the recent rate.
//! The errors (datums failed for good, grouped) are still over the whole
//! job.

use diesel::{
    ExpressionMethods, QueryDsl, QueryableByName, RunQueryDsl,
    sql_types::{BigInt, Integer, Nullable, Text},
};

use super::{ModelResult, sql::Stmt};
use crate::{
    api::{
        AttemptStats, ErrorGroup, JobStatsResponse, Percentiles, PhaseStats, ResourceSuggestion,
        SlowAttempt, Throughput,
    },
    db::{DbConn, schema::attempts, with_conn},
    status::{DatumStatus, Outcome},
};

/// The headroom a suggestion adds to the measured p95, as a fraction
/// (numerator, denominator): 5/4 is 1.25, 25 % more.
const MARGIN: (i64, i64) = (5, 4);

/// How many slowest attempts a job's statistics list.
const SLOWEST: i64 = 5;

/// How many groups of errors a job's statistics list.
const ERROR_GROUPS: i64 = 20;

/// The most attempts a job's statistics read: a bigger job is measured
/// over its newest this many.
pub const WINDOW: i64 = 10_000;

/// CPU used while the command ran, in millicores, as SQL over an attempt
/// row (NULL without a measurement or a wall time).
const CPU_SQL: &str = "(CASE WHEN command_ms > 0 \
    THEN (user_cpu_ms + system_cpu_ms) * 1000 / command_ms END)";

/// A statistic as an SQL literal: an integer, or NULL. Values beyond
/// BIGINT are stored as its largest (no real measurement gets there).
fn literal(value: Option<u64>) -> String {
    match value {
        Some(v) => i64::try_from(v).unwrap_or(i64::MAX).to_string(),
        None => "NULL".to_owned(),
    }
}

/// `, download_files = 1, …` for an `UPDATE attempts SET …`: every stats
/// column, NULL where not measured. Empty without stats, so the columns
/// keep what an earlier write put there (a `done` with outputs records its
/// stats when publishing starts, and the attempt closes later).
pub(super) fn stats_assignments(stats: Option<&AttemptStats>) -> String {
    let Some(stats) = stats else {
        return String::new();
    };
    AttemptStats::COLUMNS
        .iter()
        .zip(stats.values())
        .map(|(column, value)| format!(", {column} = {}", literal(value)))
        .collect()
}

/// The stats of several reports as one flat `BIGINT[]` literal, ten
/// values per report in [`AttemptStats::COLUMNS`] order (NULLs for a
/// report without stats), for the PostgreSQL `done` of many datums.
pub(super) fn stats_array(stats: impl Iterator<Item = Option<AttemptStats>>) -> String {
    let values: Vec<String> = stats
        .flat_map(|stats| stats.unwrap_or_default().values())
        .map(literal)
        .collect();
    format!("ARRAY[{}]::BIGINT[]", values.join(", "))
}

/// `download_files = ({array})[(e.n - 1) * 10 + 1], …`: the assignments
/// that read a report's stats out of [`stats_array`] by its ordinal `n`.
pub(super) fn stats_from_array(array: &str, ordinal: &str) -> String {
    let width = AttemptStats::COLUMNS.len();
    AttemptStats::COLUMNS
        .iter()
        .enumerate()
        // Parenthesized: PostgreSQL subscripts a cast (`ARRAY[…]::BIGINT[]`)
        // only inside parentheses.
        .map(|(i, column)| {
            format!(
                "{column} = ({array})[({ordinal} - 1) * {width} + {}]",
                i + 1
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Writes `stats` onto the open attempt `number` of datum `datum_id`.
/// Runs inside the transaction of the report, after the datum's update.
pub(super) fn record_attempt_stats(
    conn: &mut DbConn,
    datum_id: i64,
    number: i32,
    stats: Option<&AttemptStats>,
) -> ModelResult<()> {
    let assignments = stats_assignments(stats);
    let Some(assignments) = assignments.strip_prefix(", ") else {
        return Ok(());
    };
    let mut stmt = Stmt::new(conn.backend());
    stmt.push(&format!(
        "UPDATE attempts SET {assignments} \
         WHERE datum_id = {datum_id} AND number = {number} AND outcome IS NULL"
    ));
    stmt.execute(conn)?;
    Ok(())
}

/// The statistics of every attempt of datum `datum_id`, by attempt number,
/// for attempts that have any.
pub fn attempt_stats(conn: &mut DbConn, datum_id: i64) -> ModelResult<Vec<(i32, AttemptStats)>> {
    type Row = (
        i32,
        Option<i64>,
        Option<i64>,
        Option<i64>,
        Option<i64>,
        Option<i64>,
        Option<i64>,
        Option<i64>,
        Option<i64>,
        Option<i64>,
        Option<i64>,
    );
    let rows: Vec<Row> = with_conn!(conn, c => attempts::table
        .filter(attempts::datum_id.eq(datum_id))
        .order(attempts::number)
        .select((
            attempts::number,
            attempts::download_files,
            attempts::download_bytes,
            attempts::download_ms,
            attempts::command_ms,
            attempts::user_cpu_ms,
            attempts::system_cpu_ms,
            attempts::max_rss_bytes,
            attempts::upload_files,
            attempts::upload_bytes,
            attempts::upload_ms,
        ))
        .load(c))?;
    let unsigned = |v: Option<i64>| v.and_then(|v| u64::try_from(v).ok());
    Ok(rows
        .into_iter()
        .map(|r| {
            let values = [r.1, r.2, r.3, r.4, r.5, r.6, r.7, r.8, r.9, r.10].map(unsigned);
            (r.0, AttemptStats::from_values(values))
        })
        .filter(|(_, stats)| !stats.is_empty())
        .collect())
}

/// Counts, maxima and sums over a job's attempts, in one pass.
#[derive(QueryableByName, Debug)]
struct Totals {
    #[diesel(sql_type = BigInt)]
    measured: i64,
    #[diesel(sql_type = BigInt)]
    download_n: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    download_max: Option<i64>,
    #[diesel(sql_type = BigInt)]
    command_n: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    command_max: Option<i64>,
    #[diesel(sql_type = BigInt)]
    upload_n: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    upload_max: Option<i64>,
    #[diesel(sql_type = BigInt)]
    memory_n: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    memory_max: Option<i64>,
    #[diesel(sql_type = BigInt)]
    cpu_n: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    cpu_max: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    download_bytes: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    upload_bytes: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    first_start: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    last_finish: Option<i64>,
    #[diesel(sql_type = BigInt)]
    done_n: i64,
}

#[derive(QueryableByName, Debug)]
struct Value {
    #[diesel(sql_type = Nullable<BigInt>)]
    v: Option<i64>,
}

#[derive(QueryableByName, Debug)]
struct SlowRow {
    #[diesel(sql_type = BigInt)]
    datum_id: i64,
    #[diesel(sql_type = Integer)]
    number: i32,
    #[diesel(sql_type = Nullable<Text>)]
    outcome: Option<Outcome>,
    #[diesel(sql_type = BigInt)]
    duration_ms: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    download_ms: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    command_ms: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    upload_ms: Option<i64>,
}

#[derive(QueryableByName, Debug)]
struct ErrorRow {
    #[diesel(sql_type = Text)]
    message: String,
    #[diesel(sql_type = BigInt)]
    count: i64,
    #[diesel(sql_type = BigInt)]
    example: i64,
}

/// The 0-based index, in ascending order, of the nearest-rank `percent`
/// percentile of `n` values: the smallest value with at least `percent` %
/// of the values at or below it.
pub fn nearest_rank(percent: i64, n: i64) -> i64 {
    ((percent * n + 99) / 100).clamp(1, n.max(1)) - 1
}

/// The nearest-rank `percent` percentile of the SQL expression `expr` over
/// the job's attempts that have it (`n` of them), read from whichever end
/// of the order is nearer.
fn percentile(
    conn: &mut DbConn,
    scope: &str,
    expr: &str,
    n: i64,
    percent: i64,
) -> ModelResult<i64> {
    let index = nearest_rank(percent, n);
    let (direction, offset) = if index > n / 2 {
        ("DESC", n - 1 - index)
    } else {
        ("ASC", index)
    };
    let mut stmt = Stmt::new(conn.backend());
    stmt.push(&format!(
        "SELECT {expr} AS v FROM attempts WHERE {scope} AND {expr} IS NOT NULL \
         ORDER BY {expr} {direction} LIMIT 1 OFFSET {offset}"
    ));
    let rows: Vec<Value> = stmt.load(conn)?;
    Ok(rows.into_iter().next().and_then(|row| row.v).unwrap_or(0))
}

/// p50, p95 and max of `expr` over the `n` attempts that have it.
fn percentiles(
    conn: &mut DbConn,
    scope: &str,
    expr: &str,
    n: i64,
    max: Option<i64>,
) -> ModelResult<Option<Percentiles>> {
    let Some(max) = max.filter(|_| n > 0) else {
        return Ok(None);
    };
    Ok(Some(Percentiles {
        count: n,
        p50: percentile(conn, scope, expr, n, 50)?,
        p95: percentile(conn, scope, expr, n, 95)?,
        max,
    }))
}

/// The `resource_requests` that fit a p95 peak of `memory` bytes and `cpu`
/// millicores, with [`MARGIN`]: memory rounded up to a whole MiB, CPU to a
/// tenth of a CPU (and never below it).
pub fn suggest(memory: i64, cpu: i64, attempts: i64) -> ResourceSuggestion {
    const MIB: i64 = 1024 * 1024;
    let (num, den) = MARGIN;
    let with_margin = |v: i64| (v.max(0).saturating_mul(num) + den - 1) / den;
    let mebibytes = (with_margin(memory) + MIB - 1) / MIB;
    let millis = ((with_margin(cpu) + 99) / 100 * 100).max(100);
    let cpu = if millis % 1000 == 0 {
        (millis / 1000).to_string()
    } else {
        format!("{millis}m")
    };
    ResourceSuggestion {
        memory: format!("{}Mi", mebibytes.max(1)),
        cpu,
        margin: num as f64 / den as f64,
        attempts,
    }
}

/// A job's statistics over its attempts (see the module documentation
/// for how they are computed).
pub fn job_stats(conn: &mut DbConn, job_id: i64) -> ModelResult<JobStatsResponse> {
    // The id just before the newest WINDOW attempts, if there are more.
    let mut stmt = Stmt::new(conn.backend());
    stmt.push(&format!(
        "SELECT id AS v FROM attempts WHERE job_id = {job_id} \
         ORDER BY id DESC LIMIT 1 OFFSET {WINDOW}"
    ));
    let before: Vec<Value> = stmt.load(conn)?;
    let before = before.into_iter().next().and_then(|row| row.v);
    // Which attempts every query below reads. In the window, `job_id + 0`
    // keeps the planners off the job's index (all of its attempts) and on
    // the primary key's range (the newest WINDOW).
    let scope = match before {
        Some(id) => format!("id > {id} AND job_id + 0 = {job_id}"),
        None => format!("job_id = {job_id}"),
    };
    let any = AttemptStats::COLUMNS.join(", ");
    let mut stmt = Stmt::new(conn.backend());
    stmt.push(&format!(
        "SELECT \
            COUNT(COALESCE({any})) AS measured, \
            COUNT(download_ms) AS download_n, MAX(download_ms) AS download_max, \
            COUNT(command_ms) AS command_n, MAX(command_ms) AS command_max, \
            COUNT(upload_ms) AS upload_n, MAX(upload_ms) AS upload_max, \
            COUNT(max_rss_bytes) AS memory_n, MAX(max_rss_bytes) AS memory_max, \
            COUNT({CPU_SQL}) AS cpu_n, MAX({CPU_SQL}) AS cpu_max, \
            CAST(SUM(download_bytes) AS BIGINT) AS download_bytes, \
            CAST(SUM(upload_bytes) AS BIGINT) AS upload_bytes, \
            MIN(started_at) AS first_start, MAX(finished_at) AS last_finish, \
            COUNT(CASE WHEN outcome = 'done' THEN 1 END) AS done_n \
         FROM attempts WHERE {scope}"
    ));
    let totals: Vec<Totals> = stmt.load(conn)?;
    let Some(t) = totals.into_iter().next() else {
        return Err(anyhow::anyhow!("no totals for job {job_id}").into());
    };
    let phases = PhaseStats {
        download: percentiles(conn, &scope, "download_ms", t.download_n, t.download_max)?,
        command: percentiles(conn, &scope, "command_ms", t.command_n, t.command_max)?,
        upload: percentiles(conn, &scope, "upload_ms", t.upload_n, t.upload_max)?,
    };
    let memory = percentiles(conn, &scope, "max_rss_bytes", t.memory_n, t.memory_max)?;
    let cpu = percentiles(conn, &scope, CPU_SQL, t.cpu_n, t.cpu_max)?;

    let datums_done = if before.is_some() {
        t.done_n
    } else {
        // Done datums, skipped ones included, counted as progress counts
        // them (`models::counts`), without reading every done datum.
        let done = DatumStatus::Done;
        super::counts::job_counts(conn, job_id)?
            .and_then(|(counts, _)| {
                let i = super::counts::stored().iter().position(|s| *s == done)?;
                counts.get(i).copied()
            })
            .unwrap_or(0)
    };
    let elapsed_ms = match (t.first_start, t.last_finish) {
        (Some(start), Some(finish)) => (finish - start).max(0),
        _ => 0,
    };
    let download_bytes = t.download_bytes.unwrap_or(0);
    let upload_bytes = t.upload_bytes.unwrap_or(0);
    let per_second = |amount: i64| {
        if elapsed_ms > 0 {
            amount as f64 * 1000.0 / elapsed_ms as f64
        } else {
            0.0
        }
    };
    let throughput = Throughput {
        elapsed_ms,
        datums_done,
        datums_per_second: per_second(datums_done),
        download_bytes,
        upload_bytes,
        bytes_per_second: per_second(download_bytes.saturating_add(upload_bytes)),
    };

    let mut stmt = Stmt::new(conn.backend());
    stmt.push(&format!(
        "SELECT datum_id, number, outcome, finished_at - started_at AS duration_ms, \
            download_ms, command_ms, upload_ms \
         FROM attempts WHERE {scope} AND finished_at IS NOT NULL \
         ORDER BY finished_at - started_at DESC, id LIMIT {SLOWEST}"
    ));
    let slow: Vec<SlowRow> = stmt.load(conn)?;
    let slowest = slow
        .into_iter()
        .map(|row| SlowAttempt {
            datum_id: row.datum_id,
            attempt: row.number,
            outcome: row.outcome,
            duration_ms: row.duration_ms,
            download_ms: row.download_ms,
            command_ms: row.command_ms,
            upload_ms: row.upload_ms,
        })
        .collect();

    let mut stmt = Stmt::new(conn.backend());
    stmt.push(&format!(
        "SELECT COALESCE(error_message, '') AS message, COUNT(*) AS count, MIN(id) AS example \
         FROM datums WHERE job_id = {job_id} AND status = 'error' \
         GROUP BY error_message ORDER BY COUNT(*) DESC, MIN(id) LIMIT {ERROR_GROUPS}"
    ));
    let groups: Vec<ErrorRow> = stmt.load(conn)?;
    let errors = groups
        .into_iter()
        .map(|row| ErrorGroup {
            message: row.message,
            count: row.count,
            example_datum_id: row.example,
        })
        .collect();

    let suggestion = match (memory, cpu) {
        (Some(memory), Some(cpu)) => Some(suggest(memory.p95, cpu.p95, memory.count)),
        _ => None,
    };
    Ok(JobStatsResponse {
        job_id,
        measured_attempts: t.measured,
        phases,
        memory_bytes: memory,
        cpu_millicores: cpu,
        throughput,
        slowest,
        errors,
        suggestion,
        window: before.map(|_| WINDOW),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_matches_its_definition() {
        // 1..=20: the median is the 10th value, p95 the 19th.
        assert_eq!(nearest_rank(50, 20), 9);
        assert_eq!(nearest_rank(95, 20), 18);
        assert_eq!(nearest_rank(95, 10), 9);
        assert_eq!(nearest_rank(50, 1), 0);
        assert_eq!(nearest_rank(50, 3), 1);
        assert_eq!(nearest_rank(100, 7), 6);
    }

    #[test]
    fn suggestions_round_up_with_the_margin() {
        // 200 MiB × 1.25 = 250 MiB; 800m × 1.25 = 1000m = "1".
        let s = suggest(200 * 1024 * 1024, 800, 3);
        assert_eq!((s.memory.as_str(), s.cpu.as_str()), ("250Mi", "1"));
        assert_eq!(s.margin, 1.25);
        // A byte over rounds up to the next MiB; 130m × 1.25 = 162.5m → 200m.
        let s = suggest(1, 130, 1);
        assert_eq!((s.memory.as_str(), s.cpu.as_str()), ("1Mi", "200m"));
        // An idle command still asks for a tenth of a CPU.
        assert_eq!(suggest(0, 0, 1).cpu, "100m");
    }

    #[test]
    fn stats_become_assignments() {
        assert_eq!(stats_assignments(None), "");
        let stats = AttemptStats {
            command_ms: Some(5),
            max_rss_bytes: Some(u64::MAX),
            ..AttemptStats::default()
        };
        let sql = stats_assignments(Some(&stats));
        assert!(sql.contains(", command_ms = 5"), "{sql}");
        assert!(
            sql.contains(&format!(", max_rss_bytes = {}", i64::MAX)),
            "{sql}"
        );
        assert!(sql.contains(", upload_ms = NULL"), "{sql}");
        let array = stats_array([Some(stats), None].into_iter());
        assert_eq!(array.matches(", ").count(), 19, "{array}");
        assert!(stats_from_array("$9", "e.n").contains("upload_ms = ($9)[(e.n - 1) * 10 + 10]"));
    }
}
