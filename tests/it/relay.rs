//! The benchmark's stack floor (`openmatch-gossip relay`): two relays on the memory
//! transport carry an engine's orders to the other engine over the same socket API, with
//! origin and market restored and nothing else changed; the consensus calls answer
//! UNIMPLEMENTED; a stopped relay removes its socket.

use openmatch_gossip_crds::SidecarConfig;
use openmatch_gossip_sidecar::config::NodeSettings;
use openmatch_gossip_sidecar::proto::{BatchId, GetBatchRequest, GetStatusRequest, SubmitOrdersRequest};
use openmatch_gossip_sidecar::tools::relay::{self, RelayTally};
use openmatch_gossip_tests::*;
use tokio_util::sync::CancellationToken;

struct Relay {
    settings: NodeSettings,
    peer: libp2p::PeerId,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<RelayTally>>,
}

/// Relays `r0`, `r1` in `dir`, each bootstrapping from the other.
fn start_relays(dir: &std::path::Path) -> Vec<Relay> {
    init_tracing();
    let plan: Vec<_> = (0..2)
        .map(|i| {
            let key_path = dir.join(format!("r{i}.key"));
            let key = sidecar::identity::load_or_create(&key_path).unwrap();
            (key_path, key, memory_addr())
        })
        .collect();
    plan.iter()
        .enumerate()
        .map(|(i, (key_path, key, listen))| {
            let (_, other, other_addr) = &plan[1 - i];
            let mut config =
                SidecarConfig { network: NETWORK.into(), markets: vec![BTC.into(), ETH.into()], ..Default::default() };
            config.p2p.listen_addrs = vec![listen.to_string()];
            config.p2p.bootstrap_peers = vec![format!("{other_addr}/p2p/{}", other.public().to_peer_id())];
            let settings = NodeSettings::new(
                config,
                dir.join(format!("r{i}.sock")),
                key_path.clone(),
                "127.0.0.1:0".parse().unwrap(),
            )
            .unwrap();
            let stop = CancellationToken::new();
            let task = tokio::spawn(relay::run(settings.clone(), key.clone(), stop.clone().cancelled_owned()));
            Relay { settings, peer: key.public().to_peer_id(), stop, task }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_carries_orders_between_engines_and_has_no_consensus() {
    let dir = tempfile::tempdir().unwrap();
    let relays = start_relays(dir.path());
    let mut a = wait_for(WAIT, "relay r0's socket", async || {
        sidecar::api::connect(&relays[0].settings.socket).await.map_err(|e| format!("{e:#}"))
    })
    .await;
    let mut b = wait_for(WAIT, "relay r1's socket", async || {
        sidecar::api::connect(&relays[1].settings.socket).await.map_err(|e| format!("{e:#}"))
    })
    .await;
    for (client, other) in [(&mut a, relays[1].peer), (&mut b, relays[0].peer)] {
        wait_for(WAIT, "the other relay in the mesh of both orders topics", async || {
            let st = client.get_status(GetStatusRequest {}).await.map_err(|s| s.to_string())?.into_inner();
            let full = st.topics.len() == 2
                && st.topics.iter().all(|t| t.subscribed_peers == 1 && t.mesh_peers.contains(&other.to_string()));
            if full { Ok(()) } else { Err(format!("{:?}", st.topics)) }
        })
        .await;
    }
    let mut events = b
        .subscribe(openmatch_gossip_sidecar::proto::SubscribeRequest { markets: vec![], resume_after: None })
        .await
        .unwrap()
        .into_inner();

    let sent = vec![order(BTC, 1), order(ETH, 2), order(BTC, 3)];
    let chunks = vec![SubmitOrdersRequest { orders: sent.clone() }];
    assert_eq!(a.submit_orders(tokio_stream::iter(chunks)).await.unwrap().into_inner().accepted, 3);
    let mut got = collect_orders(&mut events, 3, WAIT).await;
    got.sort_by_key(|o| o.id);
    for (g, s) in got.iter().zip(&sent) {
        let want = openmatch_gossip_sidecar::proto::Order { origin: relays[0].peer.to_bytes().into(), ..s.clone() };
        assert_eq!(g, &want, "fields intact, origin = the author relay");
    }

    let err = a
        .get_batch(GetBatchRequest { batch_id: Some(BatchId { market: BTC.into(), epoch: 1 }) })
        .await
        .expect_err("no batches on a relay");
    assert_eq!(err.code(), tonic::Code::Unimplemented, "{err}");

    let mut tallies = Vec::new();
    for r in relays {
        r.stop.cancel();
        tallies.push(r.task.await.unwrap().unwrap());
        assert!(!r.settings.socket.exists(), "socket removed on stop");
    }
    // r0 published one message per market of the chunk; r1 delivered all three orders.
    assert_eq!((tallies[0].published, tallies[0].failed_publishes), (2, 0), "{tallies:?}");
    assert_eq!(tallies[1].delivered, 3, "{tallies:?}");
}
