//! Leader election against a scripted mock API server: the Lease requests and bodies of
//! client-go's algorithm (create, respect a valid lease, take over an expired one with a
//! resourceVersion-guarded update, renew, lose a race, release), and stepping down.
//!
//! Times: `try_acquire_or_renew(now)` takes this replica's monotonic clock explicitly, so
//! lease expiry is tested without waiting. The `hold` tests run on tokio's paused clock.

use std::time::Duration;

use http::Method;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use openmatch_gossip_operator::leader::{Held, LeaderElector, LeaseSettings};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::common::{ApiServer, Call, mock_client};

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases";
const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases/openmatch-gossip-operator";

fn settings() -> LeaseSettings {
    // client-go's defaults: 15 s lease, 10 s renew deadline, 2 s retry period.
    LeaseSettings::new("openmatch-gossip-operator", "ops", "op-0")
}

fn elector() -> (LeaderElector, ApiServer) {
    let (client, server) = mock_client();
    (LeaderElector::new(Api::<Lease>::namespaced(client, "ops"), settings()), server)
}

fn lease(holder: &str, renew: &str, transitions: i32, resource_version: &str) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "openmatch-gossip-operator", "namespace": "ops", "resourceVersion": resource_version},
        "spec": {
            "holderIdentity": holder, "leaseDurationSeconds": 15,
            "acquireTime": "2025-01-01T00:00:00.000000Z", "renewTime": renew,
            "leaseTransitions": transitions,
        },
    })
}

/// Responds to the `PUT` with its body at a new resourceVersion, and returns the body.
fn accept(call: Call, resource_version: &str) -> Value {
    let mut body = call.body.clone();
    body["metadata"]["resourceVersion"] = json!(resource_version);
    call.ok(body.clone());
    body
}

#[tokio::test]
async fn creates_the_lease_when_there_is_none() {
    let (mut e, mut server) = elector();
    let t0 = Instant::now();
    let attempt = tokio::spawn(async move { (e.try_acquire_or_renew(t0).await, e) });
    server.expect(Method::GET, LEASE).await.error(404, "NotFound", "leases \"openmatch-gossip-operator\" not found");
    let create = server.expect(Method::POST, LEASES).await;
    let spec = &create.body["spec"];
    assert_eq!(spec["holderIdentity"], "op-0");
    assert_eq!(spec["leaseDurationSeconds"], 15);
    assert_eq!(spec["leaseTransitions"], 0);
    assert!(spec["renewTime"].is_string() && spec["acquireTime"].is_string());
    assert_eq!(create.body["metadata"]["name"], "openmatch-gossip-operator");
    accept(create, "1");
    let (result, e) = server.settle(attempt).await;
    assert!(result.unwrap());
    assert!(e.is_leader());
}

#[tokio::test]
async fn respects_a_valid_lease_and_takes_over_only_after_it_expires() {
    let (mut e, mut server) = elector();
    let t0 = Instant::now();
    let other = lease("op-1", "2025-01-01T00:00:10.000000Z", 4, "50");

    // Held by op-1, just observed: no update.
    let attempt = tokio::spawn(async move { (e.try_acquire_or_renew(t0).await, e) });
    server.expect(Method::GET, LEASE).await.ok(other.clone());
    let (result, mut e) = server.settle(attempt).await;
    assert!(!result.unwrap());
    assert!(!e.is_leader());

    // 14 s later by our clock, the same record: still valid (15 s from our observation).
    let attempt = tokio::spawn(async move { (e.try_acquire_or_renew(t0 + Duration::from_secs(14)).await, e) });
    server.expect(Method::GET, LEASE).await.ok(other.clone());
    let (result, mut e) = server.settle(attempt).await;
    assert!(!result.unwrap());

    // 16 s: expired. Take over with an update guarded by the resourceVersion we read.
    let attempt = tokio::spawn(async move { (e.try_acquire_or_renew(t0 + Duration::from_secs(16)).await, e) });
    server.expect(Method::GET, LEASE).await.ok(other.clone());
    let put = server.expect(Method::PUT, LEASE).await;
    assert_eq!(put.body["metadata"]["resourceVersion"], "50");
    assert_eq!(put.body["spec"]["holderIdentity"], "op-0");
    assert_eq!(put.body["spec"]["leaseTransitions"], 5, "a takeover counts a transition");
    assert_ne!(put.body["spec"]["acquireTime"], other["spec"]["acquireTime"]);
    accept(put, "51");
    let (result, e) = server.settle(attempt).await;
    assert!(result.unwrap());
    assert!(e.is_leader());
}

