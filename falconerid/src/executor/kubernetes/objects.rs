//! The Kubernetes objects of a falconeri job, built as typed `k8s_openapi`
//! values by pure functions (so a user string can never add a field), and
//! the reading of what Kubernetes reports back about them.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use falconeri_common::pipeline::{PipelineSpec, Secret as SpecSecret, TolerationOperator};
use k8s_openapi::{
    ByteString,
    api::{
        batch::v1::{
            Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnPodConditionsPattern,
            PodFailurePolicyRule,
        },
        core::v1::{
            Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource,
            ObjectFieldSelector, Pod, PodSpec, PodTemplateSpec, ResourceRequirements,
            SeccompProfile, Secret, SecretKeySelector, SecretVolumeSource, SecurityContext,
            Toleration, Volume, VolumeMount,
        },
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{ObjectMeta, OwnerReference},
    },
};

use super::KubernetesSettings;
use crate::executor::{FailureReason, PoolState, WorkerLaunch};

/// The label that ties a Kubernetes Job, its pods and its token Secret to a
/// falconeri job. Pods and Jobs are found by it, never by name alone.
pub const JOB_ID_LABEL: &str = "falconeri.io/job-id";
/// The annotation with the falconeri job's name, for people reading
/// `kubectl get jobs`.
pub const JOB_NAME_ANNOTATION: &str = "falconeri.io/job-name";
/// The annotation with the pool's generation (see [`worker_job`]).
pub const GENERATION_ANNOTATION: &str = "falconeri.io/generation";

/// Where the init container puts the worker binary and the token, shared
/// with the worker container. Writable: the worker deletes the token once
/// read, before any command runs.
pub const WORKER_DIR: &str = "/falconeri";
/// The worker binary inside the falconerid image.
pub const WORKER_BINARY_IN_IMAGE: &str = "/usr/local/bin/falconeri-worker";
/// The non-root user of the falconerid image (see the Dockerfile).
pub const IMAGE_USER: i64 = 10001;
/// Where the token Secret is mounted, in the init container only: the
/// user's command never sees the Secret itself.
const TOKEN_MOUNT: &str = "/var/run/falconeri/token";
/// The key of the token in its Secret.
pub const TOKEN_KEY: &str = "token";
/// Directories of the worker container, as the worker's defaults.
const PFS_DIR: &str = "/pfs";
const SCRATCH_DIR: &str = "/scratch";
/// The longest Kubernetes object name that is also a label value.
const MAX_NAME_LEN: usize = 63;
/// The name of the worker container (and the one whose end we read).
pub const WORKER_CONTAINER: &str = "worker";

/// The labels of every object a job creates.
pub fn labels(job_id: i64) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/part-of".to_owned(),
            "falconeri".to_owned(),
        ),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "falconeri".to_owned(),
        ),
        (
            "app.kubernetes.io/component".to_owned(),
            "worker".to_owned(),
        ),
        (JOB_ID_LABEL.to_owned(), job_id.to_string()),
    ])
}

/// The label selector for a job's objects.
pub fn selector(job_id: i64) -> String {
    format!("{JOB_ID_LABEL}={job_id}")
}

/// The Kubernetes Job's name: the falconeri job's name (which already is a
/// DNS label) and its id, cut to 63 characters, since the Job controller
/// copies the name into a label of every pod. Pools after the first (see
/// `KubernetesExecutor::start_workers`) add their `generation`.
pub fn job_name(falconeri_name: &str, job_id: i64, generation: usize) -> String {
    let suffix = if generation == 0 {
        format!("-{job_id}")
    } else {
        format!("-{job_id}-{generation}")
    };
    let mut base: String = falconeri_name
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .take(MAX_NAME_LEN.saturating_sub(suffix.len()))
        .collect();
    if !base.starts_with(|c: char| c.is_ascii_lowercase()) {
        base.insert_str(0, "job-");
        base.truncate(MAX_NAME_LEN.saturating_sub(suffix.len()));
    }
    while base.ends_with('-') {
        base.pop();
    }
    format!("{base}{suffix}")
}

