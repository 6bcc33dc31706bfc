//! Failure policies through the HTTP API, on SQLite and PostgreSQL:
//! `on_exit` rules applied to failure reports (and a `fail_job` stop cut
//! short by a crash, finished by the babysitter; a worker's timeout kill
//! matched by no rule), `max_failed_datums` within
//! and over its limit, `POST /v1/datums/{id}/retry` while a job runs and
//! after it ended, and the spec's refusals naming their JSON paths.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use common::{ADMIN, TestServer};
use falconeri_common::{
    api::Claim,
    models::{JobStopRequest, Report},
    status::DatumStatus,
};
use falconerid::{
    AppState,
    babysitter::Babysitter,
    failures::{fail_datum_requesting_stop, fail_job_reason},
};
use serde_json::{Value, json};

fn files(n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (format!("{i}.txt"), format!("{i}")))
        .collect()
}

async fn create(server: &TestServer, datums: usize, extra: Value) -> (i64, String) {
    let files = files(datums);
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let spec = server.spec_with_inputs(&files, extra);
    let (status, job) = server
        .call(Method::POST, "/v1/jobs", Some(ADMIN), Some(spec))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let id = job["id"].as_i64().unwrap();
    (id, worker_token(server, id))
}

fn worker_token(server: &TestServer, job_id: i64) -> String {
    server
        .executor
        .launches
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find(|launch| launch.job_id == job_id)
        .map(|launch| launch.worker_token.clone())
        .expect("workers were launched")
}

fn launches(server: &TestServer, job_id: i64) -> usize {
    let launches = server.executor.launches.lock().unwrap();
    launches.iter().filter(|l| l.job_id == job_id).count()
}

