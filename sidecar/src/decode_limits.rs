//! What a decoder may allocate, checked before it runs.
//!
//! A byte cap alone does not bound memory: prost decodes a repeated field into a `Vec` of
//! structs, so an element of two wire bytes (a field key and a zero length: an empty
//! message) costs its whole struct (an `Order` is ~150 bytes, a `Vec<u8>` digest 24 plus
//! its heap block). Before this check a 64 MiB `FetchOrders` of empty digests took a node to
//! 1.0 GB, an `Orders` answer of empty orders to 4.68 GB, and a 1 MiB gossip envelope of
//! empty orders cost ~65 MB.
//!
//! [`check`] walks the protobuf bytes once, keys and lengths only, allocating nothing,
//! against a [`Field`] list naming each repeated (or nested) length-delimited field that
//! matters: the smallest encoded length one element may have (what any valid element
//! needs: a 32-byte digest, an order's mandatory fields), the most elements allowed, and
//! the fields inside it. A message that passes decodes into at most
//! `struct size / min_len` times its wire size; the shapes below are the wire.proto
//! messages a peer can send ([`GOSSIP_ENVELOPE`], [`REPAIR_REQUEST`],
//! [`REPAIR_RESPONSE`]). Encoding reference: <https://protobuf.dev/programming-guides/encoding/>.

use prost::encoding::{WireType, decode_key, decode_varint};

/// Most orders in one `OrderGossip` (and the largest `publish.maxOrdersPerMessage`).
pub const MAX_ORDERS_PER_MESSAGE: usize = openmatch_gossip_crds::sidecar_config::MAX_ORDERS_PER_MESSAGE as usize;

/// Most orders one batch may hold, as any repair message lists them: what a 64 MiB digest
/// set (76 bytes per entry) holds.
pub const MAX_BATCH_ORDERS: usize = 1 << 20;

/// Most digests one `FetchOrders` asks for; a node missing more asks again for the rest
/// once the answer came (34 bytes each: a request stays under 600 KB).
pub const MAX_FETCH_DIGESTS: usize = 16_384;

/// Most markets a `PeerStatus` lists; most instances a `PeerInstances` answer lists.
pub const MAX_LISTED: usize = 1_024;

/// The smallest valid order without `origin` and `market` (gossip elides them): side,
/// kind and quantity, 2 bytes each.
const MIN_ELIDED_ORDER: usize = 6;

/// The smallest valid order with its origin (repair answers carry it): the elided minimum
/// plus the origin (an Ed25519 peer id of 38 bytes, with its key and length).
const MIN_STORED_ORDER: usize = MIN_ELIDED_ORDER + 40;

/// A length-delimited field to check.
#[derive(Debug)]
pub struct Field {
    /// Its field number.
    pub tag: u32,
    /// `Message.field`, for errors.
    pub name: &'static str,
    /// Smallest encoded length of one element, bytes.
    pub min_len: usize,
    /// Most elements (occurrences) in one enclosing message.
    pub max_count: usize,
    /// Fields inside each element to check in turn (empty: none).
    pub inner: &'static [Field],
}

/// Why a message was refused before decoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    /// More elements than allowed.
    #[error("{field}: more than {max} elements")]
    TooMany {
        /// `Message.field`.
        field: &'static str,
        /// The limit.
        max: usize,
    },
    /// An element shorter than any valid one.
    #[error("{field}: an element of {len} bytes, under the {min}-byte minimum")]
    TooSmall {
        /// `Message.field`.
        field: &'static str,
        /// Its encoded length.
        len: usize,
        /// The minimum.
        min: usize,
    },
    /// Not protobuf: a bad key or varint, a length past the end, or a group.
    #[error("malformed protobuf: {0}")]
    Malformed(String),
}

