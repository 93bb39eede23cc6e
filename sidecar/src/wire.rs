//! Gossip message encoding: the one place where the wire and the node's domain types meet,
//! as lighthouse's `PubsubMessage::encode` / `decode` own it. It holds the versioned
//! [`GossipEnvelope`], its size-capped decoding into a typed [`Gossip`], the borrowing
//! encode of a market's orders, and the canonical order encoding behind the order digest.
//!
//! ## Elided fields
//! On the wire an order carries neither `origin` nor `market`: they are implied by the
//! message's signer and its topic. [`encode_orders`] never writes them, and
//! [`Gossip::decode`] fills them in (or, if a sender wrote them, checks that they agree).
//! A batch stores its orders without `market`, the batch key holding it, and serves them
//! with it restored (`consensus::batch_orders`). No other module clears or restores these
//! fields.
//!
//! ## Origin signature
//! A message of orders carries, in its envelope, the origin's signature over the bundle
//! ([`crate::bundle`]): [`encode_orders`] writes it after the body, and
//! [`Gossip::decode`] hands it over as it came; [`crate::validation`] requires 64 bytes.
//!
//! ## Canonical order encoding (version 1)
//! The order digest is SHA-256 over these bytes, all integers big-endian:
//!
//! | field | encoding |
//! |---|---|
//! | tag | the 4 ASCII bytes `OMO1` |
//! | origin | u32 length, then the peer id's multihash bytes |
//! | id | u64 |
//! | market | u32 length, then UTF-8 bytes |
//! | epoch | u64 |
//! | side | u8 (1 buy, 2 sell) |
//! | kind | u8 (1 limit, 2 market, 3 cancel) |
//! | price_ticks | u64 |
//! | quantity_lots | u64 |
//! | client_ts_ns | u64 |
//! | freeze_proof | u32 length, then the bytes |
//!
//! `submitted_at_ns` is excluded: it is a measurement, not part of the order. The encoding
//! is independent of protobuf so that an engine in any language can reproduce digests.

use libp2p::PeerId;
use prost::Message as _;
use prost::encoding::{self as pb, WireType};
use sha2::{Digest as _, Sha256};

use crate::proto::{BatchId, GossipEnvelope, Order, OrderKind, PeerStatus, Side, gossip_envelope::Body};
use crate::topics::{Topic, TopicKind};

/// A SHA-256 digest (32 bytes): an order digest, a batch hash or a result hash.
pub type Digest = [u8; 32];

/// Version written into and required of every [`GossipEnvelope`].
pub(crate) const WIRE_VERSION: u32 = 1;

/// A batch: one market's orders of one epoch (`BatchId` on the wire). Ordered by market,
/// then epoch.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct BatchKey {
    /// Market name.
    pub market: String,
    /// Epoch number.
    pub epoch: u64,
}

impl BatchKey {
    /// The protobuf form.
    pub(crate) fn to_proto(&self) -> BatchId {
        BatchId { market: self.market.clone(), epoch: self.epoch }
    }

    /// From the protobuf form.
    pub(crate) fn from_proto(id: &BatchId) -> Self {
        BatchKey { market: id.market.clone(), epoch: id.epoch }
    }
}

impl std::fmt::Display for BatchKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{}", self.market, self.epoch)
    }
}

/// A `BatchSealed` message, checked: a batch of the topic's market and a 32-byte hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SealedBatch {
    /// The batch.
    pub(crate) batch: BatchKey,
    /// Its batch hash ([`crate::batch_hash`]).
    pub(crate) hash: Digest,
    /// Orders in the batch.
    pub(crate) order_count: u64,
    /// Seal revision: 0, then +1 per re-seal after repair.
    pub(crate) revision: u32,
}

/// A `TradeResult` message, checked: a batch of the topic's market and a 32-byte hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BatchResult {
    /// The batch.
    pub(crate) batch: BatchKey,
    /// The engine's result hash.
    pub(crate) hash: Digest,
    /// Trades the engine computed.
    pub(crate) trades: u64,
}

