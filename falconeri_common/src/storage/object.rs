//! What the object-store backends (S3, GCS) share: parsing `scheme://bucket/key`
//! URIs, transfer tuning, and the download engine that streams an object to
//! disk whole or as parallel ranged reads, retrying a broken part on its own.

use std::{future::Future, path::Path, pin::Pin, time::Duration};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt, future::BoxFuture, stream::BoxStream};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use crate::plan::ObjectInfo;

/// A bucket and a key (possibly empty, possibly a prefix ending in `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ObjectUri {
    pub bucket: String,
    pub key: String,
}

impl ObjectUri {
    /// Parses `scheme://bucket/key`.
    pub fn parse(uri: &str, scheme: &str) -> Result<ObjectUri> {
        let rest = uri
            .strip_prefix(scheme)
            .and_then(|rest| rest.strip_prefix("://"))
            .ok_or_else(|| anyhow!("{uri:?} is not a {scheme}:// URI"))?;
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            bail!("{uri:?} names no bucket");
        }
        Ok(ObjectUri {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
        })
    }

    /// The key as a "directory" prefix: empty (the whole bucket) or ending in `/`.
    pub fn dir_prefix(&self) -> String {
        if self.key.is_empty() || self.key.ends_with('/') {
            self.key.clone()
        } else {
            format!("{}/", self.key)
        }
    }
}

/// Turns one listed key under `prefix` (a directory prefix of `base_uri`'s
/// key) into an input, or `None` for what is not an input: "directory"
/// marker objects and the hidden files falconeri itself writes.
pub(crate) fn listed_object(
    base_uri: &str,
    prefix: &str,
    key: &str,
    size: u64,
    identity: String,
) -> Option<ObjectInfo> {
    let relative = key.strip_prefix(prefix)?;
    if relative.is_empty() || relative.ends_with('/') || super::is_hidden(relative) {
        return None;
    }
    Some(ObjectInfo {
        uri: format!("{}{relative}", super::as_prefix(base_uri)),
        relative_path: relative.to_owned(),
        size,
        identity,
    })
}

/// One page of raw keys with their sizes and identities (see
/// [`ObjectInfo::identity`]), as an object store lists them.
pub(crate) type KeyPage = Vec<(String, u64, String)>;

/// Turns the raw key pages an object store lists under `loc.dir_prefix()`
/// into the listing of `uri`, page by page (see [`super::Storage::list_pages`]):
/// markers and hidden keys dropped, empty pages skipped, each page sorted,
/// and pages out of order refused. When nothing at all is under a URI
/// without a trailing slash, `size_of` is asked whether the URI names one
/// object (its size and identity), which is then the whole listing: asked only then, which spares a
/// request for prefixes, and some S3 servers answer a HEAD on a
/// "directory" with an error.
pub(crate) fn object_listing<'a, P, F, Fut>(
    uri: &'a str,
    loc: &ObjectUri,
    start: &str,
    pages: P,
    size_of: F,
) -> BoxStream<'a, Result<Vec<ObjectInfo>>>
where
    P: Stream<Item = Result<KeyPage>> + Send + 'a,
    F: FnOnce() -> Fut + Send + 'a,
    Fut: Future<Output = Result<Option<(u64, String)>>> + Send + 'a,
{
    struct State<P, F> {
        pages: P,
        prefix: String,
        /// The single object `uri` may name, and how to ask for its size;
        /// taken once the listing has yielded something or asked.
        single: Option<(String, F)>,
        last: Option<String>,
    }
    // With a `start`, the URI is a directory: a glob's prefix never names
    // the atom's own object.
    let names_object = start.is_empty() && !loc.key.is_empty() && !loc.key.ends_with('/');
    let name = loc.key.rsplit('/').next().unwrap_or(&loc.key).to_owned();
    let state = State {
        pages: Box::pin(pages.fuse()),
        prefix: loc.dir_prefix(),
        single: names_object.then_some((name, size_of)),
        last: None,
    };
    Box::pin(futures::stream::try_unfold(
        state,
        move |mut state| async move {
            while let Some(raw) = state
                .pages
                .try_next()
                .await
                .with_context(|| format!("cannot list {uri}"))?
            {
                let mut page: Vec<ObjectInfo> = raw
                    .into_iter()
                    .filter_map(|(key, size, identity)| {
                        listed_object(uri, &state.prefix, &key, size, identity)
                    })
                    .collect();
                if page.is_empty() {
                    continue;
                }
                page.sort_by(|a, b| a.relative_path.cmp(&b.relative_path));
                check_page_order(uri, state.last.as_deref(), &page)?;
                state.last = page.last().map(|o| o.relative_path.clone());
                state.single = None;
                return Ok(Some((page, state)));
            }
            if let Some((name, size_of)) = state.single.take()
                && let Some((size, identity)) = size_of().await?
            {
                let one = ObjectInfo {
                    uri: uri.to_owned(),
                    relative_path: name,
                    size,
                    identity,
                };
                return Ok(Some((vec![one], state)));
            }
            Ok(None)
        },
    ))
}

