//! The sidecar crate's integration tests, one binary: real `openmatch-gossip` processes on
//! loopback TCP, the network-namespace fault suite (real processes, real faults), and the
//! protocol's published test vectors.

mod faults;
mod processes;
mod protocol_vectors;
