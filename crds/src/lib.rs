//! Shared types of openmatch-gossip that cross a process boundary, and the process plumbing
//! (logging, metrics and probe endpoints) both binaries run the same way.
//!
//! - [`sidecar_config`]: the sidecar's YAML configuration. The operator renders it into a
//!   ConfigMap and the sidecar parses it, so both sides use this one type.
//! - [`gossip_network`]: the `GossipNetwork` custom resource (`gossip.openmatch.io/v1alpha1`)
//!   the operator reconciles, its status, and [`GossipNetwork::render`], the pure function
//!   from a spec plus live bootstrap peers to a [`SidecarConfig`]. The generated CRD YAML is
//!   committed at `crds/gossipnetwork.yaml` (and in the Helm chart's `crds/`).
//! - [`runtime`]: the process plumbing both binaries run: log setup ([`runtime::LogFormat`],
//!   [`runtime::init_logging`]) and the HTTP server for `/metrics`, `/healthz` and
//!   `/readyz` ([`runtime::serve_http`], answering through [`runtime::Probes`]).
//!
//! Why `runtime` lives here: this is the crate both binaries already share, the contract
//! between the operator and the sidecar, and the log format and the `/metrics`, `/healthz`
//! and `/readyz` endpoints are part of that contract too. The Helm chart's probes and
//! Prometheus scrape configuration are written once against them for both binaries (the
//! chart's Deployments come with a later issue), so one implementation keeps the two from
//! drifting apart.

pub mod gossip_network;
pub mod runtime;
pub mod sidecar_config;

pub use gossip_network::{GossipNetwork, GossipNetworkSpec, GossipNetworkStatus, SpecError};
pub use sidecar_config::{ConfigError, SidecarConfig};
