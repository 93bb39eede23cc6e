//! The simulation benchmark (`openmatch-gossip simulate`): networks of 25, 50 and 100
//! sidecar nodes in one process, to see how the gossip layer scales with the number of
//! replicas on a machine that cannot run 100 processes.
//!
//! Each node is the real node ([`crate::node::Node`]: GossipSub with the configuration's mesh
//! parameters, Kademlia, Noise, Yamux, validation, batches and consensus) on libp2p's memory
//! transport instead of TCP, with a configured membership of N (the quorum is a strict
//! majority of N). Each node dials a few random others (`--bootstrap`); Kademlia and
//! GossipSub's peer exchange do the rest. In place of engines, the harness submits each
//! node's shard of the bundled Binance recording at its recorded pace through the node's
//! handle, and reads each node's event stream as an engine would.
//!
//! What it reports per network size:
//! - **delivery ratio**: distinct peer orders delivered / orders the other nodes submitted
//!   (must be 1.0), with duplicates delivered to an engine (must be 0);
//! - **batches**: per node and market, every epoch from the first submission's to the last
//!   one's must be agreed (none disputed);
//! - **amplification**: copies of orders messages received (every copy, i.e. every
//!   transmission) per order delivered, from each node's `libp2p_gossipsub_topic_msg_*`
//!   counters, and the consensus traffic (seals, results, heartbeats) per node and second;
//! - **duplicates per message**: copies received beyond the first, per message delivered
//!   (each copy of a bundle repeats every order in it);
//! - **hops**: per delivery, the length of the path its first copy took from the author,
//!   rebuilt from every node's first receipts ([`crate::config::ReceiptObserver`]);
//! - **latency**: submission → delivery and first seal → agreement, µs;
//! - the process's CPU seconds and peak RSS.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use libp2p::PeerId;
use libp2p::gossipsub::MessageId;
use libp2p::identity::Keypair;
use openmatch_gossip_crds::SidecarConfig;
use prometheus_client::registry::Registry;

use crate::config::{NodeSettings, ReceiptObserver};
use crate::node::{Node, NodeHandle, Shutdown};
use crate::proto::event::Kind;
use crate::tools::engine::{MARKETS, Workload, load_shards};
use crate::tools::stats::{Latency, LatencySummary};

/// Flags of `openmatch-gossip simulate`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// Network sizes to simulate, one after another (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "25,50,100")]
    pub nodes: Vec<usize>,
    /// Where the replayed window starts, seconds into the recording (10: past the opening
    /// book snapshot, a one-off burst).
    #[arg(long, default_value_t = 10.0)]
    pub from_s: f64,
    /// Seconds of the recording replayed, at its recorded pace.
    #[arg(long, default_value_t = 10.0)]
    pub duration_s: f64,
    /// Replay speed: 1 is the recorded pace, 0.1 a tenth of it (the same orders over ten
    /// times the time). Every node verifies every copy of every message it receives, so
    /// the process's work per second of recording grows with N; on two cores the larger
    /// sizes need a fraction of the real pace to keep up (`docs/BENCHMARKS.md`).
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Batch epoch length, ms (`consensus.epochMs`; the configuration's default is 1,000).
    /// Every node publishes a seal per market per epoch and every node verifies every copy
    /// of every peer's, so consensus traffic grows with N² per epoch, whatever the order
    /// flow: on two cores the larger sizes need longer epochs (`docs/BENCHMARKS.md`).
    #[arg(long, default_value_t = 1_000)]
    pub epoch_ms: u32,
    /// `PeerStatus` heartbeat interval, ms (`heartbeat.intervalMs`; the configuration's
    /// default is 1,000); the liveness window is five intervals, as in the default
    /// configuration (5,000 ms). Every node hears every node's heartbeat, in several
    /// copies, so this traffic too grows with N² per second, whatever the order flow.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(100..))]
    pub heartbeat_ms: u32,
    /// Epoch grace, ms (`consensus.graceMs`; the configuration's default is 200): how
    /// long after an epoch ends its batch is sealed. It must exceed the propagation delay,
    /// which grows with N once the process is short of CPU.
    #[arg(long, default_value_t = 200)]
    pub grace_ms: u32,
    /// Random other nodes each node dials at start (its bootstrap list).
    #[arg(long, default_value_t = 4)]
    pub bootstrap: usize,
    /// Seconds allowed for the network to form (every node meshed with a live quorum) and,
    /// after the window, for the last deliveries and agreements.
    #[arg(long, default_value_t = 120)]
    pub settle_s: u64,
    /// Directory of the recordings (default: the bundled ones).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Also write the table as Markdown to this file.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
}

