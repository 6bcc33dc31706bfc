//! The Kubernetes executor against a fake API server (a `tower_test` mock
//! service answered by a small in-memory cluster), and every object it
//! creates through `kubernetes-validate --strict` for two Kubernetes
//! versions.
//!
//! Set FALCONERI_TEST_KUBERNETES_VALIDATE to the `kubernetes-validate`
//! program (`scripts/test` does); the validation tests fail without it.

#![allow(clippy::unwrap_used)]

mod common;

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::http::{Method, StatusCode};
use common::{ADMIN, call, write_files};
use falconeri_common::{db::testing::TestDb, pipeline::PipelineSpec};
use falconerid::{
    AppState, Config, app,
    babysitter::Babysitter,
    executor::{
        Executor, KubernetesExecutor, KubernetesSettings, PoolState, ServerEndpoint, WorkerLaunch,
        kubernetes::objects,
    },
};
use http::{Request, Response};
use k8s_openapi::api::{batch::v1::Job, core::v1::Secret};
use kube::client::Body;
use serde_json::{Value, json};

const NAMESPACE: &str = "batch";
/// The versions every object is validated against: the oldest we compile
/// k8s-openapi for, and the newest the validator knows.
const KUBERNETES_VERSIONS: &[&str] = &["1.34.0", "1.37.0"];

fn settings() -> KubernetesSettings {
    KubernetesSettings {
        namespace: NAMESPACE.to_owned(),
        worker_image: "ghcr.io/example/falconerid:0.3.0".to_owned(),
        worker_image_pull_policy: "IfNotPresent".to_owned(),
        job_ttl: Duration::from_secs(3600),
        worker_restarts: 3,
        start_timeout: Duration::from_secs(300),
    }
}

// ---------------------------------------------------------------------------
// kubernetes-validate

