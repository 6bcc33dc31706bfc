//! A batch of reserved datums, from reservation to one report. The worker
//! asks for up to `MAX_DATUMS_PER_RESERVATION` datums and the job's
//! `datums_per_reservation` decides how many come, so a job of many tiny
//! datums costs one reservation, one heartbeat per period and one report per
//! batch instead of per datum.
//!
//! One heartbeat task keeps the leases of every datum not yet reported; a
//! datum the server no longer holds for us is lost (its command is killed if
//! it runs, it is skipped if it has not started, and it is never reported).
//! The datums run one after another through the single datum's
//! [`attempt`], each with its own staging area, inputs, claim and timeout,
//! and their outcomes go back together in one batch report. Each report is
//! settled on its own by the server, so one datum's failure never changes
//! another's.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use anyhow::{Result, anyhow, bail};
use falconeri_common::{
    api::{
        BatchHeartbeatRequest, BatchOutcome, BatchReport, BatchReportRequest, BatchReportResponse,
        Claim, DatumClaim, Reservation, ReserveNext,
    },
    client::Client,
    pipeline::MAX_DATUMS_PER_RESERVATION,
};
use tokio_util::{sync::CancellationToken, task::AbortOnDropHandle};
use tracing::Instrument;

use crate::{
    Worker,
    datum::{
        Attempt, Lease, MIN_HEARTBEAT, Measured, Outcome, STOP_REPORT_TIMEOUT, attempt, beat_every,
    },
    retry::Backoff,
};

/// Why the datums left in a batch will not run.
#[derive(Debug)]
enum Halt {
    /// SIGTERM or SIGINT: the rest is released.
    Stopped,
    /// The worker cannot work (its directories are unusable): the rest is
    /// released for a healthy worker, and this one exits with the error.
    Broken(String),
}

/// Runs a reserved batch and reports it. Errors mean the worker should exit.
#[tracing::instrument(skip_all, fields(datums = reservations.len()))]
pub(crate) async fn process_batch(
    worker: &Worker,
    reservations: &[Reservation],
) -> Result<Outcome> {
    // The server never sends an empty batch, but nothing to run is simply
    // nothing to report.
    let Some(period) = reservations.iter().map(|r| r.heartbeat_interval_ms).min() else {
        return Ok(Outcome::Next);
    };
    tracing::info!("reserved a batch");
    let period = Duration::from_millis(period).max(MIN_HEARTBEAT);
    let leases = Leases::new(reservations);
    // The leases cover downloads, uploads and the wait for the report too,
    // so heartbeat from now until the report is in.
    let _heartbeat = AbortOnDropHandle::new(tokio::spawn(heartbeat_batch(
        worker.client.clone(),
        worker.config.job_id,
        leases.clone(),
        period,
    )));

    let mut reports = Vec::with_capacity(reservations.len());
    let mut halt = None;
    for r in reservations {
        let lost = leases.token(r.datum_id);
        if halt.is_none() && worker.shutdown.is_cancelled() {
            halt = Some(Halt::Stopped);
        }
        if let Some(halt) = &halt {
            let reason = match halt {
                Halt::Stopped => "the worker was stopped before the datum started",
                Halt::Broken(_) => "the worker's work directories are unusable",
            };
            reports.push(report(r, release(reason)));
            continue;
        }
        if lost.is_cancelled() {
            tracing::warn!(
                datum_id = r.datum_id,
                "the datum was lost (expired or canceled) before it started; skipping it"
            );
            continue;
        }
        let span = tracing::info_span!("datum", datum_id = r.datum_id, attempt = r.claim.attempt);
        let (ran, measured) = async {
            tracing::info!(cmd = ?r.cmd, inputs = r.input_files.len(), "running a datum of the batch");
            attempt(worker, r, &lost).await
        }
        .instrument(span.clone())
        .await;
        let _entered = span.enter();
        match ran {
            Attempt::Succeeded {
                output,
                output_files,
            } => {
                tracing::info!(files = output_files.len(), "datum succeeded");
                reports.push(report(
                    r,
                    BatchOutcome::Done {
                        output,
                        output_files,
                        exit_code: Some(0),
                        stats: measured.stats(),
                    },
                ));
            }
            Attempt::Failed { error, output } => {
                tracing::warn!(%error, "datum failed");
                reports.push(report(r, failure(error, output, &measured)));
            }
            Attempt::Broken { error } => {
                tracing::error!(%error, "the worker cannot work; releasing the rest of the batch");
                reports.push(report(r, failure(error.clone(), String::new(), &measured)));
                halt = Some(Halt::Broken(error));
            }
            Attempt::Lost => {
                tracing::warn!("the datum is no longer ours (expired or canceled); abandoned it");
            }
            Attempt::Stopped { output } => {
                tracing::info!("worker stopping; giving the datum back");
                // A stop is not the command's fault: released, the attempt
                // uses up no try.
                let _ = output;
                reports.push(report(
                    r,
                    release("the worker was stopped before the command finished"),
                ));
                halt = Some(Halt::Stopped);
            }
        }
    }
    // A datum lost while another ran belongs to someone else now: its report
    // would only be refused.
    reports.retain(|report| !leases.is_lost(report.datum_id));

    match halt {
        None => send_reports(worker, &leases, reports).await,
        Some(Halt::Stopped) => {
            report_on_stop(worker, reports).await;
            Ok(Outcome::Stopped)
        }
        Some(Halt::Broken(error)) => {
            send_reports_only(worker, &leases, reports).await?;
            bail!("{error}")
        }
    }
}

