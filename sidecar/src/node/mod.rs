//! The gossip node: owns the libp2p swarm, publishes the engine's orders from the outbox,
//! validates inbound gossip and delivers peers' orders to subscribers.
//!
//! One task ([`Node::run`]) owns all state; the socket API talks to it through a
//! [`NodeHandle`] (commands on a channel). Flow control is by credits: the API takes one
//! credit per order before queueing it and the node returns the credit once the order is
//! published, so at most `publish.outboxCapacity` orders wait and a fast engine is pushed
//! back instead of anything being dropped.

mod behaviour;
mod subscribers;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use futures::StreamExt as _;
use libp2p::gossipsub::{self, MessageAcceptance, PublishError, TopicHash};
use libp2p::metrics::Recorder as _;
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm, identity::Keypair, kad, mdns};
use prometheus_client::registry::Registry;
use prost::Message as _;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub use behaviour::{Behaviour, BehaviourEvent, TRANSMIT_SLACK_BYTES, build_swarm};
pub use subscribers::EventStream;
use subscribers::Subscribers;

use crate::config::{BootstrapPeer, NodeSettings};
use crate::consensus::{Action, AddOutcome, BatchKey, Consensus};
use crate::dedup::Digest;
use crate::epoch::EpochClock;
use crate::metrics::{Health, MarketOutcome, ReasonLabel};
use crate::metrics::{KindMarket, MarketLabel, MarketReason, Metrics, QueueLabel};
use crate::outbox::Outbox;
use crate::proto::{
    self, GossipEnvelope, NodeStatus, Order, OrderGossip, PeerStatus, TopicMesh, event::Kind, gossip_envelope::Body,
};
use crate::proto::{RepairRequest, RepairResponse, repair_request, repair_response};
use crate::ratelimit::Pacer;
use crate::reputation::{Offence, Reputation};
use crate::topics::Topic;
use crate::validation::{Payload, Validator, ValidatorLimits, Verdict};
use crate::wire;

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
    /// Outbox capacity, orders (= credits).
    pub outbox_capacity: usize,
}

/// Where a submitted order went: its digest and epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Submitted {
    /// Order digest (SHA-256 of the canonical encoding).
    pub digest: Digest,
    /// Epoch of the batch the order joined.
    pub epoch: u64,
}

/// The node has stopped; the request cannot be served.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the gossip node is shutting down")]
pub struct NodeGone;

enum Command {
    Submit { orders: Vec<Order>, reply: Option<oneshot::Sender<Vec<Submitted>>> },
    Subscribe { markets: Vec<String>, reply: oneshot::Sender<Option<EventStream>> },
    Status { reply: oneshot::Sender<NodeStatus> },
    GetBatch { batch: BatchKey, reply: oneshot::Sender<Result<Vec<Order>, BatchError>> },
    SubmitResult { batch: BatchKey, hash: Digest, trades: u64, reply: oneshot::Sender<Result<(), BatchError>> },
    Seal { market: String, reply: oneshot::Sender<Result<BatchKey, BatchError>> },
    Reload { settings: Box<NodeSettings>, reply: oneshot::Sender<Vec<String>> },
}

/// The markets a node trades now (changed by a config reload), shared with the API.
pub type SharedMarkets = Arc<std::sync::RwLock<Arc<HashSet<String>>>>;

/// Why a batch request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// Unknown or already dropped batch.
    #[error("{0}")]
    NotFound(String),
    /// The batch is not in the right phase, or the call does not fit the sealing mode.
    #[error("{0}")]
    Precondition(String),
}

/// A cheap, cloneable handle to a running node.
#[derive(Clone)]
pub struct NodeHandle {
    tx: mpsc::UnboundedSender<Command>,
    credits: Arc<Semaphore>,
    info: Arc<NodeInfo>,
    markets: SharedMarkets,
}

impl NodeHandle {
    /// Static facts about the node.
    pub fn info(&self) -> &NodeInfo {
        &self.info
    }

    /// The markets traded now.
    pub fn markets(&self) -> Arc<HashSet<String>> {
        self.markets.read().expect("markets lock").clone()
    }

    /// Applies a new configuration (hot reload): markets, bootstrap peers, rate limits and
    /// reputation thresholds take effect now; returns notes on fields that need a restart.
    pub async fn reload(&self, settings: NodeSettings) -> Result<Vec<String>, NodeGone> {
        self.ask(|reply| Command::Reload { settings: Box::new(settings), reply }).await
    }

