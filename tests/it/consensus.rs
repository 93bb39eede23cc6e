//! Batch and result consensus across real nodes (libp2p memory transport, engine sockets):
//! repair of a node that missed orders, halting on a wrong result and banning the repeat
//! offender, a late joiner catching up, determinism across runs, hostile epochs.
//!
//! Batches are sealed by the engines (`consensus.sealing: engine`) so that every test
//! decides exactly when a batch closes; clock sealing is exercised by the real-process
//! cluster tests.

use std::collections::HashSet;

use libp2p::identity::Keypair;
use openmatch_gossip_crds::SidecarConfig;
use openmatch_gossip_crds::sidecar_config::SealingMode;
use openmatch_gossip_sidecar::batch_hash;
use openmatch_gossip_sidecar::proto::{
    BatchAgreed, BatchId, Event, GetBatchRequest, HaltCause, ResultMismatch, SealBatchRequest, SubmitOrdersRequest,
    SubmitResultRequest, event::Kind,
};
use openmatch_gossip_tests::*;

fn engine_sealing(c: &mut SidecarConfig) {
    c.consensus.sealing = SealingMode::Engine;
    c.consensus.seal_timeout_ms = 500;
    c.consensus.repair_window_ms = 5_000;
    c.consensus.result_timeout_ms = 2_000;
}

/// Waits for the first event `pick` accepts, within [`WAIT`] (orders and other events are
/// skipped).
async fn wait_event<T>(events: &mut Events, what: &str, mut pick: impl FnMut(&Kind) -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match next_event(events, left).await {
            None => panic!("no {what} within {WAIT:?}"),
            Some(Event { kind: Some(k), .. }) => {
                if let Some(v) = pick(&k) {
                    return v;
                }
            }
            Some(_) => {}
        }
    }
}

async fn agreed(events: &mut Events) -> BatchAgreed {
    wait_event(events, "BatchAgreed", |k| if let Kind::BatchAgreed(a) = k { Some(a.clone()) } else { None }).await
}

async fn mismatch(events: &mut Events) -> ResultMismatch {
    wait_event(events, "ResultMismatch", |k| if let Kind::ResultMismatch(m) = k { Some(m.clone()) } else { None }).await
}

async fn submit(node: &TestNode, orders: Vec<openmatch_gossip_sidecar::proto::Order>) {
    let n = orders.len() as u64;
    let resp =
        node.client().await.submit_orders(futures::stream::iter([SubmitOrdersRequest { orders }])).await.unwrap();
    assert_eq!(resp.into_inner().accepted, n);
}

/// `n` engine-sealing nodes in one mesh, each with an engine subscribed to every event.
async fn meshed_cluster(dir: &std::path::Path, n: usize) -> (Vec<TestNode>, Vec<Events>) {
    let nodes = start_cluster(dir, n, &[BTC], engine_sealing).await;
    wait_for_mesh(&nodes, WAIT).await;
    let mut events = Vec::new();
    for node in &nodes {
        events.push(node.subscribe().await);
    }
    (nodes, events)
}

async fn seal(node: &TestNode) -> BatchId {
    let resp = node.client().await.seal_batch(SealBatchRequest { market: BTC.into() }).await.unwrap();
    resp.into_inner().batch_id.expect("batch id")
}

