//! The sidecar crate's integration tests, one binary: real `openmatch-gossip` processes on
//! loopback TCP, and the protocol's published test vectors.

mod processes;
mod protocol_vectors;
