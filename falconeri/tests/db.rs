//! `falconeri db url`, `db console` and `migrate`, end to end: the real CLI
//! binary, the loopback fake Kubernetes API (Secrets, pods, port-forward),
//! and, behind the fake's PostgreSQL "pod", the real PostgreSQL named by
//! FALCONERI_TEST_POSTGRES_URL (`./scripts/test` starts one).

#![allow(clippy::unwrap_used)]

mod proxy_fake_kube;

mod support;

use std::{net::SocketAddr, path::Path, process::Output, time::Duration};

use proxy_fake_kube::{FakeKube, FakePod};
use tokio::process::Command;
use tokio_postgres::NoTls;

const NAMESPACE: &str = "falconeri-db-test";
const POSTGRES_URL_VAR: &str = "FALCONERI_TEST_POSTGRES_URL";
const PATIENCE: Duration = Duration::from_secs(60);

/// Runs the CLI against `kubeconfig` with a throwaway home.
async fn falconeri(kubeconfig: &Path, args: &[&str]) -> Output {
    let home = tempfile::tempdir().unwrap();
    tokio::time::timeout(
        PATIENCE,
        Command::from(support::falconeri_command())
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("FALCONERI_HOME", home.path())
            .output(),
    )
    .await
    .expect("the command finishes in time")
    .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "failed: {}\nstdout: {}",
        text(&output.stderr),
        text(&output.stdout)
    );
}

/// The admin URL of the test PostgreSQL; panics with instructions when
/// unset, because a skipped test would hide bugs.
fn admin_url() -> String {
    std::env::var(POSTGRES_URL_VAR).unwrap_or_else(|_| {
        panic!(
            "{POSTGRES_URL_VAR} is not set. Run ./scripts/test, which starts a throwaway \
             PostgreSQL, or point it at a server where tests may create databases."
        )
    })
}

/// A fresh, empty database on the test server.
struct TestDatabase {
    admin: url::Url,
    name: String,
}

impl TestDatabase {
    async fn create() -> TestDatabase {
        let admin = url::Url::parse(&admin_url()).unwrap();
        let name = format!("falconeri_cli_{:016x}", rand::random::<u64>());
        run_sql(admin.as_str(), &format!("CREATE DATABASE {name}")).await;
        TestDatabase { admin, name }
    }

    /// The database's URL on the real server.
    fn url(&self) -> String {
        let mut url = self.admin.clone();
        url.set_path(&self.name);
        url.to_string()
    }

    /// The URL the deployment's Secret would hold: same user and database,
    /// the in-cluster Service as host.
    fn secret_url(&self, password: &str) -> String {
        let mut url = url::Url::parse("postgres://falconeri-postgres:5432/").unwrap();
        url.set_username(self.admin.username()).unwrap();
        url.set_password(Some(password)).unwrap();
        url.set_path(&self.name);
        url.to_string()
    }

    /// The real server's address, for the fake's PostgreSQL pod.
    fn server(&self) -> SocketAddr {
        let host = self.admin.host_str().unwrap();
        let port = self.admin.port().unwrap_or(5432);
        std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
            .unwrap()
            .next()
            .unwrap()
    }

