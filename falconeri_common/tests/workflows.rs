//! Workflow steps and schedules on SQLite and on a real PostgreSQL, each
//! test on a fresh database: the guarded transitions of a step, adoption of
//! a retried job, and races proving a step is started once and a schedule
//! tick is taken once, however many replicas try at the same moment.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Barrier};

use falconeri_common::{
    db::{
        DbPool,
        testing::{self, TestDb},
    },
    models::{Job, NewJobParams, NewWorkflowParams, Workflow, WorkflowStep, db_now},
    pipeline::PipelineSpec,
    status::JobStatus,
    workflow::{StepState, WorkflowSpec},
};

fn spec_json(name: &str, input: &str, egress: &str) -> serde_json::Value {
    let mut spec = serde_json::to_value(testing::spec(name, 1, 1)).unwrap();
    spec["input"]["atom"]["URI"] = input.into();
    spec["egress"]["URI"] = egress.into();
    spec
}

fn two_steps() -> WorkflowSpec {
    WorkflowSpec::from_json(
        &serde_json::json!({
            "workflow": {"name": "chain"},
            "steps": [
                {"name": "second", "spec": spec_json("second", "file:///first/", "file:///second/")},
                {"name": "first", "spec": spec_json("first", "file:///in/", "file:///first/")},
            ]
        })
        .to_string(),
    )
    .unwrap()
}

fn create_run(pool: &DbPool) -> Workflow {
    let mut conn = pool.get().unwrap();
    let now = db_now(&mut conn).unwrap();
    Workflow::create(
        &mut conn,
        NewWorkflowParams {
            spec: &two_steps(),
            name: "chain-1",
            schedule_id: None,
            incremental: false,
            run_key: None,
        },
        now,
    )
    .unwrap()
}

fn job(pool: &DbPool, name: &str, retry_of: Option<i64>) -> Job {
    let mut conn = pool.get().unwrap();
    let now = db_now(&mut conn).unwrap();
    let spec: PipelineSpec = testing::spec("step", 1, 1);
    let token = format!("token-{name}");
    Job::create(
        &mut conn,
        NewJobParams {
            spec: &spec,
            retry_of,
            worker_token: &token,
            name,
        },
        &testing::planned(1, 1),
        now,
    )
    .unwrap()
}

#[test]
fn steps_are_stored_in_the_order_they_run_with_their_edges() {
    for db in TestDb::all() {
        let run = create_run(&db.pool);
        let mut conn = db.pool.get().unwrap();
        let steps = Workflow::steps(&mut conn, run.id).unwrap();
        let names: Vec<&str> = steps.iter().map(|s| s.step.name.as_str()).collect();
        assert_eq!(names, ["first", "second"], "{}", db.backend().name());
        assert_eq!(steps[1].step.upstream().unwrap()[0].step, 0);
        assert!(
            steps
                .iter()
                .all(|s| s.step.state().unwrap() == StepState::Waiting)
        );
        assert_eq!(Workflow::list_active(&mut conn).unwrap(), vec![run.id]);
    }
}

#[test]
fn exactly_one_of_many_racing_replicas_claims_a_step() {
    for db in TestDb::all() {
        let run = create_run(&db.pool);
        let step_id = {
            let mut conn = db.pool.get().unwrap();
            Workflow::steps(&mut conn, run.id).unwrap()[0].step.id
        };
        let racers = 8;
        let barrier = Arc::new(Barrier::new(racers));
        let handles: Vec<_> = (0..racers)
            .map(|i| {
                let (pool, barrier) = (db.pool.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let mut conn = pool.get().unwrap();
                    let now = db_now(&mut conn).unwrap();
                    barrier.wait();
                    WorkflowStep::claim(&mut conn, step_id, &format!("t{i}"), now, now + 60_000)
                        .unwrap()
                })
            })
            .collect();
        let winners = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|won| *won)
            .count();
        assert_eq!(winners, 1, "{}", db.backend().name());
    }
}

