//! A typed client for falconerid's REST API, used by the CLI and the worker.
//!
//! Non-2xx answers become [`ClientError::Api`] carrying the server's JSON error
//! body, so callers can react to `409 Conflict` (a stale claim) or `404`.

use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde::{Serialize, de::DeserializeOwned};

mod schedules;
mod workflows;

use crate::{
    api::{self, paths},
    status::DatumStatus,
};

/// Errors from talking to falconerid.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error status.
    #[error("{status}: {}", .body.error.message)]
    Api {
        status: StatusCode,
        body: api::ErrorBody,
    },
    /// The server could not be reached, or the answer was cut short.
    #[error("cannot reach falconerid at {url}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The answer was not what this client expects (a version mismatch?).
    #[error("unexpected answer from falconerid at {url}")]
    Decode {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("bad server URL {0:?}")]
    BadUrl(String),
    /// A log stream sent something this client cannot read.
    #[error("bad log stream from falconerid at {url}: {message}")]
    Stream { url: String, message: String },
}

impl ClientError {
    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True when the server said our claim on a datum is stale.
    pub fn is_conflict(&self) -> bool {
        self.status() == Some(StatusCode::CONFLICT)
    }

    /// True when the server said the thing does not exist.
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(StatusCode::NOT_FOUND)
    }

    /// True for failures worth retrying: the network, or the server being
    /// briefly unable to answer.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Transport { .. } => true,
            ClientError::Api { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            _ => false,
        }
    }
}

/// A connection to one falconerid.
#[derive(Clone)]
pub struct Client {
    base: Url,
    token: Option<String>,
    http: reqwest::Client,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// How long an ordinary request may take. Long-polls add their wait to it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// What starting a job may take beyond that: the server lists every input
/// before it answers, and listing a prefix of a million objects on S3 or GCS
/// is a thousand sequential pages, minutes at best. Hanging up would cancel
/// the start (nothing is created until the listing is complete).
const JOB_START_WAIT: Duration = Duration::from_secs(30 * 60);

impl Client {
    /// A client for the server at `base` (such as `http://127.0.0.1:8089`),
    /// sending `token` as a bearer token.
    pub fn new(base: &str, token: Option<String>) -> Result<Client, ClientError> {
        Client::through(base, None, token)
    }

    /// A client for the server at `base` that connects through the Unix
    /// socket `socket` when there is one (a local worker beside its
    /// falconerid: cheaper per byte than TCP), else to `base`'s host and
    /// port. `base` still gives the scheme and the path.
    pub fn through(
        base: &str,
        socket: Option<&std::path::Path>,
        token: Option<String>,
    ) -> Result<Client, ClientError> {
        let base = Url::parse(base).map_err(|_| ClientError::BadUrl(base.to_owned()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(ClientError::BadUrl(base.to_string()));
        }
        let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(10));
        if let Some(socket) = socket {
            builder = builder.unix_socket(socket);
        }
        let http = builder.build().map_err(|source| ClientError::Transport {
            url: base.to_string(),
            source,
        })?;
        Ok(Client { base, token, http })
    }

    /// The server's base URL.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    async fn send<Q: Serialize + ?Sized, B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: Option<&Q>,
        body: Option<&B>,
        extra_wait: Duration,
    ) -> Result<T, ClientError> {
        let (url, mut request) = self.request(method, path)?;
        request = request.timeout(REQUEST_TIMEOUT + extra_wait);
        if let Some(query) = query {
            request = request.query(query);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = transmit(&url, request).await?;
        decode(url, response).await
    }

    /// A request to `path` on the server, with the token, and its URL.
    fn request(
        &self,
        method: Method,
        path: &str,
    ) -> Result<(Url, reqwest::RequestBuilder), ClientError> {
        let url = self
            .base
            .join(path)
            .map_err(|_| ClientError::BadUrl(format!("{}{path}", self.base)))?;
        let mut request = self.http.request(method, url.clone());
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        Ok((url, request))
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send::<(), (), T>(Method::GET, path, None, None, Duration::ZERO)
            .await
    }

    async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.send::<(), B, T>(Method::POST, path, None, Some(body), Duration::ZERO)
            .await
    }

    /// `GET /healthz`.
    pub async fn health(&self) -> Result<serde_json::Value, ClientError> {
        self.get(paths::HEALTHZ).await
    }

    /// The server's version and setup.
    pub async fn version(&self) -> Result<api::VersionResponse, ClientError> {
        self.get(paths::VERSION).await
    }