/// Why a gossip message or an order is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum WireError {
    /// Larger than the size cap; nothing was decoded.
    #[error("message of {size} bytes exceeds the {cap}-byte cap")]
    Oversized {
        /// Message size, bytes.
        size: usize,
        /// Cap in force, bytes.
        cap: usize,
    },
    /// Not a valid protobuf `GossipEnvelope`.
    #[error("malformed envelope: {0}")]
    Malformed(String),
    /// Envelope of another wire version.
    #[error("unsupported wire version {0} (this node speaks {WIRE_VERSION})")]
    UnsupportedVersion(u32),
    /// Body missing, or of a kind the topic does not carry.
    #[error("a {topic} topic does not carry {body}")]
    WrongTopic {
        /// Topic kind the message arrived on.
        topic: &'static str,
        /// Body kind it carried.
        body: &'static str,
    },
    /// The message has no signer (GossipSub strict validation always has one).
    #[error("message has no author")]
    Unsigned,
    /// An order's origin, or a `PeerStatus`'s node id, is not the message's signer.
    #[error("{0} is not the message's signer")]
    ForgedOrigin(String),
    /// An order or body field fails the schema; the string names the field.
    #[error("invalid {0}")]
    Invalid(String),
}

/// A decoded gossip message, with every elided field restored.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Gossip {
    /// Orders of the topic's market, origin (the signer) and market filled in.
    Orders {
        /// Market of the topic.
        market: String,
        /// The orders, in message order (at least one).
        orders: Vec<Order>,
        /// `GossipEnvelope.origin_signature` as sent: not checked here.
        origin_signature: Vec<u8>,
    },
    /// A batch seal.
    BatchSealed(SealedBatch),
    /// A trade result.
    TradeResult(BatchResult),
    /// A heartbeat; its `node_id` is the signer.
    PeerStatus(PeerStatus),
}

/// Name of a body kind, for errors and logs.
fn body_name(body: Option<&Body>) -> &'static str {
    match body {
        Some(Body::Orders(_)) => "OrderGossip",
        Some(Body::BatchSealed(_)) => "BatchSealed",
        Some(Body::TradeResult(_)) => "TradeResult",
        Some(Body::PeerStatus(_)) => "PeerStatus",
        None => "an empty body",
    }
}

/// The GossipSub message id of every message on this network's topics (docs/PROTOCOL.md
/// §12.3): SHA-256 over `len32(source) ‖ source ‖ len32(topic) ‖ topic ‖ data`, where
/// `source` is the author's peer id bytes (multihash; empty for an unsigned message, which
/// validation rejects anyway), `topic` the topic string (UTF-8), `data` the message bytes
/// and `len32` a 4-byte big-endian length. 32 bytes.
///
/// Content-based and author-bound: the same bytes forwarded along different paths are one
/// message, two members' identical seals are two. Unlike rust-libp2p's default
/// (base58(source) + decimal(seqno)) it does not depend on a sequence-number scheme, so
/// every implementation computes the same id.
pub fn message_id(source: &[u8], topic: &str, data: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    for field in [source, topic.as_bytes()] {
        h.update((field.len() as u32).to_be_bytes());
        h.update(field);
    }
    h.update(data);
    h.finalize().into()
}

/// [`message_id`] of a GossipSub message, for `gossipsub::ConfigBuilder::message_id_fn`
/// (every peer of the network must use it).
pub fn gossip_message_id(m: &libp2p::gossipsub::Message) -> libp2p::gossipsub::MessageId {
    let source = m.source.map(|p| p.to_bytes()).unwrap_or_default();
    libp2p::gossipsub::MessageId::from(message_id(&source, m.topic.as_str(), &m.data).to_vec())
}

/// Encodes `body` in an envelope of the current version, as is (no field elided), without
/// an origin signature (see [`encode_orders`] for orders).
pub fn encode(body: Body) -> Vec<u8> {
    GossipEnvelope { version: WIRE_VERSION, body: Some(body), origin_signature: Vec::new() }.encode_to_vec()
}

/// Encodes a seal for the market's batches topic.
pub(crate) fn encode_seal(seal: &SealedBatch) -> Vec<u8> {
    encode(Body::BatchSealed(crate::proto::BatchSealed {
        batch_id: Some(seal.batch.to_proto()),
        batch_hash: seal.hash.to_vec(),
        order_count: seal.order_count,
        revision: seal.revision,
    }))
}

