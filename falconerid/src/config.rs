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
    /// One Kubernetes batch Job per job, its pods the workers (falconerid
    /// runs in the cluster, or with a kubeconfig).
    Kubernetes,
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

    /// A Unix socket to serve the API on as well, for local workers: the
    /// local executor points its workers at it rather than at the TCP
    /// address, which costs less per byte of their logs. Only the owner may
    /// connect (mode 0600), and requests still need a token. [default: none;
    /// the embedded default uses `falconerid.sock` in its home]
    #[arg(long, env = "FALCONERI_WORKER_SOCKET")]
    pub worker_socket: Option<PathBuf>,

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

    /// The longest a request waits for a database connection before it
    /// fails with 503 (the database is down, or every connection is busy).
    /// PostgreSQL connection attempts time out after as long (at least 2s).
    /// `/readyz` never waits more than 1s.
    #[arg(long, env = "FALCONERI_DB_WAIT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub db_wait: Duration,

    /// How long, on PostgreSQL, the server gathers its changes before it
    /// tells the other replicas of them, in one NOTIFY: a NOTIFY is a
    /// commit, so a busy server sends at most one per this interval instead
    /// of one per change. Other replicas' long-polls hear of a change that
    /// much later; this server's own are woken at once.
    #[arg(long, env = "FALCONERI_NOTIFY_LINGER", default_value = "10ms", value_parser = humantime::parse_duration)]
    pub notify_linger: Duration,

    /// If `listen`'s port is taken, listen on any free port instead (the
    /// embedded default prefers its previous port, so workers that outlived
    /// a crashed server find the new one; any port will do otherwise).
    #[arg(skip)]
    pub listen_fallback: bool,

    /// How many of a job's workers may exit before reserving any datum (they
    /// cannot start: a bad image or command) before the job fails, as a
    /// multiple of its parallelism. Workers that crash after reserving are
    /// replaced with a growing backoff and do not count.
    #[arg(long, env = "FALCONERI_WORKER_RESTARTS", default_value_t = 3)]
    pub worker_restarts: u32,

    /// Kubernetes: the namespace of the worker Jobs [default: the client's
    /// namespace, i.e. falconerid's own in a cluster].
    #[arg(long, env = "FALCONERI_KUBERNETES_NAMESPACE")]
    pub kubernetes_namespace: Option<String>,

    /// Kubernetes: the falconerid image. An init container copies its
    /// `/usr/local/bin/falconeri-worker` into every worker pod, so workers
    /// run in any user image. Required with `--executor kubernetes`.
    #[arg(long, env = "FALCONERI_WORKER_IMAGE")]
    pub worker_image: Option<String>,

    /// Kubernetes: `imagePullPolicy` of that init container.
    #[arg(
        long,
        env = "FALCONERI_KUBERNETES_WORKER_IMAGE_PULL_POLICY",
        default_value = "IfNotPresent",
        value_parser = ["Always", "IfNotPresent", "Never"]
    )]
    pub kubernetes_worker_image_pull_policy: String,

    /// Kubernetes: `ttlSecondsAfterFinished` of worker Jobs. falconerid
    /// deletes a job's Kubernetes Job when the job ends; this only cleans up
    /// the ones it could not.
    #[arg(long, env = "FALCONERI_KUBERNETES_JOB_TTL", default_value = "1h", value_parser = humantime::parse_duration)]
    pub kubernetes_job_ttl: Duration,

    /// Kubernetes: how many times the pods running one datum may be ended
    /// by the infrastructure (evicted, preempted, OOM-killed, node lost)
    /// before the datum fails. Such ends do not use up `datum_tries`; this
    /// bound stops a datum that always exhausts its memory from looping.
    #[arg(
        long,
        env = "FALCONERI_KUBERNETES_MAX_POD_FAILURES",
        default_value_t = 3
    )]
    pub kubernetes_max_pod_failures: u32,

    /// Kubernetes: how long every worker pod of a job may be stuck unable
    /// to start (an image that cannot be pulled, a missing Secret) before
    /// the job fails. Kubernetes itself would retry forever.
    #[arg(long, env = "FALCONERI_KUBERNETES_START_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub kubernetes_start_timeout: Duration,
    /// The most of one attempt's log (stdout, stderr and the worker's own
    /// lines) kept, in bytes. Beyond it the first half and the last half
    /// are kept, and readers are told how many bytes were cut between them.
    #[arg(
        long,
        env = "FALCONERI_MAX_LOG_BYTES",
        default_value_t = falconeri_common::models::DEFAULT_MAX_LOG_BYTES,
        value_parser = clap::value_parser!(i64).range(1..)
    )]
    pub max_log_bytes: i64,
    /// Where the bytes of attempt logs are kept: a directory (a path or a
    /// `file://` URL), one file per chunk the worker sent, or `database` (in
    /// the `log_chunks` table). [default: a directory `attempt-logs` beside
    /// a SQLite database; `database` with PostgreSQL, whose replicas share
    /// no disk]
    #[arg(long, env = "FALCONERI_LOGS_LOCATION")]
    pub logs_location: Option<String>,
    /// How long a dashboard sign-in lasts; after it, the browser signs in
    /// with the admin token again.
    #[arg(long, env = "FALCONERI_DASHBOARD_SESSION_TTL", default_value = "12h", value_parser = humantime::parse_duration)]
    pub dashboard_session_ttl: Duration,
    /// Mark the dashboard's session cookie `Secure` (sent over HTTPS only).
    /// Set it when browsers reach falconerid through a proxy that
    /// terminates TLS; a request forwarded with `X-Forwarded-Proto: https`
    /// gets a `Secure` cookie anyway.
    #[arg(long, env = "FALCONERI_DASHBOARD_SECURE_COOKIE")]
    pub dashboard_secure_cookie: bool,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("database_url", &redact_url(&self.database_url))
            .field("listen", &self.listen)
            .field("token", &"<redacted>")
            .field("public_url", &self.public_url)
            .field("executor", &self.executor)
            .field("worker_socket", &self.worker_socket)
            .field("state_dir", &self.state_dir)
            .field("worker_command", &self.worker_command)
            .field("lease", &self.lease)
            .field("max_wait", &self.max_wait)
            .field("babysitter_interval", &self.babysitter_interval)
            .field("db_pool_size", &self.db_pool_size)
            .field("db_wait", &self.db_wait)
            .field("kubernetes_namespace", &self.kubernetes_namespace)
            .field("worker_image", &self.worker_image)
            .field("max_log_bytes", &self.max_log_bytes)
            .field("logs_location", &self.logs_location)
            .field("dashboard_session_ttl", &self.dashboard_session_ttl)
            .field("dashboard_secure_cookie", &self.dashboard_secure_cookie)
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

