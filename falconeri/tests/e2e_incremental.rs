//! Incremental runs end to end: the real CLI and embedded server run a
//! pipeline three times with `--incremental` over `file://` inputs. Between
//! the first two runs one file is modified, one removed and one added:
//! exactly the modified and the added datums run, the others are skipped
//! pointing at the first run's datums, and `job describe` lists the removed
//! file's datum with its output, which stays. The third run, over nothing
//! new, ends done at once.

#![allow(clippy::unwrap_used)]

mod support;

use support::{Local, describe};

/// The names the command has run for, in order, from its own log.
fn runs(log: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    names.sort();
    names
}

#[test]
fn a_second_incremental_run_runs_only_what_changed() {
    let local = Local::new();
    let input = local.work.path().join("in");
    let out = local.work.path().join("out");
    std::fs::create_dir_all(&input).unwrap();
    for name in ["a", "b", "c", "d"] {
        std::fs::write(input.join(name), name).unwrap();
    }
    let log = local.work.path().join("runs.log");
    // Each datum appends its file's name to a log outside the egress, and
    // writes an output named after it.
    let script = format!(
        r#"for f in "$FALCONERI_PFS"/in/*; do n=$(basename "$f"); echo "$n" >> {log}; cp "$f" "$FALCONERI_OUT/$n.out"; done"#,
        log = log.display()
    );
    let spec = local.write_spec(
        "incremental.json",
        &serde_json::json!({
            "pipeline": { "name": "incr" },
            "transform": { "cmd": ["sh", "-c", script], "image": "alpine" },
            "parallelism_spec": { "constant": 2 },
            "resource_requests": { "memory": "64Mi", "cpu": 0.1 },
            "input": { "atom": { "URI": "file://./in/", "repo": "in", "glob": "/*" } },
            "egress": { "URI": "file://./out/" }
        }),
    );
    let spec = spec.to_str().unwrap();
    let run = |args: &[&str]| {
        let output = local.falconeri(args);
        assert!(output.status.success(), "{args:?}: {}", describe(&output));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };

    run(&["job", "run", "--local", "--incremental", "--wait", spec]);
    assert_eq!(runs(&log), ["a", "b", "c", "d"]);
    let first = local.json(&["job", "list", "--local", "-o", "json"])["jobs"][0].clone();

    // b modified (a new size and mtime), c removed, e added.
    std::fs::write(input.join("b"), "b, longer now").unwrap();
    std::fs::remove_file(input.join("c")).unwrap();
    std::fs::write(input.join("e"), "e").unwrap();
    std::fs::remove_file(&log).unwrap();
    run(&["job", "run", "--local", "--incremental", "--wait", spec]);
    assert_eq!(runs(&log), ["b", "e"], "only what changed ran");
    assert_eq!(
        std::fs::read_to_string(out.join("b.out")).unwrap(),
        "b, longer now"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("c.out")).unwrap(),
        "c",
        "the vanished input's output stays"
    );

    let second = local.json(&["job", "list", "--local", "-o", "json"])["jobs"][0].clone();
    let name = second["name"].as_str().unwrap();
    let described = local.json(&["job", "describe", "--local", "-o", "json", name]);
    let counts = &described["counts"];
    assert_eq!(
        (&counts["done"], &counts["skipped"]),
        (&2.into(), &2.into()),
        "{described}"
    );
    assert_eq!(described["job"]["incremental"], true);
    assert_eq!(described["job"]["previous_job_id"], first["id"]);
    assert_eq!(described["job"]["vanished_count"], 1, "{described}");
    let vanished = &described["vanished"][0];
    assert!(
        vanished["inputs"][0].as_str().unwrap().ends_with("/in/c"),
        "{described}"
    );
    assert!(
        vanished["outputs"][0]
            .as_str()
            .unwrap()
            .ends_with("/out/c.out"),
        "{described}"
    );
    let text = run(&["job", "describe", "--local", name]);
    assert!(
        text.contains("2 done, 0 error, 0 canceled, 2 skipped"),
        "{text}"
    );
    assert!(text.contains("Vanished inputs: 1 datums of job"), "{text}");

    // Each skipped datum points at the first run's datum of its file.
    let skipped = local.json(&[
        "datum", "list", "--local", "--job", name, "--status", "skipped", "-o", "json",
    ]);
    let skipped = skipped["datums"].as_array().unwrap();
    assert_eq!(skipped.len(), 2);
    for datum in skipped {
        assert_eq!(datum["skipped_from_job"], first["id"], "{datum}");
        let id = datum["id"].to_string();
        let shown = local.json(&["datum", "describe", "--local", "-o", "json", &id]);
        let from = datum["skipped_from"].to_string();
        let ran = local.json(&["datum", "describe", "--local", "-o", "json", &from]);
        assert_eq!(ran["datum"]["status"], "done");
        assert_eq!(
            shown["input_files"], ran["input_files"],
            "the files it stands for"
        );
        assert_eq!(shown["fingerprint"], ran["fingerprint"]);
        let file = shown["input_files"][0]["uri"].as_str().unwrap().to_owned();
        assert!(
            file.ends_with("/in/a") || file.ends_with("/in/d"),
            "{shown}"
        );
        let text = run(&["datum", "describe", "--local", &id]);
        assert!(text.contains("Skipped for:"), "{text}");
        assert!(text.contains(&format!("datum {from} of job")), "{text}");
    }

    // Nothing new: done at once, no datum runs.
    std::fs::remove_file(&log).unwrap();
    let text = run(&["job", "run", "--local", "--incremental", spec]);
    assert!(
        text.contains("all 4 datums were computed by earlier jobs"),
        "{text}"
    );
    assert!(runs(&log).is_empty());
    let third = local.json(&["job", "list", "--local", "-o", "json"])["jobs"][0].clone();
    assert_eq!(third["status"], "done", "{third}");

    // Without the flag (and without the spec field), everything runs.
    run(&["job", "run", "--local", "--wait", spec]);
    assert_eq!(runs(&log), ["a", "b", "d", "e"]);
}
