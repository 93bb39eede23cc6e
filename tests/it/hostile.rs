//! Hostile gossip: oversized, malformed and forged messages are rejected and counted, not
//! delivered and not forwarded; honest traffic keeps flowing afterwards.

use std::time::Duration;

use openmatch_gossip_sidecar::proto::{Order, SubmitOrderRequest};
use openmatch_gossip_tests::*;

/// The default cap (1 MiB).
const CAP: usize = 1 << 20;

/// Two meshed nodes (victim, honest) and a raw peer joined to the victim.
async fn victim_honest_and_raw(dir: &std::path::Path) -> (Vec<TestNode>, RawPeer) {
    let nodes = start_cluster(dir, 2, &[BTC], |_| {}).await;
    wait_for_mesh(&nodes, WAIT).await;
    let raw = RawPeer::spawn(BTC);
    raw.join(&nodes[0]).await;
    (nodes, raw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_are_rejected_and_honest_ones_still_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let (nodes, raw) = victim_honest_and_raw(dir.path()).await;
    let (victim, honest) = (&nodes[0], &nodes[1]);
    let mut victim_events = victim.subscribe().await;
    let mut honest_events = honest.subscribe().await;

    // Oversized: above the 1 MiB cap, but within GossipSub's transmit size (cap + 64 KiB
    // slack), so it reaches validation instead of being cut off by the codec.
    let big = Order { freeze_proof: vec![0xab; CAP + 8 * 1024], ..raw.order(1) };
    raw.publish(vec![big]).await;
    // Malformed: not a protobuf GossipEnvelope (field 1 with the invalid wire type 7).
    raw.publish_raw(vec![0x0f, 0xff, 0xff, 0xff]).await;
    // Forged: orders claiming to come from the honest node.
    let forged = Order { origin: honest.peer_id().to_bytes().into(), ..order(BTC, 3) };
    raw.publish(vec![raw.order(2), forged]).await;

    let reasons = ["oversized", "malformed", "forged_origin"];
    let counts = || reasons.map(|r| metric::rejected(victim, BTC, r));
    wait_until(
        WAIT,
        "one rejection of each kind",
        || counts() == [1, 1, 1],
        || format!("{reasons:?} = {:?}", counts()),
    )
    .await;
    assert_eq!(metric::received(victim, BTC), 3);
    assert_eq!(metric::delivered(victim, BTC), 0);
    // The raw peer is still connected: rejection penalises, it does not disconnect.
    assert!(victim.status().await.connected_peers.contains(&raw.peer_id.to_string()));

    // Honest traffic, both ways, still flows.
    let mut engine = honest.client().await;
    engine.submit_order(SubmitOrderRequest { order: Some(order(BTC, 10)) }).await.unwrap();
    let got = collect_orders(&mut victim_events, 1, WAIT).await;
    assert_eq!((got[0].id, got[0].origin.clone()), (10, honest.peer_id().to_bytes().into()));
    let mut engine = victim.client().await;
    engine.submit_order(SubmitOrderRequest { order: Some(order(BTC, 11)) }).await.unwrap();
    let got = collect_orders(&mut honest_events, 1, WAIT).await;
    assert_eq!((got[0].id, got[0].origin.clone()), (11, victim.peer_id().to_bytes().into()));
    // And a valid message from the raw peer is accepted now too.
    raw.publish(vec![raw.order(4)]).await;
    let got = collect_orders(&mut victim_events, 1, WAIT).await;
    assert_eq!((got[0].id, got[0].origin.clone()), (4, raw.peer_id.to_bytes().into()));

    // The rejected messages were never forwarded: the honest node got only the raw peer's
    // valid order (forwarded by the victim), and never validated the bad ones.
    let got = collect_orders(&mut honest_events, 1, WAIT).await;
    assert_eq!((got[0].id, got[0].origin.clone()), (4, raw.peer_id.to_bytes().into()));
    expect_no_orders(&mut honest_events, Duration::from_millis(200)).await;
    for r in reasons {
        assert_eq!(metric::rejected(honest, BTC, r), 0, "{r} reached the honest node");
    }
    assert_eq!(metric::received(honest, BTC), 2, "the victim's order and the forwarded valid one");

    shutdown_all(nodes).await;
}

/// Bodies that decode but do not belong: a `PeerStatus` on an orders topic, an envelope
/// of a future wire version, an order of another market, an empty `OrderGossip`, valid
/// orders without their origin's bundle signature.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_kind_version_and_schema_are_rejected() {
    use openmatch_gossip_sidecar::proto::{GossipEnvelope, OrderGossip, PeerStatus, gossip_envelope::Body};
    use prost::Message as _;

    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path(), "node", &[BTC, ETH], vec![], |_| {}).await;
    let raw = RawPeer::spawn(BTC);
    raw.join(&node).await;
    let mut events = node.subscribe().await;

    let status = PeerStatus { node_id: raw.peer_id.to_bytes(), ..Default::default() };
    raw.publish_raw(openmatch_gossip_sidecar::encode_envelope(Body::PeerStatus(status))).await;
    let v2 = GossipEnvelope {
        version: 2,
        body: Some(Body::Orders(OrderGossip { orders: vec![raw.order(1)] })),
        origin_signature: vec![0; 64],
    };
    raw.publish_raw(v2.encode_to_vec()).await;
    raw.publish(vec![Order { market: ETH.into(), ..raw.order(2) }]).await;
    raw.publish(vec![]).await;
    raw.publish(vec![Order { quantity_lots: 0, ..raw.order(3) }]).await;
    let unsigned = Body::Orders(OrderGossip { orders: vec![raw.order(4)] });
    raw.publish_raw(openmatch_gossip_sidecar::encode_envelope(unsigned)).await;

    let want = [("wrong_topic", 1), ("version", 1), ("invalid", 3), ("malformed", 1)];
    let seen = || want.map(|(r, _)| (r, metric::rejected(&node, BTC, r)));
    wait_until(WAIT, "each bad body rejected with its reason", || seen() == want, || format!("{:?}", seen())).await;
    expect_no_orders(&mut events, Duration::from_millis(200)).await;
    node.shutdown().await;
}

