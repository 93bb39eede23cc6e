//! A batch's orders as the node keeps them: packed, in one growing array, with a digest →
//! slot index.
//!
//! At maximum speed a node holds every order of its retained batches (hundreds of
//! thousands), so their layout decides its memory and much of its CPU (see
//! docs/BENCHMARKS.md, "Scale and speed (issue 15)"):
//! - an order is stored as [`Held`]: its fields without the market (the batch key holds
//!   it) and with the origin as a small index into the batch's table of origins (a batch
//!   has orders from a few members), 88 bytes, with no allocation of its own unless it
//!   carries a freeze proof. The prost `Order` it replaces took 136 bytes behind a boxed
//!   allocation;
//! - the index maps each 32-byte digest to a 4-byte slot, so growing the index moves 36
//!   bytes per order, and growing the array is one `realloc` (which glibc serves for a
//!   large block by remapping its pages rather than copying them).
//!
//! Orders are only added, except when an adoption drops those outside the certified set
//! ([`BatchOrders::retain`], which rebuilds).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::bundle::BundleProof;
use crate::proto::Order;
use crate::wire::Digest;

/// Hasher of the digest index: foldhash, randomly seeded per map (digests come from peers,
/// so an unseeded hash of their bytes would let a peer aim orders at one bucket).
type DigestHasher = foldhash::fast::RandomState;

/// One stored order: every field of [`Order`] but the market, the origin as an index into
/// [`BatchOrders::origins`].
#[derive(Debug)]
struct Held {
    id: u64,
    price_ticks: u64,
    quantity_lots: u64,
    client_ts_ns: u64,
    submitted_at_ns: u64,
    epoch: u64,
    freeze_proof: Box<[u8]>,
    /// Its origin's signed bundle, shared with the bundle's other orders; `None` only for
    /// this node's own orders until their pack is published.
    proof: Option<Arc<BundleProof>>,
    origin: u32,
    side: i32,
    kind: i32,
}

/// The orders of one batch, by digest (see the module docs). Iteration order is
/// unspecified; callers sort digests where canonical order matters.
#[derive(Debug, Default)]
pub(super) struct BatchOrders {
    index: HashMap<Digest, u32, DigestHasher>,
    held: Vec<Held>,
    /// Distinct origins of the batch's orders, in order of first appearance.
    origins: Vec<Bytes>,
}

impl BatchOrders {
    /// Number of orders.
    pub(super) fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether the order `digest` is held.
    pub(super) fn contains(&self, digest: &Digest) -> bool {
        self.index.contains_key(digest)
    }

    /// The digests held, in unspecified order.
    pub(super) fn digests(&self) -> impl Iterator<Item = &Digest> {
        self.index.keys()
    }

    /// Adds `order` (its `origin` and `epoch` set) as `digest` with `proof`; `false` (and
    /// nothing changes) if `digest` is already held.
    pub(super) fn insert(&mut self, digest: Digest, order: &Order, proof: Option<Arc<BundleProof>>) -> bool {
        use std::collections::hash_map::Entry;
        let Entry::Vacant(slot) = self.index.entry(digest) else { return false };
        let slot_ix = u32::try_from(self.held.len()).expect("a batch holds fewer than 2^32 orders");
        slot.insert(slot_ix);
        let origin = origin_index(&mut self.origins, &order.origin);
        self.held.push(Held {
            id: order.id,
            price_ticks: order.price_ticks,
            quantity_lots: order.quantity_lots,
            client_ts_ns: order.client_ts_ns,
            submitted_at_ns: order.submitted_at_ns,
            epoch: order.epoch,
            freeze_proof: order.freeze_proof.as_slice().into(),
            proof,
            origin,
            side: order.side,
            kind: order.kind,
        });
        true
    }

    /// The order `digest` with `market` restored, as it was added; `None` if not held.
    pub(super) fn order(&self, digest: &Digest, market: &str) -> Option<Order> {
        self.index.get(digest).map(|&ix| self.rebuild(&self.held[ix as usize], market))
    }

