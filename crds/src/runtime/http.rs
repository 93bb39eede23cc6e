//! The HTTP server of both binaries (axum): `/metrics` for Prometheus, `/healthz` and
//! `/readyz` for the kubelet's liveness and readiness probes.
//!
//! The routes, status codes, content types and shutdown are shared (the Helm chart's probes
//! and scrape configuration rely on them); what the probes answer is each binary's
//! business, through [`Probes`].
//!
//! - `/metrics`: 200, the registry in the format the `Accept` header prefers
//!   ([`super::exposition`]): OpenMetrics 1.0 text (`application/openmetrics-text;
//!   version=1.0.0; charset=utf-8`, what Prometheus asks for) or the Prometheus text format
//!   0.0.4 (`text/plain; version=0.0.4; charset=utf-8`, for any other client:
//!   `promtool check metrics`, `curl`); 500 with a plain-text message if a metric fails to
//!   encode;
//! - `/healthz`: [`Probes::liveness`]; `/readyz`: [`Probes::readiness`]: 200 when the
//!   [`Probe`] passes, else 503, with its body as one line of text;
//! - [`PEER_ID_PATH`] (`/peer-id`): 200 with the node's libp2p peer id (base58) and a
//!   newline, when the server was given one (the sidecar); the operator reads it to list
//!   the pod as a bootstrap peer (zero-touch peer discovery, README "Peer discovery");
//! - anything else: 404.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;

use super::exposition::{self, Format};

/// Where a sidecar's HTTP server answers its libp2p peer id.
pub const PEER_ID_PATH: &str = "/peer-id";

/// One probe's answer: pass or fail, and a line of text for whoever looks (`curl`, kubelet
/// events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// Whether the probe passes: HTTP 200 if so, else 503.
    pub ok: bool,
    /// The response body, one line, e.g. `leader` or `not ready`; the server ends it with a
    /// newline (adding one unless it already ends with one).
    pub body: String,
}

/// What `/healthz` and `/readyz` answer, implemented by each binary's health state. Called
/// on every probe request, so it should be cheap and never block for long.
pub trait Probes: Send + Sync + 'static {
    /// Liveness (`/healthz`): a failing answer makes the kubelet restart the container.
    fn liveness(&self) -> Probe;
    /// Readiness (`/readyz`): a failing answer takes the pod out of its Services' endpoints.
    fn readiness(&self) -> Probe;
}

/// What every handler sees.
#[derive(Clone)]
struct HttpState {
    registry: Arc<Registry>,
    probes: Arc<dyn Probes>,
    /// `<peer id>\n`, when the server has one to answer at [`PEER_ID_PATH`].
    peer_id: Option<Arc<str>>,
}

async fn metrics(State(s): State<HttpState>, headers: HeaderMap) -> Response {
    let mut body = String::new();
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    match prometheus_client::encoding::text::encode(&mut body, &s.registry) {
        Ok(()) => match exposition::negotiate(accept) {
            Format::OpenMetrics => ([(header::CONTENT_TYPE, exposition::OPENMETRICS)], body).into_response(),
            Format::PrometheusText => {
                let text = exposition::to_prometheus_text(&body);
                ([(header::CONTENT_TYPE, exposition::PROMETHEUS_TEXT)], text).into_response()
            }
        },
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            format!("encoding metrics failed: {e}"),
        )
            .into_response(),
    }
}

/// The response for `probe`: 200 or 503, its body ending with a newline.
fn answer(probe: Probe) -> (StatusCode, String) {
    let Probe { ok, mut body } = probe;
    if !body.ends_with('\n') {
        body.push('\n');
    }
    (if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, body)
}

async fn healthz(State(s): State<HttpState>) -> (StatusCode, String) {
    answer(s.probes.liveness())
}

async fn readyz(State(s): State<HttpState>) -> (StatusCode, String) {
    answer(s.probes.readiness())
}

async fn peer_id_answer(State(s): State<HttpState>) -> (StatusCode, String) {
    match s.peer_id {
        Some(id) => (StatusCode::OK, id.to_string()),
        None => (StatusCode::NOT_FOUND, "this server has no peer id\n".to_owned()),
    }
}

