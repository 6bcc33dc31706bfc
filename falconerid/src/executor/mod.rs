//! Executors start, stop and count a job's workers. The server decides *how
//! many*; an executor only knows *how*: local processes, or one Kubernetes
//! batch Job per falconeri job, behind the same trait.

pub mod kubernetes;
mod local;

use anyhow::Result;
use async_trait::async_trait;
use falconeri_common::pipeline::PipelineSpec;

pub use kubernetes::{KubernetesExecutor, KubernetesSettings};
pub use local::LocalExecutor;

/// Everything an executor needs to start workers for one job.
#[derive(Clone, Debug)]
pub struct WorkerLaunch {
    pub job_id: i64,
    pub job_name: String,
    /// The job's worker token (secret).
    pub worker_token: String,
    /// How workers reach falconerid.
    pub server: ServerEndpoint,
    pub spec: PipelineSpec,
}

/// How workers reach falconerid: its URL, and on this machine a Unix
/// socket that local workers connect to instead of the URL's host and
/// port, when falconerid serves one (`--worker-socket`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerEndpoint {
    pub url: String,
    pub socket: Option<std::path::PathBuf>,
}

impl WorkerLaunch {
    /// The launch of an existing job's workers, reaching falconerid at
    /// `server`.
    pub fn for_job(
        job: &falconeri_common::models::Job,
        spec: PipelineSpec,
        server: ServerEndpoint,
    ) -> WorkerLaunch {
        WorkerLaunch {
            job_id: job.id,
            job_name: job.name.clone(),
            worker_token: job.worker_token.clone(),
            server,
            spec,
        }
    }
}

/// One worker as the executor sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerState {
    pub id: String,
    pub alive: bool,
}

/// Why the infrastructure, not the worker or its command, ended a worker.
/// Such an end does not use up a try of the datum the worker held (see
/// `Datum::record_pod_failures`, which also bounds how often it may happen).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureReason {
    /// Evicted from its node (node pressure, the eviction API, a drain).
    Evicted,
    /// Preempted by the scheduler for a pod of higher priority.
    Preempted,
    /// The container exceeded its memory limit and was killed.
    OomKilled,
    /// Its node went away (lost, tainted, or garbage-collected).
    NodeLost,
    /// It ran past an active deadline.
    DeadlineExceeded,
}

impl std::fmt::Display for FailureReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FailureReason::Evicted => "Evicted",
            FailureReason::Preempted => "Preempted",
            FailureReason::OomKilled => "OOMKilled",
            FailureReason::NodeLost => "NodeLost",
            FailureReason::DeadlineExceeded => "DeadlineExceeded",
        })
    }
}

/// A worker the infrastructure ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerFailure {
    pub worker_id: String,
    pub reason: FailureReason,
    /// What the platform said, for the datum's error message.
    pub message: String,
}

/// The state of a job's pool of workers as a whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolState {
    /// The executor has no pool: falconerid itself starts and replaces
    /// workers (the local executor).
    Unmanaged,
    /// The platform keeps the pool's workers running and replaces the ones
    /// that fail, within its own budget (a Kubernetes Job).
    Active,
    /// Every worker exited successfully; the pool starts no more.
    Complete,
    /// The pool is gone although the job is running (its Kubernetes Job was
    /// deleted behind falconeri's back).
    Vanished,
    /// The platform gave up on the pool (`reason` as it names it, such as
    /// `BackoffLimitExceeded` or `DeadlineExceeded`).
    Failed { reason: String, message: String },
}

/// Everything the babysitter needs to know about one job's workers, read
/// in one go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    /// Every worker the executor can see; those that ended for the reasons
    /// in `failures` are not listed here.
    pub workers: Vec<WorkerState>,
    pub failures: Vec<WorkerFailure>,
    pub pool: PoolState,
    /// True when `workers` and `failures` list every worker of the job that
    /// exists (a Kubernetes pod list does): then a datum held by a worker in
    /// neither list lost its worker without a trace. False when the executor
    /// may not know every worker (the local one after a restart).
    pub sees_every_worker: bool,
}

/// Starts and stops workers.
#[async_trait]
pub trait Executor: Send + Sync {
    /// `local` or `kubernetes`.
    fn name(&self) -> &'static str;

    /// Starts `count` more workers for the job. An executor with a managed
    /// pool creates it with `count` workers if it does not exist yet and
    /// otherwise does nothing: starting is idempotent there.
    async fn start_workers(&self, launch: &WorkerLaunch, count: u32) -> Result<()>;

    /// Stops every worker of the job (they kill their commands first).
    async fn stop_workers(&self, job_id: i64) -> Result<()>;

    /// The workers this executor started (or, locally, adopted from the
    /// previous server on its state directory) for the job, and which still
    /// run. Workers it does not know about are absent: their datums are
    /// recovered by lease expiry instead.
    async fn workers(&self, job_id: i64) -> Result<Vec<WorkerState>>;

    /// What the babysitter needs to know about a job's workers. The default
    /// suits executors without a managed pool: their workers, no failures
    /// of the infrastructure, [`PoolState::Unmanaged`].
    async fn observe(&self, job_id: i64) -> Result<Observation> {
        Ok(Observation {
            workers: self.workers(job_id).await?,
            failures: Vec::new(),
            pool: PoolState::Unmanaged,
            sees_every_worker: false,
        })
    }

    /// Called once when falconerid shuts down. Workers that cannot outlive
    /// the server (local processes) are stopped; cluster workers carry on
    /// and reconnect to the next server.
    async fn shutdown(&self) {}
}
