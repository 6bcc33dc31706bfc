//! The OpenAPI document: it matches the committed copy in
//! `guide/src/openapi.json`, documents every route the server answers (and
//! only those), and is served without a token.
//!
//! `FALCONERI_UPDATE_OPENAPI=1 cargo test -p falconerid --test openapi`
//! (or `just openapi`) rewrites the committed copy after a deliberate change.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;

use axum::http::{Method, StatusCode};
use common::TestServer;
use falconeri_common::db::testing::TestDb;
use serde_json::Value;

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../guide/src/openapi.json")
}

#[test]
fn openapi_document_matches_the_committed_copy() {
    let generated = falconerid::openapi::document_text();
    let path = committed_path();
    if std::env::var_os("FALCONERI_UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is not the document the code generates: a route or a body changed. \
         If the change is meant, run `FALCONERI_UPDATE_OPENAPI=1 cargo test -p falconerid \
         --test openapi` (or `just openapi`) and commit the result.",
        path.display()
    );
}

#[tokio::test]
async fn the_document_is_served_without_a_token() {
    let server = TestServer::new(TestDb::sqlite());
    let (status, served) = server
        .call(Method::GET, "/v1/openapi.json", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&served, falconerid::openapi::document());
    assert_eq!(served["openapi"], "3.1.0");
    assert_eq!(
        served["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}

/// Every operation of the document, as (method, path template).
fn operations() -> Vec<(String, String, Value)> {
    let doc = falconerid::openapi::document();
    let mut found = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            found.push((method.to_uppercase(), path.clone(), operation.clone()));
        }
    }
    found
}

/// The router is built from the same `routes!` table as the document
/// (`falconerid::routes::api`), so each documented operation must reach a
/// handler: neither the JSON 404 for unknown routes nor a 405. (Routes the
/// document lacks cannot exist: nothing registers a route but that table.)
#[tokio::test]
async fn every_documented_operation_reaches_a_handler() {
    let server = TestServer::new(TestDb::sqlite());
    let operations = operations();
    assert!(operations.len() >= 21, "{operations:?}");
    for (method, path, _) in &operations {
        // Text, not JSON; tests/metrics.rs scrapes it.
        if path == "/metrics" {
            continue;
        }
        let concrete = path
            .replace("{id}", "999999")
            .replace("{name}", "no-such-job");
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let (status, body) = server.call(method.clone(), &concrete, None, None).await;
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert_ne!(
            body["error"]["message"], "route not found",
            "{method} {path} is documented but not served"
        );
    }
}

#[test]
fn operation_ids_are_unique_and_errors_are_documented() {
    let mut ids = std::collections::BTreeSet::new();
    for (method, path, operation) in operations() {
        let id = operation["operationId"].as_str().unwrap().to_owned();
        assert!(ids.insert(id.clone()), "operationId {id} is used twice");
        let responses = operation["responses"].as_object().unwrap();
        let secured = operation.get("security") != Some(&serde_json::json!([{}]));
        if secured {
            for status in ["401", "500", "503"] {
                assert!(
                    responses.contains_key(status),
                    "{method} {path} needs a token but does not document {status}"
                );
            }
        }
        for (status, response) in responses {
            if status.starts_with('4') || status.starts_with('5') {
                assert_eq!(
                    response["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorBody",
                    "{method} {path} {status}"
                );
            }
        }
    }
}

/// The client builds its URLs with `falconeri_common::api::paths`: each
/// must name a documented route.
#[test]
fn the_clients_paths_are_documented_routes() {
    use falconeri_common::api::paths;
    let documented: Vec<String> = operations().into_iter().map(|(_, path, _)| path).collect();
    let template = |path: String| {
        path.replace("/42", "/{id}")
            .replace("/by-name/x", "/by-name/{name}")
    };
    for path in [
        paths::HEALTHZ.to_owned(),
        paths::READYZ.to_owned(),
        paths::VERSION.to_owned(),
        paths::JOBS.to_owned(),
        paths::job(42),
        paths::job_by_name("x"),
        paths::job_describe(42),
        paths::job_progress(42),
        paths::job_retry(42),
        paths::job_cancel(42),
        paths::job_datums(42),
        paths::job_reserve(42),
        paths::job_report(42),
        paths::job_heartbeat(42),
        paths::datum(42),
        paths::datum_heartbeat(42),
        paths::datum_done(42),
        paths::datum_error(42),
        paths::datum_release(42),
    ] {
        let template = template(path);
        assert!(
            documented.contains(&template),
            "{template} is not documented"
        );
    }
}