fn report(r: &Reservation, outcome: BatchOutcome) -> BatchReport {
    BatchReport {
        datum_id: r.datum_id,
        claim: r.claim.clone(),
        outcome,
    }
}

/// A failed datum's report, with its command's exit status (when it ran)
/// and what was measured.
fn failure(error: String, output: String, m: &Measured) -> BatchOutcome {
    BatchOutcome::Error {
        output,
        error,
        exit_code: m.exit_code,
        signal: m.signal,
        stats: m.stats(),
        killed_for: m.killed_for,
    }
}

fn release(reason: &str) -> BatchOutcome {
    BatchOutcome::Release {
        reason: reason.to_owned(),
    }
}

/// "done", "error" or "release", for the log.
fn kind(outcome: &BatchOutcome) -> &'static str {
    match outcome {
        BatchOutcome::Done { .. } => "done",
        BatchOutcome::Error { .. } => "error",
        BatchOutcome::Release { .. } => "release",
    }
}

/// Sends the batch's reports in one request, retrying while falconerid is
/// unreachable or answers 5xx (for the whole request or for single reports)
/// within the retry budget, as a single datum's report does. A report
/// refused because the datum is no longer ours is logged and dropped.
///
/// The first request also asks for our next datums (`next`), saving the
/// run loop a round trip: the answer is what comes next. Unless the worker
/// is stopping, which takes nothing new.
async fn send_reports(
    worker: &Worker,
    leases: &Leases,
    reports: Vec<BatchReport>,
) -> Result<Outcome> {
    let next = (!worker.shutdown.is_cancelled()).then_some(ReserveNext {
        max_datums: Some(MAX_DATUMS_PER_RESERVATION),
    });
    report_until_settled(worker, leases, reports, next).await
}

/// [`send_reports`] without asking for more: the worker is about to exit.
async fn send_reports_only(
    worker: &Worker,
    leases: &Leases,
    reports: Vec<BatchReport>,
) -> Result<()> {
    report_until_settled(worker, leases, reports, None)
        .await
        .map(drop)
}

