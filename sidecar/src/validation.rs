//! Application validation of every inbound gossip message (GossipSub `validate_messages`):
//! nothing is forwarded to other peers or delivered to the engine before it passes here.
//!
//! Order of checks, cheapest first: topic of this network and of a traded market →
//! per-peer token bucket → [`Gossip::decode`] (size cap, protobuf, version, body kind,
//! signer; elided origin and market restored) → order schema → epoch window
//! ([`crate::epoch`]: beyond it is rejected, before it ignored as stale) → a 64-byte
//! origin signature on orders ([`crate::bundle`]; kept, not verified) → SHA-256
//! seen-cache of order digests ([`crate::dedup`]). Each outcome is counted in [`Metrics`];
//! the [`Verdict`] says what to tell GossipSub.

use std::collections::BTreeSet;
use std::sync::Arc;

use libp2p::PeerId;
use openmatch_gossip_crds::sidecar_config::RateLimitConfig;

use crate::bundle::{BundleProof, SIGNATURE_LEN};
use crate::dedup::SeenCache;
use crate::epoch::EpochClock;
use crate::metrics::{KindMarket, KindMarketReason, MarketLabel, Metrics};
use crate::proto::{Order, PeerStatus};
use crate::ratelimit::PeerRateLimiter;
use crate::topics::{Topic, TopicKind};
use crate::wire::{self, BatchResult, Digest, Gossip, SealedBatch, WireError};

/// Why a message was rejected (GossipSub penalty); [`RejectReason::as_str`] is its metric
/// label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RejectReason {
    /// Above the size cap.
    Oversized,
    /// Not a valid envelope (orders without a 64-byte origin signature included).
    Malformed,
    /// Another wire version.
    Version,
    /// A body the topic does not carry.
    WrongTopic,
    /// No signer.
    Unsigned,
    /// An order's origin or a `PeerStatus`'s node id is not the signer.
    ForgedOrigin,
    /// A field fails the schema.
    Invalid,
    /// An order, seal or result of an epoch beyond the epoch window.
    FutureEpoch,
    /// A bundle of orders whose origin signature does not verify.
    BadSignature,
}

impl RejectReason {
    /// Every reason, for creating their series at 0.
    pub(crate) const ALL: [RejectReason; 9] = [
        RejectReason::Oversized,
        RejectReason::Malformed,
        RejectReason::Version,
        RejectReason::WrongTopic,
        RejectReason::Unsigned,
        RejectReason::ForgedOrigin,
        RejectReason::Invalid,
        RejectReason::FutureEpoch,
        RejectReason::BadSignature,
    ];

    /// `oversized`, `malformed`, `version`, `wrong_topic`, `unsigned`, `forged_origin`,
    /// `invalid`, `future_epoch`, `bad_signature`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RejectReason::Oversized => "oversized",
            RejectReason::Malformed => "malformed",
            RejectReason::Version => "version",
            RejectReason::WrongTopic => "wrong_topic",
            RejectReason::Unsigned => "unsigned",
            RejectReason::ForgedOrigin => "forged_origin",
            RejectReason::Invalid => "invalid",
            RejectReason::FutureEpoch => "future_epoch",
            RejectReason::BadSignature => "bad_signature",
        }
    }
}

impl From<&WireError> for RejectReason {
    fn from(e: &WireError) -> Self {
        match e {
            WireError::Oversized { .. } => RejectReason::Oversized,
            WireError::Malformed(_) => RejectReason::Malformed,
            WireError::UnsupportedVersion(_) => RejectReason::Version,
            WireError::WrongTopic { .. } => RejectReason::WrongTopic,
            WireError::Unsigned => RejectReason::Unsigned,
            WireError::ForgedOrigin(_) => RejectReason::ForgedOrigin,
            WireError::Invalid(_) => RejectReason::Invalid,
        }
    }
}

