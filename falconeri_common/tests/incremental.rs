//! Incremental runs in the database, on SQLite and a real PostgreSQL: an
//! incremental job's batches insert datums whose fingerprint matches a
//! datum that ran and succeeded in an earlier job of the pipeline as
//! skipped (pointing at it, without input files), including a datum whose
//! files spanned batches; counts, the all-skipped finish, and the vanished
//! datums of the previous run; and the match look-up reads the partial
//! index, not the earlier jobs; one batch whose skips make two runs keeps
//! both; and the previous run read in order (`PreviousRun`) matches what
//! the index would, chained runs included; skipped datums take ids from a
//! range of their own, distinct under two planners at once; and the
//! previous run read in pages, in line or ahead, matches across the pages'
//! edges.

#![allow(clippy::unwrap_used)]

use falconeri_common::{
    db::{DbConn, testing::TestDb},
    fingerprint::{DatumHasher, DatumKeys, TransformFingerprint},
    models::{
        Datum, DatumBatch, DatumFilter, FIRST_SKIPPED_ID, Job, NewJobParams, PreviousRun,
        SKIPPED_ID_END, SkippedRun, db_now,
    },
    pipeline::PipelineSpec,
    plan::{PlannedDatum, PlannedFile},
    status::{DatumStatus, JobStatus},
};

const LEASE: i64 = 30_000;

fn spec(name: &str, incremental: bool) -> PipelineSpec {
    let mut spec = falconeri_common::db::testing::spec(name, 2, 1);
    spec.incremental = incremental;
    spec
}

fn file(name: &str, version: &str) -> PlannedFile {
    PlannedFile {
        uri: format!("file:///in/{name}"),
        local_path: format!("in/{name}"),
        identity: format!("1 mtime:{version}"),
    }
}

/// One datum per `(name, version)`, with its keys for `spec`.
fn datums(
    spec: &PipelineSpec,
    files: &[(&str, &str)],
) -> (Vec<PlannedDatum>, Vec<Option<DatumKeys>>) {
    let transform = TransformFingerprint::of(spec);
    files
        .iter()
        .map(|(name, version)| {
            let datum = PlannedDatum {
                files: vec![file(name, version)],
            };
            let keys = DatumHasher::of(&transform, &datum.files);
            (datum, Some(keys))
        })
        .unzip()
}

fn begin(conn: &mut DbConn, spec: &PipelineSpec, name: &str) -> Job {
    let now = db_now(conn).unwrap();
    Job::begin_planning(
        conn,
        NewJobParams {
            spec,
            retry_of: None,
            worker_token: &format!("token-{name}"),
            name,
        },
        now,
        now + LEASE,
    )
    .unwrap()
}

fn append(conn: &mut DbConn, job: &Job, batch: &DatumBatch) {
    let now = db_now(conn).unwrap();
    Job::append_datums(conn, job.id, batch, now, now + LEASE).unwrap();
}

/// Plans `files` as one batch per `per_batch` datums, and finishes planning.
fn plan(
    conn: &mut DbConn,
    spec: &PipelineSpec,
    name: &str,
    files: &[(&str, &str)],
    per_batch: usize,
) -> Job {
    let job = begin(conn, spec, name);
    let (all, keys) = datums(spec, files);
    for (datums, keys) in all.chunks(per_batch).zip(keys.chunks(per_batch)) {
        let batch = DatumBatch {
            datums: datums.to_vec(),
            keys: keys.to_vec(),
            ..DatumBatch::default()
        };
        append(conn, &job, &batch);
    }
    Job::finish_planning(conn, job.id).unwrap()
}

/// Runs every ready datum of `job` to `done` (`failing` names end `error`).
fn run_all(conn: &mut DbConn, job: &Job, failing: &[&str]) {
    let now = db_now(conn).unwrap();
    Job::mark_running(conn, job.id, now).unwrap();
    while let Some(datum) = Datum::reserve_next(conn, job.id, "w", now, LEASE, None).unwrap() {
        let claim = datum.claim().unwrap();
        let files = Datum::input_files(conn, datum.id).unwrap();
        if failing.iter().any(|name| files[0].uri.ends_with(name)) {
            Datum::mark_error(conn, datum.id, &claim, "", "boom", now).unwrap();
        } else {
            Datum::mark_done(conn, datum.id, &claim, "", &[], now, |_| Ok(Vec::new())).unwrap();
        }
    }
    Job::finish_if_complete(conn, job.id, now).unwrap();
}

