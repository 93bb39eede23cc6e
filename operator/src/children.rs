//! The objects a GossipNetwork owns, built as server-side-apply bodies.
//!
//! - ConfigMap `<name>-gossip-config`: key `config.yaml` = the rendered sidecar
//!   configuration ([`SidecarConfig::to_yaml`]), annotation `gossip.openmatch.io/config-hash`
//!   = its `sha256:<hex>`. Engine pods mount it (e.g. at `/etc/openmatch-gossip`) and run the
//!   sidecar with `--config /etc/openmatch-gossip/config.yaml`; the sidecar reloads it on
//!   change.
//! - Service `<name>-gossip`: headless (`clusterIP: None`), selecting the pods by
//!   `podSelector.matchLabels`, port `p2p` = `p2pPort`, with `publishNotReadyAddresses`
//!   so that pods resolve each other (`<pod>.<name>-gossip.<ns>.svc`, for StatefulSet pods
//!   whose `serviceName` is this Service) before they are ready.
//!
//! Both carry a controller owner reference (`controller: true`) to the GossipNetwork, so
//! Kubernetes' garbage collector deletes them with it, and the labels
//! `app.kubernetes.io/managed-by=openmatch-gossip-operator` and
//! `gossip.openmatch.io/network=<name>` (the operator watches only labelled objects).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource as _, ResourceExt as _};
use openmatch_gossip_crds::GossipNetwork;
use openmatch_gossip_crds::gossip_network::CONFIG_KEY;

/// Field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "openmatch-gossip-operator";
/// Label marking objects this operator manages (`app.kubernetes.io/managed-by`).
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Label naming the owning GossipNetwork.
pub const NETWORK_LABEL: &str = "gossip.openmatch.io/network";
/// ConfigMap annotation holding the configuration's `sha256:<hex>`.
pub const CONFIG_HASH_ANNOTATION: &str = "gossip.openmatch.io/config-hash";

/// The labels put on every child of `gn`.
pub fn labels(gn: &GossipNetwork) -> BTreeMap<String, String> {
    BTreeMap::from([(MANAGED_BY_LABEL.to_owned(), FIELD_MANAGER.to_owned()), (NETWORK_LABEL.to_owned(), gn.name_any())])
}

/// The controller owner reference to `gn` (needs its `metadata.uid`, which every object
/// read from the API server has).
pub fn owner_reference(gn: &GossipNetwork) -> Option<OwnerReference> {
    gn.controller_owner_ref(&())
}

fn child_meta(gn: &GossipNetwork, name: String, owner: Option<&OwnerReference>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: gn.namespace(),
        labels: Some(labels(gn)),
        owner_references: owner.map(|o| vec![o.clone()]),
        ..Default::default()
    }
}

/// The ConfigMap holding `config_yaml` (with hash `config_hash`), owned by `owner` (`None`
/// only outside a cluster: `openmatch-gossip-operator render`).
pub fn config_map(
    gn: &GossipNetwork,
    owner: Option<&OwnerReference>,
    config_yaml: &str,
    config_hash: &str,
) -> ConfigMap {
    let mut metadata = child_meta(gn, gn.config_map_name(), owner);
    metadata.annotations = Some(BTreeMap::from([(CONFIG_HASH_ANNOTATION.to_owned(), config_hash.to_owned())]));
    ConfigMap {
        metadata,
        data: Some(BTreeMap::from([(CONFIG_KEY.to_owned(), config_yaml.to_owned())])),
        ..Default::default()
    }
}

/// The headless Service for peer DNS.
pub fn service(gn: &GossipNetwork, owner: &OwnerReference) -> Service {
    let port = i32::from(gn.spec.p2p_port);
    Service {
        metadata: child_meta(gn, gn.service_name(), Some(owner)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: gn.spec.pod_selector.match_labels.clone(),
            ports: Some(vec![ServicePort {
                name: Some("p2p".into()),
                port,
                target_port: Some(IntOrString::Int(port)),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use openmatch_gossip_crds::GossipNetworkSpec;

    use super::*;

    fn gn() -> GossipNetwork {
        let mut gn = GossipNetwork::new(
            "prod",
            GossipNetworkSpec { p2p_port: 4101, ..GossipNetworkSpec::new(["BTC-USDT"], [("app", "engine")]) },
        );
        gn.metadata.namespace = Some("trading".into());
        gn.metadata.uid = Some("uid-1".into());
        gn
    }

    #[test]
    fn children_are_owned_and_labelled() {
        let gn = gn();
        let owner = owner_reference(&gn).unwrap();
        assert_eq!(owner.controller, Some(true));
        assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()), ("GossipNetwork", "prod", "uid-1"));
        assert_eq!(owner.api_version, "gossip.openmatch.io/v1alpha1");

        let cm = config_map(&gn, Some(&owner), "markets: [BTC-USDT]\n", "sha256:00");
        assert_eq!(cm.metadata.name.as_deref(), Some("prod-gossip-config"));
        assert_eq!(cm.metadata.namespace.as_deref(), Some("trading"));
        assert_eq!(cm.metadata.owner_references, Some(vec![owner.clone()]));
        assert_eq!(cm.data.unwrap()["config.yaml"], "markets: [BTC-USDT]\n");
        assert_eq!(cm.metadata.annotations.unwrap()[CONFIG_HASH_ANNOTATION], "sha256:00");
        assert_eq!(cm.metadata.labels.unwrap()[NETWORK_LABEL], "prod");

        let svc = service(&gn, &owner);
        let spec = svc.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.selector.unwrap()["app"], "engine");
        assert_eq!(spec.ports.unwrap()[0].port, 4101);
        assert_eq!(svc.metadata.owner_references, Some(vec![owner]));
    }

    #[test]
    fn apply_bodies_carry_api_version_and_kind() {
        let gn = gn();
        let owner = owner_reference(&gn).unwrap();
        let cm = serde_json::to_value(config_map(&gn, Some(&owner), "x", "h")).unwrap();
        assert_eq!((cm["apiVersion"].as_str(), cm["kind"].as_str()), (Some("v1"), Some("ConfigMap")));
        let svc = serde_json::to_value(service(&gn, &owner)).unwrap();
        assert_eq!((svc["apiVersion"].as_str(), svc["kind"].as_str()), (Some("v1"), Some("Service")));
    }
}
