//! The mutating admission webhook's HTTPS server: `POST /mutate-pods` takes an
//! `admission.k8s.io/v1` `AdmissionReview` of a pod and answers it with [`crate::inject`]'s
//! decision (allowed, allowed with a JSON patch, or denied with a message).
//!
//! TLS 1.2/1.3 (rustls, ring) with the serving certificate of [`crate::webhook_cert`]; the
//! configuration is swappable while serving ([`TlsConfig`]) so a renewed certificate takes
//! effect for new connections without a restart. HTTP/1.1 only, as the API server calls
//! webhooks. A body that is not an AdmissionReview of a pod gets HTTP 400 with the reason;
//! a body above [`MAX_BODY_BYTES`] HTTP 413. Every answer is counted by the caller's
//! `on_decision` hook (metrics, Events).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionReview};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::inject::{Decision, NetworkRef, SidecarTemplate};

/// The path the MutatingWebhookConfiguration calls.
pub const PATH: &str = "/mutate-pods";
/// Largest request body accepted, bytes (a pod spec is far smaller; the API server's own
/// request limit is 3 MiB).
pub const MAX_BODY_BYTES: usize = 3 << 20;

/// The TLS configuration in use; replace it to serve a renewed certificate.
pub type TlsConfig = Arc<RwLock<Arc<rustls::ServerConfig>>>;

/// Looks a GossipNetwork up by (namespace, name).
pub type NetworkLookup = Arc<dyn Fn(&str, &str) -> Option<NetworkRef> + Send + Sync>;

/// Told every decision with the request it answered (for metrics and Events).
pub type OnDecision = Arc<dyn Fn(&AdmissionRequest<Pod>, &Decision) + Send + Sync>;

/// What the handler needs.
#[derive(Clone)]
pub struct Webhook {
    /// The sidecar to inject.
    pub template: Arc<SidecarTemplate>,
    /// GossipNetworks known to the operator.
    pub networks: NetworkLookup,
    /// Metrics and Events hook.
    pub on_decision: OnDecision,
}

impl Webhook {
    /// Answers one AdmissionReview body: `Ok(response JSON)`, or `Err(reason)` for a body
    /// that is not an AdmissionReview of a pod (HTTP 400).
    pub fn answer(&self, body: &[u8]) -> Result<Vec<u8>, String> {
        let review: AdmissionReview<Pod> =
            serde_json::from_slice(body).map_err(|e| format!("not an AdmissionReview of a pod: {e}"))?;
        let req: AdmissionRequest<Pod> = review.try_into().map_err(|_| "an AdmissionReview without a request")?;
        let namespace = req.namespace.clone().unwrap_or_default();
        let networks = self.networks.clone();
        let (response, decision) = crate::inject::review(&req, |name| networks(&namespace, name), &self.template);
        (self.on_decision)(&req, &decision);
        Ok(serde_json::to_vec(&response.into_review()).expect("an AdmissionReview serializes"))
    }
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

/// One HTTP request.
async fn route(webhook: Webhook, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() != PATH {
        return Ok(reply(StatusCode::NOT_FOUND, format!("only POST {PATH} is served here\n")));
    }
    if req.method() != Method::POST {
        return Ok(reply(StatusCode::METHOD_NOT_ALLOWED, format!("POST {PATH}\n")));
    }
    let body = match Limited::new(req.into_body(), MAX_BODY_BYTES).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Ok(reply(StatusCode::PAYLOAD_TOO_LARGE, format!("request body: {e}\n"))),
    };
    Ok(match webhook.answer(&body) {
        Ok(json) => {
            let mut r = reply(StatusCode::OK, json);
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, "application/json".parse().expect("valid"));
            r
        }
        Err(reason) => {
            tracing::warn!(reason, "bad admission request");
            reply(StatusCode::BAD_REQUEST, format!("{reason}\n"))
        }
    })
}

/// Binds `addr` for [`serve`].
///
/// Errors: the address cannot be bound.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("binding the webhook address {addr}"))
}

/// Serves the webhook over TLS on `listener` until `stop` is cancelled. A failed handshake
/// or connection is logged and affects no other.
pub async fn serve(listener: TcpListener, tls: TlsConfig, webhook: Webhook, stop: CancellationToken) {
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook accept failed");
                    continue;
                }
            },
        };
        let config = tls.read().expect("TLS config lock").clone();
        let webhook = webhook.clone();
        tokio::spawn(async move {
            let stream = match tokio_rustls::TlsAcceptor::from(config).accept(tcp).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "webhook TLS handshake failed");
                    return;
                }
            };
            let service = hyper::service::service_fn(move |req| route(webhook.clone(), req));
            if let Err(e) =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await
            {
                tracing::debug!(%peer, error = %e, "webhook connection ended with an error");
            }
        });
    }
}

