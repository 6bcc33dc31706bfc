//! Helpers shared by the end-to-end test binaries: an isolated local setup
//! driven through the real CLI, and the example's files.

#![allow(clippy::unwrap_used, dead_code)]

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use serde_json::Value;

/// Variables of the developer's own setup that would point a test's CLI at
/// a real server, cluster or database.
const OUTSIDE_ENV: &[&str] = &[
    "FALCONERI_SERVER",
    "FALCONERI_TOKEN",
    "FALCONERI_NAMESPACE",
    "FALCONERI_KUBE_CONTEXT",
    "FALCONERI_DATABASE_URL",
    "FALCONERI_PROXY_PORT",
    "FALCONERI_PROXY_POSTGRES_PORT",
    "FALCONERI_PROXY_MINIO_PORT",
    "KUBERNETES_SERVICE_HOST",
    "KUBERNETES_SERVICE_PORT",
    "PGPASSWORD",
];

/// The `falconeri` binary under test, without [`OUTSIDE_ENV`]. Async tests
/// wrap it with `tokio::process::Command::from`.
pub fn falconeri_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_falconeri"));
    for var in OUTSIDE_ENV {
        command.env_remove(var);
    }
    command
}

/// One isolated local setup; stops its server when dropped.
pub struct Local {
    pub home: tempfile::TempDir,
    pub work: tempfile::TempDir,
}

impl Local {
    pub fn new() -> Local {
        Local {
            home: tempfile::tempdir().unwrap(),
            work: tempfile::tempdir().unwrap(),
        }
    }

    pub fn falconeri(&self, args: &[&str]) -> Output {
        falconeri_command()
            .args(args)
            .env("FALCONERI_HOME", self.home.path())
            .env("RUST_LOG", "info")
            .output()
            .unwrap()
    }

    /// Runs a command that must succeed and returns its stdout as JSON.
    pub fn json(&self, args: &[&str]) -> Value {
        let output = self.falconeri(args);
        assert!(
            output.status.success(),
            "{args:?} failed: {}",
            describe(&output)
        );
        serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|err| panic!("{args:?}: not JSON ({err}): {}", describe(&output)))
    }

    /// Starts the job of `spec` and waits (bounded) until `running` of its
    /// datums run; returns the job's name.
    pub fn start_and_wait_until_running(&self, spec: &Path, running: i64) -> String {
        self.start_and_wait_until(spec, |described| described["counts"]["running"] == running)
    }

    /// Starts the job of `spec` and waits (bounded) until `ready` holds for
    /// its `job describe`; returns the job's name.
    pub fn start_and_wait_until(&self, spec: &Path, ready: impl Fn(&Value) -> bool) -> String {
        let job = self.json(&[
            "job",
            "run",
            "--local",
            "-o",
            "json",
            spec.to_str().unwrap(),
        ]);
        let name = job["name"].as_str().unwrap().to_owned();
        let started = Instant::now();
        loop {
            let described = self.json(&["job", "describe", "--local", &name, "-o", "json"]);
            if ready(&described) {
                return name;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "never started: {described}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn write_spec(&self, name: &str, spec: &Value) -> PathBuf {
        let path = self.work.path().join(name);
        std::fs::write(&path, serde_json::to_vec_pretty(spec).unwrap()).unwrap();
        path
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        let _ = self.falconeri(&["local", "stop"]);
    }
}

pub fn describe(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

pub fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/word-frequencies")
}
