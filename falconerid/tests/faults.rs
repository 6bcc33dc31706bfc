//! Bad input and a database that goes away, through `app()` and `oneshot`.
//!
//! NUL bytes: PostgreSQL cannot store one in text and SQLite can, so every
//! case runs on both databases and must answer the same. Database outages
//! are PostgreSQL's: the server reaches it through a TCP forwarder the test
//! cuts, so one server loses its database while the real PostgreSQL keeps
//! serving the other tests.

#![allow(clippy::unwrap_used)]

mod common;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use axum::http::{Method, StatusCode};
use common::{ADMIN, TestServer};
use falconeri_common::db::{DbPool, testing::TestDb};
use serde_json::{Value, json};
use tokio::{
    net::{TcpListener, TcpStream},
    task::{JoinHandle, JoinSet},
};

/// Creates a job of one datum and reserves it as worker `w1`: answers the
/// worker token and the reservation.
async fn reserved_datum(server: &TestServer) -> (String, Value) {
    let spec = server.spec_with_inputs(&[("a.txt", "a"), ("b.txt", "b")], json!({}));
    let (status, job) = server
        .call(Method::POST, "/v1/jobs", Some(ADMIN), Some(spec))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let job_id = job["id"].as_i64().unwrap();
    let token = server
        .executor
        .launches
        .lock()
        .unwrap()
        .iter()
        .find(|launch| launch.job_id == job_id)
        .map(|launch| launch.worker_token.clone())
        .unwrap();
    let (status, reservation) = server
        .call(
            Method::POST,
            &format!("/v1/jobs/{job_id}/reserve"),
            Some(&token),
            Some(json!({ "worker_id": "w1", "wait_ms": 0 })),
        )
        .await;
    assert_eq!(reservation["status"], "reserved", "{status}: {reservation}");
    (token, reservation)
}

/// Asserts a 400 that names `field` as holding a NUL byte, in the message
/// and as the problem's path.
fn assert_nul_refused(db: &str, answer: &(StatusCode, Value), place: &str, field: &str) {
    let (status, body) = answer;
    assert_eq!(*status, StatusCode::BAD_REQUEST, "{db}: {body}");
    assert_eq!(body["error"]["code"], "bad_request", "{db}: {body}");
    assert_eq!(
        body["error"]["message"],
        format!("{place} `{field}` must not contain a NUL byte"),
        "{db}: {body}"
    );
    assert_eq!(body["error"]["problems"][0]["path"], field, "{db}: {body}");
}

