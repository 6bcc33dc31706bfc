//! `falconeri deploy` and `undeploy` through the built binary against a fake
//! Kubernetes API server on loopback, which the CLI finds through a
//! KUBECONFIG file the test writes. The fake stores objects by URL path,
//! records every request, and answers like the API server does for the
//! calls deploy makes (GET, server-side apply PATCH, DELETE, with `Status`
//! bodies for errors). It is no real API server: it does not merge applied
//! fields or run garbage collection, so the tests check what the CLI *sends*.

mod support;

use std::{
    collections::BTreeMap,
    process::Output,
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    body::{Body, to_bytes},
    http::{Method, Request, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

/// One request the fake received.
#[derive(Clone, Debug)]
struct Recorded {
    method: Method,
    path: String,
    query: String,
    content_type: String,
    body: Value,
}

#[derive(Default)]
struct State {
    /// Objects by URL path, such as `/apis/apps/v1/namespaces/ns/deployments/x`.
    objects: BTreeMap<String, Value>,
    requests: Vec<Recorded>,
    /// Requests whose path contains this are refused with 403.
    forbidden: Option<String>,
    next_uid: u64,
}

type Shared = Arc<Mutex<State>>;

fn lock(state: &Shared) -> std::sync::MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A `metav1.Status` failure, the body the API server sends with errors.
fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    (code, axum::Json(body)).into_response()
}

async fn handle(state: axum::extract::State<Shared>, request: Request<Body>) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = to_bytes(body, usize::MAX).await.unwrap_or_default();
    let recorded = Recorded {
        method: parts.method.clone(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        content_type: parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    };
    let mut state = lock(&state);
    state.requests.push(recorded.clone());
    let path = recorded.path.clone();
    if state
        .forbidden
        .as_ref()
        .is_some_and(|part| path.contains(part.as_str()))
    {
        return status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "the fake forbids this (as RBAC would)",
        );
    }
    match recorded.method {
        Method::GET if recorded.query.contains("labelSelector=") => {
            axum::Json(list(&state, &parts.uri)).into_response()
        }
        Method::GET => match state.objects.get(&path) {
            Some(object) => axum::Json(object.clone()).into_response(),
            None => status(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("{path} not found"),
            ),
        },
        Method::PATCH => {
            // Like the API server: the applied object, plus what the server
            // owns. The uid survives a re-apply.
            let uid = match state.objects.get(&path) {
                Some(existing) => existing["metadata"]["uid"].clone(),
                None => {
                    state.next_uid += 1;
                    json!(format!("uid-{}", state.next_uid))
                }
            };
            let mut object = recorded.body.clone();
            object["metadata"]["uid"] = uid;
            state.objects.insert(path, object.clone());
            axum::Json(object).into_response()
        }
        Method::DELETE => match state.objects.remove(&path) {
            Some(object) => axum::Json(object).into_response(),
            None => status(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("{path} not found"),
            ),
        },
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "the fake does not do that",
        ),
    }
}

/// A list of the objects directly under the collection `uri` names whose
/// labels match its `labelSelector` (equality terms only, as deploy sends).
fn list(state: &State, uri: &axum::http::Uri) -> Value {
    let query: axum::extract::Query<std::collections::HashMap<String, String>> =
        axum::extract::Query::try_from_uri(uri).expect("query");
    let selector = query.get("labelSelector").cloned().unwrap_or_default();
    let prefix = format!("{}/", uri.path());
    let items: Vec<Value> = state
        .objects
        .iter()
        .filter(|(path, _)| {
            path.strip_prefix(&prefix)
                .is_some_and(|rest| !rest.contains('/'))
        })
        .map(|(_, object)| object.clone())
        .filter(|object| {
            selector.split(',').all(|term| {
                let (key, value) = term.split_once('=').expect("key=value");
                object["metadata"]["labels"][key] == value
            })
        })
        .collect();
    json!({ "kind": "List", "apiVersion": "v1", "metadata": {}, "items": items })
}

