//! The command line: every command, flag and its help text. Nothing here
//! does any work; [`crate::config::Config`] and the command modules do.

use std::{ffi::OsString, path::PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum, builder::TypedValueParser};
use falconeri_common::status::{DatumStatus, Outcome};

/// Run batch jobs: many datums, each processed by one command, in parallel.
///
/// With no server configured, falconeri starts a server on this machine the
/// first time it needs one (state under FALCONERI_HOME) and runs the datums in
/// local worker processes. Set FALCONERI_SERVER and FALCONERI_TOKEN to use a
/// shared server instead.
#[derive(Debug, Parser)]
#[command(name = "falconeri", version, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// Flags accepted by every command, listed apart from each command's own.
#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// The falconerid to talk to, such as https://falconeri.example.com.
    ///
    /// Without it (and without FALCONERI_SERVER), falconeri uses the local
    /// server, starting it if needed.
    #[arg(long, env = "FALCONERI_SERVER", global = true, value_name = "URL")]
    pub server: Option<String>,

    /// The bearer token for --server.
    #[arg(
        long,
        env = "FALCONERI_TOKEN",
        global = true,
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,

    /// Use the local server on this machine (starting it if needed), even if
    /// FALCONERI_SERVER is set.
    #[arg(long, global = true)]
    pub local: bool,

    /// Where the local server keeps its database, token and log.
    ///
    /// Defaults to the platform's data directory, such as
    /// ~/.local/share/falconeri on Linux.
    #[arg(long, env = "FALCONERI_HOME", global = true, value_name = "DIR")]
    pub home: Option<PathBuf>,

    /// How to print results: `text` for people, `json` for scripts.
    #[arg(
        short,
        long,
        value_enum,
        default_value_t = OutputFormat::Text,
        global = true,
        value_name = "FORMAT"
    )]
    pub output: OutputFormat,
}

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Tables and sentences.
    Text,
    /// One JSON document on stdout, the same shape as the REST API's answer.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start, watch, retry and cancel jobs.
    #[command(subcommand)]
    Job(JobCommand),

    /// Inspect the datums (units of work) of a job.
    #[command(subcommand)]
    Datum(DatumCommand),

    /// Run several pipeline specs as a chain: each step starts once the
    /// steps it depends on are done.
    #[command(subcommand)]
    Workflow(crate::cli_flow::WorkflowCommand),

    /// Start a pipeline spec or a workflow on a cron schedule, in an
    /// explicit time zone.
    #[command(subcommand)]
    Schedule(crate::cli_flow::ScheduleCommand),

    /// Print the JSON Schema of pipeline spec files.
    ///
    /// Point your editor at it for completion and checking while you write a
    /// spec.
    Schema,

    /// Show or stop the local server that falconeri starts on this machine.
    #[command(subcommand)]
    Local(LocalCommand),

    /// Forward local ports to falconerid, PostgreSQL and MinIO in a cluster.
    ///
    /// Reaches the pods through the Kubernetes API (your kubeconfig), like
    /// `kubectl port-forward`, but every new connection goes to a pod that is
    /// ready at that moment, so restarted or replaced pods need no restart of
    /// the proxy. Listens on 127.0.0.1 only, and runs until Ctrl-C.
    ///
    /// It prints the `export` lines that point the CLI at the forwarded
    /// falconerid. The API token is read from the deployment's Secret and
    /// written, readable by you alone, to `proxy-NAMESPACE.token` under
    /// FALCONERI_HOME while the proxy runs; it is never printed. MinIO is
    /// forwarded when the deployment has it (`deploy --development`).
    Proxy(ProxyArgs),

    /// Apply this falconeri's PostgreSQL migrations to a deployment's
    /// database.
    ///
    /// falconerid applies them itself when it starts; run this to migrate
    /// ahead of a rollout, or a database no falconerid runs on. It reaches
    /// the deployment's PostgreSQL through a port-forward of its own (no
    /// `falconeri proxy` needed), with the credentials from the deployment's
    /// Secret, unless --database-url names a database. Applying is
    /// idempotent, and safe while falconerid runs.
    Migrate(MigrateArgs),

    /// Reach a deployment's PostgreSQL database: print its URL, open psql.
    #[command(subcommand)]
    Db(DbCommand),

    /// Deploy falconeri into a Kubernetes namespace, or print the manifest.
    ///
    /// Applies (server-side apply, field manager `falconeri`) a namespace,
    /// falconerid with its service account and role, PostgreSQL with a
    /// persistent volume, and a Secret with a generated database password
    /// and API token; with `--development`, also MinIO. Running it again
    /// updates the objects in place, keeps the existing Secrets (so the
    /// database keeps its password), and removes the MinIO of an earlier
    /// `--development` deploy if this one has no `--development`.
    Deploy(Box<DeployArgs>),

    /// Remove falconeri from a Kubernetes namespace.
    ///
    /// Deletes the Deployments, Services, service account and role, and the
    /// worker Jobs of running jobs (those jobs fail, and can be retried after
    /// a new deploy). Keeps the data: the database's volume and the Secrets,
    /// so a later `deploy` picks up where it left off. `--all` deletes those
    /// too. The namespace itself is never deleted.
    Undeploy(UndeployArgs),

    /// Print a shell completion script.
    ///
    /// Load it in your shell's startup file, for example:
    ///
    ///   bash: `source <(falconeri completions bash)` in ~/.bashrc
    ///
    ///   zsh:  `falconeri completions zsh > ~/.zfunc/_falconeri`, with
    ///         ~/.zfunc in `fpath` before `compinit`
    ///
    ///   fish: `falconeri completions fish > ~/.config/fish/completions/falconeri.fish`
    ///
    /// The script completes commands and flags, and the values of flags
    /// with a fixed set of values (such as --output or --status).
    Completions {
        /// The shell to complete for.
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },

    /// Print falconeri's man page, or write one page per command.
    ///
    /// Without --out, prints falconeri(1) as roff on stdout: view it with
    /// `falconeri man | man -l -`. With --out, writes falconeri.1 and one
    /// page per command (falconeri-job-run.1, ...) into DIR, creating it if
    /// needed, for a directory on MANPATH such as ~/.local/share/man/man1.
    Man {
        /// Write every page into this directory instead of printing
        /// falconeri(1).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },

    /// Commands falconeri runs itself; not for people.
    #[command(subcommand, hide = true)]
    Internal(InternalCommand),
}

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Start a job from a pipeline spec file.
    ///
    /// Relative `file://` URIs in the spec are taken relative to the spec
    /// file's directory. The server lists and plans the inputs before it
    /// answers (a large S3 or GCS prefix takes one request per thousand
    /// objects); interrupting this while it lists deletes the half-planned
    /// job.
    Run {
        /// The pipeline spec (JSON).
        spec: PathBuf,

        /// Wait for the job to finish, as `job wait` does.
        #[arg(long)]
        wait: bool,

        /// Skip the datums an earlier job of this pipeline already computed,
        /// as the spec's `"incremental": true` does: a datum whose
        /// fingerprint (command, image, env, secret names, egress and each
        /// input file's identity) matches a datum that succeeded before is
        /// recorded as `skipped` and its outputs stay where they are.
        #[arg(long)]
        incremental: bool,
    },

    /// List the newest jobs.
    List {
        /// Show at most this many jobs.
        #[arg(long, value_name = "N")]
        limit: Option<i64>,
    },

    /// Show a job: its datum counts, and the datums running or failed.
    Describe {
        /// The job's name, or its numeric id.
        job: String,
    },

    /// Wait for a job to finish, showing its progress.
    ///
    /// Exits 0 if the job ended `done` with every datum done; 3 if it ended
    /// `done` with failed datums, as many as its `max_failed_datums` allows
    /// (they are listed by `job describe`); and 1 if it ended `error` or
    /// `canceled` (or cannot be followed). `job run --wait`, `job retry
    /// --wait` and `job logs --follow` exit the same way.
    Wait {
        /// The job's name, or its numeric id.
        job: String,
    },

    /// Start a new job running the failed and canceled datums of a finished
    /// job again.
    Retry {
        /// The job's name, or its numeric id.
        job: String,

        /// Wait for the new job to finish, as `job wait` does.
        #[arg(long)]
        wait: bool,
    },

    /// Cancel a job: its workers stop and its unfinished datums are canceled.
    Cancel {
        /// The job's name, or its numeric id.
        job: String,
    },

    /// Show a job's logs: the lines of every attempt of every datum, each
    /// prefixed with its datum, attempt, time and stream.
    ///
    /// With --follow, then prints the lines of its running datums as they
    /// come and exits when the job ends, as `job wait` does: 0 if it ended
    /// `done`, 3 if `done` with failed datums, 1 if not. With `-o json`, one JSON object per line of
    /// output (`kind`: line, cut, job_end).
    Logs {
        /// The job's name, or its numeric id.
        job: String,

        /// Keep printing lines as they come until the job ends.
        #[arg(short, long)]
        follow: bool,

        /// Only the datums that failed (status `error`), every attempt of
        /// each; following, each one's logs once it failed.
        #[arg(long)]
        failed: bool,
    },

    /// Check a pipeline spec file without contacting a server.
    ///
    /// Exits 0 if it is valid, or 2 listing every problem with its JSON path.
    Validate {
        /// The pipeline spec (JSON).
        spec: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum DatumCommand {
    /// List the datums of a job.
    List {
        /// The job's name, or its numeric id.
        #[arg(long, value_name = "JOB")]
        job: String,

        /// Only datums in this state.
        #[arg(long, value_name = "STATUS", value_parser = status_value(DatumStatus::ALL, DatumStatus::as_str))]
        status: Option<DatumStatus>,

        /// Only datums with an attempt that ended this way.
        #[arg(long, value_name = "OUTCOME", value_parser = status_value(Outcome::ALL, Outcome::as_str))]
        outcome: Option<Outcome>,

        /// Only datums after this datum id (the next page).
        #[arg(long, value_name = "ID")]
        after: Option<i64>,

        /// Show at most this many datums.
        #[arg(long, value_name = "N")]
        limit: Option<i64>,
    },

    /// Show one datum: its status, attempts, files, error and captured output.
    Describe {
        /// The datum's id, as shown by `job describe` or `datum list`.
        id: i64,
    },

    /// Run a datum that ended `error` or `canceled` again.
    ///
    /// The datum goes back to its job's queue with a fresh budget of the
    /// spec's `datum_tries`; its earlier attempts stay on record. If the job
    /// is still running, one of its workers picks the datum up. If the job
    /// has ended, it is reopened (`running` again) and its workers are
    /// started; it ends anew once its datums have. Other datums are refused.
    Retry {
        /// The datum's id, as shown by `job describe` or `datum list`.
        id: i64,
    },
    /// Show a datum's logs: every line its attempts' commands printed on
    /// stdout and stderr, and the worker's own lines, each with its time and
    /// stream.
    ///
    /// Logs are kept after the worker is gone, up to the server's
    /// --max-log-bytes per attempt (the head and the tail; a line says how
    /// much was cut). With --follow, prints the lines of the latest attempt
    /// as they come and exits when it ends: 0 if it succeeded, 1 if not.
    /// With `-o json`, one JSON object per line of output (`kind`: line,
    /// cut, attempt_end).
    Logs {
        /// The datum's id, as shown by `job describe` or `datum list`.
        id: i64,

        /// Only this attempt (default: every attempt, oldest first).
        #[arg(long, value_name = "N")]
        attempt: Option<i32>,

        /// Keep printing lines as they come until the attempt ends.
        #[arg(short, long)]
        follow: bool,
    },
}

/// A parser for one of falconeri_common's status enums that knows every
/// value, so `--help`, the error for a wrong value and the shell completions
/// list them (those enums implement `FromStr`, which alone tells clap
/// nothing about the possible values).
fn status_value<T>(
    all: &'static [T],
    name: fn(T) -> &'static str,
) -> impl TypedValueParser<Value = T>
where
    T: Copy + Send + Sync + 'static,
{
    clap::builder::PossibleValuesParser::new(all.iter().map(|value| name(*value))).try_map(
        move |text| {
            all.iter()
                .copied()
                .find(|value| name(*value) == text)
                // Unreachable: the possible values are exactly these names.
                .ok_or_else(|| format!("unknown value {text:?}"))
        },
    )
}

/// `falconeri proxy`.
#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// The local port for falconerid (0 picks a free one).
    #[arg(
        long,
        env = "FALCONERI_PROXY_PORT",
        default_value_t = 8089,
        value_name = "PORT"
    )]
    pub falconerid_port: u16,

    /// The local port for PostgreSQL (0 picks a free one). Not 5432, which a
    /// PostgreSQL on this machine may use; `db url` assumes the same port.
    #[arg(
        long,
        env = "FALCONERI_PROXY_POSTGRES_PORT",
        default_value_t = DEFAULT_PROXY_POSTGRES_PORT,
        value_name = "PORT"
    )]
    pub postgres_port: u16,

    /// The local port for MinIO, when deployed (0 picks a free one).
    #[arg(
        long,
        env = "FALCONERI_PROXY_MINIO_PORT",
        default_value_t = 19000,
        value_name = "PORT"
    )]
    pub minio_port: u16,

    // Last, so its help heading does not carry over to the flags above.
    #[command(flatten)]
    pub cluster: crate::cluster::ClusterArgs,
}

