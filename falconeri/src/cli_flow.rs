//! The command line of workflows and schedules: their commands, flags and
//! help texts (apart from `cli.rs`, which names them). Nothing here does
//! any work; `workflow.rs` and `schedule.rs` do.

use std::path::PathBuf;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum WorkflowCommand {
    /// Run a workflow file: several pipeline specs, each step starting once
    /// the steps it depends on are done.
    ///
    /// A step depends on the steps named in its `after`, and on every step
    /// whose egress one of its inputs lies under. A step whose upstream
    /// fails is canceled (the reason names the upstream); `falconeri
    /// workflow retry` (or `job retry` of the failed step's job) resumes
    /// the chain. Spec files named
    /// by path are read relative to the workflow file, and relative
    /// `file://` URIs relative to the file that holds them.
    Run {
        /// The workflow file (JSON).
        file: PathBuf,

        /// Wait for the run to finish, as `workflow wait` does.
        #[arg(long)]
        wait: bool,
    },

    /// List the newest workflow runs.
    List {
        /// Show at most this many runs.
        #[arg(long, value_name = "N")]
        limit: Option<i64>,
    },

    /// Show a workflow run: each step with its status, its job and the
    /// steps it waits for, and why steps were canceled or failed.
    ///
    /// With `-o json`, the run as the REST API answers it.
    Describe {
        /// The run's name, or its numeric id.
        workflow: String,
    },

    /// Wait for a workflow run to finish, printing each step's changes.
    ///
    /// Exits 0 if every step ended `done`, and 1 otherwise.
    Wait {
        /// The run's name, or its numeric id.
        workflow: String,
    },

    /// Retry a workflow run's failed steps, resuming the chain.
    ///
    /// A step whose job could not be created (its inputs matched no files,
    /// say) gets a new job; a step whose job ended `error` or `canceled`
    /// gets a retry of that job's failed and canceled datums, as `job
    /// retry` makes. Steps canceled below them wait again and start once
    /// their upstream is done. Fails if no step failed.
    Retry {
        /// The run's name, or its numeric id.
        workflow: String,

        /// Wait for the run to finish, as `workflow wait` does.
        #[arg(long)]
        wait: bool,
    },

    /// Check a workflow file and the spec files it names without contacting
    /// a server.
    ///
    /// Exits 0 if it is valid, or 2 listing every problem with its JSON
    /// path (a cycle is named by its steps in order).
    Validate {
        /// The workflow file (JSON).
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Start a pipeline spec's job, or a workflow's run, at every tick of a
    /// cron expression.
    ///
    /// The expression has five fields (minute hour day-of-month month
    /// day-of-week) or six with seconds first, or is a nickname such as
    /// `@daily`. Ticks are computed in --timezone (UTC unless given). Each
    /// tick starts one run, however many falconerid replicas run; a tick
    /// missed while no falconerid ran is run once at start-up, and the
    /// ticks missed with it are skipped.
    Create {
        /// The schedule's name (unique).
        name: String,

        /// The cron expression, such as "0 2 * * *" (02:00 every day).
        #[arg(long, value_name = "EXPR")]
        cron: String,

        /// A pipeline spec or a workflow file (JSON); a file with a
        /// top-level `workflow` is a workflow.
        file: PathBuf,

        /// Create each run's jobs incremental.
        #[arg(long)]
        incremental: bool,

        /// The IANA time zone of the expression, such as Europe/Paris.
        #[arg(long, value_name = "TZ", default_value = "UTC")]
        timezone: String,
    },

    /// List schedules with their next and last runs.
    List,

    /// Delete a schedule; the runs it started are left alone.
    Delete {
        /// The schedule's name.
        name: String,
    },

    /// Pause a schedule: no tick runs until it is resumed.
    Pause {
        /// The schedule's name.
        name: String,
    },

    /// Resume a paused schedule from its next tick (ticks that passed while
    /// it was paused do not run).
    Resume {
        /// The schedule's name.
        name: String,
    },
}
