//! Workflows: several pipeline specs run as a chain, each step starting once
//! the steps it depends on are done.
//!
//! This module holds the file format, its validation (every problem with its
//! JSON path; a cycle named by its members in order), how dependencies are
//! found (explicit `after`, and implied when a step's input lies under
//! another step's egress), and the pure rules of the chain
//! ([`next_actions`]): which waiting step may start, which must be canceled
//! because an upstream step failed, and which canceled step may wait again
//! because its upstream was retried. It does no I/O: the CLI reads step spec
//! files through the callback of [`WorkflowDocument::resolve`], and falconerid
//! applies the actions as guarded database writes.

use std::{borrow::Cow, collections::HashMap};

use serde::{Deserialize, Serialize};

use crate::{
    pipeline::{PipelineSpec, ROOT_PATH, SpecError, SpecProblem, parse_json},
    status::JobStatus,
};

/// The longest workflow or step name (it is part of a Kubernetes-style
/// run name, like a pipeline name).
pub const MAX_NAME_LEN: usize = 40;

/// The most steps one workflow may have: a chain is planned and shown whole.
pub const MAX_STEPS: usize = 100;

/// A workflow file as written, before step spec files are read.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WorkflowDocument {
    pub workflow: WorkflowInfo,
    pub steps: Vec<StepDocument>,
}

/// The workflow's own fields.
#[derive(
    Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema, utoipa::ToSchema,
)]
#[serde(deny_unknown_fields)]
pub struct WorkflowInfo {
    /// Names the workflow: ASCII letters, digits, `-` and `_`, starting with
    /// a letter. Each run is named after it.
    pub name: String,
}

/// One step as written: its spec inline, or the path of a spec file
/// relative to the workflow file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StepDocument {
    pub name: String,
    pub spec: serde_json::Value,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
}

/// A workflow with every step's spec parsed and validated: what the CLI
/// sends and falconerid stores.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkflowSpec {
    pub workflow: WorkflowInfo,
    pub steps: Vec<Step>,
}

/// One step of a [`WorkflowSpec`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Step {
    /// Unique within the workflow.
    pub name: String,
    pub spec: PipelineSpec,
    /// Steps this one waits for, besides those found by [`dependencies`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
}

/// Why one step waits for another.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum DependencyKind {
    /// Named in the step's `after`.
    After,
    /// One of the step's inputs lies under the upstream step's egress.
    Egress,
}

/// One edge of the graph: `step` waits for `upstream` (indices into
/// [`WorkflowSpec::steps`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dependency {
    pub step: usize,
    pub upstream: usize,
    pub kind: DependencyKind,
}

/// Collects problems with their paths.
#[derive(Default)]
struct Problems(Vec<SpecProblem>);

impl Problems {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(SpecProblem {
            path: path.into(),
            message: message.into(),
        });
    }

    fn into_result(self) -> Result<(), SpecError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(SpecError { problems: self.0 })
        }
    }
}

/// Where a step's spec comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecSource<'a> {
    /// Written inline in the workflow file.
    Inline,
    /// A spec file, by its path relative to the workflow file.
    File(&'a str),
}

impl WorkflowDocument {
    /// Parses a workflow file; step specs are checked by [`Self::resolve`].
    pub fn from_json(json: &str) -> Result<WorkflowDocument, SpecError> {
        parse_json(json)
    }

