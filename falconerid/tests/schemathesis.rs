//! Schemathesis (PyPI) against a live falconerid: the app served on a real
//! socket, on a fresh SQLite database, with a real admin token and a job
//! whose ids the generated requests use. Every documented operation is
//! exercised with every check (`--checks all`): no server error, and every
//! answer (status, content type, headers, body) as the OpenAPI document
//! says.
//!
//! scripts/test installs schemathesis into its tools cache and sets
//! `FALCONERI_TEST_SCHEMATHESIS` to the program.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Stdio;

use axum::http::{Method, StatusCode};
use common::{ADMIN, TestServer};
use falconeri_common::db::testing::TestDb;
use serde_json::json;

const SCHEMATHESIS_VAR: &str = "FALCONERI_TEST_SCHEMATHESIS";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_answer_off_the_document() {
    let program = std::env::var(SCHEMATHESIS_VAR).unwrap_or_else(|_| {
        panic!(
            "{SCHEMATHESIS_VAR} is not set. Run ./scripts/test, which installs schemathesis, \
             or point it at a schemathesis program (pip install schemathesis)."
        )
    });
    let server = TestServer::new(TestDb::sqlite());

    // A job of a few datums, one of them reserved, so that the job and
    // datum routes meet real rows (and real claims) as well as missing ones.
    let spec = server.spec_with_inputs(&[("a", "1"), ("b", "2"), ("c", "3")], json!({}));
    let (status, job) = server
        .call(Method::POST, "/v1/jobs", Some(ADMIN), Some(spec))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let job_id = job["id"].as_i64().unwrap();
    let job_name = job["name"].as_str().unwrap().to_owned();
    let (status, reserved) = server
        .call(
            Method::POST,
            &format!("/v1/jobs/{job_id}/reserve"),
            Some(ADMIN),
            Some(json!({"worker_id": "schemathesis", "wait_ms": 0})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{reserved}");
    let datum_id = reserved["datum_id"].as_i64().unwrap();

    // A schedule and a workflow run, so their routes meet real names and
    // ids rather than only 404s.
    let schedule_spec = server.spec_with_inputs(&[("s", "1")], json!({}));
    let (status, schedule) = server
        .call(
            Method::POST,
            "/v1/schedules",
            Some(ADMIN),
            Some(json!({ "name": "st-hourly", "cron": "0 * * * *", "job": schedule_spec })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{schedule}");
    let step_spec = server.spec_with_inputs(&[("w", "1")], json!({}));
    let (status, workflow) = server
        .call(
            Method::POST,
            "/v1/workflows",
            Some(ADMIN),
            Some(json!({
                "workflow": { "name": "st-flow" },
                "steps": [{ "name": "one", "spec": step_spec }],
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{workflow}");
    let workflow_id = workflow["id"].as_i64().unwrap();
    let workflow_name = workflow["name"].as_str().unwrap().to_owned();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = server.app.clone();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("schemathesis.toml");
    let ids = Ids {
        job_id,
        job_name,
        datum_id,
        workflow_id,
        workflow_name,
        schedule_name: "st-hourly".to_owned(),
    };
    std::fs::write(&config, config_text(&ids)).unwrap();
    // The document as the server serves it, from a file: loaded from its
    // URL, schemathesis would leave out the operation that serves it.
    let (status, document) = server
        .call(Method::GET, "/v1/openapi.json", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let document_file = work.path().join("openapi.json");
    std::fs::write(&document_file, document.to_string()).unwrap();
    let output = tokio::process::Command::new(&program)
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(&document_file)
        .args(["--url", &format!("http://{addr}")])
        .args(["--checks", "all"])
        .args(["--header", &format!("Authorization: Bearer {ADMIN}")])
        // Reproducible, and small enough for the suite: every operation
        // still gets its examples, coverage, fuzzing and stateful cases.
        // One worker: Python 3.11's parser can fail when hypothesis
        // describes strategies from two threads at once ("AST constructor
        // recursion depth mismatch", a CPython bug).
        .args([
            "--seed",
            "20261210",
            "--max-examples",
            "30",
            "--workers",
            "1",
        ])
        .args(["--generation-database", "none", "--no-color"])
        .current_dir(work.path())
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap_or_else(|err| panic!("cannot run {program}: {err}"));
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "schemathesis failed:\n{report}");
    // Every documented operation was tested.
    let operations = document["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|item| item.as_object().unwrap().len())
        .sum::<usize>();
    assert!(
        report.contains(&format!("Tested: {operations}\n")),
        "expected all {operations} operations to run:\n{report}"
    );
}

/// The real objects whose ids and names fill the path parameters.
struct Ids {
    job_id: i64,
    job_name: String,
    datum_id: i64,
    workflow_id: i64,
    workflow_name: String,
    schedule_name: String,
}

/// Schemathesis's configuration: the real ids and names for the path
/// parameters (random ones only ever meet a 404), and the allowances.
fn config_text(ids: &Ids) -> String {
    let Ids {
        job_id,
        job_name,
        datum_id,
        workflow_id,
        workflow_name,
        schedule_name,
    } = ids;
    format!(
        r#"
[[operations]]
include-path-regex = "^/v1/jobs/\\{{id\\}}"
parameters = {{ "path.id" = {job_id} }}

[[operations]]
include-path-regex = "^/v1/datums/\\{{id\\}}"
parameters = {{ "path.id" = {datum_id} }}

[[operations]]
include-path = "/v1/jobs/by-name/{{name}}"
parameters = {{ "path.name" = "{job_name}" }}

# Following a log stays open until the attempt or the job ends, which the
# reserved datum of this job never does: read the logs, don't follow them.
[[operations]]
include-operation-id = "datum_logs"
parameters = {{ "path.id" = {datum_id}, "query.follow" = false }}

[[operations]]
include-operation-id = "job_logs"
parameters = {{ "path.id" = {job_id}, "query.follow" = false }}

# A spec that fits the schema may still be refused with 400: the server
# also checks what no schema can, such as whether the storage it names
# can be listed and whether its quantities parse.
[[operations]]
include-operation-id = "create_job"
checks.positive_data_acceptance.expected-statuses = [201, 400, 401, 403]

[[operations]]
include-path-regex = "^/v1/workflows/\\{{id\\}}"
parameters = {{ "path.id" = {workflow_id} }}

[[operations]]
include-path = "/v1/workflows/by-name/{{name}}"
parameters = {{ "path.name" = "{workflow_name}" }}

[[operations]]
include-path-regex = "^/v1/schedules/\\{{name\\}}"
parameters = {{ "path.name" = "{schedule_name}" }}

# A workflow or a schedule is checked beyond its schema too: names, cron
# syntax, time zones, cycles between steps, and the pipeline specs inside
# (the workflow's body is documented as a free object: its steps' specs).
[[operations]]
include-operation-id = "run_workflow"
checks.positive_data_acceptance.expected-statuses = [201, 400, 401, 403, 409]

[[operations]]
include-operation-id = "create_schedule"
checks.positive_data_acceptance.expected-statuses = [201, 400, 401, 403, 409]

# A log chunk is any bytes as far as a schema can say (`format: binary`);
# the framing of lines inside it is checked by the server, and bytes that
# are not framed lines are refused with 400.
[[operations]]
include-operation-id = "put_datum_log_chunk"
checks.positive_data_acceptance.expected-statuses = [200, 400, 401, 403, 404, 409]
"#
    )
}
