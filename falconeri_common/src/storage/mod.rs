//! Object storage, chosen by URI scheme: list inputs, download them into a
//! datum's directory, upload its outputs.
//!
//! Backends stream: no object is ever held in memory whole. The helpers here,
//! not the backends, decide where local files go, and they refuse any path
//! that would land outside the datum's directory (`..`, absolute components,
//! symlinks pointing elsewhere). On the server side, publishing a staged
//! output into a `file://` egress never follows a symbolic link beneath the
//! egress, nor publishes one ([`Storage::publish`]).

mod file;
mod gcs;
mod object;
mod s3;

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context, Result, anyhow, bail};
use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt, stream::BoxStream};

use crate::{
    api::{InputFileResponse, NewOutputFile},
    plan::ObjectInfo,
};

pub use file::FileStorage;
pub use gcs::GcsStorage;
pub use object::Tuning;
pub use s3::S3Storage;

/// One storage backend.
#[async_trait]
pub trait Storage: Send + Sync + fmt::Debug {
    /// Every object under `uri` (a directory or key prefix), recursively,
    /// sorted by relative path. A `uri` naming one object lists just it.
    /// Collects [`Storage::list_pages`], so both are one code path.
    async fn list(&self, uri: &str) -> Result<Vec<ObjectInfo>> {
        let mut objects = Vec::new();
        let mut pages = self.list_pages(uri);
        while let Some(page) = pages.try_next().await? {
            objects.extend(page);
        }
        Ok(objects)
    }

    /// The same listing as [`Storage::list`], page by page as the store
    /// returns it, so a caller can plan and insert datums while later pages
    /// are fetched. Every page is sorted by relative path, and every path of
    /// a page sorts after every path of the pages before it (byte order).
    ///
    /// No page is empty; an empty listing yields no page at all. Memory is
    /// bounded by a page (1,000 objects on every backend), however many
    /// objects the prefix holds, as long as the caller does not keep them.
    fn list_pages<'a>(&'a self, uri: &'a str) -> BoxStream<'a, Result<Vec<ObjectInfo>>> {
        self.list_pages_from(uri, "")
    }

    /// The part of [`Storage::list_pages`] whose relative paths start with
    /// `start` (a glob's literal prefix, such as `2024-` or `logs/2024/`),
    /// asking the store for that much only: a key prefix on S3 and GCS, one
    /// directory's matching entries on `file://`. Relative paths stay
    /// relative to `uri`, which is taken as a directory when `start` is not
    /// empty; nothing starting with `start` is an empty listing.
    fn list_pages_from<'a>(
        &'a self,
        uri: &'a str,
        start: &'a str,
    ) -> BoxStream<'a, Result<Vec<ObjectInfo>>>;

    /// Streams the object at `uri` into the new file `dest`, returning its size.
    /// `dest`'s directory exists and has been checked by the caller.
    async fn download(&self, uri: &str, dest: &Path) -> Result<u64>;

    /// Streams the local file `src` to `uri`, returning its size. Readers of
    /// `uri` never see a partial object.
    async fn upload(&self, src: &Path, uri: &str) -> Result<u64>;

    /// Moves the object `from` to `to` in the same store, replacing `to`.
    async fn rename(&self, from: &str, to: &str) -> Result<()>;

    /// Whether an object exists at `uri`.
    async fn exists(&self, uri: &str) -> Result<bool>;

    /// Moves the staged output `relative` from the prefix `staging` to the
    /// prefix `egress` (both end in `/`; `staging` lies beneath `egress`).
    /// Idempotent: an output an earlier, partly failed call already moved
    /// is left where it is.
    ///
    /// The default suits object stores, which have no links: a key is a
    /// key, so nothing can divert a copy elsewhere, and `rename` is all it
    /// takes. The `file://` backend overrides it to resolve both paths
    /// beneath the egress without following symbolic links.
    async fn publish(&self, staging: &str, egress: &str, relative: &str) -> Result<()> {
        let from = format!("{staging}{relative}");
        let to = format!("{egress}{relative}");
        // Rename first and ask questions only if that fails: one request
        // less per file than checking first, on stores where every request
        // is a round trip.
        if let Err(err) = self.rename(&from, &to).await {
            if self.exists(&from).await? {
                return Err(err.context(format!("cannot publish {from} to {to}")));
            }
            // Moved by an earlier, partly failed call.
            if !self.exists(&to).await? {
                bail!("output {relative:?} was not uploaded to {staging}");
            }
        }
        Ok(())
    }

    /// Deletes everything under the prefix `uri`; nothing there is fine.
    async fn delete_prefix(&self, uri: &str) -> Result<()>;
}

