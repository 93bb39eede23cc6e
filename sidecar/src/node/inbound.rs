//! Gossip on its way in: GossipSub events, validation rounds ([`crate::validation`]) with
//! their verdicts reported back to GossipSub, and what accepted messages carry: peers'
//! orders (into their batch, then to the engine, each once), heartbeats, seals, results.

use std::collections::BTreeSet;
use std::time::Instant;

use futures::StreamExt as _;
use libp2p::PeerId;
use libp2p::gossipsub::{self, MessageAcceptance};

use super::Node;
use crate::consensus::AddOutcome;
use crate::epoch::unix_now_ns;
use crate::metrics::{MarketLabel, MarketSource, QueueLabel};
use crate::reputation::Offence;
use crate::topics::{Topic, TopicKind};
use crate::validation::{Admission, Payload, Verdict};

impl Node {
    /// GossipSub's events: messages wait in the inbox for the next validation round.
    pub(super) fn on_gossipsub(&mut self, ev: gossipsub::Event) {
        match ev {
            gossipsub::Event::Message { propagation_source, message_id, message } => {
                if let Some(observe) = &self.settings.receipt_observer {
                    (observe.0)(&message_id, message.topic.as_str(), message.source, propagation_source);
                }
                self.inbox.push((propagation_source, message_id, message));
            }
            gossipsub::Event::Subscribed { peer_id, topic } => {
                tracing::debug!(peer = %peer_id, topic = %topic, "peer subscribed");
                // A market waiting for peers can try again right away.
                if let Some(t) = Topic::parse(&self.info.network, topic.as_str()) {
                    if t.kind == TopicKind::Control {
                        self.publish_status();
                    }
                    self.retry_at.remove(&t.market);
                }
            }
            gossipsub::Event::SlowPeer { peer_id, failed_messages } => {
                tracing::warn!(peer = %peer_id, ?failed_messages, "GossipSub could not send to a slow peer in time");
                let f = failed_messages;
                for (queue, n) in [("priority", f.priority), ("non_priority", f.non_priority)] {
                    if n > 0 {
                        self.metrics.send_queue_failures.get_or_create(&QueueLabel { queue }).inc_by(n as u64);
                    }
                }
            }
            _ => {}
        }
    }

    /// Validates the gossip messages received, delivers what they carry, and reports the
    /// verdicts to GossipSub (which forwards the accepted ones).
    ///
    /// Twice the node first yields and takes in what its connections have ready: before
    /// validating, so that the IDONTWANTs GossipSub queued on receipt (GossipSub v1.2) go
    /// out to the other mesh peers at once; and before reporting, so that the peers'
    /// IDONTWANTs for the same message are known when it is forwarded. In a full mesh every
    /// peer already has the message from its author, and a forward it declined is neither
    /// sent nor decrypted and verified there. The engine's delivery does not wait for the
    /// second yield.
    ///
    /// One round per turn of the node's loop: messages that arrive during the round wait
    /// for the next turn, so a flood of gossip cannot starve the engine's commands.
    pub(super) async fn validate_inbox(&mut self) {
        if self.inbox.is_empty() {
            return;
        }
        tokio::task::yield_now().await;
        self.take_ready_swarm_events();
        let markets = self.markets.borrow().clone();
        let now_ms = unix_now_ns() / 1_000_000;
        let mut reports = Vec::with_capacity(self.inbox.len());
        for (source, id, message) in std::mem::take(&mut self.inbox) {
            reports.push((id, source, self.validate_message(source, message, &markets, now_ms)));
        }
        tokio::task::yield_now().await;
        self.take_ready_swarm_events();
        for (id, source, acceptance) in reports {
            self.swarm.behaviour_mut().gossipsub.report_message_validation_result(&id, &source, acceptance);
        }
    }

    /// Handles the swarm events that are ready now, without waiting.
    fn take_ready_swarm_events(&mut self) {
        use futures::FutureExt as _;
        while let Some(event) = self.swarm.select_next_some().now_or_never() {
            self.handle_swarm_event(event);
        }
    }

