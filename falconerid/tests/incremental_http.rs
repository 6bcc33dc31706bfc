//! Incremental runs over HTTP, on SQLite and PostgreSQL: `POST /v1/jobs`
//! with `?incremental=true` skips what an earlier job of the pipeline
//! computed, a job with nothing to run is `done` at once and starts no
//! workers, skipped datums show their pointer, and the vanished datums of
//! the previous run are paged by `GET /v1/jobs/{id}/vanished`.

#![allow(clippy::unwrap_used)]

mod common;

use axum::http::{Method, StatusCode};
use common::{ADMIN, TestServer};
use falconeri_common::models::{Datum, db_now};
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
