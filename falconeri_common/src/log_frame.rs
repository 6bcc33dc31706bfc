//! The framing of an attempt's log lines, shared by the worker that writes
//! it, the wire (`PUT /v1/datums/{id}/attempts/{attempt}/logs/{seq}`, an
//! `application/octet-stream` body) and the store (a file under the logs
//! location, or `log_chunks.data`).
//!
//! A chunk is a run of records. Per record: the stream (one byte: 0 stdout,
//! 1 stderr, 2 worker), the time the worker read it (milliseconds,
//! little-endian i64), the length of its bytes (little-endian u32), then the
//! bytes themselves, whatever they are (NUL, invalid UTF-8, no newline). One
//! framing from the command's pipe to the store means the server keeps a
//! chunk as it came: it walks the headers once to check them and count the
//! output bytes, and never decodes, re-encodes or copies line by line (a
//! JSON object per line cost more than the rest of the log path together;
//! see bench/logs).
//!
//! A record holds one or more whole lines (each with its newline), or a
//! piece of a line without its newline (a line cut at
//! [`crate::api::MAX_LOG_LINE_BYTES`], or flushed unfinished after a
//! while). The worker makes one record of all the whole lines of one read
//! of a pipe, so they share the read's timestamp: one 13-byte header per
//! read rather than per line, which for 100-byte lines was an eighth of the
//! bytes and most of the worker's per-line work. Readers split a record into
//! lines only to show it ([`split_lines`]). Records from older workers, one
//! line each, are the same thing with one line.

use std::fmt;

use crate::{Millis, api::LogStream};

/// The media type of a chunk of framed lines on the wire.
pub const MEDIA_TYPE: &str = "application/octet-stream";

/// Bytes of framing per line: stream (1), time (8), length (4).
pub const LINE_HEADER: usize = 13;

/// A chunk goes once this many bytes of records wait (falconeri-worker),
/// so a chunk of its is at most this and one more record of at most
/// [`crate::api::MAX_LOG_LINE_BYTES`]. 1 MiB made two requests, two files
/// and two transactions of a datum printing just over 1 MiB (bench/logs).
pub const CHUNK_BYTES: usize = 2 * 1024 * 1024;

/// One line of a chunk: which stream, when the worker read it, its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLine {
    pub stream: LogStream,
    pub at: Millis,
    pub bytes: Vec<u8>,
}

/// A line as framed, borrowing its bytes from the chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramedLine<'a> {
    pub stream: LogStream,
    pub at: Millis,
    pub bytes: &'a [u8],
}

impl FramedLine<'_> {
    pub fn to_owned_line(self) -> StoredLine {
        StoredLine {
            stream: self.stream,
            at: self.at,
            bytes: self.bytes.to_vec(),
        }
    }
}

/// Why a chunk is not in this framing: which line, where it starts and what
/// is wrong, so a 400 can say exactly that.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    /// The line's index in the chunk, from 0.
    pub line: usize,
    /// The byte of the chunk where that line's header starts.
    pub offset: usize,
    pub problem: String,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {} (at byte {}): {}",
            self.line, self.offset, self.problem
        )
    }
}

impl std::error::Error for FrameError {}

fn stream_byte(stream: LogStream) -> u8 {
    match stream {
        LogStream::Stdout => 0,
        LogStream::Stderr => 1,
        LogStream::Worker => 2,
    }
}

/// Appends one line to a chunk. A line longer than 4 GiB (which no request
/// body can carry) keeps its first 4 GiB.
pub fn push_line(out: &mut Vec<u8>, stream: LogStream, at: Millis, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.reserve(LINE_HEADER + len as usize);
    out.push(stream_byte(stream));
    out.extend_from_slice(&at.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&bytes[..len as usize]);
}

/// The framing of some lines.
pub fn encode_lines(lines: &[StoredLine]) -> Vec<u8> {
    let mut data = Vec::with_capacity(lines.iter().map(|l| LINE_HEADER + l.bytes.len()).sum());
    for line in lines {
        push_line(&mut data, line.stream, line.at, &line.bytes);
    }
    data
}

/// The lines of a chunk, in order, each borrowing its bytes; the first
/// framing error ends the walk.
pub fn lines(data: &[u8]) -> Lines<'_> {
    Lines {
        data,
        offset: 0,
        line: 0,
        failed: false,
    }
}

