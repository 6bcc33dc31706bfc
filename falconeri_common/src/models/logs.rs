//! Attempt logs: every attempt's stdout, stderr and worker lines, stored as
//! the chunks the worker sends, under a per-attempt cap.
//!
//! A chunk is one row of `log_chunks`, keyed by (datum, attempt, the
//! worker's chunk number). Its bytes are the chunk's records in the small
//! binary framing of [`crate::log_frame`], exactly as the worker sent them,
//! kept in one of two places ([`ChunkBody`]): a file (object) under
//! falconerid's logs location, named by the row's `object`, or the row's
//! own `data` (a BLOB/BYTEA, so a NUL or invalid UTF-8 is kept exactly on
//! both databases, which TEXT could not do). Files are the default where
//! falconerid has a disk of its own: every byte stored in SQLite is written
//! twice (its write-ahead log, then the database file at a checkpoint, with
//! an fsync), which made a chatty job twice as slow as a quiet one (see
//! bench/logs). Either way the row keeps what readers, followers and the cap
//! need (the offsets), and models never touch the files: the caller writes
//! a chunk's file before [`LogChunk::append_framed`] and deletes the files
//! it reports cut after it commits. Readers page through chunks a few at a
//! time, so no one ever holds a whole log.
//!
//! The cap: `start_offset`/`end_offset` count the attempt's output bytes
//! before and after each chunk. Chunks that end within the first half of the
//! cap are the head and stay; of the rest only those ending in the last half
//! cap's worth of output stay, so the log keeps its head and its tail, and
//! may exceed the cap by at most the chunk that crossed into the tail. A
//! reader sees a cut as a jump between one chunk's end and the next one's
//! start, and says how many bytes went there.

use diesel::{
    BoolExpressionMethods, ExpressionMethods, OptionalExtension, QueryDsl, QueryableByName,
    RunQueryDsl, SelectableHelper,
    prelude::{Queryable, Selectable},
    sql_types::BigInt,
};

use super::{
    Attempt, ModelError, ModelResult,
    sql::{Clock, Stmt},
};
use crate::{
    Millis,
    api::Claim,
    db::{Backend, DbConn, schema::*, with_conn},
    models::Datum,
    status::DatumStatus,
};

/// The default cap on one attempt's log (falconerid `--max-log-bytes`).
pub const DEFAULT_MAX_LOG_BYTES: i64 = 16 * 1024 * 1024;

/// One stored chunk.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = log_chunks)]
pub struct LogChunk {
    pub datum_id: i64,
    pub attempt: i32,
    pub seq: i64,
    pub job_id: i64,
    /// The attempt's output bytes before this chunk (cut ones included).
    pub start_offset: i64,
    pub end_offset: i64,
    pub created_at: Millis,
    /// The bytes, when kept in the database (else empty).
    pub data: Vec<u8>,
    /// The bytes' object under the logs location, when kept there.
    pub object: Option<String>,
}

/// Where an appended chunk's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkBody<'a> {
    /// In the row itself (`data`).
    Inline(&'a [u8]),
    /// In the object of this name under the logs location, written already.
    Object(&'a str),
}

/// Where a chunk is, without its data (the follow's first look).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Queryable)]
pub struct ChunkKey {
    pub datum_id: i64,
    pub attempt: i32,
    pub seq: i64,
    pub created_at: Millis,
}

pub use crate::log_frame::{StoredLine, encode_lines};

/// What an append did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// False when a chunk of that number was stored already (a resend).
    pub stored: bool,
    pub job_id: i64,
    /// The chunks the cap cut out of the middle by this append.
    pub cut: Vec<CutChunk>,
}

/// A chunk the cap removed: its output bytes, and its object, which the
/// caller deletes once the removal is committed.
#[derive(Debug, Clone, PartialEq, Eq, Queryable)]
pub struct CutChunk {
    pub seq: i64,
    pub start_offset: i64,
    pub end_offset: i64,
    pub object: Option<String>,
}

/// The lines of a stored chunk; an error if the data is not in
/// [`crate::log_frame`]'s format (a damaged row), never a panic.
pub fn decode_lines(data: &[u8]) -> ModelResult<Vec<StoredLine>> {
    crate::log_frame::decode_lines(data)
        .map_err(|err| ModelError::Other(anyhow::anyhow!("a stored log chunk is damaged: {err}")))
}

#[derive(QueryableByName)]
struct JobRow {
    #[diesel(sql_type = BigInt)]
    job_id: i64,
}