#[tokio::test]
async fn a_renewed_record_restarts_the_expiry_clock() {
    let (mut e, mut server) = elector();
    let t0 = Instant::now();
    let attempt = tokio::spawn(async move { (e.try_acquire_or_renew(t0).await, e) });
    server.expect(Method::GET, LEASE).await.ok(lease("op-1", "2025-01-01T00:00:10.000000Z", 1, "50"));
    let (_, mut e) = server.settle(attempt).await;

    // op-1 renewed (new renewTime): observed at t0+14 s.
    let attempt = tokio::spawn(async move { (e.try_acquire_or_renew(t0 + Duration::from_secs(14)).await, e) });
    server.expect(Method::GET, LEASE).await.ok(lease("op-1", "2025-01-01T00:00:24.000000Z", 1, "57"));
    let (result, mut e) = server.settle(attempt).await;
    assert!(!result.unwrap());

    // t0+20 s is only 6 s after that observation: no takeover (no PUT).
    let attempt = tokio::spawn(async move { (e.try_acquire_or_renew(t0 + Duration::from_secs(20)).await, e) });
    server.expect(Method::GET, LEASE).await.ok(lease("op-1", "2025-01-01T00:00:24.000000Z", 1, "57"));
    let (result, e) = server.settle(attempt).await;
    assert!(!result.unwrap());
    drop(e);
    server.assert_no_more_requests().await;
}

#[tokio::test]
async fn losing_the_update_race_is_not_leading() {
    let (mut e, mut server) = elector();
    let t0 = Instant::now();
    // An empty holder (released lease) is free at once.
    let attempt = tokio::spawn(async move { (e.try_acquire_or_renew(t0).await, e) });
    server.expect(Method::GET, LEASE).await.ok(lease("", "2025-01-01T00:00:10.000000Z", 2, "60"));
    let put = server.expect(Method::PUT, LEASE).await;
    assert_eq!(put.body["metadata"]["resourceVersion"], "60");
    put.error(409, "Conflict", "the object has been modified; please apply your changes to the latest version");
    let (result, e) = server.settle(attempt).await;
    assert!(!result.unwrap());
    assert!(!e.is_leader());
}

#[tokio::test]
async fn renewal_keeps_acquire_time_and_transitions_and_release_frees_the_lease() {
    let (mut e, mut server) = elector();
    let t0 = Instant::now();
    let ours = lease("op-0", "2025-01-01T00:00:10.000000Z", 3, "70");
    let attempt = tokio::spawn(async move { (e.try_acquire_or_renew(t0).await, e) });
    server.expect(Method::GET, LEASE).await.ok(ours.clone());
    let put = server.expect(Method::PUT, LEASE).await;
    assert_eq!(put.body["metadata"]["resourceVersion"], "70");
    assert_eq!(put.body["spec"]["acquireTime"], ours["spec"]["acquireTime"]);
    assert_eq!(put.body["spec"]["leaseTransitions"], 3, "a renewal is not a transition");
    assert_ne!(put.body["spec"]["renewTime"], ours["spec"]["renewTime"]);
    accept(put, "71");
    let (result, mut e) = server.settle(attempt).await;
    assert!(result.unwrap());

    // client-go's release: empty holder, 1 s duration, transitions kept, guarded update.
    let release = tokio::spawn(async move { (e.release().await, e) });
    let put = server.expect(Method::PUT, LEASE).await;
    assert_eq!(put.body["metadata"]["resourceVersion"], "71");
    assert_eq!(put.body["spec"]["holderIdentity"], "");
    assert_eq!(put.body["spec"]["leaseDurationSeconds"], 1);
    assert_eq!(put.body["spec"]["leaseTransitions"], 3);
    accept(put, "72");
    let (result, mut e) = server.settle(release).await;
    result.unwrap();
    assert!(!e.is_leader());
    // Not leading: releasing again sends nothing.
    let release = tokio::spawn(async move { e.release().await });
    server.settle(release).await.unwrap();
    server.assert_no_more_requests().await;
}

