//! Turning a spec into a running job: list the inputs through storage, plan
//! datums, insert them, ask the executor for workers.
//!
//! Nothing here holds a whole listing or plan. Each atom's listing arrives
//! page by page from a task that fetches ahead (only the part its glob's
//! literal prefix names), goes through an [`AtomPlanner`], and reaches the
//! database in short batches while the next pages are fetched. A `join` or
//! `group` sorts its files by key on disk ([`KEYED_SEGMENT`] of them in
//! memory at a time) and holds one key's files while combining them. The job exists from the first batch on, but
//! holds a planning lease and is never started until its last datum is in;
//! if planning fails, the client hangs up, or falconerid dies, the
//! half-planned job is deleted (at once, or by the babysitter when the
//! lease runs out).
//!
//! Every datum gets its fingerprint here, hashed as its files stream by
//! (`fingerprint.rs`). For an incremental job, each batch's fingerprints
//! are matched against the earlier jobs of the pipeline by one indexed
//! look-up inside the batch's transaction (`Job::append_datums`), so
//! matched datums are inserted as skipped and nothing of the earlier jobs
//! is loaded. If every datum was skipped, the job ends `done` without
//! workers.

use std::sync::Arc;

use falconeri_common::{
    fingerprint::{DatumHasher, DatumKeys, TransformFingerprint},
    models::{DatumBatch, Job, ModelError, NewJobParams, PreviousRun, db_now},
    pipeline::{AtomInput, PipelineSpec},
    plan::{
        AtomPlanner, KeyedCombiner, KeyedFile, ObjectInfo, PlanError, PlanItem, PlanPart,
        PlannedDatum, plan_cross, plan_parts,
    },
    spill_sort::SpillSort,
    status::JobStatus,
    storage::{STAGING_DIR, Storage, as_prefix, scheme, storage_for},
};
use futures::{StreamExt, TryStreamExt};
use tokio::sync::mpsc;

use crate::{
    error::{AppError, AppResult},
    executor::WorkerLaunch,
    state::AppState,
    state::Change,
};

/// A batch goes to the database once it holds this many rows (datums plus
/// input files): big enough that a million datums are a few hundred short
/// transactions, small enough that no writer waits long behind one.
const FLUSH_ROWS: usize = 5_000;

/// Failed datums read per query when retrying a job.
const RETRY_PAGE: i64 = 1_000;

/// Listing pages fetched ahead of the planner and the inserts.
const PAGES_AHEAD: usize = 4;

/// The files of a `join` or `group` held in memory while sorting them by
/// key; more go to sorted runs on disk ([`SpillSort`], in the system's
/// temporary directory), merged as they are read back. At a few hundred bytes per
/// file, some tens of MiB.
pub const KEYED_SEGMENT: usize = 100_000;

/// Sorted files read back per trip to the blocking pool.
const KEYED_CHUNK: usize = 5_000;

/// Where a new job's datums come from.
#[derive(Debug)]
pub enum Source {
    /// List the spec's inputs and plan them: a new job.
    Inputs,
    /// The failed datums of this finished job (a retry), read from the
    /// database a page at a time.
    FailedDatumsOf(i64),
}

/// Creates a job from `spec` and starts it. Bad inputs (unknown schemes,
/// unlistable or unsafe listings, an unusable egress, no files at all) are
/// a 400 and leave no job behind.
pub async fn create(
    state: &AppState,
    spec: PipelineSpec,
    source: Source,
    retry_of: Option<i64>,
) -> AppResult<Job> {
    create_keyed(state, spec, source, retry_of, None).await
}