    /// Starts a job from a pipeline spec (the JSON value of the spec file).
    pub async fn create_job(
        &self,
        spec: &serde_json::Value,
    ) -> Result<api::JobResponse, ClientError> {
        self.send::<(), _, _>(Method::POST, paths::JOBS, None, Some(spec), JOB_START_WAIT)
            .await
    }

    /// Lists the newest jobs.
    pub async fn list_jobs(&self, limit: Option<i64>) -> Result<api::JobListResponse, ClientError> {
        let query = api::JobListQuery {
            limit,
            ..Default::default()
        };
        self.send::<_, (), _>(Method::GET, paths::JOBS, Some(&query), None, Duration::ZERO)
            .await
    }

    /// One job by id.
    pub async fn job(&self, id: i64) -> Result<api::JobResponse, ClientError> {
        self.get(&paths::job(id)).await
    }

    /// One job by its unique name.
    pub async fn job_by_name(&self, name: &str) -> Result<api::JobResponse, ClientError> {
        self.get(&paths::job_by_name(&encode_segment(name))).await
    }

    /// A job named by a user: a name, or a number meaning an id.
    pub async fn find_job(&self, name_or_id: &str) -> Result<api::JobResponse, ClientError> {
        match self.job_by_name(name_or_id).await {
            Err(err) if err.is_not_found() => match name_or_id.parse::<i64>() {
                Ok(id) => self.job(id).await,
                Err(_) => Err(err),
            },
            other => other,
        }
    }

    /// A job with its datum counts and the running and failed datums.
    pub async fn describe_job(&self, id: i64) -> Result<api::JobDescribeResponse, ClientError> {
        self.get(&paths::job_describe(id)).await
    }

    /// A job's statistics (phase percentiles, throughput, slowest attempts,
    /// errors grouped, suggested resource requests).
    pub async fn job_stats(&self, id: i64) -> Result<api::JobStatsResponse, ClientError> {
        self.get(&paths::job_stats(id)).await
    }

    /// Waits (long-poll) until the job changes after `since`, or `wait` passes.
    pub async fn job_progress(
        &self,
        id: i64,
        since: Option<u64>,
        wait: Duration,
    ) -> Result<api::ProgressResponse, ClientError> {
        let query = api::ProgressQuery {
            since,
            wait_ms: Some(millis(wait)),
        };
        self.send::<_, (), _>(
            Method::GET,
            &paths::job_progress(id),
            Some(&query),
            None,
            wait,
        )
        .await
    }

    /// Starts a new job of the failed datums of job `id`.
    pub async fn retry_job(&self, id: i64) -> Result<api::JobResponse, ClientError> {
        self.post(&paths::job_retry(id), &()).await
    }

    /// Cancels job `id`: its workers stop, its unfinished datums become canceled.
    pub async fn cancel_job(&self, id: i64) -> Result<api::JobResponse, ClientError> {
        self.post(&paths::job_cancel(id), &()).await
    }

    /// The datums of a job, optionally only those in one state.
    pub async fn list_datums(
        &self,
        job_id: i64,
        status: Option<DatumStatus>,
        limit: Option<i64>,
    ) -> Result<api::DatumListResponse, ClientError> {
        let query = api::DatumListQuery {
            status,
            limit,
            ..api::DatumListQuery::default()
        };
        self.list_datums_where(job_id, &query).await
    }

    /// A job's datums by status, attempt outcome and page.
    pub async fn list_datums_where(
        &self,
        job_id: i64,
        query: &api::DatumListQuery,
    ) -> Result<api::DatumListResponse, ClientError> {
        self.send::<_, (), _>(
            Method::GET,
            &paths::job_datums(job_id),
            Some(query),
            None,
            Duration::ZERO,
        )
        .await
    }

    /// One datum with its files and captured output.
    pub async fn datum(&self, id: i64) -> Result<api::DatumResponse, ClientError> {
        self.get(&paths::datum(id)).await
    }

    /// Runs datum `id` (ended `error` or `canceled`) again, reopening its
    /// job if that had ended.
    pub async fn retry_datum(&self, id: i64) -> Result<api::DatumRetryResponse, ClientError> {
        self.post(&paths::datum_retry(id), &()).await
    }

    /// Reserves the next ready datum of a job, waiting up to `wait` for one.
    /// `resume`: the worker may hold datums it was never told about (see
    /// [`api::ReserveRequest::resume`]).
    pub async fn reserve(
        &self,
        job_id: i64,
        worker_id: &str,
        wait: Duration,
        max_datums: Option<u32>,
        resume: bool,
    ) -> Result<api::ReserveResponse, ClientError> {
        let body = api::ReserveRequest {
            worker_id: worker_id.to_owned(),
            wait_ms: Some(millis(wait)),
            max_datums,
            resume,
        };
        self.send::<(), _, _>(
            Method::POST,
            &paths::job_reserve(job_id),
            None,
            Some(&body),
            wait,
        )
        .await
    }

