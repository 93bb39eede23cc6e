//! The engine's orders on their way out: stamping (origin, epoch, digest), joining their
//! batch, the outbox, and publishing packs to GossipSub at the pacer's rate, each signed
//! as a bundle by this node ([`crate::bundle`]), retrying deferred packs without ever
//! dropping them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Node;
use super::handle::{DuplicateId, Submitted};
use super::own_orders::Seen;
use crate::bundle::BundleProof;
use crate::consensus::AddOutcome;
use crate::epoch::unix_now_ns;
use crate::metrics::{KindMarket, MarketLabel, MarketReason, MarketSource, QueueLabel};
use crate::proto::{Order, event::Kind};
use crate::topics::{Topic, TopicKind};
use crate::wire;
use libp2p::gossipsub::PublishError;

/// A market whose publish found no subscribed peer is retried after this long (or as soon
/// as a peer subscribes).
const NO_PEERS_RETRY: Duration = Duration::from_millis(250);
/// A market whose publish found every peer queue full is retried after this long.
const QUEUES_FULL_RETRY: Duration = Duration::from_millis(10);

/// Why a pack did not go out; [`Deferral::as_str`] is the `publish_retries` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Deferral {
    /// No peer subscribed to the topic: kept and retried.
    NoPeers,
    /// Every peer's send queue is full: kept and retried.
    QueuesFull,
    /// Signing or size failure that a retry cannot fix: the pack is dropped loudly.
    PublishError,
}

impl Deferral {
    fn as_str(self) -> &'static str {
        match self {
            Deferral::NoPeers => "no_peers",
            Deferral::QueuesFull => "queues_full",
            Deferral::PublishError => "publish_error",
        }
    }
}

impl Node {
    /// Stamps the engine's `orders` (origin = this node, the epoch of their market now, the
    /// submit time if the engine left it 0), adds each to its batch and queues it in the
    /// outbox. An order resubmitted unchanged is not queued again: it gets its first
    /// receipt, and if it is already committed its `OrdersCommitted` is sent again. An order for a batch that engine sealing already closed is refused and
    /// counted as late. With `want_receipts`, answers each order's digest and epoch.
    ///
    /// Errors: [`DuplicateId`] at the first order whose id was accepted for a different
    /// order; the orders before it stand, it and the rest are dropped. Every order not
    /// queued hands its credit back at once.
    pub(super) fn submit(&mut self, orders: Vec<Order>, want_receipts: bool) -> Result<Vec<Submitted>, DuplicateId> {
        let origin = bytes::Bytes::from(self.info.peer_id.to_bytes());
        let total = orders.len();
        let mut receipts = Vec::with_capacity(if want_receipts { total } else { 0 });
        let stamp = unix_now_ns();
        let now_ms = stamp / 1_000_000;
        let mut per_market: HashMap<String, u64> = HashMap::new();
        // Credits the API took for these orders ([`crate::outbox::charge`]); those of
        // orders not queued go back at the end.
        let charged: usize = orders.iter().map(crate::outbox::charge).sum();
        let mut queued_bytes = 0;
        let mut not_queued = 0;
        let mut outcome = Ok(());
        // Resubmissions of committed orders: their outcome is told again.
        let mut recommitted: BTreeMap<(String, u64), Vec<u64>> = BTreeMap::new();
        for (index, mut o) in orders.into_iter().enumerate() {
            let charge = crate::outbox::charge(&o);
            // Not before the floor: a (re)started node votes from there on.
            o.epoch = self.epochs.epoch_for(&o.market, now_ms).max(self.consensus.floor(&o.market).unwrap_or(0));
            if o.submitted_at_ns == 0 {
                o.submitted_at_ns = stamp;
            }
            o.origin = origin.clone();
            match self.own.check(&mut o) {
                Seen::New => {}
                Seen::Again(first, committed) => {
                    receipts.extend(want_receipts.then_some(first));
                    if committed {
                        recommitted.entry((o.market.clone(), first.epoch)).or_default().push(o.id);
                    }
                    not_queued += 1;
                    continue;
                }
                Seen::Conflict(first) => {
                    not_queued += total - index;
                    outcome = Err(DuplicateId { index, id: o.id, first });
                    break;
                }
            }
            let receipt = Submitted { digest: wire::order_digest(&o), epoch: o.epoch };
            // Its proof comes when its pack is published (`publish_pack`).
            if self.consensus.add_order(&o, receipt.digest, None) == AddOutcome::Late {
                // This node sealed the epoch already (engine sealing closed it, or the
                // clock passed the floor's predecessor): the order is refused, no receipt.
                let l = MarketSource { market: o.market.clone(), source: "own" };
                self.metrics.late_orders.get_or_create(&l).inc();
                not_queued += 1;
                continue;
            }
            receipts.extend(want_receipts.then_some(receipt));
            self.own.insert(&o.market, o.id, receipt, false);
            match per_market.get_mut(&o.market) {
                Some(n) => *n += 1,
                None => {
                    per_market.insert(o.market.clone(), 1);
                }
            }
            queued_bytes += charge;
            self.outbox.push(o, receipt.digest, charge);
        }
        self.credits.give_back(not_queued, charged - queued_bytes);
        for ((market, epoch), ids) in recommitted {
            let batch_id = Some(crate::proto::BatchId { market, epoch });
            self.subscribers.broadcast(Kind::OrdersCommitted(crate::proto::OrdersCommitted { batch_id, ids }));
        }
        for (market, n) in per_market {
            self.metrics.orders_submitted.get_or_create(&MarketLabel { market }).inc_by(n);
        }
        self.export_outbox_size();
        outcome.map(|()| receipts)
    }

