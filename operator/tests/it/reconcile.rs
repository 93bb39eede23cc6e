//! Reconcile runs against a scripted mock API server: every request's method, path, query
//! and body is asserted, in order, and nothing else may be sent.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use k8s_openapi::api::core::v1::{Pod, PodCondition, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::Client;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use openmatch_gossip_crds::gossip_network::{
    ConsensusSpec, GossipsubSpec, LimitsSpec, PEER_ID_ANNOTATION, RateLimitSpec, config_hash,
};
use openmatch_gossip_crds::{GossipNetwork, GossipNetworkSpec, GossipNetworkStatus, SidecarConfig};
use openmatch_gossip_operator::metrics::Metrics;
use openmatch_gossip_operator::reconcile::{Child, Context, Error, error_policy, reconcile};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};

use crate::common::{ApiServer, Call, encode, mock_client};

const MANAGER: &str = "openmatch-gossip-operator";
const UID: &str = "6b1c4a1e-0d7e-4b9a-9d55-3c0f6f0e2a11";
const PODS: &str = "/api/v1/namespaces/trading/pods";
const CONFIG_MAP: &str = "/api/v1/namespaces/trading/configmaps/prod-gossip-config";
const SERVICE: &str = "/api/v1/namespaces/trading/services/prod-gossip";
const STATUS: &str = "/apis/gossip.openmatch.io/v1alpha1/namespaces/trading/gossipnetworks/prod/status";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/trading/events";

/// Real Ed25519 peer ids.
const PEER_IDS: [&str; 3] = [
    "12D3KooWK99VoVxNE7XzyBwXEzW7xhK7Gpv85r9F3V3fyKSUKPH5",
    "12D3KooWJWoaqZhDaoEFshF7Rh1bpY9ohihFhzcW6d69Lr2NASuq",
    "12D3KooWRndVhVZPCiQwHBBBdg769GyrPUW13zxwqQyf9r3ANaba",
];

fn network(generation: i64) -> GossipNetwork {
    let mut gn = GossipNetwork::new("prod", GossipNetworkSpec::new(["BTC-USDT"], [("app", "engine")]));
    gn.metadata.namespace = Some("trading".into());
    gn.metadata.uid = Some(UID.into());
    gn.metadata.generation = Some(generation);
    gn.metadata.resource_version = Some("100".into());
    gn
}

fn pod(name: &str, ip: &str, ready: bool, peer_id: Option<&str>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("trading".into()),
            labels: Some(BTreeMap::from([("app".to_owned(), "engine".to_owned())])),
            annotations: peer_id.map(|id| BTreeMap::from([(PEER_ID_ANNOTATION.to_owned(), id.to_owned())])),
            ..Default::default()
        },
        spec: None,
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some(ip.into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

fn addr(ip: &str, id: &str) -> String {
    format!("/ip4/{ip}/tcp/4001/p2p/{id}")
}

struct Harness {
    ctx: Arc<Context>,
    registry: Registry,
    server: ApiServer,
}

fn harness() -> Harness {
    let (client, server) = mock_client();
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let ctx = Arc::new(Context::new(client.clone(), recorder(client), metrics));
    Harness { ctx, registry, server }
}

fn recorder(client: Client) -> Recorder {
    Recorder::new(client, Reporter { controller: MANAGER.into(), instance: Some("op-0".into()) })
}

impl Harness {
    /// Ends the test: no request may follow.
    async fn finish(self) {
        let Harness { ctx, server, .. } = self;
        drop(ctx);
        server.assert_no_more_requests().await;
    }

    fn metrics(&self) -> String {
        encode(&self.registry)
    }
}

/// `GET pods?labelSelector=app=engine`, answered with `pods`.
async fn serve_pods(server: &mut ApiServer, pods: &[Pod]) {
    let call = server.expect(Method::GET, PODS).await;
    assert_eq!(call.query.get("labelSelector").map(String::as_str), Some("app=engine"));
    call.ok(json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "7"}, "items": pods}));
}

fn assert_owned(call: &Call) {
    let owners = &call.body["metadata"]["ownerReferences"];
    assert_eq!(
        owners,
        &json!([{
            "apiVersion": "gossip.openmatch.io/v1alpha1", "kind": "GossipNetwork",
            "name": "prod", "uid": UID, "controller": true,
        }]),
        "{}",
        call.path
    );
    assert_eq!(call.body["metadata"]["labels"]["app.kubernetes.io/managed-by"], MANAGER);
    assert_eq!(call.body["metadata"]["labels"]["gossip.openmatch.io/network"], "prod");
}

