//! Retrying one failed datum of a running job (`POST /v1/datums/{id}/retry`).
//!
//! `error → ready` with one more try: the datum goes to the front of the
//! queue (a requeued `ready_order`) and `max_tries` is raised so that the
//! next attempt is exactly one more. A job that has ended is retried as a
//! whole (`job retry`), which makes a new job.

use diesel::{ExpressionMethods, QueryDsl, RunQueryDsl};

use super::{Datum, Job, ModelError, ModelResult, datum::REQUEUED_BELOW_FRESH};
use crate::{
    Millis,
    db::{DbConn, schema::*, with_conn},
    status::{DatumStatus, JobStatus},
};

impl Datum {
    /// Gives datum `id`, failed in a running job, one more try at `now`.
    /// One guarded statement: the datum must still be `error` and its job
    /// `running` when it runs, so two retries give one try, and a datum of
    /// a job that ended stays as it was (409).
    #[tracing::instrument(skip(conn))]
    pub fn retry_failed(conn: &mut DbConn, id: i64, now: Millis) -> ModelResult<Datum> {
        let running_jobs = jobs::table
            .filter(jobs::status.eq(JobStatus::Running))
            .select(jobs::id);
        // Through the write mutex, like every datum write on SQLite.
        let changed = conn.write_transaction(|conn| -> ModelResult<usize> {
            Ok(with_conn!(conn, c => diesel::update(
            datums::table
                .filter(datums::id.eq(id))
                .filter(datums::status.eq(DatumStatus::Error))
                .filter(datums::job_id.eq_any(running_jobs)),
        )
        .set((
            datums::status.eq(DatumStatus::Ready),
            datums::ready_order.eq(Some(now - REQUEUED_BELOW_FRESH)),
            // The next attempt is the last one unless it is interrupted.
            datums::max_tries.eq(datums::attempt - datums::interrupted + 1),
            datums::owner.eq(None::<String>),
            datums::finished_at.eq(None::<Millis>),
            datums::lease_expires_at.eq(None::<Millis>),
            datums::deadline_at.eq(None::<Millis>),
            datums::updated_at.eq(now),
        ))
        .execute(c))?)
        })?;
        let datum = Datum::find(conn, id)?;
        if changed == 1 {
            return Ok(datum);
        }
        let job = Job::find(conn, datum.job_id)?;
        if job.status != JobStatus::Running {
            return Err(ModelError::Conflict(format!(
                "job {} is {}; retry the job instead (job retry)",
                job.name, job.status
            )));
        }
        Err(ModelError::Conflict(format!(
            "datum {id} is {}; only a failed datum can be retried",
            datum.status
        )))
    }
}