/// Five nodes; one loses two of the origin's orders on the way in. It sees the hash
/// mismatch, fetches the two orders from their origin (delivering them before BatchAgreed),
/// re-seals with revision 1, and all five agree on the union.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_repair_the_node_that_missed_orders() {
    let dir = tempfile::tempdir().unwrap();
    let healthy = start_cluster(dir.path(), 4, &[BTC], engine_sealing).await;
    let lossy = start_node_with_fault(
        dir.path(),
        "lossy",
        &[BTC],
        healthy.iter().map(|n| n.bootstrap_addr()).collect(),
        engine_sealing,
        FaultInjector::dropping(|o| o.id == 3 || o.id == 7),
    )
    .await;
    let all: Vec<&TestNode> = healthy.iter().chain([&lossy]).collect();
    wait_for_mesh(all.iter().copied(), WAIT).await;
    let mut events = Vec::new();
    for n in &all {
        events.push(n.subscribe().await);
    }

    let origin = &healthy[0];
    submit(origin, (0..10).map(|i| order(BTC, i)).collect()).await;
    for (i, ev) in events.iter_mut().enumerate().skip(1) {
        let want = if i == 4 { 8 } else { 10 };
        collect_orders(ev, want, WAIT).await;
    }
    for n in &all {
        assert_eq!(seal(n).await, BatchId { market: BTC.into(), epoch: 0 });
    }

    // The lossy node: the two orders arrive by repair, then the agreement.
    let lossy_events = events.last_mut().unwrap();
    let mut repaired = Vec::new();
    let verdict = loop {
        match next_event(lossy_events, WAIT).await.expect("repair and agreement in time") {
            Event { kind: Some(Kind::Orders(o)), .. } => repaired.extend(o.orders),
            Event { kind: Some(Kind::BatchAgreed(a)), .. } => break a,
            _ => {}
        }
    };
    assert_eq!(
        ids(&repaired).into_iter().collect::<HashSet<_>>(),
        HashSet::from([3, 7]),
        "repaired orders reach the engine first"
    );
    assert_eq!((verdict.order_count, verdict.revision, verdict.repaired_orders), (10, 1, 2));
    let mut hashes = HashSet::from([verdict.batch_hash.clone()]);
    for ev in events.iter_mut().take(4) {
        let a = agreed(ev).await;
        assert_eq!(a.order_count, 10);
        hashes.insert(a.batch_hash);
    }
    assert_eq!(hashes.len(), 1, "all five agree on one hash");
    assert!(metric::batch_mismatches(&lossy, BTC) >= 1);
    assert_eq!(metric::repaired_orders(&lossy, BTC), 2);

    // The agreed batch is served in canonical order (ascending digest) and hashes as agreed.
    let mut stream = lossy
        .client()
        .await
        .get_batch(GetBatchRequest { batch_id: verdict.batch_id.clone() })
        .await
        .unwrap()
        .into_inner();
    let mut served = Vec::new();
    while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
        served.extend(chunk.unwrap().orders);
    }
    let digests: Vec<[u8; 32]> = served.iter().map(openmatch_gossip_sidecar::order_digest).collect();
    assert!(digests.windows(2).all(|w| w[0] < w[1]), "canonical order");
    assert_eq!(batch_hash(digests).to_vec(), verdict.batch_hash);
    drop(all);
    shutdown_all(healthy).await;
    lossy.shutdown().await;
}

/// A member that sends its digest set, then answers the fetch of the orders it named
/// "unknown batch", vouched for what it does not serve: the node repairing from it
/// penalises it once (`unserved_repair`), fetches from another holder and agrees. Nobody
/// else is penalised, anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_refusing_the_orders_its_digest_set_named_is_penalised() {
    let dir = tempfile::tempdir().unwrap();
    // A repairing node asks the live holders in peer id order: the liar gets the lowest id
    // of the three holders, so it is asked first.
    let mut keys: Vec<Keypair> = (0..3).map(|_| Keypair::generate_ed25519()).collect();
    keys.sort_by_key(|k| k.public().to_peer_id());
    for (name, key) in ["liar", "origin", "honest"].into_iter().zip(&keys) {
        sidecar::identity::write_new(&dir.path().join(format!("{name}.key")), key).unwrap();
    }
    let origin = start_node(dir.path(), "origin", &[BTC], vec![], engine_sealing).await;
    let refuse = FaultInjector { refuse_fetches: true, ..Default::default() };
    let liar =
        start_node_with_fault(dir.path(), "liar", &[BTC], vec![origin.bootstrap_addr()], engine_sealing, refuse).await;
    let bootstrap = vec![origin.bootstrap_addr(), liar.bootstrap_addr()];
    let honest = start_node(dir.path(), "honest", &[BTC], bootstrap.clone(), engine_sealing).await;
    let bootstrap = bootstrap.into_iter().chain([honest.bootstrap_addr()]).collect();
    let lossy = start_node_with_fault(
        dir.path(),
        "lossy",
        &[BTC],
        bootstrap,
        engine_sealing,
        FaultInjector::dropping(|o| o.id == 3),
    )
    .await;
    let all = [&origin, &liar, &honest, &lossy];
    wait_for_mesh(all, WAIT).await;
    wait_until(
        WAIT,
        "the lossy node counts its 3 peers live",
        || lossy.metrics.live_peers.get() == 3,
        || format!("live peers: {}", lossy.metrics.live_peers.get()),
    )
    .await;
    let mut events = Vec::new();
    for n in all {
        events.push(n.subscribe().await);
    }

    submit(&origin, (0..5).map(|i| order(BTC, i)).collect()).await;
    for (i, ev) in events.iter_mut().enumerate().skip(1) {
        collect_orders(ev, if i == 3 { 4 } else { 5 }, WAIT).await;
    }
    for n in all {
        seal(n).await;
    }
    let verdict = agreed(&mut events[3]).await;
    assert_eq!((verdict.order_count, verdict.revision, verdict.repaired_orders), (5, 1, 1));
    assert_eq!(metric::penalties_for(&lossy, "unserved_repair"), 1, "the liar, once");
    assert_eq!(metric::penalties(&lossy), 1, "and for nothing else");
    for (n, ev) in all[..3].iter().zip(events.iter_mut()) {
        assert_eq!(agreed(ev).await.batch_hash, verdict.batch_hash, "{} agreed the same batch", n.name);
        assert_eq!(metric::penalties(n), 0, "{} penalised nobody", n.name);
    }
    shutdown_all(vec![origin, liar, honest, lossy]).await;
}