async fn report_until_settled(
    worker: &Worker,
    leases: &Leases,
    reports: Vec<BatchReport>,
    next: Option<ReserveNext>,
) -> Result<Outcome> {
    let budget = worker.config.retry_budget;
    let mut backoff = Backoff::new(budget);
    let mut body = BatchReportRequest { reports, next };
    // Whether a request that asked for `next` went unanswered: the server
    // may have handed us datums we never heard of.
    let mut lost_next = false;
    let mut given = None;
    while !body.reports.is_empty() {
        let failure = match worker
            .client
            .report_batch(worker.config.job_id, &body)
            .await
        {
            Ok(mut answer) => {
                // The datums given are ours from now; their leases run
                // unheartbeated while reports are retried below (rare: an
                // expired one comes back to the queue and our later report
                // of it is refused).
                if body.next.take().is_some() {
                    given = answer.next.take();
                }
                let retry = sort_results(body.reports, answer)?;
                // Settled reports need no lease any more; retried ones do.
                leases.settle_all_but(&retry);
                if retry.is_empty() {
                    break;
                }
                body.reports = retry;
                format!("falconerid could not settle {} reports", body.reports.len())
            }
            Err(err) if err.is_conflict() || err.is_not_found() => {
                tracing::warn!(error = %err, "the batch is no longer ours; our reports were refused");
                break;
            }
            Err(err) if err.is_transient() => {
                lost_next |= body.next.is_some();
                err.to_string()
            }
            Err(err) => return Err(anyhow!(err).context("cannot report the batch")),
        };
        let Some(delay) = backoff.next_delay() else {
            bail!(
                "giving up reporting the batch after {}: {failure}",
                humantime::format_duration(budget)
            );
        };
        tracing::warn!(error = %failure, ?delay, "reporting the batch failed; retrying");
        tokio::time::sleep(delay).await;
    }
    Ok(match given {
        Some(next) => Outcome::Given(next),
        None if lost_next => Outcome::Resume,
        None => Outcome::Next,
    })
}

/// Logs how each report was settled and returns those worth sending again
/// (the server could not settle them for now). A report refused for good
/// for another reason than the datum being someone else's now is an error,
/// as it is for a single datum.
fn sort_results(
    reports: Vec<BatchReport>,
    answer: BatchReportResponse,
) -> Result<Vec<BatchReport>> {
    let mut results: HashMap<i64, _> = answer
        .results
        .into_iter()
        .map(|result| (result.datum_id, result))
        .collect();
    let mut retry = Vec::new();
    for report in reports {
        let (datum_id, what) = (report.datum_id, kind(&report.outcome));
        let Some(result) = results.remove(&datum_id) else {
            bail!("falconerid's answer to our batch report does not mention datum {datum_id}");
        };
        let Some(error) = result.error else {
            let status = result.datum.map(|datum| datum.status);
            tracing::info!(datum_id, ?status, "our {what} report was accepted");
            continue;
        };
        match error.code.as_str() {
            "conflict" | "not_found" => tracing::warn!(
                datum_id,
                error = %error.message,
                "the datum is no longer ours; our {what} report was refused"
            ),
            "internal" | "unavailable" => retry.push(report),
            code => bail!(
                "cannot report datum {datum_id} {what}: {} ({code})",
                error.message
            ),
        }
    }
    Ok(retry)
}

/// The stopping worker's last report: one short try, since whoever stops us
/// (Kubernetes, the local executor) will not wait long, and an unreported
/// datum comes back when its lease expires.
async fn report_on_stop(worker: &Worker, reports: Vec<BatchReport>) {
    if reports.is_empty() {
        return;
    }
    let body = BatchReportRequest {
        reports,
        next: None,
    };
    let report = worker.client.report_batch(worker.config.job_id, &body);
    match tokio::time::timeout(STOP_REPORT_TIMEOUT, report).await {
        Ok(Ok(answer)) => {
            if let Err(err) = sort_results(body.reports, answer) {
                tracing::warn!(error = %err, "a report of the stopped batch was refused");
            }
        }
        Ok(Err(err)) if err.is_conflict() || err.is_not_found() => {}
        Ok(Err(err)) => tracing::warn!(error = %err, "cannot report the stopped batch"),
        Err(_) => {
            tracing::warn!("falconerid did not answer; the batch's leases will expire")
        }
    }
}

