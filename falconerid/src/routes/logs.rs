//! Attempt logs. The worker stores chunks of its attempt's log under its
//! claim (`PUT /v1/datums/{id}/attempts/{attempt}/logs/{seq}`, records in
//! the framing the store keeps, see [`falconeri_common::log_frame`] and
//! [`crate::log_store`];
//! older workers' JSON body, a line per object, is still taken at
//! `POST /v1/datums/{id}/logs`); people read a datum's or a job's
//! logs (`GET /v1/datums/{id}/logs`, `GET /v1/jobs/{id}/logs`) as
//! server-sent events, one [`LogEvent`] per event, optionally following them
//! until the attempt or the job ends.
//!
//! Why server-sent events rather than long-polls: one request carries the
//! whole log and then the live lines, with no cursor to hand back and forth
//! and no re-request per line, browsers read it with `EventSource`, and
//! proxies know not to buffer `text/event-stream`. A stream is produced by a
//! task of its own that reads a few chunks at a time and waits on the job's
//! wake-ups (`JobWaiters::logs` for new chunks, `progress` for attempts and
//! jobs that end), never on a timer; it stops when the client hangs up.

use std::{collections::HashMap, convert::Infallible, time::Duration};

use axum::response::IntoResponse as _;
use axum::{
    Json,
    body::Bytes,
    extract::State,
    http::{HeaderMap, header},
    response::sse::{Event, KeepAlive, Sse},
};
use falconeri_common::{
    Millis,
    api::{
        Claim, DatumLogsQuery, ErrorBody, JobLogsQuery, LogAppendRequest, LogAppendResponse,
        LogChunkQuery, LogEvent, LogLine,
    },
    log_frame,
    models::{ChunkBody, Clock, Datum, Job, LogChunk, StoredLine, db_now, encode_lines},
};
use futures::StreamExt as _;
use tokio::sync::mpsc;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    auth::Principal,
    error::{ApiJson, ApiPath, ApiQuery, AppError, AppResult},
    log_store::{ChunkWriter, LogStore},
    openapi::{
        BadRequest, Conflict, Forbidden, Internal, NotFound, PayloadTooLarge, Unauthorized,
        Unavailable,
    },
    state::{AppState, Change},
};

/// Chunks read per database call: at most this many (each at most the
/// worker's chunk size, `log_frame::CHUNK_BYTES` and one line) are in
/// memory per stream.
const PAGE: i64 = 2;

/// Events a stream may have ready before its reader takes them.
const BUFFERED_EVENTS: usize = 64;

/// How long a chunk may take from being stamped to being committed, as
/// far as a job's follower is concerned: each look also re-reads (keys
/// only) the chunks stamped this long before the previous look, because on
/// PostgreSQL one append may commit after another that was stamped later.
const COMMIT_MARGIN_MS: Millis = 2_000;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(append, datum_logs))
        .routes(routes!(put_chunk))
        .routes(routes!(job_logs))
}

/// Stores the next chunk of the claimed attempt's log. A worker may write
/// only to datums of its own job; a stale claim gets 409 and changes nothing.
#[utoipa::path(
    post,
    operation_id = "append_datum_log",
    path = "/v1/datums/{id}/logs",
    tag = "workers",
    summary = "Append a chunk to the claimed attempt's log",
    params(("id" = i64, Path, description = "The datum's id")),
    request_body = LogAppendRequest,
    responses(
        (status = 200, description = "Stored, or recognised as a resend", body = LogAppendResponse),
        BadRequest, Unauthorized, Forbidden, NotFound, Conflict, PayloadTooLarge, Unavailable,
        Internal,
    ),
)]
async fn append(
    principal: Principal,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(request): ApiJson<LogAppendRequest>,
) -> AppResult<Json<LogAppendResponse>> {
    if request.seq < 0 {
        return Err(AppError::BadRequest("seq: must be 0 or more".to_owned()));
    }
    let lines = request
        .lines
        .iter()
        .enumerate()
        .map(|(i, line)| stored(line).map_err(|err| format!("lines[{i}].{err}")))
        .collect::<Result<Vec<StoredLine>, String>>()
        .map_err(AppError::BadRequest)?;
    let claim = Claim {
        scope: match principal {
            Principal::Admin => None,
            Principal::Worker { job_id } => Some(job_id),
        },
        ..request.claim
    };
    let size = lines
        .iter()
        .map(|l| i64::try_from(l.bytes.len()).unwrap_or(i64::MAX))
        .fold(0i64, i64::saturating_add);
    let data = Bytes::from(encode_lines(&lines));
    let store = state.config().log_store()?;
    let bytes = match store
        .write(id, claim.attempt, request.seq, data.clone())
        .await?
    {
        Some(name) => ChunkBytes::Written(name),
        None => ChunkBytes::Inline(data),
    };
    store_chunk(&state, &store, id, claim, request.seq, bytes, size).await
}