    /// Validates one gossip message and acts on its payload; returns the verdict for
    /// GossipSub.
    fn validate_message(
        &mut self,
        propagation_source: PeerId,
        message: gossipsub::Message,
        markets: &BTreeSet<String>,
        now_ms: u64,
    ) -> MessageAcceptance {
        let admit = Admission { markets, epochs: &self.epochs, now_ms };
        let verdict = self.validator.validate(
            &propagation_source,
            message.source.as_ref(),
            message.topic.as_str(),
            &message.data,
            &admit,
        );
        match verdict {
            Verdict::Accept(payload) => {
                self.on_payload(payload, message.source);
                MessageAcceptance::Accept
            }
            Verdict::Reject { .. } => {
                self.penalize(propagation_source, Offence::InvalidMessage);
                MessageAcceptance::Reject
            }
            Verdict::Ignore(_) => MessageAcceptance::Ignore,
        }
    }

    /// Acts on an accepted message signed by `author`.
    fn on_payload(&mut self, payload: Payload, author: Option<PeerId>) {
        match payload {
            Payload::Orders { market, orders, digests, proof } => self.deliver(market, orders, digests, proof),
            Payload::PeerStatus(s) => {
                if let Some(peer) = author {
                    let now = Instant::now();
                    self.last_status.insert(peer, now);
                    self.heard.insert(peer);
                    let run = super::twins::Run { instance: s.instance, started_at_ms: s.started_at_ms };
                    self.instances.record(peer, run, now);
                }
            }
            Payload::Seal(seal) => {
                if let Some(author) = author {
                    self.decide_pending |= self.consensus.on_peer_seal(author, &seal);
                }
            }
            Payload::Result(result) => {
                if let Some(author) = author {
                    self.consensus.on_peer_result(author, &result);
                }
            }
        }
    }

    /// Peers' new orders of `market`: each joins its batch with `proof`, its bundle's, and
    /// those new to their batch (the authoritative dedup, [`crate::dedup`]) reach the
    /// engine; orders for a batch this node already sealed are counted as late and not
    /// delivered.
    fn deliver(
        &mut self,
        market: String,
        orders: Vec<crate::proto::Order>,
        digests: Vec<crate::wire::Digest>,
        proof: std::sync::Arc<crate::bundle::BundleProof>,
    ) {
        let now = unix_now_ns();
        let mut fresh = Vec::with_capacity(orders.len());
        let mut late = 0u64;
        for (o, d) in orders.into_iter().zip(digests) {
            #[cfg(feature = "fault-injection")]
            if self.settings.fault.drops(&o) {
                tracing::debug!(id = o.id, "fault injector dropped an inbound order");
                continue;
            }
            if o.submitted_at_ns > 0 && now >= o.submitted_at_ns {
                self.metrics.propagation_latency.observe((now - o.submitted_at_ns) as f64 * 1e-9);
            }
            match self.consensus.add_order(&o, d, Some(proof.clone())) {
                AddOutcome::Added => fresh.push(o),
                AddOutcome::Duplicate => {}
                AddOutcome::Late => late += 1,
            }
        }
        if late > 0 {
            tracing::warn!(market, late, "orders arrived after this node sealed their batch; not delivered");
            let l = MarketSource { market: market.clone(), source: "peer" };
            self.metrics.late_orders.get_or_create(&l).inc_by(late);
        }
        self.hand_to_engine(&market, fresh);
    }

    /// Gives peers' orders of `market` (new to their batch, from gossip or repair) to the
    /// engine's subscriptions; they count as delivered only if one was listening.
    pub(super) fn hand_to_engine(&mut self, market: &str, orders: Vec<crate::proto::Order>) {
        let n = orders.len() as u64;
        if n > 0 && self.subscribers.deliver_orders(market, orders) > 0 {
            self.metrics.orders_delivered.get_or_create(&MarketLabel { market: market.to_owned() }).inc_by(n);
        }
    }
}
