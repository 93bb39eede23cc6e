//! The simulation benchmark's harness on a small network: five real nodes in this process
//! replay three seconds of the recording at its pace, and the report says what happened.

use openmatch_gossip_sidecar::tools::simulate::{SimulateArgs, run_one};

/// Every order reaches every other node once, every batch of the replayed span is agreed
/// by every node, and the path and traffic figures are those of a real gossip network:
/// at least one hop per delivery, at least one copy received per message delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_deliver_everything_and_agree_every_batch() {
    openmatch_gossip_tests::init_tracing();
    let args = SimulateArgs {
        nodes: vec![5],
        from_s: 10.0,
        duration_s: 3.0,
        speed: 1.0,
        epoch_ms: 1_000,
        heartbeat_ms: 1_000,
        grace_ms: 200,
        bootstrap: 2,
        settle_s: 60,
        data_dir: None,
        markdown: None,
    };
    let r = run_one(&args, 5).await.expect("the network forms and runs");
    assert!(r.submitted > 1_000, "three seconds of the recording hold thousands of orders: {r:?}");
    assert_eq!(r.delivery_ratio, 1.0, "{r:?}");
    assert_eq!((r.duplicate_deliveries, r.excluded, r.disputed), (0, 0, 0), "{r:?}");
    // Every node agrees every epoch of both markets that the replay touched.
    assert!(r.batches.1 >= 5 * 2 * 3, "{r:?}");
    assert_eq!(r.batches.0, r.batches.1, "{r:?}");
    assert!(r.ok());
    // Each delivery came one or more hops from its author; no path is longer than the
    // network has nodes.
    assert!(r.hops.count > 0 && r.hops.p50_us >= 1 && r.hops.max_us <= 4, "{r:?}");
    assert!(r.copies_per_order > 0.0 && r.duplicates_per_message >= 0.0, "{r:?}");
    assert!(r.consensus_copies_per_node_s > 0.0, "{r:?}");
    assert!(r.agreement.count >= r.batches.0, "{r:?}");
}
