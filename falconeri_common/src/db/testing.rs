//! Throwaway databases for tests (feature `testing`): every test gets its own
//! SQLite file or its own PostgreSQL database, migrated and dropped after.
//!
//! PostgreSQL tests need `FALCONERI_TEST_POSTGRES_URL`, an admin URL of a
//! server where databases may be created; `./scripts/test` starts one.

use super::{Backend, DbConn, DbPool};
use crate::{
    models::{Job, NewJobParams, db_now},
    pipeline::PipelineSpec,
    plan::{PlannedDatum, PlannedFile},
};

/// The environment variable naming the PostgreSQL server for tests.
pub const POSTGRES_URL_VAR: &str = "FALCONERI_TEST_POSTGRES_URL";

/// A fresh, migrated database that disappears when dropped.
pub struct TestDb {
    pub pool: DbPool,
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    #[cfg(feature = "postgres")]
    postgres: Option<(String, String)>,
}

impl std::fmt::Debug for TestDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TestDb({})", self.backend().name())
    }
}

impl TestDb {
    /// Which backend this is.
    pub fn backend(&self) -> Backend {
        self.pool.backend()
    }

    /// A new SQLite database in a temporary directory.
    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temporary directory");
        let url = format!("sqlite://{}", dir.path().join("test.sqlite3").display());
        let pool = DbPool::connect(&url, 16).expect("open SQLite");
        pool.run_migrations().expect("migrate SQLite");
        TestDb {
            pool,
            url,
            _dir: Some(dir),
            #[cfg(feature = "postgres")]
            postgres: None,
        }
    }

    /// A new database on the PostgreSQL server named by
    /// `FALCONERI_TEST_POSTGRES_URL`. Panics with instructions when unset:
    /// a skipped PostgreSQL test would hide bugs.
    #[cfg(feature = "postgres")]
    pub fn postgres() -> TestDb {
        let db = TestDb::postgres_unmigrated();
        db.pool.run_migrations().expect("migrate PostgreSQL");
        db
    }

    /// Like [`TestDb::postgres`], without running the migrations.
    #[cfg(feature = "postgres")]
    pub fn postgres_unmigrated() -> TestDb {
        use diesel::{Connection, RunQueryDsl, pg::PgConnection};

        let admin_url = std::env::var(POSTGRES_URL_VAR).unwrap_or_else(|_| {
            panic!(
                "{POSTGRES_URL_VAR} is not set. Run ./scripts/test, which starts a \
                 throwaway PostgreSQL, or point it at a server where tests may create databases."
            )
        });
        let name = format!("falconeri_test_{}", hex::encode(rand::random::<[u8; 6]>()));
        let mut admin = PgConnection::establish(&admin_url).expect("connect to test PostgreSQL");
        diesel::sql_query(format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .expect("create test database");
        let url = replace_database(&admin_url, &name);
        let pool = DbPool::connect(&url, 16).expect("connect to test database");
        TestDb {
            pool,
            url,
            _dir: None,
            postgres: Some((admin_url, name)),
        }
    }

    /// One fresh database per backend this build supports.
    pub fn all() -> Vec<TestDb> {
        vec![
            TestDb::sqlite(),
            #[cfg(feature = "postgres")]
            TestDb::postgres(),
        ]
    }
}

/// `url` with its database name replaced by `name`.
fn replace_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_end = base[scheme_end..]
        .find('/')
        .map(|i| i + scheme_end)
        .unwrap_or(base.len());
    let mut out = format!("{}/{name}", &base[..host_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

#[cfg(feature = "postgres")]
impl Drop for TestDb {
    fn drop(&mut self) {
        use diesel::{Connection, RunQueryDsl, pg::PgConnection};
        if let Some((admin_url, name)) = &self.postgres
            && let Ok(mut admin) = PgConnection::establish(admin_url)
        {
            let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut admin);
        }
    }
}

/// A valid spec reading `file:///in/` (one datum per entry) into
/// `file:///out/`, with the given parallelism and `datum_tries`, and a one
/// hour `job_timeout`.
pub fn spec(name: &str, parallelism: u32, tries: u32) -> PipelineSpec {
    PipelineSpec::from_json(&format!(
        r#"{{
            "pipeline": {{ "name": "{name}" }},
            "transform": {{ "cmd": ["true"], "image": "alpine" }},
            "parallelism_spec": {{ "constant": {parallelism} }},
            "resource_requests": {{ "memory": "64Mi", "cpu": 0.1 }},
            "datum_tries": {tries},
            "job_timeout": "1h",
            "input": {{ "atom": {{ "URI": "file:///in/", "repo": "in", "glob": "/*" }} }},
            "egress": {{ "URI": "file:///out/" }}
        }}"#
    ))
    .expect("test spec is valid")
}

/// `datums` datums of `files_per_datum` input files each, named
/// `in/<datum>/<file>.txt`.
pub fn planned(datums: usize, files_per_datum: usize) -> Vec<PlannedDatum> {
    (0..datums)
        .map(|d| PlannedDatum {
            files: (0..files_per_datum)
                .map(|f| PlannedFile {
                    uri: format!("file:///in/{d}/{f}.txt"),
                    local_path: format!("in/{d}/{f}.txt"),
                    identity: String::new(),
                })
                .collect(),
        })
        .collect()
}

/// Inserts a job named `name` of `datums` and marks it running, as a
/// successful start would.
pub fn create_running_job(
    conn: &mut DbConn,
    spec: &PipelineSpec,
    datums: &[PlannedDatum],
    name: &str,
) -> Job {
    let now = db_now(conn).expect("database clock");
    let job = Job::create(
        conn,
        NewJobParams {
            spec,
            retry_of: None,
            worker_token: &format!("token-{name}"),
            name,
        },
        datums,
        now,
    )
    .expect("create job");
    Job::mark_running(conn, job.id, now).expect("start job")
}

/// How many jobs, datums and input files the database holds, whatever
/// their state: for tests that check nothing was left behind.
pub fn row_counts(conn: &mut DbConn) -> (i64, i64, i64) {
    use diesel::{QueryDsl, RunQueryDsl, dsl::count_star};

    use super::{
        schema::{datums, input_files, jobs},
        with_conn,
    };
    let count = with_conn!(conn, c => (|| -> diesel::QueryResult<(i64, i64, i64)> {
        Ok((
            jobs::table.select(count_star()).first(c)?,
            datums::table.select(count_star()).first(c)?,
            input_files::table.select(count_star()).first(c)?,
        ))
    })());
    count.expect("count rows")
}

#[cfg(test)]
mod tests {
    #[test]
    fn database_names_are_replaced() {
        assert_eq!(
            super::replace_database("postgres://u@h:5432/postgres", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            super::replace_database("postgres://u@h/postgres?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
        assert_eq!(
            super::replace_database("postgres://u@h", "x"),
            "postgres://u@h/x"
        );
    }
}
