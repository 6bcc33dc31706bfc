//! `s3://bucket/prefix/` storage on aws-sdk-s3.
//!
//! Configuration is the SDK's standard chain: credentials from the
//! environment, the shared profile, web identity (IRSA) or the instance
//! metadata; the region from the same places (us-east-1 when none is set).
//! An S3-compatible server (MinIO, s3s, …) is reached through the standard
//! `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`; whenever a custom endpoint is
//! configured, requests use path-style addressing (`endpoint/bucket/key`),
//! because such servers rarely have a DNS name per bucket.

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, LazyLock, Mutex},
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use async_trait::async_trait;
use aws_sdk_s3::{
    Client,
    config::{BehaviorVersion, Region, retry::RetryConfig, timeout::TimeoutConfig},
    error::{DisplayErrorContext, SdkError},
    primitives::{ByteStream, Length},
    types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier},
};
use futures::{FutureExt, Stream, StreamExt, TryStreamExt, stream::BoxStream};
use tokio::io::AsyncReadExt;

use super::{
    Storage,
    object::{
        ByteChunks, Fetched, KeyPage, ObjectUri, Tuning, check_unchanged, download_to, local_size,
        object_listing, upload_part_size,
    },
};
use crate::plan::ObjectInfo;

/// Objects in S3 or an S3-compatible server.
#[derive(Debug, Clone, Default)]
pub struct S3Storage {
    tuning: Tuning,
}

impl S3Storage {
    /// A backend with non-default transfer tuning (tests, the benchmark).
    pub fn with_tuning(tuning: Tuning) -> S3Storage {
        S3Storage { tuning }
    }
}

/// The largest object one CopyObject can copy; larger ones are copied in parts.
const COPY_OBJECT_LIMIT: u64 = 5 * 1024 * 1024 * 1024;
/// How much of a file one read takes while streaming it to S3 (the SDK's
/// default, 4 KiB, makes a 1 GiB upload a quarter of a million reads).
const READ_BUFFER: usize = 256 * 1024;
/// The part size of a multipart copy.
const COPY_PART_SIZE: u64 = 1024 * 1024 * 1024;

/// One client per endpoint per process: a client owns a connection pool and
/// a credentials cache, so building one per file would redo TLS handshakes
/// and credential lookups. The key is the endpoint override, read from the
/// environment like the SDK does ("" for AWS itself). The client's
/// connections belong to the Tokio runtime that first used it, so a process
/// should do its storage work on one runtime (the tests share one).
static CLIENTS: LazyLock<Mutex<HashMap<String, Arc<tokio::sync::OnceCell<Client>>>>> =
    LazyLock::new(Default::default);

async fn client() -> Result<Client> {
    let endpoint = std::env::var("AWS_ENDPOINT_URL_S3")
        .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
        .unwrap_or_default();
    let cell = {
        let mut clients = CLIENTS
            .lock()
            .map_err(|_| anyhow!("the S3 client cache is poisoned"))?;
        clients.entry(endpoint.clone()).or_default().clone()
    };
    let client = cell
        .get_or_init(|| async move {
            let sdk = aws_config::defaults(BehaviorVersion::latest())
                // Transient failures (throttling, 5xx, dropped connections)
                // are retried with exponential backoff and jitter.
                .retry_config(
                    RetryConfig::standard()
                        .with_max_attempts(5)
                        .with_initial_backoff(Duration::from_millis(200)),
                )
                // Per-request limits only: connecting, and waiting for a
                // response to start. Bodies stream for as long as they take
                // (stalls are caught by `Tuning::stall_timeout`).
                .timeout_config(
                    TimeoutConfig::builder()
                        .connect_timeout(Duration::from_secs(10))
                        .read_timeout(Duration::from_secs(120))
                        .build(),
                )
                .load()
                .await;
            let mut config = aws_sdk_s3::config::Builder::from(&sdk);
            if !endpoint.is_empty() || sdk.endpoint_url().is_some() {
                config = config.force_path_style(true);
            }
            if sdk.region().is_none() {
                config = config.region(Region::from_static("us-east-1"));
            }
            Client::from_conf(config.build())
        })
        .await;
    Ok(client.clone())
}

