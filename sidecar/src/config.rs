//! The node's settings: the YAML file ([`SidecarConfig`], shared with the operator) plus
//! command-line flags and environment variables for everything local to one pod.
//!
//! Precedence, lowest first: built-in defaults, the file, environment variables, flags.
//! Every value is validated before the node starts; errors name the field.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use libp2p::{Multiaddr, PeerId, multiaddr::Protocol};
use openmatch_gossip_crds::SidecarConfig;

use openmatch_gossip_crds::runtime::LogFormat;

/// Flags of `openmatch-gossip node`.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// YAML configuration file (the operator renders it into a ConfigMap). Optional: without
    /// it, built-in defaults and the flags below apply. See README "Configuration".
    #[arg(long, env = "OPENMATCH_GOSSIP_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Unix socket for the engine API (gRPC). Created with mode 0660; a stale socket left
    /// by a crashed run is replaced, a live one is never taken over.
    #[arg(
        long,
        env = "OPENMATCH_GOSSIP_SOCKET",
        value_name = "PATH",
        default_value = "/run/openmatch-gossip/engine.sock"
    )]
    pub socket: PathBuf,

    /// Ed25519 identity key file; created (mode 0600) if absent, so the peer id survives
    /// restarts. Put it on a persistent volume to keep the peer id across pod moves.
    #[arg(
        long,
        env = "OPENMATCH_GOSSIP_IDENTITY_KEY",
        value_name = "PATH",
        default_value = "/var/lib/openmatch-gossip/identity.key"
    )]
    pub identity_key: PathBuf,

    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    #[arg(long, env = "OPENMATCH_GOSSIP_METRICS_ADDR", value_name = "ADDR", default_value = "0.0.0.0:9090")]
    pub metrics_addr: SocketAddr,

    /// Network name (overrides `network` in the file).
    #[arg(long, env = "OPENMATCH_GOSSIP_NETWORK")]
    pub network: Option<String>,

    /// Markets to trade, comma-separated, e.g. BTC-USDT,ETH-USDT (replaces `markets`).
    #[arg(long = "markets", env = "OPENMATCH_GOSSIP_MARKETS", value_delimiter = ',')]
    pub markets: Option<Vec<String>>,

    /// libp2p listen multiaddrs, comma-separated (replaces `p2p.listenAddrs`).
    #[arg(long = "listen", env = "OPENMATCH_GOSSIP_LISTEN", value_delimiter = ',')]
    pub listen: Option<Vec<String>>,

    /// Bootstrap peer multiaddrs ending in /p2p/<peer id>, comma-separated (replaces
    /// `p2p.bootstrapPeers`).
    #[arg(long = "bootstrap", env = "OPENMATCH_GOSSIP_BOOTSTRAP", value_delimiter = ',')]
    pub bootstrap: Option<Vec<String>>,

    /// Enable mDNS discovery on the local link (overrides `p2p.mdns`).
    #[arg(long, env = "OPENMATCH_GOSSIP_MDNS")]
    pub mdns: Option<bool>,

    /// Largest gossip message, bytes (overrides `limits.maxMessageBytes`; default 1 MiB).
    #[arg(long, env = "OPENMATCH_GOSSIP_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<u32>,

    /// Per-peer sustained gossip messages/s (overrides `limits.rateLimit.messagesPerSecond`).
    #[arg(long, env = "OPENMATCH_GOSSIP_RATE_LIMIT")]
    pub rate_limit: Option<u32>,

    /// Per-peer token bucket size, messages (overrides `limits.rateLimit.burst`).
    #[arg(long, env = "OPENMATCH_GOSSIP_RATE_BURST")]
    pub rate_burst: Option<u32>,

    /// Seen-cache entries (overrides `limits.dedupCapacity`; default 10,000).
    #[arg(long, env = "OPENMATCH_GOSSIP_DEDUP_CAPACITY")]
    pub dedup_capacity: Option<u32>,

    /// Orders an event subscriber may fall behind before its stream is ended with
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "OPENMATCH_GOSSIP_SUBSCRIBER_BUFFER", default_value_t = 1_000_000)]
    pub subscriber_buffer: usize,

    /// The node's memory bound for queued messages, bytes (protobuf encoded length): half
    /// for the outbox (orders the engine submitted, not yet published: a full outbox
    /// pushes the engine back), half for the events queued for subscribers (past it, the
    /// subscriber furthest behind is ended with RESOURCE_EXHAUSTED). At least 4 × the
    /// largest message.
    #[arg(long, env = "OPENMATCH_GOSSIP_QUEUE_MEMORY_BYTES", default_value_t = DEFAULT_QUEUE_MEMORY_BYTES)]
    pub queue_memory_bytes: usize,

    /// Events kept for engines that resume a subscription (`Subscribe.resume_after`),
    /// counted in orders (an OrdersReceived weighs its orders, other events 1). ~100 bytes
    /// of memory per order; 262,144 keeps about 2.5 minutes of the bundled recording at
    /// its real pace.
    #[arg(long, env = "OPENMATCH_GOSSIP_EVENT_RETENTION", default_value_t = 262_144)]
    pub event_retention: usize,

    /// Log format: pretty (local) or json (clusters).
    #[arg(long, env = "OPENMATCH_GOSSIP_LOG_FORMAT", value_enum, default_value = "pretty")]
    pub log_format: LogFormat,
}

