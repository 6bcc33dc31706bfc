//! Attempt statistics on SQLite and on a real PostgreSQL: stored by every
//! path that closes an attempt with a report, and aggregated by the
//! database (nearest-rank percentiles, error groups, the suggestion).

#![allow(clippy::unwrap_used)]

use falconeri_common::{
    api::{AttemptStats, NewOutputFile},
    db::{
        DbConn,
        testing::{self, TestDb, planned},
    },
    models::{Clock, Completed, Datum, Job, Report, db_now, stats},
    status::DatumStatus,
};

const LEASE: i64 = 30_000;
const MIB: u64 = 1024 * 1024;

fn create_job(conn: &mut DbConn, datums: usize, name: &str) -> Job {
    let spec = testing::spec("stats-test", 2, 1);
    testing::create_running_job(conn, &spec, &planned(datums, 1), name)
}

/// Reserves the next datum for a worker of its own (a worker holding a
/// datum would be handed that one again).
fn reserve(conn: &mut DbConn, job: &Job) -> Datum {
    use std::sync::atomic::{AtomicU64, Ordering};
    static WORKER: AtomicU64 = AtomicU64::new(0);
    let worker = format!("w{}", WORKER.fetch_add(1, Ordering::Relaxed));
    let now = db_now(conn).unwrap();
    Datum::reserve_next(conn, job.id, &worker, now, LEASE, None)
        .unwrap()
        .unwrap()
}

/// Stats whose every field is set from `n`, so a mix-up of columns shows.
fn numbered(n: u64) -> AttemptStats {
    AttemptStats::from_values(std::array::from_fn(|i| Some(n * 100 + i as u64)))
}

fn stored(conn: &mut DbConn, datum: &Datum) -> Option<AttemptStats> {
    stats::attempt_stats(conn, datum.id)
        .unwrap()
        .into_iter()
        .find(|(number, _)| *number == datum.attempt)
        .map(|(_, stats)| stats)
}

#[test]
fn every_report_path_stores_the_attempt_stats() {
    for db in TestDb::all() {
        let mut conn = db.pool.get().unwrap();
        let job = create_job(&mut conn, 5, "stats-paths");

        // `done` without outputs, at the database's clock: on PostgreSQL
        // the prepared one-statement path.
        let a = reserve(&mut conn, &job);
        let s = numbered(1);
        let report = Report {
            exit_code: Some(0),
            stats: Some(&s),
            ..Report::default()
        };
        let done = Datum::complete(
            &mut conn,
            a.id,
            &a.claim().unwrap(),
            &report,
            &[],
            "file:///e/",
            Clock::DB,
            LEASE,
        )
        .unwrap();
        assert!(matches!(done, Completed::Done(_)), "{db:?}");
        assert_eq!(stored(&mut conn, &a), Some(s), "{db:?}");

        // `done` with outputs: stored when publishing starts, kept when
        // the attempt closes.
        let b = reserve(&mut conn, &job);
        let s = numbered(2);
        let report = Report {
            stats: Some(&s),
            ..Report::default()
        };
        let files = [NewOutputFile {
            path: "x".into(),
            size: 1,
        }];
        let claim = b.claim().unwrap();
        let now = db_now(&mut conn).unwrap();
        let completed = Datum::complete(
            &mut conn,
            b.id,
            &claim,
            &report,
            &files,
            "file:///e/",
            now,
            LEASE,
        )
        .unwrap();
        assert!(matches!(completed, Completed::Publishing(..)), "{db:?}");
        Datum::finish_publishing(&mut conn, b.id, &claim, Some(0), now).unwrap();
        assert_eq!(stored(&mut conn, &b), Some(s), "{db:?}");

        // A failure keeps its exit status and stats.
        let c = reserve(&mut conn, &job);
        let s = numbered(3);
        let report = Report {
            output: "",
            exit_code: Some(3),
            signal: None,
            stats: Some(&s),
        };
        let failed = Datum::fail(
            &mut conn,
            c.id,
            &c.claim().unwrap(),
            &report,
            "boom",
            Clock::DB,
        )
        .unwrap();
        assert_eq!(failed.status(), DatumStatus::Error, "{db:?}");
        assert_eq!(stored(&mut conn, &c), Some(s), "{db:?}");
        let attempt = &Datum::attempts(&mut conn, c.id).unwrap()[0];
        assert_eq!(attempt.exit_code, Some(3), "{db:?}");

        // Many at once (the batch report), one with stats, one without
        // (an older worker).
        let d = reserve(&mut conn, &job);
        let e = reserve(&mut conn, &job);
        let s = numbered(4);
        let with = Report {
            stats: Some(&s),
            ..Report::default()
        };
        let reports = [
            (d.id, d.claim().unwrap(), with),
            (e.id, e.claim().unwrap(), Report::default()),
        ];
        if conn.backend() == falconeri_common::db::Backend::Postgres {
            // The prepared statement (the database's clock) and the one
            // built with literals (a given clock) both store them.
            let (with_stats, without) = reports.split_at(1);
            let (first, second) = (without, with_stats);
            let now = db_now(&mut conn).unwrap();
            assert_eq!(
                Datum::complete_many(&mut conn, first, Clock::DB)
                    .unwrap()
                    .len(),
                1
            );
            assert_eq!(
                Datum::complete_many(&mut conn, second, now).unwrap().len(),
                1
            );
        } else {
            for (id, claim, report) in &reports {
                Datum::complete(
                    &mut conn,
                    *id,
                    claim,
                    report,
                    &[],
                    "file:///e/",
                    Clock::DB,
                    LEASE,
                )
                .unwrap();
            }
        }
        assert_eq!(stored(&mut conn, &d), Some(s), "{db:?}");
        assert_eq!(stored(&mut conn, &e), None, "{db:?}");
    }
}