/// Encodes a result for the market's results topic.
pub(crate) fn encode_result(result: &BatchResult) -> Vec<u8> {
    encode(Body::TradeResult(crate::proto::TradeResult {
        batch_id: Some(result.batch.to_proto()),
        result_hash: result.hash.to_vec(),
        trade_count: result.trades,
    }))
}

/// Field numbers of `Order` (wire.proto) and of the envelope around it.
mod tag {
    pub(super) const ENVELOPE_VERSION: u32 = 1;
    pub(super) const ENVELOPE_ORDERS: u32 = 2;
    pub(super) const ENVELOPE_ORIGIN_SIGNATURE: u32 = 6;
    pub(super) const GOSSIP_ORDERS: u32 = 1;
    pub(super) const ID: u32 = 1;
    pub(super) const SIDE: u32 = 3;
    pub(super) const PRICE_TICKS: u32 = 4;
    pub(super) const QUANTITY_LOTS: u32 = 5;
    pub(super) const KIND: u32 = 6;
    pub(super) const CLIENT_TS_NS: u32 = 7;
    pub(super) const EPOCH: u32 = 9;
    pub(super) const FREEZE_PROOF: u32 = 10;
    pub(super) const SUBMITTED_AT_NS: u32 = 11;
}

/// Encoded length of `order` on the wire (without `origin` and `market`), bytes, not
/// counting the field key and length prefix that frame it in an `OrderGossip`.
pub(crate) fn elided_len(o: &Order) -> usize {
    let u = |tag, v: &u64| if *v != 0 { pb::uint64::encoded_len(tag, v) } else { 0 };
    let i = |tag, v: &i32| if *v != 0 { pb::int32::encoded_len(tag, v) } else { 0 };
    u(tag::ID, &o.id)
        + i(tag::SIDE, &o.side)
        + u(tag::PRICE_TICKS, &o.price_ticks)
        + u(tag::QUANTITY_LOTS, &o.quantity_lots)
        + i(tag::KIND, &o.kind)
        + u(tag::CLIENT_TS_NS, &o.client_ts_ns)
        + u(tag::EPOCH, &o.epoch)
        + if o.freeze_proof.is_empty() { 0 } else { pb::bytes::encoded_len(tag::FREEZE_PROOF, &o.freeze_proof) }
        + u(tag::SUBMITTED_AT_NS, &o.submitted_at_ns)
}

/// Writes `order`'s fields except `origin` and `market`, as prost would (proto3: default
/// values are not written; ascending field numbers).
fn encode_elided(o: &Order, buf: &mut Vec<u8>) {
    let u = |tag, v: &u64, buf: &mut Vec<u8>| {
        if *v != 0 {
            pb::uint64::encode(tag, v, buf)
        }
    };
    u(tag::ID, &o.id, buf);
    if o.side != 0 {
        pb::int32::encode(tag::SIDE, &o.side, buf);
    }
    u(tag::PRICE_TICKS, &o.price_ticks, buf);
    u(tag::QUANTITY_LOTS, &o.quantity_lots, buf);
    if o.kind != 0 {
        pb::int32::encode(tag::KIND, &o.kind, buf);
    }
    u(tag::CLIENT_TS_NS, &o.client_ts_ns, buf);
    u(tag::EPOCH, &o.epoch, buf);
    if !o.freeze_proof.is_empty() {
        pb::bytes::encode(tag::FREEZE_PROOF, &o.freeze_proof, buf);
    }
    u(tag::SUBMITTED_AT_NS, &o.submitted_at_ns, buf);
}

/// Bytes an order adds to an `OrderGossip`: its field key, length prefix and body.
pub(crate) fn framed_len(o: &Order) -> usize {
    let len = elided_len(o);
    pb::key_len(tag::GOSSIP_ORDERS) + pb::encoded_len_varint(len as u64) + len
}

