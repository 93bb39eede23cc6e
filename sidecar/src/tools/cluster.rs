//! The main job: three sidecars and three reference engines on loopback, replaying the real
//! Binance flow, with a summary of what every engine sent and received.
//!
//! Every piece is a real process: `openmatch-gossip node` ×N (TCP + Noise + Yamux on
//! 127.0.0.1, full bootstrap lists from pre-generated identities) and `openmatch-gossip
//! engine` ×N (each on its own sidecar's socket). Engines load their shard, subscribe,
//! print READY; when all are ready the job writes GO to each so they start together. Each
//! engine prints a JSON [`EngineReport`]; the job cross-checks them: every engine must
//! receive every other engine's orders exactly once, with matching content checksums.
//!
//! With transport `tcp` the sidecars are skipped and the engines connect to each other
//! directly: the benchmark's baseline. With transport `relay` the sidecars are
//! `openmatch-gossip relay` processes ([`crate::tools::relay`]): the benchmark's stack floor.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdin, Command};

use crate::tools::engine::{EngineReport, MARKETS, Pace, ReplayArgs, TransportKind};
use crate::tools::stats::{Latency, LatencySummary};
use openmatch_gossip_crds::SidecarConfig;

/// Flags of `openmatch-gossip cluster`.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArgs {
    /// Number of sidecar + engine pairs.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// What to replay and how fast.
    #[command(flatten)]
    pub replay: ReplayArgs,
    /// Transport: sidecar (the real thing), tcp (plain-TCP baseline, no sidecars) or relay
    /// (the stack floor: `openmatch-gossip relay` processes, the same libp2p and gRPC stack
    /// with no validation, dedup or consensus; a benchmark baseline).
    #[arg(long, value_enum, default_value = "sidecar")]
    pub transport: TransportKind,
    /// Epoch grace for the sidecars, ms: how long after an epoch ends its batch is sealed.
    /// It must exceed the propagation delay, which at maximum speed is queueing (seconds).
    #[arg(long, default_value_t = 5_000)]
    pub grace_ms: u32,
    /// Directory for configs, keys, sockets and logs (default: a fresh temporary directory,
    /// removed afterwards unless --keep).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Keep the work directory (logs) after the run.
    #[arg(long)]
    pub keep: bool,
    /// Print the result as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// CPU and memory of one sidecar process, read from /proc before it is stopped.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct ProcessUsage {
    /// User + system CPU time, s.
    pub cpu_secs: f64,
    /// Peak resident set size (VmHWM), MiB.
    pub peak_rss_mib: f64,
}

/// The outcome of one run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterReport {
    /// Transport used.
    pub transport: TransportKind,
    /// Pace used.
    pub pace: Pace,
    /// Engines' reports, by shard.
    pub engines: Vec<EngineReport>,
    /// Sidecars' CPU and memory (empty on the tcp baseline).
    pub sidecars: Vec<ProcessUsage>,
    /// Orders that did not reach an engine that should have received them.
    pub missing: u64,
    /// Orders that reached an engine more than once.
    pub duplicates: u64,
    /// (receiver, origin) pairs whose content checksum differs from what the origin sent.
    pub checksum_mismatches: Vec<String>,
    /// Propagation latency over all engines.
    pub latency: LatencySummary,
    /// Batch outcomes per market, summed over engines (each engine reports every batch it
    /// took part in, so a batch agreed by all three counts 3).
    pub batches: BTreeMap<String, crate::tools::engine::BatchTally>,
    /// Seal → agreement latency over all engines and batches.
    pub agreement: LatencySummary,
    /// Batches agreed with different hashes at different engines ([`divergent_batches`]);
    /// empty on a sound run.
    #[serde(default)]
    pub divergent_batches: Vec<String>,
}

impl ClusterReport {
    /// Nothing lost, duplicated or altered; every batch agreed with the same hash wherever
    /// it was agreed; no batch disputed (but those from before every sidecar had started);
    /// every batch holding orders settled (its result agreed). Empty batches' halts do not
    /// count ([`crate::tools::engine::BatchTally`]).
    pub fn ok(&self) -> bool {
        self.missing == 0
            && self.duplicates == 0
            && self.checksum_mismatches.is_empty()
            && self.divergent_batches.is_empty()
            && self.batches.values().all(|b| b.disputed == 0 && b.halted == 0 && b.results_agreed == b.agreed)
    }