/// An SDK error with its whole cause chain (the SDK's `Display` says only
/// "service error"). Credentials are never part of an SDK error.
fn sdk_error<E, R>(err: SdkError<E, R>) -> anyhow::Error
where
    E: std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    anyhow!("{}", DisplayErrorContext(err))
}

/// Percent-encodes a key for the `x-amz-copy-source` header ('/' stays).
fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for byte in key.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~/".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

impl S3Storage {
    /// The size of the object `key`, or `None` if there is none.
    async fn head(client: &Client, loc: &ObjectUri) -> Result<Option<u64>> {
        Ok(Self::stat(client, loc).await?.map(|(size, _)| size))
    }

    /// The size and identity (see [`ObjectInfo::identity`]) of the object
    /// `key`, or `None` if there is none.
    async fn stat(client: &Client, loc: &ObjectUri) -> Result<Option<(u64, String)>> {
        match client
            .head_object()
            .bucket(&loc.bucket)
            .key(&loc.key)
            .send()
            .await
        {
            Ok(head) => Ok(Some((
                u64::try_from(head.content_length().unwrap_or(0)).unwrap_or(0),
                s3_identity(head.e_tag(), head.last_modified()),
            ))),
            // HEAD responses have no body, so a missing object is just 404.
            Err(SdkError::ServiceError(err)) if err.raw().status().as_u16() == 404 => Ok(None),
            Err(err) => Err(sdk_error(err)),
        }
    }