/// The name of the job's token Secret.
pub fn token_secret_name(kubernetes_job_name: &str) -> String {
    format!("{kubernetes_job_name}-token")
}

fn quantity(text: impl Into<String>) -> Quantity {
    Quantity(text.into())
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

/// Rounds a duration up to whole seconds, at least one.
fn whole_seconds(duration: std::time::Duration) -> i64 {
    let secs = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    i64::try_from(secs.max(1)).unwrap_or(i64::MAX)
}

/// The batch/v1 Job that runs `parallelism` workers for `launch`.
///
/// - Work-queue style: `parallelism` pods, no `completions`; the Job starts
///   no more pods once a worker exits successfully, which a worker does only
///   once the job has ended (a stopped worker exits 143). Should pods
///   succeed while work remains all the same, the babysitter starts a new
///   `generation`.
/// - The Job controller replaces failed pods. Pods ended by a disruption
///   (eviction, preemption, node loss: the `DisruptionTarget` condition) are
///   ignored by the pod failure policy; other failures (OOM kills, crashed
///   workers) count against `backoffLimit`, which is the executor's restart
///   budget: `worker_restarts` per worker. That budget is kept by
///   Kubernetes, so it holds across falconerid restarts and replicas.
/// - An init container copies `falconeri-worker` (static) and the token
///   out of the falconerid image and the token Secret into an `emptyDir`,
///   so the worker runs in any user image and the Secret is mounted only
///   where the user's command can't read it.
pub fn worker_job(
    launch: &WorkerLaunch,
    parallelism: u32,
    generation: usize,
    settings: &KubernetesSettings,
) -> Job {
    let spec = &launch.spec;
    let name = job_name(&launch.job_name, launch.job_id, generation);
    let labels = labels(launch.job_id);
    let parallelism = i32::try_from(parallelism.max(1)).unwrap_or(i32::MAX);
    let backoff_limit = parallelism
        .saturating_mul(i32::try_from(settings.worker_restarts).unwrap_or(i32::MAX))
        .max(0);
    Job {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(settings.namespace.clone()),
            labels: Some(labels.clone()),
            annotations: Some(BTreeMap::from([
                (JOB_NAME_ANNOTATION.to_owned(), launch.job_name.clone()),
                (GENERATION_ANNOTATION.to_owned(), generation.to_string()),
            ])),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            parallelism: Some(parallelism),
            backoff_limit: Some(backoff_limit),
            pod_failure_policy: Some(PodFailurePolicy {
                rules: vec![PodFailurePolicyRule {
                    action: "Ignore".to_owned(),
                    on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern {
                        type_: "DisruptionTarget".to_owned(),
                        status: "True".to_owned(),
                    }]),
                    on_exit_codes: None,
                }],
            }),
            active_deadline_seconds: spec.job_timeout.map(|t| whole_seconds(t.0)),
            ttl_seconds_after_finished: Some(
                i32::try_from(settings.job_ttl.as_secs()).unwrap_or(i32::MAX),
            ),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec(launch, &name, settings)),
            },
            ..JobSpec::default()
        }),
        status: None,
    }
}

