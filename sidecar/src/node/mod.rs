//! The gossip node: one task ([`Node::run`]) owns the libp2p swarm and all of the node's
//! state; the socket API talks to it through a [`NodeHandle`] (commands on a channel).
//!
//! The run loop is one `select!` over shutdown, engine commands, swarm events and timers.
//! Each concern is a file of `impl Node`:
//! - [`handle`]: the handle, its commands and the market set it reads;
//! - [`publish`]: the engine's orders out (stamp, batch, outbox, paced publishing), with
//!   [`own_orders`] for idempotent resubmission;
//! - [`inbound`]: gossip in (validation rounds, delivery to the engine);
//! - [`decide`]: consensus ticks and the actions they return;
//! - [`repair_io`]: repair requests and responses;
//! - [`peers`]: discovery, connections, heartbeats, live members;
//! - [`reconfigure`]: hot reload;
//! - [`health`]: health and status;
//! - [`subscribers`]: engine event streams; [`behaviour`]: the swarm itself.
//!
//! Flow control is by credits ([`crate::outbox::OutboxCredits`]): the API takes one
//! credit per order and one per byte of its charge before queueing it and the node
//! returns them once the order is published, so at most `publish.outboxCapacity` orders
//! and half of `--queue-memory-bytes` wait, and a fast engine is pushed back instead of
//! anything being dropped. The other half bounds the subscribers' queues
//! ([`subscribers`]), whose slowest reader is cut instead: one memory bound per node.

mod behaviour;
mod decide;
mod event_queue;
mod handle;
mod health;
mod inbound;
mod own_orders;
mod peers;
mod publish;
mod reconfigure;
mod recovery;
mod repair_io;
mod repair_server;
mod subscribers;
mod twins;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use libp2p::gossipsub;
use libp2p::metrics::Recorder as _;
use libp2p::swarm::SwarmEvent;
use libp2p::{PeerId, Swarm, identity::Keypair};
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};

use behaviour::Behaviour;
pub use behaviour::TRANSMIT_SLACK_BYTES;
pub(crate) use behaviour::{BehaviourEvent, build_swarm};
pub(crate) use handle::DuplicateId;
pub(crate) use handle::Shutdown;
use handle::{Command, Markets};
pub use handle::{NodeGone, NodeHandle, NodeInfo};
pub use health::{Degradation, Health};
use subscribers::Subscribers;
pub(crate) use subscribers::{EventStream, ResumeError};

use crate::config::NodeSettings;
use crate::consensus::Consensus;
use crate::epoch::EpochClock;
use crate::metrics::Metrics;
use crate::outbox::{Outbox, OutboxCredits};
use crate::ratelimit::Pacer;
use crate::reputation::Reputation;
use crate::topics::Topic;
use crate::validation::{Validator, ValidatorLimits};

/// How often batches are checked for sealing, agreement, repair and timeouts. The ticks
/// fall on multiples of this period in Unix time ([`consensus_ticks`]), and a batch is
/// also decided as soon as a peer's seal arrives, not at the next tick.
const CONSENSUS_TICK: Duration = Duration::from_millis(20);
/// How long a stopping node keeps trying to publish what is left in its outbox.
const FLUSH_DEADLINE: Duration = Duration::from_secs(5);
/// Bootstrap peers not connected are redialled this often.
const REDIAL_INTERVAL: Duration = Duration::from_secs(2);
/// Kademlia re-bootstraps this often.
const KAD_BOOTSTRAP_INTERVAL: Duration = Duration::from_secs(60);
/// Most commands handled before the outbox is flushed (bounds latency under load while
/// letting a backlog pack densely).
const COMMANDS_PER_TURN: usize = 256;

/// The consensus tick: every [`CONSENSUS_TICK`], at multiples of it in Unix time (a
/// missed tick is skipped, keeping the phase). Epoch ends plus grace fall on such
/// multiples with the defaults (1,000 ms epochs, 200 ms grace), so nodes whose clocks
/// agree seal a batch at the same instant rather than up to a tick apart, and a batch's
/// agreement waits for the seals' propagation only.
fn consensus_ticks() -> tokio::time::Interval {
    let period = CONSENSUS_TICK.as_nanos() as u64;
    let to_next = period - crate::epoch::unix_now_ns() % period;
    let first = tokio::time::Instant::now() + Duration::from_nanos(to_next);
    let mut ticks = tokio::time::interval_at(first, CONSENSUS_TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    ticks
}

/// A random name for this run of the node (the incarnation in event cursors): SipHash
/// with the process's random keys over the start time.
fn new_incarnation() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(crate::epoch::unix_now_ns());
    h.finish()
}