/// Refuses a page that does not sort after the pages before it (`last` is
/// the last path listed so far; `page` is sorted). Stores that list in
/// byte order (S3 general-purpose buckets, GCS) never trip this; a store
/// that does not (S3 directory buckets) would otherwise have datums planned
/// from a listing that breaks the order the planner relies on.
pub(crate) fn check_page_order(uri: &str, last: Option<&str>, page: &[ObjectInfo]) -> Result<()> {
    if let (Some(last), Some(first)) = (last, page.first())
        && first.relative_path.as_str() <= last
    {
        bail!(
            "cannot list {uri}: the store listed {:?} after {last:?}, not in byte order",
            first.relative_path
        );
    }
    Ok(())
}

/// How transfers are split and how hard they are retried. The defaults are
/// what the worker and falconerid use; tests and the benchmark may shrink them.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// Objects larger than this are downloaded as parallel ranged reads and
    /// uploaded in parts.
    pub multipart_threshold: u64,
    /// The size of one ranged read or uploaded part (at least 8 MiB in
    /// production: S3 refuses parts under 5 MiB but the last).
    pub part_size: u64,
    /// Ranged reads or parts of one object in flight at once.
    pub part_concurrency: usize,
    /// Files of one datum transferred at once.
    pub file_concurrency: usize,
    /// Attempts at one part whose body broke off mid-way (requests that fail
    /// outright are retried by the SDK's own retry policy).
    pub attempts: u32,
    /// A transfer that receives nothing for this long is abandoned (and
    /// retried): a stall, not a total time limit, so big files can take as
    /// long as they need.
    pub stall_timeout: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            multipart_threshold: 32 * MIB,
            part_size: 16 * MIB,
            part_concurrency: 8,
            file_concurrency: 64,
            attempts: 5,
            stall_timeout: Duration::from_secs(120),
        }
    }
}

pub(crate) const MIB: u64 = 1024 * 1024;

/// A response body as a stream of chunks.
pub(crate) type ByteChunks = Pin<Box<dyn Stream<Item = Result<Bytes>> + Send>>;

/// The start of one read of an object.
pub(crate) struct Fetched {
    /// The whole object's size.
    pub total: u64,
    /// A version tag (ETag, generation) that later ranged reads must match,
    /// so the parts of one download all come from the same object.
    pub version: Option<String>,
    pub body: ByteChunks,
}

/// Reads one object: `range` is `(first, last)` inclusive, or the whole object;
/// `version` is the tag ranged reads must match.
pub(crate) type Fetch<'a> =
    &'a (dyn Fn(Option<(u64, u64)>, Option<String>) -> BoxFuture<'static, Result<Fetched>> + Sync);

/// Why one attempt at a part failed: the request itself (already retried by
/// the client, so final), or the body breaking off (worth another try).
enum PartError {
    Request(anyhow::Error),
    Body(anyhow::Error),
}