    /// Queues already-validated `orders` (from the engine) for gossip, waiting for outbox
    /// space first. With `want_receipts`, returns each order's digest and epoch once queued.
    /// `orders.len()` must not exceed the outbox capacity.
    pub async fn submit(&self, orders: Vec<Order>, want_receipts: bool) -> Result<Vec<Submitted>, NodeGone> {
        let n = u32::try_from(orders.len()).map_err(|_| NodeGone)?;
        self.credits.acquire_many(n).await.map_err(|_| NodeGone)?.forget();
        let (reply, rx) = if want_receipts {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        self.tx.send(Command::Submit { orders, reply }).map_err(|_| NodeGone)?;
        match rx {
            Some(rx) => rx.await.map_err(|_| NodeGone),
            None => Ok(Vec::new()),
        }
    }

    /// Opens an event subscription for `markets` (empty = all). `None` while shutting down.
    pub async fn subscribe(&self, markets: Vec<String>) -> Result<EventStream, NodeGone> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Subscribe { markets, reply }).map_err(|_| NodeGone)?;
        rx.await.map_err(|_| NodeGone)?.ok_or(NodeGone)
    }

    /// Current status: peers, listen addresses, mesh per topic, health.
    pub async fn status(&self) -> Result<NodeStatus, NodeGone> {
        self.ask(|reply| Command::Status { reply }).await
    }

    /// The orders of an agreed batch in canonical order.
    pub async fn batch(&self, batch: BatchKey) -> Result<Result<Vec<Order>, BatchError>, NodeGone> {
        self.ask(|reply| Command::GetBatch { batch, reply }).await
    }

    /// The engine's result for an agreed batch.
    pub async fn submit_result(
        &self,
        batch: BatchKey,
        hash: Digest,
        trades: u64,
    ) -> Result<Result<(), BatchError>, NodeGone> {
        self.ask(|reply| Command::SubmitResult { batch, hash, trades, reply }).await
    }

    /// Engine sealing: seals `market`'s current epoch.
    pub async fn seal(&self, market: String) -> Result<Result<BatchKey, BatchError>, NodeGone> {
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
pub struct Shutdown {
    /// Stop serving subscriptions (ends every event stream with UNAVAILABLE) so the API
    /// server can drain.
    pub closing: CancellationToken,
    /// Flush the outbox (bounded by [`FLUSH_DEADLINE`]), unsubscribe, and return.
    pub stop: CancellationToken,
}

/// How often batches are checked for sealing, agreement, repair and timeouts.
const CONSENSUS_TICK: Duration = Duration::from_millis(20);

/// An outstanding repair request.
enum PendingRepair {
    Digests(BatchKey),
    Fetch { batch: BatchKey, origin: PeerId, digests: HashSet<Digest> },
}

/// How long a stopping node keeps trying to publish what is left in its outbox.
pub const FLUSH_DEADLINE: Duration = Duration::from_secs(5);
/// Bootstrap peers not connected are redialled this often.
const REDIAL_INTERVAL: Duration = Duration::from_secs(2);
/// A market whose publish found no subscribed peer is retried after this long (or as soon
/// as a peer subscribes).
const NO_PEERS_RETRY: Duration = Duration::from_millis(250);
/// A market whose publish found every peer queue full is retried after this long.
const QUEUES_FULL_RETRY: Duration = Duration::from_millis(10);
/// Most commands handled before the outbox is flushed (bounds latency under load while
/// letting a backlog pack densely).
const COMMANDS_PER_TURN: usize = 256;

/// The node task's state.
pub struct Node {
    swarm: Swarm<Behaviour>,
    settings: NodeSettings,
    info: Arc<NodeInfo>,
    metrics: Arc<Metrics>,
    p2p_metrics: libp2p::metrics::Metrics,
    validator: Validator,
    outbox: Outbox,
    pacer: Pacer,
    credits: Arc<Semaphore>,
    subscribers: Subscribers,
    commands: mpsc::UnboundedReceiver<Command>,
    /// Per market: earliest instant of the next publish attempt after a failure.
    retry_at: HashMap<String, Instant>,
    /// When the pacer next has a token, if it ran out.
    pace_at: Option<Instant>,
    /// Last `PeerStatus` seen per peer.
    last_status: HashMap<PeerId, Instant>,
    topic_of: HashMap<TopicHash, Topic>,
    closing: bool,
    consensus: Consensus,
    epochs: EpochClock,
    reputation: Reputation,
    repairs: HashMap<OutboundRequestId, PendingRepair>,
    health: Arc<Health>,
    markets: SharedMarkets,
    /// Last disputed or halted batch, for the health report.
    last_trouble: Option<(Instant, String)>,
    /// Gossip messages received and not validated yet (see [`Node::validate_inbox`]).
    inbox: Vec<(PeerId, gossipsub::MessageId, gossipsub::Message)>,
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

impl Node {
    /// Builds the swarm, subscribes to every topic of the configured markets and starts
    /// listening. Returns the node (run it with [`Node::run`]) and its handle.
    pub fn new(
        settings: NodeSettings,
        key: Keypair,
        registry: &mut Registry,
        health: Arc<Health>,
    ) -> anyhow::Result<(Node, NodeHandle)> {
        let metrics = Arc::new(Metrics::register(registry));
        let p2p_registry = registry.sub_registry_with_prefix("libp2p");
        let mut swarm = build_swarm(key, &settings, p2p_registry)?;
        let p2p_metrics = libp2p::metrics::Metrics::new(p2p_registry);
        let c = &settings.config;
        let peer_id = *swarm.local_peer_id();
        let mut topic_of = HashMap::new();
        for t in Topic::all_for(&c.markets) {
            let ident = t.ident(&c.network);
            swarm.behaviour_mut().gossipsub.subscribe(&ident).context("subscribing to a topic")?;
            topic_of.insert(ident.hash(), t);
        }
        for addr in &settings.listen_addrs {
            swarm.listen_on(addr.clone()).with_context(|| format!("listening on {addr}"))?;
        }
        let limits = ValidatorLimits {
            max_message_bytes: c.limits.max_message_bytes as usize,
            max_freeze_proof_bytes: c.limits.max_freeze_proof_bytes as usize,
            rate_limit: c.limits.rate_limit,
            dedup_capacity: c.limits.dedup_capacity as usize,
        };
        let info = Arc::new(NodeInfo {
            peer_id,
            network: c.network.clone(),
            max_message_bytes: limits.max_message_bytes,
            max_freeze_proof_bytes: limits.max_freeze_proof_bytes,
            outbox_capacity: c.publish.outbox_capacity as usize,
        });
        let credits = Arc::new(Semaphore::new(info.outbox_capacity));
        let markets: SharedMarkets = Arc::new(std::sync::RwLock::new(Arc::new(c.markets.iter().cloned().collect())));
        let (tx, commands) = mpsc::unbounded_channel();
        let consensus = Consensus::new(c.consensus.clone());
        let epochs = EpochClock::new(&c.consensus);
        let reputation = Reputation::new(c.reputation.clone());
        let node = Node {
            validator: Validator::new(&c.network, &c.markets, limits.clone(), metrics.clone()),
            outbox: Outbox::new(c.publish.max_orders_per_message as usize, limits.max_message_bytes),
            pacer: Pacer::new(c.limits.rate_limit),
            subscribers: Subscribers::new(settings.subscriber_buffer, metrics.clone()),
            swarm,
            settings,
            info: info.clone(),
            metrics,
            p2p_metrics,
            credits: credits.clone(),
            commands,
            retry_at: HashMap::new(),
            pace_at: None,
            last_status: HashMap::new(),
            topic_of,
            closing: false,
            consensus,
            epochs,
            reputation,
            repairs: HashMap::new(),
            health,
            markets: markets.clone(),
            last_trouble: None,
            inbox: Vec::new(),
        };
        Ok((node, NodeHandle { tx, credits, info, markets }))
    }

    /// This node's metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Runs until `shutdown.stop`; then flushes the outbox (at most [`FLUSH_DEADLINE`]),
    /// unsubscribes from every topic and returns.
    pub async fn run(mut self, shutdown: Shutdown) {
        self.dial_bootstrap_peers();
        if let Some(kad) = self.swarm.behaviour_mut().kademlia.as_mut() {
            for p in &self.settings.bootstrap_peers {
                kad.add_address(&p.peer_id, p.addr.clone());
            }
        }
        let mut heartbeat =
            tokio::time::interval(Duration::from_millis(self.settings.config.heartbeat.interval_ms as u64));
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut redial = tokio::time::interval(REDIAL_INTERVAL);
        redial.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut kad_bootstrap = tokio::time::interval(Duration::from_secs(60));
        let mut consensus_tick = tokio::time::interval(CONSENSUS_TICK);
        consensus_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut flush_deadline: Option<tokio::time::Instant> = None;

        loop {
            let wake = self.next_wakeup();
            tokio::select! {
                biased;
                _ = shutdown.closing.cancelled(), if !self.closing => {
                    self.closing = true;
                    self.subscribers.close_all(tonic::Status::unavailable("the sidecar is shutting down"));
                }
                _ = shutdown.stop.cancelled(), if flush_deadline.is_none() => {
                    tracing::info!(pending = self.outbox.len(), "stopping: flushing the outbox");
                    flush_deadline = Some(tokio::time::Instant::now() + FLUSH_DEADLINE);
                    self.closing = true;
                    self.subscribers.close_all(tonic::Status::unavailable("the sidecar is shutting down"));
                }
                _ = async { tokio::time::sleep_until(flush_deadline.expect("guarded")).await }, if flush_deadline.is_some() => {
                    tracing::error!(lost = self.outbox.len(), "flush deadline passed with orders unpublished");
                    break;
                }
                Some(cmd) = self.commands.recv() => {
                    self.handle_command(cmd);
                    for _ in 1..COMMANDS_PER_TURN {
                        match self.commands.try_recv() {
                            Ok(cmd) => self.handle_command(cmd),
                            Err(_) => break,
                        }
                    }
                }
                event = self.swarm.select_next_some() => self.handle_swarm_event(event),
                _ = heartbeat.tick() => self.on_heartbeat(),
                _ = consensus_tick.tick() => self.on_consensus_tick(),
                _ = redial.tick() => self.dial_bootstrap_peers(),
                _ = kad_bootstrap.tick() => {
                    if let Some(kad) = self.swarm.behaviour_mut().kademlia.as_mut() {
                        let _ = kad.bootstrap();
                    }
                }
                _ = async { tokio::time::sleep_until(wake.expect("guarded").into()).await }, if wake.is_some() => {}
                // Messages taken in during the last round of validation are validated now.
                _ = std::future::ready(()), if !self.inbox.is_empty() => {}
            }
            self.validate_inbox().await;
            self.flush();
            if flush_deadline.is_some() && self.outbox.is_empty() {
                break;
            }
        }
        self.leave().await;
    }

    /// Unsubscribes from every topic and gives the swarm a moment to tell the peers.
    async fn leave(&mut self) {
        let topics: Vec<Topic> = self.topic_of.values().cloned().collect();
        for t in topics {
            self.swarm.behaviour_mut().gossipsub.unsubscribe(&t.ident(&self.info.network));
        }
        let linger = tokio::time::sleep(Duration::from_millis(200));
        tokio::pin!(linger);
        loop {
            tokio::select! {
                _ = &mut linger => break,
                _ = self.swarm.select_next_some() => {}
            }
        }
        self.credits.close();
        tracing::info!("node stopped");
    }

    fn next_wakeup(&self) -> Option<Instant> {
        if self.outbox.is_empty() {
            return None;
        }
        let retry = self.outbox.pending_markets().iter().filter_map(|m| self.retry_at.get(m).copied()).min();
        match (self.pace_at, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn handle_command(&mut self, cmd: Command) {
        match cmd {
            Command::Submit { orders, reply } => {
                let origin = bytes::Bytes::from(self.info.peer_id.to_bytes());
                let mut receipts = Vec::with_capacity(if reply.is_some() { orders.len() } else { 0 });
                let stamp = now_ns();
                let now_ms = stamp / 1_000_000;
                let mut per_market: HashMap<String, u64> = HashMap::new();
                for mut o in orders {
                    o.epoch = self.epochs.epoch_for(&o.market, now_ms);
                    if o.submitted_at_ns == 0 {
                        o.submitted_at_ns = stamp;
                    }
                    o.origin = origin.clone();
                    let digest = wire::order_digest(&o);
                    if reply.is_some() {
                        receipts.push(Submitted { digest, epoch: o.epoch });
                    }
                    if self.consensus.add_order(&o, digest) == AddOutcome::Late {
                        // Engine sealing closed this epoch already: the order is refused.
                        self.metrics.late_orders.get_or_create(&MarketLabel { market: o.market.clone() }).inc();
                        continue;
                    }
                    // The outbox keeps orders without origin: it is elided on the wire.
                    o.origin.clear();
                    match per_market.get_mut(&o.market) {
                        Some(n) => *n += 1,
                        None => {
                            per_market.insert(o.market.clone(), 1);
                        }
                    }
                    self.outbox.push(o);
                }
                for (market, n) in per_market {
                    self.metrics.orders_submitted.get_or_create(&MarketLabel { market }).inc_by(n);
                }
                self.metrics.outbox_orders.set(self.outbox.len() as i64);
                if let Some(reply) = reply {
                    let _ = reply.send(receipts);
                }
            }
            Command::Subscribe { markets, reply } => {
                let stream = (!self.closing).then(|| self.subscribers.add(markets));
                let _ = reply.send(stream);
            }
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::GetBatch { batch, reply } => {
                let result = self.consensus.agreed_orders(&batch).map_err(|phase| match self.consensus.phase(&batch) {
                    None => BatchError::NotFound(format!("batch {batch} is unknown or no longer kept")),
                    Some(_) => {
                        BatchError::Precondition(format!("batch {batch} is {phase:?}: only agreed batches are served"))
                    }
                });
                let _ = reply.send(result);
            }
            Command::SubmitResult { batch, hash, trades, reply } => {
                match self.consensus.submit_result(&batch, hash, trades, Instant::now()) {
                    Ok(actions) => {
                        let _ = reply.send(Ok(()));
                        self.run_actions(actions);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(BatchError::Precondition(e)));
                    }
                }
            }
            Command::Reload { settings, reply } => {
                let notes = self.apply_settings(*settings);
                let _ = reply.send(notes);
            }
            Command::Seal { market, reply } => {
                if self.epochs.mode() != openmatch_gossip_crds::sidecar_config::SealingMode::Engine {
                    let _ = reply.send(Err(BatchError::Precondition(
                        "the network seals by clock (consensus.sealing: clock)".into(),
                    )));
                } else if !self.settings.config.markets.contains(&market) {
                    let _ = reply.send(Err(BatchError::NotFound(format!("market {market:?} is not traded here"))));
                } else {
                    let epoch = self.epochs.advance(&market, self.consensus.highest_epoch(&market));
                    let key = BatchKey { market, epoch };
                    let actions = self.consensus.seal(&key, Instant::now());
                    let _ = reply.send(Ok(key));
                    self.run_actions(actions);
                }
            }
        }
    }

    /// Hot reload: applies markets (subscribing and unsubscribing their topics), bootstrap
    /// peers (dialled now), rate limits and reputation thresholds. Other fields keep their
    /// running values; the returned notes name each one that changed and needs a restart.
    fn apply_settings(&mut self, new: NodeSettings) -> Vec<String> {
        let old = self.settings.config.clone();
        let mut cfg = new.config.clone();
        let mut notes = Vec::new();
        macro_rules! restart_only {
            ($($field:ident).+, $name:expr) => {
                if cfg.$($field).+ != old.$($field).+ {
                    notes.push(format!("{} changed: takes effect after a restart", $name));
                    cfg.$($field).+ = old.$($field).+.clone();
                }
            };
        }
        restart_only!(network, "network");
        restart_only!(p2p.listen_addrs, "p2p.listenAddrs");
        restart_only!(p2p.mdns, "p2p.mdns");
        restart_only!(p2p.kademlia, "p2p.kademlia");
        restart_only!(gossipsub, "gossipsub");
        restart_only!(limits.max_message_bytes, "limits.maxMessageBytes");
        restart_only!(limits.max_freeze_proof_bytes, "limits.maxFreezeProofBytes");
        restart_only!(limits.dedup_capacity, "limits.dedupCapacity");
        restart_only!(publish, "publish");
        restart_only!(heartbeat, "heartbeat");
        restart_only!(consensus, "consensus");
        // Markets.
        let (before, after): (HashSet<String>, HashSet<String>) =
            (old.markets.iter().cloned().collect(), cfg.markets.iter().cloned().collect());
        for m in after.difference(&before) {
            for kind in crate::topics::TopicKind::PER_MARKET {
                let t = Topic { kind, market: m.clone() };
                let ident = t.ident(&self.info.network);
                if let Err(e) = self.swarm.behaviour_mut().gossipsub.subscribe(&ident) {
                    tracing::error!(market = m, error = %e, "could not subscribe");
                }
                self.topic_of.insert(ident.hash(), t);
            }
            tracing::info!(market = m, "market added: subscribed");
        }
        for m in before.difference(&after) {
            for kind in crate::topics::TopicKind::PER_MARKET {
                let ident = Topic { kind, market: m.clone() }.ident(&self.info.network);
                self.swarm.behaviour_mut().gossipsub.unsubscribe(&ident);
                self.topic_of.remove(&ident.hash());
            }
            tracing::info!(market = m, "market removed: unsubscribed");
        }
        self.validator.set_markets(&cfg.markets);
        *self.markets.write().expect("markets lock") = Arc::new(after);
        // Limits and reputation.
        if cfg.limits.rate_limit != old.limits.rate_limit {
            self.validator.set_rate_limit(cfg.limits.rate_limit);
            self.pacer = Pacer::new(cfg.limits.rate_limit);
            tracing::info!(rate = ?cfg.limits.rate_limit, "rate limits changed");
        }
        self.reputation.set_config(cfg.reputation.clone());
        // Bootstrap peers.
        self.settings.bootstrap_peers = new.bootstrap_peers;
        if let Some(kad) = self.swarm.behaviour_mut().kademlia.as_mut() {
            for p in &self.settings.bootstrap_peers {
                kad.add_address(&p.peer_id, p.addr.clone());
            }
        }
        self.settings.config = cfg;
        self.dial_bootstrap_peers();
        for n in &notes {
            tracing::warn!(note = n, "config reload");
        }
        notes
    }

    /// Live members besides this node: peers whose `PeerStatus` is within the liveness
    /// window, plus peers connected and subscribed to this network's control topic (so a
    /// node that just started, before any heartbeat arrived, does not believe itself alone
    /// and agree with itself).
    fn live_peers(&self) -> HashSet<PeerId> {
        let control = Topic::control().ident(&self.info.network).hash();
        let mut live: HashSet<PeerId> = self.last_status.keys().copied().collect();
        for (peer, topics) in self.swarm.behaviour().gossipsub.all_peers() {
            if topics.contains(&&control) && !self.reputation.is_banned(peer, Instant::now()) {
                live.insert(*peer);
            }
        }
        live
    }

    /// Seals due batches (clock mode), advances every batch and carries out the actions.
    fn on_consensus_tick(&mut self) {
        let now_ms = now_ns() / 1_000_000;
        let now = Instant::now();
        if self.epochs.mode() == openmatch_gossip_crds::sidecar_config::SealingMode::Clock {
            self.validator.set_max_epoch(Some(self.epochs.epoch_for("", now_ms) + 1));
            for key in self.consensus.collecting() {
                if self.epochs.seal_due(key.epoch, now_ms) {
                    let actions = self.consensus.seal(&key, now);
                    self.run_actions(actions);
                }
            }
        }
        let live = self.live_peers();
        let actions = self.consensus.tick(now, &live);
        self.run_actions(actions);
    }

    fn run_actions(&mut self, actions: Vec<Action>) {
        fn market_of(id: &Option<proto::BatchId>) -> String {
            id.as_ref().map(|b| b.market.clone()).unwrap_or_default()
        }
        for action in actions {
            match action {
                Action::PublishSeal(seal) => {
                    let market = market_of(&seal.batch_id);
                    self.metrics
                        .batches
                        .get_or_create(&MarketOutcome { market: market.clone(), outcome: "sealed" })
                        .inc();
                    self.publish_consensus(crate::topics::TopicKind::Batches, &market, Body::BatchSealed(seal));
                }
                Action::PublishResult(result) => {
                    let market = market_of(&result.batch_id);
                    self.publish_consensus(crate::topics::TopicKind::Results, &market, Body::TradeResult(result));
                }
                Action::RequestDigests { peer, batch } => {
                    self.metrics.batch_mismatches.get_or_create(&MarketLabel { market: batch.market.clone() }).inc();
                    let req = RepairRequest { kind: Some(repair_request::Kind::Digests(batch.to_proto())) };
                    let id = self.swarm.behaviour_mut().repair.send_request(&peer, req);
                    self.repairs.insert(id, PendingRepair::Digests(batch));
                }
                Action::FetchOrders { peer, batch, digests } => {
                    let req = RepairRequest {
                        kind: Some(repair_request::Kind::Fetch(proto::FetchOrders {
                            batch_id: Some(batch.to_proto()),
                            digests: digests.iter().map(|d| d.to_vec()).collect(),
                        })),
                    };
                    let id = self.swarm.behaviour_mut().repair.send_request(&peer, req);
                    self.repairs.insert(
                        id,
                        PendingRepair::Fetch { batch, origin: peer, digests: digests.into_iter().collect() },
                    );
                }
                Action::DeliverRepaired { market, orders } => self.subscribers.deliver_orders(&market, orders),
                Action::Agreed(a) => {
                    let market = market_of(&a.batch_id);
                    self.metrics
                        .batches
                        .get_or_create(&MarketOutcome { market: market.clone(), outcome: "agreed" })
                        .inc();
                    if a.repaired_orders > 0 {
                        self.metrics.batches.get_or_create(&MarketOutcome { market, outcome: "repaired" }).inc();
                    }
                    self.metrics.agreement_latency.observe(a.agreement_us as f64 * 1e-6);
                    self.subscribers.broadcast(Kind::BatchAgreed(a));
                }
                Action::Disputed(d) => {
                    let market = market_of(&d.batch_id);
                    self.metrics.batches.get_or_create(&MarketOutcome { market, outcome: "disputed" }).inc();
                    self.last_trouble = Some((Instant::now(), format!("batch disputed: {}", d.reason)));
                    self.subscribers.broadcast(Kind::BatchDisputed(d));
                    self.update_health();
                }
                Action::ResultAgreed(r) => {
                    let market = market_of(&r.batch_id);
                    self.metrics.batches.get_or_create(&MarketOutcome { market, outcome: "result_agreed" }).inc();
                    self.subscribers.broadcast(Kind::ResultAgreed(r));
                }
                Action::ResultMismatch(m) => {
                    let market = market_of(&m.batch_id);
                    self.metrics
                        .batches
                        .get_or_create(&MarketOutcome { market: market.clone(), outcome: "halted" })
                        .inc();
                    self.metrics.result_mismatches.get_or_create(&MarketLabel { market }).inc();
                    self.last_trouble = Some((Instant::now(), format!("batch halted: {}", m.reason)));
                    self.subscribers.broadcast(Kind::ResultMismatch(m));
                    self.update_health();
                }
                Action::Penalize { peer, reason } => self.penalize(peer, Offence::Minority, reason),
            }
        }
    }

    fn publish_consensus(&mut self, kind: crate::topics::TopicKind, market: &str, body: Body) {
        let topic = Topic { kind, market: market.to_owned() }.ident(&self.info.network);
        match self.swarm.behaviour_mut().gossipsub.publish(topic, wire::encode(body)) {
            Ok(_) => {
                self.metrics
                    .messages_published
                    .get_or_create(&KindMarket { kind: kind.as_str(), market: market.to_owned() })
                    .inc();
            }
            // Alone on the topic: nobody to compare with.
            Err(PublishError::NoPeersSubscribedToTopic) => {}
            Err(e) => tracing::warn!(market, kind = kind.as_str(), error = %e, "consensus message not published"),
        }
    }

    fn penalize(&mut self, peer: PeerId, offence: Offence, reason: &'static str) {
        let now = Instant::now();
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

    fn report_reputation(&self, now: Instant) {
        let summary = self.reputation.summary(now);
        self.metrics.banned_peers.set(summary.banned as i64);
        self.metrics.reputation_min.set(summary.min);
    }

    fn on_repair(&mut self, ev: request_response::Event<RepairRequest, RepairResponse>) {
        match ev {
            request_response::Event::Message {
                message: request_response::Message::Request { request, channel, .. },
                ..
            } => {
                let response = self.serve_repair(request);
                // The requester may have gone away meanwhile; nothing to do then.
                let _ = self.swarm.behaviour_mut().repair.send_response(channel, response);
            }
            request_response::Event::Message {
                peer,
                message: request_response::Message::Response { request_id, response },
                ..
            } => match (self.repairs.remove(&request_id), response.kind) {
                (Some(PendingRepair::Digests(_)), Some(repair_response::Kind::Digests(set))) => {
                    let actions = self.consensus.on_digest_set(&set);
                    self.run_actions(actions);
                }
                (Some(PendingRepair::Fetch { batch, origin, digests }), Some(repair_response::Kind::Orders(g))) => {
                    self.on_fetched(peer, batch, origin, digests, g.orders);
                }
                (Some(PendingRepair::Digests(batch) | PendingRepair::Fetch { batch, .. }), other) => {
                    tracing::warn!(%peer, batch = %batch, response = ?other, "repair request refused");
                    self.consensus.on_repair_failure(&batch);
                }
                (None, _) => {}
            },
            request_response::Event::OutboundFailure { peer, request_id, error, .. } => {
                if let Some(PendingRepair::Digests(batch) | PendingRepair::Fetch { batch, .. }) =
                    self.repairs.remove(&request_id)
                {
                    tracing::warn!(%peer, batch = %batch, %error, "repair request failed");
                    self.consensus.on_repair_failure(&batch);
                }
            }
            _ => {}
        }
    }

    fn serve_repair(&self, request: RepairRequest) -> RepairResponse {
        use repair_response::Kind as R;
        let kind = match request.kind {
            Some(repair_request::Kind::Digests(id)) => match self.consensus.digest_set(&BatchKey::from_proto(&id)) {
                Some(set) => R::Digests(set),
                None => R::Error(format!("batch {}#{} unknown", id.market, id.epoch)),
            },
            Some(repair_request::Kind::Fetch(f)) => {
                let Some(id) = f.batch_id else { return RepairResponse { kind: Some(R::Error("no batch id".into())) } };
                let digests: Vec<Digest> =
                    f.digests.iter().filter_map(|d| <Digest>::try_from(d.as_slice()).ok()).collect();
                match self.consensus.orders_for(&BatchKey::from_proto(&id), &digests) {
                    Some(orders) => R::Orders(OrderGossip { orders }),
                    None => R::Error(format!("batch {}#{} unknown", id.market, id.epoch)),
                }
            }
            None => R::Error("empty request".into()),
        };
        RepairResponse { kind: Some(kind) }
    }

    /// Orders fetched by repair: accepted only from their origin, only as asked, only for
    /// the batch asked about, and only if well-formed; they join the batch and reach the
    /// engine before its `BatchAgreed`.
    fn on_fetched(
        &mut self,
        peer: PeerId,
        batch: BatchKey,
        origin: PeerId,
        asked: HashSet<Digest>,
        orders: Vec<Order>,
    ) {
        let origin_bytes = origin.to_bytes();
        let mut good = Vec::new();
        let mut bad = 0;
        for o in orders {
            let d = wire::order_digest(&o);
            let ok = peer == origin
                && o.origin == origin_bytes
                && asked.contains(&d)
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
            tracing::warn!(%peer, batch = %batch, bad, "repair response carried orders that were not asked for or not the peer's own");
            self.penalize(peer, Offence::InvalidMessage, "bad_repair");
        }
        for (d, _) in &good {
            self.validator.remember(*d);
        }
        let added = self.consensus.on_fetched(&batch, good);
        if !added.is_empty() {
            tracing::info!(batch = %batch, orders = added.len(), %origin, "repaired missing orders");
            self.metrics
                .repaired_orders
                .get_or_create(&MarketLabel { market: batch.market.clone() })
                .inc_by(added.len() as u64);
            self.subscribers.deliver_orders(&batch.market, added);
        }
    }

    /// Publishes as much of the outbox as the pacer and the peers allow, one pack per
    /// market in turn.
    fn flush(&mut self) {
        let now = Instant::now();
        if self.pace_at.is_some_and(|t| t > now) {
            return;
        }
        self.pace_at = None;
        loop {
            let mut progressed = false;
            for market in self.outbox.pending_markets() {
                if self.retry_at.get(&market).is_some_and(|t| *t > now) {
                    continue;
                }
                if let Err(at) = self.pacer.try_acquire() {
                    self.pace_at = Some(at);
                    self.metrics.outbox_orders.set(self.outbox.len() as i64);
                    return;
                }
                progressed |= self.publish_pack(&market, now);
            }
            if !progressed {
                break;
            }
        }
        self.metrics.outbox_orders.set(self.outbox.len() as i64);
    }

    /// Publishes one pack of `market`; `true` if it went out. On the wire each order's
    /// origin and market are elided (implied by the signer and the topic).
    fn publish_pack(&mut self, market: &str, now: Instant) -> bool {
        let Some(mut orders) = self.outbox.take_pack(market) else { return false };
        let n = orders.len();
        for o in &mut orders {
            o.market.clear();
        }
        let mut envelope =
            GossipEnvelope { version: wire::WIRE_VERSION, body: Some(Body::Orders(OrderGossip { orders })) };
        let data = envelope.encode_to_vec();
        let topic = Topic::orders(market).ident(&self.info.network);
        match self.swarm.behaviour_mut().gossipsub.publish(topic, data) {
            Ok(_) => {
                self.retry_at.remove(market);
                self.credits.add_permits(n);
                let m = MarketLabel { market: market.to_owned() };
                self.metrics.orders_published.get_or_create(&m).inc_by(n as u64);
                self.metrics
                    .messages_published
                    .get_or_create(&KindMarket { kind: "orders", market: market.to_owned() })
                    .inc();
                self.metrics.orders_per_message.observe(n as f64);
                true
            }
            Err(e) => {
                let (reason, retry) = match e {
                    PublishError::NoPeersSubscribedToTopic => ("no_peers", NO_PEERS_RETRY),
                    PublishError::AllQueuesFull(_) => ("queues_full", QUEUES_FULL_RETRY),
                    other => {
                        // Signing or size failures cannot be fixed by retrying: the pack is
                        // dropped loudly (the outbox packs within the cap, so this is a bug).
                        tracing::error!(market, orders = n, error = %other, "publish failed; orders dropped");
                        self.credits.add_permits(n);
                        let l = MarketReason { market: market.to_owned(), reason: "publish_error" };
                        self.metrics.publish_retries.get_or_create(&l).inc();
                        return false;
                    }
                };
                tracing::debug!(market, orders = n, reason, "publish deferred; orders kept in the outbox");
                self.metrics.publish_retries.get_or_create(&MarketReason { market: market.to_owned(), reason }).inc();
                let Some(Body::Orders(OrderGossip { mut orders })) = envelope.body.take() else {
                    unreachable!("built above")
                };
                for o in &mut orders {
                    o.market = market.to_owned();
                }
                self.outbox.requeue_front(market, orders);
                self.retry_at.insert(market.to_owned(), now + retry);
                false
            }
        }
    }

    fn handle_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        self.p2p_metrics.record(&event);
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(ev)) => {
                self.p2p_metrics.record(&ev);
                self.on_gossipsub(ev);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(ev)) => {
                self.p2p_metrics.record(&ev);
                if let libp2p::identify::Event::Received { peer_id, info, .. } = ev
                    && let Some(kad) = self.swarm.behaviour_mut().kademlia.as_mut()
                {
                    for addr in info.listen_addrs {
                        kad.add_address(&peer_id, addr);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kademlia(ev)) => {
                self.p2p_metrics.record(&ev);
                if let kad::Event::RoutingUpdated { peer, .. } = ev
                    && !self.swarm.is_connected(&peer)
                {
                    let _ = self.swarm.dial(peer);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
                    if !self.swarm.is_connected(&peer) {
                        tracing::debug!(%peer, %addr, "mDNS discovered a peer");
                        let _ = self.swarm.dial(addr.with_p2p(peer).unwrap_or_else(|a| a));
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ev)) => self.p2p_metrics.record(&ev),
            SwarmEvent::Behaviour(BehaviourEvent::Repair(ev)) => self.on_repair(ev),
            SwarmEvent::ConnectionEstablished { peer_id, num_established, endpoint, .. } => {
                if num_established.get() == 1 {
                    tracing::info!(peer = %peer_id, addr = %endpoint.get_remote_address(), "peer connected");
                    self.subscribers.broadcast(Kind::PeerJoined(proto::PeerJoined { peer_id: peer_id.to_string() }));
                }
                self.metrics.peers.set(self.swarm.connected_peers().count() as i64);
                self.update_health();
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established, cause, .. } => {
                if num_established == 0 {
                    tracing::info!(peer = %peer_id, cause = ?cause, "peer disconnected");
                    self.last_status.remove(&peer_id);
                    self.subscribers.broadcast(Kind::PeerLeft(proto::PeerLeft { peer_id: peer_id.to_string() }));
                }
                self.metrics.peers.set(self.swarm.connected_peers().count() as i64);
                self.update_health();
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(addr = %address.clone().with_p2p(self.info.peer_id).unwrap_or(address), "listening");
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(peer = ?peer_id, %error, "dial failed");
            }
            _ => {}
        }
    }

    /// Validates the gossip messages received, delivers what they carry, and reports the
    /// verdicts to GossipSub (which forwards the accepted ones).
    ///
    /// Twice the node first yields and takes in what its connections have ready: before
    /// validating, so that the IDONTWANTs GossipSub queued on receipt (GossipSub v1.2) go
    /// out to the other mesh peers at once; and before reporting, so that the peers'
    /// IDONTWANTs for the same message are known when it is forwarded. In a full mesh every
    /// peer already has the message from its author, and a forward it declined is neither
    /// sent nor decrypted and verified there. The engine's delivery does not wait for the
    /// second yield.
    ///
    /// One round per turn of the node's loop: messages that arrive during the round wait
    /// for the next turn, so a flood of gossip cannot starve the engine's commands.
    async fn validate_inbox(&mut self) {
        if self.inbox.is_empty() {
            return;
        }
        tokio::task::yield_now().await;
        self.take_ready_swarm_events();
        let mut reports = Vec::with_capacity(self.inbox.len());
        for (source, id, message) in std::mem::take(&mut self.inbox) {
            reports.push((id, source, self.validate_message(source, message)));
        }
        tokio::task::yield_now().await;
        self.take_ready_swarm_events();
        for (id, source, acceptance) in reports {
            self.swarm.behaviour_mut().gossipsub.report_message_validation_result(&id, &source, acceptance);
        }
    }

    /// Handles the swarm events that are ready now, without waiting.
    fn take_ready_swarm_events(&mut self) {
        use futures::FutureExt as _;
        while let Some(event) = self.swarm.select_next_some().now_or_never() {
            self.handle_swarm_event(event);
        }
    }

    /// Validates one gossip message and acts on its payload; returns the verdict for
    /// GossipSub.
    fn validate_message(&mut self, propagation_source: PeerId, message: gossipsub::Message) -> MessageAcceptance {
        let verdict = self.validator.validate(
            &propagation_source,
            message.source.as_ref(),
            message.topic.as_str(),
            &message.data,
        );
        let acceptance = match &verdict {
            Verdict::Accept(_) => MessageAcceptance::Accept,
            Verdict::Reject { .. } => MessageAcceptance::Reject,
            Verdict::Ignore { .. } => MessageAcceptance::Ignore,
        };
        match verdict {
            Verdict::Reject { .. } => self.penalize(propagation_source, Offence::InvalidMessage, "invalid_message"),
            Verdict::Accept(payload) => self.on_payload(payload, message.source),
            Verdict::Ignore { .. } => {}
        }
        acceptance
    }

    fn on_gossipsub(&mut self, ev: gossipsub::Event) {
        match ev {
            gossipsub::Event::Message { propagation_source, message_id, message } => {
                self.inbox.push((propagation_source, message_id, message));
            }
            gossipsub::Event::Subscribed { peer_id, topic } => {
                tracing::debug!(peer = %peer_id, topic = %topic, "peer subscribed");
                // A market waiting for peers can try again right away.
                if let Some(t) = self.topic_of.get(&topic) {
                    self.retry_at.remove(&t.market);
                }
            }
            gossipsub::Event::SlowPeer { peer_id, failed_messages } => {
                tracing::warn!(peer = %peer_id, ?failed_messages, "GossipSub could not send to a slow peer in time");
                let f = failed_messages;
                for (queue, n) in [("priority", f.priority), ("non_priority", f.non_priority)] {
                    if n > 0 {
                        self.metrics.send_queue_failures.get_or_create(&QueueLabel { queue }).inc_by(n as u64);
                    }
                }
            }
            _ => {}
        }
    }

    fn on_payload(&mut self, payload: Payload, author: Option<PeerId>) {
        match payload {
            Payload::Orders { market, orders, digests } => {
                let now = now_ns();
                let mut fresh = Vec::with_capacity(orders.len());
                let mut late = 0u64;
                for (o, d) in orders.into_iter().zip(digests) {
                    if self.settings.fault.0.as_ref().is_some_and(|drop| drop(&o)) {
                        tracing::debug!(id = o.id, "fault injector dropped an inbound order");
                        continue;
                    }
                    if o.submitted_at_ns > 0 && now >= o.submitted_at_ns {
                        self.metrics.propagation_latency.observe((now - o.submitted_at_ns) as f64 * 1e-9);
                    }
                    match self.consensus.add_order(&o, d) {
                        AddOutcome::Added => fresh.push(o),
                        AddOutcome::Duplicate => {}
                        AddOutcome::Late => late += 1,
                    }
                }
                if late > 0 {
                    tracing::warn!(market, late, "orders arrived after their batch was agreed; not delivered");
                    self.metrics.late_orders.get_or_create(&MarketLabel { market: market.clone() }).inc_by(late);
                }
                let orders = fresh;
                if orders.is_empty() {
                    return;
                }
                self.metrics
                    .orders_delivered
                    .get_or_create(&MarketLabel { market: market.clone() })
                    .inc_by(orders.len() as u64);
                self.subscribers.deliver_orders(&market, orders);
            }
            Payload::PeerStatus(_) => {
                if let Some(peer) = author {
                    self.last_status.insert(peer, Instant::now());
                }
            }
            Payload::Consensus(body) => {
                let Some(author) = author else { return };
                match body {
                    Body::BatchSealed(seal) => {
                        self.consensus.on_peer_seal(author, &seal);
                    }
                    Body::TradeResult(result) => self.consensus.on_peer_result(author, &result),
                    _ => {}
                }
            }
        }
    }

    fn on_heartbeat(&mut self) {
        let now = Instant::now();
        for peer in self.reputation.expire_bans(now) {
            tracing::info!(%peer, "ban expired");
            self.swarm.behaviour_mut().blocked.unblock_peer(peer);
            self.swarm.behaviour_mut().gossipsub.set_application_score(&peer, 0.0);
        }
        self.report_reputation(now);
        self.update_health();
        let status = PeerStatus {
            node_id: self.info.peer_id.to_bytes(),
            epoch_id: self.epochs.epoch_for("", now_ns() / 1_000_000),
            phase: proto::Phase::Collect as i32,
            markets: self.settings.config.markets.clone(),
            version: crate::VERSION.to_owned(),
            sent_at_ns: now_ns(),
        };
        let control = Topic::control().ident(&self.info.network);
        match self.swarm.behaviour_mut().gossipsub.publish(control, wire::encode(Body::PeerStatus(status))) {
            Ok(_) => {
                self.metrics
                    .messages_published
                    .get_or_create(&KindMarket { kind: "control", market: String::new() })
                    .inc();
            }
            Err(PublishError::NoPeersSubscribedToTopic) => {}
            Err(e) => tracing::debug!(error = %e, "PeerStatus not published"),
        }
        let window = Duration::from_millis(self.settings.config.heartbeat.liveness_window_ms as u64);
        self.last_status.retain(|_, seen| seen.elapsed() <= window);
        self.metrics.live_peers.set(self.last_status.len() as i64);
        let gs = &self.swarm.behaviour().gossipsub;
        for (hash, t) in &self.topic_of {
            let n = gs.mesh_peers(hash).count();
            self.metrics
                .mesh_peers
                .get_or_create(&KindMarket { kind: t.kind.as_str(), market: t.market.clone() })
                .set(n as i64);
        }
        self.validator.rate_limiter().retain_recent();
    }

    /// healthy / degraded / isolated, with the reason, for `/healthz` and node status.
    fn update_health(&mut self) {
        let connected = self.swarm.connected_peers().count();
        let live = self.live_peers().len() + 1;
        let expected = self.settings.bootstrap_peers.iter().filter(|p| p.peer_id != self.info.peer_id).count();
        let quorum = match self.settings.config.consensus.quorum {
            0 => crate::consensus::majority(live),
            q => q as usize,
        };
        let recent_trouble =
            self.last_trouble.as_ref().filter(|(at, _)| at.elapsed() < Duration::from_secs(60)).map(|(_, r)| r.clone());
        let (state, reason, code) = if connected == 0 && expected > 0 {
            ("isolated", format!("no connected peers (bootstrap peers: {expected})"), 2)
        } else if live < quorum {
            ("degraded", format!("{live} live members, below the quorum of {quorum}"), 1)
        } else if let Some(r) = recent_trouble {
            ("degraded", r, 1)
        } else if self.reputation.summary(Instant::now()).banned > 0 {
            ("degraded", "a peer is banned".to_owned(), 1)
        } else {
            ("healthy", String::new(), 0)
        };
        self.metrics.health.set(code);
        *self.health.state.lock().expect("health lock") = (state.to_owned(), reason);
    }

    fn dial_bootstrap_peers(&mut self) {
        let missing: Vec<BootstrapPeer> = self
            .settings
            .bootstrap_peers
            .iter()
            .filter(|p| p.peer_id != self.info.peer_id && !self.swarm.is_connected(&p.peer_id))
            .cloned()
            .collect();
        for p in missing {
            if let Err(e) = self.swarm.dial(p.addr.clone()) {
                tracing::debug!(peer = %p.peer_id, addr = %p.addr, error = %e, "bootstrap dial not started");
            }
        }
    }

    fn status(&self) -> NodeStatus {
        let gs = &self.swarm.behaviour().gossipsub;
        let mut subscribed: HashMap<&TopicHash, u32> = HashMap::new();
        for (_, topics) in gs.all_peers() {
            for t in topics {
                *subscribed.entry(t).or_default() += 1;
            }
        }
        let mut topics: Vec<TopicMesh> = self
            .topic_of
            .iter()
            .map(|(hash, t)| TopicMesh {
                topic: t.name(&self.info.network),
                mesh_peers: gs.mesh_peers(hash).map(|p| p.to_string()).collect(),
                subscribed_peers: subscribed.get(hash).copied().unwrap_or(0),
            })
            .collect();
        topics.sort_by(|a, b| a.topic.cmp(&b.topic));
        let listen: HashSet<&Multiaddr> = self.swarm.listeners().collect();
        NodeStatus {
            peer_id: self.info.peer_id.to_string(),
            network: self.info.network.clone(),
            markets: self.settings.config.markets.clone(),
            listen_addrs: listen.into_iter().map(|a| a.to_string()).collect(),
            connected_peers: self.swarm.connected_peers().map(|p| p.to_string()).collect(),
            topics,
            version: crate::VERSION.to_owned(),
            health: {
                let (s, _) = self.health.state.lock().expect("health lock").clone();
                if s.is_empty() { "healthy".to_owned() } else { s }
            },
            health_reason: self.health.state.lock().expect("health lock").1.clone(),
        }
    }
}
