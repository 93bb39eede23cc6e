//! Live bootstrap peers: which selected pods can be dialled, and at which multiaddr.
//!
//! A selected pod becomes a bootstrap peer when it is **ready** (condition `Ready=True`,
//! phase `Running`, not being deleted), has a **pod IP**, and carries its sidecar's libp2p
//! **peer id** in the annotation `gossip.openmatch.io/peer-id`. Its address is
//! `/ip4/<podIP>/tcp/<p2pPort>/p2p/<peer id>` (`/ip6/...` for an IPv6 pod IP).
//!
//! Why the peer id: the sidecar only accepts bootstrap addresses ending in `/p2p/<peer id>`,
//! because that id is what the Noise handshake authenticates. The operator cannot derive it
//! (the key lives in the pod), so whoever provisions the sidecar's identity key must put
//! the id on the pod, e.g. identity keys generated per StatefulSet ordinal and the ids
//! (`openmatch-gossip peer-id FILE`) written into the pod template's annotations. Ready pods
//! without a usable annotation are reported (condition `Degraded`, reason `PeerIdMissing`)
//! and left out of the list; they can still reach the network through the others.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt as _;
use openmatch_gossip_crds::gossip_network::{PEER_ID_ANNOTATION, check_bootstrap_addr};

/// The selected pods, sorted into usable bootstrap peers and the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerSet {
    /// Bootstrap multiaddrs of the ready pods with a valid peer id, ordered by pod name
    /// (so the rendered configuration, and its hash, do not depend on list order).
    pub addrs: Vec<String>,
    /// Names of selected pods that are not ready (or have no IP yet), sorted.
    pub not_ready: Vec<String>,
    /// Ready pods left out because their peer-id annotation is missing or invalid, as
    /// `(pod name, reason)`, sorted by name.
    pub without_peer_id: Vec<(String, String)>,
}

impl PeerSet {
    /// Selected pods in total.
    pub fn selected(&self) -> usize {
        self.addrs.len() + self.not_ready.len() + self.without_peer_id.len()
    }
}

/// Whether `pod` is ready to be dialled: `Running`, `Ready=True`, not terminating.
pub fn is_ready(pod: &Pod) -> bool {
    if pod.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let Some(status) = &pod.status else { return false };
    status.phase.as_deref() == Some("Running")
        && status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True")
}

/// The pod's bootstrap multiaddr, or why it has none. `Ok(None)`: not ready or no IP.
pub fn bootstrap_addr(pod: &Pod, p2p_port: u16) -> Result<Option<String>, String> {
    if !is_ready(pod) {
        return Ok(None);
    }
    let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()) else { return Ok(None) };
    let ip: IpAddr = ip.parse().map_err(|_| format!("pod IP {ip:?} is not an IP address"))?;
    let Some(peer_id) = pod.annotations().get(PEER_ID_ANNOTATION) else {
        return Err(format!("no {PEER_ID_ANNOTATION} annotation"));
    };
    let proto = if ip.is_ipv4() { "ip4" } else { "ip6" };
    let addr = format!("/{proto}/{ip}/tcp/{p2p_port}/p2p/{}", peer_id.trim());
    check_bootstrap_addr(&addr).map_err(|e| format!("bad {PEER_ID_ANNOTATION} annotation: {e}"))?;
    Ok(Some(addr))
}

