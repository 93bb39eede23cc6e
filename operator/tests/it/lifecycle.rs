//! The operator process's life ([`app::run_with`]) against a mock API server: it waits for
//! the leader Lease, runs the controller only while leading, releases the Lease on
//! shutdown, and stops the controller and fails when leadership is lost.

use std::time::Duration;

use clap::Parser as _;
use http::Method;
use openmatch_gossip_operator::app;
use openmatch_gossip_operator::cli::{Cli, Command, RunArgs};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::common::{ApiServer, Call, mock_client};

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases";
const NETWORKS: &str = "/apis/gossip.openmatch.io/v1alpha1/gossipnetworks";

fn args() -> RunArgs {
    let cli = Cli::try_parse_from([
        "openmatch-gossip-operator",
        "run",
        "--http-addr=127.0.0.1:0",
        "--lease-namespace=ops",
        "--identity=op-0",
        "--lease-duration-s=3",
        "--renew-deadline-s=2",
        "--retry-period-s=1",
    ])
    .unwrap();
    let Command::Run(args) = cli.command else { unreachable!() };
    *args
}

/// What the mock saw.
#[derive(Default, Debug)]
struct Seen {
    /// Lease requests, in order: (method, body).
    lease: Vec<(Method, Value)>,
    /// List/watch requests of the controller, by path.
    watched: Vec<String>,
}

/// Serves the controller's lists (empty) and watches (held open), and the Lease with
/// `lease`: called with each Lease request, it answers it. `controller_started` is told
/// when the controller's first GossipNetwork request arrives. Returns what it saw once
/// every client is gone.
async fn serve(mut api: ApiServer, mut lease: impl FnMut(Call), controller_started: oneshot::Sender<()>) -> Seen {
    let mut seen = Seen::default();
    let mut held = Vec::new();
    let mut controller_started = Some(controller_started);
    while let Some(call) = api.try_next().await {
        if call.path.starts_with(LEASES) {
            seen.lease.push((call.method.clone(), call.body.clone()));
            lease(call);
        } else if call.method == Method::GET && !call.path.contains("/namespaces/") {
            if call.path == NETWORKS
                && let Some(tx) = controller_started.take()
            {
                let _ = tx.send(());
            }
            seen.watched.push(call.path.clone());
            if call.query.get("watch").map(String::as_str) == Some("true") {
                held.push(call);
            } else {
                call.ok(json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": []}));
            }
        } else {
            panic!("unexpected request {} {}", call.method, call.path);
        }
    }
    seen
}

fn accept(call: Call, resource_version: &str) {
    let mut body = call.body.clone();
    body["metadata"]["resourceVersion"] = json!(resource_version);
    call.ok(body);
}

#[tokio::test]
async fn leads_then_releases_the_lease_on_shutdown() {
    let (client, api) = mock_client();
    let shutdown = CancellationToken::new();
    let (started_tx, started_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let mut version = 1;
        let mut current: Option<Value> = None;
        serve(
            api,
            move |call| match (call.method.clone(), current.clone()) {
                (Method::GET, None) => call.error(404, "NotFound", "not found"),
                (Method::GET, Some(lease)) => call.ok(lease),
                (Method::POST | Method::PUT, _) => {
                    version += 1;
                    let mut body = call.body.clone();
                    body["metadata"]["resourceVersion"] = json!(version.to_string());
                    current = Some(body);
                    accept(call, &version.to_string());
                }
                (m, _) => panic!("unexpected lease request {m}"),
            },
            started_tx,
        )
        .await
    });
    let run = tokio::spawn(app::run_with(client, args(), shutdown.clone()));
    // The controller only starts once the Lease is ours; its first request says it runs.
    tokio::time::timeout(Duration::from_secs(10), started_rx).await.expect("the controller never started").unwrap();
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), run).await.expect("did not shut down").unwrap().unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(10), server).await.expect("clients still alive").unwrap();

    assert_eq!(seen.lease[0].0, Method::GET);
    assert_eq!(seen.lease[1].0, Method::POST, "{:?}", seen.lease);
    assert_eq!(seen.lease[1].1["spec"]["holderIdentity"], "op-0");
    let (last_method, last_body) = seen.lease.last().unwrap();
    assert_eq!(last_method, Method::PUT, "the last Lease request releases it");
    assert_eq!(last_body["spec"]["holderIdentity"], "", "{last_body}");
    assert_eq!(last_body["spec"]["leaseDurationSeconds"], 1);
    assert!(seen.watched.iter().any(|p| p == NETWORKS), "the controller ran: {:?}", seen.watched);
}

