//! The Kubernetes executor: one batch/v1 Job per falconeri job, whose pods
//! are falconeri workers (see [`objects::worker_job`] for its shape).
//!
//! It assumes nothing about what it started itself: falconerid may have
//! restarted, and several replicas share the cluster. Every question is
//! answered from the API by label (`falconeri.io/job-id`): the workers are
//! the job's pods, the pool is the job's Kubernetes Job.

pub mod objects;

use std::time::Duration;

use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use k8s_openapi::api::{batch::v1::Job, core::v1::Pod, core::v1::Secret};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, PostParams},
};

use super::{Executor, Observation, PoolState, WorkerFailure, WorkerLaunch, WorkerState};
use objects::PodOutcome;

/// How the executor builds its objects.
#[derive(Clone, Debug)]
pub struct KubernetesSettings {
    /// Where the Jobs, pods and token Secrets live.
    pub namespace: String,
    /// The falconerid image; its `falconeri-worker` is copied into every
    /// worker pod by an init container.
    pub worker_image: String,
    /// `imagePullPolicy` of that init container.
    pub worker_image_pull_policy: String,
    /// `ttlSecondsAfterFinished` of the Jobs. falconerid deletes a Job when
    /// its job ends; this only cleans up after a falconerid that couldn't.
    pub job_ttl: Duration,
    /// Failed pods each worker may be replaced with (the Job's
    /// `backoffLimit` is this times the parallelism).
    pub worker_restarts: u32,
    /// How long every worker pod of a job may be stuck (image pull errors,
    /// missing Secrets) before the job fails.
    pub start_timeout: Duration,
}

/// Runs workers as the pods of Kubernetes Jobs.
#[derive(Clone)]
pub struct KubernetesExecutor {
    client: Client,
    settings: KubernetesSettings,
}

impl std::fmt::Debug for KubernetesExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesExecutor")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// True if `err` is the API server answering `code`.
fn is_status(err: &kube::Error, code: u16) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == code)
}

impl KubernetesExecutor {
    /// An executor using `client` (tests pass one over a mock service).
    pub fn new(client: Client, settings: KubernetesSettings) -> KubernetesExecutor {
        KubernetesExecutor { client, settings }
    }

    /// Connects with the in-cluster configuration (or the kubeconfig, run
    /// outside a cluster). `namespace` defaults to the client's own.
    pub async fn connect(
        namespace: Option<String>,
        settings: impl FnOnce(String) -> KubernetesSettings,
    ) -> Result<KubernetesExecutor> {
        let client = Client::try_default()
            .await
            .context("cannot configure a Kubernetes client (in-cluster or kubeconfig)")?;
        let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_owned());
        Ok(KubernetesExecutor::new(client, settings(namespace)))
    }

    pub fn settings(&self) -> &KubernetesSettings {
        &self.settings
    }

    fn jobs(&self) -> Api<Job> {
        Api::namespaced(self.client.clone(), &self.settings.namespace)
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.settings.namespace)
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.settings.namespace)
    }

    /// The job's Kubernetes Jobs (one, unless someone made more).
    async fn list_jobs(&self, job_id: i64) -> Result<Vec<Job>> {
        let list = self
            .jobs()
            .list(&ListParams::default().labels(&objects::selector(job_id)))
            .await
            .with_context(|| format!("cannot list the Kubernetes Jobs of job {job_id}"))?;
        Ok(list.items)
    }

    async fn list_pods(&self, job_id: i64) -> Result<Vec<Pod>> {
        let list = self
            .pods()
            .list(&ListParams::default().labels(&objects::selector(job_id)))
            .await
            .with_context(|| format!("cannot list the worker pods of job {job_id}"))?;
        Ok(list.items)
    }

    /// Creates the token Secret owned by `job`; one that exists already
    /// (a second start of the same job) is left alone.
    async fn create_token_secret(&self, launch: &WorkerLaunch, job: &Job) -> Result<()> {
        let name = job.metadata.name.as_deref().unwrap_or_default();
        let uid = objects::uid_of(&job.metadata)?;
        let secret = objects::token_secret(launch, &self.settings, name, uid);
        match self.secrets().create(&PostParams::default(), &secret).await {
            Ok(_) => Ok(()),
            Err(err) if is_status(&err, 409) => Ok(()),
            Err(err) => Err(err).context("cannot create the worker token Secret"),
        }
    }
}

