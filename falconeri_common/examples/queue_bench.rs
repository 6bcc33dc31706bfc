//! Queue benchmark: how fast falconeri accepts big jobs and hands out
//! datums, on SQLite and PostgreSQL. Run it with `bench/queue`, which
//! provides PostgreSQL; it prints a Markdown table.
//!
//! For each backend it measures (1) inserting a job of 100,000 input files
//! and (2) draining 20,000 datums with 1, 8 and 32 concurrent workers, each
//! doing the real reserve → done cycle (two guarded statements plus the
//! database clock reads).

use std::{
    sync::{Arc, Barrier},
    time::Instant,
};

use falconeri_common::{
    db::{
        DbPool,
        testing::{self, TestDb, planned},
    },
    models::{Datum, db_now},
    plan::PlannedDatum,
};

const LEASE_MS: i64 = 30_000;

fn create(pool: &DbPool, name: &str, datums: &[PlannedDatum]) -> i64 {
    let mut conn = pool.get().expect("connection");
    testing::create_running_job(&mut conn, &testing::spec("bench", 8, 1), datums, name).id
}

fn drain(pool: &DbPool, job_id: i64, workers: usize) -> usize {
    let barrier = Arc::new(Barrier::new(workers));
    let handles: Vec<_> =
        (0..workers)
            .map(|w| {
                let pool = pool.clone();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    let mut conn = pool.get().expect("connection");
                    let worker = format!("bench-{w}");
                    let mut done = 0;
                    barrier.wait();
                    loop {
                        let now = db_now(&mut conn).expect("clock");
                        let Some(datum) =
                            Datum::reserve_next(&mut conn, job_id, &worker, now, LEASE_MS, None)
                                .expect("reserve")
                        else {
                            break;
                        };
                        let claim = datum.claim().expect("claim");
                        Datum::mark_done(&mut conn, datum.id, &claim, "", &[], now, |_| {
                            Ok(Vec::new())
                        })
                        .expect("done");
                        done += 1;
                    }
                    done
                })
            })
            .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("worker thread"))
        .sum()
}

fn main() {
    let drain_datums = 20_000;
    println!("| backend | measurement | size | workers | seconds | rate |");
    println!("|---|---|---|---|---:|---:|");
    for db in TestDb::all() {
        let backend = db.backend().name();
        let big = planned(25_000, 4);
        let started = Instant::now();
        create(&db.pool, "bench-big", &big);
        let secs = started.elapsed().as_secs_f64();
        println!(
            "| {backend} | create job | 100,000 input files | 1 | {secs:.2} | {:.0} files/s |",
            100_000.0 / secs
        );

        let datums = planned(drain_datums, 1);
        for workers in [1, 8, 32] {
            let job_id = create(&db.pool, &format!("bench-drain-{workers}"), &datums);
            // One connection per worker, as each falconerid request would take.
            let pool =
                DbPool::connect(&db.url, u32::try_from(workers).unwrap_or(32)).expect("connect");
            let started = Instant::now();
            let done = drain(&pool, job_id, workers);
            let secs = started.elapsed().as_secs_f64();
            assert_eq!(done, drain_datums, "every datum completed once");
            println!(
                "| {backend} | reserve + done | {drain_datums} datums | {workers} | {secs:.2} | {:.0} datums/s |",
                f64::from(u32::try_from(done).unwrap_or(u32::MAX)) / secs
            );
        }
    }
}
