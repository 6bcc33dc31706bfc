//! Reads for people browsing jobs (the dashboard, `GET /v1/jobs` filters):
//! jobs by state and name, and a job's newest attempts for a timeline of
//! its workers. None of them is on a worker's path.

use diesel::{
    EscapeExpressionMethods, ExpressionMethods, QueryDsl, RunQueryDsl, SelectableHelper,
    TextExpressionMethods,
};

use super::{Attempt, Job, ModelResult};
use crate::{
    db::{DbConn, schema::*, with_conn},
    status::JobStatus,
};

diesel::define_sql_function! {
    /// SQL `lower`, the same on both databases for ASCII.
    fn lower(text: diesel::sql_types::Text) -> diesel::sql_types::Text;
}

/// Which jobs a listing shows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobFilter {
    pub status: Option<JobStatus>,
    /// Jobs whose name contains this text, ignoring case (taken
    /// literally: `%` and `_` match themselves).
    pub name: Option<String>,
}

impl Job {
    /// The newest `limit` jobs matching `filter`, newest first. A state
    /// uses the `jobs (status)` index; a name is a scan of the jobs table,
    /// which holds one row per job, not per datum.
    #[tracing::instrument(skip(conn))]
    pub fn list_matching(
        conn: &mut DbConn,
        filter: &JobFilter,
        limit: i64,
    ) -> ModelResult<Vec<Job>> {
        Ok(with_conn!(conn, c => {
            let mut query = jobs::table
                .order(jobs::id.desc())
                .limit(limit)
                .select(Job::as_select())
                .into_boxed();
            if let Some(status) = filter.status {
                query = query.filter(jobs::status.eq(status));
            }
            if let Some(name) = &filter.name {
                // Lower-cased on both sides: SQLite's LIKE ignores ASCII case
                // and PostgreSQL's does not, and a search box should not care.
                let pattern = like_pattern(&name.to_lowercase());
                query = query.filter(lower(jobs::name).like(pattern).escape('\\'));
            }
            query.load(c)
        })?)
    }
}

impl Attempt {
    /// The newest `limit` attempts of job `job_id`, newest first: the
    /// tail of the primary key, read backwards and kept to the job.
    #[tracing::instrument(skip(conn))]
    pub fn newest_of_job(conn: &mut DbConn, job_id: i64, limit: i64) -> ModelResult<Vec<Attempt>> {
        Ok(with_conn!(conn, c => attempts::table
            .filter(attempts::job_id.eq(job_id))
            .order(attempts::id.desc())
            .limit(limit)
            .select(Attempt::as_select())
            .load(c))?)
    }
}

/// A LIKE pattern matching names that contain `text` literally.
fn like_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for ch in text.chars() {
        if matches!(ch, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(ch);
    }
    pattern.push('%');
    pattern
}

#[cfg(test)]
mod tests {
    use super::like_pattern;

    #[test]
    fn like_patterns_take_wildcards_literally() {
        assert_eq!(like_pattern("word"), "%word%");
        assert_eq!(like_pattern("a_b%c\\"), "%a\\_b\\%c\\\\%");
        assert_eq!(like_pattern(""), "%%");
    }
}
