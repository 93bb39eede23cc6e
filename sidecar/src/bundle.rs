//! Origin signatures over order bundles: how any member that holds an order proves to
//! another that its origin published it (docs/PROTOCOL.md §11.4).
//!
//! A *bundle* is the orders of one published `OrderGossip`. Its origin signs, with its
//! libp2p identity key (Ed25519), the bytes [`signed_message`] lays out: a domain tag, the
//! network, the market and the bundle's order digests in bundle order. The signature
//! travels in `GossipEnvelope.origin_signature`; one signature per message, so its cost
//! per order shrinks as packs grow.
//!
//! Every node keeps, with each order it stores in a batch, a shared [`BundleProof`] (the
//! signature and the bundle's digests, allocated once per bundle). A repair answer carries
//! the proofs of the orders it returns ([`ProofList`], [`proven_orders`]), and the
//! requester keeps only the orders whose proof verifies under their origin's public key
//! ([`verify_orders`]), which an Ed25519 peer id inlines ([`origin_key`]). So a holder can
//! no longer invent or alter an origin's order, even with a colluding quorum.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use libp2p::identity::{Keypair, PublicKey, SigningError, ed25519};
use libp2p::{PeerId, multihash::Multihash};
use prost::Message as _;

use crate::proto::{self, Order};
use crate::wire::{self, Digest};

/// Length of an Ed25519 signature, bytes.
pub(crate) const SIGNATURE_LEN: usize = 64;

/// Domain tag that starts every signed bundle message (ASCII, NUL-terminated), so that a
/// bundle signature can never be mistaken for a signature over anything else.
const DOMAIN: &[u8] = b"openmatch-gossip/v1/order-bundle\0";

/// Multihash code of the identity "hash": the peer id inlines the public key.
const IDENTITY: u64 = 0x00;

/// The bytes an origin signs for a bundle of `market` on `network`: [`DOMAIN`], the
/// network name, a 0 byte, the market name, a 0 byte, then `digests` (each order's digest,
/// origin and market filled in, [`wire::order_digest`]) concatenated in bundle order,
/// 32 bytes each. Names are written as UTF-8 without length (neither can contain a 0
/// byte: both are validated `[A-Za-z0-9-]` names).
pub fn signed_message(network: &str, market: &str, digests: &[Digest]) -> Vec<u8> {
    message_over(network, market, digests.as_flattened())
}

/// [`signed_message`] with the digests already concatenated.
fn message_over(network: &str, market: &str, digests: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + network.len() + market.len() + 2 + digests.len());
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(network.as_bytes());
    m.push(0);
    m.extend_from_slice(market.as_bytes());
    m.push(0);
    m.extend_from_slice(digests);
    m
}

/// Signs, as the origin holding `key`, the bundle `orders` of `market` on `network`: the
/// 64-byte value of `GossipEnvelope.origin_signature`. Each order must carry `origin` (the
/// key's peer id) and `market` as receivers restore them, since the digests cover both.
///
/// Errors: [`SigningError`] from the key (never for Ed25519).
pub fn sign_orders(key: &Keypair, network: &str, market: &str, orders: &[Order]) -> Result<Vec<u8>, SigningError> {
    let digests: Vec<Digest> = orders.iter().map(wire::order_digest).collect();
    key.sign(&signed_message(network, market, &digests))
}

/// One origin's signed bundle as a holder keeps it: shared (`Arc`) by every order of the
/// bundle that the holder stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BundleProof {
    signature: [u8; SIGNATURE_LEN],
    /// The bundle's order digests, in bundle order.
    digests: Box<[Digest]>,
}

impl BundleProof {
    /// The proof of a received bundle: its signature as sent (not verified, see
    /// [`crate::validation`]) and its orders' digests in message order.
    pub(crate) fn new(signature: [u8; SIGNATURE_LEN], digests: Box<[Digest]>) -> Self {
        BundleProof { signature, digests }
    }

    /// Signs the bundle with `digests` (in bundle order) of `market` on `network`, as its
    /// origin holding `key`.
    pub(crate) fn sign(key: &ed25519::Keypair, network: &str, market: &str, digests: Box<[Digest]>) -> Self {
        let signature = key.sign(&signed_message(network, market, &digests));
        let signature = <[u8; SIGNATURE_LEN]>::try_from(signature.as_slice()).expect("Ed25519 signatures are 64 bytes");
        BundleProof { signature, digests }
    }

    /// The origin's signature (64 bytes).
    pub(crate) fn signature(&self) -> &[u8; SIGNATURE_LEN] {
        &self.signature
    }

