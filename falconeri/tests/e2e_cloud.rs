//! End-to-end tests on object storage: the word-frequencies example through
//! the real CLI, server and workers, reading its inputs from and writing its
//! outputs to s3:// (s3s-fs) and gs:// (fake-gcs-server), as started by
//! `./scripts/test`, which also creates one bucket on each
//! (`FALCONERI_TEST_S3_BUCKET`, `FALCONERI_TEST_GCS_BUCKET`). Each test
//! works under a prefix of its own.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use falconeri_common::storage::storage_for;
use serde_json::Value;

mod support;

use support::{Local, describe, example_dir};

/// Reads a variable `./scripts/test` sets; these tests must never skip.
fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the end-to-end tests through ./scripts/test, which starts the storage emulators")
    })
}

/// `scheme://bucket/<fresh prefix>/` on the emulator for `scheme`.
fn fresh_root(scheme: &str) -> String {
    let bucket = match scheme {
        "s3" => {
            required_env("FALCONERI_TEST_S3_ENDPOINT");
            required_env("FALCONERI_TEST_S3_BUCKET")
        }
        _ => {
            required_env("FALCONERI_TEST_GCS_ENDPOINT");
            required_env("FALCONERI_TEST_GCS_BUCKET")
        }
    };
    format!("{scheme}://{bucket}/e2e-{:016x}/", rand::random::<u64>())
}

/// One runtime for the whole binary: the storage backends keep one client
/// per process, whose connections belong to the runtime that made them.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::LazyLock<tokio::runtime::Runtime> = std::sync::LazyLock::new(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap()
    });
    &RUNTIME
}

/// Uploads every file under `dir` to `prefix`, keeping relative paths.
async fn seed(dir: &Path, prefix: &str) {
    let storage = storage_for(prefix).unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        storage
            .upload(&entry.path(), &format!("{prefix}{name}"))
            .await
            .unwrap();
    }
}

/// The example's spec for `scheme` with every `scheme://falconeri-example/`
/// URI moved under `root`.
fn example_spec(local: &Local, file: &str, root: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(example_dir().join(file)).unwrap();
    let scheme = root.split("://").next().unwrap();
    let text = text.replace(&format!("{scheme}://falconeri-example/"), root);
    let spec: Value = serde_json::from_str(&text).unwrap();
    local.write_spec(file, &spec)
}

