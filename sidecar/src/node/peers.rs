//! Membership: finding peers (bootstrap dials, Kademlia, Identify, mDNS), connection
//! events, the `PeerStatus` heartbeat on the control topic, and who counts as a live
//! member for quorums and health.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use libp2p::gossipsub::PublishError;
use libp2p::swarm::SwarmEvent;
use libp2p::{PeerId, kad, mdns};

use super::Node;
use super::behaviour::BehaviourEvent;
use crate::epoch::unix_now_ns;
use crate::metrics::KindMarket;
use crate::proto::{self, PeerStatus, event::Kind, gossip_envelope::Body};
use crate::topics::{Topic, TopicKind};
use crate::wire;

impl Node {
    /// Dials every bootstrap peer not connected (run at start, on reload and periodically).
    pub(super) fn dial_bootstrap_peers(&mut self) {
        let me = self.info.peer_id;
        for p in &self.settings.bootstrap_peers {
            if p.peer_id != me
                && !self.swarm.is_connected(&p.peer_id)
                && let Err(e) = self.swarm.dial(p.addr.clone())
            {
                tracing::debug!(peer = %p.peer_id, addr = %p.addr, error = %e, "bootstrap dial not started");
            }
        }
    }

    /// Tells Kademlia where the bootstrap peers are.
    pub(super) fn seed_kademlia(&mut self) {
        if let Some(kad) = self.swarm.behaviour_mut().kademlia.as_mut() {
            for p in &self.settings.bootstrap_peers {
                kad.add_address(&p.peer_id, p.addr.clone());
            }
        }
    }

