//! The operator's work without a cluster: `inject` (what the admission webhook does, applied
//! to manifests) and `render` (the ConfigMap a reconcile would apply for a GossipNetwork
//! and its pods). Both reuse the in-cluster code paths ([`crate::inject::inject`],
//! [`crate::reconcile::desired`]); only the input and output differ.

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::ResourceExt as _;
use openmatch_gossip_crds::GossipNetwork;
use openmatch_gossip_crds::gossip_network::config_hash;
use serde_json::Value;

use crate::inject::{Decision, NetworkRef, SidecarTemplate};
use crate::peer_ids::PeerIds;
use crate::peers::PeerSet;

/// Where each kind keeps its pod template (JSON pointer); a `Pod` is its own.
const POD_TEMPLATES: [(&str, &str); 6] = [
    ("Deployment", "/spec/template"),
    ("StatefulSet", "/spec/template"),
    ("DaemonSet", "/spec/template"),
    ("ReplicaSet", "/spec/template"),
    ("Job", "/spec/template"),
    ("CronJob", "/spec/jobTemplate/spec/template"),
];

/// YAML documents in `text` (empty documents dropped).
fn documents(text: &str) -> anyhow::Result<Vec<Value>> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| anyhow::anyhow!("not YAML: {e}"))?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// `docs` as a YAML stream.
fn to_yaml(docs: &[Value]) -> String {
    let options = serde_saphyr::SerializerOptions { prefer_block_scalars: false, ..Default::default() };
    docs.iter()
        .map(|d| serde_saphyr::to_string_with_options(d, options).expect("JSON values serialise to YAML"))
        .collect::<Vec<_>>()
        .join("---\n")
}

/// The GossipNetworks in `text` (other kinds are ignored).
pub fn networks(text: &str) -> anyhow::Result<Vec<GossipNetwork>> {
    documents(text)?
        .into_iter()
        .filter(|d| d["kind"] == "GossipNetwork")
        .map(|d| serde_json::from_value(d).map_err(|e| anyhow::anyhow!("not a GossipNetwork: {e}")))
        .collect()
}