    /// Every order in canonical order (ascending digest), `market` restored. Sorts the
    /// index's (digest, slot) pairs, so each order is found by its slot, not looked up again.
    pub(super) fn canonical(&self, market: &str) -> Vec<Order> {
        let mut slots: Vec<(Digest, u32)> = self.index.iter().map(|(d, &ix)| (*d, ix)).collect();
        slots.sort_unstable_by_key(|&(d, _)| d);
        slots.iter().map(|&(_, ix)| self.rebuild(&self.held[ix as usize], market)).collect()
    }

    /// Every order with `market` restored, with its proof, in unspecified order.
    pub(super) fn orders<'a>(
        &'a self,
        market: &'a str,
    ) -> impl Iterator<Item = (Order, Option<&'a Arc<BundleProof>>)> + 'a {
        self.held.iter().map(move |h| (self.rebuild(h, market), h.proof.as_ref()))
    }

    /// The orders whose origin is `origin` (peer id bytes), `market` restored.
    pub(super) fn of_origin<'a>(&'a self, origin: &[u8], market: &'a str) -> impl Iterator<Item = Order> + 'a {
        let ix = self.origins.iter().position(|o| o.as_ref() == origin);
        self.held.iter().filter(move |h| Some(h.origin as usize) == ix).map(move |h| self.rebuild(h, market))
    }

    /// The proof of the order `digest`; `None` if not held or held without one.
    pub(super) fn proof(&self, digest: &Digest) -> Option<&Arc<BundleProof>> {
        self.index.get(digest).and_then(|&ix| self.held[ix as usize].proof.as_ref())
    }

    /// The origin (peer id bytes) of the order `digest`; `None` if not held.
    pub(super) fn origin(&self, digest: &Digest) -> Option<&Bytes> {
        self.index.get(digest).map(|&ix| &self.origins[self.held[ix as usize].origin as usize])
    }

    /// Gives the order `digest` `proof` unless it has one; `false` if not held.
    pub(super) fn attach_proof(&mut self, digest: &Digest, proof: &Arc<BundleProof>) -> bool {
        let Some(&ix) = self.index.get(digest) else { return false };
        self.held[ix as usize].proof.get_or_insert_with(|| proof.clone());
        true
    }

    /// Keeps only the orders whose digest satisfies `keep` (rebuilds the store).
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&Digest) -> bool) {
        let mut slots: Vec<(Digest, u32)> = self.index.drain().filter(|(d, _)| keep(d)).collect();
        slots.sort_unstable_by_key(|&(_, ix)| ix);
        let mut old: Vec<Option<Held>> = std::mem::take(&mut self.held).into_iter().map(Some).collect();
        self.held.reserve_exact(slots.len());
        for (d, ix) in slots {
            let h = old[ix as usize].take().expect("each slot is indexed once");
            self.index.insert(d, self.held.len() as u32);
            self.held.push(h);
        }
    }

    fn rebuild(&self, h: &Held, market: &str) -> Order {
        Order {
            id: h.id,
            market: market.to_owned(),
            side: h.side,
            price_ticks: h.price_ticks,
            quantity_lots: h.quantity_lots,
            kind: h.kind,
            client_ts_ns: h.client_ts_ns,
            origin: self.origins[h.origin as usize].clone(),
            epoch: h.epoch,
            freeze_proof: h.freeze_proof.to_vec(),
            submitted_at_ns: h.submitted_at_ns,
        }
    }
}

impl FromIterator<(Digest, Order, Option<Arc<BundleProof>>)> for BatchOrders {
    fn from_iter<I: IntoIterator<Item = (Digest, Order, Option<Arc<BundleProof>>)>>(iter: I) -> Self {
        let mut orders = BatchOrders::default();
        for (d, o, p) in iter {
            orders.insert(d, &o, p);
        }
        orders
    }
}

