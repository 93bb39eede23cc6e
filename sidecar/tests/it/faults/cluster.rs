//! Real processes in a [`Lab`]: `openmatch-gossip node` ×N, node `i` inside namespace `i`
//! on `/ip4/10.88.k.(i+1)/tcp/4001`, and `openmatch-gossip engine` ×N in the root
//! namespace, each on its sidecar's Unix socket (the filesystem is shared across network
//! namespaces, so the socket reaches the sidecar wherever its network is).
//!
//! It mirrors the main job (`openmatch_gossip_sidecar::tools::cluster`): identities are
//! generated first so every node gets a full bootstrap list with peer ids; engines load
//! their shard, subscribe and print READY, then all get GO together; each prints its JSON
//! [`EngineReport`] as its last stdout line. Configs, keys, sockets and logs live in a
//! temporary directory, which [`Cluster::fail`] keeps (and prints the tail of every log
//! from) when something goes wrong.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use openmatch_gossip_crds::SidecarConfig;
use openmatch_gossip_sidecar::proto::{GetStatusRequest, NodeStatus};
use openmatch_gossip_sidecar::tools::engine::{EngineReport, MARKETS};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};

use super::netns::{Lab, die_with_parent};

/// The binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_openmatch-gossip");
/// The libp2p port every node listens on (each has its own address).
pub(crate) const P2P_PORT: u16 = 4001;
/// The metrics port (`/metrics`, `/healthz`) of every node, on its own address.
pub(crate) const METRICS_PORT: u16 = 9090;
/// Network name of the fault suite's sidecars.
pub(crate) const NETWORK: &str = "faults";
/// How often conditions are polled.
pub(crate) const POLL: Duration = Duration::from_millis(100);

/// One sidecar process.
pub(crate) struct Sidecar {
    child: Child,
    /// Its engine socket.
    pub(crate) socket: PathBuf,
    /// Its log (stderr).
    log: PathBuf,
    /// Its peer id.
    pub(crate) peer_id: String,
    /// Its multiaddr with `/p2p/`, as in bootstrap lists.
    pub(crate) addr: String,
    /// Its metrics server, inside its namespace.
    pub(crate) metrics: SocketAddr,
}

/// One engine process.
struct Engine {
    child: Child,
    stdin: ChildStdin,
    lines: tokio::io::Lines<BufReader<ChildStdout>>,
    log: PathBuf,
}

/// N sidecars in a lab and, once started, their engines. Field order is drop order:
/// processes are killed before the lab deletes the namespaces and the directory goes.
pub(crate) struct Cluster {
    sidecars: Vec<Sidecar>,
    engines: Vec<Engine>,
    /// The namespaces (node `i` in namespace `i`; spare namespaces after the nodes).
    pub(crate) lab: Lab,
    /// `None` once kept for inspection.
    dir: Option<tempfile::TempDir>,
    /// Its path (also after it is kept).
    path: PathBuf,
    /// Scenario name, for messages.
    name: String,
}

fn log_file(path: &Path) -> anyhow::Result<Stdio> {
    Ok(Stdio::from(std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?))
}