/// A node whose engine reports a different result: every node halts the batch (cause: result
/// mismatch); the odd one out flags itself (`results_outvoted`, health "this node disagrees
/// with the quorum") and penalises nobody; after three offences the honest nodes ban it
/// (disconnect + block).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_results_halt_everywhere_the_repeat_offender_is_banned_and_flags_itself() {
    let dir = tempfile::tempdir().unwrap();
    let (nodes, mut events) = meshed_cluster(dir.path(), 3).await;
    let liar = nodes[2].peer_id();
    for round in 0..3u64 {
        submit(&nodes[0], vec![order(BTC, round)]).await;
        for ev in events.iter_mut().skip(1) {
            collect_orders(ev, 1, WAIT).await;
        }
        for n in &nodes {
            seal(n).await;
        }
        let mut batch: Option<BatchId> = None;
        for ev in events.iter_mut() {
            batch = agreed(ev).await.batch_id;
        }
        for (i, n) in nodes.iter().enumerate() {
            let hash = if i == 2 { vec![0xbad_u16 as u8; 32] } else { vec![7; 32] };
            n.client()
                .await
                .submit_result(SubmitResultRequest { batch_id: batch.clone(), result_hash: hash, trade_count: 0 })
                .await
                .unwrap();
        }
        for ev in events.iter_mut() {
            let m = mismatch(ev).await;
            assert!(m.halt, "round {round}: {m:?}");
            assert_eq!(m.cause(), HaltCause::ResultMismatch);
            assert_eq!(m.batch_id, batch);
        }
        // The liar finds itself outvoted (before the others ban it, which would isolate it).
        let liar_node = &nodes[2];
        wait_until(
            WAIT,
            "the liar flags itself",
            || metric::results_outvoted(liar_node, BTC) == round + 1,
            || format!("outvoted {}", metric::results_outvoted(liar_node, BTC)),
        )
        .await;
        if round == 0 {
            let status = liar_node.status().await;
            assert_eq!(status.health, "degraded");
            assert!(status.health_reason.contains("this node disagrees with the quorum"), "{}", status.health_reason);
        }
    }
    for honest in &nodes[..2] {
        wait_until(
            WAIT,
            "the liar banned",
            || honest.metrics.banned_peers.get() == 1,
            || format!("banned {}", honest.metrics.banned_peers.get()),
        )
        .await;
        assert!(metric::result_mismatches(honest, BTC) >= 3);
        // The ban closes the liar's connections; the swarm lists a connection until its
        // close completes, a moment after the ban is counted.
        wait_for(WAIT, "the banned liar disconnected", async || {
            let connected = honest.status().await.connected_peers;
            if connected.contains(&liar.to_string()) { Err(format!("connected: {connected:?}")) } else { Ok(()) }
        })
        .await;
        assert_eq!(honest.status().await.health, "degraded");
    }
    let liar_node = &nodes[2];
    assert_eq!(liar_node.metrics.banned_peers.get(), 0, "the liar bans nobody: the others were the majority");
    assert_eq!(metric::penalties(liar_node), 0, "nor penalises them");
    for honest in &nodes[..2] {
        assert_eq!(metric::results_outvoted(honest, BTC), 0, "{}: in the majority", honest.name);
    }
    shutdown_all(nodes).await;
}

