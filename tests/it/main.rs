//! Workspace-level integration tests, one binary (one link step): each module is one
//! scenario family, run against real sidecars in this process (libp2p memory transport)
//! or over loopback TCP.

mod consensus;
mod dedup;
mod exposition;
mod hostile;
mod hot_reload;
mod memory_bound;
mod memory_cluster;
mod node_lifecycle;
mod rate_limit;
mod relay;
mod round_trip;
mod simulate;
mod socket_api;
