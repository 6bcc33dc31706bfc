//! `gs://bucket/prefix/` storage on Google Cloud Storage.
//!
//! Object data moves through the official `google-cloud-storage` client
//! (reads, including ranged reads; single-shot and resumable uploads). Its
//! listing, copy and delete calls are gRPC only, which no emulator speaks, so
//! those go to the JSON API (`objects.list`, `objects.rewrite`,
//! `objects.delete`, `objects.get`) with the same credentials: the code the
//! tests run against fake-gcs-server is the code that runs against GCS.
//!
//! Credentials are Application Default Credentials (a service-account key in
//! `GOOGLE_APPLICATION_CREDENTIALS`, `gcloud auth application-default`, or
//! the metadata server, which is how GKE workload identity arrives). With
//! `STORAGE_EMULATOR_HOST=host:port` set, requests go to that emulator over
//! plain HTTP without credentials.

use std::{
    path::Path,
    sync::{Arc, LazyLock},
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use async_trait::async_trait;
use futures::{FutureExt, Stream, StreamExt, TryStreamExt, stream::BoxStream};
use google_cloud_auth::credentials::{CacheableResource, Credentials};
use google_cloud_gax::retry_policy::RetryPolicyExt;
use google_cloud_storage::{
    client::Storage as GcsClient, model_ext::ReadRange, retry_policy::RetryableErrors,
};
use serde::Deserialize;

use super::{
    Storage,
    object::{
        ByteChunks, Fetched, KeyPage, ObjectUri, Tuning, backoff, check_unchanged, download_to,
        local_size, object_listing,
    },
};
use crate::plan::ObjectInfo;

/// Objects in Google Cloud Storage (or its emulator).
#[derive(Debug, Clone, Default)]
pub struct GcsStorage {
    tuning: Tuning,
}

impl GcsStorage {
    /// A backend with non-default transfer tuning (tests, the benchmark).
    pub fn with_tuning(tuning: Tuning) -> GcsStorage {
        GcsStorage { tuning }
    }
}

/// Everything one process needs to talk to GCS, made once: the official
/// client (a connection pool), the credentials (a token cache) and an HTTP
/// client for the JSON API. Its connections belong to the Tokio runtime that
/// first used it (see the S3 backend).
struct Clients {
    /// `https://storage.googleapis.com`, or the emulator's `http://host:port`.
    endpoint: String,
    data: GcsClient,
    credentials: Credentials,
    http: reqwest::Client,
}

// Written by hand: the credentials must never be printed.
impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clients")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// One set of clients per process. The endpoint is fixed by the
/// environment, which does not change while the process runs.
static CLIENTS: LazyLock<tokio::sync::OnceCell<Arc<Clients>>> =
    LazyLock::new(tokio::sync::OnceCell::new);

/// How many times the official client tries one request. Bounded by
/// attempts, not only by time, so a dead endpoint fails in seconds.
const ATTEMPTS: u32 = 5;

async fn clients() -> Result<Arc<Clients>> {
    CLIENTS
        .get_or_try_init(|| async {
            let emulator = std::env::var("STORAGE_EMULATOR_HOST")
                .ok()
                .filter(|host| !host.is_empty());
            let (endpoint, credentials) = match emulator {
                Some(host) => {
                    let endpoint = if host.contains("://") {
                        host.trim_end_matches('/').to_owned()
                    } else {
                        format!("http://{host}")
                    };
                    (
                        endpoint,
                        google_cloud_auth::credentials::anonymous::Builder::new().build(),
                    )
                }
                None => (
                    "https://storage.googleapis.com".to_owned(),
                    google_cloud_auth::credentials::Builder::default()
                        .build()
                        .context("cannot load Google application default credentials")?,
                ),
            };
            let data = GcsClient::builder()
                .with_endpoint(endpoint.clone())
                .with_credentials(credentials.clone())
                .with_retry_policy(RetryableErrors.with_attempt_limit(ATTEMPTS))
                .build()
                .await
                .context("cannot create the Cloud Storage client")?;
            let http = reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                // JSON API calls carry no object data, so a whole-request
                // limit is right for them.
                .timeout(Duration::from_secs(120))
                .build()
                .context("cannot create an HTTP client")?;
            anyhow::Ok(Arc::new(Clients {
                endpoint,
                data,
                credentials,
                http,
            }))
        })
        .await
        .cloned()
}

/// Percent-encodes one URL path segment (an object name, '/' included).
fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The official client's name for a bucket.
fn bucket_path(bucket: &str) -> String {
    format!("projects/_/buckets/{bucket}")
}

/// An object as `objects.list` and `objects.get` describe it. Sizes are
/// decimal strings in the JSON API.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonObject {
    name: String,
    #[serde(default)]
    size: Option<serde_json::Value>,
    #[serde(default)]
    generation: Option<serde_json::Value>,
    /// Base64 MD5 of the bytes; absent for composite objects.
    #[serde(default)]
    md5_hash: Option<String>,
    /// Base64 CRC32C of the bytes; every object has one.
    #[serde(default)]
    crc32c: Option<String>,
}

