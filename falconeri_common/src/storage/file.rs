//! `file://` storage: a directory on this machine, for the embedded default
//! and for tests. URIs are `file:///absolute/path`.

use std::{
    ffi::{OsStr, OsString},
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::ffi::{OsStrExt, OsStringExt},
    },
    path::{Component, Path, PathBuf},
};

use anyhow::{Context, Result, anyhow, bail};
use async_trait::async_trait;
use futures::{StreamExt, stream::BoxStream};
use rustix::{
    fs::{AtFlags, FileType, Mode, OFlags},
    io::Errno,
};
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
    fn list_pages_from<'a>(
        &'a self,
        uri: &'a str,
        start: &'a str,
    ) -> BoxStream<'a, Result<Vec<ObjectInfo>>> {
        list_pages_of(uri, start, PAGE_SIZE)
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
        let target = WriteTarget::of(&dest)?;
        let name = target.name.clone();
        // Write beside the destination and rename, so nobody sees half a file.
        let tmp = OsString::from(format!(
            ".{}.falconeri-{}.tmp",
            name.to_string_lossy(),
            hex::encode(rand::random::<[u8; 6]>())
        ));
        let mut reader = tokio::fs::File::open(src)
            .await
            .with_context(|| format!("cannot open {}", src.display()))?;
        let (dir, writer) = {
            let tmp = tmp.clone();
            tokio::task::spawn_blocking(move || -> Result<_> {
                let dir = target.open_dir()?;
                let file = rustix::fs::openat(
                    &dir,
                    tmp.as_os_str(),
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o666),
                )
                .map_err(std::io::Error::from)
                .with_context(|| format!("cannot create {}", target.shown(&tmp).display()))?;
                Ok((dir, std::fs::File::from(file)))
            })
            .await
            .context("upload task panicked")??
        };
        let mut writer = tokio::fs::File::from_std(writer);
        let result = async {
            let size = tokio::io::copy(&mut reader, &mut writer).await?;
            writer.sync_all().await?;
            rustix::fs::renameat(&dir, tmp.as_os_str(), &dir, name.as_os_str())
                .map_err(std::io::Error::from)
                .with_context(|| format!("cannot move output into {}", dest.display()))?;
            anyhow::Ok(size)
        }
        .await;
        if result.is_err() {
            let _ = rustix::fs::unlinkat(&dir, tmp.as_os_str(), AtFlags::empty());
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

    /// Publishing beneath the egress never follows a symbolic link, neither
    /// in the directories on the way (a planted `egress/sub -> /etc` would
    /// otherwise put `sub/x` into `/etc` as whoever runs falconerid) nor as
    /// the staged file itself (a staged link to `/etc/shadow` would be
    /// published as a link). The egress root itself is taken as the spec
    /// names it, links and all: that path is the user's choice.
    async fn publish(&self, staging: &str, egress: &str, relative: &str) -> Result<()> {
        let root = file_uri_path(egress)?;
        let staging_dir = file_uri_path(staging)?;
        let staging_parts = staging_dir
            .strip_prefix(&root)
            .ok()
            .and_then(plain_parts)
            .ok_or_else(|| {
                anyhow!("the staging area {staging} is not beneath the egress {egress}")
            })?;
        let relative = relative.to_owned();
        tokio::task::spawn_blocking(move || publish_beneath(&root, &staging_parts, &relative))
            .await
            .context("publishing task panicked")?
    }

    async fn exists(&self, uri: &str) -> Result<bool> {
        let path = file_uri_path(uri)?;
        Ok(tokio::fs::symlink_metadata(&path).await.is_ok())
    }

    /// Like writes, deletion never follows a link beneath the egress: a
    /// planted `.falconeri-staging -> /srv` must not make falconerid delete
    /// `/srv/job-7/`.
    async fn delete_prefix(&self, uri: &str) -> Result<()> {
        let path = file_uri_path(uri)?;
        let path: PathBuf = path.components().collect();
        let target = WriteTarget::of(&path)?;
        tokio::task::spawn_blocking(move || delete_beneath(&target))
            .await
            .context("deleting task panicked")?
    }
}

