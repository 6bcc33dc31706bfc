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
    status::{DatumStatus, JobStatus, Outcome},
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
    pub fn job_report(id: i64) -> String {
        format!("/v1/jobs/{id}/report")
    }
    pub fn job_heartbeat(id: i64) -> String {
        format!("/v1/jobs/{id}/heartbeat")
    }
    pub fn datum_logs(id: i64) -> String {
        format!("/v1/datums/{id}/logs")
    }
    pub fn job_logs(id: i64) -> String {
        format!("/v1/jobs/{id}/logs")
    }
    /// Chunk `seq` of the log of attempt `attempt` (framed lines).
    pub fn datum_log_chunk(id: i64, attempt: i32, seq: i64) -> String {
        format!("/v1/datums/{id}/attempts/{attempt}/logs/{seq}")
    }
    pub fn job_stats(id: i64) -> String {
        format!("/v1/jobs/{id}/stats")
    }
    /// `datum retry`.
    pub fn datum_retry(id: i64) -> String {
        format!("/v1/datums/{id}/retry")
    }
    pub fn job_vanished(id: i64) -> String {
        format!("/v1/jobs/{id}/vanished")
    }
}

/// The body of every error response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong, for people (`message`) and programs (`code`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VersionResponse {
    pub version: String,
    /// `sqlite` or `postgres`.
    pub database: String,
    /// `local` or `kubernetes`.
    pub executor: String,
}

/// A job as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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
    #[schema(value_type = Option<i64>)]
    pub started_at: Option<Millis>,
    #[schema(value_type = Option<i64>)]
    pub finished_at: Option<Millis>,
    /// When the job will be stopped by its `job_timeout`.
    #[schema(value_type = Option<i64>)]
    pub deadline_at: Option<Millis>,
    pub error_message: Option<String>,
    /// The job this one retries, for `job retry`.
    pub retry_of: Option<i64>,
    /// The spec's `max_failed_datums` as a count of this job's datums
    /// (a percentage rounded down); absent without a limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failed_datums: Option<i64>,
    /// How many datums had failed for good when the job ended (a `done`
    /// job may have some, within `max_failed_datums`); absent while it
    /// runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_datums: Option<i64>,
    /// Whether the job skips datums an earlier job of its pipeline already
    /// computed (the spec's `incremental`, or `job run --incremental`).
    #[serde(default)]
    pub incremental: bool,
    /// For an incremental job: the earlier run of its pipeline whose
    /// successful datums it was compared with for vanished inputs.
    #[serde(default)]
    pub previous_job_id: Option<i64>,
    /// For an incremental job, once planned: how many successful datums of
    /// `previous_job_id` have no datum with the same input files in this
    /// job. Their outputs are left where they are; `GET
    /// /v1/jobs/{id}/vanished` lists them.
    #[serde(default)]
    pub vanished_count: Option<i64>,
}

/// `GET /v1/jobs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobListResponse {
    pub jobs: Vec<JobResponse>,
}

/// How many datums of a job are in each state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StatusCounts {
    pub ready: i64,
    pub running: i64,
    /// Reported done; outputs being moved into the egress.
    #[serde(default)]
    pub publishing: i64,
    pub done: i64,
    pub error: i64,
    pub canceled: i64,
    /// Not run by an incremental job: an earlier job computed them.
    #[serde(default)]
    pub skipped: i64,
}

impl StatusCounts {
    /// All datums.
    pub fn total(&self) -> i64 {
        self.ready
            + self.running
            + self.publishing
            + self.done
            + self.error
            + self.canceled
            + self.skipped
    }

    /// Datums that will not run again.
    pub fn finished(&self) -> i64 {
        self.done + self.error + self.canceled + self.skipped
    }

    /// Adds `n` datums of `status`.
    pub fn add(&mut self, status: DatumStatus, n: i64) {
        match status {
            DatumStatus::Ready => self.ready += n,
            DatumStatus::Running => self.running += n,
            DatumStatus::Publishing => self.publishing += n,
            DatumStatus::Done => self.done += n,
            DatumStatus::Error => self.error += n,
            DatumStatus::Canceled => self.canceled += n,
            DatumStatus::Skipped => self.skipped += n,
        }
    }

    /// Moves `skipped` datums from `done` to `skipped`: the database stores
    /// a skipped datum as a `done` row (see `models::Datum`), and the job
    /// row counts them.
    pub fn move_skipped(&mut self, skipped: i64) {
        let skipped = skipped.clamp(0, self.done);
        self.done -= skipped;
        self.skipped += skipped;
    }
}

