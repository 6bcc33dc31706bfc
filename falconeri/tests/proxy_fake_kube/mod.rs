//! A loopback fake of the few Kubernetes API calls `proxy`, `db` and
//! `migrate` make: list pods by label selector, get a Secret, get a Service,
//! and the pod `portforward` subresource over WebSocket.
//!
//! Port-forward follows the protocol the API server speaks (and kube-rs's
//! `Portforwarder` checks): subprotocol `v4.channel.k8s.io`; for the n-th
//! requested port, channel 2n carries data and 2n+1 errors; every binary
//! frame starts with its channel byte, and the first frame on each channel
//! carries the port number as two bytes, little-endian. The "pods" behind it
//! are real local TCP servers, named per pod and port.
//!
//! HTTP is spoken by hand (requests without bodies, keep-alive), so the fake
//! needs no server framework: what a test sees is what kube-rs sent.

#![allow(dead_code, clippy::unwrap_used)]

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use futures::{SinkExt, StreamExt};
use k8s_openapi::{
    ByteString,
    api::core::v1::{Pod, PodCondition, PodStatus, Secret, Service},
};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{Message, handshake::derive_accept_key, protocol::Role},
};
use tokio_util::sync::CancellationToken;

/// The bearer token the fake's kubeconfig carries and the fake demands.
const TOKEN: &str = "fake-kube-token";
const PROTOCOL: &str = "v4.channel.k8s.io";

/// One pod: its labels' component, readiness and the local address behind
/// each of its container ports.
#[derive(Clone)]
pub struct FakePod {
    pub name: String,
    pub component: String,
    pub ready: bool,
    pub ports: BTreeMap<u16, SocketAddr>,
    /// Cancelled when the pod goes away: its port-forwards drop.
    gone: CancellationToken,
}

impl FakePod {
    pub fn new(name: &str, component: &str, port: u16, addr: SocketAddr) -> FakePod {
        FakePod {
            name: name.into(),
            component: component.into(),
            ready: true,
            ports: BTreeMap::from([(port, addr)]),
            gone: CancellationToken::new(),
        }
    }

    pub fn not_ready(mut self) -> FakePod {
        self.ready = false;
        self
    }

    fn to_json(&self, namespace: &str) -> serde_json::Value {
        let mut pod = Pod::default();
        pod.metadata.name = Some(self.name.clone());
        pod.metadata.namespace = Some(namespace.into());
        pod.metadata.labels = Some(BTreeMap::from([
            ("app.kubernetes.io/part-of".into(), "falconeri".into()),
            ("app.kubernetes.io/component".into(), self.component.clone()),
        ]));
        pod.status = Some(PodStatus {
            phase: Some("Running".into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if self.ready { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        let mut value = serde_json::to_value(&pod).unwrap();
        value["apiVersion"] = "v1".into();
        value["kind"] = "Pod".into();
        value
    }

    fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/part-of".into(), "falconeri".into()),
            ("app.kubernetes.io/component".into(), self.component.clone()),
        ])
    }
}

#[derive(Default)]
struct State {
    pods: Vec<FakePod>,
    secrets: BTreeMap<String, BTreeMap<String, String>>,
    services: BTreeSet<String>,
    /// The pod of every port-forward opened, in order.
    forwards: Vec<String>,
    /// Cancelled (and replaced) by [`FakeKube::drop_connections`].
    drop_all: CancellationToken,
}

/// The fake API server, for one namespace, with a kubeconfig pointing at it.
pub struct FakeKube {
    pub addr: SocketAddr,
    pub namespace: String,
    pub kubeconfig: PathBuf,
    state: Arc<Mutex<State>>,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl FakeKube {
    pub async fn start(namespace: &str) -> FakeKube {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\n\
                 clusters:\n- name: fake\n  cluster:\n    server: http://{addr}\n\
                 users:\n- name: fake\n  user:\n    token: {TOKEN}\n\
                 contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: {namespace}\n\
                 current-context: fake\n"
            ),
        )
        .unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = CancellationToken::new();
        tokio::spawn(serve(
            listener,
            namespace.to_owned(),
            state.clone(),
            stop.clone(),
        ));
        FakeKube {
            addr,
            namespace: namespace.into(),
            kubeconfig,
            state,
            stop,
            _dir: dir,
        }
    }

    pub fn add_pod(&self, pod: FakePod) {
        self.state.lock().unwrap().pods.push(pod);
    }

    /// Deletes a pod: it leaves the list and its port-forwards drop.
    pub fn remove_pod(&self, name: &str) {
        let mut state = self.state.lock().unwrap();
        for pod in state.pods.iter().filter(|pod| pod.name == name) {
            pod.gone.cancel();
        }
        state.pods.retain(|pod| pod.name != name);
    }

    /// Drops every open port-forward connection, as an API server restart
    /// or a network failure would.
    pub fn drop_connections(&self) {
        let mut state = self.state.lock().unwrap();
        state.drop_all.cancel();
        state.drop_all = CancellationToken::new();
    }

