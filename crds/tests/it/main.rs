//! The crds crate's integration tests, one binary (one link step): the committed CRD
//! manifests and the example GossipNetworks against the types and the schema.

mod crd_yaml;
mod examples;
