//! Application validation of every inbound gossip message (GossipSub `validate_messages`):
//! nothing is forwarded to other peers or delivered to the engine before it passes here.
//!
//! Order of checks, cheapest first: topic of this network → per-peer token bucket → size
//! cap → protobuf decode, version and body kind → schema (market of the topic, fields,
//! signed author = order origin; both filled in when elided on the wire) → SHA-256
//! seen-cache of order digests. Each outcome is
//! counted in [`Metrics`]; the [`Verdict`] says what to tell GossipSub.

use std::collections::HashSet;
use std::sync::Arc;

use libp2p::PeerId;

use crate::dedup::SeenCache;
use crate::metrics::{KindMarket, KindMarketReason, MarketLabel, Metrics};
use crate::proto::{Order, PeerStatus, gossip_envelope::Body};
use crate::ratelimit::PeerRateLimiter;
use crate::topics::{Topic, TopicKind};
use crate::wire::{self, WireError};

/// What the node does with a message.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// Valid: forward it, and act on the payload.
    Accept(Payload),
    /// Invalid: drop it and penalise the sender (GossipSub P₄). `reason` is a metric label.
    Reject {
        /// Short reason (metric label).
        reason: &'static str,
        /// Human-readable detail for the log.
        detail: String,
    },
    /// Drop without penalty and without forwarding (over rate, all duplicates, foreign
    /// topic).
    Ignore {
        /// Short reason (metric label).
        reason: &'static str,
    },
}

/// The useful content of an accepted message.
#[derive(Debug, PartialEq)]
pub enum Payload {
    /// Orders not seen before (duplicates removed), all of one market.
    Orders {
        /// Market of the topic.
        market: String,
        /// New orders, in message order, origin and market filled in.
        orders: Vec<Order>,
        /// Their order digests, index for index.
        digests: Vec<crate::dedup::Digest>,
    },
    /// A heartbeat from `author`.
    PeerStatus(PeerStatus),
    /// A batch seal or a trade result (consensus bodies; acted on by later stages).
    Consensus(Body),
}

/// Validator state: limits, token buckets and the seen-cache.
pub struct Validator {
    network: String,
    markets: HashSet<String>,
    max_message_bytes: usize,
    max_freeze_proof_bytes: usize,
    rate: PeerRateLimiter,
    seen: SeenCache,
    metrics: Arc<Metrics>,
    /// Highest epoch an order may carry (clock sealing: the current epoch + 1, for clock
    /// skew); `None` when epochs are engine-driven.
    max_epoch: Option<u64>,
}

/// Limits the validator enforces.
#[derive(Debug, Clone)]
pub struct ValidatorLimits {
    /// Size cap per message, bytes.
    pub max_message_bytes: usize,
    /// Size cap per freeze proof, bytes.
    pub max_freeze_proof_bytes: usize,
    /// Per-peer token bucket.
    pub rate_limit: openmatch_gossip_crds::sidecar_config::RateLimitConfig,
    /// Seen-cache entries.
    pub dedup_capacity: usize,
}

impl Validator {
    /// A validator for `network` trading `markets`.
    pub fn new(network: &str, markets: &[String], limits: ValidatorLimits, metrics: Arc<Metrics>) -> Self {
        Validator {
            network: network.to_owned(),
            markets: markets.iter().cloned().collect(),
            max_message_bytes: limits.max_message_bytes,
            max_freeze_proof_bytes: limits.max_freeze_proof_bytes,
            rate: PeerRateLimiter::new(limits.rate_limit),
            seen: SeenCache::new(limits.dedup_capacity),
            metrics,
            max_epoch: None,
        }
    }

    /// Replaces the markets whose topics are accepted (hot reload).
    pub fn set_markets(&mut self, markets: &[String]) {
        self.markets = markets.iter().cloned().collect();
    }

    /// Replaces the per-peer token buckets (hot reload; buckets restart full).
    pub fn set_rate_limit(&mut self, rate: openmatch_gossip_crds::sidecar_config::RateLimitConfig) {
        self.rate = PeerRateLimiter::new(rate);
    }