/// A message beyond GossipSub's transmit size (cap + slack) never reaches validation: the
/// codec refuses it on its length prefix, uncounted, and other peers' traffic is unaffected.
/// (The refused stream is left undrained, so the sender's later messages on that connection
/// stall behind it: libp2p GossipSub/Yamux behaviour, deliberately not asserted here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_transmit_size_never_reaches_validation() {
    let dir = tempfile::tempdir().unwrap();
    let (nodes, raw) = victim_honest_and_raw(dir.path()).await;
    let (victim, honest) = (&nodes[0], &nodes[1]);
    let mut events = victim.subscribe().await;

    let slack = openmatch_gossip_sidecar::node::TRANSMIT_SLACK_BYTES;
    raw.publish(vec![Order { freeze_proof: vec![1; CAP + slack + 1024], ..raw.order(0) }]).await;
    honest.client().await.submit_order(SubmitOrderRequest { order: Some(order(BTC, 1)) }).await.unwrap();
    let got = collect_orders(&mut events, 1, WAIT).await;
    assert_eq!((got[0].id, got[0].origin.clone()), (1, honest.peer_id().to_bytes().into()));
    expect_no_orders(&mut events, Duration::from_millis(200)).await;
    assert_eq!(metric::received(victim, BTC), 1, "only the honest message was validated");
    assert_eq!(metric::rejected(victim, BTC, "oversized"), 0);
    assert!(victim.status().await.connected_peers.contains(&raw.peer_id.to_string()));
    shutdown_all(nodes).await;
}

