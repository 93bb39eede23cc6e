//! Batch and result consensus (DESIGN §4, docs/PROTOCOL.md §Consensus): the state
//! machine behind BatchAgreed, BatchDisputed, ResultAgreed and ResultMismatch.
//!
//! Pure logic: the node feeds it orders, peers' seals, digest sets and results, repair
//! replies and the time; it answers with [`Action`]s (publish, pull, fetch, notify the
//! engine, penalise a peer). Per batch `(market, epoch)`:
//!
//! 1. **Collect**: orders (local and peers') join the batch's set, keyed by order digest:
//!    the authoritative dedup of delivery ([`crate::dedup`] says how it and the seen-cache
//!    forget). With clock sealing every node opens a batch for every epoch of its markets,
//!    empty or not, so every member votes on every batch.
//! 2. **Seal = vote**: `batch_hash` = SHA-256 over the sorted digests ([`crate::batch_hash`]);
//!    `BatchSealed { hash, count, revision 0 }` is broadcast. A seal is final: orders that
//!    arrive later are late for this batch (their origin learns they were excluded). A node
//!    seals a batch again (revision + 1) only to adopt a hash a quorum certified.
//! 3. **Decide**: the quorum is a strict majority of the *known members* (the configured
//!    member count, or this node, its bootstrap peers and every peer ever heard;
//!    `consensus.quorum` overrides), never of whoever is reachable. Once a quorum of
//!    members' latest seals carry our hash, the batch is **agreed**. Because seals are final
//!    and a node re-seals only to a quorum-certified hash, two different hashes can never
//!    both reach a quorum: every node that decides, decides the same batch.
//! 4. **Converge**: if a quorum carries another hash, or a member reports it agreed one,
//!    this node **adopts** it: it gets that hash's digest set from a member holding it
//!    (checked to hash to the certified hash), fetches the orders it lacks from that member
//!    (any holder: the certified set and each order's origin signature prove them, see
//!    [`crate::bundle`]; every stored order keeps its bundle's proof), drops the orders
//!    the set does not contain, re-seals and agrees. A node that is missing seals (it was
//!    partitioned, or they were lost) **pulls** them: after `sealTimeoutMs` it asks each live
//!    member without a seal for its digest set, which carries the member's seal and result.
//!    A batch is **disputed** only when no hash can reach a quorum any more (the best hash's
//!    votes plus the members not heard from fall short).
//! 5. **Settle**: the engine submits its result; `TradeResult` is broadcast and compared.
//!    Any differing result halts the batch (`ResultMismatch { halt: true }`, logged at
//!    error level with `severity=critical`); all live peers agreeing → `ResultAgreed`;
//!    when every live peer answered (or the timeout passed) the peers outside the majority
//!    result are penalised.
//!
//! Trust: seals and "agreed" reports of members are taken as cast (crash faults, not
//! Byzantine ones); hostile input is bounded by validation, rate limits and reputation.

mod batch_orders;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use openmatch_gossip_crds::sidecar_config::ConsensusConfig;

use crate::batch_hash::batch_hash_sorted;
use crate::bundle::{BundleProof, ProofList};
use crate::proto::{
    BatchAgreed, BatchDecision, BatchDisputed, BatchSealed, DecidedBatch, DigestSet, HaltCause, Order, OriginDigest,
    ResultAgreed, ResultMismatch, TradeResult,
};
use crate::reputation::Offence;
use crate::wire::{BatchKey, BatchResult, Digest, SealedBatch};
use batch_orders::BatchOrders;

/// Where a batch stands (DESIGN §4: COLLECT → MATCH → SETTLE, with their outcomes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BatchPhase {
    /// Taking orders; not sealed yet.
    Collect,
    /// Sealed (voted); waiting for a quorum, pulling seals, adopting.
    Sealed,
    /// Agreed; waiting for the engine's result.
    Agreed,
    /// The engine submitted its result; comparing results.
    Settling,
    /// Every result matched.
    Settled,
    /// No hash can reach a quorum: the batch is not matched anywhere.
    Disputed,
    /// Results differed (or too few arrived): matching halted.
    Halted,
}

impl BatchPhase {
    /// Whether orders may still join the batch (only before this node's seal: seals are
    /// final).
    fn open(self) -> bool {
        self == BatchPhase::Collect
    }

    /// Whether the batch is finished (nothing more will happen to it).
    fn finished(self) -> bool {
        matches!(self, BatchPhase::Settled | BatchPhase::Disputed | BatchPhase::Halted)
    }