/// Injects the sidecar into every pod and pod template of `manifests` whose pod is labelled
/// for a network of `networks` (looked up by name in the object's namespace, `namespace`
/// when it names none), as the webhook would; returns the manifests as YAML, other
/// objects unchanged, and one line per object saying what was done.
///
/// Errors: input that is not YAML or not a valid pod template; a pod the webhook would
/// refuse (unknown network, malformed label or annotation), with its message.
pub fn inject(
    manifests: &str,
    networks: &[GossipNetwork],
    namespace: &str,
    template: &SidecarTemplate,
) -> anyhow::Result<(String, Vec<String>)> {
    let mut docs = documents(manifests)?;
    let mut notes = Vec::new();
    for doc in &mut docs {
        let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
        let name = doc["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        let ns = doc["metadata"]["namespace"].as_str().unwrap_or(namespace).to_owned();
        let pointer = match kind.as_str() {
            "Pod" => "",
            k => match POD_TEMPLATES.iter().find(|(kind, _)| *kind == k) {
                Some((_, p)) => *p,
                None => continue,
            },
        };
        let Some(slot) = doc.pointer_mut(pointer) else { continue };
        let pod_json = serde_json::json!({"metadata": slot["metadata"].clone(), "spec": slot["spec"].clone()});
        let pod: Pod =
            serde_json::from_value(pod_json).map_err(|e| anyhow::anyhow!("{kind}/{name}: not a pod template: {e}"))?;
        let lookup = |net: &str| {
            networks
                .iter()
                .find(|gn| gn.name_any() == net && gn.namespace().as_deref().unwrap_or(namespace) == ns)
                .map(|gn| NetworkRef { config_map: gn.config_map_name(), p2p_port: gn.spec.p2p_port })
        };
        match crate::inject::inject(&pod, &ns, lookup, template) {
            Decision::Inject(injected) => {
                let injected = serde_json::to_value(injected.as_ref()).expect("a pod serialises");
                slot["metadata"] = injected["metadata"].clone();
                slot["spec"] = injected["spec"].clone();
                notes.push(format!("{kind}/{name}: sidecar injected"));
            }
            Decision::Skip(why) => notes.push(format!("{kind}/{name}: left alone ({why})")),
            Decision::Refuse(message) => anyhow::bail!("{kind}/{name}: refused: {message}"),
        }
    }
    Ok((to_yaml(&docs), notes))
}

/// The pods in `text`: a PodList (or any `List`), a sequence of Pods, or one Pod, in YAML
/// or JSON.
pub fn pods(text: &str) -> anyhow::Result<Vec<Pod>> {
    let items: Vec<Value> = documents(text)?
        .into_iter()
        .flat_map(|d| match d {
            Value::Array(items) => items,
            Value::Object(ref o) if o.contains_key("items") => d["items"].as_array().cloned().unwrap_or_default(),
            one => vec![one],
        })
        .collect();
    items.into_iter().map(|p| serde_json::from_value(p).map_err(|e| anyhow::anyhow!("not a Pod: {e}"))).collect()
}

/// The ConfigMap a reconcile of `gn` would apply with `pods` selected (peer ids asked of
/// their sidecars through `peer_ids`), and the peer set behind it. Without a
/// `metadata.uid` (a manifest, not an object read from a cluster) it has no owner.
///
/// Errors: the spec does not render.
pub async fn render(gn: &GossipNetwork, pods: &[Pod], peer_ids: &PeerIds) -> anyhow::Result<(ConfigMap, PeerSet)> {
    let (peers, config) =
        crate::reconcile::desired(gn, pods, peer_ids).await.map_err(|e| anyhow::anyhow!("invalid spec: {e}"))?;
    let yaml = config.to_yaml();
    let owner = crate::children::owner_reference(gn);
    Ok((crate::children::config_map(gn, owner.as_ref(), &yaml, &config_hash(&yaml)), peers))
}

/// `cm` as a YAML manifest.
pub fn config_map_yaml(cm: &ConfigMap) -> String {
    to_yaml(&[serde_json::to_value(cm).expect("a ConfigMap serialises")])
}

#[cfg(test)]
mod tests {
    use super::*;

    const NETWORK: &str = "apiVersion: gossip.openmatch.io/v1alpha1
kind: GossipNetwork
metadata: {name: demo, namespace: trading}
spec:
  markets: [BTC-USDT]
  podSelector: {matchLabels: {gossip.openmatch.io/network: demo}}
";

    fn template() -> SidecarTemplate {
        SidecarTemplate {
            image: "openmatch-gossip:0.1.0".into(),
            image_pull_policy: None,
            resources: Default::default(),
            metrics_port: 9090,
            version: "0.1.0".into(),
        }
    }

    fn workload(kind: &str, network: &str) -> String {
        format!(
            "apiVersion: apps/v1
kind: {kind}
metadata: {{name: engine, namespace: trading}}
spec:
  selector: {{matchLabels: {{app: engine}}}}
  template:
    metadata:
      labels: {{app: engine, gossip.openmatch.io/network: {network}}}
    spec:
      containers:
        - {{name: engine, image: 'engine:1'}}
"
        )
    }

    #[test]
    fn injects_pod_templates_and_leaves_other_objects_alone() {
        let nets = networks(NETWORK).unwrap();
        let input = format!(
            "{}---\n{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: s}}\n",
            workload("StatefulSet", "demo"),
            workload("Deployment", "demo")
        );
        let (out, notes) = inject(&input, &nets, "default", &template()).unwrap();
        assert_eq!(notes, ["StatefulSet/engine: sidecar injected", "Deployment/engine: sidecar injected"]);
        let docs = documents(&out).unwrap();
        assert_eq!(docs.len(), 3);
        for d in &docs[..2] {
            let init = &d["spec"]["template"]["spec"]["initContainers"][0];
            assert_eq!(
                (init["name"].as_str(), init["restartPolicy"].as_str()),
                (Some("openmatch-gossip"), Some("Always"))
            );
            assert_eq!(d["spec"]["template"]["metadata"]["labels"]["gossip.openmatch.io/injected"], "true");
            assert_eq!(d["spec"]["selector"]["matchLabels"]["app"], "engine", "the rest of the object is kept");
        }
        assert_eq!(docs[2]["kind"], "Service");
        // Injected output goes through again unchanged (idempotent, as the webhook).
        let (again, notes) = inject(&out, &nets, "default", &template()).unwrap();
        assert_eq!(documents(&again).unwrap(), docs);
        assert!(notes[0].ends_with("left alone (already injected)"), "{notes:?}");
    }

    #[test]
    fn an_unknown_network_is_refused_with_the_webhooks_message() {
        let nets = networks(NETWORK).unwrap();
        let err = inject(&workload("StatefulSet", "staging"), &nets, "default", &template()).unwrap_err().to_string();
        assert!(err.contains("StatefulSet/engine: refused") && err.contains("\"staging\""), "{err}");
        // The network exists, but in another namespace than the default one given.
        let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, labels: {gossip.openmatch.io/network: demo}}\nspec: {containers: [{name: c}]}\n";
        assert!(inject(pod, &nets, "default", &template()).is_err());
        assert!(inject(pod, &nets, "trading", &template()).is_ok());
    }

    #[tokio::test]
    async fn renders_the_config_map_of_a_network_and_its_pods() {
        let gn = &networks(NETWORK).unwrap()[0];
        let list = r#"{"apiVersion": "v1", "kind": "PodList", "items": [
            {"metadata": {"name": "engine-0", "annotations": {"gossip.openmatch.io/peer-id": "12D3KooWK99VoVxNE7XzyBwXEzW7xhK7Gpv85r9F3V3fyKSUKPH5"}},
             "status": {"phase": "Running", "podIP": "10.1.0.5", "conditions": [{"type": "Ready", "status": "True"}]}},
            {"metadata": {"name": "engine-1"}, "status": {"phase": "Pending"}}]}"#;
        let pods = pods(list).unwrap();
        assert_eq!(pods.len(), 2);
        let (cm, peers) = render(gn, &pods, &PeerIds::default()).await.unwrap();
        assert_eq!(peers.not_ready, ["engine-1"]);
        let config =
            openmatch_gossip_crds::SidecarConfig::from_yaml(&cm.data.as_ref().unwrap()["config.yaml"]).unwrap();
        assert_eq!(
            config.p2p.bootstrap_peers,
            ["/ip4/10.1.0.5/tcp/4001/p2p/12D3KooWK99VoVxNE7XzyBwXEzW7xhK7Gpv85r9F3V3fyKSUKPH5"]
        );
        assert_eq!(config.consensus.members, 2, "both selected pods are members");
        assert_eq!(cm.metadata.name.as_deref(), Some("demo-gossip-config"));
        assert!(cm.metadata.owner_references.is_none(), "no uid, no owner");
        let yaml = config_map_yaml(&cm);
        assert!(yaml.starts_with("apiVersion: v1\nkind: ConfigMap\n") || yaml.contains("kind: ConfigMap"), "{yaml}");
    }
}
