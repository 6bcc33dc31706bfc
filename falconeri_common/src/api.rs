//! The REST API's request and response bodies, shared by falconerid and its
//! clients. Paths live in [`paths`] so the server's router and the client
//! cannot drift apart.
//!
//! Every worker write names its [`Claim`] (worker id and attempt); falconerid
//! answers `409 Conflict` when the claim is no longer current.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    Millis,
    pipeline::SpecProblem,
    status::{DatumStatus, JobStatus},
};

/// URL paths of the API, version 1.
pub mod paths {
    pub const HEALTHZ: &str = "/healthz";
    pub const READYZ: &str = "/readyz";
    pub const VERSION: &str = "/v1/version";
    pub const JOBS: &str = "/v1/jobs";

    pub fn job(id: i64) -> String {
        format!("/v1/jobs/{id}")
    }
    pub fn job_by_name(name: &str) -> String {
        format!("/v1/jobs/by-name/{name}")
    }
    pub fn job_describe(id: i64) -> String {
        format!("/v1/jobs/{id}/describe")
    }
    pub fn job_progress(id: i64) -> String {
        format!("/v1/jobs/{id}/progress")
    }
    pub fn job_retry(id: i64) -> String {
        format!("/v1/jobs/{id}/retry")
    }
    pub fn job_cancel(id: i64) -> String {
        format!("/v1/jobs/{id}/cancel")
    }
    pub fn job_datums(id: i64) -> String {
        format!("/v1/jobs/{id}/datums")
    }
    pub fn job_reserve(id: i64) -> String {
        format!("/v1/jobs/{id}/reserve")
    }
    pub fn datum(id: i64) -> String {
        format!("/v1/datums/{id}")
    }
    pub fn datum_heartbeat(id: i64) -> String {
        format!("/v1/datums/{id}/heartbeat")
    }
    pub fn datum_done(id: i64) -> String {
        format!("/v1/datums/{id}/done")
    }
    pub fn datum_error(id: i64) -> String {
        format!("/v1/datums/{id}/error")
    }
    pub fn datum_release(id: i64) -> String {
        format!("/v1/datums/{id}/release")
    }
    pub fn datum_output_files(id: i64) -> String {
        format!("/v1/datums/{id}/output-files")
    }
}

/// The body of every error response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong, for people (`message`) and programs (`code`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// A stable machine-readable code such as `invalid_spec`, `not_found`,
    /// `conflict`, `unauthorized`.
    pub code: String,
    pub message: String,
    /// For `invalid_spec`: every problem, each naming its JSON path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<SpecProblem>,
}

/// `GET /v1/version`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VersionResponse {
    pub version: String,
    /// `sqlite` or `postgres`.
    pub database: String,
    /// `local` or `kubernetes`.
    pub executor: String,
}

/// A job as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobResponse {
    pub id: i64,
    /// Unique: the pipeline name plus a random suffix.
    pub name: String,
    pub pipeline_name: String,
    pub status: JobStatus,
    pub datum_count: i64,
    pub parallelism: i32,
    pub egress_uri: String,
    pub created_at: Millis,
    pub started_at: Option<Millis>,
    pub finished_at: Option<Millis>,
    /// When the job will be stopped by its `job_timeout`.
    pub deadline_at: Option<Millis>,
    pub error_message: Option<String>,
    /// The job this one retries, for `job retry`.
    pub retry_of: Option<i64>,
}

/// `GET /v1/jobs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobListResponse {
    pub jobs: Vec<JobResponse>,
}

/// How many datums of a job are in each state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusCounts {
    pub ready: i64,
    pub running: i64,
    pub done: i64,
    pub error: i64,
    pub canceled: i64,
}

impl StatusCounts {
    /// All datums.
    pub fn total(&self) -> i64 {
        self.ready + self.running + self.done + self.error + self.canceled
    }

    /// Datums that will not run again.
    pub fn finished(&self) -> i64 {
        self.done + self.error + self.canceled
    }

    /// Adds `n` datums of `status`.
    pub fn add(&mut self, status: DatumStatus, n: i64) {
        match status {
            DatumStatus::Ready => self.ready += n,
            DatumStatus::Running => self.running += n,
            DatumStatus::Done => self.done += n,
            DatumStatus::Error => self.error += n,
            DatumStatus::Canceled => self.canceled += n,
        }
    }
}

/// `GET /v1/jobs/{id}/describe`: a job, its counts, and the datums worth a look.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobDescribeResponse {
    pub job: JobResponse,
    pub counts: StatusCounts,
    /// Datums being worked on now.
    pub running: Vec<DatumSummary>,
    /// Datums that failed for good.
    pub failed: Vec<DatumSummary>,
}

/// Query of `GET /v1/jobs/{id}/progress`, a long-poll.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProgressQuery {
    /// The `generation` of the last answer; the request waits until something
    /// changed after it (or `wait_ms` passed). Omit to answer at once.
    pub since: Option<u64>,
    pub wait_ms: Option<u64>,
}

/// `GET /v1/jobs/{id}/progress`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProgressResponse {
    pub job: JobResponse,
    pub counts: StatusCounts,
    /// Changes whenever any datum or job changes; pass it back as `since`.
    pub generation: u64,
}