/// `falconeri migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Migrate this PostgreSQL database instead of the deployment's, such as
    /// postgres://user:password@host:5432/falconeri (no TLS).
    #[arg(
        long,
        env = "FALCONERI_DATABASE_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub database_url: Option<String>,

    // Last, so its help heading does not carry over to the flags above.
    #[command(flatten)]
    pub cluster: crate::cluster::ClusterArgs,
}

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Print the deployment's PostgreSQL URL through `falconeri proxy`.
    ///
    /// The URL includes the database password, read from the deployment's
    /// Secret. It points at the proxy's local PostgreSQL port, so it works
    /// while `falconeri proxy` runs (with the same --postgres-port).
    Url {
        /// The local port `falconeri proxy` forwards PostgreSQL to.
        #[arg(
            long,
            env = "FALCONERI_PROXY_POSTGRES_PORT",
            default_value_t = DEFAULT_PROXY_POSTGRES_PORT,
            value_name = "PORT"
        )]
        postgres_port: u16,

        #[command(flatten)]
        cluster: crate::cluster::ClusterArgs,
    },

    /// Open psql on the deployment's database.
    ///
    /// Forwards a free local port to PostgreSQL for as long as psql runs (no
    /// `falconeri proxy` needed). The password goes to psql in PGPASSWORD,
    /// never on its command line. Arguments after `--` go to psql, such as
    /// `falconeri db console -- -c 'SELECT count(*) FROM jobs'`.
    Console {
        /// Arguments for psql.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "PSQL_ARGS"
        )]
        args: Vec<OsString>,

        #[command(flatten)]
        cluster: crate::cluster::ClusterArgs,
    },
}

