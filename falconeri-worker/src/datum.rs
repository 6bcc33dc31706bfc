//! One reserved datum, from reservation to report: reset the work
//! directories, download the inputs, run the command under a heartbeat and a
//! timeout, upload the outputs, and tell falconerid how it went.
//!
//! The outputs are published only when falconerid accepts our `mark_done`;
//! a datum we no longer own (the server answers 409 or 404) is abandoned
//! without a report, because another worker or the babysitter now owns it.

use std::{
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::ExitStatus,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use falconeri_common::{
    api::{
        AttemptStats, Claim, DoneRequest, ErrorRequest, KilledFor, NewOutputFile, ReleaseRequest,
        Reservation, ReserveResponse,
    },
    client::{Client, ClientError},
    storage::{download_inputs, upload_outputs},
};
use nix::sys::signal::Signal;
use tokio_util::{sync::CancellationToken, task::AbortOnDropHandle};

use crate::{
    Worker,
    logs::{LogShipper, LogSink},
    process::{CommandSpec, DatumEnv, KILL_GRACE, RunningCommand, command_env},
    retry::with_retries,
};

/// After this many heartbeat periods without an answer (a lease is three),
/// the worker gives its datum up.
pub(crate) const ORPHANED_AFTER_PERIODS: u32 = 4;

/// The shortest heartbeat period we accept, whatever the server says, so a
/// zero from a misconfigured server cannot make us spin.
pub(crate) const MIN_HEARTBEAT: Duration = Duration::from_millis(100);

/// How long a stopping worker waits for falconerid to take its last report.
/// With [`KILL_GRACE`] this stays within the 10 s the local executor and the
/// 30 s Kubernetes give a worker between SIGTERM and SIGKILL.
pub(crate) const STOP_REPORT_TIMEOUT: Duration = Duration::from_secs(3);

/// What the run loop should do after a datum.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    /// Ask for the next datum.
    Next,
    /// Ask for the next datum with `resume`: an answer that may have handed
    /// us datums (a report's `next`) was lost.
    Resume,
    /// The report's answer says what comes next (its `next`).
    Given(ReserveResponse),
    /// The worker was told to stop.
    Stopped,
}

/// How one attempt at a datum ended, before reporting it.
#[derive(Debug)]
pub(crate) enum Attempt {
    Succeeded {
        output: String,
        output_files: Vec<NewOutputFile>,
    },
    Failed {
        error: String,
        output: String,
    },
    /// The worker itself cannot work (its directories are unusable): report
    /// the datum failed, then stop rather than fail every other datum too.
    Broken {
        error: String,
    },
    /// The server no longer considers the datum ours.
    Lost,
    /// The worker got SIGTERM or SIGINT.
    Stopped {
        output: String,
    },
}

/// What an attempt measured, sent with its report whatever the outcome:
/// the statistics of the phases it reached, and how the command ended if
/// it ran.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Measured {
    pub stats: AttemptStats,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Set when the worker killed the command itself (its timeout), so the
    /// server's `on_exit` rules do not take the worker's signal for the
    /// command's own way of failing.
    pub killed_for: Option<KilledFor>,
}

impl Measured {
    /// The stats for a report: none when nothing was measured.
    pub fn stats(&self) -> Option<AttemptStats> {
        (!self.stats.is_empty()).then_some(self.stats)
    }

