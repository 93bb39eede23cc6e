//! Recovery at start (docs/PROTOCOL.md §Sidecar restart): before it takes the engine's
//! orders, a node fetches from its peers the batches they decided before it started, so
//! that an engine resubmitting the orders whose fate it did not hear (its sidecar was
//! killed, or restarted) gets their outcome instead of a second instance, and an engine
//! that missed batches while its sidecar was down can match them.
//!
//! With clock sealing a node votes only from its floor, the epoch it started in
//! ([`crate::consensus::Consensus::open`]). For every market, the floor's batch and the
//! `retainedBatches` before it (a previous run may have gossiped orders into any of them),
//! it asks a live peer for the batch as decided there (`RepairRequest.decided`). An agreed
//! batch whose orders are each signed by their origin ([`crate::bundle`]) and hash to its
//! agreed hash joins this node as agreed (an answer that fails this is refused, and
//! another peer asked): `BatchAgreed` goes to the event log (an engine resuming from
//! `{incarnation, 0}` gets it), its orders from this node enter the own-order index as
//! committed and their `OrdersCommitted` follows.
//! Disputed and unknown batches hold no committed order; an undecided batch is asked again
//! every `sealTimeoutMs` until peers decide it, unless every live peer says it holds no
//! order of this node (on a fresh start, the usual case: nothing to wait for). Until every batch is answered,
//! submissions wait (the `recovered` gate of the node handle).
//!
//! Not recovered: engine sealing (its epochs are the engines' counters; the node takes
//! submissions at once); a network where no other member is live within [`GIVE_UP`]; and
//! batches peers still have not decided `repairWindowMs` after recovery started (e.g. the
//! restart took the network below its quorum, and the peers wait for this node's vote,
//! which it does not give below its floor). The node then takes submissions and says
//! which batches it could not learn: an order the engine resubmits from one of those could
//! be committed twice if a quorum later agrees its first instance.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use libp2p::PeerId;

use super::Node;
use super::handle::Submitted;
use crate::batch_hash::batch_hash_sorted;
use crate::proto::{BatchDecision, DecidedBatch, OrdersCommitted, event::Kind};
use crate::wire::{BatchKey, Digest};

/// With no live member to ask for this long, recovery gives up.
const GIVE_UP: Duration = Duration::from_secs(10);
/// Most recovery requests started per tick.
const PER_TICK: usize = 32;

/// Where recovery stands.
#[derive(Debug)]
pub(super) enum Recovery {
    /// Waiting for the first tick to know the floors.
    NotStarted,
    /// Asking peers.
    Running {
        /// Batches still to learn about: key → (last asked, peers that hold none of this
        /// node's orders in it).
        pending: BTreeMap<BatchKey, (Option<Instant>, HashSet<PeerId>)>,
        started: Instant,
        /// Own orders recovered as committed so far.
        committed: usize,
        /// Round-robin over live peers.
        next: usize,
    },
    /// Done: submissions are taken.
    Done,
}

impl Node {
    /// Every consensus tick until done: starts recovery once the floors are known, asks
    /// live peers about the batches not answered yet, and opens the gate when all are.
    pub(super) fn drive_recovery(&mut self, now: Instant) {
        if let Recovery::NotStarted = self.recovery {
            let window = u64::from(self.settings.config.consensus.retained_batches);
            let mut pending = BTreeMap::new();
            for market in self.markets.borrow().iter() {
                let Some(floor) = self.consensus.floor(market) else { return };
                for epoch in floor.saturating_sub(window)..=floor {
                    pending.insert(BatchKey { market: market.clone(), epoch }, (None, HashSet::new()));
                }
            }
            self.recovery = Recovery::Running { pending, started: now, committed: 0, next: 0 };
        }
        let live = self.askable_peers();
        let members = self.members();
        let retry = Duration::from_millis(self.settings.config.consensus.seal_timeout_ms as u64);
        let Recovery::Running { pending, started, next, .. } = &mut self.recovery else { return };
        if members <= 1 {
            return self.finish_recovery("this node is the only member");
        }
        if pending.is_empty() {
            return self.finish_recovery("every batch answered");
        }
        let deadline = Duration::from_millis(self.settings.config.consensus.repair_window_ms as u64);
        if now.duration_since(*started) >= deadline && !live.is_empty() {
            let undecided: Vec<String> = pending.keys().take(8).map(ToString::to_string).collect();
            tracing::warn!(
                batches = pending.len(),
                first = ?undecided,
                waited_ms = deadline.as_millis() as u64,
                "peers have not decided these batches from before this node's start; taking submissions anyway (an order the engine resubmits from them could be committed twice)"
            );
            return self.finish_recovery("peers left batches undecided");
        }
        if live.is_empty() {
            if now.duration_since(*started) >= GIVE_UP {
                tracing::warn!(
                    waited_s = GIVE_UP.as_secs(),
                    "no other member live to recover this node's committed orders from; taking submissions anyway (an order the engine resubmits now could be committed twice)"
                );
                return self.finish_recovery("no member live");
            }
            return;
        }
        let mut asks = Vec::new();
        pending.retain(|_, (_, unknown)| !live.iter().all(|p| unknown.contains(p)));
        for (key, (asked, unknown)) in pending.iter_mut() {
            if asks.len() >= PER_TICK {
                break;
            }
            if asked.is_none_or(|t| now.duration_since(t) >= retry) {
                // The next live peer that has not said it does not know the batch.
                let ask = (0..live.len()).map(|k| live[(*next + k) % live.len()]).find(|p| !unknown.contains(p));
                if let Some(peer) = ask {
                    *asked = Some(now);
                    asks.push((peer, key.clone()));
                    *next += 1;
                }
            }
        }
        for (peer, key) in asks {
            self.request_decided(peer, key);
        }
    }

