//! The node's handle: what the socket API (and tests) hold to talk to the node task, and
//! the commands it sends. Every request is a message to the one task that owns the state.

use std::collections::BTreeSet;
use std::sync::Arc;

use libp2p::PeerId;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::health::Health;
use super::subscribers::{EventStream, ResumeError};
use crate::config::NodeSettings;
use crate::consensus::BatchError;
use crate::outbox::OutboxCredits;
use crate::proto::{NodeStatus, Order};
use crate::wire::{BatchKey, Digest};

/// The markets a node trades now, sorted. The node task owns the set and publishes each
/// change (a config reload) on a `watch` channel; everyone else reads that one copy.
pub(super) type Markets = Arc<BTreeSet<String>>;

/// Static facts about a node, shared with the API without a round trip.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// This node's peer id.
    pub peer_id: PeerId,
    /// Network name.
    pub network: String,
    /// Gossip message and API request cap, bytes.
    pub max_message_bytes: usize,
    /// Freeze proof cap, bytes.
    pub max_freeze_proof_bytes: usize,
    /// Outbox capacity, orders (= order credits).
    pub outbox_capacity: usize,
    /// Outbox capacity, bytes of [`crate::outbox::charge`] (= byte credits): half of
    /// `--queue-memory-bytes`.
    pub outbox_bytes: usize,
}

/// Where a submitted order went: its digest and epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Submitted {
    /// Order digest (SHA-256 of the canonical encoding).
    pub(crate) digest: Digest,
    /// Epoch of the batch the order joined.
    pub(crate) epoch: u64,
}

/// A submitted order reuses the id of a different order this node accepted (ids are unique
/// per origin within the retention window); the orders before it were accepted, it and the
/// ones after it were not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "id {id} was already accepted for a different order (digest {}…); an id names one order within the retention window",
    hex8(first)
)]
pub(crate) struct DuplicateId {
    /// Position of the refused order in the submission.
    pub(crate) index: usize,
    /// Its id.
    pub(crate) id: u64,
    /// Digest of the order first accepted under that id.
    pub(crate) first: Digest,
}

