//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several operator
//! replicas only one reconciles at a time.
//!
//! This follows client-go's `tools/leaderelection` (the algorithm every Kubernetes
//! controller manager uses), with the same defaults:
//!
//! - **Try to acquire or renew** ([`LeaderElector::try_acquire_or_renew`]): `GET` the Lease
//!   (`POST` it with this replica as holder if it does not exist). When its record
//!   (the Lease spec) differs from the last one seen, remember it and *when it was seen* on
//!   this replica's monotonic clock. If another replica holds it and the record changed less
//!   than `leaseDurationSeconds` ago (by that local observation time, so clock skew between
//!   nodes does not matter), give up for now. Otherwise `PUT` the Lease with this replica as
//!   holder and `renewTime = now` (keeping `acquireTime` and `leaseTransitions` when
//!   renewing, incrementing `leaseTransitions` when taking over). The `PUT` carries the
//!   `resourceVersion` from the `GET`, so of two replicas racing for an expired Lease the
//!   API server accepts one and answers the other `409 Conflict`.
//! - **Acquire** ([`LeaderElector::acquire`]): try every `retryPeriod` (jittered up to
//!   +20 %) until leading or shut down.
//! - **Hold** ([`LeaderElector::hold`]): renew every `retryPeriod`; each attempt is bounded
//!   by the time left until `renewDeadline` after the last successful renewal. When that
//!   deadline passes without a renewal, or another holder appears, leadership is lost and
//!   the caller must stop reconciling at once. Because `renewDeadline < leaseDuration`, the
//!   old leader stops before any other replica can consider the Lease expired.
//! - **Release** ([`LeaderElector::release`], on clean shutdown, client-go's
//!   `ReleaseOnCancel`): `PUT` the Lease with an empty holder and `leaseDurationSeconds: 1`,
//!   so a standby takes over within about a second instead of a full lease duration.
//!
//! Defaults (client-go / kube-controller-manager): lease duration 15 s, renew deadline 10 s,
//! retry period 2 s.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;
use tokio::time::Instant;

/// Lease name, namespace, this replica's identity and the timing (client-go semantics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSettings {
    /// Name of the Lease object, e.g. `openmatch-gossip-operator`.
    pub name: String,
    /// Namespace of the Lease (usually the operator's own).
    pub namespace: String,
    /// This replica's identity, unique among replicas (the pod name).
    pub identity: String,
    /// How long a Lease is honoured after its last observed change. Default 15 s.
    pub lease_duration: Duration,
    /// How long the leader keeps retrying a failed renewal before stepping down; must be
    /// shorter than `lease_duration`. Default 10 s.
    pub renew_deadline: Duration,
    /// Interval between attempts to acquire or renew. Default 2 s.
    pub retry_period: Duration,
}

impl LeaseSettings {
    /// Settings with client-go's (and kube-controller-manager's) default timing: lease
    /// duration 15 s, renew deadline 10 s, retry period 2 s.
    pub fn new(name: impl Into<String>, namespace: impl Into<String>, identity: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    /// client-go's constraints: `lease_duration > renew_deadline > 1.2 × retry_period > 0`,
    /// whole seconds for the lease duration (the Lease stores seconds), non-empty names.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty() || self.namespace.is_empty() || self.identity.is_empty() {
            return Err("lease name, namespace and identity must be non-empty".into());
        }
        if self.retry_period.is_zero() {
            return Err("the retry period must be positive".into());
        }
        if self.lease_duration <= self.renew_deadline {
            return Err("the lease duration must be longer than the renew deadline".into());
        }
        if self.renew_deadline.as_secs_f64() <= 1.2 * self.retry_period.as_secs_f64() {
            return Err("the renew deadline must be longer than 1.2 × the retry period".into());
        }
        if self.lease_duration.subsec_nanos() != 0 || self.lease_duration.as_secs() > i32::MAX as u64 {
            return Err("the lease duration must be a whole number of seconds".into());
        }
        Ok(())
    }
}

/// How [`LeaderElector::hold`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// Shutdown was requested while leading; the caller stops, then [`LeaderElector::release`]s.
    Shutdown,
    /// Renewal failed until the renew deadline, or another replica holds the Lease: the
    /// caller must stop reconciling immediately.
    Lost,
}

