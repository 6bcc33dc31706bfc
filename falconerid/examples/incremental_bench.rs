//! The incremental-run benchmark (issue 11): over BENCH_FILES `file://`
//! files (default 100,000), one datum each (`/*`), how long an incremental
//! job takes from its start (`start_job::create`, as `POST /v1/jobs` runs
//! it) until it is `done` having decided that no datum must run, against
//! the floor of listing the same files through falconeri's storage
//! (`Storage::list_pages`, best of three, warm cache) in the same run; and
//! the same run with 10 new files, which must leave exactly 10 datums to
//! run. On SQLite (as the embedded server runs it) and PostgreSQL (from
//! scripts/test). Prints a Markdown table; see guide/src/performance.md.
//!
//! The first run is planned by the same code, not incrementally; its
//! datums are then marked done with one UPDATE (as if its workers had run
//! `true` 100,000 times, which would take minutes and measure nothing of
//! interest here).

use std::{sync::Arc, time::Instant};

use anyhow::{Context, Result, bail, ensure};
use async_trait::async_trait;
use falconeri_common::{
    db::{DbConn, testing::TestDb},
    models::Job,
    pipeline::PipelineSpec,
    status::JobStatus,
    storage::{FileStorage, Storage},
};
use falconerid::{
    AppState, Config,
    executor::{Executor, WorkerLaunch, WorkerState},
    start_job::{self, Source},
};
use futures::StreamExt;

/// An executor that starts nothing: the benchmark ends at the decision.
struct NoWorkers;

#[async_trait]
impl Executor for NoWorkers {
    fn name(&self) -> &'static str {
        "none"
    }
    async fn start_workers(&self, _launch: &WorkerLaunch, _count: u32) -> Result<()> {
        Ok(())
    }
    async fn stop_workers(&self, _job_id: i64) -> Result<()> {
        Ok(())
    }
    async fn workers(&self, _job_id: i64) -> Result<Vec<WorkerState>> {
        Ok(Vec::new())
    }
}

fn spec(input: &str, egress: &str, incremental: bool) -> Result<PipelineSpec> {
    let json = serde_json::json!({
        "pipeline": { "name": "incremental-bench" },
        "transform": { "cmd": ["true"], "image": "alpine" },
        "parallelism_spec": { "constant": 1 },
        "resource_requests": { "memory": "64Mi", "cpu": 0.1 },
        "input": { "atom": { "URI": input, "repo": "in", "glob": "/*" } },
        "egress": { "URI": egress },
        "incremental": incremental,
    });
    PipelineSpec::from_json(&json.to_string()).map_err(|err| anyhow::anyhow!("{err:?}"))
}

/// Seconds to list `uri` through falconeri's `file://` storage, best of 3.
async fn list_seconds(uri: &str, expected: usize) -> Result<f64> {
    let mut best = f64::MAX;
    for _ in 0..3 {
        let started = Instant::now();
        let mut pages = FileStorage.list_pages_from(uri, "");
        let mut n = 0;
        while let Some(page) = pages.next().await {
            n += page?.len();
        }
        best = best.min(started.elapsed().as_secs_f64());
        ensure!(n == expected, "listed {n} files, expected {expected}");
    }
    Ok(best)
}

/// Marks every datum of `job` done, as its workers would have.
fn finish_first_run(conn: &mut DbConn, job: i64) -> Result<()> {
    use diesel::connection::SimpleConnection;
    let sql = format!(
        "UPDATE datums SET status = 'done', ready_order = NULL, attempt = 1 WHERE job_id = {job};
         UPDATE jobs SET status = 'done' WHERE id = {job};"
    );
    match conn {
        DbConn::Sqlite(c) => c.batch_execute(&sql)?,
        DbConn::Postgres(c) => c.batch_execute(&sql)?,
    }
    Ok(())
}

/// Sends `cmd` (`enable`, `disable`) to `perf record --control
/// fifo:PATH` when BENCH_PERF_CTL names that fifo, so a profile started
/// with `-D -1` covers the unchanged run's decision only, not the files'
/// creation or the first run. perf reads the fifo on its own time, so
/// this waits a moment (outside the timed part) for it to act.
fn perf_ctl(cmd: &str) {
    if let Ok(path) = std::env::var("BENCH_PERF_CTL") {
        use std::io::Write;
        if let Ok(mut fifo) = std::fs::OpenOptions::new().write(true).open(&path) {
            let _ = writeln!(fifo, "{cmd}");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

async fn run(backend: &str, files: usize) -> Result<()> {
    let db = match backend {
        "sqlite" => TestDb::sqlite(),
        "postgres" => TestDb::postgres(),
        other => bail!("unknown backend {other:?} (sqlite, postgres)"),
    };
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input)?;
    for i in 0..files {
        std::fs::write(input.join(format!("f{i:07}")), i.to_string())?;
    }
    let uri = format!("file://{}/", input.display());
    let egress = format!("file://{}/out/", dir.path().display());
    let config = Config::local(
        dir.path(),
        "bench-admin-token-0123456789".into(),
        vec!["true".into()],
    );
    let state = AppState::new(config, db.pool.clone(), Arc::new(NoWorkers));
    state.set_public_url("http://127.0.0.1:1".to_owned());

    let list = list_seconds(&uri, files).await?;

    let started = Instant::now();
    let first =
        start_job::create(&state, spec(&uri, &egress, false)?, Source::Inputs, None).await?;
    let first_s = started.elapsed().as_secs_f64();
    ensure!(
        first.datum_count == files as i64,
        "first run: {} datums",
        first.datum_count
    );
    let mut conn = db.pool.get()?;
    finish_first_run(&mut conn, first.id)?;

    perf_ctl("enable");
    let started = Instant::now();
    let second =
        start_job::create(&state, spec(&uri, &egress, true)?, Source::Inputs, None).await?;
    let decide = started.elapsed().as_secs_f64();
    perf_ctl("disable");
    ensure!(
        second.status() == JobStatus::Done && second.skipped_count == files as i64,
        "the unchanged run must end done with every datum skipped: {second:?}"
    );

    for i in 0..10 {
        std::fs::write(input.join(format!("new{i}")), "new")?;
    }
    let started = Instant::now();
    let third = start_job::create(&state, spec(&uri, &egress, true)?, Source::Inputs, None).await?;
    let ten_new = started.elapsed().as_secs_f64();
    let counts = Job::counts(&mut conn, third.id).context("counts")?;
    ensure!(
        counts.ready == 10 && counts.skipped == files as i64,
        "10 new files must leave 10 datums to run: {counts:?}"
    );
    println!(
        "| {backend} | {files} | {list:.2} | {first_s:.2} | {decide:.2} | {:.2} | {ten_new:.2} | {} |",
        decide / list,
        counts.ready
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let files: usize = std::env::var("BENCH_FILES")
        .unwrap_or_else(|_| "100000".into())
        .parse()
        .context("BENCH_FILES must be a number")?;
    let backends = std::env::var("BENCH_BACKENDS").unwrap_or_else(|_| "sqlite,postgres".into());
    println!(
        "| database | files | list s (floor) | first run planned s | unchanged run decided s | \
         ratio to list (target ≤ 2) | +10 new files planned s | datums to run |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for backend in backends.split(',') {
        run(backend, files).await?;
    }
    Ok(())
}
