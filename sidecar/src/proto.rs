//! Generated protobuf and gRPC types: the gossip wire schema
//! (`proto/openmatch/gossip/v1/wire.proto`) and the engine API
//! (`proto/openmatch/gossip/v1/engine.proto`), one package `openmatch.gossip.v1`.

#![allow(missing_docs, clippy::all)]

tonic::include_proto!("openmatch.gossip.v1");