    /// The bundle's order digests, in bundle order.
    pub(crate) fn digests(&self) -> &[Digest] {
        &self.digests
    }

    /// The protobuf form (digests concatenated).
    pub(crate) fn to_proto(&self) -> proto::BundleProof {
        proto::BundleProof { signature: self.signature.to_vec(), digests: self.digests.as_flattened().to_vec() }
    }
}

/// The public key of the origin whose binary peer id is `origin`, if the peer id inlines
/// it (an Ed25519 peer id is the identity multihash of the protobuf-encoded key).
pub(crate) fn origin_key(origin: &[u8]) -> Option<PublicKey> {
    let peer = PeerId::from_bytes(origin).ok()?;
    let mh: &Multihash<64> = peer.as_ref();
    if mh.code() != IDENTITY {
        return None;
    }
    PublicKey::try_decode_protobuf(mh.digest()).ok()
}

/// The distinct proofs of a repair answer, each once however many of its orders the answer
/// holds (dedup by pointer: the orders of one bundle share one `Arc`).
#[derive(Default)]
pub(crate) struct ProofList {
    seen: HashSet<*const BundleProof>,
    proofs: Vec<proto::BundleProof>,
}

impl ProofList {
    /// Adds `proof` unless already listed.
    pub(crate) fn add(&mut self, proof: &Arc<BundleProof>) {
        if self.seen.insert(Arc::as_ptr(proof)) {
            self.proofs.push(proof.to_proto());
        }
    }

    /// Bytes `proof` adds to a message's `proofs` field (key, length prefix and body), or
    /// 0 if it is listed already.
    fn cost(&self, proof: &Arc<BundleProof>) -> usize {
        use prost::encoding::encoded_len_varint as varint;
        if self.seen.contains(&Arc::as_ptr(proof)) {
            return 0;
        }
        let d = proof.digests.len() * 32;
        let body = 1 + varint(SIGNATURE_LEN as u64) + SIGNATURE_LEN + 1 + varint(d as u64) + d;
        1 + varint(body as u64) + body
    }

    /// The proofs listed, in the order first added.
    pub(crate) fn into_proofs(self) -> Vec<proto::BundleProof> {
        self.proofs
    }
}

/// A `FetchOrders` answer from `held` (orders with market set, each with the proof this
/// node keeps for it): each order a proof covers, and each distinct proof once, in
/// `held`'s order, stopping before the encoded answer would exceed `budget` bytes (the
/// requester asks again for the rest). Orders without a proof are left out: the requester
/// would refuse them.
pub(crate) fn proven_orders(
    held: impl IntoIterator<Item = (Order, Option<Arc<BundleProof>>)>,
    budget: usize,
) -> proto::ProvenOrders {
    let mut answer = proto::ProvenOrders::default();
    let mut proofs = ProofList::default();
    let mut size = 0;
    for (order, proof) in held {
        let Some(proof) = proof else { continue };
        let cost = prost::encoding::message::encoded_len(1, &order) + proofs.cost(&proof);
        if size + cost > budget {
            break;
        }
        size += cost;
        proofs.add(&proof);
        answer.orders.push(order);
    }
    answer.proofs = proofs.into_proofs();
    debug_assert!(answer.encoded_len() <= budget);
    answer
}

/// Why a repaired order was refused; [`Refusal::as_str`] is its metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Refusal {
    /// No proof of the answer lists the order's digest (or every one that does is
    /// malformed).
    NoProof,
    /// The proof listing it does not verify under the order's origin key (or the origin
    /// is not an Ed25519 peer id, or the proof is already another origin's).
    BadSignature,
}

impl Refusal {
    /// `no_proof`, `bad_signature`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Refusal::NoProof => "no_proof",
            Refusal::BadSignature => "bad_signature",
        }
    }
}

/// What [`verify_orders`] made of an answer.
#[derive(Debug, Default)]
pub(crate) struct Verified {
    /// Orders whose origin signed them, with the proof to keep (shared per bundle).
    pub(crate) accepted: Vec<(Digest, Order, Arc<BundleProof>)>,
    /// Orders refused, each with why.
    pub(crate) refused: Vec<(Refusal, Order)>,
    /// Proofs that are not a 64-byte signature over a whole number (≥ 1) of digests.
    pub(crate) malformed_proofs: usize,
}

