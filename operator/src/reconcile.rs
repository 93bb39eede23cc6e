//! Reconciling one GossipNetwork: spec → (selected pods →) sidecar configuration →
//! ConfigMap + headless Service (server-side apply, owned) → status and Events.
//!
//! One run, in this order (the mock API server tests assert exactly these requests):
//! 1. check the spec by rendering it without pods ([`GossipNetwork::render`]); an invalid
//!    spec writes status `Ready=False/InvalidSpec` naming the field, publishes a Warning
//!    Event, **applies nothing** and waits for the next spec change;
//! 2. `GET pods?labelSelector=<podSelector>` in the network's namespace, learn the peer
//!    ids of ready pods from their sidecars ([`crate::peer_ids`], cached; not an API
//!    request), and sort the pods into bootstrap peers ([`crate::peers`]);
//! 3. render the configuration with those peers and the member count (selected pods plus
//!    static peers), hash it;
//! 4. server-side apply (field manager `openmatch-gossip-operator`, forced) the ConfigMap,
//!    then the Service, each with a controller owner reference;
//! 5. server-side apply the status subresource (`observedGeneration`, `Ready`/`Degraded`,
//!    `readyPeers`, `bootstrapPeers`, `configHash`, `configMap`);
//! 6. Events: `ConfigApplied` (Normal) when the configuration hash changed, `NoPeers` and
//!    `PeerIdMissing` (Warning) when those conditions start.
//!
//! Deletion needs no finalizer: the children's owner references let Kubernetes' garbage
//! collector delete them with the GossipNetwork, and the controller drops its metrics
//! series when it sees the delete. A GossipNetwork that is being deleted (deletion
//! timestamp set, e.g. during foreground deletion) is left alone.
//!
//! Failures of API calls return an [`Error`]; [`error_policy`] counts it and requeues with
//! exponential backoff (1 s doubling to 5 min, reset by a success).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, Patch, PatchParams};
use kube::core::Selector;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client, Resource as _, ResourceExt as _};
use openmatch_gossip_crds::gossip_network::config_hash;
use openmatch_gossip_crds::{GossipNetwork, GossipNetworkStatus, SpecError};

use crate::children::{self, FIELD_MANAGER};
use crate::metrics::{FailureReason, Metrics};
use crate::peer_ids::PeerIds;
use crate::peers::{self, PeerSet};
use crate::status::{self, Cond, Reason};

/// Shared state of every reconcile run.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Publishes Kubernetes Events (events.k8s.io/v1) about GossipNetworks.
    pub recorder: Recorder,
    /// The operator's metrics.
    pub metrics: Arc<Metrics>,
    /// Delay before a successful reconcile runs again without any trigger (a safety net
    /// for missed watch events). Default 5 min.
    pub resync: Duration,
    /// Peer ids learned from the selected pods' sidecars (zero-touch discovery).
    pub peer_ids: PeerIds,
    /// Consecutive failures per GossipNetwork (`namespace/name`), for the backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    /// A context with the default resync period (5 min).
    pub fn new(client: Client, recorder: Recorder, metrics: Arc<Metrics>) -> Self {
        Self {
            client,
            recorder,
            metrics,
            resync: Duration::from_secs(300),
            peer_ids: PeerIds::default(),
            failures: Mutex::default(),
        }
    }

    fn key(gn: &GossipNetwork) -> String {
        format!("{}/{}", gn.namespace().unwrap_or_default(), gn.name_any())
    }

    /// Records one more consecutive failure of `gn` and returns the count (1 for the first).
    fn record_failure(&self, gn: &GossipNetwork) -> u32 {
        let mut failures = self.failures.lock().expect("failures lock");
        let n = failures.entry(Self::key(gn)).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    fn reset_failures(&self, gn: &GossipNetwork) {
        self.failures.lock().expect("failures lock").remove(&Self::key(gn));
    }
}

