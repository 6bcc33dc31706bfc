//! Incremental runs over HTTP, on SQLite and PostgreSQL: `POST /v1/jobs`
//! with `?incremental=true` skips what an earlier job of the pipeline
//! computed, a job with nothing to run is `done` at once and starts no
//! workers, skipped datums show their pointer, and the vanished datums of
//! the previous run are paged by `GET /v1/jobs/{id}/vanished`; an
//! unchanged rerun over several batches is one run of skipped datums.

#![allow(clippy::unwrap_used)]

mod common;

use axum::http::{Method, StatusCode};
use common::{ADMIN, TestServer};
use falconeri_common::{
    db::DbConn,
    models::{Datum, FIRST_SKIPPED_ID, SkippedRun, db_now},
};
use serde_json::{Value, json};

/// Runs every datum of job `id` to done, as workers would.
fn run_all(server: &TestServer, id: i64) {
    let conn = &mut server.db.pool.get().unwrap();
    let now = db_now(conn).unwrap();
    while let Some(datum) = Datum::reserve_next(conn, id, "w", now, 30_000, None).unwrap() {
        let claim = datum.claim().unwrap();
        Datum::mark_done(conn, datum.id, &claim, "", &[], now, |_| Ok(Vec::new())).unwrap();
    }
    falconeri_common::models::Job::finish_if_complete(conn, id, now).unwrap();
}

async fn get(server: &TestServer, path: &str) -> (StatusCode, Value) {
    server.call(Method::GET, path, Some(ADMIN), None).await
}

