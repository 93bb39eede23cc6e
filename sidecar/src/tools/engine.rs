//! The reference engine: replays the bundled Binance recordings as order flow through its
//! sidecar, subscribes to the peers' orders and reports what it sent and received.
//!
//! Sharding: the two markets' events are merged by receive time; event `k` belongs to shard
//! `k mod shards`, so each of `n` engines submits a disjoint share of the same real flow and
//! expects every other shard's orders back exactly once. Order ids count up from 0 per
//! engine. Pace: `max` submits as fast as the sidecar accepts (chunks of up to
//! `--chunk-orders`); `real` sleeps to the recorded receive times (divided by `--speed`) and
//! submits each event's orders together.
//!
//! Transports: `sidecar` (the real path: gRPC over the Unix socket, gossip between
//! sidecars) and `tcp` (the benchmark baseline: engines connected directly over plain
//! loopback TCP, length-delimited protobuf frames, no gossip, no crypto).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use prost::Message as _;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

use crate::proto::{Order, OrderKind, OrdersReceived, Side};
use crate::tools::journal::{self, Entry, Journal};
use crate::tools::marketdata::{self, MarketEvent, OrderKind as MdKind, Scale, Side as MdSide};
use crate::tools::matcher::{Matcher, MatcherState};
use crate::tools::sidecar_link::{self, Feed, Handed};
use crate::tools::stats::{Checksum, Latency, LatencySummary};

/// The bundled markets: market name and recording file name.
pub const MARKETS: [(&str, &str); 2] = [("BTC-USDT", "btcusdt_20240808.gz"), ("ETH-USDT", "ethusdt_20240808.gz")];

/// Replay pace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pace {
    /// As fast as the path accepts.
    Max,
    /// At the recorded pace (scaled by `--speed`).
    Real,
}

/// How the engine reaches its peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// Through the sidecar's Unix socket and gossip.
    Sidecar,
    /// Baseline: plain TCP straight to the other engines.
    Tcp,
    /// Stack floor: through an `openmatch-gossip relay` (the sidecar's socket API and
    /// libp2p swarm without its validation, dedup or consensus; see [`crate::tools::relay`]).
    Relay,
}

impl TransportKind {
    /// The `openmatch-gossip` subcommand run beside each engine (`node`, or `relay` for
    /// the stack floor); `None` for plain TCP, where engines talk directly.
    pub fn sidecar_subcommand(self) -> Option<&'static str> {
        match self {
            TransportKind::Sidecar => Some("node"),
            TransportKind::Relay => Some("relay"),
            TransportKind::Tcp => None,
        }
    }

    /// The value of the engine's `--transport` flag.
    pub fn as_arg(self) -> &'static str {
        match self {
            TransportKind::Sidecar => "sidecar",
            TransportKind::Tcp => "tcp",
            TransportKind::Relay => "relay",
        }
    }
}

/// What to replay and how fast: shared by `engine` and `cluster`.
#[derive(Debug, Clone, Copy, PartialEq, clap::Args, Serialize, Deserialize)]
pub struct ReplayArgs {
    /// Replay pace: max (as fast as the path accepts) or real (recorded timing).
    #[arg(long, value_enum, default_value = "max")]
    pub pace: Pace,
    /// Speed factor for --pace real (2.0 = twice as fast as recorded).
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Start SECONDS into the recording (10 skips the initial book snapshot, a one-off
    /// burst of ~1,850 orders per market).
    #[arg(long, value_name = "SECONDS", default_value_t = 0.0)]
    pub from_s: f64,
    /// Replay only SECONDS of the recording from --from-s (default: to the end, ~345 s).
    #[arg(long, value_name = "SECONDS")]
    pub duration_s: Option<f64>,
}

impl ReplayArgs {
    /// Everything at maximum speed.
    pub const MAX: ReplayArgs = ReplayArgs { pace: Pace::Max, speed: 1.0, from_s: 0.0, duration_s: None };