    /// Orders delivered per second to engine `i` (distinct orders / time from GO to the last
    /// one received).
    pub fn delivered_rate(&self, i: usize) -> f64 {
        let e = &self.engines[i];
        if e.receive_secs > 0.0 { e.received as f64 / e.receive_secs } else { 0.0 }
    }

    /// The human-readable summary.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "openmatch-gossip cluster: {} engines, transport {:?}, pace {:?}",
            self.engines.len(),
            self.transport,
            self.pace
        );
        let _ = writeln!(
            s,
            "{:<6} {:>10} {:>10} {:>10} {:>8} {:>6} {:>12} {:>9} {:>9} {:>9}",
            "engine", "sent", "expected", "received", "missing", "dups", "orders/s", "p50 µs", "p99 µs", "max µs"
        );
        for (i, e) in self.engines.iter().enumerate() {
            let _ = writeln!(
                s,
                "{:<6} {:>10} {:>10} {:>10} {:>8} {:>6} {:>12.0} {:>9} {:>9} {:>9}",
                e.shard,
                e.sent,
                e.expected,
                e.received,
                e.expected.saturating_sub(e.received),
                e.duplicates,
                self.delivered_rate(i),
                e.latency.p50_us,
                e.latency.p99_us,
                e.latency.max_us
            );
        }
        for (i, u) in self.sidecars.iter().enumerate() {
            let _ = writeln!(s, "sidecar {i}: CPU {:.2} s, peak RSS {:.1} MiB", u.cpu_secs, u.peak_rss_mib);
        }
        let l = &self.latency;
        let _ = writeln!(
            s,
            "propagation latency (submit at one engine → event at another): p50 {} µs, p99 {} µs, max {} µs over {} deliveries",
            l.p50_us, l.p99_us, l.max_us, l.count
        );
        if !self.batches.is_empty() {
            let _ = writeln!(
                s,
                "batches per market, summed over the {} nodes (sealed = agreed + disputed + disputed early + empty; empty: agreed without an order, verdicts apart; disputed early: from before every sidecar had started):",
                self.engines.len()
            );
            let _ = writeln!(
                s,
                "{:<10} {:>7} {:>7} {:>9} {:>10} {:>9} {:>14} {:>7} {:>8} {:>8} {:>6} {:>12}",
                "market",
                "sealed",
                "agreed",
                "repaired",
                "rep.orders",
                "disputed",
                "disputed early",
                "halted",
                "settled",
                "trades",
                "empty",
                "empty halted"
            );
            for (m, b) in &self.batches {
                let _ = writeln!(
                    s,
                    "{m:<10} {:>7} {:>7} {:>9} {:>10} {:>9} {:>14} {:>7} {:>8} {:>8} {:>6} {:>12}",
                    b.agreed + b.disputed + b.disputed_before_floor + b.empty,
                    b.agreed,
                    b.repaired,
                    b.repaired_orders,
                    b.disputed,
                    b.disputed_before_floor,
                    b.halted,
                    b.results_agreed,
                    b.trades,
                    b.empty,
                    b.empty_halted
                );
            }
            let a = &self.agreement;
            let _ = writeln!(
                s,
                "batch agreement latency (first seal → agreed, per node): p50 {} µs, p99 {} µs, max {} µs over {} batch decisions",
                a.p50_us, a.p99_us, a.max_us, a.count
            );
        }
        let _ = writeln!(
            s,
            "missing {}, duplicates {}, checksum mismatches {}",
            self.missing,
            self.duplicates,
            self.checksum_mismatches.len()
        );
        for m in &self.checksum_mismatches {
            let _ = writeln!(s, "  mismatch: {m}");
        }
        if !self.batches.is_empty() || !self.divergent_batches.is_empty() {
            let _ = writeln!(s, "batches agreed with different hashes: {}", self.divergent_batches.len());
            for b in &self.divergent_batches {
                let _ = writeln!(s, "  divergent: {b}");
            }
        }
        let _ = writeln!(
            s,
            "{}",
            if self.ok() && self.batches.is_empty() {
                "RESULT: OK — every engine received every other engine's orders exactly once"
            } else if self.ok() {
                "RESULT: OK — every engine received every other engine's orders exactly once; every batch holding orders agreed with one hash everywhere and settled"
            } else {
                "RESULT: FAILED — orders lost, duplicated or altered, or a batch disputed, divergent or halted"
            }
        );
        s
    }
}

