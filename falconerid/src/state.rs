//! State shared by every request and the babysitter: the pool, the
//! executor, caches of what never changes about a job, and the wake-ups of
//! long-polls.
//!
//! Wake-ups are targeted (issue 9): each job has its own [`JobWaiters`]. A
//! datum becoming ready wakes one waiting worker of its job; a change of a
//! job's counts wakes the followers of that job's progress; a job starting
//! or ending wakes everyone waiting on it. Long-polls on other jobs sleep on.
//! On PostgreSQL every change is also sent to the other replicas as
//! `NOTIFY falconeri_changes, '<changes>'` (see [`Change::encode`]), from one
//! sender thread that coalesces whatever piled up while it was sending.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex, OnceLock, mpsc},
    time::Duration,
};

use falconeri_common::{
    db::{DbConn, DbPool},
    models::{Frontier, Job, ModelResult, ReserveWant, Reserved},
    pipeline::{MAX_DATUMS_PER_RESERVATION, PipelineSpec},
};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::{
    combine::Combiner,
    config::Config,
    error::AppResult,
    executor::{Executor, ServerEndpoint},
    routes::workers::{ReportItem, SettledItem},
};

/// Something that changed, for the long-polls it concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Change {
    /// `n` datums of the job became ready (requeued, retried): wake `n`
    /// waiting workers.
    DatumsReady { job_id: i64, n: u32 },
    /// The job's counts changed: wake its progress followers.
    Progress { job_id: i64 },
    /// The job started, ended or was planned: wake everyone waiting on it.
    JobState { job_id: i64 },
    /// A chunk of an attempt's log was stored: wake the job's log followers.
    Logs { job_id: i64 },
    /// A workflow step changed state: wake the chain and workflow followers.
    Workflows,
    /// A schedule was created, changed or deleted: wake the scheduler.
    Schedules,
}

impl Change {
    /// The notification payload of a list of changes: `r<job>:<n>`,
    /// `p<job>`, `s<job>`, comma-separated.
    pub fn encode(changes: &[Change]) -> String {
        let parts: Vec<String> = changes
            .iter()
            .map(|change| match change {
                Change::DatumsReady { job_id, n } => format!("r{job_id}:{n}"),
                Change::Progress { job_id } => format!("p{job_id}"),
                Change::JobState { job_id } => format!("s{job_id}"),
                Change::Logs { job_id } => format!("l{job_id}"),
                Change::Workflows => "w".to_owned(),
                Change::Schedules => "c".to_owned(),
            })
            .collect();
        parts.join(",")
    }

    /// The changes of a payload; None if it is not ours (an older replica
    /// sends none: wake everything then).
    pub fn decode(payload: &str) -> Option<Vec<Change>> {
        payload
            .split(',')
            .filter(|part| !part.is_empty())
            .map(|part| {
                let (kind, rest) = part.split_at_checked(1)?;
                match kind {
                    "r" => {
                        let (job, n) = rest.split_once(':')?;
                        Some(Change::DatumsReady {
                            job_id: job.parse().ok()?,
                            n: n.parse().ok()?,
                        })
                    }
                    "p" => Some(Change::Progress {
                        job_id: rest.parse().ok()?,
                    }),
                    "s" => Some(Change::JobState {
                        job_id: rest.parse().ok()?,
                    }),
                    "l" => Some(Change::Logs {
                        job_id: rest.parse().ok()?,
                    }),
                    "w" if rest.is_empty() => Some(Change::Workflows),
                    "c" if rest.is_empty() => Some(Change::Schedules),
                    _ => None,
                }
            })
            .collect::<Option<Vec<Change>>>()
            .filter(|changes| !changes.is_empty())
    }