    /// Extends the lease on a datum we hold.
    pub async fn heartbeat(
        &self,
        datum_id: i64,
        claim: &api::Claim,
    ) -> Result<api::HeartbeatResponse, ClientError> {
        let body = api::HeartbeatRequest {
            claim: claim.clone(),
        };
        self.post(&paths::datum_heartbeat(datum_id), &body).await
    }

    /// Marks a datum we hold done, publishing its output files.
    pub async fn mark_done(
        &self,
        datum_id: i64,
        body: &api::DoneRequest,
    ) -> Result<api::DoneResponse, ClientError> {
        self.post(&paths::datum_done(datum_id), body).await
    }

    /// Reports a failed attempt on a datum we hold.
    pub async fn mark_error(
        &self,
        datum_id: i64,
        body: &api::ErrorRequest,
    ) -> Result<api::DatumSummary, ClientError> {
        self.post(&paths::datum_error(datum_id), body).await
    }

    /// Gives back a datum we hold because we are being stopped; the attempt
    /// does not count against `datum_tries`.
    pub async fn release(
        &self,
        datum_id: i64,
        body: &api::ReleaseRequest,
    ) -> Result<api::DatumSummary, ClientError> {
        self.post(&paths::datum_release(datum_id), body).await
    }

    /// Reports several datums of a batch at once.
    pub async fn report_batch(
        &self,
        job_id: i64,
        body: &api::BatchReportRequest,
    ) -> Result<api::BatchReportResponse, ClientError> {
        self.post(&paths::job_report(job_id), body).await
    }

