//! Attempt and job statistics as `datum describe` and `job describe` show
//! them to people (`-o json` prints the API's bodies instead).

use std::time::Duration;

use falconeri_common::api::{AttemptResponse, AttemptStats, JobStatsResponse, Percentiles};

use crate::output::{self, NONE, Table};

/// Milliseconds for people.
fn ms(value: Option<u64>) -> String {
    value.map_or(NONE.to_owned(), |v| {
        output::duration(Duration::from_millis(v))
    })
}

/// Bytes for people.
fn bytes(value: Option<u64>) -> String {
    value.map_or(NONE.to_owned(), |v| {
        output::size(i64::try_from(v).unwrap_or(i64::MAX))
    })
}

/// `2 files, 1.5 KiB in 30ms`, or [`NONE`] for a phase not reached.
fn transfer(files: Option<u64>, size: Option<u64>, time: Option<u64>) -> String {
    if files.is_none() && size.is_none() && time.is_none() {
        return NONE.to_owned();
    }
    let files = files.map_or(String::new(), |n| {
        format!("{n} file{}, ", if n == 1 { "" } else { "s" })
    });
    format!("{files}{} in {}", bytes(size), ms(time))
}

/// One row per attempt that reported statistics: each phase, the CPU the
/// command used and its peak memory.
pub fn attempts_table(attempts: &[AttemptResponse]) -> Option<Table> {
    let measured: Vec<(i32, &AttemptStats)> = attempts
        .iter()
        .filter_map(|a| a.stats.as_ref().map(|s| (a.number, s)))
        .collect();
    if measured.is_empty() {
        return None;
    }
    let mut table = Table::with_headers(&[
        "#", "DOWNLOAD", "COMMAND", "USER CPU", "SYS CPU", "PEAK MEM", "UPLOAD",
    ]);
    for (number, s) in measured {
        table.row([
            number.to_string(),
            transfer(s.download_files, s.download_bytes, s.download_ms),
            ms(s.command_ms),
            ms(s.user_cpu_ms),
            ms(s.system_cpu_ms),
            bytes(s.max_rss_bytes),
            transfer(s.upload_files, s.upload_bytes, s.upload_ms),
        ]);
    }
    Some(table)
}

/// How one row of the percentile table shows its values.
type Show = dyn Fn(i64) -> String;