    /// Parses and validates every step's spec: inline ones here, files
    /// through `load` (called with the step's index and the path as
    /// written; its problems are reported under `steps[i].spec`). Each
    /// parsed spec then goes through `adjust` (the CLI resolves relative
    /// `file://` URIs there, before dependencies are inferred from them),
    /// and the workflow is checked as a whole ([`WorkflowSpec::validate`]).
    pub fn resolve(
        self,
        mut load: impl FnMut(usize, &str) -> Result<PipelineSpec, SpecError>,
        mut adjust: impl FnMut(usize, &mut PipelineSpec),
    ) -> Result<WorkflowSpec, SpecError> {
        let mut problems = Problems::default();
        let mut steps = Vec::with_capacity(self.steps.len());
        for (i, step) in self.steps.into_iter().enumerate() {
            let parsed = match &step.spec {
                serde_json::Value::String(path) => load(i, path),
                serde_json::Value::Object(_) => PipelineSpec::from_json(&step.spec.to_string()),
                _ => Err(SpecError {
                    problems: vec![SpecProblem {
                        path: ROOT_PATH.to_owned(),
                        message: "must be a pipeline spec (an object) or the path of a spec file"
                            .to_owned(),
                    }],
                }),
            };
            match parsed {
                Ok(mut spec) => {
                    adjust(i, &mut spec);
                    steps.push(Step {
                        name: step.name,
                        spec,
                        after: step.after,
                    });
                }
                Err(err) => {
                    for problem in err.problems {
                        let path = if problem.path == ROOT_PATH {
                            format!("steps[{i}].spec")
                        } else {
                            format!("steps[{i}].spec.{}", problem.path)
                        };
                        problems.push(path, problem.message);
                    }
                }
            }
        }
        problems.into_result()?;
        let spec = WorkflowSpec {
            workflow: self.workflow,
            steps,
        };
        spec.validate()?;
        Ok(spec)
    }

    /// Where step `i`'s spec comes from.
    pub fn source(&self, i: usize) -> Option<SpecSource<'_>> {
        self.steps.get(i).map(|step| match &step.spec {
            serde_json::Value::String(path) => SpecSource::File(path),
            _ => SpecSource::Inline,
        })
    }
}

impl WorkflowSpec {
    /// Parses a workflow whose specs are all inline (what the server
    /// accepts: it reads no files) and validates it.
    pub fn from_json(json: &str) -> Result<WorkflowSpec, SpecError> {
        WorkflowDocument::from_json(json)?.resolve(
            |_, _| {
                Err(SpecError {
                    problems: vec![SpecProblem {
                        path: ROOT_PATH.to_owned(),
                        message: "must be the spec itself here: the CLI reads spec files and \
                                  sends their contents"
                            .to_owned(),
                    }],
                })
            },
            |_, _| {},
        )
    }

    /// Checks what the step specs cannot: names, `after`, and cycles.
    pub fn validate(&self) -> Result<(), SpecError> {
        let mut problems = Problems::default();
        check_name(&mut problems, "workflow.name", &self.workflow.name);
        if self.steps.is_empty() {
            problems.push("steps", "must name at least one step");
        }
        if self.steps.len() > MAX_STEPS {
            problems.push(
                "steps",
                format!(
                    "may hold at most {MAX_STEPS} steps, not {}",
                    self.steps.len()
                ),
            );
        }
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, step) in self.steps.iter().enumerate() {
            check_name(&mut problems, &format!("steps[{i}].name"), &step.name);
            if let Some(first) = seen.insert(&step.name, i) {
                problems.push(
                    format!("steps[{i}].name"),
                    format!("{:?} is already the name of steps[{first}]", step.name),
                );
            }
        }
        for (i, step) in self.steps.iter().enumerate() {
            for (j, name) in step.after.iter().enumerate() {
                let path = format!("steps[{i}].after[{j}]");
                if *name == step.name {
                    problems.push(path, "a step cannot wait for itself");
                } else if !self.steps.iter().any(|s| s.name == *name) {
                    problems.push(path, format!("no step is named {name:?}"));
                }
            }
        }
        if problems.0.is_empty()
            && let Some(cycle) = find_cycle(self.steps.len(), &dependencies(self))
        {
            let names: Vec<&str> = cycle
                .iter()
                .filter_map(|&i| self.steps.get(i).map(|s| s.name.as_str()))
                .collect();
            problems.push(
                "steps",
                format!(
                    "the steps depend on each other in a cycle: {} (through `after` or an \
                         input under another step's egress)",
                    names.join(" → ")
                ),
            );
        }
        problems.into_result()
    }

    /// The steps in an order where every step comes after those it waits
    /// for (ties in file order). Only for a validated, acyclic workflow; a
    /// cycle's members are left out.
    pub fn topological_order(&self) -> Vec<usize> {
        let upstream = upstream_lists(self.steps.len(), &dependencies(self));
        topological(&upstream)
    }
}