    /// When the loop must wake to publish again: the pacer's next token or the earliest
    /// retry of a market with queued orders; `None` with an empty outbox.
    pub(super) fn next_publish_at(&self) -> Option<Instant> {
        if self.outbox.is_empty() {
            return None;
        }
        let retry = self.outbox.pending_markets().iter().filter_map(|m| self.retry_at.get(m).copied()).min();
        match (self.pace_at, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Publishes as much of the outbox as the pacer and the peers allow, one pack per
    /// market in turn.
    pub(super) fn flush(&mut self) {
        let now = Instant::now();
        if self.pace_at.is_some_and(|t| t > now) {
            return;
        }
        self.pace_at = None;
        loop {
            let mut progressed = false;
            for market in self.outbox.pending_markets() {
                if self.retry_at.get(&market).is_some_and(|t| *t > now) {
                    continue;
                }
                if let Err(at) = self.pacer.try_acquire() {
                    self.pace_at = Some(at);
                    self.export_outbox_size();
                    return;
                }
                progressed |= self.publish_pack(&market, now);
            }
            if !progressed {
                break;
            }
        }
        self.export_outbox_size();
    }

    /// Publishes one pack of `market` ([`wire::encode_orders`]), signed as a bundle; once it
    /// went out (`true`), its orders keep the bundle's proof in their batch.
    fn publish_pack(&mut self, market: &str, now: Instant) -> bool {
        let Some(pack) = self.outbox.take_pack(market) else { return false };
        let n = pack.orders.len();
        let charge = pack.charge();
        let topic = Topic::orders(market).ident(&self.info.network);
        // A deferred pack is signed again when it goes out: it may be packed differently.
        let proof = BundleProof::sign(&self.key, &self.info.network, market, pack.digests.as_slice().into());
        let data = wire::encode_orders(&pack.orders, proof.signature());
        let published = self.swarm.behaviour_mut().gossipsub.publish(topic, data);
        let deferral = match published {
            Ok(_) | Err(PublishError::Duplicate) => {
                if published.is_err() {
                    // This exact pack was deferred with every peer's queue full, and
                    // GossipSub had already put its message in its duplicate and message
                    // caches (libp2p-gossipsub 0.50, `Behaviour::publish` caches before it
                    // sends), so the identical retry is refused. The orders keep this proof
                    // (signing is deterministic: the cached message carries it) and peers
                    // that miss them pull them by repair when the batch is sealed.
                    tracing::warn!(
                        market,
                        orders = n,
                        "pack refused as a duplicate of its own deferred publish; peers get its orders by repair"
                    );
                }
                self.consensus.attach_proof(market, &pack.orders, &Arc::new(proof));
                self.retry_at.remove(market);
                self.credits.give_back(n, charge);
                let m = MarketLabel { market: market.to_owned() };
                self.metrics.orders_published.get_or_create(&m).inc_by(n as u64);
                let l = KindMarket { kind: TopicKind::Orders.as_str(), market: market.to_owned() };
                self.metrics.messages_published.get_or_create(&l).inc();
                self.metrics.orders_per_message.observe(n as f64);
                return true;
            }
            Err(PublishError::NoPeersSubscribedToTopic) => Deferral::NoPeers,
            Err(PublishError::AllQueuesFull(_)) => Deferral::QueuesFull,
            Err(other) => {
                // Signing or size failures cannot be fixed by retrying: the pack is dropped
                // loudly (the outbox packs within the cap, so this is a bug). Its orders
                // stay in their batch without a proof, so peers cannot repair them and the
                // engine is told `OrdersExcluded` when the batch is decided without them.
                tracing::error!(market, orders = n, error = %other, "publish failed; orders dropped");
                Deferral::PublishError
            }
        };
        let label = MarketReason { market: market.to_owned(), reason: deferral.as_str() };
        self.metrics.publish_retries.get_or_create(&label).inc();
        let retry = match deferral {
            Deferral::NoPeers => NO_PEERS_RETRY,
            Deferral::QueuesFull => QUEUES_FULL_RETRY,
            Deferral::PublishError => {
                self.credits.give_back(n, charge);
                return false;
            }
        };
        tracing::debug!(market, orders = n, reason = deferral.as_str(), "publish deferred; orders kept in the outbox");
        self.outbox.requeue_front(market, pack);
        self.retry_at.insert(market.to_owned(), now + retry);
        false
    }

    /// Exports the outbox's size in orders and bytes.
    fn export_outbox_size(&self) {
        self.metrics.outbox_orders.set(self.outbox.len() as i64);
        self.metrics.queue_memory.get_or_create(&QueueLabel { queue: "outbox" }).set(self.outbox.bytes() as i64);
    }
}