/// `GET /v1/jobs/{id}/describe`: a job, its counts, and the datums worth a look.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobDescribeResponse {
    pub job: JobResponse,
    pub counts: StatusCounts,
    /// Datums being worked on now.
    pub running: Vec<DatumSummary>,
    /// Datums that failed for good.
    pub failed: Vec<DatumSummary>,
    /// The first datums of the previous run whose inputs are gone (at most
    /// 10; `job.vanished_count` says how many in all, and `GET
    /// /v1/jobs/{id}/vanished` pages through them).
    #[serde(default)]
    pub vanished: Vec<VanishedDatum>,
}

/// Query of `POST /v1/jobs`.
#[derive(
    Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema, utoipa::IntoParams,
)]
#[into_params(parameter_in = Query)]
pub struct CreateJobQuery {
    /// Overrides the spec's `incremental` for this job (`true` is what
    /// `falconeri job run --incremental` sends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incremental: Option<bool>,
}

/// Query of `GET /v1/jobs/{id}/vanished`.
#[derive(
    Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema, utoipa::IntoParams,
)]
#[into_params(parameter_in = Query)]
pub struct VanishedQuery {
    /// Only datums of the previous job with a larger id (the next page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<i64>,
    /// At most this many (1 to 1,000; default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

/// A successful datum of an incremental job's previous run that has no
/// datum with the same input files in the job: its inputs were removed (or
/// its set of files changed). Its outputs were left where they are.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VanishedDatum {
    /// The datum of the previous job.
    pub datum_id: i64,
    pub job_id: i64,
    /// The datum that ran and published the outputs: `datum_id` itself, or
    /// the one it was skipped for.
    pub ran_as_datum_id: i64,
    pub ran_in_job_id: i64,
    /// Its first input files (at most 5) and how many it had.
    pub inputs: Vec<String>,
    pub input_count: i64,
    /// Its first outputs (at most 5) and how many it published.
    pub outputs: Vec<String>,
    pub output_count: i64,
}

/// `GET /v1/jobs/{id}/vanished`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VanishedListResponse {
    pub vanished: Vec<VanishedDatum>,
    /// Pass as `after` for the next page; absent on the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<i64>,
}

/// Query of `GET /v1/jobs/{id}/progress`, a long-poll.
#[derive(
    Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema, utoipa::IntoParams,
)]
#[into_params(parameter_in = Query)]
pub struct ProgressQuery {
    /// The `generation` of the last answer; the request waits until something
    /// changed after it (or `wait_ms` passed). Omit to answer at once.
    #[param(maximum = 18446744073709551615_u64)]
    pub since: Option<u64>,
    #[param(maximum = 18446744073709551615_u64)]
    pub wait_ms: Option<u64>,
}

/// `GET /v1/jobs/{id}/progress`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProgressResponse {
    pub job: JobResponse,
    pub counts: StatusCounts,
    /// Changes whenever any datum or job changes; pass it back as `since`.
    pub generation: u64,
}

/// Query of `GET /v1/jobs/{id}/datums`.
#[derive(
    Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema, utoipa::IntoParams,
)]
#[into_params(parameter_in = Query)]
pub struct DatumListQuery {
    pub status: Option<DatumStatus>,
    /// Only datums with an attempt that ended this way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// Only datums with a larger id (the next page after that datum).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<i64>,
    pub limit: Option<i64>,
}

/// Query of `GET /v1/workflows`: the newest runs, at most `limit`.
#[derive(
    Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema, utoipa::IntoParams,
)]
#[into_params(parameter_in = Query)]
pub struct WorkflowListQuery {
    pub limit: Option<i64>,
}

/// Query of `GET /v1/jobs`.
#[derive(
    Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema, utoipa::IntoParams,
)]
#[into_params(parameter_in = Query)]
pub struct JobListQuery {
    pub limit: Option<i64>,
    /// Only jobs in this state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<JobStatus>,
    /// Only jobs whose name contains this text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A datum without its files and output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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
    #[schema(value_type = Option<i64>)]
    pub started_at: Option<Millis>,
    #[schema(value_type = Option<i64>)]
    pub finished_at: Option<Millis>,
    pub error_message: Option<String>,
    /// For a `skipped` datum: the earlier datum with the same fingerprint
    /// that ran, and its job; its outputs are this datum's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped_from: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped_from_job: Option<i64>,
}

impl DatumSummary {
    /// Tries used so far: attempts that were not interrupted.
    pub fn tries_used(&self) -> i32 {
        self.attempt - self.interrupted
    }
}

/// `GET /v1/jobs/{id}/datums`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DatumListResponse {
    pub datums: Vec<DatumSummary>,
}

