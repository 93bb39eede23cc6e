//! Consensus glue: drives the pure [`Consensus`](crate::consensus::Consensus) state
//! machine (clock seals, ticks, the engine's batch requests) and carries out the
//! [`Action`]s it returns: publish seals and results, start repairs, tell the engine,
//! penalise peers.

use std::time::Instant;

use libp2p::PeerId;
use libp2p::gossipsub::PublishError;
use openmatch_gossip_crds::sidecar_config::SealingMode;

use super::Node;
use super::health::Degradation;
use crate::consensus::{Action, BatchError, Membership};
use crate::epoch::unix_now_ns;
use crate::metrics::{BatchOutcome, KindMarket, MarketLabel, MarketOutcome, ReasonLabel};
use crate::proto::{self, Order, event::Kind};
use crate::reputation::Offence;
use crate::topics::{Topic, TopicKind};
use crate::wire::{BatchKey, Digest};

impl Node {
    /// Every [`super::CONSENSUS_TICK`], and after a round of validation that brought a
    /// peer's seal: seals due batches (clock mode), advances every batch and carries out
    /// the actions. Every step is judged by the time, so running it more often changes
    /// only how soon it acts.
    pub(super) fn on_consensus_tick(&mut self) {
        let now_ms = unix_now_ns() / 1_000_000;
        let now = Instant::now();
        if self.epochs.mode() == SealingMode::Clock {
            self.open_epochs(now_ms);
            self.drive_recovery(now);
            for key in self.consensus.collecting() {
                if self.epochs.seal_due(key.epoch, now_ms) {
                    let actions = self.consensus.seal(&key, now);
                    self.run_actions(actions);
                }
            }
        }
        let live = self.live_peers();
        let membership = Membership { members: self.members(), live: &live };
        let actions = self.consensus.tick(now, &membership);
        self.run_actions(actions);
        let consensus = &self.consensus;
        self.own.forget(|market, epoch| consensus.is_dropped(market, epoch));
    }

    /// Clock sealing: opens the batch of every epoch of every market up to the current one,
    /// empty or not, so that every member votes on every batch (a member that missed a
    /// batch's orders, e.g. while partitioned, learns of it from its own empty seal and
    /// adopts the quorum's content). The first epoch opened is the current one (the floor):
    /// a started node does not vote on older batches, which it may have voted on in a
    /// previous run (a run that ended during the current epoch cannot have sealed it yet),
    /// and learns its orders in them by recovery ([`super::recovery`]).
    fn open_epochs(&mut self, now_ms: u64) {
        /// Most epochs opened at once per market (after a stall of the node task).
        const MAX_CATCH_UP: u64 = 16;
        let markets = self.markets.borrow().clone();
        for market in markets.iter() {
            let current = self.epochs.epoch_for(market, now_ms);
            let from = match self.opened.get(market) {
                Some(&last) if last >= current => continue,
                Some(&last) => (last + 1).max(current.saturating_sub(MAX_CATCH_UP)),
                None => current,
            };
            for epoch in from..=current {
                self.consensus.open(&BatchKey { market: market.clone(), epoch });
            }
            self.opened.insert(market.clone(), current);
        }
    }

