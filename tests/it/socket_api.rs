//! The engine socket API under bad input: every malformed request gets the documented
//! gRPC status (and is counted), while a well-behaved client on the same socket keeps
//! submitting and its orders keep reaching the peer.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf as _, BufMut as _};
use openmatch_gossip_sidecar::proto::{Order, SubmitOrderRequest, SubmitOrderResponse, SubmitOrdersRequest};
use openmatch_gossip_tests::*;
use prost::Message as _;
use tokio::sync::watch;
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;

/// Request cap of the node under test (small, to keep oversized requests small).
const MAX_MESSAGE_BYTES: u32 = 64 * 1024;
const SUBMIT_ORDER: &str = "Sidecar/SubmitOrder";
const SUBMIT_ORDERS: &str = "Sidecar/SubmitOrders";

/// A gRPC codec that sends and receives message bodies as raw bytes, so a test can put
/// anything on the wire.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// Calls `SubmitOrder` with `body` as the request message bytes.
async fn raw_submit_order(node: &TestNode, body: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
    let channel = openmatch_gossip_sidecar::api::channel(&node.socket).await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = PathAndQuery::from_static("/openmatch.gossip.v1.Sidecar/SubmitOrder");
    grpc.unary(tonic::Request::new(body), path, RawCodec).await.map(tonic::Response::into_inner)
}

