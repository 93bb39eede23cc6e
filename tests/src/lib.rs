//! Test harness for the workspace-level integration tests in `tests/it/`.
//!
//! Everything runs in one process: sidecars are started in-process with
//! [`openmatch_gossip_sidecar::server::start`] and talk to each other over the libp2p
//! in-memory transport (`/memory/<port>`), engines talk to them over their real Unix
//! sockets (gRPC), and hostile peers are bare GossipSub swarms ([`RawPeer`]) that can send
//! whatever bytes a test wants.
//!
//! Every wait in here is a condition polled against a deadline that panics with a
//! description of what was being waited for and what was seen instead; nothing sleeps and
//! hopes.

use std::collections::HashSet;
use std::ops::Deref;
use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use libp2p::core::transport::MemoryTransport;
use libp2p::core::upgrade::Version;
use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity, ValidationMode};
use libp2p::identity::Keypair;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm, Transport as _, noise, yamux};
use openmatch_gossip_crds::SidecarConfig;
use openmatch_gossip_sidecar::Topic;
pub use openmatch_gossip_sidecar::config::FaultInjector;
use openmatch_gossip_sidecar::config::NodeSettings;
use openmatch_gossip_sidecar::proto::sidecar_client::SidecarClient;
use openmatch_gossip_sidecar::proto::{
    Event, GossipEnvelope, NodeStatus, Order, OrderGossip, OrderKind, Side, SubscribeRequest, event::Kind,
    gossip_envelope::Body,
};
use openmatch_gossip_sidecar::server::RunningSidecar;
use openmatch_gossip_sidecar::unix_now_ns;
use tokio::sync::{mpsc, oneshot};
use tonic::Streaming;
use tonic::transport::Channel;

/// The crate under test, re-exported for convenience.
pub use openmatch_gossip_sidecar as sidecar;

/// Network name every test node uses.
pub const NETWORK: &str = "test";
/// Market most tests trade.
pub const BTC: &str = "BTC-USDT";
/// Second market, for multi-market tests.
pub const ETH: &str = "ETH-USDT";
/// Default deadline for waits that should be quick (mesh forming, a few orders arriving).
pub const WAIT: Duration = Duration::from_secs(10);
/// How often conditions are polled.
const POLL: Duration = Duration::from_millis(20);

/// A gRPC client of the engine API.
pub type Client = SidecarClient<Channel>;
/// A `Subscribe` event stream.
pub type Events = Streaming<Event>;

/// Installs a `tracing` subscriber once per test binary, filtered by `RUST_LOG` (default:
/// warnings only), writing through the test harness's captured output.
pub fn init_tracing() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    });
}

/// A fresh `/memory/<port>` address. Ports come from a process-wide counter seeded from
/// the process id, so parallel tests in one binary never collide, and neither do test
/// binaries (the memory transport's port space is per process anyway).
pub fn memory_addr() -> Multiaddr {
    static NEXT: OnceLock<AtomicU64> = OnceLock::new();
    let next = NEXT.get_or_init(|| AtomicU64::new(u64::from(std::process::id()) << 20 | 1));
    format!("/memory/{}", next.fetch_add(1, Ordering::Relaxed)).parse().expect("valid memory multiaddr")
}