/// Checks `buf`, an encoded message, against `fields` (see the module docs).
///
/// Errors: the first [`ShapeError`] met.
pub fn check(mut buf: &[u8], fields: &[Field]) -> Result<(), ShapeError> {
    // Few fields per shape: a small array of counts, no allocation.
    let mut counts = [0usize; 8];
    debug_assert!(fields.len() <= counts.len());
    while !buf.is_empty() {
        let (tag, wire_type) = decode_key(&mut buf).map_err(|e| ShapeError::Malformed(e.to_string()))?;
        match wire_type {
            WireType::Varint => {
                decode_varint(&mut buf).map_err(|e| ShapeError::Malformed(e.to_string()))?;
            }
            WireType::SixtyFourBit => buf = skip(buf, 8)?,
            WireType::ThirtyTwoBit => buf = skip(buf, 4)?,
            WireType::LengthDelimited => {
                let len = decode_varint(&mut buf).map_err(|e| ShapeError::Malformed(e.to_string()))?;
                let len = usize::try_from(len).ok().filter(|&l| l <= buf.len()).ok_or_else(|| {
                    ShapeError::Malformed(format!("field {tag}: length {len} past the end ({} left)", buf.len()))
                })?;
                let (body, rest) = buf.split_at(len);
                if let Some(i) = fields.iter().position(|f| f.tag == tag) {
                    let f = &fields[i];
                    counts[i] += 1;
                    if counts[i] > f.max_count {
                        return Err(ShapeError::TooMany { field: f.name, max: f.max_count });
                    }
                    if len < f.min_len {
                        return Err(ShapeError::TooSmall { field: f.name, len, min: f.min_len });
                    }
                    if !f.inner.is_empty() {
                        check(body, f.inner)?;
                    }
                }
                buf = rest;
            }
            WireType::StartGroup | WireType::EndGroup => {
                return Err(ShapeError::Malformed(format!("field {tag}: groups are not used")));
            }
        }
    }
    Ok(())
}

fn skip(buf: &[u8], n: usize) -> Result<&[u8], ShapeError> {
    buf.get(n..).ok_or_else(|| ShapeError::Malformed("fixed-width value past the end".into()))
}

const ORDER_GOSSIP: &[Field] = &[Field {
    tag: 1,
    name: "OrderGossip.orders",
    min_len: MIN_ELIDED_ORDER,
    max_count: MAX_ORDERS_PER_MESSAGE,
    inner: &[],
}];

const PEER_STATUS: &[Field] =
    &[Field { tag: 4, name: "PeerStatus.markets", min_len: 1, max_count: MAX_LISTED, inner: &[] }];

/// `GossipEnvelope` (every gossip message): at most [`MAX_ORDERS_PER_MESSAGE`] orders of
/// at least 6 bytes; at most [`MAX_LISTED`] markets in a `PeerStatus`; one body.
pub const GOSSIP_ENVELOPE: &[Field] = &[
    Field { tag: 2, name: "GossipEnvelope.orders", min_len: 0, max_count: 1, inner: ORDER_GOSSIP },
    Field { tag: 5, name: "GossipEnvelope.peer_status", min_len: 0, max_count: 1, inner: PEER_STATUS },
];

const FETCH_ORDERS: &[Field] =
    &[Field { tag: 2, name: "FetchOrders.digests", min_len: 32, max_count: MAX_FETCH_DIGESTS, inner: &[] }];

/// `RepairRequest`: a `FetchOrders` asks for at most [`MAX_FETCH_DIGESTS`] digests of 32
/// bytes or more.
pub const REPAIR_REQUEST: &[Field] =
    &[Field { tag: 2, name: "RepairRequest.fetch", min_len: 0, max_count: 1, inner: FETCH_ORDERS }];

/// A `BundleProof`: a 64-byte signature and at least one digest, with their keys and
/// lengths.
const MIN_PROOF: usize = 66 + 34;

const DIGEST_SET: &[Field] = &[Field {
    tag: 2,
    name: "DigestSet.entries",
    // The digest (32 bytes, key and length); the origin is checked after decoding.
    min_len: 34,
    max_count: MAX_BATCH_ORDERS,
    inner: &[],
}];

const PROVEN_ORDERS: &[Field] = &[
    Field { tag: 1, name: "ProvenOrders.orders", min_len: MIN_STORED_ORDER, max_count: MAX_BATCH_ORDERS, inner: &[] },
    Field { tag: 2, name: "ProvenOrders.proofs", min_len: MIN_PROOF, max_count: MAX_BATCH_ORDERS, inner: &[] },
];

const DECIDED_BATCH: &[Field] = &[
    Field { tag: 4, name: "DecidedBatch.orders", min_len: MIN_STORED_ORDER, max_count: MAX_BATCH_ORDERS, inner: &[] },
    Field { tag: 6, name: "DecidedBatch.proofs", min_len: MIN_PROOF, max_count: MAX_BATCH_ORDERS, inner: &[] },
];

const PEER_INSTANCES: &[Field] =
    &[Field { tag: 1, name: "PeerInstances.instances", min_len: 0, max_count: MAX_LISTED, inner: &[] }];