/// See [`lines`].
#[derive(Debug, Clone)]
pub struct Lines<'a> {
    data: &'a [u8],
    offset: usize,
    line: usize,
    failed: bool,
}

impl<'a> Iterator for Lines<'a> {
    type Item = Result<FramedLine<'a>, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.offset >= self.data.len() {
            return None;
        }
        let rest = &self.data[self.offset..];
        let error = |problem: String| FrameError {
            line: self.line,
            offset: self.offset,
            problem,
        };
        let parsed = (|| {
            let Some((header, rest)) = rest.split_first_chunk::<LINE_HEADER>() else {
                return Err(error(format!(
                    "the header needs {LINE_HEADER} bytes, {} are left",
                    rest.len()
                )));
            };
            let stream = match header[0] {
                0 => LogStream::Stdout,
                1 => LogStream::Stderr,
                2 => LogStream::Worker,
                other => {
                    return Err(error(format!(
                        "stream byte {other} is none of 0 (stdout), 1 (stderr), 2 (worker)"
                    )));
                }
            };
            let mut at = [0u8; 8];
            at.copy_from_slice(&header[1..9]);
            let mut len = [0u8; 4];
            len.copy_from_slice(&header[9..13]);
            let len = u32::from_le_bytes(len);
            let Some(bytes) = usize::try_from(len).ok().and_then(|len| rest.get(..len)) else {
                return Err(error(format!(
                    "the line says it has {len} bytes, {} are left",
                    rest.len()
                )));
            };
            Ok(FramedLine {
                stream,
                at: Millis::from_le_bytes(at),
                bytes,
            })
        })();
        match &parsed {
            Ok(line) => {
                self.offset += LINE_HEADER + line.bytes.len();
                self.line += 1;
            }
            Err(_) => self.failed = true,
        }
        Some(parsed)
    }
}

/// What [`check`] found in a well-framed chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    pub lines: usize,
    /// The lines' bytes, without the framing: what the per-attempt cap
    /// counts.
    pub output_bytes: i64,
}

/// Checks that `data` is a whole number of well-framed records, without
/// copying any: the server's one pass over a chunk it stores.
pub fn check(data: &[u8]) -> Result<Summary, FrameError> {
    let mut checker = Checker::default();
    checker.feed(data)?;
    checker.finish()
}

/// [`check`] for a chunk that arrives in pieces (a request body streamed
/// to a file): the same checks and errors, one piece at a time, so the
/// server never needs the whole chunk in memory.
#[derive(Debug, Clone, Default)]
pub struct Checker {
    /// The header read so far of the record being read.
    header: [u8; LINE_HEADER],
    have: usize,
    /// The record's length, and how many of its bytes are still to come.
    length: u32,
    remaining: u64,
    /// Where the record being read starts, and its index.
    start: usize,
    line: usize,
    offset: usize,
    summary: Summary,
}

impl Checker {
    fn error(&self, problem: String) -> FrameError {
        FrameError {
            line: self.line,
            offset: self.start,
            problem,
        }
    }

    /// Takes the next piece of the chunk.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), FrameError> {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = data
                    .len()
                    .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                self.remaining -= n as u64;
                self.offset += n;
                data = &data[n..];
                if self.remaining == 0 {
                    self.next_record();
                }
                continue;
            }
            let n = data.len().min(LINE_HEADER - self.have);
            self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            self.offset += n;
            data = &data[n..];
            if self.have < LINE_HEADER {
                continue;
            }
            if self.header[0] > 2 {
                return Err(self.error(format!(
                    "stream byte {} is none of 0 (stdout), 1 (stderr), 2 (worker)",
                    self.header[0]
                )));
            }
            let mut length = [0u8; 4];
            length.copy_from_slice(&self.header[9..13]);
            self.length = u32::from_le_bytes(length);
            self.remaining = u64::from(self.length);
            self.summary.lines += 1;
            self.summary.output_bytes = self
                .summary
                .output_bytes
                .saturating_add(i64::from(self.length));
            if self.remaining == 0 {
                self.next_record();
            }
        }
        Ok(())
    }

    fn next_record(&mut self) {
        self.have = 0;
        self.line += 1;
        self.start = self.offset;
    }

    /// The chunk's summary, or what is wrong with its end.
    pub fn finish(self) -> Result<Summary, FrameError> {
        if self.remaining > 0 {
            let left = u64::from(self.length) - self.remaining;
            return Err(self.error(format!(
                "the line says it has {} bytes, {left} are left",
                self.length
            )));
        }
        if self.have > 0 {
            return Err(self.error(format!(
                "the header needs {LINE_HEADER} bytes, {} are left",
                self.have
            )));
        }
        Ok(self.summary)
    }
}