/// One input file of a datum.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InputFileResponse {
    pub uri: String,
    /// Where the worker puts it, relative to its pfs directory:
    /// `<repo>/<relative path>`.
    pub local_path: String,
}

/// One file a datum published to the egress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OutputFileResponse {
    pub uri: String,
    pub size: i64,
}

/// `GET /v1/datums/{id}`: a datum with its files and captured output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DatumResponse {
    pub datum: DatumSummary,
    pub input_files: Vec<InputFileResponse>,
    pub output_files: Vec<OutputFileResponse>,
    /// The tail of the command's stdout and stderr, from the last attempt
    /// (a NUL byte in it is shown as `␀`).
    pub output: Option<String>,
    /// Every attempt, oldest first.
    #[serde(default)]
    pub attempts: Vec<AttemptResponse>,
    /// SHA-256 (hex) of what the datum's result depends on: the transform,
    /// the egress and its input files' identities (see the guide's chapter
    /// on incremental runs). Absent for datums planned by older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

/// `POST /v1/datums/{id}/retry`: the datum, ready again, and its job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DatumRetryResponse {
    pub datum: DatumSummary,
    /// The job as it is now: `running`, reopened if it had ended.
    pub job: JobResponse,
    /// True if the job had ended and was reopened (its workers started
    /// again).
    pub reopened: bool,
}

/// One attempt at a datum: who ran it, when, and how it ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttemptResponse {
    /// 1 for the first reservation, counting up.
    pub number: i32,
    pub worker_id: String,
    pub started_at: Millis,
    #[schema(value_type = Option<i64>)]
    pub finished_at: Option<Millis>,
    /// None while the attempt runs.
    pub outcome: Option<Outcome>,
    /// The command's exit status, when the worker reported one.
    pub exit_code: Option<i32>,
    /// The signal that ended the command, when one did.
    pub signal: Option<i32>,
    pub error_message: Option<String>,
    /// What the worker measured, when it sent anything (see
    /// [`AttemptStats`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<AttemptStats>,
}

/// What a worker measured during one attempt, sent with its final report
/// (`done`, `error`, or a batch report's `done`/`error`). Every field is
/// optional: a phase the attempt never reached is left out, and a worker
/// that sends no `stats` at all (an older one) is accepted as before.
/// Each value is at most 2^53 - 1, the largest integer every JSON client
/// can write exactly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttemptStats {
    /// Input files downloaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 9007199254740991_u64)]
    pub download_files: Option<u64>,
    /// Bytes of input downloaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 9007199254740991_u64)]
    pub download_bytes: Option<u64>,
    /// How long the download took, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 9007199254740991_u64)]
    pub download_ms: Option<u64>,
    /// The command's wall time, from its start until it was reaped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 9007199254740991_u64)]
    pub command_ms: Option<u64>,
    /// User CPU time of the command and every descendant it waited for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 9007199254740991_u64)]
    pub user_cpu_ms: Option<u64>,
    /// System CPU time, likewise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 9007199254740991_u64)]
    pub system_cpu_ms: Option<u64>,
    /// Peak resident memory of the largest single process among the
    /// command and the descendants it waited for (`ru_maxrss`), in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 9007199254740991_u64)]
    pub max_rss_bytes: Option<u64>,
    /// Output files uploaded to the attempt's staging area.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 9007199254740991_u64)]
    pub upload_files: Option<u64>,
    /// Bytes of output uploaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 9007199254740991_u64)]
    pub upload_bytes: Option<u64>,
    /// How long the upload took, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 9007199254740991_u64)]
    pub upload_ms: Option<u64>,
}

impl AttemptStats {
    /// The largest value a statistic may hold: 2^53 - 1, the largest
    /// integer every JSON client writes exactly (the document says so).
    pub const MAX: u64 = (1 << 53) - 1;

    /// Refuses a value above [`AttemptStats::MAX`], naming its field.
    pub fn check(&self) -> Result<(), String> {
        for (name, value) in Self::COLUMNS.iter().zip(self.values()) {
            if let Some(value) = value.filter(|v| *v > Self::MAX) {
                return Err(format!("{name}: {value} is above {}", Self::MAX));
            }
        }
        Ok(())
    }

    /// The statistics in the order of [`AttemptStats::COLUMNS`].
    pub fn values(&self) -> [Option<u64>; 10] {
        [
            self.download_files,
            self.download_bytes,
            self.download_ms,
            self.command_ms,
            self.user_cpu_ms,
            self.system_cpu_ms,
            self.max_rss_bytes,
            self.upload_files,
            self.upload_bytes,
            self.upload_ms,
        ]
    }

