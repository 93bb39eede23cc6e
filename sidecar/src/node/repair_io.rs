//! Repair I/O over the request-response protocol ([`crate::repair`]): pulling members'
//! digest sets (with their seals and results), fetching the orders an adopted batch lacks
//! from a member holding them, serving such requests from our batches, and admitting
//! fetched orders only as asked (each digest in the quorum-certified set).

use std::collections::HashSet;

use libp2p::PeerId;
use libp2p::request_response::{self, OutboundRequestId};

use super::Node;
use crate::metrics::MarketLabel;
use crate::proto::{self, Order, OrderGossip, RepairRequest, RepairResponse, repair_request, repair_response};
use crate::reputation::Offence;
use crate::wire::{self, BatchKey, Digest};

/// An outstanding repair request.
pub(super) enum PendingRepair {
    Digests(BatchKey),
    Decided(BatchKey),
    Fetch { batch: BatchKey, digests: HashSet<Digest> },
}

impl PendingRepair {
    fn batch(&self) -> &BatchKey {
        match self {
            PendingRepair::Digests(batch) | PendingRepair::Decided(batch) | PendingRepair::Fetch { batch, .. } => batch,
        }
    }
}

impl Node {
    /// Ask `peer` for its digest set of `batch` (with its seal and result).
    pub(super) fn request_digests(&mut self, peer: PeerId, batch: BatchKey) {
        let req = RepairRequest { kind: Some(repair_request::Kind::Digests(batch.to_proto())) };
        let id: OutboundRequestId = self.swarm.behaviour_mut().repair.send_request(&peer, req);
        self.repairs.insert(id, PendingRepair::Digests(batch));
    }

    /// Recovery: ask `peer` for `batch` as decided there.
    pub(super) fn request_decided(&mut self, peer: PeerId, batch: BatchKey) {
        let req = RepairRequest { kind: Some(repair_request::Kind::Decided(batch.to_proto())) };
        let id = self.swarm.behaviour_mut().repair.send_request(&peer, req);
        self.repairs.insert(id, PendingRepair::Decided(batch));
    }

    /// Fetch the orders of `batch` we lack from `peer`, a member holding them.
    pub(super) fn fetch_orders(&mut self, peer: PeerId, batch: BatchKey, digests: Vec<Digest>) {
        let req = RepairRequest {
            kind: Some(repair_request::Kind::Fetch(proto::FetchOrders {
                batch_id: Some(batch.to_proto()),
                digests: digests.iter().map(|d| d.to_vec()).collect(),
            })),
        };
        let id = self.swarm.behaviour_mut().repair.send_request(&peer, req);
        self.repairs.insert(id, PendingRepair::Fetch { batch, digests: digests.into_iter().collect() });
    }

    pub(super) fn on_repair(&mut self, ev: request_response::Event<RepairRequest, RepairResponse>) {
        match ev {
            request_response::Event::Message {
                peer,
                message: request_response::Message::Request { request, channel, .. },
                ..
            } => {
                let response = self.serve_repair(peer, request);
                // The requester may have gone away meanwhile; nothing to do then.
                let _ = self.swarm.behaviour_mut().repair.send_response(channel, response);
            }
            request_response::Event::Message {
                peer,
                message: request_response::Message::Response { request_id, response },
                ..
            } => match (self.repairs.remove(&request_id), response.kind) {
                (Some(PendingRepair::Digests(_)), Some(repair_response::Kind::Digests(set))) => {
                    let actions = self.consensus.on_digest_set(peer, &set);
                    self.run_actions(actions);
                }
                (Some(PendingRepair::Fetch { batch, digests }), Some(repair_response::Kind::Orders(g))) => {
                    self.on_fetched(peer, batch, digests, g.orders);
                }
                (Some(PendingRepair::Decided(batch)), Some(repair_response::Kind::Decided(d))) => {
                    self.on_decided(peer, batch, Some(d));
                }
                (Some(PendingRepair::Decided(batch)), other) => {
                    tracing::debug!(%peer, batch = %batch, response = ?other, "recovery request refused");
                    self.on_decided(peer, batch, None);
                }
                (Some(pending), other) => {
                    tracing::warn!(%peer, batch = %pending.batch(), response = ?other, "repair request refused");
                    self.consensus.on_repair_failure(pending.batch());
                }
                (None, _) => {}
            },
            request_response::Event::OutboundFailure { peer, request_id, error, .. } => {
                match self.repairs.remove(&request_id) {
                    Some(PendingRepair::Decided(batch)) => {
                        tracing::debug!(%peer, batch = %batch, %error, "recovery request failed");
                        self.on_decided(peer, batch, None);
                    }
                    Some(pending) => {
                        tracing::warn!(%peer, batch = %pending.batch(), %error, "repair request failed");
                        self.consensus.on_repair_failure(pending.batch());
                    }
                    None => {}
                }
            }
            _ => {}
        }
    }

    /// Answers `peer`'s repair or recovery request from our batches.
    fn serve_repair(&self, peer: PeerId, request: RepairRequest) -> RepairResponse {
        use repair_response::Kind as R;
        let kind = match request.kind {
            Some(repair_request::Kind::Decided(id)) => {
                R::Decided(self.consensus.decided(&BatchKey::from_proto(&id), &peer.to_bytes()))
            }
            Some(repair_request::Kind::Digests(id)) => match self.consensus.digest_set(&BatchKey::from_proto(&id)) {
                Some(set) => R::Digests(set),
                None => R::Error(format!("batch {}#{} unknown", id.market, id.epoch)),
            },
            Some(repair_request::Kind::Fetch(f)) => {
                let Some(id) = f.batch_id else { return RepairResponse { kind: Some(R::Error("no batch id".into())) } };
                let digests: Vec<Digest> =
                    f.digests.iter().filter_map(|d| Digest::try_from(d.as_slice()).ok()).collect();
                match self.consensus.orders_for(&BatchKey::from_proto(&id), &digests) {
                    Some(orders) => R::Orders(OrderGossip { orders }),
                    None => R::Error(format!("batch {}#{} unknown", id.market, id.epoch)),
                }
            }
            None => R::Error("empty request".into()),
        };
        RepairResponse { kind: Some(kind) }
    }

    /// Orders fetched by repair from `peer`: accepted only as asked (each digest in the
    /// quorum-certified set, so content addressing proves it whoever sends it), for the
    /// batch asked about, and only if well-formed; they join the batch and reach the engine
    /// before its `BatchAgreed`.
    fn on_fetched(&mut self, peer: PeerId, batch: BatchKey, asked: HashSet<Digest>, orders: Vec<Order>) {
        let mut good = Vec::new();
        let mut bad = 0;
        for o in orders {
            let d = wire::order_digest(&o);
            let ok = asked.contains(&d)
                && o.market == batch.market
                && o.epoch == batch.epoch
                && wire::check_order_fields(&o, self.info.max_freeze_proof_bytes).is_ok();
            if ok {
                good.push((d, o));
            } else {
                bad += 1;
            }
        }
        if bad > 0 {
            tracing::warn!(%peer, batch = %batch, bad, "repair response carried orders that were not asked for");
            self.penalize(peer, Offence::BadRepair);
        }
        for (d, _) in &good {
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
}
