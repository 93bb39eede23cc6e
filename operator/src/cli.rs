//! Command line of `openmatch-gossip-operator`: `run` (the operator), `crdgen` (print or
//! write the CRD manifest), `inject` (manual sidecar injection) and `render` (the
//! ConfigMap for a network and its pods). Every `run` flag has an environment variable
//! (`OPENMATCH_GOSSIP_OPERATOR_*`); flags win over the environment.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use k8s_openapi::api::core::v1::ResourceRequirements;
use openmatch_gossip_crds::runtime::LogFormat;

/// Kubernetes operator for openmatch-gossip: reconciles GossipNetwork resources into the
/// sidecars' configuration (a ConfigMap with the live bootstrap peers) and a headless
/// Service, and reports status, Events and Prometheus metrics.
#[derive(Debug, Parser)]
#[command(name = "openmatch-gossip-operator", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the operator (in a cluster: in-cluster config; outside: the current kubeconfig
    /// context).
    Run(Box<RunArgs>),
    /// Print the GossipNetwork CustomResourceDefinition as YAML, or write it into the
    /// repository (`--write`).
    Crdgen(CrdgenArgs),
    /// Manual injection: print manifests with the sidecar injected into every pod (and pod
    /// template of a Deployment, StatefulSet, DaemonSet, ReplicaSet or Job) labelled
    /// `gossip.openmatch.io/network`, exactly as the admission webhook would. For clusters
    /// without the webhook, and to see what it does.
    Inject(InjectArgs),
    /// Print the ConfigMap the operator would render for a GossipNetwork and a list of pods
    /// (e.g. `kubectl get pods -o json`), asking each ready pod's sidecar for its peer id.
    Render(RenderArgs),
}

/// Flags of `openmatch-gossip-operator inject`.
#[derive(Debug, Clone, clap::Args)]
pub struct InjectArgs {
    /// Manifests to inject (YAML, several documents allowed); `-` reads stdin.
    #[arg(long, short = 'f', value_name = "FILE", default_value = "-")]
    pub file: PathBuf,

    /// GossipNetwork manifests the labels may name (the webhook looks them up in the
    /// cluster). Repeatable.
    #[arg(long = "network-file", value_name = "FILE", required = true)]
    pub network_files: Vec<PathBuf>,

    /// Namespace of objects (and networks) whose manifest names none.
    #[arg(long, short = 'n', value_name = "NS", default_value = "default")]
    pub namespace: String,

    /// What to inject.
    #[command(flatten)]
    pub sidecar: SidecarArgs,
}

/// Flags of `openmatch-gossip-operator render`.
#[derive(Debug, Clone, clap::Args)]
pub struct RenderArgs {
    /// The GossipNetwork manifest (YAML).
    #[arg(long = "network-file", value_name = "FILE")]
    pub network_file: PathBuf,

    /// The pods its podSelector selects, as a PodList or a list of Pods in JSON or YAML
    /// (`kubectl get pods -l ... -o json`); the selector is not applied again. `-` reads
    /// stdin. Default: no pods.
    #[arg(long, value_name = "FILE")]
    pub pods: Option<PathBuf>,
}

