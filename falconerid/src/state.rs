//! State shared by every request and the babysitter.

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use falconeri_common::{
    db::{DbConn, DbPool},
    models::ModelResult,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{config::Config, error::AppResult, executor::Executor};

/// Everything a handler needs: cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    pool: DbPool,
    executor: Arc<dyn Executor>,
    /// Bumped on every change to a job or datum; long-polls wait on it.
    changes: watch::Sender<u64>,
    /// The URL workers reach us at, known once the listener is bound.
    public_url: OnceLock<String>,
    /// Cancelled when the server shuts down; long-polls answer at once.
    shutdown: CancellationToken,
}

impl AppState {
    /// Wraps the pieces.
    pub fn new(config: Config, pool: DbPool, executor: Arc<dyn Executor>) -> AppState {
        let public_url = OnceLock::new();
        if let Some(url) = &config.public_url {
            let _ = public_url.set(url.trim_end_matches('/').to_owned());
        }
        AppState {
            inner: Arc::new(Inner {
                config,
                pool,
                executor,
                changes: watch::channel(0).0,
                public_url,
                shutdown: CancellationToken::new(),
            }),
        }
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn pool(&self) -> &DbPool {
        &self.inner.pool
    }

    pub fn executor(&self) -> &Arc<dyn Executor> {
        &self.inner.executor
    }

    /// Records the URL workers should use, unless configured explicitly.
    pub fn set_public_url(&self, url: String) {
        let _ = self.inner.public_url.set(url);
    }

    /// The URL workers should use.
    pub fn public_url(&self) -> String {
        self.inner
            .public_url
            .get()
            .cloned()
            .unwrap_or_else(|| "http://127.0.0.1:8089".to_owned())
    }

    /// Runs a model call on a blocking thread with a pooled connection.
    pub async fn db<T, F>(&self, f: F) -> AppResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConn) -> ModelResult<T> + Send + 'static,
    {
        let pool = self.inner.pool.clone();

        tokio::task::spawn_blocking(move || {
            // No connection within the pool's timeout: the database is
            // down or overloaded, which is a 503, not a bug.
            let mut conn = pool
                .get()
                .map_err(|err| crate::error::AppError::Unavailable(format!("{err:#}")))?;
            Ok::<_, crate::error::AppError>(f(&mut conn)?)
        })
        .await
        .map_err(|err| anyhow::anyhow!("database task failed: {err}"))?
    }

    /// Like [`AppState::db`] for calls that change jobs or datums: long-polls
    /// are told once the call succeeds, from the blocking task itself, so the
    /// notification is not lost if the request is dropped meanwhile (a
    /// worker killed mid-request still had its write committed).
    pub async fn db_write<T, F>(&self, f: F) -> AppResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConn) -> ModelResult<T> + Send + 'static,
    {
        let state = self.clone();
        self.db(move |conn| {
            let result = f(conn)?;
            state.notify_change();
            Ok(result)
        })
        .await
    }

    /// [`AppState::db_write`] that runs `f` again (up to three times) when
    /// PostgreSQL aborted it to break a deadlock. Statements that lock many
    /// rows (stopping a job, expiring leases across jobs) may meet in
    /// different orders; the aborted side just has to try again.
    pub async fn db_write_retrying<T, F>(&self, f: F) -> AppResult<T>
    where
        T: Send + 'static,
        F: Fn(&mut DbConn) -> ModelResult<T> + Send + Sync + 'static,
    {
        self.retrying(f, true).await
    }

    /// [`AppState::db`] with the deadlock retries of
    /// [`AppState::db_write_retrying`], for callers that notify themselves
    /// (the babysitter, which changes something only now and then).
    pub async fn db_retrying<T, F>(&self, f: F) -> AppResult<T>
    where
        T: Send + 'static,
        F: Fn(&mut DbConn) -> ModelResult<T> + Send + Sync + 'static,
    {
        self.retrying(f, false).await
    }

    async fn retrying<T, F>(&self, f: F, notify: bool) -> AppResult<T>
    where
        T: Send + 'static,
        F: Fn(&mut DbConn) -> ModelResult<T> + Send + Sync + 'static,
    {
        let f = std::sync::Arc::new(f);
        let mut tries = 0;
        loop {
            tries += 1;
            let attempt = f.clone();
            let deadlocked = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flag = deadlocked.clone();
            let run = move |conn: &mut DbConn| {
                let result = attempt(conn);
                if let Err(err) = &result {
                    flag.store(err.is_deadlock(), std::sync::atomic::Ordering::SeqCst);
                }
                result
            };
            let result = if notify {
                self.db_write(run).await
            } else {
                self.db(run).await
            };
            if tries < 3 && deadlocked.load(std::sync::atomic::Ordering::SeqCst) {
                tracing::info!(tries, "deadlock detected; running the transaction again");
                continue;
            }
            return result;
        }
    }

    /// Tells every long-poll that something changed: on this server at once,
    /// and on the other servers sharing a PostgreSQL database through
    /// `NOTIFY` (see [`crate::listen`]).
    pub fn notify_change(&self) {
        self.notify_local();
        if self.inner.pool.backend() == falconeri_common::db::Backend::Postgres
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let pool = self.inner.pool.clone();
            runtime.spawn_blocking(move || {
                let sent = pool.get().and_then(|mut conn| conn.notify_other_servers());
                if let Err(err) = sent {
                    tracing::warn!(error = format!("{err:#}"), "cannot notify other servers");
                }
            });
        }
    }

    /// Wakes this server's long-polls only (for changes other servers made).
    pub fn notify_local(&self) {
        self.inner
            .changes
            .send_modify(|generation| *generation += 1);
    }

    /// The current change generation.
    pub fn generation(&self) -> u64 {
        *self.inner.changes.borrow()
    }

    /// A receiver that wakes on the next change. Subscribe *before* looking
    /// at the database, so a change in between is not missed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Tells long-polls to answer now: the server is going away.
    pub fn begin_shutdown(&self) {
        self.inner.shutdown.cancel();
    }

    /// Resolves once the server is shutting down.
    pub async fn shutting_down(&self) {
        self.inner.shutdown.cancelled().await;
    }

    /// Caps a client's requested wait at the configured maximum.
    pub fn capped_wait(&self, wait_ms: Option<u64>) -> Duration {
        let max = self.inner.config.max_wait;
        wait_ms.map(Duration::from_millis).unwrap_or(max).min(max)
    }
}
