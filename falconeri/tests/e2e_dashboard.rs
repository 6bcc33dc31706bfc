//! The dashboard in a real browser: the real CLI starts the embedded server
//! and two jobs run by real workers; `dashboard_browser.py` drives Debian's
//! chromium through selenium to sign in, watch the slow job's progress
//! change, read a failing datum's log live, retry it and cancel its job.
//!
//! scripts/test installs chromium, chromium-driver and selenium and sets
//! `FALCONERI_TEST_CHROMIUM` (the browser) and `FALCONERI_TEST_SELENIUM` (a
//! python with selenium). The screenshots the script takes are written to
//! `guide/src/images/` when `FALCONERI_UPDATE_SCREENSHOTS=1`, for the
//! guide's dashboard chapter; otherwise to a temporary directory.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

mod support;

use support::{Local, describe};

const CHROMIUM_VAR: &str = "FALCONERI_TEST_CHROMIUM";
const SELENIUM_VAR: &str = "FALCONERI_TEST_SELENIUM";
const SCREENSHOTS: [&str; 6] = [
    "dashboard-sign-in.png",
    "dashboard-jobs.png",
    "dashboard-job.png",
    "dashboard-datum.png",
    "dashboard-canceled.png",
    "dashboard-phone.png",
];

fn required(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!(
            "{var} is not set. Run ./scripts/test, which installs Debian's chromium and \
             chromium-driver and selenium, or set {CHROMIUM_VAR} to a chromium and \
             {SELENIUM_VAR} to a python that has selenium."
        )
    })
}

/// The chromedriver beside `chromium`, else the one on PATH.
fn chromedriver(chromium: &str) -> PathBuf {
    let beside = Path::new(chromium).with_file_name("chromedriver");
    if beside.exists() {
        return beside;
    }
    PathBuf::from("chromedriver")
}

fn spec(name: &str, input: &str, cmd: String, parallelism: u32) -> Value {
    json!({
        "pipeline": { "name": name },
        "transform": { "cmd": ["sh", "-c", cmd], "image": "alpine" },
        "parallelism_spec": { "constant": parallelism },
        "resource_requests": { "memory": "64Mi", "cpu": 0.1 },
        "datum_tries": 1,
        "input": { "atom": { "URI": format!("file://./{input}/"), "repo": "in", "glob": "/*" } },
        "egress": { "URI": format!("file://./out-{name}/") }
    })
}

#[test]
fn the_dashboard_works_in_chromium() {
    let chromium = required(CHROMIUM_VAR);
    let python = required(SELENIUM_VAR);
    let local = Local::new();
    let work = local.work.path();

    // Thirty datums of 1.5 s each, one at a time: progress the browser can
    // watch move for most of a minute.
    let slow = work.join("slow");
    std::fs::create_dir_all(&slow).unwrap();
    for i in 0..30 {
        std::fs::write(slow.join(format!("frame-{i:02}")), "x").unwrap();
    }
    // `a-bad` prints, waits for the browser to have seen that line (the
    // file `go`), and fails; the others keep the job running until the
    // browser cancels it.
    let failing = work.join("failing");
    std::fs::create_dir_all(&failing).unwrap();
    for name in ["a-bad", "b-ok", "c-ok"] {
        std::fs::write(failing.join(name), "x").unwrap();
    }
    let go = work.join("go");
    let fail_cmd = format!(
        r#"if [ -e "$FALCONERI_PFS/in/a-bad" ]; then
  echo "waiting for the browser"
  while [ ! -e '{go}' ]; do sleep 0.1; done
  echo "failing on purpose" >&2
  exit 3
fi
sleep 300"#,
        go = go.display()
    );
    let slow_spec = local.write_spec(
        "slow.json",
        &spec(
            "render",
            "slow",
            r#"echo "rendering $FALCONERI_DATUM_ID"; sleep 1.5"#.to_owned(),
            1,
        ),
    );
    let fail_spec = local.write_spec("failing.json", &spec("ingest", "failing", fail_cmd, 3));
    let slow_job = local.json(&[
        "job",
        "run",
        "--local",
        "-o",
        "json",
        slow_spec.to_str().unwrap(),
    ]);
    let fail_job = local.json(&[
        "job",
        "run",
        "--local",
        "-o",
        "json",
        fail_spec.to_str().unwrap(),
    ]);

    let home = local.home.path();
    let server: Value =
        serde_json::from_slice(&std::fs::read(home.join("server.json")).unwrap()).unwrap();
    let token = std::fs::read_to_string(home.join("token")).unwrap();
    let update = std::env::var_os("FALCONERI_UPDATE_SCREENSHOTS").is_some();
    let shots_dir = tempfile::tempdir().unwrap();
    let shots = if update {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../guide/src/images")
    } else {
        shots_dir.path().to_owned()
    };
    std::fs::create_dir_all(&shots).unwrap();

    let output = std::process::Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dashboard_browser.py"))
        .env("DASH_URL", server["url"].as_str().unwrap())
        .env("DASH_TOKEN", token.trim())
        .env("DASH_SLOW_JOB", slow_job["id"].to_string())
        .env("DASH_FAIL_JOB", fail_job["id"].to_string())
        .env("DASH_GO", &go)
        .env("DASH_SHOTS", &shots)
        .env("DASH_CHROMIUM", &chromium)
        .env("DASH_CHROMEDRIVER", chromedriver(&chromium))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", describe(&output));

    for name in SCREENSHOTS {
        let png = std::fs::read(shots.join(name)).unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n"), "{name} is not a PNG");
    }
    // What the browser did is what the server recorded.
    let failed = local.json(&[
        "job",
        "describe",
        "--local",
        "-o",
        "json",
        fail_job["name"].as_str().unwrap(),
    ]);
    assert_eq!(failed["job"]["status"], "canceled", "{failed}");
}
