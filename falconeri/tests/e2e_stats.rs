//! Attempt statistics end to end: the real CLI starts the embedded server,
//! whose real workers run a command that holds 64 MiB, copies its input
//! out, and fails for one datum; `job describe -o json` then has the
//! phases, the errors grouped and a suggestion that covers the 64 MiB, and
//! `datum describe` shows the failed attempt's numbers and exit status.

#![allow(clippy::unwrap_used)]

mod support;

use support::{Local, describe};

#[test]
fn job_and_datum_describe_show_measured_statistics() {
    let local = Local::new();
    let input = local.work.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    for (name, text) in [("a.txt", "aaaa"), ("b.txt", "bbbbbbbb"), ("bad.txt", "x")] {
        std::fs::write(input.join(name), text).unwrap();
    }
    let script = r#"python3 -c 'b = b"x" * (64 * 1024 * 1024)'
cp "$FALCONERI_PFS"/in/* "$FALCONERI_OUT"/
if [ -e "$FALCONERI_PFS/in/bad.txt" ]; then exit 3; fi"#;
    let spec = local.write_spec(
        "stats.json",
        &serde_json::json!({
            "pipeline": { "name": "stats" },
            "transform": { "cmd": ["sh", "-c", script], "image": "alpine" },
            "parallelism_spec": { "constant": 2 },
            "resource_requests": { "memory": "64Mi", "cpu": 0.1 },
            "datum_tries": 1,
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
    let waited = local.falconeri(&["job", "wait", "--local", &name]);
    assert_eq!(waited.status.code(), Some(1), "{}", describe(&waited));

    let described = local.json(&["job", "describe", "--local", "-o", "json", &name]);
    let stats = &described["stats"];
    assert_eq!(stats["measured_attempts"], 3, "{stats}");
    for phase in ["download", "command"] {
        assert_eq!(stats["phases"][phase]["count"], 3, "{phase}: {stats}");
    }
    // The failed datum never uploads.
    assert_eq!(stats["phases"]["upload"]["count"], 2, "{stats}");
    assert_eq!(stats["throughput"]["datums_done"], 2, "{stats}");
    assert_eq!(stats["throughput"]["download_bytes"], 13, "{stats}");
    assert_eq!(stats["throughput"]["upload_bytes"], 12, "{stats}");
    let peak = stats["memory_bytes"]["p95"].as_i64().unwrap();
    assert!(peak >= 64 << 20, "{stats}");
    let memory = stats["suggestion"]["memory"].as_str().unwrap();
    let mebibytes: i64 = memory.strip_suffix("Mi").unwrap().parse().unwrap();
    assert!(mebibytes >= 80, "64 MiB × 1.25 must fit: {stats}");
    assert!(stats["suggestion"]["cpu"].is_string(), "{stats}");
    assert_eq!(
        stats["errors"][0]["message"], "command exited with status 3",
        "{stats}"
    );
    assert_eq!(stats["errors"][0]["count"], 1, "{stats}");
    // What `describe` always showed is still there.
    assert_eq!(described["counts"]["error"], 1, "{described}");

    let failed = stats["errors"][0]["example_datum_id"]
        .as_i64()
        .unwrap()
        .to_string();
    let datum = local.json(&["datum", "describe", "--local", "-o", "json", &failed]);
    let attempt = &datum["attempts"][0];
    assert_eq!(attempt["exit_code"], 3, "{datum}");
    assert_eq!(attempt["stats"]["download_files"], 1, "{datum}");
    assert_eq!(attempt["stats"]["download_bytes"], 1, "{datum}");
    assert!(
        attempt["stats"]["max_rss_bytes"].as_i64().unwrap() >= 64 << 20,
        "{datum}"
    );

    let text = local.falconeri(&["datum", "describe", "--local", &failed]);
    assert!(text.status.success(), "{}", describe(&text));
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("Attempt statistics:"), "{text}");
    assert!(text.contains("1 file, 1 B in"), "{text}");
    let text = local.falconeri(&["job", "describe", "--local", &name]);
    let text = String::from_utf8_lossy(&text.stdout);
    for needle in [
        "Statistics (3 attempts measured)",
        "Suggested resource_requests",
        "Failed datums by error",
    ] {
        assert!(text.contains(needle), "{needle}:\n{text}");
    }
}