/// Stores chunk `seq` (records holding `size` output bytes, checked) of
/// the claimed attempt of datum `id`, whose file the caller wrote first
/// when the logs location is a directory: its row; then deletes the file if
/// no row names it (a resend, a refused claim, a failed write), and the
/// files of the chunks the cap cut. Once the row is committed it wakes the
/// job's log followers (a resend stores nothing and wakes no one). No file
/// is touched inside the transaction.
async fn store_chunk(
    state: &AppState,
    store: &LogStore,
    id: i64,
    claim: Claim,
    seq: i64,
    bytes: ChunkBytes,
    size: i64,
) -> AppResult<Json<LogAppendResponse>> {
    let attempt = claim.attempt;
    let max = state.config().max_log_bytes;
    let object = match &bytes {
        ChunkBytes::Written(name) => Some(name.clone()),
        ChunkBytes::Inline(_) => None,
    };
    let appended = state
        .db(move |conn| {
            let body = match &bytes {
                ChunkBytes::Written(name) => ChunkBody::Object(name),
                ChunkBytes::Inline(data) => ChunkBody::Inline(data),
            };
            LogChunk::append_framed(conn, id, &claim, seq, body, size, max, Clock::DB)
        })
        .await;
    let appended = match appended {
        Ok(appended) => appended,
        Err(err) => {
            store.delete(object.into_iter().collect()).await;
            return Err(err);
        }
    };
    if !appended.stored {
        store.delete(object.into_iter().collect()).await;
    }
    // Committed: a follower woken now finds the chunk.
    if appended.stored {
        state.notify(Change::Logs {
            job_id: appended.job_id,
        });
    }
    if !appended.cut.is_empty() {
        let bytes: i64 = appended
            .cut
            .iter()
            .map(|chunk| chunk.end_offset - chunk.start_offset)
            .sum();
        tracing::info!(
            datum_id = id,
            attempt,
            chunks = appended.cut.len(),
            bytes,
            "cut the middle of an attempt's log to --max-log-bytes"
        );
        store
            .delete(appended.cut.into_iter().filter_map(|c| c.object).collect())
            .await;
    }
    Ok(Json(LogAppendResponse {
        stored: appended.stored,
    }))
}

/// The body of `PUT /v1/datums/{id}/attempts/{attempt}/logs/{seq}`, for
/// the document only: bytes in [`log_frame`]'s framing.
pub struct FramedLines;

impl utoipa::PartialSchema for FramedLines {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        let schema = serde_json::json!({
            "type": "string",
            "format": "binary",
            "description": "The chunk's records, one after another, each framed as: the \
                stream (1 byte: 0 stdout, 1 stderr, 2 worker), the time the worker read \
                the record's first byte (milliseconds since the Unix epoch, little-endian \
                64-bit signed), the length of its bytes (little-endian 32-bit unsigned), \
                then that many bytes, as printed: one or more whole lines, each with its \
                newline (the worker sends all the whole lines of one read of a pipe as one \
                record), or a piece of a line without one. Readers split records into \
                lines. An empty body is a chunk of no records.",
        });
        serde_json::from_value(schema).unwrap_or_else(|_| {
            utoipa::openapi::RefOr::T(utoipa::openapi::schema::Schema::Object(
                utoipa::openapi::schema::Object::new(),
            ))
        })
    }
}

