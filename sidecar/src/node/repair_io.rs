//! Repair I/O over the request-response protocol ([`crate::repair`]): pulling members'
//! digest sets (with their seals and results), fetching the orders an adopted batch lacks
//! from a member holding them, serving such requests from our batches (each order with
//! its origin's bundle proof), and admitting fetched orders only as asked (each digest in
//! the quorum-certified set) and proven (its origin's signature, [`crate::bundle`]).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use libp2p::request_response::{self, OutboundRequestId};

use super::Node;
use super::repair_server::{Inbound, ServerEvent};
use crate::bundle::{self, BundleProof};
use crate::decode_limits::MAX_FETCH_DIGESTS;
use crate::metrics::{KindLabel, MarketLabel, MarketReason, ReasonLabel};
use crate::proto::repair_refused::Reason as Refusal;
use crate::proto::{self, Order, RepairRefused, RepairRequest, RepairResponse, repair_request, repair_response};
use crate::repair::MAX_REPAIR_BYTES;
use crate::reputation::Offence;
use crate::wire::{self, BatchKey, Digest};

/// Largest `ProvenOrders` served, bytes: the frame cap less the response's own framing
/// (field key and length prefix).
const MAX_PROVEN_BYTES: usize = MAX_REPAIR_BYTES - 16;

/// Repair requests one peer may send per second, sustained; more are answered with an
/// error, unserved, and counted (`repair_requests_refused_total{reason="rate_limited"}`).
/// Far above what an honest member asks: a digest pull or a fetch per batch it repairs.
pub(super) const REPAIR_REQUESTS_PER_S: u32 = 64;

/// Repair requests one peer may send at once: a restarted member's recovery asks each
/// peer about every retained batch of every market in one go (~130 with the defaults).
pub(super) const REPAIR_REQUEST_BURST: u32 = 512;

/// Repair requests this node keeps outstanding to one peer at once: 8, half the streams a
/// peer serves at once ([`crate::repair::MAX_INBOUND_STREAMS_PER_PEER`]), so that a
/// stream the peer has answered but not yet closed never puts a new one over its bound.
/// More wait here, in order (a restarted member's recovery asks ~130 at once).
pub(super) const MAX_OUTSTANDING_PER_PEER: usize = 8;

/// Requests that may wait for one peer: 4,096; past it the oldest waiting one fails as
/// if the peer had not answered it.
const MAX_WAITING_PER_PEER: usize = 4096;

/// This node's repair requests: the ones sent, and per peer the ones waiting for one of
/// its [`MAX_OUTSTANDING_PER_PEER`] places.
#[derive(Default)]
pub(super) struct Requests {
    sent: HashMap<OutboundRequestId, PendingRepair>,
    peers: HashMap<PeerId, PeerRequests>,
    /// Per connected peer: since when it has had a connection without a break. A run of
    /// the peer that answers now is the one that sent a digest set after that instant (a
    /// restart closes every connection).
    connected_since: HashMap<PeerId, Instant>,
}

impl Requests {
    /// `peer`'s first connection opened at `now`.
    pub(super) fn connected(&mut self, peer: PeerId, now: Instant) {
        self.connected_since.insert(peer, now);
    }

    /// `peer`'s last connection closed.
    pub(super) fn disconnected(&mut self, peer: &PeerId) {
        self.connected_since.remove(peer);
    }
}

#[derive(Default)]
struct PeerRequests {
    outstanding: usize,
    waiting: VecDeque<(RepairRequest, PendingRepair)>,
}

/// An outstanding repair request.
pub(super) enum PendingRepair {
    Digests(BatchKey),
    Decided(BatchKey),
    Fetch {
        batch: BatchKey,
        digests: HashSet<Digest>,
        /// When the peer's digest set naming them arrived ([`Offence::UnservedRepair`]).
        vouched_at: Instant,
    },
    /// Which runs of this node's id a peer heard ([`super::twins`]).
    Instances,
}

impl Node {
    /// Sends `req` to `peer`, or queues it while [`MAX_OUTSTANDING_PER_PEER`] requests to
    /// that peer are unanswered; `pending` says what to do with the answer.
    pub(super) fn send_repair(&mut self, peer: PeerId, req: RepairRequest, pending: PendingRepair) {
        let queue = self.repairs.peers.entry(peer).or_default();
        if queue.outstanding < MAX_OUTSTANDING_PER_PEER {
            queue.outstanding += 1;
            self.dispatch_repair(peer, req, pending);
            return;
        }
        queue.waiting.push_back((req, pending));
        if queue.waiting.len() > MAX_WAITING_PER_PEER
            && let Some((_, oldest)) = queue.waiting.pop_front()
        {
            self.repair_failed(peer, oldest, "too many repair requests waiting for this peer");
        }
    }