    /// Records how the command ended and what it used.
    fn command(&mut self, exit: crate::usage::Exit) {
        let usage = exit.usage;
        self.stats.command_ms = Some(millis(usage.wall));
        self.stats.user_cpu_ms = Some(millis(usage.user));
        self.stats.system_cpu_ms = Some(millis(usage.system));
        self.stats.max_rss_bytes = Some(usage.max_rss_bytes);
        self.exit_code = exit.status.code();
        self.signal = exit.status.signal();
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn count(n: usize) -> Option<u64> {
    u64::try_from(n).ok()
}

/// Runs one reserved datum and reports it. Errors mean the worker should exit.
#[tracing::instrument(skip_all, fields(datum_id = r.datum_id, attempt = r.claim.attempt))]
pub(crate) async fn process(worker: &Worker, r: &Reservation) -> Result<Outcome> {
    tracing::info!(cmd = ?r.cmd, inputs = r.input_files.len(), "reserved a datum");
    // The lease covers downloads and uploads too, so heartbeat from now until
    // the report is in.
    let lost = CancellationToken::new();
    let period = Duration::from_millis(r.heartbeat_interval_ms).max(MIN_HEARTBEAT);
    let _heartbeat = AbortOnDropHandle::new(tokio::spawn(heartbeat(
        worker.client.clone(),
        r.datum_id,
        r.claim.clone(),
        period,
        lost.clone(),
    )));

    let budget = worker.config.retry_budget;
    let (ran, measured) = attempt(worker, r, &lost).await;
    match ran {
        Attempt::Succeeded {
            output,
            output_files,
        } => {
            tracing::info!(files = output_files.len(), "datum succeeded");
            let body = DoneRequest {
                claim: r.claim.clone(),
                output,
                output_files,
                exit_code: Some(0),
                stats: measured.stats(),
                next: None,
            };
            let result = with_retries(budget, "reporting the datum done", || {
                report_done(&worker.client, r.datum_id, &body)
            })
            .await;
            accept_lost(result, "done")?;
            Ok(Outcome::Next)
        }
        Attempt::Failed { error, output } => {
            tracing::warn!(%error, "datum failed");
            let body = error_request(r, error, output, &measured);
            let result = with_retries(budget, "reporting the datum failed", || {
                report_error(&worker.client, r.datum_id, &body)
            })
            .await;
            accept_lost(result, "error")?;
            Ok(Outcome::Next)
        }
        Attempt::Broken { error } => {
            let body = error_request(r, error.clone(), String::new(), &measured);
            let result = with_retries(budget, "reporting the datum failed", || {
                report_error(&worker.client, r.datum_id, &body)
            })
            .await;
            accept_lost(result, "error")?;
            bail!("{error}")
        }
        Attempt::Lost => {
            tracing::warn!("the datum is no longer ours (expired or canceled); abandoned it");
            Ok(Outcome::Next)
        }
        Attempt::Stopped { output } => {
            tracing::info!("worker stopping; giving the datum back");
            // A stop is not the command's fault: release the datum so the
            // attempt doesn't use up a try. One short try only: whoever
            // stops us (Kubernetes, the local executor) will not wait long,
            // and an unreported datum comes back when its lease expires.
            let _ = output;
            let body = ReleaseRequest {
                claim: r.claim.clone(),
                reason: "the worker was stopped before the command finished".to_owned(),
            };
            let report = worker.client.release(r.datum_id, &body);
            match tokio::time::timeout(STOP_REPORT_TIMEOUT, report).await {
                Ok(Ok(_)) => {}
                Ok(Err(err)) if err.is_conflict() || err.is_not_found() => {}
                Ok(Err(err)) => tracing::warn!(error = %err, "cannot report the stopped datum"),
                Err(_) => {
                    tracing::warn!("falconerid did not answer; the datum's lease will expire")
                }
            }
            Ok(Outcome::Stopped)
        }
    }
}

/// Everything between reservation and report, with the attempt's log
/// shipped to falconerid meanwhile and complete before this returns (so
/// before the report), and what the attempt measured.
pub(crate) async fn attempt(
    worker: &Worker,
    r: &Reservation,
    lost: &CancellationToken,
) -> (Attempt, Measured) {
    let shipper = LogShipper::start(
        worker.client.clone(),
        r.datum_id,
        r.claim.clone(),
        worker.config.retry_budget,
    );
    let log = shipper.sink();
    let mut measured = Measured::default();
    let result = run_attempt(worker, r, lost, &log, &mut measured).await;
    match &result {
        Attempt::Succeeded { output_files, .. } => {
            log.worker(&format!("uploaded {} output files", output_files.len()))
                .await;
        }
        Attempt::Failed { error, .. } | Attempt::Broken { error } => {
            log.worker(&format!("attempt failed: {error}")).await;
        }
        Attempt::Stopped { .. } => log.worker("worker stopping; giving the datum back").await,
        Attempt::Lost => {}
    }
    drop(log);
    // A stopping worker has seconds left; a lost attempt's lines are refused.
    let limit = match result {
        Attempt::Stopped { .. } | Attempt::Lost => STOP_REPORT_TIMEOUT,
        _ => worker.config.retry_budget,
    };
    shipper.finish(limit).await;
    (result, measured)
}

async fn run_attempt(
    worker: &Worker,
    r: &Reservation,
    lost: &CancellationToken,
    log: &LogSink,
    measured: &mut Measured,
) -> Attempt {
    let config = &worker.config;
    let shutdown = &worker.shutdown;
    let pfs = config.pfs.as_path();
    let out = pfs.join("out");

    if let Err(err) = reset_work_dirs(pfs, &config.scratch).await {
        return Attempt::Broken {
            error: format!("cannot prepare the work directories: {err:#}"),
        };
    }

    log.worker(&format!(
        "attempt {} on {}: downloading {} input files",
        r.claim.attempt,
        r.claim.worker_id,
        r.input_files.len()
    ))
    .await;
    let download_started = Instant::now();
    let downloaded = tokio::select! {
        result = download_inputs(&r.input_files, pfs) => result,
        () = lost.cancelled() => return Attempt::Lost,
        () = shutdown.cancelled() => return Attempt::Stopped { output: String::new() },
    };
    measured.stats.download_ms = Some(millis(download_started.elapsed()));
    match downloaded {
        Ok(bytes) => {
            measured.stats.download_files = count(r.input_files.len());
            measured.stats.download_bytes = Some(bytes);
            tracing::info!(bytes, "downloaded inputs");
            log.worker(&format!("downloaded {bytes} bytes")).await;
        }
        Err(err) => {
            return Attempt::Failed {
                error: format!("cannot download inputs: {err:#}"),
                output: String::new(),
            };
        }
    }

    let Some((program, args)) = r.cmd.split_first() else {
        return Attempt::Failed {
            error: "the job's command is empty".to_owned(),
            output: String::new(),
        };
    };
    let spec = CommandSpec {
        program: program.clone(),
        args: args.to_vec(),
        env: command_env(
            std::env::vars_os(),
            &r.env,
            DatumEnv {
                pfs,
                scratch: &config.scratch,
                datum_id: r.datum_id,
                job_id: r.job_id,
            },
        ),
    };
    log.worker(&format!("running {:?}", r.cmd)).await;
    let mut running = match RunningCommand::spawn_logged(
        &spec,
        config.output_tail_bytes,
        config.pass_output,
        Some(log.clone()),
    ) {
        Ok(running) => running,
        Err(err) => {
            return Attempt::Failed {
                error: format!("{err:#}"),
                output: String::new(),
            };
        }
    };
    if let Some(path) = &config.command_pgid_file {
        // Best effort: it only matters if this worker dies unexpectedly.
        if let Err(err) = std::fs::write(path, running.pgid().to_string()) {
            tracing::warn!(error = %err, path = %path.display(), "cannot record the command's process group");
        }
    }
    let timeout = r.timeout_ms.map(Duration::from_millis);
    let ending = supervise(&mut running, timeout, lost, shutdown).await;
    // Also after a kill: a timed-out command's usage is worth knowing.
    if let Some(exit) = running.exit() {
        measured.command(exit);
    }
    let output = running.finish().await;
    if let Some(path) = &config.command_pgid_file {
        let _ = std::fs::remove_file(path);
    }
    match ending {
        Ending::Exited(Ok(status)) if status.success() => {}
        Ending::Exited(Ok(status)) => {
            return Attempt::Failed {
                error: describe_failure(status),
                output,
            };
        }
        Ending::Exited(Err(err)) => {
            return Attempt::Failed {
                error: format!("cannot wait for the command: {err}"),
                output,
            };
        }
        Ending::TimedOut(limit) => {
            measured.killed_for = Some(KilledFor::DatumTimeout);
            return Attempt::Failed {
                error: format!(
                    "datum timed out after {}",
                    humantime::format_duration(limit)
                ),
                output,
            };
        }
        Ending::Lost => return Attempt::Lost,
        Ending::Stopped => return Attempt::Stopped { output },
    }

    log.worker("command succeeded; uploading outputs").await;
    let work_root = work_root(pfs, &config.scratch);
    let upload_started = Instant::now();
    let uploaded = tokio::select! {
        result = upload_outputs(&out, &work_root, &r.staging_uri) => result,
        () = lost.cancelled() => return Attempt::Lost,
        () = shutdown.cancelled() => return Attempt::Stopped { output },
    };
    measured.stats.upload_ms = Some(millis(upload_started.elapsed()));
    match uploaded {
        Ok(output_files) => {
            measured.stats.upload_files = count(output_files.len());
            measured.stats.upload_bytes = Some(
                output_files
                    .iter()
                    .map(|f| u64::try_from(f.size).unwrap_or(0))
                    .sum(),
            );
            Attempt::Succeeded {
                output,
                output_files,
            }
        }
        Err(err) => Attempt::Failed {
            error: format!("cannot upload outputs: {err:#}"),
            output,
        },
    }
}

/// Why a running command stopped.
#[derive(Debug)]
pub(crate) enum Ending {
    /// It exited by itself (or we could not wait for it).
    Exited(std::io::Result<ExitStatus>),
    /// It ran past the datum's timeout and was killed.
    TimedOut(Duration),
    /// The datum stopped being ours and the command was killed.
    Lost,
    /// The worker was told to stop and the command was killed.
    Stopped,
}

/// Waits for the command to exit, killing its process group first if the
/// timeout passes, the lease is `lost`, or `shutdown` is cancelled.
pub(crate) async fn supervise(
    running: &mut RunningCommand,
    timeout: Option<Duration>,
    lost: &CancellationToken,
    shutdown: &CancellationToken,
) -> Ending {
    let deadline = async {
        match timeout {
            Some(limit) => {
                tokio::time::sleep(limit).await;
                limit
            }
            None => std::future::pending().await,
        }
    };
    let ending = tokio::select! {
        status = running.wait() => return Ending::Exited(status),
        limit = deadline => Ending::TimedOut(limit),
        () = lost.cancelled() => Ending::Lost,
        () = shutdown.cancelled() => Ending::Stopped,
    };
    tracing::info!(?ending, pgid = %running.pgid(), "killing the command");
    if let Err(err) = running.kill_group(KILL_GRACE).await {
        tracing::warn!(%err, "cannot reap the killed command");
    }
    ending
}

/// "command exited with status 3", or which signal killed it.
fn describe_failure(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        format!("command exited with status {code}")
    } else if let Some(number) = status.signal() {
        match Signal::try_from(number) {
            Ok(signal) => format!("command killed by signal {number} ({signal})"),
            Err(_) => format!("command killed by signal {number}"),
        }
    } else {
        format!("command failed: {status}")
    }
}

/// Empties `pfs` and `scratch` (creating them if missing) and creates
/// `pfs/out`. Only the contents go: either directory may be a mount point.
async fn reset_work_dirs(pfs: &Path, scratch: &Path) -> Result<()> {
    empty_dir(pfs).await?;
    empty_dir(scratch).await?;
    let out = pfs.join("out");
    tokio::fs::create_dir_all(&out)
        .await
        .with_context(|| format!("cannot create {}", out.display()))
}

/// Removes everything inside `dir`, without following symlinks.
async fn empty_dir(dir: &Path) -> Result<()> {
    // A misconfigured `--pfs /` must not wipe the machine.
    if dir.parent().is_none() {
        bail!("refusing to empty {}", dir.display());
    }
    let mut entries = match tokio::fs::read_dir(dir).await {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return tokio::fs::create_dir_all(dir)
                .await
                .with_context(|| format!("cannot create {}", dir.display()));
        }
        Err(err) => return Err(anyhow!(err).context(format!("cannot read {}", dir.display()))),
    };
    while let Some(entry) = entries
        .next_entry()
        .await
        .with_context(|| format!("cannot read {}", dir.display()))?
    {
        let path = entry.path();
        let file_type = entry
            .file_type()
            .await
            .with_context(|| format!("cannot inspect {}", path.display()))?;
        let removed = if file_type.is_dir() {
            tokio::fs::remove_dir_all(&path).await
        } else {
            tokio::fs::remove_file(&path).await
        };
        removed.with_context(|| format!("cannot remove {}", path.display()))?;
    }
    Ok(())
}

