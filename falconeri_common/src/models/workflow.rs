//! Workflow runs and their steps: the rows behind a job chain.
//!
//! Every step transition is one guarded UPDATE (its `WHERE` names the state
//! it leaves, and for a claimed step the claim's token), so several
//! falconerid replicas applying the chain rules at once change each step at
//! most once: exactly one of them wins [`WorkflowStep::claim`] and creates
//! the step's job, outside any transaction.

use diesel::{
    ExpressionMethods, OptionalExtension, QueryDsl, QueryableByName, RunQueryDsl, SelectableHelper,
    prelude::{Insertable, Queryable, Selectable},
    sql_types::BigInt,
};
use serde::{Deserialize, Serialize};

use super::{Job, ModelError, ModelResult, taken_key};
use crate::{
    Millis,
    db::{DbConn, schema::*, with_conn, write_tx},
    pipeline::PipelineSpec,
    workflow::{
        DependencyKind, StepEdge, StepState, StepStatus, StepView, WorkflowResponse, WorkflowSpec,
        WorkflowStepResponse, dependencies, workflow_status,
    },
};

/// A workflow run.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = workflows)]
pub struct Workflow {
    pub id: i64,
    /// Unique: the workflow's name plus a random suffix.
    pub name: String,
    pub workflow_name: String,
    /// The validated workflow, as JSON.
    pub spec: String,
    pub created_at: Millis,
    /// The schedule that started it, if one did.
    pub schedule_id: Option<i64>,
    /// Whether its steps' jobs are created incremental.
    pub incremental: bool,
}

/// One step of a workflow run.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = workflow_steps)]
pub struct WorkflowStep {
    pub id: i64,
    pub workflow_id: i64,
    /// Topological position: after every step it waits for.
    pub position: i32,
    pub name: String,
    /// The step's pipeline spec, as JSON.
    pub spec: String,
    /// The steps it waits for, as JSON ([`Upstream`] items).
    pub upstream: String,
    /// A [`StepState`], as text.
    pub state: String,
    pub job_id: Option<i64>,
    pub claim_token: Option<String>,
    pub claim_until: Option<Millis>,
    pub reason: Option<String>,
    pub updated_at: Millis,
}

/// One step a step waits for, as stored in `upstream`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upstream {
    /// The upstream step's position.
    pub step: i32,
    pub kind: DependencyKind,
}

/// A step with what the chain rules need of its job.
#[derive(Debug, Clone, PartialEq)]
pub struct StepWithJob {
    pub step: WorkflowStep,
    pub job: Option<Job>,
}

impl WorkflowStep {
    /// The step's state; an unknown value in the row is an error, not a guess.
    pub fn state(&self) -> ModelResult<StepState> {
        self.state
            .parse()
            .map_err(|err: String| ModelError::Other(anyhow::anyhow!(err)))
    }

    /// The steps it waits for.
    pub fn upstream(&self) -> ModelResult<Vec<Upstream>> {
        serde_json::from_str(&self.upstream)
            .map_err(|err| ModelError::Other(anyhow::anyhow!("bad upstream of step: {err}")))
    }

    /// The step's pipeline spec.
    pub fn spec(&self) -> anyhow::Result<PipelineSpec> {
        Ok(serde_json::from_str(&self.spec)?)
    }
}

#[derive(Insertable)]
#[diesel(table_name = workflows)]
struct NewWorkflow<'a> {
    name: &'a str,
    workflow_name: &'a str,
    spec: &'a str,
    created_at: Millis,
    schedule_id: Option<i64>,
    incremental: bool,
    run_key: Option<&'a str>,
}

#[derive(Insertable)]
#[diesel(table_name = workflow_steps)]
struct NewStep {
    workflow_id: i64,
    position: i32,
    name: String,
    spec: String,
    upstream: String,
    state: String,
    updated_at: Millis,
}

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

#[derive(QueryableByName)]
struct RetryRow {
    #[diesel(sql_type = BigInt)]
    step_id: i64,
    #[diesel(sql_type = BigInt)]
    old_job: i64,
    #[diesel(sql_type = BigInt)]
    new_job: i64,
}

fn json_error(err: serde_json::Error) -> ModelError {
    ModelError::Other(anyhow::Error::from(err))
}

