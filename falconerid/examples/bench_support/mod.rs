//! What `dispatch_bench`, `herd_bench` and `dashboard_bench` share: big
//! jobs made straight through the models, falconerid served in-process, the
//! worker side of the REST protocol (drain, hold, idle long-poll), and
//! percentiles.
//!
//! The REST part ([`rest`]) is kept small on purpose: it is the one piece
//! that follows the worker protocol, so a change to reservation or
//! completion (batching, say) is adapted there, once, for both benchmarks.

#![allow(dead_code)]

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use async_trait::async_trait;
use falconeri_common::{
    db::{Backend, DbPool, testing::TestDb},
    models::{DatumBatch, Job, NewJobParams, db_now},
    pipeline::PipelineSpec,
    plan::{PlannedDatum, PlannedFile},
};
use falconerid::{
    AppState, Config,
    executor::{Executor, WorkerLaunch, WorkerState},
};
use tokio_util::sync::CancellationToken;

/// The admin token of the servers the benchmarks start.
pub const ADMIN_TOKEN: &str = "bench-admin-token-0123456789abcdef";

/// A running job of no-op datums, with the token its workers use.
#[derive(Clone, Debug)]
pub struct BenchJob {
    pub id: i64,
    pub worker_token: String,
    pub datums: usize,
}

/// Datums inserted per transaction, as job start-up streams them.
const INSERT_BATCH: usize = 10_000;

/// Inserts a job of `datums` no-op datums (one input file each, `true` as
/// the command, no job timeout) and marks it running the way a start does
/// (plan in batches, finish planning, mark running), without starting any
/// worker. Progress goes to stderr for big jobs.
pub fn create_running_job(pool: &DbPool, name: &str, datums: usize) -> Result<BenchJob> {
    let batch = batch_size();
    let spec = PipelineSpec::from_json(&format!(
        r#"{{
            "pipeline": {{ "name": "{name}" }},
            "datums_per_reservation": {batch},
            "transform": {{ "cmd": ["true"], "image": "alpine" }},
            "parallelism_spec": {{ "constant": 16 }},
            "resource_requests": {{ "memory": "64Mi", "cpu": 0.1 }},
            "input": {{ "atom": {{ "URI": "file:///in/", "repo": "in", "glob": "/*" }} }},
            "egress": {{ "URI": "file:///tmp/falconeri-bench-egress/" }}
        }}"#
    ))
    .context("bench spec")?;
    let worker_token = format!("bench-worker-token-{name}-{}", rand::random::<u64>());
    let mut conn = pool.get()?;
    let now = db_now(&mut conn)?;
    // Renewed by every batch; an hour leaves room for a slow disk.
    let lease = now + 3_600_000;
    let params = NewJobParams {
        spec: &spec,
        retry_of: None,
        worker_token: &worker_token,
        name,
    };
    let job = Job::begin_planning(&mut conn, params, now, lease)?;
    let started = Instant::now();
    let mut next_report = Instant::now() + Duration::from_secs(5);
    for start in (0..datums).step_by(INSERT_BATCH) {
        let end = (start + INSERT_BATCH).min(datums);
        let batch = DatumBatch {
            keys: Vec::new(),
            continued_keys: None,
            continued: Vec::new(),
            known: Default::default(),
            continued_known: None,
            datums: (start..end)
                .map(|d| PlannedDatum {
                    files: vec![PlannedFile {
                        uri: format!("file:///in/{d}"),
                        local_path: format!("in/{d}"),
                        identity: String::new(),
                    }],
                })
                .collect(),
        };
        Job::append_datums(&mut conn, job.id, &batch, now, lease)?;
        if Instant::now() >= next_report {
            eprintln!(
                "  {name}: inserted {end}/{datums} datums ({:.0}/s)",
                end as f64 / started.elapsed().as_secs_f64()
            );
            next_report += Duration::from_secs(5);
        }
    }
    Job::finish_planning(&mut conn, job.id)?;
    Job::mark_running(&mut conn, job.id, now)?;
    Ok(BenchJob {
        id: job.id,
        worker_token,
        datums,
    })
}

/// An executor that starts nothing: the benchmarks' tasks are the workers.
pub struct NoWorkers;

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

