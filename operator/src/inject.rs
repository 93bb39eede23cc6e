//! Sidecar injection: what the mutating admission webhook does to a pod labelled
//! `gossip.openmatch.io/network: <GossipNetwork name>`.
//!
//! Why a label, not an annotation: the webhook configuration's `objectSelector` can match
//! only labels, and it is what keeps every other pod of the cluster away from the webhook
//! (no added latency, no exposure to its failure policy). The same label on a pod template
//! can also be the GossipNetwork's `podSelector`.
//!
//! The pod gets the sidecar as a **native sidecar** (an init container with
//! `restartPolicy: Always`, GA in Kubernetes 1.33; placed first, so it is started, and has
//! passed its startup probe, before any other init container and the app containers):
//! `openmatch-gossip node` with the network's ConfigMap (`<network>-gossip-config`) mounted
//! as a directory (so the kubelet's updates reach the file and the sidecar reloads it), the
//! engine socket on an `emptyDir` also mounted into every app container, its identity key on
//! an `emptyDir` (kept across container restarts, new for a new pod), `POD_NAME`,
//! `POD_NAMESPACE` and `POD_IP` from the downward API, startup / readiness / liveness probes
//! on its HTTP port (named `metrics`), resources from the operator's flags and a restricted
//! security context. Each app container also gets `OPENMATCH_GOSSIP_SOCKET` = the socket
//! path.
//!
//! Pods are left alone (allowed, no patch) when they have no network label, opt out with
//! the annotation `gossip.openmatch.io/inject: "false"`, or are already injected
//! (annotation `gossip.openmatch.io/injected`, or a container named `openmatch-gossip`):
//! injection is idempotent. A malformed label or annotation, or a network that does not
//! exist in the pod's namespace, is refused with a message saying which and why, rather
//! than half-injected.
//!
//! [`review`] answers an `AdmissionReview` with an RFC 6902 JSON patch computed by the
//! `json-patch` crate from the pod before and after [`inject`].

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, Pod, PodSecurityContext, Probe, ResourceRequirements, SeccompProfile,
    SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};

/// Pod label naming the GossipNetwork (in the pod's namespace) whose sidecar to inject (the
/// key the operator's own children carry: [`crate::children::NETWORK_LABEL`]).
pub const NETWORK_LABEL: &str = crate::children::NETWORK_LABEL;
/// Pod annotation; `"false"` opts a pod out of injection.
pub const INJECT_ANNOTATION: &str = "gossip.openmatch.io/inject";
/// Pod annotation: the directory, in the app containers, holding the engine socket
/// (default [`DEFAULT_SOCKET_DIR`]). An absolute path.
pub const SOCKET_DIR_ANNOTATION: &str = "gossip.openmatch.io/socket-dir";
/// Annotation set on injected pods (value: the operator's version); marks them injected.
pub const INJECTED_ANNOTATION: &str = "gossip.openmatch.io/injected";
/// Label set on injected pods (`"true"`), e.g. for a `PodMonitor`.
pub const INJECTED_LABEL: &str = "gossip.openmatch.io/injected";
/// Name of the injected container (and prefix of its volumes).
pub const SIDECAR_NAME: &str = "openmatch-gossip";
/// Where the engine socket lives in every container, unless annotated otherwise.
pub const DEFAULT_SOCKET_DIR: &str = "/run/openmatch-gossip";
/// The socket's file name in the socket directory.
pub const SOCKET_FILE: &str = "engine.sock";
/// Environment variable giving the app containers the socket path.
pub const SOCKET_ENV: &str = "OPENMATCH_GOSSIP_SOCKET";
/// Where the sidecar reads its configuration (the ConfigMap, as a directory).
const CONFIG_DIR: &str = "/etc/openmatch-gossip";
/// Where the sidecar keeps its identity key.
const IDENTITY_DIR: &str = "/var/lib/openmatch-gossip";
/// UID and GID the sidecar runs as (distroless `nonroot`). The pod's `fsGroup` is set to
/// the GID when the pod sets none, so the socket (group-owned, mode 0660) is reachable from
/// every container.
const SIDECAR_UID: i64 = 65532;