    /// Every key under `prefix` with its size and ETag, page by page as
    /// ListObjectsV2 returns them (1,000 keys a page, in byte order).
    fn key_pages(
        client: &Client,
        bucket: &str,
        prefix: &str,
    ) -> impl Stream<Item = Result<KeyPage>> + Send + 'static {
        let pages = client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        futures::stream::unfold(pages, |mut pages| async move {
            let page = pages.next().await?.map_err(sdk_error).map(|page| {
                page.contents()
                    .iter()
                    .filter_map(|object| {
                        let size = u64::try_from(object.size().unwrap_or(0)).unwrap_or(0);
                        let identity = s3_identity(object.e_tag(), object.last_modified());
                        object.key().map(|key| (key.to_owned(), size, identity))
                    })
                    .collect()
            });
            Some((page, pages))
        })
    }

    async fn upload_multipart(
        &self,
        client: &Client,
        src: &Path,
        loc: &ObjectUri,
        size: u64,
    ) -> Result<()> {
        let part_size = upload_part_size(size, &self.tuning);
        self.multipart(
            client,
            loc,
            size,
            part_size,
            |upload_id, offset, len, number| async move {
                // Read straight from the file: the SDK streams it, and can
                // re-read it to retry the request.
                let body = ByteStream::read_from()
                    .path(src)
                    .buffer_size(READ_BUFFER)
                    .offset(offset)
                    .length(Length::Exact(len))
                    .build()
                    .await
                    .with_context(|| format!("cannot read {}", src.display()))?;
                let part = client
                    .upload_part()
                    .bucket(&loc.bucket)
                    .key(&loc.key)
                    .upload_id(upload_id)
                    .part_number(number)
                    .content_length(i64::try_from(len).unwrap_or(i64::MAX))
                    .body(body)
                    .send()
                    .await
                    .map_err(sdk_error)
                    .with_context(|| format!("part {number}"))?;
                Ok(CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(part.e_tag().map(str::to_owned))
                    .set_checksum_crc32(part.checksum_crc32().map(str::to_owned))
                    .set_checksum_crc32_c(part.checksum_crc32_c().map(str::to_owned))
                    .build())
            },
        )
        .await?;
        // The parts were checked one by one; check that they add up.
        let stored = Self::head(client, loc).await?;
        if stored != Some(size) {
            bail!("uploaded {size} bytes, but the server stored {stored:?}");
        }
        Ok(())
    }

    /// Copies an object larger than CopyObject allows, part by part.
    async fn copy_multipart(
        &self,
        client: &Client,
        source: &str,
        to: &ObjectUri,
        size: u64,
        part_size: u64,
    ) -> Result<()> {
        self.multipart(
            client,
            to,
            size,
            part_size,
            |upload_id, start, len, number| async move {
                let end = start + len - 1;
                let part = client
                    .upload_part_copy()
                    .bucket(&to.bucket)
                    .key(&to.key)
                    .upload_id(upload_id)
                    .part_number(number)
                    .copy_source(source)
                    .copy_source_range(format!("bytes={start}-{end}"))
                    .send()
                    .await
                    .map_err(sdk_error)
                    .with_context(|| format!("part {number}"))?;
                Ok(CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(
                        part.copy_part_result()
                            .and_then(|r| r.e_tag())
                            .map(str::to_owned),
                    )
                    .build())
            },
        )
        .await
    }

    /// Writes `size` bytes to `loc` as a multipart upload in parts of
    /// `part_size`, `send_part(upload_id, offset, length, number)` sending
    /// one, a bounded number at a time. Any failure aborts the upload: parts
    /// of an abandoned upload are stored (and billed) until aborted.
    async fn multipart<F, Fut>(
        &self,
        client: &Client,
        loc: &ObjectUri,
        size: u64,
        part_size: u64,
        send_part: F,
    ) -> Result<()>
    where
        F: Fn(String, u64, u64, i32) -> Fut,
        Fut: std::future::Future<Output = Result<CompletedPart>>,
    {
        let created = client
            .create_multipart_upload()
            .bucket(&loc.bucket)
            .key(&loc.key)
            .send()
            .await
            .map_err(sdk_error)?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| anyhow!("the server started a multipart upload without an id"))?
            .to_owned();
        let result = async {
            let parts: Vec<CompletedPart> = futures::stream::iter(0..size.div_ceil(part_size))
                .map(|index| {
                    let offset = index * part_size;
                    let len = part_size.min(size - offset);
                    match i32::try_from(index + 1) {
                        Ok(number) => {
                            send_part(upload_id.clone(), offset, len, number).left_future()
                        }
                        Err(_) => {
                            futures::future::ready(Err(anyhow!("too many parts"))).right_future()
                        }
                    }
                })
                .buffer_unordered(self.tuning.part_concurrency.max(1))
                .try_collect()
                .await?;
            complete_multipart(client, loc, &upload_id, parts).await
        }
        .await;
        if let Err(err) = result {
            if let Err(abort) = client
                .abort_multipart_upload()
                .bucket(&loc.bucket)
                .key(&loc.key)
                .upload_id(&upload_id)
                .send()
                .await
            {
                tracing::warn!(
                    key = loc.key,
                    "cannot abort the failed multipart upload: {}",
                    DisplayErrorContext(abort)
                );
            }
            return Err(err);
        }
        Ok(())
    }

    /// Copies `from` to `to`; objects over `copy_limit` bytes in parts.
    pub(crate) async fn copy(&self, from: &str, to: &str, copy_limit: u64) -> Result<()> {
        let client = client().await?;
        let from = ObjectUri::parse(from, "s3")?;
        let to = ObjectUri::parse(to, "s3")?;
        let source = format!("{}/{}", from.bucket, encode_key(&from.key));
        let size = Self::head(&client, &from)
            .await?
            .ok_or_else(|| anyhow!("s3://{}/{} does not exist", from.bucket, from.key))?;
        if size > copy_limit {
            self.copy_multipart(&client, &source, &to, size, copy_limit.min(COPY_PART_SIZE))
                .await
        } else {
            client
                .copy_object()
                .bucket(&to.bucket)
                .key(&to.key)
                .copy_source(source)
                .send()
                .await
                .map_err(sdk_error)?;
            Ok(())
        }
    }

    /// Like [`Storage::rename`], copying in parts above `copy_limit` bytes
    /// (5 GiB, S3's CopyObject limit, in production).
    pub async fn rename_with_copy_limit(
        &self,
        from: &str,
        to: &str,
        copy_limit: u64,
    ) -> Result<()> {
        self.copy(from, to, copy_limit).await?;
        let client = client().await?;
        let from = ObjectUri::parse(from, "s3")?;
        client
            .delete_object()
            .bucket(&from.bucket)
            .key(&from.key)
            .send()
            .await
            .map_err(sdk_error)?;
        Ok(())
    }
}