/// The first 4 bytes of `d` in hex, enough to tell digests apart in a message.
fn hex8(d: &Digest) -> String {
    d[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// The node has stopped; the request cannot be served.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the gossip node is shutting down")]
pub struct NodeGone;

/// A request to the node task.
pub(super) enum Command {
    Submit {
        orders: Vec<Order>,
        want_receipts: bool,
        reply: oneshot::Sender<Result<Vec<Submitted>, DuplicateId>>,
    },
    Subscribe {
        markets: Vec<String>,
        resume_after: Option<crate::proto::Cursor>,
        reply: oneshot::Sender<Option<Result<EventStream, ResumeError>>>,
    },
    Status {
        reply: oneshot::Sender<NodeStatus>,
    },
    GetBatch {
        batch: BatchKey,
        reply: oneshot::Sender<Result<Vec<Order>, BatchError>>,
    },
    SubmitResult {
        batch: BatchKey,
        hash: Digest,
        trades: u64,
        reply: oneshot::Sender<Result<(), BatchError>>,
    },
    Seal {
        market: String,
        reply: oneshot::Sender<Result<BatchKey, BatchError>>,
    },
    Reload {
        settings: Box<NodeSettings>,
        reply: oneshot::Sender<Vec<String>>,
    },
}

/// A cheap, cloneable handle to a running node.
#[derive(Clone)]
pub struct NodeHandle {
    pub(super) tx: mpsc::UnboundedSender<Command>,
    pub(super) credits: Arc<OutboxCredits>,
    pub(super) info: Arc<NodeInfo>,
    pub(super) markets: watch::Receiver<Markets>,
    pub(super) health: watch::Receiver<Health>,
    /// Whether start-up recovery is done ([`super::recovery`]): submissions wait for it.
    pub(super) recovered: watch::Receiver<bool>,
    /// Why the node must stop, once it knows ([`super::twins`]).
    pub(super) fatal: watch::Receiver<Option<String>>,
}

impl NodeHandle {
    /// Static facts about the node.
    pub fn info(&self) -> &NodeInfo {
        &self.info
    }

    /// The markets traded now.
    pub fn markets(&self) -> Markets {
        self.markets.borrow().clone()
    }

    /// The node's health as last assessed (every heartbeat and on every change).
    pub fn health(&self) -> watch::Receiver<Health> {
        self.health.clone()
    }

    /// Resolves with the reason once the node finds it must not run on: another process
    /// that started earlier runs with its identity key ([`super::twins`]). Pending forever
    /// otherwise (and after the node task ended).
    pub async fn fatal(&self) -> String {
        let mut rx = self.fatal.clone();
        match rx.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            Err(_) => std::future::pending().await,
        }
    }

    /// Applies a new configuration (hot reload): markets, bootstrap peers, rate limits and
    /// reputation thresholds take effect now; returns notes on fields that need a restart.
    pub async fn reload(&self, settings: NodeSettings) -> Result<Vec<String>, NodeGone> {
        self.ask(|reply| Command::Reload { settings: Box::new(settings), reply }).await
    }

    /// Queues already-validated `orders` (from the engine) for gossip, waiting for start-up
    /// recovery to finish and for outbox space first. With `want_receipts`, returns each order's digest and epoch once queued
    /// (an order resubmitted unchanged gets its first instance's). `orders` must fit the
    /// outbox's capacity in orders and bytes ([`NodeInfo`]).
    ///
    /// Errors: the inner [`DuplicateId`] for an id already accepted for a different order.
    pub(crate) async fn submit(
        &self,
        orders: Vec<Order>,
        want_receipts: bool,
    ) -> Result<Result<Vec<Submitted>, DuplicateId>, NodeGone> {
        let n = u32::try_from(orders.len()).map_err(|_| NodeGone)?;
        let bytes = u32::try_from(orders.iter().map(crate::outbox::charge).sum::<usize>()).map_err(|_| NodeGone)?;
        self.recovered.clone().wait_for(|done| *done).await.map_err(|_| NodeGone)?;
        self.credits.take(n, bytes).await.map_err(|_| NodeGone)?;
        self.ask(|reply| Command::Submit { orders, want_receipts, reply }).await
    }

    /// Opens an event subscription for `markets` (empty = all), replaying the retained
    /// events after `resume_after` first. `NodeGone` while shutting down; the inner
    /// [`ResumeError`] when the cursor cannot be continued exactly.
    pub(crate) async fn subscribe(
        &self,
        markets: Vec<String>,
        resume_after: Option<crate::proto::Cursor>,
    ) -> Result<Result<EventStream, ResumeError>, NodeGone> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Subscribe { markets, resume_after, reply }).map_err(|_| NodeGone)?;
        rx.await.map_err(|_| NodeGone)?.ok_or(NodeGone)
    }

    /// Current status: peers, listen addresses, mesh per topic, health.
    pub async fn status(&self) -> Result<NodeStatus, NodeGone> {
        self.ask(|reply| Command::Status { reply }).await
    }

    /// The orders of an agreed batch in canonical order.
    pub(crate) async fn batch(&self, batch: BatchKey) -> Result<Result<Vec<Order>, BatchError>, NodeGone> {
        self.ask(|reply| Command::GetBatch { batch, reply }).await
    }

    /// The engine's result for an agreed batch.
    pub(crate) async fn submit_result(
        &self,
        batch: BatchKey,
        hash: Digest,
        trades: u64,
    ) -> Result<Result<(), BatchError>, NodeGone> {
        self.ask(|reply| Command::SubmitResult { batch, hash, trades, reply }).await
    }

    /// Engine sealing: seals `market`'s current epoch.
    pub(crate) async fn seal(&self, market: String) -> Result<Result<BatchKey, BatchError>, NodeGone> {
        self.ask(|reply| Command::Seal { market, reply }).await
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, NodeGone> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).map_err(|_| NodeGone)?;
        rx.await.map_err(|_| NodeGone)
    }
}

/// Signals that drive a node's shutdown, in order.
#[derive(Clone, Default)]
pub(crate) struct Shutdown {
    /// Stop serving subscriptions (ends every event stream with UNAVAILABLE) so the API
    /// server can drain.
    pub(crate) closing: CancellationToken,
    /// Flush the outbox (bounded by [`super::FLUSH_DEADLINE`]), close the peer
    /// connections, and return.
    pub(crate) stop: CancellationToken,
}