    /// Whether the batch was agreed (its content is final and served by `GetBatch`).
    fn agreed(self) -> bool {
        matches!(self, BatchPhase::Agreed | BatchPhase::Settling | BatchPhase::Settled | BatchPhase::Halted)
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
    /// Ask `peer` for its digest set (with its seal and result) of `batch`.
    RequestDigests {
        /// Peer to ask.
        peer: PeerId,
        /// Batch.
        batch: BatchKey,
    },
    /// Fetch `digests` of `batch` from `peer` (a member holding the certified set).
    FetchOrders {
        /// A holder of the orders.
        peer: PeerId,
        /// Batch.
        batch: BatchKey,
        /// Missing order digests.
        digests: Vec<Digest>,
        /// When `peer`'s digest set (naming these digests) reached this node: the holder
        /// vouched then that it holds them ([`Offence::UnservedRepair`]).
        vouched_at: Instant,
    },
    /// Tell the engine; the node then tells each of its own orders' fate.
    Agreed(BatchAgreed),
    /// Tell the engine; every own order of the batch is excluded.
    Disputed(BatchDisputed),
    /// Tell the engine.
    ResultAgreed(ResultAgreed),
    /// Tell the engine: results differed (a determinism violation) or were unconfirmed
    /// (`cause`).
    ResultMismatch(ResultMismatch),
    /// A strict majority of the members' results differs from this node's engine's: this
    /// node is the odd one out. It flags itself and penalises nobody.
    OutvotedResult {
        /// The batch.
        batch: BatchKey,
        /// How many results carried the majority hash, and how many were compared.
        majority: usize,
        /// Results compared, this node's included.
        of: usize,
    },
    /// Lower `peer`'s reputation.
    Penalize {
        /// The peer.
        peer: PeerId,
        /// Why: [`Offence::BatchMinority`], [`Offence::ResultMinority`] or
        /// [`Offence::BadRepair`] (a digest set that does not hash to its seal). The node
        /// adds [`Offence::UnservedRepair`] itself, from the answer to a `FetchOrders`.
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
    /// This node already sealed the batch (or it is older than the retained ones): too late.
    Late,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Seal {
    revision: u32,
    hash: Digest,
}

/// Adopting a hash that a quorum certified.
#[derive(Debug)]
struct Adoption {
    hash: Digest,
    /// The certified digest set, once a holder sent it.
    set: Option<HashSet<Digest>>,
    /// The member that sent the set (asked for the orders we lack), and when it arrived.
    holder: Option<(PeerId, Instant)>,
    /// When the digest set or the missing orders were last asked for.
    asked_at: Option<Instant>,
    /// Holders asked so far (the next request goes to another one).
    attempts: usize,
}

/// A member's digest set for a hash other than ours: what it vouched it holds, and when.
#[derive(Debug)]
struct Offer {
    holder: PeerId,
    digests: Vec<Digest>,
    received_at: Instant,
}

#[derive(Debug)]
struct Batch {
    /// The batch's orders by digest. Canonical order (ascending digest) is established
    /// when sealing and serving.
    orders: BatchOrders,
    phase: BatchPhase,
    revision: u32,
    /// Our seal's hash, from the first seal on.
    hash: Option<Digest>,
    first_sealed: Option<Instant>,
    peer_seals: HashMap<PeerId, Seal>,
    /// A hash some member reported it agreed (learnt from a digest set).
    reported_agreed: Option<Digest>,
    /// Digest sets offered by members whose hash is not ours: hash → the first offer.
    offers: HashMap<Digest, Offer>,
    adoption: Option<Adoption>,
    /// Members that abstained (restarted after the batch, PROTOCOL §11.10): they will never
    /// seal it, and any later seal of theirs for it is ignored (a seal their old run may
    /// have sent that reached this node before stays counted).
    abstained: HashSet<PeerId>,
    /// Members that reported they will never agree the batch (`DigestSet.no_quorum`).
    no_quorum_reports: HashSet<PeerId>,
    /// This node will never agree the batch, as of the last tick (served as `no_quorum`).
    no_quorum: bool,
    /// Last time seals were pulled from the silent live members.
    pulled_at: Option<Instant>,
    repaired: u64,
    result: Option<(Digest, u64)>,
    result_at: Option<Instant>,
    peer_results: HashMap<PeerId, (Digest, u64)>,
    results_judged: bool,
}

impl Batch {
    fn new() -> Self {
        Batch {
            orders: BatchOrders::default(),
            phase: BatchPhase::Collect,
            revision: 0,
            hash: None,
            first_sealed: None,
            peer_seals: HashMap::new(),
            reported_agreed: None,
            offers: HashMap::new(),
            adoption: None,
            abstained: HashSet::new(),
            no_quorum_reports: HashSet::new(),
            no_quorum: false,
            pulled_at: None,
            repaired: 0,
            result: None,
            result_at: None,
            peer_results: HashMap::new(),
            results_judged: false,
        }
    }

    fn results_judged_or_no_result(&self) -> bool {
        self.results_judged || self.result.is_none()
    }
}

/// All batches of this node.
pub(crate) struct Consensus {
    config: ConsensusConfig,
    batches: BTreeMap<BatchKey, Batch>,
    /// Per market, the highest epoch dropped by pruning: anything at or below it is over.
    pruned: HashMap<String, u64>,
    /// Clock sealing: per market, the first epoch this node opened. It never votes on an
    /// older batch (a restarted node does not know what it sealed before).
    floor: HashMap<String, u64>,
    /// Key of the batch the last order joined: consecutive orders of one batch (a pack)
    /// look it up without allocating a key each.
    cursor: Option<BatchKey>,
}

/// `b`'s digests in canonical (ascending) order.
fn sorted_digests(b: &Batch) -> Vec<Digest> {
    let mut digests: Vec<Digest> = b.orders.digests().copied().collect();
    digests.sort_unstable();
    digests
}

/// Strict majority of `members` (this node included).
pub(crate) fn majority(members: usize) -> usize {
    members / 2 + 1
}

/// Who votes: the known members and the live ones, as the node sees them at a tick.
#[derive(Debug, Clone)]
pub(crate) struct Membership<'a> {
    /// Known members, this node included (≥ 1).
    pub(crate) members: usize,
    /// Peers whose `PeerStatus` is within the liveness window (not this node).
    pub(crate) live: &'a HashSet<PeerId>,
}

impl Consensus {
    /// No batches yet.
    pub(crate) fn new(config: ConsensusConfig) -> Self {
        Consensus { config, batches: BTreeMap::new(), pruned: HashMap::new(), floor: HashMap::new(), cursor: None }
    }

    /// Seals that decide a batch among `members` known members: `consensus.quorum` if set,
    /// else a strict majority.
    pub(crate) fn quorum(&self, members: usize) -> usize {
        match self.config.quorum {
            0 => majority(members),
            q => q as usize,
        }
    }

    /// The phase of `batch`, if known.
    #[cfg(test)]
    pub(crate) fn phase(&self, batch: &BatchKey) -> Option<BatchPhase> {
        self.batches.get(batch).map(|b| b.phase)
    }

    /// Batches not yet sealed, for the clock to check.
    pub(crate) fn collecting(&self) -> Vec<BatchKey> {
        self.batches.iter().filter(|(_, b)| b.phase == BatchPhase::Collect).map(|(k, _)| k.clone()).collect()
    }

    /// Batches sealed but undecided for longer than `age` (health: waiting for a quorum).
    pub(crate) fn undecided_since(&self, now: Instant, age: Duration) -> usize {
        self.batches
            .values()
            .filter(|b| b.phase == BatchPhase::Sealed && b.first_sealed.is_some_and(|t| now.duration_since(t) >= age))
            .count()
    }

    /// Opens batch `key` (empty) if unknown and not pruned: clock sealing opens every
    /// epoch of every market, so that each member votes on each batch. The first epoch
    /// opened per market is the floor: older batches are refused like pruned ones.
    pub(crate) fn open(&mut self, key: &BatchKey) {
        if !self.floor.contains_key(&key.market) {
            self.floor.insert(key.market.clone(), key.epoch);
        }
        if !self.is_pruned(&key.market, key.epoch) && !self.batches.contains_key(key) {
            self.batches.insert(key.clone(), Batch::new());
        }
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

    /// Whether batch `(market, epoch)` was dropped by pruning (or is older than one that
    /// was), not counting the floor: what this node learnt of older batches (its own
    /// orders recovered after a restart) is kept until then.
    pub(crate) fn is_dropped(&self, market: &str, epoch: u64) -> bool {
        self.pruned.get(market).is_some_and(|p| epoch <= *p)
    }

    /// The first epoch of `market` this node votes on (clock sealing), once opened.
    pub(crate) fn floor(&self, market: &str) -> Option<u64> {
        self.floor.get(market).copied()
    }

    /// Whether batch `(market, epoch)` was dropped by pruning (or is older than one that
    /// was, or than the first epoch this node opened).
    pub(crate) fn is_pruned(&self, market: &str, epoch: u64) -> bool {
        self.pruned.get(market).is_some_and(|p| epoch <= *p) || self.floor.get(market).is_some_and(|f| epoch < *f)
    }

    /// Whether the agreed batch `batch` contains the order `digest`; `None` while the batch
    /// is not agreed (or unknown).
    pub(crate) fn committed(&self, batch: &BatchKey, digest: &Digest) -> Option<bool> {
        let b = self.batches.get(batch)?;
        b.phase.agreed().then(|| b.orders.contains(digest))
    }

    /// Adds a copy of `order` (`origin` and `epoch` set) to its batch, creating the batch
    /// if needed, with `proof`, its bundle's (`None` for an own order not yet published:
    /// [`Consensus::attach_proof`] adds it); [`AddOutcome::Late`] once this node sealed it.
    pub(crate) fn add_order(&mut self, order: &Order, digest: Digest, proof: Option<Arc<BundleProof>>) -> AddOutcome {
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
        if batch.orders.insert(digest, order, proof) { AddOutcome::Added } else { AddOutcome::Duplicate }
    }

    /// This node published `orders` of `market` as one bundle: each of them that a batch
    /// still holds without a proof gets `proof` (whose digests are the orders', index for
    /// index).
    pub(crate) fn attach_proof(&mut self, market: &str, orders: &[Order], proof: &Arc<BundleProof>) {
        let mut key = BatchKey { market: market.to_owned(), epoch: 0 };
        let mut batch = None;
        for (o, d) in orders.iter().zip(proof.digests()) {
            if batch.is_none() || key.epoch != o.epoch {
                key.epoch = o.epoch;
                batch = Some(self.batches.get_mut(&key));
            }
            if let Some(Some(b)) = batch.as_mut() {
                b.orders.attach_proof(d, proof);
            }
        }
    }

    /// Seals `batch` now (clock due or the engine asked), creating it empty if unknown:
    /// this node's vote, final.
    pub(crate) fn seal(&mut self, batch: &BatchKey, now: Instant) -> Vec<Action> {
        if self.is_pruned(&batch.market, batch.epoch) {
            return Vec::new();
        }
        let b = self.batches.entry(batch.clone()).or_insert_with(Batch::new);
        if b.phase != BatchPhase::Collect {
            return Vec::new();
        }
        b.phase = BatchPhase::Sealed;
        b.first_sealed = Some(now);
        let digests = sorted_digests(b);
        let hash = batch_hash_sorted(&digests);
        b.hash = Some(hash);
        vec![Action::PublishSeal(SealedBatch {
            batch: batch.clone(),
            hash,
            order_count: digests.len() as u64,
            revision: 0,
        })]
    }

    /// A peer's seal. Creates the batch (empty) if unknown, so a late joiner takes part in
    /// the open batches; `false` (and nothing recorded) for an epoch already pruned.
    pub(crate) fn on_peer_seal(&mut self, peer: PeerId, seal: &SealedBatch) -> bool {
        if self.is_pruned(&seal.batch.market, seal.batch.epoch) {
            return false;
        }
        let b = self.batches.entry(seal.batch.clone()).or_insert_with(Batch::new);
        if b.abstained.contains(&peer) {
            return true; // its vote on this batch is frozen
        }
        let newer = b.peer_seals.get(&peer).is_none_or(|s| seal.revision >= s.revision);
        if newer {
            b.peer_seals.insert(peer, Seal { revision: seal.revision, hash: seal.hash });
        }
        true
    }

    /// Our digest set of `batch` with our seal and result, for a member's pull or repair.
    pub(crate) fn digest_set(&self, batch: &BatchKey) -> Option<DigestSet> {
        let b = self.batches.get(batch)?;
        let digests = sorted_digests(b);
        let seal = b.hash.filter(|_| b.phase != BatchPhase::Collect).map(|hash| BatchSealed {
            batch_id: Some(batch.to_proto()),
            batch_hash: hash.to_vec(),
            order_count: digests.len() as u64,
            revision: b.revision,
        });
        Some(DigestSet {
            batch_id: Some(batch.to_proto()),
            entries: digests
                .iter()
                .map(|d| OriginDigest {
                    digest: d.to_vec(),
                    origin: b.orders.origin(d).expect("a listed digest is held").to_vec(),
                })
                .collect(),
            seal,
            result: b.result.map(|(hash, trades)| TradeResult {
                batch_id: Some(batch.to_proto()),
                result_hash: hash.to_vec(),
                trade_count: trades,
            }),
            agreed: b.phase.agreed(),
            abstain: false,
            no_quorum: b.phase == BatchPhase::Disputed || (b.phase == BatchPhase::Sealed && b.no_quorum),
        })
    }

    /// Clock sealing: the answer to a member's pull of `batch` when this node holds no vote
    /// on it — the batch is older than its floor and not held (a restarted node's old run
    /// may have voted on it, this run never will); `None` otherwise.
    pub(crate) fn abstention(&self, batch: &BatchKey) -> Option<DigestSet> {
        let below_floor = self.floor.get(&batch.market).is_some_and(|f| batch.epoch < *f);
        (below_floor && !self.batches.contains_key(batch)).then(|| DigestSet {
            batch_id: Some(batch.to_proto()),
            abstain: true,
            ..Default::default()
        })
    }

    /// `batch` as decided here, for a restarted member's recovery: its decision and, if
    /// agreed, its hash, orders (with their bundle proofs, each once) and our engine's
    /// result; if undecided, the orders in it so far whose origin is `requester` (the
    /// recovering node waits only for batches that hold some of its orders).
    pub(crate) fn decided(&self, batch: &BatchKey, requester: &[u8]) -> DecidedBatch {
        let mut answer = DecidedBatch { batch_id: Some(batch.to_proto()), ..Default::default() };
        let Some(b) = self.batches.get(batch) else {
            answer.decision = BatchDecision::Unknown as i32;
            return answer;
        };
        answer.decision = match b.phase {
            BatchPhase::Collect | BatchPhase::Sealed => BatchDecision::Undecided,
            BatchPhase::Disputed => BatchDecision::Disputed,
            _ => BatchDecision::Agreed,
        } as i32;
        if matches!(b.phase, BatchPhase::Collect | BatchPhase::Sealed) {
            answer.orders = b.orders.of_origin(requester, &batch.market).collect();
        }
        if b.phase.agreed() {
            answer.batch_hash = b.hash.map(|h| h.to_vec()).unwrap_or_default();
            let mut proofs = ProofList::default();
            answer.orders = b
                .orders
                .orders(&batch.market)
                .map(|(order, proof)| {
                    if let Some(p) = proof {
                        proofs.add(p);
                    }
                    order
                })
                .collect();
            answer.proofs = proofs.into_proofs();
            answer.result = b.result.map(|(hash, trades)| TradeResult {
                batch_id: Some(batch.to_proto()),
                result_hash: hash.to_vec(),
                trade_count: trades,
            });
        }
        answer
    }

    /// Recovery: a batch from before this node's floor that `peer` reports agreed as
    /// `hash` with `orders` (each with its digest and verified bundle proof, already
    /// checked to hash to `hash`) and, if it has one, `result`. It joins as agreed (served
    /// by `GetBatch`, settled by the engine's result); `None` if this node already knows it.
    pub(crate) fn recover_agreed(
        &mut self,
        key: &BatchKey,
        hash: Digest,
        orders: Vec<(Digest, Order, Arc<BundleProof>)>,
        peer_result: Option<(PeerId, Digest, u64)>,
    ) -> Option<BatchAgreed> {
        if self.batches.contains_key(key) || self.is_dropped(&key.market, key.epoch) {
            return None;
        }
        let mut b = Batch::new();
        b.orders = orders.into_iter().map(|(d, o, p)| (d, o, Some(p))).collect();
        b.phase = BatchPhase::Agreed;
        b.hash = Some(hash);
        b.repaired = b.orders.len() as u64;
        if let Some((peer, h, trades)) = peer_result {
            b.peer_results.insert(peer, (h, trades));
        }
        let agreed = BatchAgreed {
            batch_id: Some(key.to_proto()),
            batch_hash: hash.to_vec(),
            order_count: b.orders.len() as u64,
            revision: 0,
            agreement_us: 0,
            repaired_orders: b.repaired,
        };
        self.batches.insert(key.clone(), b);
        Some(agreed)
    }

    /// The orders of `batch` among `digests` that we hold (market set), each with its
    /// bundle proof if it has one, for a fetch request.
    pub(crate) fn orders_for(
        &self,
        batch: &BatchKey,
        digests: &[Digest],
    ) -> Option<Vec<(Order, Option<Arc<BundleProof>>)>> {
        let b = self.batches.get(batch)?;
        let held = digests.iter().filter_map(|d| Some((b.orders.order(d, &batch.market)?, b.orders.proof(d).cloned())));
        Some(held.collect())
    }

    /// The batch's orders in canonical order (ascending digest), once agreed.
    ///
    /// Errors: [`BatchError::Unknown`], [`BatchError::NotServed`] (not agreed, or disputed).
    pub(crate) fn agreed_orders(&self, batch: &BatchKey) -> Result<Vec<Order>, BatchError> {
        let b = self.batches.get(batch).ok_or_else(|| BatchError::Unknown(batch.clone()))?;
        if b.phase.agreed() {
            Ok(b.orders.canonical(&batch.market))
        } else {
            Err(BatchError::NotServed { batch: batch.clone(), phase: b.phase })
        }
    }

    /// `peer`'s digest set answered a pull or an adoption request: records its seal (a
    /// vote) and result, keeps the set if its hash is not ours (we may adopt it), and
    /// notes a reported agreement. A set that does not hash to its seal is refused and
    /// the peer penalised. `now`: when it arrived.
    pub(crate) fn on_digest_set(&mut self, peer: PeerId, set: &DigestSet, now: Instant) -> Vec<Action> {
        let Some(id) = &set.batch_id else { return Vec::new() };
        let key = BatchKey::from_proto(id);
        if self.is_pruned(&key.market, key.epoch) {
            return Vec::new();
        }
        let Some(b) = self.batches.get_mut(&key) else { return Vec::new() };
        if let Some(a) = b.adoption.as_mut()
            && a.set.is_none()
        {
            a.asked_at = None; // answered: the next tick may ask again if still needed
        }
        if set.abstain {
            if b.abstained.insert(peer) {
                tracing::info!(batch = %key, %peer, "member abstains: it restarted after this batch and will not vote on it");
            }
            return Vec::new();
        }
        if b.abstained.contains(&peer) {
            return Vec::new(); // its vote on this batch is frozen
        }
        if let Some(r) = &set.result
            && let Ok(hash) = Digest::try_from(r.result_hash.as_slice())
        {
            b.peer_results.insert(peer, (hash, r.trade_count));
        }
        let Some(seal) = &set.seal else { return Vec::new() };
        let Ok(hash) = Digest::try_from(seal.batch_hash.as_slice()) else {
            return vec![Action::Penalize { peer, offence: Offence::BadRepair }];
        };
        let mut digests = Vec::with_capacity(set.entries.len());
        for e in &set.entries {
            match Digest::try_from(e.digest.as_slice()) {
                Ok(d) => digests.push(d),
                Err(_) => return vec![Action::Penalize { peer, offence: Offence::BadRepair }],
            }
        }
        digests.sort_unstable();
        digests.dedup();
        if batch_hash_sorted(&digests) != hash {
            tracing::warn!(batch = %key, %peer, "digest set does not hash to the peer's seal");
            return vec![Action::Penalize { peer, offence: Offence::BadRepair }];
        }
        let newer = b.peer_seals.get(&peer).is_none_or(|s| seal.revision >= s.revision);
        if newer {
            b.peer_seals.insert(peer, Seal { revision: seal.revision, hash });
        }
        if set.agreed {
            b.reported_agreed = Some(hash);
        }
        if set.no_quorum {
            b.no_quorum_reports.insert(peer);
        } else {
            b.no_quorum_reports.remove(&peer);
        }
        if b.hash != Some(hash) {
            b.offers.entry(hash).or_insert(Offer { holder: peer, digests, received_at: now });
        }
        Vec::new()
    }

    /// A repair request failed or was refused: the adoption (if any) forgets that holder's
    /// offer and asks another holder.
    pub(crate) fn on_repair_failure(&mut self, batch: &BatchKey) {
        let Some(b) = self.batches.get_mut(batch) else { return };
        if let Some(a) = b.adoption.as_mut() {
            b.offers.remove(&a.hash);
            a.asked_at = None;
            a.set = None;
            a.holder = None;
        }
    }

    /// Orders fetched for an adoption (already checked: digest among those asked, batch as
    /// asked, origin signature verified). They join the batch with their proofs; the caller
    /// delivers them to the engine (before the batch's `BatchAgreed`, which the next tick
    /// sends once nothing is missing).
    pub(crate) fn on_fetched(
        &mut self,
        batch: &BatchKey,
        orders: Vec<(Digest, Order, Arc<BundleProof>)>,
    ) -> Vec<Order> {
        let Some(b) = self.batches.get_mut(batch) else { return Vec::new() };
        let Some(set) = b.adoption.as_mut().and_then(|a| {
            a.asked_at = None;
            a.set.as_ref()
        }) else {
            return Vec::new();
        };
        let mut added = Vec::new();
        for (d, o, proof) in orders {
            if set.contains(&d) && b.orders.insert(d, &o, Some(proof)) {
                added.push(o);
            }
        }
        b.repaired += added.len() as u64;
        added
    }

    /// The engine's result for an agreed batch.
    ///
    /// Idempotent: the same result again (an engine that restarted and replayed its events)
    /// is accepted and changes nothing.
    ///
    /// Errors: [`BatchError::NotAgreed`]: the batch is unknown, not agreed, or already has a
    /// different result.
    pub(crate) fn submit_result(
        &mut self,
        batch: &BatchKey,
        hash: Digest,
        trades: u64,
        now: Instant,
    ) -> Result<Vec<Action>, BatchError> {
        let b = match self.batches.get_mut(batch) {
            Some(b) if b.result == Some((hash, trades)) => return Ok(Vec::new()),
            Some(b) if b.phase == BatchPhase::Agreed => b,
            other => return Err(BatchError::NotAgreed { batch: batch.clone(), phase: other.map(|b| b.phase) }),
        };
        b.phase = BatchPhase::Settling;
        b.result = Some((hash, trades));
        b.result_at = Some(now);
        Ok(vec![Action::PublishResult(BatchResult { batch: batch.clone(), hash, trades })])
    }

    /// A peer's result (nothing recorded for a pruned epoch unless the batch is kept).
    pub(crate) fn on_peer_result(&mut self, peer: PeerId, r: &BatchResult) {
        if let Some(b) = self.batches.get_mut(&r.batch) {
            b.peer_results.insert(peer, (r.hash, r.trades)); // a recovered batch's too
            return;
        }
        if self.is_pruned(&r.batch.market, r.batch.epoch) {
            return;
        }
        let b = self.batches.entry(r.batch.clone()).or_insert_with(Batch::new);
        b.peer_results.insert(peer, (r.hash, r.trades));
    }

    /// Advances every batch: decides, pulls missing seals, adopts certified hashes,
    /// disputes, settles results, and drops old decided batches.
    pub(crate) fn tick(&mut self, now: Instant, membership: &Membership<'_>) -> Vec<Action> {
        let ctx = TickContext {
            now,
            live: membership.live,
            members: membership.members.max(1),
            quorum: self.quorum(membership.members.max(1)),
            seal_timeout: Duration::from_millis(self.config.seal_timeout_ms as u64),
            result_timeout: Duration::from_millis(self.config.result_timeout_ms as u64),
        };
        let mut actions = Vec::new();
        for (key, b) in self.batches.iter_mut() {
            match b.phase {
                BatchPhase::Sealed => decide(&ctx, key, b, &mut actions),
                BatchPhase::Settling => compare_results(&ctx, key, b, &mut actions),
                _ => {}
            }
            judge_results(&ctx, key, b, &mut actions);
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

/// What one [`Consensus::tick`] judges by.
struct TickContext<'a> {
    now: Instant,
    /// Live peers (not this node).
    live: &'a HashSet<PeerId>,
    /// Known members, this node included.
    members: usize,
    quorum: usize,
    seal_timeout: Duration,
    result_timeout: Duration,
}

/// A sealed batch: agree once a quorum carries our hash; adopt a hash a quorum carries (or
/// a member reports agreed); otherwise pull the seals of silent live members, and dispute
/// once no hash can reach a quorum.
fn decide(ctx: &TickContext<'_>, key: &BatchKey, b: &mut Batch, actions: &mut Vec<Action>) {
    let ours = b.hash.expect("a sealed batch has our hash");
    let mut votes: HashMap<Digest, usize> = HashMap::from([(ours, 1)]);
    for s in b.peer_seals.values() {
        *votes.entry(s.hash).or_default() += 1;
    }
    if votes[&ours] >= ctx.quorum || b.reported_agreed == Some(ours) {
        agree(ctx, key, b, ours, actions);
        return;
    }
    let certified = b.reported_agreed.or_else(|| votes.iter().find(|(_, n)| **n >= ctx.quorum).map(|(h, _)| *h));
    if let Some(hash) = certified {
        adopt(ctx, key, b, hash, actions);
        return;
    }
    // Members not heard from could still vote for the best hash, except those that
    // abstained: they will never vote (their old run's seal, if it reached us, is counted).
    let heard = 1 + b.peer_seals.len();
    let abstaining = b.abstained.iter().filter(|p| !b.peer_seals.contains_key(p)).count();
    let best = votes.values().copied().max().unwrap_or(1);
    let unheard = ctx.members.saturating_sub(heard);
    // Certain from our seals alone: every member's first seal is final.
    let hopeless = best + unheard < ctx.quorum;
    // With abstainers, another member may count a seal of an abstainer's old run that we
    // never got: the batch is disputed only once every member that sealed it (and did not
    // abstain) reported it cannot agree it either (PROTOCOL §11.10).
    let closed = !hopeless && abstaining > 0 && unheard <= abstaining && best < ctx.quorum;
    b.no_quorum = hopeless || closed;
    let waiting: Vec<PeerId> = if closed {
        let mut w: Vec<PeerId> = b
            .peer_seals
            .keys()
            .filter(|p| !b.abstained.contains(p) && !b.no_quorum_reports.contains(p))
            .copied()
            .collect();
        w.sort_unstable();
        w
    } else {
        Vec::new()
    };
    if hopeless || (closed && waiting.is_empty()) {
        b.phase = BatchPhase::Disputed;
        let reason = if hopeless {
            format!(
                "no hash can reach the quorum of {}: best {best} of {heard} seals heard among {} members",
                ctx.quorum, ctx.members
            )
        } else {
            format!(
                "no hash can reach the quorum of {}: best {best} of {heard} seals, {abstaining} member(s) abstained \
                 (restarted after the batch), and every other member reported it cannot agree it either",
                ctx.quorum
            )
        };
        tracing::warn!(batch = %key, reason, "batch disputed: it will not be matched");
        actions.push(Action::Disputed(BatchDisputed { batch_id: Some(key.to_proto()), reason }));
        return;
    }
    // Pull the seals of silent live members, and the reports of those we wait for.
    let waited = b.first_sealed.is_some_and(|t| ctx.now.duration_since(t) >= ctx.seal_timeout);
    if waited && b.pulled_at.is_none_or(|t| ctx.now.duration_since(t) >= ctx.seal_timeout) {
        b.pulled_at = Some(ctx.now);
        let mut pull: Vec<PeerId> = ctx
            .live
            .iter()
            .filter(|p| !b.peer_seals.contains_key(p) && !b.abstained.contains(p))
            .copied()
            .chain(waiting.into_iter().filter(|p| ctx.live.contains(p)))
            .collect();
        pull.sort_unstable();
        for peer in pull {
            actions.push(Action::RequestDigests { peer, batch: key.clone() });
        }
    }
}

/// Agrees `b` on our hash `ours`. A peer is penalised as the minority only for a re-seal
/// (revision ≥ 1) to another hash: an honest node re-seals only to adopt the certified
/// hash. A first seal that differs is no offence: orders late under load or across a
/// partition make honest minorities, which then converge.
fn agree(ctx: &TickContext<'_>, key: &BatchKey, b: &mut Batch, ours: Digest, actions: &mut Vec<Action>) {
    b.phase = BatchPhase::Agreed;
    b.offers.clear();
    b.adoption = None;
    for (peer, s) in &b.peer_seals {
        if s.hash != ours && s.revision > 0 {
            actions.push(Action::Penalize { peer: *peer, offence: Offence::BatchMinority });
        }
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
}

/// Converges `b` to the certified `hash`: get its digest set from a holder, fetch what we
/// lack from that holder, then drop what the set does not contain, re-seal and agree.
fn adopt(ctx: &TickContext<'_>, key: &BatchKey, b: &mut Batch, hash: Digest, actions: &mut Vec<Action>) {
    if b.adoption.as_ref().is_none_or(|a| a.hash != hash) {
        tracing::warn!(batch = %key, "a quorum certified another batch hash; adopting it");
        b.adoption = Some(Adoption { hash, set: None, holder: None, asked_at: None, attempts: 0 });
    }
    let a = b.adoption.as_mut().expect("set above");
    if a.set.is_none()
        && let Some(offer) = b.offers.get(&hash)
    {
        a.set = Some(offer.digests.iter().copied().collect());
        a.holder = Some((offer.holder, offer.received_at));
        a.asked_at = None;
    }
    if a.asked_at.is_some_and(|t| ctx.now.duration_since(t) < ctx.seal_timeout) {
        return; // a request is out
    }
    let Some(set) = &a.set else {
        // Ask the next member that sealed the hash for its digest set.
        let mut holders: Vec<PeerId> = b.peer_seals.iter().filter(|(_, s)| s.hash == hash).map(|(p, _)| *p).collect();
        holders.sort_unstable_by_key(|p| (!ctx.live.contains(p), *p));
        if let Some(peer) = holders.get(a.attempts % holders.len().max(1)).copied() {
            a.attempts += 1;
            a.asked_at = Some(ctx.now);
            actions.push(Action::RequestDigests { peer, batch: key.clone() });
        }
        return;
    };
    let missing: Vec<Digest> = set.iter().filter(|d| !b.orders.contains(d)).copied().collect();
    if !missing.is_empty() {
        let (holder, vouched_at) = a.holder.expect("a set comes with its holder");
        a.asked_at = Some(ctx.now);
        actions.push(Action::FetchOrders { peer: holder, batch: key.clone(), digests: missing, vouched_at });
        return;
    }
    let set = a.set.take().expect("checked above");
    b.orders.retain(|d| set.contains(d));
    debug_assert_eq!(batch_hash_sorted(&sorted_digests(b)), hash);
    b.hash = Some(hash);
    b.revision += 1;
    actions.push(Action::PublishSeal(SealedBatch {
        batch: key.clone(),
        hash,
        order_count: b.orders.len() as u64,
        revision: b.revision,
    }));
    agree(ctx, key, b, hash, actions);
}

/// A batch whose engine submitted its result: halt on the first differing peer result;
/// settle when every live peer answered alike, or at the timeout with a quorum of results;
/// halt at the timeout without one.
fn compare_results(ctx: &TickContext<'_>, key: &BatchKey, b: &mut Batch, actions: &mut Vec<Action>) {
    let (ours, _) = b.result.expect("settling has a result");
    let differing = b.peer_results.values().filter(|r| r.0 != ours).count();
    let have = b.peer_results.len() + 1;
    let all_live_answered = ctx.live.iter().all(|p| b.peer_results.contains_key(p));
    let timed_out = b.result_at.is_some_and(|t| ctx.now.duration_since(t) >= ctx.result_timeout);
    let halt = |b: &mut Batch, cause: HaltCause, reason: String, actions: &mut Vec<Action>| {
        b.phase = BatchPhase::Halted;
        actions.push(Action::ResultMismatch(ResultMismatch {
            batch_id: Some(key.to_proto()),
            halt: true,
            reason,
            cause: cause as i32,
        }));
    };
    if differing > 0 {
        let reason = format!("{differing} peer(s) computed a different result hash");
        tracing::error!(severity = "critical", batch = %key, reason, "RESULT MISMATCH: determinism violation; matching halted for this batch");
        halt(b, HaltCause::ResultMismatch, reason, actions);
    } else if have >= ctx.quorum && (all_live_answered || timed_out) {
        b.phase = BatchPhase::Settled;
        actions.push(Action::ResultAgreed(ResultAgreed { batch_id: Some(key.to_proto()), result_hash: ours.to_vec() }));
    } else if timed_out {
        let reason = format!(
            "only {} of {} members' results within {:?}; quorum {}",
            have, ctx.members, ctx.result_timeout, ctx.quorum
        );
        tracing::error!(batch = %key, reason, "results unconfirmed; matching halted for this batch");
        halt(b, HaltCause::ResultsUnconfirmed, reason, actions);
    }
}

/// Once every live peer answered (or the time is up), even after an early halt: the peers
/// outside a strict-majority result lose reputation, unless this node is outside it
/// itself: it then flags itself ([`Action::OutvotedResult`]) and penalises nobody (a node
/// whose own engine is wrong must not punish the honest majority). Judged once per batch.
fn judge_results(ctx: &TickContext<'_>, key: &BatchKey, b: &mut Batch, actions: &mut Vec<Action>) {
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
    let of = b.peer_results.len() + 1;
    if n < majority(of) {
        return;
    }
    if top != ours {
        tracing::error!(batch = %key, majority = n, of, "this node's result differs from the majority's: its engine disagrees with the quorum");
        actions.push(Action::OutvotedResult { batch: key.clone(), majority: n, of });
    } else {
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

    /// A tick where the known members are this node and `live`.
    fn tick(c: &mut Consensus, now: Instant, live: &HashSet<PeerId>) -> Vec<Action> {
        c.tick(now, &Membership { members: live.len() + 1, live })
    }

    fn agreed_of(actions: &[Action]) -> BatchAgreed {
        actions
            .iter()
            .find_map(|a| match a {
                Action::Agreed(x) => Some(x.clone()),
                _ => None,
            })
            .expect("agreed")
    }

    /// Three nodes with the same orders: each agrees as soon as one peer's seal matches its
    /// own (2 of 3 members, a quorum).
    #[test]
    fn identical_batches_agree_once_a_quorum_sealed_them() {
        let (me, p1, p2) = (PeerId::random(), PeerId::random(), PeerId::random());
        let live = HashSet::from([p1, p2]);
        let mut nodes: Vec<Consensus> = (0..3).map(|_| Consensus::new(cfg())).collect();
        let t0 = Instant::now();
        let mut seals = Vec::new();
        for n in &mut nodes {
            for i in 0..5 {
                let (o, d) = order(&me, i);
                assert_eq!(n.add_order(&o, d, None), AddOutcome::Added);
            }
            seals.push(seal_of(&n.seal(&key(), t0)));
        }
        assert!(seals.windows(2).all(|w| w[0] == w[1]), "same orders, same hash");
        let c = &mut nodes[0];
        assert!(!has(&tick(c, t0, &live), |a| matches!(a, Action::Agreed(_))), "peers' seals not in yet");
        c.on_peer_seal(p1, &seals[1]);
        let agreed = agreed_of(&tick(c, t0, &live));
        assert_eq!(agreed.order_count, 5);
        assert_eq!(agreed.batch_hash, seals[0].hash.to_vec());
        assert_eq!(c.agreed_orders(&key()).unwrap().len(), 5);
        let (o, d) = order(&me, 9);
        assert_eq!(c.add_order(&o, d, None), AddOutcome::Late, "a sealed batch takes no more orders");
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
            assert_eq!(c.add_order(o, *d, None), AddOutcome::Added);
            assert_eq!(c.add_order(o, *d, None), AddOutcome::Duplicate);
        }
        let mut by_digest = orders.clone();
        by_digest.sort_by_key(|(_, d)| *d);
        let digests: Vec<Digest> = by_digest.iter().map(|(_, d)| *d).collect();
        let seal = seal_of(&c.seal(&key(), t0));
        assert_eq!(seal.hash, batch_hash_sorted(&digests));
        c.on_peer_seal(p1, &seal);
        tick(&mut c, t0, &HashSet::from([p1]));
        let served = c.agreed_orders(&key()).unwrap();
        let want: Vec<Order> = by_digest.iter().map(|(o, _)| o.clone()).collect();
        assert_eq!(served, want);
        let set = c.digest_set(&key()).unwrap();
        let set_digests: Vec<Vec<u8>> = set.entries.iter().map(|e| e.digest.clone()).collect();
        assert_eq!(set_digests, digests.iter().map(|d| d.to_vec()).collect::<Vec<_>>());
        assert!(set.entries.iter().all(|e| e.origin == origin.to_bytes()));
        let fetched: Vec<Order> = c.orders_for(&key(), &digests[..2]).unwrap().into_iter().map(|(o, _)| o).collect();
        assert_eq!(fetched, want[..2].to_vec());
    }

    /// Every stored order keeps its bundle's proof, shared per bundle: a peer's from
    /// gossip at once, an own order's once its pack is published. Repair serves each order
    /// with its proof, and a decided batch lists each distinct proof once.
    #[test]
    fn orders_keep_their_bundle_proofs_and_serve_them() {
        let (me, peer) = (PeerId::random(), PeerId::random());
        let t0 = Instant::now();
        let mut c = Consensus::new(cfg());
        let theirs: Vec<(Order, Digest)> = (0..3).map(|i| order(&peer, i)).collect();
        let their_proof = Arc::new(BundleProof::new([1; 64], theirs.iter().map(|(_, d)| *d).collect()));
        for (o, d) in &theirs {
            c.add_order(o, *d, Some(their_proof.clone()));
        }
        let mine: Vec<(Order, Digest)> = (0..2).map(|i| order(&me, i)).collect();
        for (o, d) in &mine {
            c.add_order(o, *d, None);
        }
        let all: Vec<Digest> = theirs.iter().chain(&mine).map(|(_, d)| *d).collect();
        let proofs = |c: &Consensus| -> Vec<Option<Arc<BundleProof>>> {
            c.orders_for(&key(), &all).unwrap().into_iter().map(|(_, p)| p).collect()
        };
        assert_eq!(
            proofs(&c),
            vec![Some(their_proof.clone()), Some(their_proof.clone()), Some(their_proof.clone()), None, None]
        );
        // Our pack goes out: its orders get its proof (a pack's epochs may differ; an order
        // of a batch not held is skipped).
        let my_proof = Arc::new(BundleProof::new([2; 64], mine.iter().map(|(_, d)| *d).collect()));
        let pack: Vec<Order> = mine.iter().map(|(o, _)| o.clone()).collect();
        c.attach_proof("M", &pack, &my_proof);
        let got = proofs(&c);
        assert!(got[..3].iter().all(|p| Arc::ptr_eq(p.as_ref().unwrap(), &their_proof)), "one allocation per bundle");
        assert!(got[3..].iter().all(|p| Arc::ptr_eq(p.as_ref().unwrap(), &my_proof)));
        // Attaching again (a peer's copy of the same bundle, say) keeps the first proof.
        c.attach_proof("M", &pack, &Arc::new(BundleProof::new([3; 64], mine.iter().map(|(_, d)| *d).collect())));
        assert!(proofs(&c)[3..].iter().all(|p| Arc::ptr_eq(p.as_ref().unwrap(), &my_proof)));
        c.seal(&key(), t0);
        tick(&mut c, t0, &HashSet::new());
        let decided = c.decided(&key(), &[]);
        assert_eq!(decided.orders.len(), 5);
        let mut listed = decided.proofs.clone();
        listed.sort_by(|a, b| a.signature.cmp(&b.signature));
        assert_eq!(listed, vec![their_proof.to_proto(), my_proof.to_proto()], "each bundle once");
    }

    /// A node whose seal lost to a quorum adopts the quorum's batch: it gets the certified
    /// digest set from a member holding it (not the orders' origin), fetches the order it
    /// lacks from that member, drops the one the quorum does not have, re-seals with
    /// revision 1 and agrees.
    #[test]
    fn the_minority_adopts_the_quorum_batch_from_any_holder() {
        let (origin, holder) = (PeerId::random(), PeerId::random());
        let live = HashSet::from([origin, holder]);
        let t0 = Instant::now();
        let (mut full, mut short) = (Consensus::new(cfg()), Consensus::new(cfg()));
        let orders: Vec<(Order, Digest)> = (0..4).map(|i| order(&origin, i)).collect();
        for (o, d) in &orders {
            full.add_order(o, *d, None);
        }
        for (o, d) in &orders[..3] {
            short.add_order(o, *d, None);
        }
        let (extra, extra_digest) = order(&PeerId::random(), 99);
        short.add_order(&extra, extra_digest, None);
        let full_seal = seal_of(&full.seal(&key(), t0));
        let short_seal = seal_of(&short.seal(&key(), t0));
        assert_ne!(full_seal.hash, short_seal.hash);
        short.on_peer_seal(holder, &full_seal);
        short.on_peer_seal(origin, &full_seal);
        let acts = tick(&mut short, t0, &live);
        let asked = acts.iter().find_map(|a| match a {
            Action::RequestDigests { peer, .. } => Some(*peer),
            _ => None,
        });
        assert!(asked.is_some_and(|p| live.contains(&p)), "{acts:?}");
        assert!(!has(&acts, |a| matches!(a, Action::Agreed(_))));
        // The holder's digest set carries its seal; the missing order is fetched from it.
        let mut set = full.digest_set(&key()).unwrap();
        assert_eq!(set.seal.as_ref().map(|s| s.batch_hash.clone()), Some(full_seal.hash.to_vec()));
        assert!(short.on_digest_set(holder, &set, t0).is_empty());
        let missing = orders[3].1;
        match &tick(&mut short, t0, &live)[..] {
            [Action::FetchOrders { peer, digests, vouched_at, .. }] => {
                assert_eq!(*peer, holder, "any holder, not only the origin");
                assert_eq!(*vouched_at, t0, "when the holder's set arrived");
                assert_eq!(digests, &vec![missing]);
            }
            other => panic!("{other:?}"),
        }
        let served = full.orders_for(&key(), &[missing]).unwrap();
        let proof = Arc::new(BundleProof::new([0; 64], vec![missing].into()));
        let fetched = served.into_iter().map(|(o, _)| (crate::wire::order_digest(&o), o, proof.clone())).collect();
        let added = short.on_fetched(&key(), fetched);
        assert_eq!(added.len(), 1);
        let acts = tick(&mut short, t0, &live);
        let reseal = seal_of(&acts);
        assert_eq!((reseal.revision, reseal.hash), (1, full_seal.hash));
        let agreed = agreed_of(&acts);
        assert_eq!((agreed.order_count, agreed.revision, agreed.repaired_orders), (4, 1, 1));
        assert_eq!(short.committed(&key(), &missing), Some(true));
        assert_eq!(short.committed(&key(), &extra_digest), Some(false), "dropped: not in the agreed batch");
        // A digest set that does not hash to its seal is refused and its sender penalised.
        set.entries.pop();
        let mut other = Consensus::new(cfg());
        other.seal(&key(), t0);
        let acts = other.on_digest_set(holder, &set, t0);
        assert!(matches!(&acts[..], [Action::Penalize { offence: Offence::BadRepair, .. }]), "{acts:?}");
    }

    /// A node cut off from every other member decides nothing and disputes nothing; once
    /// members are live again it pulls their seals, and a member's report that it agreed
    /// makes it adopt that batch.
    #[test]
    fn a_cut_off_node_waits_then_pulls_seals_and_adopts() {
        let (p1, p2) = (PeerId::random(), PeerId::random());
        let t0 = Instant::now();
        let mut c = Consensus::new(cfg());
        let (o, d) = order(&p1, 1);
        c.add_order(&o, d, None);
        c.seal(&key(), t0);
        let nobody = HashSet::new();
        let members = |live| Membership { members: 3, live };
        for ms in [0, 100, 5_000, 60_000] {
            let acts = c.tick(t0 + Duration::from_millis(ms), &members(&nobody));
            assert!(acts.is_empty(), "no quorum, no decision, nobody to pull from: {acts:?}");
        }
        assert_eq!(c.undecided_since(t0 + Duration::from_secs(60), Duration::from_secs(5)), 1);
        let live = HashSet::from([p1, p2]);
        let t1 = t0 + Duration::from_secs(61);
        let acts = c.tick(t1, &members(&live));
        let pulled: HashSet<PeerId> = acts
            .iter()
            .filter_map(|a| match a {
                Action::RequestDigests { peer, .. } => Some(*peer),
                _ => None,
            })
            .collect();
        assert_eq!(pulled, live, "every silent live member is asked");
        assert!(c.tick(t1, &members(&live)).is_empty(), "pulled once per seal timeout");
        // p1 answers: it agreed an empty batch (the quorum never saw our order).
        let mut empty = Consensus::new(cfg());
        empty.seal(&key(), t0);
        tick(&mut empty, t0, &HashSet::new());
        let set = empty.digest_set(&key()).unwrap();
        assert!(set.agreed);
        c.on_digest_set(p1, &set, t1);
        let acts = c.tick(t1, &members(&live));
        assert_eq!(agreed_of(&acts).order_count, 0);
        assert_eq!(c.committed(&key(), &d), Some(false), "our order is excluded");
    }

    /// A batch is disputed only when no hash can reach a quorum any more.
    #[test]
    fn a_batch_is_disputed_when_no_hash_can_reach_the_quorum() {
        let (p1, p2) = (PeerId::random(), PeerId::random());
        let live = HashSet::from([p1, p2]);
        let t0 = Instant::now();
        let mut c = Consensus::new(cfg());
        let (o, d) = order(&p1, 1);
        c.add_order(&o, d, None);
        c.seal(&key(), t0);
        c.on_peer_seal(p1, &SealedBatch { batch: key(), hash: [7; 32], order_count: 9, revision: 0 });
        let acts = tick(&mut c, t0 + Duration::from_secs(60), &live);
        assert!(!has(&acts, |a| matches!(a, Action::Disputed(_))), "p2 may still side with either: {acts:?}");
        c.on_peer_seal(p2, &SealedBatch { batch: key(), hash: [8; 32], order_count: 9, revision: 0 });
        let acts = tick(&mut c, t0 + Duration::from_secs(60), &live);
        assert!(has(&acts, |a| matches!(a, Action::Disputed(_))), "{acts:?}");
        assert_eq!(c.phase(&key()), Some(BatchPhase::Disputed));
        assert!(c.agreed_orders(&key()).is_err(), "a disputed batch is not served for matching");
        assert_eq!(c.committed(&key(), &d), None);
    }

    fn disputed(actions: &[Action]) -> bool {
        has(actions, |a| matches!(a, Action::Disputed(_)))
    }

    fn pulled(actions: &[Action]) -> Vec<PeerId> {
        let mut peers: Vec<PeerId> = actions
            .iter()
            .filter_map(|a| match a {
                Action::RequestDigests { peer, .. } => Some(*peer),
                _ => None,
            })
            .collect();
        peers.sort_unstable();
        peers
    }

    /// Fault scenario (c): a member killed mid-epoch restarts above the batch. The two
    /// survivors sealed different parts of its in-flight orders, so no hash can reach 2 of 3
    /// without it. It abstains (it holds no vote below its floor); its later seals are
    /// ignored; each survivor disputes once the other reported it cannot agree either.
    #[test]
    fn a_tie_left_by_a_restarted_member_is_disputed_once_every_voter_reports_no_quorum() {
        let (pa, pb, pr) = (PeerId::random(), PeerId::random(), PeerId::random());
        let t0 = Instant::now();
        let mut restarted = Consensus::new(cfg());
        let floor = BatchKey { market: "M".into(), epoch: 2 };
        restarted.open(&floor);
        let abstain = restarted.abstention(&key()).expect("batch 1 is below its floor");
        assert!(abstain.abstain && abstain.seal.is_none());
        assert!(restarted.abstention(&floor).is_none(), "it votes from its floor on");

        let (mut a, mut b) = (Consensus::new(cfg()), Consensus::new(cfg()));
        let (o1, d1) = order(&pr, 1);
        let (o2, d2) = order(&pr, 2);
        a.add_order(&o1, d1, None);
        b.add_order(&o2, d2, None);
        let (sa, sb) = (seal_of(&a.seal(&key(), t0)), seal_of(&b.seal(&key(), t0)));
        a.on_peer_seal(pb, &sb);
        b.on_peer_seal(pa, &sa);
        let (live_a, live_b) = (HashSet::from([pb, pr]), HashSet::from([pa, pr]));
        let t1 = t0 + Duration::from_millis(200);
        let acts = tick(&mut a, t1, &live_a);
        assert!(!disputed(&acts), "the restarted member could still vote: {acts:?}");
        assert_eq!(pulled(&acts), vec![pr], "the silent member is pulled");

        a.on_digest_set(pr, &abstain, t1);
        b.on_digest_set(pr, &abstain, t1);
        a.on_peer_seal(pr, &sa); // an old run's seal after the abstention: ignored
        let t2 = t1 + Duration::from_millis(200);
        let acts = tick(&mut a, t2, &live_a);
        assert!(!has(&acts, |x| matches!(x, Action::Agreed(_))), "a frozen vote does not count: {acts:?}");
        assert!(!disputed(&acts), "b may count a seal of the old run that a never got: {acts:?}");
        assert_eq!(pulled(&acts), vec![pb], "a asks b for its report, not the abstainer again");
        assert!(a.digest_set(&key()).unwrap().no_quorum);
        assert!(!disputed(&tick(&mut b, t2, &live_b)));

        a.on_digest_set(pb, &b.digest_set(&key()).unwrap(), t2);
        assert!(disputed(&tick(&mut a, t2, &live_a)));
        assert_eq!(a.phase(&key()), Some(BatchPhase::Disputed));
        b.on_digest_set(pa, &a.digest_set(&key()).unwrap(), t2);
        assert!(disputed(&tick(&mut b, t2, &live_b)));
        assert_eq!(b.committed(&key(), &d2), None, "nothing of a disputed batch is committed");
    }

    /// With an abstainer, a member not heard from may still count an old seal of the
    /// abstainer's and agree: no report is asked for, and nothing disputed, until every
    /// member sealed or abstained.
    #[test]
    fn an_abstainer_does_not_close_a_batch_while_a_member_is_unheard() {
        let (pb, pr, pw) = (PeerId::random(), PeerId::random(), PeerId::random());
        let t0 = Instant::now();
        let mut a = Consensus::new(cfg());
        a.seal(&key(), t0);
        a.on_peer_seal(pb, &SealedBatch { batch: key(), hash: [7; 32], order_count: 1, revision: 0 });
        a.on_digest_set(pr, &DigestSet { batch_id: Some(key().to_proto()), abstain: true, ..Default::default() }, t0);
        let live = HashSet::from([pb, pr, pw]);
        let members = Membership { members: 4, live: &live }; // quorum 3
        let acts = a.tick(t0 + Duration::from_secs(60), &members);
        assert!(!disputed(&acts), "pw may still agree with an old seal of pr's: {acts:?}");
        assert!(!a.digest_set(&key()).unwrap().no_quorum);
        a.on_peer_seal(pw, &SealedBatch { batch: key(), hash: [7; 32], order_count: 1, revision: 0 });
        let acts = a.tick(t0 + Duration::from_secs(61), &members);
        assert!(!disputed(&acts), "closed now (2 of 3 at best), but pb and pw have not reported: {acts:?}");
        assert_eq!(pulled(&acts), vec![pb.min(pw), pb.max(pw)], "both are asked for their reports");
        assert!(a.digest_set(&key()).unwrap().no_quorum);
    }

    #[test]
    fn a_quorum_agrees_at_once_and_penalises_only_a_dishonest_minority() {
        let (p1, p2, liar) = (PeerId::random(), PeerId::random(), PeerId::random());
        let live = HashSet::from([p1, p2, liar]);
        let t0 = Instant::now();
        let mut c = Consensus::new(cfg());
        let ours = seal_of(&c.seal(&key(), t0));
        let late = PeerId::random();
        c.on_peer_seal(p1, &ours);
        c.on_peer_seal(liar, &SealedBatch { hash: [1; 32], revision: 1, ..ours.clone() });
        c.on_peer_seal(late, &SealedBatch { hash: [2; 32], ..ours.clone() });
        let live: HashSet<PeerId> = live.into_iter().chain([late]).collect();
        assert!(!has(&tick(&mut c, t0, &live), |a| matches!(a, Action::Agreed(_))), "2 of 5: no quorum yet");
        c.on_peer_seal(p2, &ours);
        let acts = tick(&mut c, t0, &live);
        assert!(has(&acts, |a| matches!(a, Action::Agreed(_))), "{acts:?}");
        let penalised: Vec<PeerId> = acts
            .iter()
            .filter_map(|a| match a {
                Action::Penalize { peer, offence: Offence::BatchMinority } => Some(*peer),
                _ => None,
            })
            .collect();
        assert_eq!(penalised, vec![liar], "a re-seal to another hash is an offence, a late first seal is not");
    }

    fn agreed_pair() -> (Consensus, PeerId, PeerId, HashSet<PeerId>, Instant) {
        let (p1, p2) = (PeerId::random(), PeerId::random());
        let live = HashSet::from([p1, p2]);
        let t0 = Instant::now();
        let mut c = Consensus::new(cfg());
        let s = seal_of(&c.seal(&key(), t0));
        c.on_peer_seal(p1, &s);
        c.on_peer_seal(p2, &s);
        tick(&mut c, t0, &live);
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
        let again = c.submit_result(&key(), [5; 32], 3, t0).expect("the same result again is accepted");
        assert!(again.is_empty(), "and changes nothing: {again:?}");
        assert!(c.submit_result(&key(), [6; 32], 3, t0).is_err(), "one result per batch");
        c.on_peer_result(p1, &result(5));
        c.on_peer_result(p2, &result(5));
        let acts = tick(&mut c, t0, &live);
        assert!(has(&acts, |a| matches!(a, Action::ResultAgreed(_))));
        assert!(!has(&acts, |a| matches!(a, Action::Penalize { .. })));
    }

    #[test]
    fn a_differing_result_halts_and_the_odd_one_out_is_penalised() {
        let (mut c, p1, bad, live, t0) = agreed_pair();
        c.submit_result(&key(), [5; 32], 3, t0).unwrap();
        c.on_peer_result(bad, &result(6));
        let acts = tick(&mut c, t0, &live);
        assert!(
            has(&acts, |a| matches!(a, Action::ResultMismatch(m) if m.halt && m.cause() == HaltCause::ResultMismatch)),
            "halts on the first mismatch"
        );
        assert!(!has(&acts, |a| matches!(a, Action::Penalize { .. })), "no majority known yet");
        c.on_peer_result(p1, &result(5));
        let acts = tick(&mut c, t0, &live);
        assert!(
            has(&acts, |a| matches!(a, Action::Penalize { peer, offence: Offence::ResultMinority } if *peer == bad)),
            "{acts:?}"
        );
        assert!(!has(&acts, |a| matches!(a, Action::OutvotedResult { .. })), "this node is in the majority");
        assert_eq!(c.phase(&key()), Some(BatchPhase::Halted));
        assert!(tick(&mut c, t0, &live).is_empty(), "judged once");
    }

    /// A node whose own engine computed the odd result halts, flags itself and penalises
    /// nobody: the majority is honest.
    #[test]
    fn a_node_outvoted_on_results_flags_itself_and_penalises_nobody() {
        let (mut c, p1, p2, live, t0) = agreed_pair();
        c.submit_result(&key(), [9; 32], 3, t0).unwrap();
        c.on_peer_result(p1, &result(5));
        c.on_peer_result(p2, &result(5));
        let acts = tick(&mut c, t0, &live);
        assert!(has(&acts, |a| matches!(a, Action::ResultMismatch(m) if m.cause() == HaltCause::ResultMismatch)));
        assert!(
            has(&acts, |a| matches!(a, Action::OutvotedResult { batch, majority: 2, of: 3 } if *batch == key())),
            "{acts:?}"
        );
        assert!(!has(&acts, |a| matches!(a, Action::Penalize { .. })), "{acts:?}");
    }

    #[test]
    fn too_few_results_halt_after_the_timeout() {
        let (mut c, _, _, live, t0) = agreed_pair();
        c.submit_result(&key(), [5; 32], 3, t0).unwrap();
        let acts = tick(&mut c, t0 + Duration::from_millis(100), &live);
        assert!(
            has(&acts, |a| matches!(a, Action::ResultMismatch(m) if m.halt
                && m.cause() == HaltCause::ResultsUnconfirmed
                && m.reason.contains("only 1 of 3"))),
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
            tick(&mut c, t0, &HashSet::new());
            if settle {
                c.submit_result(&k, [1; 32], 0, t0).unwrap();
                tick(&mut c, t0, &HashSet::new());
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
        assert_eq!(c.add_order(&o, d, None), AddOutcome::Late, "epoch 1 is over");
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
        assert_eq!(c.add_order(&o, d, None), AddOutcome::Added);
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
