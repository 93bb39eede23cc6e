//! Batch and result consensus (DESIGN §4): the state machine behind BatchAgreed,
//! BatchDisputed, ResultAgreed and ResultMismatch.
//!
//! Pure logic: the node feeds it orders, peers' seals and results, repair replies and the
//! time; it answers with [`Action`]s (publish, request repair, notify the engine, penalise
//! a peer). Per batch `(market, epoch)`:
//!
//! 1. **Collect**: orders (local and peers') join the batch's set, keyed by order digest:
//!    the authoritative dedup of delivery ([`crate::dedup`] says how it and the seen-cache
//!    forget).
//! 2. **Seal**: `batch_hash` = SHA-256 over the sorted digests ([`crate::batch_hash`]);
//!    `BatchSealed { hash, count, revision }` is broadcast.
//! 3. **Compare**: peers' latest seals are compared with ours. Every live peer agreeing →
//!    agreed at once; otherwise after `sealTimeoutMs`, a quorum agreeing and no repair in
//!    flight → agreed, and the disagreeing peers are penalised as the minority.
//! 4. **Repair**: for each peer whose hash differs, request its digest set, fetch the
//!    orders we miss from their origins, add them (they reach the engine before the
//!    batch's `BatchAgreed`), re-seal with `revision + 1`. Batches converge to the union.
//!    Still unagreed `repairWindowMs` after the first seal → `BatchDisputed`.
//! 5. **Settle**: the engine submits its result; `TradeResult` is broadcast and compared.
//!    Any differing result halts the batch (`ResultMismatch { halt: true }`, logged at
//!    error level with `severity=critical`); all live peers agreeing → `ResultAgreed`;
//!    when every live peer answered (or the timeout passed) the peers outside the majority
//!    result are penalised.
//!
//! Quorum: `consensus.quorum` seals (this node included), or by default a strict majority
//! of the live members (this node + peers with a recent `PeerStatus`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use openmatch_gossip_crds::sidecar_config::ConsensusConfig;

use crate::batch_hash::batch_hash_sorted;
use crate::proto::{BatchAgreed, BatchDisputed, DigestSet, Order, OriginDigest, ResultAgreed, ResultMismatch};
use crate::reputation::Offence;
use crate::wire::{self, BatchKey, BatchResult, Digest, SealedBatch};

/// Where a batch stands (DESIGN §4: COLLECT → MATCH → SETTLE, with their outcomes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BatchPhase {
    /// Taking orders; not sealed yet.
    Collect,
    /// Sealed; comparing and repairing.
    Sealed,
    /// Agreed; waiting for the engine's result.
    Agreed,
    /// The engine submitted its result; comparing results.
    Settling,
    /// Every result matched.
    Settled,
    /// The repair window closed without agreement.
    Disputed,
    /// Results differed (or too few arrived): matching halted.
    Halted,
}

impl BatchPhase {
    /// Whether orders may still join the batch.
    fn open(self) -> bool {
        matches!(self, BatchPhase::Collect | BatchPhase::Sealed)
    }

    /// Whether the batch is finished (nothing more will happen to it).
    fn finished(self) -> bool {
        matches!(self, BatchPhase::Settled | BatchPhase::Disputed | BatchPhase::Halted)
    }
}

/// Why a batch request (from the engine) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BatchError {
    /// `GetBatch` of a batch this node does not know, or no longer keeps.
    #[error("batch {0} is unknown or no longer kept")]
    Unknown(BatchKey),
    /// `GetBatch` of a batch that is not agreed (yet, or ever).
    #[error("batch {batch} is {phase:?}: only agreed batches are served")]
    NotServed {
        /// The batch.
        batch: BatchKey,
        /// Where it stands.
        phase: BatchPhase,
    },
    /// `SubmitResult` for a batch that is unknown (`None`) or not in phase Agreed.
    #[error("batch {batch} is {}", .phase.map_or("unknown".to_owned(), |p| format!("{p:?}, not Agreed")))]
    NotAgreed {
        /// The batch.
        batch: BatchKey,
        /// Where it stands, if known.
        phase: Option<BatchPhase>,
    },
    /// `SealBatch` on a network that seals by clock.
    #[error("the network seals by clock (consensus.sealing: clock)")]
    ClockSealing,
    /// `SealBatch` for a market this node does not trade.
    #[error("market {0:?} is not traded here")]
    UnknownMarket(String),
}

/// What the node must do.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Action {
    /// Broadcast this seal on the market's batches topic.
    PublishSeal(SealedBatch),
    /// Broadcast this result on the market's results topic.
    PublishResult(BatchResult),
    /// Ask `peer` for its digest set of `batch`.
    RequestDigests {
        /// Peer to ask.
        peer: PeerId,
        /// Batch.
        batch: BatchKey,
    },
    /// Fetch `digests` of `batch` from `peer` (their origin).
    FetchOrders {
        /// The orders' origin.
        peer: PeerId,
        /// Batch.
        batch: BatchKey,
        /// Missing order digests.
        digests: Vec<Digest>,
    },
    /// Tell the engine.
    Agreed(BatchAgreed),
    /// Tell the engine.
    Disputed(BatchDisputed),
    /// Tell the engine.
    ResultAgreed(ResultAgreed),
    /// Tell the engine (a determinism violation).
    ResultMismatch(ResultMismatch),
    /// Lower `peer`'s reputation.
    Penalize {
        /// The peer.
        peer: PeerId,
        /// Why: [`Offence::BatchMinority`] or [`Offence::ResultMinority`].
        offence: Offence,
    },
}

