//! Job and datum states, and the rules for moving between them.
//!
//! Both follow `ready → running → done | error | canceled`. A datum that fails
//! with tries left goes back to `ready`; nothing leaves a terminal state.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

macro_rules! status_enum {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
            schemars::JsonSchema,
        )]
        #[serde(rename_all = "lowercase")]
        pub enum $name {
            /// Waiting to run.
            Ready,
            /// Being worked on.
            Running,
            /// Finished successfully.
            Done,
            /// Finished with a failure.
            Error,
            /// Stopped by a user (or a job timeout) before finishing.
            Canceled,
        }

        impl $name {
            /// Every status, in flow order.
            pub const ALL: [$name; 5] =
                [$name::Ready, $name::Running, $name::Done, $name::Error, $name::Canceled];

            /// The name stored in the database and used in the API.
            pub fn as_str(self) -> &'static str {
                match self {
                    $name::Ready => "ready",
                    $name::Running => "running",
                    $name::Done => "done",
                    $name::Error => "error",
                    $name::Canceled => "canceled",
                }
            }

            /// True once nothing more will happen.
            pub fn is_terminal(self) -> bool {
                matches!(self, $name::Done | $name::Error | $name::Canceled)
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
                    .into_iter()
                    .find(|status| status.as_str() == s)
                    .ok_or_else(|| UnknownStatus(s.to_owned()))
            }
        }
    };
}

status_enum!(
    /// The state of a job.
    JobStatus
);
status_enum!(
    /// The state of one datum.
    DatumStatus
);

/// A status name that is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown status {0:?} (expected ready, running, done, error or canceled)")]
pub struct UnknownStatus(pub String);

impl DatumStatus {
    /// Where a datum goes after a failed attempt: back to `ready` while tries
    /// remain, else `error`. `attempt` counts the attempt that just failed.
    pub fn after_failure(attempt: i32, max_tries: i32) -> DatumStatus {
        if attempt < max_tries {
            DatumStatus::Ready
        } else {
            DatumStatus::Error
        }
    }
}

impl JobStatus {
    /// The final status of a job once none of its datums can run any more.
    pub fn when_finished(any_error: bool) -> JobStatus {
        if any_error {
            JobStatus::Error
        } else {
            JobStatus::Done
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for status in DatumStatus::ALL {
            assert_eq!(status.as_str().parse::<DatumStatus>(), Ok(status));
            assert_eq!(
                serde_json::to_string(&status).unwrap(),
                format!("\"{status}\"")
            );
        }
        for status in JobStatus::ALL {
            assert_eq!(status.as_str().parse::<JobStatus>(), Ok(status));
        }
        assert!("Done".parse::<JobStatus>().is_err());
    }

    #[test]
    fn terminal_states() {
        assert!(!DatumStatus::Ready.is_terminal());
        assert!(!DatumStatus::Running.is_terminal());
        assert!(DatumStatus::Done.is_terminal());
        assert!(DatumStatus::Error.is_terminal());
        assert!(DatumStatus::Canceled.is_terminal());
    }

    #[test]
    fn failed_datums_retry_while_tries_remain() {
        assert_eq!(DatumStatus::after_failure(1, 3), DatumStatus::Ready);
        assert_eq!(DatumStatus::after_failure(2, 3), DatumStatus::Ready);
        assert_eq!(DatumStatus::after_failure(3, 3), DatumStatus::Error);
        assert_eq!(DatumStatus::after_failure(1, 1), DatumStatus::Error);
    }

    #[test]
    fn job_outcome() {
        assert_eq!(JobStatus::when_finished(false), JobStatus::Done);
        assert_eq!(JobStatus::when_finished(true), JobStatus::Error);
    }
}
