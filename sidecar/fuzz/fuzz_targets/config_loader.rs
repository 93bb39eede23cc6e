//! The configuration loader (start-up and hot reload): parse, then validate.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = openmatch_gossip_sidecar::fuzzing::load_config(text);
    }
});