#[test]
fn job_stats_are_computed_by_the_database() {
    for db in TestDb::all() {
        let mut conn = db.pool.get().unwrap();
        let job = create_job(&mut conn, 24, "stats-aggregate");
        // 20 done datums: command i × 10 ms, half of it on the CPU (500m),
        // peak i MiB, downloading i bytes and uploading 2i.
        for i in 1..=20u64 {
            let datum = reserve(&mut conn, &job);
            let s = AttemptStats {
                download_files: Some(1),
                download_bytes: Some(i),
                download_ms: Some(i),
                command_ms: Some(i * 10),
                user_cpu_ms: Some(i * 4),
                system_cpu_ms: Some(i),
                max_rss_bytes: Some(i * MIB),
                upload_files: Some(1),
                upload_bytes: Some(2 * i),
                upload_ms: Some(100 + i),
            };
            let report = Report {
                exit_code: Some(0),
                stats: Some(&s),
                ..Report::default()
            };
            Datum::complete(
                &mut conn,
                datum.id,
                &datum.claim().unwrap(),
                &report,
                &[],
                "file:///e/",
                Clock::DB,
                LEASE,
            )
            .unwrap();
        }
        // Three failed for good, in two groups; one more without stats.
        let mut failed = Vec::new();
        for message in ["boom A", "boom B", "boom A"] {
            let datum = reserve(&mut conn, &job);
            let report = Report {
                exit_code: Some(1),
                ..Report::default()
            };
            Datum::fail(
                &mut conn,
                datum.id,
                &datum.claim().unwrap(),
                &report,
                message,
                Clock::DB,
            )
            .unwrap();
            failed.push(datum.id);
        }

        let stats = stats::job_stats(&mut conn, job.id).unwrap();
        assert_eq!(stats.measured_attempts, 20, "{db:?}");
        let command = stats.phases.command.unwrap();
        // Nearest rank over 10, 20, …, 200: the 10th and the 19th values.
        assert_eq!(
            (command.count, command.p50, command.p95, command.max),
            (20, 100, 190, 200),
            "{db:?}"
        );
        let upload = stats.phases.upload.unwrap();
        assert_eq!(
            (upload.p50, upload.p95, upload.max),
            (110, 119, 120),
            "{db:?}"
        );
        let memory = stats.memory_bytes.unwrap();
        assert_eq!(memory.p95, 19 * MIB as i64, "{db:?}");
        let cpu = stats.cpu_millicores.unwrap();
        assert_eq!((cpu.p50, cpu.p95, cpu.max), (500, 500, 500), "{db:?}");
        assert_eq!(stats.throughput.datums_done, 20, "{db:?}");
        assert_eq!(stats.throughput.download_bytes, 210, "{db:?}");
        assert_eq!(stats.throughput.upload_bytes, 420, "{db:?}");
        assert_eq!(stats.slowest.len(), 5, "{db:?}");

        assert_eq!(stats.errors.len(), 2, "{db:?}");
        assert_eq!(stats.errors[0].message, "boom A");
        assert_eq!(stats.errors[0].count, 2);
        assert_eq!(stats.errors[0].example_datum_id, failed[0]);
        assert_eq!(stats.errors[1].message, "boom B");
        assert_eq!(
            (stats.errors[1].count, stats.errors[1].example_datum_id),
            (1, failed[1])
        );

        // 19 MiB × 1.25 = 23.75 MiB → 24Mi; 500m × 1.25 = 625m → 700m.
        let suggestion = stats.suggestion.unwrap();
        assert_eq!(
            (suggestion.memory.as_str(), suggestion.cpu.as_str()),
            ("24Mi", "700m"),
            "{db:?}"
        );

        // A job nobody measured has no percentiles and no suggestion.
        let empty = create_job(&mut conn, 1, "stats-empty");
        let stats = stats::job_stats(&mut conn, empty.id).unwrap();
        assert_eq!(stats.measured_attempts, 0);
        assert!(stats.phases.command.is_none() && stats.suggestion.is_none());
    }
}