fn pod_spec(
    launch: &WorkerLaunch,
    kubernetes_job_name: &str,
    settings: &KubernetesSettings,
) -> PodSpec {
    let spec = &launch.spec;
    let mut volumes = vec![
        empty_dir("falconeri"),
        Volume {
            name: "falconeri-token".to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(token_secret_name(kubernetes_job_name)),
                // World-readable, since the init container runs as the
                // image's user and the copy it makes must be readable by
                // whatever user the user's image runs as. Only the init
                // container mounts it, and nothing else runs in the pod
                // until the worker has read and deleted its copy.
                default_mode: Some(0o444),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
        empty_dir("pfs"),
        empty_dir("scratch"),
    ];
    let mut mounts = vec![
        mount("falconeri", WORKER_DIR, false),
        mount("pfs", PFS_DIR, false),
        mount("scratch", SCRATCH_DIR, false),
    ];
    for (i, secret) in spec.transform.secrets.iter().enumerate() {
        if let SpecSecret::Mount { name, mount_path } = secret {
            let volume = format!("secret-{i}");
            volumes.push(Volume {
                name: volume.clone(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(name.clone()),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            });
            mounts.push(mount(&volume, mount_path, true));
        }
    }

    let service_account = spec.transform.service_account.clone();
    PodSpec {
        restart_policy: Some("Never".to_owned()),
        // Service links would add an environment variable per service in
        // the namespace to every command.
        enable_service_links: Some(false),
        // The API token of a service account is mounted only when the spec
        // asks for one: the user's command gets no credentials by default.
        automount_service_account_token: Some(service_account.is_some()),
        service_account_name: service_account,
        node_selector: (!spec.node_selector.is_empty()).then(|| spec.node_selector.clone()),
        tolerations: (!spec.tolerations.is_empty()).then(|| tolerations(spec)),
        init_containers: Some(vec![install_worker(settings)]),
        containers: vec![worker_container(launch, mounts)],
        volumes: Some(volumes),
        ..PodSpec::default()
    }
}

fn tolerations(spec: &PipelineSpec) -> Vec<Toleration> {
    spec.tolerations
        .iter()
        .map(|t| Toleration {
            key: t.key.clone().filter(|k| !k.is_empty()),
            operator: Some(t.operator.as_str().to_owned()),
            value: match t.operator {
                TolerationOperator::Equal => t.value.clone(),
                TolerationOperator::Exists => None,
            },
            effect: t.effect.map(|e| e.as_str().to_owned()),
            toleration_seconds: t.toleration_seconds.map(i64::from),
        })
        .collect()
}

/// The init container: copies the worker and the token into the shared
/// directory with the image's `cp` (one fixed command line, no shell).
fn install_worker(settings: &KubernetesSettings) -> Container {
    Container {
        name: "install-worker".to_owned(),
        image: Some(settings.worker_image.clone()),
        image_pull_policy: Some(settings.worker_image_pull_policy.clone()),
        command: Some(vec![
            "cp".to_owned(),
            WORKER_BINARY_IN_IMAGE.to_owned(),
            format!("{TOKEN_MOUNT}/{TOKEN_KEY}"),
            format!("{WORKER_DIR}/"),
        ]),
        volume_mounts: Some(vec![
            mount("falconeri", WORKER_DIR, false),
            mount("falconeri-token", TOKEN_MOUNT, true),
        ]),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_owned(), quantity("10m")),
                ("memory".to_owned(), quantity("32Mi")),
            ])),
            limits: Some(BTreeMap::from([("memory".to_owned(), quantity("64Mi"))])),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(IMAGE_USER),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                add: None,
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                localhost_profile: None,
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

/// The container running the worker in the user's image. Its security
/// context is the image's own: falconeri does not know what it needs.
fn worker_container(launch: &WorkerLaunch, mounts: Vec<VolumeMount>) -> Container {
    let spec = &launch.spec;
    // The spec's variables first; the worker's own settings cannot be
    // overridden by them (the worker passes transform.env on to every
    // command itself, so dropping one here loses nothing).
    let mut env_vars: Vec<EnvVar> = spec
        .transform
        .env
        .iter()
        .filter(|(name, _)| !name.starts_with("FALCONERI_"))
        .map(|(name, value)| env(name, value.clone()))
        .collect();
    for secret in &spec.transform.secrets {
        if let SpecSecret::Env {
            name,
            key,
            env_var,
            optional,
        } = secret
        {
            env_vars.push(EnvVar {
                name: env_var.clone(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: name.clone(),
                        key: key.clone(),
                        // Left out unless asked for, as before.
                        optional: optional.then_some(true),
                    }),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            });
        }
    }
    env_vars.extend([
        env("FALCONERI_SERVER", launch.server.url.clone()),
        env("FALCONERI_JOB_ID", launch.job_id.to_string()),
        EnvVar {
            name: "FALCONERI_WORKER_ID".to_owned(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".to_owned(),
                    api_version: None,
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        },
        env("FALCONERI_TOKEN_FILE", format!("{WORKER_DIR}/{TOKEN_KEY}")),
        env("FALCONERI_PFS", PFS_DIR),
        env("FALCONERI_SCRATCH", SCRATCH_DIR),
    ]);

    let requests = &spec.resource_requests;
    let memory = quantity(requests.memory.clone());
    let mut limits = BTreeMap::from([("memory".to_owned(), memory.clone())]);
    if let Some(gpus) = requests.gpu.filter(|n| *n > 0) {
        // Extended resources are requested through their limit.
        limits.insert("nvidia.com/gpu".to_owned(), quantity(gpus.to_string()));
    }
    Container {
        name: WORKER_CONTAINER.to_owned(),
        image: Some(spec.transform.image.clone()),
        image_pull_policy: spec
            .transform
            .image_pull_policy
            .map(|p| p.as_str().to_owned()),
        command: Some(vec![format!("{WORKER_DIR}/falconeri-worker")]),
        env: Some(env_vars),
        volume_mounts: Some(mounts),
        resources: Some(ResourceRequirements {
            // Memory request = limit: a worker is never OOM-killed for
            // memory it was promised.
            requests: Some(BTreeMap::from([
                ("cpu".to_owned(), quantity(requests.cpu.to_string())),
                ("memory".to_owned(), memory),
            ])),
            limits: Some(limits),
            ..ResourceRequirements::default()
        }),
        ..Container::default()
    }
}