    /// Records an order digest learnt outside gossip (repair), so a later gossip copy of the
    /// same order is a duplicate.
    pub fn remember(&mut self, digest: crate::dedup::Digest) {
        self.seen.insert(digest);
    }

    /// Sets the highest epoch an order may carry (see the clock); `None` disables the check.
    pub fn set_max_epoch(&mut self, max: Option<u64>) {
        self.max_epoch = max;
    }

    /// The token buckets, for periodic cleanup.
    pub fn rate_limiter(&self) -> &PeerRateLimiter {
        &self.rate
    }

    /// Validates one message that `propagation_source` forwarded, signed by `author`, on
    /// topic string `topic`.
    pub fn validate(
        &mut self,
        propagation_source: &PeerId,
        author: Option<&PeerId>,
        topic: &str,
        data: &[u8],
    ) -> Verdict {
        let Some(topic) = Topic::parse(&self.network, topic) else {
            return Verdict::Ignore { reason: "foreign_topic" };
        };
        if topic.kind != TopicKind::Control && !self.markets.contains(&topic.market) {
            return Verdict::Ignore { reason: "foreign_topic" };
        }
        let labels = KindMarket { kind: topic.kind.as_str(), market: topic.market.clone() };
        self.metrics.messages_received.get_or_create(&labels).inc();

        if !self.rate.check(propagation_source) {
            self.metrics.messages_rate_limited.get_or_create(&labels).inc();
            return Verdict::Ignore { reason: "rate_limited" };
        }
        let verdict = match wire::decode(data, self.max_message_bytes, topic.kind) {
            Err(e) => reject(e.reason(), e.to_string()),
            Ok(body) => self.check_body(&topic, author, body),
        };
        match &verdict {
            Verdict::Reject { reason, detail } => {
                tracing::warn!(peer = %propagation_source, topic = %topic.name(&self.network), reason, detail, "rejected gossip message");
                let l = KindMarketReason { kind: labels.kind, market: labels.market, reason };
                self.metrics.messages_rejected.get_or_create(&l).inc();
            }
            Verdict::Ignore { reason: "duplicate" } => {
                self.metrics.messages_duplicate.get_or_create(&labels).inc();
            }
            _ => {}
        }
        verdict
    }

    fn check_body(&mut self, topic: &Topic, author: Option<&PeerId>, body: Body) -> Verdict {
        let Some(author) = author else {
            return reject("unsigned", "message has no author".into());
        };
        match body {
            Body::Orders(g) => self.check_orders(topic, author, g.orders),
            Body::PeerStatus(s) => {
                if s.node_id != author.to_bytes() {
                    return reject("forged_origin", "PeerStatus.node_id is not the signer".into());
                }
                Verdict::Accept(Payload::PeerStatus(s))
            }
            Body::BatchSealed(b) => match check_consensus_body(topic, &b.batch_id, &b.batch_hash, "BatchSealed") {
                None => Verdict::Accept(Payload::Consensus(Body::BatchSealed(b))),
                Some(v) => v,
            },
            Body::TradeResult(r) => match check_consensus_body(topic, &r.batch_id, &r.result_hash, "TradeResult") {
                None => Verdict::Accept(Payload::Consensus(Body::TradeResult(r))),
                Some(v) => v,
            },
        }
    }