fn shown(conn: &mut DbConn, job: &Job, status: DatumStatus) -> Vec<Datum> {
    let filter = DatumFilter {
        status: Some(status),
        ..DatumFilter::default()
    };
    Datum::list_filtered(conn, job.id, &filter, 1_000).unwrap()
}

/// Names of the files of a job's datums in `status`.
fn names(conn: &mut DbConn, job: &Job, status: DatumStatus) -> Vec<String> {
    let mut names = Vec::new();
    for datum in shown(conn, job, status) {
        for file in Datum::input_files(conn, datum.id).unwrap() {
            names.push(file.uri.trim_start_matches("file:///in/").to_owned());
        }
    }
    names.sort();
    names
}

#[test]
fn an_incremental_job_skips_what_an_earlier_job_computed() {
    for db in TestDb::all() {
        let conn = &mut db.pool.get().unwrap();
        let first = spec("incr", false);
        let job1 = plan(
            conn,
            &first,
            "incr-1",
            &[("a", "1"), ("b", "1"), ("c", "1"), ("d", "1")],
            3,
        );
        run_all(conn, &job1, &["d"]);
        assert_eq!(Job::find(conn, job1.id).unwrap().status(), JobStatus::Error);

        // Another pipeline with the same transform and inputs is not an
        // earlier run of this one.
        let other = plan(conn, &spec("other", true), "other-1", &[("a", "1")], 3);
        assert_eq!(other.skipped_count, 0, "{db:?}");

        // b changed, c vanished, d failed before, e is new; a is unchanged.
        let second = spec("incr", true);
        let files = [("a", "1"), ("b", "2"), ("d", "1"), ("e", "1")];
        let job2 = plan(conn, &second, "incr-2", &files, 2);
        assert_eq!(job2.skipped_count, 1, "{db:?}");
        assert_eq!(job2.datum_count, 4);
        assert_eq!(job2.previous_job_id, Some(job1.id));
        assert_eq!(job2.vanished_count, Some(1), "c's datum vanished");
        let skipped = shown(conn, &job2, DatumStatus::Skipped);
        assert_eq!(skipped.len(), 1);
        let ran = shown(conn, &job1, DatumStatus::Done);
        let a1 = ran
            .iter()
            .find(|d| d.fingerprint == skipped[0].fingerprint)
            .unwrap();
        assert_eq!(skipped[0].skipped_from, Some(a1.id));
        assert_eq!(skipped[0].skipped_from_job, Some(job1.id));
        assert_eq!(skipped[0].shown_status(), DatumStatus::Skipped);
        assert_eq!(skipped[0].ready_order, None);
        // The skipped datum has no input rows of its own.
        assert!(Datum::input_files(conn, skipped[0].id).unwrap().is_empty());
        assert_eq!(names(conn, &job2, DatumStatus::Ready), ["b", "d", "e"]);
        assert!(shown(conn, &job2, DatumStatus::Done).is_empty());
        let counts = Job::counts(conn, job2.id).unwrap();
        assert_eq!((counts.ready, counts.done, counts.skipped), (3, 0, 1));

        let (vanished, next) = Job::vanished(conn, job2.id, 0, 10).unwrap();
        assert_eq!(next, None);
        assert_eq!(vanished.len(), 1);
        assert_eq!(vanished[0].inputs, ["file:///in/c"]);
        assert_eq!(vanished[0].ran_in_job_id, job1.id);

        // A third run over the same files skips everything that is done,
        // pointing at the datums that ran (not at job 2's skipped one).
        let job2 = Job::find(conn, job2.id).unwrap();
        run_all(conn, &job2, &[]);
        let job3 = plan(conn, &second, "incr-3", &files, 1);
        assert_eq!(job3.skipped_count, 4, "{db:?}");
        for datum in shown(conn, &job3, DatumStatus::Skipped) {
            assert!([job1.id, job2.id].contains(&datum.skipped_from_job.unwrap()));
            let from = Datum::find(conn, datum.skipped_from.unwrap()).unwrap();
            assert_eq!(from.status(), DatumStatus::Done);
            assert_eq!(from.skipped_from, None);
        }
        assert_eq!(job3.vanished_count, Some(0));
        let now = db_now(conn).unwrap();
        let job3 = Job::finish_without_workers(conn, job3.id, now).unwrap();
        assert_eq!(job3.status(), JobStatus::Done);
        assert!(job3.started_at.is_some() && job3.finished_at.is_some());

        // A job that is not incremental runs everything.
        let job4 = plan(conn, &first, "incr-4", &files, 4);
        assert_eq!((job4.skipped_count, job4.vanished_count), (0, None));
        let job4 = Job::finish_without_workers(conn, job4.id, now).unwrap();
        assert_eq!(job4.status(), JobStatus::Ready, "it has work");
    }
}