/// Sorts `pods` (already selected by the network's pod selector) into a [`PeerSet`].
pub fn collect(pods: &[Pod], p2p_port: u16) -> PeerSet {
    let mut pods: Vec<&Pod> = pods.iter().collect();
    pods.sort_by_key(|p| p.name_any());
    let mut set = PeerSet::default();
    for pod in pods {
        match bootstrap_addr(pod, p2p_port) {
            Ok(Some(addr)) => set.addrs.push(addr),
            Ok(None) => set.not_ready.push(pod.name_any()),
            Err(reason) => set.without_peer_id.push((pod.name_any(), reason)),
        }
    }
    set
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    use super::*;

    /// Real Ed25519 peer ids (base58 of the identity multihash).
    const PEER_IDS: [&str; 3] = [
        "12D3KooWK99VoVxNE7XzyBwXEzW7xhK7Gpv85r9F3V3fyKSUKPH5",
        "12D3KooWJWoaqZhDaoEFshF7Rh1bpY9ohihFhzcW6d69Lr2NASuq",
        "12D3KooWRndVhVZPCiQwHBBBdg769GyrPUW13zxwqQyf9r3ANaba",
    ];

    /// A pod in namespace `trading` labelled `app=engine`, optionally ready, with an IP
    /// and a peer-id annotation.
    fn pod(name: &str, ip: Option<&str>, ready: bool, peer_id: Option<&str>) -> Pod {
        let annotations = peer_id.map(|id| BTreeMap::from([(PEER_ID_ANNOTATION.to_owned(), id.to_owned())]));
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("trading".into()),
                labels: Some(BTreeMap::from([("app".to_owned(), "engine".to_owned())])),
                annotations,
                ..Default::default()
            },
            spec: None,
            status: Some(PodStatus {
                phase: Some("Running".into()),
                pod_ip: ip.map(Into::into),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn ready_pod_with_peer_id_is_a_peer() {
        let p = pod("engine-0", Some("10.1.0.5"), true, Some(PEER_IDS[0]));
        assert_eq!(bootstrap_addr(&p, 4001).unwrap().unwrap(), format!("/ip4/10.1.0.5/tcp/4001/p2p/{}", PEER_IDS[0]));
        let p6 = pod("engine-1", Some("fd00::5"), true, Some(PEER_IDS[1]));
        assert_eq!(bootstrap_addr(&p6, 4101).unwrap().unwrap(), format!("/ip6/fd00::5/tcp/4101/p2p/{}", PEER_IDS[1]));
    }

    #[test]
    fn unready_terminating_or_ipless_pods_are_not_peers() {
        assert_eq!(bootstrap_addr(&pod("a", Some("10.1.0.5"), false, Some(PEER_IDS[0])), 4001), Ok(None));
        assert_eq!(bootstrap_addr(&pod("a", None, true, Some(PEER_IDS[0])), 4001), Ok(None));
        let mut terminating = pod("a", Some("10.1.0.5"), true, Some(PEER_IDS[0]));
        terminating.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        assert_eq!(bootstrap_addr(&terminating, 4001), Ok(None));
        let mut pending = pod("a", Some("10.1.0.5"), true, Some(PEER_IDS[0]));
        pending.status.as_mut().unwrap().phase = Some("Pending".into());
        assert_eq!(bootstrap_addr(&pending, 4001), Ok(None));
    }

    #[test]
    fn missing_or_bad_peer_id_is_reported() {
        let err = bootstrap_addr(&pod("a", Some("10.1.0.5"), true, None), 4001).unwrap_err();
        assert!(err.contains(PEER_ID_ANNOTATION), "{err}");
        let err = bootstrap_addr(&pod("a", Some("10.1.0.5"), true, Some("not-a-peer-id")), 4001).unwrap_err();
        assert!(err.contains("bad"), "{err}");
    }

    #[test]
    fn collect_sorts_by_pod_name() {
        let pods = vec![
            pod("engine-2", Some("10.1.0.7"), true, Some(PEER_IDS[2])),
            pod("engine-0", Some("10.1.0.5"), true, Some(PEER_IDS[0])),
            pod("engine-3", Some("10.1.0.8"), false, Some(PEER_IDS[1])),
            pod("engine-1", Some("10.1.0.6"), true, None),
        ];
        let set = collect(&pods, 4001);
        assert_eq!(
            set.addrs,
            vec![
                format!("/ip4/10.1.0.5/tcp/4001/p2p/{}", PEER_IDS[0]),
                format!("/ip4/10.1.0.7/tcp/4001/p2p/{}", PEER_IDS[2]),
            ]
        );
        assert_eq!(set.not_ready, vec!["engine-3"]);
        assert_eq!(set.without_peer_id.len(), 1);
        assert_eq!(set.without_peer_id[0].0, "engine-1");
        assert_eq!(set.selected(), 4);
    }
}
