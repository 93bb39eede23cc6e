//! The per-peer inbound token bucket: a peer flooding above its rate has the excess
//! ignored and counted; another peer under the rate is unaffected.

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
