//! Where the bytes of attempt logs' chunks are kept (`--logs-location`):
//! files under a directory, or the `log_chunks` rows themselves.
//!
//! Why files: in SQLite every stored byte is written twice, once to the
//! write-ahead log and again into the database file at a checkpoint (with an
//! fsync), which made a job printing 1 MiB per datum about twice as slow as
//! one whose output is discarded (bench/logs). A file is written once and
//! never rewritten; the row keeps only its name and the offsets readers and
//! the cap need. The order keeps the database honest without holding a
//! transaction over file I/O: a chunk's file is written before its row is
//! inserted (a reader finds a row only once its file is whole), and the
//! files of chunks the cap cuts are deleted after the delete of their rows
//! commits (a reader that still had the row finds the file gone and treats
//! the chunk as cut). Every write gets a name of its own (the chunk's
//! number and a random part), so a resend, a refused claim or a failed
//! transaction deletes exactly the file it wrote and never one a committed
//! row names.
//!
//! Defaults: a directory `attempt-logs` beside a SQLite database (the
//! embedded default keeps it in its home, beside `falconeri.sqlite3`); the
//! database with PostgreSQL, whose replicas share a database but not a disk
//! (a directory works there only if it is shared by every replica, and then
//! must be named). Object stores (`s3://`, `gs://`) are not taken yet.
//!
//! Files are not fsynced, like the SQLite commits of the embedded default
//! (`synchronous = NORMAL`): a power loss may lose the last chunks, which
//! readers then report as cut. Files of a chunk whose row never committed
//! (falconerid died between the write and the commit) stay behind unnamed;
//! see ARCHITECTURE.md, "Known gaps".

use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use axum::body::Bytes;

/// The name of the directory beside a SQLite database that holds its logs
/// by default.
pub const DEFAULT_DIR: &str = "attempt-logs";

/// Where chunk bytes go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogStore {
    /// In `log_chunks.data`.
    Database,
    /// One file per chunk under this directory.
    Directory(PathBuf),
}

impl LogStore {
    /// The store `location` names (`database`, a path, or a `file://`
    /// URL), or the default for `database_url` when there is none.
    pub fn new(location: Option<&str>, database_url: &str) -> Result<LogStore> {
        match location.map(str::trim) {
            None | Some("") => Ok(LogStore::default_for(database_url)),
            Some("database") => Ok(LogStore::Database),
            Some(location) => {
                if let Some(path) = location.strip_prefix("file://") {
                    if path.is_empty() {
                        bail!("--logs-location {location:?} names no directory");
                    }
                    Ok(LogStore::Directory(PathBuf::from(path)))
                } else if location.contains("://") {
                    bail!(
                        "--logs-location {location:?}: logs can be kept in a directory (a path \
                         or a file:// URL) or in the database (`database`), not in an object \
                         store yet"
                    );
                } else {
                    Ok(LogStore::Directory(PathBuf::from(location)))
                }
            }
        }
    }

    /// A directory beside a SQLite database; the database otherwise.
    fn default_for(database_url: &str) -> LogStore {
        let sqlite = database_url
            .strip_prefix("sqlite://")
            .or_else(|| database_url.strip_prefix("sqlite:"));
        match sqlite {
            Some(path) if !path.is_empty() && !path.starts_with(":memory:") => {
                let dir = Path::new(path).parent().unwrap_or(Path::new(""));
                LogStore::Directory(dir.join(DEFAULT_DIR))
            }
            _ => LogStore::Database,
        }
    }

    /// Writes a chunk's bytes as a new file and returns its name, or None
    /// when the database keeps them (the caller puts them in the row).
    pub async fn write(
        &self,
        datum_id: i64,
        attempt: i32,
        seq: i64,
        data: Bytes,
    ) -> Result<Option<String>> {
        let Some(mut writer) = self.create(datum_id, attempt, seq) else {
            return Ok(None);
        };
        writer.push(data);
        match writer.flush().await {
            Ok(()) => Ok(Some(writer.name)),
            Err(err) => {
                self.delete(vec![writer.name]).await;
                Err(err)
            }
        }
    }