/// A datum whose files span two batches gets its keys with the second, and
/// is skipped then if they match.
#[test]
fn a_datum_spanning_batches_is_matched_when_it_closes() {
    for db in TestDb::all() {
        let conn = &mut db.pool.get().unwrap();
        let spec = spec("span", true);
        let transform = TransformFingerprint::of(&spec);
        let whole = [file("x/1", "1"), file("x/2", "1"), file("x/3", "1")];
        let keys = DatumHasher::of(&transform, &whole);
        let plan_split = |conn: &mut DbConn, name: &str| {
            let job = begin(conn, &spec, name);
            let first = DatumBatch {
                datums: vec![PlannedDatum {
                    files: whole[..2].to_vec(),
                }],
                ..DatumBatch::default()
            };
            append(conn, &job, &first);
            let second = DatumBatch {
                continued: whole[2..].to_vec(),
                continued_keys: Some(keys.clone()),
                ..DatumBatch::default()
            };
            append(conn, &job, &second);
            Job::finish_planning(conn, job.id).unwrap()
        };
        let job1 = plan_split(conn, "span-1");
        assert_eq!(job1.skipped_count, 0);
        let datum = &shown(conn, &job1, DatumStatus::Ready)[0];
        assert_eq!(datum.fingerprint.as_ref(), Some(&keys.fingerprint));
        assert_eq!(Datum::input_files(conn, datum.id).unwrap().len(), 3);
        run_all(conn, &job1, &[]);

        let job2 = plan_split(conn, "span-2");
        assert_eq!(job2.skipped_count, 1, "{db:?}");
        let skipped = &shown(conn, &job2, DatumStatus::Skipped)[0];
        assert_eq!(skipped.ready_order, None);
        assert_eq!(skipped.skipped_from_job, Some(job1.id));
        assert!(!Job::has_ready_datums(conn, job2.id).unwrap());
    }
}

/// The look-up of a batch's fingerprints can use the partial index
/// `datums_done_fingerprint` (its terms are the statement's) and, on SQLite,
/// does: no scan of an earlier job's datums.
#[test]
fn matches_are_looked_up_through_the_partial_index() {
    // The statement `find_matches!` sends, values inlined.
    let sql = "SELECT fingerprint, id, job_id FROM datums \
               WHERE fingerprint IN ('x', 'y') \
               AND datums.status = 'done' AND datums.skipped_from IS NULL";
    for db in TestDb::all() {
        let conn = &mut db.pool.get().unwrap();
        let plan = match conn {
            DbConn::Sqlite(c) => {
                #[derive(diesel::QueryableByName)]
                struct Row {
                    #[diesel(sql_type = diesel::sql_types::Text)]
                    detail: String,
                }
                use diesel::RunQueryDsl;
                let rows: Vec<Row> = diesel::sql_query(format!("EXPLAIN QUERY PLAN {sql}"))
                    .load(c)
                    .unwrap();
                rows.into_iter()
                    .map(|r| r.detail)
                    .collect::<Vec<_>>()
                    .join("\n")
            }
            DbConn::Postgres(c) => {
                #[derive(diesel::QueryableByName)]
                struct Row {
                    #[diesel(sql_type = diesel::sql_types::Text, column_name = "QUERY PLAN")]
                    line: String,
                }
                use diesel::{RunQueryDsl, connection::SimpleConnection};
                c.batch_execute("SET enable_seqscan = off").unwrap();
                let rows: Vec<Row> = diesel::sql_query(format!("EXPLAIN {sql}")).load(c).unwrap();
                rows.into_iter()
                    .map(|r| r.line)
                    .collect::<Vec<_>>()
                    .join("\n")
            }
        };
        assert!(plan.contains("datums_done_fingerprint"), "{db:?}: {plan}");
    }
}