/// Encodes `orders` (all of one market, borrowed) as an `OrderGossip` envelope with each
/// order's `origin` and `market` elided, and `origin_signature` (the origin's bundle
/// signature, 64 bytes; empty writes none): the bytes equal prost's encoding of the same
/// envelope with those two order fields cleared.
pub fn encode_orders(orders: &[Order], origin_signature: &[u8]) -> Vec<u8> {
    let body: usize = orders.iter().map(framed_len).sum();
    let mut buf = Vec::with_capacity(body + 16 + origin_signature.len());
    pb::uint32::encode(tag::ENVELOPE_VERSION, &WIRE_VERSION, &mut buf);
    pb::encode_key(tag::ENVELOPE_ORDERS, WireType::LengthDelimited, &mut buf);
    pb::encode_varint(body as u64, &mut buf);
    for o in orders {
        pb::encode_key(tag::GOSSIP_ORDERS, WireType::LengthDelimited, &mut buf);
        pb::encode_varint(elided_len(o) as u64, &mut buf);
        encode_elided(o, &mut buf);
    }
    if !origin_signature.is_empty() {
        pb::encode_key(tag::ENVELOPE_ORIGIN_SIGNATURE, WireType::LengthDelimited, &mut buf);
        pb::encode_varint(origin_signature.len() as u64, &mut buf);
        buf.extend_from_slice(origin_signature);
    }
    buf
}

impl Gossip {
    /// Decodes a message received on `topic`, signed by `author`, in this order: size cap
    /// (before any parsing), element counts and sizes ([`crate::decode_limits`], before
    /// decoding), protobuf, version, body kind against topic kind, signer, then
    /// the body: orders get their market (the topic's) and origin (the signer) back; seals
    /// and results must name a batch of the topic's market and carry a 32-byte hash; a
    /// `PeerStatus` must be the signer's own.
    ///
    /// Errors: [`WireError::Oversized`], [`WireError::Malformed`],
    /// [`WireError::UnsupportedVersion`], [`WireError::WrongTopic`], [`WireError::Unsigned`],
    /// [`WireError::ForgedOrigin`], [`WireError::Invalid`].
    pub(crate) fn decode(topic: &Topic, author: Option<&PeerId>, data: &[u8], cap: usize) -> Result<Self, WireError> {
        if data.len() > cap {
            return Err(WireError::Oversized { size: data.len(), cap });
        }
        crate::decode_limits::check(data, crate::decode_limits::GOSSIP_ENVELOPE)
            .map_err(|e| WireError::Malformed(e.to_string()))?;
        let env = GossipEnvelope::decode(data).map_err(|e| WireError::Malformed(e.to_string()))?;
        if env.version != WIRE_VERSION {
            return Err(WireError::UnsupportedVersion(env.version));
        }
        let body = match (topic.kind, env.body) {
            (TopicKind::Orders, Some(b @ Body::Orders(_)))
            | (TopicKind::Batches, Some(b @ Body::BatchSealed(_)))
            | (TopicKind::Results, Some(b @ Body::TradeResult(_)))
            | (TopicKind::Control, Some(b @ Body::PeerStatus(_))) => b,
            (kind, other) => {
                return Err(WireError::WrongTopic { topic: kind.as_str(), body: body_name(other.as_ref()) });
            }
        };
        let author = author.ok_or(WireError::Unsigned)?;
        match body {
            Body::Orders(g) => restore_orders(topic, author, g.orders, env.origin_signature),
            Body::BatchSealed(s) => {
                let (batch, hash) = batch_and_hash(topic, s.batch_id, &s.batch_hash, "BatchSealed")?;
                Ok(Gossip::BatchSealed(SealedBatch { batch, hash, order_count: s.order_count, revision: s.revision }))
            }
            Body::TradeResult(r) => {
                let (batch, hash) = batch_and_hash(topic, r.batch_id, &r.result_hash, "TradeResult")?;
                Ok(Gossip::TradeResult(BatchResult { batch, hash, trades: r.trade_count }))
            }
            Body::PeerStatus(s) => {
                if s.node_id != author.to_bytes() {
                    return Err(WireError::ForgedOrigin("PeerStatus.node_id".into()));
                }
                Ok(Gossip::PeerStatus(s))
            }
        }
    }
}

/// Fills in each order's elided market and origin; where a sender wrote them they must
/// agree with the topic and the signer.
fn restore_orders(
    topic: &Topic,
    author: &PeerId,
    mut orders: Vec<Order>,
    origin_signature: Vec<u8>,
) -> Result<Gossip, WireError> {
    if orders.is_empty() {
        return Err(WireError::Invalid("OrderGossip without orders".into()));
    }
    let origin = bytes::Bytes::from(author.to_bytes());
    for (i, o) in orders.iter_mut().enumerate() {
        if o.market.is_empty() {
            o.market.clone_from(&topic.market);
        } else if o.market != topic.market {
            return Err(WireError::Invalid(format!("order #{i}: market {:?} on the {} topic", o.market, topic.market)));
        }
        if o.origin.is_empty() {
            o.origin = origin.clone();
        } else if o.origin != origin {
            return Err(WireError::ForgedOrigin(format!("order #{i}: origin")));
        }
    }
    Ok(Gossip::Orders { market: topic.market.clone(), orders, origin_signature })
}

