//! Hot reload inside the node: applies a new configuration's markets (subscribing and
//! unsubscribing their topics, then publishing the new market set), bootstrap peers,
//! `consensus.members`, rate limits and reputation thresholds; every other changed field
//! keeps its running value and is named in a note as needing a restart.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::Node;
use crate::config::NodeSettings;
use crate::ratelimit::{Pacer, consensus_budget};
use crate::topics::{Topic, TopicKind};

impl Node {
    pub(super) fn apply_settings(&mut self, mut new: NodeSettings) -> Vec<String> {
        let wanted: BTreeSet<String> = std::mem::take(&mut new.config.markets).into_iter().collect();
        let old = self.settings.config.clone();
        let mut cfg = new.config;
        let mut notes = Vec::new();
        macro_rules! restart_only {
            ($($field:ident).+, $name:expr) => {
                if cfg.$($field).+ != old.$($field).+ {
                    notes.push(format!("{} changed: takes effect after a restart", $name));
                    cfg.$($field).+ = old.$($field).+.clone();
                }
            };
        }
        restart_only!(network, "network");
        restart_only!(p2p.listen_addrs, "p2p.listenAddrs");
        restart_only!(p2p.mdns, "p2p.mdns");
        restart_only!(p2p.kademlia, "p2p.kademlia");
        restart_only!(gossipsub, "gossipsub");
        restart_only!(limits.max_message_bytes, "limits.maxMessageBytes");
        restart_only!(limits.max_freeze_proof_bytes, "limits.maxFreezeProofBytes");
        restart_only!(limits.dedup_capacity, "limits.dedupCapacity");
        restart_only!(publish, "publish");
        restart_only!(heartbeat, "heartbeat");
        // consensus.members applies at once (the operator renders it from the selected
        // pods): every later decision counts the new number. The rest needs a restart.
        let members = cfg.consensus.members;
        cfg.consensus.members = old.consensus.members;
        restart_only!(consensus, "consensus");
        cfg.consensus.members = members;
        if members != old.consensus.members {
            tracing::info!(from = old.consensus.members, to = members, "consensus.members changed");
        }
        let budget = |c, markets: &BTreeSet<String>| consensus_budget(c, markets.len());
        let (old_budget, new_budget) = (budget(&old, &self.markets.borrow()), budget(&cfg, &wanted));
        self.set_markets(wanted);
        if cfg.limits.rate_limit != old.limits.rate_limit || new_budget != old_budget {
            self.validator.set_rate_limits(cfg.limits.rate_limit, new_budget);
            self.pacer = Pacer::new(cfg.limits.rate_limit);
            tracing::info!(orders = ?cfg.limits.rate_limit, consensus = ?new_budget, "rate limits changed");
        }
        self.reputation.set_config(cfg.reputation.clone());
        self.settings.bootstrap_peers = new.bootstrap_peers;
        self.seed_kademlia();
        self.settings.config = cfg;
        self.dial_bootstrap_peers();
        for n in &notes {
            tracing::warn!(note = n, "config reload");
        }
        notes
    }

    /// Subscribes the topics of markets added, unsubscribes those of markets removed, and
    /// publishes the new set.
    fn set_markets(&mut self, wanted: BTreeSet<String>) {
        let current = self.markets.borrow().clone();
        let network = self.info.network.clone();
        let gossipsub = &mut self.swarm.behaviour_mut().gossipsub;
        for m in wanted.difference(&current) {
            for kind in TopicKind::PER_MARKET {
                if let Err(e) = gossipsub.subscribe(&Topic { kind, market: m.clone() }.ident(&network)) {
                    tracing::error!(market = m, error = %e, "could not subscribe");
                }
            }
            self.metrics.add_market(m);
            tracing::info!(market = m, "market added: subscribed");
        }
        for m in current.difference(&wanted) {
            for kind in TopicKind::PER_MARKET {
                gossipsub.unsubscribe(&Topic { kind, market: m.clone() }.ident(&network));
            }
            tracing::info!(market = m, "market removed: unsubscribed");
        }
        if *current != wanted {
            self.markets.send_replace(Arc::new(wanted));
        }
    }
}