/// One network size's figures.
#[derive(Debug, Clone)]
pub struct SimReport {
    /// Nodes in the network.
    pub nodes: usize,
    /// Seconds from the first node's start to every node meshed with a live quorum.
    pub formation_s: f64,
    /// Orders submitted, all nodes.
    pub submitted: u64,
    /// Distinct peer orders delivered / expected, all nodes (1.0 = nothing lost).
    pub delivery_ratio: f64,
    /// Orders delivered to a node more than once.
    pub duplicate_deliveries: u64,
    /// Orders their origin was told were excluded from every batch (`OrdersExcluded`): not
    /// lost, since an engine resubmits them, but the harness does not, so each lowers the
    /// delivery ratio. Non-zero only when the nodes cannot keep up.
    pub excluded: u64,
    /// (agreed, expected) batch decisions, all nodes and markets: every epoch from the
    /// first submission's to the last one's.
    pub batches: (u64, u64),
    /// Batches disputed (no quorum could agree), all nodes.
    pub disputed: u64,
    /// Copies of orders messages received, all nodes, per order delivered: the network's
    /// transmissions per delivery (each copy sent is a copy received; libp2p's sent
    /// counter leaves forwards out, so the receive side is counted).
    pub copies_per_order: f64,
    /// Copies received beyond the first, per orders message delivered.
    pub duplicates_per_message: f64,
    /// Copies of seals, results and heartbeats (the batches and control topics) each node
    /// received per second of the run: the consensus traffic, which grows with N².
    pub consensus_copies_per_node_s: f64,
    /// Path length of each delivery's first copy (1 = straight from the author).
    pub hops: LatencySummary,
    /// Submission → delivery to another node's event stream, µs.
    pub latency: LatencySummary,
    /// First seal → agreement at each node, µs.
    pub agreement: LatencySummary,
    /// CPU seconds this process used during the run (user + system).
    pub cpu_s: f64,
    /// The process's peak RSS at the end of the run, MiB (it only grows across sizes).
    pub peak_rss_mib: f64,
}

impl SimReport {
    /// Nothing lost or duplicated, every batch agreed.
    pub fn ok(&self) -> bool {
        self.delivery_ratio == 1.0 && self.duplicate_deliveries == 0 && self.batches.0 == self.batches.1
    }
}

/// First receipts of orders messages, shared by every node's observer: per message, its
/// author and (receiver, the peer it came from).
#[derive(Default)]
struct Receipts {
    by_message: HashMap<MessageId, (PeerId, Vec<(PeerId, PeerId)>)>,
}

impl Receipts {
    /// Hop counts of every receipt: 1 when the copy came straight from the author, else one
    /// more than the sender's. Receipts whose sender's own is missing are left out.
    fn hops(&self) -> Latency {
        let mut hist = Latency::default();
        for (author, receipts) in self.by_message.values() {
            let from: HashMap<PeerId, PeerId> = receipts.iter().copied().collect();
            let mut memo: HashMap<PeerId, u64> = HashMap::from([(*author, 0)]);
            for (receiver, _) in receipts {
                if let Some(h) = hop_count(*receiver, &from, &mut memo) {
                    hist.record(h);
                }
            }
        }
        hist
    }
}

/// Follows `from` back to a node whose count is known; `None` on a broken chain.
fn hop_count(node: PeerId, from: &HashMap<PeerId, PeerId>, memo: &mut HashMap<PeerId, u64>) -> Option<u64> {
    let mut chain = Vec::new();
    let mut at = node;
    let base = loop {
        if let Some(h) = memo.get(&at) {
            break *h;
        }
        if chain.len() > from.len() {
            return None; // a cycle: cannot happen with first receipts, but never loop
        }
        chain.push(at);
        at = *from.get(&at)?;
    };
    for (k, n) in chain.iter().rev().enumerate() {
        memo.insert(*n, base + k as u64 + 1);
    }
    memo.get(&node).copied()
}

/// What one node's event stream showed.
#[derive(Default)]
struct Tally {
    seen: HashSet<(Vec<u8>, u64)>,
    duplicates: u64,
    latency: Latency,
    agreement: Latency,
    /// Agreed epochs per market.
    agreed: HashMap<String, HashSet<u64>>,
    disputed: u64,
    /// This node's own orders its batches left out (`OrdersExcluded`: an engine would
    /// resubmit them; the harness does not).
    excluded: u64,
}