/// Runs `kubernetes-validate --strict` on every object, for each version in
/// [`KUBERNETES_VERSIONS`], and fails with its output if any is invalid.
fn validate(objects: &[(String, Value)]) {
    let program = std::env::var_os("FALCONERI_TEST_KUBERNETES_VALIDATE").unwrap_or_else(|| {
        panic!(
            "FALCONERI_TEST_KUBERNETES_VALIDATE is not set: point it at the kubernetes-validate \
             program (pip install kubernetes-validate), or run the tests through scripts/test"
        )
    });
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (i, (name, object)) in objects.iter().enumerate() {
        let path = dir.path().join(format!("{i:03}-{name}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(object).unwrap()).unwrap();
        files.push(path);
    }
    for version in KUBERNETES_VERSIONS {
        let output = std::process::Command::new(&program)
            .args(["--strict", "--quiet", "-k", version])
            .args(&files)
            .output()
            .unwrap_or_else(|err| panic!("cannot run {}: {err}", Path::new(&program).display()));
        assert!(
            output.status.success(),
            "kubernetes-validate -k {version} rejected objects:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// A spec from `extra` merged into a minimal one.
fn spec(extra: Value) -> PipelineSpec {
    let mut spec = json!({
        "pipeline": { "name": "word_count" },
        "transform": { "cmd": ["sh", "/count.sh"], "image": "alpine:3.20" },
        "parallelism_spec": { "constant": 2 },
        "resource_requests": { "memory": "256Mi", "cpu": 0.5 },
        "input": { "atom": { "URI": "s3://bucket/in/", "repo": "in", "glob": "/*" } },
        "egress": { "URI": "s3://bucket/out/" }
    });
    merge(&mut spec, extra);
    PipelineSpec::from_json(&spec.to_string()).unwrap()
}

fn merge(target: &mut Value, extra: Value) {
    match (target, extra) {
        (Value::Object(target), Value::Object(extra)) => {
            for (key, value) in extra {
                merge(target.entry(key).or_insert(Value::Null), value);
            }
        }
        (target, extra) => *target = extra,
    }
}

fn launch(id: i64, spec: PipelineSpec) -> WorkerLaunch {
    WorkerLaunch {
        job_id: id,
        job_name: format!("{}-a1b2c", spec.kubernetes_name()),
        worker_token: "0123456789abcdef-secret-token".to_owned(),
        server: ServerEndpoint {
            url: "http://falconerid.batch.svc:8089".to_owned(),
            // The Kubernetes executor never passes a socket to its pods.
            socket: Some("/var/run/falconerid.sock".into()),
        },
        spec,
    }
}

/// Specs covering every field that reaches a Job.
fn spec_matrix() -> Vec<(&'static str, PipelineSpec)> {
    vec![
        ("minimal", spec(json!({}))),
        (
            "gpu-nodes",
            spec(json!({
                "resource_requests": { "memory": "16Gi", "cpu": "3500m", "gpu": 2 },
                "node_selector": { "cloud.google.com/gke-accelerator": "nvidia-l4", "pool": "gpu" },
                "tolerations": [
                    { "key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule" },
                    { "key": "pool", "value": "gpu" },
                    { "key": "node.kubernetes.io/unreachable", "operator": "Exists",
                      "effect": "NoExecute", "toleration_seconds": 60 },
                    { "operator": "Exists" }
                ]
            })),
        ),
        (
            "service-account",
            spec(json!({ "transform": { "service_account": "pipeline-runner" } })),
        ),
        (
            "secrets",
            spec(json!({ "transform": { "secrets": [
                { "name": "s3-credentials", "key": "AWS_ACCESS_KEY_ID", "env_var": "AWS_ACCESS_KEY_ID" },
                { "name": "s3-credentials", "key": "AWS_SECRET_ACCESS_KEY", "env_var": "AWS_SECRET_ACCESS_KEY" },
                { "name": "gcs-key", "mount_path": "/var/secrets/google" },
                { "name": "tls.bundle", "mount_path": "/etc/tls/" },
                // falconeri v2's optional secret key.
                { "name": "s3-credentials", "key": "AWS_ENDPOINT_URL", "env_var": "AWS_ENDPOINT_URL",
                  "optional": true }
            ] } })),
        ),
        (
            "env-and-pull-policy",
            spec(json!({ "transform": {
                "env": { "LANG": "C.UTF-8", "WEIRD": "line1\nline2: \"{{ x }}\"\n---", "FALCONERI_PFS": "/elsewhere" },
                "image_pull_policy": "Always"
            } })),
        ),
        (
            "timeouts",
            spec(json!({
                "job_timeout": "2h 30m 500ms",
                "datum_timeout": "10m",
                "datum_tries": 3,
                "parallelism_spec": { "constant": 40 }
            })),
        ),
        (
            "long-name",
            spec(
                json!({ "pipeline": { "name": "a_very_long_pipeline_name_of_fifty_characters_xx" } }),
            ),
        ),
    ]
}

fn to_value<T: serde::Serialize>(object: &T) -> Value {
    serde_json::to_value(object).unwrap()
}

/// Every Job and token Secret the executor builds, for a matrix of specs,
/// passes strict validation for the oldest and newest supported versions.
#[test]
fn every_object_validates_for_two_kubernetes_versions() {
    let mut objects = Vec::new();
    for (i, (name, spec)) in spec_matrix().into_iter().enumerate() {
        let id = 1_000_000_000_000 + i64::try_from(i).unwrap();
        let launch = launch(id, spec);
        let job = objects::worker_job(&launch, 7, 0, &settings());
        let job_name = job.metadata.name.clone().unwrap();
        assert!(job_name.len() <= 63, "{job_name}");
        let secret = objects::token_secret(
            &launch,
            &settings(),
            &job_name,
            "5f0c2a40-7a4e-4bde-9b5f-4c1c1a2e9d10",
        );
        objects.push((format!("{name}-job"), to_value(&job)));
        objects.push((format!("{name}-secret"), to_value(&secret)));
    }
    validate(&objects);
}

/// The validator is not a rubber stamp: an object Kubernetes would refuse
/// (an unknown field, a bad restart policy) fails the same check.
#[test]
#[should_panic(expected = "rejected objects")]
fn the_validator_rejects_a_broken_job() {
    let launch = launch(1, spec(json!({})));
    let mut job = to_value(&objects::worker_job(&launch, 1, 0, &settings()));
    job["spec"]["template"]["spec"]["restartPolicy"] = json!(7);
    job["spec"]["template"]["spec"]["containerz"] = json!([]);
    validate(&[("broken".to_owned(), job)]);
}

/// The Job carries exactly what the spec asks for, and the token only by
/// reference.
#[test]
fn the_job_follows_the_spec() {
    let spec = spec_matrix()
        .into_iter()
        .find(|(name, _)| *name == "gpu-nodes")
        .unwrap()
        .1;
    let launch = launch(42, spec);
    let job = to_value(&objects::worker_job(&launch, 3, 0, &settings()));
    assert_eq!(job["metadata"]["name"], "word-count-a1b2c-42");
    assert_eq!(job["metadata"]["namespace"], NAMESPACE);
    let labels = json!({
        "app.kubernetes.io/part-of": "falconeri",
        "app.kubernetes.io/managed-by": "falconeri",
        "app.kubernetes.io/component": "worker",
        "falconeri.io/job-id": "42",
    });
    assert_eq!(job["metadata"]["labels"], labels);
    assert_eq!(job["spec"]["template"]["metadata"]["labels"], labels);
    assert_eq!(job["spec"]["parallelism"], 3);
    assert!(job["spec"].get("completions").is_none());
    assert_eq!(job["spec"]["backoffLimit"], 9);
    assert_eq!(job["spec"]["ttlSecondsAfterFinished"], 3600);
    assert_eq!(
        job["spec"]["podFailurePolicy"],
        json!({ "rules": [{ "action": "Ignore",
            "onPodConditions": [{ "type": "DisruptionTarget", "status": "True" }] }] })
    );
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(pod["nodeSelector"]["pool"], "gpu");
    assert_eq!(pod["tolerations"].as_array().unwrap().len(), 4);
    assert_eq!(
        pod["tolerations"][1],
        json!({ "key": "pool", "operator": "Equal", "value": "gpu" })
    );
    let worker = &pod["containers"][0];
    assert_eq!(worker["image"], "alpine:3.20");
    assert_eq!(worker["command"], json!(["/falconeri/falconeri-worker"]));
    assert_eq!(
        worker["resources"],
        json!({
            "requests": { "cpu": "3500m", "memory": "16Gi" },
            "limits": { "memory": "16Gi", "nvidia.com/gpu": "2" }
        })
    );
    let init = &pod["initContainers"][0];
    assert_eq!(init["image"], "ghcr.io/example/falconerid:0.3.0");
    assert_eq!(
        init["command"],
        json!([
            "cp",
            "/usr/local/bin/falconeri-worker",
            "/var/run/falconeri/token/token",
            "/falconeri/"
        ])
    );
    // The worker container does not mount the token Secret; only the init
    // container does.
    let mounts = |c: &Value| -> Vec<String> {
        c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(!mounts(worker).contains(&"falconeri-token".to_owned()));
    assert!(mounts(init).contains(&"falconeri-token".to_owned()));
    let text = job.to_string();
    assert!(!text.contains("secret-token"), "the token leaked: {text}");
    let env: BTreeMap<String, Value> = worker["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_owned(), e.clone()))
        .collect();
    assert_eq!(
        env["FALCONERI_TOKEN_FILE"]["value"], "/falconeri/token",
        "{env:?}"
    );
    assert_eq!(
        env["FALCONERI_WORKER_ID"]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(
        env["FALCONERI_SERVER"]["value"],
        "http://falconerid.batch.svc:8089"
    );
}

/// Secrets become `secretKeyRef`s (optional ones `optional: true`) and
/// read-only volumes; env values with
/// YAML-looking text stay data; the spec cannot override the worker's own
/// settings; the service account gets its token mounted.
#[test]
fn secrets_env_and_service_accounts() {
    let by_name: BTreeMap<_, _> = spec_matrix().into_iter().collect();
    let job = to_value(&objects::worker_job(
        &launch(1, by_name["secrets"].clone()),
        1,
        0,
        &settings(),
    ));
    let pod = &job["spec"]["template"]["spec"];
    let env = pod["containers"][0]["env"].as_array().unwrap();
    assert!(
        env.contains(&json!({ "name": "AWS_ACCESS_KEY_ID", "valueFrom": {
        "secretKeyRef": { "name": "s3-credentials", "key": "AWS_ACCESS_KEY_ID" } } }))
    );
    // An optional secret really is optional to Kubernetes: the pod starts
    // without it (the whole matrix is also checked by kubernetes-validate).
    assert!(
        env.contains(&json!({ "name": "AWS_ENDPOINT_URL", "valueFrom": {
        "secretKeyRef": { "name": "s3-credentials", "key": "AWS_ENDPOINT_URL", "optional": true } } })),
        "{env:?}"
    );
    let volumes = pod["volumes"].as_array().unwrap();
    assert!(
        volumes.contains(&json!({ "name": "secret-2", "secret": { "secretName": "gcs-key" } }))
    );
    assert!(
        pod["containers"][0]["volumeMounts"]
            .as_array()
            .unwrap()
            .contains(
                &json!({ "name": "secret-2", "mountPath": "/var/secrets/google", "readOnly": true })
            )
    );

    let job = to_value(&objects::worker_job(
        &launch(1, by_name["env-and-pull-policy"].clone()),
        1,
        0,
        &settings(),
    ));
    let worker = &job["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(worker["imagePullPolicy"], "Always");
    let env = worker["env"].as_array().unwrap();
    assert!(env.contains(&json!({ "name": "WEIRD", "value": "line1\nline2: \"{{ x }}\"\n---" })));
    let pfs: Vec<&Value> = env
        .iter()
        .filter(|e| e["name"] == "FALCONERI_PFS")
        .collect();
    assert_eq!(pfs, [&json!({ "name": "FALCONERI_PFS", "value": "/pfs" })]);

    let job = to_value(&objects::worker_job(
        &launch(1, by_name["service-account"].clone()),
        1,
        0,
        &settings(),
    ));
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "pipeline-runner");
    assert_eq!(pod["automountServiceAccountToken"], true);

    let job = to_value(&objects::worker_job(
        &launch(1, by_name["timeouts"].clone()),
        1,
        0,
        &settings(),
    ));
    // 2h 30m 500ms, rounded up to whole seconds.
    assert_eq!(job["spec"]["activeDeadlineSeconds"], 9001);
}

/// The token Secret holds the token, is owned by the Job (so the garbage
/// collector deletes it with the Job) and carries the job's labels.
#[test]
fn the_token_secret_is_owned_by_the_job() {
    let launch = launch(42, spec(json!({})));
    let secret = to_value(&objects::token_secret(
        &launch,
        &settings(),
        "word-count-a1b2c-42",
        "uid-1",
    ));
    assert_eq!(secret["metadata"]["name"], "word-count-a1b2c-42-token");
    assert_eq!(
        secret["metadata"]["ownerReferences"],
        json!([{ "apiVersion": "batch/v1", "kind": "Job", "name": "word-count-a1b2c-42",
                 "uid": "uid-1", "controller": false, "blockOwnerDeletion": false }])
    );
    assert_eq!(secret["metadata"]["labels"]["falconeri.io/job-id"], "42");
    assert_eq!(secret["immutable"], true);
    use base64_check::decode;
    assert_eq!(
        decode(secret["data"]["token"].as_str().unwrap()),
        b"0123456789abcdef-secret-token"
    );
}

/// A tiny base64 decoder, so the test needs no crate for one check.
mod base64_check {
    pub fn decode(text: &str) -> Vec<u8> {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut bits = 0u32;
        let mut count = 0;
        let mut out = Vec::new();
        for byte in text.bytes().filter(|b| *b != b'=') {
            let value = ALPHABET.iter().position(|a| *a == byte).unwrap();
            bits = (bits << 6) | u32::try_from(value).unwrap();
            count += 6;
            if count >= 8 {
                count -= 8;
                out.push(u8::try_from((bits >> count) & 0xff).unwrap());
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------
// The fake API server

/// One request the fake received.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    query: String,
    body: Value,
}

/// An in-memory namespace: Jobs, pods and Secrets, and a log of requests.
#[derive(Default)]
struct FakeCluster {
    jobs: Mutex<BTreeMap<String, Value>>,
    pods: Mutex<BTreeMap<String, Value>>,
    secrets: Mutex<BTreeMap<String, Value>>,
    seen: Mutex<Vec<Seen>>,
    /// When set, creating Secrets fails with this status.
    fail_secrets: Mutex<Option<u16>>,
}

fn status(code: u16, reason: &str, message: &str) -> (u16, Value) {
    (
        code,
        json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code }),
    )
}

fn matches_selector(object: &Value, query: &str) -> bool {
    let selector = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("labelSelector="))
        .map(|s| s.replace("%3D", "=").replace("%2F", "/"));
    let Some(selector) = selector else {
        return true;
    };
    selector.split(',').all(|term| {
        let (key, value) = term.split_once('=').unwrap();
        object["metadata"]["labels"][key] == value
    })
}

impl FakeCluster {
    /// A kube client whose every request this fake answers.
    fn client(self: &Arc<Self>) -> kube::Client {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let fake = self.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.unwrap();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let seen = Seen {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_owned(),
                    query: parts.uri.query().unwrap_or_default().to_owned(),
                    body,
                };
                fake.seen.lock().unwrap().push(seen.clone());
                let (code, answer) = fake.answer(&seen);
                let response = Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap();
                send.send_response(response);
            }
        });
        kube::Client::new(service, NAMESPACE)
    }

    fn answer(&self, seen: &Seen) -> (u16, Value) {
        let jobs_prefix = format!("/apis/batch/v1/namespaces/{NAMESPACE}/jobs");
        let pods_prefix = format!("/api/v1/namespaces/{NAMESPACE}/pods");
        let secrets_prefix = format!("/api/v1/namespaces/{NAMESPACE}/secrets");
        let (store, kind, prefix) = if seen.path.starts_with(&jobs_prefix) {
            (&self.jobs, "Job", jobs_prefix)
        } else if seen.path.starts_with(&pods_prefix) {
            (&self.pods, "Pod", pods_prefix)
        } else if seen.path.starts_with(&secrets_prefix) {
            (&self.secrets, "Secret", secrets_prefix)
        } else {
            return status(404, "NotFound", "no such resource");
        };
        let name = seen.path[prefix.len()..].trim_start_matches('/').to_owned();
        // The Role `falconeri deploy` grants falconerid; anything else is
        // forbidden here as it would be in a cluster.
        let verb = match (seen.method.as_str(), name.is_empty()) {
            ("GET", true) if seen.query.contains("watch=") => "watch",
            ("GET", true) => "list",
            ("GET", false) => "get",
            ("POST", true) => "create",
            ("DELETE", false) => "delete",
            _ => "other",
        };
        let granted: &[&str] = match kind {
            "Job" => &["create", "get", "list", "watch", "delete"],
            "Pod" => &["get", "list", "watch"],
            _ => &["create", "get", "delete"],
        };
        if !granted.contains(&verb) {
            return status(403, "Forbidden", &format!("{verb} {kind} is not granted"));
        }
        match (seen.method.as_str(), name.is_empty()) {
            ("GET", true) => {
                let items: Vec<Value> = store
                    .lock()
                    .unwrap()
                    .values()
                    .filter(|o| matches_selector(o, &seen.query))
                    .cloned()
                    .collect();
                let api_version = if kind == "Job" { "batch/v1" } else { "v1" };
                (
                    200,
                    json!({ "kind": format!("{kind}List"), "apiVersion": api_version,
                            "metadata": { "resourceVersion": "1" }, "items": items }),
                )
            }
            ("GET", false) => match store.lock().unwrap().get(&name) {
                Some(object) => (200, object.clone()),
                None => status(404, "NotFound", &format!("{name} not found")),
            },
            ("POST", true) => {
                if kind == "Secret"
                    && let Some(code) = *self.fail_secrets.lock().unwrap()
                {
                    return status(code, "Forbidden", "secrets is forbidden");
                }
                let mut object = seen.body.clone();
                let name = object["metadata"]["name"].as_str().unwrap().to_owned();
                let mut store = store.lock().unwrap();
                if store.contains_key(&name) {
                    return status(409, "AlreadyExists", &format!("{name} already exists"));
                }
                object["metadata"]["uid"] = json!(format!("uid-{name}"));
                object["metadata"]["creationTimestamp"] = json!("2026-11-25T10:00:00Z");
                store.insert(name, object.clone());
                (201, object)
            }
            ("DELETE", false) => match store.lock().unwrap().remove(&name) {
                Some(object) => {
                    if kind == "Job" {
                        // The garbage collector, at once: owned Secrets go.
                        self.secrets.lock().unwrap().retain(|_, secret| {
                            secret["metadata"]["ownerReferences"][0]["name"] != name.as_str()
                        });
                    }
                    (200, object)
                }
                None => status(404, "NotFound", &format!("{name} not found")),
            },
            _ => status(405, "MethodNotAllowed", "not in the fake"),
        }
    }

    fn requests(&self, method: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.method == method)
            .cloned()
            .collect()
    }

    /// Adds a pod of job `job_id` named `name` with `status`.
    fn add_pod(&self, job_id: i64, name: &str, status: Value) {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": name, "namespace": NAMESPACE, "labels": objects::labels(job_id) },
            "spec": { "containers": [{ "name": "worker", "image": "alpine" }] },
            "status": status,
        });
        self.pods.lock().unwrap().insert(name.to_owned(), pod);
    }

    /// Sets a condition on the job's Kubernetes Job.
    fn set_job_condition(&self, type_: &str, reason: &str, message: &str) {
        for job in self.jobs.lock().unwrap().values_mut() {
            job["status"] = json!({ "conditions": [{ "type": type_, "status": "True",
                "reason": reason, "message": message }] });
        }
    }
}

fn running() -> Value {
    json!({ "phase": "Running" })
}

fn oom_killed() -> Value {
    json!({ "phase": "Failed", "containerStatuses": [{
        "name": "worker", "ready": false, "restartCount": 0, "image": "alpine", "imageID": "",
        "state": { "terminated": { "exitCode": 137, "reason": "OOMKilled" } } }] })
}

fn evicted() -> Value {
    json!({ "phase": "Failed", "reason": "Evicted",
            "message": "The node was low on resource: memory." })
}

fn preempted() -> Value {
    json!({ "phase": "Failed", "conditions": [{ "type": "DisruptionTarget", "status": "True",
        "reason": "PreemptionByScheduler", "message": "preempted by a pod of higher priority" }] })
}

fn crashed() -> Value {
    json!({ "phase": "Failed", "containerStatuses": [{
        "name": "worker", "ready": false, "restartCount": 0, "image": "alpine", "imageID": "",
        "state": { "terminated": { "exitCode": 1, "reason": "Error" } } }] })
}

fn executor(fake: &Arc<FakeCluster>) -> KubernetesExecutor {
    KubernetesExecutor::new(fake.client(), settings())
}

/// Starting creates the Job exactly as built, then the token Secret owned
/// by the created Job's uid.
#[tokio::test]
async fn start_creates_the_job_then_its_owned_secret() {
    let fake = Arc::new(FakeCluster::default());
    let launch = launch(7, spec(json!({})));
    executor(&fake).start_workers(&launch, 2).await.unwrap();

    let posts = fake.requests("POST");
    assert_eq!(posts.len(), 2, "{posts:?}");
    assert_eq!(posts[0].path, "/apis/batch/v1/namespaces/batch/jobs");
    let expected = to_value(&objects::worker_job(&launch, 2, 0, &settings()));
    assert_eq!(posts[0].body, expected);
    assert_eq!(posts[1].path, "/api/v1/namespaces/batch/secrets");
    assert_eq!(
        posts[1].body["metadata"]["ownerReferences"][0]["uid"],
        "uid-word-count-a1b2c-7"
    );
    validate(&[
        ("job".to_owned(), posts[0].body.clone()),
        ("secret".to_owned(), posts[1].body.clone()),
    ]);
}

/// A second start of the same job (another replica, a babysitter taking
/// over) changes nothing and succeeds: the Job's parallelism holds.
#[tokio::test]
async fn starting_twice_is_idempotent() {
    let fake = Arc::new(FakeCluster::default());
    let executor = executor(&fake);
    let launch = launch(7, spec(json!({})));
    executor.start_workers(&launch, 2).await.unwrap();
    executor.start_workers(&launch, 1).await.unwrap();
    assert_eq!(fake.jobs.lock().unwrap().len(), 1);
    let job = fake.jobs.lock().unwrap()["word-count-a1b2c-7"].clone();
    assert_eq!(job["spec"]["parallelism"], 2);
    assert_eq!(fake.secrets.lock().unwrap().len(), 1);
    let job_posts = fake
        .requests("POST")
        .iter()
        .filter(|s| s.path.ends_with("/jobs"))
        .count();
    assert_eq!(job_posts, 1, "the second start found the pool by label");

    // A start cut short between the Job and its Secret is finished by the
    // next one.
    fake.secrets.lock().unwrap().clear();
    executor.start_workers(&launch, 2).await.unwrap();
    assert_eq!(fake.jobs.lock().unwrap().len(), 1);
    assert_eq!(
        fake.secrets.lock().unwrap().len(),
        1,
        "the missing Secret is made"
    );

    // A Job of the same name that is not this job's is not taken for it.
    let mut other = launch.clone();
    other.job_id = 8;
    other.job_name = "word-count-a1b2c".to_owned();
    fake.jobs.lock().unwrap().insert(
        "word-count-a1b2c-8".to_owned(),
        json!({ "apiVersion": "batch/v1", "kind": "Job",
                "metadata": { "name": "word-count-a1b2c-8", "labels": {} } }),
    );
    let err = executor.start_workers(&other, 1).await.unwrap_err();
    assert!(
        err.to_string().contains("belongs to no falconeri job"),
        "{err}"
    );
}

/// Without its token Secret no pod could start: the Job is taken back.
#[tokio::test]
async fn a_failed_secret_takes_the_job_back() {
    let fake = Arc::new(FakeCluster::default());
    *fake.fail_secrets.lock().unwrap() = Some(403);
    let err = executor(&fake)
        .start_workers(&launch(7, spec(json!({}))), 2)
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("token Secret"), "{err:#}");
    assert!(fake.jobs.lock().unwrap().is_empty());
    let deletes = fake.requests("DELETE");
    assert_eq!(deletes.len(), 1);
    assert_eq!(deletes[0].body["propagationPolicy"], "Background");
}

/// Stopping finds the job's Jobs by label and deletes each with background
/// propagation; the garbage collector takes the Secret along.
#[tokio::test]
async fn stop_deletes_the_job_with_background_propagation() {
    let fake = Arc::new(FakeCluster::default());
    let executor = executor(&fake);
    executor
        .start_workers(&launch(7, spec(json!({}))), 2)
        .await
        .unwrap();
    executor
        .start_workers(&launch(9, spec(json!({}))), 2)
        .await
        .unwrap();
    executor.stop_workers(7).await.unwrap();

    let lists: Vec<Seen> = fake
        .requests("GET")
        .into_iter()
        .filter(|s| s.path == "/apis/batch/v1/namespaces/batch/jobs")
        .collect();
    assert!(
        lists[0]
            .query
            .contains("labelSelector=falconeri.io%2Fjob-id%3D7"),
        "{lists:?}"
    );
    let deletes = fake.requests("DELETE");
    assert_eq!(deletes.len(), 1, "{deletes:?}");
    assert_eq!(
        deletes[0].path,
        "/apis/batch/v1/namespaces/batch/jobs/word-count-a1b2c-7"
    );
    assert_eq!(deletes[0].body["propagationPolicy"], "Background");
    let jobs: Vec<String> = fake.jobs.lock().unwrap().keys().cloned().collect();
    assert_eq!(jobs, ["word-count-a1b2c-9"]);
    assert_eq!(fake.secrets.lock().unwrap().len(), 1);
    // Stopping a job whose Job is gone already is fine.
    executor.stop_workers(7).await.unwrap();
}

/// The workers are the pods listed by label, whoever started them; the
/// observation tells failures of the infrastructure from exits.
#[tokio::test]
async fn workers_are_the_pods_listed_by_label() {
    let fake = Arc::new(FakeCluster::default());
    let executor = executor(&fake);
    fake.add_pod(7, "w-running", running());
    fake.add_pod(7, "w-pending", json!({ "phase": "Pending" }));
    fake.add_pod(7, "w-done", json!({ "phase": "Succeeded" }));
    fake.add_pod(7, "w-crashed", crashed());
    fake.add_pod(7, "w-oom", oom_killed());
    fake.add_pod(7, "w-evicted", evicted());
    fake.add_pod(8, "other-job", running());

    let mut workers = executor.workers(7).await.unwrap();
    workers.sort_by(|a, b| a.id.cmp(&b.id));
    let seen: Vec<(&str, bool)> = workers.iter().map(|w| (w.id.as_str(), w.alive)).collect();
    assert_eq!(
        seen,
        [
            ("w-crashed", false),
            ("w-done", false),
            ("w-evicted", false),
            ("w-oom", false),
            ("w-pending", true),
            ("w-running", true),
        ]
    );
    let pod_lists: Vec<Seen> = fake
        .requests("GET")
        .into_iter()
        .filter(|s| s.path == "/api/v1/namespaces/batch/pods")
        .collect();
    assert!(
        pod_lists[0]
            .query
            .contains("labelSelector=falconeri.io%2Fjob-id%3D7")
    );

    let observed = executor.observe(7).await.unwrap();
    let mut failed: Vec<String> = observed
        .failures
        .iter()
        .map(|f| format!("{}={}", f.worker_id, f.reason))
        .collect();
    failed.sort();
    assert_eq!(failed, ["w-evicted=Evicted", "w-oom=OOMKilled"]);
    assert_eq!(observed.workers.len(), 4);
    assert_eq!(observed.pool, PoolState::Vanished);
}

// ---------------------------------------------------------------------------
// The babysitter on Kubernetes

/// falconerid with the Kubernetes executor on `db` and `fake`.
struct Server {
    state: AppState,
    app: axum::Router,
    fake: Arc<FakeCluster>,
    dir: tempfile::TempDir,
    _db: TestDb,
}

impl Server {
    fn new(db: TestDb) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::local(dir.path(), ADMIN.to_owned(), vec!["unused".into()]);
        config.database_url = db.url.clone();
        config.max_wait = Duration::from_secs(2);
        config.public_url = Some("http://falconerid.batch.svc:8089".into());
        config.kubernetes_max_pod_failures = 3;
        let fake = Arc::new(FakeCluster::default());
        let executor = Arc::new(executor(&fake));
        let state = AppState::new(config, db.pool.clone(), executor);
        Server {
            app: app(state.clone()),
            state,
            fake,
            dir,
            _db: db,
        }
    }

    /// Submits a job with one datum per file; returns its id and token.
    async fn submit(&self, files: &[(&str, &str)], extra: Value) -> (i64, String) {
        let input = self
            .dir
            .path()
            .join(format!("in-{}", rand::random::<u32>()));
        write_files(&input, files);
        let mut spec = json!({
            "pipeline": { "name": "k8s_test" },
            "transform": { "cmd": ["true"], "image": "alpine" },
            "parallelism_spec": { "constant": 2 },
            "resource_requests": { "memory": "64Mi", "cpu": 0.1 },
            "input": { "atom": { "URI": format!("file://{}/", input.display()), "repo": "in", "glob": "/*" } },
            "egress": { "URI": format!("file://{}/", self.dir.path().join("out").display()) }
        });
        merge(&mut spec, extra);
        let (status, job) =
            call(&self.app, Method::POST, "/v1/jobs", Some(ADMIN), Some(spec)).await;
        assert_eq!(status, StatusCode::CREATED, "{job}");
        let id = job["id"].as_i64().unwrap();
        // The token, as the pods would get it: from the Secret.
        let id_label = id.to_string();
        let secret = self
            .fake
            .secrets
            .lock()
            .unwrap()
            .values()
            .find(|s| s["metadata"]["labels"]["falconeri.io/job-id"] == id_label.as_str())
            .cloned()
            .unwrap();
        let secret: Secret = serde_json::from_value(secret).unwrap();
        let token = String::from_utf8(secret.data.unwrap()["token"].0.clone()).unwrap();
        (id, token)
    }

    async fn reserve(&self, job_id: i64, token: &str, worker: &str) -> Value {
        let (status, body) = call(
            &self.app,
            Method::POST,
            &format!("/v1/jobs/{job_id}/reserve"),
            Some(token),
            Some(json!({ "worker_id": worker, "wait_ms": 0 })),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    async fn get(&self, path: &str) -> Value {
        let (status, body) = call(&self.app, Method::GET, path, Some(ADMIN), None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    async fn datum(&self, id: i64) -> Value {
        self.get(&format!("/v1/datums/{id}")).await["datum"].clone()
    }

    async fn tick(&self) {
        Babysitter::default().tick(&self.state).await.unwrap();
    }
}

fn datum_id(reservation: &Value) -> i64 {
    reservation["datum_id"]
        .as_i64()
        .or_else(|| reservation["reserved"]["datum_id"].as_i64())
        .unwrap_or_else(|| panic!("no datum reserved: {reservation}"))
}

/// Submitting a job creates its Kubernetes Job (parallelism capped by the
/// datums) and its Secret; the Job the API server accepted validates.
#[tokio::test]
async fn a_job_runs_as_a_kubernetes_job() {
    for db in TestDb::all() {
        let server = Server::new(db);
        let (id, token) = server.submit(&[("a.txt", "a")], json!({})).await;
        assert_eq!(token.len(), 64);
        let jobs = server.fake.jobs.lock().unwrap().clone();
        assert_eq!(jobs.len(), 1);
        let job = jobs.values().next().unwrap();
        assert_eq!(
            job["metadata"]["labels"]["falconeri.io/job-id"],
            id.to_string()
        );
        assert_eq!(job["spec"]["parallelism"], 1, "one datum, one worker");
        let parsed: Job = serde_json::from_value(job.clone()).unwrap();
        assert!(parsed.spec.is_some());
        // The babysitter leaves a healthy pool alone.
        server.fake.add_pod(id, "k8s-test-1", running());
        server.tick().await;
        assert_eq!(
            server.get(&format!("/v1/jobs/{id}")).await["status"],
            "running"
        );
        assert_eq!(server.fake.jobs.lock().unwrap().len(), 1);
    }
}

/// Pods ended by the infrastructure (OOM, eviction, preemption) give their
/// datum back without using up a try, and record why on the datum; the
/// third such failure fails the datum, so it cannot loop forever.
#[tokio::test]
async fn pod_failures_do_not_use_up_tries_but_are_bounded() {
    for db in TestDb::all() {
        let server = Server::new(db);
        let (id, token) = server.submit(&[("a.txt", "a")], json!({})).await;

        for (round, (pod, status, reason)) in [
            ("pod-oom", oom_killed(), "OOMKilled"),
            ("pod-evicted", evicted(), "Evicted"),
            ("pod-preempted", preempted(), "Preempted"),
        ]
        .into_iter()
        .enumerate()
        {
            let reservation = server.reserve(id, &token, pod).await;
            let datum = datum_id(&reservation);
            server.fake.add_pod(id, pod, status);
            server.tick().await;
            let shown = server.datum(datum).await;
            let message = shown["error_message"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            assert!(message.contains(reason), "{shown}");
            assert!(message.contains(pod), "{shown}");
            if round < 2 {
                // datum_tries is 1, yet the datum is ready again.
                assert_eq!(shown["status"], "ready", "{shown}");
                assert_eq!(shown["interrupted"], round + 1, "{shown}");
            } else {
                // The failure that fails the datum is not an interruption.
                assert_eq!(shown["status"], "error", "{shown}");
                assert_eq!(shown["interrupted"], 2, "{shown}");
                assert!(message.contains("failed 3 times"), "{shown}");
            }
        }
        // With its only datum failed, the job ends and its Job is deleted.
        server.tick().await;
        let job = server.get(&format!("/v1/jobs/{id}")).await;
        assert_eq!(job["status"], "error", "{job}");
        assert!(server.fake.jobs.lock().unwrap().is_empty());
    }
}

/// A datum whose pod is gone without a trace (force-deleted) comes back at
/// once, without using up a try; one whose pod runs is left alone.
#[tokio::test]
async fn a_vanished_pod_gives_its_datum_back() {
    for db in TestDb::all() {
        let server = Server::new(db);
        let (id, token) = server
            .submit(&[("a.txt", "a"), ("b.txt", "b")], json!({}))
            .await;
        let alive = datum_id(&server.reserve(id, &token, "pod-alive").await);
        server.fake.add_pod(id, "pod-alive", running());
        let ghost = datum_id(&server.reserve(id, &token, "pod-ghost").await);
        server.tick().await;
        let shown = server.datum(ghost).await;
        assert_eq!(shown["status"], "ready", "{shown}");
        assert_eq!(shown["interrupted"], 1, "{shown}");
        assert!(
            shown["error_message"]
                .as_str()
                .unwrap()
                .contains("vanished"),
            "{shown}"
        );
        let shown = server.datum(alive).await;
        assert_eq!(shown["status"], "running", "{shown}");
        assert_eq!(shown["owner"], "pod-alive", "{shown}");
    }
}

/// A worker that exits on its own (crashes) uses up a try, as everywhere.
#[tokio::test]
async fn a_crashed_worker_uses_up_a_try() {
    for db in TestDb::all() {
        let server = Server::new(db);
        let (id, token) = server
            .submit(&[("a.txt", "a")], json!({ "datum_tries": 2 }))
            .await;
        let datum = datum_id(&server.reserve(id, &token, "pod-crashed").await);
        server.fake.add_pod(id, "pod-crashed", crashed());
        server.tick().await;
        let shown = server.datum(datum).await;
        assert_eq!(shown["status"], "ready", "{shown}");
        assert_eq!(shown["interrupted"], 0, "{shown}");
        assert!(
            shown["error_message"].as_str().unwrap().contains("exited"),
            "{shown}"
        );
    }
}

/// A pool whose workers all exited successfully while work remains (they
/// were stopped gracefully, gave their datums back, and a Job starts no
/// pods after a success) is followed by a new generation.
#[tokio::test]
async fn a_pool_that_completed_with_work_left_is_started_again() {
    for db in TestDb::all() {
        let server = Server::new(db);
        let (id, token) = server.submit(&[("a.txt", "a")], json!({})).await;
        let reservation = server.reserve(id, &token, "pod-a").await;
        let datum = datum_id(&reservation);
        let (status, body) = call(
            &server.app,
            Method::POST,
            &format!("/v1/datums/{datum}/release"),
            Some(&token),
            Some(json!({ "claim": reservation["claim"], "reason": "worker stopped (SIGTERM)" })),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        server
            .fake
            .add_pod(id, "pod-a", json!({ "phase": "Succeeded" }));
        server
            .fake
            .set_job_condition("Complete", "CompletionsReached", "");
        server.tick().await;
        let mut names: Vec<String> = server.fake.jobs.lock().unwrap().keys().cloned().collect();
        names.sort();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names[1].ends_with(&format!("-{id}-1")), "{names:?}");
        assert_eq!(server.fake.secrets.lock().unwrap().len(), 2);
        assert_eq!(
            server.get(&format!("/v1/jobs/{id}")).await["status"],
            "running"
        );
        // The new pool is active: nothing more is started.
        server.tick().await;
        assert_eq!(server.fake.jobs.lock().unwrap().len(), 2);
    }
}

/// A job whose Kubernetes Job was deleted behind falconeri's back fails,
/// saying so.
#[tokio::test]
async fn a_vanished_job_fails_the_job() {
    for db in TestDb::all() {
        let server = Server::new(db);
        let (id, _) = server.submit(&[("a.txt", "a")], json!({})).await;
        server.fake.jobs.lock().unwrap().clear();
        server.tick().await;
        let job = server.get(&format!("/v1/jobs/{id}")).await;
        assert_eq!(job["status"], "error", "{job}");
        assert!(
            job["error_message"]
                .as_str()
                .unwrap()
                .contains("disappeared"),
            "{job}"
        );
    }
}

/// A Kubernetes Job that failed (here: past its activeDeadlineSeconds)
/// fails the job with Kubernetes' reason, and is deleted.
#[tokio::test]
async fn a_failed_kubernetes_job_fails_the_job() {
    for db in TestDb::all() {
        let server = Server::new(db);
        let (id, _) = server
            .submit(&[("a.txt", "a")], json!({ "job_timeout": "1h" }))
            .await;
        server.fake.set_job_condition(
            "Failed",
            "DeadlineExceeded",
            "Job was active longer than specified deadline",
        );
        server.tick().await;
        let job = server.get(&format!("/v1/jobs/{id}")).await;
        assert_eq!(job["status"], "error", "{job}");
        let message = job["error_message"].as_str().unwrap();
        assert!(message.contains("DeadlineExceeded"), "{job}");
        assert!(server.fake.jobs.lock().unwrap().is_empty());
        let deletes = server.fake.requests("DELETE");
        assert_eq!(deletes[0].body["propagationPolicy"], "Background");
    }
}

/// A job whose every worker pod cannot pull its image fails once they have
/// been stuck for the start timeout, naming the reason; younger stuck pods
/// are given time.
#[tokio::test]
async fn workers_that_cannot_start_fail_the_job() {
    for db in TestDb::all() {
        let server = Server::new(db);
        let (id, _) = server.submit(&[("a.txt", "a")], json!({})).await;
        server.fake.add_pod(
            id,
            "pod-stuck",
            json!({ "phase": "Pending", "containerStatuses": [{
                "name": "worker", "ready": false, "restartCount": 0, "image": "alpine", "imageID": "",
                "state": { "waiting": { "reason": "ImagePullBackOff",
                    "message": "Back-off pulling image \"alpine\"" } } }] }),
        );
        let set_created = |when: String| {
            server
                .fake
                .pods
                .lock()
                .unwrap()
                .get_mut("pod-stuck")
                .unwrap()["metadata"]["creationTimestamp"] = json!(when);
        };
        set_created(k8s_openapi::jiff::Timestamp::now().to_string());
        server.tick().await;
        assert_eq!(
            server.get(&format!("/v1/jobs/{id}")).await["status"],
            "running"
        );

        set_created("2020-01-01T00:00:00Z".to_owned());
        server.tick().await;
        let job = server.get(&format!("/v1/jobs/{id}")).await;
        assert_eq!(job["status"], "error", "{job}");
        let message = job["error_message"].as_str().unwrap();
        assert!(message.contains("ImagePullBackOff"), "{job}");
        assert!(message.contains("pod-stuck"), "{job}");
    }
}

/// Canceling a job deletes its Kubernetes Job (background propagation).
#[tokio::test]
async fn cancel_deletes_the_kubernetes_job() {
    for db in TestDb::all() {
        let server = Server::new(db);
        let (id, _) = server.submit(&[("a.txt", "a")], json!({})).await;
        let (status, body) = call(
            &server.app,
            Method::POST,
            &format!("/v1/jobs/{id}/cancel"),
            Some(ADMIN),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(server.fake.jobs.lock().unwrap().is_empty());
        let deletes = server.fake.requests("DELETE");
        assert_eq!(deletes.len(), 1, "{deletes:?}");
        assert_eq!(deletes[0].body["propagationPolicy"], "Background");
    }
}