#[async_trait]
impl Storage for S3Storage {
    fn list_pages_from<'a>(
        &'a self,
        uri: &'a str,
        start: &'a str,
    ) -> BoxStream<'a, Result<Vec<ObjectInfo>>> {
        let listing = async move {
            let loc = ObjectUri::parse(uri, "s3")?;
            let client = client().await?;
            let pages = Self::key_pages(
                &client,
                &loc.bucket,
                &format!("{}{start}", loc.dir_prefix()),
            );
            let head = {
                let loc = loc.clone();
                move || async move { Self::stat(&client, &loc).await }
            };
            anyhow::Ok(object_listing(uri, &loc, start, pages, head))
        };
        Box::pin(futures::stream::once(listing).try_flatten())
    }

    async fn download(&self, uri: &str, dest: &Path) -> Result<u64> {
        let loc = ObjectUri::parse(uri, "s3")?;
        let client = client().await?;
        let fetch = |range: Option<(u64, u64)>, version: Option<String>| {
            let client = client.clone();
            let loc = loc.clone();
            async move {
                let mut request = client.get_object().bucket(&loc.bucket).key(&loc.key);
                if let Some((first, last)) = range {
                    request = request.range(format!("bytes={first}-{last}"));
                }
                if let Some(etag) = version {
                    request = request.if_match(etag);
                }
                let out = request.send().await.map_err(sdk_error)?;
                let len = u64::try_from(out.content_length().unwrap_or(0)).unwrap_or(0);
                let total = match out.content_range() {
                    // "bytes 0-99/1234"
                    Some(range) => range
                        .rsplit('/')
                        .next()
                        .and_then(|total| total.parse().ok())
                        .ok_or_else(|| anyhow!("bad Content-Range {range:?}"))?,
                    None => len,
                };
                let version = out.e_tag().map(str::to_owned);
                let body: ByteChunks =
                    Box::pin(futures::stream::unfold(out.body, |mut body| async move {
                        body.next()
                            .await
                            .map(|chunk| (chunk.map_err(anyhow::Error::new), body))
                    }));
                Ok(Fetched {
                    total,
                    version,
                    body,
                })
            }
            .boxed()
        };
        download_to(dest, &self.tuning, None, &fetch).await
    }

    async fn upload(&self, src: &Path, uri: &str) -> Result<u64> {
        let loc = ObjectUri::parse(uri, "s3")?;
        if loc.key.is_empty() || loc.key.ends_with('/') {
            bail!("{uri:?} names no object");
        }
        let client = client().await?;
        let size = local_size(src).await?;
        if size > self.tuning.multipart_threshold {
            self.upload_multipart(&client, src, &loc, size).await?;
        } else {
            // One PUT with a known Content-Length and a CRC32C computed up
            // front (one extra read of a small file), both checked by the
            // server, which also refuses the upload if the file changed in
            // between. As a header, the checksum replaces the SDK's default,
            // a CRC32 trailer after an aws-chunked body, which not every
            // S3-compatible server accepts. (Against s3s-fs the two cost the
            // same, within the noise of bench/storage. Multipart parts keep
            // the trailer: they are large, and read once.)
            let crc32c = file_crc32c(src, size).await?;
            let body = if size == 0 {
                ByteStream::from_static(b"")
            } else {
                ByteStream::read_from()
                    .path(src)
                    .buffer_size(READ_BUFFER)
                    .length(Length::Exact(size))
                    .build()
                    .await
                    .with_context(|| format!("cannot read {}", src.display()))?
            };
            client
                .put_object()
                .bucket(&loc.bucket)
                .key(&loc.key)
                .content_length(i64::try_from(size).unwrap_or(i64::MAX))
                .checksum_crc32_c(aws_smithy_types::base64::encode(crc32c.to_be_bytes()))
                .body(body)
                .send()
                .await
                .map_err(sdk_error)?;
        }
        check_unchanged(src, size).await?;
        Ok(size)
    }

    async fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.rename_with_copy_limit(from, to, COPY_OBJECT_LIMIT)
            .await
    }

    async fn exists(&self, uri: &str) -> Result<bool> {
        let loc = ObjectUri::parse(uri, "s3")?;
        let client = client().await?;
        Ok(Self::head(&client, &loc).await?.is_some())
    }

    async fn delete_prefix(&self, uri: &str) -> Result<()> {
        let loc = ObjectUri::parse(uri, "s3")?;
        let prefix = loc.dir_prefix();
        if prefix.is_empty() {
            bail!("refusing to delete the whole bucket {uri:?}");
        }
        let client = client().await?;
        // Page by page, so memory stays bounded: a page is at most 1,000
        // keys, what one DeleteObjects takes, and the listing resumes after
        // its last key, so deleting what it already returned is harmless.
        let mut pages = std::pin::pin!(Self::key_pages(&client, &loc.bucket, &prefix));
        while let Some(batch) = pages.try_next().await? {
            if batch.is_empty() {
                continue;
            }
            let objects = batch
                .iter()
                .map(|(key, _, _)| ObjectIdentifier::builder().key(key).build())
                .collect::<Result<Vec<_>, _>>()?;
            let deleted = client
                .delete_objects()
                .bucket(&loc.bucket)
                .delete(
                    Delete::builder()
                        .set_objects(Some(objects))
                        .quiet(true)
                        .build()?,
                )
                .send()
                .await
                .map_err(sdk_error)?;
            if let Some(error) = deleted.errors().first() {
                bail!(
                    "cannot delete {:?}: {}",
                    error.key().unwrap_or_default(),
                    error.message().unwrap_or_default()
                );
            }
        }
        Ok(())
    }
}

