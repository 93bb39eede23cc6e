//! This node's own accepted orders by id, for idempotent submission (issue 11, item 5):
//! `(origin, id)` is unique within the retention window, so an engine that resubmits an
//! order it is unsure about (after a reconnect, or its own restart) gets the first
//! instance's receipt instead of a second order, and an id reused for different content is
//! refused.
//!
//! The window: an id is remembered until its batch is pruned (`retainedBatches` decided
//! batches per market). A restarted sidecar relearns its committed orders from its peers
//! before it takes submissions ([`super::recovery`]); an excluded id is forgotten at once,
//! so that its order can be resubmitted.

use std::collections::{BTreeMap, HashMap};

use super::handle::Submitted;
use crate::proto::Order;
use crate::wire;

/// What an engine's order is, against the orders already accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Seen {
    /// Its id is new.
    New,
    /// The same order was accepted before: its receipt, and whether it is committed.
    Again(Submitted, bool),
    /// Its id was accepted before for a different order, whose digest this is.
    Conflict(wire::Digest),
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    receipt: Submitted,
    committed: bool,
}

/// Accepted own orders: id → receipt and outcome, and per market the ids of each epoch,
/// for pruning.
#[derive(Debug, Default)]
pub(super) struct OwnOrders {
    by_id: HashMap<u64, Entry>,
    by_market: HashMap<String, BTreeMap<u64, Vec<u64>>>,
}

impl OwnOrders {
    /// Classifies `order` (origin set, epoch stamped for now): identical means equal in
    /// every field the digest covers but the epoch (which the sidecar stamps).
    pub(super) fn check(&self, order: &mut Order) -> Seen {
        let Some(first) = self.by_id.get(&order.id) else { return Seen::New };
        let stamped = std::mem::replace(&mut order.epoch, first.receipt.epoch);
        let same = wire::order_digest(order) == first.receipt.digest;
        order.epoch = stamped;
        if same { Seen::Again(first.receipt, first.committed) } else { Seen::Conflict(first.receipt.digest) }
    }

    /// Remembers an accepted order of `market` (`committed`: already known to be in its
    /// agreed batch, as for orders recovered after a restart).
    pub(super) fn insert(&mut self, market: &str, id: u64, receipt: Submitted, committed: bool) {
        self.by_id.insert(id, Entry { receipt, committed });
        let epochs = match self.by_market.get_mut(market) {
            Some(e) => e,
            None => self.by_market.entry(market.to_owned()).or_default(),
        };
        epochs.entry(receipt.epoch).or_default().push(id);
    }

    /// Forgets the orders of the batches `(market, epoch)` that `pruned` says were pruned;
    /// pruning goes oldest first, so each market stops at its first batch still kept.
    pub(super) fn forget(&mut self, pruned: impl Fn(&str, u64) -> bool) {
        for (market, epochs) in &mut self.by_market {
            while let Some(entry) = epochs.first_entry() {
                if !pruned(market, *entry.key()) {
                    break;
                }
                let epoch = *entry.key();
                for id in entry.remove() {
                    if self.by_id.get(&id).is_some_and(|e| e.receipt.epoch == epoch) {
                        self.by_id.remove(&id);
                    }
                }
            }
        }
    }

