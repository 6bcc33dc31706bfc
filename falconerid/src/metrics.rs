//! `GET /metrics`: falconerid's Prometheus metrics, in Prometheus' text
//! exposition format (version 0.0.4).
//!
//! # The crates
//!
//! The series are recorded through the `metrics` facade and rendered by
//! `metrics-exporter-prometheus` (both from metrics-rs, well kept). We chose
//! them over `prometheus-client`, the Prometheus project's own crate,
//! because that one writes only OpenMetrics text, where a counter family `x`
//! has samples named `x_total`; Debian's `promtool check metrics` (2.42, the
//! one our tests run) reads that as a second family without help text and
//! refuses it. The facade also keeps the instrumentation in handlers to one
//! line each. The exporter's HTTP listener and push gateway are left out
//! (falconerid answers `/metrics` on its own port); its histograms are
//! drained into their buckets on each scrape and by [`run_upkeep`], so
//! memory stays flat however long nobody scrapes.
//!
//! # The series
//!
//! Recorded as things happen (process-wide: one recorder per process):
//! - `falconeri_datums_reserved_total`, `falconeri_datums_completed_total`
//!   and `falconeri_datum_failures_total` (error reports accepted from
//!   workers, whether or not the datum has tries left);
//! - `falconeri_reserve_wait_seconds{outcome}`: a reservation long-poll,
//!   from its arrival to its answer (`reserved`, `wait` after the capped
//!   wait, or `finished`);
//! - `falconeri_dispatch_seconds`: from a reservation being submitted to the
//!   statement that hands out datums (grouped with the reservations of the
//!   same job that arrived meanwhile) to its answer, for reservations that
//!   got datums: the server's part of a worker's wait when work is there;
//! - `falconeri_http_requests_total{method,route,status}` and
//!   `falconeri_http_request_duration_seconds{method,route,status}`, by
//!   [`track_http`]; `route` is the matched route template
//!   (`/v1/jobs/{id}`), never the raw path, and `unmatched` for the rest,
//!   and unusual methods are `other`, so the label sets stay bounded;
//! - `falconeri_db_pool_wait_seconds` and `falconeri_db_pool_timeouts_total`
//!   (recorded by the pool itself, see `falconeri_common::db::PoolStats`);
//! - `falconeri_babysitter_pass_seconds`.
//!
//! Read at scrape time:
//! - `falconeri_datums{job,status}`: the datums of running jobs by status,
//!   from the database ([`Job::running_counts`]). Its cost is bounded: it
//!   covers at most the [`MAX_JOBS`] newest running jobs (finished jobs are
//!   never read, so the series of a job disappear when it ends) and is one
//!   GROUP BY answered from the `datums (job_id, status)` index, run once
//!   per scrape, never per request or per datum. A failed query leaves the
//!   series out (and logs why) rather than failing the scrape, whose pool
//!   series matter most when the database is in trouble;
//! - `falconeri_db_pool_connections{state="in_use"|"idle"}` and
//!   `falconeri_db_pool_max_connections`.
//!
//! # Authentication
//!
//! None, like `/healthz`: Prometheus scrapes without a bearer token unless
//! each scrape job is configured with one, and nothing here is secret (job
//! names, counts and timings; no spec, input or output). Deployments that
//! want it private keep the port private, as they must anyway for the API.

use std::time::{Duration, Instant};