/// Engine sealing in lockstep (issue 11's sequence): node 0 seals epoch 0 and submits an
/// order, which joins its epoch 1. Nodes 1 and 2 receive that order before their engines
/// seal; they must still seal epoch 0 (not jump to 1), so batch 0 is agreed by all three
/// and the order is in batch 1 everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_sealing_keeps_every_node_on_the_same_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let (nodes, mut events) = meshed_cluster(dir.path(), 3).await;
    assert_eq!(seal(&nodes[0]).await, BatchId { market: BTC.into(), epoch: 0 });
    submit(&nodes[0], vec![order(BTC, 1)]).await;
    for ev in events.iter_mut().skip(1) {
        let got = collect_orders(ev, 1, WAIT).await;
        assert_eq!(got[0].epoch, 1, "node 0 stamped its next epoch");
    }
    for n in &nodes[1..] {
        assert_eq!(seal(n).await, BatchId { market: BTC.into(), epoch: 0 }, "{} seals the same epoch", n.name);
    }
    let mut hashes = HashSet::new();
    for ev in &mut events {
        let a = agreed(ev).await;
        assert_eq!((a.batch_id.clone().unwrap().epoch, a.order_count), (0, 0));
        hashes.insert(a.batch_hash);
    }
    assert_eq!(hashes.len(), 1);
    for n in &nodes {
        assert_eq!(seal(n).await, BatchId { market: BTC.into(), epoch: 1 });
    }
    for ev in &mut events {
        let a = agreed(ev).await;
        assert_eq!((a.batch_id.clone().unwrap().epoch, a.order_count), (1, 1), "the order is in batch 1 everywhere");
    }
    shutdown_all(nodes).await;
}

/// A node that joins after the orders were gossiped learns the open batch from the seals,
/// repairs it from the origin and agrees with the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_catches_up_on_the_open_batch() {
    let dir = tempfile::tempdir().unwrap();
    let early = start_cluster(dir.path(), 2, &[BTC], engine_sealing).await;
    wait_for_mesh(&early, WAIT).await;
    let mut peer_events = early[1].subscribe().await;
    submit(&early[0], (0..5).map(|i| order(BTC, i)).collect()).await;
    collect_orders(&mut peer_events, 5, WAIT).await;

    let late =
        start_node(dir.path(), "late", &[BTC], early.iter().map(|n| n.bootstrap_addr()).collect(), engine_sealing)
            .await;
    let all: Vec<&TestNode> = early.iter().chain([&late]).collect();
    wait_for_mesh(all.iter().copied(), WAIT).await;
    let mut late_events = late.subscribe().await;
    for n in &all {
        seal(n).await;
    }
    let a = agreed(&mut late_events).await;
    assert_eq!((a.order_count, a.repaired_orders), (5, 5));
    assert_eq!(agreed(&mut peer_events).await.batch_hash, a.batch_hash);
    drop(all);
    shutdown_all(early).await;
    late.shutdown().await;
}