/// The leases of a batch, shared by its heartbeat task and the datums that
/// run: which datums are still renewed, and one token per datum that is
/// cancelled when the datum is lost.
#[derive(Clone)]
struct Leases {
    inner: Arc<Mutex<LeaseState>>,
}

struct LeaseState {
    /// The datums whose leases are renewed: not yet settled, not lost.
    renewing: BTreeMap<i64, Claim>,
    /// Every datum of the batch; a cancelled token means lost.
    lost: HashMap<i64, CancellationToken>,
}

impl Leases {
    fn new(reservations: &[Reservation]) -> Leases {
        let state = LeaseState {
            renewing: reservations
                .iter()
                .map(|r| (r.datum_id, r.claim.clone()))
                .collect(),
            lost: reservations
                .iter()
                .map(|r| (r.datum_id, CancellationToken::new()))
                .collect(),
        };
        Leases {
            inner: Arc::new(Mutex::new(state)),
        }
    }

    fn state(&self) -> MutexGuard<'_, LeaseState> {
        // Nothing panics while holding the lock, and the state stays
        // consistent between statements anyway.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The token cancelled when `datum_id` is lost. A datum not of the batch
    /// gets one that is never cancelled.
    fn token(&self, datum_id: i64) -> CancellationToken {
        self.state()
            .lost
            .get(&datum_id)
            .cloned()
            .unwrap_or_default()
    }

    fn is_lost(&self, datum_id: i64) -> bool {
        self.state()
            .lost
            .get(&datum_id)
            .is_some_and(CancellationToken::is_cancelled)
    }

    /// The claims to renew now.
    fn renewing(&self) -> Vec<DatumClaim> {
        self.state()
            .renewing
            .iter()
            .map(|(&datum_id, claim)| DatumClaim {
                datum_id,
                claim: claim.clone(),
            })
            .collect()
    }

    /// After a heartbeat: of the datums `asked` about, those the server does
    /// not hold for us any more are lost. (A datum settled meanwhile is no
    /// longer renewed and is left alone.)
    fn lose_unheld(&self, asked: &[i64], held: &[i64]) {
        let mut state = self.state();
        for id in asked.iter().filter(|id| !held.contains(id)) {
            if state.renewing.remove(id).is_some() {
                tracing::warn!(datum_id = id, "the server no longer holds the datum for us");
                if let Some(token) = state.lost.get(id) {
                    token.cancel();
                }
            }
        }
    }

    /// Every datum not yet settled is lost.
    fn lose_all(&self) {
        let mut state = self.state();
        let ids: Vec<i64> = state.renewing.keys().copied().collect();
        for id in ids {
            state.renewing.remove(&id);
            if let Some(token) = state.lost.get(&id) {
                token.cancel();
            }
        }
    }

    /// Stops renewing every datum but those of `pending`, whose reports are
    /// still to be sent.
    fn settle_all_but(&self, pending: &[BatchReport]) {
        self.state()
            .renewing
            .retain(|id, _| pending.iter().any(|report| report.datum_id == *id));
    }
}

