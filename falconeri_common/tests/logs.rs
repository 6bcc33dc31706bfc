//! Attempt logs on SQLite and on a real PostgreSQL, each test on a fresh
//! database: chunks under a claim, resends, the cap keeping head and tail,
//! and bytes no text column could hold.

#![allow(clippy::unwrap_used)]

use falconeri_common::{
    api::{Claim, LogStream},
    db::{
        DbConn,
        testing::{self, TestDb, planned},
    },
    models::{Clock, Datum, Job, LogChunk, ModelError, Report, StoredLine, db_now, decode_lines},
};

const LEASE: i64 = 30_000;

fn create_job(conn: &mut DbConn, name: &str) -> Job {
    testing::create_running_job(
        conn,
        &testing::spec("logs-test", 2, 2),
        &planned(2, 1),
        name,
    )
}

fn line(stream: LogStream, bytes: &[u8]) -> StoredLine {
    StoredLine {
        stream,
        at: 1_000,
        bytes: bytes.to_vec(),
    }
}

/// Every line of an attempt, in order, and the cut bytes reported between.
fn read_all(conn: &mut DbConn, datum_id: i64, attempt: i32) -> (Vec<StoredLine>, Vec<i64>) {
    let (mut lines, mut cuts, mut after, mut offset) = (Vec::new(), Vec::new(), -1, 0);
    loop {
        let page = LogChunk::page(conn, datum_id, attempt, after, 3).unwrap();
        if page.is_empty() {
            return (lines, cuts);
        }
        for chunk in page {
            if chunk.start_offset > offset {
                cuts.push(chunk.start_offset - offset);
            }
            offset = chunk.end_offset;
            after = chunk.seq;
            lines.extend(decode_lines(&chunk.data).unwrap());
        }
    }
}

#[test]
fn chunks_are_stored_under_the_claim_and_resends_are_ignored() {
    for db in TestDb::all() {
        let mut conn = db.pool.get().unwrap();
        let job = create_job(&mut conn, "logs-claim");
        let now = db_now(&mut conn).unwrap();
        let datum = Datum::reserve_next(&mut conn, job.id, "w1", now, LEASE, None)
            .unwrap()
            .unwrap();
        let claim = datum.claim().unwrap();
        let first = [
            line(LogStream::Stdout, b"out\n"),
            line(LogStream::Stderr, b"err\n"),
        ];
        let stored =
            LogChunk::append(&mut conn, datum.id, &claim, 0, &first, 1 << 20, Clock::DB).unwrap();
        assert!(stored.stored, "{db:?}");
        assert_eq!(stored.job_id, job.id);
        // A resend of chunk 0 is not stored twice.
        let again =
            LogChunk::append(&mut conn, datum.id, &claim, 0, &first, 1 << 20, Clock::DB).unwrap();
        assert!(!again.stored);
        let worker = [line(LogStream::Worker, b"uploading\n")];
        LogChunk::append(&mut conn, datum.id, &claim, 1, &worker, 1 << 20, Clock::DB).unwrap();
        let (lines, cuts) = read_all(&mut conn, datum.id, 1);
        assert_eq!(lines.len(), 3, "{db:?}");
        assert_eq!(lines[1].stream, LogStream::Stderr);
        assert_eq!(lines[2].bytes, b"uploading\n");
        assert!(cuts.is_empty());

        // Another worker's claim, a wrong attempt, another job's scope.
        let stale = [
            Claim {
                worker_id: "w2".into(),
                ..claim.clone()
            },
            Claim {
                attempt: 2,
                ..claim.clone()
            },
        ];
        for claim in stale {
            let err = LogChunk::append(&mut conn, datum.id, &claim, 5, &worker, 1 << 20, Clock::DB)
                .unwrap_err();
            assert!(matches!(err, ModelError::Conflict(_)), "{db:?}: {err:?}");
        }
        let other_job = Claim {
            scope: Some(job.id + 1000),
            ..claim.clone()
        };
        let err = LogChunk::append(
            &mut conn,
            datum.id,
            &other_job,
            5,
            &worker,
            1 << 20,
            Clock::DB,
        )
        .unwrap_err();
        assert!(matches!(err, ModelError::NotFound(_)), "{db:?}: {err:?}");

        // Once the attempt is over, its log is closed too.
        let report = Report {
            output: "",
            exit_code: Some(1),
            signal: None,
            stats: None,
        };
        Datum::fail(&mut conn, datum.id, &claim, &report, "boom", Clock::DB).unwrap();
        let err = LogChunk::append(&mut conn, datum.id, &claim, 9, &worker, 1 << 20, Clock::DB)
            .unwrap_err();
        assert!(matches!(err, ModelError::Conflict(_)), "{db:?}: {err:?}");
        assert_eq!(read_all(&mut conn, datum.id, 1).0.len(), 3);
        let attempt = LogChunk::attempt(&mut conn, datum.id, 1).unwrap();
        assert!(attempt.outcome.is_some());
    }
}

#[test]
fn the_cap_keeps_the_head_and_the_tail_and_counts_the_cut() {
    for db in TestDb::all() {
        let mut conn = db.pool.get().unwrap();
        let job = create_job(&mut conn, "logs-cap");
        let now = db_now(&mut conn).unwrap();
        let datum = Datum::reserve_next(&mut conn, job.id, "w1", now, LEASE, None)
            .unwrap()
            .unwrap();
        let claim = datum.claim().unwrap();
        // 100 chunks of 100 bytes under a cap of 1,000: head 500, tail 500.
        for seq in 0..100 {
            let text = format!("{seq:>99}\n");
            let lines = [line(LogStream::Stdout, text.as_bytes())];
            LogChunk::append(&mut conn, datum.id, &claim, seq, &lines, 1_000, Clock::DB).unwrap();
        }
        let (lines, cuts) = read_all(&mut conn, datum.id, 1);
        let kept: Vec<i64> = lines
            .iter()
            .map(|l| {
                std::str::from_utf8(&l.bytes)
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap()
            })
            .collect();
        assert_eq!(kept, vec![0, 1, 2, 3, 4, 95, 96, 97, 98, 99], "{db:?}");
        assert_eq!(cuts, vec![9_000], "{db:?}");
    }
}

#[test]
fn any_byte_a_command_prints_reads_back_the_same() {
    for db in TestDb::all() {
        let mut conn = db.pool.get().unwrap();
        let job = create_job(&mut conn, "logs-bytes");
        let now = db_now(&mut conn).unwrap();
        let datum = Datum::reserve_next(&mut conn, job.id, "w1", now, LEASE, None)
            .unwrap()
            .unwrap();
        let claim = datum.claim().unwrap();
        let all_bytes: Vec<u8> = (0..=255u8).collect();
        let huge = vec![b'x'; 200_000];
        let lines = [
            line(LogStream::Stdout, b"nul \0 in the middle\n"),
            line(LogStream::Stderr, b"\xff\xfe\xc3 not utf-8"),
            line(LogStream::Stdout, &all_bytes),
            line(LogStream::Stdout, &huge),
            line(LogStream::Worker, b""),
        ];
        LogChunk::append(&mut conn, datum.id, &claim, 0, &lines, 1 << 24, Clock::DB).unwrap();
        let (read, _) = read_all(&mut conn, datum.id, 1);
        assert_eq!(read, lines.to_vec(), "{db:?}");
    }
}