    /// Statistics from values in the order of [`AttemptStats::COLUMNS`].
    pub fn from_values(v: [Option<u64>; 10]) -> AttemptStats {
        AttemptStats {
            download_files: v[0],
            download_bytes: v[1],
            download_ms: v[2],
            command_ms: v[3],
            user_cpu_ms: v[4],
            system_cpu_ms: v[5],
            max_rss_bytes: v[6],
            upload_files: v[7],
            upload_bytes: v[8],
            upload_ms: v[9],
        }
    }

    /// The columns of `attempts` that hold the statistics (named as the
    /// fields).
    pub const COLUMNS: [&str; 10] = [
        "download_files",
        "download_bytes",
        "download_ms",
        "command_ms",
        "user_cpu_ms",
        "system_cpu_ms",
        "max_rss_bytes",
        "upload_files",
        "upload_bytes",
        "upload_ms",
    ];

    /// True when nothing was measured.
    pub fn is_empty(&self) -> bool {
        self.values().iter().all(Option::is_none)
    }
}

/// `GET /v1/jobs/{id}/stats`: a job's statistics, computed by the
/// database over the attempts that reported them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobStatsResponse {
    pub job_id: i64,
    /// Attempts that reported statistics (of any outcome).
    pub measured_attempts: i64,
    /// Milliseconds spent in each phase, per attempt.
    pub phases: PhaseStats,
    /// Peak memory per attempt, in bytes (`max_rss_bytes`).
    pub memory_bytes: Option<Percentiles>,
    /// CPU used per attempt while its command ran, in millicores:
    /// (user + system) × 1000 / wall time.
    pub cpu_millicores: Option<Percentiles>,
    pub throughput: Throughput,
    /// The five slowest finished attempts, slowest first.
    pub slowest: Vec<SlowAttempt>,
    /// Datums that failed for good, grouped by error message, the largest
    /// group first (at most 20 groups).
    pub errors: Vec<ErrorGroup>,
    /// Resource requests that would fit what was measured.
    pub suggestion: Option<ResourceSuggestion>,
    /// Set when the job has more attempts than statistics read (10,000):
    /// everything above except `errors` then covers only its newest this
    /// many attempts, and throughput is the rate over them.
    #[serde(default)]
    pub window: Option<i64>,
}

/// The durations of the three phases of an attempt, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PhaseStats {
    pub download: Option<Percentiles>,
    pub command: Option<Percentiles>,
    pub upload: Option<Percentiles>,
}

/// Nearest-rank percentiles of one measure over the attempts that have it:
/// `p50` and `p95` are values some attempt really had (what PostgreSQL's
/// `percentile_disc` answers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Percentiles {
    /// Attempts measured.
    pub count: i64,
    pub p50: i64,
    pub p95: i64,
    pub max: i64,
}

/// How fast the job went, over the span of its attempts (from the first
/// start to the last finish).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Throughput {
    pub elapsed_ms: i64,
    pub datums_done: i64,
    pub datums_per_second: f64,
    pub download_bytes: i64,
    pub upload_bytes: i64,
    /// Bytes downloaded and uploaded, per second of the span.
    pub bytes_per_second: f64,
}

/// One of the slowest attempts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SlowAttempt {
    pub datum_id: i64,
    pub attempt: i32,
    pub outcome: Option<Outcome>,
    /// From reservation to the end of the attempt.
    pub duration_ms: i64,
    pub download_ms: Option<i64>,
    pub command_ms: Option<i64>,
    pub upload_ms: Option<i64>,
}

/// Failed datums sharing one error message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorGroup {
    pub message: String,
    pub count: i64,
    /// One datum of the group (the lowest id).
    pub example_datum_id: i64,
}

/// `resource_requests` sized from the measured peaks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ResourceSuggestion {
    /// A Kubernetes quantity: p95 of `max_rss_bytes` × `margin`, rounded up
    /// to a whole MiB.
    pub memory: String,
    /// A Kubernetes quantity: p95 of the CPU used × `margin`, rounded up to
    /// a tenth of a CPU.
    pub cpu: String,
    /// The factor applied to the measured p95 (1.25: 25 % headroom).
    pub margin: f64,
    /// Attempts the suggestion rests on.
    pub attempts: i64,
}