/// The local port `proxy` forwards PostgreSQL to unless told otherwise.
pub const DEFAULT_PROXY_POSTGRES_PORT: u16 = 15432;

#[derive(Debug, Subcommand)]
pub enum LocalCommand {
    /// Show whether the local server is running, its URL, pid and log file.
    Status,

    /// Stop the local server. It finishes gracefully; running jobs resume
    /// when it is next started.
    Stop,
}

/// `falconeri deploy`.
#[derive(Clone, Debug, Args)]
pub struct DeployArgs {
    /// Print the manifest (YAML) instead of applying it. Needs no cluster;
    /// the printed Secret holds freshly generated credentials.
    #[arg(long)]
    pub dry_run: bool,

    /// The falconerid image. It must also contain falconeri-worker, which
    /// the Kubernetes executor copies into every worker pod.
    #[arg(long, value_name = "IMAGE", default_value = crate::cluster::DEFAULT_IMAGE, value_parser = crate::deploy::parse_image)]
    pub image: String,

    /// When the kubelet pulls the falconerid image (default: Kubernetes'
    /// rule, which is Always for `:latest` and IfNotPresent otherwise). Use
    /// `never` for an image loaded into kind or minikube.
    #[arg(long, value_enum, value_name = "POLICY")]
    pub image_pull_policy: Option<PullPolicy>,