/// The ConfigMap apply: owned, hashed, and holding a config the sidecar parses.
async fn take_config_map(server: &mut ApiServer) -> (SidecarConfig, String) {
    let call = server.expect(Method::PATCH, CONFIG_MAP).await;
    call.assert_server_side_apply(MANAGER);
    assert_owned(&call);
    assert_eq!(call.body["apiVersion"], "v1");
    assert_eq!(call.body["kind"], "ConfigMap");
    let yaml = call.body["data"]["config.yaml"].as_str().expect("config.yaml").to_owned();
    let config = SidecarConfig::from_yaml(&yaml).expect("the sidecar parses the rendered config");
    let hash = config_hash(&yaml);
    assert_eq!(call.body["metadata"]["annotations"]["gossip.openmatch.io/config-hash"], hash.as_str());
    call.echo();
    (config, hash)
}

/// The headless Service apply.
async fn take_service(server: &mut ApiServer, port: u16) {
    let call = server.expect(Method::PATCH, SERVICE).await;
    call.assert_server_side_apply(MANAGER);
    assert_owned(&call);
    assert_eq!(
        call.body["spec"],
        json!({
            "clusterIP": "None",
            "publishNotReadyAddresses": true,
            "selector": {"app": "engine"},
            "ports": [{"name": "p2p", "port": port, "targetPort": port, "protocol": "TCP"}],
        })
    );
    call.echo();
}

/// The status apply; answered with the object carrying that status.
async fn take_status(server: &mut ApiServer, gn: &GossipNetwork) -> GossipNetworkStatus {
    let call = server.expect(Method::PATCH, STATUS).await;
    call.assert_server_side_apply(MANAGER);
    assert_eq!(call.body["apiVersion"], "gossip.openmatch.io/v1alpha1");
    assert_eq!(call.body["kind"], "GossipNetwork");
    let status: GossipNetworkStatus = serde_json::from_value(call.body["status"].clone()).unwrap();
    let mut obj = serde_json::to_value(gn).unwrap();
    obj["status"] = call.body["status"].clone();
    call.ok(obj);
    status
}

/// An Event about `prod`: a create (`POST`), or a patch of the recorder's series when the
/// same reason was published before.
async fn take_event(server: &mut ApiServer, type_: &str, reason: &str) -> Value {
    let call = server.next().await;
    assert!(
        (call.method == Method::POST && call.path == EVENTS)
            || (call.method == Method::PATCH && call.path.starts_with(&format!("{EVENTS}/prod."))),
        "expected an Event, got {} {}: {}",
        call.method,
        call.path,
        call.body
    );
    assert_eq!(call.body["type"], type_, "{}", call.body);
    assert_eq!(call.body["reason"], reason, "{}", call.body);
    assert_eq!(call.body["regarding"]["kind"], "GossipNetwork");
    assert_eq!(call.body["regarding"]["name"], "prod");
    assert_eq!(call.body["reportingController"], MANAGER);
    let body = call.body.clone();
    call.echo();
    body
}

fn condition<'a>(status: &'a GossipNetworkStatus, type_: &str) -> (&'a str, &'a str, &'a str) {
    let c = status.conditions.iter().find(|c| c.type_ == type_).unwrap_or_else(|| panic!("no {type_} condition"));
    (c.status.as_str(), c.reason.as_str(), c.message.as_str())
}