    /// The same flags as command-line arguments, for a child `engine` process.
    pub fn to_args(&self) -> Vec<String> {
        let pace = match self.pace {
            Pace::Max => "max",
            Pace::Real => "real",
        };
        let mut v = vec![
            "--pace".into(),
            pace.into(),
            "--speed".into(),
            self.speed.to_string(),
            "--from-s".into(),
            self.from_s.to_string(),
        ];
        if let Some(d) = self.duration_s {
            v.extend(["--duration-s".into(), d.to_string()]);
        }
        v
    }
}

/// Flags of `openmatch-gossip engine`.
#[derive(Debug, Clone, clap::Args)]
pub struct EngineArgs {
    /// Sidecar socket (transports `sidecar` and `relay`).
    #[arg(long, default_value = "/run/openmatch-gossip/engine.sock")]
    pub socket: PathBuf,
    /// Directory with the recordings (default: the bundled Binance data).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// This engine's shard, 0-based.
    #[arg(long, default_value_t = 0)]
    pub shard: usize,
    /// Number of engines sharing the flow.
    #[arg(long, default_value_t = 1)]
    pub shards: usize,
    /// What to replay and how fast.
    #[command(flatten)]
    pub replay: ReplayArgs,
    /// Most orders per submitted chunk at max pace.
    #[arg(long, default_value_t = 512)]
    pub chunk_orders: usize,
    /// Print READY on stdout once subscribed, then wait for a line GO on stdin before
    /// replaying (how the main job starts all engines together).
    #[arg(long)]
    pub wait_for_go: bool,
    /// Stop waiting for peers' orders after this long without receiving any, ms.
    #[arg(long, default_value_t = 15_000)]
    pub idle_timeout_ms: u64,
    /// After the last order arrived, wait at most this long for the last batches to be
    /// decided and settled, ms.
    #[arg(long, default_value_t = 120_000)]
    pub settle_timeout_ms: u64,
    /// Transport to the peers.
    #[arg(long, value_enum, default_value = "sidecar")]
    pub transport: TransportKind,
    /// Transport `tcp`: address to listen on for the other engines.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Transport `tcp`: the other engines' addresses.
    #[arg(long = "peer")]
    pub peers: Vec<SocketAddr>,
    /// Journal (JSON lines) of what this engine must remember to survive its own crash:
    /// orders handed over, events processed and their cursor. Started again with the same
    /// file (and flags), the engine resumes where it was: it rebuilds its tallies, skips
    /// the orders it handed over (resubmitting those not known committed), and resumes
    /// its event stream after the last event it processed. Transport `sidecar` only.
    #[arg(long, value_name = "PATH")]
    pub state_file: Option<PathBuf>,
    /// Fault drill, never in production: submit a wrong result hash for every batch whose
    /// epoch is a multiple of N, as a nondeterministic engine would. Its sidecar then
    /// finds itself outvoted, its peers halt those batches (result mismatch) and, after
    /// three, ban it for a while: what the alerts and dashboards are for
    /// (tests/prometheus). The engine still reports every order's fate.
    #[arg(long, value_name = "N")]
    pub corrupt_results_every: Option<u64>,
}

/// Orders of one shard, ready to replay.
pub struct Workload {
    /// Market names, by index.
    pub markets: Vec<String>,
    /// This shard's events: (recv offset from the first event, ns; orders).
    pub events: Vec<(u64, Vec<Order>)>,
    /// Orders in this shard.
    pub orders: u64,
    /// Orders in every other shard: what this engine should receive.
    pub expected_from_peers: u64,
    /// Content checksum of this shard's orders, computed here so that the replay loop
    /// does nothing between an event's due time and its submission.
    pub checksum: Checksum,
}

fn to_order(market: &str, id: u64, o: &marketdata::ReplayOrder) -> Order {
    Order {
        id,
        market: market.to_owned(),
        side: match o.side {
            MdSide::Buy => Side::Buy,
            MdSide::Sell => Side::Sell,
        } as i32,
        kind: match o.kind {
            MdKind::Limit => OrderKind::Limit,
            MdKind::Cancel => OrderKind::Cancel,
            MdKind::Market => OrderKind::Market,
        } as i32,
        price_ticks: o.price_ticks,
        quantity_lots: o.quantity_lots,
        client_ts_ns: o.client_ts_ns,
        ..Default::default()
    }
}

/// Loads the recordings in `dir` (or the bundled ones), merges them by time, keeps the
/// window [`from_s`, `from_s + duration_s`) seconds into the recording, and returns shard
/// `shard` of `shards`. Event offsets are relative to the window's start.
pub fn load_workload(
    dir: Option<&Path>,
    from_s: f64,
    duration_s: Option<f64>,
    shard: usize,
    shards: usize,
) -> anyhow::Result<Workload> {
    if shards == 0 || shard >= shards {
        bail!("--shard {shard} must be below --shards {shards}");
    }
    Ok(load_shards(dir, from_s, duration_s, shards)?.swap_remove(shard))
}

/// [`load_workload`] for every shard at once, reading the recordings once: element `i` is
/// shard `i` of `shards` (at least 1). Events go round-robin to the shards in time order.
pub fn load_shards(
    dir: Option<&Path>,
    from_s: f64,
    duration_s: Option<f64>,
    shards: usize,
) -> anyhow::Result<Vec<Workload>> {
    if shards == 0 {
        bail!("at least one shard is needed");
    }
    let dir = dir.map(Path::to_path_buf).unwrap_or_else(marketdata::bundled_dataset_dir);
    let mut per_market: Vec<Vec<MarketEvent>> = Vec::new();
    for (_, file) in MARKETS {
        let path = dir.join(file);
        per_market.push(
            marketdata::load_file(&path, Scale::BINANCE_USDM).with_context(|| format!("loading {}", path.display()))?,
        );
    }
    let merged = marketdata::merge_by_time(per_market);
    let t0 = merged.first().map_or(0, |(_, e)| e.recv_ts_ns) + (from_s.max(0.0) * 1e9) as u64;
    let horizon = duration_s.map(|s| (s * 1e9) as u64);
    let mut out: Vec<Workload> = (0..shards)
        .map(|_| Workload {
            markets: MARKETS.iter().map(|(m, _)| m.to_string()).collect(),
            events: Vec::new(),
            orders: 0,
            expected_from_peers: 0,
            checksum: Checksum::default(),
        })
        .collect();
    let mut total = 0u64;
    for (k, (m, ev)) in merged.into_iter().skip_while(|(_, e)| e.recv_ts_ns < t0).enumerate() {
        let offset = ev.recv_ts_ns - t0;
        if horizon.is_some_and(|h| offset >= h) {
            break;
        }
        let w = &mut out[k % shards];
        let market = MARKETS[m].0;
        let first_id = w.orders;
        let orders: Vec<Order> =
            ev.orders.iter().enumerate().map(|(j, o)| to_order(market, first_id + j as u64, o)).collect();
        w.orders += orders.len() as u64;
        total += orders.len() as u64;
        orders.iter().for_each(|o| w.checksum.add(o));
        w.events.push((offset, orders));
    }
    for w in &mut out {
        w.expected_from_peers = total - w.orders;
    }
    Ok(out)
}

/// Tally of orders received from one origin.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OriginTally {
    /// Distinct orders received.
    pub orders: u64,
    /// Content checksum of those orders (hex).
    pub checksum: String,
}