/// The name of the hidden folder under an egress where attempts stage
/// their outputs. Listings skip it, so an egress can be another job's input.
pub const STAGING_DIR: &str = ".falconeri-staging";

/// Where the attempts of a job stage outputs: `<egress>/.falconeri-staging/job-<id>/`.
pub fn job_staging_uri(egress_uri: &str, job_id: i64) -> String {
    format!("{}{STAGING_DIR}/job-{job_id}/", as_prefix(egress_uri))
}

/// Where one attempt stages its outputs.
pub fn attempt_staging_uri(egress_uri: &str, job_id: i64, datum_id: i64, attempt: i32) -> String {
    format!(
        "{}datum-{datum_id}-attempt-{attempt}/",
        job_staging_uri(egress_uri, job_id)
    )
}

/// Moves staged outputs to the egress and returns their final URIs.
/// Idempotent for one attempt: a file already moved by an earlier, partly
/// failed call is left where it is. The caller moved the datum to
/// `publishing` under the attempt's claim, so no other attempt publishes
/// these paths; a second publisher of the same attempt (the babysitter,
/// after the publishing lease ran out) is harmless, since moving is
/// idempotent. No database transaction is open while this runs.
#[tracing::instrument(level = "debug", skip(files))]
pub async fn publish_outputs(
    staging_uri: &str,
    egress_uri: &str,
    files: &[NewOutputFile],
) -> Result<Vec<String>> {
    let storage = storage_for(egress_uri)?;
    let staging = as_prefix(staging_uri);
    let egress = as_prefix(egress_uri);
    // Several at once: on an object store a rename is a copy and a delete.
    // Owned values only in the stream, so callers can spawn its future.
    let paths: Vec<String> = files.iter().map(|file| file.path.clone()).collect();
    futures::stream::iter(paths)
        .map(|path: String| {
            let storage = storage.clone();
            let to = format!("{egress}{path}");
            let (staging, egress) = (staging.clone(), egress.clone());
            async move {
                checked_relative(&path)?;
                storage.publish(&staging, &egress, &path).await?;
                Ok(to)
            }
        })
        .buffered(Tuning::default().file_concurrency)
        .try_collect()
        .await
}

/// The URI schemes a spec may use.
pub const SUPPORTED_SCHEMES: &[&str] = &["file", "s3", "gs"];

/// The backend for `uri`.
pub fn storage_for(uri: &str) -> Result<Arc<dyn Storage>> {
    match scheme(uri) {
        Some("file") => Ok(Arc::new(FileStorage)),
        Some("s3") => Ok(Arc::new(S3Storage::default())),
        Some("gs") => Ok(Arc::new(GcsStorage::default())),
        Some(other) => bail!("unsupported storage scheme {other:?} in {uri:?}"),
        None => bail!("{uri:?} is not a URI (expected file://, s3:// or gs://)"),
    }
}

/// The scheme of `uri`, such as `s3`.
pub fn scheme(uri: &str) -> Option<&str> {
    uri.split_once("://").map(|(scheme, _)| scheme)
}

/// Whether a listed relative path is something falconeri wrote for itself,
/// not an input: outputs staged by running attempts, and the hidden
/// temporary files of a `file://` upload in progress.
pub(crate) fn is_hidden(relative: &str) -> bool {
    (relative.contains(".falconeri-") && relative.ends_with(".tmp"))
        || relative.split('/').any(|part| part == STAGING_DIR)
}

/// `base` with a trailing slash, so relative keys can be appended.
pub fn as_prefix(base: &str) -> String {
    if base.ends_with('/') {
        base.to_owned()
    } else {
        format!("{base}/")
    }
}

/// Checks that `relative` is a plain relative path (no `..`, `.`, root or
/// prefix components, no empty or NUL-containing parts) and returns it as a
/// path.
pub fn checked_relative(relative: &str) -> Result<PathBuf> {
    if relative.is_empty() || relative.contains('\0') || relative.contains('\\') {
        bail!("unsafe path {relative:?}");
    }
    // Check the raw parts: `Path::components` would quietly drop a `.`.
    let mut out = PathBuf::new();
    for part in relative.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            bail!("unsafe path {relative:?}: only plain relative paths are allowed");
        }
        out.push(part);
    }
    Ok(out)
}