/// Polls `check` every few ms until it returns `Ok`, or panics after `timeout` naming
/// `what` and showing the last `Err`, which should describe what was seen instead.
pub async fn wait_for<T>(timeout: Duration, what: &str, mut check: impl AsyncFnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(seen) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen:\n  {seen}")
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// Polls a synchronous condition (typically on metrics) until it holds or `timeout`
/// passes; the panic names `what` and shows `describe()`.
pub async fn wait_until(timeout: Duration, what: &str, cond: impl Fn() -> bool, describe: impl Fn() -> String) {
    wait_for(timeout, what, async || if cond() { Ok(()) } else { Err(describe()) }).await
}

/// A sidecar started by [`start_node`], with what a test needs to reach it. Derefs to the
/// [`RunningSidecar`] (`node.node.status()`, `node.metrics`, `node.socket`, ...).
pub struct TestNode {
    /// Name given at start (file names `<name>.sock`, `<name>.key` in the test directory).
    pub name: String,
    /// The `/memory/<port>` address it listens on (without `/p2p/`).
    pub listen: Multiaddr,
    /// The running sidecar.
    pub sidecar: RunningSidecar,
}

impl Deref for TestNode {
    type Target = RunningSidecar;
    fn deref(&self) -> &RunningSidecar {
        &self.sidecar
    }
}

impl TestNode {
    /// Its peer id.
    pub fn peer_id(&self) -> PeerId {
        self.sidecar.peer_id
    }

    /// Its address for other nodes' bootstrap lists: `/memory/<port>/p2p/<peer id>`.
    pub fn bootstrap_addr(&self) -> String {
        format!("{}/p2p/{}", self.listen, self.peer_id())
    }

    /// A new gRPC client over its socket (its own connection).
    pub async fn client(&self) -> Client {
        connect(&self.socket).await
    }

    /// Opens a `Subscribe` stream for all of its markets on a new connection.
    pub async fn subscribe(&self) -> Events {
        let mut c = self.client().await;
        c.subscribe(SubscribeRequest { markets: vec![], resume_after: None }).await.expect("Subscribe").into_inner()
    }

    /// Its status (panics if the node is gone).
    pub async fn status(&self) -> NodeStatus {
        self.sidecar.node.status().await.expect("node is running")
    }

    /// Shuts it down in order (see [`RunningSidecar::shutdown`]), within 20 s.
    pub async fn shutdown(self) {
        let name = self.name;
        tokio::time::timeout(Duration::from_secs(20), self.sidecar.shutdown())
            .await
            .unwrap_or_else(|_| panic!("node {name} did not shut down within 20 s"))
            .expect("shutdown");
    }
}

/// Starts a sidecar named `name` in `dir` trading `markets` on network [`NETWORK`],
/// listening on a fresh memory address and dialling `bootstrap` (addresses from
/// [`TestNode::bootstrap_addr`]). The socket is `dir/<name>.sock` and the identity key
/// `dir/<name>.key` (created if absent, so restarting with the same name keeps the peer
/// id); the metrics server binds 127.0.0.1:0. `tweak` may change any configuration field
/// before the settings are validated (except `p2p.listenAddrs`, which the harness owns).
pub async fn start_node(
    dir: &Path,
    name: &str,
    markets: &[&str],
    bootstrap: Vec<String>,
    tweak: impl FnOnce(&mut SidecarConfig),
) -> TestNode {
    start_node_at(dir, name, memory_addr(), markets, bootstrap, tweak, |s| s).await
}

/// [`start_node`] with `settings` applied to the node's settings last (the per-process
/// flags, e.g. `queue_memory_bytes`).
pub async fn start_node_with_settings(
    dir: &Path,
    name: &str,
    markets: &[&str],
    bootstrap: Vec<String>,
    tweak: impl FnOnce(&mut SidecarConfig),
    settings: impl FnOnce(NodeSettings) -> NodeSettings,
) -> TestNode {
    start_node_at(dir, name, memory_addr(), markets, bootstrap, tweak, settings).await
}

/// [`start_node`] with faults injected (`FaultInjector::dropping(|o| …)`: inbound gossip
/// orders it picks are lost on the way in, and repair can still bring them).
pub async fn start_node_with_fault(
    dir: &Path,
    name: &str,
    markets: &[&str],
    bootstrap: Vec<String>,
    tweak: impl FnOnce(&mut SidecarConfig),
    fault: FaultInjector,
) -> TestNode {
    start_node_at(dir, name, memory_addr(), markets, bootstrap, tweak, |s| NodeSettings { fault, ..s }).await
}

/// [`start_node`] on a given listen address.
async fn start_node_at(
    dir: &Path,
    name: &str,
    listen: Multiaddr,
    markets: &[&str],
    bootstrap: Vec<String>,
    tweak: impl FnOnce(&mut SidecarConfig),
    adjust: impl FnOnce(NodeSettings) -> NodeSettings,
) -> TestNode {
    init_tracing();
    let mut config = SidecarConfig {
        network: NETWORK.to_owned(),
        markets: markets.iter().map(|m| m.to_string()).collect(),
        ..SidecarConfig::default()
    };
    config.p2p.bootstrap_peers = bootstrap;
    tweak(&mut config);
    config.p2p.listen_addrs = vec![listen.to_string()];
    let key_path = dir.join(format!("{name}.key"));
    let settings = NodeSettings::new(
        config,
        dir.join(format!("{name}.sock")),
        key_path.clone(),
        "127.0.0.1:0".parse().expect("socket addr"),
    )
    .unwrap_or_else(|e| panic!("node {name}: invalid settings: {e:#}"));
    let settings = adjust(settings);
    let key = sidecar::identity::load_or_create(&key_path).expect("identity key");
    let sidecar =
        sidecar::server::start(settings, key).await.unwrap_or_else(|e| panic!("node {name} did not start: {e:#}"));
    TestNode { name: name.to_owned(), listen, sidecar }
}

/// Starts `n` nodes named `n0`, `n1`, ... in `dir`, each with every other node in its
/// bootstrap list, and the same `tweak` applied to all. Does not wait for the mesh: see
/// [`wait_for_mesh`].
pub async fn start_cluster(
    dir: &Path,
    n: usize,
    markets: &[&str],
    tweak: impl Fn(&mut SidecarConfig),
) -> Vec<TestNode> {
    // Identities and addresses first, so that every node can bootstrap from every other.
    let plan: Vec<(String, Multiaddr, String)> = (0..n)
        .map(|i| {
            let name = format!("n{i}");
            let key = sidecar::identity::load_or_create(&dir.join(format!("{name}.key"))).expect("identity key");
            let listen = memory_addr();
            let addr = format!("{listen}/p2p/{}", key.public().to_peer_id());
            (name, listen, addr)
        })
        .collect();
    let mut nodes = Vec::with_capacity(n);
    for (i, (name, listen, _)) in plan.iter().enumerate() {
        let bootstrap = plan.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, (_, _, a))| a.clone()).collect();
        nodes.push(start_node_at(dir, name, listen.clone(), markets, bootstrap, &tweak, |s| s).await);
    }
    nodes
}

