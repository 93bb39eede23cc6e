//! The operator's Prometheus metrics (prometheus-client), all prefixed
//! `openmatch_gossip_operator_`.
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `openmatch_gossip_operator_reconciles_total` | counter | reconcile runs |
//! | `openmatch_gossip_operator_reconcile_failures_total{reason}` | counter | failed runs by reason (`invalid_spec`, `list_pods`, `apply_config_map`, `apply_service`, `write_status`, `missing_namespace`); every reason exists from start-up |
//! | `openmatch_gossip_operator_reconcile_duration_seconds` | histogram | time per reconcile run, seconds |
//! | `openmatch_gossip_operator_networks` | gauge | GossipNetworks known to the operator |
//! | `openmatch_gossip_operator_ready_peers{namespace,network}` | gauge | ready selected pods in a network's bootstrap list |
//! | `openmatch_gossip_operator_leader` | gauge | 1 while this replica holds the leader Lease (or runs without election), else 0 |
//! | `openmatch_gossip_operator_api_errors_total{operation}` | counter | Kubernetes API requests that failed, by operation (`watch`, `reconcile`, `lease`); every operation exists from start-up |
//! | `openmatch_gossip_operator_build_info{version}` | gauge | 1, labelled with the operator's version |
//! | `process_cpu_seconds_total`, `process_resident_memory_bytes`, … | | the operator process ([`openmatch_gossip_crds::runtime::ProcessCollector`]) |
//! | `openmatch_gossip_operator_injections_total{result}` | counter | pods the admission webhook answered, by result (`injected`, `skipped`, `refused`); every result exists from start-up |

use std::collections::HashSet;
use std::sync::Mutex;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Why a reconcile run failed: the `reason` label of
/// `openmatch_gossip_operator_reconcile_failures_total`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum FailureReason {
    /// The spec cannot be rendered (`invalid_spec`); reported in the status, not retried.
    InvalidSpec,
    /// Listing the selected pods failed (`list_pods`).
    ListPods,
    /// Applying the ConfigMap failed (`apply_config_map`).
    ApplyConfigMap,
    /// Applying the headless Service failed (`apply_service`).
    ApplyService,
    /// Writing the status failed (`write_status`).
    WriteStatus,
    /// The object has no namespace or uid (`missing_namespace`).
    MissingNamespace,
}

impl FailureReason {
    /// Every reason, for creating their series at 0.
    pub const ALL: [FailureReason; 6] = [
        FailureReason::InvalidSpec,
        FailureReason::ListPods,
        FailureReason::ApplyConfigMap,
        FailureReason::ApplyService,
        FailureReason::WriteStatus,
        FailureReason::MissingNamespace,
    ];

    /// The label value: short snake_case, e.g. `invalid_spec` or `apply_config_map`.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::InvalidSpec => "invalid_spec",
            FailureReason::ListPods => "list_pods",
            FailureReason::ApplyConfigMap => "apply_config_map",
            FailureReason::ApplyService => "apply_service",
            FailureReason::WriteStatus => "write_status",
            FailureReason::MissingNamespace => "missing_namespace",
        }
    }
}

impl EncodeLabelValue for FailureReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// Label of a reconcile failure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why the run failed.
    pub reason: FailureReason,
}

/// What the admission webhook did with a pod: the `result` label of
/// `openmatch_gossip_operator_injections_total`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum InjectionResult {
    /// The sidecar was injected (`injected`).
    Injected,
    /// The pod was admitted unchanged: no annotation, opted out or already injected
    /// (`skipped`).
    Skipped,
    /// The pod was refused: a malformed annotation or an unknown network (`refused`).
    Refused,
}

impl EncodeLabelValue for InjectionResult {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        let s = match self {
            InjectionResult::Injected => "injected",
            InjectionResult::Skipped => "skipped",
            InjectionResult::Refused => "refused",
        };
        EncodeLabelValue::encode(&s, encoder)
    }
}

/// Label of an injection count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InjectionLabel {
    /// What happened to the pod.
    pub result: InjectionResult,
}