/// Deletes `target` (a file or a whole tree) from a directory resolved
/// without following links, then the staging folder it was in if that is
/// now empty. Blocking.
fn delete_beneath(target: &WriteTarget) -> Result<()> {
    let root = match open_root(&target.root) {
        Ok(root) => root,
        // No egress, nothing staged in it.
        Err(err) if is_not_found(&err) => return Ok(()),
        Err(err) => return Err(err),
    };
    let parts: Vec<&OsStr> = target.parts.iter().map(OsString::as_os_str).collect();
    let Some(dir) = open_dir_beneath(&root, &target.root, &parts, false)? else {
        return Ok(());
    };
    // `/proc/self/fd/N` names the very directory just resolved, so the
    // removal cannot be redirected after the check; `remove_dir_all` itself
    // never follows links beneath the path it is given.
    let path = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(&target.name);
    let shown = target.shown(&target.name);
    match std::fs::remove_dir_all(&path) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotADirectory => {
            rustix::fs::unlinkat(&dir, target.name.as_os_str(), AtFlags::empty())
                .map_err(std::io::Error::from)
                .with_context(|| format!("cannot delete {}", shown.display()))?;
        }
        Err(err) => {
            return Err(err).with_context(|| format!("cannot delete {}", shown.display()));
        }
    }
    // Directories are not objects: leave no empty staging folder behind in
    // the egress. (Fails harmlessly while other jobs still stage.)
    if let Some((last, above)) = parts.split_last()
        && *last == super::STAGING_DIR
        && let Ok(Some(parent)) = open_dir_beneath(&root, &target.root, above, false)
    {
        let _ = rustix::fs::unlinkat(&parent, *last, AtFlags::REMOVEDIR);
    }
    Ok(())
}

/// Whether `err` says a file or directory does not exist.
fn is_not_found(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound)
    })
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

/// Where a `file://` write lands: a root directory, taken as named (links
/// and all), the directories beneath it, which are created as needed and
/// never followed if they are links, and the file's name.
///
/// For a staging URI (`<egress>/.falconeri-staging/…`) the root is the
/// egress, so a worker's upload cannot be diverted by a link planted
/// anywhere in the egress. Any other URI (tests, tools) is written into its
/// parent directory as named.
#[derive(Debug)]
struct WriteTarget {
    root: PathBuf,
    parts: Vec<OsString>,
    name: OsString,
}

impl WriteTarget {
    fn of(dest: &Path) -> Result<WriteTarget> {
        let name = dest
            .file_name()
            .ok_or_else(|| anyhow!("{} names no file", dest.display()))?
            .to_owned();
        let parent = dest
            .parent()
            .ok_or_else(|| anyhow!("{} has no parent directory", dest.display()))?;
        let staging = parent
            .ancestors()
            .find(|dir| dir.file_name().is_some_and(|n| n == super::STAGING_DIR));
        let (root, parts) = match staging.and_then(|dir| dir.parent()) {
            Some(root) => {
                let parts = parent
                    .strip_prefix(root)
                    .ok()
                    .and_then(plain_parts)
                    .ok_or_else(|| anyhow!("unsafe path {}", dest.display()))?;
                (root.to_owned(), parts)
            }
            None => (parent.to_owned(), Vec::new()),
        };
        Ok(WriteTarget { root, parts, name })
    }

    /// Opens (creating) the directory the file goes into. Blocking.
    fn open_dir(&self) -> Result<OwnedFd> {
        std::fs::create_dir_all(&self.root)
            .with_context(|| format!("cannot create {}", self.root.display()))?;
        let root = open_root(&self.root)?;
        let parts: Vec<&OsStr> = self.parts.iter().map(OsString::as_os_str).collect();
        open_dir_beneath(&root, &self.root, &parts, true)?
            .ok_or_else(|| anyhow!("cannot create {}", self.root.display()))
    }

    /// The full path of `name` in the target directory, for messages.
    fn shown(&self, name: &OsStr) -> PathBuf {
        let mut path = self.root.clone();
        path.extend(&self.parts);
        path.join(name)
    }
}

/// The parts of a relative path, if every one is a plain name (no `..`,
/// `.` or root), as `Path::strip_prefix` leaves them.
fn plain_parts(path: &Path) -> Option<Vec<OsString>> {
    path.components()
        .map(|part| match part {
            Component::Normal(name) => Some(name.to_owned()),
            _ => None,
        })
        .collect()
}

