//! Attempt logs through `app()`, on SQLite and PostgreSQL: a worker appends
//! under its claim, readers get server-sent events, a follower sees a line
//! within a second and its stream ends with the attempt; stale claims and
//! other jobs' tokens are refused.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use axum::{
    body::Body,
    http::{Method, Request, StatusCode, header},
};
use common::{ADMIN, TestServer};
use falconeri_common::{api::LogStream, log_frame};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

async fn create(server: &TestServer, files: &[(&str, &str)]) -> i64 {
    let spec = server.spec_with_inputs(files, json!({}));
    let (status, job) = server
        .call(Method::POST, "/v1/jobs", Some(ADMIN), Some(spec))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    job["id"].as_i64().unwrap()
}

/// The content type of a framed log chunk.
const OCTETS: &str = "application/octet-stream";

/// A job of one datum, reserved by its worker: what the log routes need.
struct Running {
    job_id: i64,
    token: String,
    datum_id: i64,
    claim: Value,
}

async fn one_running_datum(server: &TestServer) -> Running {
    let job_id = create(server, &[("a.txt", "a")]).await;
    let token = worker_token(server, job_id);
    let reserved = reserve(server, job_id, &token).await;
    Running {
        job_id,
        datum_id: reserved["datum_id"].as_i64().unwrap(),
        claim: reserved["claim"].clone(),
        token,
    }
}

/// Opens a log stream as the admin (following it if `path` asks).
async fn follow(server: &TestServer, path: &str) -> Events {
    Events::open(server, path, ADMIN).await.unwrap()
}

/// A datum's whole log in short: each line's first character, and each
/// cut as `cut BYTES`.
async fn log_outline(server: &TestServer, datum_id: i64) -> Vec<String> {
    let events = follow(server, &format!("/v1/datums/{datum_id}/logs"))
        .await
        .all()
        .await;
    events
        .iter()
        .map(|e| match e["kind"].as_str().unwrap() {
            "line" => e["text"].as_str().unwrap()[..1].to_owned(),
            "cut" => format!("cut {}", e["bytes"]),
            other => other.to_owned(),
        })
        .collect()
}

fn worker_token(server: &TestServer, job_id: i64) -> String {
    server
        .executor
        .launches
        .lock()
        .unwrap()
        .iter()
        .find(|launch| launch.job_id == job_id)
        .map(|launch| launch.worker_token.clone())
        .unwrap()
}

async fn reserve(server: &TestServer, job_id: i64, token: &str) -> Value {
    let (status, reserved) = server
        .call(
            Method::POST,
            &format!("/v1/jobs/{job_id}/reserve"),
            Some(token),
            Some(json!({ "worker_id": "w1", "wait_ms": 0 })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{reserved}");
    reserved
}

async fn append(
    server: &TestServer,
    token: &str,
    datum_id: i64,
    claim: &Value,
    seq: i64,
    lines: Value,
) -> (StatusCode, Value) {
    server
        .call(
            Method::POST,
            &format!("/v1/datums/{datum_id}/logs"),
            Some(token),
            Some(json!({ "claim": claim, "seq": seq, "lines": lines })),
        )
        .await
}

/// An open event stream: its events arrive as the body's frames do.
struct Events {
    body: Body,
    buffer: String,
}

impl Events {
    async fn open(server: &TestServer, path: &str, token: &str) -> Result<Events, StatusCode> {
        let request = Request::builder()
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        let response = server.app.clone().oneshot(request).await.unwrap();
        if response.status() != StatusCode::OK {
            return Err(response.status());
        }
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/event-stream"
        );
        Ok(Events {
            body: response.into_body(),
            buffer: String::new(),
        })
    }

    /// The next event's data, or None at the end of the stream.
    async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let data: Vec<&str> = block
                    .lines()
                    .filter_map(|line| line.strip_prefix("data: "))
                    .collect();
                if data.is_empty() {
                    continue;
                }
                return Some(serde_json::from_str(&data.join("\n")).unwrap());
            }
            let frame = tokio::time::timeout(Duration::from_secs(10), self.body.frame())
                .await
                .expect("the stream went silent")?
                .unwrap();
            if let Ok(data) = frame.into_data() {
                self.buffer.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
    }

    async fn all(mut self) -> Vec<Value> {
        let mut events = Vec::new();
        while let Some(event) = self.next().await {
            events.push(event);
        }
        events
    }
}

