//! The database models on SQLite and on a real PostgreSQL, each test on a
//! fresh database: reservation, claims, retries, expiry, finishing, and a
//! claim storm proving a datum is never handed out twice.

#![allow(clippy::unwrap_used)]

use std::{
    collections::HashSet,
    sync::{Arc, Barrier},
};

use falconeri_common::{
    api::{Claim, NewOutputFile},
    db::DbConn,
    db::testing::{self, TestDb, planned},
    models::{
        Clock, Completed, Datum, DatumBatch, DatumFilter, DeadOwners, Job, ModelError,
        NewJobParams, Report, db_now,
    },
    pipeline::PipelineSpec,
    plan::{PlannedDatum, PlannedFile},
    status::{DatumStatus, JobStatus, Outcome},
};

const LEASE: i64 = 30_000;

fn spec(tries: u32) -> PipelineSpec {
    testing::spec("model-test", 2, tries)
}

/// Runs `sql` as is, on either database: for states no model reaches.
fn with_raw(conn: &mut DbConn, sql: &str) {
    use diesel::connection::SimpleConnection;
    match conn {
        DbConn::Sqlite(c) => c.batch_execute(sql).unwrap(),
        DbConn::Postgres(c) => c.batch_execute(sql).unwrap(),
    }
}

fn create_job(conn: &mut DbConn, datums: usize, tries: u32) -> Job {
    let name = format!("model-test-{}", rand_suffix());
    testing::create_running_job(conn, &spec(tries), &planned(datums, 1), &name)
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

/// A `publish` callback that pretends to move each file to `file:///out/`.
fn publish(files: &[NewOutputFile]) -> impl FnOnce(&Datum) -> anyhow::Result<Vec<String>> + use<> {
    let uris: Vec<String> = files
        .iter()
        .map(|file| format!("file:///out/{}", file.path))
        .collect();
    move |_| Ok(uris)
}

/// A `publish` callback for writes that must be refused before publishing.
fn never_publish(datum: &Datum) -> anyhow::Result<Vec<String>> {
    panic!("published outputs of datum {} with a stale claim", datum.id)
}

/// Marks a reserved datum done with its claim, publishing nothing.
fn done_without_outputs(conn: &mut DbConn, datum: &Datum, now: i64) -> Datum {
    Datum::mark_done(conn, datum.id, &claim(datum), "", &[], now, publish(&[])).unwrap()
}

fn claim(datum: &Datum) -> Claim {
    datum.claim().expect("reserved datum has a claim")
}

#[test]
fn jobs_are_created_with_datums_and_files() {
    for db in TestDb::all() {
        let mut conn = db.pool.get().unwrap();
        let job = create_job(&mut conn, 3, 1);
        assert_eq!(job.status(), JobStatus::Running, "{db:?}");
        assert_eq!(job.datum_count, 3);
        assert!(job.deadline_at.is_some(), "job_timeout sets a deadline");
        let counts = Job::counts(&mut conn, job.id).unwrap();
        assert_eq!(counts.ready, 3);
        let datums = Datum::list(&mut conn, job.id, None, 100).unwrap();
        let files = Datum::input_files(&mut conn, datums[2].id).unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].local_path, "in/2/0.txt");
        assert_eq!(Job::find_by_name(&mut conn, &job.name).unwrap().id, job.id);
        assert!(matches!(
            Job::find(&mut conn, 999_999),
            Err(ModelError::NotFound(_))
        ));
        let by_token = Job::find_by_worker_token(&mut conn, &job.worker_token).unwrap();
        assert_eq!(by_token.map(|j| j.id), Some(job.id));
    }
}

#[test]
fn reservation_records_owner_attempt_and_lease_from_the_given_clock() {
    for db in TestDb::all() {
        let mut conn = db.pool.get().unwrap();
        let job = create_job(&mut conn, 2, 3);
        let now = db_now(&mut conn).unwrap();
        let first = Datum::reserve_next(&mut conn, job.id, "w1", now, LEASE, Some(5_000))
            .unwrap()
            .unwrap();
        assert_eq!(first.status(), DatumStatus::Running);
        assert_eq!(first.attempt, 1);
        assert_eq!(first.owner.as_deref(), Some("w1"));
        assert_eq!(first.lease_expires_at, Some(now + LEASE));
        assert_eq!(first.deadline_at, Some(now + 5_000));
        let second = Datum::reserve_next(&mut conn, job.id, "w2", now, LEASE, None)
            .unwrap()
            .unwrap();
        assert_ne!(first.id, second.id);
        assert!(
            Datum::reserve_next(&mut conn, job.id, "w3", now, LEASE, None)
                .unwrap()
                .is_none(),
            "{db:?}: nothing left"
        );
        let lease = Datum::heartbeat(&mut conn, first.id, &claim(&first), now + 10, LEASE).unwrap();
        assert_eq!(lease, now + 10 + LEASE);
    }
}

/// Regression test for the old falconeri: a worker whose lease expired must
/// not be able to finish, fail or publish outputs for a datum now owned by
/// someone else.
#[test]
fn stale_worker_writes_are_conflicts_and_change_nothing() {
    for db in TestDb::all() {
        let mut conn = db.pool.get().unwrap();
        let job = create_job(&mut conn, 1, 3);
        let now = db_now(&mut conn).unwrap();
        let old = Datum::reserve_next(&mut conn, job.id, "old", now, LEASE, None)
            .unwrap()
            .unwrap();
        let old_claim = claim(&old);

        // The lease runs out; the babysitter requeues; a new worker takes it.
        let later = now + LEASE + 1;
        assert_eq!(Datum::expire_leases(&mut conn, later).unwrap(), 1);
        let requeued = Datum::find(&mut conn, old.id).unwrap();
        assert_eq!(requeued.status(), DatumStatus::Ready);
        assert!(requeued.error_message.unwrap().contains("lease expired"));
        let new = Datum::reserve_next(&mut conn, job.id, "new", later, LEASE, None)
            .unwrap()
            .unwrap();
        assert_eq!(new.id, old.id);
        assert_eq!(new.attempt, 2);

        let files = [NewOutputFile {
            path: "x".into(),
            size: 1,
        }];
        let stale = [
            Datum::heartbeat(&mut conn, old.id, &old_claim, later, LEASE).map(|_| ()),
            Datum::mark_done(
                &mut conn,
                old.id,
                &old_claim,
                "out",
                &files,
                later,
                never_publish,
            )
            .map(|_| ()),
            Datum::mark_error(&mut conn, old.id, &old_claim, "out", "boom", later).map(|_| ()),
            Datum::release(&mut conn, old.id, &old_claim, "stopped", later).map(|_| ()),
            Datum::finish_publishing(&mut conn, old.id, &old_claim, None, later).map(|_| ()),
        ];
        for result in stale {
            assert!(
                matches!(result, Err(ModelError::Conflict(_))),
                "{db:?}: {result:?}"
            );
        }
        // The same worker name with the old attempt is stale too.
        let same_name_old_attempt = Claim {
            worker_id: "new".into(),
            attempt: 1,
            scope: None,
        };
        assert!(matches!(
            Datum::mark_done(
                &mut conn,
                old.id,
                &same_name_old_attempt,
                "",
                &[],
                later,
                never_publish
            ),
            Err(ModelError::Conflict(_))
        ));
        let current = Datum::find(&mut conn, old.id).unwrap();
        assert_eq!(current.status(), DatumStatus::Running);
        assert_eq!(current.owner.as_deref(), Some("new"));
        assert!(Datum::output_files(&mut conn, old.id).unwrap().is_empty());

        // The owner's write goes through and publishes its files.
        let done = Datum::mark_done(
            &mut conn,
            old.id,
            &claim(&new),
            "ok",
            &files,
            later,
            publish(&files),
        )
        .unwrap();
        assert_eq!(done.status(), DatumStatus::Done);
        assert_eq!(Datum::output_files(&mut conn, old.id).unwrap().len(), 1);
        assert!(matches!(
            Datum::heartbeat(&mut conn, 999_999, &old_claim, later, LEASE),
            Err(ModelError::NotFound(_))
        ));
    }
}