/// Body of `POST /v1/jobs/{id}/reserve`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReserveRequest {
    #[schema(min_length = 1, max_length = 253, pattern = "^[^\\u0000]*$")]
    pub worker_id: String,
    /// How long to wait for work; the server caps it.
    #[schema(maximum = 18446744073709551615_u64)]
    pub wait_ms: Option<u64>,
    /// Set by workers that take batches: the most datums this worker will
    /// take at once. The server hands out up to the job's
    /// `datums_per_reservation`, never more than this, and answers with
    /// [`ReserveResponse::Batch`]. Unset: one datum, as `Reserved`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 4294967295_u64)]
    pub max_datums: Option<u32>,
    /// The worker may hold datums of this job it was never told about:
    /// it has just started, or its last reservation got no answer. The
    /// server then hands back what the worker holds before anything new.
    /// A worker whose last reservation was answered sends `false`, which
    /// spares the server that look-up. Absent: `true`.
    #[serde(default = "yes")]
    pub resume: bool,
}

fn yes() -> bool {
    true
}

/// Answer to a reservation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ReserveResponse {
    /// Here is a datum; it is yours until the lease expires.
    Reserved(Box<Reservation>),
    /// Here are several datums (to a worker that set `max_datums`), each
    /// with its own claim; run them in order and report them together
    /// (`POST /v1/jobs/{id}/report`). Heartbeats keep all their leases.
    Batch { reservations: Vec<Reservation> },
    /// Nothing is ready now but the job is not over: ask again.
    Wait,
    /// The job has no work left (or was canceled): exit.
    Finished,
}

/// A reserved datum and everything needed to run it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Claim {
    #[schema(pattern = "^[^\\u0000]*$")]
    pub worker_id: String,
    pub attempt: i32,
    /// Not sent: the job the caller may write to, set by falconerid from the
    /// worker's token so that the guarded write also checks the datum is of
    /// that job (None for the admin).
    #[serde(skip)]
    pub scope: Option<i64>,
}

/// Body of `POST /v1/datums/{id}/heartbeat`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HeartbeatRequest {
    pub claim: Claim,
}

/// Answer to a heartbeat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HeartbeatResponse {
    pub lease_expires_at: Millis,
}

/// An output file the worker uploaded to its staging area.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NewOutputFile {
    /// Relative to `pfs/out` (and to the staging and egress prefixes).
    #[schema(pattern = "^[^\\u0000]*$")]
    pub path: String,
    pub size: i64,
}

/// Body of `POST /v1/datums/{id}/done`. The output files are moved from
/// staging to the egress under the same guarded write that marks the datum
/// done.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DoneRequest {
    pub claim: Claim,
    pub output: String,
    #[serde(default)]
    pub output_files: Vec<NewOutputFile>,
    /// The command's exit status (0), for the attempt's record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// What the worker measured (absent from older workers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<AttemptStats>,
    /// Also reserve the worker's next datum, in the same round trip: once
    /// the report is accepted, the answer's `next` holds what `POST
    /// /v1/jobs/{id}/reserve` would answer this worker without waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<ReserveNext>,
}

/// What a report asks for next (see [`DoneRequest::next`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReserveNext {
    /// As [`ReserveRequest::max_datums`]: set, the next datums come as a
    /// `batch`; unset, one datum as `reserved`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 4294967295_u64)]
    pub max_datums: Option<u32>,
}

/// Answer to `POST /v1/datums/{id}/done`: the datum, and the next
/// reservation when one was asked for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DoneResponse {
    #[serde(flatten)]
    pub datum: DatumSummary,
    /// The answer to `next`: `reserved` or `batch` (datums now this
    /// worker's), `wait` (nothing ready now: long-poll `reserve`), or
    /// `finished`. Absent when `next` was not asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<ReserveResponse>,
}

/// Body of `POST /v1/datums/{id}/error`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorRequest {
    pub claim: Claim,
    pub output: String,
    pub error: String,
    /// The command's exit status, if it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The signal that killed the command, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// What the worker measured (absent from older workers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<AttemptStats>,
    /// Why the worker killed the command, if it did: its `signal` is then
    /// the worker's, and no `on_exit` rule matches the report (it is
    /// retried while the datum has tries left). Absent from older workers
    /// (their reports are matched as before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub killed_for: Option<KilledFor>,
}

/// Why a worker killed a datum's command itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KilledFor {
    /// It ran past the job's `datum_timeout`.
    DatumTimeout,
}

/// Body of `POST /v1/datums/{id}/release`: the worker was stopped, not
/// failed; the datum goes back to `ready` without using up a try.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReleaseRequest {
    pub claim: Claim,
    pub reason: String,
}

/// One datum's outcome in a batch report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum BatchOutcome {
    /// As `POST /v1/datums/{id}/done`.
    Done {
        output: String,
        #[serde(default)]
        output_files: Vec<NewOutputFile>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stats: Option<AttemptStats>,
    },
    /// As `POST /v1/datums/{id}/error`.
    Error {
        output: String,
        error: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<i32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stats: Option<AttemptStats>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        killed_for: Option<KilledFor>,
    },
    /// As `POST /v1/datums/{id}/release`.
    Release { reason: String },
}