    /// Merges a burst of changes: one progress and one state change per
    /// job, ready counts summed.
    fn coalesce(changes: Vec<Change>) -> Vec<Change> {
        let mut ready: HashMap<i64, u32> = HashMap::new();
        let mut rest: Vec<Change> = Vec::new();
        for change in changes {
            match change {
                Change::DatumsReady { job_id, n } => {
                    let total = ready.entry(job_id).or_default();
                    *total = total.saturating_add(n);
                }
                other if !rest.contains(&other) => rest.push(other),
                _ => {}
            }
        }
        let mut merged: Vec<Change> = ready
            .into_iter()
            .map(|(job_id, n)| Change::DatumsReady { job_id, n })
            .collect();
        merged.extend(rest);
        merged
    }
}

/// The long-polls of one job.
#[derive(Debug)]
pub struct JobWaiters {
    /// Workers waiting for a datum; `notify_one` per datum made ready.
    pub ready: Notify,
    /// Progress followers; bumped on every change of the job's counts.
    pub progress: watch::Sender<u64>,
    /// Log followers; bumped on every stored log chunk (attempt and job
    /// ends reach them through `progress`).
    pub logs: watch::Sender<u64>,
    /// Where this server last found fresh datums of the job in the queue.
    pub frontier: Frontier,
    /// Reservations gathered into one statement each.
    pub(crate) reserving: Arc<Combiner<ReserveWant, Vec<Reserved>>>,
    /// The first phase of final reports, gathered into one transaction each.
    pub(crate) reporting: Arc<Combiner<ReportItem, SettledItem>>,
}

/// Workers served by one reservation statement at most: the statement's
/// arrays stay small, and a group is still large enough that its commit
/// and start-up cost next to nothing per datum.
const RESERVATIONS_PER_GROUP: usize = 64;

/// Groups of one kind for one job that one server runs at once. Two: while
/// one group waits for its commit to reach the disk, the next one runs
/// (one alone left the database idle between groups; more split the
/// requests into smaller groups, which cost more statements per datum).
const GROUPS_IN_FLIGHT: usize = 2;

/// Reports settled in one transaction at most (a batch report alone may
/// hold this many).
const REPORTS_PER_GROUP: usize = MAX_DATUMS_PER_RESERVATION as usize;

/// What never changes about a job, kept so that reservations need not read
/// and parse the job row each time.
#[derive(Debug)]
pub struct JobInfo {
    pub id: i64,
    pub egress_uri: String,
    pub datum_timeout_ms: Option<i64>,
    pub spec: PipelineSpec,
}

/// How many jobs the caches hold before they start over (each entry is a
/// few kilobytes; a server with more live jobs than this just reads more).
const CACHE_LIMIT: usize = 10_000;

/// PostgreSQL refuses notification payloads of 8,000 bytes or more.
const MAX_PAYLOAD: usize = 7_000;

/// Everything a handler needs: cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    pool: DbPool,
    executor: Arc<dyn Executor>,
    /// Each job's long-polls, created when someone first waits on it.
    waiters: Mutex<HashMap<i64, Arc<JobWaiters>>>,
    /// Immutable job facts by job id.
    jobs: Mutex<HashMap<i64, Arc<JobInfo>>>,
    /// Worker tokens seen valid, and their job.
    worker_tokens: Mutex<HashMap<String, i64>>,
    /// Changes for the other replicas (PostgreSQL only).
    outbox: Option<Mutex<mpsc::Sender<Change>>>,
    /// This server's name in its notifications, so it skips its own.
    server_id: String,
    /// The URL workers reach us at, known once the listener is bound.
    public_url: OnceLock<String>,
    /// The Unix socket local workers reach us through, once it is bound.
    worker_socket: OnceLock<PathBuf>,
    /// Cancelled when the server shuts down; long-polls answer at once.
    shutdown: CancellationToken,
    /// Bumped when any job starts or ends or a workflow step changes: the
    /// chain (`crate::chain`) and workflow followers wait on it.
    workflows: watch::Sender<u64>,
    /// Bumped when a schedule changes: the scheduler wakes to re-read
    /// when the next run is due.
    schedules: watch::Sender<u64>,
    /// Locks that serialize a job's wind-down with its reopening (see
    /// [`AppState::lock_job_ending`]), striped by job id.
    job_endings: Box<[tokio::sync::Mutex<()>]>,
}

