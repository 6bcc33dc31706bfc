//! `file://` storage: a directory on this machine, for the embedded default
//! and for tests. URIs are `file:///absolute/path`.

use std::{
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, anyhow, bail};
use async_trait::async_trait;
use futures::{StreamExt, stream::BoxStream};
use tokio::io::AsyncWriteExt;

use super::Storage;
use crate::plan::ObjectInfo;

/// Files in the local file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct FileStorage;

/// The absolute path named by a `file://` URI.
pub fn file_uri_path(uri: &str) -> Result<PathBuf> {
    let path = uri
        .strip_prefix("file://")
        .ok_or_else(|| anyhow!("{uri:?} is not a file:// URI"))?;
    if !path.starts_with('/') {
        bail!("{uri:?} must name an absolute path (file:///...)");
    }
    Ok(PathBuf::from(path))
}

#[async_trait]
impl Storage for FileStorage {
    fn list_pages<'a>(&'a self, uri: &'a str) -> BoxStream<'a, Result<Vec<ObjectInfo>>> {
        list_pages_of(uri, PAGE_SIZE)
    }

    async fn download(&self, uri: &str, dest: &Path) -> Result<u64> {
        let src = file_uri_path(uri)?;
        let mut reader = tokio::fs::File::open(&src)
            .await
            .with_context(|| format!("cannot open {}", src.display()))?;
        // O_NOFOLLOW: the caller checked the directory; this refuses a symlink
        // planted at the final name between the check and the write.
        let mut writer = tokio::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dest)
            .await
            .with_context(|| format!("cannot create {}", dest.display()))?;
        // No fsync: inputs are a scratch copy; after a crash the datum runs
        // again and downloads them again.
        let size = tokio::io::copy(&mut reader, &mut writer).await?;
        writer.flush().await?;
        Ok(size)
    }

    async fn upload(&self, src: &Path, uri: &str) -> Result<u64> {
        let dest = file_uri_path(uri)?;
        create_parent(&dest).await?;
        let parent = dest
            .parent()
            .ok_or_else(|| anyhow!("{uri:?} has no parent directory"))?;
        // Write beside the destination and rename, so nobody sees half a file.
        let file_name = dest
            .file_name()
            .ok_or_else(|| anyhow!("{uri:?} names no file"))?
            .to_string_lossy()
            .into_owned();
        let tmp = parent.join(format!(
            ".{file_name}.falconeri-{}.tmp",
            hex::encode(rand::random::<[u8; 6]>())
        ));
        let result = async {
            let mut reader = tokio::fs::File::open(src)
                .await
                .with_context(|| format!("cannot open {}", src.display()))?;
            let mut writer = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .await
                .with_context(|| format!("cannot create {}", tmp.display()))?;
            let size = tokio::io::copy(&mut reader, &mut writer).await?;
            writer.sync_all().await?;
            tokio::fs::rename(&tmp, &dest)
                .await
                .with_context(|| format!("cannot move output into {}", dest.display()))?;
            anyhow::Ok(size)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }

    async fn rename(&self, from: &str, to: &str) -> Result<()> {
        let from = file_uri_path(from)?;
        let to = file_uri_path(to)?;
        create_parent(&to).await?;
        tokio::fs::rename(&from, &to)
            .await
            .with_context(|| format!("cannot move {} to {}", from.display(), to.display()))
    }

    async fn exists(&self, uri: &str) -> Result<bool> {
        let path = file_uri_path(uri)?;
        Ok(tokio::fs::symlink_metadata(&path).await.is_ok())
    }

    async fn delete_prefix(&self, uri: &str) -> Result<()> {
        let path = file_uri_path(uri)?;
        match tokio::fs::remove_dir_all(&path).await {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                return Err(err).with_context(|| format!("cannot delete {}", path.display()));
            }
        }
        // Directories are not objects: leave no empty staging folder behind
        // in the egress. (Fails harmlessly while other jobs still stage.)
        if let Some(parent) = path.parent()
            && parent
                .file_name()
                .is_some_and(|name| name == super::STAGING_DIR)
        {
            let _ = tokio::fs::remove_dir(parent).await;
        }
        Ok(())
    }
}

/// Creates the parent directory of `path`.
async fn create_parent(path: &Path) -> Result<()> {
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    Ok(())
}