#[async_trait]
impl Executor for KubernetesExecutor {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    /// Makes sure the job has a live pool: a Kubernetes Job with `count` as
    /// its parallelism, and its token Secret.
    ///
    /// Idempotent: if an active Kubernetes Job exists already (another
    /// replica started it, or this is the babysitter taking over a start),
    /// that is the pool, parallelism included, and nothing is created. The
    /// Job controller, not falconerid, keeps its workers running from then
    /// on, so there is never a second count to reconcile.
    ///
    /// A Job stops starting pods once one of them succeeds. A worker
    /// succeeds only once its job has ended (stopped, it exits 143), but
    /// should a pool complete while work remains all the same (pods that
    /// exit 0 for another reason), a new Job is created, named with the next
    /// generation (`<name>-<id>-<n>`, never reused). Replicas racing to
    /// create the same generation meet at `409 AlreadyExists`, which counts
    /// as started.
    #[tracing::instrument(level = "debug", skip(self, launch), fields(job = launch.job_name))]
    async fn start_workers(&self, launch: &WorkerLaunch, count: u32) -> Result<()> {
        let existing = self.list_jobs(launch.job_id).await?;
        if let Some(active) = existing.iter().find(|job| objects::is_active(job)) {
            tracing::debug!(kubernetes_job = ?active.metadata.name, "the pool exists already");
            // A start cut short between the Job and its Secret left no
            // token for the pods: finish it.
            return self.create_token_secret(launch, active).await;
        }
        let generation = objects::next_generation(&existing);
        let job = objects::worker_job(launch, count, generation, &self.settings);
        let name = job.metadata.name.clone().unwrap_or_default();
        let created = match self.jobs().create(&PostParams::default(), &job).await {
            Ok(created) => {
                tracing::info!(job = launch.job_name, kubernetes_job = name, "created Job");
                created
            }
            Err(err) if is_status(&err, 409) => {
                let existing = self
                    .jobs()
                    .get(&name)
                    .await
                    .with_context(|| format!("cannot read the existing Job {name}"))?;
                let label = existing
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(objects::JOB_ID_LABEL));
                if label != Some(&launch.job_id.to_string()) {
                    bail!("a Job named {name} exists but belongs to no falconeri job");
                }
                if !objects::is_active(&existing) {
                    bail!("the Job {name} exists but has ended; the next start makes a new one");
                }
                tracing::debug!(kubernetes_job = name, "another server created the Job");
                existing
            }
            Err(err) => {
                return Err(err).with_context(|| format!("cannot create the Job {name}"));
            }
        };
        if let Err(err) = self.create_token_secret(launch, &created).await {
            // Without its token no pod can start: take the Job back, so the
            // next start creates both.
            let _ = self.jobs().delete(&name, &DeleteParams::background()).await;
            return Err(err);
        }
        Ok(())
    }

    /// Deletes the job's Kubernetes Jobs with background propagation: the
    /// call returns at once, and the garbage collector removes the pods
    /// (each gets SIGTERM and its grace period, so the worker kills its
    /// command and gives its datum back) and the token Secret it owns.
    #[tracing::instrument(level = "debug", skip(self))]
    async fn stop_workers(&self, job_id: i64) -> Result<()> {
        for job in self.list_jobs(job_id).await? {
            let Some(name) = job.metadata.name else {
                continue;
            };
            match self.jobs().delete(&name, &DeleteParams::background()).await {
                Ok(_) => tracing::info!(kubernetes_job = name, "deleted Job"),
                Err(err) if is_status(&err, 404) => {}
                Err(err) => {
                    return Err(err).with_context(|| format!("cannot delete the Job {name}"));
                }
            }
        }
        Ok(())
    }

    /// The job's pods: alive while pending or running.
    async fn workers(&self, job_id: i64) -> Result<Vec<WorkerState>> {
        Ok(self
            .list_pods(job_id)
            .await?
            .iter()
            .filter_map(|pod| {
                Some(WorkerState {
                    id: pod.metadata.name.clone()?,
                    alive: objects::pod_outcome(pod) == PodOutcome::Alive,
                })
            })
            .collect())
    }

    /// The job's pods, split into workers and failures of the
    /// infrastructure, and the state of its Kubernetes Job (failed, too,
    /// when every worker pod is stuck; see [`objects::stuck_pool`]).
    async fn observe(&self, job_id: i64) -> Result<Observation> {
        let (pods, jobs) = tokio::try_join!(self.list_pods(job_id), self.list_jobs(job_id))?;
        let mut workers = Vec::new();
        let mut failures = Vec::new();
        for pod in &pods {
            let Some(id) = pod.metadata.name.clone() else {
                continue;
            };
            match objects::pod_outcome(pod) {
                PodOutcome::Alive => workers.push(WorkerState { id, alive: true }),
                PodOutcome::Exited => workers.push(WorkerState { id, alive: false }),
                PodOutcome::Failed(reason, message) => failures.push(WorkerFailure {
                    worker_id: id,
                    reason,
                    message,
                }),
            }
        }
        let pool = match objects::pool_state(&jobs) {
            PoolState::Active => {
                let now_ms = k8s_openapi::jiff::Timestamp::now().as_millisecond();
                let timeout_ms =
                    i64::try_from(self.settings.start_timeout.as_millis()).unwrap_or(i64::MAX);
                objects::stuck_pool(&pods, now_ms, timeout_ms).unwrap_or(PoolState::Active)
            }
            other => other,
        };
        Ok(Observation {
            workers,
            failures,
            pool,
            // Every pod of the job carries its label, whoever created it.
            sees_every_worker: true,
        })
    }
}
