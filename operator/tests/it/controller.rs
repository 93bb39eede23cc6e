//! The whole controller (watches, generation predicate, pod mapping, graceful shutdown)
//! against a scripted mock API server that answers the controller's list and watch
//! requests, and the reconciles' requests.
//!
//! Watch responses are finite bodies of watch events; when one ends, kube's watcher issues
//! the next watch request, which the mock holds unanswered until the test has more events
//! to deliver. So the test decides exactly which events the controller sees, and when. The
//! ConfigMap and Service watches stay empty here (in a cluster the operator's own applies
//! come back through them and cause one more, no-op, reconcile).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use k8s_openapi::api::core::v1::{Pod, PodCondition, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::events::{Recorder, Reporter};
use openmatch_gossip_crds::gossip_network::PEER_ID_ANNOTATION;
use openmatch_gossip_crds::{GossipNetwork, GossipNetworkSpec, GossipNetworkStatus, SidecarConfig};
use openmatch_gossip_operator::metrics::Metrics;
use openmatch_gossip_operator::reconcile::Context;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::common::{Call, encode, mock_client};

const PEER_IDS: [&str; 2] =
    ["12D3KooWK99VoVxNE7XzyBwXEzW7xhK7Gpv85r9F3V3fyKSUKPH5", "12D3KooWJWoaqZhDaoEFshF7Rh1bpY9ohihFhzcW6d69Lr2NASuq"];

fn network(name: &str, uid: &str, app: &str) -> GossipNetwork {
    let mut gn = GossipNetwork::new(name, GossipNetworkSpec::new(["BTC-USDT"], [("app", app)]));
    gn.metadata.namespace = Some("trading".into());
    gn.metadata.uid = Some(uid.into());
    gn.metadata.generation = Some(1);
    gn.metadata.resource_version = Some("10".into());
    gn
}

fn pod(name: &str, ip: &str, peer_id: &str, resource_version: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("trading".into()),
            resource_version: Some(resource_version.into()),
            labels: Some(BTreeMap::from([("app".to_owned(), "engine".to_owned())])),
            annotations: Some(BTreeMap::from([(PEER_ID_ANNOTATION.to_owned(), peer_id.to_owned())])),
            ..Default::default()
        },
        spec: None,
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some(ip.into()),
            conditions: Some(vec![PodCondition { type_: "Ready".into(), status: "True".into(), ..Default::default() }]),
            ..Default::default()
        }),
    }
}

