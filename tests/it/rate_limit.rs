//! The per-peer inbound token buckets: a peer flooding above its rate has the excess
//! ignored and counted; another peer under the rate is unaffected; and honest nodes under
//! an order flood never trip each other's buckets.

use std::collections::HashSet;
use std::time::Duration;

use openmatch_gossip_tests::*;

const RATE: u32 = 5;
const BURST: u32 = 10;
const FLOOD: u64 = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flooding_peer_is_limited_other_peer_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path(), "node", &[BTC], vec![], |c| {
        c.limits.rate_limit.messages_per_second = RATE;
        c.limits.rate_limit.burst = BURST;
    })
    .await;
    let (flooder, polite) = (RawPeer::spawn(BTC), RawPeer::spawn(BTC));
    flooder.join(&node).await;
    polite.join(&node).await;
    let mut events = node.subscribe().await;

    // 60 one-order messages back to back; distinct ids, so only the limiter can drop any.
    for id in 0..FLOOD {
        flooder.publish(vec![flooder.order(id)]).await;
    }
    let accounted = || metric::delivered(&node, BTC) + metric::rate_limited(&node, BTC);
    wait_until(
        WAIT,
        "every flooded message delivered or rate limited",
        || metric::received(&node, BTC) == FLOOD && accounted() == FLOOD,
        || {
            format!(
                "received {}, delivered {}, rate limited {}",
                metric::received(&node, BTC),
                metric::delivered(&node, BTC),
                metric::rate_limited(&node, BTC)
            )
        },
    )
    .await;
    let limited = metric::rate_limited(&node, BTC);
    let passed = FLOOD - limited;
    // The burst, plus whatever refilled (5/s) while the flood was in flight: at most 2 s
    // worth even on a loaded machine, so at least 40 of the 60 were limited.
    assert!(
        (u64::from(BURST)..=u64::from(BURST + 2 * RATE)).contains(&passed),
        "{passed} of {FLOOD} passed a {RATE}/s, burst {BURST} bucket"
    );
    assert!(limited >= 40, "{limited}");
    let got = collect_orders(&mut events, passed as usize, WAIT).await;
    assert!(got.iter().all(|o| o.origin == flooder.peer_id.to_bytes()));
    assert_eq!(distinct_identities(&got).len() as u64, passed);
    assert_eq!(metric::rejected(&node, BTC, "rate_limited"), 0, "rate limiting is not a rejection");

    // The flooder's bucket is empty; the polite peer has its own and loses nothing.
    for id in 0..u64::from(RATE) {
        polite.publish(vec![polite.order(1000 + id)]).await;
    }
    let got = collect_orders(&mut events, RATE as usize, WAIT).await;
    let ids: HashSet<u64> = got.iter().map(|o| o.id).collect();
    assert_eq!(ids, (1000..1000 + u64::from(RATE)).collect());
    assert!(got.iter().all(|o| o.origin == polite.peer_id.to_bytes()));
    assert_eq!(metric::rate_limited(&node, BTC), limited, "the polite peer was never limited");
    expect_no_orders(&mut events, Duration::from_millis(200)).await;
    node.shutdown().await;
}

/// An engine floods its sidecar in a network whose order bucket is tiny (10 messages/s,
/// burst 20) and whose epochs are short (5 seals/s per node): the sidecar paces its order
/// messages within its peers' order buckets, and seals, results and heartbeats have a
/// bucket of their own sized from the configuration. No node rate-limits another's
/// consensus or control traffic, nobody is penalised or banned, and every flooded order
/// gets its fate. (Before the consensus bucket, seals, heartbeats and order messages
/// shared the 10/s bucket and the flooding node's seals were dropped.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_flood_never_rate_limits_consensus_between_honest_nodes() {
    const ORDERS: u64 = 1_200;
    let dir = tempfile::tempdir().unwrap();
    let tight = |c: &mut openmatch_gossip_crds::SidecarConfig| {
        c.limits.rate_limit.messages_per_second = 10;
        c.limits.rate_limit.burst = 20;
        c.publish.max_orders_per_message = 32; // the flood is ~38 order messages: ~4 s paced
        c.consensus.epoch_ms = 200;
        c.consensus.grace_ms = 50;
    };
    let nodes = start_cluster(dir.path(), 3, &[BTC], tight).await;
    wait_for_mesh(&nodes, WAIT).await;
    let orders: Vec<_> = (0..ORDERS).map(|i| order(BTC, i)).collect();
    let chunks =
        orders.chunks(100).map(|c| openmatch_gossip_sidecar::proto::SubmitOrdersRequest { orders: c.to_vec() });
    let accepted = nodes[0].client().await.submit_orders(tokio_stream::iter(chunks.collect::<Vec<_>>())).await.unwrap();
    assert_eq!(accepted.into_inner().accepted, ORDERS);
    // Paced at 10 messages/s, the flood takes seconds to leave node 0, and most of it
    // reaches the peers after its epoch was sealed: late, those orders are excluded (their
    // engine would resubmit them). What matters here is that consensus runs untouched
    // meanwhile, and that every order gets its fate.
    wait_until(
        WAIT * 2,
        "node 0's outbox drained",
        || nodes[0].metrics.outbox_orders.get() == 0 && metric::batches(&nodes[0], BTC, "sealed") >= 10,
        || {
            let peers: Vec<_> = nodes[1..]
                .iter()
                .map(|n| (metric::delivered(n, BTC), metric::late(n, BTC), metric::rate_limited(n, BTC)))
                .collect();
            format!(
                "outbox {}, seals {}; peers (delivered, late, rate limited): {peers:?}",
                nodes[0].metrics.outbox_orders.get(),
                metric::batches(&nodes[0], BTC, "sealed")
            )
        },
    )
    .await;
    let fates =
        || metric::order_outcomes(&nodes[0], BTC, "committed") + metric::order_outcomes(&nodes[0], BTC, "excluded");
    wait_until(
        WAIT,
        "every flooded order committed or excluded",
        || fates() >= ORDERS,
        || format!("{} fates", fates()),
    )
    .await;
    assert_eq!(fates(), ORDERS, "one fate per order");
    for n in &nodes {
        for (kind, market) in [("batches", BTC), ("results", BTC), ("control", "")] {
            assert_eq!(metric::rate_limited_on(n, kind, market), 0, "{}: {kind} messages rate limited", n.name);
        }
        assert_eq!(metric::penalties(n), 0, "{}: an honest peer was penalised", n.name);
        assert_eq!(metric::banned_peers(n), 0, "{}", n.name);
    }
    shutdown_all(nodes).await;
}