impl LogChunk {
    /// Appends chunk `seq` of the claimed attempt of datum `datum_id`: see
    /// [`LogChunk::append_framed`], which this calls with the lines framed.
    #[tracing::instrument(level = "debug", skip(conn, lines, now))]
    pub fn append(
        conn: &mut DbConn,
        datum_id: i64,
        claim: &Claim,
        seq: i64,
        lines: &[StoredLine],
        max_bytes: i64,
        now: impl Into<Clock>,
    ) -> ModelResult<Appended> {
        let data = encode_lines(lines);
        let size = lines
            .iter()
            .map(|l| i64::try_from(l.bytes.len()).unwrap_or(i64::MAX))
            .fold(0i64, i64::saturating_add);
        LogChunk::append_framed(
            conn,
            datum_id,
            claim,
            seq,
            ChunkBody::Inline(&data),
            size,
            max_bytes,
            now,
        )
    }

    /// Appends chunk `seq` of the claimed attempt of datum `datum_id`, whose
    /// `body` is records in [`crate::log_frame`]'s framing holding `size`
    /// output bytes (checked by the caller: [`crate::log_frame::check`]),
    /// stored as it is (or, for an object, named); then cuts the middle of
    /// the attempt's log down to `max_bytes` (head and tail kept) and
    /// returns the chunks it cut, whose objects the caller deletes. A
    /// resend (`stored` false) leaves `body`'s object unnamed by any row. A guarded write: the claim must
    /// name the datum's open attempt (and, for a worker, a datum of its
    /// job), else nothing changes and the answer is [`ModelError::Conflict`]
    /// (or NotFound). Appends of one attempt are serialized by locking its
    /// attempt row.
    #[allow(clippy::too_many_arguments)]
    #[tracing::instrument(level = "debug", skip(conn, body, now))]
    pub fn append_framed(
        conn: &mut DbConn,
        datum_id: i64,
        claim: &Claim,
        seq: i64,
        body: ChunkBody<'_>,
        size: i64,
        max_bytes: i64,
        now: impl Into<Clock>,
    ) -> ModelResult<Appended> {
        let now = now.into();
        let attempt = claim.attempt;
        conn.write_transaction(|conn| {
            let backend = conn.backend();
            let mut guard = Stmt::new(backend);
            let owner = guard.text(Some(&claim.worker_id));
            let scope = claim
                .scope
                .map(|job| format!(" AND job_id = {job}"))
                .unwrap_or_default();
            let lock = match backend {
                Backend::Postgres => " FOR UPDATE",
                // The write transaction holds SQLite's one write lock.
                Backend::Sqlite => "",
            };
            guard.push(&format!(
                "SELECT job_id FROM attempts WHERE datum_id = {datum_id} AND number = {attempt} \
                 AND worker_id = {owner} AND outcome IS NULL{scope}{lock}"
            ));
            let Some(JobRow { job_id }) = guard.load::<JobRow>(conn)?.into_iter().next() else {
                return Err(Datum::why_stale(conn, datum_id, claim));
            };
            let now_sql = now.sql(backend);
            let last: Option<(i64, i64)> = with_conn!(conn, c => log_chunks::table
                .filter(log_chunks::datum_id.eq(datum_id))
                .filter(log_chunks::attempt.eq(attempt))
                .order(log_chunks::seq.desc())
                .select((log_chunks::seq, log_chunks::end_offset))
                .first(c)
                .optional())?;
            if last.is_some_and(|(last_seq, _)| seq <= last_seq) {
                return Ok(Appended {
                    stored: false,
                    job_id,
                    cut: Vec::new(),
                });
            }
            let (data, object): (&[u8], Option<&str>) = match body {
                ChunkBody::Inline(data) => (data, None),
                ChunkBody::Object(name) => (&[], Some(name)),
            };
            let start = last.map_or(0, |(_, end)| end);
            let end = start.saturating_add(size);
            with_conn!(conn, c => diesel::insert_into(log_chunks::table)
                .values((
                    log_chunks::datum_id.eq(datum_id),
                    log_chunks::attempt.eq(attempt),
                    log_chunks::seq.eq(seq),
                    log_chunks::job_id.eq(job_id),
                    log_chunks::start_offset.eq(start),
                    log_chunks::end_offset.eq(end),
                    log_chunks::created_at.eq(diesel::dsl::sql::<BigInt>(&now_sql)),
                    log_chunks::data.eq(data),
                    log_chunks::object.eq(object),
                ))
                .execute(c))?;
            let mut cut = Vec::new();
            if end > max_bytes {
                let head = max_bytes / 2;
                let tail = max_bytes - head;
                // Whatever ends after the head and before the tail: read
                // first (their objects go once this commits), then deleted,
                // by the same filter inside the same write transaction.
                cut = with_conn!(conn, c => log_chunks::table
                    .filter(log_chunks::datum_id.eq(datum_id))
                    .filter(log_chunks::attempt.eq(attempt))
                    .filter(log_chunks::end_offset.gt(head))
                    .filter(log_chunks::end_offset.le(end - tail))
                    .filter(log_chunks::seq.ne(seq))
                    .order(log_chunks::seq)
                    .select((
                        log_chunks::seq,
                        log_chunks::start_offset,
                        log_chunks::end_offset,
                        log_chunks::object,
                    ))
                    .load::<CutChunk>(c))?;
                if !cut.is_empty() {
                    let seqs: Vec<i64> = cut.iter().map(|chunk| chunk.seq).collect();
                    with_conn!(conn, c => diesel::delete(
                        log_chunks::table
                            .filter(log_chunks::datum_id.eq(datum_id))
                            .filter(log_chunks::attempt.eq(attempt))
                            .filter(log_chunks::seq.eq_any(&seqs)),
                    )
                    .execute(c))?;
                }
            }
            Ok(Appended {
                stored: true,
                job_id,
                cut,
            })
        })
    }