/// The node task's state.
pub(crate) struct Node {
    swarm: Swarm<Behaviour>,
    /// This node's identity key: signs each bundle of its orders it publishes
    /// ([`crate::bundle`]).
    key: libp2p::identity::ed25519::Keypair,
    /// The configuration in force, except `config.markets`: the market set lives in
    /// `markets`, its one copy.
    settings: NodeSettings,
    info: Arc<NodeInfo>,
    /// The markets traded now; the handle's receivers read this copy.
    markets: watch::Sender<Markets>,
    health: watch::Sender<Health>,
    metrics: Arc<Metrics>,
    p2p_metrics: libp2p::metrics::Metrics,
    validator: Validator,
    outbox: Outbox,
    pacer: Pacer,
    credits: Arc<OutboxCredits>,
    subscribers: Subscribers,
    commands: mpsc::UnboundedReceiver<Command>,
    /// Per market: earliest instant of the next publish attempt after a failure.
    retry_at: HashMap<String, Instant>,
    /// When the pacer next has a token, if it ran out.
    pace_at: Option<Instant>,
    /// Last `PeerStatus` seen per peer.
    last_status: HashMap<PeerId, Instant>,
    /// Every peer whose `PeerStatus` was ever heard: known members (see [`Node::members`]).
    heard: HashSet<PeerId>,
    /// Clock sealing: per market, the newest epoch whose batch is open.
    opened: HashMap<String, u64>,
    /// Learning this node's committed orders from its peers after a (re)start.
    recovery: recovery::Recovery,
    /// Whether recovery is done: submissions wait for it (the handle reads it).
    recovered: watch::Sender<bool>,
    closing: bool,
    /// A peer's seal arrived since the last decision: decide before the next tick.
    decide_pending: bool,
    consensus: Consensus,
    epochs: EpochClock,
    reputation: Reputation,
    repairs: repair_io::Requests,
    /// Per-peer bucket on inbound repair requests ([`repair_io::REPAIR_REQUESTS_PER_S`]).
    repair_rate: crate::ratelimit::PeerRateLimiter,
    /// This node's accepted orders by id (idempotent submission).
    own: own_orders::OwnOrders,
    /// Last disputed or halted batch, for the health report.
    last_trouble: Option<(Instant, Degradation)>,
    /// Gossip messages received and not validated yet (see [`Node::validate_inbox`]).
    inbox: Vec<(PeerId, gossipsub::MessageId, gossipsub::Message)>,
    /// This run of the node (its `PeerStatus` instance), for duplicate identity checks.
    run: twins::Run,
    /// When this run started.
    started: Instant,
    /// Runs heard of per peer ([`twins`]).
    instances: twins::Instances,
    /// A later process running with this node's identity key, and when last heard of.
    twin: Option<(twins::Run, Instant)>,
    /// Which connected peer the next identity check asks.
    identity_turn: usize,
    /// Why the node must stop (a duplicate identity it must yield to), once known.
    fatal: watch::Sender<Option<String>>,
}