/// A reconcile run that failed on an API call (or on an object without namespace or uid).
/// Invalid specs are not errors: they are reported in the status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object has no namespace or uid (never the case for objects from the API server).
    #[error("GossipNetwork {0} has no namespace or uid")]
    Incomplete(String),
    /// Listing the selected pods failed.
    #[error("listing the pods of GossipNetwork {network}: {source}")]
    ListPods {
        /// `namespace/name`.
        network: String,
        /// The API error.
        source: kube::Error,
    },
    /// Applying a child failed.
    #[error("applying {kind} {name}: {source}")]
    Apply {
        /// Which child.
        kind: Child,
        /// The child's name.
        name: String,
        /// The API error.
        source: kube::Error,
    },
    /// Writing the status failed.
    #[error("writing the status of GossipNetwork {network}: {source}")]
    WriteStatus {
        /// `namespace/name`.
        network: String,
        /// The API error.
        source: kube::Error,
    },
}

impl Error {
    /// The `reason` label of `openmatch_gossip_operator_reconcile_failures_total`.
    pub fn metric_reason(&self) -> FailureReason {
        match self {
            Error::Incomplete(_) => FailureReason::MissingNamespace,
            Error::ListPods { .. } => FailureReason::ListPods,
            Error::Apply { kind, .. } => kind.metric_label(),
            Error::WriteStatus { .. } => FailureReason::WriteStatus,
        }
    }
}

/// A child object the operator applies for each GossipNetwork.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Child {
    /// The ConfigMap with the sidecar configuration.
    ConfigMap,
    /// The headless Service for peer DNS.
    Service,
}

impl Child {
    /// The Kubernetes kind, for logs and messages: `ConfigMap` or `Service`.
    pub fn as_str(self) -> &'static str {
        match self {
            Child::ConfigMap => "ConfigMap",
            Child::Service => "Service",
        }
    }

    /// The failure `reason` label when applying this child fails: `apply_config_map` or
    /// `apply_service`.
    pub fn metric_label(self) -> FailureReason {
        match self {
            Child::ConfigMap => FailureReason::ApplyConfigMap,
            Child::Service => FailureReason::ApplyService,
        }
    }
}

impl std::fmt::Display for Child {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Reconciles one GossipNetwork (see the module documentation for the steps). Returns
/// the requeue action: after [`Context::resync`] on success, or wait for a change when the
/// spec is invalid.
pub async fn reconcile(gn: Arc<GossipNetwork>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let result = reconcile_inner(&gn, &ctx).await;
    ctx.metrics.duration.observe(started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.reset_failures(&gn);
    }
    result
}

/// Backoff after `attempt` consecutive failures: 1 s, 2 s, 4 s, ... capped at 5 min.
pub fn backoff(attempt: u32) -> Duration {
    let secs = 1u64.checked_shl(attempt.saturating_sub(1).min(16)).unwrap_or(u64::MAX);
    Duration::from_secs(secs.min(300))
}

/// The controller's error policy: counts the failure by reason, logs it and requeues the
/// object after [`backoff`] of its consecutive failures.
pub fn error_policy(gn: Arc<GossipNetwork>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failure(err.metric_reason());
    if !matches!(err, Error::Incomplete(_)) {
        ctx.metrics.api_error(crate::metrics::ApiOperation::Reconcile);
    }
    let attempt = ctx.record_failure(&gn);
    let delay = backoff(attempt);
    tracing::warn!(
        network = %Context::key(&gn), error = %err, attempt, retry_in_s = delay.as_secs(),
        "reconcile failed"
    );
    Action::requeue(delay)
}

async fn reconcile_inner(gn: &GossipNetwork, ctx: &Context) -> Result<Action, Error> {
    let key = Context::key(gn);
    let (Some(ns), Some(owner)) = (gn.namespace(), children::owner_reference(gn)) else {
        return Err(Error::Incomplete(key));
    };
    let name = gn.name_any();
    if gn.metadata.deletion_timestamp.is_some() {
        // Being deleted (e.g. foreground deletion waiting for the garbage collector):
        // re-applying the children now would fight the collector.
        tracing::debug!(network = %key, "being deleted; children are left to the garbage collector");
        return Ok(Action::await_change());
    }

    // 1. The spec, before anything is read or written.
    if let Err(e) = gn.render(&[], 0) {
        return invalid_spec(gn, ctx, &ns, e).await;
    }
    let selector = match Selector::try_from(gn.spec.pod_selector.clone()) {
        Ok(s) => s,
        Err(e) => {
            return invalid_spec(gn, ctx, &ns, SpecError { field: "spec.podSelector".into(), reason: e.to_string() })
                .await;
        }
    };

    // 2. The selected pods.
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default().labels_from(&selector))
        .await
        .map_err(|source| Error::ListPods { network: key.clone(), source })?;