/// One datum of a batch report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchReport {
    pub datum_id: i64,
    pub claim: Claim,
    #[serde(flatten)]
    pub outcome: BatchOutcome,
}

/// Body of `POST /v1/jobs/{id}/report`: the final reports of several
/// datums of one job. Each is settled on its own: a stale claim or a failed
/// publish of one never changes another.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchReportRequest {
    pub reports: Vec<BatchReport>,
    /// Also reserve the worker's next datums once the reports are settled
    /// (see [`DoneRequest::next`]); the worker is the one the claims name.
    /// Reports naming no worker or several get no `next` in the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<ReserveNext>,
}

/// How one report of a batch was settled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchReportResult {
    pub datum_id: i64,
    /// The datum after the report, when it was accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datum: Option<DatumSummary>,
    /// Why it was refused (as the single-datum route's error body would say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
}

/// Answer to a batch report, in request order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchReportResponse {
    pub results: Vec<BatchReportResult>,
    /// The answer to `next`, as in [`DoneResponse::next`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<ReserveResponse>,
}

/// Body of `POST /v1/jobs/{id}/heartbeat`: extend the leases of every datum
/// of a batch at once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchHeartbeatRequest {
    pub claims: Vec<DatumClaim>,
}

/// A datum and the claim its worker holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DatumClaim {
    pub datum_id: i64,
    pub claim: Claim,
}

/// Answer to a batch heartbeat: the datums whose claims are still held.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchHeartbeatResponse {
    pub held: Vec<i64>,
    pub lease_expires_at: Millis,
}

/// Which stream a log line came from: the command's stdout or stderr, or
/// the worker's own account of the attempt (downloads, uploads, retries).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    Stdout,
    Stderr,
    Worker,
}

impl LogStream {
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
            LogStream::Worker => "worker",
        }
    }
}

impl std::fmt::Display for LogStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Standard base64, accepting nonzero bits after the last symbol: the
/// document's pattern for `base64` cannot tell those apart, so the server
/// must not either.
const LENIENT_BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);

/// The longest piece of a line the worker sends as one [`LogLine`]: a
/// longer line (or output that never ends a line) is split into pieces,
/// each but the last without its newline.
pub const MAX_LOG_LINE_BYTES: usize = 64 * 1024;

/// One line of an attempt's log, with its newline if it had one (a piece
/// of a longer line, or the last line of output without a newline, has
/// none; the pieces of a stream put together are exactly what was printed).
/// The bytes are in `text` when they are UTF-8 without a NUL, else in
/// `base64`, so any byte a command prints travels in JSON unchanged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub stream: LogStream,
    /// When the worker read the line's first byte (its clock).
    pub at: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base64: Option<String>,
}

// Written out, not derived: the schema must say that exactly one of `text`
// and `base64` is set, which the derive cannot express.
impl utoipa::PartialSchema for LogLine {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        // `oneOf` of "has text" and "has base64": exactly one may match.
        let schema = serde_json::json!({
            "allOf": [
                {
                    "type": "object",
                    "description": "One line of an attempt's log, with its newline if it had \
                        one. Exactly one of `text` (UTF-8 without a NUL) and `base64` holds \
                        its bytes.",
                    "required": ["stream", "at"],
                    "properties": {
                        "stream": {"$ref": "#/components/schemas/LogStream"},
                        "at": {"type": "integer", "format": "int64",
                               "description": "When the worker read the line's first byte (ms)."},
                        "text": {"type": "string"},
                        "base64": {
                            "type": "string",
                            "contentEncoding": "base64",
                            "pattern": "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$",
                        },
                    },
                },
                {"oneOf": [
                    {"type": "object", "required": ["text"]},
                    {"type": "object", "required": ["base64"]},
                ]},
            ],
        });
        serde_json::from_value(schema).unwrap_or_else(|_| {
            utoipa::openapi::RefOr::T(utoipa::openapi::schema::Schema::Object(
                utoipa::openapi::schema::Object::new(),
            ))
        })
    }
}

impl utoipa::ToSchema for LogLine {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        schemas.push((
            "LogStream".to_owned(),
            <LogStream as utoipa::PartialSchema>::schema(),
        ));
    }
}

