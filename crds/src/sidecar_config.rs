//! The sidecar configuration file (`openmatch-gossip node --config FILE`).
//!
//! YAML, keys in camelCase like every Kubernetes object. Every field has a default, so an
//! empty file is a valid single-node configuration; unknown keys are rejected so that a typo
//! is an error rather than a silently ignored setting. [`SidecarConfig::validate`] checks
//! ranges and cross-field rules and names the offending field in its error, e.g.
//! `limits.rateLimit.messagesPerSecond: must be at least 1`.
//!
//! ```yaml
//! network: openmatch                 # N in the topic names openmatch/N/...
//! markets: [BTC-USDT, ETH-USDT]      # one orders/batches/results topic triple each
//! p2p:
//!   listenAddrs: ["/ip4/0.0.0.0/tcp/4001"]
//!   bootstrapPeers: ["/dns4/engine-0.gossip/tcp/4001/p2p/12D3KooW..."]
//!   mdns: false
//!   kademlia: true
//! gossipsub: { meshN: 6, meshNLow: 4, meshNHigh: 12, heartbeatMs: 700 }
//! limits:
//!   maxMessageBytes: 1048576
//!   rateLimit: { messagesPerSecond: 2000, burst: 4000 }
//!   dedupCapacity: 10000
//! ```

use std::collections::HashSet;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Largest message cap a configuration may set: 16 MiB (bytes). GossipSub itself has no
/// hard limit, but larger messages stall a Yamux stream for too long.
pub const MAX_MESSAGE_BYTES_LIMIT: u32 = 16 * 1024 * 1024;

/// An error in a configuration file: it could not be read, is not valid YAML for this
/// schema, or a value is out of range.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The YAML does not match the schema (wrong type, unknown key, bad syntax). The message
    /// comes from the YAML parser and carries the line and column.
    #[error("invalid configuration YAML: {0}")]
    Yaml(String),
    /// A field holds a value outside its allowed range; `field` is its dotted path.
    #[error("{field}: {reason}")]
    Invalid {
        /// Dotted camelCase path of the field, e.g. `limits.maxMessageBytes`.
        field: String,
        /// What is wrong and what is allowed.
        reason: String,
    },
}

fn invalid(field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field: field.to_owned(), reason: reason.into() }
}

/// The whole sidecar configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct SidecarConfig {
    /// Network name `N` in the topic names `openmatch/N/...`; nodes on different networks do
    /// not exchange orders. Pattern `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters
    /// (a Kubernetes name). Default `openmatch`.
    pub network: String,
    /// Markets this node trades, e.g. `BTC-USDT`. Pattern `[A-Z0-9]+(-[A-Z0-9]+)*`, unique,
    /// at most 256. Default: none.
    pub markets: Vec<String>,
    /// libp2p transport and discovery.
    pub p2p: P2pConfig,
    /// GossipSub mesh parameters.
    pub gossipsub: GossipsubConfig,
    /// Protection limits applied to every inbound gossip message.
    pub limits: LimitsConfig,
    /// Outbound packing of orders into gossip messages.
    pub publish: PublishConfig,
    /// `PeerStatus` heartbeats on the control topic.
    pub heartbeat: HeartbeatConfig,
    /// Epochs, batch sealing and the comparison of batch and result hashes.
    pub consensus: ConsensusConfig,
    /// Peer reputation: penalties and bans.
    pub reputation: ReputationConfig,
}

impl Default for SidecarConfig {
    fn default() -> Self {
        Self {
            network: "openmatch".to_owned(),
            markets: Vec::new(),
            p2p: P2pConfig::default(),
            gossipsub: GossipsubConfig::default(),
            limits: LimitsConfig::default(),
            publish: PublishConfig::default(),
            heartbeat: HeartbeatConfig::default(),
            consensus: ConsensusConfig::default(),
            reputation: ReputationConfig::default(),
        }
    }
}

/// libp2p transport and peer discovery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct P2pConfig {
    /// Multiaddrs to listen on, e.g. `/ip4/0.0.0.0/tcp/4001`. Default
    /// `/ip4/0.0.0.0/tcp/4001`.
    pub listen_addrs: Vec<String>,
    /// Multiaddrs of peers to dial at start and to seed Kademlia with, each ending in
    /// `/p2p/<peer id>` (the peer id is what makes the Noise handshake authenticate them).
    pub bootstrap_peers: Vec<String>,
    /// Discover peers on the local link with mDNS. Off by default: multicast is usually
    /// blocked in clusters.
    pub mdns: bool,
    /// Run Kademlia peer discovery, bootstrapped from `bootstrapPeers`. Default on.
    pub kademlia: bool,
}