/// One node of the simulation.
struct SimNode {
    handle: NodeHandle,
    registry: Registry,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<()>,
}

/// Runs every network size in turn, prints the table; `true` if every run passed.
pub async fn run(args: &SimulateArgs) -> anyhow::Result<bool> {
    let mut table = String::new();
    let mut ok = true;
    for &n in &args.nodes {
        let r = run_one(args, n).await?;
        let figures = figures(&r);
        let line: Vec<String> = figures.iter().map(|(name, value)| format!("{name} {value}")).collect();
        eprintln!("simulate: {}: {}", line.join(", "), if r.ok() { "OK" } else { "FAILED" });
        ok &= r.ok();
        if table.is_empty() {
            let names: Vec<&str> = figures.iter().map(|(name, _)| *name).collect();
            let _ = writeln!(table, "| {} |\n|{}", names.join(" | "), "---|".repeat(names.len()));
        }
        let values: Vec<&str> = figures.iter().map(|(_, value)| value.as_str()).collect();
        let _ = writeln!(table, "| {} |", values.join(" | "));
    }
    println!("{table}");
    if let Some(path) = &args.markdown {
        std::fs::write(path, &table).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ok)
}

/// The report's figures as (name, value), in table order: the Markdown table's columns and
/// the one-line summary on stderr both come from this list.
fn figures(r: &SimReport) -> Vec<(&'static str, String)> {
    vec![
        ("nodes", r.nodes.to_string()),
        ("orders submitted", r.submitted.to_string()),
        ("delivery ratio", format!("{:.4}", r.delivery_ratio)),
        ("duplicate deliveries", r.duplicate_deliveries.to_string()),
        ("excluded", r.excluded.to_string()),
        ("batches agreed", format!("{} / {}", r.batches.0, r.batches.1)),
        ("disputed", r.disputed.to_string()),
        ("message copies / order delivered", format!("{:.3}", r.copies_per_order)),
        ("duplicates / message", format!("{:.2}", r.duplicates_per_message)),
        ("consensus copies / node / s", format!("{:.0}", r.consensus_copies_per_node_s)),
        ("hops p50 / p99 / max", format!("{} / {} / {}", r.hops.p50_us, r.hops.p99_us, r.hops.max_us)),
        ("delivery p50 / p99 µs", format!("{} / {}", r.latency.p50_us, r.latency.p99_us)),
        ("agreement p50 / p99 µs", format!("{} / {}", r.agreement.p50_us, r.agreement.p99_us)),
        ("formation s", format!("{:.1}", r.formation_s)),
        ("CPU s", format!("{:.0}", r.cpu_s)),
        ("peak RSS MiB", format!("{:.0}", r.peak_rss_mib)),
    ]
}

