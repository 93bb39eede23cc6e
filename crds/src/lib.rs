//! Shared types of openmatch-gossip that cross a process boundary.
//!
//! - [`sidecar_config`]: the sidecar's YAML configuration. The operator renders it into a
//!   ConfigMap and the sidecar parses it, so both sides use this one type.
//!
//! The `GossipNetwork` custom resource joins this crate with the operator issue.

pub mod sidecar_config;

pub use sidecar_config::{ConfigError, SidecarConfig};