/// Checks a workflow or step name.
fn check_name(problems: &mut Problems, path: &str, name: &str) {
    if name.is_empty() {
        problems.push(path, "must not be empty");
        return;
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        problems.push(
            path,
            format!("may contain only ASCII letters, digits, '-' and '_', not {bad:?}"),
        );
    } else if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        problems.push(path, "must start with a letter");
    } else if name.chars().count() > MAX_NAME_LEN {
        problems.push(
            path,
            format!("must be at most {MAX_NAME_LEN} characters long"),
        );
    }
}

/// A URI as compared for dependencies: without trailing slashes, and a
/// `file://` path normalized lexically (`.`, `..` and repeated slashes
/// resolved, as the local filesystem would read them barring symlinks).
/// Object-store keys are compared as written: there `a/../b` and `a//b`
/// are keys of their own.
fn comparable(uri: &str) -> Cow<'_, str> {
    let Some(path) = uri.strip_prefix("file://") else {
        return Cow::Borrowed(uri.trim_end_matches('/'));
    };
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    Cow::Owned(format!("file:///{}", parts.join("/")))
}

/// True when `input` is `egress` or lies beneath it (whole path segments:
/// `file:///data/out2` is not under `file:///data/out`).
pub fn is_under(input: &str, egress: &str) -> bool {
    let (input, egress) = (comparable(input), comparable(egress));
    let (input, egress) = (input.trim_end_matches('/'), egress.trim_end_matches('/'));
    input == egress
        || input
            .strip_prefix(egress)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Every edge of the workflow's graph: the steps' `after` (names that
/// exist), and an implied edge wherever a step's input lies under another
/// step's egress. An edge both explicit and implied is reported once, as
/// `After`.
pub fn dependencies(workflow: &WorkflowSpec) -> Vec<Dependency> {
    let mut edges: Vec<Dependency> = Vec::new();
    let index: HashMap<&str, usize> = workflow
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    for (i, step) in workflow.steps.iter().enumerate() {
        for name in &step.after {
            if let Some(&upstream) = index.get(name.as_str())
                && upstream != i
                && !edges.iter().any(|e| e.step == i && e.upstream == upstream)
            {
                edges.push(Dependency {
                    step: i,
                    upstream,
                    kind: DependencyKind::After,
                });
            }
        }
        for (j, other) in workflow.steps.iter().enumerate() {
            if i == j || edges.iter().any(|e| e.step == i && e.upstream == j) {
                continue;
            }
            let reads = step
                .spec
                .input
                .atoms()
                .iter()
                .any(|atom| is_under(&atom.uri, &other.spec.egress.uri));
            if reads {
                edges.push(Dependency {
                    step: i,
                    upstream: j,
                    kind: DependencyKind::Egress,
                });
            }
        }
    }
    edges.sort_by_key(|e| (e.step, e.upstream));
    edges
}

/// For each step, the steps it waits for.
pub fn upstream_lists(steps: usize, edges: &[Dependency]) -> Vec<Vec<usize>> {
    let mut upstream = vec![Vec::new(); steps];
    for edge in edges {
        if let Some(list) = upstream.get_mut(edge.step) {
            list.push(edge.upstream);
        }
    }
    upstream
}

/// A cycle among `steps` nodes, as its members in order with the first one
/// repeated at the end (`a → b → a`), or None. Deterministic: the search
/// starts from the first step in file order.
pub fn find_cycle(steps: usize, edges: &[Dependency]) -> Option<Vec<usize>> {
    // Follow edges from a step to the steps it waits for; a cycle read that
    // way is reversed at the end so it reads in the order things run.
    let upstream = upstream_lists(steps, edges);
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let mut marks = vec![Mark::New; steps];
    for start in 0..steps {
        if marks.get(start) != Some(&Mark::New) {
            continue;
        }
        // An explicit stack of (node, next edge to try), so deep chains
        // cannot overflow the thread's stack.
        let mut path: Vec<(usize, usize)> = vec![(start, 0)];
        if let Some(mark) = marks.get_mut(start) {
            *mark = Mark::OnPath;
        }
        while let Some(&mut (node, ref mut next)) = path.last_mut() {
            let neighbours = upstream.get(node).map(Vec::as_slice).unwrap_or(&[]);
            if let Some(&up) = neighbours.get(*next) {
                *next += 1;
                match marks.get(up).copied() {
                    Some(Mark::New) => {
                        if let Some(mark) = marks.get_mut(up) {
                            *mark = Mark::OnPath;
                        }
                        path.push((up, 0));
                    }
                    Some(Mark::OnPath) => {
                        let from = path.iter().position(|&(n, _)| n == up).unwrap_or(0);
                        let mut cycle: Vec<usize> = path[from..].iter().map(|&(n, _)| n).collect();
                        // Read along "waits for", the cycle goes a ← b ← c;
                        // reversed it goes the way work flows.
                        cycle.reverse();
                        let first = cycle.last().copied().unwrap_or(up);
                        cycle.rotate_right(1);
                        cycle.push(first);
                        return Some(cycle);
                    }
                    _ => {}
                }
            } else {
                if let Some(mark) = marks.get_mut(node) {
                    *mark = Mark::Done;
                }
                path.pop();
            }
        }
    }
    None
}

/// Kahn's order over `upstream` lists, ties broken by index.
fn topological(upstream: &[Vec<usize>]) -> Vec<usize> {
    let mut placed = vec![false; upstream.len()];
    let mut order = Vec::with_capacity(upstream.len());
    loop {
        let next = (0..upstream.len()).find(|&i| {
            !placed[i]
                && upstream[i]
                    .iter()
                    .all(|&u| placed.get(u).copied().unwrap_or(true))
        });
        match next {
            Some(i) => {
                placed[i] = true;
                order.push(i);
            }
            None => return order,
        }
    }
}

/// Where a step of a running workflow stands, as stored.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// Waits for its upstream steps.
    Waiting,
    /// A falconerid claimed it and is creating its job.
    Starting,
    /// Its job exists; the job's status says the rest.
    Started,
    /// Will not run: an upstream step failed (the reason names it). It
    /// waits again if that step is retried.
    Canceled,
    /// Its job could not be created (the reason says why).
    Failed,
}

impl StepState {
    /// Every state.
    pub const ALL: &'static [StepState] = &[
        StepState::Waiting,
        StepState::Starting,
        StepState::Started,
        StepState::Canceled,
        StepState::Failed,
    ];

    /// The name stored in the database and used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Waiting => "waiting",
            StepState::Starting => "starting",
            StepState::Started => "started",
            StepState::Canceled => "canceled",
            StepState::Failed => "failed",
        }
    }
}

