//! The seen-cache: an order that arrives again, alone or re-packed with new ones, reaches
//! the engine once; a message of nothing but known orders is dropped as a duplicate.

use std::time::Duration;

use openmatch_gossip_sidecar::proto::Order;
use openmatch_gossip_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repacked_order_is_delivered_once() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path(), "node", &[BTC], vec![], |_| {}).await;
    let raw = RawPeer::spawn(BTC);
    raw.join(&node).await;
    let mut events = node.subscribe().await;

    let (x, y) = (raw.order(1), raw.order(2));
    // M1 = [x]
    raw.publish(vec![x.clone()]).await;
    let first = collect_orders(&mut events, 1, WAIT).await;
    assert_eq!(first, vec![x.clone()]);

    // M2 = [x, y]: only y is new.
    raw.publish(vec![x.clone(), y.clone()]).await;
    let second = collect_orders(&mut events, 1, WAIT).await;
    assert_eq!(second, vec![y.clone()]);
    assert_eq!(metric::duplicate_orders(&node, BTC), 1);
    assert_eq!(metric::duplicate_messages(&node, BTC), 0, "M2 carried a new order");

    // M3 = [x, y] again, x re-stamped: submitted_at_ns is not part of the digest, so the
    // whole message is known and dropped.
    let restamped = Order { submitted_at_ns: x.submitted_at_ns + 1, ..x.clone() };
    raw.publish(vec![restamped, y.clone()]).await;
    wait_until(
        WAIT,
        "M3 counted as a duplicate message",
        || metric::duplicate_messages(&node, BTC) == 1,
        || format!("messages_duplicate {}", metric::duplicate_messages(&node, BTC)),
    )
    .await;
    assert_eq!(metric::duplicate_orders(&node, BTC), 3);

    // A changed field makes a different order: it is delivered.
    let amended = Order { quantity_lots: x.quantity_lots + 1, ..x.clone() };
    raw.publish(vec![amended.clone()]).await;
    assert_eq!(collect_orders(&mut events, 1, WAIT).await, vec![amended]);

    expect_no_orders(&mut events, Duration::from_millis(200)).await;
    assert_eq!(metric::delivered(&node, BTC), 3);
    assert_eq!(metric::received(&node, BTC), 4);
    node.shutdown().await;
}

/// Gossip through a third node: in a line a — b — c, c receives a's orders only via b,
/// and each exactly once, while b (which forwards) delivers them to its own engine once
/// too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_forwarded_over_two_hops_arrive_once() {
    let dir = tempfile::tempdir().unwrap();
    let b = start_node(dir.path(), "b", &[BTC], vec![], |_| {}).await;
    let a = start_node(dir.path(), "a", &[BTC], vec![b.bootstrap_addr()], |c| c.p2p.kademlia = false).await;
    let c = start_node(dir.path(), "c", &[BTC], vec![b.bootstrap_addr()], |c| c.p2p.kademlia = false).await;
    // b runs Kademlia but a and c do not learn of each other through it (they do not run
    // it), so the line stays a line.
    let (ai, ci) = (a.peer_id().to_string(), c.peer_id().to_string());
    wait_for(WAIT, "b meshed with a and c", async || {
        let s = b.status().await;
        let t = s.topics.iter().find(|t| t.topic.ends_with("/orders/BTC-USDT")).unwrap();
        if t.mesh_peers.contains(&ai) && t.mesh_peers.contains(&ci) { Ok(()) } else { Err(format!("{t:?}")) }
    })
    .await;
    let mut b_events = b.subscribe().await;
    let mut c_events = c.subscribe().await;

    let mut engine = a.client().await;
    let orders: Vec<Order> = (0..20).map(|i| order(BTC, i)).collect();
    let chunks = orders.chunks(5).map(|c| openmatch_gossip_sidecar::proto::SubmitOrdersRequest { orders: c.to_vec() });
    engine.submit_orders(tokio_stream::iter(chunks.collect::<Vec<_>>())).await.unwrap();

    for events in [&mut b_events, &mut c_events] {
        let got = collect_orders(events, orders.len(), WAIT).await;
        assert_eq!(distinct_identities(&got).len(), orders.len());
        assert!(got.iter().all(|o| o.origin == a.peer_id().to_bytes()));
        expect_no_orders(events, Duration::from_millis(200)).await;
    }
    assert!(!c.status().await.connected_peers.contains(&ai), "a and c must not be directly connected");
    shutdown_all(vec![a, b, c]).await;
}

/// `libp2p_gossipsub_idontwant_msgs_total` of `node`: IDONTWANT messages it received.
fn idontwant_received(node: &TestNode) -> u64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &node.sidecar.registry).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("libp2p_gossipsub_idontwant_msgs_total "))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// In a full mesh of three, both receivers have each message straight from its author, so
/// a forward between them is a duplicate. Each message, however small (GossipSub's default
/// is only messages above 1,000 bytes), makes whichever receiver has it first tell the
/// other one IDONTWANT (GossipSub v1.2), so that the other's forward is not sent. Every
/// order still arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receivers_send_idontwant_for_small_messages() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_cluster(dir.path(), 3, &[BTC], |_| {}).await;
    wait_for_mesh(&nodes, WAIT).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let mut b_events = b.subscribe().await;
    let mut c_events = c.subscribe().await;
    let before = idontwant_received(b) + idontwant_received(c);

    let mut engine = a.client().await;
    let n = 20;
    for i in 0..n {
        // One order per message: ~250 bytes on the wire, far below 1,000.
        let req = openmatch_gossip_sidecar::proto::SubmitOrderRequest { order: Some(order(BTC, i)) };
        engine.submit_order(req).await.unwrap();
        for events in [&mut b_events, &mut c_events] {
            assert_eq!(ids(&collect_orders(events, 1, WAIT).await), vec![i]);
        }
    }
    wait_until(
        WAIT,
        "an IDONTWANT between the receivers for every message",
        || idontwant_received(b) + idontwant_received(c) >= before + n,
        || format!("b received {}, c received {} (before: {before})", idontwant_received(b), idontwant_received(c)),
    )
    .await;
    for events in [&mut b_events, &mut c_events] {
        expect_no_orders(events, Duration::from_millis(200)).await;
    }
    shutdown_all(nodes).await;
}