/// A seal's or result's batch (of the topic's market) and 32-byte hash.
fn batch_and_hash(
    topic: &Topic,
    id: Option<BatchId>,
    hash: &[u8],
    what: &str,
) -> Result<(BatchKey, Digest), WireError> {
    let invalid = || WireError::Invalid(format!("{what}: needs a 32-byte hash and a batch of the topic's market"));
    let id = id.filter(|id| id.market == topic.market).ok_or_else(invalid)?;
    let hash = Digest::try_from(hash).map_err(|_| invalid())?;
    Ok((BatchKey { market: id.market, epoch: id.epoch }, hash))
}

/// Appends the canonical encoding (version 1, see the module docs) of `order` to `out`.
pub fn canonical_encoding(order: &Order, out: &mut Vec<u8>) {
    encode_canonical(order, &order.origin, order.epoch, &mut |b| out.extend_from_slice(b));
}

/// Feeds the canonical encoding of `order`, with `origin` and `epoch` in place of the
/// order's own, to `sink` piece by piece (no buffer: the digest hashes as it goes).
fn encode_canonical(order: &Order, origin: &[u8], epoch: u64, sink: &mut impl FnMut(&[u8])) {
    fn bytes(sink: &mut impl FnMut(&[u8]), b: &[u8]) {
        sink(&(b.len() as u32).to_be_bytes());
        sink(b);
    }
    sink(b"OMO1");
    bytes(sink, origin);
    sink(&order.id.to_be_bytes());
    bytes(sink, order.market.as_bytes());
    sink(&epoch.to_be_bytes());
    sink(&[order.side as u8, order.kind as u8]);
    sink(&order.price_ticks.to_be_bytes());
    sink(&order.quantity_lots.to_be_bytes());
    sink(&order.client_ts_ns.to_be_bytes());
    bytes(sink, &order.freeze_proof);
}

/// The order digest: SHA-256 over [`canonical_encoding`] (32 bytes).
pub fn order_digest(order: &Order) -> Digest {
    let mut h = Sha256::new();
    encode_canonical(order, &order.origin, order.epoch, &mut |b| h.update(b));
    h.finalize().into()
}

/// The digest of what the engine wrote: [`order_digest`] with origin and epoch cleared
/// (the sidecar stamps those), for checksums that compare sent and received content.
pub fn content_digest(order: &Order) -> Digest {
    let mut h = Sha256::new();
    encode_canonical(order, &[], 0, &mut |b| h.update(b));
    h.finalize().into()
}

