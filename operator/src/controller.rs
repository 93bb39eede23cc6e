//! The kube-runtime `Controller` wiring: what triggers a reconcile of a GossipNetwork.
//!
//! - **The GossipNetwork itself**, through a watch filtered by the *generation* predicate:
//!   only spec changes (which bump `metadata.generation`) trigger, so the operator's own
//!   status writes do not make it loop. (Built with `Controller::for_stream`, kube's
//!   `unstable-runtime` API for pre-filtered streams.) Deletes drop the network's metrics
//!   series; its children go with it through their owner references.
//! - **Its children**, the ConfigMap and Service (`owns`, watched by the label
//!   `app.kubernetes.io/managed-by=openmatch-gossip-operator`): a child edited or deleted
//!   by someone else is put back.
//! - **Pods** (`watches`): a pod event triggers every GossipNetwork in the pod's namespace
//!   whose `podSelector` matches the pod's labels, or whose `status.bootstrapPeers`
//!   contains the pod's IP (a pod relabelled out of the selection must leave the list).
//!   Pod churn therefore updates the bootstrap peers within the debounce window.
//!
//! Triggers for one network within the debounce window are merged into one reconcile.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use kube::core::{Selector, SelectorExt as _};
use kube::runtime::controller::{self, Controller};
use kube::runtime::predicates;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::utils::{PredicateConfig, WatchStreamExt as _};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt as _};
use openmatch_gossip_crds::GossipNetwork;

use crate::children::{FIELD_MANAGER, MANAGED_BY_LABEL};
use crate::metrics::{ApiOperation, Metrics};
use crate::reconcile::{Context, error_policy, reconcile};

/// The GossipNetworks a pod event concerns: same namespace, and either selected by the
/// network's `podSelector` or listed (by IP) in its `status.bootstrapPeers`.
pub fn networks_for_pod(pod: &Pod, networks: &[Arc<GossipNetwork>]) -> Vec<ObjectRef<GossipNetwork>> {
    let ns = pod.namespace();
    let labels = pod.labels();
    let ip_prefixes: Vec<String> = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .map(|ip| vec![format!("/ip4/{ip}/"), format!("/ip6/{ip}/")])
        .unwrap_or_default();
    networks
        .iter()
        .filter(|gn| gn.namespace() == ns)
        .filter(|gn| {
            let selected = Selector::try_from(gn.spec.pod_selector.clone()).is_ok_and(|s| s.matches(labels));
            let listed = gn.status.as_ref().is_some_and(|s| {
                s.bootstrap_peers.iter().any(|a| ip_prefixes.iter().any(|p| a.starts_with(p.as_str())))
            });
            selected || listed
        })
        .map(|gn| ObjectRef::from_obj(gn.as_ref()))
        .collect()
}