impl LogLine {
    /// A line holding `bytes`, as `text` when it can be.
    pub fn new(stream: LogStream, at: Millis, bytes: &[u8]) -> LogLine {
        use base64::Engine as _;
        let (text, base64) = match std::str::from_utf8(bytes) {
            Ok(text) if !text.contains('\0') => (Some(text.to_owned()), None),
            _ => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
            ),
        };
        LogLine {
            stream,
            at,
            text,
            base64,
        }
    }

    /// The line's bytes; the error says which field is wrong.
    pub fn bytes(&self) -> Result<Vec<u8>, String> {
        use base64::Engine as _;
        match (&self.text, &self.base64) {
            (Some(text), None) => Ok(text.as_bytes().to_vec()),
            (None, Some(encoded)) => LENIENT_BASE64
                .decode(encoded)
                .map_err(|err| format!("base64: {err}")),
            (Some(_), Some(_)) => Err("text and base64 are both set".to_owned()),
            (None, None) => Err("neither text nor base64 is set".to_owned()),
        }
    }
}

/// Body of `POST /v1/datums/{id}/logs`: the next chunk of the claimed
/// attempt's log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogAppendRequest {
    pub claim: Claim,
    /// The worker's number for this chunk, counting up from 0 within the
    /// attempt. A chunk whose number was taken already is a resend and is
    /// not stored again.
    #[schema(minimum = 0)]
    pub seq: i64,
    pub lines: Vec<LogLine>,
}

/// Query of `PUT /v1/datums/{id}/attempts/{attempt}/logs/{seq}`: the rest
/// of the claim (the attempt is in the path).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogChunkQuery {
    /// The worker holding the attempt.
    pub worker_id: String,
}

/// Answer to `POST /v1/datums/{id}/logs` and `PUT /v1/datums/{id}/attempts/{attempt}/logs/{seq}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogAppendResponse {
    /// False for a resent chunk (already stored).
    pub stored: bool,
}

/// Query of `GET /v1/datums/{id}/logs`.
#[derive(
    Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema, utoipa::IntoParams,
)]
#[into_params(parameter_in = Query)]
pub struct DatumLogsQuery {
    /// Only this attempt (default: every attempt, oldest first).
    pub attempt: Option<i32>,
    /// Keep the stream open until the (last) attempt ends.
    #[serde(default)]
    pub follow: bool,
}

/// Query of `GET /v1/jobs/{id}/logs`.
#[derive(
    Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema, utoipa::IntoParams,
)]
#[into_params(parameter_in = Query)]
pub struct JobLogsQuery {
    /// Keep the stream open until the job ends.
    #[serde(default)]
    pub follow: bool,
    /// Only the datums that failed (status `error`), every attempt of each.
    #[serde(default)]
    pub failed: bool,
}

/// One event of a log stream: the `data` of a server-sent event whose
/// `event` is the same `kind`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LogEvent {
    /// A line of an attempt's log (see [`LogLine`]).
    Line {
        datum_id: i64,
        attempt: i32,
        stream: LogStream,
        at: Millis,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        base64: Option<String>,
    },
    /// The log cap cut `bytes` bytes of the attempt's output here.
    Cut {
        datum_id: i64,
        attempt: i32,
        bytes: i64,
    },
    /// The attempt is over; its log is complete.
    AttemptEnd {
        datum_id: i64,
        attempt: i32,
        outcome: Outcome,
        exit_code: Option<i32>,
        signal: Option<i32>,
        error_message: Option<String>,
    },
    /// The job is over (the last event when following a job).
    JobEnd { job_id: i64, status: JobStatus },
}

impl LogEvent {
    /// The event of a stored line.
    pub fn line(datum_id: i64, attempt: i32, line: LogLine) -> LogEvent {
        LogEvent::Line {
            datum_id,
            attempt,
            stream: line.stream,
            at: line.at,
            text: line.text,
            base64: line.base64,
        }
    }

    /// The event's `kind`, also its server-sent event name.
    pub fn kind(&self) -> &'static str {
        match self {
            LogEvent::Line { .. } => "line",
            LogEvent::Cut { .. } => "cut",
            LogEvent::AttemptEnd { .. } => "attempt_end",
            LogEvent::JobEnd { .. } => "job_end",
        }
    }
}

/// Query of `GET /v1/jobs/{id}/attempts`.
#[derive(
    Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema, utoipa::IntoParams,
)]
#[into_params(parameter_in = Query)]
pub struct JobAttemptsQuery {
    /// How many of the newest attempts (default 500, at most 5,000).
    pub limit: Option<i64>,
}

/// One attempt of a job, for a timeline of its workers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobAttempt {
    pub datum_id: i64,
    pub number: i32,
    pub worker_id: String,
    pub started_at: Millis,
    #[schema(value_type = Option<i64>)]
    pub finished_at: Option<Millis>,
    /// None while the attempt runs.
    pub outcome: Option<Outcome>,
}

