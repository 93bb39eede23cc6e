//! Zero-touch peer discovery: learning a ready pod's libp2p peer id from its sidecar.
//!
//! A sidecar's identity key is made in the pod (on its identity volume) and never leaves
//! it; its peer id is public. The sidecar's HTTP server answers it at
//! [`PEER_ID_PATH`] (`GET /peer-id` → `<base58 peer id>\n`). For each selected pod that is
//! ready, has a pod IP and carries no `gossip.openmatch.io/peer-id` annotation (an
//! annotation, when present, is used as given), the operator asks the pod's
//! `openmatch-gossip` container (native sidecar or plain container) on its port named
//! `metrics`, and checks that the answer is a peer id.
//!
//! Answers are cached per pod (uid, IP and port; [`CACHE_CAPACITY`] pods, least recently
//! used first out): the key lives on the pod's identity volume, so the id is stable for
//! the pod's life, and a reconcile asks only about pods it has not seen. A failed ask is
//! not cached: the next reconcile asks again.
//!
//! Trust: the answer is plain HTTP from the pod IP, so whoever can answer for that IP
//! inside the cluster network (the pod itself, or someone able to spoof pod IPs: node
//! root, the CNI) names the id the other sidecars will dial there. README "Peer discovery"
//! gives the whole argument.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::Duration;

use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt as _;
use lru::LruCache;
use openmatch_gossip_crds::gossip_network::{PEER_ID_ANNOTATION, check_peer_id};
use openmatch_gossip_crds::runtime::PEER_ID_PATH;

use crate::inject::SIDECAR_NAME;
use crate::peers::is_ready;

/// Pods whose peer ids are remembered.
pub const CACHE_CAPACITY: usize = 10_000;
/// How long one ask may take (connect, request, answer) before the pod is reported
/// without a peer id for this reconcile. Default of [`PeerIds::new`].
pub const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest answer read, bytes (a peer id is 52 characters).
const MAX_ANSWER_BYTES: usize = 1024;

/// What was learned about one pod: its peer id, or why there is none.
pub type Learned = Result<String, String>;

/// The peer-id cache and the asks (one per operator, shared by every reconcile).
pub struct PeerIds {
    timeout: Duration,
    /// pod uid → (pod IP, port asked, peer id).
    cache: Mutex<LruCache<String, (IpAddr, u16, String)>>,
}

impl Default for PeerIds {
    fn default() -> Self {
        Self::new(ASK_TIMEOUT)
    }
}

impl PeerIds {
    /// A cache whose asks time out after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        let capacity = NonZeroUsize::new(CACHE_CAPACITY).expect("CACHE_CAPACITY is not zero");
        Self { timeout, cache: Mutex::new(LruCache::new(capacity)) }
    }

    /// The peer id of each ready, annotation-less pod with an IP, by pod name, asked of the
    /// sidecars concurrently (cached answers are not asked again). Pods that are not
    /// ready, have no IP yet or carry the annotation are not in the map.
    pub async fn learn(&self, pods: &[Pod]) -> HashMap<String, Learned> {
        let asks = pods.iter().filter_map(|pod| {
            if !is_ready(pod) || pod.annotations().contains_key(PEER_ID_ANNOTATION) {
                return None;
            }
            let ip: IpAddr = pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()?;
            Some(async move { (pod.name_any(), self.learn_one(pod, ip).await) })
        });
        futures::future::join_all(asks).await.into_iter().collect()
    }

    async fn learn_one(&self, pod: &Pod, ip: IpAddr) -> Learned {
        let Some(port) = sidecar_http_port(pod) else {
            return Err(format!(
                "no {PEER_ID_ANNOTATION} annotation and no {SIDECAR_NAME} container with a port named metrics to ask"
            ));
        };
        let uid = pod.uid().unwrap_or_default();
        if let Some((cached_ip, cached_port, id)) = self.cache.lock().expect("peer-id cache lock").get(&uid)
            && (*cached_ip, *cached_port) == (ip, port)
        {
            return Ok(id.clone());
        }
        let addr = SocketAddr::new(ip, port);
        let id = match tokio::time::timeout(self.timeout, ask(addr)).await {
            Ok(Ok(id)) => id,
            Ok(Err(e)) => return Err(format!("asking its sidecar at http://{addr}{PEER_ID_PATH}: {e}")),
            Err(_) => {
                return Err(format!(
                    "its sidecar at http://{addr}{PEER_ID_PATH} did not answer within {:?}",
                    self.timeout
                ));
            }
        };
        tracing::debug!(pod = %pod.name_any(), %addr, peer_id = %id, "learned a peer id");
        self.cache.lock().expect("peer-id cache lock").put(uid, (ip, port, id.clone()));
        Ok(id)
    }
}

/// The port named `metrics` of the pod's `openmatch-gossip` container (an init container
/// when injected as a native sidecar, or a regular container).
fn sidecar_http_port(pod: &Pod) -> Option<u16> {
    let spec = pod.spec.as_ref()?;
    let containers = spec.init_containers.iter().flatten().chain(&spec.containers);
    let sidecar = containers.into_iter().find(|c| c.name == SIDECAR_NAME)?;
    let port = sidecar.ports.iter().flatten().find(|p| p.name.as_deref() == Some("metrics"))?;
    u16::try_from(port.container_port).ok()
}