/// The origin of a batch's orders is gone when a node that never saw them joins: it
/// repairs them from members that only hold them (content addressing and the origin's
/// bundle signatures, which the holders kept from gossip, prove them), and all agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_repairs_from_holders_when_the_origin_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let mut early = start_cluster(dir.path(), 3, &[BTC], engine_sealing).await;
    wait_for_mesh(&early, WAIT).await;
    let mut holder_events = Vec::new();
    for n in &early[1..] {
        holder_events.push(n.subscribe().await);
    }
    submit(&early[0], (0..5).map(|i| order(BTC, i)).collect()).await;
    for ev in &mut holder_events {
        collect_orders(ev, 5, WAIT).await;
    }
    let origin = early.remove(0);
    let origin_id = origin.peer_id();
    origin.shutdown().await;

    let holders = early;
    let late =
        start_node(dir.path(), "late", &[BTC], holders.iter().map(|n| n.bootstrap_addr()).collect(), engine_sealing)
            .await;
    let all: Vec<&TestNode> = holders.iter().chain([&late]).collect();
    wait_for_mesh(all.iter().copied(), WAIT).await;
    let mut late_events = late.subscribe().await;
    for n in &all {
        seal(n).await;
    }
    let mut repaired = Vec::new();
    let a = loop {
        match next_event(&mut late_events, WAIT).await.expect("repair and agreement in time") {
            Event { kind: Some(Kind::Orders(o)), .. } => repaired.extend(o.orders),
            Event { kind: Some(Kind::BatchAgreed(a)), .. } => break a,
            _ => {}
        }
    };
    assert_eq!((a.order_count, a.revision, a.repaired_orders), (5, 1, 5));
    assert!(repaired.iter().all(|o| o.origin == origin_id.to_bytes()), "every order is the origin's");
    assert_eq!(ids(&repaired).into_iter().collect::<HashSet<_>>(), (0..5).collect::<HashSet<_>>());
    assert_eq!(metric::repaired_orders(&late, BTC), 5);
    for reason in ["not_asked", "invalid", "no_proof", "bad_signature"] {
        assert_eq!(metric::repair_orders_refused(&late, BTC, reason), 0, "{reason}");
    }
    for ev in &mut holder_events {
        assert_eq!(agreed(ev).await.batch_hash, a.batch_hash);
    }
    drop(all);
    shutdown_all(holders).await;
    late.shutdown().await;
}

/// The same orders give the same batch hash whatever the arrival order, on any node and in
/// any run: the hash is SHA-256 over the sorted order digests (docs/PROTOCOL.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_hashes_are_deterministic_across_runs_and_orderings() {
    let mut per_run = Vec::new();
    for run in 0..2u64 {
        let dir = tempfile::tempdir().unwrap();
        // Fixed identities: the same origins in both runs.
        for i in 0..3u8 {
            let key = libp2p::identity::Keypair::ed25519_from_bytes([i + 1; 32]).unwrap();
            sidecar::identity::write_new(&dir.path().join(format!("n{i}.key")), &key).unwrap();
        }
        let nodes = start_cluster(dir.path(), 3, &[BTC], engine_sealing).await;
        wait_for_mesh(&nodes, WAIT).await;
        let mut events = Vec::new();
        for n in &nodes {
            events.push(n.subscribe().await);
        }
        // n0 always submits ids 0..20 and n1 ids 100..120; run 0 in ascending order with n0
        // first, run 1 in descending order with n1 first.
        let mut ids: Vec<u64> = (0..20).collect();
        if run == 1 {
            ids.reverse();
        }
        let n0_orders: Vec<_> = ids.iter().map(|&i| order(BTC, i)).collect();
        let n1_orders: Vec<_> = ids.iter().map(|&i| order(BTC, 100 + i)).collect();
        if run == 0 {
            submit(&nodes[0], n0_orders).await;
            submit(&nodes[1], n1_orders).await;
        } else {
            submit(&nodes[1], n1_orders).await;
            submit(&nodes[0], n0_orders).await;
        }
        collect_orders(&mut events[2], 40, WAIT).await;
        collect_orders(&mut events[0], 20, WAIT).await;
        collect_orders(&mut events[1], 20, WAIT).await;
        for n in &nodes {
            seal(n).await;
        }
        let mut hashes = HashSet::new();
        for ev in events.iter_mut() {
            hashes.insert(agreed(ev).await.batch_hash);
        }
        assert_eq!(hashes.len(), 1, "run {run}: nodes disagree");
        per_run.push(hashes.into_iter().next().unwrap());
        shutdown_all(nodes).await;
    }
    assert_eq!(per_run[0], per_run[1], "the same orders hash the same in every run");
}