/// What every injected sidecar looks like (from the operator's flags / the chart's values).
#[derive(Debug, Clone, PartialEq)]
pub struct SidecarTemplate {
    /// Image with `openmatch-gossip`, e.g. `ghcr.io/openmatch/openmatch-gossip:0.1.0`.
    pub image: String,
    /// `Always`, `IfNotPresent` or `Never`; `None`: the cluster's default.
    pub image_pull_policy: Option<String>,
    /// Requests and limits.
    pub resources: ResourceRequirements,
    /// The sidecar's HTTP port (`/metrics`, `/healthz`, `/readyz`), 1–65535.
    pub metrics_port: u16,
    /// Value of the injected annotation (the operator's version).
    pub version: String,
}

/// What injection needs to know about the pod's GossipNetwork.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkRef {
    /// The rendered configuration's ConfigMap (`<name>-gossip-config`).
    pub config_map: String,
    /// The network's libp2p port.
    pub p2p_port: u16,
}

/// What to do with a pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Admit it unchanged, for this reason (logged at debug).
    Skip(&'static str),
    /// Admit it as this pod.
    Inject(Box<Pod>),
    /// Refuse it with this message.
    Refuse(String),
}

/// Whether `s` is a DNS-1123 subdomain (what a GossipNetwork's `metadata.name` must be).
fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Decides what to do with `pod` (in `namespace`): `network` looks a GossipNetwork up by
/// name in that namespace.
pub fn inject(
    pod: &Pod,
    namespace: &str,
    network: impl FnOnce(&str) -> Option<NetworkRef>,
    template: &SidecarTemplate,
) -> Decision {
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let Some(name) = labels.get(NETWORK_LABEL).map(|s| s.trim()) else {
        return Decision::Skip("no network label");
    };
    match annotations.get(INJECT_ANNOTATION).map(|s| s.trim()) {
        Some("false") => return Decision::Skip("opted out"),
        None | Some("true") => {}
        Some(other) => {
            return Decision::Refuse(format!(
                "annotation {INJECT_ANNOTATION}: {other:?} is neither \"true\" nor \"false\""
            ));
        }
    }
    let spec = pod.spec.clone().unwrap_or_default();
    let has_sidecar =
        spec.init_containers.iter().flatten().chain(spec.containers.iter()).any(|c| c.name == SIDECAR_NAME);
    if annotations.contains_key(INJECTED_ANNOTATION) || has_sidecar {
        return Decision::Skip("already injected");
    }
    if !is_dns_subdomain(name) {
        return Decision::Refuse(format!(
            "label {NETWORK_LABEL}: {name:?} is not a GossipNetwork name (a DNS-1123 subdomain)"
        ));
    }
    let socket_dir = annotations.get(SOCKET_DIR_ANNOTATION).map_or(DEFAULT_SOCKET_DIR, |s| s.trim());
    if !socket_dir.starts_with('/') || socket_dir.split('/').any(|p| p == "..") || socket_dir.contains(':') {
        return Decision::Refuse(format!(
            "annotation {SOCKET_DIR_ANNOTATION}: {socket_dir:?} is not an absolute path without `..`"
        ));
    }
    let Some(net) = network(name) else {
        return Decision::Refuse(format!(
            "GossipNetwork {name:?} (label {NETWORK_LABEL}) does not exist in namespace {namespace:?}: \
             create it first, or fix the label"
        ));
    };
    Decision::Inject(Box::new(injected(pod, &net, socket_dir, template)))
}

fn volume_mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: path.into(), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn http_probe(path: &str, period_s: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("metrics".into()),
            ..Default::default()
        }),
        period_seconds: Some(period_s),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Default::default()
    }
}