    pub fn set_secret(&self, name: &str, key: &str, value: &str) {
        self.state
            .lock()
            .unwrap()
            .secrets
            .entry(name.into())
            .or_default()
            .insert(key.into(), value.into());
    }

    pub fn add_service(&self, name: &str) {
        self.state.lock().unwrap().services.insert(name.into());
    }

    /// The pods port-forwarded to so far, in order.
    pub fn forwards(&self) -> Vec<String> {
        self.state.lock().unwrap().forwards.clone()
    }
}

async fn serve(
    listener: TcpListener,
    namespace: String,
    state: Arc<Mutex<State>>,
    stop: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        let (namespace, state, stop) = (namespace.clone(), state.clone(), stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = connection(stream, &namespace, &state) => {}
            }
        });
    }
}

/// One request's line and headers (names lowercased).
struct Head {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    headers: BTreeMap<String, String>,
}

async fn read_head(reader: &mut BufReader<TcpStream>) -> Option<Head> {
    let mut line = String::new();
    if reader.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let mut words = line.split_whitespace();
    let method = words.next()?.to_owned();
    let target = words.next()?.to_owned();
    let mut headers = BTreeMap::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await.ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    // Bodies are not expected; skip one if sent.
    if let Some(length) = headers.get("content-length").and_then(|l| l.parse().ok()) {
        let mut body = vec![0; length];
        reader.read_exact(&mut body).await.ok()?;
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let query = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    Some(Head {
        method,
        path: path.to_owned(),
        query,
        headers,
    })
}

async fn connection(stream: TcpStream, namespace: &str, state: &Arc<Mutex<State>>) {
    let mut reader = BufReader::new(stream);
    while let Some(head) = read_head(&mut reader).await {
        if head.headers.get("authorization").map(String::as_str) != Some(&format!("Bearer {TOKEN}"))
        {
            respond(
                &mut reader,
                401,
                &status(401, "Unauthorized", "no or wrong token"),
            )
            .await;
            continue;
        }
        let prefix = format!("/api/v1/namespaces/{namespace}/");
        let Some(rest) = head.path.strip_prefix(&prefix) else {
            respond(
                &mut reader,
                404,
                &status(404, "NotFound", "wrong namespace"),
            )
            .await;
            continue;
        };
        let parts: Vec<&str> = rest.split('/').collect();
        if head
            .headers
            .get("upgrade")
            .is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
        {
            if let ["pods", name, "portforward"] = parts[..] {
                let name = name.to_owned();
                port_forward(reader, head, &name, state).await;
            }
            return;
        }
        let (code, body) = match (head.method.as_str(), &parts[..]) {
            ("GET", ["pods"]) => (200, list_pods(&head, namespace, state)),
            ("GET", ["secrets", name]) => get_secret(name, namespace, state),
            ("GET", ["services", name]) => get_service(name, namespace, state),
            _ => (404, status(404, "NotFound", "the fake does not serve this")),
        };
        respond(&mut reader, code, &body).await;
    }
}

fn list_pods(head: &Head, namespace: &str, state: &Arc<Mutex<State>>) -> serde_json::Value {
    let selector: Vec<(String, String)> = head
        .query
        .get("labelSelector")
        .map(|s| {
            s.split(',')
                .filter_map(|term| term.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        })
        .unwrap_or_default();
    let state = state.lock().unwrap();
    let items: Vec<_> = state
        .pods
        .iter()
        .filter(|pod| {
            let labels = pod.labels();
            selector
                .iter()
                .all(|(k, v)| labels.get(k).is_some_and(|l| l == v))
        })
        .map(|pod| pod.to_json(namespace))
        .collect();
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "PodList",
        "metadata": { "resourceVersion": "1" },
        "items": items,
    })
}

fn get_secret(name: &str, namespace: &str, state: &Arc<Mutex<State>>) -> (u16, serde_json::Value) {
    let state = state.lock().unwrap();
    let Some(data) = state.secrets.get(name) else {
        return (
            404,
            status(404, "NotFound", &format!("secrets \"{name}\" not found")),
        );
    };
    let mut secret = Secret::default();
    secret.metadata.name = Some(name.into());
    secret.metadata.namespace = Some(namespace.into());
    secret.data = Some(
        data.iter()
            .map(|(k, v)| (k.clone(), ByteString(v.as_bytes().to_vec())))
            .collect(),
    );
    let mut value = serde_json::to_value(&secret).unwrap();
    value["apiVersion"] = "v1".into();
    value["kind"] = "Secret".into();
    (200, value)
}

fn get_service(name: &str, namespace: &str, state: &Arc<Mutex<State>>) -> (u16, serde_json::Value) {
    if !state.lock().unwrap().services.contains(name) {
        return (
            404,
            status(404, "NotFound", &format!("services \"{name}\" not found")),
        );
    }
    let mut service = Service::default();
    service.metadata.name = Some(name.into());
    service.metadata.namespace = Some(namespace.into());
    let mut value = serde_json::to_value(&service).unwrap();
    value["apiVersion"] = "v1".into();
    value["kind"] = "Service".into();
    (200, value)
}

