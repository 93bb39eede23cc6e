//! What the node reports about itself: its [`Health`] (published on a `watch` channel for
//! `/healthz`, node status and the health gauge) and the `GetStatus` answer.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use libp2p::Multiaddr;
use libp2p::gossipsub::TopicHash;

use super::Node;
use crate::proto::{NodeStatus, TopicMesh};
use crate::topics::Topic;

/// How long a disputed or halted batch keeps the node `degraded`.
const TROUBLE_MEMORY: Duration = Duration::from_secs(60);

/// The node's health: `healthy`, `degraded` (it works, with a reason an operator should
/// look at) or `isolated` (it reaches no peer).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Health {
    /// Connected to a quorum of live members, no recent trouble.
    #[default]
    Healthy,
    /// Working, but something needs attention.
    Degraded(Degradation),
    /// No connected peer although bootstrap peers are configured.
    Isolated {
        /// Bootstrap peers configured (other than this node).
        bootstrap_peers: usize,
    },
}

/// Why a node is [`Health::Degraded`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Degradation {
    /// Fewer live members (this node included) than the quorum.
    BelowQuorum {
        /// Live members.
        live: usize,
        /// Quorum in force.
        quorum: usize,
    },
    /// A batch was disputed within the last minute; the dispute's reason.
    BatchDisputed(String),
    /// A batch was halted (results differed or were unconfirmed) within the last minute.
    BatchHalted(String),
    /// A peer is banned now.
    PeerBanned,
}

impl Health {
    /// `healthy`, `degraded` or `isolated` (the `GetStatus` field and `/healthz` word).
    pub fn as_str(&self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Degraded(_) => "degraded",
            Health::Isolated { .. } => "isolated",
        }
    }

    /// The `openmatch_gossip_health` gauge: 0 healthy, 1 degraded, 2 isolated.
    pub fn code(&self) -> i64 {
        match self {
            Health::Healthy => 0,
            Health::Degraded(_) => 1,
            Health::Isolated { .. } => 2,
        }
    }

    /// Why the node is not healthy, for humans; empty when healthy.
    pub fn reason(&self) -> String {
        match self {
            Health::Healthy => String::new(),
            Health::Isolated { bootstrap_peers } => {
                format!("no connected peers (bootstrap peers: {bootstrap_peers})")
            }
            Health::Degraded(Degradation::BelowQuorum { live, quorum }) => {
                format!("{live} live members, below the quorum of {quorum}")
            }
            Health::Degraded(Degradation::BatchDisputed(r)) => format!("batch disputed: {r}"),
            Health::Degraded(Degradation::BatchHalted(r)) => format!("batch halted: {r}"),
            Health::Degraded(Degradation::PeerBanned) => "a peer is banned".to_owned(),
        }
    }
}

/// What health is judged by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Observed<'a> {
    /// Connected peers.
    connected: usize,
    /// Bootstrap peers configured, other than this node.
    bootstrap_peers: usize,
    /// Live members, this node included.
    live: usize,
    /// Quorum in force.
    quorum: usize,
    /// A batch disputed or halted within [`TROUBLE_MEMORY`].
    recent_trouble: Option<&'a Degradation>,
    /// Peers banned now.
    banned: usize,
}

/// The first that applies: isolated, below quorum, recent batch trouble, a banned peer,
/// healthy.
fn assess(o: Observed<'_>) -> Health {
    if o.connected == 0 && o.bootstrap_peers > 0 {
        Health::Isolated { bootstrap_peers: o.bootstrap_peers }
    } else if o.live < o.quorum {
        Health::Degraded(Degradation::BelowQuorum { live: o.live, quorum: o.quorum })
    } else if let Some(t) = o.recent_trouble {
        Health::Degraded(t.clone())
    } else if o.banned > 0 {
        Health::Degraded(Degradation::PeerBanned)
    } else {
        Health::Healthy
    }
}

