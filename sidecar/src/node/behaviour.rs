//! The libp2p swarm: TCP (plus the in-process memory transport, for tests) with Noise and
//! Yamux; GossipSub, Kademlia, mDNS, Identify and Ping.

use std::time::Duration;

use anyhow::Context as _;
use libp2p::core::transport::MemoryTransport;
use libp2p::core::upgrade::Version;
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    StreamProtocol, Swarm, Transport as _, allow_block_list, gossipsub, identify, identity::Keypair, kad, mdns, noise,
    ping, request_response, tcp, yamux,
};
use prometheus_client::registry::Registry;

use crate::config::NodeSettings;

/// Kademlia protocol of openmatch-gossip networks (kept apart from the public IPFS DHT).
pub(super) const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/openmatch/kad/1.0.0");
/// Identify protocol version string.
pub(super) const IDENTIFY_PROTOCOL: &str = "/openmatch/id/1.0.0";

/// Extra bytes GossipSub may carry per RPC beyond the application cap: signature (64),
/// public key, topic, sequence number and protobuf framing. Messages whose payload exceeds
/// the application cap still reach validation (and are rejected and counted there) as long
/// as they are within this slack.
pub const TRANSMIT_SLACK_BYTES: usize = 64 * 1024;

/// The composed behaviour.
#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    /// Banned peers: connections refused while the ban lasts.
    pub blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    /// GossipSub v1.1 with signed messages and application validation.
    pub gossipsub: gossipsub::Behaviour,
    /// Kademlia peer discovery (toggled by `p2p.kademlia`).
    pub kademlia: Toggle<kad::Behaviour<kad::store::MemoryStore>>,
    /// mDNS local discovery (toggled by `p2p.mdns`, off by default).
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    /// Identify: exchanges listen addresses and protocols.
    pub identify: identify::Behaviour,
    /// Ping: liveness of connections.
    pub ping: ping::Behaviour,
    /// Batch repair, asking: digest sets and missing orders ([`crate::repair`]).
    pub repair: request_response::Behaviour<crate::repair::RepairCodec>,
    /// Batch repair, serving, with a bound on each peer's open streams.
    pub repair_server: super::repair_server::RepairServer,
}

/// GossipSub peer scoring: the application score (peer reputation, weight 1) and GossipSub's
/// own behaviour penalty (P₇) count. IP colocation is off, because inside a cluster (and on
/// loopback) many honest sidecars share address ranges. P₇ forgives the first 16 offences:
/// a GRAFT inside a backoff (a market re-added by a reload within its unsubscribe backoff)
/// is one per topic, and the default (0) would graylist an honest node for it.
fn peer_score() -> (gossipsub::PeerScoreParams, gossipsub::PeerScoreThresholds) {
    let params = gossipsub::PeerScoreParams {
        app_specific_weight: 1.0,
        ip_colocation_factor_weight: 0.0,
        behaviour_penalty_threshold: 16.0,
        ..Default::default()
    };
    (params, gossipsub::PeerScoreThresholds::default())
}

/// GossipSub configuration from the node settings.
pub(super) fn gossipsub_config(settings: &NodeSettings) -> anyhow::Result<gossipsub::Config> {
    let g = &settings.config.gossipsub;
    let cap = settings.config.limits.max_message_bytes as usize;
    gossipsub::ConfigBuilder::default()
        .validation_mode(gossipsub::ValidationMode::Strict)
        .validate_messages()
        // Set explicitly so that other implementations can join (docs/PROTOCOL.md §12.3).
        .message_id_fn(crate::wire::gossip_message_id)
        .mesh_n(g.mesh_n as usize)
        .mesh_n_low(g.mesh_n_low as usize)
        .mesh_n_high(g.mesh_n_high as usize)
        .mesh_outbound_min((g.mesh_n_low as usize / 2).min(g.mesh_n as usize / 2))
        .heartbeat_interval(Duration::from_millis(g.heartbeat_ms as u64))
        .max_transmit_size(cap + TRANSMIT_SLACK_BYTES)
        // IDONTWANT (GossipSub v1.2) for every message, not only those above 1000 bytes: in
        // a dense mesh most forwards are duplicates, and each costs the receiver a signature
        // verification (~40 µs) whatever its size, far more than the IDONTWANT itself.
        .idontwant_message_size_threshold(0)
        // Deep per-connection queues and long queue timeouts: the node paces its publishing
        // to the peers' rate limit, so a full queue means a stalled peer, not a burst.
        .connection_handler_queue_len(16_384)
        .publish_queue_duration(Duration::from_secs(30))
        .forward_queue_duration(Duration::from_secs(10))
        // A sidecar unsubscribes a market's topics when a reload removes the market; peers
        // then refuse its GRAFTs for this long. The GossipSub default (10 s) would keep the
        // market out of the mesh if a reload added it back soon after, and a GRAFT during
        // the backoff extends that to the prune backoff (60 s). (A stopping sidecar does
        // not unsubscribe: it closes its connections, which carries no backoff.)
        .unsubscribe_backoff(Duration::from_secs(1))
        .build()
        .context("invalid GossipSub configuration")
}