/// falconerid serving `db` on a free port of 127.0.0.1, as `serve` runs it
/// (API, dashboard, babysitter, PostgreSQL change listener), until `stop`
/// fires.
pub async fn start_server(
    db: &TestDb,
    dir: &std::path::Path,
    stop: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<Result<()>>)> {
    let mut config = Config::local(dir, ADMIN_TOKEN.to_owned(), vec!["true".into()]);
    // falconerid's own defaults, not the embedded server's.
    config.database_url = db.url.clone();
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.listen_fallback = false;
    config.db_pool_size = 16;
    config.babysitter_interval = Duration::from_secs(2);
    // To compare notifier settings: BENCH_NOTIFY_LINGER_MS (default: the
    // server's own, `--notify-linger`).
    if let Ok(ms) = std::env::var("BENCH_NOTIFY_LINGER_MS") {
        config.notify_linger = Duration::from_millis(ms.parse()?);
    }
    let state = AppState::new(config, db.pool.clone(), Arc::new(NoWorkers));
    let listener = tokio::net::TcpListener::bind(state.config().listen).await?;
    let addr = listener.local_addr()?;
    state.set_public_url(format!("http://{addr}"));
    tokio::spawn(falconerid::babysitter::run(state.clone(), stop.clone()));
    if db.backend() == Backend::Postgres {
        tokio::spawn(falconerid::listen::run(
            state.clone(),
            db.url.clone(),
            stop.clone(),
        ));
    }
    let app = falconerid::app(state.clone());
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                stop.cancelled().await;
                state.begin_shutdown();
            })
            .await
            .context("server failed")
    });
    Ok((addr, server))
}

/// The `p`-th percentile (0 to 100) of `values` in microseconds, as
/// milliseconds; sorts `values`.
/// `BENCH_BATCH`: how many datums a REST worker reserves and reports at
/// once (the job's `datums_per_reservation`); 1, the default, uses the
/// single-datum routes.
pub fn batch_size() -> u32 {
    std::env::var("BENCH_BATCH")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(1)
        .clamp(1, falconeri_common::pipeline::MAX_DATUMS_PER_RESERVATION)
}

/// `BENCH_NEXT`: whether each report also asks for the worker's next
/// datums (`next`, as the worker does); `0` sends a separate reserve after
/// every report, as older workers did. Default: ask.
pub fn ask_next() -> bool {
    std::env::var("BENCH_NEXT").map_or(true, |v| v != "0")
}

pub fn percentile_ms(values: &mut [u32], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_unstable();
    let rank = ((p / 100.0) * (values.len() - 1) as f64).round() as usize;
    f64::from(values[rank.min(values.len() - 1)]) / 1000.0
}

/// Microseconds, saturating.
pub fn micros(duration: Duration) -> u32 {
    u32::try_from(duration.as_micros()).unwrap_or(u32::MAX)
}

/// Prints `label: done/total` to stderr every five seconds until `total`
/// are done or the returned guard is dropped.
pub fn report_progress(
    label: String,
    done: std::sync::Arc<std::sync::atomic::AtomicU64>,
    total: usize,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        tick.tick().await;
        loop {
            tick.tick().await;
            let n = done.load(std::sync::atomic::Ordering::Relaxed);
            eprintln!(
                "  {label}: {n}/{total} done ({:.0}/s)",
                n as f64 / started.elapsed().as_secs_f64()
            );
            if n as usize >= total {
                return;
            }
        }
    })
}

/// The worker side of the REST protocol, through the typed client.
pub mod rest {
    use std::{
        sync::{
            Arc,
            atomic::{AtomicU64, Ordering},
        },
        time::{Duration, Instant},
    };

    use anyhow::{Result, bail};
    use falconeri_common::{
        api::{DoneRequest, ReserveNext, ReserveResponse},
        client::Client,
    };

    use super::{BenchJob, micros};

    /// How long a reservation may wait for work; the server caps it.
    const RESERVE_WAIT: Duration = Duration::from_secs(30);

    /// What one drain measured.
    #[derive(Debug, Default)]
    pub struct Drain {
        pub elapsed: Duration,
        pub completed: usize,
        /// Latency of every successful reservation, in microseconds.
        pub reserve_us: Vec<u32>,
        /// Latency of every done report, in microseconds.
        pub done_us: Vec<u32>,
        /// Requests answered with a transient error (503, a reset) and sent
        /// again, as a real worker does.
        pub retried: u64,
    }