    /// Puts `req` on the wire to `peer` (its place among the outstanding ones taken) and
    /// counts it by kind (`repair_requests_sent_total`).
    fn dispatch_repair(&mut self, peer: PeerId, req: RepairRequest, pending: PendingRepair) {
        let kind = match pending {
            PendingRepair::Digests(_) => "digests",
            PendingRepair::Decided(_) => "decided",
            PendingRepair::Fetch { .. } => "fetch",
            PendingRepair::Instances => "instances",
        };
        self.metrics.repair_requests_sent.get_or_create(&KindLabel { kind }).inc();
        let id = self.swarm.behaviour_mut().repair.send_request(&peer, req);
        self.repairs.sent.insert(id, pending);
    }

    /// A request sent to `peer` ended, answered or failed: frees its place, sends the next
    /// waiting one, and returns what it was for (`None` if it is not one of ours).
    fn repair_ended(&mut self, peer: PeerId, id: OutboundRequestId) -> Option<PendingRepair> {
        let pending = self.repairs.sent.remove(&id)?;
        if let Some(queue) = self.repairs.peers.get_mut(&peer) {
            queue.outstanding = queue.outstanding.saturating_sub(1);
            if let Some((req, next)) = queue.waiting.pop_front() {
                queue.outstanding += 1;
                self.dispatch_repair(peer, req, next);
            } else if queue.outstanding == 0 {
                self.repairs.peers.remove(&peer);
            }
        }
        Some(pending)
    }

    /// Ask `peer` for its digest set of `batch` (with its seal and result).
    pub(super) fn request_digests(&mut self, peer: PeerId, batch: BatchKey) {
        let req = RepairRequest { kind: Some(repair_request::Kind::Digests(batch.to_proto())) };
        self.send_repair(peer, req, PendingRepair::Digests(batch));
    }

    /// Recovery: ask `peer` for `batch` as decided there.
    pub(super) fn request_decided(&mut self, peer: PeerId, batch: BatchKey) {
        let req = RepairRequest { kind: Some(repair_request::Kind::Decided(batch.to_proto())) };
        self.send_repair(peer, req, PendingRepair::Decided(batch));
    }

    /// Fetch the orders of `batch` we lack from `peer`, a member holding them: at most
    /// [`MAX_FETCH_DIGESTS`] per request; the adoption asks again for the rest once the
    /// answer came, as after a partial answer.
    pub(super) fn fetch_orders(
        &mut self,
        peer: PeerId,
        batch: BatchKey,
        mut digests: Vec<Digest>,
        vouched_at: Instant,
    ) {
        digests.truncate(MAX_FETCH_DIGESTS);
        let req = RepairRequest {
            kind: Some(repair_request::Kind::Fetch(proto::FetchOrders {
                batch_id: Some(batch.to_proto()),
                digests: digests.iter().map(|d| d.to_vec()).collect(),
            })),
        };
        let digests = digests.into_iter().collect();
        self.send_repair(peer, req, PendingRepair::Fetch { batch, digests, vouched_at });
    }

    /// Answers to (or failures of) this node's repair requests.
    pub(super) fn on_repair(&mut self, ev: request_response::Event<RepairRequest, RepairResponse>) {
        match ev {
            request_response::Event::Message {
                peer,
                message: request_response::Message::Response { request_id, response },
                ..
            } => match (self.repair_ended(peer, request_id), response.kind) {
                (Some(PendingRepair::Digests(_)), Some(repair_response::Kind::Digests(set))) => {
                    let actions = self.consensus.on_digest_set(peer, &set, Instant::now());
                    self.run_actions(actions);
                }
                (Some(PendingRepair::Fetch { batch, digests, .. }), Some(repair_response::Kind::Orders(answer))) => {
                    self.on_fetched(peer, batch, digests, answer);
                }
                (Some(PendingRepair::Fetch { batch, vouched_at, .. }), Some(repair_response::Kind::Refused(r)))
                    if r.reason() == Refusal::UnknownBatch && self.vouch_binds(peer, vouched_at) =>
                {
                    tracing::warn!(%peer, %batch, detail = r.detail, "peer sent a digest set, then refused the orders it named as an unknown batch; penalised");
                    self.penalize(peer, Offence::UnservedRepair);
                    self.consensus.on_repair_failure(&batch);
                }
                (Some(PendingRepair::Decided(batch)), Some(repair_response::Kind::Decided(d))) => {
                    self.on_decided(peer, batch, Some(d));
                }
                (Some(PendingRepair::Instances), Some(repair_response::Kind::Instances(heard))) => {
                    self.on_instances(peer, &heard);
                }
                (Some(pending), other) => self.repair_failed(peer, pending, &format!("refused: {other:?}")),
                (None, _) => {}
            },
            request_response::Event::OutboundFailure { peer, request_id, error, .. } => {
                if let Some(pending) = self.repair_ended(peer, request_id) {
                    self.repair_failed(peer, pending, &format!("failed: {error}"));
                }
            }
            _ => {}
        }
    }