/// A splitmix64 step: the bootstrap lists' randomness, seeded per run.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Starts `n` nodes on the memory transport, each dialing `args.bootstrap` random others,
/// with `args`' epoch, grace and heartbeat.
fn start_nodes(n: usize, args: &SimulateArgs, receipts: &Arc<Mutex<Receipts>>) -> anyhow::Result<Vec<SimNode>> {
    let bootstrap = args.bootstrap;
    let mut seed = crate::epoch::unix_now_ns();
    // Memory-transport ports are process-wide: a random base keeps sizes apart.
    let base = splitmix(&mut seed) % (1 << 40) + 1;
    let keys: Vec<Keypair> = (0..n).map(|_| Keypair::generate_ed25519()).collect();
    let addrs: Vec<String> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| format!("/memory/{}/p2p/{}", base + i as u64, k.public().to_peer_id()))
        .collect();
    let mut nodes = Vec::with_capacity(n);
    for (i, key) in keys.into_iter().enumerate() {
        let mut peers: Vec<usize> = Vec::new();
        while peers.len() < bootstrap.min(n - 1) {
            let j = (splitmix(&mut seed) % n as u64) as usize;
            if j != i && !peers.contains(&j) {
                peers.push(j);
            }
        }
        let mut config = SidecarConfig {
            network: "sim".into(),
            markets: MARKETS.iter().map(|(m, _)| m.to_string()).collect(),
            ..Default::default()
        };
        config.p2p.listen_addrs = vec![format!("/memory/{}", base + i as u64)];
        config.p2p.bootstrap_peers = peers.iter().map(|&j| addrs[j].clone()).collect();
        config.p2p.mdns = false;
        config.consensus.members = n as u32;
        config.consensus.epoch_ms = args.epoch_ms;
        config.consensus.grace_ms = args.grace_ms;
        config.heartbeat.interval_ms = args.heartbeat_ms;
        config.heartbeat.liveness_window_ms = args.heartbeat_ms.saturating_mul(5);
        let mut settings = NodeSettings::new(
            config,
            PathBuf::from(format!("sim-node-{i}.sock")),
            PathBuf::from(format!("sim-node-{i}.key")),
            "127.0.0.1:0".parse().expect("literal"),
        )
        .with_context(|| format!("node {i}'s settings"))?;
        let receiver = key.public().to_peer_id();
        let sink = receipts.clone();
        settings.receipt_observer =
            Some(ReceiptObserver(Arc::new(move |id: &MessageId, topic: &str, author, from| {
                if let (true, Some(author)) = (topic.contains("/orders/"), author) {
                    let mut r = sink.lock().expect("receipts lock");
                    r.by_message.entry(id.clone()).or_insert_with(|| (author, Vec::new())).1.push((receiver, from));
                }
            })));
        let mut registry = Registry::default();
        let (node, handle, _metrics) = Node::new(settings, key, &mut registry)?;
        let shutdown = Shutdown::default();
        let task = tokio::spawn(node.run(shutdown.clone()));
        nodes.push(SimNode { handle, registry, shutdown, task });
    }
    Ok(nodes)
}

/// Waits until every node is healthy (live quorum, recovery done) and has at least
/// `min(n - 1, D_lo)` peers in its mesh on every orders topic.
async fn wait_formed(nodes: &[SimNode], timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let want = (nodes.len() - 1).min(SidecarConfig::default().gossipsub.mesh_n_low as usize);
    for (i, node) in nodes.iter().enumerate() {
        loop {
            let st = node.handle.status().await.map_err(|_| anyhow::anyhow!("node {i} stopped"))?;
            let meshed = st.topics.iter().filter(|t| t.topic.contains("/orders/")).all(|t| t.mesh_peers.len() >= want);
            if st.health == "healthy" && meshed {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "node {i} of {} did not form within {timeout:?}: health {} ({}), {} peers, mesh sizes {:?}",
                    nodes.len(),
                    st.health,
                    st.health_reason,
                    st.connected_peers.len(),
                    st.topics.iter().map(|t| (t.topic.clone(), t.mesh_peers.len())).collect::<Vec<_>>()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Submits `shard` through `handle` at `speed` times the recording's pace from `start`; returns the
/// epochs its orders joined, per market (first, last).
async fn replay(
    handle: NodeHandle,
    shard: Arc<Workload>,
    start: tokio::time::Instant,
    speed: f64,
) -> anyhow::Result<HashMap<String, (u64, u64)>> {
    let mut epochs: HashMap<String, (u64, u64)> = HashMap::new();
    for (offset, orders) in &shard.events {
        tokio::time::sleep_until(start + Duration::from_nanos((*offset as f64 / speed) as u64)).await;
        let stamp = crate::epoch::unix_now_ns();
        let out: Vec<_> = orders
            .iter()
            .cloned()
            .map(|mut o| {
                o.submitted_at_ns = stamp;
                o
            })
            .collect();
        let market = out.first().map(|o| o.market.clone()).unwrap_or_default();
        let receipts = handle
            .submit(out, true)
            .await
            .map_err(|_| anyhow::anyhow!("the node stopped"))?
            .map_err(|e| anyhow::anyhow!("submission refused: {e:?}"))?;
        for r in receipts {
            let e = epochs.entry(market.clone()).or_insert((r.epoch, r.epoch));
            e.0 = e.0.min(r.epoch);
            e.1 = e.1.max(r.epoch);
        }
    }
    Ok(epochs)
}

/// Reads `handle`'s event stream into `tally` until `stop` is cancelled.
async fn observe(
    handle: NodeHandle,
    tally: Arc<Mutex<Tally>>,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let mut events = handle
        .subscribe(Vec::new(), None)
        .await
        .map_err(|_| anyhow::anyhow!("the node stopped"))?
        .map_err(|e| anyhow::anyhow!("subscribe: {e:?}"))?;
    let own = handle.info().peer_id.to_bytes();
    loop {
        let ev = tokio::select! {
            _ = stop.cancelled() => break,
            ev = events.next() => ev,
        };
        let Some(ev) = ev else { break };
        let ev = ev.map_err(|s| anyhow::anyhow!("event stream ended: {s}"))?;
        let mut t = tally.lock().expect("tally lock");
        match ev.kind {
            Some(Kind::Orders(o)) => {
                let now = crate::epoch::unix_now_ns();
                for order in o.orders {
                    if order.origin == own {
                        continue;
                    }
                    t.latency.record(now.saturating_sub(order.submitted_at_ns) / 1_000);
                    if !t.seen.insert((order.origin.to_vec(), order.id)) {
                        t.duplicates += 1;
                    }
                }
            }
            Some(Kind::BatchAgreed(a)) => {
                let b = a.batch_id.unwrap_or_default();
                t.agreement.record(a.agreement_us);
                t.agreed.entry(b.market).or_default().insert(b.epoch);
            }
            Some(Kind::BatchDisputed(_)) => t.disputed += 1,
            Some(Kind::OrdersExcluded(x)) => t.excluded += x.ids.len() as u64,
            _ => {}
        }
    }
    Ok(())
}

/// A GossipSub counter summed over the orders topics and over the others.
struct TopicSums {
    orders: f64,
    other: f64,
}

/// Sums the samples of GossipSub counter `name` (labelled by topic) in the registry's text
/// exposition, orders topics apart from the rest.
fn topic_counter(registry: &Registry, name: &str) -> anyhow::Result<TopicSums> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry)?;
    let prefix = format!("{name}{{");
    let mut sums = TopicSums { orders: 0.0, other: 0.0 };
    for l in text.lines().filter(|l| l.starts_with(&prefix)) {
        let Some(v) = l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else { continue };
        if l.contains("/orders/") {
            sums.orders += v;
        } else {
            sums.other += v;
        }
    }
    Ok(sums)
}

/// CPU seconds (user + system) and peak RSS (MiB) of this process, from /proc.
fn process_usage() -> (f64, f64) {
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
        })
        .unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let hwm = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse::<f64>().ok())
        .unwrap_or(0.0);
    (cpu / hz.max(1.0), hwm / 1024.0)
}

