//! `falconeri schedule ...`: create, list, delete, pause and resume
//! schedules. A schedule's file is read here (a workflow's spec files too)
//! and sent whole; the server keeps it and starts a run at each tick.

use std::{fs, path::Path};

use anyhow::{Context, Result, anyhow};
use falconeri_common::{
    client::ClientError,
    schedule::{ScheduleKind, ScheduleRequest, ScheduleResponse},
};

use crate::{
    cli_flow::ScheduleCommand,
    config::Config,
    error::spec_request_error,
    output::{self, NONE, Table},
};

/// Runs one `schedule` subcommand.
pub async fn run(config: &Config, command: ScheduleCommand) -> Result<()> {
    match command {
        ScheduleCommand::Create {
            name,
            cron,
            file,
            incremental,
            timezone,
        } => create(config, name, cron, &file, incremental, timezone).await,
        ScheduleCommand::List => list(config).await,
        ScheduleCommand::Delete { name } => {
            let client = config.client().await?;
            let schedule = client
                .delete_schedule(&name)
                .await
                .map_err(|err| lookup_error(err, &name))?;
            if config.json() {
                return output::print_json(&schedule);
            }
            println!("Deleted schedule {}.", schedule.name);
            Ok(())
        }
        ScheduleCommand::Pause { name } => {
            let client = config.client().await?;
            let schedule = client
                .pause_schedule(&name)
                .await
                .map_err(|err| lookup_error(err, &name))?;
            show(config, &schedule, "Paused")
        }
        ScheduleCommand::Resume { name } => {
            let client = config.client().await?;
            let schedule = client
                .resume_schedule(&name)
                .await
                .map_err(|err| lookup_error(err, &name))?;
            show(config, &schedule, "Resumed")
        }
    }
}

fn lookup_error(err: ClientError, name: &str) -> anyhow::Error {
    if err.is_not_found() {
        anyhow!("no schedule is named {name:?} (see `falconeri schedule list`)")
    } else {
        anyhow::Error::new(err).context(format!("cannot change schedule {name:?}"))
    }
}

/// One line about a schedule, stating its time zone.
fn show(config: &Config, schedule: &ScheduleResponse, what: &str) -> Result<()> {
    if config.json() {
        return output::print_json(schedule);
    }
    let next = match (&schedule.next_run_local, schedule.paused) {
        (_, true) => "paused".to_owned(),
        (Some(local), false) => format!("next run {local}"),
        (None, false) => "no tick left".to_owned(),
    };
    println!(
        "{what} schedule {}: `{}` in {}; {next}.",
        schedule.name, schedule.cron, schedule.timezone
    );
    Ok(())
}

/// `schedule create`.
async fn create(
    config: &Config,
    name: String,
    cron: String,
    file: &Path,
    incremental: bool,
    timezone: String,
) -> Result<()> {
    let text =
        fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))?;
    let (job, workflow) = if value.get("workflow").is_some() {
        let workflow = crate::workflow::load(file)?;
        (None, Some(serde_json::to_value(&workflow)?))
    } else {
        let spec = crate::job::load_resolved_spec(file)?;
        (Some(serde_json::to_value(&spec)?), None)
    };
    let request = ScheduleRequest {
        name,
        cron,
        timezone: Some(timezone),
        incremental,
        job,
        workflow,
    };
    let client = config.client().await?;
    let schedule = client
        .create_schedule(&request)
        .await
        .map_err(|err| spec_request_error(err, &file.display().to_string()))?;
    show(config, &schedule, "Created")
}

/// `schedule list`.
async fn list(config: &Config) -> Result<()> {
    let client = config.client().await?;
    let schedules = client
        .list_schedules()
        .await
        .context("cannot list schedules")?;
    if config.json() {
        return output::print_json(&schedules);
    }
    if schedules.schedules.is_empty() {
        println!("No schedules. Create one with `falconeri schedule create`.");
        return Ok(());
    }
    let mut table = Table::with_headers(&[
        "NAME",
        "CRON",
        "TIMEZONE",
        "RUNS",
        "NEXT RUN",
        "LAST RUN",
        "LAST ERROR",
    ]);
    for s in &schedules.schedules {
        let kind = match s.kind {
            ScheduleKind::Job => "job",
            ScheduleKind::Workflow => "workflow",
        };
        table.row([
            s.name.clone(),
            s.cron.clone(),
            s.timezone.clone(),
            format!("{kind} {}", s.target_name),
            if s.paused {
                "paused".to_owned()
            } else {
                s.next_run_local.clone().unwrap_or_else(|| NONE.to_owned())
            },
            s.last_run.clone().unwrap_or_else(|| NONE.to_owned()),
            s.last_error
                .as_deref()
                .map_or_else(|| NONE.to_owned(), |e| output::summary_line(e, 60)),
        ]);
    }
    print!("{}", table.render());
    Ok(())
}