    /// Tells the engine the fate of its own orders in the decided batch `batch`: those in
    /// the agreed batch are committed, the others (all of them if the batch was disputed)
    /// excluded, and their ids freed for resubmission.
    fn tell_outcomes(&mut self, batch: &BatchKey, reason: proto::ExclusionReason) {
        let (mut committed, mut excluded) = (Vec::new(), Vec::new());
        for (id, digest) in self.own.of_batch(&batch.market, batch.epoch) {
            if self.consensus.committed(batch, &digest) == Some(true) {
                committed.push(id);
            } else {
                excluded.push(id);
            }
        }
        for id in &committed {
            self.own.commit(*id);
        }
        for id in &excluded {
            self.own.release(*id, batch.epoch);
        }
        let count = |outcome: &'static str, n: usize| {
            if n > 0 {
                let l = MarketOutcome { market: batch.market.clone(), outcome };
                self.metrics.order_outcomes.get_or_create(&l).inc_by(n as u64);
            }
        };
        count("committed", committed.len());
        count("excluded", excluded.len());
        if !committed.is_empty() {
            let ev = proto::OrdersCommitted { batch_id: Some(batch.to_proto()), ids: committed };
            self.subscribers.broadcast(Kind::OrdersCommitted(ev));
        }
        if !excluded.is_empty() {
            tracing::warn!(batch = %batch, excluded = excluded.len(), reason = reason.as_str_name(), "own orders excluded from their batch; the engine may resubmit them");
            let ev = proto::OrdersExcluded { batch_id: Some(batch.to_proto()), ids: excluded, reason: reason as i32 };
            self.subscribers.broadcast(Kind::OrdersExcluded(ev));
        }
    }

    /// `GetBatch`: an agreed batch's orders in canonical order.
    pub(super) fn agreed_batch(&self, batch: &BatchKey) -> Result<Vec<Order>, BatchError> {
        self.consensus.agreed_orders(batch)
    }

    /// `SubmitResult`: the engine's result hash for an agreed batch.
    pub(super) fn submit_result(&mut self, batch: &BatchKey, hash: Digest, trades: u64) -> Result<(), BatchError> {
        let actions = self.consensus.submit_result(batch, hash, trades, Instant::now())?;
        self.run_actions(actions);
        Ok(())
    }

    /// `SealBatch` (engine sealing only): closes `market`'s current epoch.
    pub(super) fn seal_by_engine(&mut self, market: String) -> Result<BatchKey, BatchError> {
        if self.epochs.mode() != SealingMode::Engine {
            return Err(BatchError::ClockSealing);
        }
        if !self.markets.borrow().contains(&market) {
            return Err(BatchError::UnknownMarket(market));
        }
        let epoch = self.epochs.advance(&market, self.consensus.highest_peer_sealed(&market));
        let key = BatchKey { market, epoch };
        let actions = self.consensus.seal(&key, Instant::now());
        self.run_actions(actions);
        Ok(key)
    }

    pub(super) fn run_actions(&mut self, actions: Vec<Action>) {
        fn market_of(id: Option<&proto::BatchId>) -> String {
            id.map(|b| b.market.clone()).unwrap_or_default()
        }
        for action in actions {
            match action {
                Action::PublishSeal(seal) => {
                    self.metrics.count_batch(&seal.batch.market, BatchOutcome::Sealed);
                    self.publish_consensus(TopicKind::Batches, &seal.batch.market, crate::wire::encode_seal(&seal));
                }
                Action::PublishResult(result) => {
                    let data = crate::wire::encode_result(&result);
                    self.publish_consensus(TopicKind::Results, &result.batch.market, data);
                }
                Action::RequestDigests { peer, batch } => self.request_digests(peer, batch),
                Action::FetchOrders { peer, batch, digests, vouched_at } => {
                    self.fetch_orders(peer, batch, digests, vouched_at)
                }
                Action::Agreed(a) => {
                    let market = market_of(a.batch_id.as_ref());
                    self.metrics.count_batch(&market, BatchOutcome::Agreed);
                    if a.revision > 0 {
                        // Our seal differed from the quorum's: we adopted its batch.
                        self.metrics.batch_mismatches.get_or_create(&MarketLabel { market: market.clone() }).inc();
                    }
                    if a.repaired_orders > 0 {
                        self.metrics.count_batch(&market, BatchOutcome::Repaired);
                    }
                    self.metrics.agreement_latency.observe(a.agreement_us as f64 * 1e-6);
                    let key = a.batch_id.as_ref().map(BatchKey::from_proto);
                    self.subscribers.broadcast(Kind::BatchAgreed(a));
                    if let Some(key) = key {
                        self.tell_outcomes(&key, proto::ExclusionReason::NotInAgreedBatch);
                    }
                }
                Action::Disputed(d) => {
                    self.metrics.count_batch(&market_of(d.batch_id.as_ref()), BatchOutcome::Disputed);
                    let trouble = Degradation::BatchDisputed(d.reason.clone());
                    let key = d.batch_id.as_ref().map(BatchKey::from_proto);
                    self.subscribers.broadcast(Kind::BatchDisputed(d));
                    if let Some(key) = key {
                        self.tell_outcomes(&key, proto::ExclusionReason::BatchDisputed);
                    }
                    self.record_trouble(trouble);
                }
                Action::ResultAgreed(r) => {
                    self.metrics.count_batch(&market_of(r.batch_id.as_ref()), BatchOutcome::ResultAgreed);
                    self.subscribers.broadcast(Kind::ResultAgreed(r));
                }
                Action::ResultMismatch(m) => {
                    let market = market_of(m.batch_id.as_ref());
                    if m.cause() == proto::HaltCause::ResultsUnconfirmed {
                        self.metrics.count_batch(&market, BatchOutcome::Unconfirmed);
                    } else {
                        self.metrics.count_batch(&market, BatchOutcome::Halted);
                        self.metrics.result_mismatches.get_or_create(&MarketLabel { market }).inc();
                    }
                    let trouble = Degradation::BatchHalted(m.reason.clone());
                    self.subscribers.broadcast(Kind::ResultMismatch(m));
                    self.record_trouble(trouble);
                }
                Action::OutvotedResult { batch, majority, of } => {
                    self.metrics.results_outvoted.get_or_create(&MarketLabel { market: batch.market.clone() }).inc();
                    self.record_trouble(Degradation::OutvotedResult { batch: batch.to_string(), majority, of });
                }
                Action::Penalize { peer, offence } => self.penalize(peer, offence),
            }
        }
    }

    fn publish_consensus(&mut self, kind: TopicKind, market: &str, data: Vec<u8>) {
        let topic = Topic { kind, market: market.to_owned() }.ident(&self.info.network);
        match self.swarm.behaviour_mut().gossipsub.publish(topic, data) {
            Ok(_) => {
                let l = KindMarket { kind: kind.as_str(), market: market.to_owned() };
                self.metrics.messages_published.get_or_create(&l).inc();
            }
            // Alone on the topic: nobody to compare with.
            Err(PublishError::NoPeersSubscribedToTopic) => {}
            Err(e) => tracing::warn!(market, kind = kind.as_str(), error = %e, "consensus message not published"),
        }
    }

    /// Lowers `peer`'s reputation for `offence` (fed to GossipSub as its application
    /// score); at the ban threshold the peer is disconnected and blocked.
    pub(super) fn penalize(&mut self, peer: PeerId, offence: Offence) {
        let now = Instant::now();
        let reason = offence.as_str();
        self.metrics.penalties.get_or_create(&ReasonLabel { reason }).inc();
        let (score, ban) = self.reputation.penalize(peer, offence, now);
        tracing::warn!(%peer, reason, score, "peer penalised");
        self.swarm.behaviour_mut().gossipsub.set_application_score(&peer, score);
        if ban {
            tracing::warn!(%peer, score, ban_ms = self.settings.config.reputation.ban_ms, "peer banned: disconnected and blocked");
            self.swarm.behaviour_mut().blocked.block_peer(peer);
            let _ = self.swarm.disconnect_peer_id(peer);
            self.last_status.remove(&peer);
        }
        self.report_reputation(now);
        self.update_health();
    }

    pub(super) fn report_reputation(&self, now: Instant) {
        let summary = self.reputation.summary(now);
        self.metrics.banned_peers.set(summary.banned as i64);
        self.metrics.reputation_min.set(summary.min);
    }
}