impl Default for P2pConfig {
    fn default() -> Self {
        Self {
            listen_addrs: vec!["/ip4/0.0.0.0/tcp/4001".to_owned()],
            bootstrap_peers: Vec::new(),
            mdns: false,
            kademlia: true,
        }
    }
}

/// GossipSub mesh parameters (libp2p GossipSub v1.1 spec names: D, D_lo, D_hi, heartbeat).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct GossipsubConfig {
    /// D: target number of mesh peers per topic. Default 6.
    pub mesh_n: u32,
    /// D_lo: below this many mesh peers the heartbeat grafts more. Default 4.
    pub mesh_n_low: u32,
    /// D_hi: above this many mesh peers the heartbeat prunes. Default 12.
    pub mesh_n_high: u32,
    /// Heartbeat interval in ms (mesh maintenance, gossip emission). Default 700 ms.
    pub heartbeat_ms: u32,
}

impl Default for GossipsubConfig {
    fn default() -> Self {
        Self { mesh_n: 6, mesh_n_low: 4, mesh_n_high: 12, heartbeat_ms: 700 }
    }
}

/// Limits applied to every inbound gossip message before it is forwarded or delivered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest gossip message accepted or published, bytes. Default 1 MiB (1,048,576).
    pub max_message_bytes: u32,
    /// Per-peer token bucket on inbound gossip messages.
    pub rate_limit: RateLimitConfig,
    /// Entries in the SHA-256 LRU seen-cache of order digests. Default 10,000.
    pub dedup_capacity: u32,
    /// Largest opaque freeze proof accepted per order, bytes. Default 1,024.
    pub max_freeze_proof_bytes: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 1024 * 1024,
            rate_limit: RateLimitConfig::default(),
            dedup_capacity: 10_000,
            max_freeze_proof_bytes: 1024,
        }
    }
}

/// A token bucket (GCRA): `messagesPerSecond` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Sustained gossip messages per second allowed from one peer. Default 2,000 (with
    /// packing of up to `publish.maxOrdersPerMessage` orders per message).
    pub messages_per_second: u32,
    /// Bucket size: messages a peer may send at once after being idle. Default 4,000.
    pub burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self { messages_per_second: 2_000, burst: 4_000 }
    }
}

/// Most orders one gossip message may carry: receivers refuse a message with more before
/// decoding it (docs/PROTOCOL.md §12), so `publish.maxOrdersPerMessage` may not exceed it.
pub const MAX_ORDERS_PER_MESSAGE: u32 = 8_192;

/// How local orders are packed into `OrderGossip` messages.
///
/// Packing is adaptive: whatever the engine has submitted since the last publish goes out
/// at once, up to `maxOrdersPerMessage`; there is no linger, so an idle node publishes a
/// lone order immediately. The node paces its own publishing to the network's per-peer
/// rate limit, so under load orders pack more densely instead of being dropped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PublishConfig {
    /// Most orders in one gossip message, 1 to [`MAX_ORDERS_PER_MESSAGE`]. Default 512.
    pub max_orders_per_message: u32,
    /// Orders accepted from the engine but not yet published, across markets. When full,
    /// the socket API stops reading (push-back to the engine). Default 65,536.
    pub outbox_capacity: u32,
}

impl Default for PublishConfig {
    fn default() -> Self {
        Self { max_orders_per_message: 512, outbox_capacity: 65_536 }
    }
}

/// `PeerStatus` heartbeats on the control topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct HeartbeatConfig {
    /// Interval between this node's `PeerStatus` messages, ms. Default 1,000.
    pub interval_ms: u32,
    /// A peer is live while its last `PeerStatus` is younger than this, ms. Default 5,000.
    pub liveness_window_ms: u32,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        Self { interval_ms: 1_000, liveness_window_ms: 5_000 }
    }
}

/// Who closes an epoch and seals its batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum SealingMode {
    /// Every node seals epoch `e` of every market at `(e + 1) × epochMs + graceMs` on its
    /// wall clock (Unix ms); epoch `e` covers `[e × epochMs, (e + 1) × epochMs)`. Needs
    /// clocks synchronised to well within the grace (NTP/PTP).
    Clock,
    /// The engine seals explicitly (`SealBatch`); orders join the market's current epoch,
    /// which advances when the engine seals it.
    Engine,
}