    /// Up to `limit` chunks of one attempt after chunk `after` (-1 for the
    /// first), in order.
    pub fn page(
        conn: &mut DbConn,
        datum_id: i64,
        attempt: i32,
        after: i64,
        limit: i64,
    ) -> ModelResult<Vec<LogChunk>> {
        Ok(with_conn!(conn, c => log_chunks::table
            .filter(log_chunks::datum_id.eq(datum_id))
            .filter(log_chunks::attempt.eq(attempt))
            .filter(log_chunks::seq.gt(after))
            .order(log_chunks::seq)
            .limit(limit)
            .select(LogChunk::as_select())
            .load(c))?)
    }

    /// Up to `limit` chunks of job `job_id` after `after` (datum, attempt,
    /// chunk), in datum, attempt and chunk order; only the datums that
    /// failed (status `error`) if `failed`.
    pub fn job_page(
        conn: &mut DbConn,
        job_id: i64,
        failed: bool,
        after: (i64, i32, i64),
        limit: i64,
    ) -> ModelResult<Vec<LogChunk>> {
        let (d, a, s) = after;
        Ok(with_conn!(conn, c => {
            let mut query = log_chunks::table
                .filter(log_chunks::job_id.eq(job_id))
                .filter(
                    log_chunks::datum_id.gt(d).or(log_chunks::datum_id.eq(d).and(
                        log_chunks::attempt
                            .gt(a)
                            .or(log_chunks::attempt.eq(a).and(log_chunks::seq.gt(s))),
                    )),
                )
                .into_boxed();
            if failed {
                query = query.filter(
                    log_chunks::datum_id.eq_any(
                        datums::table
                            .filter(datums::job_id.eq(job_id))
                            .filter(datums::status.eq(DatumStatus::Error))
                            .select(datums::id),
                    ),
                );
            }
            query
                .order((log_chunks::datum_id, log_chunks::attempt, log_chunks::seq))
                .limit(limit)
                .select(LogChunk::as_select())
                .load(c)
        })?)
    }

    /// Where the chunks of job `job_id` created at `since` or later are.
    pub fn job_keys_since(
        conn: &mut DbConn,
        job_id: i64,
        since: Millis,
    ) -> ModelResult<Vec<ChunkKey>> {
        Ok(with_conn!(conn, c => log_chunks::table
            .filter(log_chunks::job_id.eq(job_id))
            .filter(log_chunks::created_at.ge(since))
            .order((log_chunks::created_at, log_chunks::datum_id, log_chunks::seq))
            .select((
                log_chunks::datum_id,
                log_chunks::attempt,
                log_chunks::seq,
                log_chunks::created_at,
            ))
            .load(c))?)
    }

    /// One chunk, if it is still there (the cap may have cut it).
    pub fn find(
        conn: &mut DbConn,
        datum_id: i64,
        attempt: i32,
        seq: i64,
    ) -> ModelResult<Option<LogChunk>> {
        Ok(with_conn!(conn, c => log_chunks::table
            .find((datum_id, attempt, seq))
            .select(LogChunk::as_select())
            .first(c)
            .optional())?)
    }

    /// The datums of job `job_id` that failed for good.
    pub fn failed_datums(conn: &mut DbConn, job_id: i64) -> ModelResult<Vec<i64>> {
        Ok(with_conn!(conn, c => datums::table
            .filter(datums::job_id.eq(job_id))
            .filter(datums::status.eq(DatumStatus::Error))
            .order(datums::id)
            .select(datums::id)
            .load(c))?)
    }

    /// Attempt `number` of datum `datum_id`.
    pub fn attempt(conn: &mut DbConn, datum_id: i64, number: i32) -> ModelResult<Attempt> {
        with_conn!(conn, c => attempts::table
            .filter(attempts::datum_id.eq(datum_id))
            .filter(attempts::number.eq(number))
            .select(Attempt::as_select())
            .first(c)
            .optional())?
        .ok_or_else(|| ModelError::NotFound(format!("attempt {number} of datum {datum_id}")))
    }
}