/// Batch outcomes of one market, as the engine saw them. `agreed`, `results_agreed` and
/// `halted` count batches holding orders; batches that held none are counted in `empty`
/// and `empty_halted` (after the engines stop, epochs go on closing empty batches whose
/// results nobody submits, so they halt).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct BatchTally {
    /// `BatchAgreed` received for a batch holding orders.
    pub agreed: u64,
    /// Agreed batches that needed repair at this node.
    pub repaired: u64,
    /// Orders repaired into agreed batches at this node.
    pub repaired_orders: u64,
    /// `BatchDisputed` received.
    pub disputed: u64,
    /// `ResultAgreed` received.
    pub results_agreed: u64,
    /// `ResultMismatch { halt }` received.
    pub halted: u64,
    /// Trades matched over the agreed batches.
    pub trades: u64,
    /// `BatchAgreed` received for a batch holding no order.
    #[serde(default)]
    pub empty: u64,
    /// `ResultMismatch { halt }` received for such a batch.
    #[serde(default)]
    pub empty_halted: u64,
    /// Set by the main job's summary, not by an engine: disputes (moved out of `disputed`)
    /// of batches agreed nowhere and from before every sidecar had started in the market.
    /// A sidecar votes from the epoch it started in and abstains on older batches
    /// (docs/PROTOCOL.md §11.10), so when the sidecars start across an epoch's edge, the
    /// earlier ones' first batch cannot reach a quorum.
    #[serde(default)]
    pub disputed_before_floor: u64,
}