/// Skipped datums are stored as runs: an unchanged rerun over several
/// batches is one row of `skipped_runs`, whatever its size, and each of
/// its datums still has an id of its own that `Datum::find` and the
/// listings answer, pointing at the datum that ran. A run chains: a later
/// job over a job that skipped everything points at the first job's
/// datums, and a file removed then is vanished with the datum it ran as.
#[test]
fn skipped_datums_are_runs_and_still_datums() {
    for db in TestDb::all() {
        let conn = &mut db.pool.get().unwrap();
        let spec = spec("runs", true);
        let names: Vec<String> = (0..30).map(|i| format!("f{i:02}")).collect();
        let files: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
        let job1 = plan(conn, &spec, "runs-1", &files, 7);
        run_all(conn, &job1, &[]);
        let ran = shown(conn, &job1, DatumStatus::Done);
        assert_eq!(ran.len(), 30);

        // Unchanged, in five batches: one run.
        let job2 = plan(conn, &spec, "runs-2", &files, 7);
        assert_eq!(job2.skipped_count, 30, "{db:?}");
        assert_eq!(SkippedRun::count(conn, job2.id).unwrap(), 1, "{db:?}");
        assert!(!Job::has_ready_datums(conn, job2.id).unwrap());
        let counts = Job::counts(conn, job2.id).unwrap();
        assert_eq!((counts.done, counts.skipped), (0, 30), "{db:?}");
        let skipped = shown(conn, &job2, DatumStatus::Skipped);
        assert_eq!(skipped.len(), 30);
        for (datum, from) in skipped.iter().zip(&ran) {
            assert_eq!(datum.job_id, job2.id);
            assert_eq!(datum.skipped_from, Some(from.id), "{db:?}");
            assert_eq!(datum.skipped_from_job, Some(job1.id));
            assert_eq!(datum.fingerprint, from.fingerprint);
            assert_eq!(datum.shown_status(), DatumStatus::Skipped);
            // Its own id: no row of `datums` has it, `find` answers it.
            assert!(ran.iter().all(|r| r.id != datum.id));
            assert_eq!(&Datum::find(conn, datum.id).unwrap(), datum);
        }
        // Paged listing: ids ascending, no datum twice.
        let filter = DatumFilter {
            after: Some(skipped[9].id),
            ..DatumFilter::default()
        };
        let page = Datum::list_filtered(conn, job2.id, &filter, 5).unwrap();
        let ids: Vec<i64> = page.iter().map(|d| d.id).collect();
        let want: Vec<i64> = skipped[10..15].iter().map(|d| d.id).collect();
        assert_eq!(ids, want, "{db:?}");
        assert!(shown(conn, &job2, DatumStatus::Done).is_empty());

        // New datums planned after the reserved ids never take one.
        let mut more = files.clone();
        more.push(("g", "1"));
        let job3 = plan(conn, &spec, "runs-3", &more, 7);
        assert_eq!(job3.skipped_count, 30);
        let fresh = shown(conn, &job3, DatumStatus::Ready);
        assert_eq!(fresh.len(), 1);
        assert!(skipped.iter().all(|d| d.id != fresh[0].id));
        assert_eq!(Datum::find(conn, fresh[0].id).unwrap().id, fresh[0].id);
        // All of job 3's datums, rows and runs together, in id order.
        let all = Datum::list(conn, job3.id, None, 1_000).unwrap();
        assert_eq!(all.len(), 31);
        assert!(all.windows(2).all(|w| w[0].id < w[1].id));

        // Job 4 drops f05 and f06 against job 3 (whose datums were
        // skipped for job 1's): they are vanished, ran in job 1.
        let fewer: Vec<(&str, &str)> = more
            .iter()
            .copied()
            .filter(|(n, _)| *n != "f05" && *n != "f06")
            .collect();
        run_all(conn, &job3, &[]);
        let job4 = plan(conn, &spec, "runs-4", &fewer, 7);
        assert_eq!(job4.previous_job_id, Some(job3.id));
        assert_eq!(job4.vanished_count, Some(2), "{db:?}");
        assert_eq!(job4.skipped_count, 29);
        // Three runs now: before and after the gap of f05 and f06, and g (ran in job 3).
        assert_eq!(SkippedRun::count(conn, job4.id).unwrap(), 3, "{db:?}");
        let (vanished, next) = Job::vanished(conn, job4.id, 0, 10).unwrap();
        assert_eq!(next, None);
        let got: Vec<(i64, i64)> = vanished
            .iter()
            .map(|v| (v.ran_as_datum_id, v.ran_in_job_id))
            .collect();
        assert_eq!(
            got,
            vec![(ran[5].id, job1.id), (ran[6].id, job1.id)],
            "{db:?}"
        );
        let skipped3 = shown(conn, &job3, DatumStatus::Skipped);
        assert_eq!(vanished[0].datum_id, skipped3[5].id);
        assert_eq!(vanished[0].inputs, vec!["file:///in/f05".to_owned()]);
    }
}

