//! The scenarios of issue 11's fault suite, and the runner they share ([`run`]).
//!
//! Each scenario is a [`Spec`] (how many nodes, what the engines replay and how fast, any
//! configuration change) and a fault schedule: an async function that gets the running [`Cluster`] and
//! the instant the engines were told GO, does its faults, checks that they took effect
//! (the plumbing: probes across the cut) and returns what it observed that breaks the
//! product's promises (e.g. a cut-off node calling itself healthy), which joins the
//! invariant's violations, and figures of its own for the scenario's line. The runner does everything else: lab, sidecars, mesh, engines,
//! reports, a check that every node is connected to every other at the end, clean stop,
//! the invariant, the figures line and, on failure, every log's tail.
//!
//! Scenarios here: (a) one node of 3 cut off for 10 s then healed, (b) a 3 | 2 split of 5
//! nodes for 10 s then healed, (c) kill -9 of a sidecar while its engine submits as fast as
//! the sidecar takes orders, and its restart with the same key 3 s later, (e) a sidecar stopped and
//! started again at once while its engine keeps running, (f) a hostile peer sending seals
//! and orders for epochs outside the window, (d) kill -9 of an engine and its restart on
//! its state file, resuming its event stream with its cursor.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use openmatch_gossip_crds::SidecarConfig;
use openmatch_gossip_sidecar::proto::{
    BatchId, BatchSealed, Order, OrderGossip, OrderKind, Side, gossip_envelope::Body,
};
use openmatch_gossip_sidecar::tools::engine::{EngineReport, MARKETS};
use openmatch_gossip_sidecar::{Topic, TopicKind, encode_envelope, unix_now_ns};

use super::cluster::{Cluster, METRICS_PORT, NETWORK, POLL, Replay};
use super::hostile::HostilePeer;
use super::invariant;

/// How long a probe across a cut waits for an answer before calling the path dead.
const PROBE: Duration = Duration::from_millis(500);
/// When the faults start, after GO: the engines are replaying by then.
const FAULT_AT: Duration = Duration::from_secs(3);
/// How long (a) and (b) keep the network cut.
const CUT_FOR: Duration = Duration::from_secs(10);
/// How long the mesh may take to form, at start and after a heal.
const MESH: Duration = Duration::from_secs(30);

/// What a scenario runs.
struct Spec {
    /// Its letter in issue 11.
    name: &'static str,
    /// Sidecar + engine pairs.
    nodes: usize,
    /// Namespaces beyond the nodes' (for a hostile peer).
    spare: usize,
    /// What the engines replay, and how fast.
    replay: Replay,
    /// Configuration change for every sidecar (defaults: 1 s epochs, 200 ms grace).
    tweak: fn(&mut SidecarConfig),
}

/// At the recorded pace, `duration_s` seconds of the recording; engines wait 10 s for the
/// last batches to settle.
fn real_pace(duration_s: f64) -> Replay {
    Replay { duration_s, speed: Some(1.0), settle_timeout_ms: 10_000 }
}

/// What a fault schedule observed.
#[derive(Debug, Default)]
struct Observed {
    /// Broken promises of the product (each fails the scenario, with the invariant's).
    violations: Vec<String>,
    /// Figures of its own for the scenario's figures line (`name=value`).
    figures: Vec<String>,
}

/// Only one scenario at a time on the machine (across test processes too): each is a
/// timing-sensitive cluster of real processes, and two at once on 2 cores would make both
/// a load test. The lock is an exclusive `flock` on a file, released when dropped.
async fn one_at_a_time() -> std::fs::File {
    let path = std::env::temp_dir().join("openmatch-gossip-faults-scenario.lock");
    tokio::task::spawn_blocking(move || {
        let file = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
        file.lock().unwrap_or_else(|e| panic!("locking {}: {e}", path.display()));
        file
    })
    .await
    .expect("lock task")
}