    // 3. The configuration.
    let (peers, config) = match desired(gn, &pods.items, &ctx.peer_ids).await {
        Ok(d) => d,
        Err(e) => return invalid_spec(gn, ctx, &ns, e).await,
    };
    let yaml = config.to_yaml();
    let hash = config_hash(&yaml);

    // 4. The children.
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let cm = children::config_map(gn, Some(&owner), &yaml, &hash);
    let cm_name = gn.config_map_name();
    if let Err(source) =
        Api::<ConfigMap>::namespaced(ctx.client.clone(), &ns).patch(&cm_name, &params, &Patch::Apply(&cm)).await
    {
        return Err(apply_failed(gn, ctx, &ns, Error::Apply { kind: Child::ConfigMap, name: cm_name, source }).await);
    }
    let svc = children::service(gn, &owner);
    let svc_name = gn.service_name();
    if let Err(source) =
        Api::<Service>::namespaced(ctx.client.clone(), &ns).patch(&svc_name, &params, &Patch::Apply(&svc)).await
    {
        return Err(apply_failed(gn, ctx, &ns, Error::Apply { kind: Child::Service, name: svc_name, source }).await);
    }

    // 5. Status.
    let (ready, degraded) = outcome(&peers, gn.spec.bootstrap_peers.len(), config.p2p.bootstrap_peers.len());
    let old = gn.status.as_ref();
    let old_conditions = old.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let status = GossipNetworkStatus {
        observed_generation: gn.metadata.generation,
        conditions: status::conditions(old_conditions, gn.metadata.generation, now(), &ready, &degraded),
        ready_peers: i32::try_from(peers.addrs.len()).unwrap_or(i32::MAX),
        bootstrap_peers: config.p2p.bootstrap_peers.clone(),
        config_hash: Some(hash.clone()),
        config_map: Some(cm_name.clone()),
    };
    write_status(gn, ctx, &ns, &status).await?;
    ctx.metrics.set_ready_peers(&ns, &name, peers.addrs.len() as i64);

    // 6. Events, on changes only.
    let old_hash = old.and_then(|s| s.config_hash.as_deref());
    if old_hash != Some(hash.as_str()) {
        let note = format!("{cm_name} {hash}: {} markets, {}", config.markets.len(), ready.message);
        publish(ctx, gn, EventType::Normal, "ConfigApplied", "Reconcile", note).await;
    }
    let old_reason = |type_: &str| {
        old.and_then(|s| s.conditions.iter().find(|c| c.type_ == type_)).map(|c| (c.status.clone(), c.reason.clone()))
    };
    if !ready.status && old_reason("Ready") != Some(("False".into(), ready.reason.as_str().into())) {
        publish(ctx, gn, EventType::Warning, ready.reason.as_str(), "Reconcile", ready.message.clone()).await;
    }
    if degraded.reason == Reason::PeerIdMissing
        && old_reason("Degraded") != Some(("True".into(), degraded.reason.as_str().into()))
    {
        publish(ctx, gn, EventType::Warning, degraded.reason.as_str(), "Reconcile", degraded.message.clone()).await;
    }
    tracing::info!(
        network = %key, config_hash = %hash, bootstrap_peers = config.p2p.bootstrap_peers.len(),
        ready_peers = peers.addrs.len(), ready = ready.status, reason = ready.reason.as_str(), "reconciled"
    );
    Ok(Action::requeue(ctx.resync))
}