/// Query of `GET /v1/jobs/{id}/datums`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DatumListQuery {
    pub status: Option<DatumStatus>,
    pub limit: Option<i64>,
}

/// Query of `GET /v1/jobs`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JobListQuery {
    pub limit: Option<i64>,
}

/// A datum without its files and output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DatumSummary {
    pub id: i64,
    pub job_id: i64,
    pub status: DatumStatus,
    /// How many times the datum has been reserved.
    pub attempt: i32,
    /// Attempts cut short by the infrastructure (a stopped worker); they
    /// don't count against `max_tries`.
    #[serde(default)]
    pub interrupted: i32,
    pub max_tries: i32,
    /// The worker holding the datum, while it runs.
    pub owner: Option<String>,
    pub started_at: Option<Millis>,
    pub finished_at: Option<Millis>,
    pub error_message: Option<String>,
}

impl DatumSummary {
    /// Tries used so far: attempts that were not interrupted.
    pub fn tries_used(&self) -> i32 {
        self.attempt - self.interrupted
    }
}

/// `GET /v1/jobs/{id}/datums`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DatumListResponse {
    pub datums: Vec<DatumSummary>,
}

/// One input file of a datum.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputFileResponse {
    pub uri: String,
    /// Where the worker puts it, relative to its pfs directory:
    /// `<repo>/<relative path>`.
    pub local_path: String,
}

/// One file a datum published to the egress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFileResponse {
    pub uri: String,
    pub size: i64,
}

/// `GET /v1/datums/{id}`: a datum with its files and captured output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DatumResponse {
    pub datum: DatumSummary,
    pub input_files: Vec<InputFileResponse>,
    pub output_files: Vec<OutputFileResponse>,
    /// The tail of the command's stdout and stderr, from the last attempt.
    pub output: Option<String>,
}

/// Body of `POST /v1/jobs/{id}/reserve`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReserveRequest {
    pub worker_id: String,
    /// How long to wait for work; the server caps it.
    pub wait_ms: Option<u64>,
}

/// Answer to a reservation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ReserveResponse {
    /// Here is a datum; it is yours until the lease expires.
    Reserved(Box<Reservation>),
    /// Nothing is ready now but the job is not over: ask again.
    Wait,
    /// The job has no work left (or was canceled): exit.
    Finished,
}

/// A reserved datum and everything needed to run it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reservation {
    pub datum_id: i64,
    pub job_id: i64,
    pub claim: Claim,
    pub lease_expires_at: Millis,
    /// How often to heartbeat.
    pub heartbeat_interval_ms: u64,
    /// How long the command may run, from `datum_timeout`.
    pub timeout_ms: Option<u64>,
    pub cmd: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Where this attempt uploads its outputs. They reach the egress only
    /// when falconerid accepts the attempt's `done` (or `output-files`)
    /// write, so a stale worker can never overwrite published outputs.
    pub staging_uri: String,
    pub input_files: Vec<InputFileResponse>,
}

/// Proof of ownership carried by every worker write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub worker_id: String,
    pub attempt: i32,
}

/// Body of `POST /v1/datums/{id}/heartbeat`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatRequest {
    pub claim: Claim,
}

/// Answer to a heartbeat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    pub lease_expires_at: Millis,
}

/// An output file the worker uploaded to its staging area.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewOutputFile {
    /// Relative to `pfs/out` (and to the staging and egress prefixes).
    pub path: String,
    pub size: i64,
}

/// Body of `POST /v1/datums/{id}/done`. The output files are moved from
/// staging to the egress under the same guarded write that marks the datum
/// done.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DoneRequest {
    pub claim: Claim,
    pub output: String,
    #[serde(default)]
    pub output_files: Vec<NewOutputFile>,
}

/// Body of `POST /v1/datums/{id}/error`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorRequest {
    pub claim: Claim,
    pub output: String,
    pub error: String,
}

/// Body of `POST /v1/datums/{id}/release`: the worker was stopped, not
/// failed; the datum goes back to `ready` without using up a try.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReleaseRequest {
    pub claim: Claim,
    pub reason: String,
}

/// Body of `POST /v1/datums/{id}/output-files`: publish these staged files
/// now, before the datum is done (for long datums that finish outputs as
/// they go). Guarded like `done`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutputFilesRequest {
    pub claim: Claim,
    pub files: Vec<NewOutputFile>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_response_is_tagged() {
        let json = serde_json::to_value(ReserveResponse::Finished).unwrap();
        assert_eq!(json, serde_json::json!({"status": "finished"}));
        let wait: ReserveResponse = serde_json::from_str(r#"{"status":"wait"}"#).unwrap();
        assert_eq!(wait, ReserveResponse::Wait);
    }

    #[test]
    fn counts_add_up() {
        let mut counts = StatusCounts::default();
        counts.add(DatumStatus::Done, 3);
        counts.add(DatumStatus::Error, 1);
        counts.add(DatumStatus::Ready, 2);
        assert_eq!(counts.total(), 6);
        assert_eq!(counts.finished(), 4);
    }
}