/// Checks repaired `orders` of `market` (each with its digest, origin and market set)
/// against the `proofs` of the answer that carried them: an order is accepted if the
/// first proof listing its digest verifies, under the order's origin key, as that origin's
/// bundle of `market` on `network`.
///
/// Work is bounded by the answer: one pass over the proofs' digests (a hash lookup each)
/// and at most one signature check per proof, over that proof's own bytes. A proof checked
/// under one origin is not checked again under another (an honest bundle has one origin),
/// so an answer cannot make this node verify one large proof many times.
pub(crate) fn verify_orders(
    network: &str,
    market: &str,
    orders: Vec<(Digest, Order)>,
    proofs: &[proto::BundleProof],
) -> Verified {
    let mut out = Verified::default();
    // Digest → index of the first well-formed proof listing it.
    let mut first: HashMap<Digest, Option<usize>> = orders.iter().map(|(d, _)| (*d, None)).collect();
    for (j, p) in proofs.iter().enumerate() {
        if p.signature.len() != SIGNATURE_LEN || p.digests.is_empty() || p.digests.len() % 32 != 0 {
            out.malformed_proofs += 1;
            continue;
        }
        for d in p.digests.chunks_exact(32) {
            if let Some(slot @ None) = first.get_mut(d) {
                *slot = Some(j);
            }
        }
    }
    // Per proof checked: the origin it was checked under, and the proof if it verified.
    let mut checked: HashMap<usize, (bytes::Bytes, Option<Arc<BundleProof>>)> = HashMap::new();
    for (d, o) in orders {
        let Some(&Some(j)) = first.get(&d) else {
            out.refused.push((Refusal::NoProof, o));
            continue;
        };
        let (origin, proof) =
            checked.entry(j).or_insert_with(|| (o.origin.clone(), verify_one(network, market, &o.origin, &proofs[j])));
        match proof {
            Some(proof) if *origin == o.origin => out.accepted.push((d, o, proof.clone())),
            _ => out.refused.push((Refusal::BadSignature, o)),
        }
    }
    out
}