/// Opens the directory `root`, following links in it: it is a path the
/// user named. Blocking.
fn open_root(root: &Path) -> Result<OwnedFd> {
    rustix::fs::openat(
        rustix::fs::CWD,
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(std::io::Error::from)
    .with_context(|| format!("cannot open {}", root.display()))
}

/// Opens the directory `parts` beneath the open directory `root` (shown as
/// `root_path`) one part at a time, each with `O_NOFOLLOW`, so no symbolic
/// link is followed on the way; with `create`, missing parts are made
/// (`mkdirat` in the directory already opened, which cannot follow a link
/// either). `None` when a part is missing and `create` is false. The parts
/// are plain names, so this is `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`
/// without needing `openat2` (Linux 5.6) or anything Linux-only. Blocking.
fn open_dir_beneath(
    root: &OwnedFd,
    root_path: &Path,
    parts: &[&OsStr],
    create: bool,
) -> Result<Option<OwnedFd>> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut dir = root
        .try_clone()
        .with_context(|| format!("cannot open {}", root_path.display()))?;
    let mut shown = root_path.to_owned();
    for part in parts {
        shown.push(part);
        let opened = match rustix::fs::openat(&dir, *part, flags, Mode::empty()) {
            Err(Errno::NOENT) if create => {
                match rustix::fs::mkdirat(&dir, *part, Mode::from_raw_mode(0o777)) {
                    // Another upload may have made it meanwhile.
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(err) => {
                        return Err(std::io::Error::from(err))
                            .with_context(|| format!("cannot create {}", shown.display()));
                    }
                }
                rustix::fs::openat(&dir, *part, flags, Mode::empty())
            }
            other => other,
        };
        dir = match opened {
            Ok(next) => next,
            Err(Errno::NOENT) => return Ok(None),
            Err(err @ (Errno::LOOP | Errno::NOTDIR)) => {
                let is_link = rustix::fs::statat(&dir, *part, AtFlags::SYMLINK_NOFOLLOW)
                    .is_ok_and(|stat| FileType::from_raw_mode(stat.st_mode) == FileType::Symlink);
                if is_link {
                    bail!(
                        "refusing {}: it is a symbolic link, and nothing beneath {} is written \
                         through one",
                        shown.display(),
                        root_path.display()
                    );
                }
                return Err(std::io::Error::from(err))
                    .with_context(|| format!("cannot open {}", shown.display()));
            }
            Err(err) => {
                return Err(std::io::Error::from(err))
                    .with_context(|| format!("cannot open {}", shown.display()));
            }
        };
    }
    Ok(Some(dir))
}

/// The type and identity of `name` in `dir`, without following a link;
/// `None` if there is nothing there. Blocking.
fn lstat_in(dir: &OwnedFd, name: &OsStr) -> std::io::Result<Option<rustix::fs::Stat>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => Ok(Some(stat)),
        Err(Errno::NOENT) => Ok(None),
        Err(err) => Err(err.into()),
    }
}

