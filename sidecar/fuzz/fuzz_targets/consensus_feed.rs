//! What the node does with each message after decoding: a sequence of steps (peers'
//! gossip messages through the validator, repair answers, the engine's orders, seals and
//! results, ticks) fed to the batch state machine, on a fresh node per input so that a
//! crash reproduces from its input alone. See `ConsensusFeed::run` for the step format.
#![no_main]

use libfuzzer_sys::fuzz_target;
use openmatch_gossip_sidecar::fuzzing::ConsensusFeed;

fuzz_target!(|data: &[u8]| {
    let _ = ConsensusFeed::default().run(data);
});
