//! Failure policies end to end: the real CLI, a real local falconerid and
//! real workers running commands that exit with the codes their input
//! files hold. `max_failed_datums` within and over its limit (and `job
//! wait`'s exit status 3), `on_exit` rules that fail the job or the datum
//! (and a signal rule that leaves a timed-out datum alone), `datum retry`
//! during and after a job, and `job retry` of canceled datums.

#![allow(clippy::unwrap_used)]

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

mod support;

use support::{Local, describe};

/// Each datum's command reads its one input file: a number is the exit
/// status to end with, `sleep` blocks until `$FLAGS/release` exists, and a
/// file `$FLAGS/<input>` makes it succeed whatever it holds. Every run is
/// logged to `$FLAGS/runs`.
const COMMAND: &str = "f=$(ls \"$FALCONERI_PFS/in\"); echo \"$f\" >> \"$FLAGS/runs\"; \
     [ -e \"$FLAGS/$f\" ] && exit 0; v=$(cat \"$FALCONERI_PFS/in/$f\"); \
     if [ \"$v\" = sleep ]; then while [ ! -e \"$FLAGS/release\" ]; do sleep 0.1; done; exit 0; fi; \
     exit \"$v\"";

/// Writes a spec whose inputs are `files` (name → contents) and returns
/// it with the directory of flags.
fn write_spec(
    local: &Local,
    name: &str,
    files: &[(&str, &str)],
    extra: Value,
) -> (PathBuf, PathBuf) {
    let input = local.work.path().join(format!("{name}-in"));
    let flags = local.work.path().join(format!("{name}-flags"));
    std::fs::create_dir_all(&input).unwrap();
    std::fs::create_dir_all(&flags).unwrap();
    for (file, contents) in files {
        std::fs::write(input.join(file), contents).unwrap();
    }
    let mut spec = json!({
        "pipeline": { "name": name },
        "transform": {
            "cmd": ["sh", "-c", COMMAND],
            "image": "alpine",
            "env": { "FLAGS": flags.to_str().unwrap() }
        },
        "parallelism_spec": { "constant": 2 },
        "resource_requests": { "memory": "64Mi", "cpu": 0.1 },
        "datum_tries": 1,
        "input": { "atom": { "URI": format!("file://./{name}-in/"), "repo": "in", "glob": "/*" } },
        "egress": { "URI": format!("file://./{name}-out/") }
    });
    for (key, value) in extra.as_object().unwrap() {
        spec[key] = value.clone();
    }
    (local.write_spec(&format!("{name}.json"), &spec), flags)
}

/// How many times the command ran on `file`.
fn runs_of(flags: &Path, file: &str) -> usize {
    std::fs::read_to_string(flags.join("runs"))
        .unwrap_or_default()
        .lines()
        .filter(|line| *line == file)
        .count()
}

fn newest_job(local: &Local) -> String {
    let jobs = local.json(&["job", "list", "--local", "-o", "json"]);
    jobs["jobs"][0]["name"].as_str().unwrap().to_owned()
}

fn describe_job(local: &Local, name: &str) -> Value {
    local.json(&["job", "describe", "--local", name, "-o", "json"])
}

/// The id of the job's datum whose input is `file`.
fn datum_of(local: &Local, job: &str, file: &str) -> String {
    let datums = local.json(&["datum", "list", "--local", "--job", job, "-o", "json"]);
    for datum in datums["datums"].as_array().unwrap() {
        let id = datum["id"].to_string();
        let full = local.json(&["datum", "describe", "--local", &id, "-o", "json"]);
        if full["input_files"][0]["uri"]
            .as_str()
            .unwrap()
            .ends_with(file)
        {
            return id;
        }
    }
    panic!("no datum of {job} reads {file}")
}

