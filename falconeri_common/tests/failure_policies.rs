//! Failure policies in the database models, on SQLite and on a real
//! PostgreSQL, each test on a fresh database: failing a datum without a
//! retry, `max_failed_datums` at a job's end and when it is crossed, and
//! `datum retry` while the job runs and after it ended.

#![allow(clippy::unwrap_used)]

use falconeri_common::{
    db::DbConn,
    db::testing::{self, TestDb, planned},
    failure_policy::MaxFailedDatums,
    models::{Clock, Datum, Job, ModelError, Report, db_now},
    status::{DatumStatus, JobStatus, Outcome},
};

const LEASE: i64 = 30_000;

fn create_job(
    conn: &mut DbConn,
    name: &str,
    datums: usize,
    tries: u32,
    limit: Option<MaxFailedDatums>,
) -> Job {
    let mut spec = testing::spec(name, 2, tries);
    spec.max_failed_datums = limit;
    testing::create_running_job(conn, &spec, &planned(datums, 1), name)
}

/// Reserves the next datum for worker `w` and reports it failed, with a
/// retry (`now: false`) or without (`now: true`).
fn reserve_and_fail(conn: &mut DbConn, job: &Job, exit_code: i32, fail_now: bool) -> Datum {
    let at = db_now(conn).unwrap();
    let datum = Datum::reserve_next(conn, job.id, "w", at, LEASE, None)
        .unwrap()
        .expect("a datum to reserve");
    let claim = datum.claim().unwrap();
    let report = Report {
        output: "out",
        exit_code: Some(exit_code),
        ..Report::default()
    };
    let message = format!("command exited with status {exit_code}");
    if fail_now {
        Datum::fail_now(conn, datum.id, &claim, &report, &message, Clock::DB).unwrap()
    } else {
        Datum::fail(conn, datum.id, &claim, &report, &message, Clock::DB).unwrap()
    }
}

fn reserve_and_finish(conn: &mut DbConn, job: &Job) -> Datum {
    let at = db_now(conn).unwrap();
    let datum = Datum::reserve_next(conn, job.id, "w", at, LEASE, None)
        .unwrap()
        .expect("a datum to reserve");
    Datum::mark_done(conn, datum.id, &datum.claim().unwrap(), "", &[], at, |_| {
        Ok(Vec::new())
    })
    .unwrap()
}

#[test]
fn failing_now_skips_the_tries_left() {
    for db in TestDb::all() {
        let mut conn = db.pool.get().unwrap();
        let job = create_job(&mut conn, "fail-now", 1, 3, None);
        let failed = reserve_and_fail(&mut conn, &job, 4, true);
        assert_eq!(failed.status(), DatumStatus::Error, "{db:?}");
        assert_eq!(failed.attempt, 1, "no retry");
        let attempts = Datum::attempts(&mut conn, failed.id).unwrap();
        assert_eq!(attempts.len(), 1);
        assert_eq!(attempts[0].outcome, Some(Outcome::Error));
        assert_eq!(attempts[0].exit_code, Some(4));
        // The default still retries.
        let job = create_job(&mut conn, "fail-later", 1, 3, None);
        let failed = reserve_and_fail(&mut conn, &job, 4, false);
        assert_eq!(failed.status(), DatumStatus::Ready, "{db:?}");
    }
}

#[test]
fn a_job_within_its_limit_ends_done_with_its_failures_counted() {
    for db in TestDb::all() {
        let mut conn = db.pool.get().unwrap();
        let job = create_job(&mut conn, "within", 4, 1, Some(MaxFailedDatums::Count(2)));
        assert_eq!(job.max_failed_datums, Some(2), "{db:?}");
        reserve_and_fail(&mut conn, &job, 1, false);
        reserve_and_fail(&mut conn, &job, 1, false);
        let now = db_now(&mut conn).unwrap();
        assert_eq!(
            Job::fail_if_over_limit(&mut conn, job.id, now).unwrap(),
            None
        );
        reserve_and_finish(&mut conn, &job);
        reserve_and_finish(&mut conn, &job);
        let ended = Job::finish_if_complete(&mut conn, job.id, now)
            .unwrap()
            .unwrap();
        assert_eq!(ended.status(), JobStatus::Done, "{db:?}");
        assert_eq!(ended.failed_datums, Some(2));
        assert_eq!(ended.error_message, None);
    }
}

