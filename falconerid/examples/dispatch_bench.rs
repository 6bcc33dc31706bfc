//! Dispatch benchmark: how fast falconerid hands out and takes back no-op
//! datums over REST, against the floor of the bare SQL a queue needs. Run it
//! with `bench/dispatch`, which provides a PostgreSQL cluster with fsync on;
//! it prints a Markdown table (see guide/src/performance.md, "Dispatch").
//!
//! For each backend and size it
//! 1. inserts a running job of that many no-op datums through the models
//!    (no workers are started: the executor starts nothing),
//! 2. serves the real falconerid app in this process on 127.0.0.1 (with its
//!    babysitter, and on PostgreSQL its change listener) and drains the job
//!    with 16 client tasks through the typed REST client, each with its own
//!    worker id and the job's worker token, timing every reserve and done,
//! 3. counts every SQL statement diesel sends meanwhile (transaction
//!    statements and pool check-out pings included), through diesel's
//!    instrumentation, which sees the in-process server's connections,
//! 4. drains a fresh job of the same size with the floor: 16 threads, each
//!    on its own connection, running only a claim statement (`UPDATE … WHERE
//!    id = (SELECT … FOR UPDATE SKIP LOCKED)` on PostgreSQL) and a completion
//!    `UPDATE` per datum, straight over diesel.
//!
//! Besides wall time, each drain is charged the CPU it cost: this process's
//! (clients and server, or the floor's threads) plus the PostgreSQL
//! cluster's (its postmaster and every backend, live or reaped), read from
//! `/proc`. CPU per datum holds still on a machine shared with other work,
//! where wall-clock rates do not, so the table gives both.
//!
//! Environment: `BENCH_SIZES` (comma-separated datum counts, default
//! `1000,20000,100000,1000000`), `BENCH_BACKENDS` (default
//! `postgres,sqlite`), `BENCH_WORKERS` (default 16), and
//! `FALCONERI_TEST_POSTGRES_URL` (set by scripts/test).

#[path = "bench_support/mod.rs"]
mod bench_support;

