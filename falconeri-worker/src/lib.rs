//! The falconeri worker: reserves datums of one job from falconerid, runs each
//! one's command on its downloaded inputs, uploads the outputs and reports,
//! until the job has no work left.
//!
//! The worker reaches the system only through the REST API
//! ([`falconeri_common::client::Client`]). [`run`] is the whole worker; the
//! `falconeri-worker` binary and the CLI's embedded worker both call it.
//!
//! - [`batch`]: a batch of datums, from reservation to one report.
//! - [`datum`]: one datum, from reservation to report.
//! - [`process`]: the command, everything it starts, and its output.
//! - [`logs`]: the attempt's log, shipped to falconerid as it is written.
//! - [`retry`]: backoff while falconerid is unreachable.

mod batch;
mod datum;
mod logs;
mod process;
mod retry;
mod usage;

use std::{fmt, path::PathBuf, time::Duration};

use anyhow::{Context, Result, anyhow};
use falconeri_common::{
    api::ReserveResponse, client::Client, pipeline::MAX_DATUMS_PER_RESERVATION,
};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::{sync::CancellationToken, task::AbortOnDropHandle};

use crate::{datum::Outcome, retry::Backoff};

/// Everything the worker needs to know, from flags or the environment.
#[derive(clap::Args, Clone)]
pub struct Config {
    /// falconerid's URL, such as http://falconerid:8089.
    #[arg(long, env = "FALCONERI_SERVER")]
    pub server: String,

    /// A Unix socket to reach falconerid through instead of --server's host
    /// and port (which still gives the scheme). The local executor sets it
    /// to falconerid's `--worker-socket`.
    #[arg(long, env = "FALCONERI_SERVER_SOCKET")]
    pub server_socket: Option<PathBuf>,

    /// The job's worker token.
    #[arg(
        long,
        env = "FALCONERI_TOKEN",
        hide_env_values = true,
        required_unless_present = "token_file"
    )]
    pub token: Option<String>,

    /// A file holding the job's worker token, read and then deleted at
    /// start-up. Preferred to --token: the command runs as the same user and
    /// could read the worker's environment from /proc, but not a file that
    /// is gone.
    #[arg(long, env = "FALCONERI_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// The job whose datums to work on.
    #[arg(long, env = "FALCONERI_JOB_ID")]
    pub job_id: i64,

    /// This worker's name, as shown on the datums it runs [default: $HOSTNAME
    /// (the pod name in Kubernetes), or a random id].
    #[arg(
        long,
        env = "FALCONERI_WORKER_ID",
        default_value_t = default_worker_id(),
        hide_default_value = true
    )]
    pub worker_id: String,

    /// Where inputs are downloaded and outputs (under `out/`) are collected.
    /// Its contents are deleted before every datum.
    #[arg(long, env = "FALCONERI_PFS", default_value = "/pfs")]
    pub pfs: PathBuf,

    /// Scratch space for the command. Its contents are deleted before every
    /// datum.
    #[arg(long, env = "FALCONERI_SCRATCH", default_value = "/scratch")]
    pub scratch: PathBuf,

    /// How long one request for work waits on the server before asking again.
    #[arg(
        long,
        env = "FALCONERI_RESERVE_WAIT",
        default_value = "30s",
        value_parser = humantime::parse_duration
    )]
    pub reserve_wait: Duration,

    /// How long to keep retrying while falconerid is unreachable or answers
    /// 5xx, with backoff from 100ms to 5s, before exiting with an error.
    #[arg(
        long = "retry-budget",
        alias = "max-idle-errors",
        env = "FALCONERI_RETRY_BUDGET",
        default_value = "5m",
        value_parser = humantime::parse_duration
    )]
    pub retry_budget: Duration,

    /// How much of the command's stdout and stderr (the last bytes) to send
    /// to falconerid with the datum's report. The attempt's log keeps all of
    /// it; this tail is the summary `datum describe` shows, and a larger one
    /// is one more copy of the output to send and store per datum, in the
    /// datum's own row (64 KiB, the default until the log kept everything,
    /// came to 64 GB in `datums` for a million chatty datums).
    #[arg(long, env = "FALCONERI_OUTPUT_TAIL_BYTES", default_value_t = 4 * 1024)]
    pub output_tail_bytes: usize,

    /// Whether the command's stdout and stderr are also copied to the
    /// worker's own stdout and stderr. In a pod that copy is what `kubectl
    /// logs` shows, so it is on by default; the local executor turns it off
    /// (`FALCONERI_PASS_OUTPUT=false`): falconerid keeps every byte in the
    /// attempt's log already, and a second copy into the worker's log file
    /// cost a chatty command a write (and a thread hand-off) per read.
    #[arg(
        long,
        env = "FALCONERI_PASS_OUTPUT",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub pass_output: bool,

    /// A file where the worker records the process group of the command it
    /// is running, so a supervisor can kill the command should the worker
    /// itself die. The local executor sets it; in a container the command
    /// dies with the container anyway.
    #[arg(long, env = "FALCONERI_COMMAND_PGID_FILE")]
    pub command_pgid_file: Option<PathBuf>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Written out by hand so the token never reaches a log.
        f.debug_struct("Config")
            .field("server", &self.server)
            .field("server_socket", &self.server_socket)
            .field("token", &"<redacted>")
            .field("job_id", &self.job_id)
            .field("worker_id", &self.worker_id)
            .field("pfs", &self.pfs)
            .field("scratch", &self.scratch)
            .field("reserve_wait", &self.reserve_wait)
            .field("retry_budget", &self.retry_budget)
            .field("output_tail_bytes", &self.output_tail_bytes)
            .field("pass_output", &self.pass_output)
            .field("command_pgid_file", &self.command_pgid_file)
            .finish()
    }
}

