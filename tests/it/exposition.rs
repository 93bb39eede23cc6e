//! What a sidecar's `/metrics` serves, over real HTTP: every series whose labels are known
//! exists from start-up at 0, libp2p's metrics carry one `libp2p_` prefix, the build and
//! the process are there, and the format is the one the client asks for (Prometheus text
//! 0.0.4 by default, OpenMetrics when asked, as Prometheus does).

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use openmatch_gossip_tests::*;

/// `GET /metrics` from `addr` with `accept` (if any): `Content-Type` and body.
async fn scrape(addr: std::net::SocketAddr, accept: Option<&str>) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let accept = accept.map(|a| format!("Accept: {a}\r\n")).unwrap_or_default();
    let request = format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{accept}Connection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let content_type = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-type")))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    (content_type, body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_node_exports_its_series_at_zero_in_the_format_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path(), "node", &[BTC], vec![], |_| {}).await;

    let (content_type, text) = scrape(node.http_addr, None).await;
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    let version = env!("CARGO_PKG_VERSION");
    for line in [
        "# TYPE openmatch_gossip_batches_total counter".to_owned(),
        format!("openmatch_gossip_batches_total{{market=\"{BTC}\",outcome=\"halted\"}} 0"),
        format!("openmatch_gossip_batches_total{{market=\"{BTC}\",outcome=\"unconfirmed\"}} 0"),
        format!("openmatch_gossip_batches_total{{market=\"{BTC}\",outcome=\"disputed\"}} 0"),
        format!("openmatch_gossip_batch_mismatches_total{{market=\"{BTC}\"}} 0"),
        format!("openmatch_gossip_result_mismatches_total{{market=\"{BTC}\"}} 0"),
        format!("openmatch_gossip_results_outvoted_total{{market=\"{BTC}\"}} 0"),
        format!("openmatch_gossip_order_outcomes_total{{market=\"{BTC}\",outcome=\"excluded\"}} 0"),
        format!(
            "openmatch_gossip_messages_rejected_total{{kind=\"orders\",market=\"{BTC}\",reason=\"future_epoch\"}} 0"
        ),
        format!("openmatch_gossip_messages_duplicate_total{{kind=\"orders\",market=\"{BTC}\"}} 0"),
        format!("openmatch_gossip_orders_duplicate_total{{market=\"{BTC}\"}} 0"),
        format!("openmatch_gossip_late_orders_total{{market=\"{BTC}\",source=\"own\"}} 0"),
        format!("openmatch_gossip_publish_retries_total{{market=\"{BTC}\",reason=\"queues_full\"}} 0"),
        "openmatch_gossip_send_queue_failures_total{queue=\"priority\"} 0".to_owned(),
        "openmatch_gossip_peer_penalties_total{reason=\"unserved_repair\"} 0".to_owned(),
        "openmatch_gossip_subscribers_dropped_total{reason=\"memory_bound\"} 0".to_owned(),
        "openmatch_gossip_repair_requests_sent_total{kind=\"fetch\"} 0".to_owned(),
        "openmatch_gossip_repair_requests_refused_total{reason=\"concurrent_streams\"} 0".to_owned(),
        "openmatch_gossip_config_reloads_total{result=\"rejected\"} 0".to_owned(),
        format!("openmatch_gossip_build_info{{version=\"{version}\"}} 1"),
        "# TYPE process_cpu_seconds_total counter".to_owned(),
        "# TYPE process_resident_memory_bytes gauge".to_owned(),
        "openmatch_gossip_propagation_latency_seconds_bucket{le=\"0.0015\"} 0".to_owned(),
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
    }
    assert!(!text.contains("libp2p_libp2p"), "one libp2p_ prefix:\n{text}");
    assert!(text.lines().any(|l| l.starts_with("libp2p_swarm_")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("libp2p_gossipsub_")), "{text}");
    assert!(!text.contains("# EOF") && !text.contains("# UNIT"), "no OpenMetrics-only lines");

    let prometheus = "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
    let (content_type, om) = scrape(node.http_addr, Some(prometheus)).await;
    assert_eq!(content_type, "application/openmetrics-text; version=1.0.0; charset=utf-8");
    assert!(om.contains("# TYPE openmatch_gossip_batches counter\n") && om.ends_with("# EOF\n"), "{om}");
    node.shutdown().await;
}
