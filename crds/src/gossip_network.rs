//! The `GossipNetwork` custom resource (group `gossip.openmatch.io`, version `v1alpha1`,
//! namespaced, short name `gn`): one network of sidecars, the pods that run them, and the
//! settings the operator renders into their configuration file (DESIGN §7).
//!
//! The spec's groups mirror the sidecar configuration's ([`SidecarConfig`]): `gossipsub`,
//! `limits`, `consensus` and `reputation` have the same keys, units and defaults, so a field
//! that is omitted keeps the sidecar's default. Only `markets` and `podSelector` are
//! required.
//!
//! Validation happens in two places:
//! - the API server enforces the OpenAPI schema generated from these types: required
//!   fields, minimums and maximums, the market-name pattern, unique markets
//!   (`x-kubernetes-list-type: set`), a non-empty `podSelector.matchLabels`;
//! - [`GossipNetwork::render`] checks what a schema cannot express (cross-field rules such
//!   as `meshNLow <= meshN <= meshNHigh`, multiaddr syntax of static bootstrap peers) by
//!   rendering the [`SidecarConfig`] and running [`SidecarConfig::validate`]; its
//!   [`SpecError`] names the spec field (e.g. `spec.gossipsub.meshN`).
//!
//! ```yaml
//! apiVersion: gossip.openmatch.io/v1alpha1
//! kind: GossipNetwork
//! metadata: {name: prod, namespace: trading}
//! spec:
//!   markets: [BTC-USDT, ETH-USDT]          # required; unique; [A-Z0-9]+(-[A-Z0-9]+)*
//!   podSelector:                           # required; the engine pods (matchLabels non-empty)
//!     matchLabels: {app: matching-engine}
//!   p2pPort: 4001                          # sidecar libp2p TCP port (default 4001)
//!   limits:
//!     rateLimit: {messagesPerSecond: 2000, burst: 4000}
//! ```

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, CustomResourceExt as _, ResourceExt as _};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::sidecar_config::{ConfigError, SealingMode, SidecarConfig, is_valid_network};

/// API group of the custom resources (`gossip.openmatch.io`).
pub const GROUP: &str = "gossip.openmatch.io";
/// API version of [`GossipNetwork`] (`v1alpha1`).
pub const VERSION: &str = "v1alpha1";
/// Default libp2p TCP port of the sidecars, as in the sidecar's default listen address.
pub const DEFAULT_P2P_PORT: u16 = 4001;
/// Pod annotation holding the sidecar's libp2p peer id (`12D3KooW...`, base58), which the
/// operator needs to build a bootstrap multiaddr (`.../p2p/<peer id>`) for the pod.
pub const PEER_ID_ANNOTATION: &str = "gossip.openmatch.io/peer-id";
/// Condition type: the network's configuration is applied and has bootstrap peers.
pub const CONDITION_READY: &str = "Ready";
/// Condition type: the network works but not fully (some selected pods are not usable).
pub const CONDITION_DEGRADED: &str = "Degraded";
/// Key of the rendered configuration file in the ConfigMap.
pub const CONFIG_KEY: &str = "config.yaml";

