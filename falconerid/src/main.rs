//! The falconerid binary: parse the config, run the server.

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// falconeri's server: REST API, database, workers and babysitter.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    config: falconerid::Config,
}

fn main() {
    falconeri_common::malloc::keep_large_buffers();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            std::process::exit(1);
        }
    };
    runtime.block_on(serve());
}

async fn serve() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, never in a log file.
        .with_ansi(falconeri_common::log_colors())
        .init();
    let cli = Cli::parse();
    // A local worker killed outright leaves its command's processes behind;
    // as their subreaper we inherit them, and the local executor kills
    // them (see `executor::local`).
    falconeri_common::process_tree::become_subreaper();
    if let Err(err) = falconerid::serve(cli.config, |_| {}).await {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