    /// Drains `job` on the server at `base` with `workers` concurrent
    /// workers (tokio tasks, each with its own worker id and client) that
    /// reserve and mark done as fast as they can, until the server says
    /// the job is finished. `done` counts completions as they happen.
    pub async fn drain(
        base: &str,
        job: &BenchJob,
        workers: usize,
        done: Arc<AtomicU64>,
    ) -> Result<Drain> {
        let barrier = Arc::new(tokio::sync::Barrier::new(workers + 1));
        let mut tasks = Vec::new();
        for w in 0..workers {
            let client = Client::new(base, Some(job.worker_token.clone()))?;
            let (barrier, done, job_id) = (barrier.clone(), done.clone(), job.id);
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                work(&client, job_id, &format!("bench-worker-{w}"), &done).await
            }));
        }
        barrier.wait().await;
        let started = Instant::now();
        let mut total = Drain::default();
        for task in tasks {
            let one = task.await??;
            total.completed += one.completed;
            total.retried += one.retried;
            total.reserve_us.extend(one.reserve_us);
            total.done_us.extend(one.done_us);
        }
        total.elapsed = started.elapsed();
        Ok(total)
    }

    /// One worker's loop: reserve → done with no command and no outputs.
    async fn work(client: &Client, job_id: i64, worker: &str, done: &AtomicU64) -> Result<Drain> {
        let batch = super::batch_size();
        if batch > 1 {
            return work_in_batches(client, job_id, worker, batch, done).await;
        }
        let mut mine = Drain::default();
        let next = super::ask_next();
        // As the worker does: look for held datums at start and after a
        // reservation that got no answer only.
        let mut resume = true;
        // The datum a report's `next` handed out, if any.
        let mut pending: Option<Box<falconeri_common::api::Reservation>> = None;
        loop {
            let reservation = match pending.take() {
                Some(reservation) => reservation,
                None => match reserve_timed(client, job_id, worker, None, &mut resume, &mut mine)
                    .await?
                {
                    Some(mut given) => match given.pop() {
                        Some(one) => Box::new(one),
                        None => continue,
                    },
                    None => return Ok(mine),
                },
            };
            let body = DoneRequest {
                claim: reservation.claim.clone(),
                output: String::new(),
                output_files: Vec::new(),
                exit_code: Some(0),
                stats: None,
                next: next.then(ReserveNext::default),
            };
            let started = Instant::now();
            let answer = loop {
                match client.mark_done(reservation.datum_id, &body).await {
                    Ok(answer) => break answer,
                    Err(err) if err.is_transient() => {
                        // The lost answer may have held our next datum.
                        resume = true;
                        mine.retried += 1;
                    }
                    Err(err) => return Err(err.into()),
                }
            };
            mine.done_us.push(micros(started.elapsed()));
            mine.completed += 1;
            done.fetch_add(1, Ordering::Relaxed);
            match answer.next {
                Some(ReserveResponse::Reserved(next)) => pending = Some(next),
                Some(ReserveResponse::Finished) => return Ok(mine),
                Some(ReserveResponse::Batch { .. }) => bail!("a batch was not asked for"),
                Some(ReserveResponse::Wait) | None => {}
            }
        }
    }

    /// One timed reservation request, as the worker sends it: the datums it
    /// handed out (none on `wait`, or on a transient error, which is
    /// counted), or None once the job is finished.
    async fn reserve_timed(
        client: &Client,
        job_id: i64,
        worker: &str,
        max: Option<u32>,
        resume: &mut bool,
        mine: &mut Drain,
    ) -> Result<Option<Vec<falconeri_common::api::Reservation>>> {
        let started = Instant::now();
        let answer = client
            .reserve(job_id, worker, RESERVE_WAIT, max, *resume)
            .await;
        *resume = answer.is_err();
        let given = match answer {
            Ok(ReserveResponse::Batch { reservations }) => reservations,
            Ok(ReserveResponse::Reserved(reservation)) => vec![*reservation],
            Ok(ReserveResponse::Wait) => return Ok(Some(Vec::new())),
            Ok(ReserveResponse::Finished) => return Ok(None),
            Err(err) if err.is_transient() => {
                mine.retried += 1;
                return Ok(Some(Vec::new()));
            }
            Err(err) => return Err(err.into()),
        };
        mine.reserve_us.push(micros(started.elapsed()));
        Ok(Some(given))
    }

    /// [`work`] with batches: reserve up to `batch` datums, report them all
    /// done in one request. Latencies are per request.
    async fn work_in_batches(
        client: &Client,
        job_id: i64,
        worker: &str,
        batch: u32,
        done: &AtomicU64,
    ) -> Result<Drain> {
        use falconeri_common::api::{BatchOutcome, BatchReport, BatchReportRequest};
        let mut mine = Drain::default();
        let next = super::ask_next();
        let mut resume = true;
        let mut pending: Option<Vec<falconeri_common::api::Reservation>> = None;
        loop {
            let reservations = match pending.take() {
                Some(reservations) => reservations,
                None => {
                    let max = Some(batch);
                    match reserve_timed(client, job_id, worker, max, &mut resume, &mut mine).await?
                    {
                        Some(given) if given.is_empty() => continue,
                        Some(given) => given,
                        None => return Ok(mine),
                    }
                }
            };
            let body = BatchReportRequest {
                reports: reservations
                    .iter()
                    .map(|r| BatchReport {
                        datum_id: r.datum_id,
                        claim: r.claim.clone(),
                        outcome: BatchOutcome::Done {
                            output: String::new(),
                            output_files: Vec::new(),
                            exit_code: Some(0),
                            stats: None,
                        },
                    })
                    .collect(),
                next: next.then_some(ReserveNext {
                    max_datums: Some(batch),
                }),
            };
            let started = Instant::now();
            let answer = loop {
                match client.report_batch(job_id, &body).await {
                    Ok(answer) => break answer,
                    Err(err) if err.is_transient() => {
                        resume = true;
                        mine.retried += 1;
                    }
                    Err(err) => return Err(err.into()),
                }
            };
            mine.done_us.push(micros(started.elapsed()));
            let accepted = answer.results.iter().filter(|r| r.datum.is_some()).count();
            if accepted != reservations.len() {
                bail!(
                    "{} of {} batch reports refused",
                    reservations.len() - accepted,
                    reservations.len()
                );
            }
            mine.completed += accepted;
            done.fetch_add(u64::try_from(accepted).unwrap_or(0), Ordering::Relaxed);
            match answer.next {
                Some(ReserveResponse::Batch { reservations }) => pending = Some(reservations),
                Some(ReserveResponse::Reserved(one)) => pending = Some(vec![*one]),
                Some(ReserveResponse::Finished) => return Ok(mine),
                Some(ReserveResponse::Wait) | None => {}
            }
        }
    }

    /// Reserves one datum of `job` as `worker` and never reports on it:
    /// the job then has nothing ready until the lease runs out.
    pub async fn hold_one(base: &str, job: &BenchJob, worker: &str) -> Result<()> {
        let client = Client::new(base, Some(job.worker_token.clone()))?;
        match client
            .reserve(job.id, worker, Duration::ZERO, None, true)
            .await?
        {
            ReserveResponse::Reserved(_) => Ok(()),
            other => bail!("job {} had no datum to hold: {other:?}", job.id),
        }
    }

    /// A worker of a job with nothing ready: long-polls until `stop`
    /// resolves. `ready` is counted once its first (immediate) answer came
    /// back, so the caller knows it is connected. Answers how many
    /// answers it got (each one a `wait` that ran out, or the first).
    pub async fn idle_poll(
        client: Client,
        job_id: i64,
        worker: String,
        ready: Arc<AtomicU64>,
        stop: tokio_util::sync::CancellationToken,
    ) -> Result<u64> {
        let mut wait = Duration::ZERO;
        let mut polls = 0;
        loop {
            let answer = tokio::select! {
                _ = stop.cancelled() => return Ok(polls),
                answer = client.reserve(job_id, &worker, wait, None, true) => answer,
            };
            polls += 1;
            if wait.is_zero() {
                ready.fetch_add(1, Ordering::Relaxed);
                wait = RESERVE_WAIT;
            }
            match answer {
                Ok(ReserveResponse::Wait) => {}
                Ok(ReserveResponse::Reserved(r)) => {
                    bail!(
                        "idle worker {worker} got datum {}: the job was not idle",
                        r.datum_id
                    )
                }
                Ok(ReserveResponse::Batch { .. }) => bail!("idle worker {worker} got a batch"),
                Ok(ReserveResponse::Finished) => bail!("idle job {job_id} finished"),
                Err(err) if err.is_transient() => {}
                Err(err) => return Err(err.into()),
            }
        }
    }
}