/// Orders claiming an epoch beyond the current one are rejected and counted; the peer keeps
/// its honest orders flowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_for_a_future_epoch_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path(), "node", &[BTC], vec![], |_| {}).await;
    let raw = RawPeer::spawn(BTC);
    raw.join(&node).await;
    let mut events = node.subscribe().await;
    // The node learns the current epoch on its first consensus tick (every 20 ms), long
    // before the raw peer has joined its mesh.
    let future = openmatch_gossip_sidecar::proto::Order { epoch: current_epoch() + 5, ..raw.order(1) };
    raw.publish(vec![future]).await;
    raw.publish(vec![raw.order(2)]).await;
    let got = collect_orders(&mut events, 1, WAIT).await;
    assert_eq!(ids(&got), vec![2]);
    wait_until(
        WAIT,
        "future epoch rejected",
        || metric::rejected(&node, BTC, "future_epoch") == 1,
        || format!("{}", metric::rejected(&node, BTC, "future_epoch")),
    )
    .await;
    node.shutdown().await;
}

/// Seals and results for epochs outside the epoch window — `u64::MAX` (which used to
/// overflow the seal-time arithmetic), epoch 1,000 (1970), a few epochs ahead — are refused
/// before they create a batch: nothing is sealed or agreed for them, and the batch is
/// unknown to `GetBatch`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seals_and_results_outside_the_epoch_window_create_no_batch() {
    use openmatch_gossip_sidecar::TopicKind;
    use openmatch_gossip_sidecar::proto::{BatchSealed, TradeResult, gossip_envelope::Body};
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path(), "node", &[BTC], vec![], |_| {}).await;
    let raw = RawPeer::spawn(BTC);
    raw.join(&node).await;
    let id = |epoch| Some(BatchId { market: BTC.into(), epoch });
    let seal = |epoch| {
        openmatch_gossip_sidecar::encode_envelope(Body::BatchSealed(BatchSealed {
            batch_id: id(epoch),
            batch_hash: vec![1; 32],
            order_count: 1,
            revision: 0,
        }))
    };
    for epoch in [u64::MAX, 1_000, current_epoch() + 5] {
        raw.publish_on(TopicKind::Batches, seal(epoch)).await;
    }
    let result = TradeResult { batch_id: id(u64::MAX), result_hash: vec![2; 32], trade_count: 1 };
    raw.publish_on(TopicKind::Results, openmatch_gossip_sidecar::encode_envelope(Body::TradeResult(result))).await;
    let counts = || {
        (
            metric::rejected_on(&node, "batches", BTC, "future_epoch"),
            metric::stale(&node, "batches", BTC),
            metric::rejected_on(&node, "results", BTC, "future_epoch"),
        )
    };
    wait_until(WAIT, "out-of-window seals and results refused", || counts() == (2, 1, 1), || format!("{:?}", counts()))
        .await;
    let mut client = node.client().await;
    for epoch in [u64::MAX, 1_000, current_epoch() + 5] {
        let err = client.get_batch(GetBatchRequest { batch_id: id(epoch) }).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound, "epoch {epoch}: {err}");
    }
    assert_eq!(metric::batches(&node, BTC, "sealed"), 0, "no batch was sealed for them");
    node.shutdown().await;
}