#[test]
fn failures_retry_until_datum_tries_then_error() {
    for db in TestDb::all() {
        let mut conn = db.pool.get().unwrap();
        let job = create_job(&mut conn, 1, 2);
        let now = db_now(&mut conn).unwrap();
        let first = Datum::reserve_next(&mut conn, job.id, "w", now, LEASE, None)
            .unwrap()
            .unwrap();
        let after =
            Datum::mark_error(&mut conn, first.id, &claim(&first), "o1", "e1", now).unwrap();
        assert_eq!(after.status(), DatumStatus::Ready, "{db:?}: one try left");
        let second = Datum::reserve_next(&mut conn, job.id, "w", now, LEASE, None)
            .unwrap()
            .unwrap();
        assert_eq!(second.attempt, 2);
        let after =
            Datum::mark_error(&mut conn, second.id, &claim(&second), "o2", "e2", now).unwrap();
        assert_eq!(after.status(), DatumStatus::Error);
        assert_eq!(after.error_message.as_deref(), Some("e2"));
        assert_eq!(after.output.as_deref(), Some("o2"));

        let finished = Job::finish_if_complete(&mut conn, job.id, now)
            .unwrap()
            .unwrap();
        assert_eq!(finished.status(), JobStatus::Error);
        assert!(
            Job::finish_if_complete(&mut conn, job.id, now)
                .unwrap()
                .is_none()
        );
        let (failed, next) = Job::failed_datum_inputs(&mut conn, job.id, 0, 10).unwrap();
        assert_eq!((failed.len(), next), (1, None));
        assert_eq!(failed[0].files[0].local_path, "in/0/0.txt");
    }
}

#[test]
fn expiry_and_datum_timeouts_use_up_tries() {
    for db in TestDb::all() {
        let mut conn = db.pool.get().unwrap();
        let job = create_job(&mut conn, 1, 1);
        let now = db_now(&mut conn).unwrap();
        let datum = Datum::reserve_next(&mut conn, job.id, "w", now, LEASE, Some(1_000))
            .unwrap()
            .unwrap();
        // Heartbeats keep the lease fresh, but the deadline still passes.
        assert_eq!(Datum::expire_leases(&mut conn, now + 2_000).unwrap(), 0);
        assert_eq!(Datum::expire_deadlines(&mut conn, now + 500).unwrap(), 0);
        assert_eq!(Datum::expire_deadlines(&mut conn, now + 2_000).unwrap(), 1);
        let timed_out = Datum::find(&mut conn, datum.id).unwrap();
        assert_eq!(
            timed_out.status(),
            DatumStatus::Error,
            "{db:?}: no tries left"
        );
        assert!(timed_out.error_message.unwrap().contains("timed out"));
    }
}

#[test]
fn datums_of_dead_workers_are_released() {
    for db in TestDb::all() {
        let mut conn = db.pool.get().unwrap();
        let job = create_job(&mut conn, 2, 2);
        let now = db_now(&mut conn).unwrap();
        let a = Datum::reserve_next(&mut conn, job.id, "alive", now, LEASE, None)
            .unwrap()
            .unwrap();
        let b = Datum::reserve_next(&mut conn, job.id, "dead", now, LEASE, None)
            .unwrap()
            .unwrap();
        let dead = DeadOwners {
            job_id: job.id,
            worker_ids: vec!["dead".into()],
        };
        assert_eq!(
            Datum::release_dead_owners(&mut conn, &dead, now).unwrap(),
            1
        );
        assert_eq!(
            Datum::find(&mut conn, a.id).unwrap().status(),
            DatumStatus::Running
        );
        assert_eq!(
            Datum::find(&mut conn, b.id).unwrap().status(),
            DatumStatus::Ready
        );
    }
}

#[test]
fn stopping_a_job_cancels_its_unfinished_datums_once() {
    for db in TestDb::all() {
        let mut conn = db.pool.get().unwrap();
        let job = create_job(&mut conn, 3, 1);
        let now = db_now(&mut conn).unwrap();
        let running = Datum::reserve_next(&mut conn, job.id, "w", now, LEASE, None)
            .unwrap()
            .unwrap();
        let done = Datum::reserve_next(&mut conn, job.id, "w2", now, LEASE, None)
            .unwrap()
            .unwrap();
        Datum::mark_done(
            &mut conn,
            done.id,
            &claim(&done),
            "",
            &[],
            now,
            publish(&[]),
        )
        .unwrap();

        let (stopped, did) =
            Job::stop(&mut conn, job.id, JobStatus::Canceled, Some("by test"), now).unwrap();
        assert!(did);
        assert_eq!(stopped.status(), JobStatus::Canceled);
        let counts = Job::counts(&mut conn, job.id).unwrap();
        assert_eq!((counts.canceled, counts.done), (2, 1), "{db:?}");
        assert!(matches!(
            Datum::mark_done(
                &mut conn,
                running.id,
                &claim(&running),
                "",
                &[],
                now,
                never_publish
            ),
            Err(ModelError::Conflict(_))
        ));
        let (_, again) = Job::stop(&mut conn, job.id, JobStatus::Canceled, None, now).unwrap();
        assert!(!again, "a finished job is not stopped twice");
    }
}