use std::{
    sync::{
        Arc, Barrier,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use bench_support::{BenchJob, create_running_job, percentile_ms, rest, start_server};
use diesel::{
    QueryableByName, RunQueryDsl,
    connection::{Instrumentation, InstrumentationEvent, set_default_instrumentation},
    sql_types::{BigInt, Integer, Text},
};
use falconeri_common::db::{DbConn, DbPool, testing::TestDb};
use tokio_util::sync::CancellationToken;

/// Every statement any diesel connection of this process has sent.
static STATEMENTS: AtomicU64 = AtomicU64::new(0);

/// diesel's per-connection instrumentation: counts statements. Set before
/// the first connection, so every pool's connections carry it.
fn count_statements() -> Option<Box<dyn Instrumentation>> {
    Some(Box::new(|event: InstrumentationEvent<'_>| {
        if matches!(event, InstrumentationEvent::StartQuery { .. }) {
            STATEMENTS.fetch_add(1, Ordering::Relaxed);
        }
    }))
}

/// A fresh database of `backend`.
fn fresh_db(backend: &str) -> Result<TestDb> {
    Ok(match backend {
        "sqlite" => TestDb::sqlite(),
        "postgres" => TestDb::postgres(),
        other => bail!("unknown backend {other:?} in BENCH_BACKENDS (sqlite, postgres)"),
    })
}

/// How a backend is labelled in the table: PostgreSQL with its durability
/// settings, so a table from an fsync-off cluster cannot pass for this one.
fn backend_label(db: &TestDb) -> Result<String> {
    #[derive(QueryableByName)]
    struct Setting {
        #[diesel(sql_type = Text)]
        setting: String,
    }
    let mut conn = db.pool.get()?;
    match &mut conn {
        DbConn::Sqlite(_) => Ok("sqlite".to_owned()),
        DbConn::Postgres(c) => {
            let read = |c: &mut diesel::PgConnection, name: &str| -> Result<String> {
                Ok(
                    diesel::sql_query("SELECT setting FROM pg_settings WHERE name = $1")
                        .bind::<Text, _>(name)
                        .get_result::<Setting>(c)?
                        .setting,
                )
            };
            let fsync = read(c, "fsync")?;
            let commit = read(c, "synchronous_commit")?;
            if fsync != "on" || commit != "on" {
                eprintln!(
                    "warning: PostgreSQL runs with fsync={fsync}, synchronous_commit={commit}; \
                     run through bench/dispatch (FALCONERI_TEST_PG_FSYNC=1) for durable numbers"
                );
            }
            Ok(format!("postgres (fsync {fsync})"))
        }
    }
}

/// What the REST drain of one size measured.
struct Measured {
    drain: rest::Drain,
    statements: u64,
    cpu: Duration,
}

async fn measure_rest(backend: &str, size: usize, workers: usize) -> Result<(String, Measured)> {
    let db = fresh_db(backend)?;
    let mut label = backend_label(&db)?;
    let batch = bench_support::batch_size();
    if batch > 1 {
        label.push_str(&format!(", batches of {batch}"));
    }
    let pool = db.pool.clone();
    let job =
        tokio::task::spawn_blocking(move || create_running_job(&pool, "dispatch", size)).await??;
    let dir = tempfile::tempdir()?;
    let stop = CancellationToken::new();
    let (addr, server) = start_server(&db, dir.path(), stop.clone()).await?;
    let done = Arc::new(AtomicU64::new(0));
    let progress =
        bench_support::report_progress(format!("{backend} {size} REST"), done.clone(), size);
    let meter = CpuMeter::new(&db)?;
    let before = STATEMENTS.load(Ordering::Relaxed);
    let drain = rest::drain(&format!("http://{addr}"), &job, workers, done).await?;
    let statements = STATEMENTS.load(Ordering::Relaxed) - before;
    let cpu = meter.report(job.datums);
    progress.abort();
    stop.cancel();
    server.await??;
    if drain.completed != size {
        bail!("{backend}: {} of {size} datums completed", drain.completed);
    }
    if drain.retried > 0 {
        eprintln!("  {backend} {size}: {} requests retried", drain.retried);
    }
    Ok((
        label,
        Measured {
            drain,
            statements,
            cpu,
        },
    ))
}

/// The floor's claim on PostgreSQL: one statement picks and takes the next
/// ready datum, skipping rows other claimers hold.
const PG_CLAIM: &str = "\
UPDATE datums SET status = 'running', ready_order = NULL, attempt = attempt + 1, owner = $1, \
    lease_expires_at = $2, started_at = $3, updated_at = $3 \
WHERE id = (SELECT id FROM datums WHERE job_id = $4 AND ready_order IS NOT NULL \
            ORDER BY ready_order LIMIT 1 FOR UPDATE SKIP LOCKED) \
RETURNING id, attempt";

/// SQLite has one writer at a time, so the same statement needs no row
/// locks.
const SQLITE_CLAIM: &str = "\
UPDATE datums SET status = 'running', ready_order = NULL, attempt = attempt + 1, owner = $1, \
    lease_expires_at = $2, started_at = $3, updated_at = $3 \
WHERE id = (SELECT id FROM datums WHERE job_id = $4 AND ready_order IS NOT NULL \
            ORDER BY ready_order LIMIT 1) \
RETURNING id, attempt";

/// The floor's completion, guarded by the claim like the real one.
const COMPLETE: &str = "\
UPDATE datums SET status = 'done', finished_at = $1, updated_at = $1, lease_expires_at = NULL \
WHERE id = $2 AND owner = $3 AND attempt = $4 AND status = 'running'";

#[derive(QueryableByName)]
struct Claimed {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Integer)]
    attempt: i32,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Claims and completes one datum of `$job_id` as `$worker` on the
/// concrete connection `$c`; evaluates to false when nothing was left to
/// claim. A macro, because the statements are the same text for both
/// connection types but diesel's bounds differ.
macro_rules! claim_and_complete {
    ($c:expr, $claim_sql:expr, $job_id:expr, $worker:expr) => {{
        let now = now_ms();
        let claimed: Option<Claimed> = diesel::sql_query($claim_sql)
            .bind::<Text, _>($worker)
            .bind::<BigInt, _>(now + 30_000)
            .bind::<BigInt, _>(now)
            .bind::<BigInt, _>($job_id)
            .get_results($c)?
            .into_iter()
            .next();
        match claimed {
            None => false,
            Some(claimed) => {
                let updated = diesel::sql_query(COMPLETE)
                    .bind::<BigInt, _>(now_ms())
                    .bind::<BigInt, _>(claimed.id)
                    .bind::<Text, _>($worker)
                    .bind::<Integer, _>(claimed.attempt)
                    .execute($c)?;
                if updated != 1 {
                    bail!("the floor lost its claim on datum {}", claimed.id);
                }
                true
            }
        }
    }};
}