/// What an engine did, printed as one JSON line on stdout at the end.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EngineReport {
    /// Shard index.
    pub shard: usize,
    /// Origin id of this engine's orders as receivers see it (sidecar peer id, or
    /// `shard-N` on the TCP baseline).
    pub origin: String,
    /// Orders submitted.
    pub sent: u64,
    /// Content checksum of the submitted orders (hex).
    pub sent_checksum: String,
    /// Orders the other shards hold (what should arrive).
    pub expected: u64,
    /// Distinct orders received from peers.
    pub received: u64,
    /// Orders received more than once.
    pub duplicates: u64,
    /// Per origin: distinct orders and checksum.
    pub by_origin: BTreeMap<String, OriginTally>,
    /// GO → last order submitted, s.
    pub send_secs: f64,
    /// GO → last order received, s.
    pub receive_secs: f64,
    /// Submit at the origin → receipt here.
    pub latency: LatencySummary,
    /// Latency histogram (µs value, count), for merging.
    pub latency_buckets: Vec<(u64, u64)>,
    /// Peer joined/left events seen.
    pub peer_events: u64,
    /// Per market: batch outcomes (sidecar transport only).
    pub batches: BTreeMap<String, BatchTally>,
    /// Seal → agreement at this node, per batch.
    pub agreement: LatencySummary,
    /// Agreement latency histogram (µs value, count), for merging.
    pub agreement_buckets: Vec<(u64, u64)>,
    /// Own orders committed: distinct ids told `OrdersCommitted` (sidecar transport).
    #[serde(default)]
    pub committed: u64,
    /// Content checksum of the committed own orders (hex), to compare with the other
    /// engines' `by_origin` entry for this origin.
    #[serde(default)]
    pub committed_checksum: String,
    /// `OrdersExcluded` outcomes received for own orders (an order excluded twice counts twice).
    #[serde(default)]
    pub excluded: u64,
    /// Excluded orders resubmitted under their id.
    #[serde(default)]
    pub resubmitted: u64,
    /// Own orders accepted but with no committed outcome at the end (0 when nothing was lost).
    #[serde(default)]
    pub unresolved: u64,
    /// Every batch agreed at this engine's sidecar: `"MARKET#EPOCH"` → batch hash (hex), to
    /// compare across engines.
    #[serde(default)]
    pub agreed_batches: BTreeMap<String, String>,
    /// Every batch disputed at this engine's sidecar: `"MARKET#EPOCH"`, ascending.
    #[serde(default)]
    pub disputed_batches: BTreeSet<String>,
    /// Times this engine saw its sidecar come back as a new run (and resubmitted).
    #[serde(default)]
    pub sidecar_restarts: u32,
    /// Times this engine was started again on its `--state-file` (and resumed).
    #[serde(default)]
    pub engine_restarts: u32,
}