#[tokio::test]
async fn a_follower_gets_lines_within_a_second_and_ends_with_the_attempt() {
    for server in TestServer::all() {
        let Running {
            job_id,
            token,
            datum_id,
            claim,
        } = one_running_datum(&server).await;

        let mut follower =
            follow(&server, &format!("/v1/datums/{datum_id}/logs?follow=true")).await;
        let sent = Instant::now();
        let (status, body) = append(
            &server,
            &token,
            datum_id,
            &claim,
            0,
            json!([
                { "stream": "stdout", "at": 1, "text": "hello\n" },
                // 0xff, NUL, newline: not text.
                { "stream": "stderr", "at": 2, "base64": "/wAK" },
            ]),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["stored"], true);
        let first = follower.next().await.unwrap();
        let latency = sent.elapsed();
        assert!(latency < Duration::from_secs(1), "{latency:?}");
        assert_eq!(
            (&first["kind"], &first["stream"], &first["text"]),
            (&json!("line"), &json!("stdout"), &json!("hello\n"))
        );
        let second = follower.next().await.unwrap();
        assert_eq!(
            (&second["stream"], &second["base64"]),
            (&json!("stderr"), &json!("/wAK"))
        );

        // A resend is accepted and not stored again.
        let (status, body) = append(&server, &token, datum_id, &claim, 0, json!([])).await;
        assert_eq!((status, &body["stored"]), (StatusCode::OK, &json!(false)));
        // A stale claim changes nothing.
        let mut stale = claim.clone();
        stale["attempt"] = json!(7);
        let line = json!([{ "stream": "stdout", "at": 3, "text": "stale\n" }]);
        let (status, body) = append(&server, &token, datum_id, &stale, 1, line.clone()).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        // Bad lines are refused, naming the field.
        let bad = json!([{ "stream": "stdout", "at": 3 }]);
        let (status, body) = append(&server, &token, datum_id, &claim, 1, bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("lines[0]"),
            "{body}"
        );

        // The attempt ends: the follower hears it, and its stream ends.
        let (status, body) = server
            .call(
                Method::POST,
                &format!("/v1/datums/{datum_id}/error"),
                Some(&token),
                Some(json!({ "claim": claim, "output": "", "error": "boom", "exit_code": 3 })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let end = follower.next().await.unwrap();
        assert_eq!(end["kind"], "attempt_end", "{end}");
        assert_eq!(end["exit_code"], 3);
        assert!(follower.next().await.is_none());
        // After the attempt, its log is closed.
        let (status, _) = append(&server, &token, datum_id, &claim, 5, line).await;
        assert_eq!(status, StatusCode::CONFLICT);

        // Read again, not following: the same lines, then the end.
        let events = Events::open(&server, &format!("/v1/datums/{datum_id}/logs"), ADMIN)
            .await
            .unwrap()
            .all()
            .await;
        let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["line", "line", "attempt_end"]);
        // The job's logs carry each line's datum.
        let events = Events::open(&server, &format!("/v1/jobs/{job_id}/logs"), ADMIN)
            .await
            .unwrap()
            .all()
            .await;
        assert_eq!(events.len(), 2, "{events:?}");
        assert!(events.iter().all(|e| e["datum_id"] == datum_id));
    }
}

#[tokio::test]
async fn following_a_job_ends_with_the_job() {
    for server in TestServer::all() {
        let Running {
            job_id,
            token,
            datum_id,
            claim,
        } = one_running_datum(&server).await;
        let mut follower = follow(&server, &format!("/v1/jobs/{job_id}/logs?follow=true")).await;
        let sent = Instant::now();
        let line = json!([{ "stream": "stdout", "at": 1, "text": "live\n" }]);
        append(&server, &token, datum_id, &claim, 0, line).await;
        let event = follower.next().await.unwrap();
        assert!(
            sent.elapsed() < Duration::from_secs(1),
            "{:?}",
            sent.elapsed()
        );
        assert_eq!(
            (&event["datum_id"], &event["text"]),
            (&json!(datum_id), &json!("live\n"))
        );
        let (status, body) = server
            .call(
                Method::POST,
                &format!("/v1/datums/{datum_id}/done"),
                Some(&token),
                Some(json!({ "claim": claim, "output": "" })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        // The job finishes when a worker finds nothing left.
        let (_, answer) = server
            .call(
                Method::POST,
                &format!("/v1/jobs/{job_id}/reserve"),
                Some(&token),
                Some(json!({ "worker_id": "w1", "wait_ms": 0 })),
            )
            .await;
        assert_eq!(answer["status"], "finished", "{answer}");
        let end = follower.next().await.unwrap();
        assert_eq!(
            (&end["kind"], &end["status"]),
            (&json!("job_end"), &json!("done"))
        );
        assert!(follower.next().await.is_none());
    }
}

#[tokio::test]
async fn other_jobs_workers_can_neither_write_nor_read() {
    for server in TestServer::all() {
        let a = create(&server, &[("a.txt", "a")]).await;
        let b = create(&server, &[("b.txt", "b")]).await;
        let (token_a, token_b) = (worker_token(&server, a), worker_token(&server, b));
        let reserved = reserve(&server, b, &token_b).await;
        let datum_b = reserved["datum_id"].as_i64().unwrap();
        let line = json!([{ "stream": "stdout", "at": 1, "text": "x\n" }]);
        let (status, _) = append(&server, &token_a, datum_b, &reserved["claim"], 0, line).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        for path in [
            format!("/v1/datums/{datum_b}/logs"),
            format!("/v1/jobs/{b}/logs"),
        ] {
            for token in [&token_a, &token_b] {
                let refused = Events::open(&server, &path, token).await.err();
                assert_eq!(refused, Some(StatusCode::FORBIDDEN), "{path}");
            }
        }
        let events = Events::open(&server, &format!("/v1/datums/{datum_b}/logs"), ADMIN)
            .await
            .unwrap()
            .all()
            .await;
        assert!(events.is_empty(), "{events:?}");
    }
}

/// `PUT`s chunk `seq` of the claimed attempt's log as framed bytes.
async fn put_chunk(
    server: &TestServer,
    token: &str,
    datum_id: i64,
    claim: &Value,
    seq: i64,
    content_type: &str,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let path = format!(
        "/v1/datums/{datum_id}/attempts/{}/logs/{seq}?worker_id={}",
        claim["attempt"],
        claim["worker_id"].as_str().unwrap()
    );
    let request = Request::builder()
        .method(Method::PUT)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(body))
        .unwrap();
    let response = server.app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn framed_chunks_are_stored_as_sent_and_damaged_ones_refused() {
    for server in TestServer::all() {
        let Running {
            job_id: _,
            token,
            datum_id,
            claim,
        } = one_running_datum(&server).await;

        let mut follower =
            follow(&server, &format!("/v1/datums/{datum_id}/logs?follow=true")).await;
        let mut chunk = Vec::new();
        log_frame::push_line(&mut chunk, LogStream::Stdout, 10, b"hello\n");
        // NUL, invalid UTF-8 and a newline: kept as bytes on both databases.
        log_frame::push_line(&mut chunk, LogStream::Stderr, 11, b"\xff\0\n");
        log_frame::push_line(&mut chunk, LogStream::Worker, 12, b"downloaded\n");
        let sent = Instant::now();
        let (status, body) = put_chunk(&server, &token, datum_id, &claim, 0, OCTETS, chunk).await;
        assert_eq!(
            (status, &body["stored"]),
            (StatusCode::OK, &json!(true)),
            "{body}"
        );
        let first = follower.next().await.unwrap();
        assert!(sent.elapsed() < Duration::from_secs(1));
        assert_eq!(
            (&first["stream"], &first["text"], &first["at"]),
            (&json!("stdout"), &json!("hello\n"), &json!(10))
        );
        let second = follower.next().await.unwrap();
        assert_eq!(
            (&second["stream"], &second["base64"]),
            (&json!("stderr"), &json!("/wAK"))
        );
        let third = follower.next().await.unwrap();
        assert_eq!(third["stream"], "worker");

        // A resend is taken and not stored again.
        let (status, body) = put_chunk(&server, &token, datum_id, &claim, 0, OCTETS, vec![]).await;
        assert_eq!((status, &body["stored"]), (StatusCode::OK, &json!(false)));
        // A damaged chunk is refused, naming the line and the byte.
        let mut damaged = Vec::new();
        log_frame::push_line(&mut damaged, LogStream::Stdout, 13, b"whole\n");
        let second_line = damaged.len();
        log_frame::push_line(&mut damaged, LogStream::Stdout, 14, b"cut short\n");
        damaged.truncate(damaged.len() - 3);
        let (status, body) = put_chunk(&server, &token, datum_id, &claim, 1, OCTETS, damaged).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!("body: line 1 (at byte {second_line})")),
            "{message}"
        );
        // So is JSON sent to the framed route.
        let (status, body) = put_chunk(
            &server,
            &token,
            datum_id,
            &claim,
            1,
            "application/json",
            b"[]".to_vec(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        // A stale claim changes nothing.
        let mut stale = claim.clone();
        stale["attempt"] = json!(7);
        let (status, _) = put_chunk(&server, &token, datum_id, &stale, 1, OCTETS, vec![]).await;
        assert_eq!(status, StatusCode::CONFLICT);
        // Another job's worker cannot write here.
        let other = create(&server, &[("b.txt", "b")]).await;
        let other_token = worker_token(&server, other);
        let (status, _) =
            put_chunk(&server, &other_token, datum_id, &claim, 1, OCTETS, vec![]).await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        // Read back, not following: the three lines as they were sent.
        let events = Events::open(&server, &format!("/v1/datums/{datum_id}/logs"), ADMIN)
            .await
            .unwrap();
        drop(follower);
        let lines: Vec<Value> = events
            .all()
            .await
            .into_iter()
            .filter(|e| e["kind"] == "line")
            .collect();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(lines[1]["base64"], "/wAK");
    }
}

/// Every file under `dir`, with its bytes, by path.
fn files_under(dir: &std::path::Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut files = std::collections::BTreeMap::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(next) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&next) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let name = path.strip_prefix(dir).unwrap().display().to_string();
                files.insert(name, std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

/// The servers the file store is tried on: SQLite with its default (a
/// directory beside the database), PostgreSQL with a directory named, and
/// SQLite keeping the bytes in the database (`database`), with the
/// directory each keeps files in (None for the database).
fn log_store_servers(
    configure: impl Fn(&mut falconerid::config::Config) + Copy,
) -> Vec<(TestServer, Option<std::path::PathBuf>)> {
    use falconeri_common::db::testing::TestDb;
    use falconerid::log_store::LogStore;
    let mut servers = Vec::new();
    for db in TestDb::all() {
        let postgres = db.url.starts_with("postgres");
        let pool = db.pool.clone();
        let server = TestServer::configured(db, pool, |config, dir| {
            configure(config);
            if postgres {
                config.logs_location = Some(format!("file://{}", dir.join("chunks").display()));
            }
        });
        let dir = match server.state.config().log_store().unwrap() {
            LogStore::Directory(dir) => dir,
            LogStore::Database => panic!("{} keeps logs in the database", server.db.url),
        };
        if !postgres {
            // The default: beside the SQLite database.
            let db_path = server.db.url.trim_start_matches("sqlite://");
            let beside = std::path::Path::new(db_path).parent().unwrap();
            assert_eq!(dir, beside.join("attempt-logs"));
        }
        servers.push((server, Some(dir)));
    }
    let db = falconeri_common::db::testing::TestDb::sqlite();
    let pool = db.pool.clone();
    let server = TestServer::configured(db, pool, |config, _| {
        configure(config);
        config.logs_location = Some("database".to_owned());
    });
    servers.push((server, None));
    servers
}

/// The rows of an attempt's chunks: (seq, data, object).
async fn chunk_rows(server: &TestServer, datum_id: i64) -> Vec<(i64, Vec<u8>, Option<String>)> {
    use falconeri_common::models::LogChunk;
    server
        .state
        .db(move |conn| LogChunk::page(conn, datum_id, 1, -1, 100))
        .await
        .unwrap()
        .into_iter()
        .map(|chunk| (chunk.seq, chunk.data, chunk.object))
        .collect()
}

/// A chunk's bytes go to a file under the logs location, written once; the
/// row names it and holds no bytes. A record of several lines (what the
/// worker sends per read) reaches a follower as its lines within a second,
/// NUL and invalid UTF-8 kept; a resend, a stale claim and a damaged body
/// leave no file behind. With `database` the row keeps the bytes.
#[tokio::test]
async fn chunk_bytes_are_files_under_the_logs_location_not_in_the_database() {
    for (server, dir) in log_store_servers(|_| {}) {
        let Running {
            job_id: _,
            token,
            datum_id,
            claim,
        } = one_running_datum(&server).await;
        let mut follower =
            follow(&server, &format!("/v1/datums/{datum_id}/logs?follow=true")).await;

        let mut chunk = Vec::new();
        log_frame::push_line(
            &mut chunk,
            LogStream::Stdout,
            10,
            b"one\ntwo\n\xff\0three\n",
        );
        log_frame::push_line(&mut chunk, LogStream::Worker, 11, b"uploaded\n");
        let sent = Instant::now();
        let (status, body) =
            put_chunk(&server, &token, datum_id, &claim, 0, OCTETS, chunk.clone()).await;
        assert_eq!((status, &body["stored"]), (StatusCode::OK, &json!(true)));
        let mut lines = Vec::new();
        for _ in 0..4 {
            lines.push(follower.next().await.unwrap());
        }
        assert!(
            sent.elapsed() < Duration::from_secs(1),
            "{:?}",
            sent.elapsed()
        );
        let shown: Vec<(&Value, &Value, &Value)> = lines
            .iter()
            .map(|l| {
                (
                    &l["stream"],
                    &l["at"],
                    l.get("text").unwrap_or(&l["base64"]),
                )
            })
            .collect();
        assert_eq!(
            shown,
            vec![
                (&json!("stdout"), &json!(10), &json!("one\n")),
                (&json!("stdout"), &json!(10), &json!("two\n")),
                // "\xff\0three\n"
                (&json!("stdout"), &json!(10), &json!("/wB0aHJlZQo=")),
                (&json!("worker"), &json!(11), &json!("uploaded\n")),
            ]
        );

        let rows = chunk_rows(&server, datum_id).await;
        assert_eq!(rows.len(), 1);
        match &dir {
            Some(dir) => {
                let files = files_under(dir);
                assert_eq!(files.len(), 1, "{files:?}");
                let (name, bytes) = files.iter().next().unwrap();
                assert_eq!(bytes, &chunk);
                assert_eq!(rows[0].1, b"", "the row holds bytes");
                assert_eq!(rows[0].2.as_deref(), Some(name.as_str()));
            }
            None => assert_eq!(rows[0], (0, chunk.clone(), None)),
        }

        // A resend of the same chunk, a stale claim and a damaged body are
        // answered and leave the store as it was.
        let (status, body) =
            put_chunk(&server, &token, datum_id, &claim, 0, OCTETS, chunk.clone()).await;
        assert_eq!((status, &body["stored"]), (StatusCode::OK, &json!(false)));
        let mut stale = claim.clone();
        stale["attempt"] = json!(7);
        let (status, _) =
            put_chunk(&server, &token, datum_id, &stale, 1, OCTETS, chunk.clone()).await;
        assert_eq!(status, StatusCode::CONFLICT);
        let mut damaged = chunk.clone();
        damaged.pop();
        let (status, body) = put_chunk(&server, &token, datum_id, &claim, 1, OCTETS, damaged).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("body: line 1 (at byte "),
            "{body}"
        );
        assert_eq!(chunk_rows(&server, datum_id).await.len(), 1);
        if let Some(dir) = &dir {
            assert_eq!(files_under(dir).len(), 1, "an orphan file was left");
        }

        // Read back, not following: the same lines.
        drop(follower);
        let events = Events::open(&server, &format!("/v1/datums/{datum_id}/logs"), ADMIN)
            .await
            .unwrap();
        let again: Vec<Value> = events
            .all()
            .await
            .into_iter()
            .filter(|e| e["kind"] == "line")
            .collect();
        assert_eq!(again, lines);
    }
}

/// Past the cap, the chunks cut out of the middle lose their rows and then
/// their files; a reader is told how many bytes went.
#[tokio::test]
async fn cutting_an_over_cap_log_deletes_its_files_and_says_what_was_cut() {
    for (server, dir) in log_store_servers(|config| config.max_log_bytes = 1_000) {
        let Running {
            job_id: _,
            token,
            datum_id,
            claim,
        } = one_running_datum(&server).await;
        // Six chunks of 300 output bytes: with a cap of 1,000 the head
        // (chunk 0, ending within the first 500) and the tail (chunks 4 and
        // 5, the last 500 and the one crossing into them) stay.
        for seq in 0..6u8 {
            let mut line = vec![b'a' + seq; 299];
            line.push(b'\n');
            let mut chunk = Vec::new();
            log_frame::push_line(&mut chunk, LogStream::Stdout, 1, &line);
            let (status, body) =
                put_chunk(&server, &token, datum_id, &claim, seq.into(), OCTETS, chunk).await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
        let rows = chunk_rows(&server, datum_id).await;
        let seqs: Vec<i64> = rows.iter().map(|row| row.0).collect();
        assert_eq!(seqs, vec![0, 4, 5]);
        if let Some(dir) = &dir {
            let files: Vec<String> = files_under(dir).into_keys().collect();
            let named: Vec<String> = rows.iter().map(|row| row.2.clone().unwrap()).collect();
            let mut named_sorted = named.clone();
            named_sorted.sort();
            assert_eq!(files, named_sorted, "the cut chunks' files are still there");
        }
        assert_eq!(
            log_outline(&server, datum_id).await,
            vec!["a", "cut 900", "e", "f"]
        );

        // A file gone under a row (cut meanwhile, or lost) reads as cut.
        if let Some(dir) = &dir {
            let object = rows[1].2.clone().unwrap();
            std::fs::remove_file(dir.join(object)).unwrap();
            assert_eq!(
                log_outline(&server, datum_id).await,
                vec!["a", "cut 1200", "f"]
            );
        }
    }
}