impl Node {
    /// Builds the swarm, subscribes to every topic of the configured markets and starts
    /// listening. Returns the node (run it with [`Node::run`]), its handle and its metrics.
    ///
    /// Errors: a key that is not Ed25519, an invalid GossipSub configuration, a topic that
    /// cannot be subscribed, a listen address that cannot be bound.
    pub(crate) fn new(
        mut settings: NodeSettings,
        key: Keypair,
        registry: &mut Registry,
    ) -> anyhow::Result<(Node, NodeHandle, Arc<Metrics>)> {
        let metrics = Arc::new(Metrics::register(registry));
        let signer = key.clone().try_into_ed25519().context("the node's identity key must be Ed25519")?;
        // GossipSub's metrics under `libp2p_gossipsub_`; libp2p-metrics adds its own
        // `libp2p_` prefix to the swarm's, Kademlia's, Identify's and Ping's.
        let mut swarm = build_swarm(key, &settings, registry.sub_registry_with_prefix("libp2p"))?;
        let p2p_metrics = libp2p::metrics::Metrics::new(registry);
        let markets: BTreeSet<String> = std::mem::take(&mut settings.config.markets).into_iter().collect();
        for m in &markets {
            metrics.add_market(m);
        }
        let c = &settings.config;
        let peer_id = *swarm.local_peer_id();
        for t in Topic::all_for(markets.iter()) {
            swarm.behaviour_mut().gossipsub.subscribe(&t.ident(&c.network)).context("subscribing to a topic")?;
        }
        for addr in &settings.listen_addrs {
            swarm.listen_on(addr.clone()).with_context(|| format!("listening on {addr}"))?;
        }
        let limits = ValidatorLimits {
            max_message_bytes: c.limits.max_message_bytes as usize,
            max_freeze_proof_bytes: c.limits.max_freeze_proof_bytes as usize,
            rate_limit: c.limits.rate_limit,
            consensus_rate_limit: crate::ratelimit::consensus_budget(c, markets.len()),
            dedup_capacity: c.limits.dedup_capacity as usize,
        };
        let info = Arc::new(NodeInfo {
            peer_id,
            network: c.network.clone(),
            max_message_bytes: limits.max_message_bytes,
            max_freeze_proof_bytes: limits.max_freeze_proof_bytes,
            outbox_capacity: c.publish.outbox_capacity as usize,
            outbox_bytes: settings.queue_memory_bytes / 2,
        });
        let credits = Arc::new(OutboxCredits::new(info.outbox_capacity, info.outbox_bytes));
        metrics.queue_memory_bound.set(settings.queue_memory_bytes as i64);
        let (markets, markets_rx) = watch::channel(Arc::new(markets));
        let (health, health_rx) = watch::channel(Health::default());
        // Engine sealing has no recovery (the epochs are the engines' counters).
        let engine_sealing = c.consensus.sealing == openmatch_gossip_crds::sidecar_config::SealingMode::Engine;
        let (recovered, recovered_rx) = watch::channel(engine_sealing);
        let (fatal, fatal_rx) = watch::channel(None);
        let run = twins::Run { instance: new_incarnation(), started_at_ms: crate::epoch::unix_now_ns() / 1_000_000 };
        let (tx, commands) = mpsc::unbounded_channel();
        let node = Node {
            validator: Validator::new(&c.network, limits.clone(), metrics.clone()),
            outbox: Outbox::new(c.publish.max_orders_per_message as usize, limits.max_message_bytes),
            pacer: Pacer::new(c.limits.rate_limit),
            subscribers: Subscribers::new(
                subscribers::QueueLimits {
                    backlog_orders: settings.subscriber_buffer,
                    memory_bytes: settings.queue_memory_bytes - settings.queue_memory_bytes / 2,
                },
                settings.event_retention,
                run.instance,
                metrics.clone(),
            ),
            consensus: Consensus::new(c.consensus.clone()),
            epochs: EpochClock::new(&c.consensus),
            reputation: Reputation::new(c.reputation.clone()),
            swarm,
            key: signer,
            settings,
            info: info.clone(),
            markets,
            health,
            metrics: metrics.clone(),
            p2p_metrics,
            credits: credits.clone(),
            commands,
            retry_at: HashMap::new(),
            pace_at: None,
            last_status: HashMap::new(),
            heard: HashSet::new(),
            opened: HashMap::new(),
            recovery: if engine_sealing { recovery::Recovery::Done } else { recovery::Recovery::NotStarted },
            recovered,
            closing: false,
            decide_pending: false,
            repairs: Default::default(),
            repair_rate: crate::ratelimit::PeerRateLimiter::new(
                openmatch_gossip_crds::sidecar_config::RateLimitConfig {
                    messages_per_second: repair_io::REPAIR_REQUESTS_PER_S,
                    burst: repair_io::REPAIR_REQUEST_BURST,
                },
            ),
            own: Default::default(),
            last_trouble: None,
            inbox: Vec::new(),
            run,
            started: Instant::now(),
            instances: twins::Instances::default(),
            twin: None,
            identity_turn: 0,
            fatal,
        };
        let handle = NodeHandle {
            tx,
            credits,
            info,
            markets: markets_rx,
            health: health_rx,
            recovered: recovered_rx,
            fatal: fatal_rx,
        };
        Ok((node, handle, metrics))
    }

