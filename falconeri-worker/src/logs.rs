//! Shipping an attempt's log to falconerid as it is written: the command's
//! stdout and stderr, line by line, and the worker's own lines about the
//! attempt (downloads, the command's end, uploads).
//!
//! Lines are framed as they are split (the framing the server stores, see
//! [`falconeri_common::log_frame`]): all the lines of one read of a pipe
//! make one message on a bounded channel to one task per attempt, which
//! sends them in chunks, each the body of one `PUT` as it is: as soon as
//! 1 MiB is waiting, or 200 ms after the first waiting line, whichever
//! comes first, so a line reaches followers well within a second while a
//! chatty command costs one request (and one database transaction) per
//! MiB. One chunk is in flight while the next fills. (64 KiB chunks made a
//! command printing 1 MiB per datum about 8 times slower than one whose
//! output is discarded, most of it spent in the request round trips; a
//! JSON object per line cost more again; see bench/logs.)
//! A full channel holds the pumps back (and, through its pipe, the command)
//! rather than dropping lines or growing without bound. Every chunk carries
//! the attempt's claim and a number; a resend after a lost answer is
//! recognized by the server. Once the server refuses the claim (409/404)
//! the attempt is no longer ours and the rest is dropped.

use std::{
    future::Future,
    pin::Pin,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use falconeri_common::{
    Millis,
    api::{Claim, LogStream, MAX_LOG_LINE_BYTES},
    client::Client,
    log_frame,
};
use tokio::{sync::mpsc, task::JoinHandle, time::Instant};

use crate::retry::with_retries;

/// Bytes of lines that make a chunk go at once.
pub(crate) const CHUNK_BYTES: usize = 1024 * 1024;

/// How long the first waiting line may wait for others.
pub(crate) const CHUNK_DELAY: Duration = Duration::from_millis(200);

/// Messages (each the framed lines of one read of a pipe, at most the
/// pump's buffer plus a line piece, or one worker line) in flight between
/// the pumps and the sender.
const CHANNEL_MESSAGES: usize = 64;

/// Where the pumps and the worker write an attempt's lines: framed lines,
/// one or more per message.
#[derive(Clone, Debug)]
pub(crate) struct LogSink(mpsc::Sender<Vec<u8>>);

impl LogSink {
    /// Queues one line (or piece of one) of `stream`, read at `at`.
    pub(crate) async fn line(&self, stream: LogStream, at: Millis, bytes: &[u8]) {
        let mut framed = Vec::new();
        log_frame::push_line(&mut framed, stream, at, bytes);
        self.framed(framed).await;
    }

    /// Queues lines framed already.
    pub(crate) async fn framed(&self, framed: Vec<u8>) {
        if framed.is_empty() {
            return;
        }
        // Closed only when the shipper gave up (the attempt is not ours).
        let _ = self.0.send(framed).await;
    }

    /// A sink whose lines go to the returned receiver (tests).
    #[cfg(test)]
    pub(crate) fn for_test() -> (LogSink, mpsc::Receiver<Vec<u8>>) {
        let (sender, receiver) = mpsc::channel(1024);
        (LogSink(sender), receiver)
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
        let (sender, receiver) = mpsc::channel(CHANNEL_MESSAGES);
        let task = tokio::spawn(ship(client, datum_id, claim, retry_budget, receiver));
        LogShipper {
            sink: LogSink(sender),
            task,
        }
    }

    pub(crate) fn sink(&self) -> LogSink {
        self.sink.clone()
    }

    /// Sends what is still waiting and ends, waiting at most `limit`: the
    /// attempt's report must not go before its last lines.
    pub(crate) async fn finish(self, limit: Duration) {
        let LogShipper { sink, mut task } = self;
        drop(sink);
        if tokio::time::timeout(limit, &mut task).await.is_err() {
            tracing::warn!("the attempt's last log lines could not be sent in time");
            task.abort();
        }
    }
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

/// What woke the shipper.
enum Wake {
    /// The chunk in flight is stored (true) or refused for good (false).
    Sent(bool),
    /// A line came; true if the batch is now big enough to go.
    Line(bool),
    /// The first waiting line has waited long enough.
    Due,
    /// Every sink is gone: the attempt's output is complete.
    Closed,
}

/// Sends batches of lines in order, one chunk in flight at a time: the next
/// batch fills while the previous one is sent, so the command is held back
/// only when both are full, not for every request. (Not more than one: the
/// server takes a chunk numbered below one it stored for a resend.)
async fn ship(
    client: Client,
    datum_id: i64,
    claim: Claim,
    retry_budget: Duration,
    mut receiver: mpsc::Receiver<Vec<u8>>,
) {
    let mut batch: Vec<u8> = Vec::new();
    let mut due: Option<Instant> = None;
    let mut seq = 0;
    let mut sending: Option<Sending> = None;
    loop {
        let wait = async {
            match due {
                Some(due) => tokio::time::sleep_until(due).await,
                None => std::future::pending().await,
            }
        };
        let in_flight = async {
            match sending.as_mut() {
                Some(chunk) => chunk.await,
                None => std::future::pending().await,
            }
        };
        let wake = tokio::select! {
            stored = in_flight => Wake::Sent(stored),
            line = receiver.recv() => match line {
                Some(framed) => {
                    if batch.is_empty() {
                        // Most chunks fill up: spare the regrowing.
                        batch.reserve(CHUNK_BYTES + framed.len());
                    }
                    batch.extend_from_slice(&framed);
                    due.get_or_insert_with(|| Instant::now() + CHUNK_DELAY);
                    Wake::Line(batch.len() >= CHUNK_BYTES)
                }
                None => Wake::Closed,
            },
            () = wait => Wake::Due,
        };
        let closed = match wake {
            Wake::Sent(stored) => {
                sending = None;
                if !stored {
                    return;
                }
                continue;
            }
            Wake::Line(false) => continue,
            Wake::Line(true) | Wake::Due => false,
            Wake::Closed => true,
        };
        if !batch.is_empty() {
            // Chunks go in order: the one in flight first.
            if let Some(previous) = sending.take()
                && !previous.await
            {
                return;
            }
            let body = Bytes::from(std::mem::take(&mut batch));
            sending = Some(send(
                &client,
                datum_id,
                claim.clone(),
                seq,
                body,
                retry_budget,
            ));
            seq += 1;
            due = None;
        }
        if closed {
            if let Some(last) = sending.take() {
                last.await;
            }
            return;
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
        let mut framed = Vec::new();
        let mut now = None;
        // Pieces of at most the longest line: no line inside a piece can
        // be longer, so only the line waiting across reads needs cutting.
        for piece in data.chunks(MAX_LOG_LINE_BYTES) {
            self.push_piece(&mut framed, &mut now, piece);
        }
        sink.framed(framed).await;
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
                if framed.is_empty() {
                    framed.reserve(log_frame::LINE_HEADER + last + 1);
                }
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
        let (sender, mut receiver) = mpsc::channel(1024);
        let sink = LogSink(sender);
        let mut splitter = LineSplitter::new(LogStream::Stdout);
        for chunk in chunks {
            splitter.push(&sink, chunk).await;
        }
        splitter.flush(&sink).await;
        drop(sink);
        let mut lines = Vec::new();
        while let Some(framed) = receiver.recv().await {
            for record in log_frame::decode_lines(&framed).unwrap() {
                lines.extend(log_frame::split_lines(&record.bytes).map(|bytes| {
                    log_frame::StoredLine {
                        bytes: bytes.to_vec(),
                        ..record.clone()
                    }
                }));
            }
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
        let (sink, mut receiver) = LogSink::for_test();
        let mut splitter = LineSplitter::new(LogStream::Stderr);
        splitter.push(&sink, b"a\nb\nc\npartial").await;
        let framed = receiver.try_recv().unwrap();
        let records = log_frame::decode_lines(&framed).unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].bytes, b"a\nb\nc\n");
        assert_eq!(records[0].stream, LogStream::Stderr);
        assert_eq!(framed.len(), log_frame::LINE_HEADER + 6);
        assert!(receiver.try_recv().is_err());
        assert_eq!(splitter.waiting(), b"partial");
        assert!(splitter.due().is_some());
        splitter.push(&sink, b" line\nd\ne\nf").await;
        let records = log_frame::decode_lines(&receiver.try_recv().unwrap()).unwrap();
        let bytes: Vec<&[u8]> = records.iter().map(|r| &r.bytes[..]).collect();
        assert_eq!(bytes, vec![&b"partial line\n"[..], b"d\ne\n"]);
        assert!(records[0].at <= records[1].at);
        assert_eq!(splitter.waiting(), b"f");
        // A read of no newline at all only adds to the waiting line.
        splitter.push(&sink, b"gh").await;
        assert!(receiver.try_recv().is_err());
        splitter.flush(&sink).await;
        let records = log_frame::decode_lines(&receiver.try_recv().unwrap()).unwrap();
        assert_eq!(records[0].bytes, b"fgh");
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
        // More than the channel holds, as messages of one line each.
        let next = CHANNEL_MESSAGES + 144;
        tokio::time::timeout(Duration::from_secs(5), async {
            for _ in 0..first + next {
                sink.line(LogStream::Stdout, 1, &line).await;
            }
        })
        .await
        .expect("lines were held back while a chunk was in flight");
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