/// What [`Workflow::create`] needs.
#[derive(Debug)]
pub struct NewWorkflowParams<'a> {
    pub spec: &'a WorkflowSpec,
    /// The unique run name.
    pub name: &'a str,
    pub schedule_id: Option<i64>,
    pub incremental: bool,
    /// An idempotency key, unique among runs (a schedule's tick): a second
    /// run with the same key is refused with a conflict.
    pub run_key: Option<&'a str>,
}

impl Workflow {
    /// Inserts a workflow run and its steps, all waiting, in one
    /// transaction. The spec must be validated (acyclic).
    #[tracing::instrument(level = "debug", skip_all, fields(name = params.name))]
    pub fn create(
        conn: &mut DbConn,
        params: NewWorkflowParams<'_>,
        now: Millis,
    ) -> ModelResult<Workflow> {
        let spec = params.spec;
        let order = spec.topological_order();
        if order.len() != spec.steps.len() {
            return Err(ModelError::Conflict(
                "the workflow's steps form a cycle".to_owned(),
            ));
        }
        // Position of each step (by index in the file).
        let mut position = vec![0i32; spec.steps.len()];
        for (pos, &i) in order.iter().enumerate() {
            position[i] = i32::try_from(pos).unwrap_or(i32::MAX);
        }
        let edges = dependencies(spec);
        let mut rows = Vec::with_capacity(spec.steps.len());
        for (i, step) in spec.steps.iter().enumerate() {
            let upstream: Vec<Upstream> = edges
                .iter()
                .filter(|e| e.step == i)
                .map(|e| Upstream {
                    step: position[e.upstream],
                    kind: e.kind,
                })
                .collect();
            rows.push(NewStep {
                workflow_id: 0,
                position: position[i],
                name: step.name.clone(),
                spec: serde_json::to_string(&step.spec).map_err(json_error)?,
                upstream: serde_json::to_string(&upstream).map_err(json_error)?,
                state: StepState::Waiting.as_str().to_owned(),
                updated_at: now,
            });
        }
        let spec_json = serde_json::to_string(spec).map_err(json_error)?;
        let new = NewWorkflow {
            name: params.name,
            workflow_name: &spec.workflow.name,
            spec: &spec_json,
            created_at: now,
            schedule_id: params.schedule_id,
            incremental: params.incremental,
            run_key: params.run_key,
        };
        write_tx!(conn, c => {
            let workflow: Workflow = diesel::insert_into(workflows::table)
                .values(&new)
                .returning(Workflow::as_returning())
                .get_result(c)
                .map_err(|err| taken_key(err, params.run_key))?;
            for row in &mut rows {
                row.workflow_id = workflow.id;
            }
            diesel::insert_into(workflow_steps::table).values(&rows).execute(c)?;
            Ok::<_, ModelError>(workflow)
        })
    }

    /// One workflow run by id.
    pub fn find(conn: &mut DbConn, id: i64) -> ModelResult<Workflow> {
        with_conn!(conn, c => workflows::table
            .find(id)
            .select(Workflow::as_select())
            .first(c)
            .optional())?
        .ok_or_else(|| ModelError::NotFound(format!("workflow {id}")))
    }

    /// The run carrying the idempotency key `run_key`, if one exists.
    pub fn find_by_run_key(conn: &mut DbConn, run_key: &str) -> ModelResult<Option<Workflow>> {
        Ok(with_conn!(conn, c => workflows::table
            .filter(workflows::run_key.eq(run_key))
            .select(Workflow::as_select())
            .first(c)
            .optional())?)
    }

    /// One workflow run by its unique name.
    pub fn find_by_name(conn: &mut DbConn, name: &str) -> ModelResult<Workflow> {
        with_conn!(conn, c => workflows::table
            .filter(workflows::name.eq(name))
            .select(Workflow::as_select())
            .first(c)
            .optional())?
        .ok_or_else(|| ModelError::NotFound(format!("workflow {name:?}")))
    }

    /// The newest workflow runs first.
    pub fn list(conn: &mut DbConn, limit: i64) -> ModelResult<Vec<Workflow>> {
        Ok(with_conn!(conn, c => workflows::table
            .order(workflows::id.desc())
            .limit(limit)
            .select(Workflow::as_select())
            .load(c))?)
    }

