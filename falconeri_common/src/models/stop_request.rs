//! Requests to stop a job that a `fail_job` rule made: written in the
//! transaction of the worker's report that matched the rule, and finished
//! by whoever gets there first (the report's handler right after, or the
//! babysitter if that falconerid died in between).
//!
//! Lock order: the report's transaction holds its datum rows and then
//! inserts here, a table `Job::stop` never touches; the stop itself (job
//! row, then datum rows) runs in a transaction of its own afterwards. So a
//! report and a stop never wait for each other in a cycle, on PostgreSQL
//! or SQLite. There is no foreign key to `jobs` for the same reason (its
//! check would lock the job row from inside the report's transaction); a
//! request for a job that no longer exists is simply deleted.

use diesel::{
    ExpressionMethods, QueryDsl, RunQueryDsl, SelectableHelper,
    prelude::{Insertable, Queryable, Selectable},
};

use super::ModelResult;
use crate::{
    Millis,
    db::{DbConn, schema::*, with_conn},
};

/// A job a `fail_job` rule asked to stop, and why.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = job_stop_requests)]
pub struct JobStopRequest {
    pub job_id: i64,
    /// The job's error message once stopped.
    pub reason: String,
    pub created_at: Millis,
}

impl JobStopRequest {
    /// Records that job `job_id` must stop with `reason`. The first request
    /// of a job stands; later ones change nothing. Meant to run inside the
    /// transaction that failed the datum, so both or neither are recorded.
    pub fn record(conn: &mut DbConn, job_id: i64, reason: &str, now: Millis) -> ModelResult<()> {
        let row = JobStopRequest {
            job_id,
            reason: reason.to_owned(),
            created_at: now,
        };
        with_conn!(conn, c => diesel::insert_into(job_stop_requests::table)
            .values(&row)
            .on_conflict_do_nothing()
            .execute(c))?;
        Ok(())
    }

    /// The requests not finished yet, oldest first, at most `limit`.
    pub fn pending(conn: &mut DbConn, limit: i64) -> ModelResult<Vec<JobStopRequest>> {
        Ok(with_conn!(conn, c => job_stop_requests::table
            .order(job_stop_requests::created_at)
            .limit(limit)
            .select(JobStopRequest::as_select())
            .load(c))?)
    }

    /// Deletes job `job_id`'s request once the job is stopped (or had
    /// ended anyway).
    pub fn finish(conn: &mut DbConn, job_id: i64) -> ModelResult<()> {
        with_conn!(conn, c => diesel::delete(
            job_stop_requests::table.filter(job_stop_requests::job_id.eq(job_id))
        )
        .execute(c))?;
        Ok(())
    }
}
