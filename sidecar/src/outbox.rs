//! The outbox: orders the local engine submitted that are not yet published, per market,
//! each with its order digest (which the pack's bundle signature covers), and their packing
//! into `OrderGossip` messages.
//!
//! Flow control is by credits ([`OutboxCredits`]): one per order and one per byte of the
//! order's [`charge`], taken by the API before an order is queued and handed back once it
//! is published, so the outbox holds at most its capacity in orders and its share of the
//! node's memory bound in bytes, and a fast engine is pushed back instead of anything
//! being dropped.
//!
//! Packing is adaptive: a pack takes whatever is queued for the market, up to
//! `max_orders` orders and `max_bytes` encoded bytes, so a lone order on an idle node goes
//! out alone and at once, while a backlog goes out in full packs. Sizes are counted as
//! [`crate::wire::encode_orders`] writes them (origin and market elided, the origin's
//! bundle signature included). Orders whose publish
//! failed are put back at the front, in order; nothing leaves the outbox unpublished.

use std::collections::{BTreeMap, VecDeque};

use prost::Message as _;
use tokio::sync::{AcquireError, Semaphore};

use crate::proto::Order;
use crate::wire::Digest;

/// Upper bound on the bytes stamping adds to an engine's order: the origin (a 38-byte
/// Ed25519 peer id, key and length: 40), the epoch and the submit time (varints of at
/// most 10 bytes, plus keys: 11 each).
const STAMP_BYTES: usize = 40 + 11 + 11;

/// The memory an order is charged while it waits in the outbox, bytes: its protobuf
/// encoded length as the engine sent it plus what stamping adds ([`STAMP_BYTES`]).
/// Computed on the engine's order, before stamping, by both the API (taking credits) and
/// the node (queueing), so both agree.
pub(crate) fn charge(o: &Order) -> usize {
    o.encoded_len() + STAMP_BYTES
}

/// The outbox's credits: orders and bytes (see the module docs).
#[derive(Debug)]
pub(crate) struct OutboxCredits {
    orders: Semaphore,
    bytes: Semaphore,
}

impl OutboxCredits {
    /// Credits for `orders` orders and `bytes` bytes.
    pub(crate) fn new(orders: usize, bytes: usize) -> Self {
        OutboxCredits { orders: Semaphore::new(orders), bytes: Semaphore::new(bytes) }
    }

    /// Waits for `orders` order credits, then `bytes` byte credits (always in this order,
    /// so concurrent submitters cannot deadlock), and keeps them. Cancel-safe: dropped
    /// while waiting, it keeps nothing.
    ///
    /// Errors: the credits were closed (the node stopped).
    pub(crate) async fn take(&self, orders: u32, bytes: u32) -> Result<(), AcquireError> {
        let order_credits = self.orders.acquire_many(orders).await?;
        self.bytes.acquire_many(bytes).await?.forget();
        order_credits.forget();
        Ok(())
    }

    /// Hands back credits of orders that left the outbox or were never queued.
    pub(crate) fn give_back(&self, orders: usize, bytes: usize) {
        self.orders.add_permits(orders);
        self.bytes.add_permits(bytes);
    }

    /// Fails every waiting and future [`Self::take`].
    pub(crate) fn close(&self) {
        self.orders.close();
        self.bytes.close();
    }
}

/// Bytes of envelope reserved per message beyond the orders: version field, body tag and
/// length (16), and the origin signature field (key, length, 64 bytes).
const ENVELOPE_OVERHEAD: usize = 16 + 2 + crate::bundle::SIGNATURE_LEN;

/// Orders of one market to publish as one message, with their digests and [`charge`]s
/// index for index.
#[derive(Debug, Default)]
pub(crate) struct Pack {
    /// The orders, in submission order.
    pub(crate) orders: Vec<Order>,
    /// Their order digests.
    pub(crate) digests: Vec<Digest>,
    /// Their charges, bytes.
    pub(crate) charges: Vec<usize>,
}

impl Pack {
    /// The pack's charge, bytes: the byte credits its orders hold.
    pub(crate) fn charge(&self) -> usize {
        self.charges.iter().sum()
    }
}

/// Pending local orders per market.
#[derive(Debug)]
pub(crate) struct Outbox {
    queues: BTreeMap<String, VecDeque<(Order, Digest, usize)>>,
    len: usize,
    bytes: usize,
    max_orders: usize,
    max_bytes: usize,
}

impl Outbox {
    /// An empty outbox packing at most `max_orders` orders and `max_bytes` encoded bytes
    /// per message.
    pub(crate) fn new(max_orders: usize, max_bytes: usize) -> Self {
        Outbox { queues: BTreeMap::new(), len: 0, bytes: 0, max_orders: max_orders.max(1), max_bytes }
    }