#[tokio::test]
async fn lost_leadership_stops_the_controller_and_fails() {
    let (client, api) = mock_client();
    let (started_tx, started_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let mut created = false;
        serve(
            api,
            move |call| match call.method {
                Method::GET if !created => call.error(404, "NotFound", "not found"),
                Method::POST => {
                    created = true;
                    accept(call, "2");
                }
                // Every renewal fails: the API server is unreachable for this replica.
                _ => call.error(503, "ServiceUnavailable", "apiserver unavailable"),
            },
            started_tx,
        )
        .await
    });
    let started = tokio::time::Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(10), app::run_with(client, args(), CancellationToken::new()))
        .await
        .expect("did not step down");
    let err = result.expect_err("lost leadership must fail the process");
    assert!(err.to_string().contains("leadership lost"), "{err:#}");
    // Renew deadline 2 s after the last renewal (at acquisition).
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_secs(2) && elapsed < Duration::from_secs(5), "{elapsed:?}");
    // Every client (controller included) is gone: the server loop ends.
    let seen = tokio::time::timeout(Duration::from_secs(10), server).await.expect("controller still running").unwrap();
    started_rx.await.expect("the controller never started");
    assert!(seen.lease.iter().all(|(m, _)| m != Method::PUT), "no release after losing: {:?}", seen.lease);
}

/// An API server that takes every request and never answers (a partition, an overloaded
/// control plane): after SIGTERM the operator is not ready at once, and exits within its
/// drain limit instead of waiting for the API server; the hung requests count as
/// `api_errors_total` only once they fail, so nothing is asserted about them here.
#[tokio::test]
async fn stops_in_time_and_unready_when_the_api_server_never_answers() {
    let (client, mut api) = mock_client();
    let (first_tx, first_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        let mut first = Some(first_tx);
        while let Some(call) = api.try_next().await {
            if let Some(tx) = first.take() {
                let _ = tx.send(());
            }
            held.push(call);
        }
    });
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cli = Cli::try_parse_from([
        "openmatch-gossip-operator",
        "run",
        &format!("--http-addr=127.0.0.1:{port}"),
        "--leader-elect=false",
        "--identity=op-0",
    ])
    .unwrap();
    let Command::Run(args) = cli.command else { unreachable!() };
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(app::run_with(client, *args, shutdown.clone()));
    tokio::time::timeout(Duration::from_secs(10), first_rx).await.expect("the controller never called").unwrap();
    let readyz = || async move {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        out.get(9..12).map(str::to_owned)
    };
    assert_eq!(readyz().await.as_deref(), Some("200"), "ready while running without election");

    let signalled = tokio::time::Instant::now();
    shutdown.cancel();
    // Not ready from the signal on: 503 while stopping (or the server already gone).
    let deadline = signalled + Duration::from_secs(2);
    loop {
        match readyz().await.as_deref() {
            Some("503") | None => break,
            other => assert!(tokio::time::Instant::now() < deadline, "/readyz {other:?} after SIGTERM"),
        }
        tokio::task::yield_now().await;
    }
    let limit = app::SHUTDOWN_DRAIN + Duration::from_secs(5);
    tokio::time::timeout(limit, run).await.expect("the operator did not stop within its drain limit").unwrap().unwrap();
    server.abort();
}
