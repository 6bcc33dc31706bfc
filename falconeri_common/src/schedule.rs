//! Schedules: a cron expression in an explicit time zone, when its next
//! tick falls, and the missed-tick rule. No I/O: falconerid's scheduler
//! passes the current time in, so the rules are tested with any clock.
//!
//! Cron expressions are parsed by croner (five fields, or six with seconds
//! first; `@daily` and friends; `L`, `W` and `#`). Ticks are computed in
//! the schedule's time zone with jiff and its bundled time zone database, so
//! `0 2 * * *` in `Europe/Paris` is 02:00 Paris time in winter and in summer.
//! On the night clocks go forward, a wall time that does not exist runs at
//! the first instant after the gap; on the night they go back, a wall time
//! that happens twice runs once (croner's rules).

use serde::{Deserialize, Serialize};

use crate::{
    Millis,
    pipeline::{SpecError, SpecProblem},
};

/// The time zone of a schedule that names none.
pub const DEFAULT_TIMEZONE: &str = "UTC";

/// A parsed cron expression in a time zone.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    cron: croner::Cron,
    zone: jiff::tz::TimeZone,
}

impl CronSchedule {
    /// Parses `expr` in the IANA time zone `timezone` (such as `UTC` or
    /// `Europe/Paris`). Errors name the field (`cron`, `timezone`).
    pub fn parse(expr: &str, timezone: &str) -> Result<CronSchedule, SpecError> {
        let mut problems = Vec::new();
        let cron = croner::parser::CronParser::new()
            .parse(expr)
            .map_err(|err| {
                problems.push(SpecProblem {
                    path: "cron".to_owned(),
                    message: format!("not a cron expression ({err})"),
                })
            })
            .ok();
        let zone = jiff::tz::TimeZone::get(timezone)
            .map_err(|_| {
                problems.push(SpecProblem {
                    path: "timezone".to_owned(),
                    message: format!(
                        "{timezone:?} is not a time zone this falconeri knows (use an IANA name \
                         such as \"UTC\" or \"Europe/Paris\")"
                    ),
                })
            })
            .ok();
        match (cron, zone) {
            (Some(cron), Some(zone)) => Ok(CronSchedule { cron, zone }),
            _ => Err(SpecError { problems }),
        }
    }

    /// The first tick strictly after `after` (ms since the epoch), or None
    /// if there is none (an expression that never matches again).
    pub fn next_after(&self, after: Millis) -> Option<Millis> {
        let instant = jiff::Timestamp::from_millisecond(after).ok()?;
        let zoned = instant.to_zoned(self.zone.clone());
        let next = self.cron.find_next_occurrence(&zoned, false).ok()?;
        Some(next.timestamp().as_millisecond())
    }

    /// `at` as a wall time in the schedule's zone, such as
    /// `2026-12-08 02:00:00 CET`.
    pub fn local_time(&self, at: Millis) -> String {
        format_in(&self.zone, at)
    }
}

/// `at` as a wall time in `zone`, with its abbreviation.
fn format_in(zone: &jiff::tz::TimeZone, at: Millis) -> String {
    match jiff::Timestamp::from_millisecond(at) {
        Ok(instant) => instant
            .to_zoned(zone.clone())
            .strftime("%Y-%m-%d %H:%M:%S %Z")
            .to_string(),
        Err(_) => at.to_string(),
    }
}

/// What a scheduler does about a schedule whose next tick is `due` when the
/// clock says `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Not yet: sleep until `due`.
    Wait(Millis),
    /// Run once now, and move the next tick to `next` (None: no more
    /// ticks). Ticks missed in between (falconerid was down) are skipped:
    /// a missed tick runs once, not once per missed tick.
    Run { next: Option<Millis> },
}

/// The missed-tick rule.
pub fn due(schedule: &CronSchedule, due: Millis, now: Millis) -> Due {
    if now < due {
        Due::Wait(due)
    } else {
        Due::Run {
            next: schedule.next_after(now),
        }
    }
}

/// What a schedule starts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// A job of a pipeline spec.
    Job,
    /// A run of a workflow.
    Workflow,
}

impl ScheduleKind {
    /// The name stored in the database.
    pub fn as_str(&self) -> &'static str {
        match self {
            ScheduleKind::Job => "job",
            ScheduleKind::Workflow => "workflow",
        }
    }
}

/// `POST /v1/schedules`: exactly one of `job` (a pipeline spec) and
/// `workflow` (a workflow with every spec inline).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleRequest {
    /// Unique; the same rules as a pipeline name.
    pub name: String,
    /// A cron expression: five fields, or six with seconds first.
    pub cron: String,
    /// An IANA time zone; UTC when absent.
    #[serde(default)]
    pub timezone: Option<String>,
    /// Runs are created incremental.
    #[serde(default)]
    pub incremental: bool,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub job: Option<serde_json::Value>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub workflow: Option<serde_json::Value>,
}

