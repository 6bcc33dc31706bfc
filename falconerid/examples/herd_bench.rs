//! Herd benchmark: what idle long-polling workers cost falconerid while
//! another job is drained. Run it with `bench/herd`, which builds the real
//! `falconerid` binary and provides PostgreSQL; it prints a Markdown table
//! (see guide/src/performance.md, "Dispatch").
//!
//! For each backend, on a fresh database, it creates 50 idle jobs of one
//! datum each (through the models), starts `falconerid` as a separate
//! process (local executor whose "workers" are `sleep`, so nothing but this
//! program's tasks ever reserves), and has one worker per idle job reserve
//! that job's datum and never report on it (the lease is an hour): those
//! jobs are running with nothing ready. Then it drains a job of N no-op
//! datums with 16 workers over REST twice: once alone, once while 1,000 idle
//! workers (20 per idle job) long-poll the idle jobs. falconerid's CPU time
//! (utime + stime from /proc/PID/stat, all its threads) over each drain,
//! divided by the datums completed, is the cost per datum; the target is
//! that the idle workers at most double it. PostgreSQL's own CPU is not
//! counted: the question is the server's wake-ups.
//!
//! Environment: `FALCONERID` (the binary, required), `BENCH_HERD_DATUMS`
//! (N, default 2000), `BENCH_HERD_POLLERS` (default 1000), `BENCH_HERD_JOBS`
//! (idle jobs, default 50), `BENCH_BACKENDS` (default `postgres,sqlite`),
//! `FALCONERI_TEST_POSTGRES_URL` (set by scripts/test).

#[path = "bench_support/mod.rs"]
mod bench_support;

use std::{
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use bench_support::{ADMIN_TOKEN, BenchJob, create_running_job, rest};
use falconeri_common::{client::Client, db::testing::TestDb};
use tokio_util::sync::CancellationToken;

/// A falconerid process, stopped with SIGTERM (so it stops the `sleep`
/// workers it started) when dropped.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(binary: &str, db: &TestDb, dir: &std::path::Path) -> Result<Server> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new(binary)
            .env("FALCONERI_DATABASE_URL", &db.url)
            .env("FALCONERI_LISTEN", format!("127.0.0.1:{port}"))
            .env("FALCONERI_TOKEN", ADMIN_TOKEN)
            .env("FALCONERI_EXECUTOR", "local")
            // Workers the babysitter may start for a job with ready datums
            // that never reserve anything.
            .env("FALCONERI_WORKER_COMMAND", "sleep 86400")
            .env("FALCONERI_STATE_DIR", dir)
            // The held datums stay held for the whole run.
            .env("FALCONERI_LEASE", "1h")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {binary}"))?;
        Ok(Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
        })
    }

    /// Waits until the server answers `/healthz`.
    async fn ready(&mut self) -> Result<()> {
        let client = Client::new(&self.base, None)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if client.health().await.is_ok() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("falconerid exited during start-up: {status}");
            }
            if Instant::now() > deadline {
                bail!("falconerid did not answer within a minute");
            }
            // Start-up polling in a benchmark harness: the server has no
            // readiness signal to wait on from outside.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The server's CPU time so far (user + system, every thread).
    fn cpu(&self, ticks_per_second: f64) -> Result<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        // Fields after the command name (which may hold spaces, inside
        // parentheses): state is field 3, utime 14, stime 15.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .context("unreadable /proc stat")?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| -> Result<f64> {
            Ok(fields.get(i).context("short /proc stat")?.parse::<f64>()?)
        };
        Ok(Duration::from_secs_f64(
            (ticks(11)? + ticks(12)?) / ticks_per_second,
        ))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = self.child.wait();
    }
}

/// One drain's row.
struct Row {
    pollers: usize,
    datums: usize,
    elapsed: Duration,
    cpu: Duration,
    polls: u64,
}

/// Drains a fresh job of `datums` with 16 workers and answers the
/// server's CPU time meanwhile.
async fn drain(
    server: &Server,
    db: &TestDb,
    name: &str,
    datums: usize,
    ticks: f64,
) -> Result<(Duration, Duration)> {
    let pool = db.pool.clone();
    let name = name.to_owned();
    let label = name.clone();
    let job =
        tokio::task::spawn_blocking(move || create_running_job(&pool, &name, datums)).await??;
    let done = Arc::new(AtomicU64::new(0));
    let progress = bench_support::report_progress(label, done.clone(), datums);
    let before = server.cpu(ticks)?;
    let drained = rest::drain(&server.base, &job, 16, done).await?;
    let cpu = server.cpu(ticks)? - before;
    progress.abort();
    if drained.completed != datums {
        bail!("{} of {datums} datums completed", drained.completed);
    }
    if drained.retried > 0 {
        eprintln!("  {} requests retried", drained.retried);
    }
    Ok((drained.elapsed, cpu))
}

