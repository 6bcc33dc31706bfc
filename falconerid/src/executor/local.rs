//! The local executor: each worker is a child process with its own work
//! directory (`pfs/` and `scratch/`) and log file under the state directory.
//! A worker that dies outright has whatever its command left running killed
//! here: its process group, and (when this process is a child subreaper)
//! every other process it left behind.
//!
//! Each worker is also recorded in `<state dir>/workers/<id>.json` (its pid
//! and the start time that proves the pid was not reused) until it has been
//! reaped and its directory removed. A falconerid that restarts on the same
//! state directory reads those records in [`LocalExecutor::recover`] and
//! *adopts* the workers still running: they count toward the job's
//! parallelism, are stopped like its own, and are reaped through a pidfd
//! (they are no longer its children, so `waitpid` cannot). Workers that
//! died meanwhile are cleaned up at once.

use std::{
    collections::{HashMap, HashSet},
    ffi::OsString,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use falconeri_common::process_tree;
use nix::{sys::signal::Signal, unistd::Pid};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::{Executor, WorkerLaunch, WorkerState};

/// How long a stopped worker gets to kill its command and report before it
/// is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct LocalWorker {
    id: String,
    pid: Option<u32>,
    /// For a worker adopted from a previous server: a pidfd, through which
    /// it is signalled, so a reused pid can never receive the signal.
    pidfd: Option<Arc<OwnedFd>>,
    alive: bool,
}

/// What `<state dir>/workers/<id>.json` holds about one running worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct WorkerRecord {
    job_id: i64,
    job_name: String,
    worker_id: String,
    pid: u32,
    /// The process's start time (clock ticks after boot, field 22 of
    /// `/proc/<pid>/stat`): a pid reused by another process has another.
    start_time: u64,
}

/// Runs workers as processes on this machine.
#[derive(Debug, Clone)]
pub struct LocalExecutor {
    command: Vec<OsString>,
    state_dir: PathBuf,
    workers: Arc<Mutex<HashMap<i64, Vec<LocalWorker>>>>,
    /// Signalled whenever a worker exits.
    exited: Arc<Notify>,
    /// Set by `shutdown`: no new worker may start after the executor has
    /// taken its list of workers to stop.
    closed: Arc<std::sync::atomic::AtomicBool>,
}

impl LocalExecutor {
    /// Workers run `command` (program and arguments); their directories go
    /// under `state_dir/work` and their logs under `state_dir/logs`.
    pub fn new(command: Vec<OsString>, state_dir: PathBuf) -> Result<LocalExecutor> {
        if command.is_empty() {
            bail!("the local executor needs a worker command");
        }
        Ok(LocalExecutor {
            command,
            state_dir,
            workers: Arc::default(),
            exited: Arc::default(),
            closed: Arc::default(),
        })
    }

