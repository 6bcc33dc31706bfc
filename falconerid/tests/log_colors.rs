//! falconerid's log has no ANSI colour codes when it is written to a file,
//! as it is under a service manager or with `2> falconerid.log`.

use std::{
    fs::File,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

#[test]
fn server_logs_to_a_file_have_no_ansi_codes() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let log_path = dir.path().join("falconerid.log");
    let log = File::create(&log_path).expect("log file");
    let mut server = Command::new(env!("CARGO_BIN_EXE_falconerid"))
        .arg(format!(
            "--database-url=sqlite://{}",
            dir.path().join("db.sqlite3").display()
        ))
        .args(["--listen=127.0.0.1:0", "--token=admin-token-of-the-test"])
        .arg(format!(
            "--state-dir={}",
            dir.path().join("state").display()
        ))
        .args(["--worker-command", "true"])
        .env_remove("NO_COLOR")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start falconerid");
    // Wait (bounded) until it has logged that it listens.
    let started = Instant::now();
    while !std::fs::read_to_string(&log_path)
        .unwrap_or_default()
        .contains("listening")
    {
        if started.elapsed() > Duration::from_secs(60) || server.try_wait().ok().flatten().is_some()
        {
            let _ = server.kill();
            panic!(
                "falconerid never listened: {}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = Pid::from_raw(i32::try_from(server.id()).expect("pid"));
    kill(pid, Signal::SIGTERM).expect("stop falconerid");
    server.wait().expect("wait for falconerid");

    let log = std::fs::read(&log_path).expect("read the log");
    let text = String::from_utf8_lossy(&log);
    assert!(text.contains("INFO"), "{text}");
    assert!(!log.contains(&0x1b), "ANSI escape in the log: {text:?}");
}