impl JsonObject {
    fn size(&self) -> u64 {
        match &self.size {
            Some(serde_json::Value::String(s)) => s.parse().unwrap_or(0),
            Some(serde_json::Value::Number(n)) => n.as_u64().unwrap_or(0),
            _ => 0,
        }
    }

    /// What identifies this version of the object's bytes (see
    /// [`ObjectInfo::identity`]): its MD5 where it has one, so the same
    /// bytes uploaded again are the same object; otherwise (composite
    /// objects) its generation, which every overwrite changes; and its
    /// CRC32C either way.
    fn identity(&self) -> String {
        let crc = self.crc32c.as_deref().unwrap_or("");
        match (&self.md5_hash, self.generation()) {
            (Some(md5), _) => format!("md5:{md5} crc32c:{crc}"),
            (None, Some(generation)) => format!("generation:{generation} crc32c:{crc}"),
            (None, None) => format!("crc32c:{crc}"),
        }
    }

    fn generation(&self) -> Option<String> {
        match &self.generation {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            _ => None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListPage {
    #[serde(default)]
    items: Vec<JsonObject>,
    next_page_token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RewriteResponse {
    done: bool,
    rewrite_token: Option<String>,
}

impl Clients {
    /// Sends a JSON API request with fresh auth headers, retrying transient
    /// failures (connection errors, 429, 5xx) with backoff. Answers 404 as
    /// `None`.
    async fn json_call(
        &self,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<Option<reqwest::Response>> {
        let mut attempt = 1;
        loop {
            let headers = match self
                .credentials
                .headers(http::Extensions::new())
                .await
                .map_err(|err| anyhow!("cannot get Google credentials: {err}"))?
            {
                CacheableResource::New { data, .. } => data,
                CacheableResource::NotModified => http::HeaderMap::new(),
            };
            let result = build(&self.http).headers(headers).send().await;
            let transient = match &result {
                Ok(response) => {
                    let status = response.status();
                    status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS
                }
                Err(err) => err.is_connect() || err.is_timeout() || err.is_request(),
            };
            if transient && attempt < ATTEMPTS {
                backoff(attempt).await;
                attempt += 1;
                continue;
            }
            // reqwest errors name the URL, which holds no secrets (tokens
            // travel in headers).
            let response = result?;
            let status = response.status();
            if status == reqwest::StatusCode::NOT_FOUND {
                return Ok(None);
            }
            if !status.is_success() {
                let body = response.text().await.unwrap_or_default();
                bail!("Cloud Storage answered {status}: {}", body.trim());
            }
            return Ok(Some(response));
        }
    }

    fn object_url(&self, bucket: &str, name: &str) -> String {
        format!(
            "{}/storage/v1/b/{}/o/{}",
            self.endpoint,
            encode_segment(bucket),
            encode_segment(name)
        )
    }

    /// The size and identity of an object, or `None` if there is none.
    async fn stat(&self, loc: &ObjectUri) -> Result<Option<(u64, String)>> {
        Ok(self
            .metadata(loc)
            .await?
            .map(|object| (object.size(), object.identity())))
    }

    /// An object's `objects.get` metadata, or `None` if there is none.
    async fn metadata(&self, loc: &ObjectUri) -> Result<Option<JsonObject>> {
        let url = self.object_url(&loc.bucket, &loc.key);
        match self.json_call(|http| http.get(&url)).await? {
            None => Ok(None),
            Some(response) => Ok(Some(
                response.json().await.context("bad objects.get answer")?,
            )),
        }
    }

    /// Every object name under `prefix` with its size, page by page as
    /// `objects.list` returns them (1,000 a page, in byte order), without a
    /// delimiter (so recursively).
    fn object_pages(
        self: Arc<Self>,
        bucket: &str,
        prefix: &str,
    ) -> impl Stream<Item = Result<KeyPage>> + Send + 'static {
        let url = format!(
            "{}/storage/v1/b/{}/o",
            self.endpoint,
            encode_segment(bucket)
        );
        let (bucket, prefix) = (bucket.to_owned(), prefix.to_owned());
        // The state is the token of the next page: `Some(None)` for the
        // first, `None` once the last has been read.
        futures::stream::try_unfold(Some(None::<String>), move |token| {
            let (clients, url, bucket, prefix) =
                (self.clone(), url.clone(), bucket.clone(), prefix.clone());
            async move {
                let Some(token) = token else {
                    return Ok(None);
                };
                let response = clients
                    .json_call(|http| {
                        let mut request = http.get(&url).query(&[
                            ("prefix", prefix.as_str()),
                            ("maxResults", "1000"),
                            (
                                "fields",
                                "items(name,size,generation,md5Hash,crc32c),nextPageToken",
                            ),
                        ]);
                        if let Some(token) = &token {
                            request = request.query(&[("pageToken", token)]);
                        }
                        request
                    })
                    .await?
                    .ok_or_else(|| anyhow!("bucket {bucket:?} does not exist"))?;
                let page: ListPage = response.json().await.context("bad objects.list answer")?;
                let next = page.next_page_token.filter(|t| !t.is_empty()).map(Some);
                let keys = page.items.into_iter().map(|o| {
                    let (size, identity) = (o.size(), o.identity());
                    (o.name, size, identity)
                });
                Ok(Some((keys.collect(), next)))
            }
        })
    }

    /// Deletes one object; a missing one is fine.
    async fn delete(&self, bucket: &str, name: &str) -> Result<()> {
        let url = self.object_url(bucket, name);
        self.json_call(|http| http.delete(&url)).await?;
        Ok(())
    }
}

#[async_trait]
impl Storage for GcsStorage {
    fn list_pages_from<'a>(
        &'a self,
        uri: &'a str,
        start: &'a str,
    ) -> BoxStream<'a, Result<Vec<ObjectInfo>>> {
        let listing = async move {
            let loc = ObjectUri::parse(uri, "gs")?;
            let clients = clients().await?;
            let pages = clients
                .clone()
                .object_pages(&loc.bucket, &format!("{}{start}", loc.dir_prefix()));
            let size_of = {
                let loc = loc.clone();
                move || async move { clients.stat(&loc).await }
            };
            anyhow::Ok(object_listing(uri, &loc, start, pages, size_of))
        };
        Box::pin(futures::stream::once(listing).try_flatten())
    }

    async fn download(&self, uri: &str, dest: &Path) -> Result<u64> {
        let loc = ObjectUri::parse(uri, "gs")?;
        let clients = clients().await?;
        let fetch = |range: Option<(u64, u64)>, version: Option<String>| {
            let clients = clients.clone();
            let loc = loc.clone();
            async move {
                let mut request = clients.data.read_object(bucket_path(&loc.bucket), &loc.key);
                if let Some((first, last)) = range {
                    request = request.set_read_range(ReadRange::segment(first, last - first + 1));
                }
                // Every part of one download reads the same generation.
                if let Some(generation) = version.and_then(|v| v.parse::<i64>().ok()) {
                    request = request.set_generation(generation);
                }
                let response = request.send().await.map_err(anyhow::Error::new)?;
                let object = response.object();
                let body: ByteChunks = Box::pin(futures::stream::unfold(
                    response,
                    |mut response| async move {
                        response
                            .next()
                            .await
                            .map(|chunk| (chunk.map_err(anyhow::Error::new), response))
                    },
                ));
                Ok(Fetched {
                    total: u64::try_from(object.size).unwrap_or(0),
                    version: Some(object.generation.to_string()),
                    body,
                })
            }
            .boxed()
        };
        // The size and generation come from objects.get: the media
        // download's headers do not always carry the stored size (the
        // emulator omits it), and the size decides between one read and
        // ranged reads, and checks the result.
        let object = clients
            .metadata(&loc)
            .await?
            .ok_or_else(|| anyhow!("{uri} does not exist"))?;
        download_to(
            dest,
            &self.tuning,
            Some((object.size(), object.generation())),
            &fetch,
        )
        .await
    }

    async fn upload(&self, src: &Path, uri: &str) -> Result<u64> {
        let loc = ObjectUri::parse(uri, "gs")?;
        if loc.key.is_empty() || loc.key.ends_with('/') {
            bail!("{uri:?} names no object");
        }
        let clients = clients().await?;
        let size = local_size(src).await?;
        let file = tokio::fs::File::open(src)
            .await
            .with_context(|| format!("cannot open {}", src.display()))?;
        // The file is the payload: the client streams it and, being
        // seekable, re-reads from the last persisted byte when a resumable
        // upload is interrupted. Nothing is buffered whole. The CRC32C is
        // computed before sending (one extra local read) so the server
        // checks it; a checksum sent after the data is refused by the
        // emulator on single-shot uploads.
        let request = clients
            .data
            .write_object(bucket_path(&loc.bucket), &loc.key, file)
            .with_resumable_upload_threshold(
                usize::try_from(self.tuning.multipart_threshold).unwrap_or(usize::MAX),
            )
            .precompute_checksums()
            .await
            .map_err(anyhow::Error::new)
            .with_context(|| format!("cannot read {}", src.display()))?;
        let object = request
            .send_unbuffered()
            .await
            .map_err(anyhow::Error::new)?;
        check_unchanged(src, size).await?;
        if u64::try_from(object.size).ok() != Some(size) {
            bail!(
                "uploaded {size} bytes, but the server stored {}",
                object.size
            );
        }
        Ok(size)
    }

    async fn rename(&self, from: &str, to: &str) -> Result<()> {
        let from = ObjectUri::parse(from, "gs")?;
        let to = ObjectUri::parse(to, "gs")?;
        let clients = clients().await?;
        // objects.rewrite copies any size (large ones over several calls,
        // each resuming with the token of the last).
        let url = format!(
            "{}/rewriteTo/b/{}/o/{}",
            clients.object_url(&from.bucket, &from.key),
            encode_segment(&to.bucket),
            encode_segment(&to.key)
        );
        let mut token: Option<String> = None;
        loop {
            let response = clients
                .json_call(|http| {
                    let mut request = http.post(&url).json(&serde_json::json!({}));
                    if let Some(token) = &token {
                        request = request.query(&[("rewriteToken", token)]);
                    }
                    request
                })
                .await?
                .ok_or_else(|| anyhow!("gs://{}/{} does not exist", from.bucket, from.key))?;
            let rewrite: RewriteResponse = response
                .json()
                .await
                .context("bad objects.rewrite answer")?;
            if rewrite.done {
                break;
            }
            token = Some(
                rewrite
                    .rewrite_token
                    .ok_or_else(|| anyhow!("an unfinished rewrite came without a token"))?,
            );
        }
        clients.delete(&from.bucket, &from.key).await
    }

    async fn exists(&self, uri: &str) -> Result<bool> {
        let loc = ObjectUri::parse(uri, "gs")?;
        Ok(clients().await?.stat(&loc).await?.is_some())
    }

    async fn delete_prefix(&self, uri: &str) -> Result<()> {
        let loc = ObjectUri::parse(uri, "gs")?;
        let prefix = loc.dir_prefix();
        if prefix.is_empty() {
            bail!("refusing to delete the whole bucket {uri:?}");
        }
        let clients = clients().await?;
        // Page by page from the start each time: every round deletes the
        // first page and lists again, so memory stays at one page and no
        // page token ever has to survive deletions (however the server
        // encodes them). Each round removes what it saw, so this ends.
        let mut previous_first: Option<String> = None;
        loop {
            let page = std::pin::pin!(clients.clone().object_pages(&loc.bucket, &prefix))
                .try_next()
                .await?
                .unwrap_or_default();
            let Some((first, _, _)) = page.first() else {
                return Ok(());
            };
            if previous_first.as_deref() == Some(first.as_str()) {
                bail!("{uri}: {first:?} is still listed after it was deleted");
            }
            previous_first = Some(first.clone());
            futures::stream::iter(page)
                .map(|(name, _, _)| {
                    let clients = clients.clone();
                    let bucket = loc.bucket.clone();
                    async move { clients.delete(&bucket, &name).await }
                })
                .buffer_unordered(self.tuning.file_concurrency.max(1))
                .try_collect::<()>()
                .await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_are_encoded_as_one_segment() {
        assert_eq!(encode_segment("a/b c.txt"), "a%2Fb%20c.txt");
        assert_eq!(bucket_path("b"), "projects/_/buckets/b");
    }

    #[test]
    fn json_sizes_are_strings_or_numbers() {
        let o: JsonObject = serde_json::from_str(r#"{"name":"a","size":"12"}"#).unwrap();
        assert_eq!(o.size(), 12);
        let o: JsonObject = serde_json::from_str(r#"{"name":"a","size":3}"#).unwrap();
        assert_eq!(o.size(), 3);
    }
}