/// The origin's engine learns each order's fate right after its batch's `BatchAgreed`; an
/// engine that resumes from its last cursor gets exactly the events it missed (orders that
/// arrived while it was away, then the agreement); a cursor from another run of the sidecar
/// is refused with OUT_OF_RANGE rather than answered with a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_reach_the_origin_and_a_resumed_subscription_misses_nothing() {
    use openmatch_gossip_sidecar::proto::{Cursor, SubscribeRequest};
    let dir = tempfile::tempdir().unwrap();
    let (nodes, mut events) = meshed_cluster(dir.path(), 3).await;
    submit(&nodes[0], (0..3).map(|i| order(BTC, i)).collect()).await;
    // Node 1's engine reads the three orders, keeps its cursor and goes away.
    let mut away = events.remove(1);
    let (mut seen, mut cursor) = (0, None);
    while seen < 3 {
        let ev = next_event(&mut away, WAIT).await.expect("the three orders");
        if let Some(Kind::Orders(o)) = &ev.kind {
            seen += o.orders.len();
        }
        cursor = ev.cursor;
    }
    drop(away);
    let cursor = cursor.expect("every event carries a cursor");
    submit(&nodes[0], (3..5).map(|i| order(BTC, i)).collect()).await;
    collect_orders(&mut events[1], 5, WAIT).await; // node 2 has all five
    for n in &nodes {
        seal(n).await;
    }
    let agreement = agreed(&mut events[0]).await;
    let outcome = wait_event(&mut events[0], "OrdersCommitted", |k| match k {
        Kind::OrdersCommitted(c) => Some(c.clone()),
        Kind::OrdersExcluded(x) => panic!("nothing is excluded on a calm network: {x:?}"),
        _ => None,
    })
    .await;
    assert_eq!(outcome.batch_id, agreement.batch_id);
    let mut committed = outcome.ids.clone();
    committed.sort_unstable();
    assert_eq!(committed, (0..5).collect::<Vec<_>>());

    let resume = |resume_after| SubscribeRequest { markets: vec![], resume_after: Some(resume_after) };
    let mut resumed = nodes[1].client().await.subscribe(resume(cursor)).await.unwrap().into_inner();
    let mut replayed = Vec::new();
    let mut sequences = vec![cursor.sequence];
    loop {
        let ev = next_event(&mut resumed, WAIT).await.expect("the missed events");
        sequences.push(ev.cursor.expect("cursor").sequence);
        match ev.kind {
            Some(Kind::Orders(o)) => replayed.extend(ids(&o.orders)),
            Some(Kind::BatchAgreed(a)) => {
                assert_eq!(a.batch_hash, agreement.batch_hash);
                break;
            }
            _ => {}
        }
    }
    assert_eq!(replayed, vec![3, 4], "exactly the orders that arrived while the engine was away");
    assert!(sequences.windows(2).all(|w| w[1] == w[0] + 1), "no gap, no repeat: {sequences:?}");
    assert_eq!(nodes[1].status().await.incarnation, cursor.incarnation);
    let other_run = Cursor { incarnation: cursor.incarnation ^ 1, ..cursor };
    let refused = nodes[1].client().await.subscribe(resume(other_run)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::OutOfRange, "{refused:?}");
    shutdown_all(nodes).await;
}

/// Two of three nodes miss one of the origin's orders: the quorum agrees the batch without
/// it, the origin adopts that batch and tells its engine the order was excluded; resubmitted
/// under the same id, the order joins the next batch and is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_the_quorum_missed_is_excluded_then_committed_when_resubmitted() {
    let dir = tempfile::tempdir().unwrap();
    let origin = start_node(dir.path(), "origin", &[BTC], vec![], engine_sealing).await;
    let mut lossy = Vec::new();
    for name in ["l1", "l2"] {
        let bootstrap = [&origin].into_iter().chain(lossy.iter()).map(|n| n.bootstrap_addr()).collect();
        // Each loses order 9 of epoch 0 on the way in, not its resubmission.
        lossy.push(
            start_node_with_fault(
                dir.path(),
                name,
                &[BTC],
                bootstrap,
                engine_sealing,
                FaultInjector::dropping(|o| o.id == 9 && o.epoch == 0),
            )
            .await,
        );
    }
    let all: Vec<&TestNode> = [&origin].into_iter().chain(lossy.iter()).collect();
    wait_for_mesh(all.iter().copied(), WAIT).await;
    let mut events = Vec::new();
    for n in &all {
        events.push(n.subscribe().await);
    }
    submit(&origin, vec![order(BTC, 8), order(BTC, 9)]).await;
    for ev in events.iter_mut().skip(1) {
        assert_eq!(ids(&collect_orders(ev, 1, WAIT).await), vec![8]);
    }
    for n in &all {
        assert_eq!(seal(n).await.epoch, 0);
    }
    let first = agreed(&mut events[0]).await;
    assert_eq!((first.order_count, first.revision), (1, 1), "the origin adopted the quorum's batch");
    let fate = |k: &Kind| match k {
        Kind::OrdersCommitted(c) => Some((c.ids.clone(), true)),
        Kind::OrdersExcluded(x) => Some((x.ids.clone(), false)),
        _ => None,
    };
    let mut fates = vec![wait_event(&mut events[0], "an outcome", fate).await];
    fates.push(wait_event(&mut events[0], "an outcome", fate).await);
    fates.sort();
    assert_eq!(fates, vec![(vec![8], true), (vec![9], false)]);
    assert_eq!(metric::order_outcomes(&origin, BTC, "excluded"), 1);

    submit(&origin, vec![order(BTC, 9)]).await; // same id, same content: joins epoch 1
    for ev in events.iter_mut().skip(1) {
        assert_eq!(ids(&collect_orders(ev, 1, WAIT).await), vec![9]);
    }
    for n in &all {
        assert_eq!(seal(n).await.epoch, 1);
    }
    let second = agreed(&mut events[0]).await;
    assert_eq!((second.order_count, second.revision), (1, 0));
    assert_eq!(wait_event(&mut events[0], "an outcome", fate).await, (vec![9], true));
    drop(all);
    shutdown_all(lossy).await;
    origin.shutdown().await;
}

