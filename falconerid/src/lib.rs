//! falconerid: the only process that touches the database.
//!
//! It serves the REST API ([`routes`]) and the web [`dashboard`], turns specs into datums
//! ([`start_job`]), starts workers through an [`executor`], and runs the
//! [`babysitter`]. Build the HTTP app with [`app`] (tests drive it with
//! `oneshot`, no socket) or run everything with [`serve`].

pub mod auth;
pub mod babysitter;
pub mod chain;
pub mod combine;
pub mod config;
pub mod dashboard;
pub mod error;
pub mod executor;
pub mod failures;
#[cfg(feature = "postgres")]
pub mod listen;
pub mod log_store;
pub mod metrics;
pub mod openapi;
pub mod routes;
pub mod scheduler;
pub mod start_job;
pub mod state;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context, Result};
use axum::Router;
use falconeri_common::db::DbPool;
use tokio_util::sync::CancellationToken;

pub use config::Config;
use config::ExecutorKind;
use executor::{Executor, KubernetesExecutor, LocalExecutor};
pub use state::AppState;

/// The HTTP application for `state`.
pub fn app(state: AppState) -> Router {
    metrics::install();
    // The dashboard's gateway calls the REST API in-process, as the admin.
    let api = routes::router().with_state(state.clone());
    routes::router()
        .merge(dashboard::router(api))
        // Inside the trace layer and the body limit, so it sees their
        // answers too, and after routing, so the route template is known.
        .layer(axum::middleware::from_fn(metrics::track_http))
        // Worker reports carry up to 1 MiB of output, which JSON escaping
        // can triple, plus their output file lists; specs may list many
        // inputs. axum's 2 MB default is too small for either.
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// The largest request body falconerid accepts.
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Connects to the database, migrates it and builds the executor.
pub async fn build_state(config: Config) -> Result<AppState> {
    config.validate()?;
    let executor = build_executor(&config).await?;
    let (url, size, wait) = (
        config.database_url.clone(),
        config.db_pool_size,
        config.db_wait,
    );
    let pool = tokio::task::spawn_blocking(move || {
        let pool = DbPool::connect_waiting(&url, size, wait)?;
        pool.run_migrations()?;
        Ok::<_, anyhow::Error>(pool)
    })
    .await
    .context("startup task failed")??;
    Ok(AppState::new(config, pool, executor))
}

/// The executor `config` asks for.
async fn build_executor(config: &Config) -> Result<Arc<dyn Executor>> {
    Ok(match config.executor {
        ExecutorKind::Local => {
            let executor = LocalExecutor::new(config.worker_command()?, config.state_dir.clone())?;
            // Before the babysitter can start any worker: the previous
            // server's workers count toward their jobs' parallelism.
            executor.recover().await?;
            Arc::new(executor)
        }
        ExecutorKind::Kubernetes => {
            let executor =
                KubernetesExecutor::connect(config.kubernetes_namespace.clone(), |namespace| {
                    config.kubernetes_settings(namespace)
                })
                .await?;
            tracing::info!(settings = ?executor.settings(), "using the Kubernetes executor");
            Arc::new(executor)
        }
    })
}

/// Runs falconerid until SIGTERM or Ctrl-C: binds the listener, calls
/// `on_ready` with its address, then serves the API and runs the babysitter
/// side by side, and shuts both down gracefully.
pub async fn serve<F>(config: Config, on_ready: F) -> Result<()>
where
    F: FnOnce(SocketAddr) + Send,
{
    tracing::info!(?config, "starting falconerid");
    let listen = config.listen;
    let fallback = config.listen_fallback;
    let state = build_state(config).await?;
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(listener) => listener,
        Err(err) if fallback && err.kind() == std::io::ErrorKind::AddrInUse => {
            let any = std::net::SocketAddr::new(listen.ip(), 0);
            tracing::info!(%listen, "port taken; listening on another");
            tokio::net::TcpListener::bind(any)
                .await
                .with_context(|| format!("cannot listen on {any}"))?
        }
        Err(err) => return Err(err).with_context(|| format!("cannot listen on {listen}")),
    };
    let addr = listener.local_addr()?;
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else {
        addr.ip().to_string()
    };
    state.set_public_url(format!("http://{host}:{}", addr.port()));
    tracing::info!(%addr, public_url = state.public_url(), "listening");
    let socket = match &state.config().worker_socket {
        Some(path) if state.config().executor == ExecutorKind::Local => {
            bind_worker_socket(path).await
        }
        _ => None,
    };
    if let Some((_, path)) = &socket {
        tracing::info!(path = %path.display(), "listening for local workers");
        state.set_worker_socket(path.clone());
    }

    let babysitter_cancel = CancellationToken::new();
    let babysitter = tokio::spawn(babysitter::run(state.clone(), babysitter_cancel.clone()));
    tokio::spawn(metrics::run_upkeep(babysitter_cancel.clone()));
    tokio::spawn(chain::run(state.clone(), babysitter_cancel.clone()));
    tokio::spawn(scheduler::run(state.clone(), babysitter_cancel.clone()));
    #[cfg(feature = "postgres")]
    if state.pool().backend() == falconeri_common::db::Backend::Postgres {
        tokio::spawn(listen::run(
            state.clone(),
            state.config().database_url.clone(),
            babysitter_cancel.clone(),
        ));
    }
    on_ready(addr);

    // The order matters: stop the babysitter (so it starts no workers), then
    // stop local workers while the API still answers (so they can give their
    // datums back), then wake long-polls so shutdown doesn't wait them out.
    // The workers' socket closes with the TCP listener, after all that.
    let stopped = CancellationToken::new();
    let stopping = {
        let state = state.clone();
        let stopped = stopped.clone();
        async move {
            shutdown_signal().await;
            tracing::info!("shutting down");
            babysitter_cancel.cancel();
            let _ = babysitter.await;
            state.executor().shutdown().await;
            state.begin_shutdown();
            stopped.cancel();
        }
    };
    let router = app(state);
    let tcp = axum::serve(listener, router.clone()).with_graceful_shutdown(stopping);
    match socket {
        Some((unix, path)) => {
            let local = axum::serve(unix, router).with_graceful_shutdown(stopped.cancelled_owned());
            let served = tokio::try_join!(tcp.into_future(), local.into_future());
            let _ = std::fs::remove_file(&path);
            served.map(|_| ()).context("server failed")
        }
        None => tcp.await.context("server failed"),
    }
}