    /// Extends the leases of every datum of a batch.
    pub async fn heartbeat_batch(
        &self,
        job_id: i64,
        body: &api::BatchHeartbeatRequest,
    ) -> Result<api::BatchHeartbeatResponse, ClientError> {
        self.post(&paths::job_heartbeat(job_id), body).await
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Percent-encodes a path segment (job names are validated, but a user may
/// type anything on the command line).
fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

impl Client {
    /// Sends chunk `seq` of the claimed attempt's log (worker): `data` is
    /// lines in [`crate::log_frame`]'s framing, sent as they are.
    pub async fn put_log_chunk(
        &self,
        datum_id: i64,
        claim: &api::Claim,
        seq: i64,
        data: bytes::Bytes,
    ) -> Result<api::LogAppendResponse, ClientError> {
        let path = paths::datum_log_chunk(datum_id, claim.attempt, seq);
        let (url, request) = self.request(Method::PUT, &path)?;
        let request = request
            .timeout(REQUEST_TIMEOUT)
            .query(&api::LogChunkQuery {
                worker_id: claim.worker_id.clone(),
            })
            .header(reqwest::header::CONTENT_TYPE, crate::log_frame::MEDIA_TYPE)
            .body(data);
        let response = transmit(&url, request).await?;
        decode(url, response).await
    }

    /// Sends the next chunk of an attempt's log as JSON, a line per object:
    /// the body workers sent before [`Client::put_log_chunk`], still
    /// accepted.
    pub async fn append_logs(
        &self,
        datum_id: i64,
        body: &api::LogAppendRequest,
    ) -> Result<api::LogAppendResponse, ClientError> {
        self.post(&paths::datum_logs(datum_id), body).await
    }

    /// A datum's logs as a stream of events (see `GET /v1/datums/{id}/logs`).
    pub async fn datum_logs(
        &self,
        datum_id: i64,
        query: &api::DatumLogsQuery,
    ) -> Result<LogEvents, ClientError> {
        self.open_stream(&paths::datum_logs(datum_id), query).await
    }

    /// A job's logs as a stream of events (see `GET /v1/jobs/{id}/logs`).
    pub async fn job_logs(
        &self,
        job_id: i64,
        query: &api::JobLogsQuery,
    ) -> Result<LogEvents, ClientError> {
        self.open_stream(&paths::job_logs(job_id), query).await
    }

    /// Opens a server-sent event stream. No overall timeout: a follow lasts
    /// as long as its job; [`LogEvents::next`] notices a silent server.
    async fn open_stream<Q: Serialize + ?Sized>(
        &self,
        path: &str,
        query: &Q,
    ) -> Result<LogEvents, ClientError> {
        let (url, request) = self.request(Method::GET, path)?;
        let request = request
            .query(query)
            .header(reqwest::header::ACCEPT, "text/event-stream");
        let response = transmit(&url, request).await?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return Err(api_error(status, &text));
        }
        Ok(LogEvents {
            url: url.to_string(),
            response,
            buffer: Vec::new(),
        })
    }
}

/// Sends `request` to `url`; a failure to reach the server is a transport
/// error (retried by callers that retry), naming the URL.
async fn transmit(
    url: &Url,
    request: reqwest::RequestBuilder,
) -> Result<reqwest::Response, ClientError> {
    request
        .send()
        .await
        .map_err(|source| ClientError::Transport {
            url: url.to_string(),
            source,
        })
}

async fn decode<T: DeserializeOwned>(
    url: Url,
    response: reqwest::Response,
) -> Result<T, ClientError> {
    let status = response.status();
    if status.is_success() {
        return response
            .json::<T>()
            .await
            .map_err(|source| ClientError::Decode {
                url: url.to_string(),
                source,
            });
    }
    let text = response.text().await.unwrap_or_default();
    Err(api_error(status, &text))
}

/// The error of a non-2xx answer whose body is `text`: the server's JSON
/// error, or the text itself.
fn api_error(status: StatusCode, text: &str) -> ClientError {
    let body = serde_json::from_str::<api::ErrorBody>(text).unwrap_or_else(|_| api::ErrorBody {
        error: api::ErrorDetail {
            code: "http".to_owned(),
            message: if text.trim().is_empty() {
                status
                    .canonical_reason()
                    .unwrap_or("request failed")
                    .to_owned()
            } else {
                text.trim().chars().take(500).collect()
            },
            problems: Vec::new(),
        },
    });
    ClientError::Api { status, body }
}

/// How long a log stream may stay silent: the server sends a keep-alive
/// every 15 s, so this long without a byte means the connection is gone.
const STREAM_SILENCE: Duration = Duration::from_secs(60);

/// The events of a log stream (server-sent events), one at a time.
pub struct LogEvents {
    url: String,
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl std::fmt::Debug for LogEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogEvents").field("url", &self.url).finish()
    }
}

impl LogEvents {
    /// The next event, or None once the stream ended. An `error` event
    /// (the server failed after the stream began) is an error.
    pub async fn next(&mut self) -> Option<Result<api::LogEvent, ClientError>> {
        loop {
            if let Some(block) = self.take_block() {
                match self.parse(&block) {
                    Some(result) => return Some(result),
                    // A keep-alive comment.
                    None => continue,
                }
            }
            let chunk = match tokio::time::timeout(STREAM_SILENCE, self.response.chunk()).await {
                Ok(Ok(Some(chunk))) => chunk,
                Ok(Ok(None)) => return None,
                Ok(Err(source)) => {
                    return Some(Err(ClientError::Transport {
                        url: self.url.clone(),
                        source,
                    }));
                }
                Err(_) => {
                    return Some(Err(self.bad(format!(
                        "nothing received for {}s",
                        STREAM_SILENCE.as_secs()
                    ))));
                }
            };
            self.buffer.extend_from_slice(&chunk);
        }
    }

    /// The next complete event block (up to a blank line), if any.
    fn take_block(&mut self) -> Option<String> {
        let end = self.buffer.windows(2).position(|pair| pair == b"\n\n")?;
        let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
        Some(String::from_utf8_lossy(&block[..end]).into_owned())
    }

    /// One event block: `event:` and `data:` lines (`:` starts a comment).
    fn parse(&self, block: &str) -> Option<Result<api::LogEvent, ClientError>> {
        let mut name = "message";
        let mut data = String::new();
        for line in block.lines() {
            if let Some(value) = line.strip_prefix("event:") {
                name = value.trim_start();
            } else if let Some(value) = line.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(value.strip_prefix(' ').unwrap_or(value));
            }
        }
        if data.is_empty() {
            return None;
        }
        if name == "error" {
            return Some(Err(api_error(StatusCode::INTERNAL_SERVER_ERROR, &data)));
        }
        Some(serde_json::from_str(&data).map_err(|err| self.bad(format!("{err}"))))
    }

    fn bad(&self, message: String) -> ClientError {
        ClientError::Stream {
            url: self.url.clone(),
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded() {
        assert_eq!(
            encode_segment("word-frequencies-ab12c"),
            "word-frequencies-ab12c"
        );
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn only_http_urls() {
        assert!(Client::new("http://127.0.0.1:1", None).is_ok());
        assert!(Client::new("ftp://x", None).is_err());
        assert!(Client::new("not a url", None).is_err());
    }
}