    /// How many falconerid replicas to run.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub replicas: u32,

    /// falconerid's CPU request, per replica (a Kubernetes quantity).
    #[arg(long, value_name = "QUANTITY", default_value = "250m", value_parser = crate::deploy::parse_quantity)]
    pub cpu: String,

    /// falconerid's memory request and limit, per replica.
    #[arg(long, value_name = "QUANTITY", default_value = "512Mi", value_parser = crate::deploy::parse_quantity)]
    pub memory: String,

    /// The PostgreSQL image's tag (`postgres:<VERSION>`). Changing the major
    /// version of an existing database needs a dump and restore.
    #[arg(long, value_name = "VERSION", default_value = "18", value_parser = crate::deploy::parse_image_tag)]
    pub postgres_version: String,

    /// PostgreSQL's CPU request.
    #[arg(long, value_name = "QUANTITY", default_value = "250m", value_parser = crate::deploy::parse_quantity)]
    pub postgres_cpu: String,

    /// PostgreSQL's memory request and limit.
    #[arg(long, value_name = "QUANTITY", default_value = "1Gi", value_parser = crate::deploy::parse_quantity)]
    pub postgres_memory: String,

    /// The size of PostgreSQL's persistent volume.
    #[arg(long, value_name = "QUANTITY", default_value = "10Gi", value_parser = crate::deploy::parse_quantity)]
    pub postgres_storage: String,