impl std::fmt::Display for StepState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for StepState {
    type Err = String;

    fn from_str(text: &str) -> Result<StepState, String> {
        StepState::ALL
            .iter()
            .copied()
            .find(|state| state.as_str() == text)
            .ok_or_else(|| format!("unknown step state {text:?}"))
    }
}

/// A step's status as users see it: its state, or its job's status once
/// it has a job.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Waiting,
    Starting,
    /// Its job is ready or running.
    Running,
    Done,
    /// Its job ended `error`, or could not be created.
    Error,
    /// Its job was canceled, or it will not run because an upstream step
    /// failed.
    Canceled,
}

impl StepStatus {
    /// The status of a step in `state` whose job (if any) is `job`.
    pub fn of(state: StepState, job: Option<JobStatus>) -> StepStatus {
        match (state, job) {
            (StepState::Waiting, _) => StepStatus::Waiting,
            (StepState::Starting, _) => StepStatus::Starting,
            (StepState::Canceled, _) => StepStatus::Canceled,
            (StepState::Failed, _) => StepStatus::Error,
            (StepState::Started, Some(JobStatus::Done)) => StepStatus::Done,
            (StepState::Started, Some(JobStatus::Error)) => StepStatus::Error,
            (StepState::Started, Some(JobStatus::Canceled)) => StepStatus::Canceled,
            (StepState::Started, _) => StepStatus::Running,
        }
    }