/// The directory output symlinks may point into: the common parent of `pfs`
/// and `scratch` (so an output may link to a file in scratch), or `pfs` alone
/// when they share nothing but `/`, since allowing `/` would allow anything.
fn work_root(pfs: &Path, scratch: &Path) -> PathBuf {
    let common: PathBuf = pfs
        .components()
        .zip(scratch.components())
        .take_while(|(a, b)| a == b)
        .map(|(a, _)| a)
        .collect();
    if common.parent().is_none() {
        pfs.to_owned()
    } else {
        common
    }
}

/// The `error` report of an attempt, with the command's exit status (when
/// it ran: a command that exited 0 but whose upload failed reports 0) and
/// what was measured.
fn error_request(r: &Reservation, error: String, output: String, m: &Measured) -> ErrorRequest {
    ErrorRequest {
        claim: r.claim.clone(),
        output,
        error,
        exit_code: m.exit_code,
        signal: m.signal,
        stats: m.stats(),
        killed_for: m.killed_for,
    }
}

/// Treats "the datum is not ours any more" as a normal end: the server gave it
/// to someone else, whose report counts instead of ours.
fn accept_lost<T>(result: Result<T, ClientError>, what: &str) -> Result<()> {
    match result {
        Ok(_) => Ok(()),
        Err(err) if err.is_conflict() || err.is_not_found() => {
            tracing::warn!(error = %err, "the datum is no longer ours; our {what} report was refused");
            Ok(())
        }
        Err(err) => Err(anyhow!(err).context(format!("cannot report the datum {what}"))),
    }
}

