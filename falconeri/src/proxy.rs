//! `falconeri proxy`: local ports that reach falconerid, PostgreSQL and MinIO
//! inside the cluster through the Kubernetes API's port-forward subresource
//! (kube-rs, WebSocket), so nothing but the kubeconfig is needed.
//!
//! Unlike `kubectl port-forward svc/…`, which picks one pod when it starts
//! and dies with it, every accepted local connection here looks up the
//! component's pods again and opens its own forwarded stream to one that is
//! ready now. A restarted or replaced pod, or a dropped API connection, costs
//! the connections that were open at the time and nothing else: the next one
//! goes to whichever pod is ready then, without restarting the proxy.
//!
//! Pods are listed per connection rather than watched: a list is one request
//! and is never stale, and a CLI opens few connections. `migrate` and
//! `db console` use the same [`Forward`] in-process, on a free port, for as
//! long as they run.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, ListParams};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::{cli::ProxyArgs, cluster, config::Config};

/// How long finding a pod and opening a port-forward to it may take before
/// the local connection is given up (the client would otherwise hang).
const DIAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// How long to pause after a failed `accept`.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);

/// One kind of pod the proxy reaches: its component label and the port its
/// container listens on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// For people: `falconerid`, `PostgreSQL`, `MinIO`.
    pub title: &'static str,
    /// The value of the component label on its pods.
    pub component: &'static str,
    /// The Service that `deploy` creates for it.
    pub service: &'static str,
    /// The container port.
    pub port: u16,
}

pub const FALCONERID: Target = Target {
    title: "falconerid",
    component: "falconerid",
    service: cluster::FALCONERID,
    port: cluster::FALCONERID_PORT,
};

pub const POSTGRES: Target = Target {
    title: "PostgreSQL",
    component: "postgres",
    service: cluster::POSTGRES,
    port: cluster::POSTGRES_PORT,
};

pub const MINIO: Target = Target {
    title: "MinIO",
    component: "minio",
    service: cluster::MINIO,
    port: cluster::MINIO_PORT,
};

impl Target {
    /// The label selector of its pods.
    pub fn selector(&self) -> String {
        format!(
            "{}={},{}={}",
            cluster::PART_OF_LABEL,
            cluster::PART_OF,
            cluster::COMPONENT_LABEL,
            self.component
        )
    }
}

/// Opens forwarded streams to a ready pod of one [`Target`].
#[derive(Clone)]
pub struct PodDialer {
    pods: Api<Pod>,
    target: Target,
    /// The pod the last connection went to, so connections stay on one pod
    /// while it is ready and a change of pod is logged once.
    last_pod: Arc<Mutex<Option<String>>>,
}

/// A stream to a pod's port, and the means to notice that it failed.
pub struct PodStream {
    pub pod: String,
    stream: tokio::io::DuplexStream,
    forwarder: kube::api::Portforwarder,
}

impl PodDialer {
    pub fn new(client: kube::Client, namespace: &str, target: Target) -> PodDialer {
        PodDialer {
            pods: Api::namespaced(client, namespace),
            target,
            last_pod: Arc::new(Mutex::new(None)),
        }
    }

    pub fn target(&self) -> Target {
        self.target
    }

    /// The names of the target's pods that are ready now, the one used last
    /// first (if it still is), then by name.
    pub async fn ready_pods(&self) -> Result<Vec<String>> {
        let selector = self.target.selector();
        let list = self
            .pods
            .list(&ListParams::default().labels(&selector))
            .await
            .with_context(|| format!("cannot list the {} pods ({selector})", self.target.title))?;
        let last = self.last_pod();
        Ok(order_pods(
            list.items
                .iter()
                .filter(|pod| is_ready(pod))
                .filter_map(|pod| pod.metadata.name.clone()),
            last.as_deref(),
        ))
    }

