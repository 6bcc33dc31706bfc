//! `falconeri job ...`: start jobs from spec files, list, describe, follow,
//! retry and cancel them.

use std::{
    fmt, fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use falconeri_common::{
    api::{DatumSummary, JobResponse, StatusCounts},
    client::{Client, ClientError},
    pipeline::PipelineSpec,
    status::JobStatus,
};
use indicatif::{ProgressBar, ProgressState, ProgressStyle};

use crate::{
    cli::JobCommand,
    config::Config,
    error::{DoneWithFailedDatums, InvalidSpec, spec_request_error},
    output::{self, NONE, Table},
};

/// How much of an error message fits in a table cell.
const ERROR_WIDTH: usize = 80;

/// Runs one `job` subcommand.
pub async fn run(config: &Config, command: JobCommand) -> Result<()> {
    match command {
        JobCommand::Run {
            spec,
            wait,
            incremental,
        } => run_spec(config, &spec, wait, incremental).await,
        JobCommand::List { limit } => list(config, limit).await,
        JobCommand::Describe { job } => describe(config, &job).await,
        JobCommand::Wait { job } => {
            let client = config.client().await?;
            let job = find_job(&client, &job).await?;
            follow(config, &client, job).await
        }
        JobCommand::Retry { job, wait } => retry(config, &job, wait).await,
        JobCommand::Cancel { job } => cancel(config, &job).await,
        JobCommand::Logs {
            job,
            follow,
            failed,
        } => logs(config, &job, follow, failed).await,
        JobCommand::Validate { spec } => {
            load_spec(&spec)?;
            println!("{} is valid", spec.display());
            Ok(())
        }
    }
}

/// Reads and validates a spec file. Needs no server.
fn load_spec(path: &Path) -> Result<PipelineSpec> {
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    PipelineSpec::from_json(&text).map_err(|err| {
        InvalidSpec {
            summary: format!("{} is invalid", path.display()),
            problems: err.problems,
        }
        .into()
    })
}

/// The directory relative `file://` URIs in the spec at `path` refer to.
fn spec_dir(path: &Path) -> Result<PathBuf> {
    let absolute = std::path::absolute(path)
        .with_context(|| format!("cannot find the directory of {}", path.display()))?;
    absolute
        .parent()
        .map(Path::to_owned)
        .ok_or_else(|| anyhow!("{} is not a file", path.display()))
}

/// Reads and validates a spec file, with relative `file://` URIs resolved
/// against its directory: what is sent to a server.
pub fn load_resolved_spec(path: &Path) -> Result<PipelineSpec> {
    let mut spec = load_spec(path)?;
    spec.resolve_relative_file_uris(&spec_dir(path)?);
    Ok(spec)
}

/// `job run`.
async fn run_spec(config: &Config, path: &Path, wait: bool, incremental: bool) -> Result<()> {
    // Everything that needs no server first, so a broken spec does not
    // start the local one.
    let mut spec = load_spec(path)?;
    spec.resolve_relative_file_uris(&spec_dir(path)?);
    // The flag turns it on; without it the spec decides.
    spec.incremental |= incremental;
    let body = serde_json::to_value(&spec).context("cannot encode the pipeline spec")?;

    let client = config.client().await?;
    let spec_name = path.display().to_string();
    let job = client
        .create_job(&body)
        .await
        .map_err(|err| spec_request_error(err, &spec_name))?;
    if wait {
        return follow(config, &client, job).await;
    }
    if config.json() {
        return output::print_json(&job);
    }
    let skipped = match job.status {
        falconeri_common::status::JobStatus::Done if job.incremental => {
            println!(
                "Job {} (id {}) is done: all {} datums were computed by earlier jobs.",
                job.name, job.id, job.datum_count
            );
            return Ok(());
        }
        _ if job.incremental => " (incremental: datums done before are skipped)",
        _ => "",
    };
    println!(
        "Started job {} (id {}) with {} datums{skipped}.",
        job.name, job.id, job.datum_count
    );
    print_follow_hint(&job.name);
    Ok(())
}

fn print_follow_hint(name: &str) {
    println!("Follow it with:\n  falconeri job wait {name}\n  falconeri job describe {name}");
}

/// A job named by the user, by name or numeric id.
pub async fn find_job(client: &Client, name_or_id: &str) -> Result<JobResponse> {
    client
        .find_job(name_or_id)
        .await
        .map_err(|err| job_lookup_error(err, name_or_id))
}

/// "No such job" reads better than the server's 404; anything else keeps
/// the server's words.
fn job_lookup_error(err: ClientError, name_or_id: &str) -> anyhow::Error {
    if err.is_not_found() {
        anyhow!("no job is named {name_or_id:?} (see `falconeri job list`)")
    } else {
        anyhow::Error::new(err).context(format!("cannot look up job {name_or_id:?}"))
    }
}

/// `job list`.
async fn list(config: &Config, limit: Option<i64>) -> Result<()> {
    let client = config.client().await?;
    let jobs = client.list_jobs(limit).await.context("cannot list jobs")?;
    if config.json() {
        return output::print_json(&jobs);
    }
    if jobs.jobs.is_empty() {
        println!("No jobs yet. Start one with `falconeri job run SPEC`.");
        return Ok(());
    }
    let now = output::now_millis();
    let mut table = Table::with_headers(&["NAME", "ID", "STATUS", "DATUMS", "CREATED", "DURATION"]);
    for job in &jobs.jobs {
        table.row([
            job.name.clone(),
            job.id.to_string(),
            job.status.to_string(),
            job.datum_count.to_string(),
            output::time(job.created_at),
            output::elapsed(job.started_at, job.finished_at, now),
        ]);
    }
    print!("{}", table.render());
    Ok(())
}

/// `job describe`.
async fn describe(config: &Config, name: &str) -> Result<()> {
    let client = config.client().await?;
    let job = find_job(&client, name).await?;
    let described = client
        .describe_job(job.id)
        .await
        .with_context(|| format!("cannot describe job {}", job.name))?;
    let stats = client
        .job_stats(job.id)
        .await
        .with_context(|| format!("cannot read the statistics of job {}", job.name))?;
    if config.json() {
        /// The describe body with the statistics beside it.
        #[derive(serde::Serialize)]
        struct Described<'a> {
            #[serde(flatten)]
            describe: &'a falconeri_common::api::JobDescribeResponse,
            stats: &'a falconeri_common::api::JobStatsResponse,
        }
        return output::print_json(&Described {
            describe: &described,
            stats: &stats,
        });
    }
    let now = output::now_millis();
    print!("{}", job_table(&described.job, now).render());
    println!();
    println!("{}", counts_line(&described.counts));
    if !described.running.is_empty() {
        println!("\nRunning datums:");
        print!("{}", datum_table(&described.running, now).render());
    }
    if !described.failed.is_empty() {
        println!("\nFailed datums:");
        print!("{}", datum_table(&described.failed, now).render());
    }
    if !described.running.is_empty() || !described.failed.is_empty() {
        println!("\nFor a datum's files, full error and output: falconeri datum describe ID");
    }
    if let Some(vanished) = vanished_section(&described) {
        print!("{vanished}");
    }
    print!("{}", crate::stats::render_job(&stats));
    Ok(())
}