/// Extends the lease every `period` until the task is dropped, cancelling
/// `lost` if the server says the datum is no longer ours.
#[tracing::instrument(skip(client, lost))]
async fn heartbeat(
    client: Client,
    datum_id: i64,
    claim: Claim,
    period: Duration,
    lost: CancellationToken,
) {
    let beat = || {
        let (client, claim) = (client.clone(), claim.clone());
        async move {
            let answer = client.heartbeat(datum_id, &claim).await?;
            tracing::debug!(lease_expires_at = answer.lease_expires_at, "heartbeat");
            Ok(true)
        }
    };
    if let Lease::Lost = beat_every(period, beat).await {
        lost.cancel();
    }
}

/// How a run of heartbeats ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Lease {
    /// Nothing is left to renew.
    Settled,
    /// The server refused a heartbeat, or was unreachable for longer than
    /// the lease: someone else may run the datums now.
    Lost,
}

/// Calls `beat` every `period` until it answers `Ok(false)` (nothing left to
/// renew) or the lease is lost. The server hands out a heartbeat period of a
/// third of the lease. Unheard for longer than a lease and a period, the
/// lease has run out, so the caller should stop rather than keep a command
/// running that nobody will accept; a 409 or 404 says the same at once.
/// Other failures wait for the next tick, which the lease may still save.
pub(crate) async fn beat_every<F, Fut>(period: Duration, mut beat: F) -> Lease
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool, ClientError>>,
{
    let start = tokio::time::Instant::now() + period;
    let mut ticks = tokio::time::interval_at(start, period);
    // After a slow request, beat once and resume the rhythm; a burst of
    // catch-up heartbeats would only load the server.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_success = tokio::time::Instant::now();
    loop {
        ticks.tick().await;
        match beat().await {
            Ok(true) => last_success = tokio::time::Instant::now(),
            Ok(false) => return Lease::Settled,
            Err(err) if last_success.elapsed() > period * ORPHANED_AFTER_PERIODS => {
                tracing::warn!(error = %err, "falconerid unreachable for longer than the lease; giving up");
                return Lease::Lost;
            }
            Err(err) if err.is_conflict() || err.is_not_found() => {
                tracing::warn!(error = %err, "heartbeat refused: no longer ours");
                return Lease::Lost;
            }
            Err(err) => tracing::warn!(error = %err, "heartbeat failed; retrying at the next tick"),
        }
    }
}

