//! Job and datum states, attempt outcomes, and the rules for moving between
//! them. This is the one home of the state machine: the models write only
//! the transitions listed here (see [`DatumStatus::can_move_to`]).
//!
//! ```text
//! job:    ready ──► running ──► done | error | canceled
//!
//! datum:  ready ──reserve──► running ──done, no outputs──────────────────► done
//!           ▲                  │ └──done with outputs──► publishing ──────► done
//!           │                  │                            │ (publish failed)
//!           └──failed, tries left / interrupted◄────────────┘
//!                              └──failed, no tries left──────────────────► error
//!         ready | running | publishing ──job stopped──► canceled
//!         error | canceled ──datum retry──► ready
//!         (planned as) skipped: an incremental job's datum that already ran
//! ```
//!
//! Every exit from `running` or `publishing` closes the datum's open attempt
//! with an [`Outcome`]. A failed attempt whose datum has tries left goes back
//! to `ready`; nothing leaves a terminal state except through a retry, which
//! makes a new job (`job retry`) or puts one datum back in its own job's
//! queue (`datum retry`, reopening the job if it had ended). A failure an
//! `on_exit` rule maps to `fail_datum` or `fail_job` goes to `error` with
//! tries left.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// Declares a string-valued enum stored as TEXT, with its names, parsing,
/// display and (feature `db`) its diesel mapping.
macro_rules! text_enum {
    (
        $(#[$meta:meta])* $name:ident, $expected:literal {
            $($(#[$vmeta:meta])* $variant:ident = $text:literal,)*
        }
    ) => {
        $(#[$meta])*
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
            schemars::JsonSchema, utoipa::ToSchema,
        )]
        #[cfg_attr(feature = "db", derive(diesel::expression::AsExpression, diesel::deserialize::FromSqlRow))]
        #[cfg_attr(feature = "db", diesel(sql_type = diesel::sql_types::Text))]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $name {
            /// Every value, in flow order.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            /// The name stored in the database and used in the API.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownStatus;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $name::ALL
                    .iter()
                    .copied()
                    .find(|value| value.as_str() == s)
                    .ok_or_else(|| UnknownStatus {
                        value: s.to_owned(),
                        expected: $expected,
                    })
            }
        }

        #[cfg(feature = "db")]
        impl<DB> diesel::serialize::ToSql<diesel::sql_types::Text, DB> for $name
        where
            DB: diesel::backend::Backend,
            str: diesel::serialize::ToSql<diesel::sql_types::Text, DB>,
        {
            fn to_sql<'b>(
                &'b self,
                out: &mut diesel::serialize::Output<'b, '_, DB>,
            ) -> diesel::serialize::Result {
                self.as_str().to_sql(out)
            }
        }

        #[cfg(feature = "db")]
        impl<DB> diesel::deserialize::FromSql<diesel::sql_types::Text, DB> for $name
        where
            DB: diesel::backend::Backend,
            String: diesel::deserialize::FromSql<diesel::sql_types::Text, DB>,
        {
            fn from_sql(bytes: DB::RawValue<'_>) -> diesel::deserialize::Result<Self> {
                // The schema's CHECK constraints allow only our names, so an
                // unknown one is a corrupt row: an error, never a guess.
                Ok(String::from_sql(bytes)?.parse()?)
            }
        }
    };
}

text_enum!(
    /// The state of a job.
    JobStatus, "ready, running, done, error or canceled" {
        /// Inserted (and maybe still being planned); workers not started yet.
        Ready = "ready",
        /// Its workers run its datums.
        Running = "running",
        /// Every datum finished, and none failed (or no more than its
        /// `max_failed_datums` allows).
        Done = "done",
        /// Some datum failed for good, or the job itself failed.
        Error = "error",
        /// Stopped by a user before finishing.
        Canceled = "canceled",
    }
);