/// `$HOSTNAME`, which Kubernetes sets to the pod name, or else a random id:
/// worker ids must differ, since they are part of every datum claim.
fn default_worker_id() -> String {
    match std::env::var("HOSTNAME") {
        Ok(host) if !host.trim().is_empty() => host.trim().to_owned(),
        _ => format!("worker-{:016x}", rand::random::<u64>()),
    }
}

/// The running worker's shared parts.
pub(crate) struct Worker {
    pub(crate) client: Client,
    pub(crate) config: Config,
    /// Cancelled on SIGTERM or SIGINT.
    pub(crate) shutdown: CancellationToken,
}

/// Why a worker ended without an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// The job has no work left.
    Finished,
    /// Stopped by a signal (or its cancellation token) before the job ended.
    Stopped,
}

impl Exit {
    /// The process exit status. A stopped worker exits like a process
    /// killed by SIGTERM (143), not 0: a Kubernetes Job counts a pod that
    /// exits 0 as a finished worker and stops replacing pods, so a worker
    /// stopped mid-job must not look finished. (Evictions and preemptions
    /// are excused by the Job's pod failure policy, not by this status.)
    pub fn status(self) -> u8 {
        match self {
            Exit::Finished => 0,
            Exit::Stopped => 128 + 15,
        }
    }
}

/// The runtime a worker runs on: one thread for its tasks (the command's
/// pumps, the log shipper, lease renewal, transfers) plus tokio's pool for
/// blocking file work. A worker does one datum at a time and its tasks
/// mostly hand bytes to each other: on one thread a hand-off is a queue
/// push, where across a multi-threaded runtime's threads it was a futex
/// wake-up and a cache miss, which made up much of what keeping a chatty
/// command's log cost the worker (see bench/logs).
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Works on the job until it has no work left ([`Exit::Finished`]), SIGTERM
/// or SIGINT arrives ([`Exit::Stopped`], after reporting the datum in hand as
/// stopped), or falconerid stays unreachable past the retry budget (Err).
pub async fn run(config: Config) -> Result<Exit> {
    // Orphans of the commands we run (a double-forked daemon) are
    // reparented to us rather than to PID 1, so that the sweep after each
    // datum finds and kills them (see `process`). Done here, not in
    // `run_until`, because it is process-wide: only the worker's own
    // process should take it on.
    falconeri_common::process_tree::become_subreaper();
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    let _listener = AbortOnDropHandle::new(tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("got SIGTERM; stopping"),
            _ = interrupt.recv() => tracing::info!("got SIGINT; stopping"),
        }
        on_signal.cancel();
    }));
    run_until(config, shutdown).await
}

