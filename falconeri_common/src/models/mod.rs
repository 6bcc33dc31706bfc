//! The repository layer: one method per database job, on both backends.
//!
//! Model methods take a connection and plain facts (the current time from
//! [`db_now`], the set of dead workers) and never call storage, executors or
//! HTTP, so their rules are testable by passing a different clock. They
//! return [`ModelError`], which falconerid maps to HTTP statuses.

pub mod browse;
mod counts;
mod datum;
mod job;
mod logs;
mod previous;
mod schedule;
pub mod session;
mod skipped;
pub mod sql;
pub mod stats;
mod stop_request;
mod workflow;

use diesel::{QueryableByName, RunQueryDsl, sql_types::BigInt};

pub use datum::{
    Attempt, Completed, Datum, DatumFilter, DeadOwners, Frontier, InputFile, OutputFile,
    PodFailure, Report, ReserveWant, Reserved, Retried,
};
pub use job::{Job, NewJobParams};
pub use logs::{
    Appended, ChunkBody, ChunkKey, CutChunk, DEFAULT_MAX_LOG_BYTES, LogChunk, StoredLine,
    decode_lines, encode_lines,
};
pub use previous::PreviousRun;
pub use schedule::{NewSchedule, Schedule};
pub use skipped::{FIRST_SKIPPED_ID, SKIPPED_ID_END, SkippedDatum, SkippedRun};
pub use sql::Clock;
pub use stop_request::JobStopRequest;
pub use workflow::{
    NewWorkflowParams, StepWithJob, Upstream, Workflow, WorkflowStep, step_views, workflow_response,
};
// Where the streamed plan meets the database; defined with the plan.
pub use crate::plan::DatumBatch;

use crate::{
    Millis,
    db::{DbConn, with_conn},
};

/// Rows per multi-row INSERT. PostgreSQL allows 65,535 bind parameters per
/// statement and SQLite 32,766; at most 7 columns × 1,000 rows stays far below.
pub const INSERT_CHUNK: usize = 1_000;

/// What can go wrong in a model method.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{0} not found")]
    NotFound(String),
    /// A stale claim or a state that forbids the change.
    #[error("{0}")]
    Conflict(String),
    /// The `publish` callback of a guarded write failed; nothing was
    /// recorded and the datum is still held.
    #[error("cannot publish outputs: {0:#}")]
    Publish(anyhow::Error),
    #[error("database error")]
    Database(#[from] diesel::result::Error),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl ModelError {
    /// True when PostgreSQL aborted the transaction to break a deadlock
    /// (SQLSTATE 40P01) or could not serialize it (40001): running it again
    /// is the cure.
    pub fn is_deadlock(&self) -> bool {
        use diesel::result::{DatabaseErrorKind, Error};
        match self {
            ModelError::Database(Error::DatabaseError(kind, info)) => {
                matches!(kind, DatabaseErrorKind::SerializationFailure)
                    || info.message().contains("deadlock detected")
            }
            _ => false,
        }
    }
}

/// Turns the unique violation of an INSERT carrying the idempotency key
/// `run_key` into a conflict naming the key: another caller made that run.
pub(crate) fn taken_key(err: diesel::result::Error, run_key: Option<&str>) -> ModelError {
    use diesel::result::{DatabaseErrorKind, Error};
    match (&err, run_key) {
        (Error::DatabaseError(DatabaseErrorKind::UniqueViolation, _), Some(key)) => {
            ModelError::Conflict(format!("a run keyed {key:?} exists already"))
        }
        _ => ModelError::Database(err),
    }
}

/// Result of a model method.
pub type ModelResult<T> = Result<T, ModelError>;

#[derive(QueryableByName)]
struct NowRow {
    #[diesel(sql_type = BigInt)]
    now: i64,
}

/// The database's clock in milliseconds: every lease and deadline is taken
/// from it, so several servers with skewed clocks still agree.
pub fn db_now(conn: &mut DbConn) -> ModelResult<Millis> {
    let sql = match conn.backend() {
        crate::db::Backend::Sqlite => "SELECT CAST(unixepoch('subsec') * 1000 AS BIGINT) AS now",
        crate::db::Backend::Postgres => {
            "SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT) AS now"
        }
    };
    let row: NowRow = with_conn!(conn, c => diesel::sql_query(sql).get_result(c))?;
    Ok(row.now)
}

#[cfg(test)]
mod tests {
    use diesel::result::{DatabaseErrorInformation, DatabaseErrorKind, Error};

    use super::ModelError;

    #[derive(Debug)]
    struct Info(&'static str);

    impl DatabaseErrorInformation for Info {
        fn message(&self) -> &str {
            self.0
        }
        fn details(&self) -> Option<&str> {
            None
        }
        fn hint(&self) -> Option<&str> {
            None
        }
        fn table_name(&self) -> Option<&str> {
            None
        }
        fn column_name(&self) -> Option<&str> {
            None
        }
        fn constraint_name(&self) -> Option<&str> {
            None
        }
        fn statement_position(&self) -> Option<i32> {
            None
        }
    }

    fn database(kind: DatabaseErrorKind, message: &'static str) -> ModelError {
        ModelError::Database(Error::DatabaseError(kind, Box::new(Info(message))))
    }

    #[test]
    fn deadlocks_are_recognized() {
        let deadlock = database(DatabaseErrorKind::Unknown, "deadlock detected");
        assert!(deadlock.is_deadlock());
        assert!(
            database(
                DatabaseErrorKind::SerializationFailure,
                "could not serialize"
            )
            .is_deadlock()
        );
        assert!(!database(DatabaseErrorKind::UniqueViolation, "duplicate key").is_deadlock());
        assert!(!ModelError::Conflict("stale".into()).is_deadlock());
    }
}