    /// A new stream to the target's port on a ready pod. Tries the ready pods
    /// in turn until the API accepts a port-forward to one.
    pub async fn dial(&self) -> Result<PodStream> {
        let pods = self.ready_pods().await?;
        if pods.is_empty() {
            bail!(
                "no {} pod is ready (pods labelled {})",
                self.target.title,
                self.target.selector()
            );
        }
        let mut last_error = None;
        for pod in pods {
            match self.pods.portforward(&pod, &[self.target.port]).await {
                Ok(mut forwarder) => {
                    let stream = forwarder
                        .take_stream(self.target.port)
                        .ok_or_else(|| anyhow!("the port-forward to {pod} has no stream"))?;
                    self.note_pod(&pod);
                    return Ok(PodStream {
                        pod,
                        stream,
                        forwarder,
                    });
                }
                Err(err) => {
                    tracing::warn!(pod, error = %err, "cannot port-forward to {}", self.target.title);
                    last_error = Some(anyhow::Error::new(err).context(format!(
                        "cannot port-forward to {} pod {pod}",
                        self.target.title
                    )));
                }
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow!("no pod to port-forward to")))
    }

    fn last_pod(&self) -> Option<String> {
        self.last_pod
            .lock()
            .map(|last| last.clone())
            .unwrap_or(None)
    }

    /// Records the pod a connection went to, logging a change of pod.
    fn note_pod(&self, pod: &str) {
        let Ok(mut last) = self.last_pod.lock() else {
            return;
        };
        if last.as_deref() != Some(pod) {
            match last.as_deref() {
                None => tracing::info!(pod, "{}: forwarding to pod {pod}", self.target.title),
                Some(previous) => tracing::info!(
                    pod,
                    previous,
                    "{}: now forwarding to pod {pod} (was {previous})",
                    self.target.title
                ),
            }
            *last = Some(pod.to_owned());
        }
    }
}

/// True for a pod that may take connections: running, Ready, not being
/// deleted.
pub fn is_ready(pod: &Pod) -> bool {
    let running = pod
        .status
        .as_ref()
        .is_some_and(|status| status.phase.as_deref() == Some("Running"));
    let ready = pod
        .status
        .as_ref()
        .and_then(|status| status.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        });
    running && ready && pod.metadata.deletion_timestamp.is_none()
}

/// `pods` sorted by name, with `preferred` first if it is among them.
fn order_pods(pods: impl Iterator<Item = String>, preferred: Option<&str>) -> Vec<String> {
    let mut pods: Vec<String> = pods.collect();
    pods.sort();
    if let Some(index) = preferred.and_then(|p| pods.iter().position(|pod| pod == p)) {
        let pod = pods.remove(index);
        pods.insert(0, pod);
    }
    pods
}

/// A local port (on 127.0.0.1 only) forwarded to a [`Target`].
pub struct Forward {
    listener: TcpListener,
    dialer: PodDialer,
}

impl Forward {
    /// Listens on 127.0.0.1:`port` (0 picks a free port). Never on other
    /// interfaces: whoever reaches the port reaches the database.
    pub async fn bind(port: u16, dialer: PodDialer) -> Result<Forward> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port))
            .await
            .with_context(|| {
                format!(
                    "cannot listen on 127.0.0.1:{port} for {}; choose another port",
                    dialer.target.title
                )
            })?;
        Ok(Forward { listener, dialer })
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener
            .local_addr()
            .context("cannot read the listening address")
    }

    /// Accepts connections until `cancel` fires, forwarding each one to a
    /// ready pod in a task of its own.
    pub async fn run(self, cancel: CancellationToken) {
        let title = self.dialer.target.title;
        loop {
            let accepted = tokio::select! {
                _ = cancel.cancelled() => return,
                accepted = self.listener.accept() => accepted,
            };
            match accepted {
                Ok((conn, peer)) => {
                    let dialer = self.dialer.clone();
                    let cancel = cancel.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = cancel.cancelled() => {}
                            result = pipe(conn, &dialer) => if let Err(err) = result {
                                tracing::warn!(%peer, "{title}: connection failed: {err:#}");
                            }
                        }
                    });
                }
                // Such as too many open files: this connection is lost, the
                // next may work. A pause keeps a persistent failure from
                // spinning (it is a backoff, not a poll).
                Err(err) => {
                    tracing::warn!(error = %err, "{title}: cannot accept a connection");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    }
                }
            }
        }
    }

    /// Forwards in a background task for as long as the returned guard lives
    /// (for commands that need the port while they run).
    pub fn spawn(self) -> Result<BackgroundForward> {
        let addr = self.local_addr()?;
        let cancel = CancellationToken::new();
        tokio::spawn(self.run(cancel.clone()));
        Ok(BackgroundForward {
            addr,
            _stop: cancel.drop_guard(),
        })
    }
}