/// Why a message was dropped without penalty and without forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IgnoreReason {
    /// Another network's topic, or a market not traded here.
    ForeignTopic,
    /// The forwarding peer is over its token bucket.
    RateLimited,
    /// Every order in it was seen already.
    Duplicate,
    /// An order, seal or result of an epoch older than the epoch window: its batch is
    /// decided (a lagging peer, not a hostile one, so no penalty).
    StaleEpoch,
}

/// What a message must fit besides its own checks: the markets this node trades and the
/// epoch window ([`EpochClock::window`]) at `now_ms` (Unix ms).
pub(crate) struct Admission<'a> {
    /// The markets traded now.
    pub(crate) markets: &'a BTreeSet<String>,
    /// The node's epochs.
    pub(crate) epochs: &'a EpochClock,
    /// Now, Unix ms.
    pub(crate) now_ms: u64,
}

impl Admission<'_> {
    /// Checks that `epoch` of `market` is in the window; `what` names it in the detail.
    fn epoch(&self, market: &str, epoch: u64, what: impl FnOnce() -> String) -> Result<(), Verdict> {
        let window = self.epochs.window(market, self.now_ms);
        if epoch > *window.end() {
            let detail = format!("{}: epoch {epoch} is beyond the epoch window {window:?}", what());
            Err(Verdict::Reject { reason: RejectReason::FutureEpoch, detail })
        } else if epoch < *window.start() {
            Err(Verdict::Ignore(IgnoreReason::StaleEpoch))
        } else {
            Ok(())
        }
    }
}

/// What the node does with a message.
#[derive(Debug, PartialEq)]
pub(crate) enum Verdict {
    /// Valid: forward it, and act on the payload.
    Accept(Payload),
    /// Invalid: drop it and penalise the sender (GossipSub P₄).
    Reject {
        /// Why (metric label).
        reason: RejectReason,
        /// Human-readable detail for the log.
        detail: String,
    },
    /// Drop without penalty and without forwarding.
    Ignore(IgnoreReason),
}

/// The useful content of an accepted message.
#[derive(Debug, PartialEq)]
pub(crate) enum Payload {
    /// Orders not seen before (duplicates removed), all of one market.
    Orders {
        /// Market of the topic.
        market: String,
        /// New orders, in message order, origin and market filled in.
        orders: Vec<Order>,
        /// Their order digests, index for index.
        digests: Vec<Digest>,
        /// The message's bundle proof (the origin's signature over every order of the
        /// message, duplicates included), for the batch to keep with each order.
        proof: Arc<BundleProof>,
    },
    /// A heartbeat from the signer.
    PeerStatus(PeerStatus),
    /// A batch seal.
    Seal(SealedBatch),
    /// A trade result.
    Result(BatchResult),
}

/// Validator state: limits, token buckets and the seen-cache.
pub(crate) struct Validator {
    network: String,
    max_message_bytes: usize,
    max_freeze_proof_bytes: usize,
    /// Order messages, per propagation source.
    rate: PeerRateLimiter,
    /// Seals, results and heartbeats, per propagation source.
    consensus_rate: PeerRateLimiter,
    seen: SeenCache,
    metrics: Arc<Metrics>,
}

/// Limits the validator enforces.
#[derive(Debug, Clone)]
pub(crate) struct ValidatorLimits {
    /// Size cap per message, bytes.
    pub(crate) max_message_bytes: usize,
    /// Size cap per freeze proof, bytes.
    pub(crate) max_freeze_proof_bytes: usize,
    /// Per-peer token bucket for order messages.
    pub(crate) rate_limit: RateLimitConfig,
    /// Per-peer token bucket for seals, results and heartbeats
    /// ([`crate::ratelimit::consensus_budget`]).
    pub(crate) consensus_rate_limit: RateLimitConfig,
    /// Seen-cache entries.
    pub(crate) dedup_capacity: usize,
}