    /// Discovery and connection events of the swarm (everything but GossipSub and repair).
    pub(super) fn on_peer_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        use libp2p::metrics::Recorder as _;
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Identify(ev)) => {
                self.p2p_metrics.record(&ev);
                if let libp2p::identify::Event::Received { peer_id, info, .. } = ev
                    && let Some(kad) = self.swarm.behaviour_mut().kademlia.as_mut()
                {
                    for addr in info.listen_addrs {
                        kad.add_address(&peer_id, addr);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kademlia(ev)) => {
                self.p2p_metrics.record(&ev);
                if let kad::Event::RoutingUpdated { peer, .. } = ev
                    && !self.swarm.is_connected(&peer)
                {
                    let _ = self.swarm.dial(peer);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
                    if !self.swarm.is_connected(&peer) {
                        tracing::debug!(%peer, %addr, "mDNS discovered a peer");
                        let _ = self.swarm.dial(addr.with_p2p(peer).unwrap_or_else(|a| a));
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ev)) => self.p2p_metrics.record(&ev),
            SwarmEvent::ConnectionEstablished { peer_id, num_established, endpoint, .. } => {
                if num_established.get() == 1 {
                    tracing::info!(peer = %peer_id, addr = %endpoint.get_remote_address(), "peer connected");
                    self.repairs.connected(peer_id, Instant::now());
                    self.subscribers.broadcast(Kind::PeerJoined(proto::PeerJoined { peer_id: peer_id.to_string() }));
                    self.ask_instances(peer_id); // a twin learns of the first run at once
                }
                self.metrics.peers.set(self.swarm.connected_peers().count() as i64);
                self.update_health();
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established, cause, .. } => {
                if num_established == 0 {
                    tracing::info!(peer = %peer_id, cause = ?cause, "peer disconnected");
                    self.repairs.disconnected(&peer_id);
                    self.last_status.remove(&peer_id);
                    self.subscribers.broadcast(Kind::PeerLeft(proto::PeerLeft { peer_id: peer_id.to_string() }));
                }
                self.metrics.peers.set(self.swarm.connected_peers().count() as i64);
                self.update_health();
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(addr = %address.clone().with_p2p(self.info.peer_id).unwrap_or(address), "listening");
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(peer = ?peer_id, %error, "dial failed");
            }
            _ => {}
        }
    }

    /// Every `heartbeat.intervalMs`: expires bans, reassesses health, publishes this node's
    /// `PeerStatus`, forgets peers silent for longer than the liveness window, and updates
    /// the membership gauges.
    pub(super) fn on_heartbeat(&mut self) {
        let now = Instant::now();
        for peer in self.reputation.expire_bans(now) {
            tracing::info!(%peer, "ban expired");
            self.swarm.behaviour_mut().blocked.unblock_peer(peer);
            self.swarm.behaviour_mut().gossipsub.set_application_score(&peer, 0.0);
        }
        self.report_reputation(now);
        self.update_health();
        self.publish_status();
        let window = self.liveness_window();
        self.last_status.retain(|_, seen| seen.elapsed() <= window);
        self.metrics.live_peers.set(self.last_status.len() as i64);
        let markets = self.markets.borrow().clone();
        let gs = &self.swarm.behaviour().gossipsub;
        for t in Topic::all_for(markets.iter()) {
            let n = gs.mesh_peers(&t.ident(&self.info.network).hash()).count();
            self.metrics
                .mesh_peers
                .get_or_create(&KindMarket { kind: t.kind.as_str(), market: t.market })
                .set(n as i64);
        }
        self.validator.forget_idle_buckets();
        self.repair_rate.retain_recent();
        self.check_identity(window);
    }

    /// Publishes this node's `PeerStatus` heartbeat on the control topic: every
    /// `heartbeat.intervalMs`, and at once when a peer subscribes to the control topic, so
    /// that a new peer counts this node as live without waiting for the next beat.
    pub(super) fn publish_status(&mut self) {
        let status = PeerStatus {
            node_id: self.info.peer_id.to_bytes(),
            epoch_id: self.epochs.epoch_for("", unix_now_ns() / 1_000_000),
            phase: proto::Phase::Collect as i32,
            markets: self.markets.borrow().iter().cloned().collect(),
            version: crate::VERSION.to_owned(),
            sent_at_ns: unix_now_ns(),
            instance: self.run.instance,
            started_at_ms: self.run.started_at_ms,
        };
        let control = Topic::control().ident(&self.info.network);
        match self.swarm.behaviour_mut().gossipsub.publish(control, wire::encode(Body::PeerStatus(status))) {
            Ok(_) => {
                let l = KindMarket { kind: TopicKind::Control.as_str(), market: String::new() };
                self.metrics.messages_published.get_or_create(&l).inc();
            }
            Err(PublishError::NoPeersSubscribedToTopic) => {}
            Err(e) => tracing::debug!(error = %e, "PeerStatus not published"),
        }
    }

    /// `heartbeat.livenessWindowMs`.
    pub(super) fn liveness_window(&self) -> Duration {
        Duration::from_millis(self.settings.config.heartbeat.liveness_window_ms as u64)
    }

    /// Live members besides this node: peers whose `PeerStatus` heartbeat arrived within
    /// the liveness window and that are not banned. An open TCP connection is not
    /// liveness: drop rules or a stalled process keep connections up while nothing flows.
    pub(super) fn live_peers(&self) -> HashSet<PeerId> {
        let now = Instant::now();
        self.last_status.keys().filter(|p| !self.reputation.is_banned(p, now)).copied().collect()
    }

    /// Known members, this node included: `consensus.members` if set; otherwise this node,
    /// its bootstrap peers and every peer whose `PeerStatus` it ever heard (membership
    /// grows, it never shrinks with reachability, so a cut-off node never becomes a
    /// majority of one).
    pub(super) fn members(&self) -> usize {
        match self.settings.config.consensus.members {
            0 => {
                let me = self.info.peer_id;
                let bootstrap = self.settings.bootstrap_peers.iter().map(|p| p.peer_id).filter(|p| *p != me);
                let mut known: HashSet<PeerId> = bootstrap.collect();
                known.extend(self.heard.iter().copied());
                known.len() + 1
            }
            n => n as usize,
        }
    }
}