/// A free loopback TCP port (bound, then released; the short race is acceptable here).
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn proc_usage(pid: u32) -> Option<ProcessUsage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command name: state is field 3 of stat(5); utime 14 and stime 15.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm_kib: f64 = status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(ProcessUsage { cpu_secs: ticks / hz.max(1.0), peak_rss_mib: hwm_kib / 1024.0 })
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

struct Sidecar {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

struct Engine {
    child: Child,
    stdin: ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    log: PathBuf,
}

fn log_file(path: &Path) -> anyhow::Result<Stdio> {
    Ok(Stdio::from(std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?))
}

/// Starts `n` sidecar processes (`binary subcommand`: `node`, or `relay` for the stack
/// floor) with full bootstrap lists, on free loopback ports.
async fn start_sidecars(
    binary: &Path,
    subcommand: &str,
    dir: &Path,
    n: usize,
    grace_ms: u32,
) -> anyhow::Result<Vec<Sidecar>> {
    let mut keys = Vec::new();
    let mut addrs = Vec::new();
    for i in 0..n {
        let key = libp2p::identity::Keypair::generate_ed25519();
        let key_path = dir.join(format!("node{i}.key"));
        crate::identity::write_new(&key_path, &key)?;
        let addr = format!("/ip4/127.0.0.1/tcp/{}/p2p/{}", free_port()?, key.public().to_peer_id());
        keys.push(key_path);
        addrs.push(addr);
    }
    let mut sidecars = Vec::new();
    for i in 0..n {
        let mut config = SidecarConfig {
            network: "demo".into(),
            markets: MARKETS.iter().map(|(m, _)| m.to_string()).collect(),
            ..Default::default()
        };
        let listen = addrs[i].rsplit_once("/p2p/").expect("built above").0.to_owned();
        config.p2p.listen_addrs = vec![listen];
        config.consensus.grace_ms = grace_ms;
        config.consensus.seal_timeout_ms = 2_000;
        config.consensus.repair_window_ms = 30_000;
        config.p2p.bootstrap_peers =
            addrs.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, a)| a.clone()).collect();
        let config_path = dir.join(format!("node{i}.yaml"));
        std::fs::write(&config_path, config.to_yaml())?;
        let socket = dir.join(format!("node{i}.sock"));
        let log = dir.join(format!("node{i}.log"));
        let child = Command::new(binary)
            .arg(subcommand)
            .arg("--config")
            .arg(&config_path)
            .arg("--socket")
            .arg(&socket)
            .arg("--identity-key")
            .arg(&keys[i])
            .arg("--metrics-addr")
            .arg(format!("127.0.0.1:{}", free_port()?))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(&log)?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        sidecars.push(Sidecar { child, socket, log });
    }
    Ok(sidecars)
}

