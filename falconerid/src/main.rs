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

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Err(err) = falconerid::serve(cli.config, |_| {}).await {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
