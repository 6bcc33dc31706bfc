//! Shipping an attempt's log to falconerid as it is written: the command's
//! stdout and stderr and the worker's own lines about the attempt
//! (downloads, the command's end, uploads).
//!
//! The output is framed as it is read (the framing the server stores, see
//! [`falconeri_common::log_frame`]; one record per read of a pipe) straight
//! into the batch of the chunk being filled, which one task per attempt
//! sends, each chunk the body of one `PUT` as it is: as soon as
//! [`CHUNK_BYTES`] (2 MiB) are waiting, or 200 ms after the first waiting
//! record, whichever comes first, so a line reaches followers well within
//! a second while a chatty command costs one request (and one chunk
//! stored) per 2 MiB. One chunk is in
//! flight while the next fills; when both are full the writers wait (and,
//! through its pipe, so does the command) rather than dropping lines or
//! growing without bound. Writers append under a lock and wake the sender
//! only when a batch starts or fills, not per read: a message and a task
//! wake-up per read of a pipe were a good part of the worker's cost of a
//! chatty command, and the copy through a channel another (see
//! bench/logs). Every chunk carries the attempt's claim and a number; a
//! resend after a lost answer is recognized by the server. Once the server
//! refuses the claim (409/404) the attempt is no longer ours and the rest
//! is dropped.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use falconeri_common::{
    Millis,
    api::{Claim, LogStream, MAX_LOG_LINE_BYTES},
    client::Client,
    log_frame::{self, CHUNK_BYTES},
};
use tokio::{
    sync::{Notify, mpsc},
    task::JoinHandle,
    time::Instant,
};

use crate::retry::with_retries;

/// How long the first waiting record may wait for others.
pub(crate) const CHUNK_DELAY: Duration = Duration::from_millis(200);

/// The chunk being filled, shared by the writers and the sender.
#[derive(Debug, Default)]
struct Batch {
    /// Framed records.
    data: Vec<u8>,
    /// When its first record came.
    since: Option<Instant>,
    /// The sender gave up (or there is none to wait for): drop records.
    gone: bool,
}

