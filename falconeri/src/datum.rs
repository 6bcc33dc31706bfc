//! `falconeri datum ...`: the datums of a job, and one datum in full.

use anyhow::{Context, Result};
use falconeri_common::api::{DatumListQuery, DatumLogsQuery, DatumResponse, DatumSummary};

use crate::{
    cli::DatumCommand,
    config::Config,
    job::{datum_table, find_job},
    output::{self, NONE, Table},
};

/// Runs one `datum` subcommand.
pub async fn run(config: &Config, command: DatumCommand) -> Result<()> {
    match command {
        DatumCommand::List {
            job,
            status,
            outcome,
            after,
            limit,
        } => {
            let client = config.client().await?;
            let job = find_job(&client, &job).await?;
            let query = DatumListQuery {
                status,
                outcome,
                after,
                limit,
            };
            let datums = client
                .list_datums_where(job.id, &query)
                .await
                .with_context(|| format!("cannot list the datums of job {}", job.name))?;
            if config.json() {
                return output::print_json(&datums);
            }
            if datums.datums.is_empty() {
                println!("No datums match.");
                return Ok(());
            }
            print!(
                "{}",
                datum_table(&datums.datums, output::now_millis()).render()
            );
            Ok(())
        }
        DatumCommand::Describe { id } => {
            let client = config.client().await?;
            let datum = client
                .datum(id)
                .await
                .with_context(|| format!("cannot describe datum {id}"))?;
            if config.json() {
                return output::print_json(&datum);
            }
            print!("{}", render(&datum, output::now_millis()));
            Ok(())
        }
        DatumCommand::Retry { id } => {
            let client = config.client().await?;
            let retried = client
                .retry_datum(id)
                .await
                .with_context(|| format!("cannot retry datum {id}"))?;
            if config.json() {
                return output::print_json(&retried);
            }
            let job = &retried.job.name;
            if retried.reopened {
                println!("Datum {id} is ready again; job {job} was reopened and runs it.");
            } else {
                println!("Datum {id} is ready again; job {job} runs it.");
            }
            println!("To follow it: falconeri job wait {job}");
            Ok(())
        }
        DatumCommand::Logs {
            id,
            attempt,
            follow,
        } => {
            let client = config.client().await?;
            let query = DatumLogsQuery { attempt, follow };
            let events = client
                .datum_logs(id, &query)
                .await
                .with_context(|| format!("cannot read the logs of datum {id}"))?;
            let ended = crate::logs::print(events, config.json(), false).await?;
            if follow {
                crate::logs::attempt_status(id, &ended)?;
            }
            Ok(())
        }
    }
}

/// `2 of 3`, plus any attempts that were interrupted and don't count.
fn tries(summary: &DatumSummary) -> String {
    let mut text = format!("{} of {}", summary.tries_used(), summary.max_tries);
    if summary.interrupted > 0 {
        text.push_str(&format!(" (+{} interrupted)", summary.interrupted));
    }
    text
}

/// A datum in full, for people.
fn render(datum: &DatumResponse, now: i64) -> String {
    let summary = &datum.datum;
    let mut fields = Table::default();
    fields.row(["Datum:", &summary.id.to_string()]);
    fields.row(["Job:", &summary.job_id.to_string()]);
    fields.row(["Status:", summary.status.as_str()]);
    if let (Some(from), Some(job)) = (summary.skipped_from, summary.skipped_from_job) {
        // Its files and outputs below are those of the datum that ran.
        fields.row(["Skipped for:", &format!("datum {from} of job {job}")]);
    }
    fields.row(["Tries:", &tries(summary)]);
    fields.row(["Owner:", summary.owner.as_deref().unwrap_or(NONE)]);
    fields.row(["Started:", &output::maybe_time(summary.started_at)]);
    fields.row(["Finished:", &output::maybe_time(summary.finished_at)]);
    fields.row([
        "Duration:",
        &output::elapsed(summary.started_at, summary.finished_at, now),
    ]);
    let mut out = fields.render();

    out.push_str("\nInput files:\n");
    if datum.input_files.is_empty() {
        out.push_str("  (none)\n");
    } else {
        let mut files = Table::with_headers(&["LOCAL PATH", "URI"]);
        for file in &datum.input_files {
            files.row([file.local_path.as_str(), file.uri.as_str()]);
        }
        out.push_str(&files.render());
    }

    out.push_str("\nAttempts:\n");
    if datum.attempts.is_empty() {
        out.push_str("  (none)\n");
    } else {
        let mut attempts = Table::with_headers(&[
            "#", "WORKER", "STARTED", "DURATION", "OUTCOME", "EXIT", "ERROR",
        ]);
        for attempt in &datum.attempts {
            let exit = match (attempt.exit_code, attempt.signal) {
                (_, Some(signal)) => format!("signal {signal}"),
                (Some(code), None) => code.to_string(),
                (None, None) => NONE.to_owned(),
            };
            // One line per attempt: the first line of its error.
            let error = attempt
                .error_message
                .as_deref()
                .and_then(|e| e.lines().next())
                .unwrap_or(NONE);
            attempts.row([
                attempt.number.to_string(),
                attempt.worker_id.clone(),
                output::maybe_time(Some(attempt.started_at)),
                output::elapsed(Some(attempt.started_at), attempt.finished_at, now),
                attempt
                    .outcome
                    .map_or("running".to_owned(), |o| o.as_str().to_owned()),
                exit,
                error.to_owned(),
            ]);
        }
        out.push_str(&attempts.render());
        if let Some(stats) = crate::stats::attempts_table(&datum.attempts) {
            out.push_str("\nAttempt statistics:\n");
            out.push_str(&stats.render());
        }
    }

    out.push_str("\nOutput files:\n");
    if datum.output_files.is_empty() {
        out.push_str("  (none)\n");
    } else {
        let mut files = Table::with_headers(&["SIZE", "URI"]);
        for file in &datum.output_files {
            files.row([output::size(file.size), file.uri.clone()]);
        }
        out.push_str(&files.render());
    }

    // Errors and output are shown whole and unaligned: they are often many
    // lines, and the point of `describe` is to see all of them.
    if let Some(error) = &summary.error_message {
        out.push_str("\nError:\n");
        push_indented(&mut out, error);
    }
    match datum.output.as_deref().map(str::trim_end) {
        Some(text) if !text.is_empty() => {
            out.push_str("\nOutput of the last attempt:\n");
            push_indented(&mut out, text);
        }
        _ => {}
    }
    out
}