/// `p` (well-formed) as `origin`'s bundle of `market` on `network`, if its signature
/// verifies under the key `origin` inlines.
fn verify_one(network: &str, market: &str, origin: &[u8], p: &proto::BundleProof) -> Option<Arc<BundleProof>> {
    let key = origin_key(origin)?;
    if !key.verify(&message_over(network, market, &p.digests), &p.signature) {
        return None;
    }
    let signature = <[u8; SIGNATURE_LEN]>::try_from(p.signature.as_slice()).ok()?;
    let digests = p.digests.chunks_exact(32).map(|d| Digest::try_from(d).expect("32-byte chunks")).collect();
    Some(Arc::new(BundleProof { signature, digests }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{OrderKind, Side};
    use std::time::Instant;

    const NET: &str = "testnet";
    const MARKET: &str = "BTC-USDT";

    fn order(key: &Keypair, id: u64) -> Order {
        Order {
            id,
            market: MARKET.into(),
            side: Side::Buy as i32,
            kind: OrderKind::Limit as i32,
            price_ticks: 6_180_020 + id,
            quantity_lots: 14,
            client_ts_ns: 1_723_161_256_299_000_000,
            origin: key.public().to_peer_id().to_bytes().into(),
            epoch: 7,
            ..Default::default()
        }
    }

    fn signer(key: &Keypair) -> ed25519::Keypair {
        key.clone().try_into_ed25519().unwrap()
    }

    /// `n` orders of `key`, signed as one bundle: the orders with their digests, and the
    /// proof as a holder keeps it.
    fn bundle(key: &Keypair, ids: std::ops::Range<u64>) -> (Vec<(Digest, Order)>, Arc<BundleProof>) {
        let orders: Vec<(Digest, Order)> = ids.map(|i| order(key, i)).map(|o| (wire::order_digest(&o), o)).collect();
        let digests = orders.iter().map(|(d, _)| *d).collect();
        (orders, Arc::new(BundleProof::sign(&signer(key), NET, MARKET, digests)))
    }

    fn verify(orders: Vec<(Digest, Order)>, proofs: &[Arc<BundleProof>]) -> Verified {
        let proofs: Vec<proto::BundleProof> = proofs.iter().map(|p| p.to_proto()).collect();
        verify_orders(NET, MARKET, orders, &proofs)
    }

    fn refusals(v: &Verified) -> Vec<(Refusal, u64)> {
        v.refused.iter().map(|(r, o)| (*r, o.id)).collect()
    }

    #[test]
    fn the_signed_message_is_domain_network_market_then_digests() {
        let m = signed_message("n", "M", &[[1; 32], [2; 32]]);
        let mut want = b"openmatch-gossip/v1/order-bundle\0n\0M\0".to_vec();
        want.extend([1; 32]);
        want.extend([2; 32]);
        assert_eq!(m, want);
    }

    #[test]
    fn sign_and_verify_round_trip() {
        let key = Keypair::generate_ed25519();
        let (orders, proof) = bundle(&key, 0..5);
        assert_eq!(origin_key(&orders[0].1.origin), Some(key.public()));
        // The proof of a received bundle is the same as the one its origin made.
        let wire_sig = sign_orders(&key, NET, MARKET, &orders.iter().map(|(_, o)| o.clone()).collect::<Vec<_>>());
        assert_eq!(wire_sig.unwrap().as_slice(), proof.signature());
        let v = verify(orders[1..3].to_vec(), std::slice::from_ref(&proof));
        assert_eq!(v.accepted.len(), 2);
        assert!(v.refused.is_empty() && v.malformed_proofs == 0);
        assert_eq!(*v.accepted[0].2, *proof, "the accepted orders keep the whole bundle's proof");
        assert!(Arc::ptr_eq(&v.accepted[0].2, &v.accepted[1].2), "one allocation per bundle");
    }

    #[test]
    fn a_tampered_order_is_refused() {
        let key = Keypair::generate_ed25519();
        let (mut orders, proof) = bundle(&key, 0..3);
        // A holder that changes the price must give the order its new digest, which the
        // origin never signed.
        orders[1].1.price_ticks += 1;
        orders[1].0 = wire::order_digest(&orders[1].1);
        let v = verify(orders.clone(), std::slice::from_ref(&proof));
        assert_eq!(refusals(&v), vec![(Refusal::NoProof, 1)]);
        // Nor can it add the new digest to the origin's proof.
        let mut forged = (*proof).clone();
        let mut digests = forged.digests.to_vec();
        digests.push(orders[1].0);
        forged.digests = digests.into();
        let v = verify(vec![orders[1].clone()], &[Arc::new(forged)]);
        assert_eq!(refusals(&v), vec![(Refusal::BadSignature, 1)]);
    }

    #[test]
    fn an_order_attributed_to_another_origin_is_refused() {
        let (origin, holder) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        // The holder makes up an order in the origin's name and signs it itself.
        let made_up = order(&origin, 9);
        let d = wire::order_digest(&made_up);
        let own_sig = Arc::new(BundleProof::sign(&signer(&holder), NET, MARKET, vec![d].into()));
        let v = verify(vec![(d, made_up.clone())], &[own_sig]);
        assert_eq!(refusals(&v), vec![(Refusal::BadSignature, 9)]);
        // A real proof of the origin's, reused for an order of another origin, is refused
        // too: it was checked under the first order's origin.
        let (mut orders, proof) = bundle(&origin, 0..2);
        let theirs = order(&holder, 5);
        let theirs_digest = wire::order_digest(&theirs);
        let mut digests = proof.digests.to_vec();
        digests.push(theirs_digest);
        let stretched = Arc::new(BundleProof { digests: digests.into(), ..(*proof).clone() });
        orders.push((theirs_digest, theirs));
        let v = verify(orders, &[stretched]);
        assert_eq!(v.accepted.len(), 0, "the stretched proof verifies under no key");
        // An origin that is not an Ed25519 peer id has no key to check against.
        let anonymous = Order { origin: PeerId::random().to_bytes().into(), ..made_up };
        let (_, real) = bundle(&origin, 0..1);
        let d = wire::order_digest(&anonymous);
        let v = verify(vec![(d, anonymous)], &[Arc::new(BundleProof { digests: vec![d].into(), ..(*real).clone() })]);
        assert_eq!(refusals(&v), vec![(Refusal::BadSignature, 9)]);
    }

    #[test]
    fn a_proof_without_the_order_or_for_another_market_or_network_is_refused() {
        let key = Keypair::generate_ed25519();
        let (orders, proof) = bundle(&key, 0..4);
        let (other, other_proof) = bundle(&key, 10..12);
        // The order's own bundle is not in the answer: another bundle of the same origin
        // does not cover it.
        let v = verify(vec![orders[0].clone(), other[0].clone()], &[other_proof]);
        assert_eq!(refusals(&v), vec![(Refusal::NoProof, 0)]);
        assert_eq!(v.accepted.len(), 1);
        let protos = [proof.to_proto()];
        for (net, market) in [("othernet", MARKET), (NET, "ETH-USDT")] {
            let v = verify_orders(net, market, orders.clone(), &protos);
            assert_eq!(v.refused.len(), 4, "signed for {NET}/{MARKET}, not {net}/{market}");
        }
    }

    #[test]
    fn malformed_proofs_are_counted_and_cover_nothing() {
        let key = Keypair::generate_ed25519();
        let (orders, proof) = bundle(&key, 0..2);
        let good = proof.to_proto();
        let short_sig = proto::BundleProof { signature: vec![0; 63], ..good.clone() };
        let ragged = proto::BundleProof { digests: good.digests[..40].to_vec(), ..good.clone() };
        let empty = proto::BundleProof { digests: vec![], ..good.clone() };
        let v = verify_orders(NET, MARKET, orders.clone(), &[short_sig, ragged, empty]);
        assert_eq!(v.malformed_proofs, 3);
        assert_eq!(refusals(&v), vec![(Refusal::NoProof, 0), (Refusal::NoProof, 1)]);
        // Placed after them, the good proof still covers the orders.
        let v = verify_orders(NET, MARKET, orders, &[proto::BundleProof { signature: vec![1], ..good.clone() }, good]);
        assert_eq!((v.accepted.len(), v.malformed_proofs), (2, 1));
    }

    #[test]
    fn an_answer_lists_each_bundle_once_and_stays_within_its_budget() {
        let (a, b) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let (a_orders, a_proof) = bundle(&a, 0..10);
        let (b_orders, b_proof) = bundle(&b, 0..10);
        let held: Vec<(Order, Option<Arc<BundleProof>>)> = a_orders
            .iter()
            .map(|(_, o)| (o.clone(), Some(a_proof.clone())))
            .chain(b_orders.iter().take(3).map(|(_, o)| (o.clone(), Some(b_proof.clone()))))
            .chain([(order(&a, 99), None)])
            .collect();
        let answer = proven_orders(held.clone(), usize::MAX);
        assert_eq!(answer.orders.len(), 13, "the order without a proof is left out");
        assert_eq!(answer.proofs, vec![a_proof.to_proto(), b_proof.to_proto()]);
        let all: Vec<(Digest, Order)> = a_orders.into_iter().chain(b_orders.into_iter().take(3)).collect();
        assert_eq!(verify_orders(NET, MARKET, all, &answer.proofs).accepted.len(), 13);
        // A smaller budget: a prefix of the orders, with exactly their proofs.
        let full = answer.encoded_len();
        for budget in [0, 200, 600, full - 1, full] {
            let part = proven_orders(held.clone(), budget);
            assert!(part.encoded_len() <= budget, "{} > {budget}", part.encoded_len());
            let want_proofs = if part.orders.len() > 10 { 2 } else { usize::from(!part.orders.is_empty()) };
            assert_eq!(part.proofs.len(), want_proofs, "budget {budget}");
        }
        assert_eq!(proven_orders(held, full - 1).orders.len(), 12);
    }

    /// The cost of signing a bundle at publish time (one Ed25519 signature over the
    /// digests, which the outbox carries from submission; with computing them again for
    /// comparison), and of checking one at repair. A measurement printed for the record,
    /// not an assertion: run with `--no-capture` to see it.
    #[test]
    fn signing_cost_per_bundle_and_per_order() {
        let key = Keypair::generate_ed25519();
        let ed = signer(&key);
        for (n, rounds) in [(1usize, 2000u32), (20, 2000), (500, 200), (5000, 20)] {
            let orders: Vec<Order> = (0..n as u64).map(|i| order(&key, i)).collect();
            let t = Instant::now();
            let mut proof = None;
            for _ in 0..rounds {
                let digests: Box<[Digest]> = orders.iter().map(wire::order_digest).collect();
                proof = Some(BundleProof::sign(&ed, NET, MARKET, digests));
            }
            let sign = t.elapsed() / rounds;
            let t = Instant::now();
            for _ in 0..rounds {
                std::hint::black_box(BundleProof::sign(&ed, NET, MARKET, proof.as_ref().unwrap().digests.clone()));
            }
            let sign_only = t.elapsed() / rounds;
            let p = proof.unwrap().to_proto();
            let t = Instant::now();
            for _ in 0..rounds {
                assert!(verify_one(NET, MARKET, &orders[0].origin, &p).is_some());
            }
            let verify = t.elapsed() / rounds;
            println!(
                "bundle of {n:>4} orders: sign {sign_only:>9.1?} ({:>7.1?}/order); digests + sign {sign:>9.1?}; verify {verify:>9.1?}",
                sign_only / n as u32
            );
        }
    }
}
