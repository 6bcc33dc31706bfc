//! Attempt logs end to end: the real CLI starts the embedded server, whose
//! real workers run a command that prints to stdout and stderr and fails
//! once; `job logs -f` follows the job to its end (a line's latency
//! measured), and `datum logs` shows both attempts afterwards.

#![allow(clippy::unwrap_used)]

use std::{
    io::{BufRead, BufReader},
    process::Stdio,
    time::{SystemTime, UNIX_EPOCH},
};

use serde_json::Value;

mod support;

use support::{Local, describe, falconeri_command};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn logs_of_every_attempt_are_kept_and_followed_live() {
    let local = Local::new();
    let input = local.work.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(input.join("one.txt"), "one").unwrap();
    let markers = local.work.path().join("markers");
    std::fs::create_dir_all(&markers).unwrap();
    // Fails on its first attempt; the second prints timestamped ticks a
    // while apart, for the follower to measure.
    let script = format!(
        r#"m={markers}/$FALCONERI_DATUM_ID
if [ ! -e "$m" ]; then echo "first out"; echo "first err" >&2; touch "$m"; exit 1; fi
echo "second out"; echo "second err" >&2
for i in 1 2 3 4 5 6; do echo "tick $(date +%s%3N)"; sleep 0.3; done"#,
        markers = markers.display()
    );
    let spec = local.write_spec(
        "logs.json",
        &serde_json::json!({
            "pipeline": { "name": "logs" },
            "transform": { "cmd": ["sh", "-c", script], "image": "alpine" },
            "parallelism_spec": { "constant": 1 },
            "resource_requests": { "memory": "64Mi", "cpu": 0.1 },
            "datum_tries": 2,
            "input": { "atom": { "URI": "file://./in/", "repo": "in", "glob": "/*" } },
            "egress": { "URI": "file://./out/" }
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

    // Follow the job to its end, noting when each tick arrives.
    let mut follower = falconeri_command()
        .args(["job", "logs", "--local", "-f", "-o", "json", &name])
        .env("FALCONERI_HOME", local.home.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut latencies = Vec::new();
    let mut events: Vec<Value> = Vec::new();
    for line in BufReader::new(follower.stdout.take().unwrap()).lines() {
        let event: Value = serde_json::from_str(&line.unwrap()).unwrap();
        if let Some(tick) = event["text"].as_str().and_then(|t| t.strip_prefix("tick ")) {
            latencies.push(now_ms() - tick.trim().parse::<i64>().unwrap());
        }
        events.push(event);
    }
    let status = follower.wait().unwrap();
    assert!(status.success(), "job logs -f failed: {events:?}");
    assert_eq!(events.last().unwrap()["kind"], "job_end", "{events:?}");
    assert_eq!(latencies.len(), 6, "{events:?}");
    let worst = latencies.iter().max().unwrap();
    eprintln!("line latency through job logs -f: {latencies:?} ms");
    assert!(
        *worst < 1_000,
        "a line took {worst} ms to reach the follower"
    );
    let datum_id = events[0]["datum_id"].as_i64().unwrap();
    assert!(
        events
            .iter()
            .all(|e| e["kind"] == "job_end" || e["datum_id"] == datum_id)
    );

    // Afterwards, both attempts' lines, with their streams.
    let output = local.falconeri(&[
        "datum",
        "logs",
        "--local",
        &datum_id.to_string(),
        "-o",
        "json",
    ]);
    assert!(output.status.success(), "{}", describe(&output));
    let events: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let has = |attempt: i64, stream: &str, text: &str| {
        events.iter().any(|e| {
            e["attempt"] == attempt && e["stream"] == stream && e["text"] == format!("{text}\n")
        })
    };
    assert!(has(1, "stdout", "first out"), "{events:?}");
    assert!(has(1, "stderr", "first err"), "{events:?}");
    assert!(has(2, "stdout", "second out"), "{events:?}");
    assert!(has(2, "stderr", "second err"), "{events:?}");
    let worker_lines = events.iter().filter(|e| e["stream"] == "worker").count();
    assert!(worker_lines >= 4, "{events:?}");
    let ends: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "attempt_end")
        .collect();
    assert_eq!(ends.len(), 2);
    assert_eq!(ends[0]["outcome"], "error");
    assert_eq!(ends[1]["outcome"], "done");

    // For people: each line with its attempt and stream.
    let text = local.falconeri(&["datum", "logs", "--local", &datum_id.to_string()]);
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(text.contains("attempt 1 stderr | first err\n"), "{text}");
    assert!(text.contains("attempt 2 stdout | second out\n"), "{text}");
    // Following an attempt that is over ends at once, with its status.
    let id = datum_id.to_string();
    let first = local.falconeri(&["datum", "logs", "--local", &id, "--attempt", "1", "-f"]);
    assert_eq!(first.status.code(), Some(1), "{}", describe(&first));
    let second = local.falconeri(&["datum", "logs", "--local", &id, "--attempt", "2", "-f"]);
    assert!(second.status.success(), "{}", describe(&second));
}

/// The local server's `MALLOC_ARENA_MAX` (see `local::start_server`): two
/// arenas unless the user chose a number, which is kept.
#[test]
fn the_local_server_runs_with_two_malloc_arenas_unless_told_otherwise() {
    for (given, expected) in [(None, "2"), (Some("4"), "4")] {
        let local = Local::new();
        // Any command against the local server starts it.
        let output = falconeri_command()
            .args(["--local", "job", "list"])
            .env("FALCONERI_HOME", local.home.path())
            .env_remove("MALLOC_ARENA_MAX")
            .envs(given.map(|g| ("MALLOC_ARENA_MAX", g)))
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", describe(&output));
        let server: Value =
            serde_json::from_slice(&std::fs::read(local.home.path().join("server.json")).unwrap())
                .unwrap();
        let pid = server["pid"].as_u64().unwrap();
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let arenas: Vec<&[u8]> = environ
            .split(|b| *b == 0)
            .filter_map(|var| var.strip_prefix(b"MALLOC_ARENA_MAX="))
            .collect();
        assert_eq!(arenas, vec![expected.as_bytes()], "given {given:?}");
    }
}