/// Checks the fields an engine fills in: known side and kind, `quantity_lots > 0`,
/// `price_ticks > 0` for limit and cancel orders, freeze proof within `max_proof` bytes.
/// The market is checked by the caller, who knows the node's markets.
pub(crate) fn check_order_fields(order: &Order, max_proof: usize) -> Result<(), WireError> {
    match Side::try_from(order.side) {
        Ok(Side::Buy | Side::Sell) => {}
        _ => return Err(WireError::Invalid(format!("side: {} is not BUY or SELL", order.side))),
    }
    let kind = match OrderKind::try_from(order.kind) {
        Ok(k @ (OrderKind::Limit | OrderKind::Market | OrderKind::Cancel)) => k,
        _ => {
            return Err(WireError::Invalid(format!("kind: {} is not LIMIT, MARKET or CANCEL", order.kind)));
        }
    };
    if order.quantity_lots == 0 {
        return Err(WireError::Invalid("quantity_lots: must be > 0".into()));
    }
    if order.price_ticks == 0 && kind != OrderKind::Market {
        return Err(WireError::Invalid("price_ticks: must be > 0 for LIMIT and CANCEL".into()));
    }
    if order.freeze_proof.len() > max_proof {
        return Err(WireError::Invalid(format!(
            "freeze_proof: {} bytes exceeds the {max_proof}-byte cap",
            order.freeze_proof.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::OrderGossip;

    fn order(id: u64) -> Order {
        Order {
            id,
            market: "BTC-USDT".into(),
            side: Side::Buy as i32,
            price_ticks: 6_180_020,
            quantity_lots: 14,
            kind: OrderKind::Limit as i32,
            client_ts_ns: 1_723_161_256_299_000_000,
            origin: vec![0, 36, 8, 1].into(),
            epoch: 7,
            freeze_proof: vec![],
            submitted_at_ns: 5,
        }
    }

    const CAP: usize = 1 << 20;

    fn author() -> PeerId {
        PeerId::from_bytes(&[
            0, 36, 8, 1, 18, 32, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24,
            25, 26, 27, 28, 29, 30, 31, 32,
        ])
        .unwrap()
    }

    /// An order with every field set (`order` sets all of them: a field added to `Order` and
    /// forgotten by the borrowing encoder fails to compile there), origin the test author.
    fn full_order(id: u64) -> Order {
        Order { side: Side::Sell as i32, origin: author().to_bytes().into(), freeze_proof: vec![9; 40], ..order(id) }
    }

    #[test]
    fn borrowing_encode_equals_prost_with_origin_and_market_cleared() {
        let orders: Vec<Order> = (0..3).map(full_order).chain([Order { id: 0, ..order(0) }]).collect();
        let cleared: Vec<Order> =
            orders.iter().map(|o| Order { origin: Default::default(), market: String::new(), ..o.clone() }).collect();
        let want = encode(Body::Orders(OrderGossip { orders: cleared.clone() }));
        assert_eq!(encode_orders(&orders, &[]), want);
        let signed = GossipEnvelope {
            version: WIRE_VERSION,
            body: Some(Body::Orders(OrderGossip { orders: cleared.clone() })),
            origin_signature: vec![7; 64],
        };
        assert_eq!(encode_orders(&orders, &[7; 64]), signed.encode_to_vec());
        for (o, c) in orders.iter().zip(&cleared) {
            assert_eq!(elided_len(o), c.encoded_len());
        }
    }

    #[test]
    fn decode_restores_origin_and_market_from_signer_and_topic() {
        let orders: Vec<Order> = (0..3).map(full_order).collect();
        let data = encode_orders(&orders, &[3; 64]);
        let topic = Topic::orders("BTC-USDT");
        let got = Gossip::decode(&topic, Some(&author()), &data, CAP).unwrap();
        let origin_signature = vec![3; 64];
        assert_eq!(got, Gossip::Orders { market: "BTC-USDT".into(), orders: orders.clone(), origin_signature });
        // Written out in full, they must agree with signer and topic.
        let full = encode(Body::Orders(OrderGossip { orders: orders.clone() }));
        assert!(Gossip::decode(&topic, Some(&author()), &full, CAP).is_ok());
        let other = PeerId::random();
        assert!(matches!(Gossip::decode(&topic, Some(&other), &full, CAP), Err(WireError::ForgedOrigin(_))));
        let eth = Topic::orders("ETH-USDT");
        assert!(matches!(Gossip::decode(&eth, Some(&author()), &full, CAP), Err(WireError::Invalid(_))));
        assert_eq!(Gossip::decode(&topic, None, &data, CAP), Err(WireError::Unsigned));
    }

    #[test]
    fn oversized_is_refused_before_decoding() {
        let data = vec![0xff; 2000]; // garbage: would be Malformed if it were parsed
        let err = Gossip::decode(&Topic::orders("M"), Some(&author()), &data, 1024).unwrap_err();
        assert_eq!(err, WireError::Oversized { size: 2000, cap: 1024 });
    }

    #[test]
    fn malformed_version_and_topic_errors() {
        let (a, orders) = (author(), Topic::orders("M"));
        let decode = |t: &Topic, d: &[u8]| Gossip::decode(t, Some(&a), d, 1024).unwrap_err();
        assert!(matches!(decode(&orders, &[0xff, 0xff]), WireError::Malformed(_)));
        let v2 = GossipEnvelope { version: 2, body: Some(Body::Orders(OrderGossip::default())), ..Default::default() };
        assert_eq!(decode(&orders, &v2.encode_to_vec()), WireError::UnsupportedVersion(2));
        let status = encode(Body::PeerStatus(PeerStatus::default()));
        assert!(matches!(decode(&orders, &status), WireError::WrongTopic { .. }));
        let empty = GossipEnvelope { version: 1, ..Default::default() }.encode_to_vec();
        assert!(matches!(decode(&Topic::control(), &empty), WireError::WrongTopic { .. }));
        assert!(matches!(decode(&orders, &encode(Body::Orders(OrderGossip::default()))), WireError::Invalid(_)));
    }

    #[test]
    fn seals_and_results_decode_typed() {
        let seal = SealedBatch {
            batch: BatchKey { market: "M".into(), epoch: 3 },
            hash: [4; 32],
            order_count: 2,
            revision: 1,
        };
        let t = Topic { kind: TopicKind::Batches, market: "M".into() };
        assert_eq!(
            Gossip::decode(&t, Some(&author()), &encode_seal(&seal), CAP),
            Ok(Gossip::BatchSealed(seal.clone()))
        );
        let other = Topic { kind: TopicKind::Batches, market: "N".into() };
        assert!(matches!(
            Gossip::decode(&other, Some(&author()), &encode_seal(&seal), CAP),
            Err(WireError::Invalid(_))
        ));
        let result = BatchResult { batch: seal.batch.clone(), hash: [5; 32], trades: 9 };
        let r = Topic { kind: TopicKind::Results, market: "M".into() };
        assert_eq!(Gossip::decode(&r, Some(&author()), &encode_result(&result), CAP), Ok(Gossip::TradeResult(result)));
    }

    #[test]
    fn digest_ignores_submitted_at_and_covers_everything_else() {
        let base = order(1);
        let d = order_digest(&base);
        assert_eq!(order_digest(&Order { submitted_at_ns: 999, ..base.clone() }), d);
        let mut buf = Vec::new();
        canonical_encoding(&base, &mut buf);
        assert_eq!(d, <[u8; 32]>::from(Sha256::digest(&buf)), "the digest hashes the canonical encoding");
        let cleared = Order { origin: Default::default(), epoch: 0, ..base.clone() };
        assert_eq!(content_digest(&base), order_digest(&cleared));
        let variants = [
            Order { id: 2, ..base.clone() },
            Order { market: "ETH-USDT".into(), ..base.clone() },
            Order { side: Side::Sell as i32, ..base.clone() },
            Order { price_ticks: 1, ..base.clone() },
            Order { quantity_lots: 1, ..base.clone() },
            Order { kind: OrderKind::Cancel as i32, ..base.clone() },
            Order { client_ts_ns: 1, ..base.clone() },
            Order { origin: vec![1].into(), ..base.clone() },
            Order { epoch: 8, ..base.clone() },
            Order { freeze_proof: vec![1], ..base.clone() },
        ];
        for v in variants {
            assert_ne!(order_digest(&v), d, "{v:?}");
        }
    }

    #[test]
    fn canonical_encoding_layout() {
        let mut buf = Vec::new();
        canonical_encoding(&order(1), &mut buf);
        // tag 4 + origin 4+4 + id 8 + market 4+8 + epoch 8 + side 1 + kind 1 + price 8
        // + qty 8 + ts 8 + proof 4+0
        assert_eq!(buf.len(), 4 + 8 + 8 + 12 + 8 + 2 + 24 + 4);
        assert_eq!(&buf[..4], b"OMO1");
        assert_eq!(&buf[4..8], &4u32.to_be_bytes());
    }

    #[test]
    fn order_field_checks_name_the_field() {
        assert!(check_order_fields(&order(1), 16).is_ok());
        let cases = [
            (Order { side: 0, ..order(1) }, "side"),
            (Order { kind: 9, ..order(1) }, "kind"),
            (Order { quantity_lots: 0, ..order(1) }, "quantity_lots"),
            (Order { price_ticks: 0, ..order(1) }, "price_ticks"),
            (Order { freeze_proof: vec![0; 17], ..order(1) }, "freeze_proof"),
        ];
        for (o, field) in cases {
            let err = check_order_fields(&o, 16).unwrap_err().to_string();
            assert!(err.contains(field), "{err}");
        }
        let market = Order { price_ticks: 0, kind: OrderKind::Market as i32, ..order(1) };
        assert!(check_order_fields(&market, 16).is_ok());
    }
}