/// Why an order could not join its batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AddOutcome {
    /// New to the batch.
    Added,
    /// Already in the batch.
    Duplicate,
    /// The batch is already agreed or finished: too late.
    Late,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Seal {
    revision: u32,
    hash: Digest,
}

#[derive(Debug)]
struct Batch {
    /// The batch's orders by digest, each stored without its market (the batch key holds
    /// it: [`wire::strip_market`]), so keeping a copy allocates nothing but the map slot.
    /// Canonical order (ascending digest) is established when sealing and serving.
    orders: HashMap<Digest, Order, DigestHasher>,
    phase: BatchPhase,
    revision: u32,
    hash: Option<Digest>,
    first_sealed: Option<Instant>,
    sealed_at: Option<Instant>,
    peer_seals: HashMap<PeerId, Seal>,
    /// Peers whose digest set we asked for at (their revision, our revision).
    asked: HashSet<(PeerId, u32, u32)>,
    /// Outstanding repair requests.
    in_flight: usize,
    repaired: u64,
    result: Option<(Digest, u64)>,
    result_at: Option<Instant>,
    peer_results: HashMap<PeerId, (Digest, u64)>,
    results_judged: bool,
}

impl Batch {
    fn new() -> Self {
        Batch {
            orders: HashMap::default(),
            phase: BatchPhase::Collect,
            revision: 0,
            hash: None,
            first_sealed: None,
            sealed_at: None,
            peer_seals: HashMap::new(),
            asked: HashSet::new(),
            in_flight: 0,
            repaired: 0,
            result: None,
            result_at: None,
            peer_results: HashMap::new(),
            results_judged: false,
        }
    }
}

/// All batches of this node.
pub(crate) struct Consensus {
    config: ConsensusConfig,
    batches: BTreeMap<BatchKey, Batch>,
    /// Per market, the highest epoch dropped by pruning: anything at or below it is over.
    pruned: HashMap<String, u64>,
    /// Key of the batch the last order joined: consecutive orders of one batch (a pack)
    /// look it up without allocating a key each.
    cursor: Option<BatchKey>,
}

/// Hasher of the per-batch order maps: foldhash, randomly seeded per map (digests come from
/// peers, so an unseeded hash of their bytes would let a peer aim orders at one bucket).
type DigestHasher = foldhash::fast::RandomState;

/// `b`'s digests in canonical (ascending) order.
fn sorted_digests(b: &Batch) -> Vec<Digest> {
    let mut digests: Vec<Digest> = b.orders.keys().copied().collect();
    digests.sort_unstable();
    digests
}

/// Strict majority of `live` members (this node included).
pub(crate) fn majority(live: usize) -> usize {
    live / 2 + 1
}

impl Consensus {
    /// No batches yet.
    pub(crate) fn new(config: ConsensusConfig) -> Self {
        Consensus { config, batches: BTreeMap::new(), pruned: HashMap::new(), cursor: None }
    }

    fn quorum(&self, live: usize) -> usize {
        match self.config.quorum {
            0 => majority(live),
            q => q as usize,
        }
    }

    /// The phase of `batch`, if known.
    #[cfg(test)]
    fn phase(&self, batch: &BatchKey) -> Option<BatchPhase> {
        self.batches.get(batch).map(|b| b.phase)
    }

    /// Batches not yet sealed, for the clock to check.
    pub(crate) fn collecting(&self) -> Vec<BatchKey> {
        self.batches.iter().filter(|(_, b)| b.phase == BatchPhase::Collect).map(|(k, _)| k.clone()).collect()
    }

    /// Highest epoch of `market` that a peer has sealed (or that was pruned, and so was
    /// decided), for engine sealing to catch up to.
    pub(crate) fn highest_peer_sealed(&self, market: &str) -> Option<u64> {
        let sealed = self
            .batches
            .iter()
            .filter(|(k, b)| k.market == market && !b.peer_seals.is_empty())
            .map(|(k, _)| k.epoch)
            .max();
        sealed.max(self.pruned.get(market).copied())
    }

    /// Whether batch `(market, epoch)` was dropped by pruning (or is older than one that was).
    pub(crate) fn is_pruned(&self, market: &str, epoch: u64) -> bool {
        self.pruned.get(market).is_some_and(|p| epoch <= *p)
    }