/// A bootstrap peer: its id and the address to dial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapPeer {
    /// Peer id from the address's `/p2p/` suffix.
    pub peer_id: PeerId,
    /// Full multiaddr, including the `/p2p/` suffix.
    pub addr: Multiaddr,
}

/// An observer of the gossip messages a node receives, for the simulation benchmark
/// (`openmatch-gossip simulate`, [`crate::tools::simulate`]), which reconstructs each
/// message's path from it. Called once per message GossipSub hands the node (its first
/// copy; later copies are dropped by GossipSub's seen-cache and never reach the node) with
/// the message's id, its topic, its author (`None` if unsigned) and the peer it came from.
/// Not reachable from the command line or the config file: `None` in a sidecar.
#[derive(Clone)]
pub struct ReceiptObserver(pub std::sync::Arc<ObserveReceipt>);

/// What a [`ReceiptObserver`] calls: (message id, topic, author, the peer it came from).
pub type ObserveReceipt = dyn Fn(&libp2p::gossipsub::MessageId, &str, Option<PeerId>, PeerId) + Send + Sync;

impl std::fmt::Debug for ReceiptObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReceiptObserver")
    }
}

/// Decides whether an inbound gossip order is lost (see [`FaultInjector`]).
#[cfg(feature = "fault-injection")]
pub type DropOrder = std::sync::Arc<dyn Fn(&crate::proto::Order) -> bool + Send + Sync>;

/// A fault injector for tests (cargo feature `fault-injection`, which only the test crate
/// enables). Not reachable from the command line or the config file.
#[cfg(feature = "fault-injection")]
#[derive(Clone, Default)]
pub struct FaultInjector {
    /// Inbound gossip orders for which it returns `true` are dropped as if the network had
    /// lost them (they can still arrive by repair).
    pub drop_order: Option<DropOrder>,
    /// The node answers every `FetchOrders` "unknown batch" while serving digest sets as
    /// usual: a member that vouches for orders it then does not serve.
    pub refuse_fetches: bool,
}

#[cfg(feature = "fault-injection")]
impl FaultInjector {
    /// An injector that drops the inbound gossip orders `drop` picks.
    pub fn dropping(drop: impl Fn(&crate::proto::Order) -> bool + Send + Sync + 'static) -> Self {
        FaultInjector { drop_order: Some(std::sync::Arc::new(drop)), refuse_fetches: false }
    }

    /// Whether the injector drops `order`.
    pub(crate) fn drops(&self, order: &crate::proto::Order) -> bool {
        self.drop_order.as_ref().is_some_and(|drop| drop(order))
    }
}