/// The statistics section of `job describe`.
pub fn render_job(stats: &JobStatsResponse) -> String {
    let mut out = String::new();
    if stats.measured_attempts == 0 {
        out.push_str("\nStatistics: no attempt has reported any yet.\n");
    } else {
        let of = match stats.window {
            Some(window) => format!(" of the newest {window}"),
            None => String::new(),
        };
        out.push_str(&format!(
            "\nStatistics ({} attempts measured{of}):\n",
            stats.measured_attempts
        ));
        let mut table = Table::with_headers(&["", "P50", "P95", "MAX", "ATTEMPTS"]);
        let duration = |v: i64| ms(u64::try_from(v).ok());
        let size = |v: i64| output::size(v);
        let cores = |v: i64| format!("{:.2} CPU", v as f64 / 1000.0);
        let rows: [(&str, Option<Percentiles>, &Show); 5] = [
            ("download", stats.phases.download, &duration),
            ("command", stats.phases.command, &duration),
            ("upload", stats.phases.upload, &duration),
            ("peak memory", stats.memory_bytes, &size),
            ("cpu", stats.cpu_millicores, &cores),
        ];
        for (name, percentiles, show) in rows {
            let cells = match percentiles {
                Some(p) => [
                    name.to_owned(),
                    show(p.p50),
                    show(p.p95),
                    show(p.max),
                    p.count.to_string(),
                ],
                None => [name, NONE, NONE, NONE, "0"].map(str::to_owned),
            };
            table.row(cells);
        }
        out.push_str(&table.render());
    }

    let t = &stats.throughput;
    if t.elapsed_ms > 0 {
        out.push_str(&format!(
            "\nThroughput: {:.2} datums/s, {}/s over {} ({} datums done, {} down, {} up)\n",
            t.datums_per_second,
            output::size(t.bytes_per_second as i64),
            ms(u64::try_from(t.elapsed_ms).ok()),
            t.datums_done,
            output::size(t.download_bytes),
            output::size(t.upload_bytes),
        ));
    }

    if !stats.slowest.is_empty() {
        out.push_str("\nSlowest attempts:\n");
        let mut table = Table::with_headers(&[
            "DATUM", "ATTEMPT", "OUTCOME", "DURATION", "DOWNLOAD", "COMMAND", "UPLOAD",
        ]);
        let opt = |v: Option<i64>| ms(v.and_then(|v| u64::try_from(v).ok()));
        for slow in &stats.slowest {
            table.row([
                slow.datum_id.to_string(),
                slow.attempt.to_string(),
                slow.outcome
                    .map_or("running".to_owned(), |o| o.as_str().to_owned()),
                opt(Some(slow.duration_ms)),
                opt(slow.download_ms),
                opt(slow.command_ms),
                opt(slow.upload_ms),
            ]);
        }
        out.push_str(&table.render());
    }

    if !stats.errors.is_empty() {
        out.push_str("\nFailed datums by error:\n");
        let mut table = Table::with_headers(&["COUNT", "EXAMPLE", "ERROR"]);
        for group in &stats.errors {
            table.row([
                group.count.to_string(),
                group.example_datum_id.to_string(),
                output::summary_line(&group.message, 80),
            ]);
        }
        out.push_str(&table.render());
    }

    if let Some(s) = &stats.suggestion {
        out.push_str(&format!(
            "\nSuggested resource_requests: {{\"memory\": \"{}\", \"cpu\": \"{}\"}}\n  \
             (p95 of {} attempts' peak memory and CPU × {}, rounded up)\n",
            s.memory, s.cpu, s.attempts, s.margin
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use falconeri_common::api::{
        ErrorGroup, PhaseStats, ResourceSuggestion, SlowAttempt, Throughput,
    };

    use super::*;

    #[test]
    fn transfers_read_naturally() {
        assert_eq!(transfer(Some(1), Some(10), Some(5)), "1 file, 10 B in 5ms");
        assert_eq!(
            transfer(Some(2), Some(2048), Some(1500)),
            "2 files, 2.0 KiB in 1s"
        );
        assert_eq!(transfer(None, None, None), NONE);
    }

    #[test]
    fn job_statistics_show_every_part() {
        let p = |p50, p95, max| {
            Some(Percentiles {
                count: 4,
                p50,
                p95,
                max,
            })
        };
        let stats = JobStatsResponse {
            window: None,
            job_id: 1,
            measured_attempts: 4,
            phases: PhaseStats {
                download: p(10, 20, 30),
                command: p(1000, 2000, 3000),
                upload: None,
            },
            memory_bytes: p(1 << 20, 2 << 20, 3 << 20),
            cpu_millicores: p(500, 900, 1000),
            throughput: Throughput {
                elapsed_ms: 2000,
                datums_done: 4,
                datums_per_second: 2.0,
                download_bytes: 100,
                upload_bytes: 0,
                bytes_per_second: 50.0,
            },
            slowest: vec![SlowAttempt {
                datum_id: 7,
                attempt: 1,
                outcome: None,
                duration_ms: 3000,
                download_ms: None,
                command_ms: Some(3000),
                upload_ms: None,
            }],
            errors: vec![ErrorGroup {
                message: "command exited with status 3".into(),
                count: 2,
                example_datum_id: 9,
            }],
            suggestion: Some(ResourceSuggestion {
                memory: "3Mi".into(),
                cpu: "1200m".into(),
                margin: 1.25,
                attempts: 4,
            }),
        };
        let text = render_job(&stats);
        for needle in [
            "4 attempts measured",
            "command",
            "2.0 MiB",
            "0.90 CPU",
            "2.00 datums/s",
            "Slowest attempts",
            "command exited with status 3",
            "\"memory\": \"3Mi\"",
            "× 1.25",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }
}