#[derive(Debug)]
struct Shared {
    batch: Mutex<Batch>,
    /// Wakes the sender: a batch started or filled, or a writer left.
    started_or_full: Notify,
    /// Wakes writers waiting for room: a batch was taken, or the sender
    /// gave up.
    room: Notify,
    /// Whether a full batch holds writers back (not in tests without a
    /// sender).
    bounded: bool,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Batch> {
        self.batch.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Where the pumps and the worker write an attempt's records. The sender
/// sees every sink gone when `_alive`'s channel closes (nothing is ever
/// sent on it).
#[derive(Clone, Debug)]
pub(crate) struct LogSink {
    shared: Arc<Shared>,
    _alive: mpsc::Sender<Infallible>,
}

impl LogSink {
    fn new(bounded: bool) -> (LogSink, Arc<Shared>, mpsc::Receiver<Infallible>) {
        let shared = Arc::new(Shared {
            batch: Mutex::new(Batch::default()),
            started_or_full: Notify::new(),
            room: Notify::new(),
            bounded,
        });
        let (alive, gone) = mpsc::channel(1);
        let sink = LogSink {
            shared: shared.clone(),
            _alive: alive,
        };
        (sink, shared, gone)
    }

    /// Appends records with `frame`, once the batch has room (at once if
    /// the attempt's log is being dropped: `frame` is then not called).
    /// `frame` runs under the batch's lock: no waiting in it.
    pub(crate) async fn append(&self, frame: impl FnOnce(&mut Vec<u8>)) {
        let shared = &self.shared;
        loop {
            let room = shared.room.notified();
            tokio::pin!(room);
            // Registered before looking, so a batch taken meanwhile wakes us.
            room.as_mut().enable();
            {
                let mut batch = shared.lock();
                if batch.gone {
                    return;
                }
                if !shared.bounded || batch.data.len() < CHUNK_BYTES {
                    let before = batch.data.len();
                    if before == 0 {
                        // Most chunks fill up: spare the regrowing.
                        batch.data.reserve(CHUNK_BYTES + MAX_LOG_LINE_BYTES);
                    }
                    frame(&mut batch.data);
                    let after = batch.data.len();
                    if before == 0 && after > 0 {
                        batch.since = Some(Instant::now());
                        shared.started_or_full.notify_one();
                    } else if before < CHUNK_BYTES && after >= CHUNK_BYTES {
                        shared.started_or_full.notify_one();
                    }
                    return;
                }
            }
            room.await;
        }
    }

    /// Queues one record of `stream`, read at `at`.
    pub(crate) async fn line(&self, stream: LogStream, at: Millis, bytes: &[u8]) {
        self.append(|data| log_frame::push_line(data, stream, at, bytes))
            .await;
    }

    /// A sink with no sender, whose records the returned handle reads
    /// (tests).
    #[cfg(test)]
    pub(crate) fn for_test() -> (LogSink, TestRecords) {
        let (sink, shared, _) = LogSink::new(false);
        (sink, TestRecords(shared))
    }

    /// A line of the worker's own, with its newline.
    pub(crate) async fn worker(&self, message: &str) {
        self.line(
            LogStream::Worker,
            now_millis(),
            format!("{message}\n").as_bytes(),
        )
        .await;
    }
}

/// What a test sink was given.
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct TestRecords(Arc<Shared>);

#[cfg(test)]
impl TestRecords {
    /// The records appended since the last call.
    pub(crate) fn take(&self) -> Vec<u8> {
        std::mem::take(&mut self.0.lock().data)
    }
}

/// The task sending one attempt's log.
#[derive(Debug)]
pub(crate) struct LogShipper {
    sink: LogSink,
    task: JoinHandle<()>,
}

impl LogShipper {
    /// Starts shipping the log of the attempt `claim` holds on `datum_id`.
    pub(crate) fn start(
        client: Client,
        datum_id: i64,
        claim: Claim,
        retry_budget: Duration,
    ) -> LogShipper {
        let (sink, shared, gone) = LogSink::new(true);
        let task = tokio::spawn(ship(client, datum_id, claim, retry_budget, shared, gone));
        LogShipper { sink, task }
    }

    pub(crate) fn sink(&self) -> LogSink {
        self.sink.clone()
    }

    /// Sends what is still waiting and ends, waiting at most `limit`: the
    /// attempt's report must not go before its last lines.
    pub(crate) async fn finish(self, limit: Duration) {
        let LogShipper { sink, mut task } = self;
        let shared = sink.shared.clone();
        drop(sink);
        if tokio::time::timeout(limit, &mut task).await.is_err() {
            tracing::warn!("the attempt's last log lines could not be sent in time");
            task.abort();
            give_up(&shared);
        }
    }
}

/// Drops the rest of the log: writers stop waiting and appending.
fn give_up(shared: &Shared) {
    let mut batch = shared.lock();
    batch.gone = true;
    batch.data = Vec::new();
    drop(batch);
    shared.room.notify_waiters();
}

/// Milliseconds since the Unix epoch on this machine's clock.
pub(crate) fn now_millis() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX))
        .unwrap_or(0)
}

/// A chunk on its way: true once the server has it, false once the rest of
/// the log must be dropped.
type Sending = Pin<Box<dyn Future<Output = bool> + Send>>;

/// Sends chunk `seq`, retrying transient failures within `retry_budget`.
fn send(
    client: &Client,
    datum_id: i64,
    claim: Claim,
    seq: i64,
    body: Bytes,
    retry_budget: Duration,
) -> Sending {
    let client = client.clone();
    Box::pin(async move {
        let sent = with_retries(retry_budget, "sending log lines", || {
            // A clone of `Bytes` shares the buffer: a retry copies nothing.
            client.put_log_chunk(datum_id, &claim, seq, body.clone())
        })
        .await;
        match sent {
            Ok(_) => true,
            Err(err) if err.is_conflict() || err.is_not_found() => {
                tracing::debug!(error = %err, "the attempt is over; dropping its log");
                false
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot send log lines; dropping the rest");
                false
            }
        }
    })
}