/// Which kind of Kubernetes API request failed, for
/// `openmatch_gossip_operator_api_errors_total{operation}`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ApiOperation {
    /// A list or watch of the controller (GossipNetworks, pods, ConfigMaps, Services),
    /// retried with backoff (`watch`).
    Watch,
    /// A request of a reconcile run: listing pods, applying children, writing status
    /// (`reconcile`).
    Reconcile,
    /// Reading or writing the leader Lease (`lease`).
    Lease,
}

impl ApiOperation {
    /// Every operation, for creating their series at 0.
    pub const ALL: [ApiOperation; 3] = [ApiOperation::Watch, ApiOperation::Reconcile, ApiOperation::Lease];
}

impl EncodeLabelValue for ApiOperation {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        let s = match self {
            ApiOperation::Watch => "watch",
            ApiOperation::Reconcile => "reconcile",
            ApiOperation::Lease => "lease",
        };
        EncodeLabelValue::encode(&s, encoder)
    }
}

/// Label set of `openmatch_gossip_operator_api_errors_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiErrorLabel {
    /// What was being done.
    pub operation: ApiOperation,
}

/// Labels of a per-network gauge: the GossipNetwork's namespace and name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NetworkLabels {
    /// Namespace of the GossipNetwork.
    pub namespace: String,
    /// `metadata.name` of the GossipNetwork.
    pub network: String,
}