#[cfg(feature = "fault-injection")]
impl std::fmt::Debug for FaultInjector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultInjector")
            .field("drop_order", &self.drop_order.is_some())
            .field("refuse_fetches", &self.refuse_fetches)
            .finish()
    }
}

/// Everything a node needs to start, validated.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// Test hook: faults to inject.
    #[cfg(feature = "fault-injection")]
    pub fault: FaultInjector,
    /// The shared configuration (file + overrides).
    pub config: SidecarConfig,
    /// Parsed `p2p.listenAddrs`.
    pub listen_addrs: Vec<Multiaddr>,
    /// Parsed `p2p.bootstrapPeers`.
    pub bootstrap_peers: Vec<BootstrapPeer>,
    /// Engine API socket path.
    pub socket: PathBuf,
    /// Identity key file.
    pub identity_key: PathBuf,
    /// Metrics/health HTTP address.
    pub metrics_addr: SocketAddr,
    /// Subscriber backlog limit, orders.
    pub subscriber_buffer: usize,
    /// Event log retention for resumable subscriptions, orders.
    pub event_retention: usize,
    /// Memory bound for the outbox and the subscribers' queues together, bytes.
    pub queue_memory_bytes: usize,
    /// Benchmark hook: sees every gossip message's first receipt ([`ReceiptObserver`]).
    pub receipt_observer: Option<ReceiptObserver>,
}

/// Default of `--queue-memory-bytes`: 64 MiB, so that the subscribers' half holds a replay
/// of the default event log (`--event-retention` 262,144 orders of ~95 encoded bytes:
/// ~25 MB).
pub const DEFAULT_QUEUE_MEMORY_BYTES: usize = 64 << 20;

/// Parses a multiaddr, naming `field` in the error.
pub fn parse_multiaddr(field: &str, s: &str) -> anyhow::Result<Multiaddr> {
    s.parse::<Multiaddr>().map_err(|e| anyhow!("{field}: {s:?} is not a multiaddr: {e}"))
}

/// Parses a bootstrap address, which must end in `/p2p/<peer id>`.
pub fn parse_bootstrap(field: &str, s: &str) -> anyhow::Result<BootstrapPeer> {
    let addr = parse_multiaddr(field, s)?;
    match addr.iter().last() {
        Some(Protocol::P2p(peer_id)) => Ok(BootstrapPeer { peer_id, addr }),
        _ => Err(anyhow!("{field}: {s:?} must end in /p2p/<peer id>")),
    }
}

/// How long start-up waits for an empty configuration file to be written: 30 s.
pub const START_CONFIG_WAIT: Duration = Duration::from_secs(30);

/// How often start-up looks at an empty configuration file again: 100 ms.
const START_CONFIG_POLL: Duration = Duration::from_millis(100);

/// Whether a configuration file's bytes are empty or whitespace only: what a writer that
/// truncates before it rewrites leaves for a moment. Neither start-up nor a reload takes
/// such a file as "all defaults" (write `{}` for that).
pub fn is_blank(bytes: &[u8]) -> bool {
    bytes.iter().all(u8::is_ascii_whitespace)
}

/// Whether the file at `path` is readable and blank; an unreadable file is not blank (the
/// loader reports why it cannot read it).
fn file_is_blank(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|b| is_blank(&b))
}

