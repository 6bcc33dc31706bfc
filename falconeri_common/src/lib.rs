//! Code shared by the falconeri CLI, server and worker.
//!
//! Everything here but [`db`] and [`models`] is free of database code: the
//! worker and the CLI depend on this crate without the `db` feature, so the
//! compiler keeps them to the REST API.

pub mod api;
pub mod client;
pub mod failure_policy;
pub mod fingerprint;
pub mod glob;
pub mod log_frame;
pub mod malloc;
pub mod migrations;
pub mod nul_check;
pub mod pipeline;
pub mod plan;
pub mod process_tree;
pub mod schedule;
pub mod spill_sort;
pub mod status;
pub mod storage;
pub mod text;
pub mod workflow;

#[cfg(feature = "db")]
pub mod db;
#[cfg(feature = "db")]
pub mod models;

/// The version every binary reports, so a CLI can tell it talks to a server of
/// another release.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Whether log lines written to stderr may carry ANSI colour codes: only
/// when a person reads them at a terminal, never in a log file or a pipe
/// (where the codes are noise that breaks `grep`), and never when
/// `NO_COLOR` is set to anything (<https://no-color.org>). Every binary
/// passes this to its tracing subscriber's `with_ansi`.
pub fn log_colors() -> bool {
    use std::io::IsTerminal as _;
    colors_for(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    )
}

/// [`log_colors`] without the environment, for tests.
fn colors_for(is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    is_terminal && no_color.is_none_or(|value| value.is_empty())
}

/// Milliseconds since the Unix epoch. All timestamps in falconeri use this
/// unit, so both databases store them the same way (`BIGINT`).
pub type Millis = i64;

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::colors_for;

    #[test]
    fn colors_only_at_a_terminal_without_no_color() {
        assert!(colors_for(true, None));
        assert!(colors_for(true, Some(OsStr::new(""))));
        assert!(!colors_for(true, Some(OsStr::new("1"))));
        assert!(!colors_for(false, None));
    }
}