/// Binds `addr` and serves `/metrics` (from `registry`), `/healthz` and `/readyz` (from
/// `probes`) and, if `peer_id` is given, [`PEER_ID_PATH`], until `shutdown` completes; then stops accepting connections and lets the
/// open ones finish (graceful shutdown). Returns the bound address (useful with port 0)
/// and the server task, which ends after the shutdown; a server failure is logged (error
/// level), not returned.
///
/// Errors: `addr` cannot be bound.
pub async fn serve_http(
    addr: SocketAddr,
    registry: Arc<Registry>,
    probes: Arc<dyn Probes>,
    peer_id: Option<String>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route(PEER_ID_PATH, get(peer_id_answer))
        .with_state(HttpState { registry, probes, peer_id: peer_id.map(|id| format!("{}\n", id.trim()).into()) });
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });
    Ok((bound, task))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
    use prometheus_client::metrics::MetricType;
    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// Probes whose answers the test sets.
    #[derive(Default)]
    struct Fixed(Mutex<(Option<Probe>, Option<Probe>)>);

    impl Probes for Fixed {
        fn liveness(&self) -> Probe {
            self.0.lock().unwrap().0.clone().unwrap_or(Probe { ok: true, body: "alive".into() })
        }
        fn readiness(&self) -> Probe {
            self.0.lock().unwrap().1.clone().unwrap_or(Probe { ok: false, body: "not ready".into() })
        }
    }

    /// A metric that fails to encode.
    #[derive(Debug)]
    struct Broken;

    impl EncodeMetric for Broken {
        fn encode(&self, _: MetricEncoder) -> Result<(), std::fmt::Error> {
            Err(std::fmt::Error)
        }
        fn metric_type(&self) -> MetricType {
            MetricType::Gauge
        }
    }

    /// `GET path` over HTTP/1.1: status code, `Content-Type` (lower-cased header lookup)
    /// and body.
    async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
        get_with(addr, path, "").await
    }

    /// [`get`] with extra request header lines (`headers`, each ending with CRLF).
    async fn get_with(addr: SocketAddr, path: &str, headers: &str) -> (u16, String, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
        let code = head[9..12].parse().unwrap();
        let content_type = head
            .lines()
            .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-type")))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default();
        (code, content_type, body.to_owned())
    }

    #[tokio::test]
    async fn serves_metrics_and_probes_until_shutdown() {
        let mut registry = Registry::default();
        let counter = Counter::<u64>::default();
        registry.register("requests", "Requests", counter.clone());
        counter.inc();
        let probes = Arc::new(Fixed::default());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let id = "12D3KooWK99VoVxNE7XzyBwXEzW7xhK7Gpv85r9F3V3fyKSUKPH5";
        let (addr, task) =
            serve_http("127.0.0.1:0".parse().unwrap(), Arc::new(registry), probes.clone(), Some(id.into()), async {
                let _ = rx.await;
            })
            .await
            .unwrap();

        let accept = "Accept: application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3\r\n";
        let (code, content_type, body) = get_with(addr, "/metrics", accept).await;
        assert_eq!((code, content_type.as_str()), (200, exposition::OPENMETRICS));
        assert!(body.contains("# TYPE requests counter\nrequests_total 1\n") && body.ends_with("# EOF\n"), "{body}");
        let (code, content_type, body) = get(addr, "/metrics").await;
        assert_eq!((code, content_type.as_str()), (200, exposition::PROMETHEUS_TEXT));
        assert_eq!(body, "# HELP requests_total Requests.\n# TYPE requests_total counter\nrequests_total 1\n");

        let text = |(code, _, body): (u16, String, String)| (code, body);
        assert_eq!(text(get(addr, "/healthz").await), (200, "alive\n".into()));
        assert_eq!(text(get(addr, "/readyz").await), (503, "not ready\n".into()));
        // A body that already ends with a newline gets no second one.
        *probes.0.lock().unwrap() =
            (Some(Probe { ok: false, body: "stuck\n".into() }), Some(Probe { ok: true, body: "ok".into() }));
        assert_eq!(text(get(addr, "/healthz").await), (503, "stuck\n".into()));
        assert_eq!(text(get(addr, "/readyz").await), (200, "ok\n".into()));
        assert_eq!(get(addr, "/nope").await.0, 404);
        assert_eq!(text(get(addr, PEER_ID_PATH).await), (200, format!("{id}\n")));

        tx.send(()).unwrap();
        task.await.unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "server still listening after shutdown");
    }

    #[tokio::test]
    async fn metrics_that_fail_to_encode_answer_500() {
        let mut registry = Registry::default();
        registry.register("broken", "Fails to encode", Broken);
        let (addr, _task) = serve_http(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(registry),
            Arc::new(Fixed::default()),
            None,
            std::future::pending(),
        )
        .await
        .unwrap();
        let (code, content_type, body) = get(addr, "/metrics").await;
        assert_eq!((code, content_type.as_str()), (500, "text/plain"));
        assert!(body.starts_with("encoding metrics failed"), "{body}");
        assert_eq!(get(addr, PEER_ID_PATH).await.0, 404, "no peer id given, none answered");
    }
}
