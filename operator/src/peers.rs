//! Live bootstrap peers: which selected pods can be dialled, and at which multiaddr.
//!
//! A selected pod becomes a bootstrap peer when it is **ready** (condition `Ready=True`,
//! phase `Running`, not being deleted), has a **pod IP**, and its sidecar's libp2p **peer
//! id** is known: from the annotation `gossip.openmatch.io/peer-id` when the pod carries
//! one (pods whose sidecar is not injected can set it by hand), else learned from the
//! sidecar itself ([`crate::peer_ids`], zero-touch). Its address is
//! `/ip4/<podIP>/tcp/<p2pPort>/p2p/<peer id>` (`/ip6/...` for an IPv6 pod IP).
//!
//! Why the peer id: the sidecar only accepts bootstrap addresses ending in `/p2p/<peer id>`,
//! because that id is what the Noise handshake authenticates, and the bootstrap peers are
//! the members whose majority is the quorum. Ready pods whose id is not known (a bad
//! annotation, a sidecar that did not answer) are reported (condition `Degraded`, reason
//! `PeerIdMissing`) and left out of the list; they can still reach the network through
//! the others.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt as _;
use std::collections::HashMap;

use openmatch_gossip_crds::gossip_network::{PEER_ID_ANNOTATION, check_bootstrap_addr};

use crate::peer_ids::Learned;

/// The selected pods, sorted into usable bootstrap peers and the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerSet {
    /// Bootstrap multiaddrs of the ready pods with a valid peer id, ordered by pod name
    /// (so the rendered configuration, and its hash, do not depend on list order).
    pub addrs: Vec<String>,
    /// Names of selected pods that are not ready (or have no IP yet), sorted.
    pub not_ready: Vec<String>,
    /// Ready pods left out because their peer id is not known (annotation invalid, sidecar
    /// not asked or no valid answer), as `(pod name, reason)`, sorted by name.
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
/// `learned`: what [`crate::peer_ids::PeerIds::learn`] found for the pod, used when it has
/// no annotation.
pub fn bootstrap_addr(pod: &Pod, p2p_port: u16, learned: Option<&Learned>) -> Result<Option<String>, String> {
    if !is_ready(pod) {
        return Ok(None);
    }
    let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()) else { return Ok(None) };
    let ip: IpAddr = ip.parse().map_err(|_| format!("pod IP {ip:?} is not an IP address"))?;
    let proto = if ip.is_ipv4() { "ip4" } else { "ip6" };
    let addr = |peer_id: &str| format!("/{proto}/{ip}/tcp/{p2p_port}/p2p/{}", peer_id.trim());
    if let Some(peer_id) = pod.annotations().get(PEER_ID_ANNOTATION) {
        let addr = addr(peer_id);
        check_bootstrap_addr(&addr).map_err(|e| format!("bad {PEER_ID_ANNOTATION} annotation: {e}"))?;
        return Ok(Some(addr));
    }
    match learned {
        Some(Ok(peer_id)) => Ok(Some(addr(peer_id))),
        Some(Err(why)) => Err(why.clone()),
        None => Err(format!("no {PEER_ID_ANNOTATION} annotation, and its sidecar was not asked")),
    }
}

/// Sorts `pods` (already selected by the network's pod selector) into a [`PeerSet`];
/// `learned` holds the peer ids learned from the sidecars, by pod name.
pub fn collect(pods: &[Pod], p2p_port: u16, learned: &HashMap<String, Learned>) -> PeerSet {
    let mut pods: Vec<&Pod> = pods.iter().collect();
    pods.sort_by_key(|p| p.name_any());
    let mut set = PeerSet::default();
    for pod in pods {
        match bootstrap_addr(pod, p2p_port, learned.get(&pod.name_any())) {
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
        assert_eq!(
            bootstrap_addr(&p, 4001, None).unwrap().unwrap(),
            format!("/ip4/10.1.0.5/tcp/4001/p2p/{}", PEER_IDS[0])
        );
        let p6 = pod("engine-1", Some("fd00::5"), true, Some(PEER_IDS[1]));
        assert_eq!(
            bootstrap_addr(&p6, 4101, None).unwrap().unwrap(),
            format!("/ip6/fd00::5/tcp/4101/p2p/{}", PEER_IDS[1])
        );
    }

    #[test]
    fn unready_terminating_or_ipless_pods_are_not_peers() {
        assert_eq!(bootstrap_addr(&pod("a", Some("10.1.0.5"), false, Some(PEER_IDS[0])), 4001, None), Ok(None));
        assert_eq!(bootstrap_addr(&pod("a", None, true, Some(PEER_IDS[0])), 4001, None), Ok(None));
        let mut terminating = pod("a", Some("10.1.0.5"), true, Some(PEER_IDS[0]));
        terminating.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        assert_eq!(bootstrap_addr(&terminating, 4001, None), Ok(None));
        let mut pending = pod("a", Some("10.1.0.5"), true, Some(PEER_IDS[0]));
        pending.status.as_mut().unwrap().phase = Some("Pending".into());
        assert_eq!(bootstrap_addr(&pending, 4001, None), Ok(None));
    }

    #[test]
    fn missing_or_bad_peer_id_is_reported() {
        let err = bootstrap_addr(&pod("a", Some("10.1.0.5"), true, None), 4001, None).unwrap_err();
        assert!(err.contains(PEER_ID_ANNOTATION) && err.contains("not asked"), "{err}");
        let err = bootstrap_addr(&pod("a", Some("10.1.0.5"), true, Some("not-a-peer-id")), 4001, None).unwrap_err();
        assert!(err.contains("bad"), "{err}");
        let asked: Learned = Err("its sidecar did not answer".into());
        let err = bootstrap_addr(&pod("a", Some("10.1.0.5"), true, None), 4001, Some(&asked)).unwrap_err();
        assert_eq!(err, "its sidecar did not answer");
    }

    #[test]
    fn a_learned_peer_id_makes_a_peer_and_an_annotation_wins() {
        let learned: Learned = Ok(PEER_IDS[1].into());
        let p = pod("a", Some("10.1.0.5"), true, None);
        let want = format!("/ip4/10.1.0.5/tcp/4001/p2p/{}", PEER_IDS[1]);
        assert_eq!(bootstrap_addr(&p, 4001, Some(&learned)), Ok(Some(want)));
        let annotated = pod("a", Some("10.1.0.5"), true, Some(PEER_IDS[0]));
        let want = format!("/ip4/10.1.0.5/tcp/4001/p2p/{}", PEER_IDS[0]);
        assert_eq!(bootstrap_addr(&annotated, 4001, Some(&learned)), Ok(Some(want)));
    }

    #[test]
    fn collect_sorts_by_pod_name() {
        let pods = vec![
            pod("engine-2", Some("10.1.0.7"), true, Some(PEER_IDS[2])),
            pod("engine-0", Some("10.1.0.5"), true, Some(PEER_IDS[0])),
            pod("engine-3", Some("10.1.0.8"), false, Some(PEER_IDS[1])),
            pod("engine-1", Some("10.1.0.6"), true, None),
        ];
        let set = collect(&pods, 4001, &HashMap::new());
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