/// Desired state of one gossip network: which pods run its sidecars and how they are
/// configured. See the module documentation for an example.
// clippy reads the two `type_ = "string"` printer columns as a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "gossip.openmatch.io",
    version = "v1alpha1",
    kind = "GossipNetwork",
    plural = "gossipnetworks",
    singular = "gossipnetwork",
    shortname = "gn",
    namespaced,
    status = "GossipNetworkStatus",
    derive = "PartialEq",
    doc = "A network of openmatch-gossip sidecars: its markets, the engine pods that run the sidecars, \
           and the gossip settings the operator renders into their configuration (ConfigMap \
           `<name>-gossip-config`) and a headless Service (`<name>-gossip`).",
    printcolumn(name = "Markets", type_ = "string", json_path = ".spec.markets", description = "Markets traded"),
    printcolumn(
        name = "Ready Peers",
        type_ = "integer",
        json_path = ".status.readyPeers",
        description = "Ready selected pods in the bootstrap list"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Ready condition"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct GossipNetworkSpec {
    /// Network name `N` in the topic names `openmatch/N/...` (a DNS label, at most 63
    /// characters). Default: the resource's `metadata.name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub network: Option<String>,

    /// Markets traded on this network, e.g. `BTC-USDT`: 1 to 256 unique names matching
    /// `^[A-Z0-9]+(-[A-Z0-9]+)*$`, at most 32 characters each. Each market gets its
    /// `orders`, `batches` and `results` topics.
    #[schemars(
        length(min = 1, max = 256),
        inner(length(min = 1, max = 32), regex(pattern = r"^[A-Z0-9]+(-[A-Z0-9]+)*$"))
    )]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub markets: Vec<String>,

    /// Selects the engine pods (in this namespace) that run the sidecars. `matchLabels` is
    /// required and non-empty because the headless Service selects pods by it; optional
    /// `matchExpressions` further narrow the pods used as bootstrap peers.
    #[schemars(schema_with = "pod_selector_schema")]
    pub pod_selector: LabelSelector,

    /// TCP port the sidecars' libp2p listens on (all interfaces) and the headless Service
    /// exposes, 1–65535. Default 4001.
    #[serde(default = "default_p2p_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub p2p_port: u16,

    /// Static bootstrap peers, dialled in addition to the selected pods: libp2p multiaddrs
    /// ending in `/p2p/<peer id>`, e.g. `/dns4/seed.example/tcp/4001/p2p/12D3KooW...`; at
    /// most 64, unique.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 512), regex(pattern = r"^/.+/p2p/[1-9A-HJ-NP-Za-km-z]+$")))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub bootstrap_peers: Vec<String>,

    /// GossipSub mesh parameters; omitted fields keep the sidecar's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gossipsub: Option<GossipsubSpec>,

    /// Message size cap, seen-cache size and per-peer rate limit; omitted fields keep the
    /// sidecar's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsSpec>,

    /// Epoch timing and quorum; omitted fields keep the sidecar's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consensus: Option<ConsensusSpec>,

    /// Peer reputation thresholds; omitted fields keep the sidecar's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reputation: Option<ReputationSpec>,
}

impl GossipNetworkSpec {
    /// A spec trading `markets` on the pods labelled `match_labels` (no match
    /// expressions); every other field at its default: p2p port 4001, no static bootstrap
    /// peers, the sidecar's defaults for the rest.
    pub fn new<M, K, V>(markets: impl IntoIterator<Item = M>, match_labels: impl IntoIterator<Item = (K, V)>) -> Self
    where
        M: Into<String>,
        K: Into<String>,
        V: Into<String>,
    {
        GossipNetworkSpec {
            network: None,
            markets: markets.into_iter().map(Into::into).collect(),
            pod_selector: LabelSelector {
                match_labels: Some(match_labels.into_iter().map(|(k, v)| (k.into(), v.into())).collect()),
                match_expressions: None,
            },
            p2p_port: DEFAULT_P2P_PORT,
            bootstrap_peers: Vec::new(),
            gossipsub: None,
            limits: None,
            consensus: None,
            reputation: None,
        }
    }
}

fn default_p2p_port() -> u16 {
    DEFAULT_P2P_PORT
}

/// `podSelector`: a standard `LabelSelector` whose `matchLabels` must be present and
/// non-empty (`required` + `minProperties: 1`, both allowed in structural schemas).
fn pod_selector_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = generator.subschema_for::<LabelSelector>();
    if let Some(obj) = schema.as_object_mut() {
        obj.insert("required".into(), serde_json::json!(["matchLabels"]));
        if let Some(labels) = obj.get_mut("properties").and_then(|p| p.get_mut("matchLabels"))
            && let Some(labels) = labels.as_object_mut()
        {
            labels.insert("minProperties".into(), serde_json::json!(1));
        }
    }
    schema
}

/// GossipSub mesh parameters (libp2p GossipSub v1.1: D, D_lo, D_hi, heartbeat). The
/// operator checks `meshNLow <= meshN <= meshNHigh` on the merged values.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GossipsubSpec {
    /// D: target mesh peers per topic, 1–100. Default 6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub mesh_n: Option<u32>,
    /// D_lo: fewer mesh peers than this makes the heartbeat graft more, 1–100. Default 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub mesh_n_low: Option<u32>,
    /// D_hi: more mesh peers than this makes the heartbeat prune, 1–200. Default 12.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 200))]
    pub mesh_n_high: Option<u32>,
    /// Heartbeat interval, ms, 50–60000. Default 700.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 50, max = 60000))]
    pub heartbeat_ms: Option<u32>,
}