#[track_caller]
fn assert_status<T: std::fmt::Debug>(res: Result<T, tonic::Status>, code: Code, needles: &[&str]) {
    let status = res.expect_err("the request should fail");
    assert_eq!(status.code(), code, "{status:?}");
    for n in needles {
        assert!(status.message().contains(n), "{:?} does not mention {n:?}", status.message());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_right_status_and_do_not_disturb_others() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_cluster(dir.path(), 2, &[BTC], |c| c.limits.max_message_bytes = MAX_MESSAGE_BYTES).await;
    wait_for_mesh(&nodes, WAIT).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut peer_events = b.subscribe().await;

    // The well-behaved engine: its own connection, an order every 5 ms until told to stop.
    let (stop_tx, mut stop) = watch::channel(false);
    let done = Arc::new(AtomicU64::new(0));
    let mut good = a.client().await;
    let counter = done.clone();
    let well_behaved = tokio::spawn(async move {
        let mut ids = Vec::new();
        for id in 1_000_000.. {
            good.submit_order(SubmitOrderRequest { order: Some(order(BTC, id)) })
                .await
                .expect("well-behaved SubmitOrder");
            ids.push(id);
            counter.fetch_add(1, Ordering::Relaxed);
            tokio::select! {
                _ = stop.changed() => break,
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        }
        ids
    });
    // After each bad case: the well-behaved client has been served since.
    let progressed = async || {
        let before = done.load(Ordering::Relaxed);
        let now = || done.load(Ordering::Relaxed);
        wait_until(WAIT, "the well-behaved client to be served", || now() > before, || format!("{} calls", now())).await
    };

    let mut bad = a.client().await;
    let submit = |o: Order| SubmitOrderRequest { order: Some(o) };

    // Unary SubmitOrder.
    assert_status(bad.submit_order(submit(order("DOGE-USDT", 1))).await, Code::FailedPrecondition, &["DOGE-USDT"]);
    progressed().await;
    let zero_qty = Order { quantity_lots: 0, ..order(BTC, 2) };
    assert_status(bad.submit_order(submit(zero_qty)).await, Code::InvalidArgument, &["quantity_lots"]);
    progressed().await;
    let with_origin = Order { origin: b.peer_id().to_bytes().into(), ..order(BTC, 3) };
    assert_status(bad.submit_order(submit(with_origin)).await, Code::InvalidArgument, &["origin"]);
    progressed().await;
    let with_epoch = Order { epoch: 5, ..order(BTC, 4) };
    assert_status(bad.submit_order(submit(with_epoch)).await, Code::InvalidArgument, &["epoch"]);
    progressed().await;
    assert_status(bad.submit_order(SubmitOrderRequest { order: None }).await, Code::InvalidArgument, &["order"]);
    progressed().await;
    let huge = Order { freeze_proof: vec![7; MAX_MESSAGE_BYTES as usize + 1024], ..order(BTC, 5) };
    assert_status(bad.submit_order(submit(huge.clone())).await, Code::ResourceExhausted, &["65536"]);
    progressed().await;

    // Garbage bytes where a SubmitOrderRequest belongs. First prove the raw path itself
    // works with a well-formed request.
    let ok = raw_submit_order(a, submit(order(BTC, 100)).encode_to_vec()).await.expect("raw well-formed request");
    assert_eq!(SubmitOrderResponse::decode(ok.as_slice()).unwrap().digest.len(), 32);
    assert_status(raw_submit_order(a, vec![0x0f, 0xff, 0xff, 0xff]).await, Code::InvalidArgument, &[]);
    progressed().await;

    // A stream whose third order is bad: the first two stand.
    let chunks = vec![
        SubmitOrdersRequest { orders: vec![order(BTC, 101)] },
        SubmitOrdersRequest {
            orders: vec![order(BTC, 102), Order { quantity_lots: 0, ..order(BTC, 103) }, order(BTC, 104)],
        },
    ];
    assert_status(
        bad.submit_orders(tokio_stream::iter(chunks)).await,
        Code::InvalidArgument,
        &["order #2", "quantity_lots", "2 orders accepted"],
    );
    progressed().await;
    // A stream whose second chunk is above the request cap: the first chunk stands.
    let chunks =
        vec![SubmitOrdersRequest { orders: vec![order(BTC, 105)] }, SubmitOrdersRequest { orders: vec![huge] }];
    assert_status(bad.submit_orders(tokio_stream::iter(chunks)).await, Code::ResourceExhausted, &["1 orders accepted"]);
    progressed().await;

    // The bad client's own connection still works.
    bad.submit_order(submit(order(BTC, 106))).await.expect("a good request after bad ones");

    // Health: the standard service reports SERVING, overall and for the Sidecar service.
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
    let mut health = HealthClient::new(openmatch_gossip_sidecar::api::channel(&a.socket).await.unwrap());
    for service in ["", "openmatch.gossip.v1.Sidecar"] {
        let r = health.check(HealthCheckRequest { service: service.into() }).await.expect("Health/Check").into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "{service:?}");
    }

    // Everything accepted reaches the peer, exactly once, and nothing else does.
    stop_tx.send(true).unwrap();
    let good_ids = well_behaved.await.expect("the well-behaved client never failed");
    let mut expected: BTreeSet<u64> = good_ids.iter().copied().collect();
    expected.extend([100, 101, 102, 105, 106]);
    let got = collect_orders(&mut peer_events, expected.len(), WAIT).await;
    assert_eq!(got.iter().map(|o| o.id).collect::<BTreeSet<_>>(), expected);
    assert!(got.iter().all(|o| o.origin == a.peer_id().to_bytes()));
    expect_no_orders(&mut peer_events, Duration::from_millis(200)).await;

    // Every call counted by method and final status.
    let ok_unary = good_ids.len() as u64 + 2; // well-behaved + raw well-formed + 106
    let want = [
        (SUBMIT_ORDER, Code::Ok, ok_unary),
        (SUBMIT_ORDER, Code::FailedPrecondition, 1),
        (SUBMIT_ORDER, Code::InvalidArgument, 5), // quantity, origin, epoch, no order, garbage
        (SUBMIT_ORDER, Code::ResourceExhausted, 1),
        (SUBMIT_ORDERS, Code::InvalidArgument, 1),
        (SUBMIT_ORDERS, Code::ResourceExhausted, 1),
        ("Health/Check", Code::Ok, 2),
        (SUBMIT_ORDER, Code::Internal, 0),
        (SUBMIT_ORDER, Code::OutOfRange, 0),
    ];
    for (method, code, n) in want {
        assert_eq!(metric::api(a, method, code), n, "api_requests{{method={method}, code={code:?}}}");
    }

    shutdown_all(nodes).await;
}

/// `(origin, id)` names one order: an order resubmitted unchanged (a unary call or inside a
/// stream) is accepted with its first receipt and reaches the peer once; an id reused for
/// different content is refused with ALREADY_EXISTS naming it, and in a stream the orders
/// before it stand while it and the rest do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubmission_is_idempotent_and_a_reused_id_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_cluster(dir.path(), 2, &[BTC], |_| {}).await;
    wait_for_mesh(&nodes, WAIT).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut peer_events = b.subscribe().await;
    let mut client = a.client().await;
    let submit = |o: Order| SubmitOrderRequest { order: Some(o) };

    let first = client.submit_order(submit(order(BTC, 1))).await.expect("first submission").into_inner();
    let again = client.submit_order(submit(order(BTC, 1))).await.expect("identical resubmission").into_inner();
    assert_eq!(again, first, "the first instance's digest and epoch");
    let changed = Order { price_ticks: 1, ..order(BTC, 1) };
    assert_status(client.submit_order(submit(changed)).await, Code::AlreadyExists, &["id 1 ", "different order"]);

    let stream = vec![SubmitOrdersRequest { orders: vec![order(BTC, 2), order(BTC, 1), order(BTC, 3)] }];
    let accepted = client.submit_orders(tokio_stream::iter(stream)).await.expect("stream with a resubmission");
    assert_eq!(accepted.into_inner().accepted, 3);
    let stream = vec![
        SubmitOrdersRequest { orders: vec![order(BTC, 4)] },
        SubmitOrdersRequest { orders: vec![order(BTC, 5), Order { quantity_lots: 9, ..order(BTC, 2) }, order(BTC, 6)] },
    ];
    assert_status(
        client.submit_orders(tokio_stream::iter(stream)).await,
        Code::AlreadyExists,
        &["order #2", "id 2 ", "2 orders accepted"],
    );

    let got = collect_orders(&mut peer_events, 5, WAIT).await;
    assert_eq!(got.iter().map(|o| o.id).collect::<BTreeSet<_>>(), BTreeSet::from([1, 2, 3, 4, 5]));
    distinct_identities(&got);
    expect_no_orders(&mut peer_events, Duration::from_millis(200)).await;
    assert_eq!(metric::api(a, SUBMIT_ORDER, Code::AlreadyExists), 1);
    assert_eq!(metric::api(a, SUBMIT_ORDERS, Code::AlreadyExists), 1);
    shutdown_all(nodes).await;
}
