//! The worker's log has no ANSI colour codes when it is not written to a
//! terminal (the local executor writes it to a file, Kubernetes to a pod
//! log), nor when NO_COLOR is set.

use std::{
    fs::File,
    net::TcpListener,
    process::{Command, Stdio},
};

/// The worker binary and arguments that make it log a start-up line and
/// then fail at once: its server is a port where nothing listens, and its
/// retry budget is tiny.
fn failing_worker(dir: &std::path::Path) -> Vec<String> {
    // A port that was free a moment ago: connections are refused.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let path = |name: &str| dir.join(name).to_str().expect("UTF-8 path").to_owned();
    vec![
        env!("CARGO_BIN_EXE_falconeri-worker").to_owned(),
        format!("--server=http://127.0.0.1:{port}"),
        "--token=worker-token".to_owned(),
        "--job-id=7".to_owned(),
        "--retry-budget=300ms".to_owned(),
        format!("--pfs={}", path("pfs")),
        format!("--scratch={}", path("scratch")),
    ]
}

/// Runs `command` with its stdout and stderr to a file and returns the file.
fn output_in_a_file(mut command: Command, dir: &std::path::Path) -> Vec<u8> {
    let log_path = dir.join("output.log");
    let log = File::create(&log_path).expect("log file");
    let status = command
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone"))
        .stderr(log)
        .status()
        .expect("run the worker");
    assert!(!status.success(), "nobody answered, so it fails");
    std::fs::read(&log_path).expect("read the log")
}

#[test]
fn worker_logs_to_a_file_have_no_ansi_codes() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let args = failing_worker(dir.path());
    let mut command = Command::new(&args[0]);
    command.args(&args[1..]).env_remove("NO_COLOR");
    let log = output_in_a_file(command, dir.path());
    let text = String::from_utf8_lossy(&log);
    assert!(text.contains("INFO"), "{text}");
    assert!(!log.contains(&0x1b), "ANSI escape in the log: {text:?}");
}

/// At a terminal (a pseudo-terminal from util-linux's `script`) the log is
/// coloured, unless NO_COLOR is set.
#[test]
fn worker_logs_at_a_terminal_are_coloured_unless_no_color() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: util-linux `script` is not installed");
        return;
    }
    let at_a_terminal = |no_color: Option<&str>| {
        let dir = tempfile::tempdir().expect("temporary directory");
        let inner = failing_worker(dir.path())
            .iter()
            .map(|arg| format!("'{}'", arg.replace('\'', "'\\''")))
            .collect::<Vec<_>>()
            .join(" ");
        // `script -qec CMD /dev/null` runs CMD on a new pseudo-terminal and
        // copies what it prints to its own stdout, the file here.
        let mut command = Command::new("script");
        command.args(["-qec", &inner, "/dev/null"]);
        match no_color {
            Some(value) => command.env("NO_COLOR", value),
            None => command.env_remove("NO_COLOR"),
        };
        output_in_a_file(command, dir.path())
    };
    let coloured = at_a_terminal(None);
    assert!(
        coloured.contains(&0x1b),
        "no colours at a terminal: {:?}",
        String::from_utf8_lossy(&coloured)
    );
    let plain = at_a_terminal(Some("1"));
    let text = String::from_utf8_lossy(&plain);
    assert!(text.contains("INFO"), "{text}");
    assert!(!plain.contains(&0x1b), "colours despite NO_COLOR: {text:?}");
}
