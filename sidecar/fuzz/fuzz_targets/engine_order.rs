//! The socket API's order checks on an engine's `Order` (protobuf bytes).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = openmatch_gossip_sidecar::fuzzing::check_engine_order(data);
});