fn push_indented(out: &mut String, text: &str) {
    for line in text.trim_end().lines() {
        out.push_str("  ");
        out.push_str(line);
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use falconeri_common::{
        api::{AttemptResponse, AttemptStats, DatumSummary, InputFileResponse, OutputFileResponse},
        status::{DatumStatus, Outcome},
    };

    use super::*;

    #[test]
    fn describes_everything() {
        let datum = DatumResponse {
            datum: DatumSummary {
                id: 17,
                job_id: 3,
                status: DatumStatus::Error,
                attempt: 3,
                interrupted: 0,
                max_tries: 3,
                owner: None,
                started_at: Some(0),
                finished_at: Some(65_000),
                error_message: Some("exit status 1".into()),
                skipped_from: None,
                skipped_from_job: None,
            },
            input_files: vec![InputFileResponse {
                uri: "file:///data/books/a.txt".into(),
                local_path: "books/a.txt".into(),
            }],
            output_files: vec![OutputFileResponse {
                uri: "file:///out/a.csv".into(),
                size: 2048,
            }],
            output: Some("reading a.txt\nTraceback\n".into()),
            fingerprint: None,
            attempts: vec![
                AttemptResponse {
                    number: 1,
                    worker_id: "w-1".into(),
                    started_at: 0,
                    finished_at: Some(5_000),
                    outcome: Some(Outcome::LeaseExpired),
                    exit_code: None,
                    signal: None,
                    error_message: Some("lease expired".into()),
                    stats: None,
                },
                AttemptResponse {
                    number: 2,
                    worker_id: "w-2".into(),
                    started_at: 6_000,
                    finished_at: Some(65_000),
                    outcome: Some(Outcome::Error),
                    exit_code: Some(1),
                    signal: None,
                    error_message: Some("exit status 1\nmore".into()),
                    stats: Some(AttemptStats {
                        download_files: Some(1),
                        download_bytes: Some(10),
                        download_ms: Some(5),
                        command_ms: Some(58_000),
                        user_cpu_ms: Some(1_500),
                        system_cpu_ms: Some(200),
                        max_rss_bytes: Some(3 << 20),
                        ..AttemptStats::default()
                    }),
                },
            ],
        };
        assert_eq!(
            render(&datum, 0),
            "Datum:     17\n\
             Job:       3\n\
             Status:    error\n\
             Tries:     3 of 3\n\
             Owner:     -\n\
             Started:   1970-01-01T00:00:00Z\n\
             Finished:  1970-01-01T00:01:05Z\n\
             Duration:  1m 5s\n\
             \n\
             Input files:\n\
             LOCAL PATH   URI\n\
             books/a.txt  file:///data/books/a.txt\n\
             \n\
             Attempts:\n\
             #  WORKER  STARTED               DURATION  OUTCOME        EXIT  ERROR\n\
             1  w-1     1970-01-01T00:00:00Z  5s        lease_expired  -     lease expired\n\
             2  w-2     1970-01-01T00:00:06Z  59s       error          1     exit status 1\n\
             \n\
             Attempt statistics:\n\
             #  DOWNLOAD             COMMAND  USER CPU  SYS CPU  PEAK MEM  UPLOAD\n\
             2  1 file, 10 B in 5ms  58s      1s        200ms    3.0 MiB   -\n\
             \n\
             Output files:\n\
             SIZE     URI\n\
             2.0 KiB  file:///out/a.csv\n\
             \n\
             Error:\n  exit status 1\n\
             \n\
             Output of the last attempt:\n  reading a.txt\n  Traceback\n"
        );
    }
}
