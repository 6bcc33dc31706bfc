//! `falconeri workflow ...`: run workflow files, list, describe, wait for
//! and retry workflow runs.
//!
//! The CLI reads the workflow file and every spec file it names (paths are
//! relative to the workflow file), resolves relative `file://` URIs (each
//! spec file's against its own directory, inline specs' against the
//! workflow file's), and sends the server one document with every spec
//! inline: the server reads no files.

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use falconeri_common::{
    client::{Client, ClientError},
    pipeline::{PipelineSpec, ROOT_PATH, SpecError, SpecProblem},
    status::JobStatus,
    workflow::{DependencyKind, WorkflowDocument, WorkflowResponse, WorkflowSpec},
};

use crate::{
    cli_flow::WorkflowCommand,
    config::Config,
    error::{InvalidSpec, spec_request_error},
    output::{self, NONE, Table},
};

/// How long one progress long-poll asks the server to wait.
const POLL_WAIT: Duration = Duration::from_secs(25);

/// Runs one `workflow` subcommand.
pub async fn run(config: &Config, command: WorkflowCommand) -> Result<()> {
    match command {
        WorkflowCommand::Run { file, wait } => run_file(config, &file, wait).await,
        WorkflowCommand::Validate { file } => {
            let workflow = load(&file)?;
            println!(
                "{} is valid: {} steps",
                file.display(),
                workflow.steps.len()
            );
            Ok(())
        }
        WorkflowCommand::List { limit } => list(config, limit).await,
        WorkflowCommand::Describe { workflow } => {
            let client = config.client().await?;
            let workflow = find(&client, &workflow).await?;
            if config.json() {
                return output::print_json(&workflow);
            }
            print!("{}", render(&workflow));
            Ok(())
        }
        WorkflowCommand::Retry { workflow, wait } => retry(config, &workflow, wait).await,
        WorkflowCommand::Wait { workflow } => {
            let client = config.client().await?;
            let workflow = find(&client, &workflow).await?;
            follow(config, &client, workflow).await
        }
    }
}

/// The directory of `path`, made absolute.
fn dir_of(path: &Path) -> Result<PathBuf> {
    let absolute = std::path::absolute(path)
        .with_context(|| format!("cannot find the directory of {}", path.display()))?;
    absolute
        .parent()
        .map(Path::to_owned)
        .ok_or_else(|| anyhow!("{} is not a file", path.display()))
}

/// Reads a workflow file and the spec files it names, and validates it all.
pub fn load(path: &Path) -> Result<WorkflowSpec> {
    let invalid = |err: SpecError| -> anyhow::Error {
        InvalidSpec {
            summary: format!("{} is invalid", path.display()),
            problems: err.problems,
        }
        .into()
    };
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let base = dir_of(path)?;
    let document = WorkflowDocument::from_json(&text).map_err(invalid)?;
    // Which directory each step's relative file:// URIs are taken from.
    let dirs = std::cell::RefCell::new(vec![base.clone(); document.steps.len()]);
    let loaded = document.resolve(
        |i, relative| {
            let file = base.join(relative);
            let problem = |message: String| SpecError {
                problems: vec![SpecProblem {
                    path: ROOT_PATH.to_owned(),
                    message,
                }],
            };
            let text = fs::read_to_string(&file)
                .map_err(|err| problem(format!("cannot read {}: {err}", file.display())))?;
            if let (Some(slot), Some(parent)) = (dirs.borrow_mut().get_mut(i), file.parent()) {
                *slot = parent.to_owned();
            }
            PipelineSpec::from_json(&text).map_err(|err| SpecError {
                problems: err
                    .problems
                    .into_iter()
                    .map(|p| SpecProblem {
                        path: p.path,
                        message: format!("{} (in {})", p.message, file.display()),
                    })
                    .collect(),
            })
        },
        // Before the workflow is checked: an input under another step's
        // egress is only recognized once both URIs are absolute.
        |i, spec| {
            if let Some(dir) = dirs.borrow().get(i) {
                spec.resolve_relative_file_uris(dir);
            }
        },
    );
    loaded.map_err(invalid)
}

/// `workflow run`.
async fn run_file(config: &Config, path: &Path, wait: bool) -> Result<()> {
    let workflow = load(path)?;
    let client = config.client().await?;
    let name = path.display().to_string();
    let run = client
        .run_workflow(&workflow)
        .await
        .map_err(|err| spec_request_error(err, &name))?;
    if wait {
        return follow(config, &client, run).await;
    }
    if config.json() {
        return output::print_json(&run);
    }
    println!(
        "Started workflow {} (id {}) with {} steps.",
        run.name,
        run.id,
        run.steps.len()
    );
    println!(
        "Follow it with:\n  falconeri workflow wait {0}\n  falconeri workflow describe {0}",
        run.name
    );
    Ok(())
}