/// A restarted sidecar learns from its peers which of its orders the network committed
/// before it stopped: it takes submissions only then, and its engine's resubmissions of
/// those orders get `OrdersCommitted` again instead of being gossiped a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_sidecar_recovers_its_committed_orders_from_peers() {
    let dir = tempfile::tempdir().unwrap();
    let fast = |c: &mut SidecarConfig| {
        c.consensus.epoch_ms = 200;
        c.consensus.grace_ms = 50;
        c.consensus.seal_timeout_ms = 200;
        c.consensus.repair_window_ms = 3_000;
    };
    let mut nodes = start_cluster(dir.path(), 3, &[BTC], fast).await;
    wait_for_mesh(&nodes, WAIT).await;
    let mut first_run = nodes[0].subscribe().await;
    let committed_ids = async |events: &mut Events, n: usize| {
        let mut ids = Vec::new();
        while ids.len() < n {
            let c = wait_event(events, "OrdersCommitted", |k| match k {
                Kind::OrdersCommitted(c) => Some(c.ids.clone()),
                _ => None,
            })
            .await;
            ids.extend(c);
        }
        ids.sort_unstable();
        ids
    };
    let five: Vec<_> = (0..5).map(|i| order(BTC, i)).collect();
    submit(&nodes[0], five.clone()).await;
    assert_eq!(committed_ids(&mut first_run, 5).await, vec![0, 1, 2, 3, 4]);
    drop(first_run);

    let old = nodes.remove(0);
    let peers: Vec<String> = nodes.iter().map(|n| n.bootstrap_addr()).collect();
    old.shutdown().await;
    let delivered_before: Vec<u64> = nodes.iter().map(|n| metric::delivered(n, BTC)).collect();
    let mut watch: Vec<Events> = Vec::new();
    for n in &nodes {
        watch.push(n.subscribe().await);
    }
    let again = start_node(dir.path(), "n0", &[BTC], peers, fast).await;
    let mut second_run = again.subscribe().await;
    submit(&again, five).await; // waits for recovery, then: all five are known committed
    assert_eq!(committed_ids(&mut second_run, 5).await, vec![0, 1, 2, 3, 4]);
    for ((n, events), before) in nodes.iter().zip(watch.iter_mut()).zip(delivered_before) {
        expect_no_orders(events, std::time::Duration::from_millis(500)).await;
        assert_eq!(metric::delivered(n, BTC), before, "the resubmissions were not gossiped again");
    }
    assert_eq!(metric::order_outcomes(&again, BTC, "committed"), 0, "nothing new was committed by the new run");
    // The peers still remember the previous run (heard within the liveness window), but
    // only from before the new run started: not a duplicate identity.
    assert_eq!(again.metrics.duplicate_identity.get(), 0, "the previous run is not a twin");
    shutdown_all(nodes).await;
    again.shutdown().await;
}