impl utoipa::ToSchema for FramedLines {}

/// Stores chunk `seq` of the claimed attempt's log, records in the
/// framing the store keeps: the server walks their headers once to check
/// them and count the output, and stores the body as it came. A worker may
/// write only to datums of its own job; a stale claim gets 409 and changes
/// nothing.
#[utoipa::path(
    put,
    operation_id = "put_datum_log_chunk",
    path = "/v1/datums/{id}/attempts/{attempt}/logs/{seq}",
    tag = "workers",
    summary = "Store a chunk of the claimed attempt's log, as framed lines",
    description = "The worker's way to ship an attempt's log (the JSON body of `POST \
        /v1/datums/{id}/logs` is the older one). Chunks are numbered from 0 within the \
        attempt; a chunk whose number was taken already is a resend and is not stored \
        again. A body that is not a whole number of framed records is refused with 400, \
        naming the record (`line N`) and the byte where it goes wrong. The server keeps \
        the body as it came, as a file under its logs location or in the database.",
    params(
        ("id" = i64, Path, description = "The datum's id"),
        ("attempt" = i32, Path, description = "The claimed attempt's number"),
        ("seq" = i64, Path, minimum = 0, description = "The worker's number for this chunk, from 0"),
        LogChunkQuery,
    ),
    request_body(content = FramedLines, content_type = "application/octet-stream"),
    responses(
        (status = 200, description = "Stored, or recognised as a resend", body = LogAppendResponse),
        BadRequest, Unauthorized, Forbidden, NotFound, Conflict, PayloadTooLarge, Unavailable,
        Internal,
    ),
)]
async fn put_chunk(
    principal: Principal,
    State(state): State<AppState>,
    ApiPath((id, attempt, seq)): ApiPath<(i64, i32, i64)>,
    ApiQuery(query): ApiQuery<LogChunkQuery>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> AppResult<Json<LogAppendResponse>> {
    if seq < 0 {
        return Err(AppError::BadRequest("seq: must be 0 or more".to_owned()));
    }
    if !is_octet_stream(&headers) {
        return Err(AppError::BadRequest(format!(
            "body: expected `Content-Type: {}` (lines in the log framing)",
            log_frame::MEDIA_TYPE
        )));
    }
    let store = state.config().log_store()?;
    // To a file, the body is checked and written as it arrives (never
    // whole in memory); for the database it is gathered first.
    let mut body = BodyReader {
        stream: body.into_data_stream(),
        total: 0,
    };
    let (bytes, summary) = match store.create(id, attempt, seq) {
        Some(mut writer) => match stream_into(&mut writer, &mut body).await {
            Ok(summary) => (ChunkBytes::Written(writer.name), summary),
            Err(err) => {
                store.delete(vec![writer.name]).await;
                return Err(err);
            }
        },
        None => {
            let mut data = Vec::new();
            while let Some(piece) = body.next().await? {
                data.extend_from_slice(&piece);
            }
            let summary = log_frame::check(&data).map_err(bad_body)?;
            (ChunkBytes::Inline(Bytes::from(data)), summary)
        }
    };
    let claim = Claim {
        worker_id: query.worker_id,
        attempt,
        scope: match principal {
            Principal::Admin => None,
            Principal::Worker { job_id } => Some(job_id),
        },
    };
    store_chunk(&state, &store, id, claim, seq, bytes, summary.output_bytes).await
}

/// A framing error as the 400 it is.
fn bad_body(err: log_frame::FrameError) -> AppError {
    AppError::BadRequest(format!("body: {err}"))
}

/// A request body, piece by piece, within the server's body limit.
struct BodyReader {
    stream: axum::body::BodyDataStream,
    total: usize,
}

impl BodyReader {
    async fn next(&mut self) -> AppResult<Option<Bytes>> {
        let Some(piece) = self.stream.next().await else {
            return Ok(None);
        };
        let piece = piece.map_err(|err| AppError::BadRequest(format!("body: {err}")))?;
        self.total = self.total.saturating_add(piece.len());
        if self.total > crate::MAX_BODY_BYTES {
            return Err(AppError::PayloadTooLarge);
        }
        Ok(Some(piece))
    }
}

/// Checks and writes a chunk's body into its file as it arrives.
async fn stream_into(
    writer: &mut ChunkWriter,
    body: &mut BodyReader,
) -> AppResult<log_frame::Summary> {
    let mut checker = log_frame::Checker::default();
    while let Some(piece) = body.next().await? {
        checker.feed(&piece).map_err(bad_body)?;
        if writer.push(piece) {
            writer.flush().await?;
        }
    }
    let summary = checker.finish().map_err(bad_body)?;
    writer.flush().await?;
    Ok(summary)
}

/// A chunk's bytes on their way to its row: in it, or in a file written.
enum ChunkBytes {
    Inline(Bytes),
    Written(String),
}

/// Whether the request says its body is `application/octet-stream`.
fn is_octet_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case(log_frame::MEDIA_TYPE))
}

