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

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
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

/// One sidecar process, and what it takes to start it again as the same node.
pub(crate) struct Sidecar {
    /// The current run.
    child: Child,
    /// Its configuration file.
    config: PathBuf,
    /// Its identity key file.
    key: PathBuf,
    /// Its engine socket.
    pub(crate) socket: PathBuf,
    /// Its log (stderr of every run, appended).
    pub(crate) log: PathBuf,
    /// Its peer id.
    pub(crate) peer_id: String,
    /// Its multiaddr with `/p2p/`, as in bootstrap lists.
    pub(crate) addr: String,
    /// Its metrics server, inside its namespace.
    pub(crate) metrics: SocketAddr,
}

/// One engine process, and what it takes to start it again.
struct Engine {
    child: Child,
    stdin: ChildStdin,
    lines: tokio::io::Lines<BufReader<ChildStdout>>,
    log: PathBuf,
    /// Its command-line arguments (the same for a restart: its `--state-file` makes it
    /// resume).
    args: Vec<std::ffi::OsString>,
}

/// Starts `openmatch-gossip engine` with `args`, appending its stderr to `log`.
fn spawn_engine(
    i: usize,
    args: &[std::ffi::OsString],
    log: &Path,
) -> anyhow::Result<(Child, ChildStdin, tokio::io::Lines<BufReader<ChildStdout>>)> {
    let file = std::fs::File::options()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args).env("NO_COLOR", "1");
    die_with_parent(&mut cmd);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(file))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting engine {i}"))?;
    let stdin = child.stdin.take().expect("piped");
    let lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    Ok((child, stdin, lines))
}

/// What every engine of a scenario replays.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Replay {
    /// Seconds of the recording.
    pub(crate) duration_s: f64,
    /// `Some(speed)`: at the recorded pace times `speed` (1.0: as recorded); `None`: as
    /// fast as the sidecar takes the orders (`--pace max`).
    pub(crate) speed: Option<f64>,
    /// The engines' `--settle-timeout-ms`: how long they wait, once the replay is done,
    /// for their last orders to be committed and the last batches settled (not the
    /// default two minutes, for batches that will never settle).
    pub(crate) settle_timeout_ms: u64,
}