/// A job's fields, one a line.
fn job_table(job: &JobResponse, now: i64) -> Table {
    let mut table = Table::default();
    table.row(["Name:", &job.name]);
    table.row(["ID:", &job.id.to_string()]);
    table.row(["Pipeline:", &job.pipeline_name]);
    table.row(["Status:", job.status.as_str()]);
    table.row(["Created:", &output::time(job.created_at)]);
    table.row(["Started:", &output::maybe_time(job.started_at)]);
    table.row(["Finished:", &output::maybe_time(job.finished_at)]);
    table.row([
        "Duration:",
        &output::elapsed(job.started_at, job.finished_at, now),
    ]);
    if let Some(deadline) = job.deadline_at {
        table.row(["Deadline:", &output::time(deadline)]);
    }
    table.row(["Parallelism:", &job.parallelism.to_string()]);
    table.row(["Egress:", &job.egress_uri]);
    if let Some(retry_of) = job.retry_of {
        table.row(["Retry of:", &format!("job {retry_of}")]);
    }
    if let Some(limit) = job.max_failed_datums {
        table.row(["Max failed datums:", &limit.to_string()]);
    }
    if let Some(failed) = job.failed_datums.filter(|&n| n > 0) {
        table.row(["Failed datums:", &failed.to_string()]);
    }
    if job.incremental {
        let previous = match job.previous_job_id {
            Some(id) => format!("yes (previous run: job {id})"),
            None => "yes (no previous run)".to_owned(),
        };
        table.row(["Incremental:", &previous]);
    }
    if let Some(error) = &job.error_message {
        table.row(["Error:", error]);
    }
    table
}