/// Drains `job` with the bare claim + complete pair on `workers` threads;
/// answers the wall time and the statements sent.
fn floor(pool: &DbPool, job: &BenchJob, workers: usize, meter: CpuMeter) -> Result<Floor> {
    let barrier = Arc::new(Barrier::new(workers + 1));
    let done = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..workers)
        .map(|w| {
            let (pool, barrier, done, job_id) =
                (pool.clone(), barrier.clone(), done.clone(), job.id);
            std::thread::spawn(move || -> Result<()> {
                let mut conn = pool.get()?;
                let worker = format!("floor-{w}");
                barrier.wait();
                loop {
                    let more = match &mut conn {
                        DbConn::Sqlite(c) => {
                            let c: &mut diesel::SqliteConnection = &mut *c;
                            claim_and_complete!(c, SQLITE_CLAIM, job_id, &worker)
                        }
                        DbConn::Postgres(c) => {
                            let c: &mut diesel::PgConnection = &mut *c;
                            claim_and_complete!(c, PG_CLAIM, job_id, &worker)
                        }
                    };
                    if !more {
                        return Ok(());
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    barrier.wait();
    let before = STATEMENTS.load(Ordering::Relaxed);
    let started = Instant::now();
    for handle in handles {
        handle
            .join()
            .map_err(|_| anyhow::anyhow!("a floor thread panicked"))??;
    }
    let elapsed = started.elapsed();
    let cpu = meter.report(job.datums);
    let statements = STATEMENTS.load(Ordering::Relaxed) - before;
    let completed = done.load(Ordering::Relaxed);
    if usize::try_from(completed).ok() != Some(job.datums) {
        bail!("the floor completed {completed} of {} datums", job.datums);
    }
    Ok(Floor {
        elapsed,
        statements,
        cpu,
    })
}

/// What the floor's drain of one size measured.
struct Floor {
    elapsed: Duration,
    statements: u64,
    cpu: Duration,
}

async fn measure_floor(backend: &str, size: usize, workers: usize) -> Result<Floor> {
    let db = fresh_db(backend)?;
    let postmaster = CpuMeter::postmaster(&db)?;
    let pool = DbPool::connect(&db.url, u32::try_from(workers).unwrap_or(16))?;
    let label = format!("{backend} {size}");
    tokio::task::spawn_blocking(move || {
        let job = create_running_job(&pool, "dispatch-floor", size)?;
        eprintln!("{label}: floor drain with {workers} threads");
        floor(&pool, &job, workers, CpuMeter::start(postmaster))
    })
    .await?
}

/// CPU time used since it started by this process and, on PostgreSQL, by
/// the cluster serving the benchmark.
struct CpuMeter {
    postmaster: Option<i32>,
    start: (Duration, Duration),
}

impl CpuMeter {
    fn new(db: &TestDb) -> Result<CpuMeter> {
        Ok(CpuMeter::start(CpuMeter::postmaster(db)?))
    }

    fn start(postmaster: Option<i32>) -> CpuMeter {
        CpuMeter {
            postmaster,
            start: CpuMeter::total(postmaster),
        }
    }

    /// CPU used since the start, this process's plus the cluster's; the
    /// split per datum goes to stderr.
    fn report(&self, datums: usize) -> Duration {
        let (own, cluster) = self.split();
        let per_datum = |cpu: Duration| cpu.as_secs_f64() * 1e6 / datums as f64;
        eprintln!(
            "  CPU µs/datum: this process {:.0}, PostgreSQL {:.0}",
            per_datum(own),
            per_datum(cluster)
        );
        own + cluster
    }

    /// CPU used since the start: this process's, and the cluster's.
    fn split(&self) -> (Duration, Duration) {
        let (own, cluster) = CpuMeter::total(self.postmaster);
        (
            own.saturating_sub(self.start.0),
            cluster.saturating_sub(self.start.1),
        )
    }

    /// The postmaster's pid, from `postmaster.pid` in the cluster's data
    /// directory (the cluster runs on this machine: scripts/test starts
    /// it). `None` on SQLite, whose work is this process's own.
    fn postmaster(db: &TestDb) -> Result<Option<i32>> {
        #[derive(QueryableByName)]
        struct Dir {
            #[diesel(sql_type = Text)]
            data_directory: String,
        }
        let mut conn = db.pool.get()?;
        let DbConn::Postgres(c) = &mut conn else {
            return Ok(None);
        };
        let dir = diesel::sql_query("SELECT current_setting('data_directory') AS data_directory")
            .get_result::<Dir>(&mut **c)?
            .data_directory;
        let pid = std::fs::read_to_string(format!("{dir}/postmaster.pid"))
            .with_context(|| format!("read {dir}/postmaster.pid (is PostgreSQL local?)"))?;
        let pid = pid
            .lines()
            .next()
            .and_then(|line| line.trim().parse().ok())
            .context("postmaster.pid holds no pid")?;
        Ok(Some(pid))
    }

    /// This process's CPU, and the postmaster's with its reaped children
    /// and every live child's.
    fn total(postmaster: Option<i32>) -> (Duration, Duration) {
        let own = proc_stat("self").map_or(0, |s| s.utime + s.stime);
        let mut ticks = 0;
        if let Some(pm) = postmaster {
            if let Some(s) = proc_stat(&pm.to_string()) {
                ticks += s.utime + s.stime + s.cutime + s.cstime;
            }
            for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                if !name.bytes().all(|b| b.is_ascii_digit()) {
                    continue;
                }
                if let Some(s) = proc_stat(name)
                    && s.ppid == pm
                {
                    ticks += s.utime + s.stime;
                }
            }
        }
        let time = |ticks: u64| Duration::from_micros(ticks * 1_000_000 / ticks_per_second());
        (time(own), time(ticks))
    }
}

/// The unit of `/proc/PID/stat`'s times (`getconf CLK_TCK`, 100 on
/// Linux), asked once.
fn ticks_per_second() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .filter(|&n| n > 0)
            .unwrap_or(100)
    })
}

/// The fields of `/proc/PID/stat` the meter reads, in clock ticks.
struct ProcStat {
    ppid: i32,
    utime: u64,
    stime: u64,
    cutime: u64,
    cstime: u64,
}

fn proc_stat(pid: &str) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start
    // after the last ')'. Field 3 (state) is index 0 here.
    let fields: Vec<&str> = text
        .get(text.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<i64>().ok();
    let ticks = |n: usize| field(n).map(|v| u64::try_from(v).unwrap_or(0));
    Some(ProcStat {
        ppid: i32::try_from(field(4)?).ok()?,
        utime: ticks(14)?,
        stime: ticks(15)?,
        cutime: ticks(16)?,
        cstime: ticks(17)?,
    })
}

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

#[tokio::main]
async fn main() -> Result<()> {
    set_default_instrumentation(count_statements).context("install the statement counter")?;
    let sizes: Vec<usize> = env_list("BENCH_SIZES", "1000,20000,100000,1000000")
        .iter()
        .map(|s| s.replace('_', "").parse::<usize>())
        .collect::<Result<_, _>>()
        .context("BENCH_SIZES must be comma-separated numbers")?;
    let backends = env_list("BENCH_BACKENDS", "postgres,sqlite");
    let workers: usize = std::env::var("BENCH_WORKERS")
        .unwrap_or_else(|_| "16".to_owned())
        .parse()
        .context("BENCH_WORKERS must be a number")?;

    println!(
        "| backend | datums | datums/s | µs/datum | reserve p50 / p99 ms | done p50 / p99 ms \
         | statements/datum | CPU µs/datum | floor datums/s | floor statements/datum \
         | floor CPU µs/datum | × floor | CPU × floor | size took s |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for backend in &backends {
        for &size in &sizes {
            let size_started = Instant::now();
            let repeat = repeats(size)?;
            let mut rows = Vec::with_capacity(repeat);
            let mut label = String::new();
            for round in 1..=repeat {
                eprintln!("{backend} {size} ({round}/{repeat}): REST drain with {workers} workers");
                let (rest_label, mut rest) = measure_rest(backend, size, workers).await?;
                label = rest_label;
                let floor = measure_floor(backend, size, workers).await?;
                let row = Row::new(&mut rest, &floor, size);
                if repeat > 1 {
                    row.print(&format!("{label}, run {round} of {repeat}"), size, None);
                }
                rows.push(row);
            }
            let took = size_started.elapsed().as_secs_f64();
            eprintln!("{backend} {size}: took {took:.1} s");
            if repeat > 1 {
                label.push_str(&format!(", median of {repeat}"));
            }
            Row::median(&rows).print(&label, size, Some(took));
        }
    }
    Ok(())
}

/// How many REST drains and floors to run at `size`, alternating:
/// `BENCH_REPEAT`, or by default three at 20,000 datums and fewer (a
/// drain of 1,000 datums lasts well under a second, so one burst of other
/// work on the machine moves a single pair's ratio by a third) and one
/// above. The table shows each pair and, last, the median of each column.
fn repeats(size: usize) -> Result<usize> {
    match std::env::var("BENCH_REPEAT") {
        Ok(n) => Ok(n
            .parse::<usize>()
            .context("BENCH_REPEAT must be a number")?
            .max(1)),
        Err(_) => Ok(if size <= 20_000 { 3 } else { 1 }),
    }
}

/// One line of the table: a REST drain and the floor after it.
#[derive(Clone, Copy)]
struct Row {
    rate: f64,
    reserve_p50: f64,
    reserve_p99: f64,
    done_p50: f64,
    done_p99: f64,
    statements: f64,
    cpu_us: f64,
    floor_rate: f64,
    floor_statements: f64,
    floor_cpu_us: f64,
}

impl Row {
    fn new(rest: &mut Measured, floor: &Floor, size: usize) -> Row {
        let n = size as f64;
        Row {
            rate: n / rest.drain.elapsed.as_secs_f64(),
            reserve_p50: percentile_ms(&mut rest.drain.reserve_us, 50.0),
            reserve_p99: percentile_ms(&mut rest.drain.reserve_us, 99.0),
            done_p50: percentile_ms(&mut rest.drain.done_us, 50.0),
            done_p99: percentile_ms(&mut rest.drain.done_us, 99.0),
            statements: rest.statements as f64 / n,
            cpu_us: rest.cpu.as_secs_f64() * 1e6 / n,
            floor_rate: n / floor.elapsed.as_secs_f64(),
            floor_statements: floor.statements as f64 / n,
            floor_cpu_us: floor.cpu.as_secs_f64() * 1e6 / n,
        }
    }

    fn ratio(&self) -> f64 {
        self.rate / self.floor_rate
    }

    fn cpu_ratio(&self) -> f64 {
        self.floor_cpu_us / self.cpu_us.max(f64::MIN_POSITIVE)
    }

    /// Each column's median over `rows` (the ratios too, each its own
    /// median, not a ratio of medians).
    fn median(rows: &[Row]) -> MedianRow {
        let of = |f: fn(&Row) -> f64| {
            let mut values: Vec<f64> = rows.iter().map(f).collect();
            values.sort_by(f64::total_cmp);
            values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
        };
        MedianRow {
            row: Row {
                rate: of(|r| r.rate),
                reserve_p50: of(|r| r.reserve_p50),
                reserve_p99: of(|r| r.reserve_p99),
                done_p50: of(|r| r.done_p50),
                done_p99: of(|r| r.done_p99),
                statements: of(|r| r.statements),
                cpu_us: of(|r| r.cpu_us),
                floor_rate: of(|r| r.floor_rate),
                floor_statements: of(|r| r.floor_statements),
                floor_cpu_us: of(|r| r.floor_cpu_us),
            },
            ratio: of(Row::ratio),
            cpu_ratio: of(Row::cpu_ratio),
        }
    }

    fn print(&self, label: &str, size: usize, took: Option<f64>) {
        MedianRow {
            row: *self,
            ratio: self.ratio(),
            cpu_ratio: self.cpu_ratio(),
        }
        .print(label, size, took)
    }
}

/// A row whose ratios are given rather than derived (a median's).
struct MedianRow {
    row: Row,
    ratio: f64,
    cpu_ratio: f64,
}

impl MedianRow {
    fn print(&self, label: &str, size: usize, took: Option<f64>) {
        let r = &self.row;
        let took = took.map_or_else(String::new, |t| format!("{t:.0}"));
        println!(
            "| {label} | {size} | {:.0} | {:.0} | {:.2} / {:.2} | {:.2} / {:.2} | {:.1} \
             | {:.0} | {:.0} | {:.1} | {:.0} | {:.2} | {:.2} | {took} |",
            r.rate,
            1e6 / r.rate,
            r.reserve_p50,
            r.reserve_p99,
            r.done_p50,
            r.done_p99,
            r.statements,
            r.cpu_us,
            r.floor_rate,
            r.floor_statements,
            r.floor_cpu_us,
            self.ratio,
            self.cpu_ratio,
        );
    }
}
