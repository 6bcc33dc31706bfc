//! Attempt statistics through the HTTP API, on SQLite and PostgreSQL: the
//! worker's reports carry them (a single `done`, an `error`, a batch), a
//! report without them still works, `GET /v1/datums/{id}` shows them per
//! attempt and `GET /v1/jobs/{id}/stats` aggregates them.

#![allow(clippy::unwrap_used)]

mod common;

use axum::http::{Method, StatusCode};
use common::{ADMIN, TestServer};
use serde_json::{Value, json};

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

async fn reserve(server: &TestServer, job_id: i64, token: &str, worker: &str) -> Value {
    let (status, answer) = server
        .call(
            Method::POST,
            &format!("/v1/jobs/{job_id}/reserve"),
            Some(token),
            Some(json!({ "worker_id": worker, "wait_ms": 0 })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["status"], "reserved", "{answer}");
    answer
}

fn stats(command_ms: u64, peak_mib: u64) -> Value {
    json!({
        "download_files": 1, "download_bytes": 1, "download_ms": 3,
        "command_ms": command_ms, "user_cpu_ms": command_ms / 2, "system_cpu_ms": 0,
        "max_rss_bytes": peak_mib << 20,
    })
}

#[tokio::test]
async fn reports_carry_stats_and_the_job_aggregates_them() {
    for server in TestServer::all() {
        let files = [("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")];
        let spec = server.spec_with_inputs(&files, json!({}));
        let (status, job) = server
            .call(Method::POST, "/v1/jobs", Some(ADMIN), Some(spec))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{job}");
        let id = job["id"].as_i64().unwrap();
        let token = worker_token(&server, id);

        // A bad measurement is refused, naming where it is.
        let first = reserve(&server, id, &token, "w1").await;
        let datum = first["datum_id"].as_i64().unwrap();
        let bad = json!({ "claim": first["claim"], "output": "", "stats": { "command_ms": -5 } });
        let (status, body) = server
            .call(
                Method::POST,
                &format!("/v1/datums/{datum}/done"),
                Some(&token),
                Some(bad),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("stats.command_ms"),
            "{body}"
        );

        // `done` with stats.
        let done = json!({ "claim": first["claim"], "output": "", "exit_code": 0, "stats": stats(100, 10) });
        let (status, body) = server
            .call(
                Method::POST,
                &format!("/v1/datums/{datum}/done"),
                Some(&token),
                Some(done),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");

        // `error` with stats, exit status 3.
        let second = reserve(&server, id, &token, "w2").await;
        let failed = second["datum_id"].as_i64().unwrap();
        let error = json!({ "claim": second["claim"], "output": "", "error": "command exited with status 3",
                            "exit_code": 3, "stats": stats(300, 30) });
        let (status, body) = server
            .call(
                Method::POST,
                &format!("/v1/datums/{failed}/error"),
                Some(&token),
                Some(error),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");

        // A batch: one with stats, one without (an older worker).
        let third = reserve(&server, id, &token, "w3").await;
        let fourth = reserve(&server, id, &token, "w4").await;
        let batch = json!({ "reports": [
            { "datum_id": third["datum_id"], "claim": third["claim"], "outcome": "done",
              "output": "", "exit_code": 0, "stats": stats(200, 20) },
            { "datum_id": fourth["datum_id"], "claim": fourth["claim"], "outcome": "done", "output": "" },
        ]});
        let (status, body) = server
            .call(
                Method::POST,
                &format!("/v1/jobs/{id}/report"),
                Some(&token),
                Some(batch),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");

        let (status, shown) = server
            .call(
                Method::GET,
                &format!("/v1/datums/{failed}"),
                Some(ADMIN),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{shown}");
        let attempt = &shown["attempts"][0];
        assert_eq!(attempt["exit_code"], 3, "{shown}");
        assert_eq!(attempt["stats"]["command_ms"], 300, "{shown}");
        assert_eq!(attempt["stats"]["max_rss_bytes"], 30 << 20, "{shown}");
        let (_, shown) = server
            .call(
                Method::GET,
                &format!("/v1/datums/{}", fourth["datum_id"]),
                Some(ADMIN),
                None,
            )
            .await;
        assert!(shown["attempts"][0].get("stats").is_none(), "{shown}");

        let (status, stats) = server
            .call(
                Method::GET,
                &format!("/v1/jobs/{id}/stats"),
                Some(ADMIN),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{stats}");
        assert_eq!(stats["measured_attempts"], 3, "{stats}");
        let command = &stats["phases"]["command"];
        assert_eq!(
            (command["p50"].as_i64(), command["max"].as_i64()),
            (Some(200), Some(300)),
            "{stats}"
        );
        assert_eq!(
            stats["errors"][0]["message"], "command exited with status 3",
            "{stats}"
        );
        assert_eq!(stats["errors"][0]["example_datum_id"], failed, "{stats}");
        // p95 of 10, 20 and 30 MiB is 30 MiB; × 1.25 = 37.5 → 38Mi.
        assert_eq!(stats["suggestion"]["memory"], "38Mi", "{stats}");
        assert_eq!(stats["suggestion"]["cpu"], "700m", "{stats}");
        assert_eq!(stats["suggestion"]["margin"], 1.25, "{stats}");

        // Only the admin reads them, and an unknown job is a 404.
        let (status, _) = server
            .call(
                Method::GET,
                &format!("/v1/jobs/{id}/stats"),
                Some(&token),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _) = server
            .call(Method::GET, "/v1/jobs/999999/stats", Some(ADMIN), None)
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}