    /// Whether `peer`, whose digest set arrived at `vouched_at`, must still hold that
    /// batch: it has stayed connected since before then (the same run answers), and at
    /// most [`Node::vouch_window`] has passed (too little for an honest member to drop it).
    fn vouch_binds(&self, peer: PeerId, vouched_at: Instant) -> bool {
        self.repairs.connected_since.get(&peer).is_some_and(|since| *since <= vouched_at)
            && vouched_at.elapsed() <= self.vouch_window()
    }

    /// How long a member that sent a digest set must still serve its orders:
    /// `sealTimeoutMs`, or less if the member might drop the batch sooner: a quarter of the
    /// `retainedBatches` epochs it keeps (1,000 ms with the defaults).
    fn vouch_window(&self) -> Duration {
        let c = &self.settings.config.consensus;
        let retention_ms = u64::from(c.epoch_ms) * u64::from(c.retained_batches) / 4;
        Duration::from_millis(u64::from(c.seal_timeout_ms).min(retention_ms))
    }

    /// A repair request to `peer` got no usable answer (`why`).
    fn repair_failed(&mut self, peer: PeerId, pending: PendingRepair, why: &str) {
        match pending {
            PendingRepair::Decided(batch) => {
                tracing::debug!(%peer, batch = %batch, why, "recovery request unanswered");
                self.on_decided(peer, batch, None);
            }
            PendingRepair::Instances => tracing::debug!(%peer, why, "identity check unanswered"),
            PendingRepair::Digests(batch) | PendingRepair::Fetch { batch, .. } => {
                tracing::warn!(%peer, %batch, why, "repair request unanswered");
                self.consensus.on_repair_failure(&batch);
            }
        }
    }

    /// A peer's repair request read by the server (`repair_server`), or a stream of its
    /// refused there: answered within the peer's bucket ([`REPAIR_REQUESTS_PER_S`]),
    /// refusals counted by reason.
    pub(super) fn on_repair_request(&mut self, event: ServerEvent) {
        let peer = event.peer;
        match event.inbound {
            Inbound::Request { request, reply } => {
                let response = if self.repair_rate.check(&peer) {
                    self.serve_repair(peer, request)
                } else {
                    self.metrics.repair_requests_refused.get_or_create(&ReasonLabel { reason: "rate_limited" }).inc();
                    tracing::debug!(%peer, "repair request over the peer's rate; refused");
                    refused(
                        Refusal::RateLimited,
                        format!(
                            "rate limited: more than {REPAIR_REQUESTS_PER_S} repair requests/s (burst {REPAIR_REQUEST_BURST}); ask again later"
                        ),
                    )
                };
                // The requester may have gone away meanwhile; nothing to do then.
                let _ = reply.send(response);
            }
            Inbound::Refused { reason, detail } => {
                self.metrics.repair_requests_refused.get_or_create(&ReasonLabel { reason }).inc();
                tracing::debug!(%peer, reason, detail, "repair stream refused");
            }
            Inbound::Failed { detail } => tracing::debug!(%peer, detail, "repair stream failed"),
        }
    }

    /// Answers `peer`'s repair or recovery request from our batches, or its identity check
    /// from the runs of its id heard here (recording the asker's own run first).
    fn serve_repair(&mut self, peer: PeerId, request: RepairRequest) -> RepairResponse {
        use repair_response::Kind as R;
        let kind = match request.kind {
            Some(repair_request::Kind::Decided(id)) => {
                R::Decided(self.consensus.decided(&BatchKey::from_proto(&id), &peer.to_bytes()))
            }
            Some(repair_request::Kind::Digests(id)) => {
                let batch = BatchKey::from_proto(&id);
                match self.consensus.digest_set(&batch).or_else(|| self.consensus.abstention(&batch)) {
                    Some(set) => R::Digests(set),
                    None => return refused(Refusal::UnknownBatch, format!("batch {batch} unknown")),
                }
            }
            Some(repair_request::Kind::Fetch(f)) => {
                let Some(id) = f.batch_id else { return refused(Refusal::Malformed, "no batch id".into()) };
                let batch = BatchKey::from_proto(&id);
                #[cfg(feature = "fault-injection")]
                if self.settings.fault.refuse_fetches {
                    return refused(Refusal::UnknownBatch, format!("batch {batch} unknown (injected fault)"));
                }
                let digests: Vec<Digest> =
                    f.digests.iter().filter_map(|d| Digest::try_from(d.as_slice()).ok()).collect();
                match self.consensus.orders_for(&batch, &digests) {
                    Some(held) => R::Orders(bundle::proven_orders(held, MAX_PROVEN_BYTES)),
                    None => return refused(Refusal::UnknownBatch, format!("batch {batch} unknown")),
                }
            }
            Some(repair_request::Kind::Instances(asker)) => {
                let now = std::time::Instant::now();
                let run = super::twins::Run { instance: asker.instance, started_at_ms: asker.started_at_ms };
                self.instances.record(peer, run, now);
                R::Instances(self.instances.recent(&peer, self.liveness_window(), now))
            }
            None => return refused(Refusal::Malformed, "empty request".into()),
        };
        RepairResponse { kind: Some(kind) }
    }