/// Where `relative` lives under `root`, creating its parent directories and
/// making sure none of them leads outside `root` through a symlink.
pub async fn prepare_local_path(root: &Path, relative: &str) -> Result<PathBuf> {
    let relative_path = checked_relative(relative)?;
    let dest = root.join(&relative_path);
    let parent = dest
        .parent()
        .ok_or_else(|| anyhow!("unsafe path {relative:?}"))?;
    tokio::fs::create_dir_all(parent)
        .await
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let real_root = tokio::fs::canonicalize(root)
        .await
        .with_context(|| format!("cannot resolve {}", root.display()))?;
    let real_parent = tokio::fs::canonicalize(parent)
        .await
        .with_context(|| format!("cannot resolve {}", parent.display()))?;
    if !real_parent.starts_with(&real_root) {
        bail!(
            "refusing {relative:?}: it would be written outside {}",
            root.display()
        );
    }
    if let Ok(meta) = tokio::fs::symlink_metadata(&dest).await
        && (meta.file_type().is_symlink() || meta.is_dir())
    {
        bail!("refusing {relative:?}: a link or directory is already there");
    }
    Ok(dest)
}

/// Downloads a datum's input files into `pfs`, each to its `local_path`,
/// several at once (`Tuning::file_concurrency`). Returns the number of bytes
/// fetched. The first failure fails the whole download.
#[tracing::instrument(level = "debug", skip(files))]
pub async fn download_inputs(files: &[InputFileResponse], pfs: &Path) -> Result<u64> {
    let concurrency = Tuning::default().file_concurrency;
    let sizes: Vec<u64> = futures::stream::iter(files)
        .map(|file| async move {
            let dest = prepare_local_path(pfs, &file.local_path).await?;
            let storage = storage_for(&file.uri)?;
            storage
                .download(&file.uri, &dest)
                .await
                .with_context(|| format!("cannot download {}", file.uri))
        })
        .buffer_unordered(concurrency)
        .try_collect()
        .await?;
    Ok(sizes.iter().sum())
}

/// Uploads every file under `out_dir` to the prefix `staging_uri`, keeping
/// relative paths, several at once. Symlinks are followed only when they
/// stay inside `work_root`. Any file that cannot be read or uploaded fails
/// the whole upload: outputs are never silently incomplete.
#[tracing::instrument(level = "debug")]
pub async fn upload_outputs(
    out_dir: &Path,
    work_root: &Path,
    staging_uri: &str,
) -> Result<Vec<NewOutputFile>> {
    let files = collect_outputs(out_dir, work_root).await?;
    let storage = storage_for(staging_uri)?;
    let prefix = as_prefix(staging_uri);
    let concurrency = Tuning::default().file_concurrency;
    futures::stream::iter(files)
        .map(|(relative, path)| {
            let storage = storage.clone();
            let uri = format!("{prefix}{relative}");
            async move {
                let size = storage
                    .upload(&path, &uri)
                    .await
                    .with_context(|| format!("cannot upload {} to {uri}", path.display()))?;
                anyhow::Ok(NewOutputFile {
                    path: relative,
                    size: i64::try_from(size).unwrap_or(i64::MAX),
                })
            }
        })
        // In order, so the output records come out sorted by path.
        .buffered(concurrency)
        .try_collect()
        .await
}