#[test]
fn jobs_past_their_timeout_are_found() {
    for db in TestDb::all() {
        let mut conn = db.pool.get().unwrap();
        let job = create_job(&mut conn, 1, 1);
        let deadline = job.deadline_at.unwrap();
        assert!(
            Job::list_past_deadline(&mut conn, deadline - 1)
                .unwrap()
                .is_empty()
        );
        let past = Job::list_past_deadline(&mut conn, deadline + 1).unwrap();
        assert_eq!(past.iter().map(|j| j.id).collect::<Vec<_>>(), [job.id]);
    }
}

#[test]
fn a_finished_job_is_done_when_every_datum_is_done() {
    for db in TestDb::all() {
        let mut conn = db.pool.get().unwrap();
        let job = create_job(&mut conn, 2, 1);
        let now = db_now(&mut conn).unwrap();
        let a = Datum::reserve_next(&mut conn, job.id, "w", now, LEASE, None)
            .unwrap()
            .unwrap();
        assert!(
            Job::finish_if_complete(&mut conn, job.id, now)
                .unwrap()
                .is_none()
        );
        Datum::mark_done(&mut conn, a.id, &claim(&a), "", &[], now, publish(&[])).unwrap();
        let b = Datum::reserve_next(&mut conn, job.id, "w", now, LEASE, None)
            .unwrap()
            .unwrap();
        Datum::mark_done(&mut conn, b.id, &claim(&b), "", &[], now, publish(&[])).unwrap();
        let job = Job::finish_if_complete(&mut conn, job.id, now)
            .unwrap()
            .unwrap();
        assert_eq!(job.status(), JobStatus::Done, "{db:?}");
        assert!(job.finished_at.is_some());
    }
}

/// 2,000 datums, 8 workers started together by a barrier: every datum is
/// completed exactly once, and no reservation is handed out twice.
#[test]
fn claim_storm_completes_each_datum_exactly_once() {
    const DATUMS: usize = 2_000;
    const WORKERS: usize = 8;
    for db in TestDb::all() {
        let job_id = {
            let mut conn = db.pool.get().unwrap();
            create_job(&mut conn, DATUMS, 1).id
        };
        let barrier = Arc::new(Barrier::new(WORKERS));
        let handles: Vec<_> = (0..WORKERS)
            .map(|w| {
                let pool = db.pool.clone();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    let mut conn = pool.get().unwrap();
                    let worker = format!("w{w}");
                    let mut completed = Vec::new();
                    barrier.wait();
                    loop {
                        let now = db_now(&mut conn).unwrap();
                        let Some(datum) =
                            Datum::reserve_next(&mut conn, job_id, &worker, now, LEASE, None)
                                .unwrap()
                        else {
                            break;
                        };
                        done_without_outputs(&mut conn, &datum, now);
                        completed.push(datum.id);
                    }
                    completed
                })
            })
            .collect();
        let mut all = Vec::new();
        let mut per_worker = Vec::new();
        for handle in handles {
            let completed = handle.join().unwrap();
            per_worker.push(completed.len());
            all.extend(completed);
        }
        let unique: HashSet<_> = all.iter().collect();
        assert_eq!(all.len(), DATUMS, "{db:?}: completions {per_worker:?}");
        assert_eq!(unique.len(), DATUMS, "{db:?}: a datum was completed twice");
        let mut conn = db.pool.get().unwrap();
        let counts = Job::counts(&mut conn, job_id).unwrap();
        assert_eq!(counts.done, i64::try_from(DATUMS).unwrap());
        for datum in Datum::list(&mut conn, job_id, None, 10_000).unwrap() {
            assert_eq!(
                datum.attempt, 1,
                "{db:?}: datum {} reserved twice",
                datum.id
            );
        }
    }
}

/// The old falconeri inserted every input file in one statement and broke
/// past PostgreSQL's 65,535 bind parameters.
#[test]
fn a_job_of_100_000_input_files_is_accepted() {
    for db in TestDb::all() {
        let mut conn = db.pool.get().unwrap();
        let spec = spec(1);
        // 25,000 datums of 4 files each: both tables need many chunks.
        let datums = planned(25_000, 4);
        let now = db_now(&mut conn).unwrap();
        let job = Job::create(
            &mut conn,
            NewJobParams {
                spec: &spec,
                retry_of: None,
                worker_token: "big-token",
                name: "big-job",
            },
            &datums,
            now,
        )
        .unwrap();
        assert_eq!(job.datum_count, 25_000, "{db:?}");
        let last = Datum::list(&mut conn, job.id, None, 100_000).unwrap();
        assert_eq!(last.len(), 25_000);
        let files = Datum::input_files(&mut conn, last[24_999].id).unwrap();
        assert_eq!(files[3].local_path, "in/24999/3.txt");
    }
}

/// A worker stopped by its executor gives its datum back without using up
/// a try; a stale claim can't release.
#[test]
fn released_datums_keep_their_tries() {
    for db in TestDb::all() {
        let mut conn = db.pool.get().unwrap();
        let job = create_job(&mut conn, 1, 1);
        let now = db_now(&mut conn).unwrap();
        let first = Datum::reserve_next(&mut conn, job.id, "w", now, LEASE, None)
            .unwrap()
            .unwrap();
        let released = Datum::release(&mut conn, first.id, &claim(&first), "stopped", now).unwrap();
        assert_eq!(released.status(), DatumStatus::Ready, "{db:?}");
        assert_eq!(released.interrupted, 1);
        assert!(matches!(
            Datum::release(&mut conn, first.id, &claim(&first), "again", now),
            Err(ModelError::Conflict(_))
        ));
        // The one real try is still there: a failure now is final, but the
        // lease expiry of the second attempt still counts it as the first try.
        let second = Datum::reserve_next(&mut conn, job.id, "w", now, LEASE, None)
            .unwrap()
            .unwrap();
        assert_eq!(second.attempt, 2);
        let failed =
            Datum::mark_error(&mut conn, second.id, &claim(&second), "", "boom", now).unwrap();
        assert_eq!(
            failed.status(),
            DatumStatus::Error,
            "datum_tries 1: one real try"
        );
    }
}

/// Regression test: a reservation whose answer never reached the worker
/// must not strand the datum. Asking again returns the same claim.
#[test]
fn a_lost_reservation_answer_is_handed_back() {
    for db in TestDb::all() {
        let mut conn = db.pool.get().unwrap();
        let job = create_job(&mut conn, 2, 1);
        let now = db_now(&mut conn).unwrap();
        let first = Datum::reserve_next(&mut conn, job.id, "w", now, LEASE, None)
            .unwrap()
            .unwrap();
        let again = Datum::reserve_next(&mut conn, job.id, "w", now + 5, LEASE, None)
            .unwrap()
            .unwrap();
        assert_eq!(
            (again.id, again.attempt),
            (first.id, first.attempt),
            "{db:?}"
        );
        assert_eq!(again.lease_expires_at, Some(now + 5 + LEASE));
        let other = Datum::reserve_next(&mut conn, job.id, "other", now, LEASE, None)
            .unwrap()
            .unwrap();
        assert_ne!(other.id, first.id);
    }
}