/// `workflow retry`.
async fn retry(config: &Config, name_or_id: &str, wait: bool) -> Result<()> {
    let client = config.client().await?;
    let run = find(&client, name_or_id).await?;
    let run = client
        .retry_workflow(run.id)
        .await
        .with_context(|| format!("cannot retry workflow run {}", run.name))?;
    if wait {
        return follow(config, &client, run).await;
    }
    if config.json() {
        return output::print_json(&run);
    }
    println!("Retrying the failed steps of workflow {}.", run.name);
    println!(
        "Follow it with:\n  falconeri workflow wait {0}\n  falconeri workflow describe {0}",
        run.name
    );
    Ok(())
}

/// A run named by the user, by name or numeric id.
async fn find(client: &Client, name_or_id: &str) -> Result<WorkflowResponse> {
    client
        .find_workflow(name_or_id)
        .await
        .map_err(|err| lookup_error(err, name_or_id))
}

fn lookup_error(err: ClientError, name_or_id: &str) -> anyhow::Error {
    if err.is_not_found() {
        anyhow!("no workflow run is named {name_or_id:?} (see `falconeri workflow list`)")
    } else {
        anyhow::Error::new(err).context(format!("cannot look up workflow {name_or_id:?}"))
    }
}

/// `workflow list`.
async fn list(config: &Config, limit: Option<i64>) -> Result<()> {
    let client = config.client().await?;
    let runs = client
        .list_workflows(limit)
        .await
        .context("cannot list workflow runs")?;
    if config.json() {
        return output::print_json(&runs);
    }
    if runs.workflows.is_empty() {
        println!("No workflow runs yet. Start one with `falconeri workflow run FILE`.");
        return Ok(());
    }
    let mut table = Table::with_headers(&["NAME", "ID", "STATUS", "STEPS", "DONE", "CREATED"]);
    for run in &runs.workflows {
        let done = run
            .steps
            .iter()
            .filter(|s| s.status == falconeri_common::workflow::StepStatus::Done)
            .count();
        table.row([
            run.name.clone(),
            run.id.to_string(),
            run.status.to_string(),
            run.steps.len().to_string(),
            done.to_string(),
            output::time(run.created_at),
        ]);
    }
    print!("{}", table.render());
    Ok(())
}

/// A run as text: a line about the run, then its graph as a table of steps
/// (each after the steps it waits for), then the reasons of canceled and
/// failed steps.
fn render(run: &WorkflowResponse) -> String {
    let mut out = format!(
        "Workflow {} (id {}, {}): {}\n\n",
        run.name, run.id, run.workflow_name, run.status
    );
    let mut table = Table::with_headers(&["STEP", "STATUS", "JOB", "AFTER"]);
    for step in &run.steps {
        let after: Vec<String> = step
            .upstream
            .iter()
            .map(|edge| match edge.kind {
                DependencyKind::After => edge.step.clone(),
                DependencyKind::Egress => format!("{} (reads its egress)", edge.step),
            })
            .collect();
        table.row([
            step.name.clone(),
            step.status.to_string(),
            step.job
                .as_ref()
                .map_or_else(|| NONE.to_owned(), |job| job.name.clone()),
            if after.is_empty() {
                NONE.to_owned()
            } else {
                after.join(", ")
            },
        ]);
    }
    out.push_str(&table.render());
    let reasons: Vec<String> = run
        .steps
        .iter()
        .filter_map(|step| {
            let reason = step.reason.as_deref().or_else(|| {
                step.job
                    .as_ref()
                    .filter(|job| job.status != JobStatus::Done)
                    .and_then(|job| job.error_message.as_deref())
            })?;
            Some(format!("  {}: {}\n", step.name, reason))
        })
        .collect();
    if !reasons.is_empty() {
        out.push_str("\nWhy:\n");
        for reason in reasons {
            out.push_str(&reason);
        }
    }
    out
}

/// Follows a run until it ends: prints each step whose status changed
/// (text), and exits 0 if every step ended done, 1 otherwise.
async fn follow(config: &Config, client: &Client, run: WorkflowResponse) -> Result<()> {
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut since = None;
    let mut current = run;
    loop {
        if !config.json() {
            for step in &current.steps {
                let line = match &step.job {
                    Some(job) => format!("{} (job {})", step.status, job.name),
                    None => step.status.to_string(),
                };
                let known = seen.iter_mut().find(|(name, _)| *name == step.name);
                match known {
                    Some((_, last)) if *last == line => {}
                    Some((_, last)) => {
                        println!("{}: {line}", step.name);
                        *last = line;
                    }
                    None => {
                        println!("{}: {line}", step.name);
                        seen.push((step.name.clone(), line));
                    }
                }
            }
        }
        if current.status != JobStatus::Running {
            break;
        }
        let progress = client
            .workflow_progress(current.id, since, POLL_WAIT)
            .await
            .with_context(|| format!("cannot follow workflow {}", current.name))?;
        since = Some(progress.generation);
        current = progress.workflow;
    }
    if config.json() {
        output::print_json(&current)?;
    } else {
        println!();
        print!("{}", render(&current));
    }
    if current.status == JobStatus::Done {
        Ok(())
    } else {
        bail!(
            "workflow {name} finished with status {status} (see: falconeri workflow describe \
             {name})",
            name = current.name,
            status = current.status
        )
    }
}