    /// Finds the workers a previous falconerid on this state directory left
    /// running and adopts them; cleans up after those that died (kills the
    /// command a killed worker left running, removes its work directory).
    /// Work directories nobody records are removed too. Call it once, before
    /// any worker starts: then no directory under `work/` belongs to a
    /// worker of this server.
    ///
    /// Adopting rather than stopping them keeps their datums running: a
    /// killed server costs no attempt, and the workers, which retry their
    /// requests, report to the new server (which takes the old port).
    pub async fn recover(&self) -> Result<()> {
        let records_dir = self.records_dir();
        let mut entries = match tokio::fs::read_dir(&records_dir).await {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                self.remove_unrecorded_work(&HashSet::new()).await;
                return Ok(());
            }
            Err(err) => {
                return Err(err).with_context(|| format!("cannot read {}", records_dir.display()));
            }
        };
        let mut adopted = HashSet::new();
        while let Some(entry) = entries.next_entry().await? {
            let path = entry.path();
            if path.extension().is_none_or(|ext| ext != "json") {
                // A record half-written by a server that died: its worker,
                // if any, is unknown (see `write_record`).
                let _ = tokio::fs::remove_file(&path).await;
                continue;
            }
            let record: WorkerRecord = match tokio::fs::read(&path)
                .await
                .map_err(anyhow::Error::from)
                .and_then(|bytes| Ok(serde_json::from_slice(&bytes)?))
            {
                Ok(record) => record,
                Err(err) => {
                    tracing::warn!(path = %path.display(), error = %err, "ignoring a bad worker record");
                    let _ = tokio::fs::remove_file(&path).await;
                    continue;
                }
            };
            match open_if_same_process(record.pid, record.start_time) {
                Some(pidfd) => {
                    tracing::info!(
                        worker = record.worker_id,
                        pid = record.pid,
                        "adopting a worker of the previous server"
                    );
                    adopted.insert(record.worker_id.clone());
                    self.adopt(record, pidfd);
                }
                None => {
                    tracing::info!(
                        worker = record.worker_id,
                        "a worker of the previous server is gone; cleaning up after it"
                    );
                    let dir = self.work_dir(&record.job_name, &record.worker_id);
                    kill_orphaned_command_started_after(
                        &dir.join("command.pgid"),
                        record.start_time,
                    )
                    .await;
                    self.clean_up(&record.worker_id, &dir).await;
                }
            }
        }
        self.remove_unrecorded_work(&adopted).await;
        Ok(())
    }

    /// Counts an adopted worker as this server's and reaps it when its
    /// pidfd says it has exited.
    fn adopt(&self, record: WorkerRecord, pidfd: OwnedFd) {
        let waiter = pidfd.try_clone();
        self.lock()
            .entry(record.job_id)
            .or_default()
            .push(LocalWorker {
                id: record.worker_id.clone(),
                pid: Some(record.pid),
                pidfd: Some(Arc::new(pidfd)),
                alive: true,
            });
        let this = self.clone();
        tokio::spawn(async move {
            // A pidfd becomes readable when its process exits, whoever its
            // parent is: the notification `waitpid` gives only to parents.
            match waiter.and_then(watch_pidfd) {
                Ok(fd) => {
                    let _ = fd.readable().await;
                }
                Err(err) => {
                    // Cannot happen short of running out of descriptors;
                    // then the worker stays counted until it is stopped.
                    tracing::warn!(worker = record.worker_id, error = %err, "cannot watch an adopted worker");
                    return;
                }
            }
            tracing::info!(worker = record.worker_id, "adopted worker exited");
            let dir = this.work_dir(&record.job_name, &record.worker_id);
            kill_orphaned_command(&dir.join("command.pgid")).await;
            this.mark_exited(record.job_id, &record.worker_id);
            this.exited.notify_waiters();
            this.clean_up(&record.worker_id, &dir).await;
        });
    }

    /// Removes what an exited worker leaves: its work directory, then its
    /// record (in that order, so a crash in between leaves the record and
    /// the next `recover` removes the directory).
    async fn clean_up(&self, worker_id: &str, dir: &Path) {
        match tokio::fs::remove_dir_all(dir).await {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                tracing::warn!(worker = worker_id, error = %err, "cannot remove work directory");
            }
        }
        let _ = tokio::fs::remove_file(self.record_path(worker_id)).await;
    }

    /// Removes every worker directory under `work/` but those of `keep`,
    /// and job directories left empty: they belonged to workers of an
    /// earlier server that were never recorded (a server older than the
    /// records, or one killed between starting a worker and recording it).
    async fn remove_unrecorded_work(&self, keep: &HashSet<String>) {
        let work = self.state_dir.join("work");
        let Ok(mut jobs) = tokio::fs::read_dir(&work).await else {
            return;
        };
        while let Ok(Some(job)) = jobs.next_entry().await {
            let Ok(mut workers) = tokio::fs::read_dir(job.path()).await else {
                continue;
            };
            while let Ok(Some(worker)) = workers.next_entry().await {
                if !keep.contains(worker.file_name().to_string_lossy().as_ref()) {
                    tracing::info!(dir = %worker.path().display(), "removing a stale work directory");
                    let _ = tokio::fs::remove_dir_all(worker.path()).await;
                }
            }
            // Only succeeds once empty.
            let _ = tokio::fs::remove_dir(job.path()).await;
        }
    }

    fn records_dir(&self) -> PathBuf {
        self.state_dir.join("workers")
    }

    fn record_path(&self, worker_id: &str) -> PathBuf {
        self.records_dir().join(format!("{worker_id}.json"))
    }

    fn work_dir(&self, job_name: &str, worker_id: &str) -> PathBuf {
        self.state_dir.join("work").join(job_name).join(worker_id)
    }

    /// Writes a worker's record atomically: a temporary file renamed into
    /// place, so `recover` reads a whole record or none. No fsync: records
    /// matter across a crash of falconerid, not of the machine, which takes
    /// the workers with it.
    async fn write_record(&self, record: &WorkerRecord) -> Result<()> {
        let dir = self.records_dir();
        tokio::fs::create_dir_all(&dir)
            .await
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let tmp = dir.join(format!("{}.tmp", record.worker_id));
        tokio::fs::write(&tmp, serde_json::to_vec(record)?)
            .await
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        tokio::fs::rename(&tmp, self.record_path(&record.worker_id))
            .await
            .with_context(|| format!("cannot record worker {}", record.worker_id))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Vec<LocalWorker>>> {
        // A poisoned lock only means another thread panicked mid-update of
        // this bookkeeping; the map itself is still usable.
        self.workers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn mark_exited(&self, job_id: i64, worker_id: &str) {
        if let Some(workers) = self.lock().get_mut(&job_id) {
            for worker in workers.iter_mut().filter(|w| w.id == worker_id) {
                worker.alive = false;
            }
        }
    }

    /// The log file of a worker.
    pub fn log_path(&self, job_name: &str, worker_id: &str) -> PathBuf {
        self.state_dir
            .join("logs")
            .join(job_name)
            .join(format!("{worker_id}.log"))
    }
}

/// Writes `contents` to a new file only its owner can read.
async fn write_private(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .await?;
    file.write_all(contents.as_bytes()).await?;
    file.flush().await
}

/// A worker that dies abruptly (SIGKILL, a crash) leaves its command
/// running in its own process group. The worker records that group in a
/// file while the command runs; if the file is still there once the worker
/// has exited, the command is an orphan and is killed.
async fn kill_orphaned_command(pgid_file: &std::path::Path) {
    let Ok(text) = tokio::fs::read_to_string(pgid_file).await else {
        return;
    };
    if let Ok(pgid) = text.trim().parse::<i32>()
        && pgid > 1
    {
        tracing::warn!(pgid, "the worker died; killing the command it left running");
        let _ = nix::sys::signal::killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
    let _ = tokio::fs::remove_file(pgid_file).await;
}

/// A worker killed outright also leaves what its command started outside
/// its process group (a `setsid`'ed child, a double-forked daemon), which
/// the group kill above misses. The worker was their subreaper; when it
/// dies they are reparented to the nearest subreaper above it, which is
/// this process when it made itself one (the falconerid binary and the
/// CLI's local server do, at start-up). Then every descendant of ours that
/// is not a live worker (those are kept) or below one is such a leftover,
/// and is killed and reaped. Not a subreaper (a library user, a test
/// harness), the orphans went to PID 1 and we cannot tell them apart from
/// anyone else's: only the process group is killed.
async fn kill_orphaned_descendants() {
    if !process_tree::is_subreaper() {
        return;
    }
    let killed = process_tree::kill_descendants().await;
    if killed > 0 {
        tracing::warn!(
            killed,
            "killed processes a dead worker's command left running"
        );
    }
}

/// Like [`kill_orphaned_command`], for a worker found dead by `recover`,
/// perhaps long after it died: its command's group id may have been reused
/// since, so the group is killed only if one of its processes started after
/// the worker did (`worker_start`, in clock ticks after boot).
async fn kill_orphaned_command_started_after(pgid_file: &Path, worker_start: u64) {
    let Ok(text) = tokio::fs::read_to_string(pgid_file).await else {
        return;
    };
    let Ok(pgid) = text.trim().parse::<i32>() else {
        return;
    };
    let ours = tokio::task::spawn_blocking(move || group_started_after(pgid, worker_start))
        .await
        .unwrap_or(false);
    if ours {
        kill_orphaned_command(pgid_file).await;
    } else {
        let _ = tokio::fs::remove_file(pgid_file).await;
    }
}

/// Whether a live process of group `pgid` started at or after `start`.
fn group_started_after(pgid: i32, start: u64) -> bool {
    process_tree::group_members(pgid)
        .iter()
        .any(|stat| stat.start_time >= start)
}

/// The start time of process `pid`, if it exists.
fn process_start_time(pid: u32) -> Option<u64> {
    process_tree::read_stat(pid)
        .filter(|stat| stat.state != b'Z')
        .map(|stat| stat.start_time)
}

/// A pidfd for `pid` if it is still the process that started at
/// `start_time` and has not exited. The pidfd is opened first and the start
/// time checked after: if the check passes, the pidfd refers to that very
/// process, whatever happens to the pid later.
fn open_if_same_process(pid: u32, start_time: u64) -> Option<OwnedFd> {
    let raw = i32::try_from(pid).ok()?;
    let pidfd = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(raw)?,
        rustix::process::PidfdFlags::empty(),
    )
    .ok()?;
    (process_start_time(pid) == Some(start_time)).then_some(pidfd)
}

/// Registers a pidfd with Tokio's reactor, to learn when its process exits.
///
/// Tokio 1.54 deprecated its safe constructors in favour of an `unsafe`
/// one (workspace lints deny `unsafe`), because an arbitrary `AsRawFd` type
/// may close or swap its descriptor while registered. An `OwnedFd` owned by
/// the `AsyncFd` cannot: it stays open, and the same, until dropped with it.
#[allow(deprecated)]
fn watch_pidfd(pidfd: OwnedFd) -> std::io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    tokio::io::unix::AsyncFd::with_interest(pidfd, tokio::io::Interest::READABLE)
}

