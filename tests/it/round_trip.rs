//! Two nodes: engine A's orders (one by `SubmitOrder`, more by the `SubmitOrders` stream)
//! reach engine B through gossip with every field intact; A does not get its own orders
//! back; the receipt digest is the order digest of what B received.

use openmatch_gossip_sidecar::proto::{Order, SubmitOrderRequest, SubmitOrdersRequest};
use openmatch_gossip_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_cross_intact_and_not_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_cluster(dir.path(), 2, &[BTC, ETH], |_| {}).await;
    wait_for_mesh(&nodes, WAIT).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut a_events = a.subscribe().await;
    let mut b_events = b.subscribe().await;
    let mut engine_a = a.client().await;

    // One order by SubmitOrder, with a freeze proof so that every field is exercised.
    let single = Order { freeze_proof: vec![1, 2, 3, 4], ..order(BTC, 7) };
    let receipt = engine_a
        .submit_order(SubmitOrderRequest { order: Some(single.clone()) })
        .await
        .expect("SubmitOrder")
        .into_inner();
    assert_eq!(receipt.digest.len(), 32);
    // Clock sealing (default, 1 s epochs): the order joins the epoch of its submission.
    let epoch_now = openmatch_gossip_sidecar::unix_now_ns() / 1_000_000_000;
    assert!(receipt.epoch + 1 >= epoch_now && receipt.epoch <= epoch_now, "epoch {} at {epoch_now}", receipt.epoch);

    // Three more by the stream, in two chunks and two markets.
    let streamed = vec![order(BTC, 8), order(ETH, 9), Order { kind: 2, price_ticks: 0, ..order(BTC, 10) }];
    let chunks = vec![
        SubmitOrdersRequest { orders: streamed[..1].to_vec() },
        SubmitOrdersRequest { orders: streamed[1..].to_vec() },
    ];
    let accepted = engine_a.submit_orders(tokio_stream::iter(chunks)).await.expect("SubmitOrders").into_inner();
    assert_eq!(accepted.accepted, 3);

    let mut received = collect_orders(&mut b_events, 4, WAIT).await;
    received.sort_by_key(|o| o.id);
    let sent: Vec<Order> = std::iter::once(single).chain(streamed).collect();
    let a_origin = a.peer_id().to_bytes();
    for (got, want) in received.iter().zip(&sent) {
        // The sidecar fills in origin and epoch; everything else, submitted_at_ns
        // included, is the engine's.
        assert!(got.epoch >= receipt.epoch && got.epoch <= receipt.epoch + 1, "epoch {}", got.epoch);
        let expected = Order { origin: a_origin.clone().into(), epoch: got.epoch, ..want.clone() };
        assert_eq!(got, &expected);
    }
    assert_eq!(
        receipt.digest,
        openmatch_gossip_sidecar::order_digest(&received[0]).to_vec(),
        "receipt digest = digest of the gossiped order"
    );

    // B answers; A's first order event is B's order, so A never saw its own.
    let mut engine_b = b.client().await;
    engine_b.submit_order(SubmitOrderRequest { order: Some(order(ETH, 1)) }).await.expect("SubmitOrder on B");
    let back = collect_orders(&mut a_events, 1, WAIT).await;
    assert_eq!(back[0].origin, b.peer_id().to_bytes(), "A received its own order: {:?}", back[0]);
    assert_eq!(back[0].id, 1);
    // And B does not get its own order either.
    expect_no_orders(&mut b_events, std::time::Duration::from_millis(300)).await;

    shutdown_all(nodes).await;
}

/// `orders_delivered` counts what reached an engine: an order that arrives while nobody is
/// subscribed is received and validated but not counted as delivered; once an engine
/// subscribes, the next order is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_nobody_listens_for_are_not_counted_as_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_cluster(dir.path(), 2, &[BTC], |_| {}).await;
    wait_for_mesh(&nodes, WAIT).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut engine_a = a.client().await;
    engine_a.submit_order(SubmitOrderRequest { order: Some(order(BTC, 1)) }).await.expect("SubmitOrder");
    wait_until(WAIT, "B received the order", || metric::received(b, BTC) == 1, || "not yet".into()).await;
    assert_eq!(metric::delivered(b, BTC), 0, "no engine was subscribed at B");
    let mut b_events = b.subscribe().await;
    engine_a.submit_order(SubmitOrderRequest { order: Some(order(BTC, 2)) }).await.expect("SubmitOrder");
    assert_eq!(ids(&collect_orders(&mut b_events, 1, WAIT).await), vec![2]);
    assert_eq!(metric::delivered(b, BTC), 1);
    shutdown_all(nodes).await;
}