/// A job of more attempts than `stats::WINDOW` is measured over its newest
/// `WINDOW` only (bench/dashboard: the whole of 1,000,000 took seconds),
/// and the answer says so; a smaller job is measured whole.
#[test]
fn a_big_job_is_measured_over_its_newest_attempts() {
    use diesel::connection::SimpleConnection;
    let window = stats::WINDOW;
    for db in TestDb::all() {
        let mut conn = db.pool.get().unwrap();
        let datums = usize::try_from(window).unwrap() + 100;
        let job = create_job(&mut conn, datums, "stats-window");
        // One closed attempt per datum, in seq order: the oldest 100 ran
        // 1,000 s each, the newest WINDOW 1 to 10 s.
        let sql = format!(
            "UPDATE datums SET status = 'done', ready_order = NULL, attempt = 1 \
              WHERE job_id = {id};
             INSERT INTO attempts (job_id, datum_id, number, worker_id, started_at, \
                finished_at, outcome, command_ms) \
             SELECT job_id, id, 1, 'w', seq, seq + {ms}, 'done', {ms} \
               FROM datums WHERE job_id = {id} ORDER BY seq;",
            ms = "CASE WHEN seq < 100 THEN 1000000 ELSE 1000 * (1 + seq % 10) END",
            id = job.id
        );
        match &mut conn {
            DbConn::Sqlite(c) => c.batch_execute(&sql).unwrap(),
            DbConn::Postgres(c) => c.batch_execute(&sql).unwrap(),
        }
        let s = stats::job_stats(&mut conn, job.id).unwrap();
        assert_eq!(s.window, Some(window), "{db:?}");
        assert_eq!(s.measured_attempts, window, "{db:?}");
        let command = s.phases.command.unwrap();
        assert_eq!((command.count, command.max), (window, 10_000), "{db:?}");
        assert_eq!(s.throughput.datums_done, window, "{db:?}");
        assert!(
            s.slowest.iter().all(|a| a.command_ms == Some(10_000)),
            "{db:?}"
        );

        // At the window or below, every attempt counts and no window is set.
        let small = create_job(&mut conn, 3, "stats-window-small");
        let s = stats::job_stats(&mut conn, small.id).unwrap();
        assert_eq!(s.window, None, "{db:?}");
    }
}