/// A line of a request as stored; the error names the field.
fn stored(line: &LogLine) -> Result<StoredLine, String> {
    Ok(StoredLine {
        stream: line.stream,
        at: line.at,
        bytes: line.bytes()?,
    })
}

type EventStream = axum::response::Response;

/// A datum's logs: one attempt, or every attempt oldest first; with
/// `follow`, the stream stays open until that (or the latest) attempt ends.
#[utoipa::path(
    get,
    operation_id = "datum_logs",
    path = "/v1/datums/{id}/logs",
    tag = "datums",
    summary = "A datum's logs, as server-sent events",
    description = "Each event's `data` is a `LogEvent` in JSON, its `event` the same `kind`.",
    params(("id" = i64, Path, description = "The datum's id"), DatumLogsQuery),
    responses(
        (status = 200, description = "A stream of server-sent events", content_type = "text/event-stream", body = crate::openapi::LogStreamEvent),
        BadRequest, Unauthorized, Forbidden, NotFound, Unavailable, Internal,
    ),
)]
async fn datum_logs(
    principal: Principal,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(query): ApiQuery<DatumLogsQuery>,
) -> AppResult<EventStream> {
    principal.require_admin()?;
    let datum = state.db(move |conn| Datum::find(conn, id)).await?;
    let attempts: Vec<i32> = match query.attempt {
        Some(number) => {
            state
                .db(move |conn| LogChunk::attempt(conn, id, number))
                .await?;
            vec![number]
        }
        // Not reserved yet: following waits for the first attempt.
        None if datum.attempt == 0 && query.follow => vec![1],
        None => (1..=datum.attempt).collect(),
    };
    let follow = query.follow;
    Ok(event_stream(
        state.clone(),
        move |state, events| async move {
            let last = attempts.len().saturating_sub(1);
            for (i, attempt) in attempts.into_iter().enumerate() {
                let reader = AttemptReader {
                    state: &state,
                    store: state.config().log_store()?,
                    events: &events,
                    job_id: datum.job_id,
                    datum_id: datum.id,
                    attempt,
                };
                if !reader.run(follow && i == last).await? {
                    break;
                }
            }
            Ok(())
        },
    ))
}

/// Reads one attempt's log into a stream.
struct AttemptReader<'a> {
    state: &'a AppState,
    store: LogStore,
    events: &'a mpsc::Sender<LogEvent>,
    job_id: i64,
    datum_id: i64,
    attempt: i32,
}