/// [`create`] for a job that carries the idempotency key `run_key`
/// (`Job::begin_planning_keyed`): while a job with that key exists, a
/// second one is refused (409) before anything is listed.
#[tracing::instrument(level = "info", skip_all, fields(pipeline = spec.pipeline.name, run_key))]
pub async fn create_keyed(
    state: &AppState,
    mut spec: PipelineSpec,
    source: Source,
    retry_of: Option<i64>,
    run_key: Option<String>,
) -> AppResult<Job> {
    if matches!(source, Source::FailedDatumsOf(_)) {
        // A retry reruns failed datums, none of which succeeded before;
        // its datums keep their fingerprints for later runs to match.
        spec.incremental = false;
    }
    if matches!(source, Source::Inputs) {
        probe_egress(&spec.egress.uri).await?;
        for atom in spec.input.atoms() {
            atom_storage(atom)?;
        }
    }
    let name = format!("{}-{}", spec.kubernetes_name(), job_suffix());
    let worker_token = hex::encode(rand::random::<[u8; 32]>());
    let lease_ms = state.config().lease_ms();
    let job = {
        let spec = spec.clone();
        let (name, worker_token) = (name.clone(), worker_token.clone());
        state
            .db(move |conn| {
                let now = db_now(conn)?;
                let params = NewJobParams {
                    spec: &spec,
                    retry_of,
                    worker_token: &worker_token,
                    name: &name,
                };
                Job::begin_planning_keyed(
                    conn,
                    params,
                    run_key.as_deref(),
                    now,
                    now.saturating_add(lease_ms),
                )
            })
            .await?
    };
    let mut guard = AbandonOnDrop {
        state: Some(state.clone()),
        job_id: job.id,
    };
    let mut previous = {
        let job = job.clone();
        state.db(move |conn| PreviousRun::open(conn, &job)).await?
    };
    // Its pages are read beside the listing and the batches' writes.
    let _reader = previous
        .as_mut()
        .map(|previous| read_previous(state, previous));
    let mut sink = Sink {
        previous,
        pending: None,
        sent: 0,
        state,
        job_id: job.id,
        batch: DatumBatch::default(),
        rows: 0,
        count: 0,
        transform: TransformFingerprint::of(&spec),
        open: None,
        open_in_batch: false,
    };
    // The lease is renewed by every batch, and by this timer while a
    // listing or a cross yields nothing to insert for a while.
    let planned = tokio::select! {
        planned = fill(&mut sink, &spec, source) => planned,
        never = renew_planning_lease(state, job.id) => match never {},
    };
    let job = match planned {
        Ok(()) if sink.count > 0 => {
            let id = job.id;
            state.db(move |conn| Job::finish_planning(conn, id)).await?
        }
        Ok(()) => {
            let _ = sink.settle().await;
            guard.abandon().await;
            return Err(AppError::BadRequest(
                "the inputs matched no files, so the job would have no datums".to_owned(),
            ));
        }
        Err(AppError::Conflict(why)) => {
            // Canceled while it was being planned: it stays, canceled.
            let id = job.id;
            state.db(move |conn| Job::finish_planning(conn, id)).await?;
            guard.disarm();
            return Err(AppError::Conflict(why));
        }
        Err(err) => {
            // A batch still being written would land after the clean-up.
            let _ = sink.settle().await;
            guard.abandon().await;
            return Err(err);
        }
    };
    guard.disarm();
    if job.status() != JobStatus::Ready {
        return Err(AppError::Conflict(format!(
            "job {} was {} while its inputs were being listed",
            job.name, job.status
        )));
    }
    if job.skipped_count > 0 {
        tracing::info!(
            job = job.name,
            datums = job.datum_count,
            skipped = job.skipped_count,
            vanished = job.vanished_count,
            "incremental job planned"
        );
    }
    if job.skipped_count >= job.datum_count {
        // Nothing to run: done at once, no workers.
        let id = job.id;
        let job = state
            .db(move |conn| {
                let now = db_now(conn)?;
                Job::finish_without_workers(conn, id, now)
            })
            .await?;
        state.notify(Change::JobState { job_id: job.id });
        return Ok(job);
    }
    start_detached(state, spec, job, worker_token).await
}