/// Names of the orders topics in `status` that lack one of `peers` as a subscriber (and,
/// with `mesh`, as a mesh member): empty when `status` sees all of them.
fn incomplete_topics(status: &NodeStatus, peers: &[String], mesh: bool) -> Vec<String> {
    let orders = format!("openmatch/{NETWORK}/orders/");
    status
        .topics
        .iter()
        .filter(|t| t.topic.starts_with(&orders))
        .filter(|t| {
            (t.subscribed_peers as usize) < peers.len() || mesh && peers.iter().any(|p| !t.mesh_peers.contains(p))
        })
        .map(|t| t.topic.clone())
        .collect()
}

/// Waits until every node has every other node subscribed and in its GossipSub mesh on
/// every orders topic; panics after `timeout` showing each node's topics.
pub async fn wait_for_mesh<'a>(nodes: impl IntoIterator<Item = &'a TestNode>, timeout: Duration) {
    wait_for_peers(&nodes.into_iter().collect::<Vec<_>>(), timeout, true).await
}

/// Waits until every node knows every other node to be subscribed to every orders topic
/// (enough for a publish to reach them: nodes flood their own messages to all subscribed
/// peers), mesh or not; panics after `timeout` showing each node's topics.
pub async fn wait_for_subscribed<'a>(nodes: impl IntoIterator<Item = &'a TestNode>, timeout: Duration) {
    wait_for_peers(&nodes.into_iter().collect::<Vec<_>>(), timeout, false).await
}

async fn wait_for_peers(nodes: &[&TestNode], timeout: Duration, mesh: bool) {
    let ids: Vec<String> = nodes.iter().map(|n| n.peer_id().to_string()).collect();
    let what = if mesh { "a full mesh" } else { "every peer subscribed" };
    wait_for(timeout, &format!("{what} among {} nodes on every orders topic", nodes.len()), async || {
        let mut report = Vec::new();
        let mut done = true;
        for (i, node) in nodes.iter().enumerate() {
            let status = node.status().await;
            let others: Vec<String> = ids.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, p)| p.clone()).collect();
            let missing = incomplete_topics(&status, &others, mesh);
            done &= missing.is_empty();
            let topics: Vec<_> = status.topics.iter().map(|t| (&t.topic, t.subscribed_peers, &t.mesh_peers)).collect();
            report.push(format!(
                "{} ({}): connected {:?}, topics (name, subscribed, mesh) {topics:?}, incomplete {missing:?}",
                node.name, status.peer_id, status.connected_peers
            ));
        }
        if done { Ok(()) } else { Err(report.join("\n  ")) }
    })
    .await
}

/// Shuts all `nodes` down concurrently.
pub async fn shutdown_all(nodes: Vec<TestNode>) {
    futures::future::join_all(nodes.into_iter().map(TestNode::shutdown)).await;
}

/// Connects a gRPC client to the socket at `path` (panics on failure).
pub async fn connect(path: &Path) -> Client {
    sidecar::api::connect(path).await.unwrap_or_else(|e| panic!("connecting to {}: {e:#}", path.display()))
}

/// A valid limit order as an engine submits it: `origin` and `epoch` empty, every other
/// field set to something distinctive derived from `id`.
pub fn order(market: &str, id: u64) -> Order {
    Order {
        id,
        market: market.to_owned(),
        side: if id.is_multiple_of(2) { Side::Buy } else { Side::Sell } as i32,
        price_ticks: 6_000_000 + id,
        quantity_lots: 1 + id % 97,
        kind: OrderKind::Limit as i32,
        client_ts_ns: 1_723_161_256_000_000_000 + id,
        origin: Default::default(),
        epoch: 0,
        freeze_proof: vec![],
        submitted_at_ns: unix_now_ns(),
    }
}