    /// The run's steps in position order, each with its job.
    pub fn steps(conn: &mut DbConn, id: i64) -> ModelResult<Vec<StepWithJob>> {
        let rows: Vec<(WorkflowStep, Option<Job>)> = with_conn!(conn, c => workflow_steps::table
            .left_join(jobs::table)
            .filter(workflow_steps::workflow_id.eq(id))
            .order(workflow_steps::position)
            .select((WorkflowStep::as_select(), Option::<Job>::as_select()))
            .load(c))?;
        Ok(rows
            .into_iter()
            .map(|(step, job)| StepWithJob { step, job })
            .collect())
    }

    /// The runs the chain rules may have something to do for: a step waits
    /// or is being started, or a step's failed job was retried (its
    /// canceled downstream steps may resume).
    pub fn list_active(conn: &mut DbConn) -> ModelResult<Vec<i64>> {
        let sql = "SELECT DISTINCT s.workflow_id AS id FROM workflow_steps s \
             WHERE s.state IN ('waiting', 'starting') \
             OR (s.state = 'started' AND EXISTS (\
                 SELECT 1 FROM jobs r WHERE r.retry_of = s.job_id)) \
             ORDER BY id";
        let rows: Vec<IdRow> = with_conn!(conn, c => diesel::sql_query(sql).load(c))?;
        Ok(rows.into_iter().map(|row| row.id).collect())
    }
}

/// The chain rules' view of a run's steps (indices are positions).
pub fn step_views(steps: &[StepWithJob]) -> ModelResult<Vec<StepView>> {
    steps
        .iter()
        .map(|s| {
            Ok(StepView {
                name: s.step.name.clone(),
                state: s.step.state()?,
                job_status: s.job.as_ref().map(|j| j.status),
                job_name: s.job.as_ref().map(|j| j.name.clone()),
                upstream: s
                    .step
                    .upstream()?
                    .into_iter()
                    .map(|u| usize::try_from(u.step).unwrap_or(usize::MAX))
                    .collect(),
            })
        })
        .collect()
}

impl WorkflowStep {
    /// Points the run's steps whose job was retried (`job retry`) at the
    /// newest retry, as `started`: the chain resumes from there. Follows
    /// retries of retries. Only a fully planned retry is adopted (a
    /// half-planned job may still be deleted). Returns how many steps moved.
    pub fn adopt_retries(conn: &mut DbConn, workflow_id: i64, now: Millis) -> ModelResult<usize> {
        let mut moved = 0;
        // Each round follows one retry; a chain of retries is short.
        for _ in 0..100 {
            let sql = "SELECT s.id AS step_id, s.job_id AS old_job, r.id AS new_job \
                 FROM workflow_steps s JOIN jobs r ON r.retry_of = s.job_id \
                 WHERE s.workflow_id = $1 AND s.state = 'started' \
                 AND r.planning_lease_until IS NULL ORDER BY r.id";
            let sql = match conn.backend() {
                crate::db::Backend::Sqlite => sql.replace("$1", "?"),
                crate::db::Backend::Postgres => sql.to_owned(),
            };
            let rows: Vec<RetryRow> = with_conn!(conn, c => diesel::sql_query(&sql)
                .bind::<BigInt, _>(workflow_id)
                .load(c))?;
            if rows.is_empty() {
                break;
            }
            for row in rows {
                let n = with_conn!(conn, c => diesel::update(workflow_steps::table)
                    .filter(workflow_steps::id.eq(row.step_id))
                    .filter(workflow_steps::job_id.eq(row.old_job))
                    .set((
                        workflow_steps::job_id.eq(Some(row.new_job)),
                        workflow_steps::reason.eq(None::<String>),
                        workflow_steps::updated_at.eq(now),
                    ))
                    .execute(c))?;
                moved += n;
            }
        }
        Ok(moved)
    }

    /// Claims a waiting step for starting: true for the one caller whose
    /// guarded UPDATE moved it `waiting → starting`. The claim holds until
    /// `until` (renewed while the job is created) under `token`.
    #[tracing::instrument(level = "debug", skip(conn, token))]
    pub fn claim(
        conn: &mut DbConn,
        id: i64,
        token: &str,
        now: Millis,
        until: Millis,
    ) -> ModelResult<bool> {
        let n = with_conn!(conn, c => diesel::update(workflow_steps::table)
            .filter(workflow_steps::id.eq(id))
            .filter(workflow_steps::state.eq(StepState::Waiting.as_str()))
            .set((
                workflow_steps::state.eq(StepState::Starting.as_str()),
                workflow_steps::claim_token.eq(Some(token)),
                workflow_steps::claim_until.eq(Some(until)),
                workflow_steps::updated_at.eq(now),
            ))
            .execute(c))?;
        Ok(n == 1)
    }