/// Lists and plans every part of the input, or takes the given datums,
/// into `sink`.
async fn fill(sink: &mut Sink<'_>, spec: &PipelineSpec, source: Source) -> AppResult<()> {
    let parts = match source {
        Source::FailedDatumsOf(retried) => {
            let mut after = 0;
            loop {
                let (datums, next) = sink
                    .state
                    .db(move |conn| Job::failed_datums(conn, retried, after, RETRY_PAGE))
                    .await?;
                for (datum, keys) in datums {
                    sink.push_datum_with(datum, keys).await?;
                }
                match next {
                    Some(next) => after = next,
                    None => return sink.finish().await,
                }
            }
        }
        Source::Inputs => plan_parts(&spec.input),
    };
    let mut items = Vec::new();
    for part in parts {
        match part {
            PlanPart::Atom(atom) => {
                let mut planner = AtomPlanner::new(atom).map_err(plan_error)?;
                let start = planner.list_prefix().to_owned();
                let mut pages = list_ahead(atom_storage(atom)?, atom.uri.clone(), start);
                while let Some(page) = pages.recv().await {
                    for object in &page.map_err(|err| list_error(atom, err))? {
                        planner.push(object, &mut items).map_err(plan_error)?;
                        for item in items.drain(..) {
                            sink.push_item(item);
                        }
                        sink.flush_if_full().await?;
                    }
                }
            }
            PlanPart::Cross(children) => {
                let mut listings = Vec::new();
                for atom in part.atoms() {
                    let storage = atom_storage(atom)?;
                    let start = atom.glob.matcher().map_err(|reason| {
                        plan_error(PlanError::InvalidGlob {
                            repo: atom.repo.clone(),
                            reason,
                        })
                    })?;
                    listings.push(
                        storage
                            .list_pages_from(&atom.uri, start.list_prefix())
                            .try_concat()
                            .await
                            .map_err(|err| list_error(atom, err))?,
                    );
                }
                for datum in plan_cross(children, &listings).map_err(plan_error)? {
                    sink.push_datum(datum).await?;
                }
            }
            PlanPart::Keyed(kind, _) => {
                let atoms = part.atoms();
                let sorted = sort_keyed(&atoms, KEYED_SEGMENT).await?;
                let mut combiner = KeyedCombiner::new(kind, &atoms);
                let mut datums = Vec::new();
                let mut reader = Some(sorted);
                while let Some(sorted) = reader.take() {
                    let (sorted, chunk) = tokio::task::spawn_blocking(move || {
                        let mut sorted = sorted;
                        let chunk: std::io::Result<Vec<SortedFile>> =
                            sorted.by_ref().take(KEYED_CHUNK).collect();
                        (sorted, chunk)
                    })
                    .await
                    .map_err(|err| {
                        AppError::Internal(anyhow::anyhow!("sort task failed: {err}"))
                    })?;
                    let chunk = chunk.map_err(sort_error)?;
                    if chunk.len() == KEYED_CHUNK {
                        reader = Some(sorted);
                    }
                    for file in chunk {
                        combiner.push(file.0, &mut datums).map_err(plan_error)?;
                        for datum in datums.drain(..) {
                            sink.push_datum(datum).await?;
                        }
                    }
                }
                combiner.finish(&mut datums).map_err(plan_error)?;
                for datum in datums {
                    sink.push_datum(datum).await?;
                }
            }
        }
    }
    sink.finish().await
}

/// A [`KeyedFile`] as [`SpillSort`] writes it to and reads it from its runs.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct SortedFile(KeyedFile);

impl extsort::Sortable for SortedFile {
    fn encode<W: std::io::Write>(&self, writer: &mut W) -> std::io::Result<()> {
        let KeyedFile {
            key,
            input,
            root,
            file,
        } = &self.0;
        writer.write_all(&input.to_le_bytes())?;
        for bytes in [
            key.as_slice(),
            root.as_bytes(),
            file.uri.as_bytes(),
            file.local_path.as_bytes(),
            file.identity.as_bytes(),
        ] {
            let len = u32::try_from(bytes.len()).map_err(std::io::Error::other)?;
            writer.write_all(&len.to_le_bytes())?;
            writer.write_all(bytes)?;
        }
        Ok(())
    }

    fn decode<R: std::io::Read>(reader: &mut R) -> std::io::Result<Self> {
        fn read_u32(reader: &mut impl std::io::Read) -> std::io::Result<u32> {
            let mut bytes = [0; 4];
            reader.read_exact(&mut bytes)?;
            Ok(u32::from_le_bytes(bytes))
        }
        fn read_bytes(reader: &mut impl std::io::Read) -> std::io::Result<Vec<u8>> {
            let len = usize::try_from(read_u32(reader)?).map_err(std::io::Error::other)?;
            let mut bytes = vec![0; len];
            reader.read_exact(&mut bytes)?;
            Ok(bytes)
        }
        let text = |bytes: Vec<u8>| String::from_utf8(bytes).map_err(std::io::Error::other);
        // extsort reads until `UnexpectedEof` on the first field.
        let input = read_u32(reader)?;
        let key = read_bytes(reader)?;
        let root = text(read_bytes(reader)?)?;
        let uri = text(read_bytes(reader)?)?;
        let local_path = text(read_bytes(reader)?)?;
        let identity = text(read_bytes(reader)?)?;
        Ok(SortedFile(KeyedFile {
            key,
            input,
            root,
            file: falconeri_common::plan::PlannedFile {
                uri,
                local_path,
                identity,
            },
        }))
    }
}

