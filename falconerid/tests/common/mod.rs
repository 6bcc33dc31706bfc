//! Test helpers: a falconerid app on a fresh database with a recording
//! executor, and a small request helper for `oneshot`.

#![allow(clippy::unwrap_used)]
#![allow(dead_code)]

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex},
};

use anyhow::Result;
use async_trait::async_trait;
use axum::{
    Router,
    body::Body,
    http::{Method, Request, StatusCode, header},
};
use falconeri_common::db::testing::TestDb;
use falconerid::{
    AppState, Config, app,
    executor::{Executor, WorkerLaunch, WorkerState},
};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

pub const ADMIN: &str = "admin-token-for-tests-0123456789";

/// An executor that records what the server asked of it; tests set which
/// workers it reports.
#[derive(Default)]
pub struct RecordingExecutor {
    pub started: Mutex<Vec<(i64, u32)>>,
    pub stopped: Mutex<Vec<i64>>,
    pub launches: Mutex<Vec<WorkerLaunch>>,
    pub workers: Mutex<HashMap<i64, Vec<WorkerState>>>,
    /// When set, starting workers fails.
    pub fail_starts: std::sync::atomic::AtomicBool,
    /// Starts and stops in the order they happened: `start N` / `stop N`.
    pub events: Mutex<Vec<String>>,
    /// Stopping workers waits for this lock: a test holds it to keep a
    /// wind-down in the middle.
    pub stop_gate: tokio::sync::Mutex<()>,
    /// Stops asked for so far, counted before waiting on `stop_gate`.
    pub stops_begun: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl Executor for RecordingExecutor {
    fn name(&self) -> &'static str {
        "recording"
    }
    async fn start_workers(&self, launch: &WorkerLaunch, count: u32) -> Result<()> {
        if self.fail_starts.load(std::sync::atomic::Ordering::SeqCst) {
            anyhow::bail!("no room for workers");
        }
        self.started.lock().unwrap().push((launch.job_id, count));
        let event = format!("start {}", launch.job_id);
        self.events.lock().unwrap().push(event);
        self.launches.lock().unwrap().push(launch.clone());
        Ok(())
    }
    async fn stop_workers(&self, job_id: i64) -> Result<()> {
        self.stops_begun
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let _gate = self.stop_gate.lock().await;
        self.stopped.lock().unwrap().push(job_id);
        self.events.lock().unwrap().push(format!("stop {job_id}"));
        Ok(())
    }
    async fn workers(&self, job_id: i64) -> Result<Vec<WorkerState>> {
        Ok(self
            .workers
            .lock()
            .unwrap()
            .get(&job_id)
            .cloned()
            .unwrap_or_default())
    }
}

/// A server on one fresh database.
pub struct TestServer {
    pub db: TestDb,
    pub state: AppState,
    pub executor: Arc<RecordingExecutor>,
    pub app: Router,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    pub fn new(db: TestDb) -> TestServer {
        let pool = db.pool.clone();
        TestServer::with_pool(db, pool)
    }

    /// A server on `db` that reaches it through `pool` (a pool of its own
    /// settings, or over another route).
    pub fn with_pool(db: TestDb, pool: falconeri_common::db::DbPool) -> TestServer {
        TestServer::configured(db, pool, |_, _| {})
    }

    /// A server on `db` whose settings `configure` changes (it gets them
    /// and the server's own temporary directory).
    pub fn configured(
        db: TestDb,
        pool: falconeri_common::db::DbPool,
        configure: impl FnOnce(&mut Config, &Path),
    ) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::local(dir.path(), ADMIN.to_owned(), vec!["unused".into()]);
        config.database_url = db.url.clone();
        config.max_wait = std::time::Duration::from_secs(5);
        configure(&mut config, dir.path());
        let executor = Arc::new(RecordingExecutor::default());
        let state = AppState::new(config, pool, executor.clone());
        let app = app(state.clone());
        TestServer {
            db,
            state,
            executor,
            app,
            dir,
        }
    }

    /// One server per database backend.
    pub fn all() -> Vec<TestServer> {
        TestDb::all().into_iter().map(TestServer::new).collect()
    }

    /// Sends a request; answers the status and the JSON body (Null if none).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        call(&self.app, method, path, token, body).await
    }

    /// Writes `files` (relative path → contents) into a new input directory
    /// and returns a spec reading it, one datum per top-level entry.
    pub fn spec_with_inputs(&self, files: &[(&str, &str)], extra: Value) -> Value {
        let input = self
            .dir
            .path()
            .join(format!("in-{}", rand::random::<u32>()));
        write_files(&input, files);
        let egress = self.dir.path().join("out");
        let mut spec = serde_json::json!({
            "pipeline": { "name": "http-test" },
            "transform": { "cmd": ["true"], "image": "alpine" },
            "parallelism_spec": { "constant": 2 },
            "resource_requests": { "memory": "64Mi", "cpu": 0.1 },
            "input": { "atom": { "URI": format!("file://{}/", input.display()), "repo": "in", "glob": "/*" } },
            "egress": { "URI": format!("file://{}/", egress.display()) }
        });
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            for (key, value) in extra {
                spec.insert(key.clone(), value.clone());
            }
        }
        spec
    }
}

pub fn write_files(root: &Path, files: &[(&str, &str)]) {
    for (path, contents) in files {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }
}

pub async fn call(
    app: &Router,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = match body {
        Some(body) => request
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap(),
        None => request.body(Body::empty()).unwrap(),
    };
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            panic!(
                "{status}: body is not JSON: {}",
                String::from_utf8_lossy(&bytes)
            )
        })
    };
    (status, value)
}