#[test]
fn crossing_the_limit_fails_the_job_at_once() {
    for db in TestDb::all() {
        let mut conn = db.pool.get().unwrap();
        let job = create_job(&mut conn, "over", 5, 1, Some(MaxFailedDatums::Count(1)));
        reserve_and_fail(&mut conn, &job, 1, false);
        let now = db_now(&mut conn).unwrap();
        assert_eq!(
            Job::fail_if_over_limit(&mut conn, job.id, now).unwrap(),
            None
        );
        reserve_and_fail(&mut conn, &job, 1, false);
        let stopped = Job::fail_if_over_limit(&mut conn, job.id, now)
            .unwrap()
            .expect("over the limit");
        assert_eq!(stopped.status(), JobStatus::Error, "{db:?}");
        assert_eq!(stopped.failed_datums, Some(2));
        assert_eq!(
            stopped.error_message.as_deref(),
            Some("2 datums failed, more than max_failed_datums allows (1); the job was stopped")
        );
        let counts = Job::counts(&mut conn, job.id).unwrap();
        assert_eq!((counts.error, counts.canceled), (2, 3));
        // Once: a second look changes nothing.
        assert_eq!(
            Job::fail_if_over_limit(&mut conn, job.id, now).unwrap(),
            None
        );
    }
}

#[test]
fn a_percentage_becomes_a_count_once_planned() {
    for db in TestDb::all() {
        let mut conn = db.pool.get().unwrap();
        let job = create_job(
            &mut conn,
            "pct",
            150,
            1,
            Some(MaxFailedDatums::Percent(200)),
        );
        assert_eq!(job.max_failed_datums, Some(3), "{db:?}: 2% of 150");
        let job = create_job(&mut conn, "none", 3, 1, None);
        assert_eq!(job.max_failed_datums, None);
        // Without a limit, one failure makes the job end error, as before.
        reserve_and_fail(&mut conn, &job, 1, false);
        reserve_and_finish(&mut conn, &job);
        reserve_and_finish(&mut conn, &job);
        let now = db_now(&mut conn).unwrap();
        let ended = Job::finish_if_complete(&mut conn, job.id, now)
            .unwrap()
            .unwrap();
        assert_eq!(ended.status(), JobStatus::Error);
        assert_eq!(ended.failed_datums, Some(1));
    }
}

#[test]
fn a_datum_retried_while_its_job_runs_is_queued_with_fresh_tries() {
    for db in TestDb::all() {
        let mut conn = db.pool.get().unwrap();
        let job = create_job(&mut conn, "retry-running", 2, 2, None);
        let failed = reserve_and_fail(&mut conn, &job, 9, true);
        assert_eq!(failed.status(), DatumStatus::Error);
        let now = db_now(&mut conn).unwrap();
        let retried = Datum::retry(&mut conn, failed.id, now).unwrap();
        assert!(!retried.reopened, "{db:?}");
        assert_eq!(retried.job.status(), JobStatus::Running);
        assert_eq!(retried.datum.status(), DatumStatus::Ready);
        assert_eq!(retried.datum.owner, None);
        // A fresh budget of datum_tries: two more tries.
        assert_eq!(retried.datum.max_tries, 1 + 2);
        // Requeued datums come first.
        let again = reserve_and_fail(&mut conn, &job, 9, false);
        assert_eq!((again.id, again.attempt), (failed.id, 2));
        assert_eq!(again.status(), DatumStatus::Ready, "one try left");
        let last = reserve_and_fail(&mut conn, &job, 9, false);
        assert_eq!((last.id, last.attempt), (failed.id, 3));
        assert_eq!(last.status(), DatumStatus::Error);
        let attempts = Datum::attempts(&mut conn, failed.id).unwrap();
        assert_eq!(attempts.len(), 3, "the attempts stay on record");
    }
}