/// Waits (bounded) until `ready` holds for the job's description.
fn wait_until(local: &Local, name: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let described = describe_job(local, name);
        if ready(&described) {
            return described;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "never happened: {described}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_job_within_max_failed_datums_ends_done_and_wait_exits_3() {
    let local = Local::new();
    let files = [("a.txt", "0"), ("b.txt", "5"), ("c.txt", "0")];
    let (spec, _) = write_spec(&local, "within", &files, json!({ "max_failed_datums": 1 }));
    let run = local.falconeri(&["job", "run", "--local", "--wait", spec.to_str().unwrap()]);
    assert_eq!(run.status.code(), Some(3), "{}", describe(&run));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("warning: job within-")
            && stderr.contains("ended done with 1 failed datums"),
        "{stderr}"
    );

    let name = newest_job(&local);
    let waited = local.falconeri(&["job", "wait", "--local", &name]);
    assert_eq!(waited.status.code(), Some(3), "{}", describe(&waited));
    let described = describe_job(&local, &name);
    assert_eq!(described["job"]["status"], "done", "{described}");
    assert_eq!(described["job"]["failed_datums"], 1);
    assert_eq!(described["job"]["max_failed_datums"], 1);
    assert_eq!(described["failed"].as_array().unwrap().len(), 1);
    let text = local.falconeri(&["job", "describe", "--local", &name]);
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(
        text.contains("Failed datums:") && text.contains("Max failed datums:"),
        "{text}"
    );
}

#[test]
fn a_job_over_max_failed_datums_fails() {
    let local = Local::new();
    let files = [
        ("a.txt", "5"),
        ("b.txt", "6"),
        ("c.txt", "0"),
        ("d.txt", "0"),
    ];
    let extra = json!({ "max_failed_datums": "25%", "parallelism_spec": { "constant": 1 } });
    let (spec, _) = write_spec(&local, "over", &files, extra);
    let run = local.falconeri(&["job", "run", "--local", "--wait", spec.to_str().unwrap()]);
    assert_eq!(run.status.code(), Some(1), "{}", describe(&run));
    let described = describe_job(&local, &newest_job(&local));
    assert_eq!(described["job"]["status"], "error", "{described}");
    assert_eq!(
        described["job"]["error_message"],
        "2 datums failed, more than max_failed_datums allows (1); the job was stopped"
    );
    // One worker, in planning order: the two failures came first and the
    // rest never ran.
    assert_eq!(described["counts"]["canceled"], 2, "{described}");
}

#[test]
fn a_fail_job_exit_code_ends_the_job_at_once() {
    let local = Local::new();
    let files = [("a.txt", "42"), ("b.txt", "sleep")];
    let extra = json!({
        "datum_tries": 3,
        "on_exit": [{ "exit_codes": [42], "action": "fail_job" }],
    });
    let (spec, flags) = write_spec(&local, "failjob", &files, extra);
    let started = Instant::now();
    let run = local.falconeri(&["job", "run", "--local", "--wait", spec.to_str().unwrap()]);
    assert_eq!(run.status.code(), Some(1), "{}", describe(&run));
    // b would sleep until released: the job ended without waiting for it.
    assert!(started.elapsed() < Duration::from_secs(60));
    let described = describe_job(&local, &newest_job(&local));
    assert_eq!(described["job"]["status"], "error", "{described}");
    let message = described["job"]["error_message"].as_str().unwrap();
    assert!(
        message.contains("exited with code 42, which on_exit[0] maps to fail_job"),
        "{message}"
    );
    assert_eq!(described["counts"]["canceled"], 1, "{described}");
    assert_eq!(runs_of(&flags, "a.txt"), 1, "not retried");
}

#[test]
fn a_fail_datum_exit_code_is_not_retried() {
    let local = Local::new();
    let files = [("a.txt", "4"), ("b.txt", "5")];
    let extra = json!({
        "datum_tries": 3,
        "on_exit": [{ "exit_codes": [4], "action": "fail_datum" }],
    });
    let (spec, flags) = write_spec(&local, "faildatum", &files, extra);
    let run = local.falconeri(&["job", "run", "--local", "--wait", spec.to_str().unwrap()]);
    assert_eq!(run.status.code(), Some(1), "{}", describe(&run));
    assert_eq!(runs_of(&flags, "a.txt"), 1, "fail_datum: one try");
    assert_eq!(runs_of(&flags, "b.txt"), 3, "unmatched: every try");
}