text_enum!(
    /// The state of one datum.
    DatumStatus, "ready, running, publishing, done, error, canceled or skipped" {
        /// Waiting in its job's queue.
        Ready = "ready",
        /// Held by a worker under a claim.
        Running = "running",
        /// Its worker reported done; falconerid is moving the staged outputs
        /// into the egress (outside any transaction).
        Publishing = "publishing",
        /// Finished successfully, outputs published.
        Done = "done",
        /// Failed on its last try, or at once by an `on_exit` rule.
        Error = "error",
        /// Its job was stopped before it finished.
        Canceled = "canceled",
        /// Not run: an incremental job found that a datum with the same
        /// fingerprint succeeded in an earlier job of the pipeline, whose
        /// outputs stand. Set at planning and final. Stored as a `done` row
        /// with `skipped_from` set (see `models::Datum::status`).
        Skipped = "skipped",
    }
);

text_enum!(
    /// How one attempt at a datum ended (`attempts.outcome`).
    Outcome, "done, error, timed_out, lease_expired, interrupted, pod_failure, worker_lost, canceled or publish_failed" {
        /// The command succeeded and its outputs were published.
        Done = "done",
        /// The worker reported a failure (the command, a download, an upload).
        Error = "error",
        /// It ran past `datum_timeout`.
        TimedOut = "timed_out",
        /// Its worker stopped heartbeating.
        LeaseExpired = "lease_expired",
        /// Its worker was stopped on purpose (cancel, shutdown, scale-down)
        /// and gave the datum back; uses up no try.
        Interrupted = "interrupted",
        /// The infrastructure ended its worker (evicted, preempted,
        /// OOM-killed, node lost); uses up no try, but is bounded.
        PodFailure = "pod_failure",
        /// Its worker process exited while holding it.
        WorkerLost = "worker_lost",
        /// Its job was stopped.
        Canceled = "canceled",
        /// The outputs could not be moved into the egress.
        PublishFailed = "publish_failed",
    }
);

/// A status name that is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown value {value:?} (expected {expected})")]
pub struct UnknownStatus {
    pub value: String,
    pub expected: &'static str,
}

impl JobStatus {
    /// True once nothing more will happen.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Done | JobStatus::Error | JobStatus::Canceled
        )
    }

    /// The final status of a job once none of its datums can run any more,
    /// and why when it is not plainly `done`: `failed` datums ended
    /// `error`, `limit` is its `max_failed_datums` (None: no failure is
    /// allowed, as before failure policies), and `canceled` datums stayed
    /// canceled (a job reopened by `datum retry` for some of them).
    /// Failures past the limit win: the job failed whatever else happened.
    pub fn when_ended(
        failed: i64,
        limit: Option<i64>,
        canceled: i64,
    ) -> (JobStatus, Option<String>) {
        match limit {
            None if failed > 0 => (JobStatus::Error, Some("some datums failed".to_owned())),
            Some(limit) if failed > limit => (
                JobStatus::Error,
                Some(format!(
                    "{failed} datums failed, more than max_failed_datums allows ({limit})"
                )),
            ),
            _ if canceled > 0 => (
                JobStatus::Canceled,
                Some(format!("{canceled} datums stayed canceled")),
            ),
            _ => (JobStatus::Done, None),
        }
    }
}

impl DatumStatus {
    /// True once nothing more will happen (short of a retry).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            DatumStatus::Done | DatumStatus::Error | DatumStatus::Canceled | DatumStatus::Skipped
        )
    }

    /// True while a worker's claim is current: the datum is running, or its
    /// reported outputs are being published.
    pub fn is_held(self) -> bool {
        matches!(self, DatumStatus::Running | DatumStatus::Publishing)
    }

    /// The unfinished states, for "is anything left?" queries.
    pub const UNFINISHED: [DatumStatus; 3] = [
        DatumStatus::Ready,
        DatumStatus::Running,
        DatumStatus::Publishing,
    ];

    /// The transitions the models may write. Anything else is a bug.
    pub fn can_move_to(self, to: DatumStatus) -> bool {
        use DatumStatus::*;
        match (self, to) {
            (Ready, Running) => true,
            // Done without outputs, failed, or given back.
            (Running, Done | Error | Ready | Publishing) => true,
            // Published; or the publish failed (retried or not).
            (Publishing, Done | Ready | Error) => true,
            // A job stopped.
            (Ready | Running | Publishing, Canceled) => true,
            // `job retry` / `datum retry` of a finished datum.
            (Error | Canceled, Ready) => true,
            _ => false,
        }
    }
}