/// Everything the webhook needs to run (from `run`'s flags).
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Where to listen.
    pub addr: SocketAddr,
    /// The serving certificate's Secret and who manages it.
    pub cert: crate::webhook_cert::CertSource,
    /// The sidecar to inject.
    pub template: SidecarTemplate,
    /// Watch GossipNetworks in this namespace only (`None`: all).
    pub namespace: Option<String>,
}

/// The owner of a pod being created (its controller: a ReplicaSet, StatefulSet, Job…),
/// where a refusal's Event goes (the pod itself does not exist).
fn owner_of(req: &AdmissionRequest<Pod>) -> Option<k8s_openapi::api::core::v1::ObjectReference> {
    let pod = req.object.as_ref()?;
    let owner = pod.metadata.owner_references.iter().flatten().find(|o| o.controller == Some(true))?;
    Some(k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some(owner.api_version.clone()),
        kind: Some(owner.kind.clone()),
        name: Some(owner.name.clone()),
        namespace: req.namespace.clone(),
        uid: Some(owner.uid.clone()),
        ..Default::default()
    })
}

/// Runs the webhook until `stop`: watches GossipNetworks, loads (or provisions) the
/// serving certificate, retrying every 5 s until it has one, then serves and keeps the
/// certificate current. Counts every answer in `metrics` and publishes a Warning Event
/// (`InjectionRefused`) on the owner of each refused pod.
///
/// Errors: the address cannot be bound.
pub async fn run(
    client: kube::Client,
    settings: WebhookSettings,
    metrics: Arc<crate::metrics::Metrics>,
    recorder: kube::runtime::events::Recorder,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    use futures::StreamExt as _;
    use kube::runtime::reflector::{self, ObjectRef};
    use kube::runtime::{WatchStreamExt as _, watcher};
    use openmatch_gossip_crds::gossip_network::GossipNetwork;

    use crate::metrics::{InjectionLabel, InjectionResult};

    let listener = bind(settings.addr).await?;
    let api: kube::Api<GossipNetwork> = match &settings.namespace {
        Some(ns) => kube::Api::namespaced(client.clone(), ns),
        None => kube::Api::all(client.clone()),
    };
    let (store, writer) = reflector::store();
    let watch = reflector::reflector(writer, watcher(api, watcher::Config::default())).applied_objects();
    let watch_stop = stop.clone();
    tokio::spawn(async move {
        let mut watch = std::pin::pin!(watch);
        loop {
            tokio::select! {
                _ = watch_stop.cancelled() => return,
                next = watch.next() => match next {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => tracing::warn!(error = %e, "webhook: GossipNetwork watch error; retrying"),
                    None => return,
                },
            }
        }
    });
    let networks: NetworkLookup = Arc::new(move |ns, name| {
        store
            .get(&ObjectRef::new(name).within(ns))
            .map(|gn| NetworkRef { config_map: gn.config_map_name(), p2p_port: gn.spec.p2p_port })
    });
    let on_decision: OnDecision = Arc::new(move |req, decision| {
        let result = match decision {
            Decision::Inject(_) => InjectionResult::Injected,
            Decision::Skip(_) => InjectionResult::Skipped,
            Decision::Refuse(_) => InjectionResult::Refused,
        };
        metrics.injections.get_or_create(&InjectionLabel { result }).inc();
        let pod = req.object.as_ref().and_then(|p| p.metadata.name.clone().or(p.metadata.generate_name.clone()));
        match decision {
            Decision::Inject(_) => tracing::info!(namespace = ?req.namespace, pod = ?pod, "sidecar injected"),
            Decision::Skip(why) => tracing::debug!(namespace = ?req.namespace, pod = ?pod, why, "pod left alone"),
            Decision::Refuse(message) => {
                tracing::warn!(namespace = ?req.namespace, pod = ?pod, message, "pod refused");
                // No Event for a dry run (the webhook configuration promises
                // sideEffects: NoneOnDryRun).
                if let Some(owner) = owner_of(req).filter(|_| !req.dry_run) {
                    let recorder = recorder.clone();
                    let event = kube::runtime::events::Event {
                        type_: kube::runtime::events::EventType::Warning,
                        reason: "InjectionRefused".into(),
                        note: Some(message.chars().take(1000).collect()),
                        action: "Inject".into(),
                        secondary: None,
                    };
                    tokio::spawn(async move {
                        if let Err(e) = recorder.publish(&event, &owner).await {
                            tracing::warn!(error = %e, "could not publish the InjectionRefused Event");
                        }
                    });
                }
            }
        }
    });
    let webhook = Webhook { template: Arc::new(settings.template), networks, on_decision };

    // The first certificate: nothing is served without one.
    let empty = crate::webhook_cert::Pem { cert: String::new(), key: String::new(), ca: None };
    let placeholder = Arc::new(RwLock::new(Arc::new(empty_config())));
    let pem = loop {
        match crate::webhook_cert::refresh(&client, &settings.cert, &placeholder, &empty).await {
            Ok(pem) => break pem,
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "webhook: no serving certificate yet; retrying in 5 s"),
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
        }
    };
    tracing::info!(addr = %settings.addr, path = PATH, "serving the sidecar-injection webhook");
    tokio::spawn(crate::webhook_cert::keep_current(client, settings.cert, placeholder.clone(), pem, stop.clone()));
    serve(listener, placeholder, webhook, stop).await;
    Ok(())
}