/// Flags of `openmatch-gossip-operator run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Watch GossipNetworks, pods and children in this namespace only. Default: all
    /// namespaces (needs cluster-wide RBAC).
    #[arg(long, env = "OPENMATCH_GOSSIP_OPERATOR_NAMESPACE", value_name = "NS")]
    pub namespace: Option<String>,

    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    #[arg(long, env = "OPENMATCH_GOSSIP_OPERATOR_HTTP_ADDR", value_name = "ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,

    /// Log format: json (clusters) or pretty (local). Filter with RUST_LOG (default info).
    #[arg(long, env = "OPENMATCH_GOSSIP_OPERATOR_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,

    /// Elect a leader on a coordination.k8s.io Lease so that only one replica reconciles.
    /// Turn off only when running a single replica (e.g. locally): --leader-elect=false.
    #[arg(
        long,
        env = "OPENMATCH_GOSSIP_OPERATOR_LEADER_ELECT",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_name = "BOOL"
    )]
    pub leader_elect: bool,

    /// Name of the leader election Lease.
    #[arg(
        long,
        env = "OPENMATCH_GOSSIP_OPERATOR_LEASE_NAME",
        value_name = "NAME",
        default_value = "openmatch-gossip-operator"
    )]
    pub lease_name: String,

    /// Namespace of the Lease. Default: the client's namespace (in a cluster, the
    /// operator's own, from its service account).
    #[arg(long, env = "OPENMATCH_GOSSIP_OPERATOR_LEASE_NAMESPACE", value_name = "NS")]
    pub lease_namespace: Option<String>,

    /// This replica's identity in the Lease and in Events. Default: $POD_NAME, else
    /// $HOSTNAME (the pod name in Kubernetes), else `openmatch-gossip-operator-<pid>`.
    #[arg(long, env = "OPENMATCH_GOSSIP_OPERATOR_IDENTITY", value_name = "ID")]
    pub identity: Option<String>,

    /// Lease duration, seconds: how long standbys wait after the Lease's last observed
    /// change before taking over (client-go default 15).
    #[arg(long, env = "OPENMATCH_GOSSIP_OPERATOR_LEASE_DURATION_S", value_name = "S", default_value_t = 15)]
    pub lease_duration_s: u64,

    /// Renew deadline, seconds: the leader steps down (and exits) when it could not renew
    /// for this long; must be shorter than the lease duration (client-go default 10).
    #[arg(long, env = "OPENMATCH_GOSSIP_OPERATOR_RENEW_DEADLINE_S", value_name = "S", default_value_t = 10)]
    pub renew_deadline_s: u64,

    /// Retry period, seconds, between attempts to acquire or renew the Lease (client-go
    /// default 2).
    #[arg(long, env = "OPENMATCH_GOSSIP_OPERATOR_RETRY_PERIOD_S", value_name = "S", default_value_t = 2)]
    pub retry_period_s: u64,

    /// Reconcile every GossipNetwork at least this often, seconds, even without a change
    /// (a safety net for missed watch events).
    #[arg(long, env = "OPENMATCH_GOSSIP_OPERATOR_RESYNC_S", value_name = "S", default_value_t = 300)]
    pub resync_s: u64,

    /// Debounce, ms: a burst of triggers for one GossipNetwork (pods starting together)
    /// within this window makes one reconcile.
    #[arg(long, env = "OPENMATCH_GOSSIP_OPERATOR_DEBOUNCE_MS", value_name = "MS", default_value_t = 500)]
    pub debounce_ms: u64,

    /// Serve the sidecar-injection admission webhook (HTTPS, `POST /mutate-pods`) on this
    /// address, e.g. 0.0.0.0:9443. Every replica serves it (not only the leader). Off
    /// unless set.
    #[arg(long, env = "OPENMATCH_GOSSIP_OPERATOR_WEBHOOK_ADDR", value_name = "ADDR")]
    pub webhook_addr: Option<SocketAddr>,

    /// Name of the webhook's Service in the operator's namespace: its DNS names go into the
    /// serving certificate.
    #[arg(
        long,
        env = "OPENMATCH_GOSSIP_OPERATOR_WEBHOOK_SERVICE",
        value_name = "NAME",
        default_value = "openmatch-gossip-webhook"
    )]
    pub webhook_service: String,

    /// `kubernetes.io/tls` Secret in the operator's namespace holding the webhook's serving
    /// certificate (`tls.crt`, `tls.key`, `ca.crt`).
    #[arg(
        long,
        env = "OPENMATCH_GOSSIP_OPERATOR_WEBHOOK_SECRET",
        value_name = "NAME",
        default_value = "openmatch-gossip-webhook-tls"
    )]
    pub webhook_secret: String,

    /// MutatingWebhookConfiguration whose `caBundle` the operator keeps current when it
    /// provisions the certificate itself.
    #[arg(
        long,
        env = "OPENMATCH_GOSSIP_OPERATOR_WEBHOOK_CONFIGURATION",
        value_name = "NAME",
        default_value = "openmatch-gossip-sidecar-injector"
    )]
    pub webhook_configuration: String,

    /// cert-manager issues the webhook's Secret and injects the `caBundle`; the operator
    /// only reads the Secret. Default: the operator provisions both (a private CA).
    #[arg(long, env = "OPENMATCH_GOSSIP_OPERATOR_WEBHOOK_CERT_MANAGER")]
    pub webhook_cert_manager: bool,

    /// What the webhook injects.
    #[command(flatten)]
    pub sidecar: SidecarArgs,
}

