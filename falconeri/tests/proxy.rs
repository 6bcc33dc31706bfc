//! `falconeri proxy`, end to end: the real CLI binary, a loopback fake of the
//! Kubernetes API (reached through a kubeconfig the test writes) that speaks
//! the port-forward WebSocket protocol, and real TCP servers as the pods'
//! containers, including a real falconerid.

#![allow(clippy::unwrap_used)]

mod proxy_fake_kube;

mod support;

use std::{net::SocketAddr, path::Path, process::Stdio, time::Duration};

use proxy_fake_kube::{EchoPod, FakeKube, FakePod};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
    process::{Child, Command},
};

const NAMESPACE: &str = "falconeri-test";
/// Bounds every wait, so a broken proxy fails the test instead of hanging.
const PATIENCE: Duration = Duration::from_secs(30);

/// A running `falconeri proxy` and the addresses it printed.
struct Proxy {
    child: Child,
    stdout: String,
    falconerid: SocketAddr,
    postgres: SocketAddr,
    minio: Option<SocketAddr>,
    /// Everything the proxy has logged (its stderr) so far.
    log: tokio::sync::watch::Receiver<String>,
}

impl Proxy {
    /// Starts the proxy on free ports with `home` as FALCONERI_HOME and waits
    /// for its instructions.
    async fn start(fake: &FakeKube, home: &Path) -> Proxy {
        let mut child = Command::from(support::falconeri_command())
            .args([
                "proxy",
                "--namespace",
                NAMESPACE,
                "--falconerid-port",
                "0",
                "--postgres-port",
                "0",
                "--minio-port",
                "0",
            ])
            .env("KUBECONFIG", &fake.kubeconfig)
            .env("FALCONERI_HOME", home)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let (log_tx, log) = tokio::sync::watch::channel(String::new());
        let mut errors = BufReader::new(child.stderr.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = errors.next_line().await {
                log_tx.send_modify(|log| {
                    log.push_str(&line);
                    log.push('\n');
                });
            }
        });
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut stdout = String::new();
        let read = async {
            while let Some(line) = lines.next_line().await.unwrap() {
                stdout.push_str(&line);
                stdout.push('\n');
                if line.contains("export FALCONERI_TOKEN") {
                    return;
                }
            }
        };
        if tokio::time::timeout(PATIENCE, read).await.is_err() || !stdout.contains("TOKEN") {
            panic!(
                "the proxy printed no instructions: {stdout}\nlog: {}",
                log.borrow().as_str()
            );
        }
        let addr = |title: &str| {
            stdout.lines().find_map(|line| {
                let mut words = line.split_whitespace();
                (words.next() == Some(title)).then(|| {
                    let shown = words.next().unwrap();
                    shown.trim_start_matches("http://").parse().unwrap()
                })
            })
        };
        Proxy {
            falconerid: addr("falconerid").unwrap(),
            postgres: addr("PostgreSQL").unwrap(),
            minio: addr("MinIO"),
            stdout: stdout.clone(),
            child,
            log,
        }
    }

    fn log(&self) -> String {
        self.log.borrow().clone()
    }

    /// Everything the proxy logged, once it has exited and closed stderr.
    async fn whole_log(&mut self) -> String {
        let closed = async { while self.log.changed().await.is_ok() {} };
        tokio::time::timeout(PATIENCE, closed)
            .await
            .expect("the proxy closes its stderr");
        self.log()
    }

    /// Waits until the proxy has logged `needle` (it may log a connection's
    /// outcome just after the connection closes).
    async fn wait_for_log(&mut self, needle: &str) {
        let found = tokio::time::timeout(PATIENCE, self.log.wait_for(|log| log.contains(needle)));
        if !matches!(found.await, Ok(Ok(_))) {
            panic!("the proxy never logged {needle:?}: {}", self.log());
        }
    }

    /// Fails the test if the proxy exited.
    fn assert_running(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "the proxy exited: {}",
            self.log()
        );
    }
}