/// `GET /peer-id` of the sidecar at `addr` (HTTP/1.1); the answer must be 200 with a peer
/// id.
async fn ask(addr: SocketAddr) -> Result<String, String> {
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    let conn = tokio::spawn(conn);
    let request = hyper::Request::get(PEER_ID_PATH)
        .header(hyper::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
    let status = response.status();
    let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER_BYTES)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    conn.abort();
    let text = String::from_utf8_lossy(&body).trim().to_owned();
    if !status.is_success() {
        return Err(format!("HTTP {status}: {text}"));
    }
    check_peer_id(&text).map_err(|e| format!("answered {e}"))?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use k8s_openapi::api::core::v1::{Container, ContainerPort, PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use openmatch_gossip_crds::runtime::{Probe, Probes, serve_http};
    use prometheus_client::registry::Registry;

    use super::*;

    const ID: &str = "12D3KooWK99VoVxNE7XzyBwXEzW7xhK7Gpv85r9F3V3fyKSUKPH5";

    struct Up;
    impl Probes for Up {
        fn liveness(&self) -> Probe {
            Probe { ok: true, body: "healthy".into() }
        }
        fn readiness(&self) -> Probe {
            Probe { ok: true, body: "ok".into() }
        }
    }

    /// The sidecar's HTTP server (the same code as in the sidecar) on a free loopback port,
    /// answering `peer_id`.
    async fn sidecar_http(peer_id: Option<&str>) -> u16 {
        let (addr, _task) = serve_http(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(Registry::default()),
            Arc::new(Up),
            peer_id.map(Into::into),
            std::future::pending(),
        )
        .await
        .unwrap();
        addr.port()
    }

    /// A ready pod at 127.0.0.1 with an injected sidecar whose `metrics` port is `port`.
    fn pod(name: &str, uid: &str, port: u16, annotation: Option<&str>) -> Pod {
        let sidecar = Container {
            name: SIDECAR_NAME.into(),
            restart_policy: Some("Always".into()),
            ports: Some(vec![
                ContainerPort { name: Some("p2p".into()), container_port: 4001, ..Default::default() },
                ContainerPort { name: Some("metrics".into()), container_port: i32::from(port), ..Default::default() },
            ]),
            ..Default::default()
        };
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                uid: Some(uid.into()),
                annotations: annotation.map(|id| BTreeMap::from([(PEER_ID_ANNOTATION.to_owned(), id.to_owned())])),
                ..Default::default()
            },
            spec: Some(PodSpec {
                init_containers: Some(vec![sidecar]),
                containers: vec![Container { name: "engine".into(), ..Default::default() }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                pod_ip: Some("127.0.0.1".into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    #[tokio::test]
    async fn learns_the_peer_id_from_the_sidecar_and_caches_it() {
        let port = sidecar_http(Some(ID)).await;
        let ids = PeerIds::default();
        let learned = ids.learn(&[pod("engine-0", "uid-0", port, None)]).await;
        assert_eq!(learned, HashMap::from([("engine-0".to_owned(), Ok(ID.to_owned()))]));
        assert_eq!(ids.cache.lock().unwrap().len(), 1);
        // Cached: a pod with the same uid, IP and port is not asked again (the port
        // below would refuse the connection).
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        ids.cache.lock().unwrap().put("uid-1".into(), ("127.0.0.1".parse().unwrap(), closed, ID.into()));
        let learned = ids.learn(&[pod("engine-1", "uid-1", closed, None)]).await;
        assert_eq!(learned["engine-1"], Ok(ID.to_owned()));
        // A new port for the same uid is asked again, and the refusal reported.
        let learned = ids.learn(&[pod("engine-0", "uid-0", closed, None)]).await;
        let err = learned["engine-0"].as_ref().unwrap_err();
        assert!(err.contains(&format!("127.0.0.1:{closed}{PEER_ID_PATH}")), "{err}");
    }

    #[tokio::test]
    async fn annotated_unready_and_sidecarless_pods() {
        let port = sidecar_http(Some(ID)).await;
        let ids = PeerIds::default();
        let annotated = pod("annotated", "a", port, Some(ID));
        let mut unready = pod("unready", "b", port, None);
        unready.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].status = "False".into();
        let mut bare = pod("bare", "c", port, None);
        bare.spec.as_mut().unwrap().init_containers = None;
        let learned = ids.learn(&[annotated, unready, bare]).await;
        assert_eq!(learned.len(), 1, "only the ready pod without an annotation is asked: {learned:?}");
        let err = learned["bare"].as_ref().unwrap_err();
        assert!(err.contains(PEER_ID_ANNOTATION) && err.contains(SIDECAR_NAME), "{err}");
    }

    #[tokio::test]
    async fn a_server_without_a_peer_id_or_with_garbage_is_refused() {
        let ids = PeerIds::default();
        let port = sidecar_http(None).await;
        let err = ids.learn(&[pod("engine-0", "u", port, None)]).await.remove("engine-0").unwrap().unwrap_err();
        assert!(err.contains("404"), "{err}");
        let port = sidecar_http(Some("not-a-peer-id")).await;
        let err = ids.learn(&[pod("engine-0", "u", port, None)]).await.remove("engine-0").unwrap().unwrap_err();
        assert!(err.contains("\"not-a-peer-id\" is not a peer id"), "{err}");
        assert_eq!(ids.cache.lock().unwrap().len(), 0, "failures are not cached");
    }

    #[tokio::test]
    async fn a_silent_sidecar_times_out() {
        // Accepts the connection, never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let _hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let ids = PeerIds::new(Duration::from_millis(200));
        let err = ids.learn(&[pod("engine-0", "u", port, None)]).await.remove("engine-0").unwrap().unwrap_err();
        assert!(err.contains("did not answer within 200ms"), "{err}");
    }
}