#[test]
fn a_lost_claim_records_nothing_and_a_stale_one_is_released() {
    for db in TestDb::all() {
        let run = create_run(&db.pool);
        let mut conn = db.pool.get().unwrap();
        let step_id = Workflow::steps(&mut conn, run.id).unwrap()[0].step.id;
        let now = db_now(&mut conn).unwrap();
        assert!(WorkflowStep::claim(&mut conn, step_id, "mine", now, now + 1_000).unwrap());
        // Not yet stale.
        assert_eq!(
            WorkflowStep::release_stale_claims(&mut conn, now).unwrap(),
            0
        );
        // Past the claim: released, and the old token records nothing.
        assert_eq!(
            WorkflowStep::release_stale_claims(&mut conn, now + 2_000).unwrap(),
            1
        );
        let first = job(&db.pool, "first-1", None);
        assert!(!WorkflowStep::mark_started(&mut conn, step_id, "mine", first.id, now).unwrap());
        assert!(WorkflowStep::claim(&mut conn, step_id, "theirs", now, now + 1_000).unwrap());
        assert!(!WorkflowStep::renew_claim(&mut conn, step_id, "mine", now + 5_000).unwrap());
        assert!(WorkflowStep::mark_started(&mut conn, step_id, "theirs", first.id, now).unwrap());
        let steps = Workflow::steps(&mut conn, run.id).unwrap();
        assert_eq!(steps[0].step.state().unwrap(), StepState::Started);
        assert_eq!(steps[0].job.as_ref().unwrap().id, first.id);
    }
}

#[test]
fn a_retried_job_is_adopted_by_its_step_and_canceled_steps_resume() {
    for db in TestDb::all() {
        let run = create_run(&db.pool);
        let mut conn = db.pool.get().unwrap();
        let steps = Workflow::steps(&mut conn, run.id).unwrap();
        let (first_id, second_id) = (steps[0].step.id, steps[1].step.id);
        let now = db_now(&mut conn).unwrap();
        let failed = job(&db.pool, "first-1", None);
        Job::stop(&mut conn, failed.id, JobStatus::Error, Some("boom"), now).unwrap();
        assert!(WorkflowStep::claim(&mut conn, first_id, "t", now, now + 1_000).unwrap());
        assert!(WorkflowStep::mark_started(&mut conn, first_id, "t", failed.id, now).unwrap());
        assert!(WorkflowStep::cancel(&mut conn, second_id, "upstream failed", now).unwrap());
        // Canceled twice: the second is a no-op.
        assert!(!WorkflowStep::cancel(&mut conn, second_id, "again", now).unwrap());
        // Nothing to do until someone retries.
        assert!(Workflow::list_active(&mut conn).unwrap().is_empty());
        let retry = job(&db.pool, "first-2", Some(failed.id));
        assert_eq!(Workflow::list_active(&mut conn).unwrap(), vec![run.id]);
        assert_eq!(
            WorkflowStep::adopt_retries(&mut conn, run.id, now).unwrap(),
            1
        );
        assert_eq!(
            WorkflowStep::adopt_retries(&mut conn, run.id, now).unwrap(),
            0
        );
        let steps = Workflow::steps(&mut conn, run.id).unwrap();
        assert_eq!(steps[0].job.as_ref().unwrap().id, retry.id);
        assert!(WorkflowStep::resume(&mut conn, second_id, now).unwrap());
        assert!(!WorkflowStep::resume(&mut conn, second_id, now).unwrap());
        assert_eq!(
            Workflow::steps(&mut conn, run.id).unwrap()[1].step.reason,
            None
        );
    }
}

