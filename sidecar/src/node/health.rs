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
/// look at) or `isolated` (it hears no other member, and so decides nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Health {
    /// A quorum of members is live, no recent trouble.
    #[default]
    Healthy,
    /// Working, but something needs attention.
    Degraded(Degradation),
    /// No other member's `PeerStatus` heartbeat within the liveness window although the
    /// network has other members: the node decides no batch until it hears a quorum.
    Isolated {
        /// Known members, this node included.
        members: usize,
    },
}

/// Why a node is [`Health::Degraded`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Degradation {
    /// Fewer live members (this node included) than the quorum: no batch is decided.
    BelowQuorum {
        /// Live members, this node included.
        live: usize,
        /// Known members, this node included.
        members: usize,
        /// Quorum in force.
        quorum: usize,
    },
    /// Start-up recovery is learning which of this node's orders peers committed;
    /// submissions wait until it is done.
    Recovering {
        /// Batches not answered yet.
        batches: usize,
    },
    /// Batches sealed longer than `repairWindowMs` ago are still undecided (waiting for
    /// members' seals).
    AwaitingQuorum {
        /// How many.
        batches: usize,
    },
    /// A batch was disputed within the last minute; the dispute's reason.
    BatchDisputed(String),
    /// A batch was halted (results differed or were unconfirmed) within the last minute.
    BatchHalted(String),
    /// Within the last minute, a strict majority of the members' results for a batch
    /// differed from this node's engine's: this node is the odd one out.
    OutvotedResult {
        /// The batch, `market#epoch`.
        batch: String,
        /// Results carrying the majority hash.
        majority: usize,
        /// Results compared, this node's included.
        of: usize,
    },
    /// A peer is banned now.
    PeerBanned,
    /// Another process runs with this node's identity key; it started later (and should
    /// stop on its own: [`super::twins`]).
    DuplicateIdentity {
        /// Its run's random instance.
        instance: u64,
        /// When it started, Unix ms.
        started_at_ms: u64,
    },
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
            Health::Isolated { members } => {
                format!("no other member heard within the liveness window ({members} members); deciding nothing")
            }
            Health::Degraded(Degradation::BelowQuorum { live, members, quorum }) => {
                format!("{live} of {members} members live, below the quorum of {quorum}; deciding nothing")
            }
            Health::Degraded(Degradation::Recovering { batches }) => {
                format!(
                    "recovering this node's committed orders from peers ({batches} batch(es) to go); submissions wait"
                )
            }
            Health::Degraded(Degradation::AwaitingQuorum { batches }) => {
                format!("{batches} batch(es) sealed longer than the repair window still wait for a quorum")
            }
            Health::Degraded(Degradation::BatchDisputed(r)) => format!("batch disputed: {r}"),
            Health::Degraded(Degradation::BatchHalted(r)) => format!("batch halted: {r}"),
            Health::Degraded(Degradation::OutvotedResult { batch, majority, of }) => format!(
                "this node disagrees with the quorum: its engine's result for batch {batch} differs from {majority} of {of} members'"
            ),
            Health::Degraded(Degradation::PeerBanned) => "a peer is banned".to_owned(),
            Health::Degraded(Degradation::DuplicateIdentity { instance, started_at_ms }) => format!(
                "duplicate identity: another process (instance {instance:016x}, started at {started_at_ms} ms Unix \
                 time) runs with this node's identity key"
            ),
        }
    }
}

/// What health is judged by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Observed<'a> {
    /// Known members, this node included.
    members: usize,
    /// Live members (heartbeat within the liveness window), this node included.
    live: usize,
    /// Quorum in force.
    quorum: usize,
    /// Batches start-up recovery still waits for.
    recovering: usize,
    /// Batches undecided for longer than the repair window.
    undecided: usize,
    /// A batch disputed or halted within [`TROUBLE_MEMORY`].
    recent_trouble: Option<&'a Degradation>,
    /// Peers banned now.
    banned: usize,
    /// A live twin's `(instance, started_at_ms)` ([`Degradation::DuplicateIdentity`]).
    twin: Option<(u64, u64)>,
}