/// Reserves one datum; None once there is nothing to reserve.
async fn reserve(server: &TestServer, job_id: i64, token: &str) -> Option<Value> {
    let (status, answer) = server
        .call(
            Method::POST,
            &format!("/v1/jobs/{job_id}/reserve"),
            Some(token),
            Some(json!({ "worker_id": "w", "wait_ms": 0 })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    (answer["status"] == "reserved").then_some(answer)
}

/// Reports a reserved datum failed with `exit_code`; answers the datum.
async fn fail(server: &TestServer, token: &str, reserved: &Value, exit_code: i32) -> Value {
    let fields = json!({
        "error": format!("command exited with status {exit_code}"),
        "exit_code": exit_code,
    });
    report_error(server, token, reserved, fields).await
}

/// Reports a reserved datum failed through `POST error`, with `fields`
/// (`error`, `exit_code`, `signal`, ...) beside its claim; answers the datum.
async fn report_error(server: &TestServer, token: &str, reserved: &Value, fields: Value) -> Value {
    let id = reserved["datum_id"].as_i64().unwrap();
    let mut body = json!({ "claim": reserved["claim"], "output": "" });
    for (key, value) in fields.as_object().unwrap() {
        body[key] = value.clone();
    }
    let (status, datum) = server
        .call(
            Method::POST,
            &format!("/v1/datums/{id}/error"),
            Some(token),
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{datum}");
    datum
}

async fn done(server: &TestServer, token: &str, reserved: &Value) {
    let id = reserved["datum_id"].as_i64().unwrap();
    let body = json!({ "claim": reserved["claim"], "output": "" });
    let (status, datum) = server
        .call(
            Method::POST,
            &format!("/v1/datums/{id}/done"),
            Some(token),
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{datum}");
}

async fn get(server: &TestServer, path: &str) -> Value {
    let (status, body) = server.call(Method::GET, path, Some(ADMIN), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn retry_datum(server: &TestServer, id: i64, token: &str) -> (StatusCode, Value) {
    server
        .call(
            Method::POST,
            &format!("/v1/datums/{id}/retry"),
            Some(token),
            None,
        )
        .await
}

/// Waits (bounded) for the background wind-down to stop the job's workers.
async fn wait_stopped(server: &TestServer, job_id: i64) {
    for _ in 0..100 {
        if server.executor.stopped.lock().unwrap().contains(&job_id) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the workers of job {job_id} were not stopped");
}

#[tokio::test]
async fn a_fail_job_exit_code_ends_the_job_at_once() {
    for server in TestServer::all() {
        let extra = json!({
            "datum_tries": 3,
            "on_exit": [{ "exit_codes": [42], "action": "fail_job" }],
        });
        let (id, token) = create(&server, 3, extra).await;
        let first = reserve(&server, id, &token).await.unwrap();
        let datum_id = first["datum_id"].as_i64().unwrap();
        let datum = fail(&server, &token, &first, 42).await;
        assert_eq!(datum["status"], "error", "{datum}");
        assert!(
            datum["error_message"]
                .as_str()
                .unwrap()
                .ends_with("(on_exit[0]: fail_job, not retried)"),
            "{datum}"
        );
        let job = get(&server, &format!("/v1/jobs/{id}")).await;
        assert_eq!(job["status"], "error", "{job}");
        assert_eq!(
            job["error_message"].as_str().unwrap(),
            format!(
                "datum {datum_id}'s command exited with code 42, which on_exit[0] maps to fail_job"
            )
        );
        assert_eq!(job["failed_datums"], 1);
        let described = get(&server, &format!("/v1/jobs/{id}/describe")).await;
        assert_eq!(described["counts"]["canceled"], 2, "{described}");
        wait_stopped(&server, id).await;
        assert!(reserve(&server, id, &token).await.is_none());
        // The handler stopped the job, so its stop request is spent.
        let mut conn = server.db.pool.get().unwrap();
        assert!(JobStopRequest::pending(&mut conn, 10).unwrap().is_empty());
    }
}

#[tokio::test]
async fn a_fail_job_stop_cut_short_by_a_crash_is_finished_by_the_babysitter() {
    for server in TestServer::all() {
        let backend = server.db.backend().name();
        let extra = json!({
            "datum_tries": 3,
            "on_exit": [{ "exit_codes": [42], "action": "fail_job" }],
        });
        let (id, token) = create(&server, 3, extra).await;
        let first = reserve(&server, id, &token).await.unwrap();
        let datum_id = first["datum_id"].as_i64().unwrap();
        let claim: Claim = serde_json::from_value(first["claim"].clone()).unwrap();

        // The report's transaction commits (the datum fails, the stop is
        // requested), then its falconerid dies before stopping the job.
        let reason = fail_job_reason(datum_id, Some(42), None, 0);
        {
            let mut conn = server.db.pool.get().unwrap();
            let report = Report {
                output: "",
                exit_code: Some(42),
                signal: None,
                stats: None,
            };
            let datum = fail_datum_requesting_stop(
                &mut conn,
                datum_id,
                &claim,
                &report,
                "command exited with status 42 (on_exit[0]: fail_job, not retried)",
                &reason,
            )
            .unwrap();
            assert_eq!(datum.status(), DatumStatus::Error);
        }
        let job = get(&server, &format!("/v1/jobs/{id}")).await;
        assert_eq!(job["status"], "running", "{backend}: {job}");

        // Another replica's babysitter finds the request and stops the job.
        let other = AppState::new(
            server.state.config().clone(),
            server.db.pool.clone(),
            server.executor.clone(),
        );
        Babysitter::default().tick(&other).await.unwrap();
        let job = get(&server, &format!("/v1/jobs/{id}")).await;
        assert_eq!(job["status"], "error", "{backend}: {job}");
        assert_eq!(job["error_message"].as_str(), Some(reason.as_str()));
        let described = get(&server, &format!("/v1/jobs/{id}/describe")).await;
        assert_eq!(described["counts"]["canceled"], 2, "{described}");
        wait_stopped(&server, id).await;
        let mut conn = server.db.pool.get().unwrap();
        assert!(JobStopRequest::pending(&mut conn, 10).unwrap().is_empty());
        drop(conn);

        // A second pass has nothing left to do.
        Babysitter::default().tick(&other).await.unwrap();
        let job = get(&server, &format!("/v1/jobs/{id}")).await;
        assert_eq!(job["error_message"].as_str(), Some(reason.as_str()));
    }
}

/// A command the worker killed for its `datum_timeout` ends by the worker's
/// signal, and the report says so (`killed_for`): a `signals` rule naming
/// that signal does not take it for the command's own failure, so the datum
/// is retried (by `POST error` and by a batch report alike), while the same
/// signal reported without `killed_for` still fails the job.
#[tokio::test]
async fn a_datum_timeout_kill_is_retried_whatever_signal_rules_say() {
    let extra = json!({
        "datum_tries": 2,
        "on_exit": [{ "signals": ["SIGTERM", "SIGKILL"], "action": "fail_job" }],
    });
    let timed_out = json!({
        "error": "datum timed out after 1s", "signal": 15, "killed_for": "datum_timeout",
    });
    for server in TestServer::all() {
        let (id, token) = create(&server, 1, extra.clone()).await;
        let first = reserve(&server, id, &token).await.unwrap();
        let datum_id = first["datum_id"].as_i64().unwrap();
        let datum = report_error(&server, &token, &first, timed_out.clone()).await;
        assert_eq!(datum["status"], "ready", "{datum}");
        let job = get(&server, &format!("/v1/jobs/{id}")).await;
        assert_eq!(job["status"], "running", "{job}");

        // The last try, killed by SIGKILL after the grace, in a batch.
        let second = reserve(&server, id, &token).await.unwrap();
        let reports = json!({ "reports": [{
            "datum_id": datum_id, "claim": second["claim"], "outcome": "error",
            "output": "", "error": "datum timed out after 1s", "signal": 9,
            "killed_for": "datum_timeout",
        }]});
        let (status, answer) = server
            .call(
                Method::POST,
                &format!("/v1/jobs/{id}/report"),
                Some(&token),
                Some(reports),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        let datum = &answer["results"][0]["datum"];
        assert_eq!(datum["status"], "error", "{answer}");
        assert_eq!(
            datum["error_message"], "datum timed out after 1s",
            "{answer}"
        );
        // Nothing is left, so the job ends, by its failed datum.
        assert!(reserve(&server, id, &token).await.is_none());
        let job = get(&server, &format!("/v1/jobs/{id}")).await;
        assert_eq!(job["status"], "error", "{job}");
        let message = job["error_message"].as_str().unwrap();
        assert!(!message.contains("on_exit"), "{message}");
        // The worker's signals are still on record.
        let described = get(&server, &format!("/v1/datums/{datum_id}")).await;
        let signals: Vec<_> = described["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["signal"].as_i64())
            .collect();
        assert_eq!(signals, [Some(15), Some(9)], "{described}");

        // Without `killed_for`, the signal is the command's: fail_job.
        let (id, token) = create(&server, 1, extra.clone()).await;
        let first = reserve(&server, id, &token).await.unwrap();
        let datum = report_error(
            &server,
            &token,
            &first,
            json!({ "error": "killed", "signal": 15 }),
        )
        .await;
        assert_eq!(datum["status"], "error", "{datum}");
        let job = get(&server, &format!("/v1/jobs/{id}")).await;
        let message = job["error_message"].as_str().unwrap();
        assert!(
            message.contains("which on_exit[0] maps to fail_job"),
            "{message}"
        );
    }
}

#[tokio::test]
async fn a_fail_datum_exit_code_is_not_retried_and_others_are() {
    for server in TestServer::all() {
        let extra = json!({
            "datum_tries": 3,
            "on_exit": [
                { "exit_codes": [3], "action": "retry" },
                { "exit_codes": [3, 4], "action": "fail_datum" },
            ],
        });
        let (id, token) = create(&server, 2, extra).await;
        let first = reserve(&server, id, &token).await.unwrap();
        let datum = fail(&server, &token, &first, 4).await;
        assert_eq!(
            (datum["status"].as_str(), datum["attempt"].as_i64()),
            (Some("error"), Some(1))
        );
        // The first matching rule decides: 3 is retried.
        let second = reserve(&server, id, &token).await.unwrap();
        let datum = fail(&server, &token, &second, 3).await;
        assert_eq!(datum["status"], "ready", "{datum}");
        // Unmatched codes keep the default: retried too.
        let again = reserve(&server, id, &token).await.unwrap();
        let datum = fail(&server, &token, &again, 1).await;
        assert_eq!(datum["status"], "ready", "{datum}");
        let job = get(&server, &format!("/v1/jobs/{id}")).await;
        assert_eq!(job["status"], "running", "fail_datum does not end the job");
    }
}

#[tokio::test]
async fn a_job_within_max_failed_datums_ends_done_and_one_over_fails() {
    for server in TestServer::all() {
        let (id, token) = create(&server, 3, json!({ "max_failed_datums": "50%" })).await;
        let job = get(&server, &format!("/v1/jobs/{id}")).await;
        assert_eq!(job["max_failed_datums"], 1, "50% of 3, rounded down");
        let first = reserve(&server, id, &token).await.unwrap();
        fail(&server, &token, &first, 1).await;
        while let Some(next) = reserve(&server, id, &token).await {
            done(&server, &token, &next).await;
        }
        let job = get(&server, &format!("/v1/jobs/{id}")).await;
        assert_eq!(job["status"], "done", "{job}");
        assert_eq!(job["failed_datums"], 1);
        let described = get(&server, &format!("/v1/jobs/{id}/describe")).await;
        assert_eq!(
            described["failed"].as_array().unwrap().len(),
            1,
            "{described}"
        );
        let stats = get(&server, &format!("/v1/jobs/{id}/stats")).await;
        assert_eq!(stats["errors"][0]["count"], 1, "{stats}");

        let (id, token) = create(&server, 4, json!({ "max_failed_datums": 1 })).await;
        for _ in 0..2 {
            let next = reserve(&server, id, &token).await.unwrap();
            fail(&server, &token, &next, 1).await;
        }
        let job = get(&server, &format!("/v1/jobs/{id}")).await;
        assert_eq!(job["status"], "error", "{job}");
        assert_eq!(
            job["error_message"],
            "2 datums failed, more than max_failed_datums allows (1); the job was stopped"
        );
        let described = get(&server, &format!("/v1/jobs/{id}/describe")).await;
        assert_eq!(described["counts"]["canceled"], 2, "{described}");
        wait_stopped(&server, id).await;
    }
}

#[tokio::test]
async fn datum_retry_requeues_while_running_and_reopens_after() {
    for server in TestServer::all() {
        let (id, token) = create(&server, 2, json!({})).await;
        let first = reserve(&server, id, &token).await.unwrap();
        let datum_id = first["datum_id"].as_i64().unwrap();
        // Not failed: 409 with a JSON body; workers may not retry; unknown: 404.
        let (status, body) = retry_datum(&server, datum_id, ADMIN).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert_eq!(body["error"]["code"], "conflict", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("is running")
        );
        let (status, _) = retry_datum(&server, datum_id, &token).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, body) = retry_datum(&server, 999_999, ADMIN).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

        fail(&server, &token, &first, 1).await;
        let (status, retried) = retry_datum(&server, datum_id, ADMIN).await;
        assert_eq!(status, StatusCode::OK, "{retried}");
        assert_eq!(retried["reopened"], false);
        assert_eq!(retried["datum"]["status"], "ready");
        assert_eq!(retried["job"]["status"], "running");
        let again = reserve(&server, id, &token).await.unwrap();
        assert_eq!(again["datum_id"].as_i64(), Some(datum_id), "requeued first");
        assert_eq!(again["claim"]["attempt"], 2);
        fail(&server, &token, &again, 1).await;
        while let Some(next) = reserve(&server, id, &token).await {
            done(&server, &token, &next).await;
        }
        let job = get(&server, &format!("/v1/jobs/{id}")).await;
        assert_eq!(job["status"], "error", "{job}");

        // After the end: the job is reopened and its workers started.
        let before = launches(&server, id);
        let (status, retried) = retry_datum(&server, datum_id, ADMIN).await;
        assert_eq!(status, StatusCode::OK, "{retried}");
        assert_eq!(retried["reopened"], true);
        assert_eq!(retried["job"]["status"], "running");
        assert_eq!(launches(&server, id), before + 1);
        let third = reserve(&server, id, &token).await.unwrap();
        assert_eq!(third["claim"]["attempt"], 3);
        done(&server, &token, &third).await;
        assert!(reserve(&server, id, &token).await.is_none());
        let job = get(&server, &format!("/v1/jobs/{id}")).await;
        assert_eq!(job["status"], "done", "{job}");
        let datum = get(&server, &format!("/v1/datums/{datum_id}")).await;
        assert_eq!(datum["attempts"].as_array().unwrap().len(), 3, "{datum}");
    }
}

/// A `datum retry` right after its job ended waits for the end's
/// wind-down, so the wind-down never stops the worker the retry started;
/// and a wind-down that comes after a reopening leaves the job alone.
#[tokio::test]
async fn a_datum_retry_never_races_the_wind_down() {
    use std::sync::atomic::Ordering::SeqCst;
    for server in TestServer::all() {
        let (id, token) = create(&server, 1, json!({ "datum_tries": 1 })).await;
        let first = reserve(&server, id, &token).await.unwrap();
        let datum_id = first["datum_id"].as_i64().unwrap();
        fail(&server, &token, &first, 1).await;

        // The reservation that finds the job over ends it and winds it
        // down; the gate holds that wind-down in the middle.
        let stops_before = server.executor.stops_begun.load(SeqCst);
        let gate = server.executor.stop_gate.lock().await;
        let (app, worker) = (server.app.clone(), token.clone());
        let ending = tokio::spawn(async move {
            let body = json!({ "worker_id": "w", "wait_ms": 0 });
            let path = format!("/v1/jobs/{id}/reserve");
            common::call(&app, Method::POST, &path, Some(&worker), Some(body)).await
        });
        for _ in 0..250 {
            if server.executor.stops_begun.load(SeqCst) > stops_before {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(server.executor.stops_begun.load(SeqCst) > stops_before);
        let app = server.app.clone();
        let retry = tokio::spawn(async move {
            let path = format!("/v1/datums/{datum_id}/retry");
            common::call(&app, Method::POST, &path, Some(ADMIN), None).await
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!retry.is_finished(), "the retry waits for the wind-down");
        drop(gate);
        let (status, retried) = retry.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{retried}");
        assert_eq!(retried["reopened"], true, "{retried}");
        let (status, answer) = ending.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer["status"], "finished", "{answer}");
        let events = server.executor.events.lock().unwrap().clone();
        assert_eq!(
            events.last().map(String::as_str),
            Some(format!("start {id}").as_str()),
            "the new worker is started after the old ones were stopped: {events:?}"
        );

        // A wind-down of the old end that comes only now (another path
        // ended the job too) sees the job reopened and stops nothing.
        let job = server
            .state
            .db(move |conn| falconeri_common::models::Job::find(conn, id))
            .await
            .unwrap();
        let stops = server.executor.stopped.lock().unwrap().len();
        falconerid::babysitter::wind_down(&server.state, &job).await;
        assert_eq!(server.executor.stopped.lock().unwrap().len(), stops);
    }
}

#[tokio::test]
async fn failure_policies_in_a_spec_are_checked_with_their_paths() {
    for server in TestServer::all() {
        let extra = json!({
            "on_exit": [
                { "exit_codes": [0], "action": "fail_job" },
                { "signals": ["SIGNOPE"], "action": "retry" },
            ],
        });
        let spec = server.spec_with_inputs(&[("a", "a")], extra);
        let (status, body) = server
            .call(Method::POST, "/v1/jobs", Some(ADMIN), Some(spec))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let paths: Vec<&str> = body["error"]["problems"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["path"].as_str())
            .collect();
        assert_eq!(paths, ["on_exit[0].exit_codes[0]", "on_exit[1].signals[0]"]);

        let spec = server.spec_with_inputs(&[("a", "a")], json!({ "max_failed_datums": "5" }));
        let (status, body) = server
            .call(Method::POST, "/v1/jobs", Some(ADMIN), Some(spec))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(
            body["error"]["problems"][0]["path"], "max_failed_datums",
            "{body}"
        );
    }
}