#[test]
fn a_datum_retried_after_its_job_ended_reopens_the_job() {
    for db in TestDb::all() {
        let mut conn = db.pool.get().unwrap();
        let job = create_job(&mut conn, "retry-ended", 2, 1, None);
        let failed = reserve_and_fail(&mut conn, &job, 1, false);
        reserve_and_finish(&mut conn, &job);
        let now = db_now(&mut conn).unwrap();
        let ended = Job::finish_if_complete(&mut conn, job.id, now)
            .unwrap()
            .unwrap();
        assert_eq!(ended.status(), JobStatus::Error, "{db:?}");

        let retried = Datum::retry(&mut conn, failed.id, now).unwrap();
        assert!(retried.reopened);
        assert_eq!(retried.job.status(), JobStatus::Running);
        assert_eq!(retried.job.finished_at, None);
        assert_eq!(retried.job.error_message, None);
        assert_eq!(retried.job.failed_datums, None);
        assert!(
            retried.job.deadline_at.is_some(),
            "job_timeout counts again"
        );

        let done = reserve_and_finish(&mut conn, &job);
        assert_eq!((done.id, done.attempt), (failed.id, 2));
        let ended = Job::finish_if_complete(&mut conn, job.id, now)
            .unwrap()
            .unwrap();
        assert_eq!(ended.status(), JobStatus::Done, "{db:?}");
        assert_eq!(ended.failed_datums, Some(0));
    }
}

#[test]
fn a_canceled_job_reopened_for_one_datum_ends_canceled() {
    for db in TestDb::all() {
        let mut conn = db.pool.get().unwrap();
        let job = create_job(&mut conn, "retry-canceled", 3, 1, None);
        let now = db_now(&mut conn).unwrap();
        Job::stop(
            &mut conn,
            job.id,
            JobStatus::Canceled,
            Some("canceled"),
            now,
        )
        .unwrap();
        let canceled = Datum::list(&mut conn, job.id, Some(DatumStatus::Canceled), 10).unwrap();
        assert_eq!(canceled.len(), 3, "{db:?}");
        let retried = Datum::retry(&mut conn, canceled[0].id, now).unwrap();
        assert!(retried.reopened);
        reserve_and_finish(&mut conn, &job);
        let ended = Job::finish_if_complete(&mut conn, job.id, now)
            .unwrap()
            .unwrap();
        assert_eq!(ended.status(), JobStatus::Canceled, "{db:?}");
        assert_eq!(
            ended.error_message.as_deref(),
            Some("2 datums stayed canceled")
        );
    }
}

#[test]
fn only_failed_and_canceled_datums_can_be_retried() {
    for db in TestDb::all() {
        let mut conn = db.pool.get().unwrap();
        let job = create_job(&mut conn, "retry-refused", 2, 1, None);
        let now = db_now(&mut conn).unwrap();
        let ready = Datum::list(&mut conn, job.id, Some(DatumStatus::Ready), 1).unwrap();
        let err = Datum::retry(&mut conn, ready[0].id, now).unwrap_err();
        assert!(
            matches!(&err, ModelError::Conflict(m) if m.contains("is ready; only datums that ended error or canceled")),
            "{db:?}: {err}"
        );
        let done = reserve_and_finish(&mut conn, &job);
        let err = Datum::retry(&mut conn, done.id, now).unwrap_err();
        assert!(matches!(err, ModelError::Conflict(_)), "{db:?}: {err}");
        let err = Datum::retry(&mut conn, 999_999, now).unwrap_err();
        assert!(matches!(err, ModelError::NotFound(_)), "{db:?}: {err}");
    }
}
