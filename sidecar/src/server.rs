//! A whole running sidecar: the gossip node, the engine socket API and the HTTP endpoints,
//! started together and shut down in order (stop accepting → end subscriptions → drain
//! the API → flush the outbox → unsubscribe → remove the socket).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use libp2p::{PeerId, identity::Keypair};
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::NodeSettings;
use crate::metrics::{Health, Metrics};
use crate::node::{Node, NodeHandle, Shutdown};

/// How long in-flight API calls may take to finish on shutdown.
pub const API_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Handles of a started sidecar.
pub struct RunningSidecar {
    /// This node's peer id.
    pub peer_id: PeerId,
    /// Engine API socket path.
    pub socket: PathBuf,
    /// Bound address of the metrics/health HTTP server.
    pub http_addr: SocketAddr,
    /// The registry behind `/metrics`.
    pub registry: Arc<Mutex<Registry>>,
    /// This node's metrics.
    pub metrics: Arc<Metrics>,
    /// Liveness/readiness flags.
    pub health: Arc<Health>,
    /// In-process handle to the node (what the API uses).
    pub node: NodeHandle,
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
    let health = Arc::new(Health::default());
    let (node, handle) = Node::new(settings.clone(), key, &mut registry, health.clone())?;
    let metrics = node.metrics();
    let peer_id = handle.info().peer_id;
    let registry = Arc::new(Mutex::new(registry));

    let listener = crate::api::bind_socket(&settings.socket).await?;
    let shutdown = Shutdown::default();
    let node_task = tokio::spawn(node.run(shutdown.clone()));
    health.alive.store(true, Ordering::Relaxed);

    let (reporter, health_service) = tonic_health::server::health_reporter();
    let api_stop = CancellationToken::new();
    let stop = api_stop.clone();
    let (h, m) = (handle.clone(), metrics.clone());
    let api_task = tokio::spawn(async move {
        if let Err(e) = crate::api::serve(listener, h, m, reporter, health_service, stop.cancelled_owned()).await {
            tracing::error!(error = %e, "engine API server failed");
        }
    });

    let http_stop = CancellationToken::new();
    let (http_addr, http_task) = crate::metrics::serve_http(
        settings.metrics_addr,
        registry.clone(),
        health.clone(),
        http_stop.clone().cancelled_owned(),
    )
    .await
    .with_context(|| format!("binding the metrics address {}", settings.metrics_addr))?;
    health.ready.store(true, Ordering::Relaxed);
    tracing::info!(%peer_id, socket = %settings.socket.display(), metrics = %http_addr, network = %settings.config.network, markets = ?settings.config.markets, "sidecar started");
    Ok(RunningSidecar {
        peer_id,
        socket: settings.socket.clone(),
        http_addr,
        registry,
        metrics,
        health,
        node: handle,
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
        self.health.ready.store(false, Ordering::Relaxed);
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
        self.health.alive.store(false, Ordering::Relaxed);
        self.http_stop.cancel();
        let _ = self.http_task.await;
        tracing::info!("sidecar stopped");
        Ok(())
    }
}