/// Index of `origin` in `origins`, appended if new. Consecutive orders of one pack share
/// their origin's buffer, so the last entry is checked first, by pointer, then by bytes.
fn origin_index(origins: &mut Vec<Bytes>, origin: &Bytes) -> u32 {
    if let Some(last) = origins.last()
        && (last.as_ptr() == origin.as_ptr() && last.len() == origin.len())
    {
        return (origins.len() - 1) as u32;
    }
    if let Some(ix) = origins.iter().position(|o| o == origin) {
        return ix as u32;
    }
    origins.push(origin.clone());
    u32::try_from(origins.len() - 1).expect("a batch has fewer than 2^32 origins")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(origin: &Bytes, id: u64) -> (Digest, Order) {
        let o = Order {
            id,
            market: "BTC-USDT".into(),
            side: 2,
            price_ticks: 6_500_000 + id,
            quantity_lots: 3,
            kind: 1,
            client_ts_ns: 1_700_000_000_000_000_000 + id,
            origin: origin.clone(),
            epoch: 42,
            freeze_proof: if id.is_multiple_of(2) { vec![7; 5] } else { Vec::new() },
            submitted_at_ns: 1_700_000_000_000_000_100 + id,
        };
        (crate::wire::order_digest(&o), o)
    }

    #[test]
    fn a_held_order_takes_88_bytes() {
        assert_eq!(size_of::<Held>(), 88, "update the module docs");
    }

    #[test]
    fn orders_come_back_as_they_were_added_with_their_market() {
        let (a, b) = (Bytes::from_static(b"origin-a"), Bytes::from(b"origin-b".to_vec()));
        let mut s = BatchOrders::default();
        let orders: Vec<(Digest, Order)> = (0..6).map(|i| order(if i % 3 == 0 { &b } else { &a }, i)).collect();
        for (d, o) in &orders {
            let stored = Order { market: String::new(), ..o.clone() };
            assert!(s.insert(*d, &stored, None));
        }
        assert!(!s.insert(orders[0].0, &orders[0].1, None), "a digest is held once");
        assert_eq!(s.len(), 6);
        assert_eq!(s.origins.len(), 2, "origins are interned");
        for (d, o) in &orders {
            assert_eq!(s.order(d, "BTC-USDT").as_ref(), Some(o));
            assert_eq!(s.origin(d), Some(&o.origin));
        }
        let mut by_digest = orders.clone();
        by_digest.sort_unstable_by_key(|(d, _)| *d);
        let canonical: Vec<Order> = by_digest.into_iter().map(|(_, o)| o).collect();
        assert_eq!(s.canonical("BTC-USDT"), canonical, "ascending digest, market restored");
        let mut from_b: Vec<u64> = s.of_origin(b"origin-b", "BTC-USDT").map(|o| o.id).collect();
        from_b.sort_unstable();
        assert_eq!(from_b, [0, 3]);
        assert_eq!(s.of_origin(b"origin-c", "BTC-USDT").count(), 0);
    }

    #[test]
    fn proofs_attach_once_and_retain_keeps_exactly_the_chosen_orders() {
        let a = Bytes::from_static(b"origin-a");
        let orders: Vec<(Digest, Order)> = (0..10).map(|i| order(&a, i)).collect();
        let mut s: BatchOrders = orders.iter().map(|(d, o)| (*d, o.clone(), None)).collect();
        let first = Arc::new(BundleProof::new([1; 64], orders.iter().map(|(d, _)| *d).collect()));
        let second = Arc::new(BundleProof::new([2; 64], Box::new([])));
        assert!(s.attach_proof(&orders[4].0, &first));
        assert!(s.attach_proof(&orders[4].0, &second));
        assert_eq!(s.proof(&orders[4].0), Some(&first), "the first proof stays");
        assert_eq!(s.proof(&orders[5].0), None);
        assert!(!s.attach_proof(&[0; 32], &first), "not held");

        let kept: Vec<Digest> = orders.iter().step_by(2).map(|(d, _)| *d).collect();
        s.retain(|d| kept.contains(d));
        assert_eq!(s.len(), 5);
        for (d, o) in &orders {
            assert_eq!(s.contains(d), kept.contains(d));
            assert_eq!(s.order(d, "BTC-USDT").as_ref(), kept.contains(d).then_some(o));
        }
        assert_eq!(s.proof(&orders[4].0), Some(&first), "proofs move with their orders");
        let mut listed: Vec<Digest> = s.digests().copied().collect();
        listed.sort_unstable();
        let mut expected = kept.clone();
        expected.sort_unstable();
        assert_eq!(listed, expected);
    }
}
