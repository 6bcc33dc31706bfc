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