/// Lists the atoms of a join or group page by page and sorts their files
/// by key, at most `segment` of them in memory.
async fn sort_keyed(
    atoms: &[&AtomInput],
    segment: usize,
) -> AppResult<impl Iterator<Item = std::io::Result<SortedFile>> + Send + 'static> {
    let mut sorter = SpillSort::new(segment);
    for (index, atom) in atoms.iter().enumerate() {
        let mut planner = AtomPlanner::new(atom)
            .and_then(|planner| planner.keyed(index))
            .map_err(plan_error)?;
        let start = planner.list_prefix().to_owned();
        let mut pages = list_ahead(atom_storage(atom)?, atom.uri.clone(), start);
        while let Some(page) = pages.recv().await {
            let mut files = Vec::new();
            for object in &page.map_err(|err| list_error(atom, err))? {
                planner.push_keyed(object, &mut files).map_err(plan_error)?;
            }
            // A full segment is sorted and written out by the push that
            // fills it: blocking work.
            sorter = tokio::task::spawn_blocking(move || {
                sorter.extend(files.into_iter().map(SortedFile))?;
                Ok::<_, std::io::Error>(sorter)
            })
            .await
            .map_err(|err| AppError::Internal(anyhow::anyhow!("sort task failed: {err}")))?
            .map_err(sort_error)?;
        }
    }
    tokio::task::spawn_blocking(move || sorter.done())
        .await
        .map_err(|err| AppError::Internal(anyhow::anyhow!("sort task failed: {err}")))?
        .map_err(sort_error)
}

fn sort_error(err: std::io::Error) -> AppError {
    AppError::Internal(anyhow::anyhow!(
        "cannot sort the files of a join or group on disk: {err}"
    ))
}

/// Lists `uri` from `start` page by page in a task of its own, a few pages
/// ahead of the receiver. Dropping the receiver stops the task at its next page.
fn list_ahead(
    storage: Arc<dyn Storage>,
    uri: String,
    start: String,
) -> mpsc::Receiver<anyhow::Result<Vec<ObjectInfo>>> {
    let (tx, rx) = mpsc::channel(PAGES_AHEAD);
    tokio::spawn(async move {
        let mut pages = storage.list_pages_from(&uri, &start);
        while let Some(page) = pages.next().await {
            let failed = page.is_err();
            if tx.send(page).await.is_err() || failed {
                break;
            }
        }
    });
    rx
}

/// Batches a job's plan into [`Job::append_datums`] calls, fingerprinting
/// each datum on the way.
struct Sink<'a> {
    state: &'a AppState,
    job_id: i64,
    batch: DatumBatch,
    /// Rows in `batch` (datums plus input files).
    rows: usize,
    /// Datums inserted so far.
    count: i64,
    transform: TransformFingerprint,
    /// The hasher of the datum a streamed atom opened last: its files may
    /// still come.
    open: Option<DatumHasher>,
    /// Whether that datum is the last of `batch`; once flushed, its keys go
    /// with the next batch as `continued_keys`.
    open_in_batch: bool,
    /// An incremental job's previous run, read in order beside the plan
    /// so most matches need no index look-up (`PreviousRun`); `None` for
    /// other jobs. Taken while a batch is in the database.
    previous: Option<PreviousRun>,
    /// The batch being written while the next one is listed and hashed:
    /// it gives back the job's datum count and the previous run.
    pending: Option<PendingBatch>,
    /// Datums handed to the database so far (the next batch's first seq).
    sent: i64,
}

/// A batch being written: the job's datum count after it, and the
/// previous run handed back.
type PendingBatch = tokio::task::JoinHandle<AppResult<(i64, Option<PreviousRun>)>>;

