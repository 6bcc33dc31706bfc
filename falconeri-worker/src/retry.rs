//! Riding out falconerid being briefly unreachable: capped exponential backoff
//! within a total time budget, after which the worker gives up.

use std::{future::Future, time::Duration};

use falconeri_common::client::ClientError;
use tokio::time::Instant;

/// The first pause after a transient error.
const FIRST_DELAY: Duration = Duration::from_millis(100);
/// The longest pause between two attempts.
const MAX_DELAY: Duration = Duration::from_secs(5);

/// Delays between retries: 100ms, doubling up to 5s, until `budget` has passed
/// since the first failure of the current run of failures.
#[derive(Debug)]
pub(crate) struct Backoff {
    budget: Duration,
    next: Duration,
    first_failure: Option<Instant>,
}

impl Backoff {
    pub(crate) fn new(budget: Duration) -> Backoff {
        Backoff {
            budget,
            next: FIRST_DELAY,
            first_failure: None,
        }
    }

    /// Forgets past failures, after a success.
    pub(crate) fn reset(&mut self) {
        self.next = FIRST_DELAY;
        self.first_failure = None;
    }

    /// How long to wait before the next try, or `None` once the budget is
    /// spent. The last delay is shortened so we give up on time.
    pub(crate) fn next_delay(&mut self) -> Option<Duration> {
        let now = Instant::now();
        let first = *self.first_failure.get_or_insert(now);
        let left = self.budget.checked_sub(now.duration_since(first))?;
        if left.is_zero() {
            return None;
        }
        let delay = self.next.min(left);
        self.next = (self.next * 2).min(MAX_DELAY);
        Some(delay)
    }
}

/// Runs `op` until it succeeds or fails for good, retrying transient errors
/// with [`Backoff`] for up to `budget`.
pub(crate) async fn with_retries<T, F, Fut>(
    budget: Duration,
    what: &str,
    mut op: F,
) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let mut backoff = Backoff::new(budget);
    loop {
        match op().await {
            Err(err) if err.is_transient() => match backoff.next_delay() {
                Some(delay) => {
                    tracing::warn!(error = %err, ?delay, "{what} failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                None => return Err(err),
            },
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_up_to_a_cap_and_stops_at_the_budget() {
        let mut backoff = Backoff::new(Duration::from_secs(20));
        let mut delays = Vec::new();
        while let Some(delay) = backoff.next_delay() {
            delays.push(delay.as_millis());
            tokio::time::advance(delay).await;
        }
        // 100+200+400+800+1600+3200 = 6300ms, then 5s pauses until 20s.
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 3700]);

        backoff.reset();
        assert_eq!(backoff.next_delay(), Some(FIRST_DELAY));
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_budget_never_retries() {
        assert_eq!(Backoff::new(Duration::ZERO).next_delay(), None);
    }

    fn api_error(status: u16) -> ClientError {
        ClientError::Api {
            status: reqwest::StatusCode::from_u16(status).unwrap(),
            body: falconeri_common::api::ErrorBody {
                error: falconeri_common::api::ErrorDetail {
                    code: "test".to_owned(),
                    message: "test".to_owned(),
                    problems: Vec::new(),
                },
            },
        }
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_until_success() {
        let mut calls = 0;
        let result = with_retries(Duration::from_secs(60), "test", || {
            calls += 1;
            let answer = if calls < 4 {
                Err(api_error(503))
            } else {
                Ok(calls)
            };
            async move { answer }
        })
        .await;
        assert_eq!(result.unwrap(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_give_up_after_the_budget() {
        let started = Instant::now();
        let result: Result<(), _> = with_retries(Duration::from_secs(30), "test", || async {
            Err(api_error(502))
        })
        .await;
        assert_eq!(result.unwrap_err().status().map(|s| s.as_u16()), Some(502));
        assert_eq!(started.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn only_transient_errors_are_retried() {
        let mut conflicts = 0;
        let result: Result<(), _> = with_retries(Duration::from_secs(60), "test", || {
            conflicts += 1;
            async { Err(api_error(409)) }
        })
        .await;
        assert!(result.unwrap_err().is_conflict());
        assert_eq!(conflicts, 1, "a conflict is final");

        let transport = || ClientError::BadUrl("x".to_owned());
        let mut calls = 0;
        let result: Result<(), _> = with_retries(Duration::from_secs(60), "test", || {
            calls += 1;
            let err = transport();
            async move { Err(err) }
        })
        .await;
        assert!(result.is_err());
        assert_eq!(calls, 1, "a bad URL is not transient");
    }
}