impl AttemptReader<'_> {
    /// Sends the attempt's lines, and its end if it is over; following,
    /// waits for more until it ends. False when the reader hung up.
    async fn run(&self, follow: bool) -> AppResult<bool> {
        let waiters = self.state.waiters(self.job_id);
        let mut logs = waiters.logs.subscribe();
        let mut progress = waiters.progress.subscribe();
        let (datum_id, number) = (self.datum_id, self.attempt);
        let mut cursor = Cursor::default();
        loop {
            // Marked seen before looking: a change from now on wakes us.
            logs.borrow_and_update();
            progress.borrow_and_update();
            // Read before the chunks: an attempt seen over has all its
            // chunks committed (appends after its end are refused).
            let attempt = match self
                .state
                .db(move |conn| LogChunk::attempt(conn, datum_id, number))
                .await
            {
                Ok(attempt) => Some(attempt),
                Err(AppError::NotFound(_)) => None,
                Err(err) => return Err(err),
            };
            loop {
                let after = cursor.seq;
                let page = self
                    .state
                    .db(move |conn| LogChunk::page(conn, datum_id, number, after, PAGE))
                    .await?;
                let full = page.len() as i64 == PAGE;
                for chunk in page {
                    if !send_chunk(&self.store, self.events, &mut cursor, chunk).await? {
                        return Ok(false);
                    }
                }
                if !full {
                    break;
                }
            }
            if let Some(ended) = attempt.filter(|a| a.outcome.is_some()) {
                let end = LogEvent::AttemptEnd {
                    datum_id,
                    attempt: number,
                    outcome: ended
                        .outcome
                        .unwrap_or(falconeri_common::status::Outcome::Error),
                    exit_code: ended.exit_code,
                    signal: ended.signal,
                    error_message: ended.error_message,
                };
                return Ok(self.events.send(end).await.is_ok());
            }
            if !follow {
                return Ok(true);
            }
            tokio::select! {
                _ = logs.changed() => {}
                _ = progress.changed() => {}
                () = self.events.closed() => return Ok(false),
                () = self.state.shutting_down() => return Ok(false),
            }
        }
    }
}

/// Where a reader is in one attempt's log.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    /// The last chunk sent.
    seq: i64,
    /// The output bytes sent or reported cut so far.
    offset: i64,
    /// When the last chunk sent was stamped.
    created_at: Millis,
}

impl Default for Cursor {
    fn default() -> Cursor {
        Cursor {
            seq: -1,
            offset: 0,
            created_at: 0,
        }
    }
}