async fn run_backend(
    binary: &str,
    backend: &str,
    datums: usize,
    pollers: usize,
    idle_jobs: usize,
    ticks: f64,
) -> Result<Vec<Row>> {
    let db = match backend {
        "sqlite" => TestDb::sqlite(),
        "postgres" => TestDb::postgres(),
        other => bail!("unknown backend {other:?} in BENCH_BACKENDS (sqlite, postgres)"),
    };
    let pool = db.pool.clone();
    let idle: Vec<BenchJob> = tokio::task::spawn_blocking(move || {
        (0..idle_jobs)
            .map(|i| create_running_job(&pool, &format!("idle-{i}"), 1))
            .collect::<Result<Vec<_>>>()
    })
    .await??;
    let dir = tempfile::tempdir()?;
    let mut server = Server::start(binary, &db, dir.path())?;
    server.ready().await?;
    for (i, job) in idle.iter().enumerate() {
        rest::hold_one(&server.base, job, &format!("holder-{i}")).await?;
    }

    eprintln!("{backend}: draining {datums} datums alone");
    let mut rows = Vec::new();
    let (elapsed, cpu) = drain(&server, &db, "drain-alone", datums, ticks).await?;
    rows.push(Row {
        pollers: 0,
        datums,
        elapsed,
        cpu,
        polls: 0,
    });

    eprintln!("{backend}: starting {pollers} idle workers on {idle_jobs} jobs");
    let stop = CancellationToken::new();
    let ready = Arc::new(AtomicU64::new(0));
    let clients: Vec<Client> = idle
        .iter()
        .map(|job| Client::new(&server.base, Some(job.worker_token.clone())))
        .collect::<Result<_, _>>()?;
    let mut tasks = Vec::new();
    for p in 0..pollers {
        let job = p % idle.len().max(1);
        tasks.push(tokio::spawn(rest::idle_poll(
            clients[job].clone(),
            idle[job].id,
            format!("idle-{p}"),
            ready.clone(),
            stop.clone(),
        )));
    }
    // Every idle worker has had one answer (so it is connected); give their
    // long-polls a moment to reach the server before the clock starts.
    while usize::try_from(ready.load(Ordering::Relaxed)).unwrap_or(0) < pollers {
        if let Some(failed) = tasks.iter().position(|t| t.is_finished()) {
            let task = tasks.swap_remove(failed);
            task.await??;
            bail!("an idle worker stopped early");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    eprintln!("{backend}: draining {datums} datums with {pollers} idle workers");
    let (elapsed, cpu) = drain(&server, &db, "drain-herd", datums, ticks).await?;
    stop.cancel();
    let mut polls = 0;
    for task in tasks {
        polls += task.await??;
    }
    rows.push(Row {
        pollers,
        datums,
        elapsed,
        cpu,
        polls,
    });
    drop(server);
    Ok(rows)
}

fn env_number(name: &str, default: usize) -> Result<usize> {
    match std::env::var(name) {
        Ok(value) => value
            .replace('_', "")
            .parse()
            .with_context(|| format!("{name} must be a number")),
        Err(_) => Ok(default),
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let binary = std::env::var("FALCONERID")
        .context("set FALCONERID to the falconerid binary (bench/herd does)")?;
    let datums = env_number("BENCH_HERD_DATUMS", 2000)?;
    let pollers = env_number("BENCH_HERD_POLLERS", 1000)?;
    let idle_jobs = env_number("BENCH_HERD_JOBS", 50)?.max(1);
    let backends: Vec<String> = std::env::var("BENCH_BACKENDS")
        .unwrap_or_else(|_| "postgres,sqlite".to_owned())
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    let ticks: f64 = String::from_utf8(Command::new("getconf").arg("CLK_TCK").output()?.stdout)?
        .trim()
        .parse()
        .context("getconf CLK_TCK")?;

    println!(
        "| backend | datums | idle workers | drain s | datums/s | falconerid CPU s \
         | CPU ms/datum | × alone | answers to idle workers |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for backend in &backends {
        let started = Instant::now();
        let rows = run_backend(&binary, backend, datums, pollers, idle_jobs, ticks).await?;
        eprintln!("{backend}: took {:.0} s", started.elapsed().as_secs_f64());
        let alone = rows
            .first()
            .map(|r| r.cpu.as_secs_f64() / r.datums as f64)
            .unwrap_or(f64::NAN);
        for row in rows {
            let per_datum = row.cpu.as_secs_f64() / row.datums as f64;
            println!(
                "| {backend} | {} | {} | {:.1} | {:.0} | {:.2} | {:.2} | {:.2} | {} |",
                row.datums,
                row.pollers,
                row.elapsed.as_secs_f64(),
                row.datums as f64 / row.elapsed.as_secs_f64(),
                row.cpu.as_secs_f64(),
                per_datum * 1000.0,
                per_datum / alone,
                row.polls,
            );
        }
    }
    Ok(())
}