/// `Datums: 10 (3 ready, 2 running, 4 done, 1 error, 0 canceled)`, with
/// `N publishing` after running while outputs are being moved, and `N
/// skipped` at the end for an incremental job's datums computed before.
fn counts_line(counts: &StatusCounts) -> String {
    let publishing = match counts.publishing {
        0 => String::new(),
        n => format!(", {n} publishing"),
    };
    let skipped = match counts.skipped {
        0 => String::new(),
        n => format!(", {n} skipped"),
    };
    format!(
        "Datums: {} ({} ready, {} running{publishing}, {} done, {} error, {} canceled{skipped})",
        counts.total(),
        counts.ready,
        counts.running,
        counts.done,
        counts.error,
        counts.canceled
    )
}

/// The previous run's datums whose inputs are gone, for `job describe`:
/// their count and the first few, each with its first input and output.
fn vanished_section(described: &falconeri_common::api::JobDescribeResponse) -> Option<String> {
    let job = &described.job;
    let count = job.vanished_count.filter(|n| *n > 0)?;
    let previous = job.previous_job_id?;
    let mut text = format!(
        "\nVanished inputs: {count} datums of job {previous} have no datum with the same \
         input files in this job; their outputs were left in place.\n"
    );
    let mut table = Table::with_headers(&["DATUM", "RAN IN", "INPUTS", "OUTPUTS"]);
    for datum in &described.vanished {
        let first = |items: &[String], count: i64| match items.first() {
            Some(first) if count > 1 => format!("{first} (+{})", count - 1),
            Some(first) => first.clone(),
            None => NONE.to_owned(),
        };
        table.row([
            datum.datum_id.to_string(),
            format!(
                "datum {} (job {})",
                datum.ran_as_datum_id, datum.ran_in_job_id
            ),
            first(&datum.inputs, datum.input_count),
            first(&datum.outputs, datum.output_count),
        ]);
    }
    text.push_str(&table.render());
    let shown = i64::try_from(described.vanished.len()).unwrap_or(i64::MAX);
    if count > shown {
        text.push_str(&format!(
            "… and {} more: GET /v1/jobs/{}/vanished pages through them all.\n",
            count - shown,
            job.id
        ));
    }
    Some(text)
}

/// Datums as a table; shared with `datum list`.
pub fn datum_table(datums: &[DatumSummary], now: i64) -> Table {
    let mut table = Table::with_headers(&[
        "ID", "STATUS", "TRIES", "OWNER", "STARTED", "DURATION", "ERROR",
    ]);
    for datum in datums {
        table.row([
            datum.id.to_string(),
            datum.status.to_string(),
            format!("{}/{}", datum.tries_used(), datum.max_tries),
            datum.owner.clone().unwrap_or_else(|| NONE.to_owned()),
            output::maybe_time(datum.started_at),
            output::elapsed(datum.started_at, datum.finished_at, now),
            datum
                .error_message
                .as_deref()
                .map(|error| output::summary_line(error, ERROR_WIDTH))
                .unwrap_or_default(),
        ]);
    }
    table
}

/// `job wait`, and `--wait` of `run` and `retry`: follow the job until it
/// ends, with a progress bar on a terminal.
async fn follow(config: &Config, client: &Client, job: JobResponse) -> Result<()> {
    let mut bar: Option<ProgressBar> = None;
    let mut since = None;
    // Each request returns as soon as anything changes (or after
    // `progress_wait`), so this loop never sleeps.
    let progress = loop {
        let progress = client
            .job_progress(job.id, since, config.progress_wait)
            .await
            .with_context(|| format!("cannot follow job {}", job.name))?;
        if config.show_progress() {
            match &bar {
                Some(bar) => show_progress(bar, &progress.counts),
                None => bar = Some(progress_bar(&job, &progress.counts)),
            }
        }
        if progress.job.status.is_terminal() {
            break progress;
        }
        since = Some(progress.generation);
    };

    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if config.json() {
        output::print_json(&progress.job)?;
    } else if progress.job.status == JobStatus::Done {
        println!(
            "Job {} is done: {} datums in {}. Outputs are in {}",
            progress.job.name,
            progress.counts.done,
            output::elapsed(
                progress.job.started_at,
                progress.job.finished_at,
                output::now_millis()
            ),
            progress.job.egress_uri
        );
    }
    outcome(&progress.job, &progress.counts)
}