    /// Extends a claim; false if it was lost (expired and taken over).
    pub fn renew_claim(
        conn: &mut DbConn,
        id: i64,
        token: &str,
        until: Millis,
    ) -> ModelResult<bool> {
        let n = with_conn!(conn, c => diesel::update(workflow_steps::table)
            .filter(workflow_steps::id.eq(id))
            .filter(workflow_steps::state.eq(StepState::Starting.as_str()))
            .filter(workflow_steps::claim_token.eq(token))
            .set(workflow_steps::claim_until.eq(Some(until)))
            .execute(c))?;
        Ok(n == 1)
    }

    /// Records the job created for a claimed step: `starting → started`.
    /// False if the claim was lost meanwhile.
    pub fn mark_started(
        conn: &mut DbConn,
        id: i64,
        token: &str,
        job_id: i64,
        now: Millis,
    ) -> ModelResult<bool> {
        let n = with_conn!(conn, c => diesel::update(workflow_steps::table)
            .filter(workflow_steps::id.eq(id))
            .filter(workflow_steps::state.eq(StepState::Starting.as_str()))
            .filter(workflow_steps::claim_token.eq(token))
            .set((
                workflow_steps::state.eq(StepState::Started.as_str()),
                workflow_steps::job_id.eq(Some(job_id)),
                workflow_steps::claim_token.eq(None::<String>),
                workflow_steps::claim_until.eq(None::<Millis>),
                workflow_steps::updated_at.eq(now),
            ))
            .execute(c))?;
        Ok(n == 1)
    }

    /// Records that a claimed step's job could not be created:
    /// `starting → failed`, with the reason.
    pub fn mark_failed(
        conn: &mut DbConn,
        id: i64,
        token: &str,
        reason: &str,
        now: Millis,
    ) -> ModelResult<bool> {
        let n = with_conn!(conn, c => diesel::update(workflow_steps::table)
            .filter(workflow_steps::id.eq(id))
            .filter(workflow_steps::state.eq(StepState::Starting.as_str()))
            .filter(workflow_steps::claim_token.eq(token))
            .set((
                workflow_steps::state.eq(StepState::Failed.as_str()),
                workflow_steps::reason.eq(Some(reason)),
                workflow_steps::claim_token.eq(None::<String>),
                workflow_steps::claim_until.eq(None::<Millis>),
                workflow_steps::updated_at.eq(now),
            ))
            .execute(c))?;
        Ok(n == 1)
    }

    /// Cancels a waiting step whose upstream failed: `waiting → canceled`.
    pub fn cancel(conn: &mut DbConn, id: i64, reason: &str, now: Millis) -> ModelResult<bool> {
        let n = with_conn!(conn, c => diesel::update(workflow_steps::table)
            .filter(workflow_steps::id.eq(id))
            .filter(workflow_steps::state.eq(StepState::Waiting.as_str()))
            .set((
                workflow_steps::state.eq(StepState::Canceled.as_str()),
                workflow_steps::reason.eq(Some(reason)),
                workflow_steps::updated_at.eq(now),
            ))
            .execute(c))?;
        Ok(n == 1)
    }

    /// Lets a step canceled for its upstream wait again (the upstream was
    /// retried): `canceled → waiting`.
    pub fn resume(conn: &mut DbConn, id: i64, now: Millis) -> ModelResult<bool> {
        let n = with_conn!(conn, c => diesel::update(workflow_steps::table)
            .filter(workflow_steps::id.eq(id))
            .filter(workflow_steps::state.eq(StepState::Canceled.as_str()))
            .filter(workflow_steps::job_id.is_null())
            .set((
                workflow_steps::state.eq(StepState::Waiting.as_str()),
                workflow_steps::reason.eq(None::<String>),
                workflow_steps::updated_at.eq(now),
            ))
            .execute(c))?;
        Ok(n == 1)
    }