/// A peer flooding repair requests (unsolicited: it is no member and repairs nothing) is
/// served its burst, then refused unserved with a reason, counted; another peer's requests
/// are still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_flooding_repair_requests_is_refused_past_its_bucket() {
    use openmatch_gossip_sidecar::metrics::ReasonLabel;
    use openmatch_gossip_sidecar::proto::{BatchId, RepairRequest, repair_refused, repair_request, repair_response};
    const BURST: usize = 512;
    const PER_S: f64 = 64.0;
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path(), "node", &[BTC], vec![], |_| {}).await;
    let digests =
        || RepairRequest { kind: Some(repair_request::Kind::Digests(BatchId { market: BTC.into(), epoch: 1 })) };
    let rate_limited = |r: &Result<openmatch_gossip_sidecar::proto::RepairResponse, String>| matches!(r, Ok(openmatch_gossip_sidecar::proto::RepairResponse { kind: Some(repair_response::Kind::Refused(refused)) }) if refused.reason() == repair_refused::Reason::RateLimited);

    let mut flooder = RepairClient::connect(&node).await;
    let started = std::time::Instant::now();
    let (mut served, mut refused) = (0, 0);
    // Waves of 8: as many as a member keeps outstanding to one peer (a node serves 16).
    for _ in 0..100 {
        for answer in flooder.ask(&node, (0..8).map(|_| digests()).collect()).await {
            assert!(answer.is_ok(), "{answer:?}");
            if rate_limited(&answer) { refused += 1 } else { served += 1 }
        }
    }
    let refill = (started.elapsed().as_secs_f64() * PER_S).ceil() as usize;
    assert!((BURST..=BURST + refill).contains(&served), "{served} served; burst {BURST}, refill {refill}");
    assert_eq!(served + refused, 800);
    let counted = node.metrics.repair_requests_refused.get_or_create(&ReasonLabel { reason: "rate_limited" }).get();
    assert_eq!(counted, refused as u64);

    let mut polite = RepairClient::connect(&node).await;
    let answers = polite.ask(&node, (0..10).map(|_| digests()).collect()).await;
    assert!(answers.iter().all(|a| a.is_ok() && !rate_limited(a)), "{answers:?}");
    node.shutdown().await;
}

/// A peer that opens 48 repair streams at once and never finishes a request gets 16 of
/// them read (each until the node's 10 s stream deadline) and the other 32 reset unread,
/// each counted; another peer is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_holding_many_repair_streams_open_gets_only_its_bound() {
    use openmatch_gossip_sidecar::fuzzing::MAX_INBOUND_STREAMS_PER_PEER as BOUND;
    use openmatch_gossip_sidecar::metrics::ReasonLabel;
    use openmatch_gossip_sidecar::proto::{BatchId, RepairRequest, repair_request, repair_response};
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path(), "node", &[BTC], vec![], |_| {}).await;
    let refused =
        |reason: &'static str| node.metrics.repair_requests_refused.get_or_create(&ReasonLabel { reason }).get();

    let holder = hold_repair_streams(&node, 3 * BOUND).await;
    wait_until(
        WAIT,
        "the streams past the bound refused",
        || refused("concurrent_streams") >= 2 * BOUND as u64,
        || format!("{} refused", refused("concurrent_streams")),
    )
    .await;

    let mut polite = RepairClient::connect(&node).await;
    let digests = RepairRequest { kind: Some(repair_request::Kind::Digests(BatchId { market: BTC.into(), epoch: 1 })) };
    let answers = polite.ask(&node, vec![digests; 8]).await;
    assert!(
        // Served: an abstention, as epoch 1 is far below this node's floor.
        answers
            .iter()
            .all(|a| matches!(a, Ok(r) if matches!(&r.kind, Some(repair_response::Kind::Digests(d)) if d.abstain))),
        "{answers:?}"
    );

    // The 16 held streams are given up on at their deadline, each counted; no more are
    // refused than the 32 past the bound.
    wait_until(
        Duration::from_secs(30),
        "the held streams timed out",
        || refused("timeout") >= BOUND as u64,
        || format!("{} timed out", refused("timeout")),
    )
    .await;
    assert_eq!(refused("concurrent_streams"), 2 * BOUND as u64);
    assert_eq!(refused("timeout"), BOUND as u64);
    holder.abort();
    node.shutdown().await;
}