impl Outcome {
    /// True if the attempt used up one of the datum's tries. Attempts cut
    /// short by falconeri or the infrastructure don't.
    pub fn uses_a_try(self) -> bool {
        !matches!(
            self,
            Outcome::Interrupted | Outcome::PodFailure | Outcome::Canceled
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for &status in DatumStatus::ALL {
            assert_eq!(status.as_str().parse::<DatumStatus>(), Ok(status));
            assert_eq!(
                serde_json::to_string(&status).unwrap(),
                format!("\"{status}\"")
            );
        }
        for &status in JobStatus::ALL {
            assert_eq!(status.as_str().parse::<JobStatus>(), Ok(status));
        }
        for &outcome in Outcome::ALL {
            assert_eq!(outcome.as_str().parse::<Outcome>(), Ok(outcome));
            assert_eq!(
                serde_json::to_string(&outcome).unwrap(),
                format!("\"{outcome}\"")
            );
        }
        assert!("Done".parse::<JobStatus>().is_err());
        assert!("publishing".parse::<JobStatus>().is_err());
    }

    #[test]
    fn terminal_states() {
        assert!(!DatumStatus::Ready.is_terminal());
        assert!(!DatumStatus::Running.is_terminal());
        assert!(!DatumStatus::Publishing.is_terminal());
        assert!(DatumStatus::Done.is_terminal());
        assert!(DatumStatus::Error.is_terminal());
        assert!(DatumStatus::Canceled.is_terminal());
        assert!(DatumStatus::Skipped.is_terminal());
        assert!(DatumStatus::Publishing.is_held());
    }

    #[test]
    fn nothing_leaves_done() {
        for &to in DatumStatus::ALL {
            assert!(!DatumStatus::Done.can_move_to(to), "done -> {to}");
            assert!(!DatumStatus::Skipped.can_move_to(to), "skipped -> {to}");
            assert!(!to.can_move_to(DatumStatus::Skipped), "{to} -> skipped");
        }
        assert!(!DatumStatus::Ready.can_move_to(DatumStatus::Done));
        assert!(!DatumStatus::Ready.can_move_to(DatumStatus::Publishing));
        assert!(DatumStatus::Canceled.can_move_to(DatumStatus::Ready));
    }

    #[test]
    fn interruptions_use_no_try() {
        assert!(Outcome::Error.uses_a_try());
        assert!(Outcome::LeaseExpired.uses_a_try());
        assert!(Outcome::WorkerLost.uses_a_try());
        assert!(!Outcome::Interrupted.uses_a_try());
        assert!(!Outcome::PodFailure.uses_a_try());
    }

    #[test]
    fn jobs_end_done_within_their_failure_limit() {
        let ended = |failed, limit, canceled| JobStatus::when_ended(failed, limit, canceled).0;
        assert_eq!(ended(0, None, 0), JobStatus::Done);
        assert_eq!(ended(1, None, 0), JobStatus::Error);
        assert_eq!(ended(3, Some(3), 0), JobStatus::Done);
        assert_eq!(ended(4, Some(3), 0), JobStatus::Error);
        assert_eq!(ended(1, Some(0), 0), JobStatus::Error);
        assert_eq!(ended(0, Some(0), 2), JobStatus::Canceled);
        assert_eq!(ended(4, Some(3), 2), JobStatus::Error);
        assert_eq!(
            JobStatus::when_ended(4, Some(3), 0).1.as_deref(),
            Some("4 datums failed, more than max_failed_datums allows (3)")
        );
    }

    #[test]
    fn job_outcome() {
        assert_eq!(JobStatus::when_ended(0, None, 0).0, JobStatus::Done);
        assert_eq!(JobStatus::when_ended(2, None, 0).0, JobStatus::Error);
    }
}