    /// Live members this node is connected to (a request needs a connection), in a
    /// stable order.
    fn askable_peers(&self) -> Vec<PeerId> {
        let mut live: Vec<PeerId> = self.live_peers().into_iter().filter(|p| self.swarm.is_connected(p)).collect();
        live.sort_unstable();
        live
    }

    /// `peer`'s answer about `batch` (or `None`: the request failed, ask again).
    pub(super) fn on_decided(&mut self, peer: PeerId, batch: BatchKey, answer: Option<DecidedBatch>) {
        let me = self.info.peer_id.to_bytes();
        let Recovery::Running { pending, .. } = &mut self.recovery else { return };
        let Some(entry) = pending.get_mut(&batch) else { return };
        let Some(answer) = answer else {
            entry.0 = None;
            return;
        };
        match BatchDecision::try_from(answer.decision).unwrap_or(BatchDecision::Unspecified) {
            BatchDecision::Agreed => {}
            BatchDecision::Disputed => {
                pending.remove(&batch);
                return;
            }
            // Nothing of this node's there: the batch is done once every live peer says so
            // (another may know it, or hold an order of ours).
            BatchDecision::Unknown => {
                entry.1.insert(peer);
                entry.0 = None;
                return;
            }
            BatchDecision::Undecided if answer.orders.iter().all(|o| o.origin != me.as_slice()) => {
                entry.1.insert(peer);
                entry.0 = None;
                return;
            }
            // Our previous run's orders are in it: wait for the decision.
            BatchDecision::Undecided | BatchDecision::Unspecified => return,
        }
        let taken = self.take_agreed(peer, &batch, answer);
        let Recovery::Running { pending, committed, .. } = &mut self.recovery else { return };
        match taken {
            Some(n) => {
                pending.remove(&batch);
                *committed += n;
            }
            // A peer whose answer fails the checks is not asked about the batch again;
            // another is.
            None => {
                if let Some(entry) = pending.get_mut(&batch) {
                    entry.1.insert(peer);
                    entry.0 = None;
                }
            }
        }
    }

    /// `peer`'s agreed `batch`: accepted if every order is of the batch, valid and signed
    /// by its origin ([`Node::screen_repaired`]) and the orders hash to the agreed hash.
    /// Returns the number of this node's own orders found committed in it, or `None` if
    /// the answer was refused.
    fn take_agreed(&mut self, peer: PeerId, batch: &BatchKey, answer: DecidedBatch) -> Option<usize> {
        let me = self.info.peer_id.to_bytes();
        let Ok(hash) = Digest::try_from(answer.batch_hash.as_slice()) else {
            tracing::warn!(%peer, batch = %batch, "recovered batch has no 32-byte agreed hash; ignored");
            return None;
        };
        let (mut orders, clean) = self.screen_repaired(peer, batch, answer.orders, None, &answer.proofs);
        if !clean {
            return None;
        }
        orders.sort_unstable_by_key(|(d, _, _)| *d);
        let digests: Vec<Digest> = orders.iter().map(|(d, _, _)| *d).collect();
        if batch_hash_sorted(&digests) != hash {
            tracing::warn!(%peer, batch = %batch, "recovered batch does not hash to its agreed hash; ignored");
            return None;
        }
        let mine: Vec<(u64, Submitted)> = orders
            .iter()
            .filter(|(_, o, _)| o.origin == me.as_slice())
            .map(|(d, o, _)| (o.id, Submitted { digest: *d, epoch: o.epoch }))
            .collect();
        let result = answer
            .result
            .as_ref()
            .and_then(|r| Digest::try_from(r.result_hash.as_slice()).ok().map(|h| (peer, h, r.trade_count)));
        // The floor's batch is this node's own too (it votes on it): it is decided here in
        // its own time, with the same hash; only its committed orders of a previous run are
        // taken from the answer.
        if let Some(agreed) = self.consensus.recover_agreed(batch, hash, orders, result) {
            self.subscribers.broadcast(Kind::BatchAgreed(agreed));
        }
        for (id, receipt) in &mine {
            self.own.insert(&batch.market, *id, *receipt, true);
        }
        if !mine.is_empty() {
            let ids = mine.iter().map(|(id, _)| *id).collect();
            let ev = OrdersCommitted { batch_id: Some(batch.to_proto()), ids };
            self.subscribers.broadcast(Kind::OrdersCommitted(ev));
        }
        Some(mine.len())
    }

    fn finish_recovery(&mut self, why: &str) {
        if let Recovery::Running { committed, started, .. } = &self.recovery {
            tracing::info!(
                committed_orders = committed,
                took_ms = started.elapsed().as_millis() as u64,
                why,
                "recovery done: taking submissions"
            );
        }
        self.recovery = Recovery::Done;
        self.recovered.send_replace(true);
        self.update_health();
    }

    /// Batches recovery still waits for (0 when done).
    pub(super) fn recovering(&self) -> usize {
        match &self.recovery {
            Recovery::NotStarted => 1,
            Recovery::Running { pending, .. } => pending.len().max(1),
            Recovery::Done => 0,
        }
    }
}