/// One replica's view of the Lease (see the module documentation).
pub struct LeaderElector {
    api: Api<Lease>,
    settings: LeaseSettings,
    /// The Lease as last read or written (its `resourceVersion` guards the next `PUT`).
    lease: Option<Lease>,
    /// The Lease record last seen and when it was first seen (local monotonic clock).
    observed: Option<(LeaseSpec, Instant)>,
    /// Where failed Lease requests are counted (`api_errors_total{operation="lease"}`).
    metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
}

impl LeaderElector {
    /// An elector for `settings` (validate them first) talking to the Lease API `api`
    /// (namespaced to `settings.namespace`).
    pub fn new(api: Api<Lease>, settings: LeaseSettings) -> Self {
        Self { api, settings, lease: None, observed: None, metrics: None }
    }

    /// Counts failed Lease requests in `metrics`.
    pub fn with_metrics(mut self, metrics: std::sync::Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn count_api_error(&self) {
        if let Some(m) = &self.metrics {
            m.api_error(crate::metrics::ApiOperation::Lease);
        }
    }

    /// This replica's settings.
    pub fn settings(&self) -> &LeaseSettings {
        &self.settings
    }

    /// Whether the last observed record names this replica as holder.
    pub fn is_leader(&self) -> bool {
        self.observed.as_ref().and_then(|(spec, _)| spec.holder_identity.as_deref()) == Some(&self.settings.identity)
    }

    /// Whether the observed record is still within its lease duration at `now`.
    fn lease_valid(&self, now: Instant) -> bool {
        match &self.observed {
            Some((spec, seen)) => {
                let secs = u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0);
                *seen + Duration::from_secs(secs) > now
            }
            None => false,
        }
    }

    fn observe(&mut self, lease: Lease, now: Instant) {
        let spec = lease.spec.clone().unwrap_or_default();
        if self.observed.as_ref().map(|(s, _)| s) != Some(&spec) {
            self.observed = Some((spec, now));
        }
        self.lease = Some(lease);
    }