    /// The storage class of PostgreSQL's volume (default: the cluster's
    /// default storage class).
    #[arg(long, value_name = "NAME", value_parser = crate::deploy::parse_object_name)]
    pub storage_class_name: Option<String>,

    /// A Secret holding a Google Cloud service-account key as `key.json`,
    /// for falconerid's own access to `gs://` inputs and egresses (without
    /// it, falconerid uses Application Default Credentials, such as GKE
    /// workload identity).
    #[arg(long, value_name = "SECRET", value_parser = crate::deploy::parse_object_name)]
    pub gcs_key_secret: Option<String>,

    /// Don't create the `falconeri` Secret: you manage it, with the keys
    /// `database-password`, `database-url` and `token`.
    #[arg(long)]
    pub skip_secret: bool,

    /// Also deploy a MinIO server (S3-compatible storage, data lost when its
    /// pod restarts) and an `s3` Secret with its credentials, for trying
    /// falconeri out on a laptop cluster.
    #[arg(long)]
    pub development: bool,

    /// The MinIO image for --development.
    #[arg(long, value_name = "IMAGE", default_value = crate::deploy::DEFAULT_MINIO_IMAGE, value_parser = crate::deploy::parse_image)]
    pub minio_image: String,

    // Last: its help heading would otherwise cover the flags after it.
    #[command(flatten)]
    pub cluster: crate::cluster::ClusterArgs,
}