/// Protection limits on every inbound gossip message.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LimitsSpec {
    /// Largest gossip message accepted or published, bytes, 1024–16777216 (16 MiB).
    /// Default 1048576 (1 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024, max = 16777216))]
    pub max_message_bytes: Option<u32>,
    /// Largest freeze proof per order, bytes, 0–16776704; must be at least 512 below
    /// `maxMessageBytes`. Default 1024.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 16776704))]
    pub max_freeze_proof_bytes: Option<u32>,
    /// Entries in the SHA-256 LRU seen-cache (dedup), 16–10000000. Default 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 16, max = 10000000))]
    pub dedup_capacity: Option<u32>,
    /// Per-peer token bucket on inbound gossip messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
}

/// A per-peer token bucket: `messagesPerSecond` sustained, `burst` at once.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitSpec {
    /// Sustained gossip messages/s from one peer, 1–1000000. Default 2000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub messages_per_second: Option<u32>,
    /// Bucket size, messages, 1–10000000. Default 4000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000000))]
    pub burst: Option<u32>,
}

/// Epoch timing and quorum (DESIGN §4). Cross-field rules (`sealTimeoutMs <=
/// repairWindowMs`, `graceMs` under 10 epochs) are checked by the operator.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsensusSpec {
    /// Who closes epochs: `clock` (every node on its clock) or `engine` (`SealBatch`).
    /// Default `clock`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealing: Option<SealingMode>,
    /// Epoch length, ms, 10–3600000. Default 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 3600000))]
    pub epoch_ms: Option<u32>,
    /// Wait after an epoch ends before sealing, ms, 0–36000000 and under 10 epochs; must
    /// exceed the propagation delay. Default 200.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 36000000))]
    pub grace_ms: Option<u32>,
    /// Seals that must agree (this node included), 0–1000; 0 = a strict majority of the
    /// live members. Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 1000))]
    pub quorum: Option<u32>,
    /// Wait for every live peer's seal before deciding by quorum, ms, 1–3600000.
    /// Default 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600000))]
    pub seal_timeout_ms: Option<u32>,
    /// Time for repair before a batch is disputed, ms, 1–3600000. Default 5000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600000))]
    pub repair_window_ms: Option<u32>,
    /// Wait for peers' results, ms, 1–3600000. Default 5000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600000))]
    pub result_timeout_ms: Option<u32>,
}

/// Peer reputation: penalties (points), ban threshold and ban length (DESIGN §5).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReputationSpec {
    /// Points lost for a minority batch or result hash, 0–1000000. Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1000000.0))]
    pub minority_penalty: Option<f64>,
    /// Points lost for an invalid gossip message, 0–1000000. Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1000000.0))]
    pub invalid_message_penalty: Option<f64>,
    /// Score at or below which a peer is banned; negative, at least -1000000000.
    /// Default -25.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = -1000000000.0, max = 0.0))]
    pub ban_threshold: Option<f64>,
    /// Ban length, ms, 1000–86400000. Default 60000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1000, max = 86400000))]
    pub ban_ms: Option<u32>,
    /// Points restored per minute towards 0, 0–1000000. Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1000000.0))]
    pub recovery_per_minute: Option<f64>,
}

/// Observed state, written by the operator (status subresource).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GossipNetworkStatus {
    /// `metadata.generation` of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` and `Degraded` conditions (Kubernetes API conventions), a list keyed by
    /// `type` so that server-side apply merges entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Selected pods that are ready and in the bootstrap list.
    #[serde(default)]
    pub ready_peers: i32,
    /// The bootstrap multiaddrs in the rendered configuration (static ones first, then the
    /// ready selected pods').
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bootstrap_peers: Vec<String>,
    /// `sha256:<hex>` of the rendered configuration file, also on the ConfigMap as the
    /// annotation `gossip.openmatch.io/config-hash`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    /// Name of the ConfigMap holding the configuration (key `config.yaml`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<String>,
}