/// The injected sidecar (flags of `run`, for the webhook, and of `inject`).
#[derive(Debug, Clone, clap::Args)]
pub struct SidecarArgs {
    /// Image of the injected sidecar (`sidecar/Dockerfile`).
    #[arg(
        long,
        env = "OPENMATCH_GOSSIP_OPERATOR_SIDECAR_IMAGE",
        value_name = "IMAGE",
        default_value = concat!("openmatch-gossip:", env!("CARGO_PKG_VERSION"))
    )]
    pub sidecar_image: String,

    /// Pull policy of the injected sidecar's image. Default: the cluster's.
    #[arg(long, env = "OPENMATCH_GOSSIP_OPERATOR_SIDECAR_IMAGE_PULL_POLICY", value_name = "POLICY",
          value_parser = ["Always", "IfNotPresent", "Never"])]
    pub sidecar_image_pull_policy: Option<String>,

    /// Resources of the injected sidecar, as a Kubernetes ResourceRequirements in JSON.
    #[arg(
        long,
        env = "OPENMATCH_GOSSIP_OPERATOR_SIDECAR_RESOURCES",
        value_name = "JSON",
        default_value = r#"{"requests":{"cpu":"100m","memory":"64Mi"},"limits":{"memory":"256Mi"}}"#,
        value_parser = parse_resources
    )]
    pub sidecar_resources: ResourceRequirements,

    /// HTTP port of the injected sidecar (`/metrics`, `/healthz`, `/readyz`; named `metrics`).
    #[arg(
        long,
        env = "OPENMATCH_GOSSIP_OPERATOR_SIDECAR_METRICS_PORT",
        value_name = "PORT",
        default_value_t = 9090,
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    pub sidecar_metrics_port: u16,
}

impl SidecarArgs {
    /// The injection template these flags describe; `version` goes into the injected
    /// annotation.
    pub fn template(&self) -> crate::inject::SidecarTemplate {
        crate::inject::SidecarTemplate {
            image: self.sidecar_image.clone(),
            image_pull_policy: self.sidecar_image_pull_policy.clone(),
            resources: self.sidecar_resources.clone(),
            metrics_port: self.sidecar_metrics_port,
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }
}

/// Parses `--sidecar-resources`.
fn parse_resources(s: &str) -> Result<ResourceRequirements, String> {
    serde_json::from_str(s).map_err(|e| format!("not a ResourceRequirements in JSON: {e}"))
}

/// Flags of `openmatch-gossip-operator crdgen`.
#[derive(Debug, Clone, clap::Args)]
pub struct CrdgenArgs {
    /// Write crds/gossipnetwork.yaml and charts/openmatch-gossip/crds/gossipnetwork.yaml
    /// under --root instead of printing to stdout.
    #[arg(long)]
    pub write: bool,

    /// Repository root for --write.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub root: PathBuf,
}

/// Paths (relative to the repository root) of the committed CRD manifests.
pub const CRD_PATHS: [&str; 2] = ["crds/gossipnetwork.yaml", "charts/openmatch-gossip/crds/gossipnetwork.yaml"];

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_and_flags() {
        let cli = Cli::try_parse_from(["openmatch-gossip-operator", "run"]).unwrap();
        let Command::Run(run) = cli.command else { panic!("not run") };
        assert!(run.leader_elect);
        assert_eq!((run.lease_duration_s, run.renew_deadline_s, run.retry_period_s), (15, 10, 2));
        assert_eq!(run.log_format, LogFormat::Json);
        assert_eq!(run.http_addr, "0.0.0.0:8080".parse().unwrap());

        let cli = Cli::try_parse_from([
            "openmatch-gossip-operator",
            "run",
            "--leader-elect=false",
            "--namespace",
            "trading",
            "--log-format",
            "pretty",
        ])
        .unwrap();
        let Command::Run(run) = cli.command else { panic!("not run") };
        assert!(!run.leader_elect);
        assert_eq!(run.namespace.as_deref(), Some("trading"));
        assert_eq!(run.log_format, LogFormat::Pretty);
    }

    #[test]
    fn help_explains_every_run_flag() {
        let help = Cli::command().find_subcommand_mut("run").unwrap().render_long_help().to_string();
        for flag in [
            "--namespace",
            "--http-addr",
            "--log-format",
            "--leader-elect",
            "--lease-name",
            "--lease-namespace",
            "--identity",
            "--lease-duration-s",
            "--renew-deadline-s",
            "--retry-period-s",
            "--resync-s",
            "--debounce-ms",
            "--webhook-addr",
            "--webhook-service",
            "--webhook-secret",
            "--webhook-configuration",
            "--webhook-cert-manager",
            "--sidecar-image",
            "--sidecar-image-pull-policy",
            "--sidecar-resources",
            "--sidecar-metrics-port",
        ] {
            assert!(help.contains(flag), "{flag} missing from\n{help}");
        }
        assert!(help.contains("OPENMATCH_GOSSIP_OPERATOR_LEASE_DURATION_S"), "{help}");
    }
}
