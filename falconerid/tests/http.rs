//! The HTTP API through `app()` and `oneshot`, on SQLite and PostgreSQL:
//! auth, error shapes, the job lifecycle, the worker protocol (long-poll,
//! claims), cancel and retry, and the babysitter's rules.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use common::{ADMIN, TestServer};
use falconerid::{babysitter::Babysitter, executor::WorkerState};
use serde_json::{Value, json};

/// A worker's write to one of its datums: `POST /v1/datums/{id}/{action}`.
async fn post_datum(
    server: &TestServer,
    token: &str,
    datum_id: i64,
    action: &str,
    body: Value,
) -> (StatusCode, Value) {
    let path = format!("/v1/datums/{datum_id}/{action}");
    server
        .call(Method::POST, &path, Some(token), Some(body))
        .await
}

/// A reservation long-poll in the background; answers with how long it took.
fn spawn_reserve(
    app: &axum::Router,
    job_id: i64,
    token: &str,
    worker: &str,
    wait_ms: u64,
) -> tokio::task::JoinHandle<((StatusCode, Value), Duration)> {
    let (app, token) = (app.clone(), token.to_owned());
    let body = json!({ "worker_id": worker, "wait_ms": wait_ms });
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        let path = format!("/v1/jobs/{job_id}/reserve");
        let answer = common::call(&app, Method::POST, &path, Some(&token), Some(body)).await;
        (answer, started.elapsed())
    })
}

/// Writes an output file into a reservation's staging area, as a worker's
/// upload would, and returns its relative path.
fn stage(reservation: &Value, path: &str, contents: &str) -> String {
    let staging = reservation["staging_uri"].as_str().unwrap();
    let dir = std::path::PathBuf::from(staging.strip_prefix("file://").unwrap());
    common::write_files(&dir, &[(path, contents)]);
    path.to_owned()
}

fn three_texts() -> Vec<(&'static str, &'static str)> {
    vec![("a.txt", "a"), ("b.txt", "bb"), ("dir/c.txt", "ccc")]
}

/// `GET /v1/jobs/{id}` as the admin.
async fn get_job(server: &TestServer, id: i64) -> Value {
    let (status, job) = server
        .call(Method::GET, &format!("/v1/jobs/{id}"), Some(ADMIN), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{job}");
    job
}

/// `GET /v1/datums/{id}` as the admin.
async fn get_datum(server: &TestServer, id: i64) -> Value {
    let (status, datum) = server
        .call(Method::GET, &format!("/v1/datums/{id}"), Some(ADMIN), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{datum}");
    datum
}

async fn create(server: &TestServer, spec: Value) -> Value {
    let (status, job) = server
        .call(Method::POST, "/v1/jobs", Some(ADMIN), Some(spec))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    job
}

/// The worker token the executor was given for `job_id`.
fn worker_token(server: &TestServer, job_id: i64) -> String {
    server
        .executor
        .launches
        .lock()
        .unwrap()
        .iter()
        .find(|launch| launch.job_id == job_id)
        .map(|launch| launch.worker_token.clone())
        .expect("workers were launched")
}

async fn reserve(
    server: &TestServer,
    job_id: i64,
    token: &str,
    worker: &str,
    wait_ms: u64,
) -> (StatusCode, Value) {
    server
        .call(
            Method::POST,
            &format!("/v1/jobs/{job_id}/reserve"),
            Some(token),
            Some(json!({ "worker_id": worker, "wait_ms": wait_ms })),
        )
        .await
}

#[tokio::test]
async fn health_is_open_and_everything_else_needs_a_token() {
    for server in TestServer::all() {
        let (status, body) = server.call(Method::GET, "/healthz", None, None).await;
        assert_eq!(
            (status, body["status"].as_str()),
            (StatusCode::OK, Some("ok"))
        );
        let (status, _) = server.call(Method::GET, "/readyz", None, None).await;
        assert_eq!(status, StatusCode::OK);

        let (status, body) = server.call(Method::GET, "/v1/jobs", None, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["error"]["code"], "unauthorized");
        let (status, _) = server
            .call(Method::GET, "/v1/jobs", Some("wrong-token"), None)
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);

        let (status, body) = server
            .call(Method::GET, "/v1/version", Some(ADMIN), None)
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["database"], server.db.backend().name());
    }
}

#[tokio::test]
async fn bad_requests_get_json_errors_with_the_right_status() {
    for server in TestServer::all() {
        // A spec with problems: 400 naming each JSON path.
        let mut spec = server.spec_with_inputs(&three_texts(), json!({}));
        spec["transform"]["cmd"] = json!([]);
        spec["parallelism_spec"]["constant"] = json!(0);
        let (status, body) = server
            .call(Method::POST, "/v1/jobs", Some(ADMIN), Some(spec))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"]["code"], "invalid_spec");
        let paths: Vec<&str> = body["error"]["problems"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["path"].as_str())
            .collect();
        assert!(paths.contains(&"transform.cmd"), "{paths:?}");
        assert!(paths.contains(&"parallelism_spec.constant"), "{paths:?}");

        // Not JSON at all.
        let (status, body) = server
            .call(
                Method::POST,
                "/v1/jobs",
                Some(ADMIN),
                Some(json!("not a spec")),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

        // Inputs that don't exist: 400, not 500.
        let mut spec = server.spec_with_inputs(&three_texts(), json!({}));
        spec["input"]["atom"]["URI"] = json!("file:///no/such/dir/");
        let (status, body) = server
            .call(Method::POST, "/v1/jobs", Some(ADMIN), Some(spec))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("cannot list input")
        );

        let (status, body) = server
            .call(Method::GET, "/v1/jobs/424242", Some(ADMIN), None)
            .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("not_found"))
        );
        let (status, _) = server
            .call(Method::GET, "/v1/jobs/not-a-number", Some(ADMIN), None)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _) = server
            .call(Method::GET, "/v1/nothing-here", Some(ADMIN), None)
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = server
            .call(
                Method::POST,
                "/v1/jobs/1/reserve",
                Some(ADMIN),
                Some(json!({"nope": 1})),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
}