/// Extends the leases of the batch's unsettled datums every `period` until
/// the task is dropped or nothing is left to renew. The rules of a single
/// datum's heartbeat apply: a datum the server does not hold is lost, and
/// when falconerid stays unreachable for longer than a lease (four periods)
/// every unsettled datum is given up.
#[tracing::instrument(skip(client, leases))]
async fn heartbeat_batch(client: Client, job_id: i64, leases: Leases, period: Duration) {
    let beat = || {
        let (client, leases) = (client.clone(), leases.clone());
        async move {
            let claims = leases.renewing();
            if claims.is_empty() {
                return Ok(false);
            }
            let asked: Vec<i64> = claims.iter().map(|c| c.datum_id).collect();
            let answer = client
                .heartbeat_batch(job_id, &BatchHeartbeatRequest { claims })
                .await?;
            leases.lose_unheld(&asked, &answer.held);
            tracing::debug!(
                held = answer.held.len(),
                lease_expires_at = answer.lease_expires_at,
                "heartbeat"
            );
            Ok(true)
        }
    };
    if let Lease::Lost = beat_every(period, beat).await {
        leases.lose_all();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]

    use std::{collections::BTreeMap, path::Path, sync::Arc};

    use falconeri_common::api::{BatchReportResult, ErrorDetail, ReserveResponse};
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
        sync::mpsc,
    };

    use super::*;
    use crate::Config;

    /// What the fake falconerid answers: a status and a JSON body for a
    /// request's path and body.
    pub(crate) type Answer = Arc<dyn Fn(&str, &str) -> (u16, String) + Send + Sync>;

    /// A fake falconerid on a loopback port: answers every request with
    /// `answer` and sends each request's path and body to the returned
    /// channel. One request per connection (`Connection: close`), so the
    /// parsing stays trivial.
    pub(crate) async fn fake_server(
        answer: Answer,
    ) -> (String, mpsc::UnboundedReceiver<(String, String)>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (requests, received) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let (answer, requests) = (answer.clone(), requests.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let (head, body) = loop {
                        let n = stream.read(&mut chunk).await.unwrap();
                        assert!(n > 0, "the client hung up mid-request");
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).into_owned();
                        let Some((head, body)) = text.split_once("\r\n\r\n") else {
                            continue;
                        };
                        let length = head
                            .lines()
                            .find_map(|line| {
                                let (name, value) = line.split_once(':')?;
                                name.eq_ignore_ascii_case("content-length")
                                    .then(|| value.trim().parse::<usize>().unwrap())
                            })
                            .unwrap_or(0);
                        if body.len() >= length {
                            break (head.to_owned(), body.to_owned());
                        }
                    };
                    let path = head.split_whitespace().nth(1).unwrap().to_owned();
                    let (status, json) = answer(&path, &body);
                    let _ = requests.send((path, body));
                    let response = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{json}",
                        json.len()
                    );
                    stream.write_all(response.as_bytes()).await.unwrap();
                });
            }
        });
        (url, received)
    }

    fn reservation(datum_id: i64, cmd: &[&str]) -> Reservation {
        Reservation {
            datum_id,
            job_id: 7,
            claim: Claim {
                worker_id: "w".into(),
                attempt: 1,
                scope: None,
            },
            lease_expires_at: 0,
            heartbeat_interval_ms: 100,
            timeout_ms: None,
            cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
            env: BTreeMap::new(),
            staging_uri: "file:///nonexistent/staging/".into(),
            input_files: Vec::new(),
        }
    }

    fn worker(url: &str, dir: &Path) -> Worker {
        Worker {
            client: Client::new(url, Some("t".into())).unwrap(),
            config: Config {
                server: url.to_owned(),
                server_socket: None,
                token: Some("t".into()),
                token_file: None,
                job_id: 7,
                worker_id: "w".into(),
                pfs: dir.join("pfs"),
                scratch: dir.join("scratch"),
                reserve_wait: Duration::from_secs(1),
                retry_budget: Duration::from_secs(10),
                output_tail_bytes: 1024,
                pass_output: true,
                command_pgid_file: None,
            },
            shutdown: CancellationToken::new(),
        }
    }

    /// The datum ids and outcomes of a batch report's body, in order. The
    /// worker has no JSON library of its own (the client's types carry
    /// serde, not serde_json), and the body's shape is fixed by serde:
    /// `{"datum_id":1,"claim":{…},"outcome":"done",…}` per report.
    fn reported(body: &str) -> Vec<(i64, String)> {
        body.split("{\"datum_id\":")
            .skip(1)
            .map(|report| {
                let digits: String = report.chars().take_while(char::is_ascii_digit).collect();
                let (_, rest) = report.split_once("\"outcome\":\"").unwrap();
                let (outcome, _) = rest.split_once('"').unwrap();
                (digits.parse().unwrap(), outcome.to_owned())
            })
            .collect()
    }

    /// A batch report's answer: each datum accepted, or refused with a code.
    fn answer_json(results: &[(i64, Option<&str>)]) -> String {
        let results: Vec<String> = results
            .iter()
            .map(|(id, refusal)| match refusal {
                None => format!("{{\"datum_id\":{id}}}"),
                Some(code) => format!(
                    "{{\"datum_id\":{id},\"error\":{{\"code\":\"{code}\",\"message\":\"{code}!\"}}}}"
                ),
            })
            .collect();
        format!("{{\"results\":[{}]}}", results.join(","))
    }

    fn accepted(datum_id: i64) -> BatchReportResult {
        BatchReportResult {
            datum_id,
            datum: None,
            error: None,
        }
    }

    fn refused(datum_id: i64, code: &str) -> BatchReportResult {
        BatchReportResult {
            datum_id,
            datum: None,
            error: Some(ErrorDetail {
                code: code.to_owned(),
                message: format!("{code}!"),
                problems: Vec::new(),
            }),
        }
    }

    fn reports(ids: &[i64]) -> Vec<BatchReport> {
        ids.iter()
            .map(|&id| report(&reservation(id, &["true"]), release("test")))
            .collect()
    }

    #[test]
    fn results_are_sorted_into_settled_lost_and_retried() {
        let answer = BatchReportResponse {
            results: vec![accepted(1), refused(2, "conflict"), refused(3, "internal")],
            next: None,
        };
        let retry = sort_results(reports(&[1, 2, 3]), answer).unwrap();
        assert_eq!(retry.iter().map(|r| r.datum_id).collect::<Vec<_>>(), [3]);

        // Refused for good for another reason: an error, as for one datum.
        let answer = BatchReportResponse {
            results: vec![accepted(1), refused(2, "bad_request")],
            next: None,
        };
        let err = sort_results(reports(&[1, 2]), answer).unwrap_err();
        assert!(format!("{err}").contains("bad_request"), "{err}");

        // A report the answer forgets is not taken as settled.
        let answer = BatchReportResponse {
            results: vec![accepted(1)],
            next: None,
        };
        assert!(sort_results(reports(&[1, 2]), answer).is_err());
    }

    /// A datum the server no longer holds is lost (its token cancelled) and
    /// no longer renewed; the others keep their leases.
    #[tokio::test]
    async fn heartbeat_loses_only_the_datums_the_server_does_not_hold() {
        let (url, mut requests) = fake_server(Arc::new(|path: &str, _: &str| {
            assert_eq!(path, "/v1/jobs/7/heartbeat");
            (200, r#"{"held":[1,3],"lease_expires_at":0}"#.to_owned())
        }))
        .await;
        let batch: Vec<_> = [1, 2, 3].map(|id| reservation(id, &["true"])).into();
        let leases = Leases::new(&batch);
        let _beating = AbortOnDropHandle::new(tokio::spawn(heartbeat_batch(
            Client::new(&url, None).unwrap(),
            7,
            leases.clone(),
            MIN_HEARTBEAT,
        )));
        let (_, first) = requests.recv().await.unwrap();
        for id in [1, 2, 3] {
            assert!(first.contains(&format!("\"datum_id\":{id}")), "{first}");
        }
        tokio::time::timeout(Duration::from_secs(10), leases.token(2).cancelled())
            .await
            .unwrap();
        let (_, second) = requests.recv().await.unwrap();
        assert!(!second.contains("\"datum_id\":2"), "{second}");
        assert!(!leases.is_lost(1) && !leases.is_lost(3));
        assert!(leases.is_lost(2));
    }

    /// Unreachable for longer than a lease, the worker gives every
    /// unsettled datum of the batch up.
    #[tokio::test]
    async fn an_unreachable_server_orphans_the_whole_batch() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client = Client::new(&format!("http://127.0.0.1:{port}"), None).unwrap();
        let batch: Vec<_> = [1, 2].map(|id| reservation(id, &["true"])).into();
        let leases = Leases::new(&batch);
        // A settled datum is no longer renewed, so it cannot be lost.
        leases.settle_all_but(&reports(&[2]));
        let started = tokio::time::Instant::now();
        let beating = tokio::spawn(heartbeat_batch(client, 7, leases.clone(), MIN_HEARTBEAT));
        tokio::time::timeout(Duration::from_secs(10), leases.token(2).cancelled())
            .await
            .unwrap();
        assert!(started.elapsed() >= MIN_HEARTBEAT * crate::datum::ORPHANED_AFTER_PERIODS);
        assert!(!leases.is_lost(1));
        beating.await.unwrap();
    }

    /// Reports the server could not settle are sent again, alone; the
    /// settled ones are not.
    #[tokio::test]
    async fn unsettled_reports_are_sent_again() {
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = calls.clone();
        let (url, mut requests) = fake_server(Arc::new(move |path: &str, _: &str| {
            assert_eq!(path, "/v1/jobs/7/report");
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let answer = if n == 0 {
                answer_json(&[(1, None), (2, Some("unavailable"))])
            } else {
                answer_json(&[(2, None)])
            };
            (200, answer)
        }))
        .await;
        let dir = tempfile::tempdir().unwrap();
        let worker = worker(&url, dir.path());
        let batch: Vec<_> = [1, 2].map(|id| reservation(id, &["true"])).into();
        let leases = Leases::new(&batch);
        send_reports(&worker, &leases, reports(&[1, 2]))
            .await
            .unwrap();
        let (_, first) = requests.recv().await.unwrap();
        let (_, second) = requests.recv().await.unwrap();
        assert_eq!(reported(&first).len(), 2);
        assert_eq!(reported(&second), [(2, "release".to_owned())]);
        assert!(leases.renewing().is_empty());
    }

    /// A stop mid-batch kills the running command, then reports the
    /// finished datum and releases the rest, in one request.
    #[tokio::test]
    async fn a_stop_mid_batch_reports_what_finished_and_releases_the_rest() {
        let (url, mut requests) = fake_server(Arc::new(|path: &str, body: &str| {
            if path.ends_with("/heartbeat") {
                return (200, r#"{"held":[1,2,3],"lease_expires_at":0}"#.to_owned());
            }
            let results: Vec<_> = reported(body).iter().map(|(id, _)| (*id, None)).collect();
            (200, answer_json(&results))
        }))
        .await;
        let dir = tempfile::tempdir().unwrap();
        let worker = worker(&url, dir.path());
        // Datum 1 fails at once; datum 2 runs until the worker is stopped.
        let script = "if [ \"$FALCONERI_DATUM_ID\" = 1 ]; then exit 3; else sleep 100; fi";
        let batch: Vec<_> = [1, 2, 3]
            .map(|id| reservation(id, &["sh", "-c", script]))
            .into();
        let stop = worker.shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            stop.cancel();
        });
        let started = std::time::Instant::now();
        let outcome = process_batch(&worker, &batch).await.unwrap();
        assert_eq!(outcome, Outcome::Stopped);
        assert!(started.elapsed() < Duration::from_secs(20));
        let report = loop {
            let (path, body) = requests.recv().await.unwrap();
            if path.ends_with("/report") {
                break body;
            }
        };
        assert_eq!(
            reported(&report),
            [
                (1, "error".to_owned()),
                (2, "release".to_owned()),
                (3, "release".to_owned())
            ]
        );
    }

    /// Datums the server no longer holds are lost: the running one's
    /// command is killed, one not yet started never runs, and neither is
    /// reported; the rest of the batch runs and is reported.
    #[tokio::test]
    async fn lost_datums_are_killed_or_skipped_and_never_reported() {
        let (url, mut requests) = fake_server(Arc::new(|path: &str, body: &str| {
            if path.ends_with("/heartbeat") {
                return (200, r#"{"held":[3],"lease_expires_at":0}"#.to_owned());
            }
            let results: Vec<_> = reported(body).iter().map(|(id, _)| (*id, None)).collect();
            (200, answer_json(&results))
        }))
        .await;
        let dir = tempfile::tempdir().unwrap();
        let worker = worker(&url, dir.path());
        let ran = dir.path().join("ran");
        std::fs::create_dir(&ran).unwrap();
        // Every command leaves a mark; datum 1 then runs until killed.
        let script = "touch \"$RAN/$FALCONERI_DATUM_ID\"; \
                      if [ \"$FALCONERI_DATUM_ID\" = 1 ]; then sleep 100; fi";
        let batch: Vec<_> = [1, 2, 3]
            .map(|id| {
                let mut r = reservation(id, &["sh", "-c", script]);
                r.env
                    .insert("RAN".to_owned(), ran.to_str().unwrap().to_owned());
                r
            })
            .into();
        let started = std::time::Instant::now();
        let outcome = process_batch(&worker, &batch).await.unwrap();
        assert_eq!(outcome, Outcome::Next);
        assert!(started.elapsed() < Duration::from_secs(20));
        let report = loop {
            let (path, body) = requests.recv().await.unwrap();
            if path.ends_with("/report") {
                break body;
            }
        };
        assert_eq!(reported(&report), [(3, "done".to_owned())]);
        let mut marks: Vec<_> = std::fs::read_dir(&ran)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        marks.sort();
        assert_eq!(marks, ["1", "3"]);
    }

    /// A report asks for the next datums in the same request, and the
    /// worker runs what the answer's `next` holds without reserving again:
    /// a job of three datums takes one reservation and three reports.
    #[tokio::test]
    async fn the_next_datums_come_with_the_report_of_the_last() {
        let (url, mut requests) = fake_server(Arc::new(|path: &str, body: &str| {
            if path.ends_with("/heartbeat") {
                return (200, r#"{"held":[],"lease_expires_at":0}"#.to_owned());
            }
            let batch = |ids: &[i64]| ReserveResponse::Batch {
                reservations: ids.iter().map(|&id| reservation(id, &["true"])).collect(),
            };
            if path.ends_with("/reserve") {
                return (200, serde_json::to_string(&batch(&[1])).unwrap());
            }
            let ids: Vec<i64> = reported(body).iter().map(|(id, _)| *id).collect();
            let next = match ids.last() {
                Some(1) => batch(&[2, 3]),
                _ => ReserveResponse::Finished,
            };
            let answer = BatchReportResponse {
                results: ids.iter().map(|&id| accepted(id)).collect(),
                next: Some(next),
            };
            (200, serde_json::to_string(&answer).unwrap())
        }))
        .await;
        let dir = tempfile::tempdir().unwrap();
        let config = worker(&url, dir.path()).config;
        // A worker that ignored `next` would reserve datum 1 again and again.
        let run = crate::run_until(config, CancellationToken::new());
        let exit = tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .expect("the worker ends once the job is finished")
            .unwrap();
        assert_eq!(exit, crate::Exit::Finished);
        let mut paths = Vec::new();
        let mut reports = Vec::new();
        while let Ok((path, body)) = requests.try_recv() {
            if path.ends_with("/report") {
                assert!(body.contains("\"next\":{"), "asks for next: {body}");
                reports.extend(reported(&body));
            }
            paths.push(path);
        }
        let reserves = paths.iter().filter(|p| p.ends_with("/reserve")).count();
        assert_eq!(reserves, 1, "{paths:?}");
        let done = |id| (id, "done".to_owned());
        assert_eq!(reports, [done(1), done(2), done(3)]);
    }
}