/// Every metric the operator exports (see the module table).
#[derive(Debug)]
pub struct Metrics {
    /// `openmatch_gossip_operator_reconciles_total`.
    pub reconciles: Counter,
    /// `openmatch_gossip_operator_reconcile_failures_total{reason}`.
    pub failures: Family<ReasonLabel, Counter>,
    /// `openmatch_gossip_operator_reconcile_duration_seconds`.
    pub duration: Histogram,
    /// `openmatch_gossip_operator_networks`.
    pub networks: Gauge,
    /// `openmatch_gossip_operator_ready_peers{namespace,network}`.
    pub ready_peers: Family<NetworkLabels, Gauge>,
    /// `openmatch_gossip_operator_leader`.
    pub leader: Gauge,
    /// `openmatch_gossip_operator_injections_total{result}`.
    pub injections: Family<InjectionLabel, Counter>,
    /// `openmatch_gossip_operator_api_errors_total{operation}`.
    pub api_errors: Family<ApiErrorLabel, Counter>,
    /// The networks that have a `ready_peers` series (prometheus-client's `Family` cannot
    /// be iterated).
    series: Mutex<HashSet<NetworkLabels>>,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry` under the prefix
    /// `openmatch_gossip_operator`, with `openmatch_gossip_operator_build_info{version}`,
    /// and the process metrics (`process_*`) at the root. Every series with a known label
    /// set exists from here on, at 0.
    pub fn new(registry: &mut Registry) -> Self {
        openmatch_gossip_crds::runtime::register_process_metrics(registry);
        let m = Metrics {
            reconciles: Counter::default(),
            failures: Family::default(),
            // 1 ms .. ~16 s
            duration: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            networks: Gauge::default(),
            ready_peers: Family::default(),
            leader: Gauge::default(),
            injections: Family::default(),
            api_errors: Family::default(),
            series: Mutex::default(),
        };
        for reason in FailureReason::ALL {
            let _ = m.failures.get_or_create(&ReasonLabel { reason });
        }
        for operation in ApiOperation::ALL {
            let _ = m.api_errors.get_or_create(&ApiErrorLabel { operation });
        }
        for result in [InjectionResult::Injected, InjectionResult::Skipped, InjectionResult::Refused] {
            let _ = m.injections.get_or_create(&InjectionLabel { result });
        }
        let r = registry.sub_registry_with_prefix("openmatch_gossip_operator");
        openmatch_gossip_crds::runtime::register_build_info(r, env!("CARGO_PKG_VERSION"));
        r.register("reconciles", "Reconcile runs", m.reconciles.clone());
        r.register("reconcile_failures", "Failed reconcile runs by reason", m.failures.clone());
        r.register("reconcile_duration_seconds", "Time per reconcile run, seconds", m.duration.clone());
        r.register("networks", "GossipNetworks known to the operator", m.networks.clone());
        r.register("ready_peers", "Ready selected pods in a network's bootstrap list", m.ready_peers.clone());
        r.register("leader", "1 while this replica leads (holds the Lease), else 0", m.leader.clone());
        r.register("injections", "Pods the admission webhook answered, by result", m.injections.clone());
        r.register(
            "api_errors",
            "Kubernetes API requests that failed (refused, timed out, unreachable), by operation",
            m.api_errors.clone(),
        );
        m
    }

    /// Counts a failed API request.
    pub fn api_error(&self, operation: ApiOperation) {
        self.api_errors.get_or_create(&ApiErrorLabel { operation }).inc();
    }

    /// Counts a failed reconcile run.
    pub fn failure(&self, reason: FailureReason) {
        self.failures.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Sets a network's ready peer count.
    pub fn set_ready_peers(&self, namespace: &str, network: &str, peers: i64) {
        let labels = NetworkLabels { namespace: namespace.into(), network: network.into() };
        self.ready_peers.get_or_create(&labels).set(peers);
        self.series.lock().expect("series lock").insert(labels);
    }

    /// Drops a deleted network's series.
    pub fn forget_network(&self, namespace: &str, network: &str) {
        let labels = NetworkLabels { namespace: namespace.into(), network: network.into() };
        self.ready_peers.remove(&labels);
        self.series.lock().expect("series lock").remove(&labels);
    }

    /// Drops the series of every network not in `known` (`(namespace, name)` pairs), e.g.
    /// after a watch restart that may have missed deletes.
    pub fn retain_networks(&self, known: &HashSet<(String, String)>) {
        let mut series = self.series.lock().expect("series lock");
        series.retain(|l| {
            let keep = known.contains(&(l.namespace.clone(), l.network.clone()));
            if !keep {
                self.ready_peers.remove(l);
            }
            keep
        });
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `registry` in the OpenMetrics text format (what `/metrics` serves).
    pub(crate) fn encode(registry: &Registry) -> String {
        let mut body = String::new();
        prometheus_client::encoding::text::encode(&mut body, registry).expect("writing to a String cannot fail");
        body
    }

    #[test]
    fn names_and_series() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        m.reconciles.inc();
        m.failure(FailureReason::InvalidSpec);
        m.duration.observe(0.01);
        m.networks.set(2);
        m.set_ready_peers("trading", "prod", 3);
        m.set_ready_peers("trading", "perps", 1);
        m.leader.set(1);
        let text = encode(&registry);
        for line in [
            "openmatch_gossip_operator_reconciles_total 1",
            "openmatch_gossip_operator_reconcile_failures_total{reason=\"invalid_spec\"} 1",
            "openmatch_gossip_operator_reconcile_duration_seconds_count 1",
            "openmatch_gossip_operator_networks 2",
            "openmatch_gossip_operator_ready_peers{namespace=\"trading\",network=\"prod\"} 3",
            "openmatch_gossip_operator_leader 1",
            "openmatch_gossip_operator_injections_total{result=\"refused\"} 0",
            "openmatch_gossip_operator_api_errors_total{operation=\"watch\"} 0",
            "openmatch_gossip_operator_api_errors_total{operation=\"lease\"} 0",
            "openmatch_gossip_operator_reconcile_failures_total{reason=\"write_status\"} 0",
            concat!("openmatch_gossip_operator_build_info{version=\"", env!("CARGO_PKG_VERSION"), "\"} 1"),
            "# TYPE process_resident_memory_bytes gauge",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        m.forget_network("trading", "prod");
        let text = encode(&registry);
        assert!(!text.contains("network=\"prod\""), "{text}");
        assert!(text.contains("network=\"perps\""), "{text}");
        m.set_ready_peers("trading", "prod", 3);
        m.retain_networks(&HashSet::from([("trading".to_owned(), "prod".to_owned())]));
        let text = encode(&registry);
        assert!(text.contains("network=\"prod\""), "{text}");
        assert!(!text.contains("network=\"perps\""), "{text}");
    }
}
