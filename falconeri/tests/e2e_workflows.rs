//! End-to-end tests of workflows through the real CLI, its local server
//! (SQLite) and real worker processes on `file://` storage: a chain whose
//! second step reads the first one's egress, a failed upstream that
//! cancels its downstream steps until `job retry` resumes the chain, and
//! `workflow retry` resuming a step that could not start and one that
//! failed.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use serde_json::{Value, json};

mod support;

use support::{Local, describe};

/// A step spec reading `input` (relative to the work directory) and
/// writing `egress`, running `script` with `sh -c`.
fn step_spec(name: &str, input: &str, egress: &str, script: &str) -> Value {
    json!({
        "pipeline": { "name": name },
        "transform": { "cmd": ["sh", "-c", script], "image": "alpine" },
        "parallelism_spec": { "constant": 2 },
        "resource_requests": { "memory": "64Mi", "cpu": 0.1 },
        "datum_tries": 1,
        "input": { "atom": { "URI": format!("file://./{input}/"), "repo": "in", "glob": "/*" } },
        "egress": { "URI": format!("file://./{egress}/") }
    })
}

/// Writes two input files under `raw/` of the work directory.
fn write_inputs(local: &Local) {
    let raw = local.work.path().join("raw");
    std::fs::create_dir_all(&raw).unwrap();
    std::fs::write(raw.join("one.txt"), "one").unwrap();
    std::fs::write(raw.join("two.txt"), "two").unwrap();
}

/// Copies each input file to the output with `suffix` appended to its name.
fn copy_script(suffix: &str) -> String {
    format!(
        "for f in \"$FALCONERI_PFS\"/in/*; do tr a-z A-Z < \"$f\" > \"$FALCONERI_PFS/out/$(basename \"$f\"){suffix}\"; done"
    )
}

fn write_workflow(local: &Local, name: &str, workflow: &Value) -> PathBuf {
    local.write_spec(name, workflow)
}

fn step<'a>(run: &'a Value, name: &str) -> &'a Value {
    run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {run}"))
}

