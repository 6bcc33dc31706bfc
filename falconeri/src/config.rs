//! Everything the CLI takes from its environment, resolved once from the
//! command line (and the variables clap reads for it): which server to use,
//! where the local server lives, how output is printed, and how long to wait.

use std::{
    io::IsTerminal,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, anyhow};
use falconeri_common::client::Client;

use crate::{
    cli::{GlobalArgs, OutputFormat},
    local,
};

/// The CLI's configuration.
#[derive(Debug)]
pub struct Config {
    pub output: OutputFormat,
    pub server: Server,
    /// The local server's directory; `None` when the platform has no data
    /// directory and FALCONERI_HOME is unset, which only matters to commands
    /// that use the local server.
    home: Option<PathBuf>,
    /// Whether stdout is a terminal, so progress bars make sense.
    pub stdout_is_terminal: bool,
    /// How long each `job wait` long-poll asks the server to hold on.
    pub progress_wait: Duration,
    /// How long a new local server may take to print `ready`.
    pub ready_timeout: Duration,
    /// How long an existing local server may take to answer before it is
    /// considered gone.
    pub probe_timeout: Duration,
    /// How long `local stop` waits for the server to finish.
    pub stop_timeout: Duration,
}

/// Which falconerid the CLI talks to.
#[derive(Clone, PartialEq, Eq)]
pub enum Server {
    /// A server given by URL.
    Remote { url: String, token: Option<String> },
    /// The embedded server on this machine, started on demand.
    Local,
}

// By hand, so the token never lands in a debug log.
impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Server::Remote { url, token } => f
                .debug_struct("Remote")
                .field("url", url)
                .field("token", &token.as_ref().map(|_| "<redacted>"))
                .finish(),
            Server::Local => f.write_str("Local"),
        }
    }
}

impl Server {
    /// `--local` wins, so it works with FALCONERI_SERVER set; otherwise a
    /// non-empty `--server` selects that server.
    pub fn resolve(server: Option<String>, token: Option<String>, local: bool) -> Server {
        match server {
            Some(url) if !local && !url.trim().is_empty() => Server::Remote {
                url: url.trim().to_owned(),
                token: token.filter(|token| !token.is_empty()),
            },
            _ => Server::Local,
        }
    }
}

impl Config {
    /// Resolves the configuration from the global flags.
    pub fn from_args(args: GlobalArgs) -> Config {
        Config {
            output: args.output,
            server: Server::resolve(args.server, args.token, args.local),
            home: resolve_home(args.home, dirs::data_dir()),
            stdout_is_terminal: std::io::stdout().is_terminal(),
            progress_wait: Duration::from_secs(30),
            ready_timeout: Duration::from_secs(60),
            probe_timeout: Duration::from_secs(5),
            stop_timeout: Duration::from_secs(60),
        }
    }

    /// The local server's directory.
    pub fn home(&self) -> Result<&Path> {
        self.home.as_deref().ok_or_else(|| {
            anyhow!("cannot find a data directory for the local server; set FALCONERI_HOME")
        })
    }

    /// True when results go out as JSON.
    pub fn json(&self) -> bool {
        self.output == OutputFormat::Json
    }

    /// True when a live progress bar is wanted.
    pub fn show_progress(&self) -> bool {
        self.stdout_is_terminal && !self.json()
    }

    /// A client for the configured server, starting the local one if needed.
    pub async fn client(&self) -> Result<Client> {
        match &self.server {
            Server::Remote { url, token } => {
                Client::new(url, token.clone()).context("invalid --server (FALCONERI_SERVER)")
            }
            Server::Local => local::ensure_server(self).await,
        }
    }
}

/// FALCONERI_HOME (or `--home`) if set, else `falconeri` in the platform's
/// data directory. Made absolute, because it is handed to the server process.
fn resolve_home(home: Option<PathBuf>, data_dir: Option<PathBuf>) -> Option<PathBuf> {
    let home = match home {
        Some(home) if !home.as_os_str().is_empty() => home,
        _ => data_dir?.join("falconeri"),
    };
    Some(std::path::absolute(&home).unwrap_or(home))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_flag_selects_a_remote_server() {
        assert_eq!(
            Server::resolve(Some("http://h:1".into()), Some("t".into()), false),
            Server::Remote {
                url: "http://h:1".into(),
                token: Some("t".into())
            }
        );
    }

    #[test]
    fn no_server_means_local() {
        assert_eq!(
            Server::resolve(None, Some("t".into()), false),
            Server::Local
        );
        // An empty variable (`FALCONERI_SERVER=`) is the same as none.
        assert_eq!(
            Server::resolve(Some(" ".into()), None, false),
            Server::Local
        );
    }

    #[test]
    fn local_flag_beats_the_server_variable() {
        assert_eq!(
            Server::resolve(Some("http://h:1".into()), None, true),
            Server::Local
        );
    }

    #[test]
    fn empty_token_is_no_token() {
        assert_eq!(
            Server::resolve(Some("http://h:1".into()), Some(String::new()), false),
            Server::Remote {
                url: "http://h:1".into(),
                token: None
            }
        );
    }

    #[test]
    fn token_is_not_debug_printed() {
        let server = Server::resolve(Some("http://h:1".into()), Some("secret".into()), false);
        assert!(!format!("{server:?}").contains("secret"));
    }

    #[test]
    fn home_defaults_to_the_data_directory() {
        let data = Some(PathBuf::from("/data"));
        assert_eq!(
            resolve_home(None, data.clone()),
            Some(PathBuf::from("/data/falconeri"))
        );
        assert_eq!(
            resolve_home(Some(PathBuf::from("/h")), data.clone()),
            Some(PathBuf::from("/h"))
        );
        assert_eq!(
            resolve_home(Some(PathBuf::new()), data),
            Some(PathBuf::from("/data/falconeri"))
        );
        assert_eq!(resolve_home(None, None), None);
        let relative = resolve_home(Some(PathBuf::from("rel")), None).expect("resolves");
        assert!(relative.is_absolute() && relative.ends_with("rel"));
    }
}
