//! Printing log streams (`datum logs`, `job logs`): each line with its
//! stream and time for people, or one JSON object per event for scripts,
//! and the exit status of what was followed.

use std::{
    io::Write as _,
    time::{Duration, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use falconeri_common::{
    api::LogEvent,
    client::LogEvents,
    status::{JobStatus, Outcome},
};

/// How a stream ended, for the exit status of a follow.
#[derive(Debug, Default)]
pub struct Ended {
    /// The last attempt that ended: its number, outcome and error.
    pub attempt: Option<(i32, Outcome, Option<String>)>,
    pub job: Option<JobStatus>,
}

/// Prints every event of `events`; `with_datum` prefixes lines with their
/// datum (a job's logs).
pub async fn print(mut events: LogEvents, json: bool, with_datum: bool) -> Result<Ended> {
    let mut ended = Ended::default();
    let mut stdout = std::io::stdout().lock();
    while let Some(event) = events.next().await {
        let event = event.context("the log stream failed")?;
        if json {
            let line = serde_json::to_string(&event).context("cannot format an event")?;
            writeln!(stdout, "{line}")?;
        } else {
            write_text(&mut stdout, &event, with_datum)?;
        }
        match event {
            LogEvent::AttemptEnd {
                attempt,
                outcome,
                error_message,
                ..
            } => ended.attempt = Some((attempt, outcome, error_message)),
            LogEvent::JobEnd { status, .. } => ended.job = Some(status),
            _ => {}
        }
        // Followers watch lines as they come.
        stdout.flush()?;
    }
    Ok(ended)
}

/// One event for people. Lines are written as the bytes the command
/// printed (invalid UTF-8 included), after `time stream |`.
fn write_text(out: &mut impl std::io::Write, event: &LogEvent, with_datum: bool) -> Result<()> {
    let prefix = |datum_id: i64, attempt: i32| {
        if with_datum {
            format!("datum {datum_id} attempt {attempt}")
        } else {
            format!("attempt {attempt}")
        }
    };
    match event {
        LogEvent::Line {
            datum_id,
            attempt,
            stream,
            at,
            text,
            base64,
        } => {
            let line = falconeri_common::api::LogLine {
                stream: *stream,
                at: *at,
                text: text.clone(),
                base64: base64.clone(),
            };
            let bytes = line
                .bytes()
                .map_err(|err| anyhow::anyhow!("bad line: {err}"))?;
            write!(
                out,
                "{} {} {stream} | ",
                time(*at),
                prefix(*datum_id, *attempt)
            )?;
            out.write_all(&bytes)?;
            if !bytes.ends_with(b"\n") {
                out.write_all(b"\n")?;
            }
        }
        LogEvent::Cut {
            datum_id,
            attempt,
            bytes,
        } => writeln!(
            out,
            "{} … {bytes} bytes cut (log cap) …",
            prefix(*datum_id, *attempt)
        )?,
        LogEvent::AttemptEnd {
            datum_id,
            attempt,
            outcome,
            exit_code,
            error_message,
            ..
        } => {
            let code = exit_code
                .map(|c| format!(", exit status {c}"))
                .unwrap_or_default();
            let error = error_message
                .as_deref()
                .map(|e| format!(": {}", e.lines().next().unwrap_or_default()))
                .unwrap_or_default();
            writeln!(
                out,
                "{} ended: {outcome}{code}{error}",
                prefix(*datum_id, *attempt)
            )?;
        }
        LogEvent::JobEnd { job_id, status } => writeln!(out, "job {job_id} ended: {status}")?,
    }
    Ok(())
}

/// A line's time, to the millisecond.
fn time(at: i64) -> String {
    match u64::try_from(at) {
        Ok(ms) => {
            humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
        }
        Err(_) => format!("{at}ms"),
    }
}

/// The exit status of `datum logs -f`: success only if the followed
/// attempt ended `done`.
pub fn attempt_status(datum_id: i64, ended: &Ended) -> Result<()> {
    match &ended.attempt {
        Some((_, Outcome::Done, _)) => Ok(()),
        Some((attempt, outcome, error)) => bail!(
            "attempt {attempt} of datum {datum_id} ended {outcome}{}",
            error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ),
        None => bail!("the log stream of datum {datum_id} ended before its attempt did"),
    }
}

/// The exit status of `job logs -f`: success only if the job ended `done`.
pub fn job_status(name: &str, ended: &Ended) -> Result<()> {
    match ended.job {
        Some(JobStatus::Done) => Ok(()),
        Some(status) => bail!("job {name} finished with status {status}"),
        None => bail!("the log stream of job {name} ended before the job did"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use falconeri_common::api::{LogLine, LogStream};

    #[test]
    fn lines_keep_their_bytes_and_say_their_stream() {
        let line = LogLine::new(LogStream::Stderr, 0, b"bad \xff\n");
        let event = LogEvent::line(7, 2, line);
        let mut out = Vec::new();
        write_text(&mut out, &event, true).unwrap();
        assert_eq!(
            out,
            b"1970-01-01T00:00:00.000Z datum 7 attempt 2 stderr | bad \xff\n".to_vec()
        );
    }

    #[test]
    fn follows_end_with_the_status() {
        let done = Ended {
            attempt: Some((1, Outcome::Done, None)),
            job: Some(JobStatus::Done),
        };
        assert!(attempt_status(1, &done).is_ok());
        assert!(job_status("j", &done).is_ok());
        let failed = Ended {
            attempt: Some((2, Outcome::Error, Some("boom".into()))),
            job: Some(JobStatus::Error),
        };
        assert!(
            attempt_status(1, &failed)
                .unwrap_err()
                .to_string()
                .contains("boom")
        );
        assert!(job_status("j", &failed).is_err());
        assert!(job_status("j", &Ended::default()).is_err());
    }
}