/// Runs scenario `spec` with fault schedule `faults` (see the module docs), checks the
/// invariant and the scenario's own `checks` over the engines' reports, and prints the
/// figures; panics with every violation, after showing the logs. Returns at once, passing,
/// when the machine cannot host the suite.
async fn run(
    spec: Spec,
    faults: impl AsyncFnOnce(&mut Cluster, Instant) -> anyhow::Result<Observed>,
    checks: impl FnOnce(&[EngineReport]) -> Vec<String>,
) {
    let Some(lab) = super::lab_or_skip(spec.nodes + spec.spare) else { return };
    let _turn = one_at_a_time().await;
    let started = Instant::now();
    let mut c = Cluster::start(spec.name, lab, spec.nodes, spec.tweak)
        .unwrap_or_else(|e| panic!("scenario {}: starting the sidecars: {e:#}", spec.name));
    let all: Vec<usize> = (0..spec.nodes).collect();
    let outcome = async {
        c.wait_for_mesh(&all, MESH).await.context("at start")?;
        let go = c.start_engines(&spec.replay).await?;
        let mut observed = faults(&mut c, go).await?;
        // Replay, the engines' idle timeout (15 s) and their settle timeout, with room.
        let settle = Duration::from_millis(spec.replay.settle_timeout_ms);
        let reports = c.reports(spec.replay.wall() + settle + Duration::from_secs(50)).await?;
        c.save_metrics().await;
        observed.violations.extend(c.missing_links().await?);
        c.stop_sidecars().await?;
        anyhow::Ok((observed, reports))
    }
    .await;
    let (observed, reports) = outcome.unwrap_or_else(|e| c.fail(e));
    let verdict = invariant::check(&reports);
    let sidecars: Vec<u32> = reports.iter().map(|r| r.sidecar_restarts).collect();
    let engines: Vec<u32> = reports.iter().map(|r| r.engine_restarts).collect();
    let mut line = format!(
        "scenario {}: {} sidecar_restarts={sidecars:?} engine_restarts={engines:?}",
        spec.name, verdict.figures
    );
    for note in &observed.figures {
        let _ = write!(line, " {note}");
    }
    println!("{line} ({:.0} s)", started.elapsed().as_secs_f64());
    let violations: Vec<String> =
        verdict.violations.into_iter().chain(observed.violations).chain(checks(&reports)).collect();
    if violations.is_empty() && std::env::var_os("OMG_FAULTS_KEEP").is_some() {
        c.keep_and_show_logs();
    }
    if !violations.is_empty() {
        c.keep_and_show_logs();
        let mut msg = format!("scenario {}: the invariant does not hold ({}):", spec.name, verdict.figures);
        for v in &violations {
            let _ = write!(msg, "\n  - {v}");
        }
        panic!("{msg}");
    }
}

/// Sleeps until `at` (a point in the fault schedule, not a wait for a condition).
async fn at(at: Instant) {
    tokio::time::sleep_until(at.into()).await;
}

/// Checks that each (from, to, reachable) path is as expected, probing the metrics port of
/// `to` from inside `from`'s namespace.
async fn expect_paths(c: &Cluster, paths: &[(usize, usize, bool)]) -> anyhow::Result<()> {
    for &(from, to, want) in paths {
        let got = c.lab.reachable(from, to, METRICS_PORT, PROBE).await?;
        ensure!(got == want, "node {from} → node {to}: reachable {got}, expected {want}");
    }
    Ok(())
}