/// One reservation serves several workers (the server gathers the
/// reservations that arrive together): each gets its own datums in queue
/// order and request order, a worker that still holds datums gets those
/// back, a worker named twice is served once, and every new claim has its
/// attempt row. Through the prepared statement (the database's clock) and
/// the literal one (a fixed clock) alike.
#[test]
fn one_reservation_serves_many_workers_each_their_own() {
    use falconeri_common::models::{Frontier, ReserveWant};
    let want = |w: &str, max: u32| ReserveWant {
        worker_id: w.to_owned(),
        max,
        resume: true,
    };
    for db in TestDb::all() {
        for clock in [Clock::DB, Clock::At(1_000_000)] {
            let mut conn = db.pool.get().unwrap();
            let job = create_job(&mut conn, 10, 1);
            let frontier = Frontier::default();
            let held = Datum::reserve(&mut conn, job.id, "held", 1, clock, LEASE, Some(50))
                .unwrap()
                .remove(0)
                .datum;
            let wants = [want("a", 2), want("held", 3), want("b", 1), want("a", 1)];
            let reserved =
                Datum::reserve_many(&mut conn, job.id, &wants, &frontier, clock, LEASE, Some(50))
                    .unwrap();
            let mut got: Vec<(String, i64, i32)> = reserved
                .iter()
                .map(|r| (r.datum.owner.clone().unwrap(), r.datum.seq, r.datum.attempt))
                .collect();
            got.sort();
            assert_eq!(
                got,
                vec![
                    ("a".to_owned(), 1, 1),
                    ("a".to_owned(), 2, 1),
                    ("b".to_owned(), 3, 1),
                    ("held".to_owned(), held.seq, held.attempt),
                ],
                "{db:?} {clock:?}"
            );
            for r in &reserved {
                assert_eq!(r.files.len(), 1, "{db:?}: each datum comes with its file");
                let started = r.datum.started_at.unwrap();
                let k = if r.datum.owner.as_deref() == Some("a") {
                    2
                } else {
                    1
                };
                assert_eq!(
                    r.datum.deadline_at,
                    Some(started + 50 * k),
                    "{db:?} {clock:?}"
                );
                let attempts = Datum::attempts(&mut conn, r.datum.id).unwrap();
                assert_eq!(attempts.len(), 1, "{db:?}");
                assert_eq!(Some(&attempts[0].worker_id), r.datum.owner.as_ref());
            }
            let rest = Datum::reserve_many(
                &mut conn,
                job.id,
                &[want("c", 100)],
                &frontier,
                clock,
                LEASE,
                None,
            )
            .unwrap();
            let seqs: Vec<i64> = rest.iter().map(|r| r.datum.seq).collect();
            assert_eq!(seqs, (4..10).collect::<Vec<_>>(), "{db:?} {clock:?}");
            let none = Datum::reserve_many(
                &mut conn,
                job.id,
                &[want("d", 1)],
                &frontier,
                clock,
                LEASE,
                None,
            )
            .unwrap();
            assert!(none.is_empty(), "{db:?}");
            // A worker that says it holds nothing is not looked up: it gets
            // new work and keeps what it held.
            let job = create_job(&mut conn, 2, 1);
            let frontier = Frontier::default();
            let first = Datum::reserve(&mut conn, job.id, "w", 1, clock, LEASE, None).unwrap();
            let fresh = ReserveWant {
                resume: false,
                ..want("w", 1)
            };
            let second =
                Datum::reserve_many(&mut conn, job.id, &[fresh], &frontier, clock, LEASE, None)
                    .unwrap();
            assert_eq!(second.len(), 1, "{db:?}");
            assert_ne!(second[0].datum.id, first[0].datum.id, "{db:?}");
            assert_eq!(
                Datum::find(&mut conn, first[0].datum.id)
                    .unwrap()
                    .owner
                    .as_deref(),
                Some("w")
            );
        }
    }
}

/// The frontier is only a hint: a fresh datum left below it (here, a
/// claim undone as a rollback would undo it) is still handed out, once the
/// datums above it are gone; and requeued datums come before fresh ones.
#[test]
fn a_datum_below_the_frontier_is_still_handed_out() {
    use falconeri_common::models::{Frontier, ReserveWant};
    for db in TestDb::all() {
        let mut conn = db.pool.get().unwrap();
        let job = create_job(&mut conn, 10, 2);
        let frontier = Frontier::default();
        let reserve = |conn: &mut DbConn, worker: &str| {
            let want = ReserveWant {
                worker_id: worker.to_owned(),
                max: 1,
                resume: false,
            };
            Datum::reserve_many(conn, job.id, &[want], &frontier, Clock::DB, LEASE, None)
                .unwrap()
                .into_iter()
                .map(|r| r.datum)
                .next()
        };
        let mut claimed = Vec::new();
        for i in 0..9 {
            claimed.push(reserve(&mut conn, &format!("w{i}")).unwrap());
        }
        // Undo the claim of seq 4 behind the frontier's back.
        let undone = &claimed[4];
        with_raw(
            &mut conn,
            &format!(
                "UPDATE datums SET status = 'ready', ready_order = seq, owner = NULL, attempt = 0, \
             lease_expires_at = NULL, started_at = NULL WHERE id = {}",
                undone.id
            ),
        );
        // A failed datum goes back to the queue ahead of every fresh one.
        let failed = &claimed[7];
        Datum::fail(
            &mut conn,
            failed.id,
            &failed.claim().unwrap(),
            &Report::default(),
            "try again",
            Clock::DB,
        )
        .unwrap();
        let first = reserve(&mut conn, "late0").unwrap().seq;
        assert_eq!(first, 7, "{db:?}: the requeued datum goes first");
        // Two workers at once, one datum above the frontier and one below:
        // the first look comes up short, and the second must give the
        // first's datum back to its worker, not a second one.
        let wants = ["late1", "late2"].map(|w| ReserveWant {
            worker_id: w.to_owned(),
            max: 1,
            resume: false,
        });
        let got = Datum::reserve_many(&mut conn, job.id, &wants, &frontier, Clock::DB, LEASE, None)
            .unwrap();
        let handed: Vec<(String, i64)> = got
            .iter()
            .map(|r| (r.datum.owner.clone().unwrap(), r.datum.seq))
            .collect();
        let mut seqs: Vec<i64> = handed.iter().map(|(_, seq)| *seq).collect();
        seqs.sort();
        assert_eq!(seqs, vec![4, 9], "{db:?}: {handed:?}");
        let running = Datum::list(&mut conn, job.id, Some(DatumStatus::Running), 100).unwrap();
        for (worker, seq) in &handed {
            let held: Vec<i64> = running
                .iter()
                .filter(|d| d.owner.as_deref() == Some(worker.as_str()))
                .map(|d| d.seq)
                .collect();
            assert_eq!(
                held,
                vec![*seq],
                "{db:?}: {worker} holds exactly what it was told"
            );
        }
        assert!(reserve(&mut conn, "idle").is_none(), "{db:?}");
    }
}