    /// Adds a copy of `order` (`origin` and `epoch` set) to its batch, creating the batch
    /// if needed. An order that joins an already sealed batch makes the node re-seal at the
    /// next [`Consensus::tick`].
    pub(crate) fn add_order(&mut self, order: &Order, digest: Digest) -> AddOutcome {
        if self.is_pruned(&order.market, order.epoch) {
            return AddOutcome::Late;
        }
        if !self.cursor.as_ref().is_some_and(|k| k.epoch == order.epoch && k.market == order.market) {
            self.cursor = Some(BatchKey { market: order.market.clone(), epoch: order.epoch });
        }
        let key = self.cursor.as_ref().expect("set above");
        let batch = match self.batches.get_mut(key) {
            Some(b) => b,
            None => self.batches.entry(key.clone()).or_insert_with(Batch::new),
        };
        if !batch.phase.open() {
            return AddOutcome::Late;
        }
        match batch.orders.entry(digest) {
            std::collections::hash_map::Entry::Occupied(_) => return AddOutcome::Duplicate,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(wire::strip_market(order));
            }
        }
        if batch.phase == BatchPhase::Sealed {
            batch.hash = None; // stale: re-seal
        }
        AddOutcome::Added
    }

    /// Seals `batch` now (clock due or the engine asked), creating it empty if unknown.
    pub(crate) fn seal(&mut self, batch: &BatchKey, now: Instant) -> Vec<Action> {
        let b = self.batches.entry(batch.clone()).or_insert_with(Batch::new);
        if b.phase != BatchPhase::Collect {
            return Vec::new();
        }
        b.phase = BatchPhase::Sealed;
        b.first_sealed = Some(now);
        vec![reseal(batch, b, now)]
    }

    /// A peer's seal. Creates the batch (empty) if unknown, so a late joiner takes part in
    /// the open batches; `false` (and nothing recorded) for an epoch already pruned.
    pub(crate) fn on_peer_seal(&mut self, peer: PeerId, seal: &SealedBatch) -> bool {
        if self.is_pruned(&seal.batch.market, seal.batch.epoch) {
            return false;
        }
        let b = self.batches.entry(seal.batch.clone()).or_insert_with(Batch::new);
        let newer = b.peer_seals.get(&peer).is_none_or(|s| seal.revision >= s.revision);
        if newer {
            b.peer_seals.insert(peer, Seal { revision: seal.revision, hash: seal.hash });
        }
        true
    }

    /// Our digest set of `batch`, for a repair request.
    pub(crate) fn digest_set(&self, batch: &BatchKey) -> Option<DigestSet> {
        let b = self.batches.get(batch)?;
        Some(DigestSet {
            batch_id: Some(batch.to_proto()),
            entries: sorted_digests(b)
                .iter()
                .map(|d| OriginDigest { digest: d.to_vec(), origin: b.orders[d].origin.to_vec() })
                .collect(),
        })
    }

    /// The orders of `batch` among `digests` that we hold, for a fetch request.
    pub(crate) fn orders_for(&self, batch: &BatchKey, digests: &[Digest]) -> Option<Vec<Order>> {
        let b = self.batches.get(batch)?;
        Some(digests.iter().filter_map(|d| b.orders.get(d)).map(|o| wire::with_market(o, &batch.market)).collect())
    }

    /// The batch's orders in canonical order (ascending digest), once agreed.
    ///
    /// Errors: [`BatchError::Unknown`], [`BatchError::NotServed`] (not agreed, or disputed).
    pub(crate) fn agreed_orders(&self, batch: &BatchKey) -> Result<Vec<Order>, BatchError> {
        let b = self.batches.get(batch).ok_or_else(|| BatchError::Unknown(batch.clone()))?;
        match b.phase {
            BatchPhase::Agreed | BatchPhase::Settling | BatchPhase::Settled | BatchPhase::Halted => {
                Ok(sorted_digests(b).iter().map(|d| wire::with_market(&b.orders[d], &batch.market)).collect())
            }
            phase => Err(BatchError::NotServed { batch: batch.clone(), phase }),
        }
    }

    /// A digest set answered our request: fetch what we miss from each order's origin
    /// (entries whose origin is not a valid peer id are skipped).
    pub(crate) fn on_digest_set(&mut self, set: &DigestSet) -> Vec<Action> {
        let Some(id) = &set.batch_id else { return Vec::new() };
        let key = BatchKey::from_proto(id);
        let Some(b) = self.batches.get_mut(&key) else { return Vec::new() };
        b.in_flight = b.in_flight.saturating_sub(1);
        if !b.phase.open() {
            return Vec::new();
        }
        let mut by_origin: BTreeMap<Vec<u8>, Vec<Digest>> = BTreeMap::new();
        for e in &set.entries {
            if let Ok(d) = <Digest>::try_from(e.digest.as_slice())
                && !b.orders.contains_key(&d)
            {
                by_origin.entry(e.origin.clone()).or_default().push(d);
            }
        }
        let mut actions = Vec::new();
        for (origin, digests) in by_origin {
            if let Ok(peer) = PeerId::from_bytes(&origin) {
                b.in_flight += 1;
                actions.push(Action::FetchOrders { peer, batch: key.clone(), digests });
            }
        }
        actions
    }

    /// A repair request failed or was refused.
    pub(crate) fn on_repair_failure(&mut self, batch: &BatchKey) {
        if let Some(b) = self.batches.get_mut(batch) {
            b.in_flight = b.in_flight.saturating_sub(1);
        }
    }

    /// Orders fetched from `peer` (already checked: origin = `peer`, digest as asked, batch
    /// as asked). They join the batch; the caller delivers them to the engine.
    pub(crate) fn on_fetched(&mut self, batch: &BatchKey, orders: Vec<(Digest, Order)>) -> Vec<Order> {
        let Some(b) = self.batches.get_mut(batch) else { return Vec::new() };
        b.in_flight = b.in_flight.saturating_sub(1);
        if !b.phase.open() {
            return Vec::new();
        }
        let mut added = Vec::new();
        for (d, o) in orders {
            if let std::collections::hash_map::Entry::Vacant(v) = b.orders.entry(d) {
                v.insert(wire::strip_market(&o));
                added.push(o);
            }
        }
        if !added.is_empty() {
            b.repaired += added.len() as u64;
            b.hash = None; // re-seal at the next tick
        }
        added
    }

    /// The engine's result for an agreed batch.
    ///
    /// Errors: [`BatchError::NotAgreed`]: the batch is unknown, not agreed, or already has a
    /// result.
    pub(crate) fn submit_result(
        &mut self,
        batch: &BatchKey,
        hash: Digest,
        trades: u64,
        now: Instant,
    ) -> Result<Vec<Action>, BatchError> {
        let b = match self.batches.get_mut(batch) {
            Some(b) if b.phase == BatchPhase::Agreed => b,
            other => return Err(BatchError::NotAgreed { batch: batch.clone(), phase: other.map(|b| b.phase) }),
        };
        b.phase = BatchPhase::Settling;
        b.result = Some((hash, trades));
        b.result_at = Some(now);
        Ok(vec![Action::PublishResult(BatchResult { batch: batch.clone(), hash, trades })])
    }

    /// A peer's result (nothing recorded for a pruned epoch).
    pub(crate) fn on_peer_result(&mut self, peer: PeerId, r: &BatchResult) {
        if self.is_pruned(&r.batch.market, r.batch.epoch) {
            return;
        }
        let b = self.batches.entry(r.batch.clone()).or_insert_with(Batch::new);
        b.peer_results.insert(peer, (r.hash, r.trades));
    }

    /// Advances every batch: re-seals stale ones, starts repairs, decides agreement,
    /// disputes, results, and drops old decided batches. `live` = live peers (not this
    /// node).
    pub(crate) fn tick(&mut self, now: Instant, live: &HashSet<PeerId>) -> Vec<Action> {
        let members = live.len() + 1;
        let ctx = TickContext {
            now,
            live,
            members,
            quorum: self.quorum(members),
            seal_timeout: Duration::from_millis(self.config.seal_timeout_ms as u64),
            repair_window: Duration::from_millis(self.config.repair_window_ms as u64),
            result_timeout: Duration::from_millis(self.config.result_timeout_ms as u64),
        };
        let mut actions = Vec::new();
        for (key, b) in self.batches.iter_mut() {
            match b.phase {
                BatchPhase::Sealed => compare_seals(&ctx, key, b, &mut actions),
                BatchPhase::Settling => compare_results(&ctx, key, b, &mut actions),
                _ => {}
            }
            judge_results(&ctx, b, &mut actions);
        }
        self.prune();
        actions
    }

    /// Keeps at most `retainedBatches` decided batches per market (the newest): finished
    /// ones, and agreed ones whose engine never submitted a result (an engine that does not
    /// settle must not make the node hold every order forever).
    fn prune(&mut self) {
        let keep = self.config.retained_batches as usize;
        let mut finished: HashMap<String, Vec<u64>> = HashMap::new();
        for (k, b) in &self.batches {
            if (b.phase.finished() && b.results_judged_or_no_result()) || b.phase == BatchPhase::Agreed {
                finished.entry(k.market.clone()).or_default().push(k.epoch);
            }
        }
        for (market, mut epochs) in finished {
            if epochs.len() > keep {
                epochs.sort_unstable();
                for e in &epochs[..epochs.len() - keep] {
                    self.batches.remove(&BatchKey { market: market.clone(), epoch: *e });
                }
                let floor = epochs[epochs.len() - keep - 1];
                let p = self.pruned.entry(market).or_insert(floor);
                *p = (*p).max(floor);
            }
        }
    }
}

