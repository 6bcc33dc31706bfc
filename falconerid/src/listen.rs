//! Hearing about changes made by other falconerid replicas.
//!
//! Every server wakes its own long-polls when it changes something. With
//! several replicas on one PostgreSQL database, a worker long-polling on
//! replica B must also wake when replica A requeues a datum, so each server
//! `NOTIFY`s a channel on every change and listens to it here, on a
//! dedicated connection. SQLite has a single server and needs none of this.

use std::time::Duration;

use falconeri_common::db::CHANGES_CHANNEL;
use futures::StreamExt;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;

use crate::state::AppState;

/// Longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Listens on [`CHANGES_CHANNEL`] until `cancel` fires, waking this server's
/// long-polls on each notification, and reconnecting when the connection
/// drops. (The listening connection does not use TLS.)
pub async fn run(state: AppState, database_url: String, cancel: CancellationToken) {
    let mut backoff = Duration::from_millis(250);
    loop {
        let listened = tokio::select! {
            _ = cancel.cancelled() => return,
            result = listen_once(&state, &database_url, &cancel) => result,
        };
        match listened {
            Ok(()) => return,
            Err(err) => {
                tracing::warn!(
                    error = format!("{err:#}"),
                    ?backoff,
                    "change listener lost its connection; reconnecting"
                );
            }
        }
        // Reconnection backoff, not polling: nothing is being waited for.
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn listen_once(
    state: &AppState,
    database_url: &str,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let (client, mut connection) = tokio_postgres::connect(database_url, NoTls).await?;
    // The connection yields notifications as messages; it must be polled for
    // the client's queries to make progress too.
    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let listen = async move {
        client
            .batch_execute(&format!("LISTEN {CHANGES_CHANNEL}"))
            .await?;
        let _ = ready_tx.send(());
        // Keep the client alive for as long as we listen.
        std::future::pending::<()>().await;
        drop(client);
        anyhow::Ok(())
    };
    tokio::pin!(listen);
    let mut ready_rx = Some(ready_rx);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            result = &mut listen => return result,
            message = messages.next() => match message {
                Some(Ok(AsyncMessage::Notification(note))) => state.hear(note.payload()),
                Some(Ok(_)) => {}
                Some(Err(err)) => return Err(err.into()),
                None => anyhow::bail!("the database closed the connection"),
            },
            Ok(()) = async { ready_rx.as_mut().expect("polled only while listening").await }, if ready_rx.is_some() => {
                ready_rx = None;
                tracing::info!(channel = CHANGES_CHANNEL, "listening for other servers' changes");
                // Changes made while we were not listening were missed.
                state.wake_all_local();
            }
        }
    }
}