/// Connects through the proxy and returns the pod's greeting line.
async fn connect(addr: SocketAddr) -> (BufReader<TcpStream>, String) {
    let conn = TcpStream::connect(addr).await.unwrap();
    let mut conn = BufReader::new(conn);
    let mut greeting = String::new();
    tokio::time::timeout(PATIENCE, conn.read_line(&mut greeting))
        .await
        .expect("a greeting in time")
        .unwrap();
    (conn, greeting.trim_end().to_owned())
}

/// Sends a line and expects it back.
async fn echo(conn: &mut BufReader<TcpStream>, text: &str) {
    conn.get_mut()
        .write_all(format!("{text}\n").as_bytes())
        .await
        .unwrap();
    let mut back = String::new();
    tokio::time::timeout(PATIENCE, conn.read_line(&mut back))
        .await
        .expect("an echo in time")
        .unwrap();
    assert_eq!(back, format!("{text}\n"));
}

/// Expects the connection to be closed by the proxy.
async fn assert_closed(conn: &mut BufReader<TcpStream>) {
    let mut rest = Vec::new();
    let read = tokio::time::timeout(PATIENCE, conn.read_to_end(&mut rest))
        .await
        .expect("the connection closes in time");
    // A reset is as closed as an end of file.
    if let Ok(n) = read {
        assert_eq!(
            n,
            0,
            "unexpected bytes: {:?}",
            String::from_utf8_lossy(&rest)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_reach_a_ready_pod_and_follow_dropped_connections_and_replaced_pods() {
    let fake = FakeKube::start(NAMESPACE).await;
    let home = tempfile::tempdir().unwrap();
    // A pod that is not ready must never be chosen, though its name sorts first.
    let unready = EchoPod::start("falconerid-0").await;
    fake.add_pod(FakePod::new("falconerid-0", "falconerid", 8089, unready.addr).not_ready());
    let a = EchoPod::start("falconerid-a").await;
    fake.add_pod(FakePod::new("falconerid-a", "falconerid", 8089, a.addr));
    let pg = EchoPod::start("falconeri-postgres-1").await;
    fake.add_pod(FakePod::new(
        "falconeri-postgres-1",
        "postgres",
        5432,
        pg.addr,
    ));

    let mut proxy = Proxy::start(&fake, home.path()).await;
    assert!(proxy.falconerid.ip().is_loopback() && proxy.postgres.ip().is_loopback());
    assert_eq!(
        proxy.minio, None,
        "MinIO is forwarded only when its Service exists"
    );
    assert!(
        proxy.stdout.contains(&format!(
            "export FALCONERI_SERVER=http://{}",
            proxy.falconerid
        )),
        "{}",
        proxy.stdout
    );

    // A request goes through, to the ready pod, on each component's port.
    let (mut first, greeting) = connect(proxy.falconerid).await;
    assert_eq!(greeting, "pod falconerid-a");
    echo(&mut first, "hello").await;
    let (mut db, greeting) = connect(proxy.postgres).await;
    assert_eq!(greeting, "pod falconeri-postgres-1");
    echo(&mut db, "select 1").await;

    // The API server drops the forwarded connections: open ones close, and
    // the next connection works without restarting the proxy.
    fake.drop_connections();
    assert_closed(&mut first).await;
    assert_closed(&mut db).await;
    let (mut second, greeting) = connect(proxy.falconerid).await;
    assert_eq!(greeting, "pod falconerid-a");
    echo(&mut second, "again").await;

    // The pod is replaced: the next connection goes to the new one.
    fake.remove_pod("falconerid-a");
    drop(a);
    assert_closed(&mut second).await;
    let b = EchoPod::start("falconerid-b").await;
    fake.add_pod(FakePod::new("falconerid-b", "falconerid", 8089, b.addr));
    let (mut third, greeting) = connect(proxy.falconerid).await;
    assert_eq!(greeting, "pod falconerid-b");
    echo(&mut third, "new pod").await;

    proxy.assert_running();
    // One port-forward per connection, never to the pod that is not ready.
    assert_eq!(
        fake.forwards(),
        [
            "falconerid-a",
            "falconeri-postgres-1",
            "falconerid-a",
            "falconerid-b"
        ]
    );
    proxy
        .wait_for_log("now forwarding to pod falconerid-b (was falconerid-a)")
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn large_transfers_stream_both_ways_intact() {
    let fake = FakeKube::start(NAMESPACE).await;
    let home = tempfile::tempdir().unwrap();
    let pod = EchoPod::start("falconerid-big").await;
    fake.add_pod(FakePod::new("falconerid-big", "falconerid", 8089, pod.addr));
    let proxy = Proxy::start(&fake, home.path()).await;

    let (conn, greeting) = connect(proxy.falconerid).await;
    assert_eq!(greeting, "pod falconerid-big");
    // Far more than any buffer on the way (kube-rs's is 1 MiB), written and
    // read at the same time, so it only passes if data streams.
    const SIZE: usize = 32 * 1024 * 1024;
    let data: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
    let (mut reader, mut writer) = tokio::io::split(conn);
    let sent = data.clone();
    let write = tokio::spawn(async move { writer.write_all(&sent).await.unwrap() });
    let mut back = vec![0u8; SIZE];
    tokio::time::timeout(PATIENCE, reader.read_exact(&mut back))
        .await
        .expect("echoed in time")
        .unwrap();
    write.await.unwrap();
    assert!(back == data, "the echo differs");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_ready_pod_connections_fail_until_one_is_ready() {
    let fake = FakeKube::start(NAMESPACE).await;
    let home = tempfile::tempdir().unwrap();
    let mut proxy = Proxy::start(&fake, home.path()).await;
    assert!(proxy.log().contains("no falconerid pod is ready yet"));

    let mut conn = TcpStream::connect(proxy.falconerid).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, conn.read_to_end(&mut rest))
        .await
        .expect("closed in time");
    assert!(rest.is_empty());
    proxy.assert_running();

    let pod = EchoPod::start("falconerid-late").await;
    fake.add_pod(FakePod::new(
        "falconerid-late",
        "falconerid",
        8089,
        pod.addr,
    ));
    let (mut conn, greeting) = connect(proxy.falconerid).await;
    assert_eq!(greeting, "pod falconerid-late");
    echo(&mut conn, "finally").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_refusing_the_port_closes_the_connection_with_the_reason() {
    let fake = FakeKube::start(NAMESPACE).await;
    let home = tempfile::tempdir().unwrap();
    // An address nothing listens on any more.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    fake.add_pod(FakePod::new(
        "falconerid-broken",
        "falconerid",
        8089,
        closed,
    ));
    let mut proxy = Proxy::start(&fake, home.path()).await;

    let mut conn = TcpStream::connect(proxy.falconerid).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, conn.read_to_end(&mut rest))
        .await
        .expect("closed in time");
    assert!(rest.is_empty());
    proxy.assert_running();
    // The API server's message on the port's error channel is in the log.
    proxy
        .wait_for_log("pod falconerid-broken port 8089: error forwarding port 8089")
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_goes_to_a_private_file_and_minio_is_forwarded_when_deployed() {
    use std::os::unix::fs::PermissionsExt;

    let fake = FakeKube::start(NAMESPACE).await;
    let home = tempfile::tempdir().unwrap();
    let token = "0123456789abcdef-secret-token";
    fake.set_secret("falconeri", "token", token);
    fake.add_service("falconeri-minio");
    let minio = EchoPod::start("falconeri-minio-1").await;
    fake.add_pod(FakePod::new("falconeri-minio-1", "minio", 9000, minio.addr));

    let mut proxy = Proxy::start(&fake, home.path()).await;
    let token_file = home.path().join(format!("proxy-{NAMESPACE}.token"));
    assert_eq!(std::fs::read_to_string(&token_file).unwrap(), token);
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(!proxy.stdout.contains(token), "{}", proxy.stdout);
    assert!(
        proxy.stdout.contains(&format!(
            "export FALCONERI_TOKEN=\"$(cat '{}')\"",
            token_file.display()
        )),
        "{}",
        proxy.stdout
    );

    let (mut conn, greeting) = connect(proxy.minio.expect("MinIO is forwarded")).await;
    assert_eq!(greeting, "pod falconeri-minio-1");
    echo(&mut conn, "PUT /bucket").await;

    // Ctrl-C stops it cleanly and takes the token off the disk.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(proxy.child.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = tokio::time::timeout(PATIENCE, proxy.child.wait())
        .await
        .expect("stops in time")
        .unwrap();
    assert!(status.success(), "{}", proxy.log());
    assert!(!token_file.exists());
    let log = proxy.whole_log().await;
    assert!(log.contains("forwarding"), "{log}");
    assert!(!log.contains(token), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_falconerid_answers_the_cli_through_the_proxy() {
    // The "pod" is the CLI's own embedded falconerid, started in its home.
    let server_home = tempfile::tempdir().unwrap();
    let cli = |home: &Path, args: &[&str]| {
        support::falconeri_command()
            .args(args)
            .env("FALCONERI_HOME", home)
            .output()
            .unwrap()
    };
    let started = cli(
        server_home.path(),
        &["job", "list", "--local", "-o", "json"],
    );
    assert!(started.status.success(), "{started:?}");
    let info: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(server_home.path().join("server.json")).unwrap(),
    )
    .unwrap();
    let server: SocketAddr = info["url"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let token = std::fs::read_to_string(server_home.path().join("token")).unwrap();

    let fake = FakeKube::start(NAMESPACE).await;
    fake.set_secret("falconeri", "token", token.trim());
    fake.add_pod(FakePod::new("falconerid-7d9f", "falconerid", 8089, server));
    let home = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(&fake, home.path()).await;

    // What the printed instructions say: FALCONERI_SERVER and the token file.
    let token =
        std::fs::read_to_string(home.path().join(format!("proxy-{NAMESPACE}.token"))).unwrap();
    let listed = support::falconeri_command()
        .args(["job", "list", "-o", "json"])
        .env("FALCONERI_SERVER", format!("http://{}", proxy.falconerid))
        .env("FALCONERI_TOKEN", token)
        .env("FALCONERI_HOME", home.path())
        .output()
        .unwrap();
    let stopped = cli(server_home.path(), &["local", "stop"]);
    assert!(
        listed.status.success(),
        "{}\nproxy log: {}",
        String::from_utf8_lossy(&listed.stderr),
        proxy.log()
    );
    let jobs: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert!(jobs.is_array() || jobs.is_object(), "{jobs}");
    assert!(fake.forwards().iter().all(|pod| pod == "falconerid-7d9f"));
    assert!(!fake.forwards().is_empty());
    assert!(stopped.status.success(), "{stopped:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_cluster_is_a_clear_error() {
    let fake = FakeKube::start(NAMESPACE).await;
    let kubeconfig = fake.kubeconfig.clone();
    let copy = tempfile::tempdir().unwrap();
    let path = copy.path().join("kubeconfig");
    std::fs::copy(&kubeconfig, &path).unwrap();
    drop(fake);
    // Nothing listens there any more.
    let output = tokio::time::timeout(
        PATIENCE,
        Command::from(support::falconeri_command())
            .args(["proxy", "--namespace", NAMESPACE, "--falconerid-port", "0"])
            .env("KUBECONFIG", &path)
            .env("FALCONERI_HOME", copy.path())
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("error: cannot list the falconerid pods"),
        "{stderr}"
    );
}
