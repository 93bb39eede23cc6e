//! A whole running sidecar: the gossip node, the engine socket API and the HTTP endpoints,
//! started together and shut down in order (stop accepting → end subscriptions → drain
//! the API → flush the outbox → close the peer connections → remove the socket).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use libp2p::{PeerId, identity::Keypair};
use openmatch_gossip_crds::runtime::{Probe, Probes};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::NodeSettings;
use crate::metrics::Metrics;
use crate::node::{Health, Node, NodeHandle, Shutdown};

/// How long in-flight API calls may take to finish on shutdown.
const API_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What `/healthz` and `/readyz` answer.
struct SidecarProbes {
    /// The node's event loop is running.
    alive: AtomicBool,
    /// The engine socket is bound and the node listens on its p2p addresses.
    ready: AtomicBool,
    health: watch::Receiver<Health>,
}

impl Probes for SidecarProbes {
    /// 200 while the node runs (so an isolated node is not restarted in a loop); the body
    /// says `healthy`, `degraded: <reason>` or `isolated: <reason>`.
    fn liveness(&self) -> Probe {
        if !self.alive.load(Ordering::Relaxed) {
            return Probe { ok: false, body: "not alive\n".to_owned() };
        }
        let health = self.health.borrow();
        let body = match health.reason() {
            r if r.is_empty() => format!("{}\n", health.as_str()),
            r => format!("{}: {r}\n", health.as_str()),
        };
        Probe { ok: true, body }
    }

    fn readiness(&self) -> Probe {
        match self.ready.load(Ordering::Relaxed) {
            true => Probe { ok: true, body: "ok\n".to_owned() },
            false => Probe { ok: false, body: "not ready\n".to_owned() },
        }
    }
}

/// Handles of a started sidecar.
pub struct RunningSidecar {
    /// This node's peer id.
    pub peer_id: PeerId,
    /// Engine API socket path.
    pub socket: PathBuf,
    /// Bound address of the metrics/health HTTP server.
    pub http_addr: SocketAddr,
    /// The registry behind `/metrics`.
    pub registry: Arc<Registry>,
    /// In-process handle to the node (what the API uses).
    pub node: NodeHandle,
    /// This node's metrics (the `openmatch_gossip_*` families in `registry`).
    pub metrics: Arc<Metrics>,
    probes: Arc<SidecarProbes>,
    shutdown: Shutdown,
    watch_stop: CancellationToken,
    api_stop: CancellationToken,
    http_stop: CancellationToken,
    api_task: JoinHandle<()>,
    node_task: JoinHandle<()>,
    http_task: JoinHandle<()>,
}

/// Starts node, API and HTTP server. Errors: identity, socket or port problems, a listen
/// address that cannot be bound.
pub async fn start(settings: NodeSettings, key: Keypair) -> anyhow::Result<RunningSidecar> {
    let mut registry = Registry::default();
    let (node, handle, metrics) = Node::new(settings.clone(), key, &mut registry)?;
    let peer_id = handle.info().peer_id;
    let registry = Arc::new(registry);
    let probes = Arc::new(SidecarProbes {
        alive: AtomicBool::new(false),
        ready: AtomicBool::new(false),
        health: handle.health(),
    });

    let listener = crate::api::bind_socket(&settings.socket).await?;
    let shutdown = Shutdown::default();
    let node_task = tokio::spawn(node.run(shutdown.clone()));
    probes.alive.store(true, Ordering::Relaxed);

    let api_stop = CancellationToken::new();
    let stop = api_stop.clone();
    let (h, m) = (handle.clone(), metrics.clone());
    let api_task = tokio::spawn(async move {
        if let Err(e) = crate::api::serve(listener, h, m, stop).await {
            tracing::error!(error = %e, "engine API server failed");
        }
    });

    let http_stop = CancellationToken::new();
    let (http_addr, http_task) = openmatch_gossip_crds::runtime::serve_http(
        settings.metrics_addr,
        registry.clone(),
        probes.clone(),
        Some(peer_id.to_string()),
        http_stop.clone().cancelled_owned(),
    )
    .await
    .with_context(|| format!("binding the metrics address {}", settings.metrics_addr))?;
    probes.ready.store(true, Ordering::Relaxed);
    tracing::info!(%peer_id, socket = %settings.socket.display(), metrics = %http_addr, network = %settings.config.network, markets = ?settings.config.markets, "sidecar started");
    Ok(RunningSidecar {
        peer_id,
        socket: settings.socket.clone(),
        http_addr,
        registry,
        node: handle,
        metrics,
        probes,
        shutdown,
        watch_stop: CancellationToken::new(),
        api_stop,
        http_stop,
        api_task,
        node_task,
        http_task,
    })
}

impl RunningSidecar {
    /// Reloads the configuration whenever the file at `path` changes ([`crate::reload`]);
    /// `load` reads it as at start-up (with the command line's overrides).
    pub fn watch_config(
        &self,
        path: std::path::PathBuf,
        load: impl Fn() -> anyhow::Result<NodeSettings> + Send + 'static,
        interval: Duration,
    ) {
        crate::reload::spawn(path, load, self.node.clone(), self.metrics.clone(), interval, self.watch_stop.clone());
    }

    /// Shuts down in order and removes the socket file.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        tracing::info!("shutting down");
        self.watch_stop.cancel();
        self.probes.ready.store(false, Ordering::Relaxed);
        self.shutdown.closing.cancel();
        self.api_stop.cancel();
        if tokio::time::timeout(API_DRAIN_TIMEOUT, self.api_task).await.is_err() {
            tracing::warn!("engine API calls still running after {API_DRAIN_TIMEOUT:?}; closing anyway");
        }
        self.shutdown.stop.cancel();
        let _ = self.node_task.await;
        match std::fs::remove_file(&self.socket) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(socket = %self.socket.display(), error = %e, "could not remove the socket"),
        }
        self.probes.alive.store(false, Ordering::Relaxed);
        self.http_stop.cancel();
        let _ = self.http_task.await;
        tracing::info!("sidecar stopped");
        Ok(())
    }
}
