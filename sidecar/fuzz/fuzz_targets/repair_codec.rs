//! The repair codec: byte 0 picks request (even) or response (odd), the rest is the frame
//! (4-byte big-endian length, then the protobuf body).
#![no_main]

use libfuzzer_sys::fuzz_target;
use openmatch_gossip_sidecar::fuzzing;

fuzz_target!(|data: &[u8]| {
    let Some((&which, frame)) = data.split_first() else { return };
    let _ = if which % 2 == 0 { fuzzing::read_repair_request(frame) } else { fuzzing::read_repair_response(frame) };
});