/// Listens on the Unix socket at `path` for local workers, replacing a
/// socket a previous server left behind; None (logged) if it cannot, and
/// workers then use TCP. Never replaces a file that is not a socket, nor
/// a socket another server still answers on.
async fn bind_worker_socket(path: &Path) -> Option<(tokio::net::UnixListener, PathBuf)> {
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    let bound = async {
        match tokio::fs::symlink_metadata(path).await {
            Ok(meta) if meta.file_type().is_socket() => {
                if tokio::net::UnixStream::connect(path).await.is_ok() {
                    anyhow::bail!("another server listens on {}", path.display());
                }
                tokio::fs::remove_file(path).await?;
            }
            Ok(_) => anyhow::bail!("{} exists and is not a socket", path.display()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err.into()),
        }
        let listener = tokio::net::UnixListener::bind(path)?;
        // Only our own user may connect (requests still need a token).
        tokio::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).await?;
        anyhow::Ok(listener)
    };
    match bound.await {
        Ok(listener) => Some((listener, path.to_owned())),
        Err(err) => {
            tracing::warn!(
                path = %path.display(),
                error = %err,
                "cannot listen on the workers' Unix socket; local workers use TCP"
            );
            None
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C (also used by the CLI's long-running
/// commands, such as `falconeri proxy`).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The workers' socket replaces one a dead server left, but neither a
    /// socket another server answers on nor a file that is not a socket.
    #[tokio::test]
    async fn the_worker_socket_replaces_only_a_dead_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("falconerid.sock");

        // Left behind: bound, then its server gone.
        drop(tokio::net::UnixListener::bind(&path).unwrap());
        let (live, bound) = bind_worker_socket(&path).await.unwrap();
        assert_eq!(bound, path);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);

        // Still answered: left alone, and still answering.
        assert!(bind_worker_socket(&path).await.is_none());
        let client = tokio::net::UnixStream::connect(&path);
        let (accepted, connected) = tokio::join!(live.accept(), client);
        accepted.unwrap();
        connected.unwrap();

        // Not a socket: left alone.
        let file = dir.path().join("notes");
        std::fs::write(&file, b"mine").unwrap();
        assert!(bind_worker_socket(&file).await.is_none());
        assert_eq!(std::fs::read(&file).unwrap(), b"mine");
    }
}