/// The Secret holding the job's worker token, owned by the Kubernetes Job
/// (`owner_name`, `owner_uid`), so it is deleted with it.
///
/// Who can read the token: whoever may read Secrets in the namespace (and
/// falconerid), and the init container. The Job spec, which more people
/// may read, only names the Secret; the user's command never has it mounted
/// and the worker deletes its copy before any command runs.
pub fn token_secret(
    launch: &WorkerLaunch,
    settings: &KubernetesSettings,
    owner_name: &str,
    owner_uid: &str,
) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(token_secret_name(owner_name)),
            namespace: Some(settings.namespace.clone()),
            labels: Some(labels(launch.job_id)),
            owner_references: Some(vec![OwnerReference {
                api_version: "batch/v1".to_owned(),
                kind: "Job".to_owned(),
                name: owner_name.to_owned(),
                uid: owner_uid.to_owned(),
                controller: Some(false),
                block_owner_deletion: Some(false),
            }]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        immutable: Some(true),
        data: Some(BTreeMap::from([(
            TOKEN_KEY.to_owned(),
            ByteString(launch.worker_token.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    }
}

/// What a pod tells about its worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodOutcome {
    /// Pending or running (including while it is being deleted: the worker
    /// is stopping and gives its datum back itself).
    Alive,
    /// The worker exited on its own, successfully or not: a datum it still
    /// held counts a try.
    Exited,
    /// The infrastructure ended it: a datum it still held does not count a
    /// try.
    Failed(FailureReason, String),
}

/// Reads a pod's status.
pub fn pod_outcome(pod: &Pod) -> PodOutcome {
    let Some(status) = &pod.status else {
        return PodOutcome::Alive;
    };
    match status.phase.as_deref() {
        Some("Succeeded") => return PodOutcome::Exited,
        Some("Failed") => {}
        _ => return PodOutcome::Alive,
    }
    let message = status.message.clone().unwrap_or_default();
    // The container's own end first: a pod killed for its memory is an OOM,
    // whatever else happened to the pod afterwards.
    let worker_end = status
        .container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == WORKER_CONTAINER)
        .and_then(|c| c.state.as_ref()?.terminated.as_ref());
    if let Some(end) = worker_end
        && end.reason.as_deref() == Some("OOMKilled")
    {
        return PodOutcome::Failed(
            FailureReason::OomKilled,
            "the worker container exceeded its memory limit (resource_requests.memory)".to_owned(),
        );
    }
    match status.reason.as_deref() {
        Some("Evicted") => return PodOutcome::Failed(FailureReason::Evicted, message),
        Some("DeadlineExceeded") => {
            return PodOutcome::Failed(FailureReason::DeadlineExceeded, message);
        }
        _ => {}
    }
    let disruption = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "DisruptionTarget" && c.status == "True");
    if let Some(condition) = disruption {
        let reason = match condition.reason.as_deref() {
            Some("PreemptionByScheduler") => FailureReason::Preempted,
            Some("DeletionByTaintManager" | "DeletionByPodGC") => FailureReason::NodeLost,
            _ => FailureReason::Evicted,
        };
        let message = condition.message.clone().unwrap_or(message);
        return PodOutcome::Failed(reason, message);
    }
    PodOutcome::Exited
}

/// How one Kubernetes Job ended, if it did.
fn job_end(job: &Job) -> Option<PoolState> {
    let conditions = || {
        job.status
            .as_ref()
            .and_then(|status| status.conditions.as_ref())
            .into_iter()
            .flatten()
            .filter(|c| c.status == "True")
    };
    // `FailureTarget` comes before `Failed`, while the last pods terminate.
    if let Some(failed) = conditions().find(|c| c.type_ == "Failed" || c.type_ == "FailureTarget") {
        return Some(PoolState::Failed {
            reason: failed.reason.clone().unwrap_or_else(|| "Failed".to_owned()),
            message: failed.message.clone().unwrap_or_default(),
        });
    }
    conditions()
        .any(|c| c.type_ == "Complete" || c.type_ == "SuccessCriteriaMet")
        .then_some(PoolState::Complete)
}

/// The generation after every one of `jobs`: names are never reused, even
/// once an old generation has been deleted (by its TTL, say).
pub fn next_generation(jobs: &[Job]) -> usize {
    jobs.iter()
        .map(|job| {
            job.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(GENERATION_ANNOTATION))
                .and_then(|g| g.parse::<usize>().ok())
                .unwrap_or(0)
                .saturating_add(1)
        })
        .max()
        .unwrap_or(0)
}