    fn check_orders(&mut self, topic: &Topic, author: &PeerId, mut orders: Vec<Order>) -> Verdict {
        if orders.is_empty() {
            return reject("invalid", "OrderGossip without orders".into());
        }
        let author_bytes = bytes::Bytes::from(author.to_bytes());
        for (i, o) in orders.iter_mut().enumerate() {
            // Origin and market are elided on the wire (implied by signer and topic); if
            // present they must agree.
            if o.market.is_empty() {
                o.market.clone_from(&topic.market);
            } else if o.market != topic.market {
                return reject("invalid", format!("order #{i}: market {:?} on the {} topic", o.market, topic.market));
            }
            if o.origin.is_empty() {
                o.origin = author_bytes.clone();
            } else if o.origin != author_bytes {
                return reject("forged_origin", format!("order #{i}: origin is not the message's signer"));
            }
            if let Err(e) = wire::check_order_fields(o, self.max_freeze_proof_bytes) {
                return reject(e.reason(), format!("order #{i}: {e}"));
            }
            if let Some(max) = self.max_epoch
                && o.epoch > max
            {
                return reject(
                    "future_epoch",
                    format!("order #{i}: epoch {} is beyond the current epoch {}", o.epoch, max - 1),
                );
            }
        }
        let total = orders.len();
        let mut digests = Vec::with_capacity(total);
        let mut fresh = Vec::with_capacity(total);
        for o in orders {
            let d = wire::order_digest(&o);
            if self.seen.insert(d) {
                digests.push(d);
                fresh.push(o);
            }
        }
        let dups = (total - fresh.len()) as u64;
        if dups > 0 {
            self.metrics.orders_duplicate.get_or_create(&MarketLabel { market: topic.market.clone() }).inc_by(dups);
        }
        if fresh.is_empty() {
            return Verdict::Ignore { reason: "duplicate" };
        }
        Verdict::Accept(Payload::Orders { market: topic.market.clone(), orders: fresh, digests })
    }
}

/// `BatchSealed` and `TradeResult` must name a batch of the topic's market and carry a
/// 32-byte hash; `None` when they do.
fn check_consensus_body(topic: &Topic, id: &Option<crate::proto::BatchId>, hash: &[u8], what: &str) -> Option<Verdict> {
    let ok = hash.len() == 32 && id.as_ref().is_some_and(|id| id.market == topic.market);
    (!ok).then(|| reject("invalid", format!("{what} needs a 32-byte hash and a batch of the topic's market")))
}

fn reject(reason: &'static str, detail: String) -> Verdict {
    Verdict::Reject { reason, detail }
}