/// Sends batches in order, one chunk in flight at a time: the next batch
/// fills while the previous one is sent, so the command is held back only
/// when both are full, not for every request. (Not more than one: the
/// server takes a chunk numbered below one it stored for a resend.)
async fn ship(
    client: Client,
    datum_id: i64,
    claim: Claim,
    retry_budget: Duration,
    shared: Arc<Shared>,
    mut alive: mpsc::Receiver<Infallible>,
) {
    /// Drops the log if this task ends for any reason, so no writer waits
    /// for room that never comes.
    struct GiveUp(Arc<Shared>);
    impl Drop for GiveUp {
        fn drop(&mut self) {
            give_up(&self.0);
        }
    }
    let _give_up = GiveUp(shared.clone());
    let mut seq = 0;
    let mut sending: Option<Sending> = None;
    let mut closed = false;
    loop {
        let (waiting, due) = {
            let batch = shared.lock();
            (batch.data.len(), batch.since.map(|at| at + CHUNK_DELAY))
        };
        let go = waiting > 0
            && (closed || waiting >= CHUNK_BYTES || due.is_some_and(|due| due <= Instant::now()));
        if go && sending.is_none() {
            let body = {
                let mut batch = shared.lock();
                batch.since = None;
                std::mem::take(&mut batch.data)
            };
            shared.room.notify_waiters();
            sending = Some(send(
                &client,
                datum_id,
                claim.clone(),
                seq,
                Bytes::from(body),
                retry_budget,
            ));
            seq += 1;
            continue;
        }
        if closed && waiting == 0 && sending.is_none() {
            return;
        }
        let in_flight = async {
            match sending.as_mut() {
                Some(chunk) => chunk.await,
                None => std::future::pending().await,
            }
        };
        let wait = async {
            match due {
                // Due already: only the chunk in flight holds it back.
                Some(due) if !go => tokio::time::sleep_until(due).await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            stored = in_flight => {
                sending = None;
                if !stored {
                    return;
                }
            }
            () = shared.started_or_full.notified() => {}
            () = wait => {}
            None = alive.recv(), if !closed => closed = true,
        }
    }
}

/// Frames a stream's output as it is read: all the whole lines of one read
/// go at once as one record (one header, the read's timestamp); a line
/// still being written waits for the rest and goes as a record of its own,
/// stamped when its first byte was read, once finished, after
/// [`CHUNK_DELAY`], or at [`MAX_LOG_LINE_BYTES`] (as a piece without its
/// newline). Finding a read's whole lines takes one search for its last
/// newline, not one per line: the worker never splits lines; readers do,
/// to show them (see [`falconeri_common::log_frame`]).
#[derive(Debug)]
pub(crate) struct LineSplitter {
    stream: LogStream,
    partial: Vec<u8>,
    /// When the partial line's first byte was read.
    started: Option<(Millis, Instant)>,
}

impl LineSplitter {
    pub(crate) fn new(stream: LogStream) -> LineSplitter {
        LineSplitter {
            stream,
            partial: Vec::new(),
            started: None,
        }
    }

    /// Takes newly read bytes and sends every finished line, all of them in
    /// one message: the line that was waiting (finished by this read) as a
    /// record stamped with its start, the read's other whole lines as one
    /// record stamped with this read's time.
    pub(crate) async fn push(&mut self, sink: &LogSink, data: &[u8]) {
        let mut now = None;
        // Framed straight into the batch: the read's one copy on its way.
        sink.append(|framed| {
            // Pieces of at most the longest line: no line inside a piece
            // can be longer, so only the line waiting across reads needs
            // cutting.
            for piece in data.chunks(MAX_LOG_LINE_BYTES) {
                self.push_piece(framed, &mut now, piece);
            }
        })
        .await;
    }

    fn push_piece(
        &mut self,
        framed: &mut Vec<u8>,
        now: &mut Option<(Millis, Instant)>,
        mut data: &[u8],
    ) {
        let mut read_at = || *now.get_or_insert_with(|| (now_millis(), Instant::now()));
        if let Some((started, _)) = self.started {
            let room = MAX_LOG_LINE_BYTES - self.partial.len();
            let window = &data[..data.len().min(room)];
            let take = match memchr::memchr(b'\n', window) {
                Some(newline) => newline + 1,
                // Not finished here, and too long to wait for more: cut.
                None if data.len() >= room => room,
                None => {
                    self.partial.extend_from_slice(data);
                    return;
                }
            };
            self.partial.extend_from_slice(&data[..take]);
            log_frame::push_line(framed, self.stream, started, &self.partial);
            self.partial.clear();
            self.started = None;
            data = &data[take..];
        }
        let rest = match memchr::memrchr(b'\n', data) {
            Some(last) => {
                let (at, _) = read_at();
                log_frame::push_line(framed, self.stream, at, &data[..=last]);
                &data[last + 1..]
            }
            None => data,
        };
        if rest.is_empty() {
            return;
        }
        let (at, instant) = read_at();
        if rest.len() >= MAX_LOG_LINE_BYTES {
            log_frame::push_line(framed, self.stream, at, rest);
        } else {
            self.partial.extend_from_slice(rest);
            self.started = Some((at, instant));
        }
    }

    /// When the partial line must go even without its newline.
    pub(crate) fn due(&self) -> Option<Instant> {
        self.started.map(|(_, at)| at + CHUNK_DELAY)
    }

    /// Sends whatever is waiting.
    pub(crate) async fn flush(&mut self, sink: &LogSink) {
        if let Some((at, _)) = self.started.take() {
            sink.line(self.stream, at, &self.partial).await;
            self.partial.clear();
        }
    }

    /// The partial line, for tests.
    #[cfg(test)]
    fn waiting(&self) -> &[u8] {
        &self.partial
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lines `chunks` make, each with its record's stream and time.
    async fn split(chunks: &[&[u8]]) -> Vec<log_frame::StoredLine> {
        let (sink, records) = LogSink::for_test();
        let mut splitter = LineSplitter::new(LogStream::Stdout);
        for chunk in chunks {
            splitter.push(&sink, chunk).await;
        }
        splitter.flush(&sink).await;
        let mut lines = Vec::new();
        for record in log_frame::decode_lines(&records.take()).unwrap() {
            lines.extend(log_frame::split_lines(&record.bytes).map(|bytes| {
                log_frame::StoredLine {
                    bytes: bytes.to_vec(),
                    ..record.clone()
                }
            }));
        }
        lines
    }

    #[tokio::test]
    async fn lines_are_split_at_newlines_and_kept_whole() {
        let lines = split(&[b"one\ntw", b"o\n\0three\xff\n", b"\n"]).await;
        let bytes: Vec<Vec<u8>> = lines.iter().map(|l| l.bytes.clone()).collect();
        assert_eq!(
            bytes,
            vec![
                b"one\n".to_vec(),
                b"two\n".to_vec(),
                b"\0three\xff\n".to_vec(),
                b"\n".to_vec()
            ]
        );
        assert!(lines.iter().all(|l| l.stream == LogStream::Stdout));
        // A line keeps the time its first byte was read: "two" was started
        // in the first read, at or before the second read's "\0three".
        assert!(lines[1].at <= lines[2].at);
    }

    /// All the whole lines of one read travel as one record (one header),
    /// and a piece of a line waits for the rest, then goes as a record of
    /// its own with its first byte's time, ahead of the read's other lines.
    #[tokio::test]
    async fn one_read_makes_one_record() {
        let (sink, records) = LogSink::for_test();
        let mut splitter = LineSplitter::new(LogStream::Stderr);
        splitter.push(&sink, b"a\nb\nc\npartial").await;
        let framed = records.take();
        let first = log_frame::decode_lines(&framed).unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].bytes, b"a\nb\nc\n");
        assert_eq!(first[0].stream, LogStream::Stderr);
        assert_eq!(framed.len(), log_frame::LINE_HEADER + 6);
        assert_eq!(splitter.waiting(), b"partial");
        assert!(splitter.due().is_some());
        splitter.push(&sink, b" line\nd\ne\nf").await;
        let second = log_frame::decode_lines(&records.take()).unwrap();
        let bytes: Vec<&[u8]> = second.iter().map(|r| &r.bytes[..]).collect();
        assert_eq!(bytes, vec![&b"partial line\n"[..], b"d\ne\n"]);
        assert!(second[0].at <= second[1].at);
        assert_eq!(splitter.waiting(), b"f");
        // A read of no newline at all only adds to the waiting line.
        splitter.push(&sink, b"gh").await;
        assert!(records.take().is_empty());
        splitter.flush(&sink).await;
        let last = log_frame::decode_lines(&records.take()).unwrap();
        assert_eq!(last[0].bytes, b"fgh");
    }

    /// While a chunk is in flight the next one fills: the command is not
    /// held back for the request (with one chunk at a time, the 257th line
    /// after a full chunk would wait for the answer). Chunks still arrive
    /// in order and whole.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_next_chunk_fills_while_one_is_sent() {
        let (release, held) = std::sync::mpsc::channel::<()>();
        let held = std::sync::Mutex::new(held);
        let (url, mut requests) =
            crate::batch::tests::fake_server(std::sync::Arc::new(move |path: &str, body: &str| {
                assert!(
                    path.starts_with("/v1/datums/5/attempts/1/logs/")
                        && path.ends_with("?worker_id=w-1"),
                    "{path}"
                );
                let _ = body;
                if path.contains("/logs/0?") {
                    // Holds the first chunk's answer (this fake serves each
                    // request on a task of its own) until the test says so.
                    let _ = held.lock().unwrap().recv_timeout(Duration::from_secs(10));
                }
                (200, r#"{"stored":true}"#.to_owned())
            }))
            .await;
        let claim = Claim {
            worker_id: "w-1".to_owned(),
            attempt: 1,
            scope: None,
        };
        let client = Client::new(&url, None).unwrap();
        let shipper = LogShipper::start(client, 5, claim, Duration::from_secs(5));
        let sink = shipper.sink();
        let line = [b'x'; 1023]
            .iter()
            .chain(b"\n")
            .copied()
            .collect::<Vec<u8>>();
        // The lines that fill a chunk, framed.
        let framed = line.len() + log_frame::LINE_HEADER;
        let first = CHUNK_BYTES.div_ceil(framed);
        // The next chunk fills while the first is held.
        let next = first;
        tokio::time::timeout(Duration::from_secs(5), async {
            for _ in 0..first + next {
                sink.line(LogStream::Stdout, 1, &line).await;
            }
        })
        .await
        .expect("lines were held back while a chunk was in flight");
        // Both full: the writer waits (and is cancelled here, so its line
        // is not written).
        assert!(
            tokio::time::timeout(
                Duration::from_millis(300),
                sink.line(LogStream::Stdout, 1, &line)
            )
            .await
            .is_err(),
            "a third chunk's lines were taken while two were full"
        );
        release.send(()).unwrap();
        drop(sink);
        shipper.finish(Duration::from_secs(10)).await;
        let mut seqs = Vec::new();
        let mut lines = 0;
        while let Ok((path, body)) = requests.try_recv() {
            let seq = path
                .split("/logs/")
                .nth(1)
                .and_then(|rest| rest.split('?').next());
            seqs.push(seq.unwrap().parse::<i64>().unwrap());
            // Every line is 1024 bytes of ASCII plus its 13-byte header.
            assert_eq!(body.len() % framed, 0);
            lines += body.len() / framed;
        }
        let chunks = (first + next).div_ceil(first) as i64;
        assert_eq!(seqs, (0..chunks).collect::<Vec<_>>());
        assert_eq!(lines, first + next);
    }

    #[tokio::test]
    async fn huge_lines_are_cut_into_pieces() {
        let huge = vec![b'x'; MAX_LOG_LINE_BYTES * 2 + 10];
        let lines = split(&[&huge]).await;
        let sizes: Vec<usize> = lines.iter().map(|l| l.bytes.len()).collect();
        assert_eq!(sizes, vec![MAX_LOG_LINE_BYTES, MAX_LOG_LINE_BYTES, 10]);
        // Also when the line grows over several reads, after whole lines.
        let mut long = b"short\n".to_vec();
        long.extend(vec![b'y'; MAX_LOG_LINE_BYTES - 100]);
        let more = vec![b'y'; 300];
        let lines = split(&[&long, &more, b"z\n"]).await;
        let sizes: Vec<usize> = lines.iter().map(|l| l.bytes.len()).collect();
        assert_eq!(sizes, vec![6, MAX_LOG_LINE_BYTES, 202]);
        assert!(lines[2].bytes.ends_with(b"yz\n"));
    }
}