/// True while a Kubernetes Job may still start or run pods.
pub fn is_active(job: &Job) -> bool {
    job.metadata.deletion_timestamp.is_none() && job_end(job).is_none()
}

/// The state of the pool from the job's Kubernetes Jobs: normally one, more
/// if an earlier pool completed while work remained.
pub fn pool_state(jobs: &[Job]) -> PoolState {
    if jobs.is_empty() {
        return PoolState::Vanished;
    }
    if jobs.iter().any(|job| job_end(job).is_none()) {
        return PoolState::Active;
    }
    let ends: Vec<PoolState> = jobs.iter().filter_map(job_end).collect();
    ends.iter()
        .find(|end| matches!(end, PoolState::Failed { .. }))
        .cloned()
        .unwrap_or(PoolState::Complete)
}

/// Waiting reasons of a container that will not start by waiting longer:
/// a bad image, a missing Secret or key.
const STUCK_REASONS: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "ErrImageNeverPull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
];

/// Why a pod's worker cannot start, if one of its containers is stuck.
pub fn stuck_reason(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .find_map(|container| {
            let waiting = container.state.as_ref()?.waiting.as_ref()?;
            let reason = waiting.reason.as_deref()?;
            STUCK_REASONS.contains(&reason).then(|| {
                format!(
                    "container {}: {reason}: {}",
                    container.name,
                    waiting.message.as_deref().unwrap_or("")
                )
            })
        })
}

/// Kubernetes retries a pod that cannot pull its image or find its Secret
/// forever, and the Job never fails. So the pool counts as failed once
/// every live pod is stuck and has been for `start_timeout_ms` (by its
/// creation time); a pool where some worker runs is left alone.
pub fn stuck_pool(pods: &[Pod], now_ms: i64, start_timeout_ms: i64) -> Option<PoolState> {
    let mut first = None;
    for pod in pods
        .iter()
        .filter(|pod| pod_outcome(pod) == PodOutcome::Alive)
    {
        let reason = stuck_reason(pod)?;
        let created = pod.metadata.creation_timestamp.as_ref()?.0.as_millisecond();
        if now_ms.saturating_sub(created) < start_timeout_ms {
            return None;
        }
        let name = pod.metadata.name.as_deref().unwrap_or("?");
        first.get_or_insert_with(|| format!("pod {name}, {reason}"));
    }
    first.map(|message| PoolState::Failed {
        reason: "WorkersCannotStart".to_owned(),
        message,
    })
}