/// How many locks [`AppState::lock_job_ending`] stripes jobs over: two jobs
/// sharing one only wait for each other's wind-down, which is rare and
/// short.
const JOB_ENDING_STRIPES: usize = 64;

impl AppState {
    /// Wraps the pieces.
    pub fn new(config: Config, pool: DbPool, executor: Arc<dyn Executor>) -> AppState {
        let public_url = OnceLock::new();
        if let Some(url) = &config.public_url {
            let _ = public_url.set(url.trim_end_matches('/').to_owned());
        }
        let server_id = format!("{:016x}", rand::random::<u64>());
        let outbox = (pool.backend() == falconeri_common::db::Backend::Postgres).then(|| {
            let linger = config.notify_linger;
            Mutex::new(spawn_notifier(pool.clone(), server_id.clone(), linger))
        });
        AppState {
            inner: Arc::new(Inner {
                config,
                pool,
                executor,
                waiters: Mutex::new(HashMap::new()),
                jobs: Mutex::new(HashMap::new()),
                worker_tokens: Mutex::new(HashMap::new()),
                outbox,
                server_id,
                public_url,
                worker_socket: OnceLock::new(),
                shutdown: CancellationToken::new(),
                workflows: watch::channel(0).0,
                schedules: watch::channel(0).0,
                job_endings: (0..JOB_ENDING_STRIPES)
                    .map(|_| tokio::sync::Mutex::new(()))
                    .collect(),
            }),
        }
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Held while a job that ended is wound down (its workers stopped, its
    /// staging removed) and while a `datum retry` reopens it and starts its
    /// new workers. Without it, a retry right after the end could start a
    /// worker that the end's wind-down then stops. The wind-down re-reads
    /// the job under the lock and skips a job reopened meanwhile. This
    /// orders the two within one falconerid; across replicas they are not
    /// ordered (see ARCHITECTURE.md).
    pub async fn lock_job_ending(&self, job_id: i64) -> tokio::sync::MutexGuard<'_, ()> {
        let stripe = job_id.rem_euclid(JOB_ENDING_STRIPES as i64) as usize;
        self.inner.job_endings[stripe].lock().await
    }

    pub fn pool(&self) -> &DbPool {
        &self.inner.pool
    }

    pub fn executor(&self) -> &Arc<dyn Executor> {
        &self.inner.executor
    }

    /// Records the URL workers should use, unless configured explicitly.
    pub fn set_public_url(&self, url: String) {
        let _ = self.inner.public_url.set(url);
    }

    /// The URL workers should use.
    pub fn public_url(&self) -> String {
        self.inner
            .public_url
            .get()
            .cloned()
            .unwrap_or_else(|| "http://127.0.0.1:8089".to_owned())
    }

    /// Records the Unix socket local workers should use, once it listens.
    pub fn set_worker_socket(&self, path: PathBuf) {
        let _ = self.inner.worker_socket.set(path);
    }

    /// How workers reach us: the public URL, and the Unix socket when one
    /// listens (local workers only).
    pub fn worker_endpoint(&self) -> ServerEndpoint {
        ServerEndpoint {
            url: self.public_url(),
            socket: self.inner.worker_socket.get().cloned(),
        }
    }

    /// Runs a model call on a blocking thread with a pooled connection.
    pub async fn db<T, F>(&self, f: F) -> AppResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConn) -> ModelResult<T> + Send + 'static,
    {
        let pool = self.inner.pool.clone();

        tokio::task::spawn_blocking(move || {
            // No connection within the pool's timeout: the database is
            // down or overloaded, which is a 503, not a bug.
            let mut conn = pool
                .get()
                .map_err(|err| crate::error::AppError::Unavailable(format!("{err:#}")))?;
            Ok::<_, crate::error::AppError>(f(&mut conn)?)
        })
        .await
        .map_err(|err| anyhow::anyhow!("database task failed: {err}"))?
    }