/// A schedule as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScheduleResponse {
    pub id: i64,
    pub name: String,
    pub cron: String,
    pub timezone: String,
    pub kind: ScheduleKind,
    /// The pipeline or workflow name it runs.
    pub target_name: String,
    pub incremental: bool,
    pub paused: bool,
    /// The next tick (ms since the epoch); none while paused.
    pub next_run_at: Option<i64>,
    /// The next tick as a wall time in the schedule's zone.
    pub next_run_local: Option<String>,
    pub last_run_at: Option<i64>,
    /// The name of the job or workflow run the last tick started.
    pub last_run: Option<String>,
    /// Why the last tick could not start its run.
    pub last_error: Option<String>,
    pub created_at: i64,
}

/// `GET /v1/schedules`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScheduleListResponse {
    pub schedules: Vec<ScheduleResponse>,
}

/// REST paths of schedules.
pub mod paths {
    pub const SCHEDULES: &str = "/v1/schedules";

    pub fn schedule(name: &str) -> String {
        format!("/v1/schedules/{name}")
    }
    pub fn schedule_pause(name: &str) -> String {
        format!("/v1/schedules/{name}/pause")
    }
    pub fn schedule_resume(name: &str) -> String {
        format!("/v1/schedules/{name}/resume")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Milliseconds of a UTC wall time.
    fn utc(text: &str) -> Millis {
        let civil: jiff::civil::DateTime = text.parse().unwrap();
        civil
            .to_zoned(jiff::tz::TimeZone::UTC)
            .unwrap()
            .timestamp()
            .as_millisecond()
    }

    fn check(expr: &str, zone: &str, after: &str, expected_utc: &str) {
        let schedule = CronSchedule::parse(expr, zone).unwrap();
        assert_eq!(
            schedule.next_after(utc(after)),
            Some(utc(expected_utc)),
            "{expr} in {zone} after {after}"
        );
    }

    #[test]
    fn next_ticks_follow_the_time_zone() {
        check(
            "0 2 * * *",
            "UTC",
            "2026-12-07T04:00:00",
            "2026-12-08T02:00:00",
        );
        // Paris is UTC+1 in winter and UTC+2 in summer.
        check(
            "0 2 * * *",
            "Europe/Paris",
            "2026-12-07T04:00:00",
            "2026-12-08T01:00:00",
        );
        check(
            "0 2 * * *",
            "Europe/Paris",
            "2026-07-07T04:00:00",
            "2026-07-08T00:00:00",
        );
        // Strictly after: a tick at the very instant is not next.
        check(
            "0 2 * * *",
            "UTC",
            "2026-12-08T02:00:00",
            "2026-12-09T02:00:00",
        );
        // Seconds, as a sixth field first.
        check(
            "*/10 * * * * *",
            "UTC",
            "2026-12-07T04:00:01",
            "2026-12-07T04:00:10",
        );
    }

    #[test]
    fn daylight_saving_gaps_and_repeats_run_once() {
        // 2026-03-29: Paris goes from 02:00 to 03:00. 02:30 does not exist
        // that night; the tick runs at the first instant after the gap.
        check(
            "30 2 * * *",
            "Europe/Paris",
            "2026-03-28T23:00:00",
            "2026-03-29T01:00:00",
        );
        // 2026-10-25: 02:30 happens twice in Paris; it runs once, at the
        // first, and the next tick is the next day.
        check(
            "30 2 * * *",
            "Europe/Paris",
            "2026-10-24T23:00:00",
            "2026-10-25T00:30:00",
        );
        check(
            "30 2 * * *",
            "Europe/Paris",
            "2026-10-25T00:30:00",
            "2026-10-26T01:30:00",
        );
    }

    #[test]
    fn a_missed_tick_runs_once_and_skips_to_the_next_future_one() {
        let hourly = CronSchedule::parse("0 * * * *", "UTC").unwrap();
        let due_at = utc("2026-12-07T01:00:00");
        assert_eq!(
            due(&hourly, due_at, utc("2026-12-07T00:59:00")),
            Due::Wait(due_at)
        );
        // Down from 01:00 to 04:30: four ticks missed, one run, next at 05:00.
        assert_eq!(
            due(&hourly, due_at, utc("2026-12-07T04:30:00")),
            Due::Run {
                next: Some(utc("2026-12-07T05:00:00"))
            }
        );
        // On time: the next tick is the one after.
        assert_eq!(
            due(&hourly, due_at, due_at),
            Due::Run {
                next: Some(utc("2026-12-07T02:00:00"))
            }
        );
    }

    #[test]
    fn bad_expressions_and_zones_name_their_fields() {
        let err = CronSchedule::parse("61 * * * *", "Mars/Olympus").unwrap_err();
        let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["cron", "timezone"]);
        assert!(CronSchedule::parse("@daily", "UTC").is_ok());
    }

    #[test]
    fn local_times_carry_the_zone() {
        let paris = CronSchedule::parse("0 2 * * *", "Europe/Paris").unwrap();
        assert_eq!(
            paris.local_time(utc("2026-12-08T01:00:00")),
            "2026-12-08 02:00:00 CET"
        );
    }
}