/// Stopping a job closes the attempts of all its running datums at once,
/// however many: on SQLite the statement once nested one OR per attempt
/// and failed past 1,000 ("Expression tree is too large").
#[test]
fn stopping_a_job_with_thousands_running_closes_every_attempt() {
    use falconeri_common::models::{Frontier, ReserveWant};
    for db in TestDb::all() {
        let mut conn = db.pool.get().unwrap();
        let job = create_job(&mut conn, 2_500, 1);
        let wants: Vec<ReserveWant> = (0..3)
            .map(|w| ReserveWant {
                worker_id: format!("w{w}"),
                max: 1_000,
                resume: false,
            })
            .collect();
        let reserved = Datum::reserve_many(
            &mut conn,
            job.id,
            &wants,
            &Frontier::default(),
            Clock::DB,
            LEASE,
            None,
        )
        .unwrap();
        assert_eq!(reserved.len(), 2_500, "{db:?}");
        let now = db_now(&mut conn).unwrap();
        Job::stop(&mut conn, job.id, JobStatus::Canceled, None, now).unwrap();
        let canceled = Datum::list_filtered(
            &mut conn,
            job.id,
            &DatumFilter {
                outcome: Some(Outcome::Canceled),
                ..DatumFilter::default()
            },
            10_000,
        )
        .unwrap();
        assert_eq!(canceled.len(), 2_500, "{db:?}");
    }
}

/// Replicas starting together on a fresh PostgreSQL database each migrate it;
/// without the advisory lock, diesel's bookkeeping table creation races and
/// some of them fail.
#[test]
fn replicas_migrating_a_fresh_postgres_database_together_all_succeed() {
    for round in 0..3 {
        let db = TestDb::postgres_unmigrated();
        let replicas = 6;
        let barrier = Arc::new(Barrier::new(replicas));
        let handles: Vec<_> = (0..replicas)
            .map(|_| {
                let url = db.url.clone();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    let pool = falconeri_common::db::DbPool::connect(&url, 1)?;
                    barrier.wait();
                    pool.run_migrations()
                })
            })
            .collect();
        for handle in handles {
            let result = handle.join().expect("thread");
            assert!(result.is_ok(), "round {round}: {result:?}");
        }
        // And the database works afterwards.
        let mut conn = db.pool.get().expect("connection");
        create_job(&mut conn, 3, 1);
    }
}

fn begin_planning(conn: &mut DbConn, name: &str, now: i64, lease_until: i64) -> Job {
    let spec = spec(1);
    Job::begin_planning(
        conn,
        NewJobParams {
            spec: &spec,
            retry_of: None,
            worker_token: &format!("token-{name}"),
            name,
        },
        now,
        lease_until,
    )
    .unwrap()
}

fn file(n: usize) -> PlannedFile {
    PlannedFile {
        uri: format!("file:///in/{n}"),
        local_path: format!("in/{n}"),
        identity: String::new(),
    }
}

/// A plan streamed in batches, with one datum's files spanning two
/// batches, reads back exactly as planned; the job is not startable until
/// its plan is finished.
#[test]
fn plans_are_appended_in_batches() {
    for db in TestDb::all() {
        let mut conn = db.pool.get().unwrap();
        let now = db_now(&mut conn).unwrap();
        let job = begin_planning(&mut conn, "planned-in-batches", now, now + LEASE);
        assert_eq!(job.datum_count, 0);
        assert_eq!(job.planning_lease_until, Some(now + LEASE));
        let first = DatumBatch {
            keys: Vec::new(),
            continued_keys: None,
            continued: Vec::new(),
            known: Default::default(),
            continued_known: None,
            datums: vec![
                PlannedDatum {
                    files: vec![file(0)],
                },
                PlannedDatum {
                    files: vec![file(1), file(2)],
                },
            ],
        };
        let second = DatumBatch {
            keys: Vec::new(),
            continued_keys: None,
            continued: vec![file(3), file(4)],
            known: Default::default(),
            continued_known: None,
            datums: vec![PlannedDatum {
                files: vec![file(5)],
            }],
        };
        assert_eq!(
            Job::append_datums(&mut conn, job.id, &first, now, now + LEASE).unwrap(),
            2
        );
        // Not taken over while it is being planned, however old.
        assert!(
            Job::list_ready_before(&mut conn, now + 10 * LEASE)
                .unwrap()
                .is_empty(),
            "{db:?}"
        );
        assert_eq!(
            Job::append_datums(&mut conn, job.id, &second, now, now + 2 * LEASE).unwrap(),
            3
        );
        assert_eq!(
            Job::find(&mut conn, job.id).unwrap().planning_lease_until,
            Some(now + 2 * LEASE)
        );
        let job = Job::finish_planning(&mut conn, job.id).unwrap();
        assert_eq!((job.datum_count, job.planning_lease_until), (3, None));
        let datums = Datum::list(&mut conn, job.id, None, 100).unwrap();
        let files: Vec<Vec<String>> = datums
            .iter()
            .map(|d| {
                Datum::input_files(&mut conn, d.id)
                    .unwrap()
                    .into_iter()
                    .map(|f| f.local_path)
                    .collect()
            })
            .collect();
        assert_eq!(
            files,
            vec![
                vec!["in/0"],
                vec!["in/1", "in/2", "in/3", "in/4"],
                vec!["in/5"]
            ],
            "{db:?}"
        );
        assert_eq!(
            Job::list_ready_before(&mut conn, now + 10 * LEASE)
                .unwrap()
                .len(),
            1
        );
        // Finished plans take no more batches.
        assert!(matches!(
            Job::append_datums(&mut conn, job.id, &first, now, now + LEASE),
            Err(ModelError::Conflict(_))
        ));
        assert!(matches!(
            Job::finish_planning(&mut conn, job.id),
            Err(ModelError::Conflict(_))
        ));
        assert!(!Job::abandon_planning(&mut conn, job.id).unwrap());
    }
}