    /// A new chunk file, to be written piece by piece as its request body
    /// arrives; None when the database keeps the bytes. The file itself is
    /// made by the first write, in the same blocking call.
    pub fn create(&self, datum_id: i64, attempt: i32, seq: i64) -> Option<ChunkWriter> {
        let LogStore::Directory(root) = self else {
            return None;
        };
        // Datums grouped by the thousand, one directory per group, so no
        // directory holds millions and a new datum costs no directory of
        // its own (an inode more per chunk of a short log: creating inodes
        // was a good part of what files cost the server in bench/logs).
        let name = format!(
            "{}/{datum_id}.{attempt}.{seq}.{:016x}",
            datum_id / 1000,
            rand::random::<u64>()
        );
        let path = root.join(&name);
        Some(ChunkWriter {
            name,
            file: ChunkFile::NotYet(path),
            pending: Vec::new(),
            pending_bytes: 0,
        })
    }

    /// A chunk's bytes, or None if its file is gone (the cap cut it after
    /// its row was read, or a crash lost it).
    pub async fn read(&self, object: &str) -> Result<Option<Vec<u8>>> {
        let path = self.path_of(object)?;
        match tokio::fs::read(&path).await {
            Ok(data) => Ok(Some(data)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Deletes chunks' files; one already gone is fine, and one that cannot
    /// be deleted is logged and left (its row is gone, nothing reads it).
    pub async fn delete(&self, objects: Vec<String>) {
        if objects.is_empty() {
            return;
        }
        let paths: Vec<PathBuf> = objects
            .iter()
            .filter_map(|object| match self.path_of(object) {
                Ok(path) => Some(path),
                Err(err) => {
                    tracing::warn!(error = %err, "not deleting a log chunk");
                    None
                }
            })
            .collect();
        let deleted = tokio::task::spawn_blocking(move || {
            for path in paths {
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                    Err(err) => {
                        tracing::warn!(path = %path.display(), %err, "cannot delete a log chunk");
                    }
                }
            }
        })
        .await;
        if let Err(err) = deleted {
            tracing::warn!(%err, "the log chunk deleter stopped");
        }
    }

    /// The file of an object name from a row: relative, without `..`.
    fn path_of(&self, object: &str) -> Result<PathBuf> {
        let LogStore::Directory(root) = self else {
            bail!("log chunk {object:?} is a file, but --logs-location is `database`");
        };
        let relative = falconeri_common::storage::checked_relative(object)
            .with_context(|| format!("log chunk {object:?} has a bad name"))?;
        Ok(root.join(relative))
    }
}

/// A chunk's file being written: pieces gather and go to the file a
/// whole chunk of falconeri-worker's at a time, in one blocking call that
/// also creates the file (one hand-off to a blocking thread per chunk, not
/// one to create it and more to write it), and are dropped once written;
/// so the server holds at most about one chunk per request, as it does
/// when the database keeps the bytes, and copies it once (into the file).
#[derive(Debug)]
pub struct ChunkWriter {
    /// The object's name under the logs location.
    pub name: String,
    file: ChunkFile,
    pending: Vec<Bytes>,
    pending_bytes: usize,
}

#[derive(Debug)]
enum ChunkFile {
    /// Not made yet: made by the first write.
    NotYet(PathBuf),
    Open(std::fs::File),
    /// A write failed; the file is deleted by the caller.
    Failed,
}

/// How much a [`ChunkWriter`] gathers before it writes: a whole chunk as
/// falconeri-worker sends them (see [`log_frame::CHUNK_BYTES`]).
const WRITE_BATCH: usize =
    falconeri_common::log_frame::CHUNK_BYTES + falconeri_common::api::MAX_LOG_LINE_BYTES;

impl ChunkWriter {
    /// Takes the next piece; true when enough waits to be worth a write
    /// ([`ChunkWriter::flush`]).
    pub fn push(&mut self, piece: Bytes) -> bool {
        self.pending_bytes += piece.len();
        self.pending.push(piece);
        self.pending_bytes >= WRITE_BATCH
    }

    /// Writes what waits, making the file first if it is not made yet
    /// (even with nothing to write: an empty chunk is an empty file).
    pub async fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() && matches!(self.file, ChunkFile::Open(_)) {
            return Ok(());
        }
        let file = std::mem::replace(&mut self.file, ChunkFile::Failed);
        let pending = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        let written = tokio::task::spawn_blocking(move || -> Result<std::fs::File> {
            let mut file = match file {
                ChunkFile::Open(file) => file,
                ChunkFile::NotYet(path) => create_new(&path)?,
                ChunkFile::Failed => bail!("an earlier write failed"),
            };
            for piece in &pending {
                file.write_all(piece)?;
            }
            Ok(file)
        })
        .await
        .context("the log writer stopped")?
        .with_context(|| format!("cannot write log chunk {:?}", self.name))?;
        self.file = ChunkFile::Open(written);
        Ok(())
    }
}

/// Creates the file at `path` (which must not exist), and its group's
/// directory when that is missing.
fn create_new(path: &Path) -> Result<std::fs::File> {
    let create = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
    };
    match create() {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
            create()
        }
        other => other,
    }
    .with_context(|| format!("cannot create {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_and_defaults() {
        let store = |location: Option<&str>, db: &str| LogStore::new(location, db);
        assert_eq!(
            store(None, "sqlite:///home/me/.falconeri/falconeri.sqlite3").unwrap(),
            LogStore::Directory(PathBuf::from("/home/me/.falconeri/attempt-logs"))
        );
        assert_eq!(
            store(None, "postgres://u:p@db/falconeri").unwrap(),
            LogStore::Database
        );
        assert_eq!(
            store(Some("database"), "sqlite:///x/y.db").unwrap(),
            LogStore::Database
        );
        assert_eq!(
            store(Some("file:///srv/logs"), "postgres://db").unwrap(),
            LogStore::Directory(PathBuf::from("/srv/logs"))
        );
        assert_eq!(
            store(Some("logs"), "postgres://db").unwrap(),
            LogStore::Directory(PathBuf::from("logs"))
        );
        let err = store(Some("s3://bucket/logs"), "postgres://db").unwrap_err();
        assert!(err.to_string().contains("not in an object store"), "{err}");
    }

    /// A chunk's file is made by its first write, with everything that
    /// waited, so a whole chunk is one blocking call; an empty chunk is an
    /// empty file, not a missing one (which readers take for a cut).
    #[tokio::test]
    async fn a_chunk_file_is_made_by_its_first_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::Directory(dir.path().to_owned());
        let mut writer = store.create(7, 1, 0).unwrap();
        let path = dir.path().join(&writer.name);
        assert!(!writer.push(Bytes::from_static(b"ab")));
        assert!(!writer.push(Bytes::from_static(b"cd")));
        assert!(!path.exists());
        writer.flush().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"abcd");
        // A whole chunk of the worker's waits before a write.
        assert!(writer.push(Bytes::from(vec![b'x'; WRITE_BATCH])));
        writer.flush().await.unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            4 + WRITE_BATCH as u64
        );

        let mut empty = store.create(7, 1, 1).unwrap();
        empty.flush().await.unwrap();
        assert_eq!(store.read(&empty.name).await.unwrap().unwrap(), b"");
    }

    #[tokio::test]
    async fn files_are_written_once_read_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::Directory(dir.path().to_owned());
        let a = store
            .write(1234, 1, 0, Bytes::from_static(b"\0\xff"))
            .await
            .unwrap()
            .unwrap();
        let b = store
            .write(1234, 1, 0, Bytes::from_static(b"again"))
            .await
            .unwrap()
            .unwrap();
        // Two writes of one chunk number are two files.
        assert_ne!(a, b);
        assert!(a.starts_with("1/1234.1.0."), "{a}");
        assert_eq!(store.read(&a).await.unwrap().unwrap(), b"\0\xff");
        store.delete(vec![a.clone()]).await;
        assert_eq!(store.read(&a).await.unwrap(), None);
        assert!(store.read("../escape").await.is_err());
        assert_eq!(
            LogStore::Database
                .write(1, 1, 0, Bytes::new())
                .await
                .unwrap(),
            None
        );
    }
}