/// The next event of `events` within `timeout`; `None` if the deadline passed with none.
/// Panics if the stream ends or fails.
pub async fn next_event(events: &mut Events, timeout: Duration) -> Option<Event> {
    match tokio::time::timeout(timeout, events.next()).await {
        Err(_) => None,
        Ok(Some(Ok(ev))) => Some(ev),
        Ok(Some(Err(status))) => panic!("event stream failed: {status}"),
        Ok(None) => panic!("event stream ended"),
    }
}

/// Collects exactly `n` orders from `events` (skipping peer joined/left events), or
/// panics after `timeout` saying how many arrived. Fails if more than `n` arrive in the
/// event that completes the count.
pub async fn collect_orders(events: &mut Events, n: usize, timeout: Duration) -> Vec<Order> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match next_event(events, left).await {
            Some(Event { kind: Some(Kind::Orders(o)), .. }) => got.extend(o.orders),
            Some(_) => {}
            None => panic!("timed out after {timeout:?}: received {} of {n} orders: {:?}", got.len(), ids(&got)),
        }
    }
    assert_eq!(got.len(), n, "more orders than expected: {:?}", ids(&got));
    got
}

/// Asserts that no orders arrive on `events` within `quiet` (peer events are skipped).
/// This is the one deliberate wait without a condition: proving an absence.
pub async fn expect_no_orders(events: &mut Events, quiet: Duration) {
    let deadline = tokio::time::Instant::now() + quiet;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match next_event(events, left).await {
            None => return,
            Some(Event { kind: Some(Kind::Orders(o)), .. }) => panic!("unexpected orders: {:?}", o.orders),
            Some(_) => {}
        }
    }
}

/// The ids of `orders`, for messages.
pub fn ids(orders: &[Order]) -> Vec<u64> {
    orders.iter().map(|o| o.id).collect()
}

/// Metric readers over [`RunningSidecar::metrics`] (label sets spelled out once here).
pub mod metric {
    use openmatch_gossip_sidecar::metrics::{
        KindMarket, KindMarketReason, MarketLabel, MarketOutcome, MarketReason, MarketSource, MethodCode, ReasonLabel,
    };
    use openmatch_gossip_sidecar::server::RunningSidecar;

    fn orders(market: &str) -> KindMarket {
        KindMarket { kind: "orders", market: market.to_owned() }
    }

    /// `messages_received{kind="orders", market}`.
    pub fn received(n: &RunningSidecar, market: &str) -> u64 {
        n.metrics.messages_received.get_or_create(&orders(market)).get()
    }

    /// `messages_rejected{kind="orders", market, reason}`.
    pub fn rejected(n: &RunningSidecar, market: &str, reason: &'static str) -> u64 {
        let l = KindMarketReason { kind: "orders", market: market.to_owned(), reason };
        n.metrics.messages_rejected.get_or_create(&l).get()
    }

    /// `messages_rejected{kind, market, reason}` for any topic kind (`batches`, `results`…).
    pub fn rejected_on(n: &RunningSidecar, kind: &'static str, market: &str, reason: &'static str) -> u64 {
        let l = KindMarketReason { kind, market: market.to_owned(), reason };
        n.metrics.messages_rejected.get_or_create(&l).get()
    }

    /// `messages_stale{kind, market}`: ignored for an epoch older than the window.
    pub fn stale(n: &RunningSidecar, kind: &'static str, market: &str) -> u64 {
        n.metrics.messages_stale.get_or_create(&KindMarket { kind, market: market.to_owned() }).get()
    }

    /// `messages_rate_limited{kind="orders", market}`.
    pub fn rate_limited(n: &RunningSidecar, market: &str) -> u64 {
        n.metrics.messages_rate_limited.get_or_create(&orders(market)).get()
    }

    /// `messages_rate_limited{kind, market}` for any topic kind (`batches`, `results`, and
    /// `control` with market `""`).
    pub fn rate_limited_on(n: &RunningSidecar, kind: &'static str, market: &str) -> u64 {
        n.metrics.messages_rate_limited.get_or_create(&KindMarket { kind, market: market.to_owned() }).get()
    }

    /// Reputation penalties this node gave, all reasons.
    pub fn penalties(n: &RunningSidecar) -> u64 {
        ["batch_minority", "result_minority", "invalid_message", "bad_repair", "unserved_repair"]
            .into_iter()
            .map(|reason| penalties_for(n, reason))
            .sum()
    }

