//! Code shared by the falconeri CLI, server and worker.
//!
//! Everything here but [`db`] and [`models`] is free of database code: the
//! worker and the CLI depend on this crate without the `db` feature, so the
//! compiler keeps them to the REST API.

pub mod api;
pub mod client;
pub mod migrations;
pub mod nul_check;
pub mod pipeline;
pub mod plan;
pub mod status;
pub mod storage;
pub mod text;

#[cfg(feature = "db")]
pub mod db;
#[cfg(feature = "db")]
pub mod models;

/// The version every binary reports, so a CLI can tell it talks to a server of
/// another release.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Milliseconds since the Unix epoch. All timestamps in falconeri use this
/// unit, so both databases store them the same way (`BIGINT`).
pub type Millis = i64;