/// Polls the health that each of `nodes` reports (`GetStatus`) until `until`; returns a
/// violation for each that called itself healthy throughout (a node cut off from a quorum
/// must not), and prints what each said.
async fn watch_cut_off_health(c: &Cluster, nodes: &[usize], from: Instant, until: Instant) -> Vec<String> {
    // Per node: the first unhealthy answer (seconds into the cut, health, reason) and the
    // last answer seen (health, connected peers).
    let mut first_unhealthy: Vec<Option<(f64, String, String)>> = vec![None; nodes.len()];
    let mut last: Vec<String> = vec!["no answer".into(); nodes.len()];
    while Instant::now() < until {
        for (k, &i) in nodes.iter().enumerate() {
            match c.status(i).await {
                Ok(st) => {
                    if st.health != "healthy" && first_unhealthy[k].is_none() {
                        first_unhealthy[k] =
                            Some((from.elapsed().as_secs_f64(), st.health.clone(), st.health_reason.clone()));
                    }
                    last[k] = format!("{} with {} connected peers", st.health, st.connected_peers.len());
                }
                Err(e) => last[k] = format!("no status: {e:#}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut violations = Vec::new();
    for (k, &i) in nodes.iter().enumerate() {
        match &first_unhealthy[k] {
            Some((s, health, reason)) => {
                println!("node {i}, cut off: {health} after {s:.1} s ({reason}); at the end {}", last[k])
            }
            None => {
                let msg = format!("node {i} called itself healthy throughout the cut; at the end {}", last[k]);
                println!("{msg}");
                violations.push(msg);
            }
        }
    }
    violations
}

/// Waits for the mesh among `nodes` to be whole again after `event` (a heal, a restart)
/// and says how long it took; a mesh that does not re-form within [`MESH`] is a violation
/// (the scenario goes on, so that the engines' reports show what it cost).
async fn mesh_after(c: &mut Cluster, scenario: &str, nodes: &[usize], event: &str) -> Option<String> {
    let since = Instant::now();
    match c.wait_for_mesh(nodes, MESH).await {
        Ok(()) => {
            println!("scenario {scenario}: mesh whole again {:.1} s after the {event}", since.elapsed().as_secs_f64());
            None
        }
        Err(e) => {
            let msg = format!("after the {event}: {e:#}");
            println!("scenario {scenario}: {msg}");
            Some(msg)
        }
    }
}

/// For scenarios whose only check over the reports is the invariant.
fn no_more_checks(_: &[EngineReport]) -> Vec<String> {
    Vec::new()
}

/// Default configuration: 1 s epochs, 200 ms grace.
fn defaults(_: &mut SidecarConfig) {}

/// (a) Three nodes; node 2 cut off for 10 s, then healed. Default grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_node_cut_off_for_10_s_then_healed() {
    let spec = Spec { name: "a", nodes: 3, spare: 0, replay: real_pace(20.0), tweak: defaults };
    run(
        spec,
        async |c: &mut Cluster, go: Instant| {
            at(go + FAULT_AT).await;
            c.lab.cut(2)?;
            let cut = Instant::now();
            expect_paths(c, &[(2, 0, false), (0, 2, false), (1, 2, false), (0, 1, true)]).await?;
            let mut observed = watch_cut_off_health(c, &[2], cut, cut + CUT_FOR).await;
            c.lab.heal(2)?;
            expect_paths(c, &[(2, 0, true), (1, 2, true)]).await?;
            observed.extend(mesh_after(c, "a", &[0, 1, 2], "heal").await);
            Ok(Observed { violations: observed, figures: Vec::new() })
        },
        no_more_checks,
    )
    .await;
}

/// (b) Five nodes split into a majority {0, 1, 2} and a minority {3, 4} for 10 s, then
/// healed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_five_nodes_split_3_2_for_10_s_then_healed() {
    let spec = Spec { name: "b", nodes: 5, spare: 0, replay: real_pace(20.0), tweak: defaults };
    run(
        spec,
        async |c: &mut Cluster, go: Instant| {
            at(go + FAULT_AT).await;
            c.lab.split(&[0, 1, 2], &[3, 4])?;
            let split = Instant::now();
            expect_paths(c, &[(0, 3, false), (4, 2, false), (0, 2, true), (3, 4, true)]).await?;
            let mut observed = watch_cut_off_health(c, &[3, 4], split, split + CUT_FOR).await;
            c.lab.heal_all()?;
            expect_paths(c, &[(0, 3, true), (4, 2, true)]).await?;
            observed.extend(mesh_after(c, "b", &[0, 1, 2, 3, 4], "heal").await);
            Ok(Observed { violations: observed, figures: Vec::new() })
        },
        no_more_checks,
    )
    .await;
}

/// The node that (c) and (e) kill or stop and start again.
const RESTARTED: usize = 2;
/// When (c) kills the sidecar, after GO.
const KILL_AT: Duration = Duration::from_millis(500);
/// How long (c) leaves the killed sidecar down before starting it again.
const DOWN_FOR: Duration = Duration::from_secs(3);
/// How long a restarted sidecar may take to answer on its socket and to finish recovery.
const RECOVERY: Duration = Duration::from_secs(30);
/// The outbox gauge: orders accepted from the engine but not yet published.
const OUTBOX: &str = "openmatch_gossip_outbox_orders";

/// The value of gauge `name` (no labels) in a Prometheus text exposition.
fn gauge(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Lines of sidecar `i`'s log (every run) containing `needle`.
fn log_lines(c: &Cluster, i: usize, needle: &str) -> anyhow::Result<usize> {
    let log = &c.sidecars()[i].log;
    let text = std::fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    Ok(text.lines().filter(|l| l.contains(needle)).count())
}

/// The value of field `key` in a tracing log line (`key=value`), if there.
fn log_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// Starts sidecar `i` again (after a kill or a stop; `before` is its old run's
/// incarnation), checks that it is a new run, and waits for its recovery to finish and for
/// the mesh to be whole again. Prints what recovery did; returns its figures and any
/// violation (a mesh that does not re-form).
async fn restart_and_recover(c: &mut Cluster, scenario: &str, i: usize, before: u64) -> anyhow::Result<Observed> {
    const DONE: &str = "recovery done";
    let runs_done = log_lines(c, i, DONE)?;
    c.restart(i)?;
    let restarted = Instant::now();
    let after = loop {
        match c.status(i).await {
            Ok(st) => break st.incarnation,
            Err(e) if restarted.elapsed() > RECOVERY => {
                return Err(e.context(format!("sidecar {i} not answering {RECOVERY:?} after its restart")));
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    };
    ensure!(after != before, "sidecar {i} came back with its old run's incarnation {before:016x}");
    let line = c.wait_for_log(i, DONE, runs_done, RECOVERY).await?;
    let up = restarted.elapsed().as_secs_f64();
    let field = |k| log_field(&line, k).unwrap_or("?").trim_matches('"').to_owned();
    let why = line.split_once("why=").map_or("?", |(_, w)| w.trim());
    println!(
        "scenario {scenario}: node {i} restarted as run {after:016x} (was {before:016x}); recovery done {up:.1} s after the start: {} own orders recovered as committed in {} ms, why={why}",
        field("committed_orders"),
        field("took_ms"),
    );
    let figures = vec![format!("recovered_committed={}", field("committed_orders"))];
    let violations = mesh_after(c, scenario, &(0..c.sidecars().len()).collect::<Vec<_>>(), "restart").await;
    Ok(Observed { violations: violations.into_iter().collect(), figures })
}

/// The engine of `restarted` saw its sidecar come back as a new run exactly once, and no
/// other engine saw one.
fn restarted_once(restarted: usize) -> impl FnOnce(&[EngineReport]) -> Vec<String> {
    move |reports| {
        reports
            .iter()
            .filter(|r| r.sidecar_restarts != u32::from(r.shard == restarted))
            .map(|r| format!("engine {}: saw its sidecar restart {} times", r.shard, r.sidecar_restarts))
            .collect()
    }
}

/// (c) Three nodes, every engine as fast as its sidecar takes orders (`--pace max`, 100 s
/// of the recording); node 2's sidecar killed with
/// SIGKILL while its engine submits, left down for 3 s (its engine keeps replaying and
/// blocks on the dead socket), then started again with the same key, configuration and
/// socket. Prints node 2's outbox backlog (orders accepted, not yet published) sampled
/// over the second before the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_sidecar_killed_under_load_then_restarted() {
    let replay = Replay { duration_s: 100.0, speed: None, settle_timeout_ms: 30_000 };
    let spec = Spec { name: "c", nodes: 3, spare: 0, replay, tweak: defaults };
    run(
        spec,
        async |c: &mut Cluster, go: Instant| {
            let before = c.status(RESTARTED).await?.incarnation;
            let (mut samples, mut last_metrics) = (Vec::new(), String::new());
            while go.elapsed() < KILL_AT {
                last_metrics = c.metrics(RESTARTED).await?;
                samples.push(gauge(&last_metrics, OUTBOX).context("no outbox gauge")?);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            c.kill(RESTARTED).await?;
            let killed = Instant::now();
            let last = samples.last().copied().unwrap_or_default();
            let submitted = counter(&last_metrics, "openmatch_gossip_orders_submitted_total", &[]);
            let published = counter(&last_metrics, "openmatch_gossip_orders_published_total", &[]);
            let max = samples.iter().copied().fold(0.0, f64::max);
            let nonzero = samples.iter().filter(|&&n| n > 0.0).count();
            println!(
                "scenario c: node {RESTARTED} killed {:.2} s after GO; at the last sample before the kill it had accepted {submitted} orders, published {published}, and its outbox held {last} (max {max}, non-zero in {nonzero} of {} samples since GO)",
                (killed - go).as_secs_f64(),
                samples.len()
            );
            at(killed + DOWN_FOR).await;
            let mut observed = restart_and_recover(c, "c", RESTARTED, before).await?;
            observed.figures.insert(0, format!("outbox_at_kill={last} (max {max})"));
            Ok(observed)
        },
        restarted_once(RESTARTED),
    )
    .await;
}

/// (e) Three nodes at the recorded pace; node 2's sidecar stopped with SIGTERM and started
/// again at once with the same key, configuration and socket, while its engine keeps
/// replaying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e_sidecar_restarted_while_its_engine_runs() {
    let replay = Replay { duration_s: 25.0, speed: Some(1.0), settle_timeout_ms: 30_000 };
    let spec = Spec { name: "e", nodes: 3, spare: 0, replay, tweak: defaults };
    run(
        spec,
        async |c: &mut Cluster, go: Instant| {
            at(go + FAULT_AT + Duration::from_secs(2)).await;
            let before = c.status(RESTARTED).await?.incarnation;
            let stopping = Instant::now();
            c.stop(RESTARTED).await?;
            println!(
                "scenario e: node {RESTARTED} stopped {:.1} s after GO, {:.2} s after SIGTERM",
                (stopping - go).as_secs_f64(),
                stopping.elapsed().as_secs_f64()
            );
            restart_and_recover(c, "e", RESTARTED, before).await
        },
        restarted_once(RESTARTED),
    )
    .await;
}

/// The engine that (d) kills and starts again.
const KILLED_ENGINE: usize = 1;

/// (d) Three nodes at the recorded pace; engine 1 killed with SIGKILL while it replays,
/// left down for 3 s (its sidecar keeps gossiping, deciding and logging its events), then
/// started again on its state file: it resumes its event stream after the last event it
/// processed, resubmits what it handed over and does not know committed, and replays the
/// rest on the recorded schedule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d_engine_killed_then_resumed_with_its_cursor() {
    let spec = Spec { name: "d", nodes: 3, spare: 0, replay: real_pace(20.0), tweak: defaults };
    run(
        spec,
        async |c: &mut Cluster, go: Instant| {
            at(go + FAULT_AT).await;
            c.kill_engine(KILLED_ENGINE).await?;
            let killed = Instant::now();
            let subscribers = |text: &str| gauge(text, "openmatch_gossip_subscribers");
            // Its sidecar notices the engine is gone and keeps its events for it.
            let deadline = killed + DOWN_FOR;
            let mut seen_gone = false;
            while Instant::now() < deadline {
                if subscribers(&c.metrics(KILLED_ENGINE).await?) == Some(0.0) {
                    seen_gone = true;
                }
                tokio::time::sleep(POLL).await;
            }
            ensure!(seen_gone, "sidecar {KILLED_ENGINE} kept a subscriber for the killed engine");
            c.restart_engine(KILLED_ENGINE)?;
            println!(
                "scenario d: engine {KILLED_ENGINE} killed {:.1} s after GO and started again {:.1} s later",
                (killed - go).as_secs_f64(),
                DOWN_FOR.as_secs_f64()
            );
            Ok(Observed::default())
        },
        |reports| {
            reports
                .iter()
                .filter(|r| r.engine_restarts != u32::from(r.shard == KILLED_ENGINE) || r.sidecar_restarts != 0)
                .map(|r| {
                    format!(
                        "engine {}: resumed {} times, saw its sidecar restart {} times",
                        r.shard, r.engine_restarts, r.sidecar_restarts
                    )
                })
                .collect()
        },
    )
    .await;
}

/// Sum of the samples of counter `name` whose labels include all of `labels`, in a
/// Prometheus text exposition.
fn counter(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix('{'))
        .filter_map(|rest| rest.split_once('}'))
        .filter(|(set, _)| labels.iter().all(|(k, v)| set.split(',').any(|kv| kv == format!("{k}=\"{v}\""))))
        .filter_map(|(_, value)| value.trim().parse::<f64>().ok())
        .sum()
}

/// A well-formed limit order of `market` authored by `origin`, stamped `epoch`.
fn hostile_order(market: &str, origin: &libp2p::PeerId, id: u64, epoch: u64) -> Order {
    Order {
        id,
        market: market.to_owned(),
        side: Side::Buy as i32,
        kind: OrderKind::Limit as i32,
        price_ticks: 6_000_000 + id,
        quantity_lots: 1 + id,
        client_ts_ns: unix_now_ns(),
        origin: origin.to_bytes().into(),
        epoch,
        freeze_proof: vec![],
        submitted_at_ns: unix_now_ns(),
    }
}

/// The made-up batch hash of the hostile peer's seals.
const FAKE_HASH: [u8; 32] = [1; 32];

/// (f) Three nodes; a fourth libp2p identity in its own namespace connects to all of them
/// and, while the engines replay, sends seals (made-up hash) for epochs `u64::MAX`, 1,000,
/// now − 100 and now + 5, and orders for epochs now + 5 and now − 30, in both markets.
/// Every node must refuse them (counted as `future_epoch` rejections or as stale), no engine
/// may get a hostile order or agree a batch at a hostile epoch or with the made-up hash, and
/// the invariant holds for the honest engines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_hostile_peer_sends_out_of_window_seals_and_orders() {
    let spec = Spec { name: "f", nodes: 3, spare: 1, replay: real_pace(15.0), tweak: defaults };
    let test_start_epoch = unix_now_ns() / 1_000_000_000;
    let hostile_epochs = std::sync::Mutex::new(Vec::new());
    let faults = async |c: &mut Cluster, go: Instant| {
        at(go + Duration::from_secs(2)).await;
        let hostile = HostilePeer::spawn(&c.lab.ns(3))?;
        let nodes: Vec<String> = c.sidecars().iter().map(|s| s.peer_id.clone()).collect();
        for s in c.sidecars() {
            hostile.dial(&s.addr).await?;
        }
        let topic = |kind, market: &str| Topic { kind, market: market.to_owned() }.ident(NETWORK);
        for (market, _) in MARKETS {
            for kind in [TopicKind::Orders, TopicKind::Batches] {
                hostile.wait_subscribed(&topic(kind, market), &nodes, Duration::from_secs(10)).await?;
            }
        }
        // Stale ones first: they cost the peer no reputation, so they all reach validation
        // before the rejected ones get it banned (six invalid messages at the defaults).
        let now = unix_now_ns() / 1_000_000_000;
        let mut messages = Vec::new();
        for epochs in [
            [(TopicKind::Batches, 1_000), (TopicKind::Batches, now - 100), (TopicKind::Orders, now - 30)],
            [(TopicKind::Batches, u64::MAX), (TopicKind::Batches, now + 5), (TopicKind::Orders, now + 5)],
        ] {
            for (market, _) in MARKETS {
                messages.extend(epochs.map(|(kind, epoch)| (market, kind, epoch)));
            }
        }
        for (id, &(market, kind, epoch)) in messages.iter().enumerate() {
            hostile_epochs.lock().unwrap().push(epoch);
            let body = if kind == TopicKind::Orders {
                Body::Orders(OrderGossip { orders: vec![hostile_order(market, &hostile.peer_id, id as u64, epoch)] })
            } else {
                Body::BatchSealed(BatchSealed {
                    batch_id: Some(BatchId { market: market.into(), epoch }),
                    batch_hash: FAKE_HASH.to_vec(),
                    order_count: 1,
                    revision: 0,
                })
            };
            // A node that has banned the peer is no longer subscribed, as far as it knows.
            if let Err(e) = hostile.publish(&topic(kind, market), encode_envelope(body)).await {
                println!("scenario f: hostile peer stopped after {id} of {} messages: {e:#}", messages.len());
                break;
            }
        }
        // Every node refused some of each: future seals and orders, stale seals and orders.
        let checks = [
            ("openmatch_gossip_messages_rejected_total", "batches", Some("future_epoch")),
            ("openmatch_gossip_messages_stale_total", "batches", None),
            ("openmatch_gossip_messages_rejected_total", "orders", Some("future_epoch")),
            ("openmatch_gossip_messages_stale_total", "orders", None),
        ];
        let deadline = Instant::now() + Duration::from_secs(10);
        for i in 0..c.sidecars().len() {
            loop {
                let text = c.metrics(i).await?;
                let counts: Vec<f64> = checks
                    .iter()
                    .map(|(name, kind, reason)| {
                        let mut labels = vec![("kind", *kind)];
                        labels.extend(reason.map(|r| ("reason", r)));
                        counter(&text, name, &labels)
                    })
                    .collect();
                if counts.iter().all(|&n| n >= 1.0) {
                    println!(
                        "scenario f: node {i} refused batches future {} stale {}, orders future {} stale {}",
                        counts[0], counts[1], counts[2], counts[3]
                    );
                    break;
                }
                ensure!(
                    Instant::now() < deadline,
                    "node {i} did not refuse the hostile gossip: batches future {} stale {}, orders future {} stale {}",
                    counts[0],
                    counts[1],
                    counts[2],
                    counts[3]
                );
                tokio::time::sleep(POLL).await;
            }
        }
        for i in 0..c.sidecars().len() {
            let connected = c.status(i).await?.connected_peers.contains(&hostile.peer_id.to_string());
            println!(
                "scenario f: node {i} {} the hostile peer",
                if connected { "is still connected to" } else { "has cut off" }
            );
        }
        Ok(Observed::default())
    };
    // The invariant already refuses orders from an unknown origin. No batch may be agreed
    // with the made-up hash, nor at a hostile epoch that is far off or from before the test
    // began (no honest node had an order then).
    let checks = |reports: &[EngineReport]| {
        let fake: String = FAKE_HASH.iter().map(|b| format!("{b:02x}")).collect();
        let epochs = hostile_epochs.lock().unwrap();
        let impossible: Vec<u64> = epochs.iter().copied().filter(|&e| e < test_start_epoch || e == u64::MAX).collect();
        let mut violations = Vec::new();
        for r in reports {
            for (key, hash) in &r.agreed_batches {
                let epoch = key.rsplit_once('#').and_then(|(_, e)| e.parse::<u64>().ok());
                if hash == &fake || epoch.is_some_and(|e| impossible.contains(&e)) {
                    violations.push(format!(
                        "engine {}: batch {key} agreed with hash {hash}, from the hostile peer",
                        r.shard
                    ));
                }
            }
        }
        violations
    };
    run(spec, faults, checks).await;
}