/// Epochs and consensus (DESIGN §4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ConsensusConfig {
    /// Who closes epochs. Default `clock`.
    pub sealing: SealingMode,
    /// Epoch length, ms. Default 1,000.
    pub epoch_ms: u32,
    /// Wait after an epoch ends before sealing it, ms, so orders in flight arrive.
    /// Default 200.
    pub grace_ms: u32,
    /// Members of the network, this node included: the set whose strict majority is the
    /// quorum. 0 (default) = this node, its bootstrap peers and every peer whose
    /// `PeerStatus` it ever heard (the operator renders the GossipNetwork's selected pods
    /// as bootstrap peers). Reachability never shrinks it: a cut-off node is not a
    /// majority of one.
    pub members: u32,
    /// Seals that decide a batch, this node included. 0 (default) = a strict majority of
    /// the members. Set it only to a majority or more: two smaller quorums could decide
    /// different batches.
    pub quorum: u32,
    /// After sealing, how long to wait for members' seals on gossip before pulling them
    /// (asking each silent live member for its digest set, seal and result), and how often
    /// pulls and adoption requests are repeated, ms. Default 1,000.
    pub seal_timeout_ms: u32,
    /// How long a sealed batch may stay undecided (waiting for members' seals) before the
    /// node reports itself degraded, ms. Default 5,000. Batches are never disputed for
    /// time alone: only when no hash can reach the quorum any more.
    pub repair_window_ms: u32,
    /// From this node's result, how long to wait for peers' results, ms. Default 5,000.
    pub result_timeout_ms: u32,
    /// Finished batches kept for `GetBatch` and late seals, per market. Default 64.
    pub retained_batches: u32,
}

impl Default for ConsensusConfig {
    fn default() -> Self {
        Self {
            sealing: SealingMode::Clock,
            epoch_ms: 1_000,
            grace_ms: 200,
            members: 0,
            quorum: 0,
            seal_timeout_ms: 1_000,
            repair_window_ms: 5_000,
            result_timeout_ms: 5_000,
            retained_batches: 64,
        }
    }
}

/// Peer reputation: scores start at 0, offences subtract, time restores (DESIGN §5). The
/// score is fed to GossipSub as the peer's application score; at or below
/// `banThreshold` the peer is disconnected and blocked for `banMs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ReputationConfig {
    /// Penalty for being in the minority of a batch or result comparison. Default 10.
    pub minority_penalty: f64,
    /// Penalty for an invalid gossip message. Default 5.
    pub invalid_message_penalty: f64,
    /// Score at or below which a peer is banned. Default -25: three minority offences
    /// (-30) within a minute, with room for the recovery in between.
    pub ban_threshold: f64,
    /// Ban length, ms. Default 60,000.
    pub ban_ms: u32,
    /// Points restored per minute towards 0. Default 5.
    pub recovery_per_minute: f64,
}

impl Default for ReputationConfig {
    fn default() -> Self {
        Self {
            minority_penalty: 10.0,
            invalid_message_penalty: 5.0,
            ban_threshold: -25.0,
            ban_ms: 60_000,
            recovery_per_minute: 5.0,
        }
    }
}

/// Whether `s` is a valid market name: `[A-Z0-9]+(-[A-Z0-9]+)*`, 1–32 characters.
pub fn is_valid_market(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.split('-')
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()))
}