    /// Queues `order`, whose order digest is `digest` and [`charge`] `charge` bytes, at
    /// the back of its market's queue.
    pub(crate) fn push(&mut self, order: Order, digest: Digest, charge: usize) {
        match self.queues.get_mut(&order.market) {
            Some(q) => q.push_back((order, digest, charge)),
            None => {
                self.queues.insert(order.market.clone(), VecDeque::from([(order, digest, charge)]));
            }
        }
        self.len += 1;
        self.bytes += charge;
    }

    /// Orders queued across markets.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Bytes charged for the orders queued across markets.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
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
        for (o, _, _) in q.iter().take(self.max_orders) {
            let framed = crate::wire::framed_len(o);
            if n > 0 && bytes + framed > self.max_bytes {
                break;
            }
            bytes += framed;
            n += 1;
        }
        self.len -= n;
        let mut pack =
            Pack { orders: Vec::with_capacity(n), digests: Vec::with_capacity(n), charges: Vec::with_capacity(n) };
        for (o, d, c) in q.drain(..n) {
            pack.orders.push(o);
            pack.digests.push(d);
            pack.charges.push(c);
        }
        self.bytes -= pack.charge();
        Some(pack)
    }

    /// Puts a pack whose publish failed back at the front of its market's queue, keeping
    /// its order.
    pub(crate) fn requeue_front(&mut self, market: &str, pack: Pack) {
        let q = self.queues.entry(market.to_owned()).or_default();
        self.len += pack.orders.len();
        self.bytes += pack.charge();
        for ((o, d), c) in pack.orders.into_iter().zip(pack.digests).zip(pack.charges).rev() {
            q.push_front((o, d, c));
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
        ob.push(order("A", 0, 0), [0; 32], 1);
        assert_eq!(ob.take_pack("A").unwrap().orders.len(), 1);
        for i in 0..10 {
            ob.push(order("A", i, 0), [i as u8; 32], 1);
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
            ob.push(order("A", i, 100), [0; 32], 1);
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
            ob.push(order("A", i, 0), [i as u8; 32], 1);
        }
        ob.push(order("B", 9, 0), [9; 32], 1);
        assert_eq!(ob.pending_markets(), vec!["A", "B"]);
        assert_eq!(ob.bytes(), 4);
        let p = ob.take_pack("A").unwrap();
        assert_eq!((p.charge(), ob.bytes()), (2, 2));
        ob.requeue_front("A", p);
        assert_eq!(ob.bytes(), 4);
        let p = ob.take_pack("A").unwrap();
        let ids: Vec<u64> = p.orders.iter().map(|o| o.id).collect();
        assert_eq!(ids, vec![0, 1]);
        assert_eq!(p.digests, vec![[0; 32], [1; 32]]);
        assert_eq!(ob.len(), 2);
    }

    /// Byte credits push a submitter back like order credits do and come back when
    /// handed back; a cancelled waiter keeps nothing; a closed set fails its waiters.
    #[tokio::test]
    async fn byte_credits_push_back_until_handed_back() {
        let credits = OutboxCredits::new(100, 1000);
        credits.take(1, 800).await.unwrap();
        let mut waiting = Box::pin(credits.take(1, 300));
        assert!(futures::poll!(&mut waiting).is_pending(), "1,100 bytes > 1,000: pushed back");
        credits.give_back(1, 800);
        waiting.await.unwrap();
        let mut cancelled = Box::pin(credits.take(99, 1000));
        assert!(futures::poll!(&mut cancelled).is_pending(), "1,000 bytes > the 700 left");
        drop(cancelled);
        let all_left = credits.take(99, 700);
        assert!(matches!(futures::FutureExt::now_or_never(all_left), Some(Ok(()))), "nothing leaked");
        credits.give_back(1, 1);
        let mut blocked = Box::pin(credits.take(1, 2));
        assert!(futures::poll!(&mut blocked).is_pending());
        credits.close();
        assert!(blocked.await.is_err());
    }

    #[test]
    fn the_charge_covers_what_stamping_adds() {
        let engine = order("A", 1, 10);
        let mut stamped = engine.clone();
        stamped.origin = libp2p::PeerId::from(libp2p::identity::Keypair::generate_ed25519().public()).to_bytes().into();
        stamped.epoch = u64::MAX;
        stamped.submitted_at_ns = u64::MAX;
        assert!(stamped.encoded_len() <= charge(&engine), "{} > {}", stamped.encoded_len(), charge(&engine));
    }
}