impl Node {
    /// Reassesses health and publishes it if it changed.
    pub(super) fn update_health(&mut self) {
        let live = self.live_peers().len() + 1;
        let quorum = match self.settings.config.consensus.quorum {
            0 => crate::consensus::majority(live),
            q => q as usize,
        };
        let health = assess(Observed {
            connected: self.swarm.connected_peers().count(),
            bootstrap_peers: self.settings.bootstrap_peers.iter().filter(|p| p.peer_id != self.info.peer_id).count(),
            live,
            quorum,
            recent_trouble: self.last_trouble.as_ref().filter(|(at, _)| at.elapsed() < TROUBLE_MEMORY).map(|(_, t)| t),
            banned: self.reputation.summary(Instant::now()).banned,
        });
        self.metrics.health.set(health.code());
        self.health.send_if_modified(|h| {
            let changed = *h != health;
            *h = health;
            changed
        });
    }

    /// Records a disputed or halted batch: the node reports it as degraded for a minute.
    pub(super) fn record_trouble(&mut self, trouble: Degradation) {
        self.last_trouble = Some((Instant::now(), trouble));
        self.update_health();
    }

    /// The `GetStatus` answer.
    pub(super) fn status(&self) -> NodeStatus {
        let gs = &self.swarm.behaviour().gossipsub;
        let mut subscribed: HashMap<&TopicHash, u32> = HashMap::new();
        for (_, topics) in gs.all_peers() {
            for t in topics {
                *subscribed.entry(t).or_default() += 1;
            }
        }
        let markets = self.markets.borrow().clone();
        let mut topics: Vec<TopicMesh> = Topic::all_for(markets.iter())
            .into_iter()
            .map(|t| {
                let hash = t.ident(&self.info.network).hash();
                TopicMesh {
                    topic: t.name(&self.info.network),
                    mesh_peers: gs.mesh_peers(&hash).map(|p| p.to_string()).collect(),
                    subscribed_peers: subscribed.get(&hash).copied().unwrap_or(0),
                }
            })
            .collect();
        topics.sort_by(|a, b| a.topic.cmp(&b.topic));
        let listen: HashSet<&Multiaddr> = self.swarm.listeners().collect();
        let health = self.health.borrow();
        NodeStatus {
            peer_id: self.info.peer_id.to_string(),
            network: self.info.network.clone(),
            markets: markets.iter().cloned().collect(),
            listen_addrs: listen.into_iter().map(|a| a.to_string()).collect(),
            connected_peers: self.swarm.connected_peers().map(|p| p.to_string()).collect(),
            topics,
            version: crate::VERSION.to_owned(),
            health: health.as_str().to_owned(),
            health_reason: health.reason(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calm() -> Observed<'static> {
        Observed { connected: 2, bootstrap_peers: 2, live: 3, quorum: 2, recent_trouble: None, banned: 0 }
    }

    #[test]
    fn a_connected_quorum_without_trouble_is_healthy() {
        assert_eq!(assess(calm()), Health::Healthy);
        let alone = Observed { connected: 0, bootstrap_peers: 0, live: 1, quorum: 1, ..calm() };
        assert_eq!(assess(alone), Health::Healthy, "a node configured alone is not isolated");
    }

    #[test]
    fn isolation_comes_first_then_quorum_then_trouble_then_bans() {
        let trouble = Degradation::BatchHalted("1 peer(s) computed a different result hash".into());
        let all_bad = Observed {
            connected: 0,
            bootstrap_peers: 2,
            live: 1,
            quorum: 2,
            recent_trouble: Some(&trouble),
            banned: 1,
        };
        let h = assess(all_bad);
        assert_eq!(h, Health::Isolated { bootstrap_peers: 2 });
        assert_eq!((h.as_str(), h.code()), ("isolated", 2));
        assert_eq!(h.reason(), "no connected peers (bootstrap peers: 2)");
        let h = assess(Observed { connected: 1, ..all_bad });
        assert_eq!(h.reason(), "1 live members, below the quorum of 2");
        let h = assess(Observed { connected: 2, live: 3, ..all_bad });
        assert_eq!(h, Health::Degraded(trouble.clone()));
        assert_eq!(h.reason(), "batch halted: 1 peer(s) computed a different result hash");
        let h = assess(Observed { recent_trouble: None, ..calm() }.with_banned(1));
        assert_eq!((h.as_str(), h.code(), h.reason().as_str()), ("degraded", 1, "a peer is banned"));
    }

    impl Observed<'_> {
        fn with_banned(self, banned: usize) -> Self {
            Observed { banned, ..self }
        }
    }
}