impl Validator {
    /// A validator for `network`.
    pub(crate) fn new(network: &str, limits: ValidatorLimits, metrics: Arc<Metrics>) -> Self {
        Validator {
            network: network.to_owned(),
            max_message_bytes: limits.max_message_bytes,
            max_freeze_proof_bytes: limits.max_freeze_proof_bytes,
            rate: PeerRateLimiter::new(limits.rate_limit),
            consensus_rate: PeerRateLimiter::new(limits.consensus_rate_limit),
            seen: SeenCache::new(limits.dedup_capacity),
            metrics,
        }
    }

    /// Replaces the per-peer token buckets, for orders and for consensus traffic (hot
    /// reload; buckets restart full).
    pub(crate) fn set_rate_limits(&mut self, orders: RateLimitConfig, consensus: RateLimitConfig) {
        self.rate = PeerRateLimiter::new(orders);
        self.consensus_rate = PeerRateLimiter::new(consensus);
    }

    /// Records an order digest learnt outside gossip (repair), so a later gossip copy of the
    /// same order is a duplicate.
    pub(crate) fn remember(&mut self, digest: Digest) {
        self.seen.insert(digest);
    }

    /// Drops the state of peers whose buckets are full again (call periodically).
    pub(crate) fn forget_idle_buckets(&self) {
        self.rate.retain_recent();
        self.consensus_rate.retain_recent();
    }

    /// Validates one message that `propagation_source` forwarded, signed by `author`, on
    /// topic string `topic`.
    pub(crate) fn validate(
        &mut self,
        propagation_source: &PeerId,
        author: Option<&PeerId>,
        topic: &str,
        data: &[u8],
        admit: &Admission<'_>,
    ) -> Verdict {
        let Some(topic) = Topic::parse(&self.network, topic) else {
            return Verdict::Ignore(IgnoreReason::ForeignTopic);
        };
        if topic.kind != TopicKind::Control && !admit.markets.contains(&topic.market) {
            return Verdict::Ignore(IgnoreReason::ForeignTopic);
        }
        let labels = KindMarket { kind: topic.kind.as_str(), market: topic.market.clone() };
        self.metrics.messages_received.get_or_create(&labels).inc();

        let bucket = if topic.kind == TopicKind::Orders { &self.rate } else { &self.consensus_rate };
        if !bucket.check(propagation_source) {
            self.metrics.messages_rate_limited.get_or_create(&labels).inc();
            return Verdict::Ignore(IgnoreReason::RateLimited);
        }
        let verdict = match Gossip::decode(&topic, author, data, self.max_message_bytes) {
            Err(e) => Verdict::Reject { reason: RejectReason::from(&e), detail: e.to_string() },
            Ok(Gossip::Orders { market, orders, origin_signature }) => {
                self.check_orders(market, orders, &origin_signature, admit)
            }
            Ok(Gossip::PeerStatus(s)) => Verdict::Accept(Payload::PeerStatus(s)),
            Ok(Gossip::BatchSealed(s)) => match admit.epoch(&s.batch.market, s.batch.epoch, || "BatchSealed".into()) {
                Ok(()) => Verdict::Accept(Payload::Seal(s)),
                Err(v) => v,
            },
            Ok(Gossip::TradeResult(r)) => match admit.epoch(&r.batch.market, r.batch.epoch, || "TradeResult".into()) {
                Ok(()) => Verdict::Accept(Payload::Result(r)),
                Err(v) => v,
            },
        };
        match &verdict {
            Verdict::Reject { reason, detail } => {
                tracing::warn!(peer = %propagation_source, topic = %topic.name(&self.network), reason = reason.as_str(), detail, "rejected gossip message");
                let l = KindMarketReason { kind: labels.kind, market: labels.market, reason: reason.as_str() };
                self.metrics.messages_rejected.get_or_create(&l).inc();
            }
            Verdict::Ignore(IgnoreReason::Duplicate) => {
                self.metrics.messages_duplicate.get_or_create(&labels).inc();
            }
            Verdict::Ignore(IgnoreReason::StaleEpoch) => {
                self.metrics.messages_stale.get_or_create(&labels).inc();
            }
            _ => {}
        }
        verdict
    }