/// Streams an object into the new file `dest`: small objects with one read,
/// large ones as parallel ranged reads written in place. Checks the size.
/// `known` is the object's size and version when the caller already has
/// them (then a large object is never read whole); otherwise the size comes
/// from the first, whole-object read.
pub(crate) async fn download_to(
    dest: &Path,
    tuning: &Tuning,
    known: Option<(u64, Option<String>)>,
    fetch: Fetch<'_>,
) -> Result<u64> {
    let (total, version, first_body) = match known {
        Some((total, version)) if total > tuning.multipart_threshold => (total, version, None),
        Some((total, version)) => {
            let first = fetch(None, version.clone()).await?;
            (total, version, Some(first.body))
        }
        None => {
            let first = fetch(None, None).await?;
            (first.total, first.version, Some(first.body))
        }
    };
    let file = create_dest(dest).await?;
    if total <= tuning.multipart_threshold {
        // One read; if its body breaks off, read it again from the start.
        let mut body = first_body;
        let mut attempt = 1;
        loop {
            let chunks = match body.take() {
                Some(chunks) => chunks,
                None => match fetch(None, version.clone()).await {
                    Ok(fetched) => fetched.body,
                    Err(err) => return Err(err),
                },
            };
            match write_part(dest, 0, total, chunks, tuning.stall_timeout).await {
                Ok(()) => break,
                Err(PartError::Body(err)) if attempt < tuning.attempts => {
                    tracing::warn!(dest = %dest.display(), attempt, "download broke off, retrying: {err:#}");
                    backoff(attempt).await;
                    attempt += 1;
                }
                Err(PartError::Body(err) | PartError::Request(err)) => return Err(err),
            }
        }
    } else {
        // Drop any whole-object body: its connection closes, and the parts
        // are read by range instead.
        drop(first_body);
        file.set_len(total)
            .await
            .with_context(|| format!("cannot size {}", dest.display()))?;
        let part_size = tuning.part_size.max(1);
        let parts = total.div_ceil(part_size);
        futures::stream::iter(0..parts)
            .map(|index| {
                let start = index * part_size;
                let len = part_size.min(total - start);
                let version = version.clone();
                async move {
                    let mut attempt = 1;
                    loop {
                        let result = match fetch(Some((start, start + len - 1)), version.clone())
                            .await
                        {
                            Ok(fetched) => {
                                write_part(dest, start, len, fetched.body, tuning.stall_timeout)
                                    .await
                            }
                            Err(err) => Err(PartError::Request(err)),
                        };
                        match result {
                            Ok(()) => return anyhow::Ok(()),
                            Err(PartError::Body(err)) if attempt < tuning.attempts => {
                                tracing::warn!(dest = %dest.display(), start, attempt, "ranged read broke off, retrying: {err:#}");
                                backoff(attempt).await;
                                attempt += 1;
                            }
                            Err(PartError::Body(err) | PartError::Request(err)) => {
                                return Err(err.context(format!("bytes {start}..{}", start + len)));
                            }
                        }
                    }
                }
            })
            .buffer_unordered(tuning.part_concurrency.max(1))
            .try_collect::<()>()
            .await?;
    }
    // No fsync: inputs are a scratch copy (see file.rs).
    drop(file);
    let written = tokio::fs::metadata(dest)
        .await
        .with_context(|| format!("cannot stat {}", dest.display()))?
        .len();
    if written != total {
        bail!("downloaded {written} bytes, but the object has {total}");
    }
    Ok(total)
}

/// Creates (or truncates) `dest` without following a symlink planted at the
/// final name: the caller checked the directory.
async fn create_dest(dest: &Path) -> Result<tokio::fs::File> {
    tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dest)
        .await
        .with_context(|| format!("cannot create {}", dest.display()))
}

/// Writes the `len` bytes of `body` at `offset` in `dest`, checking that
/// exactly `len` arrive.
async fn write_part(
    dest: &Path,
    offset: u64,
    len: u64,
    mut body: ByteChunks,
    stall: Duration,
) -> Result<(), PartError> {
    let local = |err: std::io::Error| {
        PartError::Request(
            anyhow::Error::new(err).context(format!("cannot write {}", dest.display())),
        )
    };
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dest)
        .await
        .map_err(local)?;
    file.seek(std::io::SeekFrom::Start(offset))
        .await
        .map_err(local)?;
    let mut file = tokio::io::BufWriter::with_capacity(256 * 1024, file);
    let mut received = 0u64;
    loop {
        let chunk = match tokio::time::timeout(stall, body.next()).await {
            Err(_) => {
                return Err(PartError::Body(anyhow!(
                    "nothing received for {}",
                    humantime::format_duration(stall)
                )));
            }
            Ok(None) => break,
            Ok(Some(Err(err))) => return Err(PartError::Body(err)),
            Ok(Some(Ok(chunk))) => chunk,
        };
        received += chunk.len() as u64;
        if received > len {
            return Err(PartError::Request(anyhow!(
                "the server sent more than the {len} bytes asked for"
            )));
        }
        file.write_all(&chunk).await.map_err(local)?;
    }
    file.flush().await.map_err(local)?;
    if received != len {
        return Err(PartError::Body(anyhow!(
            "received {received} of {len} bytes"
        )));
    }
    Ok(())
}

/// Waits before the next attempt: 200 ms, 400 ms, 800 ms … (at most 10 s),
/// with jitter so parallel parts do not retry in lockstep.
pub(crate) async fn backoff(attempt: u32) {
    let base = 200u64.saturating_mul(1 << attempt.min(6)).min(10_000);
    let jitter = rand::random::<u64>() % (base / 2 + 1);
    tokio::time::sleep(Duration::from_millis(base / 2 + jitter)).await;
}

/// The part size for uploading `size` bytes: at least `tuning.part_size`, and
/// large enough that no upload needs more than 10,000 parts (S3's limit).
pub(crate) fn upload_part_size(size: u64, tuning: &Tuning) -> u64 {
    tuning.part_size.max(size.div_ceil(10_000)).max(1)
}

