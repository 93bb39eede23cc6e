//! Hot reload: a live node takes new markets, rate limits and member count from a
//! rewritten config file and keeps its last good configuration when the new file is
//! invalid.

use std::time::Duration;

use openmatch_gossip_crds::SidecarConfig;
use openmatch_gossip_sidecar::config::NodeSettings;
use openmatch_gossip_sidecar::metrics::ResultLabel;
use openmatch_gossip_sidecar::proto::{GetStatusRequest, SubmitOrderRequest};
use openmatch_gossip_tests::*;

fn reloads(n: &TestNode, result: &'static str) -> u64 {
    n.metrics.config_reloads.get_or_create(&ResultLabel { result }).get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn markets_and_rate_limits_reload_and_a_bad_file_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path(), "node", &[BTC], vec![], |_| {}).await;
    let file = dir.path().join("config.yaml");
    let config_with = |markets: &[&str], rate: u32, members: u32| {
        let mut c = SidecarConfig {
            network: NETWORK.into(),
            markets: markets.iter().map(|m| m.to_string()).collect(),
            ..Default::default()
        };
        c.p2p.listen_addrs = vec![node.listen.to_string()];
        c.limits.rate_limit.messages_per_second = rate;
        c.limits.rate_limit.burst = rate;
        c.consensus.members = members;
        c.to_yaml()
    };
    let config = |markets: &[&str], rate: u32| config_with(markets, rate, 0);
    replace_file(&file, config(&[BTC], 2000)).unwrap();
    let (socket, key, path) = (node.socket.clone(), dir.path().join("node.key"), file.clone());
    node.watch_config(
        file.clone(),
        move || {
            let text = std::fs::read_to_string(&path)?;
            NodeSettings::new(SidecarConfig::from_yaml(&text)?, socket.clone(), key.clone(), "127.0.0.1:0".parse()?)
        },
        Duration::from_millis(20),
    );
    let mut client = node.client().await;
    let eth = |id| SubmitOrderRequest { order: Some(order(ETH, id)) };
    let err = client.submit_order(eth(1)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);

    // Add ETH-USDT and tighten the rate limit to 1 message/s, burst 1.
    replace_file(&file, config(&[BTC, ETH], 1)).unwrap();
    wait_until(
        WAIT,
        "the reload applied",
        || reloads(&node, "applied") == 1,
        || format!("applied {}", reloads(&node, "applied")),
    )
    .await;
    client.submit_order(eth(2)).await.expect("ETH-USDT is traded now");
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &node.sidecar.registry).unwrap();
    let eth_series = format!("openmatch_gossip_batches_total{{market=\"{ETH}\",outcome=\"halted\"}} 0");
    assert!(text.lines().any(|l| l == eth_series), "the added market's series, at 0:\n{text}");
    let status = client.get_status(GetStatusRequest {}).await.unwrap().into_inner();
    assert!(
        status.topics.iter().any(|t| t.topic == format!("openmatch/{NETWORK}/orders/{ETH}")),
        "{:?}",
        status.topics
    );
    assert!(status.markets.contains(&ETH.to_string()));

    let raw = RawPeer::spawn(BTC);
    raw.join(&node).await;
    for id in 0..10 {
        raw.publish(vec![raw.order(id)]).await;
    }
    wait_until(
        WAIT,
        "the new limit enforced",
        || metric::received(&node, BTC) == 10 && metric::rate_limited(&node, BTC) >= 8,
        || format!("received {}, limited {}", metric::received(&node, BTC), metric::rate_limited(&node, BTC)),
    )
    .await;

    // consensus.members applies at once (the operator renders it from the selected pods):
    // alone among 3 members, the node is isolated and decides nothing.
    assert_eq!(client.get_status(GetStatusRequest {}).await.unwrap().into_inner().health, "healthy");
    replace_file(&file, config_with(&[BTC, ETH], 1, 3)).unwrap();
    wait_until(
        WAIT,
        "the member count reloaded",
        || reloads(&node, "applied") == 2,
        || format!("applied {}", reloads(&node, "applied")),
    )
    .await;
    wait_for(WAIT, "isolated among 3 members", async || {
        let status = client.clone().get_status(GetStatusRequest {}).await.unwrap().into_inner();
        match (status.health.as_str(), status.health_reason.contains("(3 members)")) {
            ("isolated", true) => Ok(()),
            _ => Err(format!("{}: {}", status.health, status.health_reason)),
        }
    })
    .await;

    // A bad file: rejected, counted, and the running configuration stays.
    replace_file(&file, "markets: [eth]\nlimits: {maxMessageBytes: nope}\n").unwrap();
    wait_until(
        WAIT,
        "the bad file rejected",
        || reloads(&node, "rejected") == 1,
        || format!("rejected {}", reloads(&node, "rejected")),
    )
    .await;
    client.submit_order(eth(3)).await.expect("still trading ETH-USDT");

    // An empty file (a writer that truncates before rewriting) and one that lists no
    // market would drop every market live: both rejected, counted, nothing changes.
    for (i, text) in ["", "network: test\n"].into_iter().enumerate() {
        std::fs::write(&file, text).unwrap();
        wait_until(
            WAIT,
            "the emptied file rejected",
            || reloads(&node, "rejected") == 2 + i as u64,
            || format!("rejected {}", reloads(&node, "rejected")),
        )
        .await;
        client.submit_order(eth(4 + i as u64)).await.expect("still trading ETH-USDT");
    }
    assert_eq!(reloads(&node, "applied"), 2);
    node.shutdown().await;
}

/// Replaces `path`'s content in one step (write a sibling, rename over), as a ConfigMap
/// update does: a plain `fs::write` truncates first, and a watcher that reads in between
/// sees an empty file (rejected, and counted).
fn replace_file(path: &std::path::Path, contents: impl AsRef<[u8]>) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path)
}