    /// The name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Waiting => "waiting",
            StepStatus::Starting => "starting",
            StepStatus::Running => "running",
            StepStatus::Done => "done",
            StepStatus::Error => "error",
            StepStatus::Canceled => "canceled",
        }
    }

    /// True when the step's failure keeps its downstream steps from running.
    fn blocks(self) -> bool {
        matches!(self, StepStatus::Error | StepStatus::Canceled)
    }
}

impl std::fmt::Display for StepStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A workflow run's status, from its steps' statuses.
pub fn workflow_status(steps: &[StepStatus]) -> JobStatus {
    if steps.iter().all(|s| *s == StepStatus::Done) {
        JobStatus::Done
    } else if steps.iter().any(|s| {
        matches!(
            s,
            StepStatus::Waiting | StepStatus::Starting | StepStatus::Running
        )
    }) {
        JobStatus::Running
    } else if steps.contains(&StepStatus::Error) {
        JobStatus::Error
    } else {
        JobStatus::Canceled
    }
}

/// What the chain rules see of one step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepView {
    pub name: String,
    pub state: StepState,
    /// The status of the step's job, once it has one.
    pub job_status: Option<JobStatus>,
    pub job_name: Option<String>,
    /// Indices of the steps it waits for.
    pub upstream: Vec<usize>,
}

/// A change the chain rules ask for, by step index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepAction {
    /// Every upstream step is done: claim the step and create its job.
    Start(usize),
    /// An upstream step failed: cancel this waiting step, with the reason.
    Cancel(usize, String),
    /// The upstream failure that canceled this step is gone (the upstream
    /// was retried): wait again.
    Resume(usize),
}

/// The actions that bring a workflow's steps in line with their upstream
/// steps, in an order where a step's upstream comes first. A cancellation
/// or resumption carries through to the steps below in the same pass.
pub fn next_actions(steps: &[StepView]) -> Vec<StepAction> {
    let upstream: Vec<Vec<usize>> = steps.iter().map(|s| s.upstream.clone()).collect();
    let mut status: Vec<StepStatus> = steps
        .iter()
        .map(|s| StepStatus::of(s.state, s.job_status))
        .collect();
    let mut actions = Vec::new();
    for i in topological(&upstream) {
        let Some(step) = steps.get(i) else { continue };
        let blocker = step
            .upstream
            .iter()
            .find(|&&u| status.get(u).is_some_and(|s| s.blocks()))
            .copied();
        let all_done = step
            .upstream
            .iter()
            .all(|&u| status.get(u) == Some(&StepStatus::Done));
        match (step.state, blocker) {
            (StepState::Waiting, Some(u)) => {
                let reason = cancel_reason(steps, &status, u);
                actions.push(StepAction::Cancel(i, reason));
                status[i] = StepStatus::Canceled;
            }
            (StepState::Waiting, None) if all_done => {
                actions.push(StepAction::Start(i));
                status[i] = StepStatus::Starting;
            }
            (StepState::Canceled, None) if step.job_status.is_none() => {
                actions.push(StepAction::Resume(i));
                status[i] = StepStatus::Waiting;
                if all_done {
                    actions.push(StepAction::Start(i));
                    status[i] = StepStatus::Starting;
                }
            }
            _ => {}
        }
    }
    actions
}

/// Why a step is canceled: which upstream step failed, and how.
fn cancel_reason(steps: &[StepView], status: &[StepStatus], upstream: usize) -> String {
    let Some(step) = steps.get(upstream) else {
        return "an upstream step failed".to_owned();
    };
    let how = status.get(upstream).copied().unwrap_or(StepStatus::Error);
    match (&step.job_name, how) {
        (Some(job), _) => format!("upstream step {:?} (job {job}) ended {how}", step.name),
        (None, StepStatus::Canceled) => format!("upstream step {:?} was canceled", step.name),
        (None, _) => format!("upstream step {:?} could not start", step.name),
    }
}