/// The sidecar container.
fn sidecar(net: &NetworkRef, socket_dir: &str, t: &SidecarTemplate) -> Container {
    let config_vol = format!("{SIDECAR_NAME}-config");
    let socket_vol = format!("{SIDECAR_NAME}-socket");
    let identity_vol = format!("{SIDECAR_NAME}-identity");
    Container {
        name: SIDECAR_NAME.into(),
        image: Some(t.image.clone()),
        image_pull_policy: t.image_pull_policy.clone(),
        restart_policy: Some("Always".into()),
        args: Some(vec![
            "node".into(),
            "--config".into(),
            format!("{CONFIG_DIR}/{}", openmatch_gossip_crds::gossip_network::CONFIG_KEY),
            "--socket".into(),
            format!("{socket_dir}/{SOCKET_FILE}"),
            "--identity-key".into(),
            format!("{IDENTITY_DIR}/identity.key"),
            "--metrics-addr".into(),
            format!("0.0.0.0:{}", t.metrics_port),
        ]),
        env: Some(vec![
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
            field_env("POD_IP", "status.podIP"),
        ]),
        ports: Some(vec![
            ContainerPort {
                name: Some("p2p".into()),
                container_port: i32::from(net.p2p_port),
                protocol: Some("TCP".into()),
                ..Default::default()
            },
            ContainerPort {
                name: Some("metrics".into()),
                container_port: i32::from(t.metrics_port),
                protocol: Some("TCP".into()),
                ..Default::default()
            },
        ]),
        // Started (meshed and recovered) within 2 min; then ready while it serves, restarted
        // when it stops answering /healthz.
        startup_probe: Some(http_probe("/healthz", 1, 120)),
        readiness_probe: Some(http_probe("/readyz", 5, 3)),
        liveness_probe: Some(http_probe("/healthz", 10, 3)),
        resources: Some(t.resources.clone()),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(SIDECAR_UID),
            run_as_group: Some(SIDECAR_UID),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Default::default() }),
            seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            volume_mount(&config_vol, CONFIG_DIR, true),
            volume_mount(&socket_vol, socket_dir, false),
            volume_mount(&identity_vol, IDENTITY_DIR, false),
        ]),
        ..Default::default()
    }
}

/// `pod` with the sidecar injected (see the module docs).
fn injected(pod: &Pod, net: &NetworkRef, socket_dir: &str, t: &SidecarTemplate) -> Pod {
    let mut pod = pod.clone();
    let meta = &mut pod.metadata;
    meta.annotations.get_or_insert_with(BTreeMap::new).insert(INJECTED_ANNOTATION.into(), t.version.clone());
    meta.labels.get_or_insert_with(BTreeMap::new).insert(INJECTED_LABEL.into(), "true".into());
    let spec = pod.spec.get_or_insert_with(Default::default);
    spec.init_containers.get_or_insert_with(Vec::new).insert(0, sidecar(net, socket_dir, t));
    let socket_vol = format!("{SIDECAR_NAME}-socket");
    for c in &mut spec.containers {
        c.volume_mounts.get_or_insert_with(Vec::new).push(volume_mount(&socket_vol, socket_dir, false));
        let env = c.env.get_or_insert_with(Vec::new);
        if !env.iter().any(|e| e.name == SOCKET_ENV) {
            env.push(EnvVar {
                name: SOCKET_ENV.into(),
                value: Some(format!("{socket_dir}/{SOCKET_FILE}")),
                ..Default::default()
            });
        }
    }
    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    volumes.push(Volume {
        name: format!("{SIDECAR_NAME}-config"),
        config_map: Some(ConfigMapVolumeSource { name: net.config_map.clone(), ..Default::default() }),
        ..Default::default()
    });
    for dir in ["socket", "identity"] {
        volumes.push(Volume {
            name: format!("{SIDECAR_NAME}-{dir}"),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        });
    }
    let security = spec.security_context.get_or_insert_with(PodSecurityContext::default);
    security.fs_group.get_or_insert(SIDECAR_UID);
    pod
}