/// What `gn`'s sidecars should run, given the pods its podSelector selects: learns the
/// ready pods' peer ids ([`PeerIds`]), sorts the pods into bootstrap peers, and renders the
/// configuration with them and the member count (selected pods plus static peers; 0 while
/// none is selected, so the sidecars count whom they know). Used by every reconcile and by
/// `openmatch-gossip-operator render`.
///
/// Errors: the spec does not render ([`GossipNetwork::render`]).
pub async fn desired(
    gn: &GossipNetwork,
    pods: &[Pod],
    peer_ids: &PeerIds,
) -> Result<(PeerSet, openmatch_gossip_crds::SidecarConfig), SpecError> {
    let learned = peer_ids.learn(pods).await;
    let peers = peers::collect(pods, gn.spec.p2p_port, &learned);
    let members = match peers.selected() {
        0 => 0,
        pods => u32::try_from(pods + gn.spec.bootstrap_peers.len()).unwrap_or(u32::MAX),
    };
    let config = gn.render(&peers.addrs, members)?;
    Ok((peers, config))
}

/// The Ready and Degraded conditions for an applied configuration.
fn outcome(peers: &PeerSet, static_peers: usize, bootstrap_peers: usize) -> (Cond, Cond) {
    let ready = if bootstrap_peers == 0 {
        Cond::new(
            false,
            Reason::NoPeers,
            format!(
                "no bootstrap peer: {} selected pods, none ready with a peer id, and no static bootstrap peers",
                peers.selected()
            ),
        )
    } else {
        Cond::new(
            true,
            Reason::Reconciled,
            format!("{bootstrap_peers} bootstrap peers ({} ready pods, {static_peers} static)", peers.addrs.len()),
        )
    };
    let degraded = if !peers.without_peer_id.is_empty() {
        let pods: Vec<String> = peers.without_peer_id.iter().map(|(pod, why)| format!("{pod}: {why}")).collect();
        Cond::new(
            true,
            Reason::PeerIdMissing,
            format!("ready pods left out of the bootstrap list: {}", pods.join("; ")),
        )
    } else if !peers.not_ready.is_empty() {
        Cond::new(true, Reason::PodsNotReady, format!("selected pods not ready: {}", peers.not_ready.join(", ")))
    } else {
        Cond::new(false, Reason::AllPodsReady, format!("{} selected pods, all bootstrap peers", peers.selected()))
    };
    (ready, degraded)
}

/// Reports an invalid spec: status `Ready=False/InvalidSpec` (the rest of the status, which
/// describes the configuration still applied, is kept), a Warning Event when the error is
/// new; nothing else is written.
async fn invalid_spec(gn: &GossipNetwork, ctx: &Context, ns: &str, err: SpecError) -> Result<Action, Error> {
    ctx.metrics.failure(FailureReason::InvalidSpec);
    tracing::warn!(network = %Context::key(gn), error = %err, "invalid GossipNetwork spec; nothing applied");
    let message = err.to_string();
    let ready = Cond::new(false, Reason::InvalidSpec, message.clone());
    let degraded = Cond::new(
        true,
        Reason::InvalidSpec,
        "the spec was not applied; the last applied configuration (if any) stays in force",
    );
    let old = gn.status.clone().unwrap_or_default();
    let status = GossipNetworkStatus {
        observed_generation: gn.metadata.generation,
        conditions: status::conditions(&old.conditions, gn.metadata.generation, now(), &ready, &degraded),
        ..old.clone()
    };
    write_status(gn, ctx, ns, &status).await?;
    let was = status::ready_condition(Some(&old));
    if was.is_none_or(|c| c.reason != Reason::InvalidSpec.as_str() || c.message != message) {
        publish(ctx, gn, EventType::Warning, Reason::InvalidSpec.as_str(), "Validate", message).await;
    }
    Ok(Action::await_change())
}