impl Batch {
    fn results_judged_or_no_result(&self) -> bool {
        self.results_judged || self.result.is_none()
    }
}

/// What one [`Consensus::tick`] judges by.
struct TickContext<'a> {
    now: Instant,
    /// Live peers (not this node).
    live: &'a HashSet<PeerId>,
    /// Live members: the live peers and this node.
    members: usize,
    quorum: usize,
    seal_timeout: Duration,
    repair_window: Duration,
    result_timeout: Duration,
}

/// Seals `b` (again) with its current orders; returns the seal to broadcast.
fn reseal(key: &BatchKey, b: &mut Batch, now: Instant) -> Action {
    let digests = sorted_digests(b);
    let hash = batch_hash_sorted(&digests);
    if b.sealed_at.is_some() {
        b.revision += 1;
    }
    b.hash = Some(hash);
    b.sealed_at = Some(now);
    Action::PublishSeal(SealedBatch {
        batch: key.clone(),
        hash,
        order_count: digests.len() as u64,
        revision: b.revision,
    })
}

/// A sealed batch: re-seal if orders joined, ask each differing peer for its digest set
/// (once per pair of revisions), then agree (every live peer agrees, or after the seal
/// timeout a quorum with no repair in flight) or, past the repair window, dispute.
fn compare_seals(ctx: &TickContext<'_>, key: &BatchKey, b: &mut Batch, actions: &mut Vec<Action>) {
    if b.hash.is_none() {
        actions.push(reseal(key, b, ctx.now));
    }
    let ours = b.hash.expect("sealed above");
    let agreeing: Vec<PeerId> = b.peer_seals.iter().filter(|(_, s)| s.hash == ours).map(|(p, _)| *p).collect();
    let differing: Vec<(PeerId, u32)> =
        b.peer_seals.iter().filter(|(_, s)| s.hash != ours).map(|(p, s)| (*p, s.revision)).collect();
    for &(peer, rev) in &differing {
        if b.asked.insert((peer, rev, b.revision)) {
            tracing::warn!(batch = %key, %peer, revision = b.revision, peer_revision = rev, "batch hash mismatch; repairing");
            b.in_flight += 1;
            actions.push(Action::RequestDigests { peer, batch: key.clone() });
        }
    }
    let live_agree = agreeing.iter().filter(|p| ctx.live.contains(p)).count() + 1;
    let all_live_agree = differing.iter().all(|(p, _)| !ctx.live.contains(p)) && live_agree >= ctx.members;
    let waited = b.sealed_at.is_some_and(|t| ctx.now.duration_since(t) >= ctx.seal_timeout);
    if all_live_agree || (waited && live_agree >= ctx.quorum && b.in_flight == 0) {
        b.phase = BatchPhase::Agreed;
        for (peer, _) in &differing {
            actions.push(Action::Penalize { peer: *peer, offence: Offence::BatchMinority });
        }
        let agreement_us = b.first_sealed.map_or(0, |t| ctx.now.duration_since(t).as_micros() as u64);
        actions.push(Action::Agreed(BatchAgreed {
            batch_id: Some(key.to_proto()),
            batch_hash: ours.to_vec(),
            order_count: b.orders.len() as u64,
            revision: b.revision,
            agreement_us,
            repaired_orders: b.repaired,
        }));
    } else if b.first_sealed.is_some_and(|t| ctx.now.duration_since(t) >= ctx.repair_window) {
        b.phase = BatchPhase::Disputed;
        let reason = format!(
            "{live_agree} of {} live members agree on revision {} after the {:?} repair window; quorum {}",
            ctx.members, b.revision, ctx.repair_window, ctx.quorum
        );
        tracing::warn!(batch = %key, reason, "batch disputed: it will not be matched");
        actions.push(Action::Disputed(BatchDisputed { batch_id: Some(key.to_proto()), reason }));
    }
}

