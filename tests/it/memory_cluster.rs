//! Three sidecars in one process over the memory transport, each with an engine replaying
//! its shard of the first seconds of the bundled Binance recordings through the real socket
//! API: every engine receives exactly the other shards' orders, once each, unchanged.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use openmatch_gossip_sidecar::proto::{Order, SubmitOrdersRequest};
use openmatch_gossip_sidecar::tools::engine::{Workload, load_workload};
use openmatch_gossip_tests::*;
use tokio::sync::Barrier;

const NODES: usize = 3;
/// Seconds of the recording replayed.
const REPLAY_SECS: f64 = 20.0;
/// Orders per submitted chunk.
const CHUNK: usize = 512;
/// Deadline for an engine to receive all of its peers' orders.
const RECEIVE_DEADLINE: Duration = Duration::from_secs(20);

/// An order's content as its engine set it (everything but what the sidecar stamps).
type Content = (u64, String, i32, u64, u64, i32, u64, Vec<u8>);

fn content(o: &Order) -> Content {
    (o.id, o.market.clone(), o.side, o.price_ticks, o.quantity_lots, o.kind, o.client_ts_ns, o.freeze_proof.clone())
}

fn sorted_contents<'a>(orders: impl Iterator<Item = &'a Order>) -> Vec<Content> {
    let mut v: Vec<Content> = orders.map(content).collect();
    v.sort();
    v
}

/// One engine: subscribes, waits for the others, submits its shard in chunks over one
/// `SubmitOrders` stream while collecting what its peers send. Returns what it received.
async fn engine(node_socket: std::path::PathBuf, shard: Arc<Workload>, ready: Arc<Barrier>) -> Vec<Order> {
    let client = connect(&node_socket).await;
    let mut events = client
        .clone()
        .subscribe(openmatch_gossip_sidecar::proto::SubscribeRequest { markets: vec![], resume_after: None })
        .await
        .expect("Subscribe")
        .into_inner();
    ready.wait().await;
    let orders: Vec<Order> = shard.events.iter().flat_map(|(_, o)| o.iter().cloned()).collect();
    let sent = orders.len() as u64;
    let mut submitter = client.clone();
    let submit = tokio::spawn(async move {
        let chunks: Vec<SubmitOrdersRequest> =
            orders.chunks(CHUNK).map(|c| SubmitOrdersRequest { orders: c.to_vec() }).collect();
        submitter.submit_orders(tokio_stream::iter(chunks)).await.expect("SubmitOrders").into_inner().accepted
    });
    let received = collect_orders(&mut events, shard.expected_from_peers as usize, RECEIVE_DEADLINE).await;
    assert_eq!(submit.await.expect("submit task"), sent, "the sidecar accepted every order");
    expect_no_orders(&mut events, Duration::from_millis(300)).await;
    received
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_engines_replay_real_data() {
    let t0 = Instant::now();
    let loading: futures::stream::FuturesOrdered<_> = (0..NODES)
        .map(|i| tokio::task::spawn_blocking(move || load_workload(None, 0.0, Some(REPLAY_SECS), i, NODES)))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_cluster(dir.path(), NODES, &[BTC, ETH], |_| {}).await;
    let shards: Vec<Arc<Workload>> =
        loading.map(|r| Arc::new(r.expect("loader panicked").expect("bundled data loads"))).collect().await;
    let total: u64 = shards.iter().map(|w| w.orders).sum();
    assert!(total > 10_000, "{total} orders in {REPLAY_SECS} s");
    for w in &shards {
        assert_eq!(w.expected_from_peers, total - w.orders);
    }
    let loaded = t0.elapsed();
    wait_for_mesh(&nodes, WAIT).await;

    let t1 = Instant::now();
    let first_epoch = current_epoch();
    let ready = Arc::new(Barrier::new(NODES));
    let engines: Vec<_> = nodes
        .iter()
        .zip(&shards)
        .map(|(n, w)| tokio::spawn(engine(n.socket.clone(), w.clone(), ready.clone())))
        .collect();
    let mut received = Vec::new();
    for e in engines {
        received.push(e.await.expect("engine task"));
    }
    eprintln!("{total} orders: loaded in {loaded:?}, replayed and received in {:?}", t1.elapsed());

    let origin_of: HashMap<Vec<u8>, usize> =
        nodes.iter().enumerate().map(|(i, n)| (n.peer_id().to_bytes(), i)).collect();
    for (me, got) in received.iter().enumerate() {
        assert_eq!(got.len() as u64, shards[me].expected_from_peers);
        distinct_identities(got);
        let mut by_origin: HashMap<usize, Vec<&Order>> = HashMap::new();
        for o in got {
            let from = *origin_of
                .get(o.origin.as_ref())
                .unwrap_or_else(|| panic!("unknown origin {}", origin_name(&o.origin)));
            assert_ne!(from, me, "engine {me} received its own order {}", o.id);
            assert!(o.epoch >= first_epoch, "epoch {} before the replay started", o.epoch);
            by_origin.entry(from).or_default().push(o);
        }
        for (from, shard) in shards.iter().enumerate().filter(|(i, _)| *i != me) {
            let want = sorted_contents(shard.events.iter().flat_map(|(_, o)| o.iter()));
            let have = sorted_contents(by_origin.get(&from).into_iter().flatten().copied());
            assert_eq!(have.len(), want.len(), "engine {me} from engine {from}: order count");
            assert!(have == want, "engine {me} from engine {from}: contents differ");
        }
    }
    shutdown_all(nodes).await;
}
