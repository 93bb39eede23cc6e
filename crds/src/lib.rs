//! Shared types of openmatch-gossip that cross a process boundary.
//!
//! - [`sidecar_config`]: the sidecar's YAML configuration. The operator renders it into a
//!   ConfigMap and the sidecar parses it, so both sides use this one type.
//! - [`gossip_network`]: the `GossipNetwork` custom resource (`gossip.openmatch.io/v1alpha1`)
//!   the operator reconciles, its status, and [`GossipNetwork::render`], the pure function
//!   from a spec plus live bootstrap peers to a [`SidecarConfig`]. The generated CRD YAML is
//!   committed at `crds/gossipnetwork.yaml` (and in the Helm chart's `crds/`).

pub mod gossip_network;
pub mod sidecar_config;

pub use gossip_network::{GossipNetwork, GossipNetworkSpec, GossipNetworkStatus, SpecError};
pub use sidecar_config::{ConfigError, SidecarConfig};