/// A server configuration with no certificate, replaced before anything is served.
fn empty_config() -> rustls::ServerConfig {
    #[derive(Debug)]
    struct NoCert;
    impl rustls::server::ResolvesServerCert for NoCert {
        fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
            None
        }
    }
    rustls::ServerConfig::builder_with_provider(rustls::crypto::ring::default_provider().into())
        .with_safe_default_protocol_versions()
        .expect("default TLS versions")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(NoCert))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;
    use crate::webhook_cert;

    fn webhook(decisions: Arc<Mutex<Vec<String>>>) -> Webhook {
        Webhook {
            template: Arc::new(SidecarTemplate {
                image: "openmatch-gossip:0.1.0".into(),
                image_pull_policy: None,
                resources: Default::default(),
                metrics_port: 9090,
                version: "0.1.0".into(),
            }),
            networks: Arc::new(|ns, name| {
                (ns == "trading" && name == "prod")
                    .then(|| NetworkRef { config_map: "prod-gossip-config".into(), p2p_port: 4001 })
            }),
            on_decision: Arc::new(move |_, d| decisions.lock().unwrap().push(format!("{d:?}"))),
        }
    }

    fn review(network: &str) -> String {
        serde_json::json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u-1",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "trading",
                "operation": "CREATE",
                "userInfo": {"username": "alice"},
                "object": {
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": "engine-0", "namespace": "trading",
                                 "labels": {"gossip.openmatch.io/network": network}},
                    "spec": {"containers": [{"name": "engine", "image": "engine:1"}]}
                }
            }
        })
        .to_string()
    }

    /// POSTs `body` to `path` over TLS, trusting `ca_pem`; returns the status line and the body.
    async fn post(addr: SocketAddr, ca_pem: &str, path: &str, body: &str) -> (String, String) {
        use rustls::pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(rustls::crypto::ring::default_provider().into())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("omg-webhook.gossip-system.svc").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.unwrap();
        let req = format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        tls.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        tls.read_to_string(&mut out).await.unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        (head.lines().next().unwrap().to_owned(), body.to_owned())
    }

    #[tokio::test]
    async fn serves_admission_reviews_over_tls() {
        let names = webhook_cert::dns_names("omg-webhook", "gossip-system");
        let cert = webhook_cert::generate(&names, time::OffsetDateTime::now_utc()).unwrap();
        let tls: TlsConfig =
            Arc::new(RwLock::new(Arc::new(webhook_cert::server_config(&cert.cert_pem, &cert.key_pem).unwrap())));
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let decisions = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(listener, tls, webhook(decisions.clone()), stop.clone()));

        let (status, body) = post(addr, &cert.ca_pem, PATH, &review("prod")).await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["kind"], "AdmissionReview");
        assert_eq!(v["response"]["uid"], "u-1");
        assert_eq!(v["response"]["allowed"], true);
        assert_eq!(v["response"]["patchType"], "JSONPatch");

        let (_, body) = post(addr, &cert.ca_pem, PATH, &review("staging")).await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["response"]["allowed"], false);
        assert!(v["response"]["status"]["message"].as_str().unwrap().contains("does not exist"), "{v}");

        let (status, body) = post(addr, &cert.ca_pem, PATH, "{\"kind\": 3}").await;
        assert_eq!(status, "HTTP/1.1 400 Bad Request");
        assert!(body.contains("not an AdmissionReview"), "{body}");
        let (status, _) = post(addr, &cert.ca_pem, "/other", "{}").await;
        assert_eq!(status, "HTTP/1.1 404 Not Found");

        let seen = decisions.lock().unwrap().clone();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(seen[0].starts_with("Inject") && seen[1].starts_with("Refuse"), "{seen:?}");
        stop.cancel();
        server.await.unwrap();
    }
}