impl Sink<'_> {
    fn push_item(&mut self, item: PlanItem) {
        match &item {
            PlanItem::Datum => {
                self.close_open();
                self.open = Some(DatumHasher::new(&self.transform));
                self.open_in_batch = true;
            }
            PlanItem::File(file) => {
                if let Some(open) = &mut self.open {
                    open.add(file);
                }
            }
        }
        self.rows += 1;
        self.batch.push(item);
    }

    /// Ends the open datum: its keys are now known.
    fn close_open(&mut self) {
        let Some(open) = self.open.take() else {
            return;
        };
        let keys = open.finish();
        match (self.open_in_batch, self.batch.datums.len().checked_sub(1)) {
            (true, Some(last)) => self.set_keys(last, keys),
            _ => self.batch.continued_keys = Some(keys),
        }
    }

    fn set_keys(&mut self, index: usize, keys: DatumKeys) {
        if self.batch.keys.len() <= index {
            self.batch.keys.resize(index + 1, None);
        }
        self.batch.keys[index] = Some(keys);
    }

    /// Adds a whole datum, fingerprinting its files.
    async fn push_datum(&mut self, datum: PlannedDatum) -> AppResult<()> {
        let keys = DatumHasher::of(&self.transform, &datum.files);
        self.push_datum_with(datum, Some(keys)).await
    }

    /// Adds a whole datum with the keys it has (a retried datum keeps its
    /// old ones: its files come back from the database without identities).
    async fn push_datum_with(
        &mut self,
        datum: PlannedDatum,
        keys: Option<DatumKeys>,
    ) -> AppResult<()> {
        self.close_open();
        self.rows += 1 + datum.files.len();
        self.batch.datums.push(datum);
        if let Some(keys) = keys {
            self.set_keys(self.batch.datums.len() - 1, keys);
        }
        self.flush_if_full().await
    }

    /// Flushes at [`FLUSH_ROWS`], so one datum's files may span batches.
    async fn flush_if_full(&mut self) -> AppResult<()> {
        if self.rows >= FLUSH_ROWS {
            self.flush().await?;
        }
        Ok(())
    }

    /// Flushes the last batch, the open datum closed, and waits for it.
    async fn finish(&mut self) -> AppResult<()> {
        self.close_open();
        self.flush().await?;
        self.settle().await
    }

    /// Waits for the batch in the database, if any.
    async fn settle(&mut self) -> AppResult<()> {
        if let Some(pending) = self.pending.take() {
            let (count, previous) = pending.await.map_err(|err| {
                AppError::Internal(anyhow::anyhow!("planning batch task failed: {err}"))
            })??;
            self.count = count;
            self.previous = previous;
        }
        Ok(())
    }

    /// Takes the open datum (its files may still come) off the end of the
    /// batch about to be flushed, to start the next batch with, unless it
    /// is all the batch has (a datum with more files than a batch).
    ///
    /// Sent, it would be inserted without its keys and completed by the
    /// next batch (`continued_keys`); in an unchanged incremental rerun of
    /// one file per datum that happened at every batch: a row inserted,
    /// then deleted when it matched, its row id starting a run of its own,
    /// so the runs split at every batch (guide, "Incremental runs").
    fn hold_back_open(&mut self) -> Option<PlannedDatum> {
        let batch = &mut self.batch;
        let alone =
            batch.datums.len() == 1 && batch.continued.is_empty() && batch.continued_keys.is_none();
        if self.open.is_none() || !self.open_in_batch || alone {
            return None;
        }
        let last = batch.datums.len().checked_sub(1)?;
        // An open datum has no keys yet, so `keys` ends before it.
        batch.keys.truncate(last);
        batch.datums.pop()
    }

    /// Hands the batch to the database in a task of its own, once the one
    /// before is written: the next batch is listed and hashed meanwhile
    /// (one batch in flight, so memory stays two batches).
    async fn flush(&mut self) -> AppResult<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        self.settle().await?;
        let held = self.hold_back_open();
        let mut batch = std::mem::take(&mut self.batch);
        self.rows = 0;
        self.open_in_batch = false;
        if let Some(datum) = held {
            self.rows = 1 + datum.files.len();
            self.batch.datums.push(datum);
            self.open_in_batch = true;
        }
        let (id, lease_ms) = (self.job_id, self.state.config().lease_ms());
        let (first_seq, mut previous) = (self.sent, self.previous.take());
        self.sent += i64::try_from(batch.datums.len()).unwrap_or(0);
        let state = self.state.clone();
        self.pending = Some(tokio::spawn(async move {
            state
                .db(move |conn| {
                    // Read before the write transaction, which stays short.
                    if let Some(previous) = &mut previous {
                        previous.fill(conn, first_seq, &mut batch)?;
                    }
                    let now = db_now(conn)?;
                    let count =
                        Job::append_datums(conn, id, &batch, now, now.saturating_add(lease_ms))?;
                    Ok::<_, ModelError>((count, previous))
                })
                .await
        }));
        Ok(())
    }
}

