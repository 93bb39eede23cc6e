//! Gossip message encoding: the versioned [`GossipEnvelope`], its size-capped decoding, and
//! the canonical order encoding behind the order digest.
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

use prost::Message as _;
use sha2::{Digest as _, Sha256};

use crate::dedup::Digest;
use crate::proto::{GossipEnvelope, Order, OrderKind, Side, gossip_envelope::Body};
use crate::topics::TopicKind;

/// Version written into and required of every [`GossipEnvelope`].
pub const WIRE_VERSION: u32 = 1;

/// Why a gossip message or an order is refused. The `reason()` strings are metric labels.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
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
    /// An order or body field fails the schema; the string names the field.
    #[error("invalid {0}")]
    Invalid(String),
}

impl WireError {
    /// Short label for metrics: `oversized`, `malformed`, `version`, `wrong_topic`, `invalid`.
    pub fn reason(&self) -> &'static str {
        match self {
            WireError::Oversized { .. } => "oversized",
            WireError::Malformed(_) => "malformed",
            WireError::UnsupportedVersion(_) => "version",
            WireError::WrongTopic { .. } => "wrong_topic",
            WireError::Invalid(_) => "invalid",
        }
    }
}

/// Name of a body kind, for errors and logs.
pub fn body_name(body: &Option<Body>) -> &'static str {
    match body {
        Some(Body::Orders(_)) => "OrderGossip",
        Some(Body::BatchSealed(_)) => "BatchSealed",
        Some(Body::TradeResult(_)) => "TradeResult",
        Some(Body::PeerStatus(_)) => "PeerStatus",
        None => "an empty body",
    }
}

/// Encodes `body` in an envelope of the current version.
pub fn encode(body: Body) -> Vec<u8> {
    GossipEnvelope { version: WIRE_VERSION, body: Some(body) }.encode_to_vec()
}

/// Decodes an envelope received on a topic of kind `topic`, in this order: size cap
/// (before any parsing), protobuf, version, body kind against topic kind.
///
/// Errors: [`WireError::Oversized`], [`WireError::Malformed`],
/// [`WireError::UnsupportedVersion`], [`WireError::WrongTopic`].
pub fn decode(data: &[u8], cap: usize, topic: TopicKind) -> Result<Body, WireError> {
    if data.len() > cap {
        return Err(WireError::Oversized { size: data.len(), cap });
    }
    let env = GossipEnvelope::decode(data).map_err(|e| WireError::Malformed(e.to_string()))?;
    if env.version != WIRE_VERSION {
        return Err(WireError::UnsupportedVersion(env.version));
    }
    let fits = matches!(
        (topic, &env.body),
        (TopicKind::Orders, Some(Body::Orders(_)))
            | (TopicKind::Batches, Some(Body::BatchSealed(_)))
            | (TopicKind::Results, Some(Body::TradeResult(_)))
            | (TopicKind::Control, Some(Body::PeerStatus(_)))
    );
    if !fits {
        return Err(WireError::WrongTopic { topic: topic.as_str(), body: body_name(&env.body) });
    }
    Ok(env.body.expect("checked above"))
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
pub fn check_order_fields(order: &Order, max_proof: usize) -> Result<(), WireError> {
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
    use crate::proto::{OrderGossip, PeerStatus};

    pub(crate) fn order(id: u64) -> Order {
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

    #[test]
    fn envelope_round_trip() {
        let body = Body::Orders(OrderGossip { orders: vec![order(1), order(2)] });
        let data = encode(body.clone());
        assert_eq!(decode(&data, 1 << 20, TopicKind::Orders).unwrap(), body);
    }

    #[test]
    fn oversized_is_refused_before_decoding() {
        let data = vec![0xff; 2000]; // garbage: would be Malformed if it were parsed
        let err = decode(&data, 1024, TopicKind::Orders).unwrap_err();
        assert_eq!(err, WireError::Oversized { size: 2000, cap: 1024 });
        assert_eq!(err.reason(), "oversized");
    }

    #[test]
    fn malformed_version_and_topic_errors() {
        assert_eq!(decode(&[0xff, 0xff], 1024, TopicKind::Orders).unwrap_err().reason(), "malformed");
        let v2 = GossipEnvelope { version: 2, body: Some(Body::Orders(OrderGossip::default())) };
        assert_eq!(decode(&v2.encode_to_vec(), 1024, TopicKind::Orders).unwrap_err(), WireError::UnsupportedVersion(2));
        let status = encode(Body::PeerStatus(PeerStatus::default()));
        assert_eq!(decode(&status, 1024, TopicKind::Orders).unwrap_err().reason(), "wrong_topic");
        let empty = GossipEnvelope { version: 1, body: None }.encode_to_vec();
        assert_eq!(decode(&empty, 1024, TopicKind::Control).unwrap_err().reason(), "wrong_topic");
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