/// The files under `out_dir` as (relative key, local path to read), checked.
async fn collect_outputs(out_dir: &Path, work_root: &Path) -> Result<Vec<(String, PathBuf)>> {
    let out_dir = out_dir.to_owned();
    let work_root = work_root.to_owned();
    tokio::task::spawn_blocking(move || {
        let real_root = std::fs::canonicalize(&work_root)
            .with_context(|| format!("cannot resolve {}", work_root.display()))?;
        let mut files = Vec::new();
        if !out_dir.exists() {
            return Ok(files);
        }
        for entry in walkdir::WalkDir::new(&out_dir)
            .follow_links(false)
            .sort_by_file_name()
        {
            let entry = entry.with_context(|| format!("cannot read {}", out_dir.display()))?;
            let file_type = entry.file_type();
            if file_type.is_dir() {
                continue;
            }
            let relative = entry
                .path()
                .strip_prefix(&out_dir)
                .context("output outside its directory")?;
            let key = relative
                .to_str()
                .ok_or_else(|| anyhow!("output name {relative:?} is not UTF-8"))?
                .to_owned();
            checked_relative(&key)?;
            let path = if file_type.is_symlink() {
                let target = std::fs::canonicalize(entry.path())
                    .with_context(|| format!("output {key:?} is a broken symlink"))?;
                if !target.starts_with(&real_root) {
                    bail!(
                        "refusing output {key:?}: it links to {} outside the work directory",
                        target.display()
                    );
                }
                if !target.is_file() {
                    bail!("refusing output {key:?}: it links to something that is not a file");
                }
                target
            } else if file_type.is_file() {
                entry.path().to_owned()
            } else {
                bail!("refusing output {key:?}: not a regular file");
            };
            files.push((key, path));
        }
        Ok(files)
    })
    .await
    .context("output scan panicked")?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_checked() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/./b",
            "a//b",
            "a\\b",
            "a/\0",
        ] {
            assert!(checked_relative(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(
            checked_relative("a/b.txt").unwrap(),
            PathBuf::from("a/b.txt")
        );
    }

    #[test]
    fn schemes() {
        assert_eq!(scheme("s3://b/k"), Some("s3"));
        assert_eq!(scheme("nope"), None);
        assert!(storage_for("file:///tmp").is_ok());
        assert!(storage_for("http://x/y").is_err());
        assert_eq!(as_prefix("file:///a"), "file:///a/");
        assert_eq!(as_prefix("file:///a/"), "file:///a/");
    }

    #[tokio::test]
    async fn local_paths_stay_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("pfs");
        std::fs::create_dir(&root).unwrap();
        let ok = prepare_local_path(&root, "books/a/b.txt").await.unwrap();
        assert!(ok.starts_with(&root));
        assert!(root.join("books/a").is_dir());

        // A symlinked directory that points outside is refused.
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("evil")).unwrap();
        let err = prepare_local_path(&root, "evil/x.txt").await.unwrap_err();
        assert!(err.to_string().contains("outside"), "{err}");
        assert!(prepare_local_path(&root, "../x").await.is_err());
    }

    #[tokio::test]
    async fn outputs_round_trip_and_escaping_links_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        let out = work.join("pfs/out");
        std::fs::create_dir_all(out.join("sub")).unwrap();
        std::fs::write(out.join("a.txt"), "hello").unwrap();
        std::fs::write(out.join("sub/b.txt"), "world!").unwrap();
        let egress = dir.path().join("egress");
        let egress_uri = format!("file://{}", egress.display());

        let staging = attempt_staging_uri(&egress_uri, 1, 2, 3);
        let uploaded = upload_outputs(&out, &work, &staging).await.unwrap();
        assert_eq!(uploaded.len(), 2);
        assert_eq!(uploaded[0].path, "a.txt");
        assert_eq!(uploaded[1].size, 6);
        // Nothing reaches the egress until it is published.
        assert!(!egress.join("sub/b.txt").exists());
        let published = publish_outputs(&staging, &egress_uri, &uploaded)
            .await
            .unwrap();
        assert_eq!(published[0], format!("{egress_uri}/a.txt"));
        assert_eq!(
            std::fs::read_to_string(egress.join("sub/b.txt")).unwrap(),
            "world!"
        );
        // Publishing again (a retried request) is harmless.
        publish_outputs(&staging, &egress_uri, &uploaded)
            .await
            .unwrap();
        let missing = [NewOutputFile {
            path: "never.txt".into(),
            size: 0,
        }];
        assert!(
            publish_outputs(&staging, &egress_uri, &missing)
                .await
                .is_err()
        );
        FileStorage
            .delete_prefix(&job_staging_uri(&egress_uri, 1))
            .await
            .unwrap();
        assert!(!egress.join(STAGING_DIR).join("job-1").exists());

        let secret = dir.path().join("secret.txt");
        std::fs::write(&secret, "secret").unwrap();
        std::os::unix::fs::symlink(&secret, out.join("leak.txt")).unwrap();
        let err = upload_outputs(&out, &work, &staging).await.unwrap_err();
        assert!(
            format!("{err:#}").contains("outside the work directory"),
            "{err:#}"
        );
    }

    #[tokio::test]
    async fn inputs_are_downloaded_to_their_local_paths() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("d")).unwrap();
        std::fs::write(src.join("d/x.txt"), "x").unwrap();
        let pfs = dir.path().join("pfs");
        std::fs::create_dir(&pfs).unwrap();
        let files = vec![InputFileResponse {
            uri: format!("file://{}/d/x.txt", src.display()),
            local_path: "repo/d/x.txt".to_owned(),
        }];
        assert_eq!(download_inputs(&files, &pfs).await.unwrap(), 1);
        assert_eq!(
            std::fs::read_to_string(pfs.join("repo/d/x.txt")).unwrap(),
            "x"
        );

        let evil = vec![InputFileResponse {
            uri: files[0].uri.clone(),
            local_path: "../escape.txt".to_owned(),
        }];
        assert!(download_inputs(&evil, &pfs).await.is_err());
        assert!(!dir.path().join("escape.txt").exists());
    }
}