#[tracing::instrument(skip(client, body))]
async fn report_done(
    client: &Client,
    datum_id: i64,
    body: &DoneRequest,
) -> Result<(), ClientError> {
    client.mark_done(datum_id, body).await.map(drop)
}

#[tracing::instrument(skip(client, body), fields(error = %body.error))]
async fn report_error(
    client: &Client,
    datum_id: i64,
    body: &ErrorRequest,
) -> Result<(), ClientError> {
    client.mark_error(datum_id, body).await.map(drop)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::{collections::BTreeMap, ffi::OsString, time::Instant};

    use super::*;

    /// A worker that cannot reach falconerid for longer than a lease gives
    /// its datum up (and so kills its command) instead of running on.
    #[tokio::test]
    async fn an_unreachable_server_orphans_the_datum() {
        // A port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client = Client::new(&format!("http://127.0.0.1:{port}"), None).unwrap();
        let lost = CancellationToken::new();
        let claim = Claim {
            worker_id: "w".into(),
            attempt: 1,
            scope: None,
        };
        let started = tokio::time::Instant::now();
        let beating = tokio::spawn(heartbeat(client, 1, claim, MIN_HEARTBEAT, lost.clone()));
        tokio::time::timeout(Duration::from_secs(10), lost.cancelled())
            .await
            .expect("the datum was given up");
        assert!(started.elapsed() >= MIN_HEARTBEAT * ORPHANED_AFTER_PERIODS);
        beating.await.unwrap();
    }

    fn sh(script: &str) -> CommandSpec {
        CommandSpec {
            program: "sh".to_owned(),
            args: vec!["-c".to_owned(), script.to_owned()],
            env: std::env::vars_os()
                .filter(|(name, _)| name == "PATH")
                .collect::<BTreeMap<OsString, OsString>>(),
        }
    }

    #[tokio::test]
    async fn a_command_past_its_timeout_is_killed() {
        let mut running = RunningCommand::spawn(&sh("echo started; sleep 100"), 1024).unwrap();
        let started = Instant::now();
        let ending = supervise(
            &mut running,
            Some(Duration::from_millis(300)),
            &CancellationToken::new(),
            &CancellationToken::new(),
        )
        .await;
        assert!(
            matches!(ending, Ending::TimedOut(limit) if limit == Duration::from_millis(300)),
            "{ending:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(running.finish().await.contains("started"));
    }

    #[tokio::test]
    async fn a_quick_command_beats_its_timeout() {
        let mut running = RunningCommand::spawn(&sh("exit 4"), 1024).unwrap();
        let ending = supervise(
            &mut running,
            Some(Duration::from_secs(30)),
            &CancellationToken::new(),
            &CancellationToken::new(),
        )
        .await;
        match ending {
            Ending::Exited(Ok(status)) => {
                assert_eq!(describe_failure(status), "command exited with status 4");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn losing_the_lease_or_stopping_kills_the_command() {
        for which in ["lost", "stopped"] {
            let lost = CancellationToken::new();
            let shutdown = CancellationToken::new();
            let mut running = RunningCommand::spawn(&sh("sleep 100"), 1024).unwrap();
            let token = if which == "lost" { &lost } else { &shutdown };
            let cancel = token.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                cancel.cancel();
            });
            let ending = supervise(&mut running, None, &lost, &shutdown).await;
            match (which, ending) {
                ("lost", Ending::Lost) | ("stopped", Ending::Stopped) => {}
                (which, other) => panic!("{which}: {other:?}"),
            }
        }
    }

    fn test_worker(dir: &Path) -> Worker {
        #[derive(clap::Parser)]
        struct Args {
            #[command(flatten)]
            config: crate::Config,
        }
        let args = <Args as clap::Parser>::try_parse_from([
            "worker",
            "--server",
            "http://127.0.0.1:9",
            "--token",
            "t",
            "--job-id",
            "1",
            "--pfs",
            &dir.join("pfs").display().to_string(),
            "--scratch",
            &dir.join("scratch").display().to_string(),
        ])
        .unwrap();
        Worker {
            client: Client::new(&args.config.server, None).unwrap(),
            config: args.config,
            shutdown: CancellationToken::new(),
        }
    }

    /// A reservation of two input files (5 and 7 bytes) running `script`.
    fn test_reservation(dir: &Path, script: &str) -> Reservation {
        let inputs = dir.join("in");
        std::fs::create_dir_all(&inputs).unwrap();
        std::fs::write(inputs.join("a"), "12345").unwrap();
        std::fs::write(inputs.join("b"), "1234567").unwrap();
        let file = |name: &str| falconeri_common::api::InputFileResponse {
            uri: format!("file://{}", inputs.join(name).display()),
            local_path: format!("in/{name}"),
        };
        Reservation {
            datum_id: 1,
            job_id: 1,
            claim: Claim {
                worker_id: "w".into(),
                attempt: 1,
                scope: None,
            },
            lease_expires_at: 0,
            heartbeat_interval_ms: 1000,
            timeout_ms: None,
            cmd: vec!["sh".into(), "-c".into(), script.into()],
            env: BTreeMap::new(),
            staging_uri: format!("file://{}/staging/", dir.display()),
            input_files: vec![file("a"), file("b")],
        }
    }

    async fn run_measured(script: &str) -> (Attempt, Measured) {
        let dir = tempfile::tempdir().unwrap();
        let worker = test_worker(dir.path());
        let r = test_reservation(dir.path(), script);
        let (log, _lines) = crate::logs::LogSink::for_test();
        let mut measured = Measured::default();
        let ran = run_attempt(&worker, &r, &CancellationToken::new(), &log, &mut measured).await;
        (ran, measured)
    }

    /// Files and bytes are counted each way, and every phase is timed.
    #[tokio::test]
    async fn an_attempt_counts_files_and_bytes() {
        let (ran, measured) = run_measured(
            "cat \"$FALCONERI_PFS/in/a\" \"$FALCONERI_PFS/in/b\" > \"$FALCONERI_OUT/both\"; \
             printf abc > \"$FALCONERI_OUT/three\"; sleep 0.2",
        )
        .await;
        assert!(matches!(ran, Attempt::Succeeded { .. }), "{ran:?}");
        let stats = measured.stats;
        assert_eq!(stats.download_files, Some(2));
        assert_eq!(stats.download_bytes, Some(12));
        assert_eq!(stats.upload_files, Some(2));
        assert_eq!(stats.upload_bytes, Some(15));
        assert!(stats.download_ms.is_some() && stats.upload_ms.is_some());
        assert!(stats.command_ms.unwrap() >= 200, "{stats:?}");
        assert!(stats.max_rss_bytes.unwrap() > 0, "{stats:?}");
        assert_eq!((measured.exit_code, measured.signal), (Some(0), None));
    }

    /// A failed command's report carries its exit status and what it
    /// measured (it used to carry neither).
    #[tokio::test]
    async fn a_failed_attempt_reports_its_exit_status() {
        let (ran, measured) = run_measured("exit 3").await;
        let Attempt::Failed { error, output } = ran else {
            panic!("{ran:?}");
        };
        let r = test_reservation(tempfile::tempdir().unwrap().path(), "");
        let body = error_request(&r, error, output, &measured);
        assert_eq!((body.exit_code, body.signal), (Some(3), None));
        let stats = body.stats.unwrap();
        assert_eq!(stats.download_bytes, Some(12));
        assert!(stats.command_ms.is_some());
        assert_eq!(stats.upload_ms, None);

        let (_, measured) = run_measured("kill -TERM $$").await;
        assert_eq!((measured.exit_code, measured.signal), (None, Some(15)));
    }

    /// A command killed for its `datum_timeout` is reported with the
    /// worker's signal and `killed_for`, so the server's `on_exit` rules do
    /// not take it for the command's own failure; a command that kills
    /// itself with the same signal is reported without it.
    #[tokio::test]
    async fn a_timed_out_attempt_says_the_worker_killed_it() {
        let dir = tempfile::tempdir().unwrap();
        let worker = test_worker(dir.path());
        let mut r = test_reservation(dir.path(), "sleep 30");
        r.timeout_ms = Some(200);
        let (log, _lines) = crate::logs::LogSink::for_test();
        let mut measured = Measured::default();
        let ran = run_attempt(&worker, &r, &CancellationToken::new(), &log, &mut measured).await;
        let Attempt::Failed { error, output } = ran else {
            panic!("{ran:?}");
        };
        let body = error_request(&r, error, output, &measured);
        assert_eq!(body.error, "datum timed out after 200ms");
        assert_eq!(body.signal, Some(15), "{body:?}");
        assert_eq!(body.killed_for, Some(KilledFor::DatumTimeout));

        let (_, measured) = run_measured("kill -TERM $$").await;
        let body = error_request(&r, String::new(), String::new(), &measured);
        assert_eq!((body.signal, body.killed_for), (Some(15), None));
    }

    #[test]
    fn failures_are_described() {
        assert_eq!(
            describe_failure(ExitStatus::from_raw(9)),
            "command killed by signal 9 (SIGKILL)"
        );
        assert_eq!(
            describe_failure(ExitStatus::from_raw(2 << 8)),
            "command exited with status 2"
        );
    }

    #[test]
    fn work_root_is_the_common_parent_but_never_root() {
        let check = |pfs: &str, scratch: &str, expected: &str| {
            assert_eq!(
                work_root(Path::new(pfs), Path::new(scratch)),
                PathBuf::from(expected),
                "{pfs} {scratch}"
            );
        };
        check("/tmp/w/pfs", "/tmp/w/scratch", "/tmp/w");
        check("/pfs", "/scratch", "/pfs");
        check("/a/pfs", "/b/scratch", "/a/pfs");
        check("/w/pfs", "/w/pfs/scratch", "/w/pfs");
    }

    #[tokio::test]
    async fn work_dirs_are_emptied_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let pfs = dir.path().join("pfs");
        let scratch = dir.path().join("scratch");
        // Missing directories are created.
        reset_work_dirs(&pfs, &scratch).await.unwrap();
        assert!(pfs.join("out").is_dir() && scratch.is_dir());

        std::fs::create_dir_all(pfs.join("repo/sub")).unwrap();
        std::fs::write(pfs.join("repo/sub/x"), "x").unwrap();
        std::fs::write(pfs.join("out/old"), "old").unwrap();
        std::fs::write(scratch.join("tmp"), "tmp").unwrap();
        // A symlink to a directory outside is removed, not followed.
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), "keep").unwrap();
        std::os::unix::fs::symlink(&outside, pfs.join("link")).unwrap();
        // Remember the inode, standing in for a mount point that must stay.
        let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&pfs).unwrap());

        reset_work_dirs(&pfs, &scratch).await.unwrap();
        let names = |d: &Path| -> Vec<String> {
            std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        };
        assert_eq!(names(&pfs), ["out"]);
        assert!(names(&pfs.join("out")).is_empty());
        assert!(names(&scratch).is_empty());
        assert!(outside.join("keep").exists());
        assert_eq!(
            std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&pfs).unwrap()),
            inode
        );
        assert!(empty_dir(Path::new("/")).await.is_err());
    }
}