    /// Runs until `shutdown.stop`; then flushes the outbox (at most [`FLUSH_DEADLINE`]),
    /// closes every peer connection and returns.
    pub(crate) async fn run(mut self, shutdown: Shutdown) {
        self.dial_bootstrap_peers();
        self.seed_kademlia();
        let every = |period: Duration| {
            let mut t = tokio::time::interval(period);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        };
        let mut heartbeat = every(Duration::from_millis(self.settings.config.heartbeat.interval_ms as u64));
        let mut redial = every(REDIAL_INTERVAL);
        let mut kad_bootstrap = tokio::time::interval(KAD_BOOTSTRAP_INTERVAL);
        let mut consensus_tick = consensus_ticks();
        let mut flush_deadline: Option<tokio::time::Instant> = None;

        loop {
            let wake = self.next_publish_at();
            tokio::select! {
                biased;
                _ = shutdown.closing.cancelled(), if !self.closing => self.close_subscriptions(),
                _ = shutdown.stop.cancelled(), if flush_deadline.is_none() => {
                    tracing::info!(pending = self.outbox.len(), "stopping: flushing the outbox");
                    flush_deadline = Some(tokio::time::Instant::now() + FLUSH_DEADLINE);
                    self.close_subscriptions();
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
            if std::mem::take(&mut self.decide_pending) {
                self.on_consensus_tick();
            }
            self.flush();
            if flush_deadline.is_some() && self.outbox.is_empty() {
                break;
            }
        }
        self.leave().await;
    }

    /// Ends every event stream with UNAVAILABLE and refuses new subscriptions.
    fn close_subscriptions(&mut self) {
        self.closing = true;
        self.subscribers.close_all(tonic::Status::unavailable("the sidecar is shutting down"));
    }

    /// Closes every peer connection and gives the swarm a moment (at most 200 ms) to send
    /// the closes. It does not unsubscribe: an UNSUBSCRIBE makes each peer refuse this
    /// node's GRAFTs for the unsubscribe backoff, and a pod restarted within it (same
    /// identity) would then be kept out of the mesh for the prune backoff (60 s). A closed
    /// connection takes the node out of its peers' meshes with no backoff at all.
    async fn leave(&mut self) {
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for peer in peers {
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        let linger = tokio::time::sleep(Duration::from_millis(200));
        tokio::pin!(linger);
        while self.swarm.connected_peers().next().is_some() {
            tokio::select! {
                _ = &mut linger => break,
                _ = self.swarm.select_next_some() => {}
            }
        }
        self.credits.close();
        tracing::info!("node stopped");
    }

    fn handle_command(&mut self, cmd: Command) {
        match cmd {
            Command::Submit { orders, want_receipts, reply } => {
                let _ = reply.send(self.submit(orders, want_receipts));
            }
            Command::Subscribe { markets, resume_after, reply } => {
                let stream = (!self.closing).then(|| self.subscribers.add(markets, resume_after));
                let _ = reply.send(stream);
            }
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::GetBatch { batch, reply } => {
                let _ = reply.send(self.agreed_batch(&batch));
            }
            Command::SubmitResult { batch, hash, trades, reply } => {
                let _ = reply.send(self.submit_result(&batch, hash, trades));
            }
            Command::Seal { market, reply } => {
                let _ = reply.send(self.seal_by_engine(market));
            }
            Command::Reload { settings, reply } => {
                let _ = reply.send(self.apply_settings(*settings));
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
            SwarmEvent::Behaviour(BehaviourEvent::Repair(ev)) => self.on_repair(ev),
            SwarmEvent::Behaviour(BehaviourEvent::RepairServer(ev)) => self.on_repair_request(ev),
            other => self.on_peer_event(other),
        }
    }
}