/// The embedded default's Unix socket for its workers, in its home.
pub const WORKER_SOCKET_FILE: &str = "falconerid.sock";

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
            worker_socket: Some(home.join(WORKER_SOCKET_FILE)),
            state_dir: home.to_owned(),
            worker_command,
            lease: Duration::from_secs(30),
            max_wait: Duration::from_secs(30),
            babysitter_interval: Duration::from_secs(1),
            db_pool_size: 8,
            db_wait: falconeri_common::db::DEFAULT_WAIT,
            notify_linger: Duration::from_millis(10),
            listen_fallback: true,
            worker_restarts: 3,
            kubernetes_namespace: None,
            worker_image: None,
            kubernetes_worker_image_pull_policy: "IfNotPresent".to_owned(),
            kubernetes_job_ttl: Duration::from_secs(3600),
            kubernetes_max_pod_failures: 3,
            kubernetes_start_timeout: Duration::from_secs(300),
            max_log_bytes: falconeri_common::models::DEFAULT_MAX_LOG_BYTES,
            // Beside the database, in `home` (see `log_store`).
            logs_location: None,
            dashboard_session_ttl: Duration::from_secs(12 * 3600),
            dashboard_secure_cookie: false,
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
        if self.db_wait.is_zero() {
            bail!("--db-wait must be longer than zero");
        }
        self.log_store()?;
        if self.executor == ExecutorKind::Kubernetes {
            match &self.worker_image {
                Some(image) if !image.trim().is_empty() => {}
                _ => bail!(
                    "the Kubernetes executor needs --worker-image (FALCONERI_WORKER_IMAGE): \
                     the falconerid image, which provides falconeri-worker to the pods"
                ),
            }
            if self.public_url.is_none() {
                bail!(
                    "the Kubernetes executor needs --public-url (FALCONERI_PUBLIC_URL), such as \
                     http://falconerid.NAMESPACE.svc:8089: the URL worker pods reach falconerid at"
                );
            }
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

    /// The Kubernetes executor's settings, in `namespace`.
    pub fn kubernetes_settings(&self, namespace: String) -> crate::executor::KubernetesSettings {
        crate::executor::KubernetesSettings {
            namespace,
            worker_image: self.worker_image.clone().unwrap_or_default(),
            worker_image_pull_policy: self.kubernetes_worker_image_pull_policy.clone(),
            job_ttl: self.kubernetes_job_ttl,
            worker_restarts: self.worker_restarts,
            start_timeout: self.kubernetes_start_timeout,
        }
    }

    /// Where attempt logs' bytes go (`--logs-location`, or its default).
    pub fn log_store(&self) -> Result<crate::log_store::LogStore> {
        crate::log_store::LogStore::new(self.logs_location.as_deref(), &self.database_url)
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

    /// Workers in pods need the image that provides them and a URL they can
    /// reach; both are refused with a message naming the setting.
    #[test]
    fn kubernetes_needs_an_image_and_a_public_url() {
        let mut config = Config::local(Path::new("/tmp/x"), "0123456789abcdef0123".into(), vec![]);
        config.executor = ExecutorKind::Kubernetes;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("FALCONERI_WORKER_IMAGE"), "{err}");
        config.worker_image = Some("falconeri/falconerid:0.3.0".into());
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("FALCONERI_PUBLIC_URL"), "{err}");
        config.public_url = Some("http://falconerid.batch.svc:8089".into());
        config.validate().unwrap();
    }

    /// The settings the deploy manifest sets reach the executor by their
    /// environment names.
    #[test]
    fn kubernetes_settings_come_from_the_environment() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            config: Config,
        }
        let cli = Cli::try_parse_from([
            "falconerid",
            "--database-url=sqlite:///tmp/x.db",
            "--token=0123456789abcdef0123",
            "--executor=kubernetes",
            "--worker-image=falconeri/falconerid:1",
            "--kubernetes-namespace=batch",
            "--kubernetes-job-ttl=10m",
            "--kubernetes-max-pod-failures=5",
            "--kubernetes-worker-image-pull-policy=Always",
        ])
        .unwrap();
        let settings = cli.config.kubernetes_settings("batch".into());
        assert_eq!(settings.job_ttl, Duration::from_secs(600));
        assert_eq!(settings.worker_image_pull_policy, "Always");
        assert_eq!(cli.config.kubernetes_max_pod_failures, 5);
        assert!(
            Cli::try_parse_from([
                "falconerid",
                "--database-url=x",
                "--token=0123456789abcdef0123",
                "--kubernetes-worker-image-pull-policy=Sometimes",
            ])
            .is_err()
        );
    }
}
