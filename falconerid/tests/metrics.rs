//! `GET /metrics`: after a small job ran through the worker protocol, a
//! scrape passes `promtool check metrics` (Debian's `prometheus` package,
//! installed by scripts/test; `FALCONERI_TEST_PROMTOOL` names another) and
//! holds the series and values the job should have left, on both databases.
//!
//! The recorder is process-wide (other tests of this binary may add to the
//! counters), so counters are compared before and after the job.

#![allow(clippy::unwrap_used)]

mod common;

use std::{collections::BTreeMap, io::Write, process::Stdio};

use axum::{
    body::Body,
    http::{Method, Request, StatusCode, header},
};
use common::{ADMIN, TestServer};
use http_body_util::BodyExt;
use serde_json::json;
use tower::ServiceExt;

/// The samples of a scrape: `name{labels}` → value, labels as written.
type Samples = BTreeMap<String, f64>;

/// Scrapes `/metrics` without a token; answers the text.
async fn scrape(server: &TestServer) -> String {
    let request = Request::get("/metrics").body(Body::empty()).unwrap();
    let response = server.app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "/metrics needs no token");
    let content_type = response.headers()[header::CONTENT_TYPE].to_str().unwrap();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

fn samples(text: &str) -> Samples {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse::<f64>().unwrap())
        })
        .collect()
}

/// The value of the one series whose name is `name` and whose labels
/// include every `labels` pair (0 when there is none).
fn value(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    let matching: Vec<f64> = samples
        .iter()
        .filter(|(series, _)| {
            let (series_name, rest) = series.split_once('{').unwrap_or((series, ""));
            series_name == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, v)| *v)
        .collect();
    assert!(matching.len() <= 1, "{name} {labels:?}: {matching:?}");
    matching.first().copied().unwrap_or(0.0)
}

/// Runs promtool's linter on `text`; fails on any complaint.
fn promtool_check(text: &str) {
    let program = std::env::var("FALCONERI_TEST_PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let mut child = std::process::Command::new(&program)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| {
            panic!(
                "cannot run {program} ({err}): install Debian's `prometheus` package \
                 (./scripts/test does) or set FALCONERI_TEST_PROMTOOL"
            )
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let complaints = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && complaints.trim().is_empty(),
        "promtool check metrics: {complaints}\n--- scrape ---\n{text}"
    );
}

#[tokio::test]
async fn a_scrape_after_a_job_passes_promtool_and_counts_the_job() {
    for server in TestServer::all() {
        let before = samples(&scrape(&server).await);
        let spec = server.spec_with_inputs(
            &[("a", "1"), ("b", "2"), ("c", "3")],
            json!({"datum_tries": 2}),
        );
        let (status, job) = server
            .call(Method::POST, "/v1/jobs", Some(ADMIN), Some(spec))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{job}");
        let (job_id, name) = (job["id"].as_i64().unwrap(), job["name"].as_str().unwrap());

        // Reserve all three, as three workers would (a worker asking again
        // gets back the datum it holds).
        let mut claims = Vec::new();
        for worker in ["w1", "w2", "w3"] {
            let (status, answer) = server
                .call(
                    Method::POST,
                    &format!("/v1/jobs/{job_id}/reserve"),
                    Some(ADMIN),
                    Some(json!({"worker_id": worker, "wait_ms": 0})),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{answer}");
            assert_eq!(answer["status"], "reserved", "{answer}");
            claims.push((
                answer["datum_id"].as_i64().unwrap(),
                answer["claim"].clone(),
            ));
        }
        // While they run, the job's datums are counted by status.
        let running = samples(&scrape(&server).await);
        assert_eq!(
            value(
                &running,
                "falconeri_datums",
                &[("job", name), ("status", "running")]
            ),
            3.0
        );
        assert_eq!(
            value(
                &running,
                "falconeri_datums",
                &[("job", name), ("status", "ready")]
            ),
            0.0
        );

        // One fails once and is retried; all end done.
        let (first, claim) = claims[0].clone();
        let (status, answer) = server
            .call(
                Method::POST,
                &format!("/v1/datums/{first}/error"),
                Some(ADMIN),
                Some(json!({"claim": claim, "output": "", "error": "flaky", "exit_code": 1})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        let (status, answer) = server
            .call(
                Method::POST,
                &format!("/v1/jobs/{job_id}/reserve"),
                Some(ADMIN),
                Some(json!({"worker_id": "w1", "wait_ms": 0})),
            )
            .await;
        assert_eq!(answer["status"], "reserved", "{status} {answer}");
        claims[0] = (
            answer["datum_id"].as_i64().unwrap(),
            answer["claim"].clone(),
        );
        for (id, claim) in &claims {
            let (status, answer) = server
                .call(
                    Method::POST,
                    &format!("/v1/datums/{id}/done"),
                    Some(ADMIN),
                    Some(json!({"claim": claim, "output": "ok"})),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{answer}");
        }
        // A pass of the babysitter finishes the job and is timed.
        falconerid::babysitter::Babysitter::default()
            .tick(&server.state)
            .await
            .unwrap();

        let text = scrape(&server).await;
        promtool_check(&text);
        let after = samples(&text);
        let delta = |name: &str, labels: &[(&str, &str)]| {
            value(&after, name, labels) - value(&before, name, labels)
        };
        assert_eq!(delta("falconeri_datums_completed_total", &[]), 3.0);
        assert_eq!(delta("falconeri_datum_failures_total", &[]), 1.0);
        assert_eq!(delta("falconeri_datums_reserved_total", &[]), 4.0);
        assert_eq!(
            delta(
                "falconeri_reserve_wait_seconds_count",
                &[("outcome", "reserved")]
            ),
            4.0
        );
        assert_eq!(delta("falconeri_dispatch_seconds_count", &[]), 4.0);
        // Routes by template, never by raw path.
        let reserve = [
            ("method", "POST"),
            ("route", "/v1/jobs/{id}/reserve"),
            ("status", "200"),
        ];
        assert_eq!(delta("falconeri_http_requests_total", &reserve), 4.0);
        assert_eq!(
            delta("falconeri_http_request_duration_seconds_count", &reserve),
            4.0
        );
        assert!(!text.contains(&format!("/v1/jobs/{job_id}/")), "{text}");
        assert!(delta("falconeri_db_pool_wait_seconds_count", &[]) > 0.0);
        assert!(delta("falconeri_babysitter_pass_seconds_count", &[]) >= 1.0);
        assert!(value(&after, "falconeri_db_pool_max_connections", &[]) >= 1.0);
        assert!(text.contains("falconeri_db_pool_connections{state=\"idle\"}"));
        assert!(text.contains("falconeri_db_pool_connections{state=\"in_use\"}"));
        // The job ended, so its datums are no longer read.
        let (_, job) = server
            .call(
                Method::GET,
                &format!("/v1/jobs/{job_id}"),
                Some(ADMIN),
                None,
            )
            .await;
        assert_eq!(job["status"], "done", "{job}");
        assert!(!text.contains(&format!("job=\"{name}\"")), "{text}");
    }
}

#[tokio::test]
async fn unknown_paths_share_one_route_label() {
    let server = TestServer::new(falconeri_common::db::testing::TestDb::sqlite());
    for path in ["/nope/1", "/nope/2", "/v1/jobs/1/nope"] {
        let (status, _) = server.call(Method::GET, path, None, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    let text = scrape(&server).await;
    assert!(!text.contains("/nope"), "{text}");
    let unmatched = value(
        &samples(&text),
        "falconeri_http_requests_total",
        &[("route", "unmatched"), ("status", "404")],
    );
    assert!(unmatched >= 3.0, "{text}");
}