    fn record(&self) -> LeaseSpec {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.settings.identity.clone()),
            lease_duration_seconds: Some(self.settings.lease_duration.as_secs() as i32),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_transitions: Some(0),
            ..Default::default()
        }
    }

    /// One attempt (client-go `tryAcquireOrRenew`) at `now` (this replica's monotonic
    /// clock). `Ok(true)`: this replica holds the Lease until `now + leaseDuration`;
    /// `Ok(false)`: another replica holds a valid Lease, or lost a write race (409).
    ///
    /// Errors: any other API error (the caller retries).
    pub async fn try_acquire_or_renew(&mut self, now: Instant) -> Result<bool, kube::Error> {
        let name = self.settings.name.clone();
        let current = match self.api.get_opt(&name).await? {
            Some(lease) => lease,
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(name),
                        namespace: Some(self.settings.namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(self.record()),
                };
                return match self.api.create(&PostParams::default(), &lease).await {
                    Ok(created) => {
                        self.observe(created, now);
                        Ok(true)
                    }
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e),
                };
            }
        };
        self.observe(current.clone(), now);
        let old = current.spec.clone().unwrap_or_default();
        let held = old.holder_identity.as_deref().is_some_and(|h| !h.is_empty());
        if held && self.lease_valid(now) && !self.is_leader() {
            return Ok(false);
        }
        let mut record = self.record();
        if self.is_leader() {
            record.acquire_time = old.acquire_time;
            record.lease_transitions = old.lease_transitions;
        } else {
            record.lease_transitions = Some(old.lease_transitions.unwrap_or(0).saturating_add(1));
        }
        let mut lease = current;
        lease.spec = Some(record);
        match self.api.replace(&self.settings.name, &PostParams::default(), &lease).await {
            Ok(updated) => {
                self.observe(updated, now);
                Ok(true)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up if this replica holds it (client-go `release`): empty holder,
    /// `leaseDurationSeconds: 1`, `leaseTransitions` kept, guarded by `resourceVersion`.
    /// Does nothing when not leading.
    ///
    /// Errors: the API error of the `PUT` (a 409 means another replica already took over).
    pub async fn release(&mut self) -> Result<(), kube::Error> {
        if !self.is_leader() {
            return Ok(());
        }
        let Some(mut lease) = self.lease.clone() else { return Ok(()) };
        let old = lease.spec.clone().unwrap_or_default();
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(String::new()),
            lease_duration_seconds: Some(1),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_transitions: old.lease_transitions,
            ..Default::default()
        });
        let updated = self.api.replace(&self.settings.name, &PostParams::default(), &lease).await?;
        self.observe(updated, Instant::now());
        Ok(())
    }

    /// Tries every `retryPeriod` (+0–20 % jitter) until this replica leads (`true`) or
    /// `shutdown` completes (`false`). API errors are logged and retried.
    pub async fn acquire(&mut self, shutdown: impl Future<Output = ()>) -> bool {
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            match self.try_acquire_or_renew(Instant::now()).await {
                Ok(true) => return true,
                Ok(false) => tracing::debug!(lease = %self.settings.name, "lease held by another replica"),
                Err(e) => {
                    self.count_api_error();
                    tracing::warn!(lease = %self.settings.name, error = %e, "could not acquire the lease")
                }
            }
            tokio::select! {
                _ = &mut shutdown => return false,
                _ = tokio::time::sleep(jittered(self.settings.retry_period)) => {}
            }
        }
    }

    /// While leading: renews every `retryPeriod` until `shutdown` completes
    /// ([`Held::Shutdown`]) or leadership is lost ([`Held::Lost`]: no successful renewal
    /// within `renewDeadline`, or another holder seen).
    pub async fn hold(&mut self, shutdown: impl Future<Output = ()>) -> Held {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut last_renew = Instant::now();
        loop {
            tokio::select! {
                _ = &mut shutdown => return Held::Shutdown,
                _ = tokio::time::sleep(self.settings.retry_period) => {}
            }
            let deadline = last_renew + self.settings.renew_deadline;
            let attempt = tokio::time::timeout_at(deadline, self.try_acquire_or_renew(Instant::now())).await;
            match attempt {
                Ok(Ok(true)) => last_renew = Instant::now(),
                Ok(Ok(false)) if !self.is_leader() => {
                    tracing::error!(lease = %self.settings.name, "another replica holds the lease");
                    return Held::Lost;
                }
                Ok(Ok(false)) => tracing::warn!(lease = %self.settings.name, "lease renewal conflicted; retrying"),
                Ok(Err(e)) => {
                    self.count_api_error();
                    tracing::warn!(lease = %self.settings.name, error = %e, "lease renewal failed; retrying")
                }
                Err(_) => {
                    self.count_api_error();
                    tracing::warn!(lease = %self.settings.name, "lease renewal timed out at the renew deadline");
                }
            }
            if last_renew + self.settings.renew_deadline <= Instant::now() {
                tracing::error!(lease = %self.settings.name, "lease not renewed within the renew deadline");
                return Held::Lost;
            }
        }
    }
}

/// `d` plus up to 20 % (client-go's `JitterFactor` 1.2), from the clock's sub-second bits.
fn jittered(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    d + d.mul_f64(0.2 * f64::from(nanos % 1000) / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> LeaseSettings {
        LeaseSettings::new("openmatch-gossip-operator", "ops", "op-0")
    }

    #[test]
    fn client_go_defaults_are_valid_and_constraints_hold() {
        settings().validate().unwrap();
        let bad = [
            LeaseSettings { renew_deadline: Duration::from_secs(15), ..settings() },
            LeaseSettings { retry_period: Duration::from_secs(9), ..settings() },
            LeaseSettings { retry_period: Duration::ZERO, ..settings() },
            LeaseSettings { lease_duration: Duration::from_millis(15_500), ..settings() },
            LeaseSettings { identity: String::new(), ..settings() },
        ];
        for s in bad {
            assert!(s.validate().is_err(), "{s:?}");
        }
    }

    #[test]
    fn jitter_is_at_most_twenty_percent() {
        for _ in 0..100 {
            let j = jittered(Duration::from_secs(2));
            assert!(j >= Duration::from_secs(2) && j <= Duration::from_millis(2400), "{j:?}");
        }
    }
}
