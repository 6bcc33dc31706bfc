//! Schedules: when each one's next run is due, and the guarded writes that
//! make each tick's run exactly once: one replica takes a tick, recording
//! it as pending under a lease; the run carries the tick's key
//! ([`Schedule::run_key`]); recording the run clears the pending tick, and a pending
//! tick whose lease ran out (its taker died) is taken over by any replica.

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
    /// A tick taken whose run is not recorded yet.
    pub pending_tick: Option<Millis>,
    /// Who is making the pending tick's run.
    pub pending_token: Option<String>,
    /// Until when the pending tick is its taker's; after, any replica may
    /// take it over.
    pub pending_until: Option<Millis>,
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
    /// The idempotency key of the run of schedule `id`'s tick `tick`,
    /// carried by the job or workflow run it made (`run_key`, unique).
    pub fn run_key(id: i64, tick: Millis) -> String {
        format!("schedule:{id}:{tick}")
    }

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

    /// When the scheduler has something to do next: the earliest tick due
    /// among active schedules with no pending run, or the earliest lease
    /// of a pending run (it may be taken over then). A schedule with a
    /// pending run takes its next tick only once that run is recorded,
    /// which wakes the schedulers (`Change::Schedules`).
    pub fn next_due(conn: &mut DbConn) -> ModelResult<Option<Millis>> {
        let tick = with_conn!(conn, c => schedules::table
            .filter(schedules::paused.eq(false))
            .filter(schedules::pending_tick.is_null())
            .select(min(schedules::next_run_at))
            .first::<Option<Millis>>(c))?;
        let lease = with_conn!(conn, c => schedules::table
            .filter(schedules::pending_tick.is_not_null())
            .select(min(schedules::pending_until))
            .first::<Option<Millis>>(c))?;
        Ok(match (tick, lease) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    /// Active schedules whose tick is due at `now` and that have no
    /// pending run.
    pub fn list_due(conn: &mut DbConn, now: Millis) -> ModelResult<Vec<Schedule>> {
        Ok(with_conn!(conn, c => schedules::table
            .filter(schedules::paused.eq(false))
            .filter(schedules::pending_tick.is_null())
            .filter(schedules::next_run_at.le(now))
            .order(schedules::next_run_at)
            .select(Schedule::as_select())
            .load(c))?)
    }

    /// Schedules whose pending run's lease ran out before `now`: their
    /// taker died (or stalled) before recording the run. Paused ones too:
    /// the tick was taken before the pause.
    pub fn list_abandoned(conn: &mut DbConn, now: Millis) -> ModelResult<Vec<Schedule>> {
        Ok(with_conn!(conn, c => schedules::table
            .filter(schedules::pending_tick.is_not_null())
            .filter(schedules::pending_until.lt(now))
            .order(schedules::pending_until)
            .select(Schedule::as_select())
            .load(c))?)
    }

    /// Takes the tick `due` of schedule `id`: moves `next_run_at` from `due`
    /// to `next` and records `due` as pending, owned by `token` until
    /// `until`, with one guarded UPDATE. True for the one caller whose
    /// update changed the row; that caller makes the run. The same write
    /// takes the tick and remembers that its run is owed, so a crash after
    /// it leaves the run pending, not lost.
    #[tracing::instrument(level = "debug", skip(conn, token))]
    pub fn take_tick(
        conn: &mut DbConn,
        id: i64,
        due: Millis,
        next: Option<Millis>,
        now: Millis,
        token: &str,
        until: Millis,
    ) -> ModelResult<bool> {
        let n = with_conn!(conn, c => diesel::update(schedules::table)
            .filter(schedules::id.eq(id))
            .filter(schedules::paused.eq(false))
            .filter(schedules::next_run_at.eq(due))
            .filter(schedules::pending_tick.is_null())
            .set((
                schedules::next_run_at.eq(next),
                schedules::last_run_at.eq(Some(now)),
                schedules::pending_tick.eq(Some(due)),
                schedules::pending_token.eq(Some(token)),
                schedules::pending_until.eq(Some(until)),
            ))
            .execute(c))?;
        Ok(n == 1)
    }

    /// Takes over the pending tick `tick` of schedule `id` whose lease ran
    /// out before `now`: true for the one caller whose guarded UPDATE gave
    /// it to `token` until `until`.
    #[tracing::instrument(level = "debug", skip(conn, token))]
    pub fn take_over_pending(
        conn: &mut DbConn,
        id: i64,
        tick: Millis,
        now: Millis,
        token: &str,
        until: Millis,
    ) -> ModelResult<bool> {
        let n = with_conn!(conn, c => diesel::update(schedules::table)
            .filter(schedules::id.eq(id))
            .filter(schedules::pending_tick.eq(tick))
            .filter(schedules::pending_until.lt(now))
            .set((
                schedules::pending_token.eq(Some(token)),
                schedules::pending_until.eq(Some(until)),
            ))
            .execute(c))?;
        Ok(n == 1)
    }

    /// Extends `token`'s lease on the pending tick of schedule `id`; false
    /// if it was taken over or recorded meanwhile.
    pub fn renew_pending(
        conn: &mut DbConn,
        id: i64,
        token: &str,
        until: Millis,
    ) -> ModelResult<bool> {
        let n = with_conn!(conn, c => diesel::update(schedules::table)
            .filter(schedules::id.eq(id))
            .filter(schedules::pending_tick.is_not_null())
            .filter(schedules::pending_token.eq(token))
            .set(schedules::pending_until.eq(Some(until)))
            .execute(c))?;
        Ok(n == 1)
    }

    /// Records the run made for the pending tick `tick` (found by its key,
    /// so whoever records it records the same run) and clears the pending
    /// tick. False if it was recorded already.
    pub fn record_run(conn: &mut DbConn, id: i64, tick: Millis, run: &str) -> ModelResult<bool> {
        let n = with_conn!(conn, c => diesel::update(schedules::table)
            .filter(schedules::id.eq(id))
            .filter(schedules::pending_tick.eq(tick))
            .set((
                schedules::last_run.eq(Some(run)),
                schedules::last_error.eq(None::<String>),
                schedules::pending_tick.eq(None::<Millis>),
                schedules::pending_token.eq(None::<String>),
                schedules::pending_until.eq(None::<Millis>),
            ))
            .execute(c))?;
        Ok(n == 1)
    }

    /// Records why the pending tick's run could not be made, and clears
    /// it: only by its current owner `token` (a replica that took the tick
    /// over may still succeed). False if the tick is no longer `token`'s.
    pub fn record_error(
        conn: &mut DbConn,
        id: i64,
        tick: Millis,
        token: &str,
        error: &str,
    ) -> ModelResult<bool> {
        let n = with_conn!(conn, c => diesel::update(schedules::table)
            .filter(schedules::id.eq(id))
            .filter(schedules::pending_tick.eq(tick))
            .filter(schedules::pending_token.eq(token))
            .set((
                schedules::last_run.eq(None::<String>),
                schedules::last_error.eq(Some(error)),
                schedules::pending_tick.eq(None::<Millis>),
                schedules::pending_token.eq(None::<String>),
                schedules::pending_until.eq(None::<Millis>),
            ))
            .execute(c))?;
        Ok(n == 1)
    }
}