#[tokio::test]
async fn incremental_jobs_over_http() {
    for server in TestServer::all() {
        let files = [("a.txt", "a"), ("b.txt", "b"), ("c.txt", "c")];
        let spec = server.spec_with_inputs(&files, json!({}));
        let input = spec["input"]["atom"]["URI"].as_str().unwrap().to_owned();
        let input = std::path::PathBuf::from(input.strip_prefix("file://").unwrap());

        let (status, first) = server
            .call(Method::POST, "/v1/jobs", Some(ADMIN), Some(spec.clone()))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{first}");
        assert_eq!(first["incremental"], false);
        let first_id = first["id"].as_i64().unwrap();
        run_all(&server, first_id);

        // Nothing changed: done at once, every datum skipped, no workers.
        let (status, second) = server
            .call(
                Method::POST,
                "/v1/jobs?incremental=true",
                Some(ADMIN),
                Some(spec.clone()),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{second}");
        assert_eq!(second["status"], "done", "{second}");
        assert_eq!(second["incremental"], true);
        assert_eq!(second["previous_job_id"], first_id);
        assert_eq!(second["vanished_count"], 0);
        let second_id = second["id"].as_i64().unwrap();
        let started = server.executor.started.lock().unwrap().clone();
        assert!(
            started.iter().all(|(job, _)| *job != second_id),
            "{started:?}"
        );

        let (_, described) = get(&server, &format!("/v1/jobs/{second_id}/describe")).await;
        assert_eq!(described["counts"]["skipped"], 3, "{described}");
        assert_eq!(described["counts"]["done"], 0, "{described}");
        let (_, skipped) = get(
            &server,
            &format!("/v1/jobs/{second_id}/datums?status=skipped"),
        )
        .await;
        let skipped = skipped["datums"].as_array().unwrap().clone();
        assert_eq!(skipped.len(), 3);
        for datum in &skipped {
            assert_eq!(datum["status"], "skipped");
            assert_eq!(datum["skipped_from_job"], first_id);
            let (_, shown) = get(&server, &format!("/v1/datums/{}", datum["id"])).await;
            let (_, ran) = get(&server, &format!("/v1/datums/{}", datum["skipped_from"])).await;
            assert_eq!(shown["fingerprint"].as_str().unwrap().len(), 64);
            assert_eq!(shown["fingerprint"], ran["fingerprint"]);
            assert_eq!(shown["input_files"], ran["input_files"]);
        }
        let (_, done) = get(&server, &format!("/v1/jobs/{second_id}/datums?status=done")).await;
        assert!(done["datums"].as_array().unwrap().is_empty(), "{done}");

        // Two files gone, one new: one datum to run, two vanished, paged.
        std::fs::remove_file(input.join("a.txt")).unwrap();
        std::fs::remove_file(input.join("b.txt")).unwrap();
        std::fs::write(input.join("d.txt"), "d").unwrap();
        let mut incremental = spec.clone();
        incremental["incremental"] = json!(true);
        let (status, third) = server
            .call(Method::POST, "/v1/jobs", Some(ADMIN), Some(incremental))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{third}");
        assert_eq!(third["status"], "running", "{third}");
        assert_eq!(third["previous_job_id"], second_id);
        assert_eq!(third["vanished_count"], 2, "{third}");
        let third_id = third["id"].as_i64().unwrap();
        let (_, page) = get(&server, &format!("/v1/jobs/{third_id}/vanished?limit=1")).await;
        assert_eq!(page["vanished"].as_array().unwrap().len(), 1, "{page}");
        let vanished = &page["vanished"][0];
        assert!(
            vanished["inputs"][0].as_str().unwrap().ends_with("/a.txt"),
            "{page}"
        );
        assert_eq!(vanished["ran_in_job_id"], first_id, "{page}");
        let after = page["next_after"].as_i64().unwrap();
        let (_, rest) = get(
            &server,
            &format!("/v1/jobs/{third_id}/vanished?after={after}&limit=1"),
        )
        .await;
        assert!(
            rest["vanished"][0]["inputs"][0]
                .as_str()
                .unwrap()
                .ends_with("/b.txt")
        );
        let (_, described) = get(&server, &format!("/v1/jobs/{third_id}/describe")).await;
        assert_eq!(
            described["vanished"].as_array().unwrap().len(),
            2,
            "{described}"
        );
        assert_eq!(described["counts"]["ready"], 1, "{described}");

        let (status, body) = get(&server, &format!("/v1/jobs/{third_id}/vanished?limit=0")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(body.to_string().contains("limit"), "{body}");
        let (status, body) = server
            .call(
                Method::POST,
                "/v1/jobs?incremental=maybe",
                Some(ADMIN),
                Some(spec),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(body.to_string().contains("incremental"), "{body}");
    }
}

/// An unchanged rerun planned in several batches (3,000 datums of one file
/// each, batches of 2,500) is one run of skipped datums: the datum open
/// at a batch's end waits for the next batch instead of being inserted,
/// matched there, deleted and made a run of its own (which split the runs
/// at every batch). Its skipped datums have ids of their own range (2^52
/// up), which `GET /v1/datums/{id}` (what the dashboard's datum page
/// reads) answers exactly.
#[tokio::test]
async fn an_unchanged_rerun_over_several_batches_is_one_run() {
    for server in TestServer::all() {
        let names: Vec<String> = (0..3_000).map(|i| format!("f{i:04}")).collect();
        let files: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "x")).collect();
        let spec = server.spec_with_inputs(&files, json!({}));
        let (status, first) = server
            .call(Method::POST, "/v1/jobs", Some(ADMIN), Some(spec.clone()))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{first}");
        let first_id = first["id"].as_i64().unwrap();
        finish_all(&server, first_id);

        let (status, second) = server
            .call(
                Method::POST,
                "/v1/jobs?incremental=true",
                Some(ADMIN),
                Some(spec),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{second}");
        assert_eq!(second["status"], "done", "{second}");
        let second_id = second["id"].as_i64().unwrap();
        let (_, described) = get(&server, &format!("/v1/jobs/{second_id}/describe")).await;
        assert_eq!(described["counts"]["skipped"], 3_000, "{described}");
        let conn = &mut server.db.pool.get().unwrap();
        assert_eq!(SkippedRun::count(conn, second_id).unwrap(), 1);

        let (_, page) = get(
            &server,
            &format!("/v1/jobs/{second_id}/datums?status=skipped&limit=2"),
        )
        .await;
        let id = page["datums"][1]["id"].as_i64().unwrap();
        assert_eq!(id, FIRST_SKIPPED_ID + 1, "{page}");
        let (status, shown) = get(&server, &format!("/v1/datums/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{shown}");
        assert_eq!(shown["datum"]["id"], id, "{shown}");
        assert_eq!(shown["datum"]["status"], "skipped", "{shown}");
        assert_eq!(shown["datum"]["job_id"], second_id, "{shown}");
    }
}

/// Marks every datum of job `id` done in one statement (3,000 reservations
/// one by one would only slow the test down) and the job with them.
fn finish_all(server: &TestServer, id: i64) {
    use diesel::connection::SimpleConnection;
    let sql = format!(
        "UPDATE datums SET status = 'done', ready_order = NULL, attempt = 1 WHERE job_id = {id};
         UPDATE jobs SET status = 'done' WHERE id = {id};"
    );
    match &mut server.db.pool.get().unwrap() {
        DbConn::Sqlite(c) => c.batch_execute(&sql).unwrap(),
        DbConn::Postgres(c) => c.batch_execute(&sql).unwrap(),
    }
}