#[tokio::test]
async fn a_job_runs_through_the_worker_protocol() {
    for server in TestServer::all() {
        let job = create(&server, server.spec_with_inputs(&three_texts(), json!({}))).await;
        let id = job["id"].as_i64().unwrap();
        let name = job["name"].as_str().unwrap();
        assert_eq!(job["status"], "running");
        assert_eq!(
            job["datum_count"], 3,
            "a.txt, b.txt and dir/ are three datums"
        );
        assert!(name.starts_with("http-test-"));
        assert_eq!(*server.executor.started.lock().unwrap(), [(id, 2)]);

        let (status, found) = server
            .call(
                Method::GET,
                &format!("/v1/jobs/by-name/{name}"),
                Some(ADMIN),
                None,
            )
            .await;
        assert_eq!((status, found["id"].as_i64()), (StatusCode::OK, Some(id)));
        let (_, list) = server
            .call(Method::GET, "/v1/jobs", Some(ADMIN), None)
            .await;
        assert_eq!(list["jobs"][0]["id"].as_i64(), Some(id));

        let token = worker_token(&server, id);
        // A worker token can't use admin routes.
        let (status, _) = server
            .call(Method::GET, "/v1/jobs", Some(&token), None)
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN);

        let mut done = 0;
        loop {
            let (status, answer) = reserve(&server, id, &token, "w1", 1_000).await;
            assert_eq!(status, StatusCode::OK, "{answer}");
            if answer["status"] == "finished" {
                break;
            }
            assert_eq!(answer["status"], "reserved", "{answer}");
            assert_eq!(answer["cmd"], json!(["true"]));
            assert!(!answer["input_files"].as_array().unwrap().is_empty());
            let datum_id = answer["datum_id"].as_i64().unwrap();
            let claim = answer["claim"].clone();
            let (status, _) = post_datum(
                &server,
                &token,
                datum_id,
                "heartbeat",
                json!({ "claim": claim }),
            )
            .await;
            assert_eq!(status, StatusCode::OK);
            let staged = stage(&answer, &format!("{datum_id}.txt"), "hello");
            let body = json!({ "claim": claim, "output": "hello", "output_files": [{ "path": staged, "size": 5 }] });
            let (status, body) = post_datum(&server, &token, datum_id, "done", body).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            done += 1;
        }
        assert_eq!(done, 3);
        let job = get_job(&server, id).await;
        assert_eq!(job["status"], "done");

        let (_, described) = server
            .call(
                Method::GET,
                &format!("/v1/jobs/{id}/describe"),
                Some(ADMIN),
                None,
            )
            .await;
        assert_eq!(described["counts"]["done"], 3);
        let (_, datums) = server
            .call(
                Method::GET,
                &format!("/v1/jobs/{id}/datums?status=done"),
                Some(ADMIN),
                None,
            )
            .await;
        let datum_id = datums["datums"][0]["id"].as_i64().unwrap();
        let datum = get_datum(&server, datum_id).await;
        assert_eq!(datum["output"], "hello");
        assert_eq!(datum["output_files"].as_array().unwrap().len(), 1);
        let (status, _) = server
            .call(
                Method::GET,
                &format!("/v1/jobs/{id}/datums?status=bogus"),
                Some(ADMIN),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
}

#[tokio::test]
async fn worker_tokens_only_work_for_their_own_job() {
    for server in TestServer::all() {
        let a = create(&server, server.spec_with_inputs(&three_texts(), json!({}))).await;
        let b = create(&server, server.spec_with_inputs(&three_texts(), json!({}))).await;
        let (a, b) = (a["id"].as_i64().unwrap(), b["id"].as_i64().unwrap());
        let token_a = worker_token(&server, a);
        let (status, body) = reserve(&server, b, &token_a, "w", 0).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        let token_b = worker_token(&server, b);
        let (_, reserved) = reserve(&server, b, &token_b, "w", 0).await;
        let datum_b = reserved["datum_id"].as_i64().unwrap();
        let (status, _) = post_datum(
            &server,
            &token_a,
            datum_b,
            "done",
            json!({ "claim": reserved["claim"], "output": "" }),
        )
        .await;
        // The guarded write is scoped to the token's job, so another job's
        // datum is simply not there for this worker.
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}

/// A reservation waiting on an empty queue answers as soon as a datum
/// becomes ready (here: a failed attempt is requeued), not after a sleep.
#[tokio::test]
async fn reserve_long_poll_wakes_when_work_appears() {
    for server in TestServer::all() {
        let spec = server.spec_with_inputs(&[("only.txt", "x")], json!({ "datum_tries": 2 }));
        let job = create(&server, spec).await;
        let id = job["id"].as_i64().unwrap();
        let token = worker_token(&server, id);
        let (_, first) = reserve(&server, id, &token, "w1", 0).await;
        assert_eq!(first["status"], "reserved");

        // Nothing is ready; a second worker waits (up to 5 s)...
        let waiting = spawn_reserve(&server.app, id, &token, "w2", 5_000);
        tokio::time::sleep(Duration::from_millis(200)).await;
        // ...and the first worker's failure requeues the datum.
        let datum_id = first["datum_id"].as_i64().unwrap();
        let (status, _) = post_datum(
            &server,
            &token,
            datum_id,
            "error",
            json!({ "claim": first["claim"], "output": "oops", "error": "exit 1" }),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let ((status, second), elapsed) = waiting.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(second["status"], "reserved", "{second}");
        assert_eq!(second["claim"]["attempt"], 2);
        assert!(
            elapsed < Duration::from_secs(4),
            "woke by notification, took {elapsed:?}"
        );

        // An empty wait answers `wait`.
        let (_, answer) = reserve(&server, id, &token, "w3", 50).await;
        assert_eq!(answer["status"], "wait");
    }
}

#[tokio::test]
async fn stale_claims_get_409() {
    for server in TestServer::all() {
        let job = create(
            &server,
            server.spec_with_inputs(&[("x.txt", "x")], json!({ "datum_tries": 3 })),
        )
        .await;
        let id = job["id"].as_i64().unwrap();
        let token = worker_token(&server, id);
        let (_, first) = reserve(&server, id, &token, "old", 0).await;
        let datum_id = first["datum_id"].as_i64().unwrap();
        // The lease runs out (babysitter with the clock moved past it).
        Babysitter::with_clock_skew(60_000)
            .tick(&server.state)
            .await
            .unwrap();
        let (_, second) = reserve(&server, id, &token, "new", 0).await;
        assert_eq!(second["datum_id"].as_i64(), Some(datum_id));
        for (path, body) in [
            ("heartbeat", json!({ "claim": first["claim"] })),
            ("done", json!({ "claim": first["claim"], "output": "" })),
            (
                "error",
                json!({ "claim": first["claim"], "output": "", "error": "x" }),
            ),
        ] {
            let (status, answer) = post_datum(&server, &token, datum_id, path, body).await;
            assert_eq!(status, StatusCode::CONFLICT, "{path}: {answer}");
            assert_eq!(answer["error"]["code"], "conflict");
        }
    }
}

#[tokio::test]
async fn cancel_stops_workers_and_ends_reservations() {
    for server in TestServer::all() {
        let job = create(&server, server.spec_with_inputs(&three_texts(), json!({}))).await;
        let id = job["id"].as_i64().unwrap();
        let token = worker_token(&server, id);
        let (_, held) = reserve(&server, id, &token, "w", 0).await;
        let (status, canceled) = server
            .call(
                Method::POST,
                &format!("/v1/jobs/{id}/cancel"),
                Some(ADMIN),
                None,
            )
            .await;
        assert_eq!(
            (status, canceled["status"].as_str()),
            (StatusCode::OK, Some("canceled"))
        );
        assert!(server.executor.stopped.lock().unwrap().contains(&id));
        let (_, described) = server
            .call(
                Method::GET,
                &format!("/v1/jobs/{id}/describe"),
                Some(ADMIN),
                None,
            )
            .await;
        assert_eq!(described["counts"]["canceled"], 3);
        // The worker's heartbeat learns the datum is no longer its own.
        let datum_id = held["datum_id"].as_i64().unwrap();
        let (status, _) = post_datum(
            &server,
            &token,
            datum_id,
            "heartbeat",
            json!({ "claim": held["claim"] }),
        )
        .await;
        assert_eq!(status, StatusCode::CONFLICT);
        let (_, answer) = reserve(&server, id, &token, "w", 0).await;
        assert_eq!(answer["status"], "finished");
        let (status, _) = server
            .call(
                Method::POST,
                &format!("/v1/jobs/{id}/cancel"),
                Some(ADMIN),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::CONFLICT);
    }
}

#[tokio::test]
async fn retry_runs_only_the_failed_datums() {
    for server in TestServer::all() {
        let job = create(&server, server.spec_with_inputs(&three_texts(), json!({}))).await;
        let id = job["id"].as_i64().unwrap();
        let token = worker_token(&server, id);
        let (status, _) = server
            .call(
                Method::POST,
                &format!("/v1/jobs/{id}/retry"),
                Some(ADMIN),
                None,
            )
            .await;
        assert_eq!(
            status,
            StatusCode::CONFLICT,
            "a running job can't be retried"
        );
        let mut failed = 0;
        loop {
            let (_, answer) = reserve(&server, id, &token, "w", 1_000).await;
            if answer["status"] != "reserved" {
                break;
            }
            let datum_id = answer["datum_id"].as_i64().unwrap();
            let outcome = if failed == 0 { "error" } else { "done" };
            if failed == 0 {
                failed += 1;
            }
            let body = json!({ "claim": answer["claim"], "output": "", "error": "bad" });
            post_datum(&server, &token, datum_id, outcome, body).await;
        }
        let job = get_job(&server, id).await;
        assert_eq!(job["status"], "error");
        let (status, retried) = server
            .call(
                Method::POST,
                &format!("/v1/jobs/{id}/retry"),
                Some(ADMIN),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{retried}");
        assert_eq!(retried["datum_count"], 1);
        assert_eq!(retried["retry_of"].as_i64(), Some(id));
    }
}

#[tokio::test]
async fn babysitter_enforces_timeouts_retries_and_replaces_workers() {
    for server in TestServer::all() {
        let spec = server.spec_with_inputs(
            &[("x.txt", "x"), ("y.txt", "y")],
            json!({ "datum_tries": 2, "datum_timeout": "1m", "job_timeout": "1h" }),
        );
        let job = create(&server, spec).await;
        let id = job["id"].as_i64().unwrap();
        let token = worker_token(&server, id);

        // datum_timeout: each pass past the deadline fails one attempt.
        let (_, held) = reserve(&server, id, &token, "slow", 0).await;
        let datum_id = held["datum_id"].as_i64().unwrap();
        Babysitter::with_clock_skew(61_000)
            .tick(&server.state)
            .await
            .unwrap();
        let datum = get_datum(&server, datum_id).await;
        assert_eq!(datum["datum"]["status"], "ready", "one try left: {datum}");
        assert!(
            datum["datum"]["error_message"]
                .as_str()
                .unwrap()
                .contains("timed out")
        );

        // A worker the executor reports as exited loses its datum at once.
        let (_, held) = reserve(&server, id, &token, "gone", 0).await;
        server.executor.workers.lock().unwrap().insert(
            id,
            vec![WorkerState {
                id: "gone".into(),
                alive: false,
            }],
        );
        let starts_before = server.executor.started.lock().unwrap().len();
        Babysitter::default().tick(&server.state).await.unwrap();
        let datum_id = held["datum_id"].as_i64().unwrap();
        let datum = get_datum(&server, datum_id).await;
        assert!(
            datum["datum"]["error_message"]
                .as_str()
                .unwrap()
                .contains("exited"),
            "{datum}"
        );
        // ...and, with work left and no live worker, new workers start.
        let started = server.executor.started.lock().unwrap().clone();
        assert_eq!(started.len(), starts_before + 1, "{started:?}");
        assert_eq!(started.last(), Some(&(id, 2)), "{started:?}");

        // job_timeout: the job fails and its workers are stopped.
        Babysitter::with_clock_skew(2 * 3_600_000)
            .tick(&server.state)
            .await
            .unwrap();
        let job = get_job(&server, id).await;
        assert_eq!(job["status"], "error");
        assert!(job["error_message"].as_str().unwrap().contains("timed out"));
        assert!(server.executor.stopped.lock().unwrap().contains(&id));
    }
}

#[tokio::test]
async fn babysitter_expires_leases_until_tries_run_out_and_finishes_the_job() {
    for server in TestServer::all() {
        let job = create(
            &server,
            server.spec_with_inputs(&[("x.txt", "x")], json!({ "datum_tries": 2 })),
        )
        .await;
        let id = job["id"].as_i64().unwrap();
        let token = worker_token(&server, id);
        for attempt in 1..=2 {
            let (_, held) = reserve(&server, id, &token, "silent", 0).await;
            assert_eq!(held["claim"]["attempt"], attempt, "{held}");
            Babysitter::with_clock_skew(31_000)
                .tick(&server.state)
                .await
                .unwrap();
        }
        let job = get_job(&server, id).await;
        assert_eq!(job["status"], "error", "{job}");
        let (_, described) = server
            .call(
                Method::GET,
                &format!("/v1/jobs/{id}/describe"),
                Some(ADMIN),
                None,
            )
            .await;
        assert_eq!(described["failed"][0]["attempt"], 2);
        assert!(
            described["failed"][0]["error_message"]
                .as_str()
                .unwrap()
                .contains("lease expired")
        );
    }
}

#[tokio::test]
async fn progress_long_poll_answers_on_change() {
    for server in TestServer::all() {
        let job = create(
            &server,
            server.spec_with_inputs(&[("x.txt", "x")], json!({})),
        )
        .await;
        let id = job["id"].as_i64().unwrap();
        let (_, first) = server
            .call(
                Method::GET,
                &format!("/v1/jobs/{id}/progress"),
                Some(ADMIN),
                None,
            )
            .await;
        let generation = first["generation"].as_u64().unwrap();
        let waiting = {
            let app = server.app.clone();
            tokio::spawn(async move {
                common::call(
                    &app,
                    Method::GET,
                    &format!("/v1/jobs/{id}/progress?since={generation}&wait_ms=5000"),
                    Some(ADMIN),
                    None,
                )
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let token = worker_token(&server, id);
        reserve(&server, id, &token, "w", 0).await;
        let (status, next) = waiting.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert!(next["generation"].as_u64().unwrap() > generation);
        assert_eq!(next["counts"]["running"], 1);
    }
}

/// The whole path of a big job: listing 100,000 input files through
/// storage, planning, and the chunked inserts (the old falconeri broke past
/// PostgreSQL's 65,535 bind parameters).
#[tokio::test]
async fn a_job_of_100_000_input_files_is_accepted() {
    let inputs = tempfile::tempdir().unwrap();
    for dir in 0..100 {
        let dir_path = inputs.path().join(format!("d{dir:03}"));
        std::fs::create_dir(&dir_path).unwrap();
        for file in 0..1_000 {
            std::fs::write(dir_path.join(format!("f{file:04}.txt")), "").unwrap();
        }
    }
    for server in TestServer::all() {
        let mut spec = server.spec_with_inputs(&[], json!({}));
        spec["input"]["atom"]["URI"] = json!(format!("file://{}/", inputs.path().display()));
        let job = create(&server, spec).await;
        assert_eq!(job["datum_count"], 100, "{job}");
        let id = job["id"].as_i64().unwrap();
        let token = worker_token(&server, id);
        let (_, reserved) = reserve(&server, id, &token, "w", 0).await;
        assert_eq!(reserved["input_files"].as_array().unwrap().len(), 1_000);
        assert_eq!(
            reserved["input_files"][0]["local_path"],
            "in/d000/f0000.txt"
        );
    }
}

/// Outputs reach the egress only through the guarded `done` write: a stale
/// worker's staged files are never published, even after the new owner's.
#[tokio::test]
async fn a_stale_worker_never_publishes_outputs() {
    for server in TestServer::all() {
        let spec = server.spec_with_inputs(&[("x.txt", "x")], json!({ "datum_tries": 3 }));
        let egress = std::path::PathBuf::from(
            spec["egress"]["URI"]
                .as_str()
                .unwrap()
                .strip_prefix("file://")
                .unwrap(),
        );
        let job = create(&server, spec).await;
        let id = job["id"].as_i64().unwrap();
        let token = worker_token(&server, id);
        let (_, old) = reserve(&server, id, &token, "old", 0).await;
        let datum_id = old["datum_id"].as_i64().unwrap();
        let old_path = stage(&old, "result.txt", "stale");
        assert!(
            !egress.join("result.txt").exists(),
            "staged is not published"
        );

        Babysitter::with_clock_skew(60_000)
            .tick(&server.state)
            .await
            .unwrap();
        let (_, new) = reserve(&server, id, &token, "new", 0).await;
        assert_ne!(
            new["staging_uri"], old["staging_uri"],
            "attempts stage apart"
        );
        let new_path = stage(&new, "result.txt", "fresh");
        let (status, body) = post_datum(&server, &token, datum_id, "done", json!({ "claim": new["claim"], "output": "", "output_files": [{ "path": new_path, "size": 5 }] })).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            std::fs::read_to_string(egress.join("result.txt")).unwrap(),
            "fresh"
        );

        let (status, _) = post_datum(&server, &token, datum_id, "done", json!({ "claim": old["claim"], "output": "", "output_files": [{ "path": old_path, "size": 5 }] })).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(
            std::fs::read_to_string(egress.join("result.txt")).unwrap(),
            "fresh"
        );
        let datum = get_datum(&server, datum_id).await;
        assert_eq!(
            datum["output_files"][0]["uri"],
            format!(
                "file://{}/result.txt",
                egress.display().to_string().trim_end_matches('/')
            )
        );
    }
}

#[tokio::test]
async fn wrong_methods_and_unusable_egresses_get_json_errors() {
    // The S3 server scripts/test starts (it exports AWS_ENDPOINT_URL_S3 and
    // throwaway credentials); a bucket it does not have.
    assert!(
        std::env::var("FALCONERI_TEST_S3_ENDPOINT").is_ok(),
        "FALCONERI_TEST_S3_ENDPOINT is not set: run ./scripts/test, which starts an S3 server"
    );
    for server in TestServer::all() {
        let (status, body) = server
            .call(Method::GET, "/v1/jobs/1/reserve", Some(ADMIN), None)
            .await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(body["error"]["code"], "method_not_allowed");

        let mut spec = server.spec_with_inputs(&[("x.txt", "x")], json!({}));
        spec["egress"]["URI"] = json!("s3://falconeri-no-such-bucket/out/");
        let (status, body) = server
            .call(Method::POST, "/v1/jobs", Some(ADMIN), Some(spec))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("egress: cannot use s3://falconeri-no-such-bucket/out/"),
            "{body}"
        );
        // Nothing was created.
        let (_, jobs) = server
            .call(Method::GET, "/v1/jobs", Some(ADMIN), None)
            .await;
        assert_eq!(jobs["jobs"].as_array().map(Vec::len), Some(0), "{jobs}");
    }
}

/// Regression test: a worker's report with a full 1 MiB of binary-looking
/// output is several MB of JSON; axum's 2 MB default refused it.
#[tokio::test]
async fn big_worker_reports_are_accepted() {
    for server in TestServer::all() {
        let job = create(
            &server,
            server.spec_with_inputs(&[("x.txt", "x")], json!({})),
        )
        .await;
        let id = job["id"].as_i64().unwrap();
        let token = worker_token(&server, id);
        let (_, held) = reserve(&server, id, &token, "w", 0).await;
        let datum_id = held["datum_id"].as_i64().unwrap();
        let output = "\u{1}".repeat(1024 * 1024);
        let (status, body) = post_datum(
            &server,
            &token,
            datum_id,
            "done",
            json!({ "claim": held["claim"], "output": output }),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}

/// A job whose start was cut short stays `ready`; the babysitter takes it
/// over and starts its workers. Starting workers that keeps failing fails
/// the job instead of retrying forever.
#[tokio::test]
async fn babysitter_recovers_interrupted_starts_and_gives_up_on_failing_ones() {
    use falconeri_common::models::{Job, NewJobParams, db_now};
    for server in TestServer::all() {
        let spec = one_file_spec(&server);
        let job = server
            .state
            .db(move |conn| {
                let now = db_now(conn)?;
                let datums = [one_file_datum()];
                Job::create(
                    conn,
                    NewJobParams {
                        spec: &spec,
                        retry_of: None,
                        worker_token: "t0123",
                        name: "interrupted-aaaaa",
                    },
                    &datums,
                    now,
                )
            })
            .await
            .unwrap();
        // Fresh: left alone.
        Babysitter::default().tick(&server.state).await.unwrap();
        let (_, shown) = server
            .call(
                Method::GET,
                &format!("/v1/jobs/{}", job.id),
                Some(ADMIN),
                None,
            )
            .await;
        assert_eq!(shown["status"], "ready");
        // A minute later: taken over, and its workers are started.
        Babysitter::with_clock_skew(61_000)
            .tick(&server.state)
            .await
            .unwrap();
        let (_, shown) = server
            .call(
                Method::GET,
                &format!("/v1/jobs/{}", job.id),
                Some(ADMIN),
                None,
            )
            .await;
        assert_eq!(shown["status"], "running", "{shown}");
        Babysitter::default().tick(&server.state).await.unwrap();
        assert!(
            server
                .executor
                .started
                .lock()
                .unwrap()
                .iter()
                .any(|(id, _)| *id == job.id)
        );

        // Now the executor cannot start anything.
        server
            .executor
            .fail_starts
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let spec = server.spec_with_inputs(&[("y.txt", "y")], json!({}));
        let (status, _) = server
            .call(Method::POST, "/v1/jobs", Some(ADMIN), Some(spec))
            .await;
        assert_eq!(
            status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "a start that fails at once is reported"
        );
        let babysitter = Babysitter::default();
        for _ in 0..3 {
            babysitter.tick(&server.state).await.unwrap();
        }
        let (_, shown) = server
            .call(
                Method::GET,
                &format!("/v1/jobs/{}", job.id),
                Some(ADMIN),
                None,
            )
            .await;
        assert_eq!(shown["status"], "error", "{shown}");
        assert!(
            shown["error_message"]
                .as_str()
                .unwrap()
                .contains("cannot start workers"),
            "{shown}"
        );
    }
}

/// Two servers on one PostgreSQL database (replicas): a worker long-polling
/// on one wakes as soon as the other requeues a datum, through
/// LISTEN/NOTIFY, not at the end of its wait.
#[tokio::test]
async fn replicas_wake_each_others_long_polls() {
    use falconeri_common::db::{DbPool, testing::TestDb};
    let a = TestServer::new(TestDb::postgres());
    let job = create(
        &a,
        a.spec_with_inputs(&[("x.txt", "x")], json!({ "datum_tries": 2 })),
    )
    .await;
    let id = job["id"].as_i64().unwrap();
    let b = {
        let mut config =
            falconerid::Config::local(a.dir.path(), ADMIN.to_owned(), vec!["unused".into()]);
        config.database_url = a.db.url.clone();
        config.max_wait = Duration::from_secs(8);
        let pool = DbPool::connect(&a.db.url, 4).unwrap();
        let state = falconerid::AppState::new(config, pool, a.executor.clone());
        let cancel = tokio_util::sync::CancellationToken::new();
        // Subscribed to the job before the listener starts, so its first
        // wake-up (everything registered) counts.
        let changes = state.waiters(id).progress.subscribe();
        tokio::spawn(falconerid::listen::run(
            state.clone(),
            a.db.url.clone(),
            cancel.clone(),
        ));
        (falconerid::app(state.clone()), changes, cancel)
    };
    let (b_app, mut changes, b_cancel) = b;

    let token = worker_token(&a, id);
    let (_, first) = reserve(&a, id, &token, "w1", 0).await;
    assert_eq!(first["status"], "reserved");

    // Wait until B's listener is connected: its first act is to wake B's
    // long-polls once.
    tokio::time::timeout(Duration::from_secs(10), changes.changed())
        .await
        .unwrap()
        .unwrap();

    let waiting = spawn_reserve(&b_app, id, &token, "w2", 8_000);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let datum_id = first["datum_id"].as_i64().unwrap();
    let (status, _) = post_datum(
        &a,
        &token,
        datum_id,
        "error",
        json!({ "claim": first["claim"], "output": "", "error": "exit 1" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let ((status, second), elapsed) = waiting.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(second["status"], "reserved", "{second}");
    assert!(
        elapsed < Duration::from_secs(6),
        "woken by the other server, took {elapsed:?}"
    );
    b_cancel.cancel();
}

/// An attempt whose outputs cannot be published (here: an output whose name
/// is taken by a directory in the egress) fails with the reason, rather
/// than looking like a server hiccup the worker retries for minutes.
#[tokio::test]
async fn an_unpublishable_output_fails_the_attempt() {
    for server in TestServer::all() {
        let spec = server.spec_with_inputs(&[("x.txt", "x")], json!({ "datum_tries": 2 }));
        let egress = std::path::PathBuf::from(
            spec["egress"]["URI"]
                .as_str()
                .unwrap()
                .strip_prefix("file://")
                .unwrap(),
        );
        common::write_files(
            &egress,
            &[("result.txt/inside", "a directory is in the way")],
        );
        let job = create(&server, spec).await;
        let id = job["id"].as_i64().unwrap();
        let token = worker_token(&server, id);
        let (_, held) = reserve(&server, id, &token, "w", 0).await;
        let datum_id = held["datum_id"].as_i64().unwrap();
        let path = stage(&held, "result.txt", "out");
        let (status, body) = post_datum(&server, &token, datum_id, "done", json!({ "claim": held["claim"], "output": "", "output_files": [{ "path": path, "size": 3 }] })).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        let datum = get_datum(&server, datum_id).await;
        assert_eq!(datum["datum"]["status"], "ready", "one try left: {datum}");
        assert!(
            datum["datum"]["error_message"]
                .as_str()
                .unwrap()
                .contains("cannot publish"),
            "{datum}"
        );
        assert!(datum["output_files"].as_array().unwrap().is_empty());
    }
}

/// A stored spec of one input file, for tests that insert jobs through
/// the models.
fn one_file_spec(server: &TestServer) -> falconeri_common::pipeline::PipelineSpec {
    let spec = server.spec_with_inputs(&[("x.txt", "x")], json!({}));
    falconeri_common::pipeline::PipelineSpec::from_json(&spec.to_string()).unwrap()
}

/// A planned datum of one file.
fn one_file_datum() -> falconeri_common::plan::PlannedDatum {
    falconeri_common::plan::PlannedDatum {
        files: vec![falconeri_common::plan::PlannedFile {
            uri: "file:///x".into(),
            local_path: "in/x".into(),
            identity: String::new(),
        }],
    }
}

/// How many jobs, datums and input files the server's database holds.
async fn rows_of_jobs(server: &TestServer) -> (i64, i64, i64) {
    server
        .state
        .db(|conn| Ok(falconeri_common::db::testing::row_counts(conn)))
        .await
        .unwrap()
}

/// One datum of 12,000 files is inserted over several batches (its files
/// span them) and reads back whole and in order.
#[tokio::test]
async fn a_datum_of_12_000_files_spans_batches() {
    let inputs = tempfile::tempdir().unwrap();
    for file in 0..12_000 {
        std::fs::write(inputs.path().join(format!("f{file:05}")), "").unwrap();
    }
    for server in TestServer::all() {
        let mut spec = server.spec_with_inputs(&[], json!({}));
        spec["input"]["atom"]["URI"] = json!(format!("file://{}/", inputs.path().display()));
        spec["input"]["atom"]["glob"] = json!("/");
        let job = create(&server, spec).await;
        assert_eq!(job["datum_count"], 1, "{job}");
        let id = job["id"].as_i64().unwrap();
        let token = worker_token(&server, id);
        let (_, reserved) = reserve(&server, id, &token, "w", 0).await;
        let files = reserved["input_files"].as_array().unwrap();
        assert_eq!(files.len(), 12_000);
        for (n, file) in files.iter().enumerate() {
            assert_eq!(file["local_path"], format!("in/f{n:05}"));
        }
    }
}

/// A listing that fails after thousands of datums were already inserted
/// (the second input of a union does not exist) is a 400, and the
/// half-planned job is gone: no job, datum or input file is left.
#[tokio::test]
async fn a_job_whose_planning_fails_late_leaves_nothing() {
    let inputs = tempfile::tempdir().unwrap();
    for file in 0..12_000 {
        std::fs::write(inputs.path().join(format!("f{file:05}")), "").unwrap();
    }
    for server in TestServer::all() {
        let mut spec = server.spec_with_inputs(&[], json!({}));
        let good = format!("file://{}/", inputs.path().display());
        let missing = format!("file://{}/missing/", inputs.path().display());
        spec["input"] = json!({ "union": [
            { "atom": { "URI": good, "repo": "in", "glob": "/*" } },
            { "atom": { "URI": missing, "repo": "more", "glob": "/*" } },
        ]});
        let (status, body) = server
            .call(Method::POST, "/v1/jobs", Some(ADMIN), Some(spec))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("cannot list input more"),
            "{body}"
        );
        assert_eq!(
            rows_of_jobs(&server).await,
            (0, 0, 0),
            "jobs, datums, input files left behind"
        );
        assert!(server.executor.launches.lock().unwrap().is_empty());
    }
}

/// A job whose planner died (its lease ran out) is deleted by the
/// babysitter, never started; one still being planned is left alone.
#[tokio::test]
async fn babysitter_deletes_plans_whose_lease_ran_out() {
    use falconeri_common::models::{DatumBatch, Job, NewJobParams, db_now};
    for server in TestServer::all() {
        let spec = one_file_spec(&server);
        let job = server
            .state
            .db(move |conn| {
                let now = db_now(conn)?;
                let job = Job::begin_planning(
                    conn,
                    NewJobParams {
                        spec: &spec,
                        retry_of: None,
                        worker_token: "t-planning",
                        name: "half-planned-aaaaa",
                    },
                    now,
                    now + 30_000,
                )?;
                let batch = DatumBatch {
                    keys: Vec::new(),
                    continued_keys: None,
                    continued: Vec::new(),
                    known: Default::default(),
                    continued_known: None,
                    datums: vec![one_file_datum()],
                };
                Job::append_datums(conn, job.id, &batch, now, now + 30_000)?;
                Ok(job)
            })
            .await
            .unwrap();
        let path = format!("/v1/jobs/{}", job.id);
        // Within its lease, and even a minute on (when an unstarted ready
        // job would be taken over), a live plan is neither started nor
        // deleted... until its lease has run out.
        Babysitter::with_clock_skew(29_000)
            .tick(&server.state)
            .await
            .unwrap();
        let (status, shown) = server.call(Method::GET, &path, Some(ADMIN), None).await;
        assert_eq!(
            (status, shown["status"].as_str()),
            (StatusCode::OK, Some("ready"))
        );
        Babysitter::with_clock_skew(31_000)
            .tick(&server.state)
            .await
            .unwrap();
        let (status, _) = server.call(Method::GET, &path, Some(ADMIN), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(server.executor.launches.lock().unwrap().is_empty());
        assert_eq!(rows_of_jobs(&server).await, (0, 0, 0));
    }
}

/// Issue 9, defect 5: a refused report deleted the staging area its claim
/// named, so a claim naming another worker's attempt deleted that attempt's
/// staged outputs. A refusal now deletes only staging the attempt record
/// proves was the caller's and is over.
#[tokio::test]
async fn a_refused_report_never_deletes_another_attempts_staging() {
    for server in TestServer::all() {
        let spec = server.spec_with_inputs(&[("x.txt", "x")], json!({ "datum_tries": 3 }));
        let job = create(&server, spec).await;
        let id = job["id"].as_i64().unwrap();
        let token = worker_token(&server, id);
        let (_, first) = reserve(&server, id, &token, "first", 0).await;
        let datum_id = first["datum_id"].as_i64().unwrap();
        // The first attempt expires; a second worker holds attempt 2 and
        // has staged its output.
        Babysitter::with_clock_skew(60_000)
            .tick(&server.state)
            .await
            .unwrap();
        let (_, second) = reserve(&server, id, &token, "second", 0).await;
        assert_eq!(second["claim"]["attempt"], 2);
        stage(&second, "result.txt", "precious");
        let staged = std::path::PathBuf::from(
            second["staging_uri"]
                .as_str()
                .unwrap()
                .strip_prefix("file://")
                .unwrap(),
        )
        .join("result.txt");

        // The first worker reports with a claim naming attempt 2, which was
        // never its own: refused, and attempt 2's staging stays.
        let wrong = json!({ "worker_id": "first", "attempt": 2 });
        for (path, body) in [
            ("done", json!({ "claim": wrong, "output": "" })),
            (
                "error",
                json!({ "claim": wrong, "output": "", "error": "x" }),
            ),
            ("release", json!({ "claim": wrong, "reason": "x" })),
        ] {
            let (status, answer) = post_datum(&server, &token, datum_id, path, body).await;
            assert_eq!(status, StatusCode::CONFLICT, "{path}: {answer}");
        }
        // Its own, stale, attempt 1 is refused too, and its clean-up (a task)
        // touches only attempt 1's staging.
        let (status, _) = post_datum(
            &server,
            &token,
            datum_id,
            "done",
            json!({ "claim": first["claim"], "output": "" }),
        )
        .await;
        assert_eq!(status, StatusCode::CONFLICT);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            std::fs::read_to_string(&staged).unwrap(),
            "precious",
            "attempt 2's staged output survived every refused report"
        );
        // The datum still succeeds with it.
        let (status, body) = post_datum(&server, &token, datum_id, "done", json!({ "claim": second["claim"], "output": "", "output_files": [{ "path": "result.txt", "size": 8 }] })).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let datum = get_datum(&server, datum_id).await;
        let outcomes: Vec<&str> = datum["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["outcome"].as_str().unwrap())
            .collect();
        assert_eq!(outcomes, ["lease_expired", "done"], "{datum}");
    }
}

/// Issue 9, item 3: a change wakes only the long-polls it concerns. A
/// worker long-polling one job sleeps through a datum requeued in another
/// job, and wakes at once for its own.
#[tokio::test]
async fn wake_ups_are_targeted_at_the_job_that_changed() {
    for server in TestServer::all() {
        let quiet = create(
            &server,
            server.spec_with_inputs(&[("q.txt", "q")], json!({ "datum_tries": 2 })),
        )
        .await;
        let busy = create(
            &server,
            server.spec_with_inputs(&[("b.txt", "b")], json!({ "datum_tries": 2 })),
        )
        .await;
        let (quiet_id, busy_id) = (quiet["id"].as_i64().unwrap(), busy["id"].as_i64().unwrap());
        let (quiet_token, busy_token) = (
            worker_token(&server, quiet_id),
            worker_token(&server, busy_id),
        );
        let (_, held_quiet) = reserve(&server, quiet_id, &quiet_token, "q1", 0).await;
        let (_, held_busy) = reserve(&server, busy_id, &busy_token, "b1", 0).await;
        let waiters = server.state.waiters(quiet_id);
        let woken = waiters.ready.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        // The busy job's datum goes back to the queue: only its job hears.
        let busy_datum = held_busy["datum_id"].as_i64().unwrap();
        let (status, _) = post_datum(
            &server,
            &busy_token,
            busy_datum,
            "error",
            json!({ "claim": held_busy["claim"], "output": "", "error": "x" }),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            tokio::time::timeout(Duration::from_millis(300), &mut woken)
                .await
                .is_err(),
            "a requeue in another job woke this job's worker"
        );
        // Its own requeue wakes it.
        let quiet_datum = held_quiet["datum_id"].as_i64().unwrap();
        let (status, _) = post_datum(
            &server,
            &quiet_token,
            quiet_datum,
            "error",
            json!({ "claim": held_quiet["claim"], "output": "", "error": "x" }),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        tokio::time::timeout(Duration::from_secs(5), &mut woken)
            .await
            .expect("the job's own requeue wakes its waiting worker");
    }
}

/// Issue 9, item 4: a batch is reserved in one request and reported in
/// one; each datum keeps its own claim and outcome, and a refused or failed
/// report never changes another.
#[tokio::test]
async fn batches_are_reserved_and_reported_datum_by_datum() {
    for server in TestServer::all() {
        let inputs: Vec<(String, &str)> = (0..6).map(|i| (format!("f{i}.txt"), "x")).collect();
        let inputs: Vec<(&str, &str)> = inputs.iter().map(|(p, c)| (p.as_str(), *c)).collect();
        let job = create(
            &server,
            server.spec_with_inputs(&inputs, json!({ "datums_per_reservation": 4 })),
        )
        .await;
        let id = job["id"].as_i64().unwrap();
        let token = worker_token(&server, id);
        let (status, batch) = server
            .call(
                Method::POST,
                &format!("/v1/jobs/{id}/reserve"),
                Some(&token),
                Some(json!({ "worker_id": "w", "wait_ms": 0, "max_datums": 10 })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{batch}");
        assert_eq!(batch["status"], "batch", "{batch}");
        let reservations = batch["reservations"].as_array().unwrap().clone();
        assert_eq!(reservations.len(), 4, "capped at datums_per_reservation");
        let claims: Vec<Value> = reservations
            .iter()
            .map(|r| json!({ "datum_id": r["datum_id"], "claim": r["claim"] }))
            .collect();
        let (status, beat) = server
            .call(
                Method::POST,
                &format!("/v1/jobs/{id}/heartbeat"),
                Some(&token),
                Some(json!({ "claims": claims })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{beat}");
        assert_eq!(beat["held"].as_array().unwrap().len(), 4);

        let stale = json!({ "worker_id": "w", "attempt": 7 });
        let reports = json!({ "reports": [
            { "datum_id": reservations[0]["datum_id"], "claim": reservations[0]["claim"],
              "outcome": "done", "output": "ok" },
            { "datum_id": reservations[1]["datum_id"], "claim": reservations[1]["claim"],
              "outcome": "error", "output": "", "error": "boom", "exit_code": 3 },
            { "datum_id": reservations[2]["datum_id"], "claim": stale,
              "outcome": "done", "output": "" },
            { "datum_id": reservations[3]["datum_id"], "claim": reservations[3]["claim"],
              "outcome": "done", "output": "ok" },
        ]});
        let (status, answer) = server
            .call(
                Method::POST,
                &format!("/v1/jobs/{id}/report"),
                Some(&token),
                Some(reports),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        let results = answer["results"].as_array().unwrap();
        assert_eq!(results[0]["datum"]["status"], "done", "{answer}");
        assert_eq!(results[1]["datum"]["status"], "error", "{answer}");
        assert_eq!(results[2]["error"]["code"], "conflict", "{answer}");
        assert_eq!(results[3]["datum"]["status"], "done", "{answer}");
        // The datum of the refused report is still running, its claim intact.
        let refused = reservations[2]["datum_id"].as_i64().unwrap();
        let datum = get_datum(&server, refused).await;
        assert_eq!(datum["datum"]["status"], "running", "{datum}");
        let failed = reservations[1]["datum_id"].as_i64().unwrap();
        let datum = get_datum(&server, failed).await;
        assert_eq!(datum["attempts"][0]["outcome"], "error", "{datum}");
    }
}

/// Issue 9, defect 1: workers killed mid-job (after they reserved) were
/// counted as workers that cannot start, so a few kills failed the job and
/// canceled its datums. Crashed workers are replaced; only workers that die
/// before reserving anything count toward giving up.
#[tokio::test]
async fn crashed_workers_are_replaced_and_never_fail_the_job() {
    for server in TestServer::all() {
        let inputs: Vec<(String, &str)> = (0..40).map(|i| (format!("f{i}.txt"), "x")).collect();
        let inputs: Vec<(&str, &str)> = inputs.iter().map(|(p, c)| (p.as_str(), *c)).collect();
        let job = create(
            &server,
            server.spec_with_inputs(&inputs, json!({ "datum_tries": 5 })),
        )
        .await;
        let id = job["id"].as_i64().unwrap();
        let token = worker_token(&server, id);
        // Far more crashes than parallelism (2) × --worker-restarts (3):
        // each crashed worker had reserved a datum first.
        let mut dead = Vec::new();
        for n in 0..12 {
            let worker = format!("crash-{n}");
            let (_, held) = reserve(&server, id, &token, &worker, 0).await;
            assert_eq!(held["status"], "reserved", "{held}");
            dead.push(WorkerState {
                id: worker,
                alive: false,
            });
            server
                .executor
                .workers
                .lock()
                .unwrap()
                .insert(id, dead.clone());
            Babysitter::default().tick(&server.state).await.unwrap();
        }
        let job = get_job(&server, id).await;
        assert_eq!(job["status"], "running", "{job}");
        assert!(
            !server.executor.stopped.lock().unwrap().contains(&id),
            "the job was given up"
        );

        // Workers that die before reserving anything do fail it.
        for n in 0..7 {
            dead.push(WorkerState {
                id: format!("never-started-{n}"),
                alive: false,
            });
        }
        server
            .executor
            .workers
            .lock()
            .unwrap()
            .insert(id, dead.clone());
        Babysitter::default().tick(&server.state).await.unwrap();
        let job = get_job(&server, id).await;
        assert_eq!(job["status"], "error", "{job}");
        assert!(
            job["error_message"]
                .as_str()
                .unwrap()
                .contains("exited before reserving any datum"),
            "{job}"
        );
        // And a retry takes the datums the give-up canceled.
        let (status, retried) = server
            .call(
                Method::POST,
                &format!("/v1/jobs/{id}/retry"),
                Some(ADMIN),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{retried}");
        assert_eq!(retried["datum_count"], 40, "{retried}");
    }
}

/// Issue 9, item 6: a falconerid that dies between the two writes of a
/// `done` leaves the datum `publishing`; once the publishing lease runs out
/// the babysitter publishes the staged outputs and finishes the datum.
#[tokio::test]
async fn the_babysitter_finishes_publishing_a_crash_left_behind() {
    use falconeri_common::{
        api::NewOutputFile,
        models::{Clock, Completed, Datum, Report},
    };
    for server in TestServer::all() {
        let spec = server.spec_with_inputs(&[("x.txt", "x")], json!({}));
        let egress = std::path::PathBuf::from(
            spec["egress"]["URI"]
                .as_str()
                .unwrap()
                .strip_prefix("file://")
                .unwrap(),
        );
        let egress_uri = spec["egress"]["URI"].as_str().unwrap().to_owned();
        let job = create(&server, spec).await;
        let id = job["id"].as_i64().unwrap();
        let token = worker_token(&server, id);
        let (_, held) = reserve(&server, id, &token, "w", 0).await;
        let datum_id = held["datum_id"].as_i64().unwrap();
        stage(&held, "out/result.txt", "published by the babysitter");
        // The first phase only, as a server that died right after it.
        let claim: falconeri_common::api::Claim =
            serde_json::from_value(held["claim"].clone()).unwrap();
        let completed = server
            .state
            .db(move |conn| {
                let files = [NewOutputFile {
                    path: "out/result.txt".into(),
                    size: 27,
                }];
                Datum::complete(
                    conn,
                    datum_id,
                    &claim,
                    &Report::default(),
                    &files,
                    &egress_uri,
                    Clock::DB,
                    30_000,
                )
            })
            .await
            .unwrap();
        assert!(matches!(completed, Completed::Publishing(..)));
        // Within the lease nothing happens; after it, the babysitter
        // finishes the job's datum.
        Babysitter::default().tick(&server.state).await.unwrap();
        assert!(!egress.join("out/result.txt").exists());
        Babysitter::with_clock_skew(31_000)
            .tick(&server.state)
            .await
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(egress.join("out/result.txt")).unwrap(),
            "published by the babysitter"
        );
        let datum = get_datum(&server, datum_id).await;
        assert_eq!(datum["datum"]["status"], "done", "{datum}");
        assert_eq!(datum["attempts"][0]["outcome"], "done", "{datum}");
        assert_eq!(datum["output_files"].as_array().unwrap().len(), 1);
    }
}

/// Globs, a join and a group planned through the server, on both databases:
/// each datum's files, as its worker is handed them.
#[tokio::test]
async fn globs_joins_and_groups_are_planned_through_the_server() {
    let inputs = tempfile::tempdir().unwrap();
    let root = inputs.path();
    common::write_files(
        &root.join("readings"),
        &[("ID1.txt", "a"), ("ID2.txt", "b"), ("ID3.txt", "c")],
    );
    common::write_files(
        &root.join("parts"),
        &[
            ("x/part-1.csv", "d"),
            ("x/part-3.csv", "e"),
            ("y/part-1.csv", "f"),
        ],
    );
    common::write_files(
        &root.join("logs"),
        &[
            ("2024-01-a.log", "g"),
            ("2024-01-b.log", "h"),
            ("2024-02-a.log", "i"),
            ("2023-12-z.log", "j"),
        ],
    );
    let uri = |dir: &str| format!("file://{}/", root.join(dir).display());
    for server in TestServer::all() {
        let mut spec = server.spec_with_inputs(&[], json!({}));
        spec["input"] = json!({ "union": [
            { "join": [
                { "atom": { "URI": uri("readings"), "repo": "readings", "glob": "/ID(*).txt",
                            "join_on": "$1", "outer_join": true } },
                { "atom": { "URI": uri("parts"), "repo": "parts", "glob": "/*/part-(*).csv",
                            "join_on": "$1" } },
            ] },
            { "group": [
                { "atom": { "URI": uri("logs"), "repo": "logs", "glob": "/2024-(??)-*.log",
                            "group_by": "$1" } },
            ] },
            { "atom": { "URI": uri("logs"), "repo": "all", "glob": "/2024-*" } },
        ]});
        let job = create(&server, spec).await;
        let id = job["id"].as_i64().unwrap();
        let token = worker_token(&server, id);
        let mut datums = Vec::new();
        for n in 0..job["datum_count"].as_i64().unwrap() {
            let (status, reserved) = reserve(&server, id, &token, &format!("w{n}"), 0).await;
            assert_eq!(status, StatusCode::OK, "{reserved}");
            let files: Vec<String> = reserved["input_files"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["local_path"].as_str().unwrap().to_owned())
                .collect();
            datums.push(files);
        }
        assert_eq!(
            datums,
            vec![
                vec!["readings/ID1.txt", "parts/x/part-1.csv"],
                vec!["readings/ID1.txt", "parts/y/part-1.csv"],
                // Outer: ID2 has no part but is kept; part-3 has no reading.
                vec!["readings/ID2.txt"],
                vec!["readings/ID3.txt", "parts/x/part-3.csv"],
                vec!["logs/2024-01-a.log", "logs/2024-01-b.log"],
                vec!["logs/2024-02-a.log"],
                vec!["all/2024-01-a.log"],
                vec!["all/2024-01-b.log"],
                vec!["all/2024-02-a.log"],
            ],
            "{job}"
        );
    }
}

/// A join whose inputs match nothing is refused like any input without
/// files, and leaves no job behind.
#[tokio::test]
async fn a_join_without_matches_is_refused() {
    let inputs = tempfile::tempdir().unwrap();
    common::write_files(&inputs.path().join("a"), &[("1.txt", "x")]);
    common::write_files(&inputs.path().join("b"), &[("2.csv", "y")]);
    let uri = |dir: &str| format!("file://{}/", inputs.path().join(dir).display());
    for server in TestServer::all() {
        let mut spec = server.spec_with_inputs(&[], json!({}));
        spec["input"] = json!({ "join": [
            { "atom": { "URI": uri("a"), "repo": "a", "glob": "/(*).txt", "join_on": "$1" } },
            { "atom": { "URI": uri("b"), "repo": "b", "glob": "/(*).csv", "join_on": "$1" } },
        ]});
        let (status, body) = server
            .call(Method::POST, "/v1/jobs", Some(ADMIN), Some(spec))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("matched no files"),
            "{body}"
        );
        assert_eq!(rows_of_jobs(&server).await, (0, 0, 0));
    }
}

/// `done` with `next` reports a datum and reserves the worker's next one in
/// one round trip: the next datum comes with its own claim, a refused
/// report reserves nothing, and the report of the last datum answers
/// `finished`.
#[tokio::test]
async fn done_with_next_hands_out_the_next_datum() {
    for server in TestServer::all() {
        let inputs = [("a.txt", "a"), ("b.txt", "b"), ("c.txt", "c")];
        let job = create(&server, server.spec_with_inputs(&inputs, json!({}))).await;
        let id = job["id"].as_i64().unwrap();
        let token = worker_token(&server, id);
        let (_, first) = reserve(&server, id, &token, "w", 0).await;
        let first_id = first["datum_id"].as_i64().unwrap();

        let body = json!({ "claim": first["claim"], "output": "", "next": {} });
        let (status, answer) = post_datum(&server, &token, first_id, "done", body).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer["status"], "done", "{answer}");
        let next = &answer["next"];
        assert_eq!(next["status"], "reserved", "{answer}");
        let second_id = next["datum_id"].as_i64().unwrap();
        assert_ne!(second_id, first_id);
        assert_eq!(next["claim"]["worker_id"], "w", "{answer}");
        assert_eq!(next["claim"]["attempt"], 1, "{answer}");
        let datum = get_datum(&server, second_id).await;
        assert_eq!(datum["datum"]["status"], "running", "{datum}");

        // A stale report is refused and reserves nothing: the third datum
        // is still there for another worker.
        let body = json!({ "claim": first["claim"], "output": "", "next": {} });
        let (status, answer) = post_datum(&server, &token, first_id, "done", body).await;
        assert_eq!(status, StatusCode::CONFLICT, "{answer}");
        assert!(answer.get("next").is_none(), "{answer}");
        let (_, third) = reserve(&server, id, &token, "other", 0).await;
        assert_eq!(third["status"], "reserved", "{third}");
        let third_id = third["datum_id"].as_i64().unwrap();
        assert!(third_id != first_id && third_id != second_id);

        // Nothing ready while the third runs: `wait`, and the worker
        // long-polls `reserve` as usual.
        let body = json!({ "claim": next["claim"], "output": "", "next": {} });
        let (status, answer) = post_datum(&server, &token, second_id, "done", body).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer["next"]["status"], "wait", "{answer}");

        // Asked without `next`, the answer has none.
        let body = json!({ "claim": third["claim"], "output": "" });
        let (status, answer) = post_datum(&server, &token, third_id, "done", body).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert!(answer.get("next").is_none(), "{answer}");
        let (_, last) = reserve(&server, id, &token, "w", 0).await;
        assert_eq!(last["status"], "finished", "{last}");
        assert_eq!(get_job(&server, id).await["status"], "done");
    }
}

/// Many workers reporting with `next` at once: reports that arrive
/// together are settled in one group and their `next` reservations made in
/// one statement with them, and each worker still gets datums of its own,
/// under its own claim. Every datum runs exactly once.
#[tokio::test]
async fn concurrent_reports_with_next_each_get_their_own_datum() {
    for server in TestServer::all() {
        let inputs: Vec<(String, &str)> = (0..48).map(|i| (format!("f{i}.txt"), "x")).collect();
        let inputs: Vec<(&str, &str)> = inputs.iter().map(|(p, c)| (p.as_str(), *c)).collect();
        let job = create(&server, server.spec_with_inputs(&inputs, json!({}))).await;
        let id = job["id"].as_i64().unwrap();
        let token = worker_token(&server, id);
        let workers = (0..8).map(|w| {
            let (server, token) = (&server, token.clone());
            async move {
                let worker = format!("w{w}");
                let mut ran = Vec::new();
                let (_, mut current) = reserve(server, id, &token, &worker, 0).await;
                while current["status"] == "reserved" {
                    assert_eq!(current["claim"]["worker_id"], worker.as_str(), "{current}");
                    let datum_id = current["datum_id"].as_i64().unwrap();
                    ran.push(datum_id);
                    let body = json!({ "claim": current["claim"], "output": "", "next": {} });
                    let (status, answer) = post_datum(server, &token, datum_id, "done", body).await;
                    assert_eq!(status, StatusCode::OK, "{answer}");
                    current = answer["next"].clone();
                }
                assert!(
                    matches!(current["status"].as_str(), Some("finished" | "wait")),
                    "{current}"
                );
                ran
            }
        });
        let mut ran: Vec<i64> = futures::future::join_all(workers)
            .await
            .into_iter()
            .flatten()
            .collect();
        ran.sort_unstable();
        let before = ran.len();
        ran.dedup();
        assert_eq!(before, ran.len(), "a datum was handed out twice");
        assert_eq!(ran.len(), 48);
        for datum_id in ran {
            let datum = get_datum(&server, datum_id).await;
            assert_eq!(datum["datum"]["status"], "done", "{datum}");
            assert_eq!(
                datum["attempts"].as_array().map(Vec::len),
                Some(1),
                "{datum}"
            );
        }
        let (_, last) = reserve(&server, id, &token, "w0", 0).await;
        assert_eq!(last["status"], "finished", "{last}");
    }
}

/// The last report of a job, with `next`, finishes the job and answers
/// `finished`, so the worker exits without asking again.
#[tokio::test]
async fn the_last_report_with_next_answers_finished() {
    for server in TestServer::all() {
        let job = create(
            &server,
            server.spec_with_inputs(&[("a.txt", "a")], json!({})),
        )
        .await;
        let id = job["id"].as_i64().unwrap();
        let token = worker_token(&server, id);
        let (_, only) = reserve(&server, id, &token, "w", 0).await;
        let datum_id = only["datum_id"].as_i64().unwrap();
        let body = json!({ "claim": only["claim"], "output": "", "next": {} });
        let (status, answer) = post_datum(&server, &token, datum_id, "done", body).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer["next"]["status"], "finished", "{answer}");
        assert_eq!(get_job(&server, id).await["status"], "done");
    }
}

/// A batch report with `next` settles its reports, then reserves the next
/// batch for the worker its claims name; reports naming no worker or two
/// are settled and get no `next`.
#[tokio::test]
async fn a_batch_report_with_next_reserves_the_next_batch() {
    for server in TestServer::all() {
        let inputs: Vec<(String, &str)> = (0..4).map(|i| (format!("f{i}.txt"), "x")).collect();
        let inputs: Vec<(&str, &str)> = inputs.iter().map(|(p, c)| (p.as_str(), *c)).collect();
        let job = create(
            &server,
            server.spec_with_inputs(&inputs, json!({ "datums_per_reservation": 2 })),
        )
        .await;
        let id = job["id"].as_i64().unwrap();
        let token = worker_token(&server, id);
        let report_path = format!("/v1/jobs/{id}/report");
        let (_, batch) = server
            .call(
                Method::POST,
                &format!("/v1/jobs/{id}/reserve"),
                Some(&token),
                Some(json!({ "worker_id": "w", "wait_ms": 0, "max_datums": 2 })),
            )
            .await;
        let first = batch["reservations"].as_array().unwrap().clone();
        assert_eq!(first.len(), 2, "{batch}");
        let done = |r: &Value, claim: &Value| json!({ "datum_id": r["datum_id"], "claim": claim, "outcome": "done", "output": "" });

        // No worker to reserve for: no reports, or claims of two workers.
        // The reports are settled; `next` is left out of the answer.
        let body = json!({ "reports": [], "next": { "max_datums": 2 } });
        let (status, answer) = server
            .call(Method::POST, &report_path, Some(&token), Some(body))
            .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert!(answer.get("next").is_none(), "{answer}");
        let mut foreign = first[1]["claim"].clone();
        foreign["worker_id"] = json!("someone-else");
        let body = json!({
            "reports": [done(&first[0], &first[0]["claim"]), done(&first[1], &foreign)],
            "next": { "max_datums": 2 },
        });
        let (status, answer) = server
            .call(Method::POST, &report_path, Some(&token), Some(body))
            .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert!(answer.get("next").is_none(), "{answer}");
        assert_eq!(answer["results"][0]["datum"]["status"], "done", "{answer}");
        assert_eq!(
            answer["results"][1]["error"]["code"], "conflict",
            "{answer}"
        );
        let reserved = get_datum(&server, first[1]["datum_id"].as_i64().unwrap()).await;
        assert_eq!(reserved["datum"]["status"], "running", "{reserved}");
        let first = [first[1].clone()];

        let reports: Vec<Value> = first.iter().map(|r| done(r, &r["claim"])).collect();
        let body = json!({ "reports": reports, "next": { "max_datums": 2 } });
        let (status, answer) = server
            .call(Method::POST, &report_path, Some(&token), Some(body))
            .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        for result in answer["results"].as_array().unwrap() {
            assert_eq!(result["datum"]["status"], "done", "{answer}");
        }
        assert_eq!(answer["next"]["status"], "batch", "{answer}");
        let second = answer["next"]["reservations"].as_array().unwrap().clone();
        assert_eq!(second.len(), 2, "{answer}");
        for r in &second {
            assert_eq!(r["claim"]["worker_id"], "w", "{answer}");
            assert!(!first.iter().any(|f| f["datum_id"] == r["datum_id"]));
        }

        let reports: Vec<Value> = second.iter().map(|r| done(r, &r["claim"])).collect();
        let body = json!({ "reports": reports, "next": { "max_datums": 2 } });
        let (status, answer) = server
            .call(Method::POST, &report_path, Some(&token), Some(body))
            .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer["next"]["status"], "finished", "{answer}");
        assert_eq!(get_job(&server, id).await["status"], "done");
    }
}

/// Local workers reach falconerid through its Unix socket
/// (`--worker-socket`): the same API, the same tokens, no TCP. The URL's
/// port is closed, so only the socket can answer.
#[tokio::test]
async fn a_client_reaches_the_api_through_a_unix_socket() {
    for server in TestServer::all() {
        let path = server.dir.path().join("falconerid.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let serving = tokio::spawn(axum::serve(listener, server.app.clone()).into_future());
        let closed_port = "http://127.0.0.1:1";
        let client = falconeri_common::client::Client::through(
            closed_port,
            Some(&path),
            Some(ADMIN.to_owned()),
        )
        .unwrap();
        let jobs = client.list_jobs(None).await.unwrap();
        assert!(jobs.jobs.is_empty(), "{jobs:?}");
        // Without the socket the same URL reaches nothing.
        let tcp =
            falconeri_common::client::Client::new(closed_port, Some(ADMIN.to_owned())).unwrap();
        assert!(tcp.list_jobs(None).await.is_err());
        // And a token is still needed.
        let anonymous =
            falconeri_common::client::Client::through(closed_port, Some(&path), None).unwrap();
        assert!(anonymous.list_jobs(None).await.is_err());
        serving.abort();
    }
}