/// Sends a chunk's lines, after a `cut` event if bytes before it were cut.
/// The chunk's bytes come from its row or its file (read whole: a chunk is
/// at most the worker's chunk size, 2 MiB and one line); a file gone since the
/// row was read was cut meanwhile (or lost), and the next chunk's offset
/// tells the reader how much is missing. Each record is split into lines
/// here, for display. False when the reader hung up.
async fn send_chunk(
    store: &LogStore,
    events: &mpsc::Sender<LogEvent>,
    cursor: &mut Cursor,
    chunk: LogChunk,
) -> AppResult<bool> {
    let (datum_id, attempt) = (chunk.datum_id, chunk.attempt);
    let data = match &chunk.object {
        Some(object) => store.read(object).await?,
        None => Some(chunk.data),
    };
    let Some(data) = data else {
        tracing::warn!(
            datum_id,
            attempt,
            seq = chunk.seq,
            "a log chunk's file is gone"
        );
        cursor.seq = chunk.seq;
        cursor.created_at = chunk.created_at;
        return Ok(true);
    };
    if chunk.start_offset > cursor.offset {
        let cut = LogEvent::Cut {
            datum_id,
            attempt,
            bytes: chunk.start_offset - cursor.offset,
        };
        if events.send(cut).await.is_err() {
            return Ok(false);
        }
    }
    *cursor = Cursor {
        seq: chunk.seq,
        offset: chunk.end_offset,
        created_at: chunk.created_at,
    };
    for record in log_frame::lines(&data) {
        let record = record.map_err(|err| {
            AppError::Internal(anyhow::anyhow!("a stored log chunk is damaged: {err}"))
        })?;
        for bytes in log_frame::split_lines(record.bytes) {
            let line = LogLine::new(record.stream, record.at, bytes);
            if events
                .send(LogEvent::line(datum_id, attempt, line))
                .await
                .is_err()
            {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// A job's logs: every attempt of every datum (or of the failed ones), in
/// datum order; with `follow`, then the lines of its running datums as they
/// come, until the job ends.
#[utoipa::path(
    get,
    operation_id = "job_logs",
    path = "/v1/jobs/{id}/logs",
    tag = "jobs",
    summary = "A job's logs, as server-sent events",
    description = "Each event's `data` is a `LogEvent` in JSON, its `event` the same `kind`.",
    params(("id" = i64, Path, description = "The job's id"), JobLogsQuery),
    responses(
        (status = 200, description = "A stream of server-sent events", content_type = "text/event-stream", body = crate::openapi::LogStreamEvent),
        BadRequest, Unauthorized, Forbidden, NotFound, Unavailable, Internal,
    ),
)]
async fn job_logs(
    principal: Principal,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(query): ApiQuery<JobLogsQuery>,
) -> AppResult<EventStream> {
    principal.require_admin()?;
    let job = state.db(move |conn| Job::find(conn, id)).await?;
    Ok(event_stream(
        state.clone(),
        move |state, events| async move {
            let mut reader = JobReader {
                state: &state,
                store: state.config().log_store()?,
                events: &events,
                job_id: job.id,
                seen: HashMap::new(),
            };
            reader.run(query.follow, query.failed).await
        },
    ))
}

/// Reads a job's logs into a stream.
struct JobReader<'a> {
    state: &'a AppState,
    store: LogStore,
    events: &'a mpsc::Sender<LogEvent>,
    job_id: i64,
    /// Following: where each recently active attempt is.
    seen: HashMap<(i64, i32), Cursor>,
}

impl JobReader<'_> {
    async fn run(&mut self, follow: bool, failed: bool) -> AppResult<()> {
        let job_id = self.job_id;
        let waiters = self.state.waiters(job_id);
        let mut logs = waiters.logs.subscribe();
        let mut progress = waiters.progress.subscribe();
        logs.borrow_and_update();
        progress.borrow_and_update();
        let mut since = self.state.db(db_now).await?;
        // Everything so far, in datum order.
        let mut after = (i64::MIN, 0, -1);
        let mut failed_sent: std::collections::HashSet<i64> = Default::default();
        loop {
            let page = self
                .state
                .db(move |conn| LogChunk::job_page(conn, job_id, failed, after, PAGE))
                .await?;
            let full = page.len() as i64 == PAGE;
            for chunk in page {
                after = (chunk.datum_id, chunk.attempt, chunk.seq);
                failed_sent.insert(chunk.datum_id);
                let key = (chunk.datum_id, chunk.attempt);
                let mut cursor = self.seen.get(&key).copied().unwrap_or_default();
                if !send_chunk(&self.store, self.events, &mut cursor, chunk).await? {
                    return Ok(());
                }
                self.seen.insert(key, cursor);
            }
            if !full {
                break;
            }
        }
        if !follow {
            return Ok(());
        }
        // Only recent attempts can grow; the rest need no cursor.
        self.seen
            .retain(|_, cursor| cursor.created_at >= since - COMMIT_MARGIN_MS);
        loop {
            let look = self.state.db(db_now).await?;
            // Read before the chunks: a job seen over has every chunk
            // committed (its datums were all reported).
            let job = self.state.db(move |conn| Job::find(conn, job_id)).await?;
            let more = if failed {
                self.send_new_failures(&mut failed_sent).await?
            } else {
                self.send_new_chunks(since).await?
            };
            if !more {
                return Ok(());
            }
            if job.status().is_terminal() {
                let end = LogEvent::JobEnd {
                    job_id,
                    status: job.status(),
                };
                let _ = self.events.send(end).await;
                return Ok(());
            }
            self.seen
                .retain(|_, cursor| cursor.created_at >= look - COMMIT_MARGIN_MS);
            since = look;
            tokio::select! {
                // The failed datums change with the counts only.
                _ = logs.changed(), if !failed => {}
                _ = progress.changed() => {}
                () = self.events.closed() => return Ok(()),
                () = self.state.shutting_down() => return Ok(()),
            }
            logs.borrow_and_update();
            progress.borrow_and_update();
        }
    }

    /// Sends the chunks stored since `since` (less the margin) that were
    /// not sent yet, attempt by attempt. False when the reader hung up.
    async fn send_new_chunks(&mut self, since: Millis) -> AppResult<bool> {
        let job_id = self.job_id;
        let keys = self
            .state
            .db(move |conn| LogChunk::job_keys_since(conn, job_id, since - COMMIT_MARGIN_MS))
            .await?;
        let mut attempts: Vec<(i64, i32)> = Vec::new();
        for key in keys {
            let pair = (key.datum_id, key.attempt);
            let sent = self.seen.get(&pair).map_or(-1, |cursor| cursor.seq);
            if key.seq > sent && !attempts.contains(&pair) {
                attempts.push(pair);
            }
        }
        for (datum_id, attempt) in attempts {
            let mut cursor = self
                .seen
                .get(&(datum_id, attempt))
                .copied()
                .unwrap_or_default();
            loop {
                let after = cursor.seq;
                let page = self
                    .state
                    .db(move |conn| LogChunk::page(conn, datum_id, attempt, after, PAGE))
                    .await?;
                let full = page.len() as i64 == PAGE;
                for chunk in page {
                    if !send_chunk(&self.store, self.events, &mut cursor, chunk).await? {
                        return Ok(false);
                    }
                }
                if !full {
                    break;
                }
            }
            self.seen.insert((datum_id, attempt), cursor);
        }
        Ok(true)
    }

    /// Sends every attempt of the datums that failed since the last look.
    /// False when the reader hung up.
    async fn send_new_failures(
        &mut self,
        sent: &mut std::collections::HashSet<i64>,
    ) -> AppResult<bool> {
        let job_id = self.job_id;
        let failed = self
            .state
            .db(move |conn| LogChunk::failed_datums(conn, job_id))
            .await?;
        for datum_id in failed {
            if !sent.insert(datum_id) {
                continue;
            }
            let attempts = self
                .state
                .db(move |conn| Datum::attempts(conn, datum_id))
                .await?;
            for attempt in attempts {
                let reader = AttemptReader {
                    state: self.state,
                    store: self.store.clone(),
                    events: self.events,
                    job_id,
                    datum_id,
                    attempt: attempt.number,
                };
                if !reader.run(false).await? {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }
}

/// Runs `produce` in a task of its own, feeding a server-sent event stream
/// that ends when `produce` does. An error after the stream started is
/// sent as an `error` event (the status line is gone by then).
fn event_stream<F, Fut>(state: AppState, produce: F) -> EventStream
where
    F: FnOnce(AppState, mpsc::Sender<LogEvent>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = AppResult<()>> + Send + 'static,
{
    let (events, receiver) = mpsc::channel::<LogEvent>(BUFFERED_EVENTS);
    let (errors, error) = tokio::sync::oneshot::channel::<ErrorBody>();
    tokio::spawn(async move {
        if let Err(err) = produce(state, events).await {
            let _ = errors.send(ErrorBody {
                error: crate::error::detail_of(err),
            });
        }
    });
    let lines = futures::stream::unfold(receiver, |mut receiver| async move {
        let event = receiver.recv().await?;
        let sse = Event::default()
            .event(event.kind())
            .json_data(&event)
            .unwrap_or_else(|_| Event::default().event("error"));
        Some((Ok::<Event, Infallible>(sse), receiver))
    });
    let tail = futures::stream::once(async move {
        error.await.ok().map(|body| {
            Ok::<Event, Infallible>(
                Event::default()
                    .event("error")
                    .json_data(&body)
                    .unwrap_or_else(|_| Event::default().event("error")),
            )
        })
    })
    .filter_map(std::future::ready);
    let stream = lines.chain(tail);
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