/// A step as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkflowStepResponse {
    pub name: String,
    /// Its state, or its job's status once it has a job.
    pub status: StepStatus,
    /// The stored state (`started` once its job exists).
    pub state: StepState,
    /// The steps it waits for, and why.
    pub upstream: Vec<StepEdge>,
    /// Its job, once created (the newest retry, after `job retry`).
    pub job: Option<crate::api::JobResponse>,
    /// Why it was canceled, or why its job could not be created.
    pub reason: Option<String>,
}

/// One step another waits for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StepEdge {
    /// The upstream step's name.
    pub step: String,
    pub kind: DependencyKind,
}

/// A workflow run as the API shows it: its steps in an order where each
/// comes after those it waits for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkflowResponse {
    pub id: i64,
    /// Unique: the workflow's name plus a random suffix.
    pub name: String,
    pub workflow_name: String,
    /// `running` while a step waits, starts or runs; `done` once every
    /// step is done; else `error` (a step failed) or `canceled`.
    pub status: JobStatus,
    #[schema(value_type = i64)]
    pub created_at: crate::Millis,
    /// The schedule that started it, if one did.
    pub schedule_id: Option<i64>,
    pub incremental: bool,
    pub steps: Vec<WorkflowStepResponse>,
}

/// `GET /v1/workflows`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkflowListResponse {
    pub workflows: Vec<WorkflowResponse>,
}

/// `GET /v1/workflows/{id}/progress`: the run, and the generation to pass
/// as `since` to wait for the next change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkflowProgressResponse {
    pub workflow: WorkflowResponse,
    pub generation: u64,
}

/// REST paths of workflows.
pub mod paths {
    pub const WORKFLOWS: &str = "/v1/workflows";