/// A job canceled while being planned stops taking batches but stays.
#[test]
fn a_canceled_plan_takes_no_more_batches() {
    for db in TestDb::all() {
        let mut conn = db.pool.get().unwrap();
        let now = db_now(&mut conn).unwrap();
        let job = begin_planning(&mut conn, "canceled-while-planned", now, now + LEASE);
        let batch = DatumBatch {
            keys: Vec::new(),
            continued_keys: None,
            continued: Vec::new(),
            known: Default::default(),
            continued_known: None,
            datums: vec![PlannedDatum {
                files: vec![file(0)],
            }],
        };
        Job::append_datums(&mut conn, job.id, &batch, now, now + LEASE).unwrap();
        Job::stop(&mut conn, job.id, JobStatus::Canceled, None, now).unwrap();
        assert!(
            matches!(
                Job::append_datums(&mut conn, job.id, &batch, now, now + LEASE),
                Err(ModelError::Conflict(_))
            ),
            "{db:?}"
        );
        let job = Job::finish_planning(&mut conn, job.id).unwrap();
        assert_eq!(job.status(), JobStatus::Canceled);
        assert_eq!(job.datum_count, 1);
    }
}

/// Abandoned plans leave nothing behind, and only plans whose lease ran
/// out are swept.
#[test]
fn abandoned_plans_are_deleted_whole() {
    for db in TestDb::all() {
        let mut conn = db.pool.get().unwrap();
        let now = db_now(&mut conn).unwrap();
        let dead = begin_planning(&mut conn, "dead-planner", now, now + LEASE);
        let alive = begin_planning(&mut conn, "live-planner", now, now + 3 * LEASE);
        let done = create_job(&mut conn, 2, 1);
        let batch = DatumBatch {
            keys: Vec::new(),
            continued_keys: None,
            continued: Vec::new(),
            known: Default::default(),
            continued_known: None,
            datums: (0..1500)
                .map(|n| PlannedDatum {
                    files: vec![file(n), file(n + 1)],
                })
                .collect(),
        };
        for job in [&dead, &alive] {
            Job::append_datums(&mut conn, job.id, &batch, now, now + LEASE).unwrap();
        }
        Job::append_datums(
            &mut conn,
            alive.id,
            &DatumBatch::default(),
            now,
            now + 3 * LEASE,
        )
        .unwrap();
        let swept = Job::delete_abandoned_plans(&mut conn, now + 2 * LEASE).unwrap();
        assert_eq!(swept, vec!["dead-planner".to_owned()], "{db:?}");
        assert!(matches!(
            Job::find(&mut conn, dead.id),
            Err(ModelError::NotFound(_))
        ));
        assert!(
            Datum::list(&mut conn, dead.id, None, 10)
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            Datum::list(&mut conn, alive.id, None, 10_000)
                .unwrap()
                .len(),
            1500
        );
        assert_eq!(Job::find(&mut conn, done.id).unwrap().datum_count, 2);
        assert!(Job::abandon_planning(&mut conn, alive.id).unwrap());
        assert!(matches!(
            Job::find(&mut conn, alive.id),
            Err(ModelError::NotFound(_))
        ));
        assert!(Datum::list(&mut conn, done.id, None, 10).unwrap().len() == 2);
    }
}

/// A retry reads the failed datums a page at a time, in order, skipping
/// the ones that succeeded, and the last page says so.
#[test]
fn failed_datums_are_read_in_pages() {
    for db in TestDb::all() {
        let mut conn = db.pool.get().unwrap();
        let job = create_job(&mut conn, 6, 1);
        let now = db_now(&mut conn).unwrap();
        // Datums 0, 2, 3, 4 and 5 fail; datum 1 succeeds.
        for n in 0..6 {
            let datum = Datum::reserve_next(&mut conn, job.id, "w", now, LEASE, None)
                .unwrap()
                .unwrap();
            if n == 1 {
                done_without_outputs(&mut conn, &datum, now);
            } else {
                Datum::mark_error(&mut conn, datum.id, &claim(&datum), "", "failed", now).unwrap();
            }
        }
        let mut pages = Vec::new();
        let mut after = 0;
        loop {
            let (datums, next) = Job::failed_datum_inputs(&mut conn, job.id, after, 2).unwrap();
            pages.push(
                datums
                    .iter()
                    .map(|d| d.files[0].local_path.clone())
                    .collect::<Vec<_>>(),
            );
            match next {
                Some(next) => after = next,
                None => break,
            }
        }
        assert_eq!(
            pages,
            vec![
                vec!["in/0/0.txt", "in/2/0.txt"],
                vec!["in/3/0.txt", "in/4/0.txt"],
                vec!["in/5/0.txt"],
            ],
            "{db:?}"
        );
    }
}

/// Issue 9, item 1: the reservation must not be planned as a walk over the
/// datums already done. With 100,000 done datums ahead of the ready ones,
/// PostgreSQL's plan for the pick must use the queue index and filter no
/// finished rows.
#[test]
fn reservation_plan_never_walks_done_datums() {
    use diesel::{QueryableByName, RunQueryDsl, sql_types::Text};
    #[derive(QueryableByName)]
    struct PlanLine {
        #[diesel(sql_type = Text, column_name = "QUERY PLAN")]
        line: String,
    }
    let db = TestDb::postgres();
    let mut conn = db.pool.get().unwrap();
    let job = create_job(&mut conn, 100_010, 1);
    let DbConn::Postgres(c) = &mut conn else {
        panic!("not PostgreSQL")
    };
    // Finish the first 100,000 the cheap way, then let statistics see it.
    diesel::sql_query(format!(
        "UPDATE datums SET status = 'done', ready_order = NULL \
         WHERE job_id = {} AND seq < 100000",
        job.id
    ))
    .execute(&mut **c)
    .unwrap();
    diesel::sql_query("ANALYZE datums")
        .execute(&mut **c)
        .unwrap();
    let plan: Vec<PlanLine> = diesel::sql_query(format!(
        "EXPLAIN (ANALYZE, COSTS OFF) SELECT id FROM datums \
         WHERE job_id = {} AND ready_order IS NOT NULL \
         ORDER BY ready_order LIMIT 1 FOR UPDATE SKIP LOCKED",
        job.id
    ))
    .load(&mut **c)
    .unwrap();
    let plan: Vec<String> = plan.into_iter().map(|l| l.line).collect();
    let text = plan.join("\n");
    assert!(text.contains("datums_queue"), "{text}");
    assert!(!text.contains("Rows Removed by Filter"), "{text}");
    // The hot-path statements the model runs, in the generic plans
    // PostgreSQL settles on for prepared statements: the pick through the
    // queue index, the held check through the held index, the updates
    // through the primary key; never a scan of the job's rows, bitmap or
    // sequential, nor of the attempts.
    for (name, plan) in Datum::hot_path_plans(&mut conn, job.id).unwrap() {
        let text = plan.join("\n");
        assert!(text.contains("datums_pkey"), "{name}: {text}");
        assert!(!text.contains("Seq Scan on datums"), "{name}: {text}");
        assert!(!text.contains("Seq Scan on attempts"), "{name}: {text}");
        if name.contains("reserve") {
            assert!(text.contains("datums_queue"), "{name}: {text}");
        }
        for line in &plan {
            if line.contains(" on datums") && !line.contains("Update on datums") {
                assert!(
                    ["datums_queue", "datums_held", "datums_pkey"]
                        .iter()
                        .any(|index| line.contains(&format!("Index Scan using {index} on datums"))),
                    "{name}: a scan that is not one of the three narrow indexes: {line}\n{text}"
                );
            }
        }
    }
    // And the model's statement reserves the first ready datum.
    let datum = Datum::reserve_next(&mut conn, job.id, "w", 0_i64, LEASE, None)
        .unwrap()
        .unwrap();
    assert_eq!(datum.seq, 100_000);
    // The 100,000 done datums left their entries in the queue index (no
    // VACUUM ran): a pick from the start of the job walks them, one from
    // the frontier does not.
    let from_start = Datum::reservation_buffers(&mut conn, job.id, "a", 0).unwrap();
    let from_frontier = Datum::reservation_buffers(&mut conn, job.id, "b", 100_001).unwrap();
    assert!(
        from_start > 100 && from_frontier * 10 < from_start,
        "buffers touched: {from_start} from the start, {from_frontier} from the frontier"
    );
}