    /// Schema and epoch window of each order, the origin signature, then the seen-cache.
    ///
    /// The signature is verified here although GossipSub's strict validation already
    /// authenticated the message's author (every order's origin): the node keeps it as the
    /// orders' proof and serves it to members that repair them from it, who refuse a bad
    /// one and penalise the holder that served it. Kept unverified, a hostile origin could
    /// publish its orders with a garbage signature and so get honest holders banned. The
    /// cost is one Ed25519 verification per message (~37 µs; ~0.06 µs per order in a
    /// 5,000-order bundle), measured by `bundle::tests::signing_cost_per_bundle_and_per_order`.
    /// The signature is checked after the epochs, so that a stale message is ignored as
    /// stale whatever it carries.
    fn check_orders(
        &mut self,
        market: String,
        orders: Vec<Order>,
        origin_signature: &[u8],
        admit: &Admission<'_>,
    ) -> Verdict {
        for (i, o) in orders.iter().enumerate() {
            if let Err(e) = wire::check_order_fields(o, self.max_freeze_proof_bytes) {
                return Verdict::Reject { reason: RejectReason::from(&e), detail: format!("order #{i}: {e}") };
            }
            if let Err(v) = admit.epoch(&market, o.epoch, || format!("order #{i}")) {
                return v;
            }
        }
        let Ok(signature) = <[u8; SIGNATURE_LEN]>::try_from(origin_signature) else {
            let detail = format!(
                "GossipEnvelope.origin_signature: {} bytes, a bundle of orders needs {SIGNATURE_LEN}",
                origin_signature.len()
            );
            return Verdict::Reject { reason: RejectReason::Malformed, detail };
        };
        let total = orders.len();
        let all: Box<[Digest]> = orders.iter().map(wire::order_digest).collect();
        let signed = orders
            .first()
            .and_then(|o| crate::bundle::origin_key(&o.origin))
            .is_some_and(|key| key.verify(&crate::bundle::signed_message(&self.network, &market, &all), &signature));
        if !signed {
            let detail = "GossipEnvelope.origin_signature does not verify under the origin's key".to_owned();
            return Verdict::Reject { reason: RejectReason::BadSignature, detail };
        }
        let mut digests = Vec::with_capacity(total);
        let mut fresh = Vec::with_capacity(total);
        for (o, d) in orders.into_iter().zip(&all) {
            if self.seen.insert(*d) {
                digests.push(*d);
                fresh.push(o);
            }
        }
        let dups = (total - fresh.len()) as u64;
        if dups > 0 {
            self.metrics.orders_duplicate.get_or_create(&MarketLabel { market: market.clone() }).inc_by(dups);
        }
        if fresh.is_empty() {
            return Verdict::Ignore(IgnoreReason::Duplicate);
        }
        let proof = Arc::new(BundleProof::new(signature, all));
        Verdict::Accept(Payload::Orders { market, orders: fresh, digests, proof })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{OrderGossip, OrderKind, Side, gossip_envelope::Body};
    use prometheus_client::registry::Registry;
    use prost::Message as _;

    fn validator(rate: RateLimitConfig) -> (Validator, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::register(&mut Registry::default()));
        let limits = ValidatorLimits {
            max_message_bytes: 4096,
            max_freeze_proof_bytes: 64,
            rate_limit: rate,
            consensus_rate_limit: rate,
            dedup_capacity: 100,
        };
        (Validator::new("n", limits, metrics.clone()), metrics)
    }

    /// Now, in the tests: 100.5 s after the Unix epoch, i.e. in epoch 100 of 1 s epochs.
    const NOW_MS: u64 = 100_500;

    fn clock() -> EpochClock {
        EpochClock::new(&openmatch_gossip_crds::sidecar_config::ConsensusConfig::default())
    }

