//! The local executor: each worker is a child process with its own work
//! directory (`pfs/` and `scratch/`) and log file under the state directory.
//! A worker that dies outright has whatever its command left running killed
//! here: its process group, and (when this process is a child subreaper)
//! every other process it left behind.

use std::{
    collections::HashMap,
    ffi::OsString,
    path::PathBuf,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use falconeri_common::process_tree;
use nix::{sys::signal::Signal, unistd::Pid};
use tokio::sync::Notify;

use super::{Executor, WorkerLaunch, WorkerState};

/// How long a stopped worker gets to kill its command and report before it
/// is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct LocalWorker {
    id: String,
    pid: Option<u32>,
    alive: bool,
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
            let dir = self.state_dir.join("work").join(&launch.job_name).join(&id);
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
                .env("FALCONERI_SERVER", &launch.server_url)
                .env_remove("FALCONERI_TOKEN")
                .env("FALCONERI_TOKEN_FILE", &token_file)
                .env("FALCONERI_JOB_ID", launch.job_id.to_string())
                .env("FALCONERI_WORKER_ID", &id)
                .env("FALCONERI_PFS", &pfs)
                .env("FALCONERI_SCRATCH", &scratch)
                .env("FALCONERI_COMMAND_PGID_FILE", &pgid_file)
                .current_dir(&dir)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log_err)
                // Its own process group: a Ctrl-C aimed at the server's
                // terminal must not take the workers down mid-write.
                .process_group(0);
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
                    alive: true,
                });
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
                if let Err(err) = tokio::fs::remove_dir_all(&dir).await {
                    tracing::warn!(worker = id, error = %err, "cannot remove work directory");
                }
            });
        }
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn stop_workers(&self, job_id: i64) -> Result<()> {
        let pids: Vec<(String, u32)> = self
            .lock()
            .get(&job_id)
            .map(|workers| {
                workers
                    .iter()
                    .filter(|w| w.alive)
                    .filter_map(|w| w.pid.map(|pid| (w.id.clone(), pid)))
                    .collect()
            })
            .unwrap_or_default();
        for (id, pid) in pids {
            let Ok(raw) = i32::try_from(pid) else {
                continue;
            };
            tracing::info!(worker = id, pid, "stopping worker");
            let _ = nix::sys::signal::kill(Pid::from_raw(raw), Signal::SIGTERM);
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
                    let _ = nix::sys::signal::kill(Pid::from_raw(raw), Signal::SIGKILL);
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

    fn launch() -> WorkerLaunch {
        let spec = falconeri_common::db::testing::spec("t", 1, 1);
        WorkerLaunch {
            job_id: 1,
            job_name: "t-aaaaa".into(),
            worker_token: "token".into(),
            server_url: "http://127.0.0.1:1".into(),
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
}