/// How many objects one page of a `file://` listing holds, like a page of
/// an S3 or GCS listing.
const PAGE_SIZE: usize = 1_000;

/// The listing of `uri` in pages of at most `page_size` objects. The walk
/// runs on a blocking thread and hands pages over a channel of one page,
/// so at most a few pages exist at once; dropping the stream stops it.
fn list_pages_of(uri: &str, page_size: usize) -> BoxStream<'static, Result<Vec<ObjectInfo>>> {
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    let uri = uri.to_owned();
    let walk = tokio::task::spawn_blocking(move || {
        let result = walk_pages(&uri, page_size.max(1), &mut |page| {
            sender.blocking_send(Ok(page)).is_ok()
        });
        if let Err(err) = result {
            // Nobody may be listening any more; then nobody needs to know.
            let _ = sender.blocking_send(Err(err));
        }
    });
    let pages = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|page| (page, receiver))
    });
    // After the last page, a walk that died without saying why (a panic)
    // is an error, not a short listing.
    let end = futures::stream::once(async move {
        match walk.await {
            Ok(()) => None,
            Err(err) => Some(Err(anyhow!("listing panicked: {err}"))),
        }
    })
    .filter_map(futures::future::ready);
    Box::pin(pages.chain(end))
}

/// Walks the tree at `uri`, handing `each` pages of up to `page_size`
/// objects in byte order of their relative paths, until it returns false
/// (the reader has gone away).
fn walk_pages(
    uri: &str,
    page_size: usize,
    each: &mut dyn FnMut(Vec<ObjectInfo>) -> bool,
) -> Result<()> {
    let root = file_uri_path(uri)?;
    let meta = std::fs::metadata(&root).with_context(|| format!("cannot read input {uri}"))?;
    if meta.is_file() {
        let name = root
            .file_name()
            .and_then(|name| name.to_str())
            .ok_or_else(|| anyhow!("{uri:?} has no UTF-8 file name"))?;
        each(vec![ObjectInfo {
            uri: uri.to_owned(),
            relative_path: name.to_owned(),
            size: meta.len(),
        }]);
        return Ok(());
    }
    let prefix = super::as_prefix(uri);
    let mut page = Vec::with_capacity(page_size);
    let walk = walkdir::WalkDir::new(&root)
        .follow_links(true)
        .sort_by(byte_order)
        .into_iter()
        // Outputs staged by running attempts are not inputs: skip the
        // whole folder rather than each file in it.
        .filter_entry(|entry| entry.depth() == 0 || entry.file_name() != super::STAGING_DIR);
    for entry in walk {
        let entry = entry.with_context(|| format!("cannot list {uri}"))?;
        if !entry.file_type().is_file() {
            continue;
        }
        let relative = entry
            .path()
            .strip_prefix(&root)
            .context("listing left its root")?
            .to_str()
            .ok_or_else(|| anyhow!("{} is not UTF-8", entry.path().display()))?
            .to_owned();
        // Hidden temporary files of an upload in progress are not inputs.
        if super::is_hidden(&relative) {
            continue;
        }
        let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
        page.push(ObjectInfo {
            uri: format!("{prefix}{relative}"),
            relative_path: relative,
            size,
        });
        if page.len() == page_size
            && !each(std::mem::replace(&mut page, Vec::with_capacity(page_size)))
        {
            return Ok(());
        }
    }
    if !page.is_empty() {
        each(page);
    }
    Ok(())
}

/// Orders the entries of one directory so that the walk visits paths in
/// byte order of the whole relative path, as object stores list keys. A
/// directory sorts as its name with `/` appended, because that is how each
/// path beneath it begins: `a-b` < `a/x` < `a0`, whereas sorting by bare
/// name would visit `a/x` (under `a`) before `a-b`.
fn byte_order(a: &walkdir::DirEntry, b: &walkdir::DirEntry) -> std::cmp::Ordering {
    fn path_bytes(entry: &walkdir::DirEntry) -> impl Iterator<Item = u8> + '_ {
        let slash = entry.file_type().is_dir().then_some(b'/');
        entry.file_name().as_bytes().iter().copied().chain(slash)
    }
    path_bytes(a).cmp(path_bytes(b))
}

#[cfg(test)]
mod tests {
    use futures::TryStreamExt;

    use super::*;