/// Runs one network of `n` nodes with `args` (its `nodes` and `markdown` are not read).
///
/// Errors: `n` below 2, a bad `speed`, the recordings missing, a network that does not
/// form within `settle_s`, a node that stops. A network that forms but loses, duplicates
/// or fails to agree is not an error: see [`SimReport::ok`].
pub async fn run_one(args: &SimulateArgs, n: usize) -> anyhow::Result<SimReport> {
    if n < 2 {
        bail!("--nodes: every size must be at least 2, got {n}");
    }
    if !(args.speed > 0.0 && args.speed.is_finite()) {
        bail!("--speed must be a positive number, got {}", args.speed);
    }
    let shards: Vec<Arc<Workload>> = load_shards(args.data_dir.as_deref(), args.from_s, Some(args.duration_s), n)?
        .into_iter()
        .map(Arc::new)
        .collect();
    let submitted: u64 = shards.iter().map(|s| s.orders).sum();
    let expected: u64 = shards.iter().map(|s| s.expected_from_peers).sum();
    let cpu_before = process_usage().0;
    let receipts = Arc::new(Mutex::new(Receipts::default()));
    let started = Instant::now();
    eprintln!("simulate: starting {n} nodes");
    let nodes = start_nodes(n, args, &receipts)?;
    wait_formed(&nodes, Duration::from_secs(args.settle_s)).await?;
    let formation_s = started.elapsed().as_secs_f64();
    eprintln!(
        "simulate: {n} nodes formed in {formation_s:.1} s; replaying {:.0} s ({submitted} orders)",
        args.duration_s
    );

    let stop = tokio_util::sync::CancellationToken::new();
    let tallies: Vec<Arc<Mutex<Tally>>> = nodes.iter().map(|_| Arc::default()).collect();
    let observers: Vec<_> = nodes
        .iter()
        .zip(&tallies)
        .map(|(nd, t)| tokio::spawn(observe(nd.handle.clone(), t.clone(), stop.clone())))
        .collect();
    let replay_started = Instant::now();
    let start = tokio::time::Instant::now() + Duration::from_millis(200);
    let replays: Vec<_> = nodes
        .iter()
        .zip(&shards)
        .map(|(nd, s)| tokio::spawn(replay(nd.handle.clone(), s.clone(), start, args.speed)))
        .collect();
    let mut span: HashMap<String, (u64, u64)> = HashMap::new();
    for r in replays {
        for (m, (lo, hi)) in r.await.context("replay task")?? {
            let e = span.entry(m).or_insert((lo, hi));
            e.0 = e.0.min(lo);
            e.1 = e.1.max(hi);
        }
    }
    let expected_batches: u64 = span.values().map(|(lo, hi)| hi - lo + 1).sum::<u64>() * n as u64;
    // Agreed batches of the span in one node's tally.
    let agreed_in_span = |t: &Tally| -> u64 {
        span.iter()
            .map(|(m, (lo, hi))| {
                t.agreed.get(m).map_or(0, |e| e.iter().filter(|x| (lo..=hi).contains(x)).count() as u64)
            })
            .sum()
    };
    eprintln!("simulate: replay done; waiting for the last deliveries and agreements");
    let deadline = Instant::now() + Duration::from_secs(args.settle_s);
    loop {
        let (delivered, agreed) = tallies.iter().fold((0, 0), |(d, a), t| {
            let t = t.lock().expect("tally lock");
            (d + t.seen.len() as u64, a + agreed_in_span(&t))
        });
        if (delivered >= expected && agreed >= expected_batches) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    for o in observers {
        o.await.context("observer task")??;
    }
    let (cpu_after, peak_rss_mib) = process_usage();

    let mut latency = Latency::default();
    let mut agreement = Latency::default();
    let (mut delivered, mut duplicates, mut agreed, mut disputed, mut excluded) = (0u64, 0u64, 0u64, 0u64, 0u64);
    for t in &tallies {
        let t = t.lock().expect("tally lock");
        delivered += t.seen.len() as u64;
        duplicates += t.duplicates;
        disputed += t.disputed;
        excluded += t.excluded;
        latency.merge_buckets(&t.latency.buckets());
        agreement.merge_buckets(&t.agreement.buckets());
        agreed += agreed_in_span(&t);
    }
    let (mut recv_all, mut recv_first, mut consensus_copies) = (0.0, 0.0, 0.0);
    for nd in &nodes {
        let copies = topic_counter(&nd.registry, "libp2p_gossipsub_topic_msg_recv_counts_unfiltered_total")?;
        let firsts = topic_counter(&nd.registry, "libp2p_gossipsub_topic_msg_recv_counts_total")?;
        recv_all += copies.orders;
        recv_first += firsts.orders;
        consensus_copies += copies.other;
    }
    let run_s = replay_started.elapsed().as_secs_f64();
    let hops = receipts.lock().expect("receipts lock").hops().summary();
    for nd in &nodes {
        nd.shutdown.closing.cancel();
        nd.shutdown.stop.cancel();
    }
    for nd in nodes {
        let _ = tokio::time::timeout(Duration::from_secs(10), nd.task).await;
    }
    let per_order = |x: f64| if delivered > 0 { x / delivered as f64 } else { 0.0 };
    Ok(SimReport {
        nodes: n,
        formation_s,
        submitted,
        delivery_ratio: if expected > 0 { delivered as f64 / expected as f64 } else { 1.0 },
        duplicate_deliveries: duplicates,
        batches: (agreed, expected_batches),
        disputed,
        excluded,
        copies_per_order: per_order(recv_all),
        consensus_copies_per_node_s: consensus_copies / n as f64 / run_s.max(1e-9),
        duplicates_per_message: if recv_first > 0.0 { (recv_all - recv_first) / recv_first } else { 0.0 },
        hops,
        latency: latency.summary(),
        agreement: agreement.summary(),
        cpu_s: cpu_after - cpu_before,
        peak_rss_mib,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hop counts follow the first-receipt chain back to the author.
    #[test]
    fn hops_follow_first_receipts_back_to_the_author() {
        let [a, b, c, d] = [PeerId::random(), PeerId::random(), PeerId::random(), PeerId::random()];
        let mut r = Receipts::default();
        // a wrote it; b and c got it from a, d from c.
        r.by_message.insert(MessageId::new(b"m"), (a, vec![(d, c), (b, a), (c, a)]));
        let h = r.hops();
        let s = h.summary();
        assert_eq!((s.count, s.p50_us, s.max_us), (3, 1, 2));
    }
}