/// The last `lines` lines of the file at `path`.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("(cannot read: {e})"));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Cluster {
    /// Starts `nodes` sidecars in the first `nodes` namespaces of `lab` (network
    /// [`NETWORK`], both bundled markets, defaults otherwise; `tweak` may change the
    /// configuration). Does not wait for the mesh: see [`Cluster::wait_for_mesh`].
    pub(crate) fn start(
        name: &str,
        lab: Lab,
        nodes: usize,
        tweak: impl Fn(&mut SidecarConfig),
    ) -> anyhow::Result<Cluster> {
        assert!(nodes <= lab.nodes(), "{nodes} nodes in a lab of {}", lab.nodes());
        let dir = tempfile::Builder::new().prefix(&format!("omg-faults-{name}-")).tempdir()?;
        let path = dir.path().to_owned();
        let mut cluster =
            Cluster { sidecars: Vec::new(), engines: Vec::new(), lab, dir: Some(dir), path, name: name.to_owned() };
        let mut plan = Vec::new();
        for i in 0..nodes {
            let key = libp2p::identity::Keypair::generate_ed25519();
            let key_path = cluster.path.join(format!("node{i}.key"));
            openmatch_gossip_sidecar::identity::write_new(&key_path, &key)?;
            let listen = format!("/ip4/{}/tcp/{P2P_PORT}", cluster.lab.addr(i));
            let peer_id = key.public().to_peer_id().to_string();
            plan.push((key_path, listen.clone(), format!("{listen}/p2p/{peer_id}"), peer_id));
        }
        for (i, (key_path, listen, addr, peer_id)) in plan.iter().enumerate() {
            let mut config = SidecarConfig {
                network: NETWORK.into(),
                markets: MARKETS.iter().map(|(m, _)| m.to_string()).collect(),
                ..Default::default()
            };
            config.p2p.listen_addrs = vec![listen.clone()];
            config.p2p.bootstrap_peers =
                plan.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, p)| p.2.clone()).collect();
            tweak(&mut config);
            let config_path = cluster.path.join(format!("node{i}.yaml"));
            std::fs::write(&config_path, config.to_yaml())?;
            let socket = cluster.path.join(format!("node{i}.sock"));
            let log = cluster.path.join(format!("node{i}.log"));
            let metrics = SocketAddr::from((cluster.lab.addr(i), METRICS_PORT));
            let child = cluster
                .lab
                .command(i, Path::new(BIN))
                .arg("node")
                .arg("--config")
                .arg(&config_path)
                .arg("--socket")
                .arg(&socket)
                .arg("--identity-key")
                .arg(key_path)
                .arg("--metrics-addr")
                .arg(metrics.to_string())
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file(&log)?)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting sidecar {i} in {}", cluster.lab.ns(i)))?;
            cluster.sidecars.push(Sidecar {
                child,
                socket,
                log,
                peer_id: peer_id.clone(),
                addr: addr.clone(),
                metrics,
            });
        }
        Ok(cluster)
    }

    /// The sidecars, by node index.
    pub(crate) fn sidecars(&self) -> &[Sidecar] {
        &self.sidecars
    }

    /// Node `i`'s `GetStatus`, over its socket.
    pub(crate) async fn status(&self, i: usize) -> anyhow::Result<NodeStatus> {
        let mut client = openmatch_gossip_sidecar::api::connect(&self.sidecars[i].socket).await?;
        Ok(client.get_status(GetStatusRequest {}).await?.into_inner())
    }

    /// Node `i`'s `/metrics` text (fetched from inside its namespace).
    pub(crate) async fn metrics(&self, i: usize) -> anyhow::Result<String> {
        self.lab.http_get(i, self.sidecars[i].metrics, "/metrics").await
    }

    /// Waits until each of `nodes` has all the others of `nodes` in its GossipSub mesh on
    /// every orders topic; the error shows what each node saw.
    pub(crate) async fn wait_for_mesh(&mut self, nodes: &[usize], timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut seen = Vec::new();
            for &i in nodes {
                if let Some(status) = self.sidecars[i].child.try_wait()? {
                    bail!("sidecar {i} exited with {status}");
                }
                let want: Vec<&str> =
                    nodes.iter().filter(|&&j| j != i).map(|&j| self.sidecars[j].peer_id.as_str()).collect();
                match self.status(i).await {
                    Ok(st) => {
                        let orders: Vec<_> = st.topics.iter().filter(|t| t.topic.contains("/orders/")).collect();
                        let lacking: Vec<_> = orders
                            .iter()
                            .filter(|t| want.iter().any(|p| !t.mesh_peers.iter().any(|m| m == p)))
                            .map(|t| (&t.topic, t.mesh_peers.len()))
                            .collect();
                        if orders.len() != MARKETS.len() || !lacking.is_empty() {
                            seen.push(format!("node {i}: topics lacking peers (topic, mesh size) {lacking:?}"));
                        }
                    }
                    Err(e) => seen.push(format!("node {i}: no status: {e:#}")),
                }
            }
            if seen.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("no full mesh among nodes {nodes:?} within {timeout:?}:\n  {}", seen.join("\n  "));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Starts one engine per sidecar replaying `duration_s` seconds of the recording at its
    /// real pace (from 10 s in, past the opening book snapshot), waits for all to print
    /// READY and sends GO to all; returns the instant of GO.
    pub(crate) async fn start_engines(&mut self, duration_s: f64) -> anyhow::Result<Instant> {
        let n = self.sidecars.len();
        for i in 0..n {
            let log = self.path.join(format!("engine{i}.log"));
            let mut cmd = tokio::process::Command::new(BIN);
            cmd.arg("engine")
                .args(["--shard", &i.to_string(), "--shards", &n.to_string()])
                .args(["--pace", "real", "--from-s", "10", "--duration-s", &duration_s.to_string()])
                // Do not wait the default two minutes for batches that will never settle.
                .args(["--settle-timeout-ms", "10000"])
                .env("NO_COLOR", "1")
                .arg("--socket")
                .arg(&self.sidecars[i].socket)
                .arg("--wait-for-go");
            die_with_parent(&mut cmd);
            let mut child = cmd
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(log_file(&log)?)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting engine {i}"))?;
            let stdin = child.stdin.take().expect("piped");
            let lines = BufReader::new(child.stdout.take().expect("piped")).lines();
            self.engines.push(Engine { child, stdin, lines, log });
        }
        for (i, e) in self.engines.iter_mut().enumerate() {
            match tokio::time::timeout(Duration::from_secs(120), e.lines.next_line()).await {
                Ok(Ok(Some(l))) if l.trim() == "READY" => {}
                other => bail!("engine {i} did not become ready: {other:?}"),
            }
        }
        for e in &mut self.engines {
            e.stdin.write_all(b"GO\n").await?;
            e.stdin.flush().await?;
        }
        Ok(Instant::now())
    }

    /// Waits (up to `timeout` in all) for every engine to finish and returns their
    /// reports, by shard.
    pub(crate) async fn reports(&mut self, timeout: Duration) -> anyhow::Result<Vec<EngineReport>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut reports = Vec::new();
        for (i, e) in self.engines.iter_mut().enumerate() {
            let finish = async {
                let mut last = None;
                while let Some(l) = e.lines.next_line().await? {
                    last = Some(l);
                }
                anyhow::Ok((last, e.child.wait().await?))
            };
            let (last, status) = tokio::time::timeout_at(deadline, finish)
                .await
                .with_context(|| format!("engine {i} did not finish within {timeout:?}"))??;
            if !status.success() {
                bail!("engine {i} failed ({status})");
            }
            let line = last.with_context(|| format!("engine {i} printed no report"))?;
            reports.push(
                serde_json::from_str::<EngineReport>(&line).with_context(|| format!("engine {i} report: {line}"))?,
            );
        }
        Ok(reports)
    }

    /// One line for each pair of sidecars that are not connected to each other now (empty
    /// when every node is connected to every other): after a heal the cluster must be whole
    /// again.
    pub(crate) async fn missing_links(&self) -> anyhow::Result<Vec<String>> {
        let mut missing = Vec::new();
        for i in 0..self.sidecars.len() {
            let connected = self.status(i).await?.connected_peers;
            let lacking: Vec<usize> = (0..self.sidecars.len())
                .filter(|&j| j != i && !connected.contains(&self.sidecars[j].peer_id))
                .collect();
            if !lacking.is_empty() {
                missing.push(format!("at the end, node {i} is not connected to node(s) {lacking:?}"));
            }
        }
        Ok(missing)
    }

    /// Stops every sidecar with SIGTERM and checks that each exits cleanly within 20 s.
    pub(crate) async fn stop_sidecars(&mut self) -> anyhow::Result<()> {
        for (i, s) in self.sidecars.iter_mut().enumerate() {
            if let Some(pid) = s.child.id() {
                // SAFETY: kill(2) on our own, not yet reaped, child.
                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            }
            let status = tokio::time::timeout(Duration::from_secs(20), s.child.wait())
                .await
                .with_context(|| format!("sidecar {i} did not stop within 20 s of SIGTERM"))??;
            if !status.success() {
                bail!("sidecar {i} exited with {status} on SIGTERM");
            }
        }
        Ok(())
    }

    /// The tail of every log, for a failure message.
    pub(crate) fn log_tails(&self) -> String {
        let mut logs: Vec<(String, &Path)> =
            self.sidecars.iter().enumerate().map(|(i, s)| (format!("sidecar {i}"), s.log.as_path())).collect();
        logs.extend(self.engines.iter().enumerate().map(|(i, e)| (format!("engine {i}"), e.log.as_path())));
        logs.iter().map(|(what, path)| format!("--- {what} ({}):\n{}\n", path.display(), tail(path, 25))).collect()
    }

    /// Keeps the work directory, prints where it is and the tail of every log.
    pub(crate) fn keep_and_show_logs(&mut self) {
        if let Some(dir) = self.dir.take() {
            let _ = dir.keep();
        }
        eprintln!(
            "scenario {}: logs, configs and keys kept in {}\n{}",
            self.name,
            self.path.display(),
            self.log_tails()
        );
    }

    /// Fails the scenario: shows the logs (see [`Cluster::keep_and_show_logs`]) and panics
    /// with `error`.
    pub(crate) fn fail(&mut self, error: anyhow::Error) -> ! {
        self.keep_and_show_logs();
        panic!("scenario {}: {error:#}", self.name)
    }
}
