//! Dashboard benchmark (issue 10): how long falconerid takes to answer
//! the requests the dashboard's job page makes for a job of BENCH_DATUMS
//! datums (default 1,000,000), and the datums table's pages. Run it with
//! `bench/dashboard`, which provides a throwaway PostgreSQL; it prints a
//! Markdown table (see guide/src/performance.md, "Dashboard at 1,000,000
//! datums").
//!
//! For each backend it
//! 1. makes a running job of BENCH_DATUMS datums in bulk SQL (one datum
//!    through the models, the rest by `INSERT … SELECT` over a generated
//!    series, with no input file rows: no measured request reads them),
//!    then gives it the mix of a job well under way, taken from the
//!    queue's front as workers take it: the first 95 % finished (99 in 100
//!    done with one attempt and its statistics, 1 in 100 failed after
//!    three attempts, with five distinct error messages), the next 64
//!    running with an open attempt, the rest ready. Bulk SQL because going through workers would take
//!    minutes per backend and measure dispatch, which `bench/dispatch`
//!    does;
//! 2. serves the real falconerid app in this process on 127.0.0.1 and
//!    sends each request over HTTP with the admin token (the dashboard's
//!    gateway forwards to the same handlers), BENCH_REPEAT times (default
//!    5), timing from the request to the last byte of the answer;
//! 3. loads the job page as `falconerid/assets/app.js` does: the job
//!    first; then, at once, the datums table's first page and the
//!    statistics with the attempts timeline side by side; once those two
//!    have answered, the progress (its first, immediate answer). The
//!    page's time is that critical path, measured.
//!
//! On PostgreSQL it measures twice: right after the bulk writes (with
//! ANALYZE, as autovacuum's analyze would have run after so many changes)
//! and after a VACUUM (the visibility map set, as autovacuum leaves a
//! table that has been quiet for a while).
//!
//! Environment: `BENCH_DATUMS`, `BENCH_REPEAT`, `BENCH_BACKENDS` (default
//! `postgres,sqlite`), `FALCONERI_TEST_POSTGRES_URL` (set by scripts/test).

#[path = "bench_support/mod.rs"]
mod bench_support;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bench_support::{ADMIN_TOKEN, create_running_job, start_server};
use diesel::connection::SimpleConnection;
use falconeri_common::db::{DbConn, testing::TestDb};
use tokio_util::sync::CancellationToken;

/// The job page must answer within this, in milliseconds (issue 10).
const PAGE_TARGET_MS: f64 = 300.0;
/// A datums table page must answer within this, in milliseconds.
const TABLE_TARGET_MS: f64 = 100.0;

/// Runs `sql` (several statements) on `conn`.
fn execute(conn: &mut DbConn, sql: &str) -> Result<()> {
    match conn {
        DbConn::Sqlite(c) => c.batch_execute(sql)?,
        DbConn::Postgres(c) => c.batch_execute(sql)?,
    }
    Ok(())
}

