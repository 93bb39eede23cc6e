//! The gossip validator on (topic, author, bytes): byte 0 picks the topic kind, the rest
//! is the message, signed by a fixed author, validated at a fixed time.
#![no_main]

use std::sync::LazyLock;
use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;
use openmatch_gossip_sidecar::fuzzing::GossipValidator;

static AUTHOR: LazyLock<libp2p::PeerId> =
    LazyLock::new(|| libp2p::identity::Keypair::ed25519_from_bytes([7; 32]).unwrap().public().to_peer_id());
static VALIDATOR: LazyLock<Mutex<GossipValidator>> = LazyLock::new(|| Mutex::new(GossipValidator::default()));

fuzz_target!(|data: &[u8]| {
    let Some((&kind, message)) = data.split_first() else { return };
    // 1,800,000,000,500 ms: inside epoch 1,800,000,000 of the default 1 s epochs.
    let _ = VALIDATOR.lock().unwrap().validate(kind % 5, &AUTHOR, message, 1_800_000_000_500);
});