/// A spec the schema accepted but that cannot be rendered into a valid sidecar
/// configuration. `field` is the path in the resource, e.g. `spec.gossipsub.meshN`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SpecError {
    /// Path of the offending field, e.g. `spec.limits.rateLimit.burst`.
    pub field: String,
    /// What is wrong and what is allowed.
    pub reason: String,
}

impl SpecError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { field: field.into(), reason: reason.into() }
    }
}

/// Maps a field of the sidecar configuration (as named by [`ConfigError::Invalid`]) to the
/// spec field that sets it. `static_peers` is how many rendered bootstrap peers come from
/// `spec.bootstrapPeers` (they are first).
fn spec_field(config_field: &str, static_peers: usize) -> String {
    if config_field == "network" {
        return "spec.network".into();
    }
    if config_field == "p2p.listenAddrs" {
        return "spec.p2pPort".into();
    }
    if let Some(rest) = config_field.strip_prefix("p2p.bootstrapPeers[") {
        let index = rest.trim_end_matches(']').parse::<usize>().unwrap_or(usize::MAX);
        return if index < static_peers {
            format!("spec.bootstrapPeers[{index}]")
        } else {
            "status.bootstrapPeers (a selected pod's address)".into()
        };
    }
    // Same group and key names in the spec as in the sidecar configuration.
    format!("spec.{config_field}")
}

/// Checks that `addr` is a multiaddr ending in `/p2p/<peer id>`, the form the sidecar's
/// bootstrap parser accepts.
pub fn check_bootstrap_addr(addr: &str) -> Result<(), String> {
    let parsed: multiaddr::Multiaddr = addr.parse().map_err(|e| format!("{addr:?} is not a multiaddr: {e}"))?;
    match parsed.iter().last() {
        Some(multiaddr::Protocol::P2p(_)) => Ok(()),
        _ => Err(format!("{addr:?} must end in /p2p/<peer id>")),
    }
}

/// Checks that `id` is a libp2p peer id in its base58 text form (`12D3KooW…` for an
/// Ed25519 key): a multihash, as `/p2p/<id>` takes it.
pub fn check_peer_id(id: &str) -> Result<(), String> {
    match format!("/p2p/{id}").parse::<multiaddr::Multiaddr>() {
        Ok(_) if !id.is_empty() && !id.contains('/') => Ok(()),
        _ => Err(format!("{id:?} is not a peer id")),
    }
}

impl GossipNetwork {
    /// The topic network name: `spec.network`, else `metadata.name`.
    pub fn network_name(&self) -> String {
        self.spec.network.clone().unwrap_or_else(|| self.name_any())
    }

    /// Name of the ConfigMap holding the rendered configuration: `<name>-gossip-config`.
    pub fn config_map_name(&self) -> String {
        format!("{}-gossip-config", self.name_any())
    }

    /// Name of the headless Service for peer DNS: `<name>-gossip`.
    pub fn service_name(&self) -> String {
        format!("{}-gossip", self.name_any())
    }