#[tokio::test(start_paused = true)]
async fn hold_steps_down_when_renewals_fail_past_the_deadline() {
    let (mut e, mut server) = elector();
    let attempt = tokio::spawn(async move { (e.try_acquire_or_renew(Instant::now()).await, e) });
    server.expect(Method::GET, LEASE).await.error(404, "NotFound", "not found");
    accept(server.expect(Method::POST, LEASES).await, "1");
    let (result, mut e) = server.settle(attempt).await;
    assert!(result.unwrap());

    let started = Instant::now();
    let mut hold = tokio::spawn(async move { e.hold(std::future::pending()).await });
    // Every renewal fails: at 2, 4, 6, 8 s; the deadline is 10 s after the last success.
    let mut failures = 0;
    let held = loop {
        tokio::select! {
            held = &mut hold => break held.unwrap(),
            call = server.try_next() => match call {
                Some(call) => {
                    assert_eq!((call.method.clone(), call.path.as_str()), (Method::GET, LEASE));
                    call.error(503, "ServiceUnavailable", "apiserver overloaded");
                    failures += 1;
                }
                // `hold` returned and dropped the client.
                None => break (&mut hold).await.unwrap(),
            },
        }
    };
    assert_eq!(held, Held::Lost);
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_secs(10) && elapsed < Duration::from_secs(13), "{elapsed:?}");
    assert!(failures >= 4, "{failures} renewal attempts");
}

#[tokio::test(start_paused = true)]
async fn hold_steps_down_at_once_when_another_replica_holds_the_lease() {
    let (mut e, mut server) = elector();
    let attempt = tokio::spawn(async move { (e.try_acquire_or_renew(Instant::now()).await, e) });
    server.expect(Method::GET, LEASE).await.ok(lease("op-0", "2025-01-01T00:00:10.000000Z", 1, "80"));
    accept(server.expect(Method::PUT, LEASE).await, "81");
    let (result, mut e) = server.settle(attempt).await;
    assert!(result.unwrap());

    let started = Instant::now();
    let hold = tokio::spawn(async move { e.hold(std::future::pending()).await });
    // The first renewal finds op-1 as holder (e.g. after a long pause of this process).
    server.expect(Method::GET, LEASE).await.ok(lease("op-1", "2025-01-01T00:01:00.000000Z", 2, "90"));
    assert_eq!(hold.await.unwrap(), Held::Lost);
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn hold_renews_until_shutdown() {
    let (mut e, mut server) = elector();
    let attempt = tokio::spawn(async move { (e.try_acquire_or_renew(Instant::now()).await, e) });
    server.expect(Method::GET, LEASE).await.error(404, "NotFound", "not found");
    accept(server.expect(Method::POST, LEASES).await, "1");
    let (_, mut e) = server.settle(attempt).await;

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let hold = tokio::spawn(async move {
        let held = e
            .hold(async {
                let _ = stop_rx.await;
            })
            .await;
        (held, e)
    });
    let mut lease_body = json!(null);
    let mut version = 1;
    for _ in 0..3 {
        let get = server.expect(Method::GET, LEASE).await;
        if lease_body.is_null() {
            lease_body = lease("op-0", "2025-01-01T00:00:10.000000Z", 0, "1");
        }
        get.ok(lease_body.clone());
        let put = server.expect(Method::PUT, LEASE).await;
        assert_eq!(put.body["spec"]["holderIdentity"], "op-0");
        version += 1;
        lease_body = accept(put, &version.to_string());
    }
    stop_tx.send(()).unwrap();
    let (held, e) = hold.await.unwrap();
    assert_eq!(held, Held::Shutdown);
    assert!(e.is_leader());
}

#[tokio::test(start_paused = true)]
async fn acquire_retries_until_shutdown() {
    let (mut e, mut server) = elector();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let acquire = tokio::spawn(async move {
        e.acquire(async {
            let _ = stop_rx.await;
        })
        .await
    });
    for _ in 0..3 {
        server.expect(Method::GET, LEASE).await.ok(lease("op-1", "2025-01-01T00:00:10.000000Z", 1, "5"));
    }
    stop_tx.send(()).unwrap();
    assert!(!acquire.await.unwrap());
}
