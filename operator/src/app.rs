//! `openmatch-gossip-operator run`: HTTP endpoints, leader election, the controller, and
//! a clean shutdown on SIGTERM/SIGINT.
//!
//! Life of a replica:
//! 1. serve `/metrics`, `/healthz`, `/readyz` (phase `starting`);
//! 2. with leader election (default): wait for the Lease (phase `standby`), then run the
//!    controller while renewing it (phase `leader`). If renewal fails for the renew
//!    deadline, or another holder appears, the controller is aborted at once and the process
//!    exits with an error, so Kubernetes restarts it as a candidate (what client-go based
//!    controllers do). Without election the controller runs at once;
//! 3. on SIGTERM/SIGINT (phase `shutting-down` at once: `/readyz` 503): the controller
//!    stops taking work and running reconciles finish (at most renew deadline − retry
//!    period with election, so the Lease is still ours meanwhile; [`SHUTDOWN_DRAIN`]
//!    without; longer ones are aborted, e.g. waiting on an API server that does not
//!    answer), the Lease is released (a standby takes over within about a second), the
//!    HTTP server stops, exit 0.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use kube::runtime::events::{Recorder, Reporter};
use kube::{Api, Client};
use openmatch_gossip_crds::runtime;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::children::FIELD_MANAGER;
use crate::cli::RunArgs;
use crate::health::{Health, Lifecycle};
use crate::leader::{Held, LeaderElector, LeaseSettings};
use crate::metrics::Metrics;
use crate::reconcile::Context;

/// How long, after SIGTERM, running reconciles (without leader election) and the webhook's
/// open requests may take before they are aborted. Under the chart's 30 s grace period.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(10);

/// This replica's identity: `--identity`, else `$POD_NAME`, `$HOSTNAME`, else
/// `openmatch-gossip-operator-<pid>`.
pub fn identity(flag: Option<&str>) -> String {
    flag.map(str::to_owned)
        .or_else(|| std::env::var("POD_NAME").ok().filter(|s| !s.is_empty()))
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| format!("{FIELD_MANAGER}-{}", std::process::id()))
}

/// Completes on SIGTERM or SIGINT.
async fn termination_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the operator");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; shutting down"),
    }
}

/// Runs the operator until SIGTERM/SIGINT (`Ok`) or lost leadership (`Err`).
///
/// Errors: no Kubernetes configuration, the HTTP address cannot be bound, invalid
/// leader election timing, or leadership lost.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let client = Client::try_default().await.context("Kubernetes client (in-cluster config or kubeconfig)")?;
    let shutdown = CancellationToken::new();
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            termination_signal().await;
            shutdown.cancel();
        });
    }
    run_with(client, args, shutdown).await
}