impl Replay {
    /// Seconds the replay takes (at most, at `--pace max`).
    pub(crate) fn wall(&self) -> Duration {
        Duration::from_secs_f64(self.duration_s / self.speed.unwrap_or(1.0))
    }
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

/// The last `lines` lines of the file at `path`.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("(cannot read: {e})"));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Starts `openmatch-gossip node` as node `i` inside its namespace, appending its stderr
/// to `log`.
fn spawn_sidecar(
    lab: &Lab,
    i: usize,
    config: &Path,
    socket: &Path,
    key: &Path,
    metrics: SocketAddr,
    log: &Path,
) -> anyhow::Result<Child> {
    let file = std::fs::File::options()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    lab.command(i, Path::new(BIN))
        .arg("node")
        .arg("--config")
        .arg(config)
        .arg("--socket")
        .arg(socket)
        .arg("--identity-key")
        .arg(key)
        .arg("--metrics-addr")
        .arg(metrics.to_string())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(file))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting sidecar {i} in {}", lab.ns(i)))
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
            let child = spawn_sidecar(&cluster.lab, i, &config_path, &socket, key_path, metrics, &log)?;
            cluster.sidecars.push(Sidecar {
                child,
                config: config_path,
                key: key_path.clone(),
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

    /// Saves every sidecar's `/metrics` as `node<i>.metrics` in the work directory (kept
    /// with the logs when the scenario fails); a node that does not answer gets a file
    /// saying why.
    pub(crate) async fn save_metrics(&self) {
        for i in 0..self.sidecars.len() {
            let text = self.metrics(i).await.unwrap_or_else(|e| format!("no metrics: {e:#}\n"));
            let _ = std::fs::write(self.path.join(format!("node{i}.metrics")), text);
        }
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

    /// Starts one engine per sidecar replaying `replay` (from 10 s into the recording, past
    /// the opening book snapshot; each with its own `--state-file`), waits for all to print
    /// READY and sends GO to all; returns the instant of GO.
    pub(crate) async fn start_engines(&mut self, replay: &Replay) -> anyhow::Result<Instant> {
        let n = self.sidecars.len();
        for i in 0..n {
            let log = self.path.join(format!("engine{i}.log"));
            let mut args: Vec<std::ffi::OsString> =
                ["engine", "--shard", &i.to_string(), "--shards", &n.to_string()].iter().map(Into::into).collect();
            match replay.speed {
                Some(speed) => {
                    args.extend(["--pace".into(), "real".into(), "--speed".into(), speed.to_string().into()])
                }
                None => args.extend(["--pace".into(), "max".into()]),
            }
            args.extend(["--from-s".into(), "10".into(), "--duration-s".into(), replay.duration_s.to_string().into()]);
            args.extend(["--settle-timeout-ms".into(), replay.settle_timeout_ms.to_string().into()]);
            args.extend(["--socket".into(), self.sidecars[i].socket.clone().into_os_string()]);
            args.extend(["--state-file".into(), self.path.join(format!("engine{i}.state")).into_os_string()]);
            args.push("--wait-for-go".into());
            let (child, stdin, lines) = spawn_engine(i, &args, &log)?;
            self.engines.push(Engine { child, stdin, lines, log, args });
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
    /// reports, by shard (each also saved as `engine<i>.json` in the work directory).
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
            let _ = std::fs::write(self.path.join(format!("engine{i}.json")), &line);
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

    /// Sends `signal` to sidecar `i`'s current run and waits up to `within` for it to exit.
    async fn signal(&mut self, i: usize, signal: libc::c_int, within: Duration) -> anyhow::Result<ExitStatus> {
        let s = &mut self.sidecars[i];
        if let Some(pid) = s.child.id() {
            // SAFETY: kill(2) on our own, not yet reaped, child.
            unsafe { libc::kill(pid as i32, signal) };
        }
        Ok(tokio::time::timeout(within, s.child.wait())
            .await
            .with_context(|| format!("sidecar {i} did not exit within {within:?} of signal {signal}"))??)
    }

    /// Kills sidecar `i` with SIGKILL (no shutdown of any kind) and waits for it to be gone.
    pub(crate) async fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        let status = self.signal(i, libc::SIGKILL, Duration::from_secs(10)).await?;
        ensure!(status.signal() == Some(libc::SIGKILL), "sidecar {i} was already gone before SIGKILL ({status})");
        Ok(())
    }

    /// Stops sidecar `i` with SIGTERM and checks that it exits cleanly within 20 s.
    pub(crate) async fn stop(&mut self, i: usize) -> anyhow::Result<()> {
        let status = self.signal(i, libc::SIGTERM, Duration::from_secs(20)).await?;
        ensure!(status.success(), "sidecar {i} exited with {status} on SIGTERM");
        Ok(())
    }

    /// Kills engine `i` with SIGKILL and waits for it to be gone.
    pub(crate) async fn kill_engine(&mut self, i: usize) -> anyhow::Result<()> {
        let e = &mut self.engines[i];
        e.child.start_kill().with_context(|| format!("killing engine {i}"))?;
        let status = tokio::time::timeout(Duration::from_secs(10), e.child.wait())
            .await
            .with_context(|| format!("engine {i} did not exit within 10 s of SIGKILL"))??;
        ensure!(status.signal() == Some(libc::SIGKILL), "engine {i} was already gone before SIGKILL ({status})");
        Ok(())
    }

    /// Starts engine `i` again, after [`Cluster::kill_engine`], with the same arguments:
    /// its state file makes it resume (no READY/GO).
    pub(crate) fn restart_engine(&mut self, i: usize) -> anyhow::Result<()> {
        let e = &mut self.engines[i];
        let mut log = std::fs::File::options().append(true).open(&e.log)?;
        writeln!(log, "===== fault suite: engine {i} killed; starting it again on its state file =====")?;
        let (child, stdin, lines) = spawn_engine(i, &e.args, &e.log)?;
        (e.child, e.stdin, e.lines) = (child, stdin, lines);
        Ok(())
    }

    /// Starts sidecar `i` again, after [`Cluster::kill`] or [`Cluster::stop`], as the same
    /// node: same key (so same peer id), configuration, socket, addresses and log (a
    /// marker line separates the runs).
    pub(crate) fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        let s = &mut self.sidecars[i];
        if let Some(status) = s.child.try_wait()? {
            let mut log = std::fs::File::options().append(true).open(&s.log)?;
            writeln!(log, "===== fault suite: sidecar {i} exited ({status}); starting it again =====")?;
        } else {
            bail!("sidecar {i} is still running");
        }
        s.child = spawn_sidecar(&self.lab, i, &s.config, &s.socket, &s.key, s.metrics, &s.log)?;
        Ok(())
    }

    /// Waits up to `timeout` for a line containing `needle` in sidecar `i`'s log after
    /// its `after`-th such line (0: the first); returns that line.
    pub(crate) async fn wait_for_log(
        &mut self,
        i: usize,
        needle: &str,
        after: usize,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = std::fs::read_to_string(&self.sidecars[i].log)?;
            if let Some(line) = text.lines().filter(|l| l.contains(needle)).nth(after) {
                return Ok(line.to_owned());
            }
            if let Some(status) = self.sidecars[i].child.try_wait()? {
                bail!("sidecar {i} exited with {status} before logging {needle:?}");
            }
            if Instant::now() > deadline {
                bail!("sidecar {i} did not log {needle:?} within {timeout:?}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Stops every sidecar with SIGTERM and checks that each exits cleanly within 20 s.
    pub(crate) async fn stop_sidecars(&mut self) -> anyhow::Result<()> {
        for i in 0..self.sidecars.len() {
            self.stop(i).await?;
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
