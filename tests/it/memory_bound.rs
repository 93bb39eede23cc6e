//! One memory bound per node (`--queue-memory-bytes`): engines that stop reading their
//! subscriptions are cut, furthest behind first, with RESOURCE_EXHAUSTED and counted, their
//! queues freed; an engine that keeps reading gets every order; a flooding engine is
//! pushed back by its outbox's share instead of growing it.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use openmatch_gossip_sidecar::config::NodeSettings;
use openmatch_gossip_sidecar::metrics::{QueueLabel, ReasonLabel};
use openmatch_gossip_sidecar::proto::SubmitOrdersRequest;
use openmatch_gossip_tests::*;

/// The bound under test: 2 MiB, 1 MiB for each queue (the smallest allowed with 512 KiB
/// messages).
const BOUND: usize = 2 << 20;
const ORDERS: u64 = 60_000;
const STALLED: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_subscribers_are_cut_and_a_reader_and_the_flood_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // Paced at 200 messages of 64 orders per second (~12,800 orders/s, ~5 s for the
    // flood): a reader in this busy test process keeps up; the stalled ones fall behind.
    // A full outbox share (~10,000 orders) takes ~0.8 s to go out: 2 s epochs with 1 s of
    // grace keep those orders from arriving late.
    let small = |c: &mut openmatch_gossip_crds::SidecarConfig| {
        c.consensus.epoch_ms = 2_000;
        c.consensus.grace_ms = 1_000;
        c.limits.max_message_bytes = 512 << 10;
        c.limits.rate_limit.messages_per_second = 200;
        c.limits.rate_limit.burst = 400;
        c.publish.max_orders_per_message = 64;
    };
    let bounded = |s: NodeSettings| NodeSettings { queue_memory_bytes: BOUND, ..s };
    let b = start_node_with_settings(dir.path(), "b", &[BTC], vec![], small, bounded).await;
    let a = start_node_with_settings(dir.path(), "a", &[BTC], vec![b.bootstrap_addr()], small, bounded).await;
    wait_for_mesh([&a, &b], WAIT).await;

    let mut reader = b.subscribe().await;
    // Subscriptions whose engines never read: each absorbs its HTTP/2 window (2 MiB), then
    // its events queue up in the sidecar.
    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        stalled.push(b.subscribe().await);
    }
    // ~100 bytes per order: ~6 MB through a's outbox share of 1 MiB, ~6 MB to each of
    // b's subscribers.
    let chunks: Vec<_> = (0..ORDERS)
        .collect::<Vec<_>>()
        .chunks(500)
        .map(|ids| SubmitOrdersRequest { orders: ids.iter().map(|&i| order(BTC, i)).collect() })
        .collect();
    let mut client = a.client().await;
    let flood = tokio::spawn(async move { client.submit_orders(tokio_stream::iter(chunks)).await });
    // The largest outbox a's metrics showed while the flood went out, sampled every 1 ms.
    let outbox = a.metrics.queue_memory.get_or_create(&QueueLabel { queue: "outbox" }).clone();
    let done = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn({
        let done = done.clone();
        async move {
            let mut most = 0;
            while !done.load(Ordering::Relaxed) {
                most = most.max(outbox.get());
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            most
        }
    });

    let got = collect_orders(&mut reader, ORDERS as usize, WAIT * 6).await;
    assert_eq!(distinct_identities(&got).len() as u64, ORDERS, "the reader got every order once");
    assert_eq!(flood.await.unwrap().expect("SubmitOrders").into_inner().accepted, ORDERS);
    done.store(true, Ordering::Relaxed);
    let most = sampler.await.unwrap() as usize;
    assert!(most > 0 && most <= BOUND / 2, "a's outbox held up to {most} bytes; its share is {}", BOUND / 2);

    let cut = b.metrics.subscribers_dropped.get_or_create(&ReasonLabel { reason: "memory_bound" }).get();
    assert_eq!(cut, STALLED as u64, "every stalled subscriber was cut, the reader was not");
    assert_eq!(b.metrics.subscribers_dropped.get_or_create(&ReasonLabel { reason: "backlog" }).get(), 0);
    let queued = b.metrics.queue_memory.get_or_create(&QueueLabel { queue: "subscribers" }).get();
    assert!(queued as usize <= BOUND / 2, "{queued} bytes queued for subscribers");
    assert_eq!(b.metrics.queue_memory_bound.get() as usize, BOUND);
    // Each stalled engine, reading at last, gets what its window held, then the reason.
    for (i, mut s) in stalled.into_iter().enumerate() {
        let mut seen = HashSet::new();
        let status = loop {
            match s.message().await {
                Ok(Some(ev)) => {
                    if let Some(openmatch_gossip_sidecar::proto::event::Kind::Orders(o)) = ev.kind {
                        seen.extend(o.orders.iter().map(|o| o.id));
                    }
                }
                Ok(None) => panic!("stalled subscriber {i} ended without a status"),
                Err(status) => break status,
            }
        };
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{i}: {status}");
        assert!(status.message().contains("furthest behind"), "{i}: {}", status.message());
        assert!((seen.len() as u64) < ORDERS, "{i} was cut before the end of the flood");
    }
    shutdown_all(vec![a, b]).await;
}
