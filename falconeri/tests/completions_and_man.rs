//! The built `falconeri` binary's `completions` and `man` commands, checked
//! with the real consumers: bash loads the completion script and completes
//! command lines with it, and groff renders every man page with all its
//! warnings on. Needs `bash` and `groff` (Debian's groff-base, which
//! scripts/test installs when it is missing).

mod support;

use std::{
    collections::BTreeSet,
    path::Path,
    process::{Command, Output},
};

use serde_json::Value;

/// Runs the CLI with `args` and a throwaway home; it must succeed.
fn falconeri(home: &Path, args: &[&str]) -> Output {
    let output = support::falconeri_command()
        .args(args)
        .env("FALCONERI_HOME", home)
        .output()
        .expect("the falconeri binary runs");
    assert!(
        output.status.success(),
        "falconeri {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Completes `line` with the bash script at `script`, as bash does when Tab
/// is pressed at the end of it: splits the line into COMP_WORDS (an empty
/// last word when it ends in a space), calls the completion function the
/// script registered for `falconeri`, and returns COMPREPLY.
fn bash_complete(script: &Path, line: &str) -> Vec<String> {
    const COMPLETE: &str = r#"
        source "$1" || exit 1
        line=$2
        read -ra COMP_WORDS <<<"$line"
        if [[ $line == *" " ]]; then COMP_WORDS+=(""); fi
        COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
        COMP_LINE=$line
        COMP_POINT=${#line}
        # The function `complete -p` names, so the test follows the script.
        spec=$(complete -p falconeri) || exit 1
        function=$(sed -E 's/.* -F ([^ ]+) .*/\1/' <<<"$spec")
        "$function" falconeri "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]}"
        printf '%s\n' "${COMPREPLY[@]}"
    "#;
    let output = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", COMPLETE, "complete"])
        .arg(script)
        .arg(line)
        .output()
        .expect("bash runs");
    assert!(
        output.status.success() && output.stderr.is_empty(),
        "bash could not complete {line:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|word| !word.is_empty())
        .map(str::to_owned)
        .collect()
}

fn words(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|word| word.to_string()).collect()
}

#[test]
fn bash_completes_commands_subcommands_and_values() {
    let home = tempfile::tempdir().expect("tempdir");
    let script = home.path().join("falconeri.bash");
    let output = falconeri(home.path(), &["completions", "bash"]);
    std::fs::write(&script, &output.stdout).expect("write the script");

    let commands: BTreeSet<String> = bash_complete(&script, "falconeri ")
        .into_iter()
        .filter(|word| !word.starts_with('-'))
        .collect();
    assert_eq!(
        commands,
        words(&[
            "completions",
            "datum",
            "db",
            "deploy",
            "help",
            "job",
            "local",
            "man",
            "migrate",
            "proxy",
            "schedule",
            "schema",
            "undeploy",
            "workflow",
        ]),
        "the hidden `internal` command must not be offered"
    );
    assert_eq!(bash_complete(&script, "falconeri jo"), ["job"]);
    assert_eq!(bash_complete(&script, "falconeri in"), Vec::<String>::new());
    let job: BTreeSet<String> = bash_complete(&script, "falconeri job ")
        .into_iter()
        .collect();
    for command in [
        "run", "list", "describe", "wait", "retry", "cancel", "validate",
    ] {
        assert!(
            job.contains(command),
            "`job {command}` missing from {job:?}"
        );
    }
    assert_eq!(
        bash_complete(&script, "falconeri datum list --status ")
            .into_iter()
            .collect::<BTreeSet<_>>(),
        words(&[
            "ready",
            "running",
            "publishing",
            "done",
            "error",
            "canceled",
            "skipped"
        ])
    );
    assert_eq!(
        bash_complete(&script, "falconeri job list -o j"),
        ["json"],
        "global flags complete after a subcommand"
    );
    assert_eq!(
        bash_complete(&script, "falconeri completions ")
            .into_iter()
            .filter(|word| !word.starts_with('-'))
            .collect::<BTreeSet<_>>(),
        words(&["bash", "elvish", "fish", "powershell", "zsh"])
    );
}

#[test]
fn every_shell_gets_a_script_naming_the_commands() {
    let home = tempfile::tempdir().expect("tempdir");
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let output = falconeri(home.path(), &["completions", shell]);
        let script = String::from_utf8(output.stdout).expect("utf-8 script");
        for command in ["job", "datum", "deploy", "completions", "man", "describe"] {
            assert!(script.contains(command), "{shell}: no `{command}`");
        }
        assert!(!script.contains("internal"), "{shell}: offers `internal`");
    }
    // `-o json` changes nothing: the output is a script, as `schema` always
    // prints JSON.
    let text = falconeri(home.path(), &["completions", "fish"]).stdout;
    let json = falconeri(home.path(), &["-o", "json", "completions", "fish"]).stdout;
    assert_eq!(text, json);
}

/// Renders `page` (roff) with groff's man macros and every warning on, and
/// returns what groff said on stderr; empty means a clean page.
fn groff_warnings(page: &[u8]) -> String {
    use std::io::Write;

    let mut child = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-z"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| {
            panic!("cannot run groff ({err}): install Debian's groff-base, as scripts/test does")
        });
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(page)
        .expect("groff reads the page");
    let output = child.wait_with_output().expect("groff finishes");
    assert!(output.status.success(), "groff failed: {output:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn man_prints_a_page_groff_renders_without_warnings() {
    let home = tempfile::tempdir().expect("tempdir");
    let page = falconeri(home.path(), &["man"]).stdout;
    let text = String::from_utf8_lossy(&page);
    assert!(text.contains(".TH falconeri 1"), "{text}");
    assert!(text.contains("falconeri\\-completions(1)"), "{text}");
    assert_eq!(groff_warnings(&page), "");
}

#[test]
fn man_out_writes_a_clean_page_per_command() {
    let home = tempfile::tempdir().expect("tempdir");
    let dir = home.path().join("share/man/man1");
    let dir_arg = dir.to_str().expect("utf-8 temp path");

    let output = falconeri(home.path(), &["man", "--out", dir_arg]);
    let text = String::from_utf8_lossy(&output.stdout);
    // One page per visible command: as many as the directory now holds.
    let written = std::fs::read_dir(&dir)
        .expect("the directory exists")
        .count();
    assert!(written > 20, "{text}");
    assert!(
        text.starts_with(&format!("Wrote {written} man pages to {dir_arg}:")),
        "{text}"
    );

    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).expect("the directory exists") {
        let path = entry.expect("entry").path();
        let page = std::fs::read(&path).expect("read page");
        assert_eq!(groff_warnings(&page), "", "{}", path.display());
        names.insert(
            path.file_name()
                .expect("a name")
                .to_string_lossy()
                .into_owned(),
        );
    }
    assert_eq!(names.len(), written, "{names:?}");
    for name in [
        "falconeri.1",
        "falconeri-job-run.1",
        "falconeri-job-logs.1",
        "falconeri-datum-logs.1",
        "falconeri-db-console.1",
    ] {
        assert!(names.contains(name), "{name} missing from {names:?}");
    }

    // With -o json: the pages written, which are the files in the directory.
    let output = falconeri(home.path(), &["-o", "json", "man", "--out", dir_arg]);
    let answer: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(answer["dir"], dir_arg);
    let listed: BTreeSet<String> = answer["pages"]
        .as_array()
        .expect("pages")
        .iter()
        .map(|page| {
            let page = Path::new(page.as_str().expect("a path"));
            assert!(page.starts_with(&dir), "{page:?}");
            page.file_name()
                .expect("a name")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(listed, names);
}
