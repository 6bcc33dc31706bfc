//! End-to-end tests of the embedded default: the real CLI binary starts a
//! real falconerid (SQLite) which starts real worker processes that run real
//! commands on `file://` storage.

#![allow(clippy::unwrap_used)]

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use serde_json::Value;

mod support;

use support::{Local, copy_dir, describe, example_dir};

fn small_spec(local: &Local, name: &str, cmd: Value, extra: Value) -> PathBuf {
    let input = local.work.path().join(format!("{name}-in"));
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(input.join("one.txt"), "one").unwrap();
    std::fs::write(input.join("two.txt"), "two").unwrap();
    let mut spec = serde_json::json!({
        "pipeline": { "name": name },
        "transform": { "cmd": cmd, "image": "alpine" },
        "parallelism_spec": { "constant": 2 },
        "resource_requests": { "memory": "64Mi", "cpu": 0.1 },
        "input": { "atom": { "URI": format!("file://./{name}-in/"), "repo": "in", "glob": "/*" } },
        "egress": { "URI": format!("file://./{name}-out/") }
    });
    for (key, value) in extra.as_object().unwrap() {
        spec[key] = value.clone();
    }
    local.write_spec(&format!("{name}.json"), &spec)
}

#[test]
fn word_frequencies_example_runs_end_to_end() {
    let local = Local::new();
    let example = local.work.path().join("word-frequencies");
    copy_dir(&example_dir().join("texts"), &example.join("texts"));
    copy_dir(&example_dir().join("scripts"), &example.join("scripts"));
    std::fs::copy(
        example_dir().join("word-frequencies.local.json"),
        example.join("word-frequencies.local.json"),
    )
    .unwrap();
    let spec = example.join("word-frequencies.local.json");

    let output = local.falconeri(&["job", "run", "--local", "--wait", spec.to_str().unwrap()]);
    assert!(output.status.success(), "{}", describe(&output));

    // Every text was counted, exactly as expected.
    let expected_dir = example_dir().join("expected");
    let mut compared = 0;
    for entry in std::fs::read_dir(&expected_dir).unwrap() {
        let entry = entry.unwrap();
        let expected = std::fs::read_to_string(entry.path()).unwrap();
        let actual_path = example.join("output").join(entry.file_name());
        let actual = std::fs::read_to_string(&actual_path)
            .unwrap_or_else(|err| panic!("{}: {err}", actual_path.display()));
        assert_eq!(actual, expected, "{}", entry.file_name().to_string_lossy());
        compared += 1;
    }
    assert_eq!(compared, 6);
    // Only the outputs: staging areas are gone once the job is over.
    let listed: Vec<_> = std::fs::read_dir(example.join("output"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(listed.len(), 6, "{listed:?}");

    // The state persists: list, describe and datum commands see the job.
    let jobs = local.json(&["job", "list", "--local", "-o", "json"]);
    let job = &jobs["jobs"][0];
    assert_eq!(job["status"], "done", "{jobs}");
    let name = job["name"].as_str().unwrap();
    assert!(name.starts_with("word-frequencies-"));
    let described = local.json(&["job", "describe", "--local", name, "-o", "json"]);
    assert_eq!(described["counts"]["done"], 6, "{described}");
    let datums = local.json(&["datum", "list", "--local", "--job", name, "-o", "json"]);
    let datums = datums["datums"].as_array().unwrap();
    assert_eq!(datums.len(), 6);
    let id = datums[0]["id"].to_string();
    let datum = local.json(&["datum", "describe", "--local", &id, "-o", "json"]);
    assert!(
        datum["output"].as_str().unwrap().contains("words"),
        "{datum}"
    );
    assert_eq!(datum["output_files"].as_array().unwrap().len(), 1);
    let text = local.falconeri(&["job", "describe", "--local", name]);
    assert!(text.status.success(), "{}", describe(&text));
    assert!(String::from_utf8_lossy(&text.stdout).contains("done"));

    // The workers reached the server through its Unix socket in the home
    // (each logs its settings as it starts).
    let socket = local.home.path().join("falconerid.sock");
    let logs = local.home.path().join("logs").join(name);
    let started: Vec<String> = std::fs::read_dir(&logs)
        .unwrap_or_else(|err| panic!("{}: {err}", logs.display()))
        .flatten()
        .map(|entry| std::fs::read_to_string(entry.path()).unwrap())
        .collect();
    assert!(!started.is_empty());
    for log in &started {
        assert!(
            log.contains(&format!("server_socket: Some({:?})", socket)),
            "{log}"
        );
    }
}

#[test]
fn failing_commands_fail_the_job_and_retry_runs_them_again() {
    let local = Local::new();
    let spec = small_spec(
        &local,
        "always-fails",
        serde_json::json!(["sh", "-c", "echo about to fail; exit 3"]),
        serde_json::json!({ "datum_tries": 2 }),
    );
    let output = local.falconeri(&["job", "run", "--local", "--wait", spec.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));

    let jobs = local.json(&["job", "list", "--local", "-o", "json"]);
    let name = jobs["jobs"][0]["name"].as_str().unwrap().to_owned();
    let described = local.json(&["job", "describe", "--local", &name, "-o", "json"]);
    assert_eq!(described["job"]["status"], "error");
    assert_eq!(described["counts"]["error"], 2, "{described}");
    let failed = &described["failed"][0];
    assert_eq!(failed["attempt"], 2, "datum_tries 2 means two attempts");
    assert!(
        failed["error_message"].as_str().unwrap().contains('3'),
        "{failed}"
    );
    let datum = local.json(&[
        "datum",
        "describe",
        "--local",
        &failed["id"].to_string(),
        "-o",
        "json",
    ]);
    assert!(
        datum["output"].as_str().unwrap().contains("about to fail"),
        "{datum}"
    );

    let retry = local.falconeri(&["job", "retry", "--local", "--wait", &name]);
    assert_eq!(retry.status.code(), Some(1), "{}", describe(&retry));
    let jobs = local.json(&["job", "list", "--local", "-o", "json"]);
    assert_eq!(jobs["jobs"][0]["retry_of"], described["job"]["id"]);
    assert_eq!(jobs["jobs"][0]["datum_count"], 2);
}

fn processes_with(marker: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline"))
            && String::from_utf8_lossy(&cmdline).contains(marker)
        {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn cancel_kills_running_commands() {
    let local = Local::new();
    let marker = format!("falconeri-cancel-marker-{}", std::process::id());
    // The sleep is a grandchild of the worker: killing the command's process
    // group must take it down too.
    // The grandchild is a shell loop, so it keeps the marker in its command
    // line (a plain `sleep` would not carry it).
    let script = format!("sh -c 'while :; do sleep 1; done # {marker}' & wait # {marker}");
    let spec = small_spec(
        &local,
        "sleepy",
        serde_json::json!(["sh", "-c", script]),
        serde_json::json!({}),
    );
    // Wait (bounded) until both datums run, each with its two shells.
    let name = local.start_and_wait_until(&spec, |described| {
        described["counts"]["running"] == 2 && processes_with(&marker).len() >= 4
    });

    let canceled = local.falconeri(&["job", "cancel", "--local", &name]);
    assert!(canceled.status.success(), "{}", describe(&canceled));
    let waited = local.falconeri(&["job", "wait", "--local", &name]);
    assert_eq!(waited.status.code(), Some(1), "{}", describe(&waited));
    let described = local.json(&["job", "describe", "--local", &name, "-o", "json"]);
    assert_eq!(described["job"]["status"], "canceled");
    assert_eq!(described["counts"]["canceled"], 2);

    let started = Instant::now();
    while !processes_with(&marker).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "commands survived the cancel"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A shell snippet that leaves a `setsid`'ed sleep (out of the command's
/// process group and session) and a double-forked one (whose parent exits at
/// once, orphaning it) running, writes their pids to a file of its own datum
/// in the directory `$PIDS`, and waits until both are written.
const ESCAPING_CHILDREN: &str = "mine=\"$PIDS/$FALCONERI_DATUM_ID\"; \
     setsid sh -c 'echo $$ >> \"$0\"; exec sleep 1000' \"$mine\" \
     </dev/null >/dev/null 2>&1 & \
     (sleep 1000 </dev/null >/dev/null 2>&1 & echo $! >> \"$mine\") & \
     while [ \"$(cat \"$mine\" 2>/dev/null | wc -l)\" -lt 2 ]; do sleep 0.05; done";

/// The pids the datums' commands wrote under the directory `pids`.
fn pids_in(pids: &std::path::Path) -> Vec<i32> {
    std::fs::read_dir(pids)
        .unwrap()
        .flatten()
        .flat_map(|file| {
            std::fs::read_to_string(file.path())
                .unwrap()
                .lines()
                .filter_map(|line| line.trim().parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

/// Waits (bounded) until none of `pids` is running, and says which still
/// are. A zombie counts as running: the worker reaps what it kills.
fn still_running(pids: &[i32]) -> Vec<i32> {
    let started = Instant::now();
    loop {
        let alive: Vec<i32> = pids
            .iter()
            .copied()
            .filter(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
            .collect();
        if alive.is_empty() || started.elapsed() > Duration::from_secs(10) {
            return alive;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A spec whose two datums each run `ESCAPING_CHILDREN` and then `then`,
/// writing the pids to `pids`.
fn escaping_spec(local: &Local, name: &str, then: &str, pids: &std::path::Path) -> PathBuf {
    let script = format!("{ESCAPING_CHILDREN}; {then}");
    small_spec(
        local,
        name,
        serde_json::json!(["sh", "-c", script]),
        serde_json::json!({
            "datum_tries": 1,
            "datum_timeout": "3s",
            "transform": {
                "cmd": ["sh", "-c", script],
                "image": "alpine",
                "env": { "PIDS": pids.to_str().unwrap() }
            }
        }),
    )
}

#[test]
fn setsid_and_double_forked_children_do_not_outlive_their_datum() {
    let local = Local::new();
    let pids = local.work.path().join("pids");
    std::fs::create_dir(&pids).unwrap();
    let spec = escaping_spec(&local, "escapes", "exit 0", &pids);
    let output = local.falconeri(&["job", "run", "--local", "--wait", spec.to_str().unwrap()]);
    assert!(output.status.success(), "{}", describe(&output));
    let pids = pids_in(&pids);
    assert_eq!(pids.len(), 4, "two datums, two escapees each");
    assert_eq!(
        still_running(&pids),
        Vec::<i32>::new(),
        "outlived their datum"
    );
}

#[test]
fn setsid_and_double_forked_children_do_not_outlive_a_datum_timeout() {
    let local = Local::new();
    let pids = local.work.path().join("pids");
    std::fs::create_dir(&pids).unwrap();
    let spec = escaping_spec(&local, "escapes-slowly", "sleep 1000", &pids);
    let output = local.falconeri(&["job", "run", "--local", "--wait", spec.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let jobs = local.json(&["job", "list", "--local", "-o", "json"]);
    let name = jobs["jobs"][0]["name"].as_str().unwrap().to_owned();
    let described = local.json(&["job", "describe", "--local", &name, "-o", "json"]);
    assert!(
        described["failed"][0]["error_message"]
            .as_str()
            .unwrap()
            .contains("timed out"),
        "{described}"
    );
    let pids = pids_in(&pids);
    assert_eq!(pids.len(), 4, "two datums, two escapees each");
    assert_eq!(
        still_running(&pids),
        Vec::<i32>::new(),
        "outlived the timeout"
    );
}

#[test]
fn invalid_specs_are_refused_before_anything_runs() {
    let local = Local::new();
    let spec = small_spec(
        &local,
        "bad",
        serde_json::json!([]),
        serde_json::json!({ "parallelism_spec": { "constant": 0 } }),
    );
    let output = local.falconeri(&["job", "run", "--local", spec.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("transform.cmd"), "{stderr}");
    assert!(stderr.contains("parallelism_spec.constant"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// An input that fails to list after thousands of datums of an earlier
/// input were already inserted: the CLI reports the listing error, and no
/// job is left, half-planned or otherwise.
#[test]
fn a_job_whose_inputs_fail_late_leaves_no_job() {
    let local = Local::new();
    let input = local.work.path().join("many-in");
    std::fs::create_dir_all(&input).unwrap();
    for n in 0..6_000 {
        std::fs::write(input.join(format!("f{n:05}")), "").unwrap();
    }
    let spec = local.write_spec(
        "late.json",
        &serde_json::json!({
            "pipeline": { "name": "late" },
            "transform": { "cmd": ["true"], "image": "alpine" },
            "parallelism_spec": { "constant": 2 },
            "resource_requests": { "memory": "64Mi", "cpu": 0.1 },
            "input": { "union": [
                { "atom": { "URI": "file://./many-in/", "repo": "in", "glob": "/*" } },
                { "atom": { "URI": "file://./missing-in/", "repo": "more", "glob": "/*" } },
            ]},
            "egress": { "URI": "file://./late-out/" }
        }),
    );
    let output = local.falconeri(&["job", "run", "--local", spec.to_str().unwrap()]);
    assert!(!output.status.success(), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot list input more"), "{stderr}");
    let jobs = local.json(&["job", "list", "--local", "-o", "json"]);
    assert_eq!(jobs["jobs"], serde_json::json!([]), "{jobs}");
}

/// A client that goes away while the server is still listing its inputs
/// (Ctrl-C, a killed CLI) takes the half-planned job with it: the job is
/// deleted, never started.
#[test]
fn killing_job_run_while_it_lists_deletes_the_job() {
    const FILES: usize = 100_000;
    let local = Local::new();
    let input = local.work.path().join("big-in");
    std::fs::create_dir_all(&input).unwrap();
    for n in 0..FILES {
        std::fs::write(input.join(format!("f{n:06}")), "").unwrap();
    }
    let spec = small_spec(
        &local,
        "interrupted",
        serde_json::json!(["true"]),
        serde_json::json!({}),
    );
    let mut spec_json: Value = serde_json::from_slice(&std::fs::read(&spec).unwrap()).unwrap();
    spec_json["input"]["atom"]["URI"] = serde_json::json!("file://./big-in/");
    let spec = local.write_spec("interrupted.json", &spec_json);
    // The server first, so the job run below spends its time listing.
    let jobs = local.json(&["job", "list", "--local", "-o", "json"]);
    assert_eq!(jobs["jobs"], serde_json::json!([]));

    let mut run = support::falconeri_command()
        .args(["job", "run", "--local", spec.to_str().unwrap()])
        .env("FALCONERI_HOME", local.home.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait (bounded) until the job exists with part of its datums.
    let started = Instant::now();
    loop {
        let jobs = local.json(&["job", "list", "--local", "-o", "json"]);
        if let Some(job) = jobs["jobs"].as_array().unwrap().first() {
            assert_eq!(
                job["status"], "ready",
                "the listing finished before it could be interrupted: {job}"
            );
            if job["datum_count"].as_i64().unwrap() > 0 {
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no job appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    run.kill().unwrap();
    run.wait().unwrap();
    // The server notices the closed connection and deletes the job at once
    // (well before the planning lease of 30 s would run out).
    let killed = Instant::now();
    loop {
        let jobs = local.json(&["job", "list", "--local", "-o", "json"]);
        if jobs["jobs"] == serde_json::json!([]) {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "the half-planned job stayed: {jobs}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `local stop` in the middle of a job stops the workers, which give their
/// datums back; the next command restarts the server, whose babysitter
/// starts new workers, and the job finishes without using up a try.
#[test]
fn a_job_survives_stopping_the_local_server() {
    let local = Local::new();
    let spec = small_spec(
        &local,
        "resumable",
        serde_json::json!(["sh", "-c", "sleep 2; echo ok > \"$FALCONERI_OUT/done.txt\""]),
        serde_json::json!({ "datum_tries": 1 }),
    );
    let name = local.start_and_wait_until_running(&spec, 2);
    let stopped = local.falconeri(&["local", "stop"]);
    assert!(stopped.status.success(), "{}", describe(&stopped));

    let waited = local.falconeri(&["job", "wait", "--local", &name]);
    assert!(waited.status.success(), "{}", describe(&waited));
    let described = local.json(&["job", "describe", "--local", &name, "-o", "json"]);
    assert_eq!(described["counts"]["done"], 2, "{described}");
}

/// Fault injection: a worker killed with SIGKILL mid-datum. The executor
/// sees it exit, kills the command it orphaned, releases its datum, and
/// starts a replacement; the job still finishes.
#[test]
fn a_killed_worker_loses_nothing() {
    let local = Local::new();
    // The first command ever started hangs (and is the one whose worker we
    // kill); every later one finishes at once.
    let flag = local.work.path().join("first-attempt-started");
    // The hanging one also leaves processes outside its group, which the
    // executor must find although their worker is gone.
    let pids = local.work.path().join("pids");
    std::fs::create_dir(&pids).unwrap();
    let script = format!(
        "if [ -e \"$FLAG\" ]; then echo ok > \"$FALCONERI_OUT/$(ls \"$FALCONERI_PFS/in\")\"; \
         else {ESCAPING_CHILDREN}; touch \"$FLAG\"; sleep 300; fi"
    );
    let spec = small_spec(
        &local,
        "killed-worker",
        serde_json::json!(["sh", "-c", script]),
        serde_json::json!({
            "datum_tries": 2,
            "parallelism_spec": { "constant": 1 },
            "transform": {
                "cmd": ["sh", "-c", script],
                "image": "alpine",
                "env": { "FLAG": flag.to_str().unwrap(), "PIDS": pids.to_str().unwrap() }
            }
        }),
    );
    let job = local.json(&[
        "job",
        "run",
        "--local",
        "-o",
        "json",
        spec.to_str().unwrap(),
    ]);
    let name = job["name"].as_str().unwrap().to_owned();

    // The worker records its command's process group while it runs.
    let work = local.home.path().join("work").join(&name);
    let started = Instant::now();
    let pgid = loop {
        let found = std::fs::read_dir(&work).ok().and_then(|workers| {
            workers.flatten().find_map(|worker| {
                std::fs::read_to_string(worker.path().join("command.pgid"))
                    .ok()
                    .and_then(|text| text.trim().parse::<i32>().ok())
            })
        });
        // Only once the command has marked its start: killed before that,
        // the retry would take the hanging branch.
        if let Some(pgid) = found.filter(|_| flag.exists()) {
            break pgid;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no command started"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let stat = std::fs::read_to_string(format!("/proc/{pgid}/stat")).unwrap();
    let worker_pid: i32 = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(worker_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();

    let waited = local.falconeri(&["job", "wait", "--local", &name]);
    assert!(waited.status.success(), "{}", describe(&waited));
    // The orphaned command was killed, not left sleeping.
    assert!(
        !group_is_running(pgid),
        "the dead worker's command is still running"
    );
    let pids = pids_in(&pids);
    assert_eq!(pids.len(), 2, "{pids:?}");
    assert_eq!(
        still_running(&pids),
        Vec::<i32>::new(),
        "what the dead worker's command started outside its group is still running"
    );
    let described = local.json(&["job", "describe", "--local", &name, "-o", "json"]);
    assert_eq!(described["counts"]["done"], 2, "{described}");
    let datums = local.json(&["datum", "list", "--local", "--job", &name, "-o", "json"]);
    let attempts: Vec<i64> = datums["datums"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["attempt"].as_i64().unwrap())
        .collect();
    assert!(
        attempts.contains(&2),
        "the interrupted datum ran again: {attempts:?}"
    );
    for file in ["one.txt", "two.txt"] {
        let out = local.work.path().join("killed-worker-out").join(file);
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "ok\n",
            "{}",
            out.display()
        );
    }
}

/// True if a live (not zombie) process belongs to process group `pgid`.
/// Zombies don't count: orphans are reparented to PID 1, which in a
/// container may never reap them.
fn group_is_running(pgid: i32) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            return false;
        };
        // Fields after the command name: state, ppid, pgrp, ...
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        fields.len() > 2 && fields[0] != "Z" && fields[2] == pgid.to_string()
    })
}

/// The job's worker token never reaches the user's command: not in its
/// environment, not in its worker's (readable from /proc), not on disk.
#[test]
fn commands_cannot_find_the_worker_token() {
    let local = Local::new();
    let script = r#"
        leaks=$(cat /proc/$PPID/environ /proc/self/environ | tr '\0' '\n' | grep -c '^FALCONERI_TOKEN=')
        [ -e "$FALCONERI_PFS/../worker.token" ] && file=present || file=absent
        echo "leaks=$leaks file=$file" > "$FALCONERI_OUT/$(ls "$FALCONERI_PFS/in")"
    "#;
    let spec = small_spec(
        &local,
        "token-check",
        serde_json::json!(["sh", "-c", script]),
        serde_json::json!({}),
    );
    let output = local.falconeri(&["job", "run", "--local", "--wait", spec.to_str().unwrap()]);
    assert!(output.status.success(), "{}", describe(&output));
    for file in ["one.txt", "two.txt"] {
        let out = local.work.path().join("token-check-out").join(file);
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "leaks=0 file=absent\n"
        );
    }
}

/// Fault injection: the local server is killed (SIGKILL) mid-job. The next
/// command starts a new server on the same port; the workers, still running
/// their commands, reconnect and report, and no datum loses a try.
#[test]
fn a_killed_server_loses_nothing() {
    let local = Local::new();
    let spec = small_spec(
        &local,
        "killed-server",
        serde_json::json!([
            "sh",
            "-c",
            "sleep 3; echo ok > \"$FALCONERI_OUT/$(ls \"$FALCONERI_PFS/in\")\""
        ]),
        serde_json::json!({ "datum_tries": 1 }),
    );
    let name = local.start_and_wait_until_running(&spec, 2);
    let info: Value =
        serde_json::from_slice(&std::fs::read(local.home.path().join("server.json")).unwrap())
            .unwrap();
    // (Not waiting for the process to be gone made `job wait` race its
    // exit and, now and then, find a server holding its lock but deaf.)
    kill_server(&local);

    let waited = local.falconeri(&["job", "wait", "--local", &name]);
    assert!(waited.status.success(), "{}", describe(&waited));
    let info_after: Value =
        serde_json::from_slice(&std::fs::read(local.home.path().join("server.json")).unwrap())
            .unwrap();
    assert_eq!(
        info_after["url"], info["url"],
        "the new server took the old port"
    );
    assert_ne!(info_after["pid"], info["pid"]);
    let datums = local.json(&["datum", "list", "--local", "--job", &name, "-o", "json"]);
    for datum in datums["datums"].as_array().unwrap() {
        assert_eq!(datum["status"], "done", "{datum}");
        assert_eq!(datum["attempt"], 1, "the first attempt finished: {datum}");
    }
}

/// Defect: the local server inherited the CLI's open descriptors, so under
/// `flock LOCK falconeri …` it held LOCK until `falconeri local stop`.
/// It must keep none it did not open, read /dev/null, and lead a session.
#[test]
fn the_local_server_keeps_no_descriptor_of_the_cli() {
    let local = Local::new();
    let lock = local.work.path().join("LOCK");
    // flock(1) opens LOCK without close-on-exec and runs the CLI holding it,
    // as a cron job guarding against overlapping runs would.
    let output = std::process::Command::new("flock")
        .arg(&lock)
        .arg(env!("CARGO_BIN_EXE_falconeri"))
        .args(["job", "list", "--local"])
        .env("FALCONERI_HOME", local.home.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", describe(&output));

    let info: Value =
        serde_json::from_slice(&std::fs::read(local.home.path().join("server.json")).unwrap())
            .unwrap();
    let pid = info["pid"].as_i64().unwrap();
    let lock = std::fs::canonicalize(&lock).unwrap();
    let mut held = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let fd: i32 = entry.file_name().to_str().unwrap().parse().unwrap();
        let target = std::fs::read_link(entry.path()).unwrap_or_default();
        if target == lock {
            held.push(fd);
        }
        if fd == 0 {
            assert_eq!(target, PathBuf::from("/dev/null"), "stdin");
        }
    }
    assert_eq!(held, Vec::<i32>::new(), "the server holds LOCK");
    // And so the lock is free while the server runs.
    let again = std::process::Command::new("flock")
        .args(["-n"])
        .arg(&lock)
        .arg("true")
        .status()
        .unwrap();
    assert!(again.success(), "LOCK is still held");
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());

    // Its own session (field 6 of stat, counted after the command name).
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let session: i64 = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(3)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(session, pid, "the server leads its own session");
}

/// The live (not zombie) worker processes of the local setup at `home`:
/// `falconeri internal worker` processes whose directory is under its
/// `work/`. A worker's command, forked but not yet exec'd, looks the same
/// for a moment; it is told apart by its parent, a worker.
fn local_workers(home: &std::path::Path) -> Vec<u32> {
    let work = home.join("work");
    let mut candidates = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let is_worker = std::fs::read(entry.path().join("cmdline"))
            .is_ok_and(|cmdline| cmdline.windows(16).any(|w| w == b"internal\0worker\0"));
        let in_home =
            std::fs::read_link(entry.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(&work));
        // Fields after the command name: state, ppid, ...
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let running = fields.first().is_some_and(|state| *state != "Z");
        let ppid: u32 = fields.get(1).and_then(|p| p.parse().ok()).unwrap_or(0);
        if is_worker && in_home && running {
            candidates.push((pid, ppid));
        }
    }
    let pids: Vec<u32> = candidates.iter().map(|(pid, _)| *pid).collect();
    candidates
        .into_iter()
        .filter(|(_, ppid)| !pids.contains(ppid))
        .map(|(pid, _)| pid)
        .collect()
}

/// Kills the local server with SIGKILL and waits (bounded) until it has
/// exited, so the next command sees its locks released rather than a
/// server that no longer answers.
fn kill_server(local: &Local) {
    let info: Value =
        serde_json::from_slice(&std::fs::read(local.home.path().join("server.json")).unwrap())
            .unwrap();
    let pid = i32::try_from(info["pid"].as_u64().unwrap()).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let started = Instant::now();
    while std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z")
    }) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the server survived SIGKILL"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Issue 9, defect 4: a restarted falconerid neither adopted nor stopped
/// the previous server's workers, so after two restarts a parallelism-2 job
/// ran up to 6 workers, and the orphans' work directories stayed behind.
/// Now the server is killed (SIGKILL) twice mid-job; each new server adopts
/// the running workers, never more than 2 run at once, every datum's
/// command runs exactly once, and no work directory is left.
#[test]
fn a_restarted_server_adopts_the_previous_workers() {
    let local = Local::new();
    let runs = local.work.path().join("runs.log");
    let script = "f=$(ls \"$FALCONERI_PFS/in\"); echo \"$f\" >> \"$RUNS\"; sleep 2; \
                  echo ok > \"$FALCONERI_OUT/$f\"";
    let spec = small_spec(
        &local,
        "adopted",
        serde_json::json!(["sh", "-c", script]),
        serde_json::json!({
            "datum_tries": 1,
            "transform": {
                "cmd": ["sh", "-c", script],
                "image": "alpine",
                "env": { "RUNS": runs.to_str().unwrap() }
            }
        }),
    );
    let mut inputs = vec!["one.txt".to_owned(), "two.txt".to_owned()];
    for i in 3..=8 {
        let file = format!("{i}.txt");
        std::fs::write(local.work.path().join("adopted-in").join(&file), "x").unwrap();
        inputs.push(file);
    }

    // Counts the workers all along, from outside (test code may poll).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let most = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sampler = {
        let (stop, most) = (stop.clone(), most.clone());
        let home = local.home.path().to_owned();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let count = local_workers(&home).len();
                most.fetch_max(count, std::sync::atomic::Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    let name = local.start_and_wait_until_running(&spec, 2);
    for _ in 0..2 {
        kill_server(&local);
        // The next command starts a new server; give its babysitter a few
        // passes (1 s apart) in which it could start too many workers.
        let described = local.json(&["job", "describe", "--local", &name, "-o", "json"]);
        assert_eq!(described["job"]["status"], "running", "{described}");
        std::thread::sleep(Duration::from_secs(3));
    }

    let waited = local.falconeri(&["job", "wait", "--local", &name]);
    assert!(waited.status.success(), "{}", describe(&waited));
    // Workers exit once they find the job finished; then their directories
    // go (bounded wait).
    let work = local.home.path().join("work").join(&name);
    let started = Instant::now();
    while std::fs::read_dir(&work).is_ok_and(|mut dirs| dirs.next().is_some()) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "work directories left behind: {:?}",
            std::fs::read_dir(&work)
                .unwrap()
                .flatten()
                .map(|e| e.file_name())
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    sampler.join().unwrap();
    let most = most.load(std::sync::atomic::Ordering::SeqCst);
    assert!(most <= 2, "{most} workers ran at once for parallelism 2");
    assert!(local_workers(local.home.path()).is_empty());

    let datums = local.json(&["datum", "list", "--local", "--job", &name, "-o", "json"]);
    let datums = datums["datums"].as_array().unwrap();
    assert_eq!(datums.len(), inputs.len());
    for datum in datums {
        assert_eq!(datum["status"], "done", "{datum}");
        assert_eq!(datum["attempt"], 1, "ran once: {datum}");
    }
    let mut ran: Vec<String> = std::fs::read_to_string(&runs)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    ran.sort();
    inputs.sort();
    assert_eq!(ran, inputs, "each datum's command ran exactly once");
    for file in &inputs {
        let out = local.work.path().join("adopted-out").join(file);
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "ok\n");
    }
}

/// A job of twelve inputs taken five at a time (`datums_per_reservation`),
/// under `cmd`: writes the spec and returns it with the names of its inputs
/// and the file where every command appends the input it ran on.
fn batch_spec(local: &Local, name: &str, cmd: &str) -> (PathBuf, Vec<String>, PathBuf) {
    let runs = local.work.path().join(format!("{name}-runs"));
    let spec = small_spec(
        local,
        name,
        serde_json::json!([]),
        serde_json::json!({
            "datums_per_reservation": 5,
            "datum_tries": 1,
            "transform": {
                "cmd": ["sh", "-c", cmd],
                "image": "alpine",
                "env": { "RUNS": runs.to_str().unwrap() }
            }
        }),
    );
    // `small_spec` wrote one.txt and two.txt.
    let input = local.work.path().join(format!("{name}-in"));
    let mut inputs = vec!["one.txt".to_owned(), "two.txt".to_owned()];
    for n in 3..=12 {
        let file = format!("file-{n:02}.txt");
        std::fs::write(input.join(&file), format!("content {n}")).unwrap();
        inputs.push(file);
    }
    inputs.sort();
    (spec, inputs, runs)
}

/// Every command copies its input to an output of the same name and logs
/// the run; the one for `bad.txt`, if any, fails instead.
const BATCH_COMMAND: &str = "f=$(ls \"$FALCONERI_PFS/in\"); echo \"$f\" >> \"$RUNS\"; \
     if [ \"$f\" = bad.txt ]; then echo bad input; exit 3; fi; \
     cp \"$FALCONERI_PFS/in/$f\" \"$FALCONERI_OUT/$f\"";

#[test]
fn a_batched_job_runs_every_datum_once_and_publishes_every_output() {
    let local = Local::new();
    let (spec, inputs, runs) = batch_spec(&local, "batched", BATCH_COMMAND);
    let output = local.falconeri(&["job", "run", "--local", "--wait", spec.to_str().unwrap()]);
    assert!(output.status.success(), "{}", describe(&output));

    let jobs = local.json(&["job", "list", "--local", "-o", "json"]);
    let name = jobs["jobs"][0]["name"].as_str().unwrap().to_owned();
    let datums = local.json(&["datum", "list", "--local", "--job", &name, "-o", "json"]);
    let datums = datums["datums"].as_array().unwrap();
    assert_eq!(datums.len(), 12);
    for datum in datums {
        assert_eq!(datum["status"], "done", "{datum}");
        assert_eq!(datum["attempt"], 1, "ran once: {datum}");
    }
    // Datums reserved together were reserved by one statement, at one
    // instant: five of them share their start, and never more than five.
    let mut batches = std::collections::BTreeMap::<String, usize>::new();
    for datum in datums {
        *batches.entry(datum["started_at"].to_string()).or_default() += 1;
    }
    assert_eq!(batches.values().max(), Some(&5), "{batches:?}");

    let mut ran: Vec<String> = std::fs::read_to_string(&runs)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    ran.sort();
    assert_eq!(ran, inputs, "each datum's command ran exactly once");
    let input = local.work.path().join("batched-in");
    for file in &inputs {
        let out = local.work.path().join("batched-out").join(file);
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            std::fs::read_to_string(input.join(file)).unwrap(),
            "{}",
            out.display()
        );
    }
}

#[test]
fn one_failing_datum_of_a_batch_fails_alone() {
    let local = Local::new();
    let (spec, mut inputs, runs) = batch_spec(&local, "batch-fails", BATCH_COMMAND);
    std::fs::write(local.work.path().join("batch-fails-in/bad.txt"), "bad").unwrap();
    inputs.push("bad.txt".to_owned());
    inputs.sort();
    let output = local.falconeri(&["job", "run", "--local", "--wait", spec.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));

    let jobs = local.json(&["job", "list", "--local", "-o", "json"]);
    let name = jobs["jobs"][0]["name"].as_str().unwrap().to_owned();
    let datums = local.json(&["datum", "list", "--local", "--job", &name, "-o", "json"]);
    let datums = datums["datums"].as_array().unwrap();
    assert_eq!(datums.len(), 13);
    let mut failed = Vec::new();
    for datum in datums {
        assert_eq!(datum["attempt"], 1, "ran once: {datum}");
        let id = datum["id"].to_string();
        let described = local.json(&["datum", "describe", "--local", &id, "-o", "json"]);
        let is_bad = described["input_files"].to_string().contains("bad.txt");
        match datum["status"].as_str().unwrap() {
            "error" => {
                assert!(is_bad, "only bad.txt fails: {described}");
                assert!(
                    datum["error_message"].as_str().unwrap().contains('3'),
                    "{datum}"
                );
                assert!(
                    described["output"].as_str().unwrap().contains("bad input"),
                    "{described}"
                );
                failed.push(id);
            }
            "done" => assert!(!is_bad, "bad.txt cannot be done: {described}"),
            other => panic!("datum {id} ended {other}: {described}"),
        }
    }
    assert_eq!(failed.len(), 1, "{datums:?}");

    let mut ran: Vec<String> = std::fs::read_to_string(&runs)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    ran.sort();
    assert_eq!(ran, inputs, "each datum's command ran exactly once");
    let published: Vec<String> = std::fs::read_dir(local.work.path().join("batch-fails-out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(published.len(), 12, "every other output: {published:?}");
    assert!(!published.contains(&"bad.txt".to_owned()));
}

/// A spec using a `/**` glob, a name pattern, an outer join and a group,
/// run through the CLI: each datum's command writes the list of files it
/// was given, and the outputs are exactly the datums the guide promises.
#[test]
fn globs_joins_and_groups_run_end_to_end() {
    let local = Local::new();
    let root = local.work.path();
    for (path, body) in [
        ("deep/a.txt", "a"),
        ("deep/x/b.txt", "b"),
        ("deep/x/y/c.txt", "c"),
        ("readings/ID1.txt", "r1"),
        ("readings/ID2.txt", "r2"),
        ("parts/x/part-1.csv", "p1"),
        ("logs/2024-01-a.log", "l1"),
        ("logs/2024-01-b.log", "l2"),
        ("logs/2024-02-a.log", "l3"),
        ("logs/2023-12-z.log", "l4"),
    ] {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, body).unwrap();
    }
    // The datum's files, relative to pfs, joined by `+` with `/` as `_`,
    // name its one output file.
    let list = "cd \"$FALCONERI_PFS\" && name=$(find . -type f ! -path './out/*' | sort \
                | sed 's|^\\./||' | tr '/' '_' | paste -sd+ -) && touch \"out/$name\"";
    let spec = serde_json::json!({
        "pipeline": { "name": "keyed" },
        "transform": { "cmd": ["sh", "-c", list], "image": "alpine" },
        "parallelism_spec": { "constant": 2 },
        "resource_requests": { "memory": "64Mi", "cpu": 0.1 },
        "input": { "union": [
            { "atom": { "URI": "file://./deep/", "repo": "deep", "glob": "/**" } },
            { "join": [
                { "atom": { "URI": "file://./readings/", "repo": "r", "glob": "/ID(*).txt",
                            "join_on": "$1", "outer_join": true } },
                { "atom": { "URI": "file://./parts/", "repo": "p", "glob": "/*/part-(*).csv",
                            "join_on": "$1" } }
            ] },
            { "group": [
                { "atom": { "URI": "file://./logs/", "repo": "logs", "glob": "/2024-(??)-*.log",
                            "group_by": "$1" } }
            ] }
        ] },
        "egress": { "URI": "file://./keyed-out/" }
    });
    let spec = local.write_spec("keyed.json", &spec);
    let output = local.falconeri(&["job", "run", "--local", "--wait", spec.to_str().unwrap()]);
    assert!(output.status.success(), "{}", describe(&output));
    let mut outputs: Vec<String> = std::fs::read_dir(root.join("keyed-out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    outputs.sort();
    assert_eq!(
        outputs,
        [
            "deep_a.txt",
            "deep_x_b.txt",
            "deep_x_y_c.txt",
            "logs_2024-01-a.log+logs_2024-01-b.log",
            "logs_2024-02-a.log",
            "p_x_part-1.csv+r_ID1.txt",
            "r_ID2.txt",
        ]
    );
}