/// The size of a local file to upload.
pub(crate) async fn local_size(src: &Path) -> Result<u64> {
    let meta = tokio::fs::metadata(src)
        .await
        .with_context(|| format!("cannot read {}", src.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file", src.display());
    }
    Ok(meta.len())
}

/// Fails when `src` changed size while it was uploaded: the object would not
/// be what the command wrote.
pub(crate) async fn check_unchanged(src: &Path, size: u64) -> Result<()> {
    let now = local_size(src).await?;
    if now != size {
        bail!(
            "{} changed size during the upload ({size} → {now} bytes)",
            src.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_parse() {
        let uri = ObjectUri::parse("s3://b/some/key", "s3").unwrap();
        assert_eq!(uri.bucket, "b");
        assert_eq!(uri.key, "some/key");
        assert_eq!(uri.dir_prefix(), "some/key/");
        assert_eq!(ObjectUri::parse("gs://b", "gs").unwrap().dir_prefix(), "");
        assert_eq!(ObjectUri::parse("gs://b/", "gs").unwrap().dir_prefix(), "");
        assert!(ObjectUri::parse("s3:///k", "s3").is_err());
        assert!(ObjectUri::parse("gs://b/k", "s3").is_err());
    }

    #[test]
    fn listings_skip_markers_and_staging() {
        let base = "s3://b/in";
        assert_eq!(
            listed_object(base, "in/", "in/a/b.txt", 3, "etag:\"e\"".into()).unwrap(),
            ObjectInfo {
                uri: "s3://b/in/a/b.txt".into(),
                relative_path: "a/b.txt".into(),
                size: 3,
                identity: "etag:\"e\"".into(),
            }
        );
        assert!(listed_object(base, "in/", "in/a/", 0, String::new()).is_none());
        assert!(listed_object(base, "in/", "in/", 0, String::new()).is_none());
        let staged = "in/.falconeri-staging/job-1/x";
        assert!(listed_object(base, "in/", staged, 1, String::new()).is_none());
    }

    /// The pages `object_listing` makes of `raw` pages for `uri`, with the
    /// single-object answer `single`, and whether that was asked.
    async fn listing(
        uri: &str,
        raw: Vec<Vec<(&str, u64)>>,
        single: Option<u64>,
    ) -> (Result<Vec<Vec<String>>>, bool) {
        let asked = std::sync::atomic::AtomicBool::new(false);
        let raw = raw.into_iter().map(|page| {
            Ok(page
                .into_iter()
                .map(|(key, size)| (key.to_owned(), size, String::new()))
                .collect())
        });
        let loc = ObjectUri::parse(uri, "s3").unwrap();
        let pages = object_listing(uri, &loc, "", futures::stream::iter(raw), || async {
            asked.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(single.map(|size| (size, String::new())))
        })
        .map_ok(|page| page.into_iter().map(|o| o.relative_path).collect())
        .try_collect()
        .await;
        (pages, asked.into_inner())
    }

    #[tokio::test]
    async fn object_listings_skip_empty_pages_and_keep_order() {
        let raw = vec![
            vec![("in/", 0), ("in/b", 1), ("in/a", 1)],
            vec![("in/.falconeri-staging/job-1/x", 1)],
            vec![],
            vec![("in/c/d", 1)],
        ];
        let (pages, asked) = listing("s3://b/in", raw, Some(9)).await;
        assert_eq!(pages.unwrap(), [vec!["a", "b"], vec!["c/d"]]);
        assert!(!asked, "a prefix with objects is not one object");

        let raw = vec![vec![("in/b", 1)], vec![("in/a", 1)]];
        let err = listing("s3://b/in/", raw, None).await.0.unwrap_err();
        assert!(err.to_string().contains("not in byte order"), "{err}");
    }

    #[tokio::test]
    async fn an_object_uri_lists_the_object_only_when_nothing_is_under_it() {
        let (pages, asked) = listing("s3://b/in/one.txt", vec![vec![]], Some(4)).await;
        assert_eq!(pages.unwrap(), [vec!["one.txt"]]);
        assert!(asked);
        let (pages, _) = listing("s3://b/in/none.txt", vec![], None).await;
        assert!(pages.unwrap().is_empty());
        // A prefix URI never names an object.
        let (pages, asked) = listing("s3://b/in/", vec![], Some(4)).await;
        assert!(pages.unwrap().is_empty());
        assert!(!asked);
    }

    #[test]
    fn part_sizes_respect_the_part_limit() {
        let tuning = Tuning::default();
        assert_eq!(upload_part_size(1, &tuning), tuning.part_size);
        let huge = 5 * 1024 * 1024 * MIB;
        assert!(huge.div_ceil(upload_part_size(huge, &tuning)) <= 10_000);
    }
}