    /// Reputation penalties this node gave for `reason` (`bad_repair`, …).
    pub fn penalties_for(n: &RunningSidecar, reason: &'static str) -> u64 {
        n.metrics.penalties.get_or_create(&ReasonLabel { reason }).get()
    }

    /// Peers this node has banned now.
    pub fn banned_peers(n: &RunningSidecar) -> i64 {
        n.metrics.banned_peers.get()
    }

    /// `late_orders{market, source="peer"}`: peers' orders that arrived after this node
    /// sealed their batch.
    pub fn late(n: &RunningSidecar, market: &str) -> u64 {
        n.metrics.late_orders.get_or_create(&MarketSource { market: market.to_owned(), source: "peer" }).get()
    }

    /// `messages_duplicate{kind="orders", market}`.
    pub fn duplicate_messages(n: &RunningSidecar, market: &str) -> u64 {
        n.metrics.messages_duplicate.get_or_create(&orders(market)).get()
    }

    /// `orders_duplicate{market}`.
    pub fn duplicate_orders(n: &RunningSidecar, market: &str) -> u64 {
        n.metrics.orders_duplicate.get_or_create(&MarketLabel { market: market.to_owned() }).get()
    }

    /// `orders_delivered{market}`.
    pub fn delivered(n: &RunningSidecar, market: &str) -> u64 {
        n.metrics.orders_delivered.get_or_create(&MarketLabel { market: market.to_owned() }).get()
    }

    /// `batches{market, outcome}`, e.g. `batches(n, "BTC-USDT", "sealed")`.
    pub fn batches(n: &RunningSidecar, market: &str, outcome: &'static str) -> u64 {
        n.metrics.batches.get_or_create(&MarketOutcome { market: market.to_owned(), outcome }).get()
    }

    /// This node's own orders of `market` by fate, `committed` or `excluded`.
    pub fn order_outcomes(n: &RunningSidecar, market: &str, outcome: &'static str) -> u64 {
        n.metrics.order_outcomes.get_or_create(&MarketOutcome { market: market.into(), outcome }).get()
    }

    /// Batches of `market` whose seal at this node lost to the quorum's (it adopted theirs).
    pub fn batch_mismatches(n: &RunningSidecar, market: &str) -> u64 {
        n.metrics.batch_mismatches.get_or_create(&MarketLabel { market: market.into() }).get()
    }

    /// Orders repaired into batches of `market`.
    pub fn repaired_orders(n: &RunningSidecar, market: &str) -> u64 {
        n.metrics.repaired_orders.get_or_create(&MarketLabel { market: market.into() }).get()
    }

    /// Orders of `market` refused from repair or recovery answers, by `reason`
    /// (`not_asked`, `invalid`, `no_proof`, `bad_signature`).
    pub fn repair_orders_refused(n: &RunningSidecar, market: &str, reason: &'static str) -> u64 {
        let l = MarketReason { market: market.into(), reason };
        n.metrics.repair_orders_refused.get_or_create(&l).get()
    }

    /// Batches of `market` halted because a member's result differed from this node's.
    pub fn result_mismatches(n: &RunningSidecar, market: &str) -> u64 {
        n.metrics.result_mismatches.get_or_create(&MarketLabel { market: market.into() }).get()
    }

    /// Batches of `market` whose result here differed from a strict majority's.
    pub fn results_outvoted(n: &RunningSidecar, market: &str) -> u64 {
        n.metrics.results_outvoted.get_or_create(&MarketLabel { market: market.into() }).get()
    }

    /// `api_requests{method, code}`, e.g. `api(n, "Sidecar/SubmitOrder", tonic::Code::InvalidArgument)`.
    pub fn api(n: &RunningSidecar, method: &str, code: tonic::Code) -> u64 {
        let l = MethodCode { method: method.to_owned(), code: format!("{code:?}") };
        n.metrics.api_requests.get_or_create(&l).get()
    }
}

// ---------------------------------------------------------------------------------------
// Raw peer
// ---------------------------------------------------------------------------------------

/// Largest RPC a [`RawPeer`] sends (4 MiB): far above a node's cap and transmit size, so
/// it can send messages that only the node's side refuses.
pub const RAW_MAX_TRANSMIT: usize = 4 << 20;

enum RawCommand {
    Dial(Multiaddr, oneshot::Sender<Result<(), String>>),
    Publish(IdentTopic, Vec<u8>, oneshot::Sender<Result<(), gossipsub::PublishError>>),
    /// Peers this swarm knows to be subscribed to the topic.
    Subscribed(IdentTopic, oneshot::Sender<Vec<PeerId>>),
}