    #[tokio::test]
    async fn lists_recursively_with_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("b/c")).unwrap();
        std::fs::write(dir.path().join("a.txt"), "aa").unwrap();
        std::fs::write(dir.path().join("b/c/d.txt"), "d").unwrap();
        let uri = format!("file://{}/", dir.path().display());
        let objects = FileStorage.list(&uri).await.unwrap();
        let paths: Vec<_> = objects.iter().map(|o| o.relative_path.as_str()).collect();
        assert_eq!(paths, ["a.txt", "b/c/d.txt"]);
        assert_eq!(objects[0].size, 2);
        assert_eq!(objects[1].uri, format!("{uri}b/c/d.txt"));
    }

    /// Writes each of `files` (relative paths) under `root`.
    fn tree(root: &Path, files: &[&str]) {
        for file in files {
            let path = root.join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, file).unwrap();
        }
    }

    /// The pages of a listing, as relative paths.
    async fn page_paths(uri: &str, page_size: usize) -> Vec<Vec<String>> {
        list_pages_of(uri, page_size)
            .map_ok(|page| page.into_iter().map(|o| o.relative_path).collect())
            .try_collect()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn the_walk_is_in_byte_order_of_whole_paths() {
        let dir = tempfile::tempdir().unwrap();
        let files = [
            "a-b", "a/x", "a/x-y", "a/x.y/z", "a/x0", "a/xy/w", "a.b/c", "a0", "ab", "b", "b c/d",
        ];
        tree(dir.path(), &files);
        let mut expected: Vec<String> = files.iter().map(|f| (*f).to_owned()).collect();
        expected.sort();
        // Walking siblings by bare name would be wrong here: it visits all
        // of `a/` before `a-b` and `a.b/c`.
        let by_name: Vec<String> = walkdir::WalkDir::new(dir.path())
            .sort_by_file_name()
            .into_iter()
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().is_file())
            .map(|e| {
                e.path()
                    .strip_prefix(dir.path())
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_ne!(by_name, expected);

        let uri = format!("file://{}/", dir.path().display());
        // Pages of two: each page, and the pages one after another, in order.
        let pages = page_paths(&uri, 2).await;
        assert!(pages.iter().all(|page| page.len() <= 2), "{pages:?}");
        assert_eq!(pages.concat(), expected);
        let listed: Vec<_> = FileStorage
            .list(&uri)
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.relative_path)
            .collect();
        assert_eq!(listed, expected);
    }

    #[tokio::test]
    async fn pages_are_bounded_and_never_empty() {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<String> = (0..PAGE_SIZE * 2 + 1)
            .map(|i| format!("d/{i:05}"))
            .collect();
        let names: Vec<&str> = files.iter().map(String::as_str).collect();
        tree(dir.path(), &names);
        // Neither hidden files nor staged outputs count, or make a page short.
        tree(
            dir.path(),
            &[
                "d/.x.falconeri-0123.tmp",
                ".falconeri-staging/job-1/datum-1-attempt-1/out",
            ],
        );
        let uri = format!("file://{}", dir.path().display());
        let sizes: Vec<usize> = page_paths(&uri, PAGE_SIZE)
            .await
            .iter()
            .map(Vec::len)
            .collect();
        assert_eq!(sizes, [PAGE_SIZE, PAGE_SIZE, 1]);
        let sizes: Vec<usize> = FileStorage
            .list_pages(&uri)
            .map_ok(|page| page.len())
            .try_collect()
            .await
            .unwrap();
        assert_eq!(sizes, [PAGE_SIZE, PAGE_SIZE, 1]);

        // An empty directory lists no page at all; a file lists itself.
        let empty = tempfile::tempdir().unwrap();
        assert!(
            page_paths(&format!("file://{}", empty.path().display()), 10)
                .await
                .is_empty()
        );
        let one = format!("file://{}/d/00007", dir.path().display());
        assert_eq!(page_paths(&one, 10).await, [["00007"]]);
    }

    #[tokio::test]
    async fn a_missing_input_is_an_error() {
        let err = FileStorage
            .list("file:///definitely/not/here")
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("cannot read input"));
        let mut pages = FileStorage.list_pages("file:///definitely/not/here");
        assert!(pages.next().await.unwrap().is_err());
        assert!(file_uri_path("file://relative").is_err());
    }
}