/// Moves the staged file `<root>/<staging_parts>/<relative>` to
/// `<root>/<relative>`, both resolved without following links, and refuses
/// a staged file that is not a regular file. Idempotent like
/// `publish_outputs`: a file an earlier call already moved is left there.
/// Blocking.
fn publish_beneath(root_path: &Path, staging_parts: &[OsString], relative: &str) -> Result<()> {
    let relative_path = super::checked_relative(relative)?;
    let parts: Vec<&OsStr> = relative_path.iter().collect();
    let Some((name, dir_parts)) = parts.split_last() else {
        bail!("unsafe path {relative:?}");
    };
    let mut staged_parts: Vec<&OsStr> = staging_parts.iter().map(OsString::as_os_str).collect();
    staged_parts.extend(dir_parts);
    let mut staged_path = root_path.to_owned();
    staged_path.extend(&staged_parts);
    let staged_path = staged_path.join(name);
    let dest_path = root_path.join(&relative_path);

    let root = open_root(root_path)?;
    let from_dir = open_dir_beneath(&root, root_path, &staged_parts, false)?;
    let staged = match &from_dir {
        Some(dir) => {
            lstat_in(dir, name).with_context(|| format!("cannot read {}", staged_path.display()))?
        }
        None => None,
    };
    let (Some(from_dir), Some(staged)) = (from_dir, staged) else {
        // Moved by an earlier, partly failed call?
        let published = match open_dir_beneath(&root, root_path, dir_parts, false)? {
            Some(dir) => lstat_in(&dir, name)?,
            None => None,
        };
        if published
            .is_some_and(|stat| FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile)
        {
            return Ok(());
        }
        bail!(
            "output {relative:?} was not uploaded to {}",
            staged_path.display()
        );
    };
    match FileType::from_raw_mode(staged.st_mode) {
        FileType::RegularFile => {}
        FileType::Symlink => bail!(
            "refusing to publish {relative:?}: the staged {} is a symbolic link, and \
             outputs are published only as regular files",
            staged_path.display()
        ),
        other => bail!(
            "refusing to publish {relative:?}: the staged {} is not a regular file ({other:?})",
            staged_path.display()
        ),
    }
    let to_dir = open_dir_beneath(&root, root_path, dir_parts, true)?
        .ok_or_else(|| anyhow!("cannot create the directory of {}", dest_path.display()))?;
    // `renameat` replaces whatever is at the destination name, a link
    // included, rather than writing through it.
    rustix::fs::renameat(&from_dir, *name, &to_dir, *name)
        .map_err(std::io::Error::from)
        .with_context(|| {
            format!(
                "cannot publish {} to {}",
                staged_path.display(),
                dest_path.display()
            )
        })?;
    // The staged name was checked before the move, so it could have been
    // swapped for a link in between: check that what arrived is the file
    // that was checked, and take anything else back out of the egress.
    let arrived = lstat_in(&to_dir, name)?;
    if arrived.is_none_or(|stat| (stat.st_dev, stat.st_ino) != (staged.st_dev, staged.st_ino)) {
        let _ = rustix::fs::unlinkat(&to_dir, *name, AtFlags::empty());
        bail!(
            "refusing to publish {relative:?}: {} was replaced while it was being published",
            staged_path.display()
        );
    }
    Ok(())
}

/// How many objects one page of a `file://` listing holds, like a page of
/// an S3 or GCS listing.
const PAGE_SIZE: usize = 1_000;