fn status(code: u16, reason: &str, message: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Status",
        "metadata": {},
        "status": "Failure",
        "reason": reason,
        "message": message,
        "code": code,
    })
}

async fn respond(reader: &mut BufReader<TcpStream>, code: u16, body: &serde_json::Value) {
    let body = body.to_string();
    let head = format!(
        "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let stream = reader.get_mut();
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
}

/// Serves one port-forward WebSocket: the pod's port is a local TCP server.
async fn port_forward(
    mut reader: BufReader<TcpStream>,
    head: Head,
    pod_name: &str,
    state: &Arc<Mutex<State>>,
) {
    let (pod, drop_all) = {
        let mut state = state.lock().unwrap();
        let pod = state.pods.iter().find(|pod| pod.name == pod_name).cloned();
        if pod.is_some() {
            state.forwards.push(pod_name.to_owned());
        }
        (pod, state.drop_all.clone())
    };
    let Some(pod) = pod else {
        let body = status(404, "NotFound", &format!("pods \"{pod_name}\" not found"));
        respond(&mut reader, 404, &body).await;
        return;
    };
    let offered = head.headers.get("sec-websocket-protocol");
    let Some(key) = head.headers.get("sec-websocket-key") else {
        respond(&mut reader, 400, &status(400, "BadRequest", "no key")).await;
        return;
    };
    if !offered.is_some_and(|p| p.split(',').any(|p| p.trim() == PROTOCOL)) {
        respond(
            &mut reader,
            400,
            &status(400, "BadRequest", "no v4 subprotocol"),
        )
        .await;
        return;
    }
    let ports: Vec<u16> = head
        .query
        .get("ports")
        .map(|p| p.split(',').filter_map(|p| p.parse().ok()).collect())
        .unwrap_or_default();
    let [port] = ports[..] else {
        respond(
            &mut reader,
            400,
            &status(400, "BadRequest", "one port, please"),
        )
        .await;
        return;
    };
    let accept = derive_accept_key(key.as_bytes());
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: {PROTOCOL}\r\n\r\n"
    );
    if reader
        .get_mut()
        .write_all(response.as_bytes())
        .await
        .is_err()
    {
        return;
    }
    // The client sends nothing before it has read the 101.
    assert!(reader.buffer().is_empty());
    let ws = WebSocketStream::from_raw_socket(reader.into_inner(), Role::Server, None).await;
    let (mut sink, mut source) = ws.split();
    let [lo, hi] = port.to_le_bytes();
    // The first frame of each channel names the port.
    for channel in [0u8, 1] {
        if sink
            .send(Message::binary(vec![channel, lo, hi]))
            .await
            .is_err()
        {
            return;
        }
    }
    let upstream = match pod.ports.get(&port) {
        Some(addr) => TcpStream::connect(addr).await.ok(),
        None => None,
    };
    let Some(upstream) = upstream else {
        let mut frame = vec![1u8];
        frame.extend_from_slice(
            format!("error forwarding port {port} to pod {pod_name}: connection refused")
                .as_bytes(),
        );
        let _ = sink.send(Message::binary(frame)).await;
        let _ = sink.close().await;
        return;
    };
    let (mut from_pod, mut to_pod) = upstream.into_split();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            // Dropped without a close frame, as a lost connection would be.
            _ = pod.gone.cancelled() => return,
            _ = drop_all.cancelled() => return,
            message = source.next() => match message {
                Some(Ok(Message::Binary(data))) => {
                    if data.first() == Some(&0) && to_pod.write_all(&data[1..]).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
            read = from_pod.read(&mut buf) => match read {
                Ok(0) | Err(_) => {
                    let _ = sink.close().await;
                    return;
                }
                Ok(n) => {
                    let mut frame = Vec::with_capacity(n + 1);
                    frame.push(0u8);
                    frame.extend_from_slice(&buf[..n]);
                    if sink.send(Message::binary(frame)).await.is_err() {
                        return;
                    }
                }
            },
        }
    }
}

/// A pod's container: a TCP server that greets each connection with
/// `pod NAME\n` and then echoes what it reads.
pub struct EchoPod {
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for EchoPod {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl EchoPod {
    pub async fn start(name: &str) -> EchoPod {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let name = name.to_owned();
        let stopped = stop.clone();
        tokio::spawn(async move {
            loop {
                let (mut conn, _) = tokio::select! {
                    _ = stopped.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(_) => continue,
                    },
                };
                let name = name.clone();
                let stopped = stopped.clone();
                tokio::spawn(async move {
                    let echo = async {
                        conn.write_all(format!("pod {name}\n").as_bytes()).await?;
                        let (mut r, mut w) = conn.split();
                        tokio::io::copy(&mut r, &mut w).await
                    };
                    tokio::select! {
                        _ = stopped.cancelled() => {}
                        _ = echo => {}
                    }
                });
            }
        });
        EchoPod { addr, stop }
    }
}
