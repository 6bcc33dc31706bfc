//! Schedules: when each one's next run is due, and the guarded write that
//! lets exactly one replica take a tick.

use diesel::{
    ExpressionMethods, OptionalExtension, QueryDsl, RunQueryDsl, SelectableHelper,
    dsl::min,
    prelude::{Insertable, Queryable, Selectable},
};

use super::{ModelError, ModelResult};
use crate::{
    Millis,
    db::{DbConn, schema::*, with_conn},
};

/// A schedule row.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = schedules)]
pub struct Schedule {
    pub id: i64,
    pub name: String,
    pub cron: String,
    pub timezone: String,
    /// `job` or `workflow`.
    pub target_kind: String,
    /// The validated pipeline spec or workflow, as JSON.
    pub target: String,
    pub incremental: bool,
    pub paused: bool,
    /// The tick due next; NULL while paused or when no tick is left.
    pub next_run_at: Option<Millis>,
    pub last_run_at: Option<Millis>,
    pub last_run: Option<String>,
    pub last_error: Option<String>,
    pub created_at: Millis,
}

/// What [`Schedule::create`] inserts.
#[derive(Debug, Insertable)]
#[diesel(table_name = schedules)]
pub struct NewSchedule<'a> {
    pub name: &'a str,
    pub cron: &'a str,
    pub timezone: &'a str,
    pub target_kind: &'a str,
    pub target: &'a str,
    pub incremental: bool,
    pub paused: bool,
    pub next_run_at: Option<Millis>,
    pub created_at: Millis,
}

impl Schedule {
    /// Inserts a schedule; a taken name is a conflict.
    pub fn create(conn: &mut DbConn, new: &NewSchedule<'_>) -> ModelResult<Schedule> {
        let taken = with_conn!(conn, c => schedules::table
            .filter(schedules::name.eq(new.name))
            .select(schedules::id)
            .first::<i64>(c)
            .optional())?;
        if taken.is_some() {
            return Err(ModelError::Conflict(format!(
                "a schedule is already named {:?}",
                new.name
            )));
        }
        Ok(with_conn!(conn, c => diesel::insert_into(schedules::table)
            .values(new)
            .returning(Schedule::as_returning())
            .get_result(c))?)
    }

    /// One schedule by name.
    pub fn find_by_name(conn: &mut DbConn, name: &str) -> ModelResult<Schedule> {
        with_conn!(conn, c => schedules::table
            .filter(schedules::name.eq(name))
            .select(Schedule::as_select())
            .first(c)
            .optional())?
        .ok_or_else(|| ModelError::NotFound(format!("schedule {name:?}")))
    }

    /// Every schedule, by name.
    pub fn list(conn: &mut DbConn) -> ModelResult<Vec<Schedule>> {
        Ok(with_conn!(conn, c => schedules::table
            .order(schedules::name)
            .select(Schedule::as_select())
            .load(c))?)
    }

    /// Deletes a schedule (its past runs stay). False if there was none.
    pub fn delete(conn: &mut DbConn, name: &str) -> ModelResult<bool> {
        let n = with_conn!(conn, c => diesel::delete(
            schedules::table.filter(schedules::name.eq(name))
        )
        .execute(c))?;
        Ok(n == 1)
    }

    /// Pauses a schedule (`next_run_at` cleared) or resumes it with the
    /// given next tick. Returns the schedule as it is now.
    pub fn set_paused(
        conn: &mut DbConn,
        name: &str,
        paused: bool,
        next_run_at: Option<Millis>,
    ) -> ModelResult<Schedule> {
        let updated: Option<Schedule> = with_conn!(conn, c => diesel::update(schedules::table)
            .filter(schedules::name.eq(name))
            .set((
                schedules::paused.eq(paused),
                schedules::next_run_at.eq(next_run_at),
            ))
            .returning(Schedule::as_returning())
            .get_result(c)
            .optional())?;
        updated.ok_or_else(|| ModelError::NotFound(format!("schedule {name:?}")))
    }

    /// The earliest tick due among active schedules.
    pub fn next_due(conn: &mut DbConn) -> ModelResult<Option<Millis>> {
        Ok(with_conn!(conn, c => schedules::table
            .filter(schedules::paused.eq(false))
            .select(min(schedules::next_run_at))
            .first::<Option<Millis>>(c))?)
    }

    /// Active schedules whose tick is due at `now`.
    pub fn list_due(conn: &mut DbConn, now: Millis) -> ModelResult<Vec<Schedule>> {
        Ok(with_conn!(conn, c => schedules::table
            .filter(schedules::paused.eq(false))
            .filter(schedules::next_run_at.le(now))
            .order(schedules::next_run_at)
            .select(Schedule::as_select())
            .load(c))?)
    }

    /// Takes the tick `due` of schedule `id`: moves `next_run_at` from `due`
    /// to `next` with one guarded UPDATE. True for the one caller whose
    /// update changed the row; that caller starts the run.
    #[tracing::instrument(level = "debug", skip(conn))]
    pub fn take_tick(
        conn: &mut DbConn,
        id: i64,
        due: Millis,
        next: Option<Millis>,
        now: Millis,
    ) -> ModelResult<bool> {
        let n = with_conn!(conn, c => diesel::update(schedules::table)
            .filter(schedules::id.eq(id))
            .filter(schedules::paused.eq(false))
            .filter(schedules::next_run_at.eq(due))
            .set((
                schedules::next_run_at.eq(next),
                schedules::last_run_at.eq(Some(now)),
            ))
            .execute(c))?;
        Ok(n == 1)
    }

    /// Records what the last tick started, or why it could not.
    pub fn record_run(
        conn: &mut DbConn,
        id: i64,
        run: Option<&str>,
        error: Option<&str>,
    ) -> ModelResult<()> {
        with_conn!(conn, c => diesel::update(schedules::table)
            .filter(schedules::id.eq(id))
            .set((
                schedules::last_run.eq(run),
                schedules::last_error.eq(error),
            ))
            .execute(c))?;
        Ok(())
    }
}