#[test]
fn exactly_one_of_many_racing_replicas_takes_a_schedule_tick() {
    use falconeri_common::models::{NewSchedule, Schedule};
    for db in TestDb::all() {
        let due = {
            let mut conn = db.pool.get().unwrap();
            let now = db_now(&mut conn).unwrap();
            let schedule = Schedule::create(
                &mut conn,
                &NewSchedule {
                    name: "tick",
                    cron: "* * * * *",
                    timezone: "UTC",
                    target_kind: "job",
                    target: "{}",
                    incremental: false,
                    paused: false,
                    next_run_at: Some(now),
                    created_at: now,
                },
            )
            .unwrap();
            (schedule.id, now)
        };
        let racers = 8;
        let barrier = Arc::new(Barrier::new(racers));
        let handles: Vec<_> = (0..racers)
            .map(|_| {
                let (pool, barrier) = (db.pool.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let mut conn = pool.get().unwrap();
                    barrier.wait();
                    let token = format!("{:?}", std::thread::current().id());
                    Schedule::take_tick(
                        &mut conn,
                        due.0,
                        due.1,
                        Some(due.1 + 60_000),
                        due.1,
                        &token,
                        due.1 + 30_000,
                    )
                    .unwrap()
                })
            })
            .collect();
        let winners = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|won| *won)
            .count();
        assert_eq!(winners, 1, "{}", db.backend().name());
        let mut conn = db.pool.get().unwrap();
        // The tick is pending: the scheduler looks again when its lease
        // runs out, and takes no further tick meanwhile.
        assert_eq!(Schedule::next_due(&mut conn).unwrap(), Some(due.1 + 30_000));
        assert!(
            Schedule::list_due(&mut conn, due.1 + 120_000)
                .unwrap()
                .is_empty()
        );
        assert!(
            Schedule::list_abandoned(&mut conn, due.1 + 30_000)
                .unwrap()
                .is_empty()
        );
        drop(conn);

        // Its taker died: once the lease ran out, one of many replicas
        // takes the pending tick over.
        let later = due.1 + 30_001;
        {
            let mut conn = db.pool.get().unwrap();
            assert_eq!(Schedule::list_abandoned(&mut conn, later).unwrap().len(), 1);
        }
        let barrier = Arc::new(Barrier::new(racers));
        let handles: Vec<_> = (0..racers)
            .map(|i| {
                let (pool, barrier) = (db.pool.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let mut conn = pool.get().unwrap();
                    barrier.wait();
                    Schedule::take_over_pending(
                        &mut conn,
                        due.0,
                        due.1,
                        later,
                        &format!("replica-{i}"),
                        later + 30_000,
                    )
                    .unwrap()
                })
            })
            .collect();
        let winners = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|won| *won)
            .count();
        assert_eq!(winners, 1, "{}", db.backend().name());

        // Only the owner records an error; anyone records the run found by
        // its key, once; then the next tick is due.
        let mut conn = db.pool.get().unwrap();
        assert!(!Schedule::record_error(&mut conn, due.0, due.1, "stranger", "no").unwrap());
        assert!(Schedule::record_run(&mut conn, due.0, due.1, "job-1").unwrap());
        assert!(!Schedule::record_run(&mut conn, due.0, due.1, "job-2").unwrap());
        let schedule = Schedule::find_by_name(&mut conn, "tick").unwrap();
        assert_eq!(schedule.last_run.as_deref(), Some("job-1"));
        assert_eq!(schedule.pending_tick, None);
        assert_eq!(Schedule::next_due(&mut conn).unwrap(), Some(due.1 + 60_000));
    }
}

#[test]
fn a_run_key_is_taken_once_by_jobs_and_by_workflow_runs() {
    for db in TestDb::all() {
        let mut conn = db.pool.get().unwrap();
        let now = db_now(&mut conn).unwrap();
        let spec: PipelineSpec = testing::spec("keyed", 1, 1);
        let key = "schedule:1:1000";
        let keyed = |conn: &mut falconeri_common::db::DbConn, name: &str| {
            Job::begin_planning_keyed(
                conn,
                NewJobParams {
                    spec: &spec,
                    retry_of: None,
                    worker_token: name,
                    name,
                },
                Some(key),
                now,
                now + 60_000,
            )
        };
        let first = keyed(&mut conn, "keyed-1").unwrap();
        let err = keyed(&mut conn, "keyed-2").unwrap_err();
        assert!(
            matches!(err, falconeri_common::models::ModelError::Conflict(_)),
            "{err:?}"
        );
        assert_eq!(
            Job::find_by_run_key(&mut conn, key).unwrap().unwrap().id,
            first.id
        );
        assert!(
            Job::find_by_run_key(&mut conn, "schedule:1:2000")
                .unwrap()
                .is_none()
        );

        let workflow = two_steps();
        let params = |name: &'static str| NewWorkflowParams {
            spec: &workflow,
            name,
            schedule_id: None,
            incremental: false,
            run_key: Some(key),
        };
        let run = Workflow::create(&mut conn, params("run-1"), now).unwrap();
        let err = Workflow::create(&mut conn, params("run-2"), now).unwrap_err();
        assert!(
            matches!(err, falconeri_common::models::ModelError::Conflict(_)),
            "{err:?}"
        );
        assert_eq!(
            Workflow::find_by_run_key(&mut conn, key)
                .unwrap()
                .unwrap()
                .id,
            run.id
        );
        // The refused run left no steps behind.
        assert_eq!(Workflow::list(&mut conn, 10).unwrap().len(), 1);
    }
}