    /// `workflow retry`: puts back to `waiting` every step of the run that
    /// failed to start (`failed`: its job could not be created) and every
    /// started step whose job ended `error` or `canceled` and was not
    /// retried yet (it keeps that job in `job_id`: the chain then starts a
    /// retry of its failed and canceled datums instead of a new job). Each
    /// is a guarded UPDATE naming the state it leaves, so of several
    /// callers racing, each step moves once; the chain's claim then starts
    /// it once. Steps canceled for their upstream resume by the chain rules
    /// once their upstream no longer blocks them. Returns how many moved.
    #[tracing::instrument(level = "debug", skip(conn))]
    pub fn reopen_failed(conn: &mut DbConn, workflow_id: i64, now: Millis) -> ModelResult<usize> {
        let failed_jobs = "UPDATE workflow_steps SET state = 'waiting', reason = NULL, \
             updated_at = $2 WHERE workflow_id = $1 AND state = 'started' \
             AND job_id IN (SELECT j.id FROM jobs j \
                 WHERE j.status IN ('error', 'canceled') \
                 AND NOT EXISTS (SELECT 1 FROM jobs r WHERE r.retry_of = j.id))";
        let failed_jobs = match conn.backend() {
            crate::db::Backend::Sqlite => failed_jobs.replace("$1", "?1").replace("$2", "?2"),
            crate::db::Backend::Postgres => failed_jobs.to_owned(),
        };
        write_tx!(conn, c => {
            let not_created = diesel::update(workflow_steps::table)
                .filter(workflow_steps::workflow_id.eq(workflow_id))
                .filter(workflow_steps::state.eq(StepState::Failed.as_str()))
                .set((
                    workflow_steps::state.eq(StepState::Waiting.as_str()),
                    workflow_steps::reason.eq(None::<String>),
                    workflow_steps::updated_at.eq(now),
                ))
                .execute(c)?;
            let ended = diesel::sql_query(&failed_jobs)
                .bind::<BigInt, _>(workflow_id)
                .bind::<BigInt, _>(now)
                .execute(c)?;
            Ok::<_, ModelError>(not_created + ended)
        })
    }

    /// Puts back to `waiting` the steps whose claim ran out before `now`
    /// (the falconerid starting them died). Returns how many.
    pub fn release_stale_claims(conn: &mut DbConn, now: Millis) -> ModelResult<usize> {
        Ok(with_conn!(conn, c => diesel::update(workflow_steps::table)
            .filter(workflow_steps::state.eq(StepState::Starting.as_str()))
            .filter(workflow_steps::claim_until.lt(now))
            .set((
                workflow_steps::state.eq(StepState::Waiting.as_str()),
                workflow_steps::claim_token.eq(None::<String>),
                workflow_steps::claim_until.eq(None::<Millis>),
                workflow_steps::updated_at.eq(now),
            ))
            .execute(c))?)
    }
}

impl StepWithJob {
    /// The step's status as users see it.
    pub fn status(&self) -> ModelResult<StepStatus> {
        Ok(StepStatus::of(
            self.step.state()?,
            self.job.as_ref().map(|j| j.status),
        ))
    }
}

/// A run and its steps as the API shows them.
pub fn workflow_response(
    workflow: Workflow,
    steps: Vec<StepWithJob>,
) -> ModelResult<WorkflowResponse> {
    let names: Vec<String> = steps.iter().map(|s| s.step.name.clone()).collect();
    let mut statuses = Vec::with_capacity(steps.len());
    let mut out = Vec::with_capacity(steps.len());
    for s in steps {
        let status = s.status()?;
        statuses.push(status);
        let upstream = s
            .step
            .upstream()?
            .into_iter()
            .map(|u| StepEdge {
                step: usize::try_from(u.step)
                    .ok()
                    .and_then(|i| names.get(i))
                    .cloned()
                    .unwrap_or_default(),
                kind: u.kind,
            })
            .collect();
        out.push(WorkflowStepResponse {
            name: s.step.name.clone(),
            status,
            state: s.step.state()?,
            upstream,
            job: s.job.map(Into::into),
            reason: s.step.reason,
        });
    }
    Ok(WorkflowResponse {
        id: workflow.id,
        name: workflow.name,
        workflow_name: workflow.workflow_name,
        status: workflow_status(&statuses),
        created_at: workflow.created_at,
        schedule_id: workflow.schedule_id,
        incremental: workflow.incremental,
        steps: out,
    })
}