/// The fake API server and a kubeconfig pointing at it.
struct Fake {
    state: Shared,
    dir: tempfile::TempDir,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Fake {
    async fn start() -> Fake {
        let state = Shared::default();
        let app = Router::new().fallback(handle).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let address = listener.local_addr().expect("address");
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("fake API server");
        });
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = format!(
            "apiVersion: v1
kind: Config
clusters:
  - name: fake
    cluster:
      server: http://{address}
users:
  - name: fake
    user:
      token: fake-token
contexts:
  - name: fake
    context:
      cluster: fake
      user: fake
current-context: fake
"
        );
        std::fs::write(dir.path().join("kubeconfig"), kubeconfig).expect("write kubeconfig");
        Fake { state, dir, server }
    }

    /// Runs the CLI with `args` against this fake.
    async fn falconeri(&self, args: &[&str]) -> Output {
        tokio::process::Command::from(support::falconeri_command())
            .args(args)
            .env("KUBECONFIG", self.dir.path().join("kubeconfig"))
            .env("HOME", self.dir.path())
            .env("FALCONERI_HOME", self.dir.path().join("falconeri"))
            .output()
            .await
            .expect("the falconeri binary runs")
    }

    /// Runs the CLI and checks that it succeeded; returns its stdout.
    async fn run_ok(&self, args: &[&str]) -> String {
        let output = self.falconeri(args).await;
        assert!(
            output.status.success(),
            "falconeri {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Takes the requests recorded so far.
    fn take_requests(&self) -> Vec<Recorded> {
        std::mem::take(&mut lock(&self.state).requests)
    }

    fn object(&self, path: &str) -> Option<Value> {
        lock(&self.state).objects.get(path).cloned()
    }

    fn paths(&self) -> Vec<String> {
        lock(&self.state).objects.keys().cloned().collect()
    }
}

const NS: &str = "fake-ns";

fn core(plural: &str, name: &str) -> String {
    format!("/api/v1/namespaces/{NS}/{plural}/{name}")
}

fn rbac(plural: &str, name: &str) -> String {
    format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{NS}/{plural}/{name}")
}

fn apps(plural: &str, name: &str) -> String {
    format!("/apis/apps/v1/namespaces/{NS}/{plural}/{name}")
}

/// Every object of `deploy --development`, by path, in the order applied.
fn development_paths() -> Vec<String> {
    vec![
        format!("/api/v1/namespaces/{NS}"),
        core("serviceaccounts", "falconerid"),
        rbac("roles", "falconerid"),
        rbac("rolebindings", "falconerid"),
        core("secrets", "falconeri"),
        core("secrets", "s3"),
        core("persistentvolumeclaims", "falconeri-postgres"),
        core("services", "falconeri-postgres"),
        core("services", "falconerid"),
        core("services", "falconeri-minio"),
        apps("deployments", "falconeri-postgres"),
        apps("deployments", "falconeri-minio"),
        apps("deployments", "falconerid"),
    ]
}

fn with_method(requests: &[Recorded], method: Method) -> Vec<Recorded> {
    requests
        .iter()
        .filter(|request| request.method == method)
        .cloned()
        .collect()
}

/// Checks that `request` is a forced server-side apply by `falconeri`.
fn assert_server_side_apply(request: &Recorded) {
    assert_eq!(
        request.content_type, "application/apply-patch+yaml",
        "{}",
        request.path
    );
    let query: Vec<&str> = request.query.split('&').collect();
    assert!(query.contains(&"fieldManager=falconeri"), "{request:?}");
    assert!(query.contains(&"force=true"), "{request:?}");
    // The body is the object itself, named like its URL.
    let name = request.body["metadata"]["name"].as_str().expect("name");
    assert!(request.path.ends_with(&format!("/{name}")), "{request:?}");
    assert_eq!(
        request.body["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "falconeri"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_applies_every_object_and_is_idempotent() {
    let fake = Fake::start().await;

    let stdout = fake
        .run_ok(&["deploy", "--namespace", NS, "--development"])
        .await;
    let first = fake.take_requests();
    let applied = with_method(&first, Method::PATCH);
    let paths: Vec<&str> = applied.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, development_paths());
    for request in &applied {
        assert_server_side_apply(request);
    }
    // Each Secret is looked up before it is made, and nothing is deleted.
    let reads: Vec<String> = with_method(&first, Method::GET)
        .into_iter()
        .map(|r| r.path)
        .collect();
    assert_eq!(
        reads,
        [
            format!("/api/v1/namespaces/{NS}"),
            core("secrets", "falconeri"),
            core("secrets", "s3")
        ]
    );
    assert!(with_method(&first, Method::DELETE).is_empty());
    assert_eq!(
        stdout
            .lines()
            .filter(|line| line.starts_with("applied "))
            .count(),
        13,
        "{stdout}"
    );
    assert!(
        stdout.contains("applied  Deployment/falconerid"),
        "{stdout}"
    );

    let secret = fake
        .object(&core("secrets", "falconeri"))
        .expect("the Secret was applied");
    let token = secret["stringData"]["token"].clone();
    let password = secret["stringData"]["database-password"].clone();
    assert_eq!(token.as_str().map(str::len), Some(64));
    let s3 = fake.object(&core("secrets", "s3")).expect("s3 Secret");
    let before: BTreeMap<String, Value> = fake
        .paths()
        .into_iter()
        .map(|path| {
            let object = fake.object(&path).expect("object");
            (path, object)
        })
        .collect();

    // Again, with JSON output: the same objects are applied with the same
    // content, and the namespace and the Secrets are kept, not regenerated.
    let stdout = fake
        .run_ok(&["deploy", "--namespace", NS, "--development", "-o", "json"])
        .await;
    let second = fake.take_requests();
    let reapplied = with_method(&second, Method::PATCH);
    let expected: Vec<String> = development_paths()
        .into_iter()
        .filter(|path| !path.contains("/secrets/") && *path != format!("/api/v1/namespaces/{NS}"))
        .collect();
    assert_eq!(
        reapplied.iter().map(|r| r.path.clone()).collect::<Vec<_>>(),
        expected
    );
    for request in &reapplied {
        assert_server_side_apply(request);
        let first_body = &applied
            .iter()
            .find(|r| r.path == request.path)
            .expect("applied the first time")
            .body;
        assert_eq!(
            &request.body, first_body,
            "{} changed between deploys",
            request.path
        );
    }
    let after: BTreeMap<String, Value> = fake
        .paths()
        .into_iter()
        .map(|path| {
            let object = fake.object(&path).expect("object");
            (path, object)
        })
        .collect();
    assert_eq!(before, after, "a second deploy changed the cluster");
    let secret = fake.object(&core("secrets", "falconeri")).expect("Secret");
    assert_eq!(secret["stringData"]["token"], token);
    assert_eq!(secret["stringData"]["database-password"], password);
    assert_eq!(fake.object(&core("secrets", "s3")), Some(s3));

    let steps: Value = serde_json::from_str(&stdout).expect("JSON steps");
    let steps = steps.as_array().expect("a list");
    assert_eq!(steps.len(), 13);
    let action = |kind: &str, name: &str| {
        steps
            .iter()
            .find(|step| step["kind"] == kind && step["name"] == name)
            .map(|step| step["action"].clone())
    };
    assert_eq!(action("Secret", "falconeri"), Some(json!("kept")));
    assert_eq!(action("Secret", "s3"), Some(json!("kept")));
    assert_eq!(action("Namespace", NS), Some(json!("kept")));
    assert_eq!(action("Deployment", "falconerid"), Some(json!("applied")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_secret_applies_no_secret() {
    let fake = Fake::start().await;
    fake.run_ok(&["deploy", "--namespace", NS, "--skip-secret"])
        .await;
    let requests = fake.take_requests();
    assert!(
        requests.iter().all(|r| !r.path.contains("/secrets/")),
        "{requests:?}"
    );
    assert_eq!(with_method(&requests, Method::PATCH).len(), 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_namespace_is_used_as_it_is() {
    let fake = Fake::start().await;
    let namespace = format!("/api/v1/namespaces/{NS}");
    let theirs = json!({ "apiVersion": "v1", "kind": "Namespace",
                         "metadata": { "name": NS, "labels": { "team": "data" } } });
    lock(&fake.state)
        .objects
        .insert(namespace.clone(), theirs.clone());
    let stdout = fake.run_ok(&["deploy", "--namespace", NS]).await;
    let requests = fake.take_requests();
    assert!(
        with_method(&requests, Method::PATCH)
            .iter()
            .all(|r| r.path != namespace),
        "the namespace was patched"
    );
    assert_eq!(fake.object(&namespace), Some(theirs));
    assert!(
        stdout.contains(&format!("kept     Namespace/{NS} (exists)")),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeploy_keeps_the_data_and_all_removes_it() {
    let fake = Fake::start().await;
    fake.run_ok(&["deploy", "--namespace", NS, "--development"])
        .await;
    fake.take_requests();

    let stdout = fake.run_ok(&["undeploy", "--namespace", NS]).await;
    let deletes = with_method(&fake.take_requests(), Method::DELETE);
    let deleted: Vec<&str> = deletes.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        deleted,
        [
            apps("deployments", "falconerid"),
            core("services", "falconerid"),
            apps("deployments", "falconeri-minio"),
            core("services", "falconeri-minio"),
            apps("deployments", "falconeri-postgres"),
            core("services", "falconeri-postgres"),
            rbac("rolebindings", "falconerid"),
            rbac("roles", "falconerid"),
            core("serviceaccounts", "falconerid"),
        ]
    );
    for request in &deletes {
        assert_eq!(
            request.body["propagationPolicy"], "Background",
            "{request:?}"
        );
    }
    assert_eq!(
        fake.paths(),
        [
            format!("/api/v1/namespaces/{NS}"),
            core("persistentvolumeclaims", "falconeri-postgres"),
            core("secrets", "falconeri"),
            core("secrets", "s3"),
        ],
        "undeploy keeps the namespace, the volume and the Secrets"
    );
    assert!(
        stdout.contains("deleted  Deployment/falconerid"),
        "{stdout}"
    );
    assert!(stdout.contains("undeploy --all"), "{stdout}");

    let stdout = fake.run_ok(&["undeploy", "--namespace", NS, "--all"]).await;
    assert_eq!(
        fake.paths(),
        [format!("/api/v1/namespaces/{NS}")],
        "--all deletes the data too, never the namespace"
    );
    assert!(
        stdout.contains("absent   Deployment/falconerid"),
        "{stdout}"
    );
    assert!(
        stdout.contains("deleted  PersistentVolumeClaim/falconeri-postgres"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeploy_all_keeps_secrets_it_did_not_make() {
    let fake = Fake::start().await;
    fake.run_ok(&["deploy", "--namespace", NS, "--skip-secret"])
        .await;
    // Secrets made by the user (CI, or real S3 credentials): no labels.
    for name in ["falconeri", "s3"] {
        lock(&fake.state).objects.insert(
            core("secrets", name),
            json!({ "apiVersion": "v1", "kind": "Secret",
                    "metadata": { "name": name, "namespace": NS } }),
        );
    }
    let stdout = fake.run_ok(&["undeploy", "--namespace", NS, "--all"]).await;
    assert!(fake.object(&core("secrets", "falconeri")).is_some());
    assert!(fake.object(&core("secrets", "s3")).is_some());
    assert!(
        stdout.contains("skipped  Secret/s3 (not made by falconeri deploy)"),
        "{stdout}"
    );
    assert!(
        fake.object(&core("persistentvolumeclaims", "falconeri-postgres"))
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_object_fails_deploy_with_the_servers_reason() {
    let fake = Fake::start().await;
    lock(&fake.state).forbidden = Some("/roles/".to_owned());
    let output = fake.falconeri(&["deploy", "--namespace", NS]).await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot apply Role/falconerid"), "{stderr}");
    assert!(stderr.contains("the fake forbids this"), "{stderr}");
    // It stopped there: nothing after the Role was sent.
    let requests = fake.take_requests();
    let last = requests.last().expect("requests");
    assert!(last.path.contains("/roles/"), "{last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_picks_the_kubeconfig_context() {
    let fake = Fake::start().await;
    fake.run_ok(&["deploy", "--namespace", NS, "--context", "fake"])
        .await;
    assert!(!fake.take_requests().is_empty());

    let output = fake
        .falconeri(&["deploy", "--namespace", NS, "--context", "elsewhere"])
        .await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("kubeconfig"), "{stderr}");
    assert!(fake.take_requests().is_empty(), "reached the wrong cluster");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_without_a_cluster_fails_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = tokio::process::Command::from(support::falconeri_command())
        .args(["deploy", "--namespace", NS])
        .env("KUBECONFIG", dir.path().join("missing"))
        .env("HOME", dir.path())
        .output()
        .await
        .expect("runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Kubernetes configuration"), "{stderr}");
    assert!(output.stdout.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_without_development_removes_minio() {
    let fake = Fake::start().await;
    fake.run_ok(&["deploy", "--namespace", NS, "--development"])
        .await;
    fake.take_requests();
    let stdout = fake.run_ok(&["deploy", "--namespace", NS]).await;
    let deleted: Vec<String> = with_method(&fake.take_requests(), Method::DELETE)
        .into_iter()
        .map(|r| r.path)
        .collect();
    assert_eq!(
        deleted,
        [
            apps("deployments", "falconeri-minio"),
            core("services", "falconeri-minio")
        ]
    );
    assert!(
        stdout.contains("deleted  Deployment/falconeri-minio"),
        "{stdout}"
    );
    // The s3 Secret stays: by now it may hold credentials of your own.
    assert!(fake.object(&core("secrets", "s3")).is_some());

    // Once gone, a plain deploy does not mention MinIO at all.
    let stdout = fake.run_ok(&["deploy", "--namespace", NS]).await;
    assert!(!stdout.contains("minio"), "{stdout}");
}

/// A batch Job in the fake, as falconerid's executor labels them (or not).
fn job(name: &str, labels: Value) -> (String, Value) {
    (
        format!("/apis/batch/v1/namespaces/{NS}/jobs/{name}"),
        json!({ "apiVersion": "batch/v1", "kind": "Job",
                "metadata": { "name": name, "namespace": NS, "labels": labels } }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeploy_deletes_the_worker_jobs_and_only_them() {
    let fake = Fake::start().await;
    fake.run_ok(&["deploy", "--namespace", NS]).await;
    let worker_labels = |id: &str| {
        json!({ "app.kubernetes.io/part-of": "falconeri",
                "app.kubernetes.io/managed-by": "falconeri",
                "app.kubernetes.io/component": "worker",
                "falconeri.io/job-id": id })
    };
    {
        let mut state = lock(&fake.state);
        for (path, object) in [
            job("word-frequencies-1", worker_labels("1")),
            job("word-frequencies-2", worker_labels("2")),
            job("someone-elses", json!({ "app": "other" })),
        ] {
            state.objects.insert(path, object);
        }
    }
    fake.take_requests();
    let stdout = fake.run_ok(&["undeploy", "--namespace", NS]).await;
    let deleted: Vec<String> = with_method(&fake.take_requests(), Method::DELETE)
        .into_iter()
        .map(|r| r.path)
        .filter(|path| path.contains("/jobs/"))
        .collect();
    assert_eq!(
        deleted,
        [
            job("word-frequencies-1", Value::Null).0,
            job("word-frequencies-2", Value::Null).0
        ]
    );
    assert!(fake.object(&job("someone-elses", Value::Null).0).is_some());
    assert!(
        stdout.contains("deleted  Job/word-frequencies-1"),
        "{stdout}"
    );
}