#[tokio::test]
async fn first_creation_applies_config_map_service_and_status() {
    let mut h = harness();
    let gn = network(1);
    let pods =
        [pod("engine-1", "10.1.0.6", true, Some(PEER_IDS[1])), pod("engine-0", "10.1.0.5", true, Some(PEER_IDS[0]))];
    let run = tokio::spawn(reconcile(Arc::new(gn.clone()), h.ctx.clone()));

    serve_pods(&mut h.server, &pods).await;
    let (config, hash) = take_config_map(&mut h.server).await;
    assert_eq!(config.network, "prod");
    assert_eq!(config.markets, ["BTC-USDT"]);
    assert_eq!(config.p2p.listen_addrs, ["/ip4/0.0.0.0/tcp/4001"]);
    // Ordered by pod name, whatever the list order.
    let peers = vec![addr("10.1.0.5", PEER_IDS[0]), addr("10.1.0.6", PEER_IDS[1])];
    assert_eq!(config.p2p.bootstrap_peers, peers);
    take_service(&mut h.server, 4001).await;
    let status = take_status(&mut h.server, &gn).await;
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(status.ready_peers, 2);
    assert_eq!(status.bootstrap_peers, peers);
    assert_eq!(status.config_hash.as_deref(), Some(hash.as_str()));
    assert_eq!(status.config_map.as_deref(), Some("prod-gossip-config"));
    assert_eq!(condition(&status, "Ready").0, "True");
    assert_eq!(condition(&status, "Ready").1, "Reconciled");
    assert_eq!(condition(&status, "Degraded").0, "False");
    assert!(status.conditions.iter().all(|c| c.observed_generation == Some(1)));
    let event = take_event(&mut h.server, "Normal", "ConfigApplied").await;
    assert!(event["note"].as_str().unwrap().contains(&hash), "{event}");

    assert_eq!(h.server.settle(run).await.unwrap(), Action::requeue(Duration::from_secs(300)));
    let metrics = h.metrics();
    assert!(metrics.contains("openmatch_gossip_operator_ready_peers{namespace=\"trading\",network=\"prod\"} 2"));
    assert!(metrics.contains("openmatch_gossip_operator_reconciles_total 1"));
    assert!(metrics.contains("openmatch_gossip_operator_reconcile_duration_seconds_count 1"));
    h.finish().await;
}

#[tokio::test]
async fn spec_change_renders_the_new_spec_and_keeps_transition_times() {
    let mut h = harness();
    let pods = [pod("engine-0", "10.1.0.5", true, Some(PEER_IDS[0]))];

    // Generation 1, applied.
    let mut gn = network(1);
    let run = tokio::spawn(reconcile(Arc::new(gn.clone()), h.ctx.clone()));
    serve_pods(&mut h.server, &pods).await;
    let (_, first_hash) = take_config_map(&mut h.server).await;
    take_service(&mut h.server, 4001).await;
    let mut status = take_status(&mut h.server, &gn).await;
    take_event(&mut h.server, "Normal", "ConfigApplied").await;
    h.server.settle(run).await.unwrap();

    // An old transition time, to see that an unchanged Ready status keeps it.
    let old_time = Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).unwrap());
    for c in &mut status.conditions {
        c.last_transition_time = old_time.clone();
    }
    gn.status = Some(status);

    // Generation 2: another market, another port, a tighter rate limit.
    gn.metadata.generation = Some(2);
    gn.spec.markets.push("ETH-USDT".into());
    gn.spec.p2p_port = 4101;
    gn.spec.limits = Some(LimitsSpec {
        rate_limit: Some(RateLimitSpec { messages_per_second: Some(500), burst: Some(800) }),
        ..Default::default()
    });
    let run = tokio::spawn(reconcile(Arc::new(gn.clone()), h.ctx.clone()));
    serve_pods(&mut h.server, &pods).await;
    let (config, hash) = take_config_map(&mut h.server).await;
    assert_ne!(hash, first_hash);
    assert_eq!(config.markets, ["BTC-USDT", "ETH-USDT"]);
    assert_eq!(config.p2p.listen_addrs, ["/ip4/0.0.0.0/tcp/4101"]);
    assert_eq!(config.p2p.bootstrap_peers, [format!("/ip4/10.1.0.5/tcp/4101/p2p/{}", PEER_IDS[0])]);
    assert_eq!((config.limits.rate_limit.messages_per_second, config.limits.rate_limit.burst), (500, 800));
    take_service(&mut h.server, 4101).await;
    let status = take_status(&mut h.server, &gn).await;
    assert_eq!(status.observed_generation, Some(2));
    assert_eq!(status.config_hash.as_deref(), Some(hash.as_str()));
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!((ready.status.as_str(), ready.observed_generation), ("True", Some(2)));
    assert_eq!(ready.last_transition_time, old_time, "Ready stayed True: its transition time is kept");
    // Same event reason again: the recorder patches its event series.
    take_event(&mut h.server, "Normal", "ConfigApplied").await;
    h.server.settle(run).await.unwrap();
    h.finish().await;
}