    pub fn workflow(id: i64) -> String {
        format!("/v1/workflows/{id}")
    }
    pub fn workflow_by_name(name: &str) -> String {
        format!("/v1/workflows/by-name/{name}")
    }
    pub fn workflow_progress(id: i64) -> String {
        format!("/v1/workflows/{id}/progress")
    }
    pub fn workflow_retry(id: i64) -> String {
        format!("/v1/workflows/{id}/retry")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::PipelineSpec;

    fn spec(name: &str, input: &str, egress: &str) -> serde_json::Value {
        serde_json::json!({
            "pipeline": {"name": name},
            "transform": {"image": "busybox", "cmd": ["true"]},
            "parallelism_spec": {"constant": 1},
            "resource_requests": {"memory": "64Mi", "cpu": 0.1},
            "input": {"atom": {"URI": input, "repo": "in", "glob": "/*"}},
            "egress": {"URI": egress},
        })
    }

    fn workflow(steps: serde_json::Value) -> String {
        serde_json::json!({"workflow": {"name": "flow"}, "steps": steps}).to_string()
    }

    fn problems(json: &str) -> Vec<String> {
        match WorkflowSpec::from_json(json) {
            Ok(_) => Vec::new(),
            Err(err) => err.problems.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn a_valid_chain_parses_with_an_implied_dependency() {
        let json = workflow(serde_json::json!([
            {"name": "split", "spec": spec("split", "s3://b/raw", "s3://b/split/")},
            {"name": "count", "spec": spec("count", "s3://b/split/parts", "s3://b/counts")},
            {"name": "report", "spec": spec("report", "s3://b/other", "s3://b/report"), "after": ["count"]},
        ]));
        let workflow = WorkflowSpec::from_json(&json).expect("valid");
        assert_eq!(
            dependencies(&workflow),
            vec![
                Dependency {
                    step: 1,
                    upstream: 0,
                    kind: DependencyKind::Egress
                },
                Dependency {
                    step: 2,
                    upstream: 1,
                    kind: DependencyKind::After
                },
            ]
        );
        assert_eq!(workflow.topological_order(), vec![0, 1, 2]);
    }

    #[test]
    fn under_means_whole_segments() {
        assert!(is_under("s3://b/out", "s3://b/out/"));
        assert!(is_under("s3://b/out/x/y", "s3://b/out"));
        assert!(!is_under("s3://b/out2", "s3://b/out"));
        assert!(!is_under("s3://b", "s3://b/out"));
        assert!(is_under("file:///d/o/", "file:///d/o"));
        // `file://` paths are compared once normalized; keys as written.
        assert!(is_under("file:///a/../b/x", "file:///b"));
        assert!(is_under("file:///b//./x/", "file:///b/"));
        assert!(is_under("file:///b/x", "file:///b/y/.."));
        assert!(!is_under("file:///b/../c", "file:///b"));
        assert!(is_under("file:///x", "file:///"));
        assert!(!is_under("s3://b/a/../out", "s3://b/out"));
    }

    #[test]
    fn problems_name_their_json_paths() {
        let json = workflow(serde_json::json!([
            {"name": "a", "spec": spec("a", "s3://b/in", "s3://b/a")},
            {"name": "a", "spec": spec("b", "s3://b/in", "s3://b/b"), "after": ["nope", "a"]},
            {"name": "9c", "spec": {"pipeline": {"name": "c"}}},
            {"name": "d", "spec": 7},
        ]));
        let found = problems(&json);
        assert!(
            found.iter().any(|p| p.starts_with("steps[2].spec")),
            "{found:?}"
        );
        assert!(
            found.contains(
                &"steps[3].spec: must be a pipeline spec (an object) or the path of a spec file"
                    .to_owned()
            ),
            "{found:?}"
        );
        // Spec problems come first; the workflow's own come once the specs parse.
        let json = workflow(serde_json::json!([
            {"name": "a", "spec": spec("a", "s3://b/in", "s3://b/a")},
            {"name": "a", "spec": spec("b", "s3://b/in", "s3://b/b"), "after": ["nope", "a"]},
            {"name": "9c", "spec": spec("c", "s3://b/in", "s3://b/c")},
        ]));
        let found = problems(&json);
        assert!(
            found.contains(&"steps[1].name: \"a\" is already the name of steps[0]".to_owned()),
            "{found:?}"
        );
        assert!(
            found.contains(&"steps[1].after[0]: no step is named \"nope\"".to_owned()),
            "{found:?}"
        );
        assert!(
            found.contains(&"steps[2].name: must start with a letter".to_owned()),
            "{found:?}"
        );
        let unknown = serde_json::json!({"workflow": {"name": "w"}, "steps": [], "extra": 1});
        assert_eq!(problems(&unknown.to_string()).len(), 1);
        assert!(problems(&unknown.to_string())[0].starts_with("extra"));
        assert_eq!(
            problems(&workflow(serde_json::json!([]))),
            vec!["steps: must name at least one step".to_owned()]
        );
    }

    #[test]
    fn a_spec_path_is_refused_by_the_server_form() {
        let json = workflow(serde_json::json!([{"name": "a", "spec": "a.json"}]));
        let found = problems(&json);
        assert_eq!(found.len(), 1);
        assert!(
            found[0].starts_with("steps[0].spec: must be the spec itself"),
            "{found:?}"
        );
    }

    #[test]
    fn spec_files_are_read_through_the_callback() {
        let json = workflow(serde_json::json!([
            {"name": "a", "spec": "specs/a.json"},
            {"name": "b", "spec": spec("b", "s3://b/a/x", "s3://b/b")},
        ]));
        let document = WorkflowDocument::from_json(&json).expect("parses");
        assert_eq!(document.source(0), Some(SpecSource::File("specs/a.json")));
        assert_eq!(document.source(1), Some(SpecSource::Inline));
        let mut asked = Vec::new();
        let workflow = document
            .resolve(
                |i, path| {
                    asked.push((i, path.to_owned()));
                    PipelineSpec::from_json(&spec("a", "s3://b/in", "s3://b/a").to_string())
                },
                |_, _| {},
            )
            .expect("valid");
        assert_eq!(asked, vec![(0, "specs/a.json".to_owned())]);
        assert_eq!(dependencies(&workflow).len(), 1);
    }

    #[test]
    fn a_cycle_is_named_by_its_members_in_order() {
        let json = workflow(serde_json::json!([
            {"name": "start", "spec": spec("s", "s3://b/in", "s3://b/s")},
            {"name": "a", "spec": spec("a", "s3://b/c", "s3://b/a"), "after": ["start"]},
            {"name": "b", "spec": spec("b", "s3://b/a", "s3://b/b")},
            {"name": "c", "spec": spec("c", "s3://b/in", "s3://b/c"), "after": ["b"]},
        ]));
        let found = problems(&json);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("steps: the steps depend on each other in a cycle: a → b → c → a"),
            "{found:?}"
        );
        let json = workflow(serde_json::json!([
            {"name": "x", "spec": spec("x", "s3://b/in", "s3://b/x"), "after": ["y"]},
            {"name": "y", "spec": spec("y", "s3://b/in", "s3://b/y"), "after": ["x"]},
        ]));
        assert!(
            problems(&json)[0].contains("x → y → x"),
            "{:?}",
            problems(&json)
        );
        // A step reading under its own egress does not wait for itself.
        let json = workflow(serde_json::json!([
            {"name": "self", "spec": spec("s", "s3://b/s/in", "s3://b/s")},
        ]));
        assert_eq!(problems(&json), Vec::<String>::new());
    }

    fn view(name: &str, state: StepState, job: Option<JobStatus>, upstream: &[usize]) -> StepView {
        StepView {
            name: name.to_owned(),
            state,
            job_status: job,
            job_name: job.map(|_| format!("{name}-job")),
            upstream: upstream.to_vec(),
        }
    }

    #[test]
    fn a_step_starts_once_every_upstream_is_done() {
        use StepState::*;
        let steps = vec![
            view("a", Started, Some(JobStatus::Done), &[]),
            view("b", Started, Some(JobStatus::Running), &[]),
            view("c", Waiting, None, &[0]),
            view("d", Waiting, None, &[0, 1]),
            view("e", Waiting, None, &[]),
        ];
        assert_eq!(
            next_actions(&steps),
            vec![StepAction::Start(2), StepAction::Start(4)]
        );
    }

    #[test]
    fn a_failed_upstream_cancels_everything_below_it_with_the_reason() {
        use StepState::*;
        let steps = vec![
            view("a", Started, Some(JobStatus::Error), &[]),
            view("b", Waiting, None, &[0]),
            view("c", Waiting, None, &[1]),
            view("d", Failed, None, &[]),
            view("e", Waiting, None, &[3]),
        ];
        assert_eq!(
            next_actions(&steps),
            vec![
                StepAction::Cancel(1, "upstream step \"a\" (job a-job) ended error".to_owned()),
                StepAction::Cancel(2, "upstream step \"b\" was canceled".to_owned()),
                StepAction::Cancel(4, "upstream step \"d\" could not start".to_owned()),
            ]
        );
    }

    #[test]
    fn a_retried_upstream_resumes_its_canceled_steps() {
        use StepState::*;
        // The retry's job is running: the canceled steps wait again.
        let steps = vec![
            view("a", Started, Some(JobStatus::Running), &[]),
            view("b", Canceled, None, &[0]),
            view("c", Canceled, None, &[1]),
        ];
        assert_eq!(
            next_actions(&steps),
            vec![StepAction::Resume(1), StepAction::Resume(2)]
        );
        // Done already: the first one starts at once.
        let steps = vec![
            view("a", Started, Some(JobStatus::Done), &[]),
            view("b", Canceled, None, &[0]),
        ];
        assert_eq!(
            next_actions(&steps),
            vec![StepAction::Resume(1), StepAction::Start(1)]
        );
        // A step whose own job was canceled is not resumed by its upstream.
        let steps = vec![
            view("a", Started, Some(JobStatus::Done), &[]),
            view("b", Started, Some(JobStatus::Canceled), &[0]),
        ];
        assert_eq!(next_actions(&steps), Vec::new());
    }

    #[test]
    fn the_workflow_status_follows_its_steps() {
        use StepStatus::*;
        assert_eq!(workflow_status(&[Done, Done]), JobStatus::Done);
        assert_eq!(workflow_status(&[Done, Waiting]), JobStatus::Running);
        assert_eq!(workflow_status(&[Error, Canceled]), JobStatus::Error);
        assert_eq!(workflow_status(&[Done, Canceled]), JobStatus::Canceled);
    }
}
