//! `file://` storage: a directory on this machine, for the embedded default
//! and for tests. URIs are `file:///absolute/path`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use async_trait::async_trait;
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
    async fn list(&self, uri: &str) -> Result<Vec<ObjectInfo>> {
        let root = file_uri_path(uri)?;
        let uri = uri.to_owned();
        tokio::task::spawn_blocking(move || list_blocking(&uri, &root))
            .await
            .context("listing panicked")?
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

fn list_blocking(uri: &str, root: &Path) -> Result<Vec<ObjectInfo>> {
    let meta = std::fs::metadata(root).with_context(|| format!("cannot read input {uri}"))?;
    if meta.is_file() {
        let name = root
            .file_name()
            .and_then(|name| name.to_str())
            .ok_or_else(|| anyhow!("{uri:?} has no UTF-8 file name"))?;
        return Ok(vec![ObjectInfo {
            uri: uri.to_owned(),
            relative_path: name.to_owned(),
            size: meta.len(),
        }]);
    }
    let prefix = super::as_prefix(uri);
    let mut objects = Vec::new();
    for entry in walkdir::WalkDir::new(root)
        .follow_links(true)
        .sort_by_file_name()
    {
        let entry = entry.with_context(|| format!("cannot list {uri}"))?;
        if !entry.file_type().is_file() {
            continue;
        }
        let relative = entry
            .path()
            .strip_prefix(root)
            .context("listing left its root")?
            .to_str()
            .ok_or_else(|| anyhow!("{} is not UTF-8", entry.path().display()))?
            .to_owned();
        // Hidden temporary files of an upload in progress, and outputs
        // staged by running attempts, are not inputs.
        if super::is_hidden(&relative) {
            continue;
        }
        let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
        objects.push(ObjectInfo {
            uri: format!("{prefix}{relative}"),
            relative_path: relative,
            size,
        });
    }
    objects.sort_by(|a, b| a.relative_path.cmp(&b.relative_path));
    Ok(objects)
}

#[cfg(test)]
mod tests {
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

    #[tokio::test]
    async fn a_missing_input_is_an_error() {
        let err = FileStorage
            .list("file:///definitely/not/here")
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("cannot read input"));
        assert!(file_uri_path("file://relative").is_err());
    }
}