impl NodeSettings {
    /// [`from_args`](Self::from_args) for start-up: a configuration file that is empty (or
    /// whitespace only) is waited for, polling every 100 ms for up to `wait`, instead of
    /// being taken as all defaults. A ConfigMap volume being rewritten (podman rewrites it
    /// for each pod of a `kube play`) or any writer that truncates first shows this for a
    /// moment; a node started on it would join the default network with no market and stay
    /// there, since a network change needs a restart.
    ///
    /// Errors: the file is still blank after `wait`, and every error of `from_args`.
    pub async fn load_at_start(args: &NodeArgs, wait: Duration) -> anyhow::Result<Self> {
        if let Some(path) = &args.config {
            let deadline = Instant::now() + wait;
            let mut announced = false;
            while file_is_blank(path) {
                if Instant::now() >= deadline {
                    return Err(anyhow!(
                        "config file {} is still empty after {} s; an empty file is refused rather than \
                         taken as all defaults (write `{{}}` for the defaults, or drop --config)",
                        path.display(),
                        wait.as_secs_f32()
                    ));
                }
                if !announced {
                    tracing::warn!(path = %path.display(), wait_s = wait.as_secs_f32(), "configuration file is empty; waiting for it to be written");
                    announced = true;
                }
                tokio::time::sleep(START_CONFIG_POLL).await;
            }
            if announced {
                tracing::info!(path = %path.display(), "configuration file written; starting");
            }
        }
        Self::from_args(args)
    }