    /// Orders fetched by repair from `peer`: accepted only as asked (each digest in the
    /// quorum-certified set, so content addressing proves it whoever sends it), for the
    /// batch asked about, well-formed, and signed by their origin ([`Node::screen_repaired`]);
    /// they join the batch with their proofs and reach the engine before its `BatchAgreed`.
    /// An answer may hold only part of what was asked (the responder's frame budget): the
    /// adoption asks again for the rest.
    fn on_fetched(&mut self, peer: PeerId, batch: BatchKey, asked: HashSet<Digest>, answer: proto::ProvenOrders) {
        let (good, _) = self.screen_repaired(peer, &batch, answer.orders, Some(&asked), &answer.proofs);
        for (d, _, _) in &good {
            self.validator.remember(*d);
        }
        let added = self.consensus.on_fetched(&batch, good);
        if !added.is_empty() {
            tracing::info!(batch = %batch, orders = added.len(), holder = %peer, "repaired missing orders");
            let m = MarketLabel { market: batch.market.clone() };
            self.metrics.repaired_orders.get_or_create(&m).inc_by(added.len() as u64);
            self.hand_to_engine(&batch.market, added);
        }
    }

    /// Screens the `orders` of `batch` in `peer`'s repair (`asked`: the digests requested)
    /// or recovery (`None`: the whole batch) answer: each must be of the batch, among those
    /// asked, valid, and proven by its origin's signature in `proofs`
    /// ([`bundle::verify_orders`]). Refusals are counted by reason
    /// (`repair_orders_refused_total`); any refusal or malformed proof costs `peer` a
    /// `bad_repair` penalty.
    ///
    /// Returns the accepted orders (digest, order, proof to keep), and whether the whole
    /// answer passed.
    pub(super) fn screen_repaired(
        &mut self,
        peer: PeerId,
        batch: &BatchKey,
        orders: Vec<Order>,
        asked: Option<&HashSet<Digest>>,
        proofs: &[proto::BundleProof],
    ) -> (Vec<(Digest, Order, Arc<BundleProof>)>, bool) {
        let mut refused: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut checked = Vec::with_capacity(orders.len());
        for o in orders {
            let d = wire::order_digest(&o);
            if asked.is_some_and(|a| !a.contains(&d)) || o.market != batch.market || o.epoch != batch.epoch {
                *refused.entry("not_asked").or_default() += 1;
            } else if wire::check_order_fields(&o, self.info.max_freeze_proof_bytes).is_err() {
                *refused.entry("invalid").or_default() += 1;
            } else {
                checked.push((d, o));
            }
        }
        let verified = bundle::verify_orders(&self.info.network, &batch.market, checked, proofs);
        for (reason, _) in &verified.refused {
            *refused.entry(reason.as_str()).or_default() += 1;
        }
        let clean = refused.is_empty() && verified.malformed_proofs == 0;
        if !clean {
            tracing::warn!(%peer, batch = %batch, ?refused, malformed_proofs = verified.malformed_proofs, "repair answer carried orders that were not asked for, invalid or unproven; refused");
            for (reason, n) in refused {
                let l = MarketReason { market: batch.market.clone(), reason };
                self.metrics.repair_orders_refused.get_or_create(&l).inc_by(n);
            }
            self.penalize(peer, Offence::BadRepair);
        }
        (verified.accepted, clean)
    }
}

/// A refusal to serve a repair request: `reason`, and `detail` for the requester's logs.
fn refused(reason: Refusal, detail: String) -> RepairResponse {
    RepairResponse { kind: Some(repair_response::Kind::Refused(RepairRefused { reason: reason as i32, detail })) }
}
