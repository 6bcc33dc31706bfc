//! Turning a spec into a running job: list the inputs through storage, plan
//! datums, insert them, ask the executor for workers.

use falconeri_common::{
    models::{Job, NewJobParams, db_now},
    pipeline::PipelineSpec,
    plan::{PlannedDatum, plan_datums},
    storage::{STAGING_DIR, as_prefix, scheme, storage_for},
};

use crate::{
    error::{AppError, AppResult},
    executor::WorkerLaunch,
    state::AppState,
};

/// Lists every atom of the spec's input and expands them into datums.
#[tracing::instrument(level = "debug", skip_all, fields(pipeline = spec.pipeline.name))]
pub async fn plan(spec: &PipelineSpec) -> AppResult<Vec<PlannedDatum>> {
    probe_egress(&spec.egress.uri).await?;
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

/// Refuses an egress that cannot be used before any datum runs, rather than
/// failing every datum at upload: a scheme without a backend, and, on object
/// stores, a bucket that does not exist or may not be listed with these
/// credentials (one list request of an empty prefix under the staging area).
/// A `file://` egress is not probed: its directory is made by the first
/// upload.
async fn probe_egress(uri: &str) -> AppResult<()> {
    let storage =
        storage_for(uri).map_err(|err| AppError::BadRequest(format!("egress: {err:#}")))?;
    if scheme(uri) == Some("file") {
        return Ok(());
    }
    let probe = format!("{}{STAGING_DIR}/probe/", as_prefix(uri));
    storage
        .list(&probe)
        .await
        .map_err(|err| AppError::BadRequest(format!("egress: cannot use {uri}: {err:#}")))?;
    Ok(())
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