/// Pages of the previous run waiting to be matched, beyond the one being
/// read ([`PreviousRun::read_ahead`]; the module doc of
/// `models::previous` gives the memory this bounds).
const PREVIOUS_PAGES_AHEAD: usize = 2;

/// Reads an incremental job's previous run ahead of its plan, a page at a
/// time on a connection of its own, into `previous`'s channel; stops at
/// the run's end, at the first error (sent on, for the planner to fail
/// with), or when planning drops the handle or the channel. Without a
/// connection it just stops: the planner reads the rest itself.
fn read_previous(
    state: &AppState,
    previous: &mut PreviousRun,
) -> tokio_util::task::AbortOnDropHandle<()> {
    let (mut reader, tx) = previous.read_ahead(PREVIOUS_PAGES_AHEAD);
    let state = state.clone();
    tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
        loop {
            let read = state
                .db(move |conn| {
                    let page = reader.next_page(conn);
                    Ok((reader, page))
                })
                .await;
            let Ok((next, page)) = read else { return };
            reader = next;
            let page = match page {
                Ok(Some(page)) => Ok(page),
                Ok(None) => return,
                Err(err) => Err(err),
            };
            let failed = page.is_err();
            if tx.send(page).await.is_err() || failed {
                return;
            }
        }
    }))
}

/// Renews a job's planning lease every third of a lease until dropped.
async fn renew_planning_lease(state: &AppState, job_id: i64) -> std::convert::Infallible {
    let lease_ms = state.config().lease_ms();
    let mut ticks = tokio::time::interval(state.config().lease / 3);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let renewed = state
            .db(move |conn| {
                let now = db_now(conn)?;
                Job::append_datums(
                    conn,
                    job_id,
                    &DatumBatch::default(),
                    now,
                    now.saturating_add(lease_ms),
                )
            })
            .await;
        if let Err(err) = renewed {
            // The next batch will meet the same trouble and end planning.
            tracing::warn!(
                job_id,
                error = format!("{err:#}"),
                "cannot renew the planning lease"
            );
        }
    }
}

/// Deletes the half-planned job unless disarmed: at once on an error (so
/// the 400 comes after the cleanup), and from a task of its own if the
/// client hangs up mid-planning (the request future is dropped).
struct AbandonOnDrop {
    state: Option<AppState>,
    job_id: i64,
}

impl AbandonOnDrop {
    fn disarm(&mut self) {
        self.state = None;
    }

    async fn abandon(&mut self) {
        if let Some(state) = self.state.take() {
            abandon(state, self.job_id).await;
        }
    }
}

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        if let Some(state) = self.state.take() {
            tokio::spawn(abandon(state, self.job_id));
        }
    }
}

async fn abandon(state: AppState, job_id: i64) {
    if let Err(err) = state
        .db(move |conn| Job::abandon_planning(conn, job_id))
        .await
    {
        // The babysitter deletes it once its planning lease runs out.
        tracing::warn!(
            job_id,
            error = format!("{err:#}"),
            "cannot delete a half-planned job"
        );
    }
}

fn atom_storage(atom: &AtomInput) -> AppResult<Arc<dyn Storage>> {
    storage_for(&atom.uri)
        .map_err(|err| AppError::BadRequest(format!("input {}: {err:#}", atom.repo)))
}

fn list_error(atom: &AtomInput, err: anyhow::Error) -> AppError {
    AppError::BadRequest(format!(
        "cannot list input {} ({}): {err:#}",
        atom.repo, atom.uri
    ))
}