use axum::{
    extract::{MatchedPath, Request, State},
    http::{HeaderValue, Method, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use falconeri_common::{
    api::{BatchOutcome, ReserveResponse},
    db::{POOL_TIMEOUTS_METRIC, POOL_WAIT_METRIC},
    models::{Datum, Job},
    status::DatumStatus,
};
use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::{error::AppResult, state::AppState};

/// The most running jobs whose datums `/metrics` counts (the newest).
pub const MAX_JOBS: i64 = 200;

/// The content type of Prometheus' text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

const RESERVED: &str = "falconeri_datums_reserved_total";
const COMPLETED: &str = "falconeri_datums_completed_total";
const FAILURES: &str = "falconeri_datum_failures_total";
const RESERVE_WAIT: &str = "falconeri_reserve_wait_seconds";
const DISPATCH: &str = "falconeri_dispatch_seconds";
const HTTP_REQUESTS: &str = "falconeri_http_requests_total";
const HTTP_DURATION: &str = "falconeri_http_request_duration_seconds";
const BABYSITTER_PASS: &str = "falconeri_babysitter_pass_seconds";
const DATUMS: &str = "falconeri_datums";
const POOL_CONNECTIONS: &str = "falconeri_db_pool_connections";
const POOL_MAX: &str = "falconeri_db_pool_max_connections";

/// Bucket bounds of every duration histogram, in seconds: from a fast
/// database statement (1 ms) to the longest long-poll (`--max-wait`, 30 s
/// by default) and a slow babysitter pass.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The process's recorder, installed by the first [`install`].
static HANDLE: std::sync::OnceLock<Option<PrometheusHandle>> = std::sync::OnceLock::new();

/// Installs the process-wide recorder (once; later calls return the same
/// handle). None if another recorder was installed first, in which case
/// `/metrics` answers only the series read at scrape time.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = match histograms(PrometheusBuilder::new()) {
                Ok(builder) => builder.build_recorder(),
                Err(err) => {
                    tracing::warn!(error = %err, "metrics disabled");
                    return None;
                }
            };
            let handle = recorder.handle();
            if let Err(err) = metrics::set_global_recorder(recorder) {
                tracing::warn!(error = %err, "another metrics recorder is installed");
                return None;
            }
            describe();
            Some(handle)
        })
        .as_ref()
}

/// Makes every duration a histogram with [`SECONDS_BUCKETS`] (the
/// exporter's default is a summary, which cannot be aggregated).
fn histograms(
    builder: PrometheusBuilder,
) -> Result<PrometheusBuilder, metrics_exporter_prometheus::BuildError> {
    builder.set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), SECONDS_BUCKETS)
}

/// The help text of every series recorded as things happen.
fn describe() {
    describe_counter!(RESERVED, "Datums handed to workers.");
    describe_counter!(
        COMPLETED,
        "Datums reported done by their workers (outputs published)."
    );
    describe_counter!(
        FAILURES,
        "Failed attempts reported by workers, retried or not."
    );
    describe_histogram!(
        RESERVE_WAIT,
        Unit::Seconds,
        "How long a reservation long-poll took, by how it was answered."
    );
    describe_histogram!(
        DISPATCH,
        Unit::Seconds,
        "From a reservation's submission to its answer with datums."
    );
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by method, route template and status."
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "How long HTTP requests took, by method, route template and status."
    );
    describe_histogram!(
        POOL_WAIT_METRIC,
        Unit::Seconds,
        "How long requests waited for a database connection."
    );
    describe_counter!(
        POOL_TIMEOUTS_METRIC,
        "Requests that gave up waiting for a database connection."
    );
    describe_histogram!(
        BABYSITTER_PASS,
        Unit::Seconds,
        "How long one babysitter pass took."
    );
}

/// Drains the histograms' recent samples into their buckets every few
/// seconds until `cancel` fires. The exporter keeps samples between
/// renders; without this, a server nobody scrapes would keep all of them.
pub async fn run_upkeep(cancel: tokio_util::sync::CancellationToken) {
    let Some(handle) = install() else {
        return;
    };
    let mut interval = tokio::time::interval(Duration::from_secs(5));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = interval.tick() => handle.run_upkeep(),
        }
    }
}

/// A reservation got `n` datums `took` after it was submitted.
pub fn dispatched(n: usize, took: Duration) {
    counter!(RESERVED).increment(u64::try_from(n).unwrap_or(u64::MAX));
    metrics::histogram!(DISPATCH).record(took);
}