/// A [`Forward`] running in the background; dropping it stops listening
/// and closes its connections.
pub struct BackgroundForward {
    pub addr: SocketAddr,
    _stop: tokio_util::sync::DropGuard,
}

/// Copies bytes both ways between a local connection and a new stream to a
/// ready pod, until both sides are done or the pod's side reports an error.
async fn pipe(mut conn: TcpStream, dialer: &PodDialer) -> Result<()> {
    let PodStream {
        pod,
        mut stream,
        mut forwarder,
    } = tokio::time::timeout(DIAL_TIMEOUT, dialer.dial())
        .await
        .map_err(|_| anyhow!("no port-forward within {DIAL_TIMEOUT:?}"))??;
    tracing::debug!(pod, "{}: connection opened", dialer.target.title);
    let port_error = forwarder.take_error(dialer.target.port);
    let result = {
        let copy = tokio::io::copy_bidirectional(&mut conn, &mut stream);
        tokio::pin!(copy);
        tokio::select! {
            copied = &mut copy => copied
                .map(|_| ())
                .with_context(|| format!("connection to pod {pod} lost")),
            // The error channel resolves `None` once the forwarder ends
            // without an error: then the copy finishes on its own.
            Some(Some(message)) = async move {
                match port_error {
                    Some(error) => Some(error.await),
                    None => std::future::pending().await,
                }
            } => Err(anyhow!("pod {pod} port {}: {message}", dialer.target.port)),
        }
    };
    // Both directions are finished (or the pod's side failed), so nothing
    // is left to deliver: end the forwarding task rather than wait for the
    // API server to acknowledge the close.
    forwarder.abort();
    result
}

/// `falconeri proxy`: forwards until Ctrl-C or SIGTERM.
pub async fn run(config: &Config, args: ProxyArgs) -> Result<()> {
    let client = args.cluster.client().await?;
    let namespace = args.cluster.namespace.as_str();

    let mut targets = vec![
        (FALCONERID, args.falconerid_port),
        (POSTGRES, args.postgres_port),
    ];
    // MinIO exists only in `deploy --development` deployments. Not being
    // allowed to look is no reason to forward nothing: the pod list below
    // fails loudly if the cluster cannot be reached at all.
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    match services.get_opt(MINIO.service).await {
        Ok(Some(_)) => targets.push((MINIO, args.minio_port)),
        Ok(None) => {}
        Err(err) => tracing::warn!(
            "not forwarding MinIO: cannot look up Service {} in namespace {namespace}: {err}",
            MINIO.service
        ),
    }

    let mut forwards = Vec::new();
    for (target, port) in targets {
        let dialer = PodDialer::new(client.clone(), namespace, target);
        // Fail early when the cluster cannot be reached; a component without
        // ready pods may still come up, so that is only a warning.
        if dialer.ready_pods().await?.is_empty() {
            tracing::warn!(
                "no {} pod is ready yet (pods labelled {}); connections will fail until one is",
                target.title,
                target.selector()
            );
        }
        forwards.push(Forward::bind(port, dialer).await?);
    }

    let token_file = match write_token_file(config, &client, namespace).await {
        Ok(path) => path,
        Err(err) => {
            tracing::warn!("no token for this deployment: {err:#}");
            None
        }
    };

    print_instructions(namespace, &forwards, token_file.as_deref())?;

    let cancel = CancellationToken::new();
    let tasks: Vec<_> = forwards
        .into_iter()
        .map(|forward| tokio::spawn(forward.run(cancel.clone())))
        .collect();
    falconerid::shutdown_signal().await;
    tracing::info!("stopping the proxy");
    cancel.cancel();
    for task in tasks {
        let _ = task.await;
    }
    if let Some(path) = token_file {
        // The token need not outlive the proxy on disk; a shell that read it
        // keeps its copy.
        if let Err(err) = std::fs::remove_file(&path) {
            tracing::warn!(path = %path.display(), error = %err, "cannot remove the token file");
        }
    }
    Ok(())
}

/// Where the proxy keeps the deployment's API token while it runs.
pub fn token_path(home: &Path, namespace: &str) -> PathBuf {
    home.join(format!("proxy-{namespace}.token"))
}