/// A batch whose engine submitted its result: halt on the first differing peer result;
/// settle when every live peer answered alike, or at the timeout with a quorum of results;
/// halt at the timeout without one.
fn compare_results(ctx: &TickContext<'_>, key: &BatchKey, b: &mut Batch, actions: &mut Vec<Action>) {
    let (ours, _) = b.result.expect("settling has a result");
    let differing = b.peer_results.values().filter(|r| r.0 != ours).count();
    let answered = b.peer_results.keys().filter(|p| ctx.live.contains(p)).count();
    let timed_out = b.result_at.is_some_and(|t| ctx.now.duration_since(t) >= ctx.result_timeout);
    let halt = |b: &mut Batch, reason: String, actions: &mut Vec<Action>| {
        b.phase = BatchPhase::Halted;
        actions.push(Action::ResultMismatch(ResultMismatch { batch_id: Some(key.to_proto()), halt: true, reason }));
    };
    if differing > 0 {
        let reason = format!("{differing} peer(s) computed a different result hash");
        tracing::error!(severity = "critical", batch = %key, reason, "RESULT MISMATCH: determinism violation; matching halted for this batch");
        halt(b, reason, actions);
    } else if answered >= ctx.live.len() || (timed_out && answered + 1 >= ctx.quorum) {
        b.phase = BatchPhase::Settled;
        actions.push(Action::ResultAgreed(ResultAgreed { batch_id: Some(key.to_proto()), result_hash: ours.to_vec() }));
    } else if timed_out {
        let reason = format!(
            "only {} of {} results within {:?}; quorum {}",
            answered + 1,
            ctx.members,
            ctx.result_timeout,
            ctx.quorum
        );
        tracing::error!(severity = "critical", batch = %key, reason, "results unconfirmed; matching halted for this batch");
        halt(b, reason, actions);
    }
}

