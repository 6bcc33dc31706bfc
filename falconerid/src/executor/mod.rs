//! Executors start, stop and count a job's workers. The server decides *how
//! many*; an executor only knows *how*: local processes now, Kubernetes batch
//! Jobs next, behind the same trait.

mod local;

use anyhow::Result;
use async_trait::async_trait;
use falconeri_common::pipeline::PipelineSpec;

pub use local::LocalExecutor;

/// Everything an executor needs to start workers for one job.
#[derive(Clone, Debug)]
pub struct WorkerLaunch {
    pub job_id: i64,
    pub job_name: String,
    /// The job's worker token (secret).
    pub worker_token: String,
    /// How workers reach falconerid.
    pub server_url: String,
    pub spec: PipelineSpec,
}

/// One worker as the executor sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerState {
    pub id: String,
    pub alive: bool,
}

/// Starts and stops workers.
#[async_trait]
pub trait Executor: Send + Sync {
    /// `local` or `kubernetes`.
    fn name(&self) -> &'static str;

    /// Starts `count` more workers for the job.
    async fn start_workers(&self, launch: &WorkerLaunch, count: u32) -> Result<()>;

    /// Stops every worker of the job (they kill their commands first).
    async fn stop_workers(&self, job_id: i64) -> Result<()>;

    /// The workers this executor started for the job, and which still run.
    /// Workers it does not know about (say, from before a restart) are absent:
    /// their datums are recovered by lease expiry instead.
    async fn workers(&self, job_id: i64) -> Result<Vec<WorkerState>>;

    /// Called once when falconerid shuts down. Workers that cannot outlive
    /// the server (local processes) are stopped; cluster workers carry on
    /// and reconnect to the next server.
    async fn shutdown(&self) {}
}