    /// [`AppState::db`] that runs `f` again (up to three times) when
    /// PostgreSQL aborted it to break a deadlock. Statements that lock many
    /// rows (stopping a job, expiring leases across jobs) may meet in
    /// different orders; the aborted side just has to try again.
    pub async fn db_retrying<T, F>(&self, f: F) -> AppResult<T>
    where
        T: Send + 'static,
        F: Fn(&mut DbConn) -> ModelResult<T> + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        let mut tries = 0;
        loop {
            tries += 1;
            let attempt = f.clone();
            let deadlocked = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flag = deadlocked.clone();
            let result = self
                .db(move |conn: &mut DbConn| {
                    let result = attempt(conn);
                    if let Err(err) = &result {
                        flag.store(err.is_deadlock(), std::sync::atomic::Ordering::SeqCst);
                    }
                    result
                })
                .await;
            if tries < 3 && deadlocked.load(std::sync::atomic::Ordering::SeqCst) {
                tracing::info!(tries, "deadlock detected; running the transaction again");
                continue;
            }
            return result;
        }
    }

    /// Wakes the long-polls `change` concerns, here and (PostgreSQL) on the
    /// other replicas. Cheap and synchronous: callers in the blocking
    /// database task call it right after their write committed, so the news
    /// is not lost if the request is dropped meanwhile.
    pub fn notify(&self, change: Change) {
        self.wake_local(change);
        if let Some(outbox) = &self.inner.outbox {
            let sender = outbox
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            // The notifier thread only stops with the state itself.
            let _ = sender.send(change);
        }
    }

    /// Wakes this server's long-polls for a change (made here, or by another
    /// replica).
    pub fn wake_local(&self, change: Change) {
        let job_id = match change {
            Change::DatumsReady { job_id, .. }
            | Change::Progress { job_id }
            | Change::Logs { job_id } => job_id,
            Change::JobState { job_id } => {
                // A job starting or ending may let a workflow step start.
                self.inner.workflows.send_modify(|g| *g += 1);
                job_id
            }
            Change::Workflows => {
                self.inner.workflows.send_modify(|g| *g += 1);
                return;
            }
            Change::Schedules => {
                self.inner.schedules.send_modify(|g| *g += 1);
                return;
            }
        };
        let waiters = self
            .inner
            .waiters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&job_id)
            .cloned();
        let Some(waiters) = waiters else { return };
        match change {
            Change::DatumsReady { n, .. } => {
                // One worker per datum; a permit is kept for a worker that
                // is between two long-polls.
                for _ in 0..n.min(10_000) {
                    waiters.ready.notify_one();
                }
                waiters.progress.send_modify(|generation| *generation += 1);
            }
            Change::Progress { .. } => {
                waiters.progress.send_modify(|generation| *generation += 1);
            }
            Change::Logs { .. } => {
                waiters.logs.send_modify(|generation| *generation += 1);
            }
            Change::Workflows | Change::Schedules => {}
            Change::JobState { .. } => {
                waiters.ready.notify_waiters();
                // And a permit for a worker between two long-polls.
                waiters.ready.notify_one();
                waiters.progress.send_modify(|generation| *generation += 1);
            }
        }
    }

    /// Acts on a notification from the changes channel: `<server>|<changes>`
    /// from a replica (this server's own are skipped), or anything else from
    /// a replica that does not say what changed, which wakes everything.
    pub fn hear(&self, payload: &str) {
        let changes = match payload.split_once('|') {
            Some((server, _)) if server == self.inner.server_id => return,
            Some((_, changes)) => Change::decode(changes),
            None => None,
        };
        match changes {
            Some(changes) => changes.into_iter().for_each(|c| self.wake_local(c)),
            None => self.wake_all_local(),
        }
    }

    /// Wakes every long-poll of this server (a notification from a replica
    /// that does not say what changed).
    pub fn wake_all_local(&self) {
        let all: Vec<i64> = self
            .inner
            .waiters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .keys()
            .copied()
            .collect();
        for job_id in all {
            self.wake_local(Change::JobState { job_id });
        }
        self.wake_local(Change::Workflows);
        self.wake_local(Change::Schedules);
    }

    /// The long-polls of job `job_id`. Waiters register (`notified()` +
    /// `enable()`, or `subscribe()`) *before* looking at the database, so a
    /// change in between is not missed.
    pub fn waiters(&self, job_id: i64) -> Arc<JobWaiters> {
        let mut waiters = self
            .inner
            .waiters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if waiters.len() >= CACHE_LIMIT {
            // Entries nobody holds any more (jobs long over) go first.
            waiters.retain(|_, w| Arc::strong_count(w) > 1);
        }
        waiters
            .entry(job_id)
            .or_insert_with(|| {
                Arc::new(JobWaiters {
                    ready: Notify::new(),
                    progress: watch::channel(0).0,
                    logs: watch::channel(0).0,
                    frontier: Frontier::default(),
                    reserving: Arc::new(Combiner::new(RESERVATIONS_PER_GROUP, GROUPS_IN_FLIGHT)),
                    reporting: Arc::new(Combiner::new(REPORTS_PER_GROUP, GROUPS_IN_FLIGHT)),
                })
            })
            .clone()
    }

    /// What never changes about job `id`: read once, then cached.
    pub async fn job_info(&self, id: i64) -> AppResult<Arc<JobInfo>> {
        if let Some(info) = self
            .inner
            .jobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&id)
        {
            return Ok(info.clone());
        }
        let job = self.db(move |conn| Job::find(conn, id)).await?;
        let spec = job.spec().map_err(|err| {
            crate::error::AppError::Internal(err.context("stored spec is unreadable"))
        })?;
        let info = Arc::new(JobInfo {
            id: job.id,
            egress_uri: job.egress_uri,
            datum_timeout_ms: job.datum_timeout_ms,
            spec,
        });
        let mut jobs = self
            .inner
            .jobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if jobs.len() >= CACHE_LIMIT {
            jobs.clear();
        }
        jobs.insert(id, info.clone());
        Ok(info)
    }

    /// The job a worker token belongs to, from the cache.
    pub fn cached_worker_token(&self, token: &str) -> Option<i64> {
        self.inner
            .worker_tokens
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(token)
            .copied()
    }

    /// Remembers a valid worker token (a token never changes job).
    pub fn cache_worker_token(&self, token: String, job_id: i64) {
        let mut tokens = self
            .inner
            .worker_tokens
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if tokens.len() >= CACHE_LIMIT {
            tokens.clear();
        }
        tokens.insert(token, job_id);
    }

    /// Changes of jobs' states and workflow steps (a generation counter);
    /// subscribe before reading the database so no change is missed.
    pub fn workflow_changes(&self) -> watch::Receiver<u64> {
        self.inner.workflows.subscribe()
    }

    /// Changes of schedules (a generation counter).
    pub fn schedule_changes(&self) -> watch::Receiver<u64> {
        self.inner.schedules.subscribe()
    }

    /// Tells long-polls to answer now: the server is going away.
    pub fn begin_shutdown(&self) {
        self.inner.shutdown.cancel();
    }

    /// Resolves once the server is shutting down.
    pub async fn shutting_down(&self) {
        self.inner.shutdown.cancelled().await;
    }

    /// Caps a client's requested wait at the configured maximum.
    pub fn capped_wait(&self, wait_ms: Option<u64>) -> Duration {
        let max = self.inner.config.max_wait;
        wait_ms.map(Duration::from_millis).unwrap_or(max).min(max)
    }
}