/// Issue 9, defect 8: a datum that succeeds after failures keeps the
/// reasons of its failed attempts, in its attempts.
#[test]
fn attempts_keep_every_outcome() {
    for db in TestDb::all() {
        let mut conn = db.pool.get().unwrap();
        let job = create_job(&mut conn, 1, 3);
        let now = db_now(&mut conn).unwrap();
        let first = Datum::reserve_next(&mut conn, job.id, "w1", now, LEASE, None)
            .unwrap()
            .unwrap();
        Datum::mark_error(&mut conn, first.id, &claim(&first), "o1", "boom one", now).unwrap();
        let second = Datum::reserve_next(&mut conn, job.id, "w2", now, LEASE, None)
            .unwrap()
            .unwrap();
        assert_eq!(Datum::expire_leases(&mut conn, now + LEASE + 1).unwrap(), 1);
        let third = Datum::reserve_next(&mut conn, job.id, "w3", now, LEASE, None)
            .unwrap()
            .unwrap();
        assert_eq!(third.attempt, 3, "{db:?}");
        done_without_outputs(&mut conn, &third, now);
        let attempts = Datum::attempts(&mut conn, third.id).unwrap();
        let summary: Vec<(i32, &str, Option<Outcome>, Option<&str>)> = attempts
            .iter()
            .map(|a| {
                (
                    a.number,
                    a.worker_id.as_str(),
                    a.outcome,
                    a.error_message.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (1, "w1", Some(Outcome::Error), Some("boom one")),
                (
                    2,
                    "w2",
                    Some(Outcome::LeaseExpired),
                    Some("lease expired: the worker stopped heartbeating")
                ),
                (3, "w3", Some(Outcome::Done), None),
            ],
            "{db:?}"
        );
        assert!(attempts.iter().all(|a| a.finished_at.is_some()));
        let _ = second;
        // Listing by outcome finds the datum through any of its attempts.
        let filter = DatumFilter {
            outcome: Some(Outcome::LeaseExpired),
            ..DatumFilter::default()
        };
        let found = Datum::list_filtered(&mut conn, job.id, &filter, 10).unwrap();
        assert_eq!(found.len(), 1, "{db:?}");
    }
}

/// Issue 9, defect 2: a command's output and error text with NUL bytes are
/// stored on both databases (as ␀), never refused.
#[test]
fn nul_bytes_in_output_and_errors_are_stored() {
    for db in TestDb::all() {
        let mut conn = db.pool.get().unwrap();
        let job = create_job(&mut conn, 2, 2);
        let now = db_now(&mut conn).unwrap();
        let a = Datum::reserve_next(&mut conn, job.id, "w", now, LEASE, None)
            .unwrap()
            .unwrap();
        let failed =
            Datum::mark_error(&mut conn, a.id, &claim(&a), "out\0put", "err\0or", now).unwrap();
        assert_eq!(failed.output.as_deref(), Some("out\u{2400}put"), "{db:?}");
        assert_eq!(failed.error_message.as_deref(), Some("err\u{2400}or"));
        let again = Datum::reserve_next(&mut conn, job.id, "w", now, LEASE, None)
            .unwrap()
            .unwrap();
        let done = Datum::mark_done(
            &mut conn,
            again.id,
            &claim(&again),
            "a\0b",
            &[],
            now,
            publish(&[]),
        )
        .unwrap();
        assert_eq!(done.output.as_deref(), Some("a\u{2400}b"), "{db:?}");
    }
}

/// Issue 9, item 6: done with outputs is two guarded writes; a publisher
/// that died in between leaves the datum `publishing` with its outputs on
/// record, and only the claim that moved it there can finish it, once.
#[test]
fn publishing_is_finished_once_under_its_claim() {
    for db in TestDb::all() {
        let mut conn = db.pool.get().unwrap();
        let job = create_job(&mut conn, 1, 1);
        let now = db_now(&mut conn).unwrap();
        let datum = Datum::reserve_next(&mut conn, job.id, "w", now, LEASE, None)
            .unwrap()
            .unwrap();
        let files = [NewOutputFile {
            path: "a/b.txt".into(),
            size: 3,
        }];
        let report = Report {
            output: "out",
            ..Report::default()
        };
        let completed = Datum::complete(
            &mut conn,
            datum.id,
            &claim(&datum),
            &report,
            &files,
            "file:///egress",
            now,
            1_000,
        )
        .unwrap();
        let Completed::Publishing(publishing, outputs) = completed else {
            panic!("{db:?}: outputs must be published first")
        };
        assert_eq!(publishing.status(), DatumStatus::Publishing);
        assert_eq!(outputs[0].uri, "file:///egress/a/b.txt");
        assert_eq!(outputs[0].staged_path, "a/b.txt");
        // A second report of the same attempt changes nothing.
        assert!(matches!(
            Datum::complete(
                &mut conn,
                datum.id,
                &claim(&datum),
                &report,
                &files,
                "file:///egress",
                now,
                1_000
            ),
            Err(ModelError::Conflict(_))
        ));
        // Not stale yet; then stale, and taken over once.
        assert!(
            Datum::stale_publishing(&mut conn, now + 500, 10)
                .unwrap()
                .is_empty()
        );
        let stale = Datum::stale_publishing(&mut conn, now + 2_000, 10).unwrap();
        assert_eq!(stale.len(), 1, "{db:?}");
        assert!(
            Datum::take_over_publishing(&mut conn, datum.id, &claim(&datum), now + 2_000, 1_000)
                .unwrap()
        );
        assert!(
            !Datum::take_over_publishing(&mut conn, datum.id, &claim(&datum), now + 2_000, 1_000)
                .unwrap()
        );
        let done =
            Datum::finish_publishing(&mut conn, datum.id, &claim(&datum), Some(0), now).unwrap();
        assert_eq!(done.status(), DatumStatus::Done);
        assert!(matches!(
            Datum::finish_publishing(&mut conn, datum.id, &claim(&datum), Some(0), now),
            Err(ModelError::Conflict(_))
        ));
        assert_eq!(Datum::output_files(&mut conn, datum.id).unwrap().len(), 1);
    }
}

/// Issue 9, defect 1: a job that gave up leaves canceled datums, and a
/// retry takes them along with the failed ones.
#[test]
fn retries_take_failed_and_canceled_datums() {
    for db in TestDb::all() {
        let mut conn = db.pool.get().unwrap();
        let job = create_job(&mut conn, 3, 1);
        let now = db_now(&mut conn).unwrap();
        let a = Datum::reserve_next(&mut conn, job.id, "w", now, LEASE, None)
            .unwrap()
            .unwrap();
        Datum::mark_error(&mut conn, a.id, &claim(&a), "", "boom", now).unwrap();
        Job::stop(&mut conn, job.id, JobStatus::Error, Some("gave up"), now).unwrap();
        let (planned, _) = Job::failed_datum_inputs(&mut conn, job.id, 0, 100).unwrap();
        assert_eq!(planned.len(), 3, "{db:?}");
    }
}

/// Batches: each datum of a batch has its own claim and attempt.
#[test]
fn batch_reservations_give_each_datum_its_own_claim() {
    for db in TestDb::all() {
        let mut conn = db.pool.get().unwrap();
        let job = create_job(&mut conn, 5, 1);
        let now = db_now(&mut conn).unwrap();
        let batch = Datum::reserve(&mut conn, job.id, "w", 3, Clock::At(now), LEASE, None).unwrap();
        assert_eq!(batch.len(), 3, "{db:?}");
        assert!(
            batch
                .iter()
                .all(|r| r.datum.attempt == 1 && r.files.len() == 1)
        );
        // Asked again (a lost answer), the same three come back.
        let again = Datum::reserve(&mut conn, job.id, "w", 3, Clock::At(now), LEASE, None).unwrap();
        let ids = |rs: &[falconeri_common::models::Reserved]| {
            rs.iter().map(|r| r.datum.id).collect::<Vec<_>>()
        };
        assert_eq!(ids(&again), ids(&batch), "{db:?}");
        // One fails, the others are done: independent.
        Datum::mark_error(
            &mut conn,
            batch[0].datum.id,
            &claim(&batch[0].datum),
            "",
            "x",
            now,
        )
        .unwrap();
        done_without_outputs(&mut conn, &batch[1].datum, now);
        let counts = Job::counts(&mut conn, job.id).unwrap();
        assert_eq!(
            (counts.error, counts.done, counts.running, counts.ready),
            (1, 1, 1, 2),
            "{db:?}"
        );
    }
}

/// `Job::counts` reads a big job in capped rounds and derives its largest
/// group from the datum count (`models::counts`): the answer must still
/// be exactly what `GROUP BY status` counts, for a job big enough to take
/// several rounds, whichever status is the largest.
#[test]
fn counts_in_rounds_match_a_full_count() {
    use diesel::{
        QueryableByName, RunQueryDsl,
        sql_types::{BigInt, Text},
    };
    #[derive(QueryableByName)]
    struct Group {
        #[diesel(sql_type = Text)]
        status: String,
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    fn full_count(conn: &mut DbConn, job: i64) -> Vec<(String, i64)> {
        let sql = format!(
            "SELECT status, COUNT(*) AS n FROM datums WHERE job_id = {job} \
             GROUP BY status ORDER BY status"
        );
        let rows: Vec<Group> = match conn {
            DbConn::Sqlite(c) => diesel::sql_query(sql).load(&mut **c).unwrap(),
            DbConn::Postgres(c) => diesel::sql_query(sql).load(&mut **c).unwrap(),
        };
        rows.into_iter().map(|g| (g.status, g.n)).collect()
    }
    fn as_rows(counts: falconeri_common::api::StatusCounts) -> Vec<(String, i64)> {
        let mut rows: Vec<(String, i64)> = [
            ("canceled", counts.canceled),
            ("done", counts.done + counts.skipped),
            ("error", counts.error),
            ("publishing", counts.publishing),
            ("ready", counts.ready),
            ("running", counts.running),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(s, n)| (s.to_owned(), n))
        .collect();
        rows.sort();
        rows
    }
    for db in TestDb::all() {
        let mut conn = db.pool.get().unwrap();
        let job = create_job(&mut conn, 40_000, 3);
        // All ready: the largest group is ready.
        assert_eq!(
            as_rows(Job::counts(&mut conn, job.id).unwrap()),
            full_count(&mut conn, job.id),
            "{db:?}"
        );
        // Mostly done, with failures, some running and some ready: more
        // than the first round's cap in three statuses.
        with_raw(
            &mut conn,
            &format!(
                "UPDATE datums SET status = 'done', ready_order = NULL \
                  WHERE job_id = {id} AND seq % 8 >= 2;
                 UPDATE datums SET status = 'error', ready_order = NULL \
                  WHERE job_id = {id} AND seq % 8 = 0;
                 UPDATE datums SET status = 'running', ready_order = NULL, owner = 'w' \
                  WHERE job_id = {id} AND seq % 8 = 1 AND seq < 800;",
                id = job.id
            ),
        );
        let counts = Job::counts(&mut conn, job.id).unwrap();
        assert_eq!(as_rows(counts), full_count(&mut conn, job.id), "{db:?}");
        assert_eq!(
            (counts.done, counts.error, counts.running, counts.ready),
            (30_000, 5_000, 100, 4_900),
            "{db:?}"
        );
        // Half and half: no status is the largest by far.
        with_raw(
            &mut conn,
            &format!(
                "UPDATE datums SET status = 'canceled', owner = NULL, ready_order = NULL \
                  WHERE job_id = {id} AND seq < 20000",
                id = job.id
            ),
        );
        assert_eq!(
            as_rows(Job::counts(&mut conn, job.id).unwrap()),
            full_count(&mut conn, job.id),
            "{db:?}"
        );
    }
}