/// Sends `signal` to a worker: through its pidfd if it was adopted, else by
/// pid (a child: its pid cannot be reused before falconerid reaps it).
fn signal_worker(pid: i32, pidfd: Option<&OwnedFd>, signal: Signal) {
    match pidfd {
        Some(pidfd) => {
            let signal = match signal {
                Signal::SIGKILL => rustix::process::Signal::KILL,
                _ => rustix::process::Signal::TERM,
            };
            let _ = rustix::process::pidfd_send_signal(pidfd, signal);
        }
        None => {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), signal);
        }
    }
}

fn random_suffix() -> String {
    hex::encode(rand::random::<[u8; 3]>())
}

#[async_trait]
impl Executor for LocalExecutor {
    fn name(&self) -> &'static str {
        "local"
    }

    #[tracing::instrument(level = "debug", skip(self, launch), fields(job = launch.job_name))]
    async fn start_workers(&self, launch: &WorkerLaunch, count: u32) -> Result<()> {
        for _ in 0..count {
            if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
                bail!("falconerid is shutting down");
            }
            let id = format!("{}-{}", launch.job_name, random_suffix());
            let dir = self.work_dir(&launch.job_name, &id);
            let pfs = dir.join("pfs");
            let pgid_file = dir.join("command.pgid");
            let scratch = dir.join("scratch");
            for path in [&pfs, &scratch] {
                tokio::fs::create_dir_all(path)
                    .await
                    .with_context(|| format!("cannot create {}", path.display()))?;
            }
            // The token goes in a private file the worker deletes once read,
            // not in its environment, which its command could read from /proc.
            let token_file = dir.join("worker.token");
            write_private(&token_file, &launch.worker_token)
                .await
                .with_context(|| format!("cannot write {}", token_file.display()))?;
            let log_path = self.log_path(&launch.job_name, &id);
            if let Some(parent) = log_path.parent() {
                tokio::fs::create_dir_all(parent).await?;
            }
            let log = std::fs::File::create(&log_path)
                .with_context(|| format!("cannot create {}", log_path.display()))?;
            let log_err = log.try_clone()?;

            let mut command = tokio::process::Command::new(&self.command[0]);
            command
                .args(&self.command[1..])
                // Workers reach the system only through the API: they get
                // no database settings and no admin token.
                .env_remove("FALCONERI_DATABASE_URL")
                .env("FALCONERI_SERVER", &launch.server.url)
                .env_remove("FALCONERI_TOKEN")
                .env("FALCONERI_TOKEN_FILE", &token_file)
                .env("FALCONERI_JOB_ID", launch.job_id.to_string())
                .env("FALCONERI_WORKER_ID", &id)
                .env("FALCONERI_PFS", &pfs)
                .env("FALCONERI_SCRATCH", &scratch)
                .env("FALCONERI_COMMAND_PGID_FILE", &pgid_file)
                // The command's output is kept in the attempt's log (this
                // server has it); a second copy in the worker's log file
                // only slowed chatty commands (bench/logs).
                .env("FALCONERI_PASS_OUTPUT", "false")
                .current_dir(&dir)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log_err)
                // Its own process group: a Ctrl-C aimed at the server's
                // terminal must not take the workers down mid-write.
                .process_group(0);
            // Through the Unix socket when there is one: a worker on this
            // machine then skips TCP, which cost it and us more per byte of
            // its log than the rest of the way (bench/logs).
            match &launch.server.socket {
                Some(socket) => command.env("FALCONERI_SERVER_SOCKET", socket),
                None => command.env_remove("FALCONERI_SERVER_SOCKET"),
            };
            // Kept out of leftover sweeps (below) until reaped: its
            // subtree is the worker's own business while it lives.
            let mut child = process_tree::spawn_kept(|| {
                let child = command.spawn()?;
                let pid = child.id();
                Ok((child, pid))
            })
            .with_context(|| format!("cannot start worker {:?}", self.command[0]))?;
            let pid = child.id();
            tracing::info!(worker = id, pid, log = %log_path.display(), "started worker");
            {
                // Checked again under the lock that `shutdown` takes for its
                // list: a worker is either on that list or killed here.
                let mut workers = self.lock();
                if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(workers);
                    let _ = child.start_kill();
                    bail!("falconerid is shutting down");
                }
                workers.entry(launch.job_id).or_default().push(LocalWorker {
                    id: id.clone(),
                    pid,
                    pidfd: None,
                    alive: true,
                });
            }
            // Recorded for the next server, should this one die. (Killed
            // between the spawn and here, it leaves a worker nobody records;
            // the next server then removes its directory from under it.)
            let start_time = pid.and_then(process_start_time);
            if let (Some(pid), Some(start_time)) = (pid, start_time) {
                let record = WorkerRecord {
                    job_id: launch.job_id,
                    job_name: launch.job_name.clone(),
                    worker_id: id.clone(),
                    pid,
                    start_time,
                };
                if let Err(err) = self.write_record(&record).await {
                    tracing::warn!(
                        worker = id,
                        error = format!("{err:#}"),
                        "cannot record worker"
                    );
                }
            }

            // Reap the child, then clean up its work directory.
            let this = self.clone();
            let job_id = launch.job_id;
            tokio::spawn(async move {
                let status = child.wait().await;
                tracing::info!(worker = id, ?status, "worker exited");
                if status.is_ok()
                    && let Some(pid) = pid.and_then(|pid| i32::try_from(pid).ok())
                {
                    process_tree::release(pid);
                }
                kill_orphaned_command(&pgid_file).await;
                kill_orphaned_descendants().await;
                this.mark_exited(job_id, &id);
                this.exited.notify_waiters();
                this.clean_up(&id, &dir).await;
            });
        }
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn stop_workers(&self, job_id: i64) -> Result<()> {
        type Target = (String, i32, Option<Arc<OwnedFd>>);
        let targets: Vec<Target> = self
            .lock()
            .get(&job_id)
            .map(|workers| {
                workers
                    .iter()
                    .filter(|w| w.alive)
                    .filter_map(|w| {
                        let pid = i32::try_from(w.pid?).ok()?;
                        Some((w.id.clone(), pid, w.pidfd.clone()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        for (id, pid, pidfd) in targets {
            tracing::info!(worker = id, pid, "stopping worker");
            signal_worker(pid, pidfd.as_deref(), Signal::SIGTERM);
            // Escalate later without holding up the caller.
            let this = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(STOP_GRACE).await;
                let still_alive = this
                    .lock()
                    .get(&job_id)
                    .is_some_and(|ws| ws.iter().any(|w| w.id == id && w.alive));
                if still_alive {
                    tracing::warn!(worker = id, "worker ignored SIGTERM; killing it");
                    signal_worker(pid, pidfd.as_deref(), Signal::SIGKILL);
                }
            });
        }
        Ok(())
    }

    /// Stops every worker and waits (up to the grace period) for them to
    /// exit, so `falconeri local stop` leaves no commands behind.
    async fn shutdown(&self) {
        let jobs: Vec<i64> = {
            let workers = self.lock();
            self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
            workers.keys().copied().collect()
        };
        for job_id in jobs {
            let _ = self.stop_workers(job_id).await;
        }
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        loop {
            // Register interest before checking, so an exit in between
            // still wakes us.
            let exited = self.exited.notified();
            if !self.lock().values().flatten().any(|w| w.alive) {
                break;
            }
            if tokio::time::timeout_at(deadline, exited).await.is_err() {
                tracing::warn!("some workers did not stop in time");
                break;
            }
        }
    }

    async fn workers(&self, job_id: i64) -> Result<Vec<WorkerState>> {
        Ok(self
            .lock()
            .get(&job_id)
            .map(|workers| {
                workers
                    .iter()
                    .map(|w| WorkerState {
                        id: w.id.clone(),
                        alive: w.alive,
                    })
                    .collect()
            })
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::ServerEndpoint;

    fn launch() -> WorkerLaunch {
        let spec = falconeri_common::db::testing::spec("t", 1, 1);
        WorkerLaunch {
            job_id: 1,
            job_name: "t-aaaaa".into(),
            worker_token: "token".into(),
            server: ServerEndpoint {
                url: "http://127.0.0.1:1".into(),
                socket: None,
            },
            spec,
        }
    }

    /// Shutdown stops every worker and waits for it; no worker can start
    /// afterwards (a `job run` racing `local stop` must not leave one behind).
    #[tokio::test]
    async fn shutdown_stops_workers_and_refuses_new_ones() {
        let dir = tempfile::tempdir().unwrap();
        let executor =
            LocalExecutor::new(vec!["sleep".into(), "100".into()], dir.path().to_owned()).unwrap();
        executor.start_workers(&launch(), 2).await.unwrap();
        let workers = executor.workers(1).await.unwrap();
        assert_eq!(workers.iter().filter(|w| w.alive).count(), 2);

        executor.shutdown().await;
        let workers = executor.workers(1).await.unwrap();
        assert!(workers.iter().all(|w| !w.alive), "{workers:?}");
        let err = executor.start_workers(&launch(), 1).await.unwrap_err();
        assert!(err.to_string().contains("shutting down"), "{err}");
        // Each worker had its own log.
        let logs = dir
            .path()
            .join("logs")
            .join("t-aaaaa")
            .read_dir()
            .unwrap()
            .count();
        assert_eq!(logs, 2);
    }
    /// Waits (bounded) for `done`, which the executor's own tasks make
    /// true; the wake-up is `exited`, not a sleep loop.
    async fn until(executor: &LocalExecutor, done: impl Fn() -> bool) {
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let exited = executor.exited.notified();
                if done() {
                    return;
                }
                // Cleanup runs just after the notification: check again soon.
                let _ = tokio::time::timeout(Duration::from_millis(100), exited).await;
            }
        })
        .await
        .expect("timed out");
    }

    /// A worker is told the Unix socket to reach falconerid through when
    /// there is one, and no socket at all when there is none.
    #[tokio::test]
    async fn workers_get_the_server_socket_when_one_listens() {
        let dir = tempfile::tempdir().unwrap();
        let seen = dir.path().join("seen");
        let script = format!(
            "printf '%s|' \"${{FALCONERI_SERVER_SOCKET-unset}}\" >> '{}'",
            seen.display()
        );
        let executor = LocalExecutor::new(
            vec!["sh".into(), "-c".into(), script.into()],
            dir.path().join("state"),
        )
        .unwrap();
        let mut with_socket = launch();
        with_socket.server.socket = Some(PathBuf::from("/run/x/falconerid.sock"));
        executor.start_workers(&with_socket, 1).await.unwrap();
        until(&executor, || {
            std::fs::read_to_string(&seen).is_ok_and(|s| s.len() > 1)
        })
        .await;
        executor.start_workers(&launch(), 1).await.unwrap();
        until(&executor, || {
            std::fs::read_to_string(&seen).is_ok_and(|s| s.matches('|').count() == 2)
        })
        .await;
        assert_eq!(
            std::fs::read_to_string(&seen).unwrap(),
            "/run/x/falconerid.sock|unset|"
        );
        executor.shutdown().await;
    }

    /// Issue 9, defect 4: a restarted falconerid neither adopted nor stopped
    /// the previous server's workers. The second executor on the same state
    /// directory (the first one "crashed": dropped without `shutdown`)
    /// counts the running worker as its own, stops it through its pidfd,
    /// and removes its directory and record once it has exited.
    #[tokio::test]
    async fn a_restarted_executor_adopts_the_previous_workers() {
        let dir = tempfile::tempdir().unwrap();
        let command = vec!["sleep".into(), "100".into()];
        let first = LocalExecutor::new(command.clone(), dir.path().to_owned()).unwrap();
        first.start_workers(&launch(), 1).await.unwrap();
        let id = first.workers(1).await.unwrap()[0].id.clone();
        let work = dir.path().join("work/t-aaaaa").join(&id);
        assert!(work.is_dir());
        let record = dir.path().join("workers").join(format!("{id}.json"));
        assert!(record.is_file());
        // A directory nobody records (a server killed mid-start, or an
        // older one) and a record of a worker that died meanwhile.
        let stale = dir.path().join("work/t-aaaaa/t-aaaaa-dead00");
        std::fs::create_dir_all(stale.join("pfs")).unwrap();
        let gone = WorkerRecord {
            job_id: 1,
            job_name: "t-aaaaa".into(),
            worker_id: "t-aaaaa-gone00".into(),
            pid: std::process::id(),
            start_time: 1,
        };
        let gone_dir = dir.path().join("work/t-aaaaa/t-aaaaa-gone00");
        std::fs::create_dir_all(&gone_dir).unwrap();
        first.write_record(&gone).await.unwrap();

        let second = LocalExecutor::new(command, dir.path().to_owned()).unwrap();
        second.recover().await.unwrap();
        assert_eq!(
            second.workers(1).await.unwrap(),
            [WorkerState {
                id: id.clone(),
                alive: true
            }]
        );
        assert!(work.is_dir(), "an adopted worker keeps its directory");
        assert!(!stale.exists() && !gone_dir.exists());
        assert!(!dir.path().join("workers/t-aaaaa-gone00.json").exists());

        second.stop_workers(1).await.unwrap();
        until(&second, || {
            second.lock()[&1].iter().all(|w| !w.alive) && !work.exists() && !record.exists()
        })
        .await;
    }

    #[test]
    fn a_pidfd_is_opened_only_for_the_same_process() {
        let own = process_start_time(std::process::id()).unwrap();
        assert!(open_if_same_process(std::process::id(), own).is_some());
        assert!(open_if_same_process(std::process::id(), own + 1).is_none());
    }
}