/// Starts the thread that sends this server's changes to the other replicas
/// as PostgreSQL notifications. It blocks on the channel, then takes
/// whatever else piled up meanwhile, so a burst of changes costs one
/// `pg_notify` per job and kind, not one per change. It ends when the state
/// (the channel's sender) is dropped.
fn spawn_notifier(pool: DbPool, server_id: String, linger: Duration) -> mpsc::Sender<Change> {
    let (sender, receiver) = mpsc::channel::<Change>();
    let spawned = std::thread::Builder::new()
        .name("falconerid-notify".to_owned())
        .spawn(move || {
            while let Ok(first) = receiver.recv() {
                let changes = Change::coalesce(gather(&receiver, first, linger));
                let mut payloads = Vec::new();
                let mut current: Vec<Change> = Vec::new();
                for change in changes {
                    current.push(change);
                    if Change::encode(&current).len() > MAX_PAYLOAD {
                        current.pop();
                        payloads.push(format!("{server_id}|{}", Change::encode(&current)));
                        current = vec![change];
                    }
                }
                if !current.is_empty() {
                    payloads.push(format!("{server_id}|{}", Change::encode(&current)));
                }
                let sent = pool.get().and_then(|mut conn| {
                    payloads
                        .iter()
                        .try_for_each(|p| conn.notify_other_servers(p))
                });
                if let Err(err) = sent {
                    tracing::warn!(error = format!("{err:#}"), "cannot notify other servers");
                }
            }
        });
    if let Err(err) = spawned {
        tracing::warn!(error = %err, "cannot start the notifier thread; other replicas will not hear of changes");
    }
    sender
}

