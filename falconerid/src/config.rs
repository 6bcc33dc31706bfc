//! falconerid's configuration: every path, address, interval and limit, read
//! once from flags or the environment and passed down.

use std::{
    ffi::OsString,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};

/// Which executor starts workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExecutorKind {
    /// Worker processes on this machine.
    Local,
}

/// falconerid's settings.
#[derive(Clone, clap::Args)]
pub struct Config {
    /// Database: `postgres://user:password@host/db`, or `sqlite://PATH`.
    #[arg(long, env = "FALCONERI_DATABASE_URL")]
    pub database_url: String,

    /// Address to listen on. Port 0 picks a free port.
    #[arg(long, env = "FALCONERI_LISTEN", default_value = "0.0.0.0:8089")]
    pub listen: SocketAddr,

    /// The admin bearer token clients must present.
    #[arg(long, env = "FALCONERI_TOKEN", hide_env_values = true)]
    pub token: String,

    /// The URL workers use to reach this server (default: the listening
    /// address, with 127.0.0.1 for an unspecified host).
    #[arg(long, env = "FALCONERI_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// Which executor starts workers.
    #[arg(long, env = "FALCONERI_EXECUTOR", value_enum, default_value = "local")]
    pub executor: ExecutorKind,

    /// Directory for local workers' work directories and logs.
    #[arg(long, env = "FALCONERI_STATE_DIR", default_value = "falconeri-state")]
    pub state_dir: PathBuf,

    /// The program (and arguments) that runs a local worker. Default: the
    /// `falconeri-worker` binary next to this one.
    #[arg(long, env = "FALCONERI_WORKER_COMMAND", num_args = 1.., value_delimiter = ' ')]
    pub worker_command: Vec<OsString>,

    /// How long a reservation lasts without a heartbeat.
    #[arg(long, env = "FALCONERI_LEASE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub lease: Duration,

    /// The longest a reserve or progress request waits (long-poll).
    #[arg(long, env = "FALCONERI_MAX_WAIT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub max_wait: Duration,

    /// How often the babysitter checks leases, timeouts and finished jobs.
    #[arg(long, env = "FALCONERI_BABYSITTER_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    pub babysitter_interval: Duration,

    /// Database connections in the pool.
    #[arg(long, env = "FALCONERI_DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: u32,

    /// If `listen`'s port is taken, listen on any free port instead (the
    /// embedded default prefers its previous port, so workers that outlived
    /// a crashed server find the new one; any port will do otherwise).
    #[arg(skip)]
    pub listen_fallback: bool,

    /// How many times the workers of one job may exit early and be replaced
    /// before the job fails, as a multiple of its parallelism.
    #[arg(long, env = "FALCONERI_WORKER_RESTARTS", default_value_t = 3)]
    pub worker_restarts: u32,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("database_url", &redact_url(&self.database_url))
            .field("listen", &self.listen)
            .field("token", &"<redacted>")
            .field("public_url", &self.public_url)
            .field("executor", &self.executor)
            .field("state_dir", &self.state_dir)
            .field("worker_command", &self.worker_command)
            .field("lease", &self.lease)
            .field("max_wait", &self.max_wait)
            .field("babysitter_interval", &self.babysitter_interval)
            .finish_non_exhaustive()
    }
}

/// A database URL without its password, for logs.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(start), Some(at)) if at > start => {
            let userinfo = &url[start + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..start + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// Where the embedded default records the port it listened on.
pub const LAST_PORT_FILE: &str = "last-port";

impl Config {
    /// The embedded default: SQLite under `home`, listening on loopback (on
    /// the port recorded in `home/last-port` if it is free, so workers that
    /// outlived a crashed server reconnect to its successor; else on any free
    /// port), local workers started with `worker_command`.
    pub fn local(home: &Path, token: String, worker_command: Vec<OsString>) -> Config {
        let port = std::fs::read_to_string(home.join(LAST_PORT_FILE))
            .ok()
            .and_then(|text| text.trim().parse::<u16>().ok())
            .unwrap_or(0);
        Config {
            database_url: format!("sqlite://{}", home.join("falconeri.sqlite3").display()),
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            token,
            public_url: None,
            executor: ExecutorKind::Local,
            state_dir: home.to_owned(),
            worker_command,
            lease: Duration::from_secs(30),
            max_wait: Duration::from_secs(30),
            babysitter_interval: Duration::from_secs(1),
            db_pool_size: 8,
            listen_fallback: true,
            worker_restarts: 3,
        }
    }

    /// Checks settings that clap cannot.
    pub fn validate(&self) -> Result<()> {
        if self.token.len() < 16 {
            bail!("the admin token must be at least 16 characters");
        }
        if self.lease < Duration::from_secs(1) {
            bail!("--lease must be at least 1s");
        }
        Ok(())
    }

    /// The worker command, defaulting to `falconeri-worker` beside this binary.
    pub fn worker_command(&self) -> Result<Vec<OsString>> {
        if !self.worker_command.is_empty() {
            return Ok(self.worker_command.clone());
        }
        let exe = std::env::current_exe().context("cannot find this program's path")?;
        let dir = exe.parent().context("this program has no directory")?;
        Ok(vec![dir.join("falconeri-worker").into_os_string()])
    }

    /// The lease in milliseconds.
    pub fn lease_ms(&self) -> i64 {
        i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://falconeri:secret@db:5432/falconeri"),
            "postgres://falconeri:***@db:5432/falconeri"
        );
        assert_eq!(redact_url("sqlite:///x/y.db"), "sqlite:///x/y.db");
    }

    #[test]
    fn short_tokens_are_refused() {
        let mut config = Config::local(Path::new("/tmp/x"), "short".into(), vec![]);
        assert!(config.validate().is_err());
        config.token = "0123456789abcdef0123".into();
        assert!(config.validate().is_ok());
    }
}
