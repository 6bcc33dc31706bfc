//! Printing results: aligned text tables, timestamps, durations and sizes for
//! people, and JSON for scripts.

use std::{
    fmt::Write as _,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use falconeri_common::Millis;
use serde::Serialize;

/// Shown for a value that is not there (no start time yet, no owner).
pub const NONE: &str = "-";

/// Columns separated by two spaces, each as wide as its widest cell. The last
/// column is not padded, so lines carry no trailing spaces.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table whose first row is `headers`.
    pub fn with_headers(headers: &[&str]) -> Table {
        let mut table = Table::default();
        table.row(headers.iter().map(|header| header.to_string()));
        table
    }

    /// Adds a row. Control characters (such as newlines in an error message)
    /// would break the alignment, so each becomes a space.
    pub fn row(&mut self, cells: impl IntoIterator<Item = impl Into<String>>) -> &mut Table {
        self.rows.push(
            cells
                .into_iter()
                .map(|cell| {
                    cell.into()
                        .chars()
                        .map(|c| if c.is_control() { ' ' } else { c })
                        .collect()
                })
                .collect(),
        );
        self
    }

    /// The table as text, one line per row, each ending in a newline.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = Vec::new();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                let width = cell.chars().count();
                match widths.get_mut(i) {
                    Some(w) => *w = (*w).max(width),
                    None => widths.push(width),
                }
            }
        }
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let width = widths.get(i).copied().unwrap_or(0);
                    // Writing to a String cannot fail.
                    let _ = write!(line, "{cell:<width$}  ");
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Prints `value` as pretty JSON on stdout.
pub fn print_json(value: &impl Serialize) -> Result<()> {
    let json = serde_json::to_string_pretty(value).context("cannot format the answer as JSON")?;
    println!("{json}");
    Ok(())
}

/// A timestamp as RFC 3339 in UTC, to the second.
pub fn time(millis: Millis) -> String {
    match u64::try_from(millis) {
        Ok(millis) => humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(millis))
            .to_string(),
        // Before 1970: not something falconerid writes, but show it as is.
        Err(_) => format!("{millis}ms"),
    }
}

/// An optional timestamp, or [`NONE`].
pub fn maybe_time(millis: Option<Millis>) -> String {
    millis.map_or_else(|| NONE.to_owned(), time)
}

/// A duration for people: whole seconds once it is a second or more
/// (`2h 3m 4s`), milliseconds below that.
pub fn duration(duration: Duration) -> String {
    let rounded = if duration >= Duration::from_secs(1) {
        Duration::from_secs(duration.as_secs())
    } else {
        Duration::from_millis(u64::try_from(duration.as_millis()).unwrap_or(0))
    };
    if rounded.is_zero() {
        "0s".to_owned()
    } else {
        humantime::format_duration(rounded).to_string()
    }
}

/// How long something between `started` and `finished` took; something still
/// going counts until `now`. [`NONE`] if it has not started.
pub fn elapsed(started: Option<Millis>, finished: Option<Millis>, now: Millis) -> String {
    match started {
        Some(started) => {
            let end = finished.unwrap_or(now);
            duration(Duration::from_millis(
                u64::try_from(end.saturating_sub(started)).unwrap_or(0),
            ))
        }
        None => NONE.to_owned(),
    }
}

/// The current time, in the unit the API uses.
pub fn now_millis() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            Millis::try_from(since.as_millis()).unwrap_or(Millis::MAX)
        })
}

/// A byte count for people, in binary units: `512 B`, `1.5 KiB`.
pub fn size(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    // Precision beyond three digits does not matter for display.
    let mut value = bytes as f64 / 1024.0;
    let mut unit = UNITS[0];
    for next in &UNITS[1..] {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    format!("{value:.1} {unit}")
}

/// The first line of `text`, shortened to `max` characters, for table cells;
/// the full text is one `describe` away.
pub fn summary_line(text: &str, max: usize) -> String {
    let line = text.trim().lines().next().unwrap_or_default();
    if line.chars().count() <= max {
        line.to_owned()
    } else {
        let mut short: String = line.chars().take(max.saturating_sub(1)).collect();
        short.push('…');
        short
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let mut table = Table::with_headers(&["ID", "STATUS", "ERROR"]);
        table.row(["1", "done", ""]);
        table.row(["12345", "error", "exit status 3"]);
        assert_eq!(
            table.render(),
            "ID     STATUS  ERROR\n\
             1      done\n\
             12345  error   exit status 3\n"
        );
    }

    #[test]
    fn cells_are_counted_in_characters() {
        let mut table = Table::default();
        table.row(["é", "x"]);
        table.row(["ab", "y"]);
        assert_eq!(table.render(), "é   x\nab  y\n");
    }

    #[test]
    fn newlines_do_not_break_rows() {
        let mut table = Table::default();
        table.row(["a\nb", "c"]);
        assert_eq!(table.render(), "a b  c\n");
    }

    #[test]
    fn short_rows_are_fine() {
        let mut table = Table::with_headers(&["A", "B"]);
        table.row(["x"]);
        assert_eq!(table.render(), "A  B\nx\n");
    }

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(time(0), "1970-01-01T00:00:00Z");
        assert_eq!(time(1_700_000_000_999), "2023-11-14T22:13:20Z");
        assert_eq!(maybe_time(None), "-");
    }

    #[test]
    fn durations_are_humanized() {
        assert_eq!(duration(Duration::from_millis(0)), "0s");
        assert_eq!(duration(Duration::from_millis(450)), "450ms");
        assert_eq!(duration(Duration::from_millis(123_456)), "2m 3s");
        assert_eq!(duration(Duration::from_secs(7_384)), "2h 3m 4s");
        assert_eq!(elapsed(Some(1_000), Some(4_500), 0), "3s");
        assert_eq!(elapsed(Some(1_000), None, 61_000), "1m");
        assert_eq!(elapsed(None, None, 61_000), "-");
    }

    #[test]
    fn sizes_use_binary_units() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(5 * 1024 * 1024), "5.0 MiB");
    }

    #[test]
    fn summaries_take_the_first_line() {
        assert_eq!(summary_line("boom\ndetails", 10), "boom");
        assert_eq!(summary_line("abcdefghijkl", 5), "abcd…");
    }
}