fn runs_the_example(scheme: &str, file: &str) {
    let root = fresh_root(scheme);
    let rt = runtime();
    rt.block_on(async {
        seed(&example_dir().join("texts"), &format!("{root}texts/")).await;
        seed(&example_dir().join("scripts"), &format!("{root}scripts/")).await;
    });
    let local = Local::new();
    let spec = example_spec(&local, file, &root);
    let output = local.falconeri(&["job", "run", "--local", "--wait", spec.to_str().unwrap()]);
    assert!(output.status.success(), "{}", describe(&output));

    // The egress holds exactly the expected outputs (no staging left over).
    let egress = format!("{root}word-frequencies/");
    let storage = storage_for(&egress).unwrap();
    let listing = rt.block_on(storage.list(&egress)).unwrap();
    let names: Vec<_> = listing.iter().map(|o| o.relative_path.clone()).collect();
    let mut expected: Vec<_> = std::fs::read_dir(example_dir().join("expected"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    expected.sort();
    assert_eq!(names, expected);
    let dir = tempfile::tempdir().unwrap();
    for object in &listing {
        let dest = dir.path().join(&object.relative_path);
        rt.block_on(storage.download(&object.uri, &dest)).unwrap();
        assert_eq!(
            std::fs::read_to_string(&dest).unwrap(),
            std::fs::read_to_string(example_dir().join("expected").join(&object.relative_path))
                .unwrap(),
            "{}",
            object.relative_path
        );
    }
    let staged = rt
        .block_on(storage.list(&format!("{egress}.falconeri-staging/")))
        .unwrap();
    assert!(staged.is_empty(), "staging left behind: {staged:?}");

    let jobs = local.json(&["job", "list", "--local", "-o", "json"]);
    let name = jobs["jobs"][0]["name"].as_str().unwrap().to_owned();
    let described = local.json(&["job", "describe", "--local", &name, "-o", "json"]);
    assert_eq!(described["counts"]["done"], 6, "{described}");
    assert_no_secret_under(local.home.path(), &described.to_string());
}

/// Credentials never reach `describe` output or any log the server and the
/// workers wrote under FALCONERI_HOME.
fn assert_no_secret_under(home: &Path, described: &str) {
    let secret = required_env("AWS_SECRET_ACCESS_KEY");
    assert!(!described.contains(&secret), "describe leaked the secret");
    for entry in walk(home) {
        if let Ok(text) = std::fs::read(&entry) {
            assert!(
                !String::from_utf8_lossy(&text).contains(&secret),
                "{} contains the secret",
                entry.display()
            );
        }
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn word_frequencies_runs_on_s3() {
    runs_the_example("s3", "word-frequencies.s3.json");
}

#[test]
fn word_frequencies_runs_on_gcs() {
    runs_the_example("gs", "word-frequencies.gcs.json");
}

/// An egress bucket that does not exist is refused when the job starts:
/// exit 1 with the reason, and no job is created.
#[test]
fn a_missing_egress_bucket_refuses_the_job() {
    for scheme in ["s3", "gs"] {
        let root = fresh_root(scheme);
        runtime().block_on(seed(&example_dir().join("texts"), &format!("{root}texts/")));
        // s3s-fs creates a missing bucket on the first PUT, and so might
        // answer a list for it; a name no S3 server accepts cannot exist.
        let missing_egress = match scheme {
            "s3" => format!("s3://Not_A_Bucket-{:016x}/out/", rand::random::<u64>()),
            _ => format!("gs://no-such-bucket-{:016x}/out/", rand::random::<u64>()),
        };
        let local = Local::new();
        let spec = local.write_spec(
            "broken-egress.json",
            &copy_texts_spec(&root, &missing_egress, ""),
        );
        let output = local.falconeri(&["job", "run", "--local", spec.to_str().unwrap()]);
        assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("egress: cannot use"), "{scheme}: {stderr}");
        let jobs = local.json(&["job", "list", "--local", "-o", "json"]);
        assert_eq!(jobs["jobs"].as_array().map(Vec::len), Some(0), "{jobs}");
    }
}

/// An egress bucket that disappears while the job runs: every upload fails,
/// so every datum ends in error with the reason, and the job fails — never
/// "done" with outputs missing. (GCS only: s3s-fs re-creates a bucket on the
/// first PUT, so an S3 upload cannot be made to fail this way.)
#[test]
fn a_failing_upload_marks_the_datum_error() {
    let root = fresh_root("gs");
    let endpoint = required_env("FALCONERI_TEST_GCS_ENDPOINT");
    let bucket = format!("vanishing-{:016x}", rand::random::<u64>());
    runtime().block_on(async {
        seed(&example_dir().join("texts"), &format!("{root}texts/")).await;
        let created = reqwest::Client::new()
            .post(format!("{endpoint}/storage/v1/b?project=test"))
            .json(&serde_json::json!({ "name": bucket }))
            .send()
            .await
            .unwrap();
        assert!(created.status().is_success(), "{}", created.status());
    });
    // The commands delete the (still empty) egress bucket before writing
    // their outputs.
    let delete = format!("curl -s -X DELETE '{endpoint}/storage/v1/b/{bucket}'; ");
    let local = Local::new();
    let spec = local.write_spec(
        "vanishing-egress.json",
        &copy_texts_spec(&root, &format!("gs://{bucket}/out/"), &delete),
    );
    let output = local.falconeri(&["job", "run", "--local", "--wait", spec.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let jobs = local.json(&["job", "list", "--local", "-o", "json"]);
    let name = jobs["jobs"][0]["name"].as_str().unwrap().to_owned();
    let described = local.json(&["job", "describe", "--local", &name, "-o", "json"]);
    assert_eq!(described["job"]["status"], "error", "{described}");
    assert_eq!(described["counts"]["error"], 6, "{described}");
    let message = described["failed"][0]["error_message"].as_str().unwrap();
    assert!(message.contains("upload"), "{message}");
    assert_no_secret_under(local.home.path(), &described.to_string());
}

/// A spec copying each text of `root` to `egress`, running `before` first.
fn copy_texts_spec(root: &str, egress: &str, before: &str) -> serde_json::Value {
    serde_json::json!({
        "pipeline": { "name": "broken-egress" },
        "transform": {
            "cmd": ["sh", "-c", format!("{before}cp \"$FALCONERI_PFS\"/texts/* \"$FALCONERI_PFS/out/\"")],
            "image": "alpine"
        },
        "parallelism_spec": { "constant": 2 },
        "resource_requests": { "memory": "64Mi", "cpu": 0.1 },
        "datum_tries": 1,
        "input": { "atom": { "URI": format!("{root}texts/"), "repo": "texts", "glob": "/*" } },
        "egress": { "URI": egress }
    })
}
