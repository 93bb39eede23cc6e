//! Real processes on loopback TCP: the `openmatch-gossip` binary as sidecars and engines.
//!
//! These live in the sidecar crate (not the workspace `tests/` crate) because they need
//! Cargo's `CARGO_BIN_EXE_openmatch-gossip`, which only this package's tests get.

use std::path::Path;
use std::process::Command;

use openmatch_gossip_sidecar::tools::cluster::{self, ClusterArgs};
use openmatch_gossip_sidecar::tools::engine::{Pace, ReplayArgs, TransportKind};

const BIN: &str = env!("CARGO_BIN_EXE_openmatch-gossip");

fn args(pace: Pace, duration_s: f64, transport: TransportKind) -> ClusterArgs {
    ClusterArgs {
        nodes: 3,
        replay: ReplayArgs { pace, speed: 1.0, from_s: 0.0, duration_s: Some(duration_s) },
        transport,
        grace_ms: 5_000,
        work_dir: None,
        keep: false,
        json: false,
    }
}

fn assert_lossless(report: &cluster::ClusterReport) {
    assert!(report.ok(), "{}", report.render());
    for e in &report.engines {
        assert!(e.expected > 1000, "engine {} expected only {} orders", e.shard, e.expected);
        assert_eq!(e.received, e.expected, "{}", report.render());
        assert_eq!(e.by_origin.len(), 2, "orders from both other engines: {:?}", e.by_origin.keys());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_sidecar_processes_propagate_real_data_without_loss() {
    // 15 s of the Binance recording at maximum speed: ~46,000 orders, each to two engines.
    let report = cluster::run(&args(Pace::Max, 15.0, TransportKind::Sidecar), Path::new(BIN)).await.unwrap();
    assert_lossless(&report);
    assert_eq!(report.sidecars.len(), 3);
    // Every batch of both markets agreed on all three nodes and its result settled.
    assert_eq!(report.batches.len(), 2, "{}", report.render());
    for (market, b) in &report.batches {
        assert!(b.agreed >= 3, "{market}: {b:?}");
        assert_eq!((b.disputed, b.halted), (0, 0), "{market}: {b:?}");
        assert_eq!(b.results_agreed, b.agreed, "{market}: {b:?}");
        assert!(b.trades > 0, "{market}: the auction matched something");
    }
    assert!(report.sidecars.iter().all(|u| u.peak_rss_mib > 0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_pace_replay_is_lossless() {
    // 3 s of the recording at its recorded pace.
    let report = cluster::run(&args(Pace::Real, 3.0, TransportKind::Sidecar), Path::new(BIN)).await.unwrap();
    assert_lossless(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stack_floor_relays_move_the_same_orders_at_real_pace() {
    // The benchmark's stack floor: `openmatch-gossip relay` processes instead of sidecars.
    let report = cluster::run(&args(Pace::Real, 3.0, TransportKind::Relay), Path::new(BIN)).await.unwrap();
    assert_lossless(&report);
    assert_eq!(report.sidecars.len(), 3, "three relay processes measured");
    assert!(report.batches.is_empty(), "a relay has no consensus: {:?}", report.batches);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_tcp_baseline_moves_the_same_orders() {
    let report = cluster::run(&args(Pace::Max, 15.0, TransportKind::Tcp), Path::new(BIN)).await.unwrap();
    assert_lossless(&report);
    assert!(report.sidecars.is_empty());
}

#[test]
fn bad_config_is_rejected_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.yaml");
    std::fs::write(&cfg, "markets: [BTC-USDT]\nlimits:\n  maxMessageBytes: 12\n").unwrap();
    let out = Command::new(BIN)
        .args(["node", "--config", cfg.to_str().unwrap(), "--socket"])
        .arg(dir.path().join("s.sock"))
        .arg("--identity-key")
        .arg(dir.path().join("k"))
        .args(["--metrics-addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("limits.maxMessageBytes"), "{stderr}");
    assert!(!dir.path().join("s.sock").exists(), "no socket for a node that never started");
}

#[test]
fn help_explains_every_subcommand() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for sub in ["node", "relay", "engine", "cluster", "bench", "peer-id"] {
        assert!(text.contains(sub), "{sub} missing from --help:\n{text}");
    }
    let out = Command::new(BIN).args(["node", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in ["--config", "--socket", "--identity-key", "--metrics-addr", "--rate-limit", "OPENMATCH_GOSSIP_SOCKET"]
    {
        assert!(text.contains(flag), "{flag} missing from node --help");
    }
}

#[test]
fn peer_id_is_stable_for_a_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id.key");
    let run = || String::from_utf8(Command::new(BIN).arg("peer-id").arg(&key).output().unwrap().stdout).unwrap();
    let first = run();
    assert!(first.starts_with("12D3KooW"), "{first}");
    assert_eq!(run(), first);
}