/// Builds the behaviour for `key`, registering libp2p's GossipSub metrics in `registry`.
fn build_behaviour(key: &Keypair, settings: &NodeSettings, registry: &mut Registry) -> anyhow::Result<Behaviour> {
    let p2p = &settings.config.p2p;
    let peer_id = key.public().to_peer_id();
    let mut gossipsub =
        gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), gossipsub_config(settings)?)
            .map_err(|e| anyhow::anyhow!("GossipSub: {e}"))?
            .with_metrics(registry.sub_registry_with_prefix("gossipsub"), Default::default());
    let (params, thresholds) = peer_score();
    gossipsub.with_peer_score(params, thresholds).map_err(|e| anyhow::anyhow!("GossipSub peer scoring: {e}"))?;
    let kademlia = p2p.kademlia.then(|| {
        let mut kad =
            kad::Behaviour::with_config(peer_id, kad::store::MemoryStore::new(peer_id), kad::Config::new(KAD_PROTOCOL));
        // Clusters run on private addresses, which Kademlia's client mode would never
        // confirm as external: serve the DHT from the start.
        kad.set_mode(Some(kad::Mode::Server));
        kad
    });
    let mdns = if p2p.mdns {
        Some(mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id).context("starting mDNS")?)
    } else {
        None
    };
    let identify = identify::Behaviour::new(
        identify::Config::new(IDENTIFY_PROTOCOL.to_owned(), key.public())
            .with_agent_version(format!("openmatch-gossip/{}", crate::VERSION)),
    );
    let repair = request_response::Behaviour::new(
        [(crate::repair::PROTOCOL, request_response::ProtocolSupport::Outbound)],
        request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
    );
    Ok(Behaviour {
        blocked: Default::default(),
        gossipsub,
        kademlia: kademlia.into(),
        mdns: mdns.into(),
        identify,
        ping: ping::Behaviour::default(),
        repair,
        repair_server: super::repair_server::RepairServer::new(),
    })
}

/// Builds the swarm for `key`, registering libp2p's GossipSub metrics in `registry`.
pub(crate) fn build_swarm(
    key: Keypair,
    settings: &NodeSettings,
    registry: &mut Registry,
) -> anyhow::Result<Swarm<Behaviour>> {
    let behaviour = build_behaviour(&key, settings, registry)?;
    let memory_noise = noise::Config::new(&key).context("Noise configuration")?;
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .context("building the TCP transport")?
        .with_other_transport(move |_| {
            MemoryTransport::default()
                .upgrade(Version::V1)
                .authenticate(memory_noise)
                .multiplex(yamux::Config::default())
        })
        .context("building the memory transport")?
        .with_dns()
        .context("building the DNS resolver")?
        .with_behaviour(move |_| behaviour)
        .context("installing the behaviour")?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    Ok(swarm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use openmatch_gossip_crds::SidecarConfig;

    /// The node's GossipSub uses the protocol's message id (docs/PROTOCOL.md §12.3), not
    /// rust-libp2p's default.
    #[test]
    fn gossipsub_ids_messages_by_the_protocol_s_function() {
        let settings = NodeSettings::new(
            SidecarConfig { network: "demo".into(), ..SidecarConfig::default() },
            "s".into(),
            "k".into(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .unwrap();
        let config = gossipsub_config(&settings).unwrap();
        let source = libp2p::PeerId::random();
        let message = gossipsub::Message {
            source: Some(source),
            data: b"an envelope".to_vec(),
            sequence_number: Some(7),
            topic: gossipsub::TopicHash::from_raw("openmatch/demo/control"),
        };
        let expected = crate::wire::message_id(&source.to_bytes(), "openmatch/demo/control", b"an envelope");
        assert_eq!(config.message_id(&message).0, expected.to_vec());
    }
}
