//! The CLI's error policy. Every failure is an [`anyhow::Error`] whose cause
//! chain `main` prints on one line (`error: {:#}`). Exit status 1 means the
//! command failed; 2 means the user's input was refused: clap's usage errors
//! and [`InvalidSpec`], whether found here or by the server; 3 means a job
//! a command waited for ended `done` with failed datums, within its
//! `max_failed_datums` ([`DoneWithFailedDatums`], printed as a warning).

use std::fmt;

use falconeri_common::{client::ClientError, pipeline::SpecProblem};

/// The `code` falconerid gives a spec it refuses.
const INVALID_SPEC_CODE: &str = "invalid_spec";

/// A pipeline spec with problems, each naming its JSON path.
#[derive(Debug)]
pub struct InvalidSpec {
    /// What was refused, such as `spec.json is invalid`.
    pub summary: String,
    pub problems: Vec<SpecProblem>,
}

impl fmt::Display for InvalidSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary)?;
        if !self.problems.is_empty() {
            f.write_str(":")?;
        }
        // One problem a line, so a user fixes them all in one go.
        for problem in &self.problems {
            write!(f, "\n  {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for InvalidSpec {}

/// The exit status of a job that ended `done` with failed datums.
pub const DONE_WITH_FAILED_DATUMS: u8 = 3;

/// A job ended `done`, but some of its datums failed (as many as its
/// `max_failed_datums` allows): not a failure, yet not to be mistaken by a
/// script for a job where every datum succeeded.
#[derive(Debug)]
pub struct DoneWithFailedDatums {
    pub job: String,
    pub failed: i64,
    pub limit: Option<i64>,
}

impl fmt::Display for DoneWithFailedDatums {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "job {} ended done with {} failed datums",
            self.job, self.failed
        )?;
        if let Some(limit) = self.limit {
            write!(f, ", within max_failed_datums ({limit})")?;
        }
        write!(f, " (see: falconeri job describe {})", self.job)
    }
}

impl std::error::Error for DoneWithFailedDatums {}

/// The exit status for an error.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    if err.downcast_ref::<InvalidSpec>().is_some() {
        2
    } else if err.downcast_ref::<DoneWithFailedDatums>().is_some() {
        DONE_WITH_FAILED_DATUMS
    } else {
        1
    }
}

/// How `main` introduces an error: a job done with failed datums within
/// its limit is a warning, everything else an error.
pub fn label(err: &anyhow::Error) -> &'static str {
    if err.downcast_ref::<DoneWithFailedDatums>().is_some() {
        "warning"
    } else {
        "error"
    }
}

/// Converts an error from a request that carried `spec_name`'s spec, keeping
/// every problem when the server refused the spec.
pub fn spec_request_error(err: ClientError, spec_name: &str) -> anyhow::Error {
    match err {
        ClientError::Api { body, .. } if body.error.code == INVALID_SPEC_CODE => InvalidSpec {
            summary: format!("the server refused {spec_name}: {}", body.error.message),
            problems: body.error.problems,
        }
        .into(),
        other => anyhow::Error::new(other).context(format!("cannot start a job from {spec_name}")),
    }
}

#[cfg(test)]
mod tests {
    use anyhow::Context;
    use falconeri_common::api::{ErrorBody, ErrorDetail};

    use super::*;

    fn problem(path: &str, message: &str) -> SpecProblem {
        SpecProblem {
            path: path.into(),
            message: message.into(),
        }
    }

    fn invalid() -> InvalidSpec {
        InvalidSpec {
            summary: "spec.json is invalid".into(),
            problems: vec![
                problem("transform.cmd", "must not be empty"),
                problem("(root)", "trailing characters"),
            ],
        }
    }

    #[test]
    fn every_problem_gets_a_line() {
        assert_eq!(
            invalid().to_string(),
            "spec.json is invalid:\n  transform.cmd: must not be empty\n  (root): trailing characters"
        );
    }

    #[test]
    fn invalid_specs_exit_2() {
        assert_eq!(exit_code(&invalid().into()), 2);
        // Still 2 when a caller added context.
        let wrapped = Err::<(), _>(invalid())
            .context("while starting")
            .unwrap_err();
        assert_eq!(exit_code(&wrapped), 2);
    }

    #[test]
    fn done_with_failed_datums_exits_3_as_a_warning() {
        let err: anyhow::Error = DoneWithFailedDatums {
            job: "words-ab12c".into(),
            failed: 2,
            limit: Some(5),
        }
        .into();
        assert_eq!(exit_code(&err), 3);
        assert_eq!(label(&err), "warning");
        assert_eq!(
            err.to_string(),
            "job words-ab12c ended done with 2 failed datums, within max_failed_datums (5) \
             (see: falconeri job describe words-ab12c)"
        );
        assert_eq!(label(&anyhow::anyhow!("boom")), "error");
    }

    #[test]
    fn other_errors_exit_1() {
        assert_eq!(exit_code(&anyhow::anyhow!("boom")), 1);
    }

    fn api_error(code: &str) -> ClientError {
        ClientError::Api {
            status: reqwest_status(400),
            body: ErrorBody {
                error: ErrorDetail {
                    code: code.into(),
                    message: "bad spec".into(),
                    problems: vec![problem("parallelism_spec.constant", "must be at least 1")],
                },
            },
        }
    }

    fn reqwest_status(code: u16) -> reqwest::StatusCode {
        reqwest::StatusCode::from_u16(code).expect("valid status")
    }

    #[test]
    fn refused_specs_keep_their_problems() {
        let err = spec_request_error(api_error(INVALID_SPEC_CODE), "s.json");
        assert_eq!(exit_code(&err), 2);
        assert_eq!(
            format!("{err:#}"),
            "the server refused s.json: bad spec:\n  parallelism_spec.constant: must be at least 1"
        );
    }

    #[test]
    fn other_api_errors_are_failures() {
        let err = spec_request_error(api_error("conflict"), "s.json");
        assert_eq!(exit_code(&err), 1);
        assert!(format!("{err:#}").starts_with("cannot start a job from s.json: 400"));
    }
}