/// One batch whose skipped datums make two runs (a datum runs between
/// them): both are stored, both are counted and listed as skipped, and
/// neither is vanished. The end-to-end test's second run, in the database.
#[test]
fn one_batch_with_two_runs_keeps_both() {
    for db in TestDb::all() {
        let conn = &mut db.pool.get().unwrap();
        let spec = spec("two-runs", true);
        let job1 = plan(
            conn,
            &spec,
            "two-runs-1",
            &[("a", "1"), ("b", "1"), ("c", "1"), ("d", "1")],
            4,
        );
        run_all(conn, &job1, &[]);
        // b changed, c removed, e added: a and d are skipped, in two runs.
        let files = [("a", "1"), ("b", "2"), ("d", "1"), ("e", "1")];
        let job2 = plan(conn, &spec, "two-runs-2", &files, 4);
        assert_eq!(job2.skipped_count, 2, "{db:?}");
        assert_eq!(SkippedRun::count(conn, job2.id).unwrap(), 2, "{db:?}");
        let skipped = shown(conn, &job2, DatumStatus::Skipped);
        let from: Vec<i64> = skipped.iter().map(|d| d.skipped_from.unwrap()).collect();
        let ran = shown(conn, &job1, DatumStatus::Done);
        assert_eq!(from, vec![ran[0].id, ran[3].id], "{db:?}");
        assert_eq!(names(conn, &job2, DatumStatus::Ready), ["b", "e"]);
        let counts = Job::counts(conn, job2.id).unwrap();
        assert_eq!((counts.ready, counts.skipped), (2, 2), "{db:?}");
        assert_eq!(job2.vanished_count, Some(1), "only c vanished: {db:?}");
        let (vanished, _) = Job::vanished(conn, job2.id, 0, 10).unwrap();
        assert_eq!(vanished.len(), 1);
        assert_eq!(vanished[0].inputs, ["file:///in/c"]);
    }
}

/// Plans `files` like [`plan`], but as the server does: each batch first
/// matched against the previous run read in order (`PreviousRun`), the
/// index asked only for the rest.
fn plan_in_order(
    conn: &mut DbConn,
    spec: &PipelineSpec,
    name: &str,
    files: &[(&str, &str)],
    per_batch: usize,
) -> (Job, usize) {
    let job = begin(conn, spec, name);
    let mut previous = PreviousRun::open(conn, &job).unwrap();
    let known = append_matched(conn, &job, spec, files, per_batch, previous.as_mut());
    (Job::finish_planning(conn, job.id).unwrap(), known)
}

/// Appends `files`' datums to `job` in batches of `per_batch`, each first
/// matched against `previous` when there is one (as the server does), and
/// answers how many datums it matched.
fn append_matched(
    conn: &mut DbConn,
    job: &Job,
    spec: &PipelineSpec,
    files: &[(&str, &str)],
    per_batch: usize,
    mut previous: Option<&mut PreviousRun>,
) -> usize {
    let (all, keys) = datums(spec, files);
    let (mut first_seq, mut known) = (0, 0);
    for (datums, keys) in all.chunks(per_batch).zip(keys.chunks(per_batch)) {
        let mut batch = DatumBatch {
            datums: datums.to_vec(),
            keys: keys.to_vec(),
            ..DatumBatch::default()
        };
        if let Some(previous) = previous.as_deref_mut() {
            previous.fill(conn, first_seq, &mut batch).unwrap();
        }
        known +=
            batch.known.iter().flatten().count() + usize::from(batch.continued_known.is_some());
        append(conn, job, &batch);
        first_seq += i64::try_from(datums.len()).unwrap();
    }
    known
}

