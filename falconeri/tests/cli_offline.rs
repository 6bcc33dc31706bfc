//! The built `falconeri` binary, for commands that need no server: version,
//! schema, and spec validation with its exit statuses.

mod support;

use std::{path::Path, process::Output};

use serde_json::{Value, json};

/// Runs the CLI with `args`, isolated from the user's configuration: no
/// server variables, and a throwaway home, so a mistake can never start or
/// reach a real server.
fn falconeri(home: &Path, args: &[&str]) -> Output {
    support::falconeri_command()
        .args(args)
        .env("FALCONERI_HOME", home)
        .output()
        .expect("the falconeri binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A spec that runs locally: relative file:// URIs, resolved against the
/// spec's directory.
fn good_spec() -> Value {
    json!({
        "pipeline": { "name": "word_counts" },
        "transform": {
            "cmd": ["sh", "-c", "wc -w /pfs/texts/* > /pfs/out/count"],
            "image": "local"
        },
        "parallelism_spec": { "constant": 2 },
        "resource_requests": { "memory": "100Mi", "cpu": 0.5 },
        "datum_tries": 2,
        "job_timeout": "5m",
        "input": { "atom": { "URI": "file://texts/", "repo": "texts", "glob": "/*" } },
        "egress": { "URI": "file://out/" }
    })
}

fn write_spec(dir: &Path, name: &str, spec: &Value) -> String {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_string_pretty(spec).expect("json")).expect("write spec");
    path.to_str().expect("utf-8 temp path").to_owned()
}

#[test]
fn version_is_printed() {
    let home = tempfile::tempdir().expect("tempdir");
    let output = falconeri(home.path(), &["--version"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        stdout(&output).trim(),
        format!("falconeri {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn schema_is_json_describing_the_transform() {
    let home = tempfile::tempdir().expect("tempdir");
    let output = falconeri(home.path(), &["schema"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let schema: Value = serde_json::from_slice(&output.stdout).expect("schema is JSON");
    assert!(schema["properties"]["transform"].is_object(), "{schema:#}");
}

#[test]
fn good_spec_is_valid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = write_spec(dir.path(), "spec.json", &good_spec());
    let output = falconeri(dir.path(), &["job", "validate", &spec]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output).trim(), format!("{spec} is valid"));
    // Validation is offline: the local server was not started.
    assert!(!dir.path().join("server.json").exists());
}

#[test]
fn every_validation_problem_is_listed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = good_spec();
    spec["transform"]["cmd"] = json!([]);
    spec["parallelism_spec"]["constant"] = json!(0);
    let spec = write_spec(dir.path(), "bad.json", &spec);

    let output = falconeri(dir.path(), &["job", "validate", &spec]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let err = stderr(&output);
    assert!(
        err.starts_with(&format!("error: {spec} is invalid:")),
        "{err}"
    );
    assert!(err.contains("\n  transform.cmd: "), "{err}");
    assert!(err.contains("\n  parallelism_spec.constant: "), "{err}");
    assert!(stdout(&output).is_empty());
}

#[test]
fn unknown_field_is_named_by_its_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = good_spec();
    spec["transform"]["comand"] = json!(["true"]);
    let spec = write_spec(dir.path(), "typo.json", &spec);

    let output = falconeri(dir.path(), &["job", "validate", &spec]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let err = stderr(&output);
    assert!(err.contains("\n  transform.comand: "), "{err}");
    assert!(err.contains("unknown field"), "{err}");
}

#[test]
fn broken_json_is_invalid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("broken.json");
    std::fs::write(&path, "{ \"pipeline\": ").expect("write");
    let output = falconeri(
        dir.path(),
        &["job", "validate", path.to_str().expect("utf-8")],
    );
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
}

#[test]
fn invalid_spec_is_refused_before_any_server_is_contacted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = good_spec();
    spec["parallelism_spec"]["constant"] = json!(0);
    let spec = write_spec(dir.path(), "bad.json", &spec);

    // Port 9 on localhost refuses connections: reaching it would fail with
    // exit status 1, not 2.
    let output = falconeri(
        dir.path(),
        &["--server", "http://127.0.0.1:9", "job", "run", &spec],
    );
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("parallelism_spec.constant"));
}

#[test]
fn missing_spec_file_is_an_ordinary_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.json");
    let output = falconeri(
        dir.path(),
        &["job", "validate", missing.to_str().expect("utf-8")],
    );
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(err.starts_with("error: cannot read "), "{err}");
    // The cause chain is on one line.
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

#[test]
fn unreachable_server_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = falconeri(
        dir.path(),
        &["--server", "http://127.0.0.1:9", "job", "list"],
    );
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(err.contains("http://127.0.0.1:9"), "{err}");
}

#[test]
fn usage_errors_exit_2() {
    let home = tempfile::tempdir().expect("tempdir");
    let output = falconeri(home.path(), &["job", "frobnicate"]);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn local_status_without_a_server() {
    let home = tempfile::tempdir().expect("tempdir");
    let output = falconeri(home.path(), &["-o", "json", "local", "status"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let status: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(status["running"], json!(false));
}