#[test]
fn a_two_step_chain_runs_the_second_step_on_the_first_ones_egress() {
    let local = Local::new();
    write_inputs(&local);
    // The first step's spec is a file beside the workflow, named by path.
    local.write_spec(
        "upper.json",
        &step_spec("upper", "raw", "upper-out", &copy_script(".up")),
    );
    let workflow = write_workflow(
        &local,
        "chain.json",
        &json!({
            "workflow": { "name": "chain" },
            "steps": [
                { "name": "again", "spec": step_spec("again", "upper-out", "again-out", &copy_script(".again")) },
                { "name": "upper", "spec": "upper.json" },
            ]
        }),
    );
    let output = local.falconeri(&[
        "workflow",
        "run",
        "--local",
        "--wait",
        workflow.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", describe(&output));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("upper (reads its egress)"), "{text}");

    let out = local.work.path().join("again-out");
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    assert_eq!(names, ["one.txt.up.again", "two.txt.up.again"]);
    assert_eq!(
        std::fs::read_to_string(out.join("one.txt.up.again")).unwrap(),
        "ONE"
    );

    let runs = local.json(&["workflow", "list", "--local", "-o", "json"]);
    let name = runs["workflows"][0]["name"].as_str().unwrap().to_owned();
    let run = local.json(&["workflow", "describe", "--local", &name, "-o", "json"]);
    assert_eq!(run["status"], "done", "{run}");
    // Listed in the order they run, whatever the file's order.
    assert_eq!(run["steps"][0]["name"], "upper");
    let again = step(&run, "again");
    assert_eq!(again["status"], "done");
    assert_eq!(
        again["upstream"],
        json!([{ "step": "upper", "kind": "egress" }])
    );
    // The second job started after the first one finished.
    let upper_done = step(&run, "upper")["job"]["finished_at"].as_i64().unwrap();
    let again_created = again["job"]["created_at"].as_i64().unwrap();
    assert!(again_created >= upper_done, "{run}");
}

#[test]
fn a_failed_upstream_cancels_its_downstream_until_job_retry_resumes_the_chain() {
    let local = Local::new();
    write_inputs(&local);
    let flag = local.work.path().join("fixed");
    let flaky_script = format!(
        "test -e '{}' || {{ echo not fixed yet; exit 3; }}; {}",
        flag.display(),
        copy_script(".flaky")
    );
    let workflow = write_workflow(
        &local,
        "flaky.json",
        &json!({
            "workflow": { "name": "flaky" },
            "steps": [
                { "name": "flaky", "spec": step_spec("flaky", "raw", "flaky-out", &flaky_script) },
                { "name": "next", "spec": step_spec("next", "raw", "next-out", &copy_script(".next")), "after": ["flaky"] },
                { "name": "last", "spec": step_spec("last", "next-out", "last-out", &copy_script(".last")) },
            ]
        }),
    );
    let output = local.falconeri(&[
        "workflow",
        "run",
        "--local",
        "--wait",
        workflow.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));

    let runs = local.json(&["workflow", "list", "--local", "-o", "json"]);
    let name = runs["workflows"][0]["name"].as_str().unwrap().to_owned();
    let run = local.json(&["workflow", "describe", "--local", &name, "-o", "json"]);
    assert_eq!(run["status"], "error", "{run}");
    let flaky_job = step(&run, "flaky")["job"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(step(&run, "flaky")["status"], "error");
    let next = step(&run, "next");
    assert_eq!(next["status"], "canceled");
    assert_eq!(
        next["reason"],
        format!("upstream step \"flaky\" (job {flaky_job}) ended error")
    );
    assert_eq!(
        step(&run, "last")["reason"],
        "upstream step \"next\" was canceled"
    );
    assert!(!local.work.path().join("next-out").exists());
    let text = local.falconeri(&["workflow", "describe", "--local", &name]);
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("next: upstream step \"flaky\""),
        "{}",
        describe(&text)
    );

    // Fixed: retrying the failed job resumes the chain.
    std::fs::write(&flag, "").unwrap();
    let retry = local.falconeri(&["job", "retry", "--local", "--wait", &flaky_job]);
    assert!(retry.status.success(), "{}", describe(&retry));
    let wait = local.falconeri(&["workflow", "wait", "--local", &name]);
    assert!(wait.status.success(), "{}", describe(&wait));
    let run = local.json(&["workflow", "describe", "--local", &name, "-o", "json"]);
    assert_eq!(run["status"], "done", "{run}");
    assert_ne!(step(&run, "flaky")["job"]["name"], flaky_job.as_str());
    assert!(step(&run, "flaky")["job"]["retry_of"].is_i64());
    assert!(
        local
            .work
            .path()
            .join("last-out/one.txt.next.last")
            .exists()
    );
}

#[test]
fn workflow_retry_resumes_a_step_that_could_not_start_and_one_whose_job_failed() {
    let local = Local::new();
    write_inputs(&local);
    // `late`'s input is empty: its job cannot be created. `flaky` fails
    // until the flag exists. `last` waits for both.
    std::fs::create_dir_all(local.work.path().join("late-in")).unwrap();
    let flag = local.work.path().join("fixed");
    let flaky_script = format!(
        "test -e '{}' || {{ echo not fixed yet; exit 3; }}; {}",
        flag.display(),
        copy_script(".flaky")
    );
    let workflow = write_workflow(
        &local,
        "retry.json",
        &json!({
            "workflow": { "name": "retry" },
            "steps": [
                { "name": "late", "spec": step_spec("late", "late-in", "late-out", &copy_script(".late")) },
                { "name": "flaky", "spec": step_spec("flaky", "raw", "flaky-out", &flaky_script) },
                { "name": "last", "spec": step_spec("last", "flaky-out", "last-out", &copy_script(".last")), "after": ["late"] },
            ]
        }),
    );
    let output = local.falconeri(&[
        "workflow",
        "run",
        "--local",
        "--wait",
        workflow.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let runs = local.json(&["workflow", "list", "--local", "-o", "json"]);
    let name = runs["workflows"][0]["name"].as_str().unwrap().to_owned();
    let run = local.json(&["workflow", "describe", "--local", &name, "-o", "json"]);
    assert_eq!(step(&run, "late")["state"], "failed", "{run}");
    assert_eq!(step(&run, "late")["job"], Value::Null, "{run}");
    assert!(
        step(&run, "late")["reason"]
            .as_str()
            .unwrap()
            .starts_with("cannot create its job"),
        "{run}"
    );
    let flaky_job = step(&run, "flaky")["job"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(step(&run, "flaky")["status"], "error", "{run}");
    assert_eq!(step(&run, "last")["status"], "canceled", "{run}");

    // Fixed: one `workflow retry` resumes the whole chain.
    std::fs::write(local.work.path().join("late-in/one.txt"), "one").unwrap();
    std::fs::write(&flag, "").unwrap();
    let retry = local.falconeri(&["workflow", "retry", "--local", "--wait", &name]);
    assert!(retry.status.success(), "{}", describe(&retry));
    let run = local.json(&["workflow", "describe", "--local", &name, "-o", "json"]);
    assert_eq!(run["status"], "done", "{run}");
    assert!(step(&run, "late")["job"]["name"].is_string(), "{run}");
    assert_eq!(step(&run, "late")["reason"], Value::Null, "{run}");
    assert_ne!(step(&run, "flaky")["job"]["name"], flaky_job.as_str());
    assert!(step(&run, "flaky")["job"]["retry_of"].is_i64(), "{run}");
    assert!(local.work.path().join("late-out/one.txt.late").exists());
    assert!(
        local
            .work
            .path()
            .join("last-out/one.txt.flaky.last")
            .exists()
    );

    // Nothing is left to retry: a clear refusal.
    let again = local.falconeri(&["workflow", "retry", "--local", &name]);
    assert_eq!(again.status.code(), Some(1), "{}", describe(&again));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("has no failed or canceled step to retry"),
        "{}",
        describe(&again)
    );
}

#[test]
fn a_cycle_is_refused_before_anything_runs() {
    let local = Local::new();
    let workflow = write_workflow(
        &local,
        "cycle.json",
        &json!({
            "workflow": { "name": "cycle" },
            "steps": [
                { "name": "a", "spec": step_spec("a", "b-out", "a-out", "true") },
                { "name": "b", "spec": step_spec("b", "a-out", "b-out", "true") },
            ]
        }),
    );
    for command in ["validate", "run"] {
        let output = local.falconeri(&["workflow", command, "--local", workflow.to_str().unwrap()]);
        assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("steps: the steps depend on each other in a cycle: a → b → a"),
            "{stderr}"
        );
    }
}

#[test]
fn the_example_workflow_is_valid_and_runs() {
    let local = Local::new();
    support::copy_dir(
        &support::example_dir().join("../workflow"),
        &local.work.path().join("example"),
    );
    let file = local.work.path().join("example/workflow.json");
    let output = local.falconeri(&["workflow", "validate", file.to_str().unwrap()]);
    assert!(output.status.success(), "{}", describe(&output));
    let output = local.falconeri(&[
        "workflow",
        "run",
        "--local",
        "--wait",
        file.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", describe(&output));
    let total =
        std::fs::read_to_string(local.work.path().join("example/report/total.txt")).unwrap();
    assert_eq!(total.trim(), "9");
}