/// The uid Kubernetes gave a created object.
pub fn uid_of(meta: &ObjectMeta) -> Result<&str> {
    meta.uid
        .as_deref()
        .context("the API server returned the Job without a uid")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    #[test]
    fn job_names_fit_in_a_label() {
        assert_eq!(job_name("word-count-a1b2c", 42, 0), "word-count-a1b2c-42");
        assert_eq!(job_name("word-count-a1b2c", 42, 2), "word-count-a1b2c-42-2");
        let long = format!("{}-a1b2c", "x".repeat(50));
        let name = job_name(&long, 1_234_567_890_123, 0);
        assert_eq!(name.len(), 63, "{name}");
        assert!(name.ends_with("-1234567890123"), "{name}");
        let name = job_name(&long, 1_234_567_890_123, 12);
        assert_eq!(name.len(), 63, "{name}");
        assert!(name.ends_with("-1234567890123-12"), "{name}");
        // A cut that ends on '-' is trimmed, so the name stays a DNS label.
        let name = job_name(&format!("{}-b", "y".repeat(48)), 1_234_567_890_123, 0);
        assert!(!name.contains("--"), "{name}");
        assert_eq!(job_name("9_Lives", 1, 0), "job-9-lives-1");
        assert_eq!(job_name("", 1, 0), "job-1");
    }

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({ "metadata": { "name": "p" }, "status": status })).unwrap()
    }

    #[test]
    fn pod_outcomes() {
        assert_eq!(pod_outcome(&pod(json!(null))), PodOutcome::Alive);
        assert_eq!(
            pod_outcome(&pod(json!({ "phase": "Pending" }))),
            PodOutcome::Alive
        );
        assert_eq!(
            pod_outcome(&pod(json!({ "phase": "Unknown" }))),
            PodOutcome::Alive
        );
        assert_eq!(
            pod_outcome(&pod(json!({ "phase": "Succeeded" }))),
            PodOutcome::Exited
        );
        assert_eq!(
            pod_outcome(&pod(json!({ "phase": "Failed" }))),
            PodOutcome::Exited
        );
        let reason = |status| match pod_outcome(&pod(status)) {
            PodOutcome::Failed(reason, _) => Some(reason),
            _ => None,
        };
        let disruption = |why: &str| {
            json!({ "phase": "Failed", "conditions": [
                { "type": "Ready", "status": "False" },
                { "type": "DisruptionTarget", "status": "True", "reason": why }] })
        };
        assert_eq!(
            reason(disruption("PreemptionByScheduler")),
            Some(FailureReason::Preempted)
        );
        assert_eq!(
            reason(disruption("DeletionByTaintManager")),
            Some(FailureReason::NodeLost)
        );
        assert_eq!(
            reason(disruption("DeletionByPodGC")),
            Some(FailureReason::NodeLost)
        );
        assert_eq!(
            reason(disruption("EvictionByEvictionAPI")),
            Some(FailureReason::Evicted)
        );
        assert_eq!(
            reason(json!({ "phase": "Failed", "reason": "Evicted" })),
            Some(FailureReason::Evicted)
        );
        assert_eq!(
            reason(json!({ "phase": "Failed", "reason": "DeadlineExceeded" })),
            Some(FailureReason::DeadlineExceeded)
        );
        // A condition that is not true is no disruption.
        assert_eq!(
            reason(json!({ "phase": "Failed", "conditions": [
                { "type": "DisruptionTarget", "status": "False" }] })),
            None
        );
        // An OOM kill of the worker container, even on an evicted pod.
        assert_eq!(
            reason(
                json!({ "phase": "Failed", "reason": "Evicted", "containerStatuses": [{
                "name": "worker", "ready": false, "restartCount": 0, "image": "x", "imageID": "",
                "state": { "terminated": { "exitCode": 137, "reason": "OOMKilled" } } }] })
            ),
            Some(FailureReason::OomKilled)
        );
        // A still-running pod being preempted is alive: its worker is
        // stopping and gives its datum back itself.
        assert_eq!(
            pod_outcome(&pod(json!({ "phase": "Running", "conditions": [
                { "type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler" }] }))),
            PodOutcome::Alive
        );
    }

    #[test]
    fn stuck_pools() {
        let hour_ms = 3_600_000;
        let created = "2026-11-25T10:00:00Z";
        let created_ms = created
            .parse::<k8s_openapi::jiff::Timestamp>()
            .unwrap()
            .as_millisecond();
        let pod = |name: &str, status: serde_json::Value| -> Pod {
            serde_json::from_value(json!({
                "metadata": { "name": name, "creationTimestamp": created },
                "status": status
            }))
            .unwrap()
        };
        let stuck = |name: &str| {
            pod(
                name,
                json!({ "phase": "Pending", "containerStatuses": [{
                    "name": "worker", "ready": false, "restartCount": 0, "image": "x", "imageID": "",
                    "state": { "waiting": { "reason": "ImagePullBackOff",
                                            "message": "Back-off pulling image x" } } }] }),
            )
        };
        let pods = [
            stuck("a"),
            stuck("b"),
            pod("c", json!({ "phase": "Failed" })),
        ];
        assert_eq!(
            stuck_pool(&pods, created_ms + hour_ms, 300_000),
            Some(PoolState::Failed {
                reason: "WorkersCannotStart".into(),
                message: "pod a, container worker: ImagePullBackOff: Back-off pulling image x"
                    .into()
            })
        );
        // Not stuck for long enough yet.
        assert_eq!(stuck_pool(&pods, created_ms + 1_000, 300_000), None);
        // One worker runs: the pool works, if slowly.
        let mixed = [stuck("a"), pod("b", json!({ "phase": "Running" }))];
        assert_eq!(stuck_pool(&mixed, created_ms + hour_ms, 300_000), None);
        // A missing Secret in the init container counts too.
        let secret = pod(
            "d",
            json!({ "phase": "Pending", "initContainerStatuses": [{
                "name": "install-worker", "ready": false, "restartCount": 0, "image": "x", "imageID": "",
                "state": { "waiting": { "reason": "CreateContainerConfigError",
                                        "message": "secret \"s3\" not found" } } }] }),
        );
        assert!(
            stuck_reason(&secret)
                .unwrap()
                .contains("CreateContainerConfigError")
        );
        assert_eq!(stuck_pool(&[], created_ms, 0), None);
    }

    fn job(conditions: serde_json::Value) -> Job {
        serde_json::from_value(
            json!({ "metadata": { "name": "j" }, "status": { "conditions": conditions } }),
        )
        .unwrap()
    }

    #[test]
    fn generations_are_never_reused() {
        let generation = |n: &str| -> Job {
            serde_json::from_value(json!({ "metadata": { "name": "j",
                "annotations": { GENERATION_ANNOTATION: n } } }))
            .unwrap()
        };
        assert_eq!(next_generation(&[]), 0);
        assert_eq!(next_generation(&[generation("0")]), 1);
        // Generation 0 is gone (TTL), 1 completed: the next is 2, not 1.
        assert_eq!(next_generation(&[generation("1")]), 2);
        assert_eq!(next_generation(&[generation("3"), generation("1")]), 4);
    }

    #[test]
    fn pool_states() {
        assert_eq!(pool_state(&[]), PoolState::Vanished);
        // A completed pool and its successor: the successor counts.
        assert_eq!(
            pool_state(&[
                job(json!([{ "type": "Complete", "status": "True" }])),
                job(json!([]))
            ]),
            PoolState::Active
        );
        assert_eq!(pool_state(&[job(json!([]))]), PoolState::Active);
        assert_eq!(
            pool_state(&[job(json!([{ "type": "Complete", "status": "True" }]))]),
            PoolState::Complete
        );
        assert_eq!(
            pool_state(&[job(json!([{ "type": "Failed", "status": "False" }]))]),
            PoolState::Active
        );
        assert_eq!(
            pool_state(&[job(json!([{ "type": "FailureTarget", "status": "True",
                "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit" }]))]),
            PoolState::Failed {
                reason: "BackoffLimitExceeded".into(),
                message: "Job has reached the specified backoff limit".into()
            }
        );
    }
}