    /// Renders the sidecar configuration from the spec, the live bootstrap peers (the
    /// ready selected pods' multiaddrs, each ending in `/p2p/<peer id>`) and the number of
    /// `members` (the selected pods, ready or not, plus the static bootstrap peers). Pure:
    /// the same inputs give the same configuration; the order of `live_peers` is kept.
    ///
    /// Bootstrap peers are `spec.bootstrapPeers` followed by `live_peers`, duplicates
    /// removed. `consensus.members` is `members`, raised to `spec.consensus.quorum` if
    /// that is larger (0 leaves it 0: the sidecars count the members they know). So a
    /// sidecar that starts before its peers are ready (or known) waits for a quorum of the
    /// selected pods instead of deciding batches alone. The listen address is
    /// `/ip4/0.0.0.0/tcp/<p2pPort>`. Fields the spec omits keep
    /// [`SidecarConfig::default`]'s values.
    ///
    /// Errors: a [`SpecError`] naming the spec field when the result fails
    /// [`SidecarConfig::validate`] (cross-field rules the schema cannot express), when a
    /// static bootstrap peer is not a multiaddr ending in `/p2p/<peer id>`, or when the
    /// network name defaults to a `metadata.name` that is not a DNS label.
    pub fn render(&self, live_peers: &[String], members: u32) -> Result<SidecarConfig, SpecError> {
        let spec = &self.spec;
        let mut config = SidecarConfig { network: self.network_name(), ..SidecarConfig::default() };
        if spec.network.is_none() && !is_valid_network(&config.network) {
            return Err(SpecError::new(
                "metadata.name",
                format!("{:?} is not a DNS label usable as the network name; set spec.network", config.network),
            ));
        }
        config.markets = spec.markets.clone();
        config.p2p.listen_addrs = vec![format!("/ip4/0.0.0.0/tcp/{}", spec.p2p_port)];
        if spec.p2p_port == 0 {
            return Err(SpecError::new("spec.p2pPort", "must be between 1 and 65535"));
        }
        for (i, addr) in spec.bootstrap_peers.iter().enumerate() {
            check_bootstrap_addr(addr).map_err(|reason| SpecError::new(format!("spec.bootstrapPeers[{i}]"), reason))?;
        }
        let mut peers: Vec<String> = Vec::with_capacity(spec.bootstrap_peers.len() + live_peers.len());
        for addr in spec.bootstrap_peers.iter().chain(live_peers) {
            if !peers.contains(addr) {
                peers.push(addr.clone());
            }
        }
        config.p2p.bootstrap_peers = peers;

        if let Some(g) = &spec.gossipsub {
            let c = &mut config.gossipsub;
            set(&mut c.mesh_n, g.mesh_n);
            set(&mut c.mesh_n_low, g.mesh_n_low);
            set(&mut c.mesh_n_high, g.mesh_n_high);
            set(&mut c.heartbeat_ms, g.heartbeat_ms);
        }
        if let Some(l) = &spec.limits {
            let c = &mut config.limits;
            set(&mut c.max_message_bytes, l.max_message_bytes);
            set(&mut c.max_freeze_proof_bytes, l.max_freeze_proof_bytes);
            set(&mut c.dedup_capacity, l.dedup_capacity);
            if let Some(r) = &l.rate_limit {
                set(&mut c.rate_limit.messages_per_second, r.messages_per_second);
                set(&mut c.rate_limit.burst, r.burst);
            }
        }
        if let Some(s) = &spec.consensus {
            let c = &mut config.consensus;
            set(&mut c.sealing, s.sealing);
            set(&mut c.epoch_ms, s.epoch_ms);
            set(&mut c.grace_ms, s.grace_ms);
            set(&mut c.quorum, s.quorum);
            set(&mut c.seal_timeout_ms, s.seal_timeout_ms);
            set(&mut c.repair_window_ms, s.repair_window_ms);
            set(&mut c.result_timeout_ms, s.result_timeout_ms);
        }
        if members > 0 {
            config.consensus.members = members.max(config.consensus.quorum);
        }
        if let Some(r) = &spec.reputation {
            let c = &mut config.reputation;
            set(&mut c.minority_penalty, r.minority_penalty);
            set(&mut c.invalid_message_penalty, r.invalid_message_penalty);
            set(&mut c.ban_threshold, r.ban_threshold);
            set(&mut c.ban_ms, r.ban_ms);
            set(&mut c.recovery_per_minute, r.recovery_per_minute);
        }

        config.validate().map_err(|e| match e {
            ConfigError::Invalid { field, reason } => {
                SpecError::new(spec_field(&field, spec.bootstrap_peers.len()), reason)
            }
            ConfigError::Yaml(reason) => SpecError::new("spec", reason),
        })?;
        Ok(config)
    }
}

/// Writes whole-number `minimum`/`maximum` bounds as integers (schemars emits `10.0`), so
/// that `kubectl explain` and readers see `minimum: 10`. Same value to the API server.
fn integral_bounds(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if (key == "minimum" || key == "maximum")
                    && let Some(f) = v.as_f64()
                    && f.fract() == 0.0
                    && f.abs() < 1e15
                {
                    *v = serde_json::Value::from(f as i64);
                } else {
                    integral_bounds(v);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(integral_bounds),
        _ => {}
    }
}

fn set<T>(target: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *target = v;
    }
}