/// `GET /v1/jobs/{id}/attempts`: the newest attempts first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobAttemptsResponse {
    pub attempts: Vec<JobAttempt>,
}

#[cfg(test)]
mod tests {
    /// A statistic above what JSON clients write exactly is refused,
    /// naming its field; the largest allowed one is not.
    #[test]
    fn attempt_stats_above_two_to_the_53_are_refused() {
        let fine = super::AttemptStats {
            upload_bytes: Some(super::AttemptStats::MAX),
            ..Default::default()
        };
        assert_eq!(fine.check(), Ok(()));
        let too_big = super::AttemptStats {
            command_ms: Some(super::AttemptStats::MAX + 1),
            ..Default::default()
        };
        let problem = too_big.check().unwrap_err();
        assert!(problem.starts_with("command_ms: "), "{problem}");
    }

    /// The written-out schema of a log line parses (it is not the empty
    /// fallback) and says exactly one of `text` and `base64` is set.
    #[test]
    fn log_line_schema_requires_exactly_one_encoding() {
        let schema =
            serde_json::to_value(<super::LogLine as utoipa::PartialSchema>::schema()).unwrap();
        let parts = &schema["allOf"];
        assert_eq!(
            parts[1]["oneOf"].as_array().map(Vec::len),
            Some(2),
            "{schema}"
        );
        assert_eq!(
            parts[1]["oneOf"][0]["required"],
            serde_json::json!(["text"])
        );
        assert_eq!(parts[0]["required"], serde_json::json!(["stream", "at"]));
    }

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

    #[test]
    fn log_lines_keep_every_byte() {
        for bytes in [
            &b"plain\n"[..],
            b"nul \0 inside",
            b"\xff\xfe not utf-8",
            b"",
        ] {
            let line = LogLine::new(LogStream::Stdout, 1, bytes);
            assert_eq!(line.bytes().unwrap(), bytes);
            let json = serde_json::to_string(&line).unwrap();
            let back: LogLine = serde_json::from_str(&json).unwrap();
            assert_eq!(back.bytes().unwrap(), bytes);
        }
        assert!(LogLine::new(LogStream::Stderr, 1, b"ok").text.is_some());
        assert!(LogLine::new(LogStream::Stderr, 1, b"\0").base64.is_some());
        let both = LogLine {
            base64: Some(String::new()),
            ..LogLine::new(LogStream::Worker, 1, b"x")
        };
        assert!(both.bytes().unwrap_err().contains("both"));
    }

    #[test]
    fn reports_without_stats_still_parse() {
        // What a worker from before statistics sends.
        let old =
            r#"{"claim":{"worker_id":"w","attempt":1},"output":"","error":"boom","exit_code":3}"#;
        let request: ErrorRequest = serde_json::from_str(old).unwrap();
        assert_eq!(request.stats, None);
        let batch =
            r#"{"datum_id":1,"claim":{"worker_id":"w","attempt":1},"outcome":"done","output":""}"#;
        let report: BatchReport = serde_json::from_str(batch).unwrap();
        assert!(matches!(
            report.outcome,
            BatchOutcome::Done { stats: None, .. }
        ));
        // And a negative measurement is refused, naming its field.
        let bad =
            r#"{"claim":{"worker_id":"w","attempt":1},"output":"","stats":{"command_ms":-1}}"#;
        let err = serde_path_to_error::deserialize::<_, DoneRequest>(
            &mut serde_json::Deserializer::from_str(bad),
        )
        .unwrap_err();
        assert_eq!(err.path().to_string(), "stats.command_ms");
    }

    #[test]
    fn stats_values_round_trip() {
        let stats = AttemptStats {
            download_files: Some(1),
            max_rss_bytes: Some(7),
            upload_ms: Some(9),
            ..AttemptStats::default()
        };
        assert_eq!(AttemptStats::from_values(stats.values()), stats);
        assert!(!stats.is_empty());
        assert!(AttemptStats::default().is_empty());
        let json = serde_json::to_value(stats).unwrap();
        for column in AttemptStats::COLUMNS {
            let set = json.get(column).is_some();
            let index = AttemptStats::COLUMNS
                .iter()
                .position(|c| *c == column)
                .unwrap();
            assert_eq!(set, stats.values()[index].is_some(), "{column}");
        }
    }

    #[test]
    fn log_events_are_tagged() {
        let event = LogEvent::Cut {
            datum_id: 1,
            attempt: 2,
            bytes: 3,
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["kind"], "cut");
        assert_eq!(event.kind(), "cut");
    }
}
