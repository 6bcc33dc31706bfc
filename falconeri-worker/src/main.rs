//! The `falconeri-worker` binary: parses its configuration, sets up logging
//! and runs the worker until the job has no work left.

use std::process::ExitCode;

use clap::Parser;
use falconeri_worker::Config;
use tracing_subscriber::EnvFilter;

/// Reserve datums of a falconeri job, run them, upload and report.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    config: Config,
}

fn main() -> ExitCode {
    falconeri_common::malloc::keep_large_buffers();
    let cli = Cli::parse();
    // Logs go to stderr, so stdout carries only the commands' own output.
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal: the local executor
        // writes our stderr to a log file.
        .with_ansi(falconeri_common::log_colors())
        .init();
    let result = falconeri_worker::runtime()
        .and_then(|runtime| runtime.block_on(falconeri_worker::run(cli.config)));
    match result {
        Ok(exit) => ExitCode::from(exit.status()),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
