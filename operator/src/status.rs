//! The GossipNetwork status the operator writes: conditions with reasons (Kubernetes API
//! conventions: `type`, `status` True/False/Unknown, CamelCase `reason`, human `message`,
//! `lastTransitionTime` changed only when `status` changes, `observedGeneration`).
//!
//! | condition | status | reason | when |
//! |---|---|---|---|
//! | `Ready` | True | `Reconciled` | config applied, at least one bootstrap peer |
//! | `Ready` | False | `NoPeers` | config applied, but no static peer and no ready selected pod with a peer id |
//! | `Ready` | False | `InvalidSpec` | the spec cannot be rendered; nothing was applied (the last good ConfigMap stays) |
//! | `Ready` | False | `ApplyFailed` | the API server refused or failed an apply; retried with backoff |
//! | `Degraded` | True | `PeerIdMissing` | ready selected pods whose peer id is not known (a bad `gossip.openmatch.io/peer-id` annotation, or no valid answer from the sidecar's `/peer-id`) |
//! | `Degraded` | True | `PodsNotReady` | some selected pods are not ready |
//! | `Degraded` | True | `InvalidSpec` / `ApplyFailed` | as for `Ready` |
//! | `Degraded` | False | `AllPodsReady` | every selected pod is a bootstrap peer |

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use openmatch_gossip_crds::GossipNetworkStatus;
use openmatch_gossip_crds::gossip_network::{CONDITION_DEGRADED, CONDITION_READY};

/// The `reason` of a condition the operator writes (CamelCase, Kubernetes API conventions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Ready=True: configuration applied, bootstrap peers present.
    Reconciled,
    /// Ready=False: no bootstrap peer at all.
    NoPeers,
    /// Ready=False, Degraded=True: the spec is invalid; nothing applied.
    InvalidSpec,
    /// Ready=False, Degraded=True: applying a child failed.
    ApplyFailed,
    /// Degraded=True: ready pods without a usable peer id.
    PeerIdMissing,
    /// Degraded=True: selected pods not ready.
    PodsNotReady,
    /// Degraded=False: every selected pod is a peer.
    AllPodsReady,
}

impl Reason {
    /// The reason as written in the condition (and as an Event reason), e.g. `NoPeers`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Reconciled => "Reconciled",
            Reason::NoPeers => "NoPeers",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::ApplyFailed => "ApplyFailed",
            Reason::PeerIdMissing => "PeerIdMissing",
            Reason::PodsNotReady => "PodsNotReady",
            Reason::AllPodsReady => "AllPodsReady",
        }
    }
}

/// One condition's desired value, before times are filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cond {
    /// `True` or `False`.
    pub status: bool,
    /// Why the condition has this status.
    pub reason: Reason,
    /// Human-readable detail (may be empty).
    pub message: String,
}

impl Cond {
    /// A condition with the given status, reason and message.
    pub fn new(status: bool, reason: Reason, message: impl Into<String>) -> Self {
        Self { status, reason, message: message.into() }
    }
}

fn condition(type_: &str, c: &Cond, old: &[Condition], generation: Option<i64>, now: &Time) -> Condition {
    let status = if c.status { "True" } else { "False" };
    let last_transition_time = old
        .iter()
        .find(|o| o.type_ == type_ && o.status == status)
        .map(|o| o.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: c.reason.as_str().to_owned(),
        message: c.message.clone(),
        observed_generation: generation,
        last_transition_time,
    }
}

/// The `Ready` and `Degraded` conditions, keeping each one's `lastTransitionTime` from
/// `old` while its status is unchanged, else `now`.
pub fn conditions(
    old: &[Condition],
    generation: Option<i64>,
    now: Time,
    ready: &Cond,
    degraded: &Cond,
) -> Vec<Condition> {
    vec![
        condition(CONDITION_READY, ready, old, generation, &now),
        condition(CONDITION_DEGRADED, degraded, old, generation, &now),
    ]
}

/// The `Ready` condition of `status`, if any.
pub fn ready_condition(status: Option<&GossipNetworkStatus>) -> Option<&Condition> {
    status?.conditions.iter().find(|c| c.type_ == CONDITION_READY)
}

/// The server-side apply body for the status subresource.
pub fn apply_body(status: &GossipNetworkStatus) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "gossip.openmatch.io/v1alpha1",
        "kind": "GossipNetwork",
        "status": status,
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let ready = Cond::new(true, Reason::Reconciled, "3 peers");
        let degraded = Cond::new(false, Reason::AllPodsReady, "");
        let first = conditions(&[], Some(1), t(100), &ready, &degraded);
        assert_eq!(first[0].type_, "Ready");
        assert_eq!(first[0].status, "True");
        assert_eq!(first[0].last_transition_time, t(100));
        assert_eq!(first[0].observed_generation, Some(1));

        // Same status, new message and generation: time kept.
        let ready2 = Cond::new(true, Reason::Reconciled, "4 peers");
        let second = conditions(&first, Some(2), t(200), &ready2, &degraded);
        assert_eq!(second[0].last_transition_time, t(100));
        assert_eq!(second[0].message, "4 peers");
        assert_eq!(second[0].observed_generation, Some(2));

        // Status flips: time moves.
        let not_ready = Cond::new(false, Reason::NoPeers, "");
        let third = conditions(&second, Some(2), t(300), &not_ready, &degraded);
        assert_eq!(third[0].last_transition_time, t(300));
        assert_eq!(third[0].reason, "NoPeers");
        assert_eq!(third[1].last_transition_time, t(100));
    }

    #[test]
    fn apply_body_names_the_kind() {
        let body = apply_body(&GossipNetworkStatus { ready_peers: 2, ..Default::default() });
        assert_eq!(body["apiVersion"], "gossip.openmatch.io/v1alpha1");
        assert_eq!(body["kind"], "GossipNetwork");
        assert_eq!(body["status"]["readyPeers"], 2);
    }
}