/// A hostile (or merely hand-driven) peer: a bare libp2p swarm with only GossipSub
/// (signed messages, strict validation, no application validation) over the memory
/// transport with Noise and Yamux. It publishes whatever bytes it is given; it cannot
/// forge the GossipSub signature, so the message author is always [`RawPeer::peer_id`].
/// The swarm runs in a spawned task driven through a command channel; it stops when the
/// `RawPeer` is dropped.
pub struct RawPeer {
    /// Its peer id (= the author of everything it publishes).
    pub peer_id: PeerId,
    /// Its identity key, which signs the bundles [`RawPeer::publish`] sends.
    key: Keypair,
    market: String,
    commands: mpsc::UnboundedSender<RawCommand>,
}

fn raw_swarm(key: Keypair) -> Swarm<gossipsub::Behaviour> {
    let config = gossipsub::ConfigBuilder::default()
        .validation_mode(ValidationMode::Strict)
        .message_id_fn(openmatch_gossip_sidecar::gossip_message_id)
        .max_transmit_size(RAW_MAX_TRANSMIT)
        .build()
        .expect("gossipsub config");
    let behaviour =
        gossipsub::Behaviour::new(MessageAuthenticity::Signed(key.clone()), config).expect("gossipsub behaviour");
    memory_swarm(key, behaviour)
}

/// A swarm of `behaviour` on the libp2p memory transport (Noise, Yamux), as the test nodes
/// listen; idle connections are kept 60 s (GossipSub keeps one alive only while the peer
/// is in a mesh, request-response only while a request is open).
pub fn memory_swarm<B: libp2p::swarm::NetworkBehaviour>(key: Keypair, behaviour: B) -> Swarm<B> {
    libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_other_transport(|key| {
            MemoryTransport::default()
                .upgrade(Version::V1)
                .authenticate(noise::Config::new(key).expect("noise config"))
                .multiplex(yamux::Config::default())
        })
        .expect("memory transport")
        .with_behaviour(|_| behaviour)
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

async fn drive_raw(mut swarm: Swarm<gossipsub::Behaviour>, mut commands: mpsc::UnboundedReceiver<RawCommand>) {
    let mut dials: Vec<(PeerId, oneshot::Sender<Result<(), String>>)> = Vec::new();
    loop {
        tokio::select! {
            cmd = commands.recv() => match cmd {
                None => return,
                Some(RawCommand::Dial(addr, reply)) => {
                    let peer = addr.iter().find_map(|p| match p {
                        libp2p::multiaddr::Protocol::P2p(id) => Some(id),
                        _ => None,
                    });
                    match (peer, swarm.dial(addr.clone())) {
                        (Some(peer), Ok(())) => dials.push((peer, reply)),
                        (None, _) => { let _ = reply.send(Err(format!("{addr} has no /p2p/ suffix"))); }
                        (_, Err(e)) => { let _ = reply.send(Err(e.to_string())); }
                    }
                }
                Some(RawCommand::Publish(topic, data, reply)) => {
                    let _ = reply.send(swarm.behaviour_mut().publish(topic, data).map(|_| ()));
                }
                Some(RawCommand::Subscribed(topic, reply)) => {
                    let hash = topic.hash();
                    let peers = swarm.behaviour().all_peers().filter(|(_, t)| t.contains(&&hash)).map(|(p, _)| *p).collect();
                    let _ = reply.send(peers);
                }
            },
            event = swarm.select_next_some() => match event {
                SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                    for (_, reply) in dials.extract_if(.., |(p, _)| *p == peer_id) {
                        let _ = reply.send(Ok(()));
                    }
                }
                SwarmEvent::OutgoingConnectionError { peer_id: Some(peer_id), error, .. } => {
                    for (_, reply) in dials.extract_if(.., |(p, _)| *p == peer_id) {
                        let _ = reply.send(Err(error.to_string()));
                    }
                }
                _ => {}
            },
        }
    }
}

impl RawPeer {
    /// Starts a raw peer with a fresh identity, subscribed to the orders topic of
    /// `market` on [`NETWORK`].
    pub fn spawn(market: &str) -> RawPeer {
        let key = Keypair::generate_ed25519();
        let peer_id = key.public().to_peer_id();
        let mut swarm = raw_swarm(key.clone());
        swarm.behaviour_mut().subscribe(&Topic::orders(market).ident(NETWORK)).expect("subscribe");
        let (commands, rx) = mpsc::unbounded_channel();
        tokio::spawn(drive_raw(swarm, rx));
        RawPeer { peer_id, key, market: market.to_owned(), commands }
    }

    fn topic(&self) -> IdentTopic {
        Topic::orders(&self.market).ident(NETWORK)
    }

