//! `falconeri deploy --dry-run` through the built binary: it needs no
//! cluster, refuses bad flags before rendering, and every manifest of a matrix
//! of flags passes `kubernetes-validate --strict` for the oldest and newest
//! Kubernetes versions we support.
//!
//! The validator is found through `FALCONERI_TEST_KUBERNETES_VALIDATE`, which
//! `./scripts/test` sets. Without it these tests fail rather than skip: a
//! skipped validation would hide a manifest the API server refuses.

mod support;

use std::{path::Path, process::Output};

use serde_json::Value;

/// The environment variable naming the `kubernetes-validate` program.
const VALIDATE_VAR: &str = "FALCONERI_TEST_KUBERNETES_VALIDATE";

/// The Kubernetes versions every manifest must be valid for: the API version
/// k8s-openapi is built for, and the newest the validator knows.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.34.0", "1.37.0"];

/// Runs the CLI with `args` where no cluster can be reached: KUBECONFIG names
/// a file that does not exist, HOME is empty, and the in-cluster variables
/// are unset.
fn falconeri(home: &Path, args: &[&str]) -> Output {
    support::falconeri_command()
        .args(args)
        .env("HOME", home)
        .env("KUBECONFIG", home.join("no-such-kubeconfig"))
        .env("FALCONERI_HOME", home.join("falconeri"))
        .output()
        .expect("the falconeri binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The manifest `deploy --dry-run EXTRA...` prints.
fn dry_run(home: &Path, extra: &[&str]) -> String {
    let mut args = vec!["deploy", "--dry-run"];
    args.extend_from_slice(extra);
    let output = falconeri(home, &args);
    assert!(
        output.status.success(),
        "deploy --dry-run {extra:?} failed: {}",
        text(&output.stderr)
    );
    text(&output.stdout)
}

fn parse(manifest: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(manifest)
        .expect("the manifest is YAML")
        .into_iter()
        .filter(|document| !document.is_null())
        .collect()
}

/// `kubernetes-validate`, from FALCONERI_TEST_KUBERNETES_VALIDATE.
fn validator() -> String {
    std::env::var(VALIDATE_VAR).unwrap_or_else(|_| {
        panic!(
            "{VALIDATE_VAR} is not set. Run ./scripts/test, which installs kubernetes-validate, \
             or point it at a kubernetes-validate program (pip install kubernetes-validate)."
        )
    })
}

#[test]
fn dry_run_prints_the_manifest_without_a_cluster() {
    let home = tempfile::tempdir().expect("tempdir");
    let objects = parse(&dry_run(home.path(), &["--namespace", "batch-jobs"]));
    let kinds: Vec<&str> = objects
        .iter()
        .map(|object| object["kind"].as_str().expect("kind"))
        .collect();
    assert_eq!(
        kinds,
        [
            "Namespace",
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "Secret",
            "PersistentVolumeClaim",
            "Service",
            "Service",
            "Deployment",
            "Deployment",
        ]
    );
    assert_eq!(objects[0]["metadata"]["name"], "batch-jobs");
    for object in &objects[1..] {
        assert_eq!(object["metadata"]["namespace"], "batch-jobs");
    }
    let secret = &objects[4]["stringData"];
    let token = secret["token"].as_str().expect("token");
    assert_eq!(token.len(), 64, "a 32-byte hex token");

    // Each run generates new credentials.
    let again = parse(&dry_run(home.path(), &["--namespace", "batch-jobs"]));
    assert_ne!(again[4]["stringData"]["token"], secret["token"]);
    assert_ne!(
        again[4]["stringData"]["database-password"],
        secret["database-password"]
    );
}

#[test]
fn bad_flags_are_refused_with_status_2() {
    let home = tempfile::tempdir().expect("tempdir");
    for (args, mentions) in [
        (&["--namespace", "Not_A_Label"][..], "--namespace"),
        (&["--image", ""][..], "--image"),
        (&["--replicas", "0"][..], "--replicas"),
        (&["--memory", "1 GB"][..], "--memory"),
        (
            &["--storage-class-name", "Fast SSD"][..],
            "--storage-class-name",
        ),
        (
            &["--postgres-version", "18\nkind: Pod"][..],
            "--postgres-version",
        ),
    ] {
        let mut all = vec!["deploy", "--dry-run"];
        all.extend_from_slice(args);
        let output = falconeri(home.path(), &all);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(output.stdout.is_empty(), "{args:?} printed a manifest");
        let stderr = text(&output.stderr);
        assert!(stderr.contains(mentions), "{args:?}: {stderr}");
    }
}

#[test]
fn manifests_pass_kubernetes_validate() {
    let validator = validator();
    let home = tempfile::tempdir().expect("tempdir");
    let matrix: [&[&str]; 5] = [
        &[],
        &["--development"],
        &["--skip-secret", "--namespace", "ci-1"],
        &["--development", "--skip-secret"],
        &[
            "--namespace",
            "prod",
            "--image",
            "registry.example.com/team/falconerid@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "--image-pull-policy",
            "always",
            "--replicas",
            "3",
            "--cpu",
            "2",
            "--memory",
            "4Gi",
            "--postgres-version",
            "17.6",
            "--postgres-cpu",
            "1500m",
            "--postgres-memory",
            "8Gi",
            "--postgres-storage",
            "100Gi",
            "--storage-class-name",
            "premium-rwo",
            "--gcs-key-secret",
            "gcs-key",
        ],
    ];
    let mut files = Vec::new();
    let mut objects = 0;
    for (i, flags) in matrix.iter().enumerate() {
        let manifest = dry_run(home.path(), flags);
        objects += parse(&manifest).len();
        let path = home.path().join(format!("manifest-{i}.yml"));
        std::fs::write(&path, manifest).expect("write manifest");
        files.push(path);
    }
    for version in KUBERNETES_VERSIONS {
        let output = std::process::Command::new(&validator)
            .args(["--strict", "--kubernetes-version", version])
            .args(&files)
            .output()
            .unwrap_or_else(|err| panic!("cannot run {validator} ({VALIDATE_VAR}): {err}"));
        let report = format!("{}{}", text(&output.stdout), text(&output.stderr));
        assert!(output.status.success(), "Kubernetes {version}:\n{report}");
        // An unknown kind is only a warning to the validator; for us it
        // is a failure, and every object must have been checked.
        assert!(
            !report.contains("WARN") && !report.contains("ERROR"),
            "Kubernetes {version}:\n{report}"
        );
        let passed = report
            .lines()
            .filter(|line| line.contains(" passed "))
            .count();
        assert_eq!(passed, objects, "Kubernetes {version}:\n{report}");
    }
}
