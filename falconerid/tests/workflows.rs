//! Workflows and schedules through the HTTP app (`oneshot`) on SQLite and
//! PostgreSQL: admin-only routes, refusals naming JSON paths, the chain
//! starting a step once its upstream is done, and two servers on one
//! database racing for the same step or the same schedule tick (one wins).

#![allow(clippy::unwrap_used)]

mod common;

use axum::http::{Method, StatusCode};
use common::{ADMIN, TestServer, write_files};
use falconeri_common::{
    models::{Job, db_now},
    status::JobStatus,
};
use falconerid::{AppState, chain, scheduler};
use serde_json::{Value, json};

/// A second server (replica) on the same database as `server`.
fn replica(server: &TestServer) -> AppState {
    AppState::new(
        server.state.config().clone(),
        server.db.pool.clone(),
        server.executor.clone(),
    )
}

fn job_count(server: &TestServer) -> usize {
    let mut conn = server.db.pool.get().unwrap();
    Job::list(&mut conn, 100).unwrap().len()
}

/// A two-step chain: `second` reads the egress of `first`.
fn chain_body(server: &TestServer) -> (Value, std::path::PathBuf) {
    let first = server.spec_with_inputs(
        &[("a.txt", "a")],
        json!({ "pipeline": { "name": "first" } }),
    );
    let egress = server.dir.path().join("first-out");
    let mut first = first;
    first["egress"]["URI"] = format!("file://{}/", egress.display()).into();
    let mut second =
        server.spec_with_inputs(&[("x", "x")], json!({ "pipeline": { "name": "second" } }));
    second["input"]["atom"]["URI"] = format!("file://{}/", egress.display()).into();
    (
        json!({
            "workflow": { "name": "chain" },
            "steps": [
                { "name": "second", "spec": second },
                { "name": "first", "spec": first },
            ]
        }),
        egress,
    )
}

