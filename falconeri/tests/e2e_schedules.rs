//! End-to-end tests of schedules through the real CLI and its local
//! server: a per-second cron expression starts a real job, the time zone is
//! stated, and pause, resume and delete work.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use serde_json::json;

mod support;

use support::{Local, describe};

#[test]
fn a_per_second_schedule_starts_jobs_until_paused() {
    let local = Local::new();
    let input = local.work.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(input.join("a.txt"), "a").unwrap();
    let spec = local.write_spec(
        "tick.json",
        &json!({
            "pipeline": { "name": "tick" },
            "transform": { "cmd": ["true"], "image": "alpine" },
            "parallelism_spec": { "constant": 1 },
            "resource_requests": { "memory": "64Mi", "cpu": 0.1 },
            "input": { "atom": { "URI": "file://./in/", "repo": "in", "glob": "/*" } },
            "egress": { "URI": "file://./out/" }
        }),
    );
    let output = local.falconeri(&[
        "schedule",
        "create",
        "--local",
        "every-second",
        "--cron",
        "* * * * * *",
        spec.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", describe(&output));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("`* * * * * *` in UTC; next run"), "{text}");

    // The server's scheduler wakes at the tick and starts a job.
    let started = Instant::now();
    let schedule = loop {
        let list = local.json(&["schedule", "list", "--local", "-o", "json"]);
        let schedule = list["schedules"][0].clone();
        if schedule["last_run"].is_string() {
            break schedule;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no run: {list}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        schedule["last_error"],
        serde_json::Value::Null,
        "{schedule}"
    );
    let job = schedule["last_run"].as_str().unwrap();
    assert!(job.starts_with("tick-"), "{schedule}");
    let described = local.json(&["job", "describe", "--local", job, "-o", "json"]);
    assert_eq!(described["job"]["pipeline_name"], "tick");

    let output = local.falconeri(&["schedule", "pause", "--local", "every-second"]);
    assert!(output.status.success(), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("paused"));
    let jobs = local.json(&["job", "list", "--local", "-o", "json"])["jobs"]
        .as_array()
        .unwrap()
        .len();
    std::thread::sleep(Duration::from_millis(2_500));
    let after = local.json(&["job", "list", "--local", "-o", "json"])["jobs"]
        .as_array()
        .unwrap()
        .len();
    // A run already taken when the pause landed may still appear.
    assert!(after <= jobs + 1, "{jobs} jobs, then {after} while paused");

    let output = local.falconeri(&["schedule", "delete", "--local", "every-second"]);
    assert!(output.status.success(), "{}", describe(&output));
    let output = local.falconeri(&["schedule", "delete", "--local", "every-second"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no schedule is named"));
}

#[test]
fn bad_cron_expressions_and_time_zones_are_refused_with_their_fields() {
    let local = Local::new();
    let spec = local.write_spec(
        "s.json",
        &json!({
            "pipeline": { "name": "s" },
            "transform": { "cmd": ["true"], "image": "alpine" },
            "parallelism_spec": { "constant": 1 },
            "resource_requests": { "memory": "64Mi", "cpu": 0.1 },
            "input": { "atom": { "URI": "file://./in/", "repo": "in", "glob": "/*" } },
            "egress": { "URI": "file://./out/" }
        }),
    );
    let output = local.falconeri(&[
        "schedule",
        "create",
        "--local",
        "bad",
        "--cron",
        "not a cron",
        "--timezone",
        "Mars/Base",
        spec.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cron: not a cron expression"), "{stderr}");
    assert!(stderr.contains("timezone: \"Mars/Base\""), "{stderr}");
}