impl From<WireError> for Verdict {
    fn from(e: WireError) -> Self {
        reject(e.reason(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{OrderGossip, OrderKind, Side};
    use openmatch_gossip_crds::sidecar_config::RateLimitConfig;
    use prometheus_client::registry::Registry;

    fn validator(rate: RateLimitConfig) -> (Validator, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::register(&mut Registry::default()));
        let limits = ValidatorLimits {
            max_message_bytes: 4096,
            max_freeze_proof_bytes: 64,
            rate_limit: rate,
            dedup_capacity: 100,
        };
        (Validator::new("n", &["BTC-USDT".into()], limits, metrics.clone()), metrics)
    }

    fn order(origin: &PeerId, id: u64) -> Order {
        Order {
            id,
            market: "BTC-USDT".into(),
            side: Side::Buy as i32,
            kind: OrderKind::Limit as i32,
            price_ticks: 100,
            quantity_lots: 1,
            origin: origin.to_bytes().into(),
            ..Default::default()
        }
    }

    fn msg(orders: Vec<Order>) -> Vec<u8> {
        wire::encode(Body::Orders(OrderGossip { orders }))
    }

    const T: &str = "openmatch/n/orders/BTC-USDT";
    const FAST: RateLimitConfig = RateLimitConfig { messages_per_second: 1000, burst: 1000 };

    #[test]
    fn same_orders_from_two_peers_are_delivered_once() {
        let (mut v, m) = validator(FAST);
        let (a, b, author) = (PeerId::random(), PeerId::random(), PeerId::random());
        let first = v.validate(&a, Some(&author), T, &msg(vec![order(&author, 1)]));
        assert!(matches!(first, Verdict::Accept(Payload::Orders { ref orders, .. }) if orders.len() == 1));
        let again = v.validate(&b, Some(&author), T, &msg(vec![order(&author, 1)]));
        assert_eq!(again, Verdict::Ignore { reason: "duplicate" });
        // A re-pack with one new order delivers only the new one.
        let mixed = v.validate(&b, Some(&author), T, &msg(vec![order(&author, 1), order(&author, 2)]));
        match mixed {
            Verdict::Accept(Payload::Orders { orders, .. }) => {
                assert_eq!(orders.iter().map(|o| o.id).collect::<Vec<_>>(), vec![2])
            }
            other => panic!("{other:?}"),
        }
        let l = MarketLabel { market: "BTC-USDT".into() };
        assert_eq!(m.orders_duplicate.get_or_create(&l).get(), 2);
    }

    #[test]
    fn elided_origin_and_market_are_filled_from_signer_and_topic() {
        let (mut v, _) = validator(FAST);
        let (src, author) = (PeerId::random(), PeerId::random());
        let wire_order = Order { origin: Default::default(), market: String::new(), ..order(&author, 5) };
        match v.validate(&src, Some(&author), T, &msg(vec![wire_order])) {
            Verdict::Accept(Payload::Orders { orders, digests, .. }) => {
                assert_eq!(orders, vec![order(&author, 5)]);
                assert_eq!(digests, vec![wire::order_digest(&order(&author, 5))]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn forged_origin_and_bad_fields_are_rejected() {
        let (mut v, m) = validator(FAST);
        let (src, author, other) = (PeerId::random(), PeerId::random(), PeerId::random());
        let forged = v.validate(&src, Some(&author), T, &msg(vec![order(&other, 1)]));
        assert!(matches!(forged, Verdict::Reject { reason: "forged_origin", .. }));
        let zero_qty = Order { quantity_lots: 0, ..order(&author, 2) };
        let bad = v.validate(&src, Some(&author), T, &msg(vec![zero_qty]));
        assert!(matches!(bad, Verdict::Reject { reason: "invalid", ref detail } if detail.contains("quantity_lots")));
        let wrong_market = Order { market: "ETH-USDT".into(), ..order(&author, 3) };
        assert!(matches!(v.validate(&src, Some(&author), T, &msg(vec![wrong_market])), Verdict::Reject { .. }));
        let l = KindMarketReason { kind: "orders", market: "BTC-USDT".into(), reason: "forged_origin" };
        assert_eq!(m.messages_rejected.get_or_create(&l).get(), 1);
    }

    #[test]
    fn orders_from_a_future_epoch_are_rejected() {
        let (mut v, _) = validator(FAST);
        v.set_max_epoch(Some(11));
        let (src, author) = (PeerId::random(), PeerId::random());
        let ok = Order { epoch: 11, ..order(&author, 1) };
        assert!(matches!(v.validate(&src, Some(&author), T, &msg(vec![ok])), Verdict::Accept(_)));
        let future = Order { epoch: 12, ..order(&author, 2) };
        assert!(matches!(
            v.validate(&src, Some(&author), T, &msg(vec![future])),
            Verdict::Reject { reason: "future_epoch", .. }
        ));
    }

    #[test]
    fn consensus_bodies_need_a_32_byte_hash_and_the_topic_market() {
        use crate::proto::{BatchId, BatchSealed, TradeResult};
        let (mut v, _) = validator(FAST);
        let (src, author) = (PeerId::random(), PeerId::random());
        let id = |m: &str| Some(BatchId { market: m.into(), epoch: 3 });
        let seal = |hash: Vec<u8>, m: &str| {
            wire::encode(Body::BatchSealed(BatchSealed {
                batch_id: id(m),
                batch_hash: hash,
                order_count: 1,
                revision: 0,
            }))
        };
        let result = |hash: Vec<u8>, m: &str| {
            wire::encode(Body::TradeResult(TradeResult { batch_id: id(m), result_hash: hash, trade_count: 0 }))
        };
        let bt = "openmatch/n/batches/BTC-USDT";
        let rt = "openmatch/n/results/BTC-USDT";
        assert!(matches!(
            v.validate(&src, Some(&author), bt, &seal(vec![1; 32], "BTC-USDT")),
            Verdict::Accept(Payload::Consensus(_))
        ));
        assert!(matches!(
            v.validate(&src, Some(&author), bt, &seal(vec![1; 31], "BTC-USDT")),
            Verdict::Reject { reason: "invalid", .. }
        ));
        assert!(
            matches!(
                v.validate(&src, Some(&author), bt, &seal(vec![1; 32], "ETH-USDT")),
                Verdict::Reject { reason: "invalid", .. }
            ),
            "batch of another market"
        );
        assert!(matches!(
            v.validate(&src, Some(&author), rt, &result(vec![1; 32], "BTC-USDT")),
            Verdict::Accept(Payload::Consensus(_))
        ));
        assert!(matches!(
            v.validate(&src, Some(&author), rt, &result(vec![], "BTC-USDT")),
            Verdict::Reject { reason: "invalid", .. }
        ));
        assert!(
            matches!(
                v.validate(&src, Some(&author), bt, &result(vec![1; 32], "BTC-USDT")),
                Verdict::Reject { reason: "wrong_topic", .. }
            ),
            "a result on the batches topic"
        );
    }

    #[test]
    fn oversized_and_malformed_are_rejected_and_counted() {
        let (mut v, m) = validator(FAST);
        let (src, author) = (PeerId::random(), PeerId::random());
        let big = msg((0..200).map(|i| order(&author, i)).collect());
        assert!(big.len() > 4096);
        assert!(matches!(v.validate(&src, Some(&author), T, &big), Verdict::Reject { reason: "oversized", .. }));
        assert!(matches!(v.validate(&src, Some(&author), T, b"\xff\xff"), Verdict::Reject { reason: "malformed", .. }));
        let l = KindMarketReason { kind: "orders", market: "BTC-USDT".into(), reason: "oversized" };
        assert_eq!(m.messages_rejected.get_or_create(&l).get(), 1);
    }

    #[test]
    fn peer_over_rate_is_ignored_and_counted_other_peer_unaffected() {
        let (mut v, m) = validator(RateLimitConfig { messages_per_second: 1, burst: 3 });
        let (fast, slow, author) = (PeerId::random(), PeerId::random(), PeerId::random());
        let verdicts: Vec<Verdict> =
            (0..10).map(|i| v.validate(&fast, Some(&author), T, &msg(vec![order(&author, i)]))).collect();
        let accepted = verdicts.iter().filter(|v| matches!(v, Verdict::Accept(_))).count();
        assert!((3..=4).contains(&accepted), "{accepted}");
        let l = KindMarket { kind: "orders", market: "BTC-USDT".into() };
        assert_eq!(m.messages_rate_limited.get_or_create(&l).get() as usize, 10 - accepted);
        let other = v.validate(&slow, Some(&author), T, &msg(vec![order(&author, 100)]));
        assert!(matches!(other, Verdict::Accept(_)));
    }

    #[test]
    fn foreign_topics_are_ignored_and_peer_status_checked() {
        let (mut v, _) = validator(FAST);
        let (src, author) = (PeerId::random(), PeerId::random());
        let data = msg(vec![order(&author, 1)]);
        assert_eq!(
            v.validate(&src, Some(&author), "openmatch/other/orders/BTC-USDT", &data),
            Verdict::Ignore { reason: "foreign_topic" }
        );
        assert_eq!(
            v.validate(&src, Some(&author), "openmatch/n/orders/DOGE-USDT", &data),
            Verdict::Ignore { reason: "foreign_topic" }
        );
        let status =
            |id: &PeerId| wire::encode(Body::PeerStatus(PeerStatus { node_id: id.to_bytes(), ..Default::default() }));
        assert!(matches!(
            v.validate(&src, Some(&author), "openmatch/n/control", &status(&author)),
            Verdict::Accept(Payload::PeerStatus(_))
        ));
        assert!(matches!(
            v.validate(&src, Some(&author), "openmatch/n/control", &status(&src)),
            Verdict::Reject { reason: "forged_origin", .. }
        ));
    }
}
