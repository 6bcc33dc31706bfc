//! Turning a spec into a running job: list the inputs through storage, plan
//! datums, insert them, ask the executor for workers.

use falconeri_common::{
    models::{Job, NewJobParams, db_now},
    pipeline::PipelineSpec,
    plan::{PlannedDatum, plan_datums},
    storage::storage_for,
};

use crate::{
    error::{AppError, AppResult},
    executor::WorkerLaunch,
    state::AppState,
};

/// Lists every atom of the spec's input and expands them into datums.
#[tracing::instrument(level = "debug", skip_all, fields(pipeline = spec.pipeline.name))]
pub async fn plan(spec: &PipelineSpec) -> AppResult<Vec<PlannedDatum>> {
    // Refuse an egress scheme without a backend before any datum runs (the
    // bucket itself is not probed; see ARCHITECTURE.md, Known limitations).
    storage_for(&spec.egress.uri)
        .map_err(|err| AppError::BadRequest(format!("egress: {err:#}")))?;
    let mut listings = Vec::new();
    for atom in spec.input.atoms() {
        let storage = storage_for(&atom.uri)
            .map_err(|err| AppError::BadRequest(format!("input {}: {err:#}", atom.repo)))?;
        let listing = storage.list(&atom.uri).await.map_err(|err| {
            AppError::BadRequest(format!(
                "cannot list input {} ({}): {err:#}",
                atom.repo, atom.uri
            ))
        })?;
        listings.push(listing);
    }
    let datums = plan_datums(&spec.input, &listings)
        .map_err(|err| AppError::BadRequest(format!("cannot plan datums: {err}")))?;
    if datums.is_empty() {
        return Err(AppError::BadRequest(
            "the inputs matched no files, so the job would have no datums".to_owned(),
        ));
    }
    Ok(datums)
}

/// [`start`] in a task of its own: once a job is inserted, its workers must
/// be started and the job marked running even if the client hangs up, or
/// it would sit in `ready` with nobody to run it.
pub async fn start_detached(
    state: &AppState,
    spec: PipelineSpec,
    datums: Vec<PlannedDatum>,
    retry_of: Option<i64>,
) -> AppResult<Job> {
    let state = state.clone();
    tokio::spawn(async move { start(&state, spec, datums, retry_of).await })
        .await
        .map_err(|err| AppError::Internal(anyhow::anyhow!("job start task failed: {err}")))?
}

/// Creates a job of `datums` and starts its workers.
#[tracing::instrument(level = "info", skip_all, fields(pipeline = spec.pipeline.name, datums = datums.len()))]
pub async fn start(
    state: &AppState,
    spec: PipelineSpec,
    datums: Vec<PlannedDatum>,
    retry_of: Option<i64>,
) -> AppResult<Job> {
    let name = format!("{}-{}", spec.kubernetes_name(), job_suffix());
    let worker_token = hex::encode(rand::random::<[u8; 32]>());
    let parallelism = spec
        .parallelism_spec
        .constant
        .min(u32::try_from(datums.len()).unwrap_or(u32::MAX));
    let job = {
        let spec = spec.clone();
        let name = name.clone();
        let worker_token = worker_token.clone();
        state
            .db(move |conn| {
                let now = db_now(conn)?;
                Job::create(
                    conn,
                    NewJobParams {
                        spec: &spec,
                        datums: &datums,
                        retry_of,
                        worker_token: &worker_token,
                        name: &name,
                    },
                    now,
                )
            })
            .await?
    };
    let launch = WorkerLaunch {
        job_id: job.id,
        job_name: job.name.clone(),
        worker_token,
        server_url: state.public_url(),
        spec,
    };
    if let Err(err) = state.executor().start_workers(&launch, parallelism).await {
        let message = format!("cannot start workers: {err:#}");
        let id = job.id;
        let stop_message = message.clone();
        state
            .db(move |conn| {
                let now = db_now(conn)?;
                Job::stop(
                    conn,
                    id,
                    falconeri_common::status::JobStatus::Error,
                    Some(&stop_message),
                    now,
                )
            })
            .await?;
        state.notify_change();
        return Err(AppError::Internal(anyhow::anyhow!(message)));
    }
    let id = job.id;
    let job = state
        .db(move |conn| {
            let now = db_now(conn)?;
            Job::mark_running(conn, id, now)
        })
        .await?;
    state.notify_change();
    tracing::info!(job = job.name, datums = job.datum_count, "job started");
    Ok(job)
}

/// A short random suffix that makes job names unique (Kubernetes-safe).
fn job_suffix() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..5)
        .map(|_| {
            let i = usize::from(rand::random::<u8>()) % ALPHABET.len();
            char::from(ALPHABET[i])
        })
        .collect()
}