/// A container's image pull policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    /// The name Kubernetes uses.
    pub fn as_kubernetes(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// `falconeri undeploy`.
#[derive(Debug, Args)]
pub struct UndeployArgs {
    /// Also delete the data: PostgreSQL's volume, and the `falconeri` and
    /// `s3` Secrets if `falconeri deploy` made them.
    #[arg(long)]
    pub all: bool,

    #[command(flatten)]
    pub cluster: crate::cluster::ClusterArgs,
}

/// Commands falconeri runs itself. `internal worker` is not here: it is
/// dispatched before this parser runs (see [`is_internal_worker`]).
#[derive(Debug, Subcommand)]
pub enum InternalCommand {
    /// Run the local server in the foreground (started by the CLI itself).
    ///
    /// Prints `ready <url>` on stdout once listening.
    Server,
}

/// The worker's command line: `falconeri internal worker [WORKER FLAGS]`.
///
/// It is parsed on its own rather than as a subcommand of [`Cli`], because
/// [`Cli`]'s global flags (`--server`, `--token`, ...) would otherwise take
/// the worker's flags of the same names, or clash with them.
#[derive(Debug, Parser)]
#[command(name = "falconeri internal worker")]
pub struct WorkerCli {
    #[command(flatten)]
    pub config: falconeri_worker::Config,
}

/// The words that select the worker.
const WORKER_COMMAND: [&str; 2] = ["internal", "worker"];

/// True when `args` (including the program name) run the worker.
pub fn is_internal_worker(args: &[OsString]) -> bool {
    args.get(1..3)
        .is_some_and(|words| words.iter().zip(WORKER_COMMAND).all(|(a, b)| a == b))
}

/// Parses the worker's command line from all of `args`, which
/// [`is_internal_worker`] accepted.
pub fn parse_worker(args: Vec<OsString>) -> WorkerCli {
    let flags = args.into_iter().skip(1 + WORKER_COMMAND.len());
    WorkerCli::parse_from(std::iter::once(OsString::from("falconeri internal worker")).chain(flags))
}

/// The arguments after the program name that start a worker; the local
/// server gives them to its executor.
pub fn worker_command_args() -> impl Iterator<Item = OsString> {
    WORKER_COMMAND.into_iter().map(OsString::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// A command line from words separated by spaces.
    fn args(line: &str) -> Vec<OsString> {
        line.split_whitespace().map(OsString::from).collect()
    }

    #[test]
    fn command_line_is_well_formed() {
        Cli::command().debug_assert();
        WorkerCli::command().debug_assert();
    }

    #[test]
    fn only_internal_worker_selects_the_worker() {
        assert!(is_internal_worker(&args("falconeri internal worker")));
        assert!(is_internal_worker(&args(
            "/bin/falconeri internal worker --server x"
        )));
        assert!(!is_internal_worker(&args("falconeri internal server")));
        assert!(!is_internal_worker(&args("falconeri job worker")));
        assert!(!is_internal_worker(&args("falconeri internal")));
    }

    #[test]
    fn worker_flags_reach_the_worker() {
        let cli = parse_worker(args(
            "falconeri internal worker --server http://h:1 --token t0123456789abcdef --job-id 3",
        ));
        assert_eq!(cli.config.server, "http://h:1");
        assert_eq!(cli.config.job_id, 3);
    }

    #[test]
    fn statuses_parse() {
        let cli = Cli::try_parse_from(args("falconeri datum list --job x --status error"))
            .expect("parses");
        match cli.command {
            Command::Datum(DatumCommand::List { status, .. }) => {
                assert_eq!(status, Some(DatumStatus::Error));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(Cli::try_parse_from(args("falconeri datum list --job x --status bad")).is_err());
    }

    #[test]
    fn db_console_passes_psql_arguments_through() {
        let cli = Cli::try_parse_from(args("falconeri db console --namespace ns -- -X -c select"))
            .expect("parses");
        match cli.command {
            Command::Db(DbCommand::Console { args, cluster }) => {
                assert_eq!(args, ["-X", "-c", "select"]);
                assert_eq!(cluster.namespace, "ns");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli = Cli::try_parse_from(args("falconeri job list --local -o json")).expect("parses");
        assert!(cli.global.local);
        assert_eq!(cli.global.output, OutputFormat::Json);
    }
}