    /// Reads the file (if any), applies overrides, validates.
    pub fn from_args(args: &NodeArgs) -> anyhow::Result<Self> {
        let mut config = match &args.config {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
                SidecarConfig::from_yaml(&text).with_context(|| format!("config file {}", path.display()))?
            }
            None => SidecarConfig::default(),
        };
        if let Some(v) = &args.network {
            config.network = v.clone();
        }
        if let Some(v) = &args.markets {
            config.markets = v.iter().filter(|m| !m.is_empty()).cloned().collect();
        }
        if let Some(v) = &args.listen {
            config.p2p.listen_addrs = v.clone();
        }
        if let Some(v) = &args.bootstrap {
            config.p2p.bootstrap_peers = v.iter().filter(|m| !m.is_empty()).cloned().collect();
        }
        if let Some(v) = args.mdns {
            config.p2p.mdns = v;
        }
        if let Some(v) = args.max_message_bytes {
            config.limits.max_message_bytes = v;
        }
        if let Some(v) = args.rate_limit {
            config.limits.rate_limit.messages_per_second = v;
        }
        if let Some(v) = args.rate_burst {
            config.limits.rate_limit.burst = v;
        }
        if let Some(v) = args.dedup_capacity {
            config.limits.dedup_capacity = v;
        }
        if args.subscriber_buffer == 0 {
            return Err(anyhow!("--subscriber-buffer: must be at least 1"));
        }
        if args.event_retention == 0 {
            return Err(anyhow!("--event-retention: must be at least 1"));
        }
        let least = 4 * config.limits.max_message_bytes as usize;
        if args.queue_memory_bytes < least {
            return Err(anyhow!(
                "--queue-memory-bytes: {} is below 4 x the largest message (limits.maxMessageBytes {}), i.e. {least}",
                args.queue_memory_bytes,
                config.limits.max_message_bytes
            ));
        }
        Self::new(config, args.socket.clone(), args.identity_key.clone(), args.metrics_addr).map(|s| NodeSettings {
            subscriber_buffer: args.subscriber_buffer,
            event_retention: args.event_retention,
            queue_memory_bytes: args.queue_memory_bytes,
            ..s
        })
    }

    /// Validates `config` and parses its addresses.
    pub fn new(
        config: SidecarConfig,
        socket: PathBuf,
        identity_key: PathBuf,
        metrics_addr: SocketAddr,
    ) -> anyhow::Result<Self> {
        config.validate()?;
        let listen_addrs = config
            .p2p
            .listen_addrs
            .iter()
            .enumerate()
            .map(|(i, a)| parse_multiaddr(&format!("p2p.listenAddrs[{i}]"), a))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let bootstrap_peers = config
            .p2p
            .bootstrap_peers
            .iter()
            .enumerate()
            .map(|(i, a)| parse_bootstrap(&format!("p2p.bootstrapPeers[{i}]"), a))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(NodeSettings {
            #[cfg(feature = "fault-injection")]
            fault: FaultInjector::default(),
            config,
            listen_addrs,
            bootstrap_peers,
            socket,
            identity_key,
            metrics_addr,
            subscriber_buffer: 1_000_000,
            event_retention: 262_144,
            queue_memory_bytes: DEFAULT_QUEUE_MEMORY_BYTES,
            receipt_observer: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(config: SidecarConfig) -> anyhow::Result<NodeSettings> {
        NodeSettings::new(config, "s".into(), "k".into(), "127.0.0.1:0".parse().unwrap())
    }

    #[test]
    fn bootstrap_needs_a_peer_id() {
        let mut c = SidecarConfig::default();
        c.p2p.bootstrap_peers = vec!["/ip4/127.0.0.1/tcp/4001".into()];
        let err = settings(c).unwrap_err().to_string();
        assert!(err.contains("p2p.bootstrapPeers[0]") && err.contains("/p2p/"), "{err}");
    }

    #[test]
    fn bad_listen_addr_names_the_field() {
        let mut c = SidecarConfig::default();
        c.p2p.listen_addrs = vec!["/ip4/127.0.0.1/tcp/1".into(), "tcp://nope".into()];
        let err = settings(c).unwrap_err().to_string();
        assert!(err.contains("p2p.listenAddrs[1]"), "{err}");
    }

    #[test]
    fn good_bootstrap_parses() {
        let id = PeerId::random();
        let mut c = SidecarConfig::default();
        c.p2p.bootstrap_peers = vec![format!("/ip4/127.0.0.1/tcp/4001/p2p/{id}")];
        let s = settings(c).unwrap();
        assert_eq!(s.bootstrap_peers[0].peer_id, id);
    }

    #[test]
    fn flags_override_the_file() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            node: NodeArgs,
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(&file, "markets: [BTC-USDT]\nlimits: {rateLimit: {burst: 9}}\n").unwrap();
        let cli = Cli::parse_from([
            "x",
            "--config",
            file.to_str().unwrap(),
            "--markets",
            "ETH-USDT,SOL-USDT",
            "--rate-limit",
            "77",
        ]);
        let s = NodeSettings::from_args(&cli.node).unwrap();
        assert_eq!(s.config.markets, vec!["ETH-USDT", "SOL-USDT"]);
        assert_eq!(s.config.limits.rate_limit.messages_per_second, 77);
        assert_eq!(s.config.limits.rate_limit.burst, 9);
        let bad = Cli::parse_from(["x", "--markets", "eth"]);
        let err = format!("{:#}", NodeSettings::from_args(&bad.node).unwrap_err());
        assert!(err.contains("markets[0]"), "{err}");
    }

    fn args_with_config(file: &Path) -> NodeArgs {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            node: NodeArgs,
        }
        Cli::parse_from(["x", "--config", file.to_str().unwrap()]).node
    }

    #[tokio::test]
    async fn start_up_waits_for_an_empty_config_file_to_be_written() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(&file, " \n").unwrap();
        let args = args_with_config(&file);
        let loading = tokio::spawn(async move { NodeSettings::load_at_start(&args, Duration::from_secs(60)).await });
        // The loader must still be waiting on the blank file, not have started on defaults.
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(!loading.is_finished(), "start-up took a blank config file as all defaults");
        std::fs::write(&file, "network: desk-a\nmarkets: [BTC-USDT]\n").unwrap();
        let s = loading.await.unwrap().unwrap();
        assert_eq!(s.config.network, "desk-a");
        assert_eq!(s.config.markets, vec!["BTC-USDT"]);
    }

    #[tokio::test]
    async fn start_up_refuses_a_config_file_that_stays_empty() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(&file, "").unwrap();
        let err = format!(
            "{:#}",
            NodeSettings::load_at_start(&args_with_config(&file), Duration::from_millis(250)).await.unwrap_err()
        );
        assert!(err.contains("still empty") && err.contains("c.yaml"), "{err}");
        // `{}` is the explicit way to ask for the defaults.
        std::fs::write(&file, "{}\n").unwrap();
        let s = NodeSettings::load_at_start(&args_with_config(&file), Duration::ZERO).await.unwrap();
        assert_eq!(s.config, SidecarConfig::default());
    }
}