/// Once every live peer answered (or the time is up), even after an early halt: the peers
/// outside a strict-majority result lose reputation. Judged once per batch.
fn judge_results(ctx: &TickContext<'_>, b: &mut Batch, actions: &mut Vec<Action>) {
    if !matches!(b.phase, BatchPhase::Halted | BatchPhase::Settled) || b.results_judged {
        return;
    }
    let Some((ours, _)) = b.result else { return };
    let answered = b.peer_results.keys().filter(|p| ctx.live.contains(p)).count();
    let timed_out = b.result_at.is_some_and(|t| ctx.now.duration_since(t) >= ctx.result_timeout);
    if answered < ctx.live.len() && !timed_out {
        return;
    }
    b.results_judged = true;
    let mut votes: HashMap<Digest, usize> = HashMap::from([(ours, 1)]);
    for (h, _) in b.peer_results.values() {
        *votes.entry(*h).or_default() += 1;
    }
    let (top, n) = votes.iter().max_by_key(|(h, n)| (**n, **h)).map(|(h, n)| (*h, *n)).expect("ours");
    // Only a strict majority can single out a minority.
    if n >= majority(b.peer_results.len() + 1) {
        for (peer, (h, _)) in &b.peer_results {
            if *h != top {
                actions.push(Action::Penalize { peer: *peer, offence: Offence::ResultMinority });
            }
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{OrderKind, Side};

    fn cfg() -> ConsensusConfig {
        ConsensusConfig {
            seal_timeout_ms: 100,
            repair_window_ms: 1000,
            result_timeout_ms: 100,
            retained_batches: 2,
            ..Default::default()
        }
    }

    fn order(origin: &PeerId, id: u64) -> (Order, Digest) {
        let o = Order {
            id,
            market: "M".into(),
            epoch: 1,
            side: Side::Buy as i32,
            kind: OrderKind::Limit as i32,
            price_ticks: 10,
            quantity_lots: 1,
            origin: origin.to_bytes().into(),
            ..Default::default()
        };
        let d = crate::wire::order_digest(&o);
        (o, d)
    }

    fn key() -> BatchKey {
        BatchKey { market: "M".into(), epoch: 1 }
    }

    fn seal_of(actions: &[Action]) -> SealedBatch {
        actions
            .iter()
            .find_map(|a| match a {
                Action::PublishSeal(s) => Some(s.clone()),
                _ => None,
            })
            .expect("a seal")
    }

    fn has(actions: &[Action], f: impl Fn(&Action) -> bool) -> bool {
        actions.iter().any(f)
    }

    /// Three nodes with the same orders agree as soon as both peers' seals are in.
    #[test]
    fn identical_batches_agree_immediately() {
        let (me, p1, p2) = (PeerId::random(), PeerId::random(), PeerId::random());
        let live = HashSet::from([p1, p2]);
        let mut nodes: Vec<Consensus> = (0..3).map(|_| Consensus::new(cfg())).collect();
        let t0 = Instant::now();
        let mut seals = Vec::new();
        for n in &mut nodes {
            for i in 0..5 {
                let (o, d) = order(&me, i);
                assert_eq!(n.add_order(&o, d), AddOutcome::Added);
            }
            seals.push(seal_of(&n.seal(&key(), t0)));
        }
        assert!(seals.windows(2).all(|w| w[0] == w[1]), "same orders, same hash");
        let c = &mut nodes[0];
        assert!(!has(&c.tick(t0, &live), |a| matches!(a, Action::Agreed(_))), "peers' seals not in yet");
        c.on_peer_seal(p1, &seals[1]);
        c.on_peer_seal(p2, &seals[2]);
        let acts = c.tick(t0, &live);
        let agreed = acts
            .iter()
            .find_map(|a| match a {
                Action::Agreed(x) => Some(x.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!(agreed.order_count, 5);
        assert_eq!(agreed.batch_hash, seals[0].hash.to_vec());
        assert_eq!(c.agreed_orders(&key()).unwrap().len(), 5);
    }

    /// However orders arrive, the seal hashes the digests in ascending order, and an agreed
    /// batch is served in that order with every field intact (the market, which a batch
    /// stores only in its key, included); the repair paths serve the same.
    #[test]
    fn batches_are_served_in_canonical_order_with_their_market() {
        let (origin, p1) = (PeerId::random(), PeerId::random());
        let t0 = Instant::now();
        let mut c = Consensus::new(cfg());
        let orders: Vec<(Order, Digest)> = (0..50).rev().map(|i| order(&origin, i)).collect();
        for (o, d) in &orders {
            assert_eq!(c.add_order(o, *d), AddOutcome::Added);
            assert_eq!(c.add_order(o, *d), AddOutcome::Duplicate);
        }
        let mut by_digest = orders.clone();
        by_digest.sort_by_key(|(_, d)| *d);
        let digests: Vec<Digest> = by_digest.iter().map(|(_, d)| *d).collect();
        let seal = seal_of(&c.seal(&key(), t0));
        assert_eq!(seal.hash, batch_hash_sorted(&digests));
        c.on_peer_seal(p1, &seal);
        c.tick(t0, &HashSet::from([p1]));
        let served = c.agreed_orders(&key()).unwrap();
        let want: Vec<Order> = by_digest.iter().map(|(o, _)| o.clone()).collect();
        assert_eq!(served, want);
        let set = c.digest_set(&key()).unwrap();
        let set_digests: Vec<Vec<u8>> = set.entries.iter().map(|e| e.digest.clone()).collect();
        assert_eq!(set_digests, digests.iter().map(|d| d.to_vec()).collect::<Vec<_>>());
        assert!(set.entries.iter().all(|e| e.origin == origin.to_bytes()));
        assert_eq!(c.orders_for(&key(), &digests[..2]).unwrap(), want[..2].to_vec());
    }

    /// A node missing an order learns the digest, fetches it from its origin, re-seals with
    /// revision 1 and agrees on the union.
    #[test]
    fn missing_order_is_repaired_from_its_origin() {
        let (origin, other) = (PeerId::random(), PeerId::random());
        let live = HashSet::from([origin, other]);
        let t0 = Instant::now();
        let (mut full, mut short) = (Consensus::new(cfg()), Consensus::new(cfg()));
        let orders: Vec<(Order, Digest)> = (0..4).map(|i| order(&origin, i)).collect();
        for (o, d) in &orders {
            full.add_order(o, *d);
        }
        for (o, d) in &orders[..3] {
            short.add_order(o, *d);
        }
        let full_seal = seal_of(&full.seal(&key(), t0));
        let short_seal = seal_of(&short.seal(&key(), t0));
        assert_ne!(full_seal.hash, short_seal.hash);
        short.on_peer_seal(origin, &full_seal);
        short.on_peer_seal(other, &full_seal);
        let acts = short.tick(t0, &live);
        assert!(has(&acts, |a| matches!(a, Action::RequestDigests { .. })));
        assert!(!has(&acts, |a| matches!(a, Action::Agreed(_))));
        // The digest set names the missing order and its origin.
        let set = full.digest_set(&key()).unwrap();
        let fetch = short.on_digest_set(&set);
        let missing = orders[3].1;
        match &fetch[..] {
            [Action::FetchOrders { peer, digests, .. }] => {
                assert_eq!(*peer, origin);
                assert_eq!(digests, &vec![missing]);
            }
            other => panic!("{other:?}"),
        }
        let served = full.orders_for(&key(), &[missing]).unwrap();
        let added = short.on_fetched(&key(), served.into_iter().map(|o| (crate::wire::order_digest(&o), o)).collect());
        assert_eq!(added.len(), 1);
        let acts = short.tick(t0, &live);
        let reseal = seal_of(&acts);
        assert_eq!(reseal.revision, 1);
        assert_eq!(reseal.hash, full_seal.hash);
        // Every live peer now agrees with the re-seal: agreed in the same tick.
        let agreed = acts
            .iter()
            .find_map(|a| match a {
                Action::Agreed(x) => Some(x.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!((agreed.order_count, agreed.revision, agreed.repaired_orders), (4, 1, 1));
    }

    #[test]
    fn no_agreement_within_the_repair_window_is_a_dispute() {
        let (p1, p2) = (PeerId::random(), PeerId::random());
        let live = HashSet::from([p1, p2]);
        let t0 = Instant::now();
        let mut c = Consensus::new(cfg());
        let (o, d) = order(&p1, 1);
        c.add_order(&o, d);
        c.seal(&key(), t0);
        let other = SealedBatch { batch: key(), hash: [7; 32], order_count: 9, revision: 0 };
        c.on_peer_seal(p1, &other);
        c.on_peer_seal(p2, &other);
        c.tick(t0, &live);
        for _ in 0..2 {
            c.on_repair_failure(&key());
        }
        let acts = c.tick(t0 + Duration::from_millis(1000), &live);
        assert!(has(&acts, |a| matches!(a, Action::Disputed(_))), "{acts:?}");
        assert_eq!(c.phase(&key()), Some(BatchPhase::Disputed));
        assert!(c.agreed_orders(&key()).is_err(), "a disputed batch is not served for matching");
    }

    #[test]
    fn quorum_agrees_after_the_timeout_and_penalises_the_minority() {
        let (p1, p2, liar) = (PeerId::random(), PeerId::random(), PeerId::random());
        let live = HashSet::from([p1, p2, liar]);
        let t0 = Instant::now();
        let mut c = Consensus::new(cfg());
        let ours = seal_of(&c.seal(&key(), t0));
        c.on_peer_seal(p1, &ours);
        c.on_peer_seal(p2, &ours);
        c.on_peer_seal(liar, &SealedBatch { hash: [1; 32], ..ours.clone() });
        let acts = c.tick(t0, &live);
        assert!(!has(&acts, |a| matches!(a, Action::Agreed(_))), "waits for repair and the timeout");
        c.on_digest_set(&DigestSet { batch_id: Some(key().to_proto()), entries: vec![] });
        let acts = c.tick(t0 + Duration::from_millis(100), &live);
        assert!(has(&acts, |a| matches!(a, Action::Agreed(_))), "{acts:?}");
        assert!(has(
            &acts,
            |a| matches!(a, Action::Penalize { peer, offence: Offence::BatchMinority } if *peer == liar)
        ));
    }

    #[test]
    fn late_orders_are_refused_after_agreement() {
        let p = PeerId::random();
        let t0 = Instant::now();
        let mut c = Consensus::new(cfg());
        c.seal(&key(), t0);
        c.tick(t0, &HashSet::new()); // alone: agreed at once
        assert_eq!(c.phase(&key()), Some(BatchPhase::Agreed));
        let (o, d) = order(&p, 1);
        assert_eq!(c.add_order(&o, d), AddOutcome::Late);
    }

    fn agreed_pair() -> (Consensus, PeerId, PeerId, HashSet<PeerId>, Instant) {
        let (p1, p2) = (PeerId::random(), PeerId::random());
        let live = HashSet::from([p1, p2]);
        let t0 = Instant::now();
        let mut c = Consensus::new(cfg());
        let s = seal_of(&c.seal(&key(), t0));
        c.on_peer_seal(p1, &s);
        c.on_peer_seal(p2, &s);
        c.tick(t0, &live);
        assert_eq!(c.phase(&key()), Some(BatchPhase::Agreed));
        (c, p1, p2, live, t0)
    }

    fn result(hash: u8) -> BatchResult {
        BatchResult { batch: key(), hash: [hash; 32], trades: 3 }
    }

    #[test]
    fn matching_results_settle() {
        let (mut c, p1, p2, live, t0) = agreed_pair();
        let acts = c.submit_result(&key(), [5; 32], 3, t0).unwrap();
        assert!(matches!(&acts[..], [Action::PublishResult(r)] if r.trades == 3));
        assert!(c.submit_result(&key(), [5; 32], 3, t0).is_err(), "one result per batch");
        c.on_peer_result(p1, &result(5));
        c.on_peer_result(p2, &result(5));
        let acts = c.tick(t0, &live);
        assert!(has(&acts, |a| matches!(a, Action::ResultAgreed(_))));
        assert!(!has(&acts, |a| matches!(a, Action::Penalize { .. })));
    }

    #[test]
    fn a_differing_result_halts_and_the_odd_one_out_is_penalised() {
        let (mut c, p1, bad, live, t0) = agreed_pair();
        c.submit_result(&key(), [5; 32], 3, t0).unwrap();
        c.on_peer_result(bad, &result(6));
        let acts = c.tick(t0, &live);
        assert!(has(&acts, |a| matches!(a, Action::ResultMismatch(m) if m.halt)), "halts on the first mismatch");
        assert!(!has(&acts, |a| matches!(a, Action::Penalize { .. })), "no majority known yet");
        c.on_peer_result(p1, &result(5));
        let acts = c.tick(t0, &live);
        assert!(
            has(&acts, |a| matches!(a, Action::Penalize { peer, offence: Offence::ResultMinority } if *peer == bad)),
            "{acts:?}"
        );
        assert_eq!(c.phase(&key()), Some(BatchPhase::Halted));
        assert!(c.tick(t0, &live).is_empty(), "judged once");
    }

    #[test]
    fn too_few_results_halt_after_the_timeout() {
        let (mut c, _, _, live, t0) = agreed_pair();
        c.submit_result(&key(), [5; 32], 3, t0).unwrap();
        let acts = c.tick(t0 + Duration::from_millis(100), &live);
        assert!(
            has(&acts, |a| matches!(a, Action::ResultMismatch(m) if m.halt && m.reason.contains("only 1 of 3"))),
            "{acts:?}"
        );
    }

    /// A lone node through epochs 0..5 of market M, each sealed and agreed, and settled
    /// with a result if `settle`.
    fn five_epochs(settle: bool) -> Consensus {
        let t0 = Instant::now();
        let mut c = Consensus::new(cfg());
        for e in 0..5 {
            let k = BatchKey { market: "M".into(), epoch: e };
            c.seal(&k, t0);
            c.tick(t0, &HashSet::new());
            if settle {
                c.submit_result(&k, [1; 32], 0, t0).unwrap();
                c.tick(t0, &HashSet::new());
            }
        }
        c
    }

    #[test]
    fn agreed_batches_without_results_are_pruned_too() {
        let mut c = five_epochs(false);
        assert_eq!(c.phase(&BatchKey { market: "M".into(), epoch: 0 }), None, "dropped");
        assert_eq!(c.phase(&BatchKey { market: "M".into(), epoch: 4 }), Some(BatchPhase::Agreed));
        let kept: Vec<u64> = c.batches.keys().map(|k| k.epoch).collect();
        assert_eq!(kept, vec![3, 4], "only the retained two remain");
        // A straggler's seal or order for a dropped epoch does not bring the batch back.
        let stale = SealedBatch {
            batch: BatchKey { market: "M".into(), epoch: 1 },
            hash: [1; 32],
            order_count: 1,
            revision: 0,
        };
        assert!(!c.on_peer_seal(PeerId::random(), &stale), "nothing recorded");
        let (o, d) = order(&PeerId::random(), 9);
        assert_eq!(c.add_order(&o, d), AddOutcome::Late, "epoch 1 is over");
        assert_eq!(c.phase(&BatchKey { market: "M".into(), epoch: 1 }), None);
    }

    /// Engine sealing: a peer that sealed epoch 0 first and already gossips orders of its
    /// epoch 1 must not move this node past epoch 0 (issue 11's skipped epoch).
    #[test]
    fn engine_sealing_catches_up_to_peer_seals_not_to_peer_orders() {
        use crate::epoch::EpochClock;
        use openmatch_gossip_crds::sidecar_config::SealingMode;
        let mut epochs = EpochClock::new(&ConsensusConfig { sealing: SealingMode::Engine, ..cfg() });
        let mut c = Consensus::new(cfg());
        let peer = PeerId::random();
        let (o, d) = order(&peer, 1); // epoch 1: the peer's next epoch
        assert_eq!(c.add_order(&o, d), AddOutcome::Added);
        assert_eq!(c.highest_peer_sealed("M"), None);
        let zero = BatchKey { market: "M".into(), epoch: 0 };
        assert!(c.on_peer_seal(peer, &SealedBatch { batch: zero, hash: [0; 32], order_count: 0, revision: 0 }));
        assert_eq!(epochs.advance("M", c.highest_peer_sealed("M")), 0, "this node seals epoch 0 too");
        assert_eq!(epochs.advance("M", c.highest_peer_sealed("M")), 1);
        // A restarted node (counter back at 0) catches up to what peers sealed.
        let mut restarted = EpochClock::new(&ConsensusConfig { sealing: SealingMode::Engine, ..cfg() });
        assert_eq!(restarted.advance("M", c.highest_peer_sealed("M")), 0);
        let mut behind = EpochClock::new(&ConsensusConfig { sealing: SealingMode::Engine, ..cfg() });
        assert_eq!(behind.advance("M", Some(7)), 7);
    }

    #[test]
    fn finished_batches_are_pruned_to_the_retention() {
        let c = five_epochs(true);
        assert_eq!(c.highest_peer_sealed("M"), Some(2), "pruned epochs (0..=2) count as decided");
        assert!(c.agreed_orders(&BatchKey { market: "M".into(), epoch: 0 }).is_err(), "pruned");
        assert!(c.agreed_orders(&BatchKey { market: "M".into(), epoch: 4 }).is_ok());
    }
}