/// A progress bar starting from `counts`.
fn progress_bar(job: &JobResponse, counts: &StatusCounts) -> ProgressBar {
    let style = ProgressStyle::with_template(
        "{spinner} {prefix} [{wide_bar}] {pos}/{len} finished, {msg} ({rate}, ETA {eta})",
    )
    .expect("the progress template is valid")
    .with_key("rate", |state: &ProgressState, out: &mut dyn fmt::Write| {
        let _ = write!(out, "{:.1}/s", state.per_sec());
    })
    .progress_chars("=> ");
    let bar = ProgressBar::new(0)
        .with_style(style)
        .with_prefix(job.name.clone());
    show_progress(&bar, counts);
    // Datums that finished before we started watching are not part of the
    // rate we measure.
    bar.reset_eta();
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Each setter may redraw, so the message goes first: a bar is never drawn
/// without it.
fn show_progress(bar: &ProgressBar, counts: &StatusCounts) {
    bar.set_message(format!(
        "{} failed, {} running",
        counts.error + counts.canceled,
        counts.running
    ));
    bar.set_length(u64::try_from(counts.total()).unwrap_or(0));
    bar.set_position(u64::try_from(counts.finished()).unwrap_or(0));
}

/// Success only for a job that ended `done` with every datum done; a job
/// `done` with failed datums within its `max_failed_datums` is a
/// [`DoneWithFailedDatums`] (exit status 3); otherwise a one-line summary
/// that becomes the command's error (exit status 1).
fn outcome(job: &JobResponse, counts: &StatusCounts) -> Result<()> {
    let (detail, explained) = match job.status {
        JobStatus::Done => return done_outcome(job, counts.error),
        JobStatus::Canceled => (
            format!("{} of {} datums canceled", counts.canceled, counts.total()),
            false,
        ),
        // Failed datums explain an `error` job; the job's own message matters
        // when none failed (a timeout, say).
        _ => (
            format!("{} of {} datums failed", counts.error, counts.total()),
            counts.error > 0,
        ),
    };
    let reason = match job.error_message.as_deref() {
        Some(message) if !explained => format!("; {}", output::summary_line(message, ERROR_WIDTH)),
        _ => String::new(),
    };
    bail!(
        "job {name} finished with status {status}: {detail}{reason} (see: falconeri job describe \
         {name})",
        name = job.name,
        status = job.status,
    )
}

/// The outcome of a job that ended `done` with `failed` failed datums.
pub(crate) fn done_outcome(job: &JobResponse, failed: i64) -> Result<()> {
    let failed = job.failed_datums.unwrap_or(failed).max(failed);
    if failed == 0 {
        return Ok(());
    }
    Err(DoneWithFailedDatums {
        job: job.name.clone(),
        failed,
        limit: job.max_failed_datums,
    }
    .into())
}

/// `job logs`: every datum's lines, then (following) the new ones until
/// the job ends; the exit status is the job's, as for `job wait`.
async fn logs(config: &Config, name: &str, follow: bool, failed: bool) -> Result<()> {
    let client = config.client().await?;
    let job = find_job(&client, name).await?;
    let query = falconeri_common::api::JobLogsQuery { follow, failed };
    let events = client
        .job_logs(job.id, &query)
        .await
        .with_context(|| format!("cannot read the logs of job {}", job.name))?;
    let ended = crate::logs::print(events, config.json(), true).await?;
    if follow {
        crate::logs::job_status(&job.name, &ended)?;
        // Done: as `job wait`, a job done with failed datums exits 3.
        let job = client
            .job(job.id)
            .await
            .with_context(|| format!("cannot read job {}", job.name))?;
        done_outcome(&job, 0)?;
    }
    Ok(())
}

/// `job retry`.
async fn retry(config: &Config, name: &str, wait: bool) -> Result<()> {
    let client = config.client().await?;
    let old = find_job(&client, name).await?;
    let job = client
        .retry_job(old.id)
        .await
        .with_context(|| format!("cannot retry job {}", old.name))?;
    if wait {
        return follow(config, &client, job).await;
    }
    if config.json() {
        return output::print_json(&job);
    }
    println!(
        "Started job {} (id {}) to retry {} datums of job {}.",
        job.name, job.id, job.datum_count, old.name
    );
    print_follow_hint(&job.name);
    Ok(())
}

/// `job cancel`.
async fn cancel(config: &Config, name: &str) -> Result<()> {
    let client = config.client().await?;
    let job = find_job(&client, name).await?;
    let job = client
        .cancel_job(job.id)
        .await
        .with_context(|| format!("cannot cancel job {}", job.name))?;
    if config.json() {
        return output::print_json(&job);
    }
    println!("Job {} is {}.", job.name, job.status);
    Ok(())
}

#[cfg(test)]
mod tests {
    use falconeri_common::api::{ErrorBody, ErrorDetail};

    use super::*;

    fn job(status: JobStatus, error_message: Option<&str>) -> JobResponse {
        JobResponse {
            id: 7,
            name: "words-ab12c".into(),
            pipeline_name: "words".into(),
            status,
            datum_count: 10,
            parallelism: 2,
            egress_uri: "file:///tmp/out/".into(),
            created_at: 0,
            started_at: Some(0),
            finished_at: Some(1_000),
            deadline_at: None,
            error_message: error_message.map(Into::into),
            retry_of: None,
            max_failed_datums: None,
            failed_datums: None,
            incremental: false,
            previous_job_id: None,
            vanished_count: None,
        }
    }

    /// `describe` counts skipped datums and lists the vanished ones, with
    /// where to find the rest.
    #[test]
    fn describe_shows_skipped_and_vanished_datums() {
        let counts = StatusCounts {
            done: 10,
            skipped: 99_990,
            ..StatusCounts::default()
        };
        assert_eq!(
            counts_line(&counts),
            "Datums: 100000 (0 ready, 0 running, 10 done, 0 error, 0 canceled, 99990 skipped)"
        );
        let mut job = job(JobStatus::Done, None);
        job.incremental = true;
        job.previous_job_id = Some(6);
        job.vanished_count = Some(12);
        let described = falconeri_common::api::JobDescribeResponse {
            job,
            counts,
            running: Vec::new(),
            failed: Vec::new(),
            vanished: vec![falconeri_common::api::VanishedDatum {
                datum_id: 40,
                job_id: 6,
                ran_as_datum_id: 4,
                ran_in_job_id: 5,
                inputs: vec!["file:///in/gone.txt".into()],
                input_count: 1,
                outputs: vec!["file:///out/gone.csv".into(), "file:///out/x".into()],
                output_count: 3,
            }],
        };
        let text = vanished_section(&described).unwrap();
        assert!(
            text.contains("Vanished inputs: 12 datums of job 6"),
            "{text}"
        );
        assert!(text.contains("datum 4 (job 5)"), "{text}");
        assert!(text.contains("file:///in/gone.txt"), "{text}");
        assert!(text.contains("file:///out/gone.csv (+2)"), "{text}");
        assert!(
            text.contains("… and 11 more: GET /v1/jobs/7/vanished"),
            "{text}"
        );
        assert!(
            job_table(&described.job, 0)
                .render()
                .contains("previous run: job 6")
        );
        let mut none = described;
        none.job.vanished_count = Some(0);
        assert_eq!(vanished_section(&none), None);
    }

    fn counts(done: i64, error: i64, canceled: i64) -> StatusCounts {
        StatusCounts {
            done,
            error,
            canceled,
            ..StatusCounts::default()
        }
    }

    #[test]
    fn done_jobs_succeed() {
        assert!(outcome(&job(JobStatus::Done, None), &counts(10, 0, 0)).is_ok());
    }

    #[test]
    fn done_jobs_with_failed_datums_exit_3() {
        let mut done = job(JobStatus::Done, None);
        done.max_failed_datums = Some(2);
        let err = outcome(&done, &counts(8, 2, 0)).unwrap_err();
        assert_eq!(crate::error::exit_code(&err), 3);
        assert!(
            err.to_string()
                .contains("ended done with 2 failed datums, within max_failed_datums (2)")
        );
        // `job logs --follow` knows only the job: its recorded count decides.
        done.failed_datums = Some(1);
        assert_eq!(
            crate::error::exit_code(&done_outcome(&done, 0).unwrap_err()),
            3
        );
        done.failed_datums = Some(0);
        assert!(done_outcome(&done, 0).is_ok());
    }

    #[test]
    fn failed_jobs_say_how_many_failed() {
        let err = outcome(
            &job(JobStatus::Error, Some("some datums failed")),
            &counts(7, 3, 0),
        )
        .expect_err("fails");
        assert_eq!(
            err.to_string(),
            "job words-ab12c finished with status error: 3 of 10 datums failed \
             (see: falconeri job describe words-ab12c)"
        );
        assert_eq!(crate::error::exit_code(&err), 1);
    }

    #[test]
    fn failed_jobs_without_failed_datums_give_the_reason() {
        let err = outcome(
            &job(JobStatus::Error, Some("cannot list inputs")),
            &counts(0, 0, 0),
        )
        .expect_err("fails");
        assert!(
            err.to_string()
                .contains("0 of 0 datums failed; cannot list inputs"),
            "{err}"
        );
    }

    #[test]
    fn canceled_jobs_fail_with_their_reason() {
        let err = outcome(
            &job(JobStatus::Canceled, Some("job_timeout of 5m passed\nmore")),
            &counts(6, 0, 4),
        )
        .expect_err("fails");
        assert_eq!(
            err.to_string(),
            "job words-ab12c finished with status canceled: 4 of 10 datums canceled; \
             job_timeout of 5m passed (see: falconeri job describe words-ab12c)"
        );
        assert_eq!(crate::error::exit_code(&err), 1);
    }

    fn api_error(status: u16) -> ClientError {
        ClientError::Api {
            status: reqwest::StatusCode::from_u16(status).expect("status"),
            body: ErrorBody {
                error: ErrorDetail {
                    code: "x".into(),
                    message: "server says no".into(),
                    problems: Vec::new(),
                },
            },
        }
    }

    #[test]
    fn unknown_jobs_are_named() {
        let err = job_lookup_error(api_error(404), "nope");
        assert_eq!(
            err.to_string(),
            "no job is named \"nope\" (see `falconeri job list`)"
        );
    }

    #[test]
    fn other_lookup_errors_keep_the_server_message() {
        let err = job_lookup_error(api_error(500), "12");
        assert_eq!(
            format!("{err:#}"),
            "cannot look up job \"12\": 500 Internal Server Error: server says no"
        );
    }

    #[test]
    fn spec_dir_is_absolute() {
        let dir = spec_dir(Path::new("spec.json")).expect("dir");
        assert!(dir.is_absolute());
        assert_eq!(dir, std::env::current_dir().expect("cwd"));
        assert_eq!(
            spec_dir(Path::new("/a/b/spec.json")).expect("dir"),
            Path::new("/a/b")
        );
    }

    #[test]
    fn missing_spec_is_not_a_validation_error() {
        let err = load_spec(Path::new("/nonexistent/spec.json")).expect_err("fails");
        assert_eq!(crate::error::exit_code(&err), 1);
        assert!(
            err.to_string()
                .starts_with("cannot read /nonexistent/spec.json")
        );
    }

    #[test]
    fn datum_rows_show_attempts_and_first_error_line() {
        let datum = DatumSummary {
            id: 3,
            job_id: 7,
            status: falconeri_common::status::DatumStatus::Error,
            attempt: 2,
            interrupted: 0,
            max_tries: 3,
            owner: None,
            started_at: Some(0),
            finished_at: Some(2_000),
            error_message: Some("exit status 1\nstack".into()),
            skipped_from: None,
            skipped_from_job: None,
        };
        assert_eq!(
            datum_table(&[datum], 0).render(),
            "ID  STATUS  TRIES  OWNER  STARTED               DURATION  ERROR\n\
             3   error   2/3    -      1970-01-01T00:00:00Z  2s        exit status 1\n"
        );
    }

    #[test]
    fn counts_show_publishing_only_when_some_are() {
        let mut counts = StatusCounts {
            ready: 1,
            running: 2,
            done: 3,
            ..StatusCounts::default()
        };
        assert_eq!(
            counts_line(&counts),
            "Datums: 6 (1 ready, 2 running, 3 done, 0 error, 0 canceled)"
        );
        counts.publishing = 4;
        assert_eq!(
            counts_line(&counts),
            "Datums: 10 (1 ready, 2 running, 4 publishing, 3 done, 0 error, 0 canceled)"
        );
    }
}