/// [`run`], stopping when `shutdown` is cancelled instead of on signals, for
/// embedding the worker and for tests.
pub async fn run_until(mut config: Config, shutdown: CancellationToken) -> Result<Exit> {
    // The command may change directory, so it gets absolute paths.
    config.pfs = std::path::absolute(&config.pfs)
        .with_context(|| format!("bad --pfs {}", config.pfs.display()))?;
    config.scratch = std::path::absolute(&config.scratch)
        .with_context(|| format!("bad --scratch {}", config.scratch.display()))?;
    let token = match (&config.token_file, &config.token) {
        (Some(path), _) => {
            let token = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the token file {}", path.display()))?;
            // Gone before any command runs.
            std::fs::remove_file(path)
                .with_context(|| format!("cannot remove the token file {}", path.display()))?;
            token.trim().to_owned()
        }
        (None, Some(token)) => token.clone(),
        (None, None) => {
            anyhow::bail!("no worker token: set FALCONERI_TOKEN_FILE or FALCONERI_TOKEN")
        }
    };
    let client = Client::through(&config.server, config.server_socket.as_deref(), Some(token))
        .with_context(|| format!("cannot use falconerid at {:?}", config.server))?;
    tracing::info!(?config, "worker starting");
    let worker = Worker {
        client,
        config,
        shutdown,
    };

    let mut backoff = Backoff::new(worker.config.retry_budget);
    // Whether the server may have given us datums we never heard of: at
    // start (a worker id may be reused), and after a reservation that got
    // no answer. Then the server looks for them first.
    let mut resume = true;
    // What a report's answer said comes next (its `next`), if it did: then
    // no reservation is sent.
    let mut given: Option<ReserveResponse> = None;
    loop {
        let answer = match given.take() {
            Some(answer) => Ok(answer),
            None => {
                let answer = tokio::select! {
                    // A datum reserved by a request we drop here is retried
                    // when its lease expires; stopping promptly matters more.
                    () = worker.shutdown.cancelled() => return Ok(Exit::Stopped),
                    answer = reserve(&worker, resume) => answer,
                };
                resume = answer.is_err();
                answer
            }
        };
        let outcome = match answer {
            // The server already waited for us (long poll), so ask again now.
            Ok(ReserveResponse::Wait) => {
                backoff.reset();
                continue;
            }
            Ok(ReserveResponse::Finished) => {
                tracing::info!("the job has no work left; exiting");
                return Ok(Exit::Finished);
            }
            // An older server, which knows no batches, answers this way.
            Ok(ReserveResponse::Reserved(reservation)) => {
                backoff.reset();
                datum::process(&worker, &reservation).await?
            }
            Ok(ReserveResponse::Batch { reservations }) => {
                backoff.reset();
                batch::process_batch(&worker, &reservations).await?
            }
            Err(err) if err.is_transient() => {
                let Some(delay) = backoff.next_delay() else {
                    return Err(anyhow!(err)).context(format!(
                        "giving up after {} of failed requests for work",
                        humantime::format_duration(worker.config.retry_budget)
                    ));
                };
                tracing::warn!(error = %err, ?delay, "cannot reserve a datum; retrying");
                tokio::select! {
                    () = worker.shutdown.cancelled() => return Ok(Exit::Stopped),
                    () = tokio::time::sleep(delay) => {}
                }
                continue;
            }
            Err(err) => return Err(anyhow!(err)).context("cannot reserve a datum"),
        };
        match outcome {
            Outcome::Stopped => return Ok(Exit::Stopped),
            Outcome::Next => {}
            Outcome::Resume => resume = true,
            Outcome::Given(next) => given = Some(next),
        }
    }
}

/// Asks falconerid for the job's next datums, waiting up to `reserve_wait`.
/// The worker takes as many as the server will give: the job's
/// `datums_per_reservation` caps the batch, so a job that wants one datum at
/// a time gets a batch of one.
#[tracing::instrument(skip_all, fields(job_id = worker.config.job_id))]
async fn reserve(
    worker: &Worker,
    resume: bool,
) -> Result<ReserveResponse, falconeri_common::client::ClientError> {
    let config = &worker.config;
    worker
        .client
        .reserve(
            config.job_id,
            &config.worker_id,
            config.reserve_wait,
            Some(MAX_DATUMS_PER_RESERVATION),
            resume,
        )
        .await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }

    #[test]
    fn config_defaults_and_token_is_hidden() {
        let cli = Cli::try_parse_from([
            "worker",
            "--server",
            "http://127.0.0.1:8089",
            "--token",
            "s3cret-token",
            "--job-id",
            "12",
            "--worker-id",
            "w1",
        ])
        .unwrap();
        let config = cli.config;
        assert_eq!(config.job_id, 12);
        assert_eq!(config.worker_id, "w1");
        assert_eq!(config.pfs, PathBuf::from("/pfs"));
        assert_eq!(config.scratch, PathBuf::from("/scratch"));
        assert_eq!(config.reserve_wait, Duration::from_secs(30));
        assert_eq!(config.retry_budget, Duration::from_secs(300));
        assert_eq!(config.output_tail_bytes, 4 << 10);
        assert!(config.pass_output);
        let debug = format!("{config:?}");
        assert!(!debug.contains("s3cret-token"), "{debug}");
        assert!(debug.contains("http://127.0.0.1:8089"), "{debug}");
    }

    #[test]
    fn durations_parse_and_the_old_flag_name_works() {
        let cli = Cli::try_parse_from([
            "worker",
            "--server=http://x:1",
            "--token=t",
            "--job-id=1",
            "--reserve-wait=2s",
            "--max-idle-errors=1m",
        ])
        .unwrap();
        assert_eq!(cli.config.reserve_wait, Duration::from_secs(2));
        assert_eq!(cli.config.retry_budget, Duration::from_secs(60));
        assert!(!cli.config.worker_id.is_empty());
    }

    #[test]
    fn help_names_the_env_vars_and_the_budget_flag() {
        let help = <Cli as clap::CommandFactory>::command()
            .render_long_help()
            .to_string();
        assert!(help.contains("FALCONERI_TOKEN"));
        assert!(help.contains("--retry-budget"));
    }
}