/// Whether `s` is a valid network name (a Kubernetes DNS label).
pub fn is_valid_network(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl SidecarConfig {
    /// Parses YAML and validates it. Errors name the line (syntax, type, unknown key) or the
    /// field (range).
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        // An empty document means "all defaults".
        let config: Self = if text.trim().is_empty() {
            Self::default()
        } else {
            serde_saphyr::from_str(text).map_err(|e| ConfigError::Yaml(e.to_string()))?
        };
        config.validate()?;
        Ok(config)
    }

    /// Renders the configuration as YAML (what the operator writes into the ConfigMap).
    pub fn to_yaml(&self) -> String {
        // Plain scalars only: serde-saphyr 0.0.14 folds long strings (> 80 chars, e.g. a
        // bootstrap multiaddr) into `>-` block scalars that, inside a sequence, it emits at
        // an indentation its own parser rejects.
        let options = serde_saphyr::SerializerOptions { prefer_block_scalars: false, ..Default::default() };
        serde_saphyr::to_string_with_options(self, options).expect("SidecarConfig serialises to YAML")
    }

    /// Checks ranges and cross-field rules. Multiaddr syntax is checked by the sidecar,
    /// which owns the libp2p types.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !is_valid_network(&self.network) {
            return Err(invalid("network", format!("{:?} is not a DNS label ([a-z0-9-], at most 63)", self.network)));
        }
        if self.markets.len() > 256 {
            return Err(invalid("markets", "at most 256 markets"));
        }
        let mut seen = HashSet::new();
        for (i, m) in self.markets.iter().enumerate() {
            if !is_valid_market(m) {
                return Err(invalid(
                    &format!("markets[{i}]"),
                    format!("{m:?} is not a market name like BTC-USDT ([A-Z0-9] parts joined by '-')"),
                ));
            }
            if !seen.insert(m) {
                return Err(invalid(&format!("markets[{i}]"), format!("{m:?} is listed twice")));
            }
        }
        if self.p2p.listen_addrs.is_empty() {
            return Err(invalid("p2p.listenAddrs", "at least one listen address is required"));
        }
        let g = &self.gossipsub;
        if g.mesh_n_low == 0 {
            return Err(invalid("gossipsub.meshNLow", "must be at least 1"));
        }
        if !(g.mesh_n_low <= g.mesh_n && g.mesh_n <= g.mesh_n_high) {
            return Err(invalid(
                "gossipsub.meshN",
                format!(
                    "must satisfy meshNLow ({}) <= meshN ({}) <= meshNHigh ({})",
                    g.mesh_n_low, g.mesh_n, g.mesh_n_high
                ),
            ));
        }
        if !(50..=60_000).contains(&g.heartbeat_ms) {
            return Err(invalid("gossipsub.heartbeatMs", "must be between 50 and 60000 ms"));
        }
        let l = &self.limits;
        if !(1024..=MAX_MESSAGE_BYTES_LIMIT).contains(&l.max_message_bytes) {
            return Err(invalid(
                "limits.maxMessageBytes",
                format!("must be between 1024 and {MAX_MESSAGE_BYTES_LIMIT} bytes"),
            ));
        }
        if l.rate_limit.messages_per_second == 0 {
            return Err(invalid("limits.rateLimit.messagesPerSecond", "must be at least 1"));
        }
        if l.rate_limit.burst == 0 {
            return Err(invalid("limits.rateLimit.burst", "must be at least 1"));
        }
        if l.dedup_capacity < 16 {
            return Err(invalid("limits.dedupCapacity", "must be at least 16 entries"));
        }
        if l.max_freeze_proof_bytes.saturating_add(512) > l.max_message_bytes {
            return Err(invalid(
                "limits.maxFreezeProofBytes",
                "must be at least 512 bytes below limits.maxMessageBytes (one order must fit a message)",
            ));
        }
        let p = &self.publish;
        if !(1..=MAX_ORDERS_PER_MESSAGE).contains(&p.max_orders_per_message) {
            return Err(invalid("publish.maxOrdersPerMessage", "must be between 1 and 8192"));
        }
        if p.outbox_capacity < p.max_orders_per_message {
            return Err(invalid("publish.outboxCapacity", "must be at least publish.maxOrdersPerMessage"));
        }
        let c = &self.consensus;
        if !(10..=3_600_000).contains(&c.epoch_ms) {
            return Err(invalid("consensus.epochMs", "must be between 10 and 3600000 ms"));
        }
        if c.grace_ms >= c.epoch_ms.saturating_mul(10) {
            return Err(invalid("consensus.graceMs", "must be shorter than 10 epochs"));
        }
        if c.seal_timeout_ms == 0 || c.seal_timeout_ms > c.repair_window_ms {
            return Err(invalid("consensus.sealTimeoutMs", "must be between 1 ms and consensus.repairWindowMs"));
        }
        if c.result_timeout_ms == 0 {
            return Err(invalid("consensus.resultTimeoutMs", "must be at least 1 ms"));
        }
        if c.members > 0 && c.quorum > c.members {
            return Err(invalid("consensus.quorum", "must not exceed consensus.members"));
        }
        if c.members > 0 && c.quorum > 0 && c.quorum <= c.members / 2 {
            return Err(invalid(
                "consensus.quorum",
                "must be a strict majority of consensus.members (smaller quorums could decide different batches)",
            ));
        }
        if c.retained_batches == 0 {
            return Err(invalid("consensus.retainedBatches", "must be at least 1"));
        }
        let r = &self.reputation;
        for (field, v) in [
            ("reputation.minorityPenalty", r.minority_penalty),
            ("reputation.invalidMessagePenalty", r.invalid_message_penalty),
            ("reputation.recoveryPerMinute", r.recovery_per_minute),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(invalid(field, "must be a finite number >= 0"));
            }
        }
        if !(r.ban_threshold.is_finite() && r.ban_threshold < 0.0) {
            return Err(invalid("reputation.banThreshold", "must be a finite number < 0"));
        }
        let h = &self.heartbeat;
        if !(10..=600_000).contains(&h.interval_ms) {
            return Err(invalid("heartbeat.intervalMs", "must be between 10 and 600000 ms"));
        }
        if h.liveness_window_ms <= h.interval_ms {
            return Err(invalid("heartbeat.livenessWindowMs", "must be longer than heartbeat.intervalMs"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(SidecarConfig::from_yaml("").unwrap(), SidecarConfig::default());
        assert_eq!(SidecarConfig::default().limits.max_message_bytes, 1_048_576);
        assert_eq!(SidecarConfig::default().limits.dedup_capacity, 10_000);
    }

    #[test]
    fn yaml_round_trip_keeps_every_field() {
        let mut c = SidecarConfig {
            network: "prod-eu".into(),
            markets: vec!["BTC-USDT".into(), "ETH-USDT".into()],
            ..Default::default()
        };
        c.p2p.bootstrap_peers = vec![
            "/ip4/10.0.0.1/tcp/4001/p2p/12D3KooWabc".into(),
            // Longer than 80 characters: once emitted as a folded block scalar.
            "/ip4/127.0.0.1/tcp/44587/p2p/12D3KooWEsCYTUJYho9yZ4t7aK4xXFzCfkH4xxxxxxxxxxxxxxxxxxxxxxx".into(),
        ];
        c.limits.rate_limit.burst = 77;
        let back = SidecarConfig::from_yaml(&c.to_yaml()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn partial_file_keeps_other_defaults() {
        let c = SidecarConfig::from_yaml("markets: [BTC-USDT]\nlimits:\n  rateLimit:\n    burst: 10\n").unwrap();
        assert_eq!(c.markets, vec!["BTC-USDT"]);
        assert_eq!(c.limits.rate_limit.burst, 10);
        assert_eq!(c.limits.rate_limit.messages_per_second, 2_000);
    }

    #[test]
    fn unknown_key_is_rejected() {
        let err = SidecarConfig::from_yaml("limits:\n  maxMesageBytes: 10\n").unwrap_err();
        assert!(matches!(err, ConfigError::Yaml(_)), "{err}");
        assert!(err.to_string().contains("maxMesageBytes"), "{err}");
    }

    #[test]
    fn wrong_type_is_rejected() {
        let err = SidecarConfig::from_yaml("limits:\n  maxMessageBytes: lots\n").unwrap_err();
        assert!(matches!(err, ConfigError::Yaml(_)), "{err}");
    }

    #[test]
    fn range_errors_name_the_field() {
        let cases = [
            ("markets: [btc]", "markets[0]"),
            ("markets: [BTC-USDT, BTC-USDT]", "markets[1]"),
            ("network: Bad_Name", "network"),
            ("limits: {maxMessageBytes: 10}", "limits.maxMessageBytes"),
            ("limits: {rateLimit: {messagesPerSecond: 0}}", "limits.rateLimit.messagesPerSecond"),
            ("limits: {rateLimit: {burst: 0}}", "limits.rateLimit.burst"),
            ("limits: {dedupCapacity: 1}", "limits.dedupCapacity"),
            ("gossipsub: {meshN: 20}", "gossipsub.meshN"),
            ("gossipsub: {heartbeatMs: 1}", "gossipsub.heartbeatMs"),
            ("publish: {maxOrdersPerMessage: 0}", "publish.maxOrdersPerMessage"),
            ("heartbeat: {intervalMs: 5000, livenessWindowMs: 100}", "heartbeat.livenessWindowMs"),
            ("p2p: {listenAddrs: []}", "p2p.listenAddrs"),
            ("consensus: {epochMs: 1}", "consensus.epochMs"),
            ("consensus: {sealTimeoutMs: 9000}", "consensus.sealTimeoutMs"),
            ("reputation: {banThreshold: 5}", "reputation.banThreshold"),
            ("reputation: {minorityPenalty: -1}", "reputation.minorityPenalty"),
        ];
        for (yaml, field) in cases {
            match SidecarConfig::from_yaml(yaml) {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field, "{yaml}"),
                other => panic!("{yaml}: expected an error on {field}, got {other:?}"),
            }
        }
    }

    #[test]
    fn market_and_network_names() {
        for ok in ["BTC-USDT", "ETH-USD", "X1", "BTC-USDT-PERP"] {
            assert!(is_valid_market(ok), "{ok}");
        }
        for bad in ["", "btc-usdt", "BTC--USDT", "-BTC", "BTC-", "BTC/USDT", &"A".repeat(33)] {
            assert!(!is_valid_market(bad), "{bad}");
        }
        assert!(is_valid_network("openmatch"));
        assert!(!is_valid_network("open_match"));
    }
}