/// An object's identity from its ETag, as the listing and HEAD give it.
/// The ETag changes whenever the object's bytes do (a single-part upload's
/// is their MD5; a multipart upload's is derived from its parts' MD5s), and
/// ListObjectsV2 returns it for every key at no extra cost, whereas the
/// additional checksums (CRC32C and friends) are not in a listing. Some
/// S3-compatible servers leave the ETag out of listings (s3s-fs does): the
/// last-modified time then, to the second (HEAD gives no finer), which
/// every overwrite changes.
fn s3_identity(etag: Option<&str>, modified: Option<&aws_smithy_types::DateTime>) -> String {
    match (etag.filter(|etag| !etag.is_empty()), modified) {
        (Some(etag), _) => format!("etag:{etag}"),
        (None, Some(modified)) => format!("modified:{}", modified.secs()),
        (None, None) => String::new(),
    }
}

/// The CRC32C of the local file `src` of `size` bytes, read in chunks of at
/// most `READ_BUFFER`.
async fn file_crc32c(src: &Path, size: u64) -> Result<u32> {
    let mut file = tokio::fs::File::open(src)
        .await
        .with_context(|| format!("cannot open {}", src.display()))?;
    let chunk = usize::try_from(size).map_or(READ_BUFFER, |size| size.clamp(1, READ_BUFFER));
    let mut buffer = vec![0u8; chunk];
    let mut crc = 0;
    loop {
        let n = file
            .read(&mut buffer)
            .await
            .with_context(|| format!("cannot read {}", src.display()))?;
        if n == 0 {
            return Ok(crc);
        }
        crc = crc32c::crc32c_append(crc, &buffer[..n]);
    }
}

/// Completes a multipart upload (or copy) from its parts, in any order.
async fn complete_multipart(
    client: &Client,
    loc: &ObjectUri,
    upload_id: &str,
    mut parts: Vec<CompletedPart>,
) -> Result<()> {
    parts.sort_by_key(|part| part.part_number());
    client
        .complete_multipart_upload()
        .bucket(&loc.bucket)
        .key(&loc.key)
        .upload_id(upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .map_err(sdk_error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_sources_are_percent_encoded() {
        assert_eq!(encode_key("a/b c+d.txt"), "a/b%20c%2Bd.txt");
        assert_eq!(encode_key("é"), "%C3%A9");
    }
}