    async fn request<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> RawCommand) -> T {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).expect("raw peer task is running");
        rx.await.expect("raw peer task answered")
    }

    /// Connects to `node` and waits (up to [`WAIT`]) until each side sees the other
    /// subscribed to the market's orders topic and the node has this peer in its mesh, so
    /// that what is published next reaches the node's validation.
    pub async fn join(&self, node: &TestNode) {
        let addr: Multiaddr = node.bootstrap_addr().parse().expect("multiaddr");
        self.request(|tx| RawCommand::Dial(addr, tx))
            .await
            .unwrap_or_else(|e| panic!("raw peer could not connect to {}: {e}", node.name));
        let me = self.peer_id.to_string();
        let topic_name = self.topic().to_string();
        wait_for(WAIT, &format!("raw peer {me} and node {} to see each other on {topic_name}", node.name), async || {
            let theirs = self.request(|tx| RawCommand::Subscribed(self.topic(), tx)).await;
            let status = node.status().await;
            let mesh = status.topics.iter().find(|t| t.topic == topic_name).map(|t| t.mesh_peers.clone());
            if theirs.contains(&node.peer_id()) && mesh.as_ref().is_some_and(|m| m.contains(&me)) {
                Ok(())
            } else {
                Err(format!("raw peer sees subscribed {theirs:?}; node mesh {mesh:?}"))
            }
        })
        .await
    }

    /// Publishes `data` as is on the market's orders topic (panics if GossipSub refuses).
    pub async fn publish_raw(&self, data: Vec<u8>) {
        let topic = self.topic();
        self.request(|tx| RawCommand::Publish(topic, data, tx)).await.expect("raw peer publish");
    }

    /// Publishes `data` as is on the market's topic of `kind` (which this peer need not
    /// subscribe: GossipSub sends it to the peers subscribed to it).
    pub async fn publish_on(&self, kind: openmatch_gossip_sidecar::TopicKind, data: Vec<u8>) {
        let topic = Topic { kind, market: self.market.clone() }.ident(NETWORK);
        self.request(|tx| RawCommand::Publish(topic, data, tx)).await.expect("raw peer publish");
    }

    /// Publishes one `OrderGossip` message holding `orders` as written (origin and market
    /// not elided), signed as this peer's bundle of its market as a node would sign it
    /// (`GossipEnvelope.origin_signature`).
    pub async fn publish(&self, orders: Vec<Order>) {
        use prost::Message as _;
        let origin_signature =
            openmatch_gossip_sidecar::sign_orders(&self.key, NETWORK, &self.market, &orders).expect("Ed25519 signs");
        let body = Some(Body::Orders(OrderGossip { orders }));
        self.publish_raw(GossipEnvelope { version: 1, body, origin_signature }.encode_to_vec()).await
    }

    /// A valid order of this peer's market with `origin` = this peer (what a node requires
    /// of an order signed by it), in the current clock epoch (default 1 s epochs), as an
    /// honest node would stamp it.
    pub fn order(&self, id: u64) -> Order {
        Order { origin: self.peer_id.to_bytes().into(), epoch: current_epoch(), ..order(&self.market, id) }
    }
}

/// The current epoch under the default clock sealing (1,000 ms epochs).
pub fn current_epoch() -> u64 {
    unix_now_ns() / 1_000_000_000
}

/// The `(origin, id)` identities of `orders`, asserting there are no duplicates.
pub fn distinct_identities(orders: &[Order]) -> HashSet<(libp2p::bytes::Bytes, u64)> {
    let mut seen = HashSet::with_capacity(orders.len());
    for o in orders {
        assert!(
            seen.insert((o.origin.clone(), o.id)),
            "order {} from {:?} received twice",
            o.id,
            origin_name(&o.origin)
        );
    }
    seen
}

/// A readable name for an origin (its peer id, or the raw bytes if they are not one).
pub fn origin_name(origin: &[u8]) -> String {
    PeerId::from_bytes(origin).map_or_else(|_| format!("{origin:?}"), |p| p.to_string())
}

/// A memory-transport swarm of `behaviour` with a new identity, connected to `node`.
async fn connected_swarm<B: libp2p::swarm::NetworkBehaviour>(node: &TestNode, behaviour: B) -> Swarm<B> {
    let mut swarm = memory_swarm(Keypair::generate_ed25519(), behaviour);
    let addr: Multiaddr = node.bootstrap_addr().parse().expect("multiaddr");
    swarm.dial(addr).expect("dial");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, swarm.select_next_some()).await {
            Ok(SwarmEvent::ConnectionEstablished { .. }) => return swarm,
            Ok(SwarmEvent::OutgoingConnectionError { error, .. }) => panic!("repair peer: {error}"),
            Ok(_) => {}
            Err(_) => panic!("repair peer could not connect to {} within {WAIT:?}", node.name),
        }
    }
}

