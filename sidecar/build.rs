//! Compiles the protobuf schemas in proto/ with protox (pure Rust: no protoc needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["openmatch/gossip/v1/wire.proto", "openmatch/gossip/v1/engine.proto"];
    for f in files {
        println!("cargo:rerun-if-changed=proto/{f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Every order of a pack shares its origin: as `Bytes`, copies are reference counts
        // and decoding slices the received buffer instead of allocating.
        .bytes(".openmatch.gossip.v1.Order.origin")
        .compile_fds(fds)?;
    Ok(())
}
