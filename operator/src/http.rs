//! The operator's HTTP endpoints (axum): `/metrics` (OpenMetrics text), `/healthz`
//! (liveness) and `/readyz` (readiness).
//!
//! - `/healthz`: 200 while the process serves HTTP; the body is the [`Phase`].
//! - `/readyz`: 200 in phases `standby` (waiting for the Lease) and `leader`
//!   (reconciling); 503 while `starting` and `shutting-down`. A standby replica is ready:
//!   it is healthy and will take over when the leader goes.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;

/// Where the operator is in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Phase {
    /// Connecting; not ready.
    #[default]
    Starting,
    /// Waiting for the leader Lease; ready.
    Standby,
    /// Holding the Lease (or running without election) and reconciling; ready.
    Leader,
    /// Stopping after SIGTERM/SIGINT or lost leadership; not ready.
    ShuttingDown,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Standby => "standby",
            Phase::Leader => "leader",
            Phase::ShuttingDown => "shutting-down",
        }
    }
}

/// The phase shared with the HTTP handlers.
#[derive(Debug, Default)]
pub struct Health(Mutex<Phase>);

impl Health {
    /// Sets the phase.
    pub fn set(&self, phase: Phase) {
        *self.0.lock().expect("health lock") = phase;
    }

    /// The current phase.
    pub fn get(&self) -> Phase {
        *self.0.lock().expect("health lock")
    }
}

#[derive(Clone)]
struct HttpState {
    registry: Arc<Registry>,
    health: Arc<Health>,
}

async fn metrics(State(s): State<HttpState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        crate::metrics::encode(&s.registry),
    )
}

async fn healthz(State(s): State<HttpState>) -> impl IntoResponse {
    (StatusCode::OK, format!("{}\n", s.health.get().as_str()))
}

async fn readyz(State(s): State<HttpState>) -> impl IntoResponse {
    let phase = s.health.get();
    let code = match phase {
        Phase::Standby | Phase::Leader => StatusCode::OK,
        Phase::Starting | Phase::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
    };
    (code, format!("{}\n", phase.as_str()))
}

/// Binds `addr` and serves the endpoints until `shutdown` completes. Returns the bound
/// address (useful with port 0) and the server task.
///
/// Errors: the address cannot be bound.
pub async fn serve(
    addr: SocketAddr,
    registry: Arc<Registry>,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(HttpState { registry, health });
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });
    Ok((bound, task))
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;
    use crate::metrics::Metrics;

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let code = out[9..12].parse().unwrap();
        let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
        (code, body)
    }

    #[tokio::test]
    async fn endpoints_follow_the_phase() {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        metrics.reconciles.inc();
        let health = Arc::new(Health::default());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (addr, task) = serve("127.0.0.1:0".parse().unwrap(), Arc::new(registry), health.clone(), async {
            let _ = rx.await;
        })
        .await
        .unwrap();

        assert_eq!(get(addr, "/readyz").await, (503, "starting\n".into()));
        assert_eq!(get(addr, "/healthz").await, (200, "starting\n".into()));
        health.set(Phase::Standby);
        assert_eq!(get(addr, "/readyz").await, (200, "standby\n".into()));
        health.set(Phase::Leader);
        assert_eq!(get(addr, "/readyz").await, (200, "leader\n".into()));
        let (code, body) = get(addr, "/metrics").await;
        assert_eq!(code, 200);
        assert!(body.contains("openmatch_gossip_operator_reconciles_total 1"), "{body}");
        health.set(Phase::ShuttingDown);
        assert_eq!(get(addr, "/readyz").await.0, 503);
        assert_eq!(get(addr, "/nope").await.0, 404);

        tx.send(()).unwrap();
        task.await.unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "server still listening after shutdown");
    }
}