/// The lines of a record's bytes, each with its newline; a last piece
/// without one comes last as it is. No bytes, no lines.
pub fn split_lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = memchr::memchr(b'\n', rest).map_or(rest.len(), |newline| newline + 1);
        let (line, after) = rest.split_at(end);
        rest = after;
        Some(line)
    })
}

/// The records of a chunk, copied out.
pub fn decode_lines(data: &[u8]) -> Result<Vec<StoredLine>, FrameError> {
    lines(data)
        .map(|line| line.map(FramedLine::to_owned_line))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(stream: LogStream, at: Millis, bytes: &[u8]) -> StoredLine {
        StoredLine {
            stream,
            at,
            bytes: bytes.to_vec(),
        }
    }

    #[test]
    fn chunks_round_trip_any_bytes() {
        let lines = vec![
            line(LogStream::Stdout, 1, b"hello\n"),
            line(LogStream::Stderr, -5, b"\0\xff\xfe"),
            line(LogStream::Worker, i64::MAX, b""),
            line(LogStream::Stdout, 7, &vec![b'x'; 200_000]),
        ];
        let data = encode_lines(&lines);
        assert_eq!(decode_lines(&data).unwrap(), lines);
        assert_eq!(
            check(&data).unwrap(),
            Summary {
                lines: 4,
                output_bytes: 6 + 3 + 200_000,
            }
        );
        assert_eq!(decode_lines(&[]).unwrap(), vec![]);
        assert_eq!(check(&[]).unwrap(), Summary::default());
    }

    /// Fed in pieces of any size, the checker finds what `check` finds.
    #[test]
    fn a_chunk_checked_in_pieces_is_checked_alike() {
        let mut data = encode_lines(&[
            line(LogStream::Stdout, 1, b"one\ntwo\n"),
            line(LogStream::Worker, 2, b""),
            line(LogStream::Stderr, 3, &[b'x'; 300]),
        ]);
        let whole = check(&data);
        assert_eq!(whole.clone().unwrap().output_bytes, 308);
        let mut variants = vec![
            data.clone(),
            data[..data.len() - 1].to_vec(),
            data[..20].to_vec(),
        ];
        data[LINE_HEADER + 8] = 7;
        variants.push(data);
        for variant in variants {
            let expected = check(&variant);
            for piece in [1, 2, 5, 13, 64] {
                let mut checker = Checker::default();
                let fed = variant
                    .chunks(piece)
                    .try_for_each(|chunk| checker.feed(chunk));
                let got = fed.and_then(|()| checker.finish());
                assert_eq!(got, expected, "pieces of {piece}");
            }
        }
    }

    #[test]
    fn records_split_into_lines_for_display() {
        fn split(bytes: &[u8]) -> Vec<&[u8]> {
            split_lines(bytes).collect()
        }
        assert_eq!(split(b""), Vec::<&[u8]>::new());
        assert_eq!(split(b"a\n"), vec![&b"a\n"[..]]);
        assert_eq!(
            split(b"a\n\nb\0\xff\npiece"),
            vec![&b"a\n"[..], b"\n", b"b\0\xff\n", b"piece"]
        );
    }

    #[test]
    fn damaged_chunks_are_errors_naming_the_line() {
        let mut data = encode_lines(&[line(LogStream::Stdout, 1, b"hello")]);
        let first = data.len();
        push_line(&mut data, LogStream::Stderr, 2, b"world");

        let short = check(&data[..data.len() - 1]).unwrap_err();
        assert_eq!((short.line, short.offset), (1, first));
        assert!(
            short
                .to_string()
                .contains("says it has 5 bytes, 4 are left"),
            "{short}"
        );

        let header = check(&data[..first + 5]).unwrap_err();
        assert!(header.problem.contains("needs 13 bytes, 5"), "{header}");

        let mut bad_stream = data.clone();
        bad_stream[first] = 9;
        let err = check(&bad_stream).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "line 1 (at byte {first}): stream byte 9 is none of 0 (stdout), 1 (stderr), 2 (worker)"
            )
        );
        // The walk stops at the first error.
        assert_eq!(lines(&bad_stream).count(), 2);
    }
}