/// [`run`] with a given client, until `shutdown` is cancelled (what SIGTERM/SIGINT do).
pub async fn run_with(client: Client, args: RunArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let health = Arc::new(Health::default());
    let http_stop = CancellationToken::new();
    let (addr, http_task) = runtime::serve_http(
        args.http_addr,
        Arc::new(registry),
        health.clone(),
        None,
        http_stop.clone().cancelled_owned(),
    )
    .await
    .with_context(|| format!("binding the HTTP server to {}", args.http_addr))?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");

    let identity = identity(args.identity.as_deref());
    let reporter = Reporter { controller: FIELD_MANAGER.into(), instance: Some(identity.clone()) };
    // Not ready from the moment the signal arrives, whatever the rest of the shutdown waits for.
    {
        let (health, shutdown) = (health.clone(), shutdown.clone());
        tokio::spawn(async move {
            shutdown.cancelled().await;
            health.set(Lifecycle::ShuttingDown);
        });
    }
    let recorder = Recorder::new(client.clone(), reporter);
    let webhook_stop = shutdown.child_token();
    let webhook_task = args.webhook_addr.map(|addr| {
        let settings = webhook_settings(&args, addr, client.default_namespace());
        tokio::spawn(crate::webhook::run(
            client.clone(),
            settings,
            metrics.clone(),
            recorder.clone(),
            webhook_stop.clone(),
        ))
    });
    let mut ctx = Context::new(client.clone(), recorder, metrics.clone());
    ctx.resync = Duration::from_secs(args.resync_s.max(1));
    let ctx = Arc::new(ctx);
    let debounce = Duration::from_millis(args.debounce_ms);

    let result = if args.leader_elect {
        let settings = LeaseSettings {
            name: args.lease_name.clone(),
            namespace: args.lease_namespace.clone().unwrap_or_else(|| client.default_namespace().to_owned()),
            identity,
            lease_duration: Duration::from_secs(args.lease_duration_s),
            renew_deadline: Duration::from_secs(args.renew_deadline_s),
            retry_period: Duration::from_secs(args.retry_period_s),
        };
        settings.validate().map_err(|e| anyhow!("leader election: {e}"))?;
        tracing::info!(lease = %settings.name, namespace = %settings.namespace, identity = %settings.identity, "waiting for the leader lease");
        let mut elector = LeaderElector::new(Api::namespaced(client.clone(), &settings.namespace), settings)
            .with_metrics(metrics.clone());
        health.set(Lifecycle::Standby);
        if elector.acquire(shutdown.cancelled()).await {
            lead(&mut elector, ctx, args.namespace.clone(), debounce, &shutdown, &health, &metrics).await
        } else {
            Ok(())
        }
    } else {
        tracing::warn!("leader election is off: run only one replica");
        health.set(Lifecycle::Leader);
        metrics.leader.set(1);
        let mut controller = tokio::spawn(crate::controller::run(
            ctx,
            args.namespace.clone(),
            debounce,
            shutdown.clone().cancelled_owned(),
        ));
        tokio::select! {
            _ = &mut controller => {}
            _ = shutdown.cancelled() => {
                // Running reconciles may wait on an API server that does not answer:
                // they get SHUTDOWN_DRAIN, then are aborted.
                if tokio::time::timeout(SHUTDOWN_DRAIN, &mut controller).await.is_err() {
                    tracing::warn!(drain_s = SHUTDOWN_DRAIN.as_secs(), "reconciles still running at the drain limit; aborted");
                    controller.abort();
                }
            }
        }
        metrics.leader.set(0);
        Ok(())
    };
    health.set(Lifecycle::ShuttingDown);
    webhook_stop.cancel();
    if let Some(mut task) = webhook_task {
        match tokio::time::timeout(SHUTDOWN_DRAIN, &mut task).await {
            Ok(Ok(Err(e))) => tracing::error!(error = %format!("{e:#}"), "the webhook failed"),
            Ok(Err(e)) => tracing::error!(error = %e, "the webhook task panicked"),
            Ok(Ok(Ok(()))) => {}
            Err(_) => {
                tracing::warn!(drain_s = SHUTDOWN_DRAIN.as_secs(), "the webhook did not stop in time; aborted");
                task.abort();
            }
        }
    }
    http_stop.cancel();
    let _ = http_task.await;
    result
}

/// The webhook's settings from the flags; `namespace` is the operator's own (the Secret's
/// and the Service's).
fn webhook_settings(args: &RunArgs, addr: std::net::SocketAddr, namespace: &str) -> crate::webhook::WebhookSettings {
    crate::webhook::WebhookSettings {
        addr,
        cert: crate::webhook_cert::CertSource {
            namespace: namespace.to_owned(),
            secret: args.webhook_secret.clone(),
            service: args.webhook_service.clone(),
            provision: (!args.webhook_cert_manager).then(|| args.webhook_configuration.clone()),
        },
        template: args.sidecar.template(),
        namespace: args.namespace.clone(),
    }
}

/// Leads: runs the controller while holding the Lease (see the module documentation).
async fn lead(
    elector: &mut LeaderElector,
    ctx: Arc<Context>,
    namespace: Option<String>,
    debounce: Duration,
    shutdown: &CancellationToken,
    health: &Health,
    metrics: &Metrics,
) -> anyhow::Result<()> {
    tracing::info!(identity = %elector.settings().identity, "leading: starting the controller");
    health.set(Lifecycle::Leader);
    metrics.leader.set(1);
    let stop = CancellationToken::new();
    let mut controller = tokio::spawn(crate::controller::run(ctx, namespace, debounce, stop.clone().cancelled_owned()));
    let held = tokio::select! {
        held = elector.hold(shutdown.cancelled()) => Some(held),
        _ = &mut controller => None,
    };
    metrics.leader.set(0);
    health.set(Lifecycle::ShuttingDown);
    stop.cancel();
    match held {
        None => {
            // The controller only ends when told to; anything else is a bug or a panic.
            let _ = elector.release().await;
            Err(anyhow!("the controller stopped unexpectedly"))
        }
        Some(Held::Shutdown) => {
            let s = elector.settings();
            let drain = s.renew_deadline.saturating_sub(s.retry_period);
            if tokio::time::timeout(drain, &mut controller).await.is_err() {
                tracing::warn!(drain_s = drain.as_secs(), "reconciles still running at the drain limit; aborted");
                controller.abort();
            }
            match elector.release().await {
                Ok(()) => tracing::info!("leader lease released"),
                Err(e) => tracing::warn!(error = %e, "could not release the leader lease; it expires by itself"),
            }
            Ok(())
        }
        Some(Held::Lost) => {
            controller.abort();
            let _ = controller.await;
            Err(anyhow!("leadership lost (lease not renewed in time or taken over); exiting to restart as a candidate"))
        }
    }
}