/// A reservation long-poll was answered with `response` after `took`.
pub fn reserve_answered(response: &ReserveResponse, took: Duration) {
    let outcome = match response {
        ReserveResponse::Reserved(_) | ReserveResponse::Batch { .. } => "reserved",
        ReserveResponse::Wait => "wait",
        ReserveResponse::Finished => "finished",
    };
    metrics::histogram!(RESERVE_WAIT, "outcome" => outcome).record(took);
}

/// A worker's final report was settled: a `done` that left the datum done
/// is a completion, an accepted `error` a failure.
pub fn report_settled(outcome: &BatchOutcome, result: &AppResult<Datum>) {
    let Ok(datum) = result else {
        return;
    };
    match outcome {
        BatchOutcome::Done { .. } if datum.status() == DatumStatus::Done => {
            counter!(COMPLETED).increment(1);
        }
        BatchOutcome::Error { .. } => counter!(FAILURES).increment(1),
        _ => {}
    }
}

/// A babysitter pass took `took`.
pub fn babysitter_pass(took: Duration) {
    metrics::histogram!(BABYSITTER_PASS).record(took);
}

/// A middleware that counts and times every request by method, matched
/// route template and status.
pub async fn track_http(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    let labels = [
        ("method", method.to_owned()),
        ("route", route),
        ("status", status),
    ];
    counter!(HTTP_REQUESTS, &labels).increment(1);
    metrics::histogram!(HTTP_DURATION, &labels).record(started.elapsed());
    response
}

/// The method as a label: the standard ones by name, anything else
/// `other` (a client may send any token as a method).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

/// `GET /metrics`: the recorded series, then those read now.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "metrics",
    summary = "Prometheus metrics",
    description = "The server's metrics in Prometheus' text format (0.0.4). No authentication.",
    responses(
        (status = 200, description = "The metrics", content_type = "text/plain", body = String),
    ),
    security(()),
)]
pub async fn scrape(State(state): State<AppState>) -> Response {
    let counts = state
        .db(|conn| Job::running_counts(conn, MAX_JOBS))
        .await
        .inspect_err(|err| tracing::warn!(error = %err, "cannot count datums for /metrics"))
        .ok();
    let pool = state.pool().stats();
    // The series read now go through a recorder of their own, made for
    // this scrape, so a finished job's series vanish with it.
    let now = PrometheusBuilder::new().build_recorder();
    metrics::with_local_recorder(&now, || {
        describe_gauge!(
            DATUMS,
            "Datums of running jobs (the newest 200), by job name and status."
        );
        for (job, job_counts) in counts.iter().flatten() {
            for status in DatumStatus::ALL {
                let n = match status {
                    DatumStatus::Ready => job_counts.ready,
                    DatumStatus::Running => job_counts.running,
                    DatumStatus::Publishing => job_counts.publishing,
                    DatumStatus::Done => job_counts.done,
                    DatumStatus::Error => job_counts.error,
                    DatumStatus::Canceled => job_counts.canceled,
                    DatumStatus::Skipped => job_counts.skipped,
                };
                gauge!(DATUMS, "job" => job.clone(), "status" => status.as_str()).set(n as f64);
            }
        }
        describe_gauge!(
            POOL_CONNECTIONS,
            "Open database connections, by whether a request holds them."
        );
        let in_use = pool.connections.saturating_sub(pool.idle);
        gauge!(POOL_CONNECTIONS, "state" => "in_use").set(f64::from(in_use));
        gauge!(POOL_CONNECTIONS, "state" => "idle").set(f64::from(pool.idle));
        describe_gauge!(POOL_MAX, "The most database connections the pool opens.");
        gauge!(POOL_MAX).set(f64::from(pool.max_size));
    });
    let mut body = install().map(PrometheusHandle::render).unwrap_or_default();
    body.push_str(&now.handle().render());
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusual_methods_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        let odd = Method::from_bytes(b"FROBNICATE").unwrap_or(Method::GET);
        assert_eq!(method_label(&odd), "other");
    }
}