/// A NUL in a worker id, a job name, a query parameter or any other field
/// was a 500 on PostgreSQL (`invalid byte sequence for encoding "UTF8":
/// 0x00`) and accepted by SQLite; now both answer 400 naming the field.
#[tokio::test]
async fn nul_bytes_in_request_fields_get_400_naming_the_field() {
    for server in TestServer::all() {
        let db = server.db.backend().name();
        let (token, reservation) = reserved_datum(&server).await;
        let job_id = reservation["job_id"].as_i64().unwrap();
        let datum_id = reservation["datum_id"].as_i64().unwrap();

        // A worker id, top level.
        let answer = server
            .call(
                Method::POST,
                &format!("/v1/jobs/{job_id}/reserve"),
                Some(&token),
                Some(json!({ "worker_id": "w\u{0}2", "wait_ms": 0 })),
            )
            .await;
        assert_nul_refused(db, &answer, "JSON field", "worker_id");

        // A worker id inside a claim, next to free text that may hold NULs.
        let claim = json!({ "worker_id": "w1\u{0}", "attempt": 1 });
        let answer = server
            .call(
                Method::POST,
                &format!("/v1/datums/{datum_id}/done"),
                Some(&token),
                Some(json!({ "claim": claim, "output": "ok\u{0}" })),
            )
            .await;
        assert_nul_refused(db, &answer, "JSON field", "claim.worker_id");

        // An output file's path, in an array.
        let claim = &reservation["claim"];
        let files = json!([{ "path": "fine.txt", "size": 1 }, { "path": "x\u{0}.txt", "size": 1 }]);
        let answer = server
            .call(
                Method::POST,
                &format!("/v1/datums/{datum_id}/done"),
                Some(&token),
                Some(json!({ "claim": claim, "output": "", "output_files": files })),
            )
            .await;
        assert_nul_refused(db, &answer, "JSON field", "output_files[1].path");

        // A job name in the path.
        let answer = server
            .call(Method::GET, "/v1/jobs/by-name/job%00x", Some(ADMIN), None)
            .await;
        assert_nul_refused(db, &answer, "path parameter", "name");
        // A numeric path parameter too, before it is parsed as a number.
        let answer = server
            .call(Method::GET, "/v1/jobs/1%00", Some(ADMIN), None)
            .await;
        assert_nul_refused(db, &answer, "path parameter", "id");

        // Query parameters, known or not.
        let datums = format!("/v1/jobs/{job_id}/datums");
        let answer = server
            .call(
                Method::GET,
                &format!("{datums}?status=running%00"),
                Some(ADMIN),
                None,
            )
            .await;
        assert_nul_refused(db, &answer, "query parameter", "status");
        let answer = server
            .call(
                Method::GET,
                &format!("{datums}?limit=5&x%00y=1"),
                Some(ADMIN),
                None,
            )
            .await;
        assert_nul_refused(db, &answer, "query parameter", "x␀y");

        // The escape written out, not a NUL, is just text.
        let answer = server
            .call(
                Method::GET,
                &format!("{datums}?status=running&note=%2500"),
                Some(ADMIN),
                None,
            )
            .await;
        assert_eq!(answer.0, StatusCode::OK, "{db}: {}", answer.1);
        let answer = server
            .call(
                Method::POST,
                &format!("/v1/datums/{datum_id}/heartbeat"),
                Some(&token),
                Some(json!({ "claim": claim, "note": "\\u0000" })),
            )
            .await;
        assert_eq!(answer.0, StatusCode::OK, "{db}: {}", answer.1);

        // Nothing above changed the datum: it still runs, held by w1.
        let (_, datum) = server
            .call(
                Method::GET,
                &format!("/v1/datums/{datum_id}"),
                Some(ADMIN),
                None,
            )
            .await;
        assert_eq!(datum["datum"]["status"], "running", "{db}: {datum}");
        assert_eq!(datum["datum"]["owner"], "w1", "{db}: {datum}");
    }
}

