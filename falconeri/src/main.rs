//! The `falconeri` command line: parse, run one command, and print any
//! error's whole cause chain on one line, exiting 1 (or 2 for input that was
//! refused, 3 for a job done with failed datums; see [`error`]).

mod cli;
mod cli_flow;
mod cluster;
mod config;
mod datum;
mod db;
mod deploy;
mod error;
mod generate;
mod job;
mod local;
mod logs;
mod output;
mod proxy;
mod schedule;
mod stats;
mod workflow;

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;

use crate::{
    cli::{Cli, Command, InternalCommand, LocalCommand},
    config::Config,
};

fn main() -> ExitCode {
    falconeri_common::malloc::keep_large_buffers();
    let args: Vec<_> = std::env::args_os().collect();
    let result = if cli::is_internal_worker(&args) {
        run_worker(cli::parse_worker(args))
    } else {
        run(Cli::parse_from(args))
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{}: {err:#}", error::label(&err));
            ExitCode::from(error::exit_code(&err))
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    // The server's log is its stderr, so it logs more than a command does.
    // So does the proxy, which logs each change of pod.
    let server = matches!(cli.command, Command::Internal(_) | Command::Proxy(_));
    init_tracing(if server { "info" } else { "warn" });
    let config = Config::from_args(cli.global);
    runtime()?.block_on(dispatch(&config, cli.command))
}

async fn dispatch(config: &Config, command: Command) -> Result<()> {
    match command {
        Command::Job(command) => job::run(config, command).await,
        Command::Datum(command) => datum::run(config, command).await,
        Command::Workflow(command) => workflow::run(config, command).await,
        Command::Schedule(command) => schedule::run(config, command).await,
        Command::Schema => output::print_json(&falconeri_common::pipeline::json_schema()),
        Command::Local(LocalCommand::Status) => local::status(config).await,
        Command::Local(LocalCommand::Stop) => local::stop(config).await,
        Command::Internal(InternalCommand::Server) => local::serve(config).await,
        Command::Proxy(args) => proxy::run(config, args).await,
        Command::Migrate(args) => db::migrate(config, args).await,
        Command::Db(command) => db::run(config, command).await,
        Command::Deploy(args) => deploy::deploy(config, &args).await,
        Command::Undeploy(args) => deploy::undeploy(config, &args).await,
        Command::Completions { shell } => generate::completions(shell),
        Command::Man { out } => generate::man(config, out.as_deref()),
    }
}

fn run_worker(cli: cli::WorkerCli) -> Result<()> {
    init_tracing("info");
    // The local executor does not read a worker's exit status (it decides
    // by the database), so a stopped worker exits 0 here.
    falconeri_worker::runtime()?
        .block_on(falconeri_worker::run(cli.config))
        .map(|_exit| ())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Logs go to stderr, filtered by RUST_LOG, else at `default` level.
fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Fails only if a subscriber is already set, and then logs still flow.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colors only for people (and not with NO_COLOR): the local
        // server's and workers' stderr is a log file.
        .with_ansi(falconeri_common::log_colors())
        .try_init();
}