/// Best effort, after an apply failed: status `Ready=False/ApplyFailed` and a Warning
/// Event. Returns `err` for the error policy.
async fn apply_failed(gn: &GossipNetwork, ctx: &Context, ns: &str, err: Error) -> Error {
    let message = err.to_string();
    let ready = Cond::new(false, Reason::ApplyFailed, message.clone());
    let degraded = Cond::new(true, Reason::ApplyFailed, message.clone());
    let old = gn.status.clone().unwrap_or_default();
    let status = GossipNetworkStatus {
        conditions: status::conditions(&old.conditions, gn.metadata.generation, now(), &ready, &degraded),
        ..old
    };
    if let Err(e) = write_status(gn, ctx, ns, &status).await {
        tracing::debug!(error = %e, "could not record ApplyFailed in the status");
    }
    publish(ctx, gn, EventType::Warning, Reason::ApplyFailed.as_str(), "Reconcile", message).await;
    err
}

async fn write_status(gn: &GossipNetwork, ctx: &Context, ns: &str, status: &GossipNetworkStatus) -> Result<(), Error> {
    let api: Api<GossipNetwork> = Api::namespaced(ctx.client.clone(), ns);
    api.patch_status(
        &gn.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(status::apply_body(status)),
    )
    .await
    .map(drop)
    .map_err(|source| Error::WriteStatus { network: Context::key(gn), source })
}

/// Publishes an Event about `gn`; a failure is logged, not returned (Events are best effort).
async fn publish(ctx: &Context, gn: &GossipNetwork, type_: EventType, reason: &str, action: &str, note: String) {
    let mut note = note;
    if note.len() > 1000 {
        let mut cut = 1000;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
    }
    let event = Event { type_, reason: reason.into(), note: Some(note), action: action.into(), secondary: None };
    if let Err(e) = ctx.recorder.publish(&event, &gn.object_ref(&())).await {
        tracing::warn!(network = %Context::key(gn), reason, error = %e, "could not publish an Event");
    }
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_five_minutes() {
        let secs: Vec<u64> = (1..=12).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(backoff(0).as_secs(), 1);
        assert_eq!(backoff(u32::MAX).as_secs(), 300);
    }

    #[test]
    fn outcome_reasons() {
        let none = PeerSet::default();
        let (ready, degraded) = outcome(&none, 0, 0);
        assert_eq!((ready.status, ready.reason), (false, Reason::NoPeers));
        assert_eq!((degraded.status, degraded.reason), (false, Reason::AllPodsReady));

        let (ready, _) = outcome(&none, 1, 1);
        assert_eq!((ready.status, ready.reason), (true, Reason::Reconciled));

        let some = PeerSet {
            addrs: vec!["/ip4/10.0.0.1/tcp/4001/p2p/x".into()],
            not_ready: vec!["engine-2".into()],
            without_peer_id: vec![],
        };
        let (ready, degraded) = outcome(&some, 0, 1);
        assert!(ready.status);
        assert_eq!((degraded.status, degraded.reason), (true, Reason::PodsNotReady));
        assert!(degraded.message.contains("engine-2"));

        let missing = PeerSet { without_peer_id: vec![("engine-1".into(), "no annotation".into())], ..some };
        let (_, degraded) = outcome(&missing, 0, 1);
        assert_eq!((degraded.status, degraded.reason), (true, Reason::PeerIdMissing));
        assert!(degraded.message.contains("engine-1: no annotation"));
    }
}