    fn validate(v: &mut Validator, src: &PeerId, author: Option<&PeerId>, topic: &str, data: &[u8]) -> Verdict {
        let markets = BTreeSet::from(["BTC-USDT".to_owned()]);
        v.validate(src, author, topic, data, &Admission { markets: &markets, epochs: &clock(), now_ms: NOW_MS })
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
            epoch: NOW_MS / 1000,
            ..Default::default()
        }
    }

    thread_local! {
        /// The keys of the peers made by [`peer`], so that [`msg`] can sign as them.
        static KEYS: std::cell::RefCell<std::collections::HashMap<PeerId, libp2p::identity::Keypair>> = Default::default();
    }

    /// A new peer whose key [`msg`] can sign with.
    fn peer() -> PeerId {
        let key = libp2p::identity::Keypair::generate_ed25519();
        let id = key.public().to_peer_id();
        KEYS.with(|k| k.borrow_mut().insert(id, key));
        id
    }

    /// A message of `orders` signed by their origin (network `n`), as an honest origin
    /// sends it; a 64-byte signature that does not verify if the origin is not a [`peer`].
    fn msg(orders: Vec<Order>) -> Vec<u8> {
        let origin = orders.first().and_then(|o| PeerId::from_bytes(&o.origin).ok());
        let key = origin.and_then(|o| KEYS.with(|k| k.borrow().get(&o).cloned()));
        let market = orders.first().map(|o| o.market.clone()).unwrap_or_default();
        let signature = match key {
            Some(key) => crate::bundle::sign_orders(&key, "n", &market, &orders).expect("an Ed25519 key"),
            None => vec![5; SIGNATURE_LEN],
        };
        signed(orders, signature)
    }

    fn signed(orders: Vec<Order>, origin_signature: Vec<u8>) -> Vec<u8> {
        let body = Some(Body::Orders(OrderGossip { orders }));
        crate::proto::GossipEnvelope { version: 1, body, origin_signature }.encode_to_vec()
    }

    const T: &str = "openmatch/n/orders/BTC-USDT";
    const FAST: RateLimitConfig = RateLimitConfig { messages_per_second: 1000, burst: 1000 };

    #[test]
    fn same_orders_from_two_peers_are_delivered_once() {
        let (mut v, m) = validator(FAST);
        let (a, b, author) = (peer(), peer(), peer());
        let first = validate(&mut v, &a, Some(&author), T, &msg(vec![order(&author, 1)]));
        assert!(matches!(first, Verdict::Accept(Payload::Orders { ref orders, .. }) if orders.len() == 1));
        let again = validate(&mut v, &b, Some(&author), T, &msg(vec![order(&author, 1)]));
        assert_eq!(again, Verdict::Ignore(IgnoreReason::Duplicate));
        // A re-pack with one new order delivers only the new one.
        let mixed = validate(&mut v, &b, Some(&author), T, &msg(vec![order(&author, 1), order(&author, 2)]));
        match mixed {
            Verdict::Accept(Payload::Orders { orders, .. }) => {
                assert_eq!(orders.iter().map(|o| o.id).collect::<Vec<_>>(), vec![2])
            }
            other => panic!("{other:?}"),
        }
        let l = MarketLabel { market: "BTC-USDT".into() };
        assert_eq!(m.orders_duplicate.get_or_create(&l).get(), 2);
    }

    /// A message of orders needs its origin's signature: without 64 bytes it is rejected as
    /// malformed, with 64 bytes that do not verify (another key, another network) as
    /// `bad_signature` (both counted), its orders not marked seen. Checked after the
    /// epochs: a stale message is still only stale. The accepted message's proof lists
    /// every order, duplicates included, since the signature covers them all.
    #[test]
    fn orders_need_their_origins_signature_which_is_kept() {
        let (mut v, m) = validator(FAST);
        let (src, author) = (peer(), peer());
        for sig in [vec![], vec![5; 63], vec![5; 65]] {
            let verdict = validate(&mut v, &src, Some(&author), T, &signed(vec![order(&author, 1)], sig.clone()));
            assert!(
                matches!(verdict, Verdict::Reject { reason: RejectReason::Malformed, ref detail } if detail.contains("origin_signature")),
                "{} bytes: {verdict:?}",
                sig.len()
            );
        }
        let l = KindMarketReason { kind: "orders", market: "BTC-USDT".into(), reason: "malformed" };
        assert_eq!(m.messages_rejected.get_or_create(&l).get(), 3);
        let stale = Order { epoch: 1, ..order(&author, 2) };
        assert_eq!(
            validate(&mut v, &src, Some(&author), T, &signed(vec![stale], vec![])),
            Verdict::Ignore(IgnoreReason::StaleEpoch)
        );
        assert!(matches!(validate(&mut v, &src, Some(&author), T, &msg(vec![order(&author, 3)])), Verdict::Accept(_)));
        let both = vec![order(&author, 3), order(&author, 1)];
        // 64 bytes that are not the origin's signature: refused, nothing marked seen.
        let verdict = validate(&mut v, &src, Some(&author), T, &signed(both.clone(), vec![9; 64]));
        assert!(matches!(verdict, Verdict::Reject { reason: RejectReason::BadSignature, .. }), "{verdict:?}");
        let l = KindMarketReason { kind: "orders", market: "BTC-USDT".into(), reason: "bad_signature" };
        assert_eq!(m.messages_rejected.get_or_create(&l).get(), 1);
        // The signature of another network does not verify either.
        let key = KEYS.with(|k| k.borrow()[&author].clone());
        let elsewhere = crate::bundle::sign_orders(&key, "other", "BTC-USDT", &both).unwrap();
        let verdict = validate(&mut v, &src, Some(&author), T, &signed(both.clone(), elsewhere));
        assert!(matches!(verdict, Verdict::Reject { reason: RejectReason::BadSignature, .. }), "{verdict:?}");
        let good = crate::bundle::sign_orders(&key, "n", "BTC-USDT", &both).unwrap();
        match validate(&mut v, &src, Some(&author), T, &signed(both.clone(), good.clone())) {
            Verdict::Accept(Payload::Orders { orders, proof, .. }) => {
                assert_eq!(orders, vec![order(&author, 1)], "order 1 was not marked seen by the rejected messages");
                let want: Vec<Digest> = both.iter().map(wire::order_digest).collect();
                assert_eq!(proof.digests(), want.as_slice());
                assert_eq!(proof.signature().as_slice(), good.as_slice());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn elided_origin_and_market_are_filled_from_signer_and_topic() {
        let (mut v, _) = validator(FAST);
        let (src, author) = (peer(), peer());
        let wire_order = Order { origin: Default::default(), market: String::new(), ..order(&author, 5) };
        // The origin signs the orders as receivers restore them.
        let key = KEYS.with(|k| k.borrow()[&author].clone());
        let signature = crate::bundle::sign_orders(&key, "n", "BTC-USDT", &[order(&author, 5)]).unwrap();
        match validate(&mut v, &src, Some(&author), T, &signed(vec![wire_order], signature)) {
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
        let (src, author, other) = (peer(), peer(), peer());
        let forged = validate(&mut v, &src, Some(&author), T, &msg(vec![order(&other, 1)]));
        assert!(matches!(forged, Verdict::Reject { reason: RejectReason::ForgedOrigin, .. }));
        let zero_qty = Order { quantity_lots: 0, ..order(&author, 2) };
        let bad = validate(&mut v, &src, Some(&author), T, &msg(vec![zero_qty]));
        assert!(
            matches!(bad, Verdict::Reject { reason: RejectReason::Invalid, ref detail } if detail.contains("quantity_lots"))
        );
        let wrong_market = Order { market: "ETH-USDT".into(), ..order(&author, 3) };
        assert!(matches!(validate(&mut v, &src, Some(&author), T, &msg(vec![wrong_market])), Verdict::Reject { .. }));
        let l = KindMarketReason { kind: "orders", market: "BTC-USDT".into(), reason: "forged_origin" };
        assert_eq!(m.messages_rejected.get_or_create(&l).get(), 1);
    }

    /// The window at 100.5 s with the default timing is epochs 89..=101 (see `epoch`).
    #[test]
    fn orders_seals_and_results_outside_the_epoch_window_create_nothing() {
        use crate::proto::{BatchId, BatchSealed, TradeResult};
        let (mut v, m) = validator(FAST);
        let (src, author) = (peer(), peer());
        let order_at = |id, epoch| msg(vec![Order { epoch, ..order(&author, id) }]);
        for (id, epoch) in [(1, 89), (2, 101)] {
            assert!(matches!(validate(&mut v, &src, Some(&author), T, &order_at(id, epoch)), Verdict::Accept(_)));
        }
        let future = validate(&mut v, &src, Some(&author), T, &order_at(3, 102));
        assert!(
            matches!(future, Verdict::Reject { reason: RejectReason::FutureEpoch, ref detail } if detail.contains("epoch 102 is beyond the epoch window 89..=101")),
            "{future:?}"
        );
        assert_eq!(
            validate(&mut v, &src, Some(&author), T, &order_at(4, 88)),
            Verdict::Ignore(IgnoreReason::StaleEpoch)
        );
        let seal = |epoch| {
            wire::encode(Body::BatchSealed(BatchSealed {
                batch_id: Some(BatchId { market: "BTC-USDT".into(), epoch }),
                batch_hash: vec![1; 32],
                order_count: 1,
                revision: 0,
            }))
        };
        let bt = "openmatch/n/batches/BTC-USDT";
        assert!(matches!(validate(&mut v, &src, Some(&author), bt, &seal(100)), Verdict::Accept(Payload::Seal(_))));
        for hostile in [u64::MAX, 102] {
            assert!(matches!(
                validate(&mut v, &src, Some(&author), bt, &seal(hostile)),
                Verdict::Reject { reason: RejectReason::FutureEpoch, .. }
            ));
        }
        assert_eq!(validate(&mut v, &src, Some(&author), bt, &seal(0)), Verdict::Ignore(IgnoreReason::StaleEpoch));
        let result = wire::encode(Body::TradeResult(TradeResult {
            batch_id: Some(BatchId { market: "BTC-USDT".into(), epoch: 1000 }),
            result_hash: vec![1; 32],
            trade_count: 0,
        }));
        let rt = "openmatch/n/results/BTC-USDT";
        assert!(matches!(
            validate(&mut v, &src, Some(&author), rt, &result),
            Verdict::Reject { reason: RejectReason::FutureEpoch, .. }
        ));
        let stale = |kind| m.messages_stale.get_or_create(&KindMarket { kind, market: "BTC-USDT".into() }).get();
        assert_eq!((stale("orders"), stale("batches")), (1, 1));
        let l = KindMarketReason { kind: "batches", market: "BTC-USDT".into(), reason: "future_epoch" };
        assert_eq!(m.messages_rejected.get_or_create(&l).get(), 2);
    }

    #[test]
    fn consensus_bodies_need_a_32_byte_hash_and_the_topic_market() {
        use crate::proto::{BatchId, BatchSealed, TradeResult};
        let (mut v, _) = validator(FAST);
        let (src, author) = (peer(), peer());
        let id = |m: &str| Some(BatchId { market: m.into(), epoch: NOW_MS / 1000 });
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
            validate(&mut v, &src, Some(&author), bt, &seal(vec![1; 32], "BTC-USDT")),
            Verdict::Accept(Payload::Seal(_) | Payload::Result(_))
        ));
        assert!(matches!(
            validate(&mut v, &src, Some(&author), bt, &seal(vec![1; 31], "BTC-USDT")),
            Verdict::Reject { reason: RejectReason::Invalid, .. }
        ));
        assert!(
            matches!(
                validate(&mut v, &src, Some(&author), bt, &seal(vec![1; 32], "ETH-USDT")),
                Verdict::Reject { reason: RejectReason::Invalid, .. }
            ),
            "batch of another market"
        );
        assert!(matches!(
            validate(&mut v, &src, Some(&author), rt, &result(vec![1; 32], "BTC-USDT")),
            Verdict::Accept(Payload::Seal(_) | Payload::Result(_))
        ));
        assert!(matches!(
            validate(&mut v, &src, Some(&author), rt, &result(vec![], "BTC-USDT")),
            Verdict::Reject { reason: RejectReason::Invalid, .. }
        ));
        assert!(
            matches!(
                validate(&mut v, &src, Some(&author), bt, &result(vec![1; 32], "BTC-USDT")),
                Verdict::Reject { reason: RejectReason::WrongTopic, .. }
            ),
            "a result on the batches topic"
        );
    }

    #[test]
    fn oversized_and_malformed_are_rejected_and_counted() {
        let (mut v, m) = validator(FAST);
        let (src, author) = (peer(), peer());
        let big = msg((0..200).map(|i| order(&author, i)).collect());
        assert!(big.len() > 4096);
        assert!(matches!(
            validate(&mut v, &src, Some(&author), T, &big),
            Verdict::Reject { reason: RejectReason::Oversized, .. }
        ));
        assert!(matches!(
            validate(&mut v, &src, Some(&author), T, b"\xff\xff"),
            Verdict::Reject { reason: RejectReason::Malformed, .. }
        ));
        let l = KindMarketReason { kind: "orders", market: "BTC-USDT".into(), reason: "oversized" };
        assert_eq!(m.messages_rejected.get_or_create(&l).get(), 1);
    }

    #[test]
    fn peer_over_rate_is_ignored_and_counted_other_peer_unaffected() {
        let (mut v, m) = validator(RateLimitConfig { messages_per_second: 1, burst: 3 });
        let (fast, slow, author) = (peer(), peer(), peer());
        let verdicts: Vec<Verdict> =
            (0..10).map(|i| validate(&mut v, &fast, Some(&author), T, &msg(vec![order(&author, i)]))).collect();
        let accepted = verdicts.iter().filter(|v| matches!(v, Verdict::Accept(_))).count();
        assert!((3..=4).contains(&accepted), "{accepted}");
        let l = KindMarket { kind: "orders", market: "BTC-USDT".into() };
        assert_eq!(m.messages_rate_limited.get_or_create(&l).get() as usize, 10 - accepted);
        let other = validate(&mut v, &slow, Some(&author), T, &msg(vec![order(&author, 100)]));
        assert!(matches!(other, Verdict::Accept(_)));
    }

    #[test]
    fn foreign_topics_are_ignored_and_peer_status_checked() {
        let (mut v, _) = validator(FAST);
        let (src, author) = (peer(), peer());
        let data = msg(vec![order(&author, 1)]);
        assert_eq!(
            validate(&mut v, &src, Some(&author), "openmatch/other/orders/BTC-USDT", &data),
            Verdict::Ignore(IgnoreReason::ForeignTopic)
        );
        assert_eq!(
            validate(&mut v, &src, Some(&author), "openmatch/n/orders/DOGE-USDT", &data),
            Verdict::Ignore(IgnoreReason::ForeignTopic)
        );
        let status =
            |id: &PeerId| wire::encode(Body::PeerStatus(PeerStatus { node_id: id.to_bytes(), ..Default::default() }));
        assert!(matches!(
            validate(&mut v, &src, Some(&author), "openmatch/n/control", &status(&author)),
            Verdict::Accept(Payload::PeerStatus(_))
        ));
        assert!(matches!(
            validate(&mut v, &src, Some(&author), "openmatch/n/control", &status(&src)),
            Verdict::Reject { reason: RejectReason::ForgedOrigin, .. }
        ));
    }
}