/// Keeps the network metrics in step with the GossipNetwork watch (called after the
/// reflector has applied `event`, so `known` is current): `networks` = how many are known;
/// a delete drops the network's `ready_peers` series; after a (re)list, series of networks
/// that no longer exist are dropped too (a delete may have been missed while the watch was
/// down).
pub fn observe_network_event(metrics: &Metrics, known: &[Arc<GossipNetwork>], event: &watcher::Event<GossipNetwork>) {
    match event {
        watcher::Event::Delete(gn) => metrics.forget_network(&gn.namespace().unwrap_or_default(), &gn.name_any()),
        watcher::Event::InitDone => {
            let names: HashSet<(String, String)> =
                known.iter().map(|gn| (gn.namespace().unwrap_or_default(), gn.name_any())).collect();
            metrics.retain_networks(&names);
        }
        _ => {}
    }
    metrics.networks.set(known.len() as i64);
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs the controller until `shutdown` completes, then lets running reconciles finish
/// (kube-runtime's graceful shutdown) and returns. `namespace`: watch only that namespace.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    debounce: Duration,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let ns = namespace.as_deref();
    let (reader, writer) = reflector::store::<GossipNetwork>();
    let metrics = ctx.metrics.clone();
    let counted = reader.clone();
    let networks = watcher(api::<GossipNetwork>(&client, ns), watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .inspect_ok(move |event| observe_network_event(&metrics, &counted.state(), event))
        .applied_objects()
        .predicate_filter(predicates::generation, PredicateConfig::default());

    let metrics = ctx.metrics.clone();
    let store = reader.clone();
    let managed = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={FIELD_MANAGER}"));
    Controller::for_stream(networks, reader)
        .owns(api::<ConfigMap>(&client, ns), managed.clone())
        .owns(api::<Service>(&client, ns), managed)
        .watches(api::<Pod>(&client, ns), watcher::Config::default(), move |pod: Pod| {
            networks_for_pod(&pod, &store.state())
        })
        .with_config(controller::Config::default().debounce(debounce))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| {
            let metrics = metrics.clone();
            async move {
                match result {
                    Ok((obj, _)) => tracing::debug!(network = %obj, "reconcile finished"),
                    Err(controller::Error::ReconcilerFailed(e, obj)) => {
                        tracing::debug!(network = %obj, error = %e, "reconcile failed (see error policy)")
                    }
                    Err(controller::Error::QueueError(e)) => {
                        metrics.api_error(ApiOperation::Watch);
                        tracing::warn!(error = %e, "watch failed; retrying with backoff")
                    }
                    Err(e) => tracing::warn!(error = %e, "controller error"),
                }
            }
        })
        .await;
    tracing::info!("controller stopped");
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::PodStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelectorRequirement, ObjectMeta};
    use openmatch_gossip_crds::{GossipNetworkSpec, GossipNetworkStatus};

    use super::*;

    fn network(name: &str, ns: &str, labels: &[(&str, &str)]) -> Arc<GossipNetwork> {
        let mut gn = GossipNetwork::new(name, GossipNetworkSpec::new(["BTC-USDT"], labels.iter().copied()));
        gn.metadata.namespace = Some(ns.into());
        Arc::new(gn)
    }

    fn pod(ns: &str, labels: &[(&str, &str)], ip: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("engine-0".into()),
                namespace: Some(ns.into()),
                labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>()),
                ..Default::default()
            },
            spec: None,
            status: Some(PodStatus { pod_ip: ip.map(Into::into), ..Default::default() }),
        }
    }

    #[test]
    fn network_metrics_follow_the_watch() {
        let mut registry = prometheus_client::registry::Registry::default();
        let m = Metrics::new(&mut registry);
        let (spot, perps) = (network("spot", "trading", &[("app", "a")]), network("perps", "trading", &[("app", "b")]));
        m.set_ready_peers("trading", "spot", 3);
        m.set_ready_peers("trading", "perps", 2);
        observe_network_event(&m, &[spot.clone(), perps.clone()], &watcher::Event::Apply((*spot).clone()));
        assert_eq!(m.networks.get(), 2);

        observe_network_event(&m, std::slice::from_ref(&spot), &watcher::Event::Delete((*perps).clone()));
        assert_eq!(m.networks.get(), 1);
        let text = crate::metrics::tests::encode(&registry);
        assert!(!text.contains("perps") && text.contains("spot"), "{text}");

        // A relist that no longer has `spot` (its delete was missed) drops its series.
        m.set_ready_peers("trading", "perps", 2);
        observe_network_event(&m, std::slice::from_ref(&perps), &watcher::Event::InitDone);
        let text = crate::metrics::tests::encode(&registry);
        assert!(!text.contains("spot") && text.contains("perps"), "{text}");
        assert_eq!(m.networks.get(), 1);
    }

    fn names(refs: Vec<ObjectRef<GossipNetwork>>) -> Vec<String> {
        refs.into_iter().map(|r| r.name).collect()
    }

    #[test]
    fn pods_map_to_the_networks_selecting_them() {
        let nets = vec![
            network("spot", "trading", &[("app", "engine"), ("venue", "spot")]),
            network("perps", "trading", &[("app", "engine"), ("venue", "perps")]),
            network("other-ns", "staging", &[("app", "engine"), ("venue", "spot")]),
        ];
        let p = pod("trading", &[("app", "engine"), ("venue", "spot"), ("pod-template-hash", "x")], None);
        assert_eq!(names(networks_for_pod(&p, &nets)), ["spot"]);
        let p = pod("trading", &[("app", "engine")], None);
        assert!(networks_for_pod(&p, &nets).is_empty());
    }

    #[test]
    fn match_expressions_count() {
        let mut gn = (*network("spot", "trading", &[("app", "engine")])).clone();
        gn.spec.pod_selector.match_expressions = Some(vec![LabelSelectorRequirement {
            key: "track".into(),
            operator: "In".into(),
            values: Some(vec!["stable".into()]),
        }]);
        let nets = vec![Arc::new(gn)];
        assert!(networks_for_pod(&pod("trading", &[("app", "engine"), ("track", "canary")], None), &nets).is_empty());
        assert_eq!(networks_for_pod(&pod("trading", &[("app", "engine"), ("track", "stable")], None), &nets).len(), 1);
    }

    #[test]
    fn a_relabelled_pod_still_triggers_the_network_listing_its_ip() {
        let mut gn = (*network("spot", "trading", &[("app", "engine")])).clone();
        gn.status = Some(GossipNetworkStatus {
            bootstrap_peers: vec![
                "/ip4/10.1.0.5/tcp/4001/p2p/12D3KooWK99VoVxNE7XzyBwXEzW7xhK7Gpv85r9F3V3fyKSUKPH5".into(),
            ],
            ..Default::default()
        });
        let nets = vec![Arc::new(gn)];
        assert_eq!(names(networks_for_pod(&pod("trading", &[("app", "other")], Some("10.1.0.5")), &nets)), ["spot"]);
        // Not a prefix match on a longer address.
        assert!(networks_for_pod(&pod("trading", &[("app", "other")], Some("10.1.0.50")), &nets).is_empty());
    }
}