/// A finite watch response: one event per line.
fn watch_body(events: &[(&str, Value)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (type_, object) in events {
        out.extend(serde_json::to_vec(&json!({"type": type_, "object": object})).unwrap());
        out.push(b'\n');
    }
    out
}

fn respond_raw(call: Call, body: Vec<u8>) {
    call.respond_json_bytes(body);
}

/// What a reconcile wrote: the network's name and the status applied.
#[derive(Debug)]
struct StatusWrite {
    network: String,
    status: GossipNetworkStatus,
    config: Option<SidecarConfig>,
}

/// The mock API server's state: the pods it lists, and held watch requests.
#[derive(Default)]
struct Server {
    pods: Vec<Pod>,
    /// Latest ConfigMap config per network, to report with the status write.
    configs: BTreeMap<String, SidecarConfig>,
    network_watches: Vec<Call>,
    pod_watches: Vec<Call>,
    other_watches: Vec<Call>,
    /// Told when the next GossipNetwork watch request arrives: kube's watcher sends it only
    /// after every event of the previous response has gone through the controller's
    /// stream (reflector, metrics), so it is a barrier for those events.
    on_network_watch: Option<oneshot::Sender<()>>,
}

fn list(kind: &str, items: Value) -> Value {
    json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": "10"}, "items": items})
}

#[tokio::test]
async fn controller_reconciles_on_spec_and_pod_changes_but_not_on_its_own_status_writes() {
    let (client, mut api) = mock_client();
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let recorder =
        Recorder::new(client.clone(), Reporter { controller: "openmatch-gossip-operator".into(), instance: None });
    let ctx = Arc::new(Context::new(client, recorder, metrics.clone()));
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let controller = tokio::spawn(openmatch_gossip_operator::controller::run(ctx, None, Duration::ZERO, async {
        let _ = stop_rx.await;
    }));

    let spot = network("spot", "uid-spot", "engine");
    let perps = network("perps", "uid-perps", "perps-engine");
    let (writes_tx, mut writes) = mpsc::unbounded_channel::<StatusWrite>();
    let (control_tx, mut control) = mpsc::unbounded_channel::<Box<dyn FnOnce(&mut Server) + Send>>();

    // The mock API server: routes every request; the test steers it through `control`.
    let server = tokio::spawn({
        let spot = spot.clone();
        async move {
            let mut state = Server { pods: vec![pod("engine-0", "10.1.0.5", PEER_IDS[0], "20")], ..Default::default() };
            loop {
                let call = tokio::select! {
                    call = api.try_next() => match call { Some(c) => c, None => break },
                    change = control.recv() => match change {
                        Some(f) => { f(&mut state); continue }
                        None => continue,
                    },
                };
                let watch = call.query.get("watch").map(String::as_str) == Some("true");
                match (call.method.clone(), call.path.as_str()) {
                    (Method::GET, "/apis/gossip.openmatch.io/v1alpha1/gossipnetworks") if watch => {
                        state.network_watches.push(call);
                        if let Some(tell) = state.on_network_watch.take() {
                            let _ = tell.send(());
                        }
                    }
                    (Method::GET, "/apis/gossip.openmatch.io/v1alpha1/gossipnetworks") => {
                        let mut l = list("GossipNetworkList", json!([spot]));
                        l["apiVersion"] = json!("gossip.openmatch.io/v1alpha1");
                        call.ok(l)
                    }
                    (Method::GET, "/api/v1/pods") if watch => state.pod_watches.push(call),
                    // The controller's pod watch starts empty (listed pods would trigger
                    // reconciles of their own at start-up); reconciles list `state.pods`.
                    (Method::GET, "/api/v1/pods") => call.ok(list("PodList", json!([]))),
                    (Method::GET, "/api/v1/configmaps" | "/api/v1/services") if watch => state.other_watches.push(call),
                    (Method::GET, "/api/v1/configmaps") => call.ok(list("ConfigMapList", json!([]))),
                    (Method::GET, "/api/v1/services") => call.ok(list("ServiceList", json!([]))),
                    // Reconciles.
                    (Method::GET, "/api/v1/namespaces/trading/pods") => {
                        let selector = call.query.get("labelSelector").cloned().unwrap_or_default();
                        let app = selector.strip_prefix("app=").unwrap_or_default().to_owned();
                        let selected: Vec<&Pod> =
                            state.pods.iter().filter(|p| p.metadata.labels.as_ref().unwrap()["app"] == app).collect();
                        call.ok(list("PodList", json!(selected)))
                    }
                    (Method::PATCH, p) if p.starts_with("/api/v1/namespaces/trading/configmaps/") => {
                        let network = call.body["metadata"]["labels"]["gossip.openmatch.io/network"].as_str().unwrap();
                        let yaml = call.body["data"]["config.yaml"].as_str().unwrap();
                        state.configs.insert(network.to_owned(), SidecarConfig::from_yaml(yaml).unwrap());
                        call.echo()
                    }
                    (Method::PATCH, p) if p.starts_with("/api/v1/namespaces/trading/services/") => call.echo(),
                    (Method::PATCH, p) if p.ends_with("/status") => {
                        let network = p.split('/').nth_back(1).unwrap().to_owned();
                        let status: GossipNetworkStatus = serde_json::from_value(call.body["status"].clone()).unwrap();
                        let mut obj = serde_json::to_value(&spot).unwrap();
                        obj["metadata"]["name"] = json!(network);
                        obj["status"] = call.body["status"].clone();
                        call.ok(obj);
                        let config = state.configs.get(&network).cloned();
                        let _ = writes_tx.send(StatusWrite { network, status, config });
                    }
                    (Method::POST | Method::PATCH, p)
                        if p.starts_with("/apis/events.k8s.io/v1/namespaces/trading/events") =>
                    {
                        call.echo()
                    }
                    (m, p) => panic!("unexpected request {m} {p} {:?}", call.query),
                }
            }
        }
    });

    async fn next_write(writes: &mut mpsc::UnboundedReceiver<StatusWrite>) -> StatusWrite {
        tokio::time::timeout(Duration::from_secs(10), writes.recv()).await.expect("no reconcile within 10 s").unwrap()
    }

    // 1. The listed network is reconciled once, with the listed pod.
    let first = next_write(&mut writes).await;
    assert_eq!(first.network, "spot");
    assert_eq!(first.status.observed_generation, Some(1));
    assert_eq!(first.config.unwrap().p2p.bootstrap_peers, [format!("/ip4/10.1.0.5/tcp/4001/p2p/{}", PEER_IDS[0])]);

    // 2. The watch then delivers the operator's own status write (same generation) and a
    //    new network. Only the new network is reconciled.
    let mut spot_with_status = serde_json::to_value(&spot).unwrap();
    spot_with_status["status"] = serde_json::to_value(&first.status).unwrap();
    spot_with_status["metadata"]["resourceVersion"] = json!("11");
    let mut perps_json = serde_json::to_value(&perps).unwrap();
    perps_json["metadata"]["resourceVersion"] = json!("12");
    let body = watch_body(&[("MODIFIED", spot_with_status), ("ADDED", perps_json)]);
    control_tx
        .send(Box::new(move |s: &mut Server| {
            let watch = s.network_watches.remove(0);
            respond_raw(watch, body);
        }))
        .unwrap();
    let second = next_write(&mut writes).await;
    assert_eq!(second.network, "perps", "a status-only change of spot must not trigger a reconcile");
    assert!(second.status.bootstrap_peers.is_empty());

    // 3. A new engine pod: spot (selecting app=engine) is reconciled with both pods;
    //    perps (app=perps-engine) is not.
    let new_pod = pod("engine-1", "10.1.0.6", PEER_IDS[1], "21");
    let body = watch_body(&[("ADDED", serde_json::to_value(&new_pod).unwrap())]);
    control_tx
        .send(Box::new(move |s: &mut Server| {
            s.pods.push(new_pod);
            let watch = s.pod_watches.remove(0);
            respond_raw(watch, body);
        }))
        .unwrap();
    let third = next_write(&mut writes).await;
    assert_eq!(third.network, "spot");
    assert_eq!(
        third.config.unwrap().p2p.bootstrap_peers,
        [format!("/ip4/10.1.0.5/tcp/4001/p2p/{}", PEER_IDS[0]), format!("/ip4/10.1.0.6/tcp/4001/p2p/{}", PEER_IDS[1])]
    );
    assert_eq!(third.status.ready_peers, 2);

    // 4. A spec change (generation 2) of perps is reconciled.
    let mut perps2 = serde_json::to_value(&perps).unwrap();
    perps2["metadata"]["generation"] = json!(2);
    perps2["metadata"]["resourceVersion"] = json!("13");
    perps2["spec"]["markets"] = json!(["BTC-USDT", "ETH-USDT"]);
    let body = watch_body(&[("MODIFIED", perps2)]);
    control_tx
        .send(Box::new(move |s: &mut Server| {
            let watch = s.network_watches.remove(0);
            respond_raw(watch, body);
        }))
        .unwrap();
    let fourth = next_write(&mut writes).await;
    assert_eq!(fourth.network, "perps");
    assert_eq!(fourth.status.observed_generation, Some(2));
    assert_eq!(fourth.config.unwrap().markets, ["BTC-USDT", "ETH-USDT"]);

    // 5. Deleting perps drops its metrics series; spot's stays.
    let mut perps_gone = serde_json::to_value(&perps).unwrap();
    perps_gone["metadata"]["resourceVersion"] = json!("14");
    let body = watch_body(&[("DELETED", perps_gone)]);
    let (seen_tx, seen_rx) = oneshot::channel();
    control_tx
        .send(Box::new(move |s: &mut Server| {
            let watch = s.network_watches.remove(0);
            s.on_network_watch = Some(seen_tx);
            respond_raw(watch, body);
        }))
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), seen_rx).await.expect("no watch after the delete").unwrap();

    // 6. Graceful shutdown ends the controller. No other reconcile ran: exactly the four
    //    status writes above (the status-only event in step 2 was filtered out).
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), controller).await.expect("controller did not stop").unwrap();
    let text = encode(&registry);
    assert!(text.contains("openmatch_gossip_operator_reconciles_total 4"), "{text}");
    assert!(text.contains("network=\"spot\""), "{text}");
    assert!(!text.contains("network=\"perps\""), "perps' series must be gone after its delete:\n{text}");
    assert!(text.contains("openmatch_gossip_operator_networks 1"), "{text}");
    assert!(writes.try_recv().is_err(), "an extra reconcile ran");
    drop(control_tx);
    server.abort();
}