/// Waits until every sidecar is connected to all others, knows each of them subscribed to
/// every orders topic, has at least `min(n - 1, D_lo)` of them in its GossipSub mesh there,
/// and has finished its start-up recovery (`healthy`).
///
/// The mesh need not hold every peer: GossipSub grafts up to D (`meshN`) peers when it
/// joins a topic and grafts more only while the mesh is below D_lo (`meshNLow`), so with
/// more than D_lo + 1 nodes a full mesh is never guaranteed (v1.1 spec, "Mesh Maintenance").
/// Orders still reach every peer: the origin publishes to all subscribed peers (flood
/// publishing) and the mesh forwards the rest.
async fn wait_for_mesh(sidecars: &mut [Sidecar], timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let peers = sidecars.len() - 1;
    let want_mesh = peers.min(SidecarConfig::default().gossipsub.mesh_n_low as usize);
    for (i, s) in sidecars.iter_mut().enumerate() {
        let mut last = String::from("no status yet");
        loop {
            if let Some(status) = s.child.try_wait()? {
                bail!("sidecar {i} exited with {status} during start-up; its log ends:\n{}", tail(&s.log, 20));
            }
            if let Ok(mut c) = crate::api::connect(&s.socket).await
                && let Ok(st) = c.get_status(crate::proto::GetStatusRequest {}).await
            {
                let st = st.into_inner();
                let orders: Vec<_> = st.topics.iter().filter(|t| t.topic.contains("/orders/")).collect();
                let meshed =
                    orders.iter().all(|t| t.subscribed_peers as usize >= peers && t.mesh_peers.len() >= want_mesh);
                // Healthy: a live quorum and start-up recovery done (submissions would wait
                // for it).
                if st.health == "healthy" && st.connected_peers.len() >= peers && meshed {
                    break;
                }
                last = format!(
                    "health {}, {} of {peers} peers connected, mesh sizes {:?} (want ≥ {want_mesh})",
                    st.health,
                    st.connected_peers.len(),
                    orders.iter().map(|t| t.mesh_peers.len()).collect::<Vec<_>>()
                );
            }
            if Instant::now() > deadline {
                bail!("sidecar {i} was not ready within {timeout:?} ({last}); its log ends:\n{}", tail(&s.log, 20));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Runs the main job with `binary` as the `openmatch-gossip` executable.
pub async fn run(args: &ClusterArgs, binary: &Path) -> anyhow::Result<ClusterReport> {
    let n = args.nodes;
    if n < 2 {
        bail!("--nodes must be at least 2");
    }
    let temp;
    let dir: PathBuf = match &args.work_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            temp = tempfile::Builder::new().prefix("openmatch-cluster-").tempdir()?;
            if args.keep { temp.keep() } else { temp.path().to_owned() }
        }
    };
    let mut sidecars = Vec::new();
    if let Some(subcommand) = args.transport.sidecar_subcommand() {
        sidecars = start_sidecars(binary, subcommand, &dir, n, args.grace_ms).await?;
        wait_for_mesh(&mut sidecars, Duration::from_secs(30)).await?;
    }
    let tcp_ports: Vec<u16> = (0..n).map(|_| free_port()).collect::<anyhow::Result<_>>()?;
    let mut engines = Vec::new();
    for i in 0..n {
        let log = dir.join(format!("engine{i}.log"));
        let mut cmd = Command::new(binary);
        cmd.arg("engine").args(["--shard", &i.to_string(), "--shards", &n.to_string()]);
        cmd.args(args.replay.to_args()).arg("--wait-for-go");
        match args.transport {
            TransportKind::Sidecar | TransportKind::Relay => {
                cmd.arg("--transport").arg(args.transport.as_arg()).arg("--socket").arg(&sidecars[i].socket);
            }
            TransportKind::Tcp => {
                cmd.arg("--transport")
                    .arg(args.transport.as_arg())
                    .arg("--listen")
                    .arg(format!("127.0.0.1:{}", tcp_ports[i]));
                for (j, p) in tcp_ports.iter().enumerate().filter(|(j, _)| *j != i) {
                    let _ = j;
                    cmd.arg("--peer").arg(format!("127.0.0.1:{p}"));
                }
            }
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log_file(&log)?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting engine {i}"))?;
        let stdin = child.stdin.take().expect("piped");
        let lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        engines.push(Engine { child, stdin, lines, log });
    }
    for (i, e) in engines.iter_mut().enumerate() {
        let line = tokio::time::timeout(Duration::from_secs(120), e.lines.next_line()).await;
        match line {
            Ok(Ok(Some(l))) if l.trim() == "READY" => {}
            other => bail!("engine {i} did not become ready ({other:?}); its log ends:\n{}", tail(&e.log, 20)),
        }
    }
    for e in &mut engines {
        e.stdin.write_all(b"GO\n").await?;
        e.stdin.flush().await?;
    }
    let mut reports = Vec::new();
    for (i, e) in engines.iter_mut().enumerate() {
        let mut last = None;
        while let Some(l) = e.lines.next_line().await? {
            last = Some(l);
        }
        let status = e.child.wait().await?;
        if !status.success() {
            bail!("engine {i} failed ({status}); its log ends:\n{}", tail(&e.log, 30));
        }
        let line = last.with_context(|| format!("engine {i} printed no report"))?;
        reports
            .push(serde_json::from_str::<EngineReport>(&line).with_context(|| format!("engine {i} report: {line}"))?);
    }
    let mut usage = Vec::new();
    for (i, s) in sidecars.iter_mut().enumerate() {
        let pid = s.child.id().context("sidecar already exited")?;
        usage.push(proc_usage(pid).unwrap_or_default());
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        let status = tokio::time::timeout(Duration::from_secs(20), s.child.wait())
            .await
            .context("sidecar did not stop within 20 s of SIGTERM")??;
        if !status.success() {
            bail!("sidecar {i} exited with {status} on SIGTERM; its log ends:\n{}", tail(&s.log, 20));
        }
        if s.socket.exists() {
            bail!("sidecar {i} left its socket {} behind", s.socket.display());
        }
    }
    if !args.keep && args.work_dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("logs, configs and keys kept in {}", dir.display());
    }
    Ok(summarise(args, reports, usage))
}

/// `"MARKET#EPOCH"` → (market, epoch); `None` if malformed.
fn batch_key(key: &str) -> Option<(&str, u64)> {
    let (market, epoch) = key.rsplit_once('#')?;
    Some((market, epoch.parse().ok()?))
}

/// Per market, the first epoch every sidecar voted on: the latest of the engines' first
/// agreed epochs there.
fn common_floors(engines: &[EngineReport]) -> BTreeMap<&str, u64> {
    let mut floors: BTreeMap<&str, u64> = BTreeMap::new();
    for e in engines {
        let mut first: BTreeMap<&str, u64> = BTreeMap::new();
        for (m, epoch) in e.agreed_batches.keys().filter_map(|k| batch_key(k)) {
            first.entry(m).and_modify(|f| *f = (*f).min(epoch)).or_insert(epoch);
        }
        for (m, f) in first {
            floors.entry(m).and_modify(|x| *x = (*x).max(f)).or_insert(f);
        }
    }
    floors
}

/// Per market, the disputes at engine `e` of batches that no engine agreed and that are
/// older than the market's [`common_floors`] entry: see `BatchTally::disputed_before_floor`.
/// A batch agreed at one engine and disputed at another stays a dispute.
fn disputed_before_floor(
    e: &EngineReport,
    engines: &[EngineReport],
    floors: &BTreeMap<&str, u64>,
) -> BTreeMap<String, u64> {
    let mut early: BTreeMap<String, u64> = BTreeMap::new();
    for key in &e.disputed_batches {
        let Some((m, epoch)) = batch_key(key) else { continue };
        let agreed_somewhere = engines.iter().any(|o| o.agreed_batches.contains_key(key));
        if !agreed_somewhere && floors.get(m).is_some_and(|f| epoch < *f) {
            *early.entry(m.to_owned()).or_default() += 1;
        }
    }
    early
}

/// Batches agreed at two or more engines with different batch hashes, one line each:
/// `"MARKET#EPOCH: HASH at engines {0, 2}; HASH at engines {1}"`, ascending by key. A
/// quorum certifies one hash per batch (docs/PROTOCOL.md §11.2), so any line here is a
/// safety violation.
pub fn divergent_batches(engines: &[EngineReport]) -> Vec<String> {
    let mut seen: BTreeMap<&str, BTreeMap<&str, BTreeSet<usize>>> = BTreeMap::new();
    for e in engines {
        for (key, hash) in &e.agreed_batches {
            seen.entry(key).or_default().entry(hash).or_default().insert(e.shard);
        }
    }
    seen.into_iter()
        .filter(|(_, by_hash)| by_hash.len() > 1)
        .map(|(key, by_hash)| {
            let parts: Vec<String> =
                by_hash.iter().map(|(hash, shards)| format!("{hash} at engines {shards:?}")).collect();
            format!("{key}: {}", parts.join("; "))
        })
        .collect()
}

fn summarise(args: &ClusterArgs, engines: Vec<EngineReport>, sidecars: Vec<ProcessUsage>) -> ClusterReport {
    let sent_by_origin: BTreeMap<&str, (&str, u64)> =
        engines.iter().map(|e| (e.origin.as_str(), (e.sent_checksum.as_str(), e.sent))).collect();
    let mut mismatches = Vec::new();
    let mut latency = Latency::default();
    let mut agreement = Latency::default();
    let mut batches: BTreeMap<String, crate::tools::engine::BatchTally> = BTreeMap::new();
    let floors = common_floors(&engines);
    for e in &engines {
        latency.merge_buckets(&e.latency_buckets);
        agreement.merge_buckets(&e.agreement_buckets);
        for (m, t) in &e.batches {
            let b = batches.entry(m.clone()).or_default();
            b.agreed += t.agreed;
            b.repaired += t.repaired;
            b.repaired_orders += t.repaired_orders;
            b.disputed += t.disputed;
            b.results_agreed += t.results_agreed;
            b.halted += t.halted;
            b.trades += t.trades;
            b.empty += t.empty;
            b.empty_halted += t.empty_halted;
        }
        for (m, n) in disputed_before_floor(e, &engines, &floors) {
            let b = batches.entry(m).or_default();
            b.disputed -= n;
            b.disputed_before_floor += n;
        }
        for (origin, (checksum, sent)) in &sent_by_origin {
            if *origin == e.origin {
                continue;
            }
            match e.by_origin.get(*origin) {
                Some(t) if t.orders == *sent && t.checksum != *checksum => {
                    mismatches.push(format!("engine {} got different content from {origin}", e.shard))
                }
                Some(_) | None => {}
            }
        }
        for origin in e.by_origin.keys() {
            if !sent_by_origin.contains_key(origin.as_str()) {
                mismatches.push(format!("engine {} got orders from unknown origin {origin}", e.shard));
            }
        }
    }
    ClusterReport {
        transport: args.transport,
        pace: args.replay.pace,
        missing: engines.iter().map(|e| e.expected.saturating_sub(e.received)).sum(),
        duplicates: engines.iter().map(|e| e.duplicates).sum(),
        checksum_mismatches: mismatches,
        latency: latency.summary(),
        batches,
        agreement: agreement.summary(),
        divergent_batches: divergent_batches(&engines),
        engines,
        sidecars,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(agreed: &[&str], disputed: &[&str]) -> EngineReport {
        EngineReport {
            agreed_batches: agreed.iter().map(|k| (k.to_string(), "ab".to_string())).collect(),
            disputed_batches: disputed.iter().map(|k| k.to_string()).collect(),
            ..EngineReport::default()
        }
    }

    /// The failing run this rule comes from: sidecar 0 started in epoch 729, the others in
    /// 730 and abstained on 729, so sidecar 0 disputed its first batch in both markets.
    #[test]
    fn a_dispute_from_before_every_sidecar_started_is_apart_unless_agreed_elsewhere() {
        let later = ["B#730", "B#731", "E#730", "E#731"];
        let engines = vec![engine(&later, &["B#729", "E#729", "E#731"]), engine(&later, &[]), engine(&later, &[])];
        let floors = common_floors(&engines);
        assert_eq!(floors, BTreeMap::from([("B", 730), ("E", 730)]));
        let early = disputed_before_floor(&engines[0], &engines, &floors);
        assert_eq!(early, BTreeMap::from([("B".to_string(), 1), ("E".to_string(), 1)]), "E#731 is agreed elsewhere");

        // A floor is the latest first epoch: an engine that started later moves it.
        let engines =
            vec![engine(&["B#731"], &[]), engine(&["B#730", "B#731"], &["B#729"]), engine(&["B#731"], &["B#730"])];
        let floors = common_floors(&engines);
        assert_eq!(floors["B"], 731);
        assert_eq!(disputed_before_floor(&engines[1], &engines, &floors), BTreeMap::from([("B".to_string(), 1)]));
        assert!(disputed_before_floor(&engines[2], &engines, &floors).is_empty(), "B#730 is agreed at engine 1");
    }

    #[test]
    fn a_batch_agreed_with_two_hashes_is_reported_and_fails_the_run() {
        let mut engines = vec![engine(&["B#7", "B#8"], &[]), engine(&["B#7", "B#8"], &[]), engine(&["B#7"], &[])];
        for (i, e) in engines.iter_mut().enumerate() {
            e.shard = i;
        }
        assert!(divergent_batches(&engines).is_empty(), "same hash everywhere, a batch agreed at two of three");
        engines[2].agreed_batches.insert("B#7".into(), "cd".into());
        assert_eq!(divergent_batches(&engines), vec!["B#7: ab at engines {0, 1}; cd at engines {2}".to_string()]);

        let args = ClusterArgs {
            nodes: 3,
            replay: ReplayArgs { pace: Pace::Real, speed: 1.0, from_s: 0.0, duration_s: Some(1.0) },
            transport: TransportKind::Sidecar,
            grace_ms: 200,
            work_dir: None,
            keep: false,
            json: false,
        };
        let report = summarise(&args, engines, Vec::new());
        assert!(!report.ok());
        assert!(report.render().contains("divergent: B#7"), "{}", report.render());
    }
}
