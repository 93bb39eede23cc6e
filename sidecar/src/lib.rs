//! openmatch-gossip sidecar: a libp2p gossip node beside each matching-engine replica.
//!
//! Data flows one way: engine → [`api`] (gRPC on a Unix socket) → [`node`] (outbox, GossipSub)
//! → peers' [`node`] (validation: [`wire`] decode under a size cap, [`ratelimit`], [`dedup`])
//! → their [`api`] subscribers → their engine.
//!
//! Besides the node, the crate holds the reference engine ([`engine`], replaying real market
//! data from [`marketdata`]) and the main job that runs three of each ([`cluster`]).

pub mod api;
pub mod auction;
pub mod batch_hash;
pub mod bench;
pub mod cluster;
pub mod config;
pub mod consensus;
pub mod dedup;
pub mod engine;
pub mod epoch;
pub mod identity;
pub mod marketdata;
pub mod metrics;
pub mod node;
pub mod outbox;
pub mod proto;
pub mod ratelimit;
pub mod relay;
pub mod reload;
pub mod repair;
pub mod reputation;
pub mod server;
pub mod stats;
pub mod telemetry;
pub mod topics;
pub mod validation;
pub mod wire;

/// Software version reported in `PeerStatus` and node status.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
