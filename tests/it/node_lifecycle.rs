//! Shutdown and restart: the socket file goes away, the peer's engine is told the node
//! left, and a restart with the same identity key comes back as the same peer and trades
//! again.

use openmatch_gossip_sidecar::proto::{Event, PeerJoined, PeerLeft, SubmitOrderRequest, event::Kind};
use openmatch_gossip_tests::*;

/// The next peer joined/left event on `events` (orders are skipped), within [`WAIT`].
async fn next_peer_event(events: &mut Events) -> Kind {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match next_event(events, left).await {
            None => panic!("no peer event within {WAIT:?}"),
            Some(Event { kind: Some(k @ (Kind::PeerJoined(_) | Kind::PeerLeft(_))), .. }) => return k,
            Some(_) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_restart_keeps_identity() {
    let dir = tempfile::tempdir().unwrap();
    let b = start_node(dir.path(), "b", &[BTC], vec![], |_| {}).await;
    let a = start_node(dir.path(), "a", &[BTC], vec![b.bootstrap_addr()], |_| {}).await;
    let first_id = a.peer_id();
    let a_socket = a.socket.clone();
    assert!(a_socket.exists());
    wait_for_mesh([&a, &b], WAIT).await;
    let mut b_events = b.subscribe().await;

    a.shutdown().await;
    assert!(!a_socket.exists(), "shutdown removes the socket file");
    assert_eq!(next_peer_event(&mut b_events).await, Kind::PeerLeft(PeerLeft { peer_id: first_id.to_string() }));
    let peers = || b.metrics.peers.get();
    wait_until(WAIT, "b to count no connected peers", || peers() == 0, || format!("peers {}", peers())).await;

    // Same name = same key file: same peer id, on a new address.
    let a = start_node(dir.path(), "a", &[BTC], vec![b.bootstrap_addr()], |_| {}).await;
    assert_eq!(a.peer_id(), first_id, "the identity key file is reused");
    assert!(a_socket.exists());
    assert_eq!(next_peer_event(&mut b_events).await, Kind::PeerJoined(PeerJoined { peer_id: first_id.to_string() }));
    // Not the mesh: a left its topics on shutdown, so b keeps it in GossipSub backoff for
    // a while; its own publishes reach b regardless (flood publishing).
    wait_for_subscribed([&a, &b], WAIT).await;

    // Orders flow both ways again.
    let mut a_events = a.subscribe().await;
    a.client().await.submit_order(SubmitOrderRequest { order: Some(order(BTC, 1)) }).await.unwrap();
    let got = collect_orders(&mut b_events, 1, WAIT).await;
    assert_eq!((got[0].id, got[0].origin.clone()), (1, first_id.to_bytes().into()));
    b.client().await.submit_order(SubmitOrderRequest { order: Some(order(BTC, 2)) }).await.unwrap();
    let got = collect_orders(&mut a_events, 1, WAIT).await;
    assert_eq!((got[0].id, got[0].origin.clone()), (2, b.peer_id().to_bytes().into()));

    // A stopping node ends its own subscribers' streams with UNAVAILABLE.
    a.shutdown().await;
    let end = tokio::time::timeout(WAIT, futures::StreamExt::next(&mut a_events)).await.expect("stream ends promptly");
    match end {
        Some(Err(s)) => assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}"),
        other => panic!("expected UNAVAILABLE, got {other:?}"),
    }
    b.shutdown().await;
}

/// Two processes with one identity key: a second node started with node 0's key learns from
/// a peer that an earlier run of its id is live and stops with the reason (the binary then
/// exits non-zero); node 0 reports the twin loudly while it is heard of (metric, health)
/// and keeps working: nobody is banned, its orders still reach its peers, and the report
/// clears once the twin is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_with_a_live_identity_refuses_to_run_and_the_first_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let quick = |c: &mut openmatch_gossip_crds::SidecarConfig| {
        c.heartbeat.interval_ms = 200;
        c.heartbeat.liveness_window_ms = 1_500;
    };
    let nodes = start_cluster(dir.path(), 3, &[BTC], quick).await;
    wait_for_mesh(&nodes, WAIT).await;
    std::fs::copy(dir.path().join("n0.key"), dir.path().join("twin.key")).unwrap();
    let peers: Vec<String> = nodes[1..].iter().map(|n| n.bootstrap_addr()).collect();
    let twin = start_node(dir.path(), "twin", &[BTC], peers, quick).await;
    assert_eq!(twin.peer_id(), nodes[0].peer_id(), "the same identity key");

    let reason = tokio::time::timeout(WAIT, twin.node.fatal()).await.expect("the twin learns it must stop");
    assert!(reason.starts_with("duplicate identity: peer id"), "{reason}");
    assert!(reason.contains("this process started later"), "{reason}");
    let first = &nodes[0];
    wait_until(
        WAIT,
        "node 0 reports the twin",
        || first.metrics.duplicate_identity.get() == 1,
        || format!("duplicate_identity {}", first.metrics.duplicate_identity.get()),
    )
    .await;
    let health = first.status().await;
    assert_eq!(health.health, "degraded");
    assert!(health.health_reason.starts_with("duplicate identity: another process"), "{}", health.health_reason);
    twin.shutdown().await;

    let mut events = nodes[1].subscribe().await;
    first
        .client()
        .await
        .submit_order(openmatch_gossip_sidecar::proto::SubmitOrderRequest { order: Some(order(BTC, 1)) })
        .await
        .unwrap();
    let got = collect_orders(&mut events, 1, WAIT).await;
    assert_eq!(got[0].origin, first.peer_id().to_bytes(), "node 0 still trades");
    wait_until(
        WAIT,
        "node 0's twin report cleared once the twin is gone",
        || first.metrics.duplicate_identity.get() == 0,
        || format!("duplicate_identity {}", first.metrics.duplicate_identity.get()),
    )
    .await;
    for n in &nodes {
        assert_eq!(metric::banned_peers(n), 0, "{}: nobody banned", n.name);
    }
    shutdown_all(nodes).await;
}