/// The engine's two ends: chunks out, chunks in.
struct Link {
    origin_label: String,
    out: mpsc::Sender<Vec<Order>>,
    inbound: mpsc::Receiver<Vec<Order>>,
    peer_events: mpsc::UnboundedReceiver<()>,
    /// Batch events and a client to fetch batches and submit results (sidecar only).
    consensus:
        Option<(mpsc::UnboundedReceiver<Feed>, crate::proto::sidecar_client::SidecarClient<tonic::transport::Channel>)>,
    /// Resolves once `out` is closed: what the transport accepted.
    done: tokio::task::JoinHandle<anyhow::Result<Handed>>,
}

async fn connect_sidecar(socket: &Path, resume: Option<crate::proto::Cursor>) -> anyhow::Result<Link> {
    let l = sidecar_link::connect(socket, resume).await?;
    Ok(Link {
        origin_label: l.origin.to_string(),
        out: l.out,
        inbound: l.inbound,
        peer_events: l.peer_events,
        consensus: Some((l.feed, l.client)),
        done: l.done,
    })
}

async fn connect_tcp(shard: usize, listen: SocketAddr, peers: &[SocketAddr]) -> anyhow::Result<Link> {
    let listener = TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    let (in_tx, inbound) = mpsc::channel(1024);
    let expected_inbound = peers.len();
    tokio::spawn(async move {
        for _ in 0..expected_inbound {
            let Ok((sock, _)) = listener.accept().await else { break };
            let _ = sock.set_nodelay(true);
            let tx = in_tx.clone();
            tokio::spawn(async move {
                let mut frames =
                    FramedRead::new(sock, LengthDelimitedCodec::builder().max_frame_length(64 << 20).new_codec());
                while let Some(Ok(frame)) = frames.next().await {
                    match OrdersReceived::decode(frame.freeze()) {
                        Ok(o) => {
                            if tx.send(o.orders).await.is_err() {
                                break;
                            }
                        }
                        Err(e) => tracing::error!(error = %e, "bad baseline frame"),
                    }
                }
            });
        }
    });
    let mut writers = Vec::new();
    for &addr in peers {
        let deadline = Instant::now() + Duration::from_secs(30);
        let sock = loop {
            match TcpStream::connect(addr).await {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(e) => return Err(e).with_context(|| format!("connecting to baseline peer {addr}")),
            }
        };
        sock.set_nodelay(true)?;
        writers.push(FramedWrite::new(sock, LengthDelimitedCodec::builder().max_frame_length(64 << 20).new_codec()));
    }
    let (out, mut rx) = mpsc::channel::<Vec<Order>>(8);
    let origin = format!("shard-{shard}");
    let stamp = bytes::Bytes::from(origin.clone().into_bytes());
    let done = tokio::spawn(async move {
        let mut n = 0u64;
        while let Some(mut orders) = rx.recv().await {
            for o in &mut orders {
                o.origin = stamp.clone();
            }
            n += orders.len() as u64;
            let frame = Bytes::from(OrdersReceived { orders }.encode_to_vec());
            for w in &mut writers {
                w.send(frame.clone()).await.context("baseline send")?;
            }
        }
        for w in &mut writers {
            futures::SinkExt::<Bytes>::flush(w).await?;
        }
        Ok(Handed { accepted: n, broken: 0 })
    });
    let (_pe_tx, peer_events) = mpsc::unbounded_channel();
    Ok(Link { origin_label: origin, out, inbound, peer_events, consensus: None, done })
}

/// An origin as reports name it: its peer id in base58 (or, for the plain-TCP baseline,
/// its `shard-N` label).
pub(super) fn origin_label(origin: &[u8]) -> String {
    libp2p::PeerId::from_bytes(origin)
        .map(|p| p.to_string())
        .unwrap_or_else(|_| String::from_utf8_lossy(origin).into_owned())
}

/// Tallies peers' orders: distinct (origin, id), per-origin counts and checksums,
/// duplicates, and (for orders as they arrive) propagation latency.
#[derive(Default)]
pub(super) struct Receiver {
    pub(super) seen: HashSet<(u32, u64)>,
    pub(super) origins: HashMap<bytes::Bytes, (u32, OriginTally, Checksum)>,
    pub(super) duplicates: u64,
    pub(super) latency: Latency,
    pub(super) last_rx: Option<Instant>,
}