/// The listing of `uri` in pages of at most `page_size` objects. The walk
/// runs on a blocking thread and hands pages over a channel of one page,
/// so at most a few pages exist at once; dropping the stream stops it.
fn list_pages_of(
    uri: &str,
    start: &str,
    page_size: usize,
) -> BoxStream<'static, Result<Vec<ObjectInfo>>> {
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    let uri = uri.to_owned();
    let start = start.to_owned();
    let walk = tokio::task::spawn_blocking(move || {
        let result = walk_pages(&uri, &start, page_size.max(1), DIR_SEGMENT, &mut |page| {
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

/// How many names of one directory the walk sorts in memory. A larger
/// directory is sorted in runs on disk ([`crate::spill_sort`]), so a directory of millions of files costs the walk no more
/// memory than one of this many names (a few MiB) per level of the tree.
const DIR_SEGMENT: usize = 100_000;

/// Walks the tree at `uri`, handing `each` pages of up to `page_size`
/// objects in byte order of their relative paths, until it returns false
/// (the reader has gone away). With a `start`, only the directory it names
/// is walked (`logs/2024/` walks `logs/2024`; `logs/20` walks `logs` and
/// keeps its entries whose names start with `20`). Links are followed; a
/// link to one of its own parent directories is an error, not a loop.
fn walk_pages(
    uri: &str,
    start: &str,
    page_size: usize,
    segment: usize,
    each: &mut dyn FnMut(Vec<ObjectInfo>) -> bool,
) -> Result<()> {
    let root = file_uri_path(uri)?;
    let meta = std::fs::metadata(&root).with_context(|| format!("cannot read input {uri}"))?;
    if meta.is_file() && start.is_empty() {
        let name = root
            .file_name()
            .and_then(|name| name.to_str())
            .ok_or_else(|| anyhow!("{uri:?} has no UTF-8 file name"))?;
        each(vec![ObjectInfo {
            uri: uri.to_owned(),
            relative_path: name.to_owned(),
            size: meta.len(),
            identity: mtime_identity(&meta),
        }]);
        return Ok(());
    }
    let prefix = super::as_prefix(uri);
    let (start_dir, start_name) = match start.rsplit_once('/') {
        Some((dir, name)) => (dir, name),
        None => ("", start),
    };
    let walk_root = root.join(start_dir);
    // `start` is a glob's literal text: a directory named in it that is not
    // there (or is a file) holds nothing the glob can match.
    let walk_root_meta = match std::fs::metadata(&walk_root) {
        Ok(meta) if meta.is_dir() => meta,
        _ if !start.is_empty() => return Ok(()),
        Ok(_) => bail!("cannot list {uri}: not a directory"),
        Err(err) => return Err(err).with_context(|| format!("cannot list {uri}")),
    };
    let listing_error = |path: &Path| format!("cannot list {uri}: {}", path.display());
    let mut stack = vec![Level {
        entries: sorted_entries(&walk_root, start_name.as_bytes(), segment)
            .with_context(|| listing_error(&walk_root))?,
        id: dir_id(&walk_root_meta),
        dir: walk_root,
    }];
    let mut page = Vec::with_capacity(page_size);
    while let Some(level) = stack.last_mut() {
        let Some(entry) = level.entries.next() else {
            stack.pop();
            continue;
        };
        let entry = entry.with_context(|| listing_error(&level.dir))?;
        let path = level.dir.join(entry.name());
        // Links are followed: what counts is what they point to.
        let meta = std::fs::metadata(&path).with_context(|| listing_error(&path))?;
        if entry.is_dir() {
            let id = dir_id(&meta);
            if stack.iter().any(|level| level.id == id) {
                bail!(
                    "cannot list {uri}: {} links to a directory that holds it",
                    path.display()
                );
            }
            let entries =
                sorted_entries(&path, b"", segment).with_context(|| listing_error(&path))?;
            stack.push(Level {
                entries,
                id,
                dir: path,
            });
            continue;
        }
        if !meta.is_file() {
            continue;
        }
        let relative = path
            .strip_prefix(&root)
            .context("listing left its root")?
            .to_str()
            .ok_or_else(|| anyhow!("{} is not UTF-8", path.display()))?
            .to_owned();
        // Hidden temporary files of an upload in progress are not inputs.
        if super::is_hidden(&relative) {
            continue;
        }
        page.push(ObjectInfo {
            uri: format!("{prefix}{relative}"),
            relative_path: relative,
            size: meta.len(),
            identity: mtime_identity(&meta),
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

/// One directory being walked: the rest of its entries, in order.
struct Level {
    entries: crate::spill_sort::Sorted<SortKey>,
    dir: PathBuf,
    /// Device and inode, to notice a link back to a parent.
    id: (u64, u64),
}

fn dir_id(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

/// The entries of `dir` whose names start with `name_prefix`, sorted by
/// [`SortKey`], at most `segment` of them in memory. Folders of
/// outputs staged by running attempts are not inputs and are left out
/// whole.
fn sorted_entries(
    dir: &Path,
    name_prefix: &[u8],
    segment: usize,
) -> std::io::Result<crate::spill_sort::Sorted<SortKey>> {
    let mut sorter = crate::spill_sort::SpillSort::new(segment);
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if !name.as_bytes().starts_with(name_prefix) || name == super::STAGING_DIR {
            continue;
        }
        let mut file_type = entry.file_type()?;
        if file_type.is_symlink() {
            file_type = std::fs::metadata(entry.path())?.file_type();
        }
        let mut key = name.into_vec();
        if file_type.is_dir() {
            key.push(b'/');
        }
        sorter.push(SortKey(key))?;
    }
    sorter.done()
}

/// An entry's name as the walk sorts it: a directory's with `/` appended,
/// because that is how each path beneath it begins. Sorting so visits
/// whole paths in byte order, as object stores list keys: `a-b` < `a/x` <
/// `a0`, whereas sorting by bare name would visit `a/x` (under `a`) before
/// `a-b`. A name never holds `/`, so a trailing one marks a directory.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct SortKey(Vec<u8>);

impl SortKey {
    fn is_dir(&self) -> bool {
        self.0.last() == Some(&b'/')
    }

    fn name(&self) -> &OsStr {
        let bytes = self.0.as_slice();
        OsStr::from_bytes(bytes.strip_suffix(b"/").unwrap_or(bytes))
    }
}

impl extsort::Sortable for SortKey {
    fn encode<W: std::io::Write>(&self, writer: &mut W) -> std::io::Result<()> {
        let len = u32::try_from(self.0.len()).map_err(std::io::Error::other)?;
        writer.write_all(&len.to_le_bytes())?;
        writer.write_all(&self.0)
    }

    fn decode<R: std::io::Read>(reader: &mut R) -> std::io::Result<Self> {
        let mut len = [0; 4];
        // extsort reads until `UnexpectedEof` here.
        reader.read_exact(&mut len)?;
        let len = usize::try_from(u32::from_le_bytes(len)).map_err(std::io::Error::other)?;
        let mut bytes = vec![0; len];
        reader.read_exact(&mut bytes)?;
        Ok(SortKey(bytes))
    }
}

/// A file's identity (see [`ObjectInfo::identity`]): its modification
/// time in nanoseconds. A local file has no checksum short of reading it,
/// which would make listing cost as much as downloading; size and mtime
/// are what `make` and rsync's quick check trust. A file rewritten with
/// the same size within the file system's timestamp granularity is missed.
fn mtime_identity(meta: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt as _;
    format!("mtime:{}.{:09}", meta.mtime(), meta.mtime_nsec())
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
        list_pages_of(uri, "", page_size)
            .map_ok(|page| page.into_iter().map(|o| o.relative_path).collect())
            .try_collect()
            .await
            .unwrap()
    }

    /// A glob's literal prefix walks only what can match, in the same
    /// order and with the same relative paths as the whole listing.
    #[tokio::test]
    async fn listing_from_a_prefix_walks_only_it() {
        let dir = tempfile::tempdir().unwrap();
        let files = [
            "2023-12/x",
            "2024-01/a",
            "2024-01/b/c",
            "2024-02.log",
            "2024/z",
            "logs/2024/a.csv",
            "logs/2025/b.csv",
            "logs/x",
        ];
        tree(dir.path(), &files);
        let uri = format!("file://{}/", dir.path().display());
        let from = async |start: &str| -> Vec<String> {
            list_pages_of(&uri, start, 2)
                .map_ok(|page| {
                    page.into_iter()
                        .map(|o| o.relative_path)
                        .collect::<Vec<_>>()
                })
                .try_concat()
                .await
                .unwrap()
        };
        assert_eq!(
            from("2024-").await,
            ["2024-01/a", "2024-01/b/c", "2024-02.log"]
        );
        assert_eq!(from("logs/2024/").await, ["logs/2024/a.csv"]);
        assert_eq!(
            from("logs/20").await,
            ["logs/2024/a.csv", "logs/2025/b.csv"]
        );
        assert_eq!(from("").await.len(), files.len());
        // Nothing there, or a file where a directory was named: nothing.
        assert!(from("missing/").await.is_empty());
        assert!(from("logs/x/").await.is_empty());
        // The staging folder is never an input, even when asked for.
        tree(dir.path(), &[".falconeri-staging/job-1/f"]);
        assert!(from(".falconeri").await.is_empty());
    }

    #[test]
    fn a_directory_larger_than_a_segment_is_sorted_on_disk_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut files: Vec<String> = (0..40).rev().map(|i| format!("big/f{i:02}")).collect();
        files.extend(["big-x/y", "big/sub/z", "a", "big0"].map(str::to_owned));
        tree(
            dir.path(),
            &files.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        let mut expected = files.clone();
        expected.sort();
        let uri = format!("file://{}/", dir.path().display());
        // Segments of three names: `big/` alone spills 14 runs to disk.
        for segment in [3, DIR_SEGMENT] {
            let mut listed = Vec::new();
            walk_pages(&uri, "", 7, segment, &mut |page| {
                assert!(page.len() <= 7);
                listed.extend(page.into_iter().map(|o| o.relative_path));
                true
            })
            .unwrap();
            assert_eq!(listed, expected, "segment {segment}");
        }
        // From a prefix, with runs on disk too.
        let mut listed = Vec::new();
        walk_pages(&uri, "big/f1", 100, 3, &mut |page| {
            listed.extend(page.into_iter().map(|o| o.relative_path));
            true
        })
        .unwrap();
        let tens: Vec<String> = (10..20).map(|i| format!("big/f{i}")).collect();
        assert_eq!(listed, tens);
    }

    #[test]
    fn a_link_to_a_parent_directory_is_an_error_not_a_loop() {
        let dir = tempfile::tempdir().unwrap();
        tree(dir.path(), &["a/b/file"]);
        std::os::unix::fs::symlink(dir.path().join("a"), dir.path().join("a/b/up")).unwrap();
        let uri = format!("file://{}/", dir.path().display());
        let err = walk_pages(&uri, "", 10, 3, &mut |_| true).unwrap_err();
        assert!(
            format!("{err:#}").contains("links to a directory that holds it"),
            "{err:#}"
        );
    }

    #[test]
    fn links_to_files_and_directories_elsewhere_are_followed() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        tree(dir.path(), &["in/a"]);
        tree(elsewhere.path(), &["d/x", "f"]);
        std::os::unix::fs::symlink(elsewhere.path().join("d"), dir.path().join("in/d")).unwrap();
        std::os::unix::fs::symlink(elsewhere.path().join("f"), dir.path().join("in/f")).unwrap();
        let uri = format!("file://{}/in/", dir.path().display());
        let mut listed = Vec::new();
        walk_pages(&uri, "", 10, 3, &mut |page| {
            listed.extend(page.into_iter().map(|o| (o.relative_path, o.size)));
            true
        })
        .unwrap();
        // `tree` writes each path into its file: the sizes are the targets'.
        let expected = [("a", 4), ("d/x", 3), ("f", 1)].map(|(p, n)| (p.to_owned(), n));
        assert_eq!(listed, expected);
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

    /// An egress with one staged output, `relative`, of `attempt` of datum
    /// 1 of job 1; returns (egress dir, egress URI, staging URI).
    async fn staged(dir: &Path, attempt: i32, relative: &str) -> (PathBuf, String, String) {
        let egress = dir.join("egress");
        std::fs::create_dir_all(&egress).unwrap();
        let egress_uri = format!("file://{}/", egress.display());
        let staging = super::super::attempt_staging_uri(&egress_uri, 1, 1, attempt);
        let src = dir.join("src.txt");
        std::fs::write(&src, "output").unwrap();
        FileStorage
            .upload(&src, &format!("{staging}{relative}"))
            .await
            .unwrap();
        (egress, egress_uri, staging)
    }

    /// Issue 9, defect 3: with `egress/sub -> /some/dir` planted, the output
    /// `sub/planted.txt` was written to `/some/dir/planted.txt`.
    #[tokio::test]
    async fn publishing_never_follows_a_link_planted_in_the_egress() {
        let dir = tempfile::tempdir().unwrap();
        let (egress, egress_uri, staging) = staged(dir.path(), 1, "sub/planted.txt").await;
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, egress.join("sub")).unwrap();

        let err = FileStorage
            .publish(&staging, &egress_uri, "sub/planted.txt")
            .await
            .unwrap_err();
        let message = format!("{err:#}");
        assert!(message.contains("symbolic link"), "{message}");
        assert!(
            message.contains(&egress.join("sub").display().to_string()),
            "the error names the link: {message}"
        );
        assert!(!elsewhere.join("planted.txt").exists());
        // Deeper down too: a link two directories beneath the egress.
        std::fs::remove_file(egress.join("sub")).unwrap();
        std::fs::create_dir(egress.join("sub")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, egress.join("sub/planted.txt")).unwrap();
        let (_, _, deeper) = staged(dir.path(), 2, "sub/planted.txt/x").await;
        assert!(
            FileStorage
                .publish(&deeper, &egress_uri, "sub/planted.txt/x")
                .await
                .is_err()
        );
        assert!(!elsewhere.join("x").exists());
    }

    /// A staged symbolic link is not published (it would hand out
    /// `/etc/shadow` to whoever reads the egress), and the staged file is
    /// not read through a link in the staging folder either.
    #[tokio::test]
    async fn a_staged_symlink_is_not_published() {
        let dir = tempfile::tempdir().unwrap();
        let (egress, egress_uri, staging) = staged(dir.path(), 1, "real.txt").await;
        let secret = dir.path().join("shadow");
        std::fs::write(&secret, "secret").unwrap();
        let staging_dir = file_uri_path(&staging).unwrap();
        std::os::unix::fs::symlink(&secret, staging_dir.join("leak.txt")).unwrap();

        let err = FileStorage
            .publish(&staging, &egress_uri, "leak.txt")
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("symbolic link"), "{err:#}");
        assert!(std::fs::symlink_metadata(egress.join("leak.txt")).is_err());

        // The staging folder itself swapped for a link to a folder holding
        // a file of the same name: refused, nothing moved out of it.
        let decoy = dir.path().join("decoy");
        std::fs::create_dir(&decoy).unwrap();
        std::fs::write(decoy.join("real.txt"), "decoy").unwrap();
        let job_dir = staging_dir.parent().unwrap();
        // Without the trailing slash, which `symlink` would not accept.
        let attempt_dir = job_dir.join("datum-1-attempt-1");
        std::fs::rename(&attempt_dir, dir.path().join("moved-away")).unwrap();
        std::os::unix::fs::symlink(&decoy, &attempt_dir).unwrap();
        let err = FileStorage
            .publish(&staging, &egress_uri, "real.txt")
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("symbolic link"), "{err:#}");
        assert!(decoy.join("real.txt").exists());
        assert!(!egress.join("real.txt").exists());
        assert!(job_dir.is_dir());
    }

    /// A link planted at an output's own name is replaced, never written
    /// through; a second publish of the same output is harmless.
    #[tokio::test]
    async fn publishing_replaces_a_link_at_the_destination() {
        let dir = tempfile::tempdir().unwrap();
        let (egress, egress_uri, staging) = staged(dir.path(), 1, "a/out.txt").await;
        let target = dir.path().join("target");
        std::fs::write(&target, "untouched").unwrap();
        std::fs::create_dir(egress.join("a")).unwrap();
        std::os::unix::fs::symlink(&target, egress.join("a/out.txt")).unwrap();

        FileStorage
            .publish(&staging, &egress_uri, "a/out.txt")
            .await
            .unwrap();
        let meta = std::fs::symlink_metadata(egress.join("a/out.txt")).unwrap();
        assert!(meta.is_file());
        assert_eq!(
            std::fs::read_to_string(egress.join("a/out.txt")).unwrap(),
            "output"
        );
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched");
        FileStorage
            .publish(&staging, &egress_uri, "a/out.txt")
            .await
            .unwrap();
        let err = FileStorage
            .publish(&staging, &egress_uri, "never.txt")
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("was not uploaded"), "{err:#}");
    }

    /// A worker's upload to its staging area is not diverted by a link
    /// planted in the egress (`.falconeri-staging -> /etc`).
    #[tokio::test]
    async fn uploads_to_staging_never_follow_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let egress = dir.path().join("egress");
        std::fs::create_dir(&egress).unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, egress.join(super::super::STAGING_DIR)).unwrap();
        let src = dir.path().join("src.txt");
        std::fs::write(&src, "output").unwrap();
        let egress_uri = format!("file://{}", egress.display());
        let staging = super::super::attempt_staging_uri(&egress_uri, 1, 1, 1);
        let err = FileStorage
            .upload(&src, &format!("{staging}x.txt"))
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("symbolic link"), "{err:#}");
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    }

    /// Deleting a job's staging folder never follows a link planted in
    /// the egress; a real one is deleted with the staging folder above it.
    #[tokio::test]
    async fn deleting_staging_never_follows_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let (egress, egress_uri, _) = staged(dir.path(), 1, "a.txt").await;
        let job = super::super::job_staging_uri(&egress_uri, 1);
        FileStorage.delete_prefix(&job).await.unwrap();
        assert!(!egress.join(super::super::STAGING_DIR).exists());
        FileStorage.delete_prefix(&job).await.unwrap();

        let precious = dir.path().join("precious");
        std::fs::create_dir_all(precious.join("job-1")).unwrap();
        std::fs::write(precious.join("job-1/data"), "keep").unwrap();
        std::os::unix::fs::symlink(&precious, egress.join(super::super::STAGING_DIR)).unwrap();
        let err = FileStorage.delete_prefix(&job).await.unwrap_err();
        assert!(format!("{err:#}").contains("symbolic link"), "{err:#}");
        assert!(precious.join("job-1/data").exists());
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