/// A command that printed a NUL could never be reported done on
/// PostgreSQL: the worker retried for minutes and the datum ended with a
/// misleading error. Output, error and release reasons are free text: both
/// databases store them, with each NUL as `␀`.
#[tokio::test]
async fn nul_bytes_in_worker_output_and_errors_are_stored_as_the_symbol_for_null() {
    for server in TestServer::all() {
        let db = server.db.backend().name();
        let (token, first) = reserved_datum(&server).await;
        let job_id = first["job_id"].as_i64().unwrap();

        // done, with a NUL in the output.
        let id = first["datum_id"].as_i64().unwrap();
        let body = json!({ "claim": first["claim"], "output": "bin\u{0}ary\u{0}" });
        let (status, answer) = server
            .call(
                Method::POST,
                &format!("/v1/datums/{id}/done"),
                Some(&token),
                Some(body),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{db}: {answer}");
        let (_, datum) = server
            .call(Method::GET, &format!("/v1/datums/{id}"), Some(ADMIN), None)
            .await;
        assert_eq!(datum["output"], "bin␀ary␀", "{db}: {datum}");
        assert_eq!(datum["datum"]["status"], "done", "{db}: {datum}");

        // release, with a NUL in the reason; then error, with NULs in the
        // output and the message, on the next attempt.
        let (status, second) = server
            .call(
                Method::POST,
                &format!("/v1/jobs/{job_id}/reserve"),
                Some(&token),
                Some(json!({ "worker_id": "w2", "wait_ms": 0 })),
            )
            .await;
        assert_eq!(second["status"], "reserved", "{db}: {status} {second}");
        let id = second["datum_id"].as_i64().unwrap();
        let body = json!({ "claim": second["claim"], "reason": "stopped\u{0}" });
        let (status, answer) = server
            .call(
                Method::POST,
                &format!("/v1/datums/{id}/release"),
                Some(&token),
                Some(body),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{db}: {answer}");
        assert_eq!(answer["error_message"], "stopped␀", "{db}: {answer}");

        let (_, third) = server
            .call(
                Method::POST,
                &format!("/v1/jobs/{job_id}/reserve"),
                Some(&token),
                Some(json!({ "worker_id": "w3", "wait_ms": 0 })),
            )
            .await;
        assert_eq!(third["datum_id"].as_i64(), Some(id), "{db}: {third}");
        let body = json!({
            "claim": third["claim"],
            "output": "\u{0}out",
            "error": "exit\u{0}1",
        });
        let (status, answer) = server
            .call(
                Method::POST,
                &format!("/v1/datums/{id}/error"),
                Some(&token),
                Some(body),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{db}: {answer}");
        let (_, datum) = server
            .call(Method::GET, &format!("/v1/datums/{id}"), Some(ADMIN), None)
            .await;
        assert_eq!(datum["output"], "␀out", "{db}: {datum}");
        assert_eq!(datum["datum"]["error_message"], "exit␀1", "{db}: {datum}");
    }
}

/// A NUL in a spec string (an argument of the command, say) was accepted
/// and the job only failed when a worker could not start the command; a
/// spec is refused as a whole with every such path named.
#[tokio::test]
async fn a_spec_with_a_nul_byte_gets_400_naming_its_path() {
    for server in TestServer::all() {
        let db = server.db.backend().name();
        let mut spec = server.spec_with_inputs(&[("a.txt", "a")], json!({}));
        spec["transform"]["cmd"] = json!(["sh", "-c", "echo\u{0}"]);
        spec["transform"]["env"] = json!({ "GREETING": "hi\u{0}" });
        spec["egress"]["URI"] = json!("file:///out\u{0}/");
        let (status, body) = server
            .call(Method::POST, "/v1/jobs", Some(ADMIN), Some(spec))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{db}: {body}");
        assert_eq!(body["error"]["code"], "invalid_spec", "{db}: {body}");
        let mut paths: Vec<&str> = body["error"]["problems"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|problem| problem["path"].as_str())
            .collect();
        paths.sort_unstable();
        assert_eq!(
            paths,
            ["egress.URI", "transform.cmd[2]", "transform.env.GREETING"],
            "{db}: {body}"
        );
        let (_, jobs) = server
            .call(Method::GET, "/v1/jobs", Some(ADMIN), None)
            .await;
        assert_eq!(jobs["jobs"], json!([]), "{db}: nothing was created");
    }
}

/// A TCP forwarder in front of the test PostgreSQL server. Cutting it closes
/// its port and every connection through it, which is what a server sees of
/// a database that went down.
struct DbProxy {
    port: u16,
    target: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl DbProxy {
    /// A forwarder to the server of `url` (`postgres://user@host:port/db`).
    async fn start(url: &str) -> DbProxy {
        let authority = url.split('@').nth(1).unwrap().split('/').next().unwrap();
        let target: SocketAddr = tokio::net::lookup_host(authority)
            .await
            .unwrap()
            .next()
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = Some(tokio::spawn(forward(listener, target)));
        DbProxy { port, target, task }
    }

    /// `url` with its server replaced by this forwarder.
    fn url(&self, url: &str) -> String {
        let (user, rest) = url.split_once('@').unwrap();
        let path = &rest[rest.find('/').unwrap()..];
        format!("{user}@127.0.0.1:{}{path}", self.port)
    }

    /// The database goes down: the port closes and open connections drop.
    async fn cut(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            // Dropping the task drops the listener and every connection.
            let _ = task.await;
        }
    }

    /// The database comes back on the same port.
    async fn restore(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        self.task = Some(tokio::spawn(forward(listener, self.target)));
    }
}

async fn forward(listener: TcpListener, target: SocketAddr) {
    // Owned here, so aborting this task aborts every connection with it.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((mut inbound, _)) = accepted else { continue };
                connections.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// A server with a pool of `size` connections waiting at most `wait`, that
/// reaches its (migrated) PostgreSQL database through a [`DbProxy`].
async fn server_behind_proxy(size: u32, wait: Duration) -> (TestServer, DbProxy) {
    let db = TestDb::postgres();
    let proxy = DbProxy::start(&db.url).await;
    let url = proxy.url(&db.url);
    let pool = tokio::task::spawn_blocking(move || DbPool::connect_waiting(&url, size, wait))
        .await
        .unwrap()
        .unwrap();
    (TestServer::with_pool(db, pool), proxy)
}

/// Times one request.
async fn timed(server: &TestServer, path: &str) -> ((StatusCode, Value), Duration) {
    let started = Instant::now();
    let answer = server.call(Method::GET, path, Some(ADMIN), None).await;
    (answer, started.elapsed())
}

/// With the database down, `/readyz` hung for the pool's 30 s timeout like
/// every other request. It answers 503 within 2 s (it has its own 1 s
/// budget, however long `--db-wait` is), and 200 again once the database is
/// back.
#[tokio::test]
async fn readyz_answers_503_within_2s_while_the_database_is_down() {
    let (server, mut proxy) = server_behind_proxy(4, Duration::from_secs(30)).await;
    let ((status, _), _) = timed(&server, "/readyz").await;
    assert_eq!(status, StatusCode::OK);

    proxy.cut().await;
    // Twice: first with stale connections in the pool, then with none.
    for _ in 0..2 {
        let ((status, body), took) = timed(&server, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["error"]["code"], "unavailable", "{body}");
        assert!(took < Duration::from_secs(2), "/readyz took {took:?}");
    }

    proxy.restore().await;
    // The pool reconnects within half its wait; a request waits for that.
    let ((status, body), _) = timed(&server, "/v1/jobs").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ((status, body), _) = timed(&server, "/readyz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// With the database down, requests hung for 30 s; they fail with 503
/// once the configured wait (`--db-wait`) runs out.
#[tokio::test]
async fn requests_fail_with_503_after_the_db_wait_while_the_database_is_down() {
    let wait = Duration::from_secs(2);
    let (server, mut proxy) = server_behind_proxy(2, wait).await;
    let ((status, _), _) = timed(&server, "/v1/jobs").await;
    assert_eq!(status, StatusCode::OK);

    proxy.cut().await;
    // Requests that draw a connection the database dropped fail at once
    // (503, as the connection was lost); once those are gone, a request
    // waits for a new connection, up to the wait.
    let mut waited = None;
    for _ in 0..4 {
        let ((status, body), took) = timed(&server, "/v1/jobs").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["error"]["code"], "unavailable", "{body}");
        assert!(took < wait + Duration::from_secs(3), "took {took:?}");
        if took >= wait {
            waited = Some(took);
            break;
        }
    }
    assert!(waited.is_some(), "no request waited for a connection");
}

/// Connections are no longer tested with `SELECT 1` at every check-out, so
/// a connection whose backend died must not go back to the pool: diesel's
/// manager alone keeps it (it only checks the transaction state), and every
/// later request that drew it would fail. The request that meets it answers
/// 503 (try again), and the next one gets a fresh connection.
#[tokio::test]
async fn a_terminated_connection_is_not_reused() {
    let db = TestDb::postgres();
    let pool = DbPool::connect_waiting(&db.url, 1, Duration::from_secs(5)).unwrap();
    let database = db.url.rsplit('/').next().unwrap().to_owned();
    let admin_url = std::env::var(falconeri_common::db::testing::POSTGRES_URL_VAR).unwrap();
    let server = TestServer::with_pool(db, pool);
    let ((status, _), _) = timed(&server, "/v1/jobs").await;
    assert_eq!(status, StatusCode::OK);

    let (admin, connection) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(connection);
    let terminated = admin
        .query_one(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()) AS t",
            &[&database],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    // The server's one connection, and those of the test's own pool.
    assert!(terminated >= 1, "no connection was terminated");
    drop(admin);
    let _ = driver.await;

    let ((status, body), _) = timed(&server, "/v1/jobs").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("connection was lost"),
        "{body}"
    );
    for _ in 0..3 {
        let ((status, body), _) = timed(&server, "/v1/jobs").await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}