impl Receiver {
    pub(super) fn take(&mut self, orders: Vec<Order>) {
        let now = crate::epoch::unix_now_ns();
        for o in orders {
            let latency_us = (o.submitted_at_ns > 0).then(|| now.saturating_sub(o.submitted_at_ns) / 1_000);
            self.take_one(&o.origin, o.id, Checksum::term(&o), latency_us);
        }
        self.last_rx = Some(Instant::now());
    }

    /// One order of `origin` with id `id` and checksum term `term`; `latency_us` if it
    /// counts towards the propagation latency.
    pub(super) fn take_one(&mut self, origin: &Bytes, id: u64, term: u128, latency_us: Option<u64>) {
        let next = self.origins.len() as u32;
        let entry =
            self.origins.entry(origin.clone()).or_insert_with(|| (next, OriginTally::default(), Checksum::default()));
        if !self.seen.insert((entry.0, id)) {
            self.duplicates += 1;
            return;
        }
        entry.1.orders += 1;
        entry.2.add_term(term);
        if let Some(us) = latency_us {
            self.latency.record(us);
        }
    }
}

/// Runs the reference engine; returns its report.
pub async fn run(args: &EngineArgs) -> anyhow::Result<EngineReport> {
    let replay = args.replay;
    let workload = load_workload(args.data_dir.as_deref(), replay.from_s, replay.duration_s, args.shard, args.shards)?;
    tracing::info!(
        shard = args.shard,
        shards = args.shards,
        orders = workload.orders,
        events = workload.events.len(),
        expected = workload.expected_from_peers,
        "workload loaded"
    );
    let journaled = match &args.state_file {
        Some(path) if args.transport != TransportKind::Sidecar => {
            bail!("--state-file {} needs --transport sidecar", path.display())
        }
        Some(path) => journal::load(path)?,
        None => journal::Loaded::default(),
    };
    let journal = Journal::open(args.state_file.as_deref())?;
    if journaled.resuming() {
        tracing::warn!(
            handed = journaled.handed,
            events = journaled.effects.len(),
            cursor = ?journaled.cursor,
            "resuming from the state file"
        );
    }
    let mut link = match args.transport {
        TransportKind::Sidecar => connect_sidecar(&args.socket, journaled.cursor).await?,
        TransportKind::Relay => {
            // No batches to match: the relay has no consensus.
            let mut link = connect_sidecar(&args.socket, None).await?;
            link.consensus = None;
            link
        }
        TransportKind::Tcp => {
            let listen = args.listen.context("--transport tcp needs --listen")?;
            connect_tcp(args.shard, listen, &args.peers).await?
        }
    };
    if args.wait_for_go && !journaled.resuming() {
        println!("READY");
        let mut line = String::new();
        tokio::io::BufReader::new(tokio::io::stdin()).read_line(&mut line).await?;
        if line.trim() != "GO" {
            bail!("expected GO on stdin, got {line:?}");
        }
    }
    let own: Arc<Vec<Order>> = Arc::new(workload.events.iter().flat_map(|(_, o)| o.iter().cloned()).collect());
    let mut state = MatcherState::default();
    for effect in &journaled.effects {
        state.apply(effect, &own);
    }
    let matcher = Arc::new(std::sync::Mutex::new(state));
    // Own orders handed to the transport so far (ids below it).
    let sent_upto = Arc::new(std::sync::atomic::AtomicU64::new(journaled.handed));
    let consensus = link.consensus.is_some();
    if let Some((feed, client)) = link.consensus.take() {
        let own_origin = libp2p::PeerId::from_str(&link.origin_label).map(|p| Bytes::from(p.to_bytes()))?;
        let m = Matcher {
            feed,
            client,
            own_origin,
            own: own.clone(),
            handed: sent_upto.clone(),
            state: matcher.clone(),
            journal: journal.clone(),
            corrupt_results_every: args.corrupt_results_every.filter(|n| *n > 0),
        };
        tokio::spawn(m.run(journaled.resuming()));
    }
    // The replay's schedule runs from when it first began: a resumed engine sends what fell
    // due while it was down at once, then keeps the recorded pace.
    let now_ns = crate::epoch::unix_now_ns();
    let started_ns = journaled.started_at_unix_ns.unwrap_or(now_ns);
    if !journaled.resuming() {
        journal.append(&Entry::Started { at_unix_ns: started_ns })?;
    }
    let start = Instant::now() - Duration::from_nanos(now_ns.saturating_sub(started_ns));
    let expected = workload.expected_from_peers;
    let mut rx = Receiver::default();
    let mut inbound = std::mem::replace(&mut link.inbound, mpsc::channel(1).1);
    let idle = Duration::from_millis(args.idle_timeout_ms);
    // The stream's early deliveries: all of them without consensus; with it, until the
    // agreed batches account for everything (orders a sidecar delivered to no subscriber,
    // e.g. while it was restarting, reach the engine only through their batch).
    let stop_receiving = tokio_util::sync::CancellationToken::new();
    let stop = stop_receiving.clone();
    let receiver = tokio::spawn(async move {
        loop {
            if rx.seen.len() as u64 >= expected {
                break;
            }
            let next = tokio::select! {
                _ = stop.cancelled() => break,
                next = tokio::time::timeout(idle, inbound.recv()) => next,
            };
            match next {
                Ok(Some(orders)) => rx.take(orders),
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(received = rx.seen.len(), expected, "no orders for {idle:?}; giving up waiting");
                    break;
                }
            }
        }
        rx
    });

    // Replay (a resumed engine skips what it handed over before; the matcher resubmits
    // those of them not known committed).
    let sent_checksum = workload.checksum;
    let resumed_at = journaled.handed;
    let mut sent = resumed_at;
    let mut chunk: Vec<Order> = Vec::new();
    // Journals the hand-over first (a crash in between resubmits, never loses), then sends.
    let hand_over = async |mut out: Vec<Order>, upto: u64| -> anyhow::Result<()> {
        let stamp = crate::epoch::unix_now_ns();
        for o in &mut out {
            o.submitted_at_ns = stamp;
        }
        journal.append(&Entry::Handed { upto })?;
        sent_upto.store(upto, std::sync::atomic::Ordering::Release);
        link.out.send(out).await.context("the transport closed while submitting")
    };
    for (offset, orders) in workload.events {
        if orders.first().is_some_and(|o| o.id < resumed_at) {
            continue;
        }
        if replay.pace == Pace::Real {
            let due = start + Duration::from_nanos((offset as f64 / replay.speed) as u64);
            tokio::time::sleep_until(due.into()).await;
        }
        sent += orders.len() as u64;
        chunk.extend(orders);
        if replay.pace == Pace::Real || chunk.len() >= args.chunk_orders {
            hand_over(std::mem::take(&mut chunk), sent).await?;
        }
    }
    if !chunk.is_empty() {
        hand_over(chunk, sent).await?;
    }
    drop(link.out);
    let handed = link.done.await.context("submit task panicked")??;
    let send_secs = start.elapsed().as_secs_f64();
    // With a broken stream the accepted count covers the last stream only; the orders'
    // outcomes (`unresolved`) say whether any was lost.
    if handed.broken == 0 && handed.accepted != sent - resumed_at {
        bail!("the transport accepted {} of {} orders", handed.accepted, sent - resumed_at);
    }
    tracing::info!(sent, secs = send_secs, "replay submitted");

    if consensus {
        // Wait until every own order is committed, every peer order is in an agreed batch,
        // and every agreed batch has its result verdict; give up after `settle_timeout_ms`,
        // or `idle_timeout_ms` without any batch event.
        let deadline = Instant::now() + Duration::from_millis(args.settle_timeout_ms);
        loop {
            let (pending, idle_for) = {
                let st = matcher.lock().expect("matcher state");
                let pending = (sent - st.committed.len() as u64)
                    + expected.saturating_sub(st.received.seen.len() as u64)
                    + st.unsettled.len() as u64;
                (pending, st.last_progress.map_or(Duration::ZERO, |t| t.elapsed()))
            };
            if pending == 0 {
                break;
            }
            if Instant::now() > deadline || idle_for > idle {
                tracing::warn!(pending, "orders uncommitted or batches unsettled; reporting anyway");
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop_receiving.cancel();
    }
    let rx = receiver.await.context("receiver task panicked")?;
    let mut peer_events = 0;
    while link.peer_events.try_recv().is_ok() {
        peer_events += 1;
    }
    let st = std::mem::take(&mut *matcher.lock().expect("matcher state"));
    // With consensus, what was received is what the agreed batches hold (the stream's
    // early deliveries may include orders later excluded); without it, the stream.
    let counted = if consensus { &st.received } else { &rx };
    let by_origin = counted
        .origins
        .iter()
        .map(|(o, (_, tally, sum))| (origin_label(o), OriginTally { orders: tally.orders, checksum: sum.hex() }))
        .collect();
    Ok(EngineReport {
        shard: args.shard,
        origin: link.origin_label,
        sent,
        sent_checksum: sent_checksum.hex(),
        expected,
        received: counted.seen.len() as u64,
        duplicates: counted.duplicates,
        by_origin,
        send_secs,
        receive_secs: rx.last_rx.map_or(0.0, |t| t.duration_since(start).as_secs_f64()),
        latency: rx.latency.summary(),
        latency_buckets: rx.latency.buckets(),
        peer_events,
        batches: st.batches,
        agreement: st.agreement.summary(),
        agreement_buckets: st.agreement.buckets(),
        committed: st.committed.len() as u64,
        committed_checksum: st.committed_checksum.hex(),
        excluded: st.excluded,
        resubmitted: st.resubmitted,
        unresolved: if consensus { sent - st.committed.len() as u64 } else { 0 },
        agreed_batches: st.agreed_batches,
        disputed_batches: st.disputed_batches,
        sidecar_restarts: st.sidecar_restarts,
        engine_restarts: st.engine_restarts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_the_flow() {
        let a = load_workload(None, 0.0, Some(5.0), 0, 3).unwrap();
        let b = load_workload(None, 0.0, Some(5.0), 1, 3).unwrap();
        let c = load_workload(None, 0.0, Some(5.0), 2, 3).unwrap();
        let total = a.orders + b.orders + c.orders;
        assert!(total > 1000, "{total}");
        assert_eq!(a.expected_from_peers, b.orders + c.orders);
        assert_eq!(b.expected_from_peers, a.orders + c.orders);
        // Ids are per engine, from 0, without gaps.
        let ids: Vec<u64> = a.events.iter().flat_map(|(_, o)| o.iter().map(|o| o.id)).collect();
        assert_eq!(ids, (0..a.orders).collect::<Vec<_>>());
        assert!(a.events.windows(2).all(|w| w[0].0 <= w[1].0), "time-ordered");
        assert!(a.events.iter().all(|(t, _)| *t < 5_000_000_000));
    }

    #[test]
    fn bad_shard_is_an_error() {
        assert!(load_workload(None, 0.0, Some(1.0), 3, 3).is_err());
    }

    #[test]
    fn window_skips_the_start() {
        let all = load_workload(None, 0.0, Some(20.0), 0, 1).unwrap();
        let late = load_workload(None, 10.0, Some(10.0), 0, 1).unwrap();
        assert!(late.orders > 0 && late.orders < all.orders);
        assert!(late.events.iter().all(|(t, _)| *t < 10_000_000_000));
        // The window's first event starts near offset 0.
        assert!(late.events[0].0 < 1_000_000_000);
    }
}