/// A repair codec whose requests never end: each announces a 1,000-byte request, sends
/// none of it and waits, holding its stream open until the node gives up on it.
#[derive(Debug, Clone, Copy, Default)]
struct StallingCodec;

impl libp2p::request_response::Codec for StallingCodec {
    type Protocol = libp2p::StreamProtocol;
    type Request = ();
    type Response = ();

    async fn read_request<T: futures::AsyncRead + Unpin + Send>(
        &mut self,
        _: &Self::Protocol,
        _: &mut T,
    ) -> std::io::Result<()> {
        Err(std::io::Error::other("a stalling peer serves nothing"))
    }

    async fn read_response<T: futures::AsyncRead + Unpin + Send>(
        &mut self,
        _: &Self::Protocol,
        _: &mut T,
    ) -> std::io::Result<()> {
        futures::future::pending().await
    }

    async fn write_request<T: futures::AsyncWrite + Unpin + Send>(
        &mut self,
        _: &Self::Protocol,
        io: &mut T,
        _: (),
    ) -> std::io::Result<()> {
        use futures::AsyncWriteExt as _;
        io.write_all(&1000u32.to_be_bytes()).await?;
        io.flush().await?;
        futures::future::pending().await
    }

    async fn write_response<T: futures::AsyncWrite + Unpin + Send>(
        &mut self,
        _: &Self::Protocol,
        _: &mut T,
        _: (),
    ) -> std::io::Result<()> {
        Err(std::io::Error::other("a stalling peer serves nothing"))
    }
}

/// A new identity that connects to `node` and opens `n` repair streams at once, each
/// announcing a request it never sends; they stay open (the peer keeps running) until the
/// returned task is aborted.
pub async fn hold_repair_streams(node: &TestNode, n: usize) -> tokio::task::JoinHandle<()> {
    use libp2p::request_response::{self, ProtocolSupport};
    let behaviour = request_response::Behaviour::with_codec(
        StallingCodec,
        [(openmatch_gossip_sidecar::fuzzing::REPAIR_PROTOCOL, ProtocolSupport::Outbound)],
        request_response::Config::default().with_request_timeout(Duration::from_secs(600)),
    );
    let mut swarm = connected_swarm(node, behaviour).await;
    let peer = node.peer_id();
    for _ in 0..n {
        swarm.behaviour_mut().send_request(&peer, ());
    }
    tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    })
}

/// A peer that speaks only the repair protocol (no GossipSub): it connects to a node and
/// sends it repair requests as a hostile or recovering peer would.
pub struct RepairClient {
    swarm: Swarm<libp2p::request_response::Behaviour<openmatch_gossip_sidecar::fuzzing::RepairCodec>>,
}

impl RepairClient {
    /// A new identity connected to `node`.
    pub async fn connect(node: &TestNode) -> RepairClient {
        use libp2p::request_response::{self, ProtocolSupport};
        let behaviour = request_response::Behaviour::with_codec(
            openmatch_gossip_sidecar::fuzzing::RepairCodec,
            [(openmatch_gossip_sidecar::fuzzing::REPAIR_PROTOCOL, ProtocolSupport::Outbound)],
            request_response::Config::default(),
        );
        RepairClient { swarm: connected_swarm(node, behaviour).await }
    }

    /// Sends `requests` to `node` all at once and returns the answers in any order (a
    /// failed request as `Err` with the reason).
    pub async fn ask(
        &mut self,
        node: &TestNode,
        requests: Vec<openmatch_gossip_sidecar::proto::RepairRequest>,
    ) -> Vec<Result<openmatch_gossip_sidecar::proto::RepairResponse, String>> {
        use libp2p::request_response::{Event, Message};
        let peer = node.peer_id();
        let n = requests.len();
        for r in requests {
            self.swarm.behaviour_mut().send_request(&peer, r);
        }
        let mut answers = Vec::with_capacity(n);
        let deadline = tokio::time::Instant::now() + WAIT;
        while answers.len() < n {
            match tokio::time::timeout_at(deadline, self.swarm.select_next_some()).await {
                Ok(SwarmEvent::Behaviour(Event::Message { message: Message::Response { response, .. }, .. })) => {
                    answers.push(Ok(response))
                }
                Ok(SwarmEvent::Behaviour(Event::OutboundFailure { error, .. })) => answers.push(Err(error.to_string())),
                Ok(_) => {}
                Err(_) => panic!("{} of {n} repair answers within {WAIT:?}", answers.len()),
            }
        }
        answers
    }
}