    /// The orders accepted into batch `(market, epoch)`: (id, digest). An id excluded from
    /// it and resubmitted into a later epoch belongs to that later batch.
    pub(super) fn of_batch<'a>(&'a self, market: &str, epoch: u64) -> impl Iterator<Item = (u64, wire::Digest)> + 'a {
        let ids = self.by_market.get(market).and_then(|e| e.get(&epoch)).map_or(&[][..], Vec::as_slice);
        ids.iter().filter_map(move |id| {
            self.by_id.get(id).filter(|e| e.receipt.epoch == epoch).map(|e| (*id, e.receipt.digest))
        })
    }

    /// Records that `id` is committed (a resubmission is answered with that outcome).
    pub(super) fn commit(&mut self, id: u64) {
        if let Some(e) = self.by_id.get_mut(&id) {
            e.committed = true;
        }
    }

    /// Frees `id` (excluded from batch `epoch`): the engine may resubmit it.
    pub(super) fn release(&mut self, id: u64, epoch: u64) {
        if self.by_id.get(&id).is_some_and(|e| e.receipt.epoch == epoch) {
            self.by_id.remove(&id);
        }
    }

    /// Orders remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_id.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{OrderKind, Side};

    fn stamped(id: u64, price: u64, epoch: u64) -> Order {
        Order {
            id,
            market: "M".into(),
            side: Side::Buy as i32,
            kind: OrderKind::Limit as i32,
            price_ticks: price,
            quantity_lots: 1,
            origin: vec![0, 1, 2].into(),
            epoch,
            ..Default::default()
        }
    }

    fn accept(own: &mut OwnOrders, o: &Order) -> Submitted {
        let receipt = Submitted { digest: wire::order_digest(o), epoch: o.epoch };
        own.insert(&o.market, o.id, receipt, false);
        receipt
    }

    #[test]
    fn a_resubmission_gets_the_first_receipt_and_a_reused_id_is_a_conflict() {
        let mut own = OwnOrders::default();
        let first = stamped(7, 100, 3);
        assert_eq!(own.check(&mut first.clone()), Seen::New);
        let receipt = accept(&mut own, &first);
        // The same order, resubmitted two epochs later (the sidecar stamps the new epoch).
        let mut again = stamped(7, 100, 5);
        assert_eq!(own.check(&mut again), Seen::Again(receipt, false));
        assert_eq!(again.epoch, 5, "the check leaves the order as it was");
        let Order { submitted_at_ns, .. } = &mut again;
        *submitted_at_ns = 99; // a measurement, not part of the order
        assert_eq!(own.check(&mut again), Seen::Again(receipt, false));
        assert_eq!(own.check(&mut stamped(7, 101, 5)), Seen::Conflict(receipt.digest));
        assert_eq!(own.check(&mut stamped(8, 100, 5)), Seen::New);
    }

    #[test]
    fn ids_are_forgotten_with_their_batch() {
        let mut own = OwnOrders::default();
        for (id, epoch) in [(1, 1), (2, 1), (3, 2)] {
            accept(&mut own, &stamped(id, 100, epoch));
        }
        own.forget(|market, epoch| market == "M" && epoch <= 1);
        assert_eq!(own.len(), 1);
        assert_eq!(own.check(&mut stamped(1, 555, 9)), Seen::New, "id 1 is free again");
        assert!(matches!(own.check(&mut stamped(3, 555, 9)), Seen::Conflict(_)));
    }

    #[test]
    fn an_excluded_id_is_free_and_its_resubmission_belongs_to_the_new_batch() {
        let mut own = OwnOrders::default();
        let first = accept(&mut own, &stamped(1, 100, 3));
        accept(&mut own, &stamped(2, 100, 3));
        assert_eq!(own.of_batch("M", 3).collect::<Vec<_>>().len(), 2);
        own.release(1, 3);
        assert_eq!(own.check(&mut stamped(1, 100, 5)), Seen::New, "excluded: free again");
        let again = accept(&mut own, &stamped(1, 100, 5));
        assert_ne!(again.digest, first.digest, "the new instance carries its new epoch");
        let ids = |own: &OwnOrders, e| own.of_batch("M", e).map(|(id, _)| id).collect::<Vec<_>>();
        assert_eq!(ids(&own, 3), vec![2], "id 1 left batch 3");
        assert_eq!(ids(&own, 5), vec![1]);
        own.release(1, 3);
        assert_eq!(ids(&own, 5), vec![1], "releasing the old instance does not touch the new one");
        own.forget(|_, epoch| epoch <= 3);
        assert_eq!(ids(&own, 5), vec![1], "forgetting batch 3 keeps the resubmitted id");
    }
}
