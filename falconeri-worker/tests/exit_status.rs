//! The worker binary's exit status, which a Kubernetes Job reads: a worker
//! stopped before its job ended must not exit 0, or the Job would count it
//! as finished and stop replacing pods.

use std::{
    io::{BufRead, BufReader},
    net::TcpListener,
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

/// Starts the worker against a server that accepts the reserve request and
/// never answers, so the worker is mid-request when `signal` arrives.
fn exit_status_after(signal: Signal) -> Option<i32> {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    let (accepted, on_accept) = mpsc::channel();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        // Read the request line, then hold the connection open.
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line).expect("read");
        accepted.send(line).expect("send");
        std::thread::sleep(Duration::from_secs(60));
        drop(stream);
    });
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut child = Command::new(env!("CARGO_BIN_EXE_falconeri-worker"))
        .args(["--server", &format!("http://127.0.0.1:{port}")])
        .args(["--token", "worker-token", "--job-id", "7"])
        .arg("--pfs")
        .arg(dir.path().join("pfs"))
        .arg("--scratch")
        .arg(dir.path().join("scratch"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the worker");
    let request = on_accept
        .recv_timeout(Duration::from_secs(30))
        .expect("the worker asks for work");
    assert!(request.contains("/reserve"), "{request}");
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    kill(pid, signal).expect("signal the worker");
    let status = child.wait().expect("wait for the worker");
    status.code()
}

#[test]
fn a_worker_stopped_by_sigterm_exits_143() {
    assert_eq!(exit_status_after(Signal::SIGTERM), Some(143));
}

#[test]
fn a_worker_stopped_by_sigint_exits_143_too() {
    assert_eq!(exit_status_after(Signal::SIGINT), Some(143));
}