/// `first` and whatever else changes within `linger` of it (and whatever
/// piled up before): they go out together, in one NOTIFY, one commit.
fn gather(receiver: &mpsc::Receiver<Change>, first: Change, linger: Duration) -> Vec<Change> {
    let mut burst = vec![first];
    let until = std::time::Instant::now() + linger;
    while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
        match receiver.recv_timeout(left) {
            Ok(change) => burst.push(change),
            Err(_) => break,
        }
    }
    burst.extend(receiver.try_iter());
    burst
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Changes that come within the linger of the first are sent with it;
    /// one that comes after is left for the next NOTIFY.
    #[test]
    fn changes_within_the_linger_go_out_together() {
        let (sender, receiver) = mpsc::channel();
        let late = sender.clone();
        std::thread::spawn(move || {
            for n in 0..3 {
                std::thread::sleep(Duration::from_millis(20));
                let _ = late.send(Change::DatumsReady { job_id: 1, n });
            }
        });
        let burst = gather(
            &receiver,
            Change::Progress { job_id: 1 },
            Duration::from_secs(1),
        );
        assert_eq!(burst.len(), 4, "{burst:?}");

        let (sender, receiver) = mpsc::channel();
        let _ = sender.send(Change::Progress { job_id: 2 });
        let later = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            let _ = sender.send(Change::Progress { job_id: 3 });
        });
        let burst = gather(
            &receiver,
            Change::Progress { job_id: 1 },
            Duration::from_millis(50),
        );
        assert_eq!(
            burst.len(),
            2,
            "what piled up goes too, the late one not: {burst:?}"
        );
        later.join().unwrap();
        assert_eq!(receiver.try_iter().count(), 1);
    }

    #[test]
    fn changes_round_trip_through_payloads() {
        let changes = vec![
            Change::DatumsReady { job_id: 7, n: 3 },
            Change::Progress { job_id: 7 },
            Change::JobState { job_id: 12 },
            Change::Logs { job_id: 12 },
            Change::Workflows,
            Change::Schedules,
        ];
        assert_eq!(Change::decode(&Change::encode(&changes)), Some(changes));
        assert_eq!(Change::decode(""), None);
        assert_eq!(Change::decode("x1"), None);
    }

    #[test]
    fn bursts_coalesce_per_job() {
        let merged = Change::coalesce(vec![
            Change::DatumsReady { job_id: 1, n: 1 },
            Change::Progress { job_id: 1 },
            Change::DatumsReady { job_id: 1, n: 2 },
            Change::Progress { job_id: 1 },
        ]);
        assert_eq!(
            merged,
            vec![
                Change::DatumsReady { job_id: 1, n: 3 },
                Change::Progress { job_id: 1 }
            ]
        );
    }
}