/// Reads the API token from the deployment's Secret and writes it, readable by
/// the user alone, under FALCONERI_HOME. The token is never printed: the
/// instructions show how to read it from this file.
async fn write_token_file(
    config: &Config,
    client: &kube::Client,
    namespace: &str,
) -> Result<Option<PathBuf>> {
    let Some(token) =
        cluster::read_secret(client, namespace, cluster::SECRET, cluster::SECRET_TOKEN).await?
    else {
        bail!(
            "Secret {} has no key {} in namespace {namespace}; set FALCONERI_TOKEN yourself",
            cluster::SECRET,
            cluster::SECRET_TOKEN
        );
    };
    let home = config.home()?;
    std::fs::create_dir_all(home).with_context(|| format!("cannot create {}", home.display()))?;
    let path = token_path(home, namespace);
    write_private(&path, token.trim().as_bytes())?;
    Ok(Some(path))
}

/// Writes `contents` to `path`, which only the user may read, replacing it
/// whole (a reader never sees half a token).
fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let partial = path.with_extension("partial");
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)
        .and_then(|mut file| {
            // `mode` applies only to new files.
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            file.write_all(contents)
        })
        .and_then(|()| std::fs::rename(&partial, path));
    written.with_context(|| format!("cannot write {}", path.display()))
}

fn print_instructions(namespace: &str, forwards: &[Forward], token: Option<&Path>) -> Result<()> {
    use std::io::Write;
    let mut out = String::new();
    out.push_str(&format!(
        "Forwarding to namespace {namespace} (Ctrl-C to stop):\n"
    ));
    let mut server_url = None;
    for forward in forwards {
        let addr = forward.local_addr()?;
        let target = forward.dialer.target();
        let shown = match target {
            FALCONERID => {
                let url = format!("http://{addr}");
                server_url = Some(url.clone());
                url
            }
            MINIO => format!("http://{addr}"),
            _ => addr.to_string(),
        };
        out.push_str(&format!("  {:<11} {shown}\n", target.title));
    }
    if let Some(url) = server_url {
        out.push_str("\nTo use this deployment from a shell:\n");
        out.push_str(&format!("  export FALCONERI_SERVER={url}\n"));
        match token {
            Some(path) => out.push_str(&format!(
                "  export FALCONERI_TOKEN=\"$(cat {})\"\n",
                shell_quote(&path.display().to_string())
            )),
            None => out.push_str("  export FALCONERI_TOKEN=...  # the deployment's API token\n"),
        }
    }
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
        .context("cannot write to stdout")
}

/// `s` quoted for a POSIX shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::{
        api::core::v1::{PodCondition, PodStatus},
        apimachinery::pkg::apis::meta::v1::Time,
    };

    fn pod(phase: &str, ready: &str, deleting: bool) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = Some("p".into());
        if deleting {
            pod.metadata.deletion_timestamp = Some(Time(Default::default()));
        }
        pod.status = Some(PodStatus {
            phase: Some(phase.into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: ready.into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        pod
    }

    #[test]
    fn only_running_ready_pods_not_being_deleted_are_ready() {
        assert!(is_ready(&pod("Running", "True", false)));
        assert!(!is_ready(&pod("Running", "False", false)));
        assert!(!is_ready(&pod("Pending", "True", false)));
        assert!(!is_ready(&pod("Running", "True", true)));
        assert!(!is_ready(&Pod::default()));
    }

    #[test]
    fn the_last_pod_comes_first_while_it_is_ready() {
        let pods = || ["c", "a", "b"].into_iter().map(String::from);
        assert_eq!(order_pods(pods(), None), ["a", "b", "c"]);
        assert_eq!(order_pods(pods(), Some("b")), ["b", "a", "c"]);
        assert_eq!(order_pods(pods(), Some("gone")), ["a", "b", "c"]);
    }

    #[test]
    fn selectors_name_the_deployment_and_component() {
        assert_eq!(
            FALCONERID.selector(),
            "app.kubernetes.io/part-of=falconeri,app.kubernetes.io/component=falconerid"
        );
        assert_eq!(
            POSTGRES.selector(),
            "app.kubernetes.io/part-of=falconeri,app.kubernetes.io/component=postgres"
        );
    }

    #[test]
    fn paths_are_quoted_for_the_shell() {
        assert_eq!(shell_quote("/a b/c"), "'/a b/c'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