    async fn drop_database(self) {
        run_sql(
            self.admin.as_str(),
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        )
        .await;
    }
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

async fn run_sql(url: &str, sql: &str) {
    connect(url).await.batch_execute(sql).await.unwrap();
}

/// A fake cluster whose PostgreSQL pod is the real test server and whose
/// Secret points at `db`.
async fn cluster_for(db: &TestDatabase, password: &str) -> FakeKube {
    let fake = FakeKube::start(NAMESPACE).await;
    fake.set_secret("falconeri", "database-url", &db.secret_url(password));
    fake.add_pod(FakePod::new(
        "falconeri-postgres-5b7c",
        "postgres",
        5432,
        db.server(),
    ));
    fake
}

#[tokio::test(flavor = "multi_thread")]
async fn db_url_points_the_secrets_url_at_the_proxy_port() {
    let fake = FakeKube::start(NAMESPACE).await;
    fake.set_secret(
        "falconeri",
        "database-url",
        "postgres://falconeri:p%40ss%2Fword@falconeri-postgres:5432/falconeri",
    );
    let output = falconeri(
        &fake.kubeconfig,
        &[
            "db",
            "url",
            "--namespace",
            NAMESPACE,
            "--postgres-port",
            "25432",
        ],
    )
    .await;
    assert_success(&output);
    assert_eq!(
        text(&output.stdout),
        "postgres://falconeri:p%40ss%2Fword@127.0.0.1:25432/falconeri\n"
    );
    // Nothing listens there: a hint, on stderr only.
    assert!(text(&output.stderr).contains("start `falconeri proxy`"));

    let output = falconeri(
        &fake.kubeconfig,
        &["db", "url", "--namespace", NAMESPACE, "-o", "json"],
    )
    .await;
    assert_success(&output);
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        json["url"], "postgres://falconeri:p%40ss%2Fword@127.0.0.1:15432/falconeri",
        "the default port is the proxy's default"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn db_url_falls_back_to_the_password_key() {
    let fake = FakeKube::start(NAMESPACE).await;
    fake.set_secret("falconeri", "database-password", "a:b@c");
    let output = falconeri(
        &fake.kubeconfig,
        &[
            "db",
            "url",
            "--namespace",
            NAMESPACE,
            "--postgres-port",
            "25433",
        ],
    )
    .await;
    assert_success(&output);
    assert_eq!(
        text(&output.stdout),
        "postgres://falconeri:a%3Ab%40c@127.0.0.1:25433/falconeri\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn db_url_without_the_secret_is_a_clear_error() {
    let fake = FakeKube::start(NAMESPACE).await;
    let output = falconeri(&fake.kubeconfig, &["db", "url", "--namespace", NAMESPACE]).await;
    assert!(!output.status.success());
    assert!(
        text(&output.stderr)
            .contains("Secret falconeri in namespace falconeri-db-test has neither"),
        "{}",
        text(&output.stderr)
    );
}

/// Every migration this build embeds, oldest first.
fn all_migrations() -> Vec<&'static str> {
    falconeri_common::migrations::POSTGRES
        .iter()
        .map(|m| m.name)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_applies_the_migrations_through_a_port_forward_once() {
    let db = TestDatabase::create().await;
    let fake = cluster_for(&db, "unused-under-trust").await;

    let output = falconeri(&fake.kubeconfig, &["migrate", "--namespace", NAMESPACE]).await;
    assert_success(&output);
    assert!(
        text(&output.stdout).contains(&format!(
            "Applied {} migrations:\n  {}",
            all_migrations().len(),
            all_migrations().join("\n  ")
        )),
        "{}",
        text(&output.stdout)
    );
    assert_eq!(fake.forwards(), ["falconeri-postgres-5b7c"]);

    // The schema is there, recorded as diesel records it, so falconerid's own
    // start-up migration finds nothing to do.
    let client = connect(&db.url()).await;
    let versions: Vec<String> = client
        .query(
            "SELECT version FROM __diesel_schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let expected: Vec<String> = falconeri_common::migrations::POSTGRES
        .iter()
        .map(|m| m.version())
        .collect();
    assert_eq!(versions, expected);
    for table in ["jobs", "datums"] {
        let found = client
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await;
        assert!(found.is_ok(), "no table {table}: {found:?}");
    }
    drop(client);

    // Again: nothing to do.
    let output = falconeri(
        &fake.kubeconfig,
        &["migrate", "--namespace", NAMESPACE, "-o", "json"],
    )
    .await;
    assert_success(&output);
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["applied"], serde_json::json!([]));
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_with_a_database_url_needs_no_cluster() {
    let db = TestDatabase::create().await;
    let nowhere = tempfile::tempdir().unwrap();
    let output = falconeri(
        &nowhere.path().join("no-kubeconfig"),
        &["migrate", "--database-url", &db.url(), "-o", "json"],
    )
    .await;
    assert_success(&output);
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["applied"], serde_json::json!(all_migrations()));

    // A version this falconeri does not know is reported, not touched.
    run_sql(
        &db.url(),
        "INSERT INTO __diesel_schema_migrations (version) VALUES ('29991231000000')",
    )
    .await;
    let output = falconeri(
        &nowhere.path().join("no-kubeconfig"),
        &["migrate", "--database-url", &db.url()],
    )
    .await;
    assert_success(&output);
    assert!(text(&output.stdout).contains("up to date"));
    assert!(text(&output.stderr).contains("29991231000000"));
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_migrations_apply_each_migration_once() {
    let db = TestDatabase::create().await;
    let nowhere = tempfile::tempdir().unwrap();
    let kubeconfig = nowhere.path().join("no-kubeconfig");
    let url = db.url();
    let args = ["migrate", "--database-url", &url, "-o", "json"];
    let runs = (0..6).map(|_| falconeri(&kubeconfig, &args));
    let outputs = futures::future::join_all(runs).await;
    let mut applied = Vec::new();
    for output in &outputs {
        assert_success(output);
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        applied.extend(json["applied"].as_array().unwrap().iter().cloned());
    }
    assert_eq!(applied, all_migrations());
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_migration_is_an_error_and_leaves_nothing_half_done() {
    let db = TestDatabase::create().await;
    // A table the migration creates already exists: its transaction fails.
    run_sql(&db.url(), "CREATE TABLE jobs (x INT)").await;
    let output = falconeri(
        Path::new("/nonexistent"),
        &["migrate", "--database-url", &db.url()],
    )
    .await;
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("migration 2026-11-25-000000_init failed"),
        "{}",
        text(&output.stderr)
    );
    let client = connect(&db.url()).await;
    let recorded = client
        .query(
            "SELECT version FROM __diesel_schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap();
    assert!(recorded.is_empty());
    drop(client);
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn db_console_runs_psql_with_the_password_in_its_environment_only() {
    let db = TestDatabase::create().await;
    let password = "pw-s3cret/@x";
    let fake = cluster_for(&db, password).await;

    // Real psql, through the forward: it prints the password it got in its
    // environment, the database it reached, and its own command line.
    let output = falconeri(
        &fake.kubeconfig,
        &[
            "db",
            "console",
            "--namespace",
            NAMESPACE,
            "--",
            "-X",
            "-At",
            "-c",
            r"\getenv pw PGPASSWORD",
            "-c",
            r"\echo :pw",
            "-c",
            "SELECT current_database()",
            "-c",
            r"\! tr '\0' ' ' < /proc/$PPID/cmdline",
        ],
    )
    .await;
    assert_success(&output);
    let stdout = text(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], password, "{stdout}");
    assert_eq!(lines[1], db.name, "{stdout}");
    // (psql may be a wrapper's path: /usr/lib/postgresql/15/bin/psql.)
    assert!(lines[2].contains("psql postgres://"), "{stdout}");
    assert!(
        !lines[2].contains("s3cret"),
        "the password is on psql's command line: {stdout}"
    );
    assert_eq!(fake.forwards(), ["falconeri-postgres-5b7c"]);

    // psql's failure is ours.
    let output = falconeri(
        &fake.kubeconfig,
        &[
            "db",
            "console",
            "--namespace",
            NAMESPACE,
            "--",
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            "SELECT * FROM no_such_table",
        ],
    )
    .await;
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("psql failed"));
    db.drop_database().await;
}