/// The previous run read in order matches the unchanged datums without
/// the index, pointing where the index would (at the datum that ran, also
/// through a run of skipped datums), and leaves changed and new ones to the
/// index; a removal shifts the rest, which is still matched.
#[test]
fn the_previous_run_read_in_order_matches_like_the_index() {
    for db in TestDb::all() {
        let conn = &mut db.pool.get().unwrap();
        let spec = spec("order", true);
        let file_names: Vec<String> = (0..40).map(|i| format!("f{i:02}")).collect();
        let files: Vec<(&str, &str)> = file_names.iter().map(|n| (n.as_str(), "1")).collect();
        let (job1, known) = plan_in_order(conn, &spec, "order-1", &files, 7);
        assert_eq!((job1.skipped_count, known), (0, 0), "no previous run");
        run_all(conn, &job1, &["f03"]);
        let ran = shown(conn, &job1, DatumStatus::Done);

        // f03 failed before, f10 changed, f20 removed, g is new.
        let mut second: Vec<(&str, &str)> = files
            .iter()
            .copied()
            .filter(|(n, _)| *n != "f20")
            .map(|(n, v)| if n == "f10" { (n, "2") } else { (n, v) })
            .collect();
        second.push(("g", "1"));
        let (job2, known) = plan_in_order(conn, &spec, "order-2", &second, 7);
        assert_eq!(
            known, 37,
            "{db:?}: all but f03, f10 and g from the previous run"
        );
        assert_eq!(job2.skipped_count, 37, "{db:?}");
        assert_eq!(names(conn, &job2, DatumStatus::Ready), ["f03", "f10", "g"]);
        assert_eq!(job2.vanished_count, Some(1), "{db:?}");
        for datum in shown(conn, &job2, DatumStatus::Skipped) {
            let from = ran.iter().find(|r| r.fingerprint == datum.fingerprint);
            assert_eq!(datum.skipped_from, from.map(|r| r.id), "{db:?}");
            assert_eq!(datum.skipped_from_job, Some(job1.id));
        }

        // Job 3 over job 2 (mostly runs): matched through the runs, at
        // the datums that ran in job 1, and f03, f10 and g in job 2.
        let job2 = Job::find(conn, job2.id).unwrap();
        run_all(conn, &job2, &[]);
        let (job3, known) = plan_in_order(conn, &spec, "order-3", &second, 5);
        assert_eq!((job3.skipped_count, known), (40, 40), "{db:?}");
        assert_eq!(job3.vanished_count, Some(0), "{db:?}");
        for datum in shown(conn, &job3, DatumStatus::Skipped) {
            let from = Datum::find(conn, datum.skipped_from.unwrap()).unwrap();
            assert_eq!(from.status(), DatumStatus::Done, "{db:?}");
            assert_eq!(from.skipped_from, None, "it ran");
            assert_eq!(from.fingerprint, datum.fingerprint);
            assert_eq!(Some(from.job_id), datum.skipped_from_job);
        }
    }
}

/// Skipped datums take their ids from a range of their own, 2^52 up
/// (`FIRST_SKIPPED_ID`), in one block per batch, not from the `datums`
/// sequence: the ids are there, below 2^53, consecutive over an unchanged
/// rerun of several batches, and still answered by `Datum::find` and the
/// listing; a datum planned after them gets an ordinary row id.
#[test]
fn skipped_datums_take_ids_from_their_own_range() {
    for db in TestDb::all() {
        let conn = &mut db.pool.get().unwrap();
        let spec = spec("id-range", true);
        let names: Vec<String> = (0..12).map(|i| format!("f{i:02}")).collect();
        let files: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
        let job1 = plan(conn, &spec, "id-range-1", &files, 5);
        run_all(conn, &job1, &[]);
        let mut more = files.clone();
        more.push(("new", "1"));
        let job2 = plan(conn, &spec, "id-range-2", &more, 5);
        let skipped = shown(conn, &job2, DatumStatus::Skipped);
        assert_eq!(skipped.len(), 12, "{db:?}");
        let ids: Vec<i64> = skipped.iter().map(|d| d.id).collect();
        let want: Vec<i64> = (FIRST_SKIPPED_ID..FIRST_SKIPPED_ID + 12).collect();
        assert_eq!(ids, want, "{db:?}: one block per batch, the first ones");
        assert!(ids.iter().all(|id| *id < SKIPPED_ID_END));
        assert_eq!(SkippedRun::count(conn, job2.id).unwrap(), 1, "{db:?}");
        for datum in &skipped {
            assert_eq!(&Datum::find(conn, datum.id).unwrap(), datum, "{db:?}");
        }
        let fresh = shown(conn, &job2, DatumStatus::Ready);
        assert_eq!(fresh.len(), 1);
        assert!(fresh[0].id < 1_000, "{db:?}: a row id from the sequence");
        // Rows first, then the skipped datums, in id order.
        let all = Datum::list(conn, job2.id, None, 100).unwrap();
        assert_eq!(all.len(), 13);
        assert_eq!(all[0].id, fresh[0].id);
        assert!(all.windows(2).all(|w| w[0].id < w[1].id));
        // The next job's block follows.
        let job3 = plan(conn, &spec, "id-range-3", &files, 100);
        let skipped3 = shown(conn, &job3, DatumStatus::Skipped);
        assert_eq!(skipped3[0].id, FIRST_SKIPPED_ID + 12, "{db:?}");
    }
}