/// A command the worker kills for its `datum_timeout` dies of the worker's
/// SIGTERM; a rule failing the job on SIGTERM or SIGKILL is meant for the
/// command's own crashes, so the timed-out datum uses all its tries and the
/// job fails for that datum, not by the rule.
#[test]
fn a_timed_out_datum_is_not_failed_by_a_signal_rule() {
    let local = Local::new();
    let files = [("a.txt", "sleep")];
    let extra = json!({
        "datum_tries": 2,
        "datum_timeout": "1s",
        "on_exit": [{ "signals": ["SIGTERM", "SIGKILL"], "action": "fail_job" }],
    });
    let (spec, flags) = write_spec(&local, "timedout", &files, extra);
    let run = local.falconeri(&["job", "run", "--local", "--wait", spec.to_str().unwrap()]);
    assert_eq!(run.status.code(), Some(1), "{}", describe(&run));
    let described = describe_job(&local, &newest_job(&local));
    assert_eq!(described["job"]["status"], "error", "{described}");
    let message = described["job"]["error_message"].as_str().unwrap();
    assert!(!message.contains("on_exit"), "{message}");
    assert_eq!(runs_of(&flags, "a.txt"), 2, "both tries ran");
}

#[test]
fn datum_retry_during_and_after_a_job() {
    let local = Local::new();
    // During: a fails while b blocks, so the job still runs.
    let files = [("a.txt", "7"), ("b.txt", "sleep")];
    let (spec, flags) = write_spec(&local, "during", &files, json!({}));
    let name = local.start_and_wait_until(&spec, |d| {
        d["counts"]["error"] == 1 && d["counts"]["running"] == 1
    });
    let id = datum_of(&local, &name, "a.txt");
    std::fs::write(flags.join("a.txt"), "").unwrap();
    let retried = local.falconeri(&["datum", "retry", "--local", &id]);
    assert!(retried.status.success(), "{}", describe(&retried));
    let stdout = String::from_utf8_lossy(&retried.stdout);
    assert!(
        stdout.contains(&format!("Datum {id} is ready again; job {name} runs it.")),
        "{stdout}"
    );
    // The idle worker runs it again while b still blocks.
    wait_until(&local, &name, |d| {
        d["counts"]["done"] == 1 && d["counts"]["running"] == 1
    });
    std::fs::write(flags.join("release"), "").unwrap();
    let waited = local.falconeri(&["job", "wait", "--local", &name]);
    assert_eq!(waited.status.code(), Some(0), "{}", describe(&waited));
    let datum = local.json(&["datum", "describe", "--local", &id, "-o", "json"]);
    assert_eq!(datum["attempts"].as_array().unwrap().len(), 2, "{datum}");

    // After: the job ended `error`; retrying its datum reopens it.
    let files = [("a.txt", "7"), ("b.txt", "0")];
    let (spec, flags) = write_spec(&local, "after", &files, json!({}));
    let run = local.falconeri(&["job", "run", "--local", "--wait", spec.to_str().unwrap()]);
    assert_eq!(run.status.code(), Some(1), "{}", describe(&run));
    let name = newest_job(&local);
    let id = datum_of(&local, &name, "a.txt");
    // Only failed or canceled datums: b is done.
    let done_id = datum_of(&local, &name, "b.txt");
    let refused = local.falconeri(&["datum", "retry", "--local", &done_id]);
    assert_eq!(refused.status.code(), Some(1), "{}", describe(&refused));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("is done; only datums"));

    std::fs::write(flags.join("a.txt"), "").unwrap();
    let retried = local.json(&["datum", "retry", "--local", &id, "-o", "json"]);
    assert_eq!(retried["reopened"], true, "{retried}");
    assert_eq!(retried["job"]["status"], "running");
    let waited = local.falconeri(&["job", "wait", "--local", &name]);
    assert_eq!(waited.status.code(), Some(0), "{}", describe(&waited));
    let described = describe_job(&local, &name);
    assert_eq!(described["counts"]["done"], 2, "{described}");
    assert_eq!(runs_of(&flags, "a.txt"), 2);
}

#[test]
fn job_retry_runs_canceled_datums_again() {
    let local = Local::new();
    let files = [("a.txt", "sleep"), ("b.txt", "sleep")];
    let (spec, flags) = write_spec(&local, "canceled", &files, json!({}));
    let name = local.start_and_wait_until_running(&spec, 2);
    let canceled = local.falconeri(&["job", "cancel", "--local", &name]);
    assert!(canceled.status.success(), "{}", describe(&canceled));
    std::fs::write(flags.join("release"), "").unwrap();
    let retry = local.falconeri(&["job", "retry", "--local", "--wait", &name]);
    assert_eq!(retry.status.code(), Some(0), "{}", describe(&retry));
    let described = describe_job(&local, &newest_job(&local));
    assert_eq!(described["job"]["datum_count"], 2, "{described}");
    assert_eq!(described["counts"]["done"], 2);
}