/// Answers one `AdmissionRequest` for a pod: allowed unchanged, allowed with the injection
/// patch, or denied with the reason (see [`inject`]). Returns the response and, for a
/// refusal, its message (for an Event and the metrics).
pub fn review(
    req: &AdmissionRequest<Pod>,
    network: impl FnOnce(&str) -> Option<NetworkRef>,
    template: &SidecarTemplate,
) -> (AdmissionResponse, Decision) {
    let response = AdmissionResponse::from(req);
    let Some(pod) = req.object.as_ref().filter(|_| req.operation == Operation::Create) else {
        return (response, Decision::Skip("not a pod creation"));
    };
    let namespace = req.namespace.as_deref().or(pod.metadata.namespace.as_deref()).unwrap_or("default");
    let decision = inject(pod, namespace, network, template);
    let response = match &decision {
        Decision::Skip(_) => response,
        Decision::Refuse(message) => response.deny(message),
        Decision::Inject(patched) => {
            let before = serde_json::to_value(pod).expect("a pod serializes");
            let after = serde_json::to_value(patched.as_ref()).expect("a pod serializes");
            match response.clone().with_patch(json_patch::diff(&before, &after)) {
                Ok(r) => r,
                Err(e) => response.deny(format!("internal error building the injection patch: {e}")),
            }
        }
    };
    (response, decision)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use kube::core::admission::AdmissionReview;

    use super::*;

    fn template() -> SidecarTemplate {
        SidecarTemplate {
            image: "openmatch-gossip:0.1.0".into(),
            image_pull_policy: Some("IfNotPresent".into()),
            resources: ResourceRequirements {
                requests: Some(BTreeMap::from([
                    ("cpu".to_owned(), Quantity("100m".into())),
                    ("memory".to_owned(), Quantity("64Mi".into())),
                ])),
                limits: Some(BTreeMap::from([("memory".to_owned(), Quantity("256Mi".into()))])),
                ..Default::default()
            },
            metrics_port: 9090,
            version: "0.1.0".into(),
        }
    }

    fn prod(name: &str) -> Option<NetworkRef> {
        (name == "prod").then(|| NetworkRef { config_map: "prod-gossip-config".into(), p2p_port: 4001 })
    }

    /// An AdmissionReview as kube-apiserver sends it for `kubectl apply` of a StatefulSet
    /// pod (`pod` is the object's JSON).
    fn review_json(pod: serde_json::Value) -> AdmissionRequest<Pod> {
        let review = serde_json::json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
                "requestResource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "trading",
                "operation": "CREATE",
                "userInfo": {"username": "system:serviceaccount:kube-system:statefulset-controller",
                             "uid": "a5b1", "groups": ["system:serviceaccounts", "system:authenticated"]},
                "object": pod,
                "oldObject": null,
                "dryRun": false,
                "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
            }
        });
        let review: AdmissionReview<Pod> = serde_json::from_value(review).expect("an AdmissionReview");
        review.try_into().expect("with a request")
    }

    /// An engine pod labelled for `network` (if any) with `annotations`.
    fn engine_pod(network: Option<&str>, annotations: serde_json::Value) -> serde_json::Value {
        let mut labels = serde_json::json!({"app": "engine"});
        if let Some(n) = network {
            labels[NETWORK_LABEL] = n.into();
        }
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "generateName": "engine-",
                "namespace": "trading",
                "labels": labels,
                "annotations": annotations
            },
            "spec": {
                "containers": [{
                    "name": "engine",
                    "image": "openmatch-gossip:0.1.0",
                    "args": ["engine", "--socket", "/run/openmatch-gossip/engine.sock"]
                }]
            }
        })
    }

    /// Applies the response's patch to the request's pod.
    fn patched(req: &AdmissionRequest<Pod>, resp: &AdmissionResponse) -> Pod {
        let patch: json_patch::Patch = serde_json::from_slice(resp.patch.as_ref().expect("a patch")).unwrap();
        let mut doc = serde_json::to_value(req.object.as_ref().unwrap()).unwrap();
        json_patch::patch(&mut doc, &patch).expect("the patch applies");
        serde_json::from_value(doc).expect("a pod")
    }

    #[test]
    fn annotated_pod_gets_a_native_sidecar() {
        let req = review_json(engine_pod(Some("prod"), serde_json::json!({})));
        let (resp, decision) = review(&req, prod, &template());
        assert!(resp.allowed);
        let Decision::Inject(expected) = decision else { panic!("{decision:?}") };
        let pod = patched(&req, &resp);
        assert_eq!(&pod, expected.as_ref(), "the patch yields the injected pod");

        let spec = pod.spec.unwrap();
        let init = spec.init_containers.unwrap();
        let sc = &init[0];
        assert_eq!((sc.name.as_str(), sc.restart_policy.as_deref()), (SIDECAR_NAME, Some("Always")));
        let args = sc.args.clone().unwrap();
        assert!(args.windows(2).any(|w| w == ["--config", "/etc/openmatch-gossip/config.yaml"]), "{args:?}");
        assert!(args.windows(2).any(|w| w == ["--socket", "/run/openmatch-gossip/engine.sock"]), "{args:?}");
        let ports: Vec<_> = sc.ports.iter().flatten().map(|p| (p.name.clone().unwrap(), p.container_port)).collect();
        assert_eq!(ports, [("p2p".to_owned(), 4001), ("metrics".to_owned(), 9090)]);
        for probe in [&sc.startup_probe, &sc.readiness_probe, &sc.liveness_probe] {
            let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
            assert_eq!(get.port, IntOrString::String("metrics".into()));
        }
        let sec = sc.security_context.as_ref().unwrap();
        assert_eq!((sec.run_as_non_root, sec.read_only_root_filesystem), (Some(true), Some(true)));
        assert_eq!(sec.capabilities.as_ref().unwrap().drop.as_deref(), Some(&["ALL".to_owned()][..]));
        let env: Vec<&str> = sc.env.iter().flatten().map(|e| e.name.as_str()).collect();
        assert_eq!(env, ["POD_NAME", "POD_NAMESPACE", "POD_IP"]);

        let app = &spec.containers[0];
        assert!(app.volume_mounts.iter().flatten().any(|m| m.mount_path == DEFAULT_SOCKET_DIR));
        assert!(
            app.env
                .iter()
                .flatten()
                .any(|e| e.name == SOCKET_ENV && e.value.as_deref() == Some("/run/openmatch-gossip/engine.sock"))
        );
        let volumes = spec.volumes.unwrap();
        let config = volumes.iter().find_map(|v| v.config_map.as_ref()).unwrap();
        assert_eq!(config.name, "prod-gossip-config");
        assert_eq!(spec.security_context.unwrap().fs_group, Some(SIDECAR_UID));
        assert_eq!(pod.metadata.labels.unwrap()[INJECTED_LABEL], "true");
        assert_eq!(pod.metadata.annotations.unwrap()[INJECTED_ANNOTATION], "0.1.0");
    }

    #[test]
    fn injection_is_idempotent() {
        let req = review_json(engine_pod(Some("prod"), serde_json::json!({})));
        let (resp, _) = review(&req, prod, &template());
        let once = patched(&req, &resp);
        let again = review_json(serde_json::to_value(&once).unwrap());
        let (resp, decision) = review(&again, prod, &template());
        assert!(resp.allowed && resp.patch.is_none(), "{resp:?}");
        assert_eq!(decision, Decision::Skip("already injected"));
    }

    #[test]
    fn pods_left_alone() {
        for (network, annotations, why) in [
            (None, serde_json::json!({}), "no network label"),
            // The key as an annotation is not the label.
            (None, serde_json::json!({NETWORK_LABEL: "prod"}), "no network label"),
            (Some("prod"), serde_json::json!({INJECT_ANNOTATION: "false"}), "opted out"),
        ] {
            let req = review_json(engine_pod(network, annotations));
            let (resp, decision) = review(&req, prod, &template());
            assert!(resp.allowed && resp.patch.is_none(), "{resp:?}");
            assert_eq!(decision, Decision::Skip(why));
        }
    }

    #[test]
    fn bad_annotations_and_unknown_networks_are_refused() {
        for (network, annotations, needle) in [
            (
                "staging",
                serde_json::json!({}),
                "\"staging\" (label gossip.openmatch.io/network) does not exist in namespace \"trading\"",
            ),
            ("Prod_1", serde_json::json!({}), "is not a GossipNetwork name"),
            ("prod", serde_json::json!({INJECT_ANNOTATION: "yes"}), "neither \"true\" nor \"false\""),
            ("prod", serde_json::json!({SOCKET_DIR_ANNOTATION: "run/x"}), "not an absolute path"),
        ] {
            let req = review_json(engine_pod(Some(network), annotations));
            let (resp, decision) = review(&req, prod, &template());
            assert!(!resp.allowed, "{resp:?}");
            assert!(resp.patch.is_none());
            assert!(resp.result.message.contains(needle), "{:?} lacks {needle:?}", resp.result.message);
            assert!(matches!(decision, Decision::Refuse(_)));
        }
    }

    #[test]
    fn socket_dir_annotation_moves_the_socket() {
        let req = review_json(engine_pod(Some("prod"), serde_json::json!({SOCKET_DIR_ANNOTATION: "/var/run/gossip"})));
        let (resp, _) = review(&req, prod, &template());
        let spec = patched(&req, &resp).spec.unwrap();
        let sc = &spec.init_containers.unwrap()[0];
        assert!(sc.args.as_ref().unwrap().contains(&"/var/run/gossip/engine.sock".to_owned()));
        assert!(spec.containers[0].volume_mounts.iter().flatten().any(|m| m.mount_path == "/var/run/gossip"));
    }
}