/// `sha256:<64 hex digits>` of `text` (the rendered configuration file).
pub fn config_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The CRD manifest as YAML, with a header saying how it was generated. This is what
/// `crds/gossipnetwork.yaml` and `charts/openmatch-gossip/crds/gossipnetwork.yaml` hold;
/// `openmatch-gossip-operator crdgen` prints it.
pub fn crd_yaml() -> String {
    let crd = GossipNetwork::crd();
    // Through serde_json::Value so that maps come out with sorted keys (stable output).
    let mut value: serde_json::Value = serde_json::to_value(&crd).expect("CRD serialises to JSON");
    integral_bounds(&mut value);
    let sorted: BTreeMap<String, serde_json::Value> =
        serde_json::from_value(value).expect("CRD serialises to a JSON object");
    let options = serde_saphyr::SerializerOptions { prefer_block_scalars: false, ..Default::default() };
    let body = serde_saphyr::to_string_with_options(&sorted, options).expect("CRD serialises to YAML");
    format!(
        "# GENERATED by `openmatch-gossip-operator crdgen` from crds/src/gossip_network.rs; do not edit.\n\
         # Regenerate: cargo run -p openmatch-gossip-operator -- crdgen --write\n\
         {body}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER_A: &str = "12D3KooWK99VoVxNE7XzyBwXEzW7xhK7Gpv85r9F3V3fyKSUKPH5";

    fn network(spec: GossipNetworkSpec) -> GossipNetwork {
        let mut gn = GossipNetwork::new("prod", spec);
        gn.metadata.namespace = Some("trading".into());
        gn
    }

    fn spec(markets: &[&str]) -> GossipNetworkSpec {
        GossipNetworkSpec::new(markets.iter().copied(), [("app", "engine")])
    }

    #[test]
    fn omitted_fields_keep_sidecar_defaults() {
        let config = network(spec(&["BTC-USDT"])).render(&[], 0).unwrap();
        let expected =
            SidecarConfig { network: "prod".into(), markets: vec!["BTC-USDT".into()], ..SidecarConfig::default() };
        assert_eq!(config, expected);
    }

    #[test]
    fn every_spec_field_reaches_the_config() {
        let mut s = spec(&["BTC-USDT", "ETH-USDT"]);
        s.network = Some("prod-eu".into());
        s.p2p_port = 4101;
        s.gossipsub = Some(GossipsubSpec {
            mesh_n: Some(8),
            mesh_n_low: Some(5),
            mesh_n_high: Some(16),
            heartbeat_ms: Some(500),
        });
        s.limits = Some(LimitsSpec {
            max_message_bytes: Some(2 << 20),
            max_freeze_proof_bytes: Some(2048),
            dedup_capacity: Some(50_000),
            rate_limit: Some(RateLimitSpec { messages_per_second: Some(300), burst: Some(600) }),
        });
        s.consensus = Some(ConsensusSpec {
            sealing: Some(SealingMode::Engine),
            epoch_ms: Some(2000),
            grace_ms: Some(400),
            quorum: Some(3),
            seal_timeout_ms: Some(1500),
            repair_window_ms: Some(6000),
            result_timeout_ms: Some(7000),
        });
        s.reputation = Some(ReputationSpec {
            minority_penalty: Some(20.0),
            invalid_message_penalty: Some(7.0),
            ban_threshold: Some(-50.0),
            ban_ms: Some(120_000),
            recovery_per_minute: Some(2.5),
        });
        let c = network(s).render(&[], 0).unwrap();
        assert_eq!(c.network, "prod-eu");
        assert_eq!(c.p2p.listen_addrs, vec!["/ip4/0.0.0.0/tcp/4101"]);
        assert_eq!((c.gossipsub.mesh_n, c.gossipsub.mesh_n_low, c.gossipsub.mesh_n_high), (8, 5, 16));
        assert_eq!(c.gossipsub.heartbeat_ms, 500);
        assert_eq!(c.limits.max_message_bytes, 2 << 20);
        assert_eq!(c.limits.max_freeze_proof_bytes, 2048);
        assert_eq!(c.limits.dedup_capacity, 50_000);
        assert_eq!((c.limits.rate_limit.messages_per_second, c.limits.rate_limit.burst), (300, 600));
        assert_eq!(c.consensus.sealing, SealingMode::Engine);
        assert_eq!((c.consensus.epoch_ms, c.consensus.grace_ms, c.consensus.quorum), (2000, 400, 3));
        assert_eq!(
            (c.consensus.seal_timeout_ms, c.consensus.repair_window_ms, c.consensus.result_timeout_ms),
            (1500, 6000, 7000)
        );
        assert_eq!(c.reputation.minority_penalty, 20.0);
        assert_eq!(c.reputation.invalid_message_penalty, 7.0);
        assert_eq!(c.reputation.ban_threshold, -50.0);
        assert_eq!(c.reputation.ban_ms, 120_000);
        assert_eq!(c.reputation.recovery_per_minute, 2.5);
        // Fields the spec does not cover keep their defaults.
        assert_eq!(c.publish, SidecarConfig::default().publish);
        assert_eq!(c.heartbeat, SidecarConfig::default().heartbeat);
    }

    #[test]
    fn static_peers_come_first_and_duplicates_are_dropped() {
        let seed = format!("/dns4/seed.example/tcp/4001/p2p/{PEER_A}");
        let pod = format!("/ip4/10.0.0.7/tcp/4001/p2p/{PEER_A}");
        let mut s = spec(&["BTC-USDT"]);
        s.bootstrap_peers = vec![seed.clone()];
        let c = network(s).render(&[pod.clone(), seed.clone(), pod.clone()], 0).unwrap();
        assert_eq!(c.p2p.bootstrap_peers, vec![seed, pod]);
    }

    #[test]
    fn members_are_rendered_and_never_below_the_quorum() {
        let c = network(spec(&["BTC-USDT"])).render(&[], 3).unwrap();
        assert_eq!((c.consensus.members, c.consensus.quorum), (3, 0));
        assert_eq!(network(spec(&["BTC-USDT"])).render(&[], 0).unwrap().consensus.members, 0);
        let mut s = spec(&["BTC-USDT"]);
        s.consensus = Some(ConsensusSpec { quorum: Some(3), ..Default::default() });
        assert_eq!(network(s.clone()).render(&[], 2).unwrap().consensus.members, 3, "raised to the quorum");
        // A quorum that is not a majority of the selected pods is the spec's error.
        let err = network(s).render(&[], 7).unwrap_err();
        assert_eq!(err.field, "spec.consensus.quorum");
    }

    /// The operator's rendering is the exact format the sidecar parses: one type, written
    /// with `to_yaml`, read back with `from_yaml` (which validates).
    #[test]
    fn rendered_yaml_is_what_the_sidecar_parses() {
        let mut s = spec(&["BTC-USDT", "ETH-USDT"]);
        s.limits = Some(LimitsSpec {
            rate_limit: Some(RateLimitSpec { messages_per_second: Some(10), burst: None }),
            ..Default::default()
        });
        let live = vec![format!("/ip4/10.0.0.7/tcp/4001/p2p/{PEER_A}"), format!("/ip6/fd00::7/tcp/4001/p2p/{PEER_A}")];
        let config = network(s).render(&live, 2).unwrap();
        let text = config.to_yaml();
        let parsed = SidecarConfig::from_yaml(&text).unwrap();
        parsed.validate().unwrap();
        assert_eq!(parsed, config);
        assert_eq!(parsed.p2p.bootstrap_peers, live);
        assert_eq!(parsed.limits.rate_limit.messages_per_second, 10);
    }

    #[test]
    fn cross_field_errors_name_the_spec_field() {
        type Edit = Box<dyn Fn(&mut GossipNetworkSpec)>;
        let cases: Vec<(Edit, &str)> = vec![
            (
                Box::new(|s| s.gossipsub = Some(GossipsubSpec { mesh_n: Some(20), ..Default::default() })),
                "spec.gossipsub.meshN",
            ),
            (
                Box::new(|s| {
                    s.consensus = Some(ConsensusSpec {
                        seal_timeout_ms: Some(9000),
                        repair_window_ms: Some(5000),
                        ..Default::default()
                    })
                }),
                "spec.consensus.sealTimeoutMs",
            ),
            (
                Box::new(|s| {
                    s.consensus = Some(ConsensusSpec { epoch_ms: Some(10), grace_ms: Some(100), ..Default::default() })
                }),
                "spec.consensus.graceMs",
            ),
            (
                Box::new(|s| {
                    s.limits = Some(LimitsSpec {
                        max_message_bytes: Some(1024),
                        max_freeze_proof_bytes: Some(1024),
                        ..Default::default()
                    })
                }),
                "spec.limits.maxFreezeProofBytes",
            ),
            (
                Box::new(|s| s.reputation = Some(ReputationSpec { ban_threshold: Some(0.0), ..Default::default() })),
                "spec.reputation.banThreshold",
            ),
            (Box::new(|s| s.markets = vec!["BTC-USDT".into(), "BTC-USDT".into()]), "spec.markets[1]"),
            (Box::new(|s| s.markets = vec!["btc".into()]), "spec.markets[0]"),
            (Box::new(|s| s.network = Some("Bad_Name".into())), "spec.network"),
            (Box::new(|s| s.p2p_port = 0), "spec.p2pPort"),
            (Box::new(|s| s.bootstrap_peers = vec!["/ip4/10.0.0.1/tcp/4001".into()]), "spec.bootstrapPeers[0]"),
            (Box::new(|s| s.bootstrap_peers = vec!["not a multiaddr".into()]), "spec.bootstrapPeers[0]"),
        ];
        for (edit, field) in cases {
            let mut s = spec(&["BTC-USDT"]);
            edit(&mut s);
            let err = network(s).render(&[], 0).expect_err(field);
            assert_eq!(err.field, field, "{err}");
            assert!(err.to_string().starts_with(field), "{err}");
        }
    }

    #[test]
    fn metadata_name_that_is_not_a_dns_label_needs_spec_network() {
        let mut gn = GossipNetwork::new("prod.eu", spec(&["BTC-USDT"]));
        assert_eq!(gn.render(&[], 0).unwrap_err().field, "metadata.name");
        gn.spec.network = Some("prod-eu".into());
        assert_eq!(gn.render(&[], 0).unwrap().network, "prod-eu");
    }

    #[test]
    fn child_names_and_hash() {
        let gn = network(spec(&["BTC-USDT"]));
        assert_eq!(gn.config_map_name(), "prod-gossip-config");
        assert_eq!(gn.service_name(), "prod-gossip");
        let h = config_hash("markets: [BTC-USDT]\n");
        assert!(h.starts_with("sha256:") && h.len() == 7 + 64, "{h}");
        assert_eq!(h, config_hash("markets: [BTC-USDT]\n"));
        assert_ne!(h, config_hash("markets: [ETH-USDT]\n"));
        // SHA-256 of the empty string (FIPS 180-4 test vector).
        assert_eq!(config_hash(""), "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }

    #[test]
    fn spec_deserializes_with_defaults_and_camel_case() {
        let s: GossipNetworkSpec = serde_json::from_value(serde_json::json!({
            "markets": ["BTC-USDT"],
            "podSelector": {"matchLabels": {"app": "engine"}},
            "limits": {"rateLimit": {"messagesPerSecond": 5}}
        }))
        .unwrap();
        assert_eq!(s.p2p_port, DEFAULT_P2P_PORT);
        assert_eq!(s.limits.unwrap().rate_limit.unwrap().messages_per_second, Some(5));
    }

    #[test]
    fn crd_identity() {
        let crd = GossipNetwork::crd();
        assert_eq!(crd.metadata.name.as_deref(), Some("gossipnetworks.gossip.openmatch.io"));
        assert_eq!(crd.spec.group, GROUP);
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.short_names, Some(vec!["gn".to_owned()]));
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, VERSION);
        assert!(v.subresources.as_ref().unwrap().status.is_some());
        let columns: Vec<&str> =
            v.additional_printer_columns.as_ref().unwrap().iter().map(|c| c.name.as_str()).collect();
        assert_eq!(columns, ["Markets", "Ready Peers", "Ready", "Age"]);
        let yaml = crd_yaml();
        assert!(yaml.contains("x-kubernetes-list-type: set"));
        assert!(yaml.contains("x-kubernetes-list-map-keys:"));
        assert!(!yaml.contains("uniqueItems"));
    }

    #[test]
    fn peer_ids_are_checked() {
        assert_eq!(check_peer_id("12D3KooWK99VoVxNE7XzyBwXEzW7xhK7Gpv85r9F3V3fyKSUKPH5"), Ok(()));
        for bad in ["", "not-a-peer-id", "12D3KooWK99VoVxNE7XzyBwXEzW7xhK7Gpv85r9F3V3fyKSUKPH5/tcp/1"] {
            assert_eq!(check_peer_id(bad), Err(format!("{bad:?} is not a peer id")));
        }
    }
}