/// The SQL that fills job `job` (which has datum seq 0 already) up to
/// `n` datums and gives it the mix described in the module doc.
fn fill_sql(postgres: bool, job: i64, n: usize, now: i64) -> String {
    let last = n.saturating_sub(1);
    let series = if postgres {
        format!("generate_series(1, {last}) AS g(s)")
    } else {
        format!(
            "(WITH RECURSIVE g(s) AS (SELECT 1 WHERE {last} >= 1 \
             UNION ALL SELECT s + 1 FROM g WHERE s < {last}) SELECT s FROM g)"
        )
    };
    // Workers take datums from the queue's front (planning order): the
    // first 95 % have finished (1 in 100 of them failed), the next 64 run,
    // the rest wait.
    let front = n * 95 / 100;
    // The job ran for 2 ms a datum (16 workers at ~500 datums/s) until now.
    let t0 = now - 2 * n as i64;
    let stats_cols = "download_files, download_bytes, download_ms, command_ms, user_cpu_ms, \
                      system_cpu_ms, max_rss_bytes, upload_files, upload_bytes, upload_ms";
    // Deterministic spread from the seq: percentiles have something to sort.
    let stats_vals = "1, 1000 + (seq * 7919) % 100000, 5 + (seq * 31) % 200, \
                      100 + (seq * 7919) % 5000, 80 + (seq * 13) % 4000, 5 + seq % 300, \
                      (50 + (seq * 104729) % 400) * 1048576, 1, 500 + (seq * 17) % 50000, \
                      3 + (seq * 7) % 100";
    let error_message = "'command failed: exit status ' || CAST(1 + (seq / 100) % 5 AS TEXT)";
    format!(
        "INSERT INTO datums (job_id, seq, status, attempt, interrupted, max_tries, created_at, \
            updated_at, pod_failures, ready_order) \
         SELECT {job}, s, 'ready', 0, 0, 3, {t0}, {t0}, 0, s FROM {series};
         UPDATE jobs SET datum_count = {n} WHERE id = {job};
         UPDATE datums SET status = 'done', ready_order = NULL, attempt = 1, \
            owner = 'bench-worker-' || CAST(seq % 16 AS TEXT), \
            started_at = {t0} + seq * 2, finished_at = {t0} + seq * 2 + 30, \
            updated_at = {t0} + seq * 2 + 30 \
          WHERE job_id = {job} AND seq < {front} AND seq % 100 <> 0;
         UPDATE datums SET status = 'error', ready_order = NULL, attempt = 3, \
            owner = 'bench-worker-' || CAST(seq % 16 AS TEXT), \
            started_at = {t0} + seq * 2, finished_at = {t0} + seq * 2 + 30, \
            updated_at = {t0} + seq * 2 + 30, error_message = {error_message} \
          WHERE job_id = {job} AND seq < {front} AND seq % 100 = 0;
         UPDATE datums SET status = 'running', ready_order = NULL, attempt = 1, \
            owner = 'bench-worker-' || CAST(seq % 16 AS TEXT), \
            lease_expires_at = {now} + 86400000, started_at = {now} - 100, updated_at = {now} \
          WHERE job_id = {job} AND seq >= {front} AND seq < {front} + 64;
         INSERT INTO attempts (job_id, datum_id, number, worker_id, started_at, finished_at, \
            outcome, exit_code, {stats_cols}) \
         SELECT job_id, id, 1, owner, started_at, finished_at, 'done', 0, {stats_vals} \
           FROM datums WHERE job_id = {job} AND status = 'done';
         INSERT INTO attempts (job_id, datum_id, number, worker_id, started_at, finished_at, \
            outcome, exit_code, error_message, {stats_cols}) \
         SELECT job_id, id, k.number, owner, started_at - 20 + k.number * 10, \
            started_at - 10 + k.number * 10, 'error', 1 + (seq / 100) % 5, \
            {error_message}, {stats_vals} \
           FROM datums, (SELECT 1 AS number UNION ALL SELECT 2 UNION ALL SELECT 3) AS k \
          WHERE job_id = {job} AND status = 'error';
         INSERT INTO attempts (job_id, datum_id, number, worker_id, started_at) \
         SELECT job_id, id, 1, owner, started_at \
           FROM datums WHERE job_id = {job} AND status = 'running';"
    )
}

/// One request's times, in milliseconds.
#[derive(Default)]
struct Timings(Vec<f64>);

impl Timings {
    fn median(&self) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    }
    fn max(&self) -> f64 {
        self.0.iter().copied().fold(f64::NAN, f64::max)
    }
}