fn plan_error(err: PlanError) -> AppError {
    AppError::BadRequest(format!("cannot plan datums: {err}"))
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

/// Starts the workers of a fully planned job and marks it running, in a
/// task of its own: once planned, a job must be started even if the client
/// hangs up, or it would sit in `ready` (the babysitter would take it over,
/// but later).
async fn start_detached(
    state: &AppState,
    spec: PipelineSpec,
    job: Job,
    worker_token: String,
) -> AppResult<Job> {
    let state = state.clone();
    tokio::spawn(async move { start(&state, spec, job, worker_token).await })
        .await
        .map_err(|err| AppError::Internal(anyhow::anyhow!("job start task failed: {err}")))?
}

#[tracing::instrument(level = "info", skip_all, fields(job = job.name, datums = job.datum_count))]
async fn start(
    state: &AppState,
    spec: PipelineSpec,
    job: Job,
    worker_token: String,
) -> AppResult<Job> {
    // Skipped datums need no worker.
    let parallelism = spec
        .parallelism_spec
        .constant
        .min(u32::try_from(job.datum_count - job.skipped_count).unwrap_or(u32::MAX));
    let launch = WorkerLaunch {
        job_id: job.id,
        job_name: job.name.clone(),
        worker_token,
        server: state.worker_endpoint(),
        spec,
    };
    start_or_fail(state, &launch, parallelism).await?;
    let id = job.id;
    let job = state
        .db(move |conn| {
            let now = db_now(conn)?;
            Job::mark_running(conn, id, now)
        })
        .await?;
    state.notify(Change::JobState { job_id: job.id });
    tracing::info!(job = job.name, datums = job.datum_count, "job started");
    Ok(job)
}

/// Starts `count` workers for a job that `datum retry` reopened (it is
/// `running` again; its datum is queued). If they cannot be started the job
/// fails with the reason, as a fresh job's start would; otherwise the
/// babysitter keeps its pool at `parallelism` from here on.
pub async fn restart_workers(state: &AppState, job: &Job, count: u32) -> AppResult<()> {
    let spec = job
        .spec()
        .map_err(|err| AppError::Internal(err.context("stored spec is unreadable")))?;
    let launch = WorkerLaunch::for_job(job, spec, state.worker_endpoint());
    start_or_fail(state, &launch, count).await
}

/// Starts `count` workers of `launch`'s job, or records the job `error`
/// with why they could not be started (a job without workers would wait
/// forever) and answers that as an internal error.
async fn start_or_fail(state: &AppState, launch: &WorkerLaunch, count: u32) -> AppResult<()> {
    let Err(err) = state.executor().start_workers(launch, count).await else {
        return Ok(());
    };
    let message = format!("cannot start workers: {err:#}");
    let (id, stop_message) = (launch.job_id, message.clone());
    state
        .db(move |conn| {
            let now = db_now(conn)?;
            Job::stop(conn, id, JobStatus::Error, Some(&stop_message), now)
        })
        .await?;
    state.notify(Change::JobState { job_id: id });
    Err(AppError::Internal(anyhow::anyhow!(message)))
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use falconeri_common::{pipeline::Glob, storage::FileStorage};

    use super::*;

    /// Files sorted on disk in runs of 3 come back in the order an
    /// in-memory sort gives, every field intact.
    #[tokio::test]
    async fn keyed_files_sort_on_disk_in_bounded_runs() {
        let dir = tempfile::tempdir().unwrap();
        let mut atoms = Vec::new();
        for (repo, names) in [
            (
                "a",
                ["k9.x", "k1.x", "k5.x", "k2.x", "k7.x", "é3.x", "k4.x"],
            ),
            (
                "b",
                ["k2.x", "k9.x", "k0.x", "k5.x", "k1.x", "k8.x", "k3.x"],
            ),
        ] {
            for name in names {
                let path = dir.path().join(repo).join(name);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, name).unwrap();
            }
            let uri = format!("file://{}/", dir.path().join(repo).display());
            let mut atom = AtomInput::new(uri, repo, Glob::from("/(?)*.x"));
            atom.join_on = Some("$1".to_owned());
            atoms.push(atom);
        }
        let atoms: Vec<&AtomInput> = atoms.iter().collect();
        let mut in_memory = Vec::new();
        for (index, atom) in atoms.iter().enumerate() {
            let listing = FileStorage.list(&atom.uri).await.unwrap();
            let mut planner = AtomPlanner::new(atom).unwrap().keyed(index).unwrap();
            for object in &listing {
                planner.push_keyed(object, &mut in_memory).unwrap();
            }
        }
        in_memory.sort();
        // Runs of 6 fill exactly twice: extsort alone would hand back
        // nothing (see `falconeri_common::spill_sort`).
        for segment in [3, 6] {
            let on_disk: Vec<KeyedFile> = sort_keyed(&atoms, segment)
                .await
                .unwrap()
                .map(|file| file.unwrap().0)
                .collect();
            assert_eq!(on_disk.len(), 14, "segment {segment}");
            assert_eq!(on_disk, in_memory, "segment {segment}");
            // A key of raw bytes (`?` took half of `é`) survives the trip.
            assert!(on_disk.iter().any(|file| file.key == [0xc3]));
        }
    }
}