#[tokio::test]
async fn pods_added_and_removed_change_the_bootstrap_peers() {
    let mut h = harness();
    let mut gn = network(1);
    let a = pod("engine-0", "10.1.0.5", true, Some(PEER_IDS[0]));
    let b = pod("engine-1", "10.1.0.6", true, Some(PEER_IDS[1]));
    let b_starting = pod("engine-1", "10.1.0.6", false, Some(PEER_IDS[1]));

    // Each step: the pods the API server lists, the bootstrap peers expected, the members
    // (selected pods, ready or not), whether the configuration changed (an Event), and the
    // Degraded reason.
    type Step = (Vec<Pod>, Vec<String>, u32, bool, &'static str);
    let steps: Vec<Step> = vec![
        (vec![a.clone()], vec![addr("10.1.0.5", PEER_IDS[0])], 1, true, "AllPodsReady"),
        // A starting pod is not a bootstrap peer yet, but already a member.
        (vec![a.clone(), b_starting.clone()], vec![addr("10.1.0.5", PEER_IDS[0])], 2, true, "PodsNotReady"),
        (
            vec![a.clone(), b.clone()],
            vec![addr("10.1.0.5", PEER_IDS[0]), addr("10.1.0.6", PEER_IDS[1])],
            2,
            true,
            "AllPodsReady",
        ),
        (vec![b.clone()], vec![addr("10.1.0.6", PEER_IDS[1])], 1, true, "AllPodsReady"),
        (vec![b.clone()], vec![addr("10.1.0.6", PEER_IDS[1])], 1, false, "AllPodsReady"),
    ];
    for (i, (pods, expected, members, changed, degraded)) in steps.into_iter().enumerate() {
        let run = tokio::spawn(reconcile(Arc::new(gn.clone()), h.ctx.clone()));
        serve_pods(&mut h.server, &pods).await;
        let (config, _) = take_config_map(&mut h.server).await;
        assert_eq!(config.p2p.bootstrap_peers, expected, "step {i}");
        assert_eq!(config.consensus.members, members, "step {i}");
        take_service(&mut h.server, 4001).await;
        let status = take_status(&mut h.server, &gn).await;
        assert_eq!(status.bootstrap_peers, expected, "step {i}");
        assert_eq!(status.ready_peers as usize, expected.len(), "step {i}");
        assert_eq!(condition(&status, "Degraded").1, degraded, "step {i}");
        if changed {
            take_event(&mut h.server, "Normal", "ConfigApplied").await;
        }
        h.server.settle(run).await.unwrap();
        assert!(
            h.metrics().contains(&format!(
                "openmatch_gossip_operator_ready_peers{{namespace=\"trading\",network=\"prod\"}} {}",
                expected.len()
            )),
            "step {i}"
        );
        gn.status = Some(status);
    }
    h.finish().await;
}

#[tokio::test]
async fn invalid_spec_reports_the_field_and_applies_nothing() {
    let mut h = harness();
    let mut gn = network(3);
    // A status from an earlier, valid generation: what is still applied.
    gn.status = Some(GossipNetworkStatus {
        observed_generation: Some(2),
        ready_peers: 1,
        bootstrap_peers: vec![addr("10.1.0.5", PEER_IDS[0])],
        config_hash: Some("sha256:abc".into()),
        config_map: Some("prod-gossip-config".into()),
        conditions: vec![],
    });
    // Passes the schema (each value in range) but not the cross-field rule.
    gn.spec.gossipsub = Some(GossipsubSpec { mesh_n: Some(20), mesh_n_high: Some(12), ..Default::default() });
    let run = tokio::spawn(reconcile(Arc::new(gn.clone()), h.ctx.clone()));

    // No pod list, no ConfigMap, no Service: straight to the status.
    let status = take_status(&mut h.server, &gn).await;
    let (ready, reason, message) = condition(&status, "Ready");
    assert_eq!((ready, reason), ("False", "InvalidSpec"));
    assert!(message.starts_with("spec.gossipsub.meshN:"), "{message}");
    assert_eq!(condition(&status, "Degraded").1, "InvalidSpec");
    assert_eq!(status.observed_generation, Some(3));
    // The description of the configuration still in force is kept.
    assert_eq!(status.config_hash.as_deref(), Some("sha256:abc"));
    assert_eq!(status.bootstrap_peers, [addr("10.1.0.5", PEER_IDS[0])]);
    let event = take_event(&mut h.server, "Warning", "InvalidSpec").await;
    assert!(event["note"].as_str().unwrap().contains("spec.gossipsub.meshN"), "{event}");

    assert_eq!(h.server.settle(run).await.unwrap(), Action::await_change());
    assert!(h.metrics().contains("openmatch_gossip_operator_reconcile_failures_total{reason=\"invalid_spec\"} 1"));

    // Reconciled again (e.g. a pod changed) with the same error: status only, no new Event.
    gn.status = Some(status);
    let run = tokio::spawn(reconcile(Arc::new(gn.clone()), h.ctx.clone()));
    let status = take_status(&mut h.server, &gn).await;
    assert_eq!(condition(&status, "Ready").1, "InvalidSpec");
    assert_eq!(h.server.settle(run).await.unwrap(), Action::await_change());
    h.finish().await;
}

#[tokio::test]
async fn invalid_consensus_timing_is_rejected_by_field() {
    let mut h = harness();
    let mut gn = network(1);
    gn.spec.consensus =
        Some(ConsensusSpec { seal_timeout_ms: Some(9000), repair_window_ms: Some(5000), ..Default::default() });
    let run = tokio::spawn(reconcile(Arc::new(gn.clone()), h.ctx.clone()));
    let status = take_status(&mut h.server, &gn).await;
    assert!(condition(&status, "Ready").2.starts_with("spec.consensus.sealTimeoutMs:"));
    assert_eq!(status.config_hash, None, "nothing was ever applied");
    take_event(&mut h.server, "Warning", "InvalidSpec").await;
    h.server.settle(run).await.unwrap();
    h.finish().await;
}

#[tokio::test]
async fn no_ready_peer_still_applies_the_config_and_reports_no_peers() {
    let mut h = harness();
    let gn = network(1);
    let run = tokio::spawn(reconcile(Arc::new(gn.clone()), h.ctx.clone()));
    serve_pods(&mut h.server, &[pod("engine-0", "10.1.0.5", false, Some(PEER_IDS[0]))]).await;
    // The sidecars need the ConfigMap to start at all, peers or not.
    let (config, _) = take_config_map(&mut h.server).await;
    assert!(config.p2p.bootstrap_peers.is_empty());
    take_service(&mut h.server, 4001).await;
    let status = take_status(&mut h.server, &gn).await;
    assert_eq!(condition(&status, "Ready").0, "False");
    assert_eq!(condition(&status, "Ready").1, "NoPeers");
    assert_eq!(condition(&status, "Degraded").1, "PodsNotReady");
    assert_eq!(status.ready_peers, 0);
    take_event(&mut h.server, "Normal", "ConfigApplied").await;
    take_event(&mut h.server, "Warning", "NoPeers").await;
    h.server.settle(run).await.unwrap();
    h.finish().await;
}

#[tokio::test]
async fn ready_pod_without_peer_id_is_left_out_and_degrades() {
    let mut h = harness();
    let mut gn = network(1);
    gn.spec.bootstrap_peers = vec![format!("/dns4/seed.example/tcp/4001/p2p/{}", PEER_IDS[2])];
    let pods = [pod("engine-0", "10.1.0.5", true, Some(PEER_IDS[0])), pod("engine-1", "10.1.0.6", true, None)];
    let run = tokio::spawn(reconcile(Arc::new(gn.clone()), h.ctx.clone()));
    serve_pods(&mut h.server, &pods).await;
    let (config, _) = take_config_map(&mut h.server).await;
    // Static peers first, then the pods'.
    assert_eq!(config.p2p.bootstrap_peers, [gn.spec.bootstrap_peers[0].clone(), addr("10.1.0.5", PEER_IDS[0])]);
    take_service(&mut h.server, 4001).await;
    let status = take_status(&mut h.server, &gn).await;
    assert_eq!(condition(&status, "Ready").1, "Reconciled");
    let (degraded, reason, message) = condition(&status, "Degraded");
    assert_eq!((degraded, reason), ("True", "PeerIdMissing"));
    assert!(message.contains("engine-1") && message.contains(PEER_ID_ANNOTATION), "{message}");
    assert_eq!(status.ready_peers, 1);
    take_event(&mut h.server, "Normal", "ConfigApplied").await;
    take_event(&mut h.server, "Warning", "PeerIdMissing").await;
    h.server.settle(run).await.unwrap();
    h.finish().await;
}

#[tokio::test]
async fn apply_failure_is_reported_and_retried_with_backoff() {
    let mut h = harness();
    let gn = Arc::new(network(1));
    for attempt in 1..=2u64 {
        let run = tokio::spawn(reconcile(gn.clone(), h.ctx.clone()));
        serve_pods(&mut h.server, &[]).await;
        h.server.expect(Method::PATCH, CONFIG_MAP).await.error(500, "InternalError", "etcd unavailable");
        let status = take_status(&mut h.server, &gn).await;
        assert_eq!(condition(&status, "Ready").1, "ApplyFailed");
        assert!(condition(&status, "Ready").2.contains("etcd unavailable"));
        take_event(&mut h.server, "Warning", "ApplyFailed").await;
        let err = h.server.settle(run).await.unwrap_err();
        assert!(matches!(err, Error::Apply { kind: Child::ConfigMap, .. }), "{err}");
        let action = error_policy(gn.clone(), &err, h.ctx.clone());
        assert_eq!(action, Action::requeue(Duration::from_secs(1 << (attempt - 1))), "attempt {attempt}");
    }
    assert!(
        h.metrics().contains("openmatch_gossip_operator_reconcile_failures_total{reason=\"apply_config_map\"} 2"),
        "{}",
        h.metrics()
    );

    // A success resets the backoff.
    let run = tokio::spawn(reconcile(gn.clone(), h.ctx.clone()));
    serve_pods(&mut h.server, &[]).await;
    take_config_map(&mut h.server).await;
    take_service(&mut h.server, 4001).await;
    take_status(&mut h.server, &gn).await;
    take_event(&mut h.server, "Normal", "ConfigApplied").await;
    take_event(&mut h.server, "Warning", "NoPeers").await;
    h.server.settle(run).await.unwrap();
    let err = Error::Incomplete("x".into());
    assert_eq!(error_policy(gn.clone(), &err, h.ctx.clone()), Action::requeue(Duration::from_secs(1)));
    h.finish().await;
}

/// Deletion and garbage collection: the children carry a controller owner reference to the
/// GossipNetwork's uid (asserted on every apply above), so Kubernetes' garbage collector
/// deletes them with it; the operator adds no finalizer, and a GossipNetwork already being
/// deleted (foreground deletion keeps it around with a deletion timestamp until the
/// children are gone) is not re-applied: no request at all.
#[tokio::test]
async fn network_being_deleted_is_left_to_the_garbage_collector() {
    let mut h = harness();
    let mut gn = network(2);
    gn.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
    gn.metadata.finalizers = Some(vec!["foregroundDeletion".into()]);
    let run = tokio::spawn(reconcile(Arc::new(gn), h.ctx.clone()));
    let action = h.server.settle(run).await.unwrap();
    assert_eq!(action, Action::await_change());
    h.finish().await;
}

#[tokio::test]
async fn owner_references_let_the_garbage_collector_delete_children() {
    // What the garbage collector needs on each child: an ownerReference naming the owner's
    // apiVersion, kind, name and uid (the uid is what the collector checks: a child whose
    // owner uid no longer exists is deleted). `controller: true` marks this operator's
    // objects for `owns()` watches.
    let mut h = harness();
    let gn = network(1);
    let run = tokio::spawn(reconcile(Arc::new(gn.clone()), h.ctx.clone()));
    serve_pods(&mut h.server, &[]).await;
    for path in [CONFIG_MAP, SERVICE] {
        let call = h.server.expect(Method::PATCH, path).await;
        let owner = &call.body["metadata"]["ownerReferences"][0];
        assert_eq!(owner["uid"], UID);
        assert_eq!(owner["controller"], true);
        assert_eq!(call.body["metadata"]["namespace"], "trading", "children live in the owner's namespace");
        assert!(call.body["metadata"].get("finalizers").is_none());
        call.echo();
    }
    take_status(&mut h.server, &gn).await;
    take_event(&mut h.server, "Normal", "ConfigApplied").await;
    take_event(&mut h.server, "Warning", "NoPeers").await;
    h.server.settle(run).await.unwrap();
    h.finish().await;
}