/// GETs `path` and reads the whole answer; the time it took in ms and the
/// answer as JSON. A non-2xx answer is an error.
async fn get(client: &reqwest::Client, base: &str, path: &str) -> Result<(f64, serde_json::Value)> {
    let started = Instant::now();
    let response = client
        .get(format!("{base}{path}"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .with_context(|| format!("GET {path}"))?;
    let status = response.status();
    let body = response.bytes().await?;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if !status.is_success() {
        bail!("GET {path}: {status}: {}", String::from_utf8_lossy(&body));
    }
    Ok((ms, serde_json::from_slice(&body)?))
}

/// The job page's requests, as app.js orders them; the critical path's
/// time and each request's.
async fn job_page(client: &reqwest::Client, base: &str, job: i64) -> Result<[f64; 6]> {
    let started = Instant::now();
    let (job_ms, _) = get(client, base, &format!("/v1/jobs/{job}")).await?;
    let (datums_path, stats_path, timeline_path) = (
        format!("/v1/jobs/{job}/datums?limit=50"),
        format!("/v1/jobs/{job}/stats"),
        format!("/v1/jobs/{job}/attempts?limit=500"),
    );
    let datums = get(client, base, &datums_path);
    let rest = async {
        let (stats, timeline) = tokio::join!(
            get(client, base, &stats_path),
            get(client, base, &timeline_path),
        );
        let (progress_ms, progress) =
            get(client, base, &format!("/v1/jobs/{job}/progress")).await?;
        Ok::<_, anyhow::Error>((stats?.0, timeline?.0, progress_ms, progress))
    };
    let (datums, rest) = tokio::join!(datums, rest);
    let (stats_ms, timeline_ms, progress_ms, progress) = rest?;
    let page_ms = started.elapsed().as_secs_f64() * 1000.0;
    ensure!(
        progress["counts"]["done"].as_i64().unwrap_or(0) > 0,
        "progress has no done datums: {progress}"
    );
    Ok([
        page_ms,
        job_ms,
        datums?.0,
        stats_ms,
        timeline_ms,
        progress_ms,
    ])
}

/// Measures every request against job `job` and prints the table's rows.
async fn measure(label: &str, base: &str, job: i64, middle: i64, repeat: usize) -> Result<()> {
    let client = reqwest::Client::new();
    // One unmeasured page load: connections open, caches as a user finds
    // them after the first look.
    job_page(&client, base, job).await?;
    let names = [
        "job page (critical path, measured)",
        "`GET /v1/jobs/{id}`",
        "`GET …/datums?limit=50` (table's first page)",
        "`GET …/stats`",
        "`GET …/attempts?limit=500` (timeline)",
        "`GET …/progress` (counts)",
    ];
    let mut page: [Timings; 6] = Default::default();
    for _ in 0..repeat {
        for (t, ms) in page.iter_mut().zip(job_page(&client, base, job).await?) {
            t.0.push(ms);
        }
    }
    for (i, (name, t)) in names.iter().zip(&page).enumerate() {
        let target = if i == 0 {
            format!("≤ {PAGE_TARGET_MS}")
        } else {
            String::new()
        };
        println!(
            "| {label} | {name} | {:.1} | {:.1} | {target} |",
            t.median(),
            t.max()
        );
    }
    let pages = [
        ("table: later page (`after`)", format!("after={middle}")),
        ("table: status error", "status=error".to_owned()),
        (
            "table: status ready, later page",
            format!("status=ready&after={middle}"),
        ),
        (
            "table: status done, later page",
            format!("status=done&after={middle}"),
        ),
        ("table: outcome error", "outcome=error".to_owned()),
        (
            "table: outcome error, later page",
            format!("outcome=error&after={middle}"),
        ),
    ];
    for (name, query) in pages {
        let mut t = Timings::default();
        let path = format!("/v1/jobs/{job}/datums?limit=50&{query}");
        get(&client, base, &path).await?;
        for _ in 0..repeat {
            let (ms, body) = get(&client, base, &path).await?;
            ensure!(
                body["datums"].as_array().is_some_and(|d| !d.is_empty()),
                "{path}: an empty page"
            );
            t.0.push(ms);
        }
        println!(
            "| {label} | {name} | {:.1} | {:.1} | ≤ {TABLE_TARGET_MS} |",
            t.median(),
            t.max()
        );
    }
    Ok(())
}

async fn run(backend: &str, datums: usize, repeat: usize) -> Result<()> {
    let db = match backend {
        "sqlite" => TestDb::sqlite(),
        "postgres" => TestDb::postgres(),
        other => bail!("unknown backend {other:?} in BENCH_BACKENDS (sqlite, postgres)"),
    };
    let postgres = matches!(backend, "postgres");
    let started = Instant::now();
    let pool = db.pool.clone();
    let job =
        tokio::task::spawn_blocking(move || create_running_job(&pool, "dashboard", 1)).await??;
    let pool = db.pool.clone();
    let middle = tokio::task::spawn_blocking(move || -> Result<i64> {
        let mut conn = pool.get()?;
        let now = falconeri_common::models::db_now(&mut conn)?;
        execute(&mut conn, &fill_sql(postgres, job.id, datums, now))?;
        execute(&mut conn, "ANALYZE;")?;
        use diesel::{ExpressionMethods, QueryDsl, RunQueryDsl};
        use falconeri_common::db::schema::datums;
        let query = datums::table
            .filter(datums::job_id.eq(job.id))
            .filter(datums::seq.eq(i64::try_from(datums / 2)?))
            .select(datums::id);
        let middle: i64 = match &mut conn {
            DbConn::Sqlite(c) => query.first(&mut **c)?,
            DbConn::Postgres(c) => query.first(&mut **c)?,
        };
        Ok(middle)
    })
    .await??;
    eprintln!(
        "  {backend}: {datums} datums made in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let dir = tempfile::tempdir()?;
    let stop = CancellationToken::new();
    let (addr, server) = start_server(&db, dir.path(), stop.clone()).await?;
    let base = format!("http://{addr}");
    if postgres {
        measure("postgres, after bulk writes", &base, job.id, middle, repeat).await?;
        let pool = db.pool.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let mut conn = pool.get()?;
            // One statement each: several in one string run as one
            // transaction, where VACUUM may not run.
            execute(&mut conn, "VACUUM ANALYZE datums")?;
            execute(&mut conn, "VACUUM ANALYZE attempts")
        })
        .await??;
        measure("postgres, vacuumed", &base, job.id, middle, repeat).await?;
    } else {
        measure("sqlite", &base, job.id, middle, repeat).await?;
    }
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .context("server did not stop")???;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let number = |name: &str, default: usize| -> Result<usize> {
        match std::env::var(name) {
            Ok(v) => v
                .parse()
                .with_context(|| format!("{name} must be a number")),
            Err(_) => Ok(default),
        }
    };
    let datums = number("BENCH_DATUMS", 1_000_000)?.max(200);
    let repeat = number("BENCH_REPEAT", 5)?.max(1);
    let backends = std::env::var("BENCH_BACKENDS").unwrap_or_else(|_| "postgres,sqlite".into());
    println!("{datums} datums; times in ms over HTTP on 127.0.0.1, {repeat} runs each\n");
    println!("| database | request | median | max | target |");
    println!("|---|---|---:|---:|---|");
    for backend in backends.split(',') {
        run(backend, datums, repeat).await?;
    }
    Ok(())
}