/// The first that applies: isolated, below quorum, a duplicate identity, recovering,
/// batches awaiting a quorum, recent batch trouble, a banned peer, healthy.
fn assess(o: Observed<'_>) -> Health {
    if o.live <= 1 && o.members > 1 {
        Health::Isolated { members: o.members }
    } else if o.live < o.quorum {
        Health::Degraded(Degradation::BelowQuorum { live: o.live, members: o.members, quorum: o.quorum })
    } else if let Some((instance, started_at_ms)) = o.twin {
        Health::Degraded(Degradation::DuplicateIdentity { instance, started_at_ms })
    } else if o.recovering > 0 {
        Health::Degraded(Degradation::Recovering { batches: o.recovering })
    } else if o.undecided > 0 {
        Health::Degraded(Degradation::AwaitingQuorum { batches: o.undecided })
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
        let members = self.members();
        let now = Instant::now();
        let repair_window = Duration::from_millis(self.settings.config.consensus.repair_window_ms as u64);
        let health = assess(Observed {
            members,
            live: self.live_peers().len() + 1,
            quorum: self.consensus.quorum(members),
            recovering: self.recovering(),
            undecided: self.consensus.undecided_since(now, repair_window),
            recent_trouble: self.last_trouble.as_ref().filter(|(at, _)| at.elapsed() < TROUBLE_MEMORY).map(|(_, t)| t),
            banned: self.reputation.summary(now).banned,
            twin: self.twin.map(|(run, _)| (run.instance, run.started_at_ms)),
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
            incarnation: self.subscribers.incarnation(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calm() -> Observed<'static> {
        Observed {
            members: 3,
            live: 3,
            quorum: 2,
            recovering: 0,
            undecided: 0,
            recent_trouble: None,
            banned: 0,
            twin: None,
        }
    }

    #[test]
    fn a_live_quorum_without_trouble_is_healthy() {
        assert_eq!(assess(calm()), Health::Healthy);
        let alone = Observed { members: 1, live: 1, quorum: 1, ..calm() };
        assert_eq!(assess(alone), Health::Healthy, "a node configured alone is not isolated");
    }

    #[test]
    fn isolation_comes_first_then_quorum_then_a_twin_then_waiting_batches_then_trouble_then_bans() {
        let trouble = Degradation::BatchHalted("1 peer(s) computed a different result hash".into());
        let all_bad = Observed {
            members: 5,
            live: 1,
            quorum: 3,
            recovering: 0,
            undecided: 4,
            recent_trouble: Some(&trouble),
            banned: 1,
            twin: Some((0xab, 42)),
        };
        let h = assess(all_bad);
        assert_eq!(h, Health::Isolated { members: 5 });
        assert_eq!((h.as_str(), h.code()), ("isolated", 2));
        assert_eq!(h.reason(), "no other member heard within the liveness window (5 members); deciding nothing");
        let h = assess(Observed { live: 2, ..all_bad });
        assert_eq!(h.reason(), "2 of 5 members live, below the quorum of 3; deciding nothing");
        let h = assess(Observed { live: 3, ..all_bad });
        assert_eq!(
            h.reason(),
            "duplicate identity: another process (instance 00000000000000ab, started at 42 ms Unix time) runs with \
             this node's identity key"
        );
        let all_bad = Observed { twin: None, ..all_bad };
        let h = assess(Observed { live: 3, recovering: 2, ..all_bad });
        assert_eq!(
            h.reason(),
            "recovering this node's committed orders from peers (2 batch(es) to go); submissions wait"
        );
        let h = assess(Observed { live: 3, ..all_bad });
        assert_eq!(h.reason(), "4 batch(es) sealed longer than the repair window still wait for a quorum");
        let h = assess(Observed { live: 3, undecided: 0, ..all_bad });
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