async fn run_chain_tasks(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test]
async fn workflow_routes_are_admin_only_and_refusals_name_paths() {
    for server in TestServer::all() {
        let (body, _) = chain_body(&server);
        let (status, _) = server
            .call(Method::POST, "/v1/workflows", None, Some(body.clone()))
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _) = server.call(Method::GET, "/v1/workflows", None, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);

        let mut cyclic = body.clone();
        cyclic["steps"][1]["after"] = json!(["second"]);
        let (status, answer) = server
            .call(Method::POST, "/v1/workflows", Some(ADMIN), Some(cyclic))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        let problems = answer["error"]["problems"].as_array().unwrap();
        assert_eq!(problems[0]["path"], "steps", "{answer}");
        assert!(
            problems[0]["message"]
                .as_str()
                .unwrap()
                .contains("second → first → second"),
            "{answer}"
        );
        let (status, answer) = server
            .call(
                Method::POST,
                "/v1/workflows",
                Some(ADMIN),
                Some(json!({ "workflow": { "name": "w" }, "steps": [{ "name": "a", "spec": "a.json" }] })),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(answer["error"]["problems"][0]["path"], "steps[0].spec");
        let (status, _) = server
            .call(Method::GET, "/v1/workflows/by-name/nope", Some(ADMIN), None)
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}

#[tokio::test]
async fn a_step_starts_once_its_upstream_is_done_and_once_among_replicas() {
    for server in TestServer::all() {
        let (body, egress) = chain_body(&server);
        let (status, run) = server
            .call(Method::POST, "/v1/workflows", Some(ADMIN), Some(body))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{run}");
        assert_eq!(run["status"], "running");
        assert_eq!(run["steps"][0]["name"], "first");
        assert_eq!(
            run["steps"][1]["upstream"],
            json!([{ "step": "first", "kind": "egress" }])
        );

        // Two replicas apply the chain at once: one job for `first`.
        let other = replica(&server);
        let (a, b) = tokio::join!(chain::advance(&server.state), chain::advance(&other));
        run_chain_tasks(a.unwrap()).await;
        run_chain_tasks(b.unwrap()).await;
        assert_eq!(job_count(&server), 1, "{}", server.db.backend().name());

        let id = run["id"].as_i64().unwrap();
        let (_, run) = server
            .call(
                Method::GET,
                &format!("/v1/workflows/{id}"),
                Some(ADMIN),
                None,
            )
            .await;
        assert_eq!(run["steps"][0]["status"], "running", "{run}");
        assert_eq!(run["steps"][1]["status"], "waiting", "{run}");

        // `first` ends done (its output in place): `second` starts, once.
        write_files(&egress, &[("a.txt", "A")]);
        let first_job = run["steps"][0]["job"]["id"].as_i64().unwrap();
        {
            let mut conn = server.db.pool.get().unwrap();
            let now = db_now(&mut conn).unwrap();
            Job::stop(&mut conn, first_job, JobStatus::Done, None, now).unwrap();
        }
        let (a, b) = tokio::join!(chain::advance(&server.state), chain::advance(&other));
        run_chain_tasks(a.unwrap()).await;
        run_chain_tasks(b.unwrap()).await;
        assert_eq!(job_count(&server), 2);
        let (_, progress) = server
            .call(
                Method::GET,
                &format!("/v1/workflows/{id}/progress?wait_ms=0"),
                Some(ADMIN),
                None,
            )
            .await;
        assert_eq!(
            progress["workflow"]["steps"][1]["status"], "running",
            "{progress}"
        );
        let (_, list) = server
            .call(Method::GET, "/v1/workflows", Some(ADMIN), None)
            .await;
        assert_eq!(list["workflows"].as_array().unwrap().len(), 1);
    }
}

#[tokio::test]
async fn a_schedule_tick_runs_once_among_replicas_and_missed_ticks_run_once() {
    for server in TestServer::all() {
        let spec = server.spec_with_inputs(&[("a.txt", "a")], json!({}));
        let request =
            json!({ "name": "hourly", "cron": "0 * * * *", "job": spec, "incremental": true });
        let (status, _) = server
            .call(Method::POST, "/v1/schedules", None, Some(request.clone()))
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, answer) = server
            .call(
                Method::POST,
                "/v1/schedules",
                Some(ADMIN),
                Some(json!({ "name": "bad", "cron": "99 * * * *", "timezone": "Nowhere/Else", "job": spec })),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let paths: Vec<&str> = answer["error"]["problems"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["path"].as_str().unwrap())
            .collect();
        assert_eq!(paths, ["cron", "timezone"], "{answer}");

        let (status, schedule) = server
            .call(
                Method::POST,
                "/v1/schedules",
                Some(ADMIN),
                Some(request.clone()),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{schedule}");
        assert_eq!(schedule["timezone"], "UTC");
        let (status, _) = server
            .call(Method::POST, "/v1/schedules", Some(ADMIN), Some(request))
            .await;
        assert_eq!(status, StatusCode::CONFLICT);
        let due = schedule["next_run_at"].as_i64().unwrap();

        // Before the tick: nothing.
        let (tasks, next) = scheduler::tick_at(&server.state, due - 1).await.unwrap();
        assert!(tasks.is_empty());
        assert_eq!(next, Some(due));

        // Two replicas wake at the tick together, five hours late: one run.
        let other = replica(&server);
        let late = due + 5 * 3_600_000 + 60_000;
        let (a, b) = tokio::join!(
            scheduler::tick_at(&server.state, late),
            scheduler::tick_at(&other, late)
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.0.len() + b.0.len(), 1, "{}", server.db.backend().name());
        for task in a.0.into_iter().chain(b.0) {
            task.await.unwrap();
        }
        assert_eq!(job_count(&server), 1);
        // `--incremental` reached the job the tick started.
        let mut conn = server.db.pool.get().unwrap();
        assert!(Job::list(&mut conn, 1).unwrap()[0].incremental);
        drop(conn);
        // The missed ticks are skipped: once the run is recorded, the next
        // tick is the one after `late`.
        let (tasks, next) = scheduler::tick_at(&other, late).await.unwrap();
        assert!(tasks.is_empty());
        assert_eq!(next, Some(due + 6 * 3_600_000));
        let (_, list) = server
            .call(Method::GET, "/v1/schedules", Some(ADMIN), None)
            .await;
        let listed = &list["schedules"][0];
        assert!(
            listed["last_run"]
                .as_str()
                .unwrap()
                .starts_with("http-test-"),
            "{list}"
        );
        assert_eq!(listed["last_error"], Value::Null);

        // Paused: no tick runs; resumed: the next tick is in the future.
        let (status, paused) = server
            .call(
                Method::POST,
                "/v1/schedules/hourly/pause",
                Some(ADMIN),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(paused["next_run_at"], Value::Null);
        let (tasks, _) = scheduler::tick_at(&server.state, late + 10 * 3_600_000)
            .await
            .unwrap();
        assert!(tasks.is_empty());
        let (_, resumed) = server
            .call(
                Method::POST,
                "/v1/schedules/hourly/resume",
                Some(ADMIN),
                None,
            )
            .await;
        assert!(resumed["next_run_at"].as_i64().is_some(), "{resumed}");
        let (status, _) = server
            .call(Method::DELETE, "/v1/schedules/hourly", Some(ADMIN), None)
            .await;
        assert_eq!(status, StatusCode::OK);
        let (status, _) = server
            .call(Method::DELETE, "/v1/schedules/hourly", Some(ADMIN), None)
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}

/// Takes schedule `name`'s due tick as a replica would, then "dies": the
/// tick is pending under a lease that runs out at `due + 1_000`, and its
/// run is not recorded.
fn take_tick_and_die(server: &TestServer, name: &str) -> (i64, i64) {
    use falconeri_common::models::Schedule;
    let mut conn = server.db.pool.get().unwrap();
    let schedule = Schedule::find_by_name(&mut conn, name).unwrap();
    let due = schedule.next_run_at.unwrap();
    assert!(
        Schedule::take_tick(
            &mut conn,
            schedule.id,
            due,
            Some(due + 3_600_000),
            due,
            "a-replica-that-died",
            due + 1_000,
        )
        .unwrap()
    );
    (schedule.id, due)
}

#[tokio::test]
async fn a_tick_whose_replica_died_before_recording_its_run_runs_exactly_once() {
    use falconeri_common::models::{NewWorkflowParams, Schedule, Workflow};
    for server in TestServer::all() {
        let backend = server.db.backend().name();
        let spec = server.spec_with_inputs(&[("a.txt", "a")], json!({}));
        let (workflow, _) = chain_body(&server);
        for request in [
            json!({ "name": "jobs", "cron": "0 * * * *", "job": spec }),
            json!({ "name": "flows", "cron": "0 * * * *", "workflow": workflow }),
        ] {
            let (status, answer) = server
                .call(Method::POST, "/v1/schedules", Some(ADMIN), Some(request))
                .await;
            assert_eq!(status, StatusCode::CREATED, "{answer}");
        }
        // One replica died after taking the job schedule's tick, before
        // making its job; another died after making the workflow
        // schedule's run, before recording it.
        let (_, due) = take_tick_and_die(&server, "jobs");
        let (flows_id, flows_due) = take_tick_and_die(&server, "flows");
        let made_before = {
            let mut conn = server.db.pool.get().unwrap();
            let spec =
                falconeri_common::workflow::WorkflowSpec::from_json(&workflow.to_string()).unwrap();
            Workflow::create(
                &mut conn,
                NewWorkflowParams {
                    spec: &spec,
                    name: "made-before-the-crash",
                    schedule_id: Some(flows_id),
                    incremental: false,
                    run_key: Some(&Schedule::run_key(flows_id, flows_due)),
                },
                flows_due,
            )
            .unwrap()
        };

        // While the lease holds, nobody re-drives; the scheduler's next
        // look is when it runs out.
        let (tasks, next) = scheduler::tick_at(&server.state, due + 500).await.unwrap();
        assert!(tasks.is_empty(), "{backend}");
        assert_eq!(next, Some(due + 1_000), "{backend}");

        // Two replicas find the leases run out at once: each tick's run is
        // made (or found) by exactly one of them.
        let other = replica(&server);
        let after = due + 2_000;
        let (a, b) = tokio::join!(
            scheduler::tick_at(&server.state, after),
            scheduler::tick_at(&other, after)
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.0.len() + b.0.len(), 2, "{backend}");
        run_chain_tasks(a.0.into_iter().chain(b.0).collect()).await;

        let mut conn = server.db.pool.get().unwrap();
        let jobs = Job::list(&mut conn, 100).unwrap();
        assert_eq!(jobs.len(), 1, "{backend}");
        let jobs_id = Schedule::find_by_name(&mut conn, "jobs").unwrap().id;
        let keyed = Job::find_by_run_key(&mut conn, &Schedule::run_key(jobs_id, due))
            .unwrap()
            .expect("the tick's job");
        assert_eq!(Workflow::list(&mut conn, 10).unwrap().len(), 1, "{backend}");
        let jobs_schedule = Schedule::find_by_name(&mut conn, "jobs").unwrap();
        assert_eq!(jobs_schedule.pending_tick, None);
        assert_eq!(jobs_schedule.last_run.as_deref(), Some(keyed.name.as_str()));
        assert_eq!(jobs_schedule.last_error, None);
        let flows_schedule = Schedule::find_by_name(&mut conn, "flows").unwrap();
        assert_eq!(flows_schedule.pending_tick, None);
        assert_eq!(
            flows_schedule.last_run.as_deref(),
            Some(made_before.name.as_str())
        );
        drop(conn);

        // Nothing is owed any more: a later pass before the next tick
        // makes nothing.
        let (tasks, next) = scheduler::tick_at(&server.state, after + 1).await.unwrap();
        assert!(tasks.is_empty(), "{backend}");
        assert_eq!(next, Some(due + 3_600_000), "{backend}");
    }
}

/// `POST /v1/workflows/{id}/retry` from two callers at once: one reopens
/// the failed steps, the other is told there is nothing left to retry.
async fn retry_twice(server: &TestServer, id: i64) -> Value {
    let path = format!("/v1/workflows/{id}/retry");
    let (a, b) = tokio::join!(
        server.call(Method::POST, &path, Some(ADMIN), None),
        server.call(Method::POST, &path, Some(ADMIN), None)
    );
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::OK, StatusCode::CONFLICT],
        "{} {}",
        a.1,
        b.1
    );
    if a.0 == StatusCode::OK { a.1 } else { b.1 }
}

/// Two replicas apply the chain at once, and their tasks run to the end.
async fn advance_on_two(server: &TestServer, other: &AppState) {
    let (a, b) = tokio::join!(chain::advance(&server.state), chain::advance(other));
    run_chain_tasks(a.unwrap()).await;
    run_chain_tasks(b.unwrap()).await;
}

#[tokio::test]
async fn workflow_retry_restarts_failed_steps_once_among_replicas() {
    for server in TestServer::all() {
        let backend = server.db.backend().name();
        let other = replica(&server);
        let (body, egress) = chain_body(&server);
        let (_, run) = server
            .call(Method::POST, "/v1/workflows", Some(ADMIN), Some(body))
            .await;
        let id = run["id"].as_i64().unwrap();
        let show = format!("/v1/workflows/{id}");
        let retry = format!("/v1/workflows/{id}/retry");
        advance_on_two(&server, &other).await;

        // Nothing failed yet: nothing to retry.
        let (status, answer) = server.call(Method::POST, &retry, Some(ADMIN), None).await;
        assert_eq!(status, StatusCode::CONFLICT, "{answer}");

        // `first`'s job is canceled: `second` is canceled below it.
        let (_, run) = server.call(Method::GET, &show, Some(ADMIN), None).await;
        let first_job = run["steps"][0]["job"]["id"].as_i64().unwrap();
        let (status, _) = server
            .call(
                Method::POST,
                &format!("/v1/jobs/{first_job}/cancel"),
                Some(ADMIN),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        advance_on_two(&server, &other).await;
        let (_, run) = server.call(Method::GET, &show, Some(ADMIN), None).await;
        assert_eq!(run["steps"][0]["status"], "canceled", "{run}");
        assert_eq!(run["steps"][1]["status"], "canceled", "{run}");

        // Retried: `first` gets one retry of its job (of the canceled
        // datums), made by one of the two replicas.
        let run = retry_twice(&server, id).await;
        assert_eq!(run["steps"][0]["status"], "waiting", "{run}");
        advance_on_two(&server, &other).await;
        assert_eq!(job_count(&server), 2, "{backend}");
        let (_, run) = server.call(Method::GET, &show, Some(ADMIN), None).await;
        assert_eq!(run["steps"][0]["job"]["retry_of"], first_job, "{run}");
        assert_eq!(run["steps"][1]["status"], "waiting", "{run}");

        // The retry ends done but wrote nothing: `second`'s job cannot be
        // created (its input is empty), so the step fails without a job.
        let retried = run["steps"][0]["job"]["id"].as_i64().unwrap();
        {
            let mut conn = server.db.pool.get().unwrap();
            let now = db_now(&mut conn).unwrap();
            Job::stop(&mut conn, retried, JobStatus::Done, None, now).unwrap();
        }
        advance_on_two(&server, &other).await;
        let (_, run) = server.call(Method::GET, &show, Some(ADMIN), None).await;
        assert_eq!(run["steps"][1]["state"], "failed", "{run}");
        assert_eq!(run["steps"][1]["job"], Value::Null, "{run}");
        assert_eq!(job_count(&server), 2, "{backend}");

        // Its input is there now: retried, it starts exactly one job.
        write_files(&egress, &[("a.txt", "A")]);
        let run = retry_twice(&server, id).await;
        assert_eq!(run["steps"][1]["status"], "waiting", "{run}");
        advance_on_two(&server, &other).await;
        assert_eq!(job_count(&server), 3, "{backend}");
        let (_, run) = server.call(Method::GET, &show, Some(ADMIN), None).await;
        assert_eq!(run["steps"][1]["status"], "running", "{run}");
        assert_eq!(run["steps"][1]["reason"], Value::Null, "{run}");
    }
}