/// `RepairResponse`: digest-set entries of at least 34 bytes, orders with their origin
/// (46 bytes or more) and proofs (100 or more), each at most [`MAX_BATCH_ORDERS`]; at most
/// [`MAX_LISTED`] instances.
pub const REPAIR_RESPONSE: &[Field] = &[
    Field { tag: 1, name: "RepairResponse.digests", min_len: 0, max_count: 1, inner: DIGEST_SET },
    Field { tag: 4, name: "RepairResponse.decided", min_len: 0, max_count: 1, inner: DECIDED_BATCH },
    Field { tag: 5, name: "RepairResponse.orders", min_len: 0, max_count: 1, inner: PROVEN_ORDERS },
    Field { tag: 6, name: "RepairResponse.instances", min_len: 0, max_count: 1, inner: PEER_INSTANCES },
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{
        BatchId, FetchOrders, GossipEnvelope, Order, OrderGossip, ProvenOrders, RepairRequest, RepairResponse,
        gossip_envelope::Body, repair_request, repair_response,
    };
    use prost::Message as _;

    fn valid_order() -> Order {
        Order { side: 1, kind: 2, quantity_lots: 1, ..Default::default() }
    }

    /// What the project's own encoders write passes: the smallest valid gossip order, a
    /// full FetchOrders, a proven answer.
    #[test]
    fn the_projects_own_messages_pass() {
        let env = GossipEnvelope {
            version: 1,
            body: Some(Body::Orders(OrderGossip { orders: vec![valid_order(); MAX_ORDERS_PER_MESSAGE] })),
            origin_signature: vec![7; 64],
        };
        assert_eq!(check(&env.encode_to_vec(), GOSSIP_ENVELOPE), Ok(()));
        let fetch = RepairRequest {
            kind: Some(repair_request::Kind::Fetch(FetchOrders {
                batch_id: Some(BatchId { market: "M".into(), epoch: 1 }),
                digests: vec![vec![1; 32]; MAX_FETCH_DIGESTS],
            })),
        };
        assert_eq!(check(&fetch.encode_to_vec(), REPAIR_REQUEST), Ok(()));
        let origin = libp2p::identity::Keypair::generate_ed25519().public().to_peer_id().to_bytes();
        let answer = RepairResponse {
            kind: Some(repair_response::Kind::Orders(ProvenOrders {
                orders: vec![Order { origin: origin.into(), market: "M".into(), ..valid_order() }; 3],
                proofs: vec![crate::proto::BundleProof { signature: vec![1; 64], digests: vec![2; 32] }],
            })),
        };
        assert_eq!(check(&answer.encode_to_vec(), REPAIR_RESPONSE), Ok(()));
    }

    /// The blow-ups seen (issue 13): elements too small or too many are refused by name.
    #[test]
    fn empty_and_too_many_elements_are_refused_by_name() {
        let empties = GossipEnvelope {
            version: 1,
            body: Some(Body::Orders(OrderGossip { orders: vec![Order::default(); 3] })),
            origin_signature: vec![],
        };
        assert_eq!(
            check(&empties.encode_to_vec(), GOSSIP_ENVELOPE),
            Err(ShapeError::TooSmall { field: "OrderGossip.orders", len: 0, min: 6 })
        );
        let many = GossipEnvelope {
            version: 1,
            body: Some(Body::Orders(OrderGossip { orders: vec![valid_order(); MAX_ORDERS_PER_MESSAGE + 1] })),
            origin_signature: vec![],
        };
        assert_eq!(
            check(&many.encode_to_vec(), GOSSIP_ENVELOPE),
            Err(ShapeError::TooMany { field: "OrderGossip.orders", max: MAX_ORDERS_PER_MESSAGE })
        );
        let fetch = RepairRequest {
            kind: Some(repair_request::Kind::Fetch(FetchOrders { batch_id: None, digests: vec![vec![]; 2] })),
        };
        assert!(matches!(
            check(&fetch.encode_to_vec(), REPAIR_REQUEST),
            Err(ShapeError::TooSmall { field: "FetchOrders.digests", .. })
        ));
        let answer = RepairResponse {
            kind: Some(repair_response::Kind::Orders(ProvenOrders { orders: vec![Order::default()], proofs: vec![] })),
        };
        assert!(matches!(
            check(&answer.encode_to_vec(), REPAIR_RESPONSE),
            Err(ShapeError::TooSmall { field: "ProvenOrders.orders", .. })
        ));
    }

    #[test]
    fn malformed_bytes_are_refused_without_panicking() {
        for bad in [&[0x0a, 0x05, 1][..], &[0xff; 11][..], &[0x0b][..], &[0x09, 1, 2][..]] {
            assert!(matches!(check(bad, REPAIR_RESPONSE), Err(ShapeError::Malformed(_))), "{bad:?}");
        }
    }
}
