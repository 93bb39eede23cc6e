//! Replays the crafted inputs that blew decoders up (issue 13: a `FetchOrders` of 33.5M
//! empty digests took a node to 1.0 GB, a `DigestSet` of empty entries to 1.8 GB, an
//! `Orders` answer of 33.5M empty orders to 4.68 GB, a 1 MiB gossip envelope of 524K empty
//! orders to ~65 MB) through the node's own input paths, and asserts with a counting
//! allocator that each is refused within a small multiple of its size.
//!
//! Its own test binary: the global allocator counts every allocation of the process, so
//! nothing else may run beside the measurement.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use openmatch_gossip_sidecar::fuzzing::{self, GossipValidator};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: delegates to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        // SAFETY: same layout, forwarded.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: allocated by `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes allocated at the peak of `f`, above what was allocated before it.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = CURRENT.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed) - before)
}

const MIB: usize = 1 << 20;

/// `n` empty elements of field `tag` (key, zero length), wrapped as field `outer` of the
/// enclosing message, length-prefixed as a repair frame (`frame`) or not.
fn empties(outer: u32, tag: u32, n: usize, frame: bool) -> Vec<u8> {
    let mut inner = Vec::with_capacity(2 * n);
    for _ in 0..n {
        prost::encoding::encode_key(tag, prost::encoding::WireType::LengthDelimited, &mut inner);
        inner.push(0);
    }
    let mut msg = Vec::with_capacity(inner.len() + 16);
    prost::encoding::encode_key(outer, prost::encoding::WireType::LengthDelimited, &mut msg);
    prost::encoding::encode_varint(inner.len() as u64, &mut msg);
    msg.extend_from_slice(&inner);
    drop(inner);
    if !frame {
        return msg;
    }
    let mut out = (msg.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&msg);
    out
}

#[test]
fn crafted_inputs_are_refused_within_a_small_multiple_of_their_size() {
    // Repair: 64 MiB frames of empty elements (33.5M of them).
    let n = 64 * MIB / 2 - 8;
    let cases = [
        ("FetchOrders of empty digests, 64 MiB", empties(2, 2, n, true), true, 0),
        ("FetchOrders of empty digests, 1 MiB", empties(2, 2, MIB / 2 - 8, true), true, 3 * MIB),
        ("DigestSet of empty entries, 64 MiB", empties(1, 2, n, true), false, 3 * 64 * MIB),
        ("Orders answer of empty orders, 64 MiB", empties(5, 1, n, true), false, 3 * 64 * MIB),
        ("DecidedBatch of empty orders, 64 MiB", empties(4, 4, n, true), false, 3 * 64 * MIB),
    ];
    for (what, frame, request, bound) in cases {
        let (result, peak) = peak_of(|| {
            if request {
                fuzzing::read_repair_request(&frame).map(|_| ())
            } else {
                fuzzing::read_repair_response(&frame).map(|_| ())
            }
        });
        let err = result.expect_err(what);
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{what}: {err}");
        println!(
            "{what}: refused ({err}); peak {:.1} MiB for a {:.1} MiB frame",
            peak as f64 / MIB as f64,
            frame.len() as f64 / MIB as f64
        );
        assert!(peak <= bound.max(64 * 1024), "{what}: {peak} bytes allocated, bound {bound}");
    }

    // Gossip: a 1 MiB envelope of 524K empty orders, through the validator.
    let mut envelope = vec![0x08, 0x01]; // version 1
    envelope.extend(empties(2, 1, MIB / 2 - 16, false));
    let author = libp2p::identity::Keypair::generate_ed25519().public().to_peer_id();
    let mut validator = GossipValidator::default();
    let (verdict, peak) = peak_of(|| validator.validate(0, &author, &envelope, 100_500));
    println!("1 MiB envelope of empty orders: {verdict}; peak {:.2} MiB", peak as f64 / MIB as f64);
    assert!(verdict.contains("OrderGossip.orders"), "{verdict}");
    assert!(peak <= MIB, "{peak} bytes allocated for a 1 MiB envelope");
}
