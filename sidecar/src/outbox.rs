//! The outbox: orders the local engine submitted that are not yet published, per market,
//! each with its order digest (which the pack's bundle signature covers), and their packing
//! into `OrderGossip` messages.
//!
//! Packing is adaptive: a pack takes whatever is queued for the market, up to
//! `max_orders` orders and `max_bytes` encoded bytes, so a lone order on an idle node goes
//! out alone and at once, while a backlog goes out in full packs. Sizes are counted as
//! [`crate::wire::encode_orders`] writes them (origin and market elided, the origin's
//! bundle signature included). Orders whose publish
//! failed are put back at the front, in order; nothing leaves the outbox unpublished.

use std::collections::{BTreeMap, VecDeque};

use crate::proto::Order;
use crate::wire::Digest;

/// Bytes of envelope reserved per message beyond the orders: version field, body tag and
/// length (16), and the origin signature field (key, length, 64 bytes).
const ENVELOPE_OVERHEAD: usize = 16 + 2 + crate::bundle::SIGNATURE_LEN;

/// Orders of one market to publish as one message, with their digests index for index.
#[derive(Debug, Default)]
pub(crate) struct Pack {
    /// The orders, in submission order.
    pub(crate) orders: Vec<Order>,
    /// Their order digests.
    pub(crate) digests: Vec<Digest>,
}

/// Pending local orders per market.
#[derive(Debug)]
pub(crate) struct Outbox {
    queues: BTreeMap<String, VecDeque<(Order, Digest)>>,
    len: usize,
    max_orders: usize,
    max_bytes: usize,
}

impl Outbox {
    /// An empty outbox packing at most `max_orders` orders and `max_bytes` encoded bytes
    /// per message.
    pub(crate) fn new(max_orders: usize, max_bytes: usize) -> Self {
        Outbox { queues: BTreeMap::new(), len: 0, max_orders: max_orders.max(1), max_bytes }
    }

    /// Queues `order`, whose order digest is `digest`, at the back of its market's queue.
    pub(crate) fn push(&mut self, order: Order, digest: Digest) {
        match self.queues.get_mut(&order.market) {
            Some(q) => q.push_back((order, digest)),
            None => {
                self.queues.insert(order.market.clone(), VecDeque::from([(order, digest)]));
            }
        }
        self.len += 1;
    }

    /// Orders queued across markets.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Markets with queued orders, in name order.
    pub(crate) fn pending_markets(&self) -> Vec<String> {
        self.queues.iter().filter(|(_, q)| !q.is_empty()).map(|(m, _)| m.clone()).collect()
    }

    /// Takes the next pack of `market`: the longest prefix of its queue within the order
    /// and byte limits (at least one order). `None` when the market has nothing queued.
    pub(crate) fn take_pack(&mut self, market: &str) -> Option<Pack> {
        let q = self.queues.get_mut(market)?;
        if q.is_empty() {
            return None;
        }
        let mut bytes = ENVELOPE_OVERHEAD;
        let mut n = 0;
        for (o, _) in q.iter().take(self.max_orders) {
            let framed = crate::wire::framed_len(o);
            if n > 0 && bytes + framed > self.max_bytes {
                break;
            }
            bytes += framed;
            n += 1;
        }
        self.len -= n;
        let (orders, digests) = q.drain(..n).unzip();
        Some(Pack { orders, digests })
    }

    /// Puts a pack whose publish failed back at the front of its market's queue, keeping
    /// its order.
    pub(crate) fn requeue_front(&mut self, market: &str, pack: Pack) {
        let q = self.queues.entry(market.to_owned()).or_default();
        self.len += pack.orders.len();
        for entry in pack.orders.into_iter().zip(pack.digests).rev() {
            q.push_front(entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(market: &str, id: u64, proof: usize) -> Order {
        Order { id, market: market.into(), quantity_lots: 1, freeze_proof: vec![7; proof], ..Default::default() }
    }

    #[test]
    fn lone_order_goes_alone_backlog_goes_in_full_packs() {
        let mut ob = Outbox::new(4, 1 << 20);
        ob.push(order("A", 0, 0), [0; 32]);
        assert_eq!(ob.take_pack("A").unwrap().orders.len(), 1);
        for i in 0..10 {
            ob.push(order("A", i, 0), [i as u8; 32]);
        }
        let sizes: Vec<usize> = std::iter::from_fn(|| ob.take_pack("A").filter(|p| !p.orders.is_empty()))
            .map(|p| {
                assert!(p.orders.iter().zip(&p.digests).all(|(o, d)| *d == [o.id as u8; 32]), "digests follow");
                p.orders.len()
            })
            .collect();
        assert_eq!(sizes, vec![4, 4, 2]);
        assert!(ob.is_empty());
    }

    #[test]
    fn packs_respect_the_byte_cap() {
        let cap = 1100;
        let mut ob = Outbox::new(1000, cap);
        for i in 0..50 {
            ob.push(order("A", i, 100), [0; 32]);
        }
        let mut total = 0;
        while let Some(pack) = ob.take_pack("A").filter(|p| !p.orders.is_empty()) {
            total += pack.orders.len();
            let encoded = crate::wire::encode_orders(&pack.orders, &[7; crate::bundle::SIGNATURE_LEN]);
            assert!(encoded.len() <= cap, "{} > {cap}", encoded.len());
        }
        assert_eq!(total, 50);
    }

    #[test]
    fn requeue_restores_order_and_markets_are_separate() {
        let mut ob = Outbox::new(2, 1 << 20);
        for i in 0..3 {
            ob.push(order("A", i, 0), [i as u8; 32]);
        }
        ob.push(order("B", 9, 0), [9; 32]);
        assert_eq!(ob.pending_markets(), vec!["A", "B"]);
        let p = ob.take_pack("A").unwrap();
        ob.requeue_front("A", p);
        let p = ob.take_pack("A").unwrap();
        let ids: Vec<u64> = p.orders.iter().map(|o| o.id).collect();
        assert_eq!(ids, vec![0, 1]);
        assert_eq!(p.digests, vec![[0; 32], [1; 32]]);
        assert_eq!(ob.len(), 2);
    }
}