/// Two incremental jobs planned at the same time on two connections (as
/// two requests, or two falconerid replicas on one database, would), their
/// batches interleaved one by one: every skipped datum gets an id no other
/// datum has, each id finds its own datum, and each job's runs hold
/// exactly its skipped datums.
#[test]
fn concurrent_planners_take_distinct_skipped_ids() {
    use std::sync::{Arc, Barrier};

    const FILES: usize = 60;
    const PER_BATCH: usize = 3;
    for db in TestDb::all() {
        let names: Vec<String> = (0..FILES).map(|i| format!("f{i:02}")).collect();
        let files: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
        let specs = [spec("side-a", true), spec("side-b", true)];
        {
            let conn = &mut db.pool.get().unwrap();
            for spec in &specs {
                let name = format!("{}-1", spec.pipeline.name);
                let job = plan(conn, spec, &name, &files, 25);
                run_all(conn, &job, &[]);
            }
        }
        let barrier = Arc::new(Barrier::new(2));
        let jobs: Vec<Job> = std::thread::scope(|scope| {
            let handles: Vec<_> = specs
                .iter()
                .map(|spec| {
                    let (pool, barrier, files) = (&db.pool, barrier.clone(), &files);
                    scope.spawn(move || {
                        let conn = &mut pool.get().unwrap();
                        let job = begin(conn, spec, &format!("{}-2", spec.pipeline.name));
                        let (all, keys) = datums(spec, files);
                        for (datums, keys) in all.chunks(PER_BATCH).zip(keys.chunks(PER_BATCH)) {
                            let batch = DatumBatch {
                                datums: datums.to_vec(),
                                keys: keys.to_vec(),
                                ..DatumBatch::default()
                            };
                            // Both planners write a batch at the same moment.
                            barrier.wait();
                            append(conn, &job, &batch);
                        }
                        Job::finish_planning(conn, job.id).unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let conn = &mut db.pool.get().unwrap();
        let mut seen = std::collections::HashSet::new();
        for job in &jobs {
            assert_eq!(job.skipped_count, FILES as i64, "{db:?}");
            let skipped = shown(conn, job, DatumStatus::Skipped);
            assert_eq!(skipped.len(), FILES, "{db:?}");
            for (seq, datum) in skipped.iter().enumerate() {
                assert!(seen.insert(datum.id), "{db:?}: id {} twice", datum.id);
                assert!((FIRST_SKIPPED_ID..SKIPPED_ID_END).contains(&datum.id));
                let found = Datum::find(conn, datum.id).unwrap();
                assert_eq!((found.job_id, found.seq), (job.id, seq as i64), "{db:?}");
            }
        }
    }
}

/// How [`plan_paged`] feeds the previous run's pages.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Feed {
    /// Read in line with each batch.
    InLine,
    /// Read ahead on another connection, in another thread (as falconerid
    /// does), the channel closing after this many pages (`usize::MAX`:
    /// all of them).
    Ahead(usize),
}

/// Plans `files` like [`plan_in_order`], with the previous run read in
/// pages of `page` seqs, fed as `feed` says. Returns the job and how many
/// datums the previous run matched without the index.
fn plan_paged(
    db: &TestDb,
    spec: &PipelineSpec,
    name: &str,
    files: &[(&str, &str)],
    (per_batch, page, feed): (usize, i64, Feed),
) -> (Job, usize) {
    let conn = &mut db.pool.get().unwrap();
    let job = begin(conn, spec, name);
    let mut previous = PreviousRun::open_paged(conn, &job, page).unwrap();
    let reader = match (&mut previous, feed) {
        (Some(previous), Feed::Ahead(pages)) => {
            let (mut reader, tx) = previous.read_ahead(2);
            let pool = db.pool.clone();
            Some(std::thread::spawn(move || {
                let conn = &mut pool.get().unwrap();
                for _ in 0..pages {
                    let Some(page) = reader.next_page(conn).unwrap() else {
                        break;
                    };
                    if tx.blocking_send(Ok(page)).is_err() {
                        break;
                    }
                }
            }))
        }
        _ => None,
    };
    let known = append_matched(conn, &job, spec, files, per_batch, previous.as_mut());
    drop(previous);
    if let Some(reader) = reader {
        reader.join().unwrap();
    }
    (Job::finish_planning(conn, job.id).unwrap(), known)
}

/// The previous run read a page at a time, larger than a page, changed
/// at the pages' edges (pages of 4: f03 ends page 0 and f04 starts page 1,
/// f08 starts page 2 and is removed, a new file comes between f11 and f12,
/// and f20 ..= f28 are removed, a gap wider than the window reaches), read
/// in line, read ahead, and read ahead by a reader that stops after two
/// pages (the rest is read in line): every time the same datums are
/// skipped, each pointing at the datum that ran with its fingerprint; and
/// the first files again, against that run, are all skipped.
#[test]
fn the_previous_run_in_pages_matches_across_page_edges() {
    // All 28 unchanged but f29, just past the removed stretch: wider than
    // the window reaches, so f29 goes to the index, and f30 on are found
    // again from where it matched.
    const KNOWN_CHANGED: usize = 27;
    for db in TestDb::all() {
        let spec = spec("pages", true);
        let file_names: Vec<String> = (0..40).map(|i| format!("f{i:02}")).collect();
        let files: Vec<(&str, &str)> = file_names.iter().map(|n| (n.as_str(), "1")).collect();
        let (job1, _) = plan_paged(&db, &spec, "pages-1", &files, (6, 4, Feed::InLine));
        let conn = &mut db.pool.get().unwrap();
        run_all(conn, &job1, &[]);
        let ran = shown(conn, &job1, DatumStatus::Done);
        let mut changed: Vec<(&str, &str)> = Vec::new();
        for (name, version) in &files {
            match *name {
                "f03" | "f04" => changed.push((name, "2")),
                "f08" => {}
                n if ("f20"..="f28").contains(&n) => {}
                "f12" => {
                    changed.push(("f11b", "1"));
                    changed.push((name, version));
                }
                _ => changed.push((name, version)),
            }
        }
        for (i, feed) in [Feed::InLine, Feed::Ahead(usize::MAX), Feed::Ahead(2)]
            .into_iter()
            .enumerate()
        {
            let name = format!("pages-changed-{i}");
            let (job, known) = plan_paged(&db, &spec, &name, &changed, (5, 4, feed));
            assert_eq!(job.skipped_count, 28, "{db:?} {feed:?}");
            // In line, what the pages match is fixed; read ahead, pages
            // past the one a batch waits for may not be there yet, and
            // what they would have matched goes to the index instead.
            if feed == Feed::InLine {
                assert_eq!(known, KNOWN_CHANGED, "{db:?}: from the pages");
            }
            assert_eq!(
                names(conn, &job, DatumStatus::Ready),
                ["f03", "f04", "f11b"],
                "{db:?} {feed:?}"
            );
            assert_eq!(job.vanished_count, Some(10), "{db:?} {feed:?}");
            for datum in shown(conn, &job, DatumStatus::Skipped) {
                let from = ran.iter().find(|r| r.fingerprint == datum.fingerprint);
                assert_eq!(datum.skipped_from, from.map(|r| r.id), "{db:?} {feed:?}");
            }
            // The first files again, against that run (which skipped
            // most, so its pages are mostly runs): all skipped, those it
            // lacks or had changed through the index.
            let name = format!("pages-same-{i}");
            let (job, known) = plan_paged(&db, &spec, &name, &files, (7, 4, feed));
            assert_eq!(job.skipped_count, 40, "{db:?} {feed:?}");
            assert_eq!(job.vanished_count, Some(0), "{db:?} {feed:?}");
            if feed == Feed::InLine {
                assert_eq!(known, 17, "{db:?}: from the pages");
            }
        }
    }
}
