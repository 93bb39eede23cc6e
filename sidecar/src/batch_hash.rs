//! The batch hash (DESIGN §4, docs/PROTOCOL.md): SHA-256 over the batch's order digests
//! ([`crate::wire::order_digest`]) sorted ascending (bytewise, i.e. as unsigned 32-byte
//! big-endian numbers), concatenated — 32 bytes each, no separators, no count, no prefix.
//! The empty batch hashes the empty string
//! (`e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855`).
//!
//! A batch is a set of orders, so each digest appears once; digests passed twice are hashed
//! twice (callers deduplicate). The sorted order is also the batch's *canonical order*, the
//! order in which an engine matches it ([`crate::auction`]).

use sha2::{Digest as _, Sha256};

use crate::wire::Digest;

/// The batch hash of a batch given its order digests in any order (sorted here).
pub fn batch_hash(digests: impl IntoIterator<Item = Digest>) -> Digest {
    let mut sorted: Vec<Digest> = digests.into_iter().collect();
    sorted.sort_unstable();
    batch_hash_sorted(&sorted)
}

/// The batch hash of order digests the caller already holds in ascending order (e.g. the
/// keys of a `BTreeMap<Digest, _>`); checked only in debug builds.
pub(crate) fn batch_hash_sorted(sorted: &[Digest]) -> Digest {
    debug_assert!(sorted.is_sorted(), "batch_hash_sorted needs ascending digests");
    let mut h = Sha256::new();
    for d in sorted {
        h.update(d);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(first: u8, last: u8) -> Digest {
        let mut d = [0x55; 32];
        d[0] = first;
        d[31] = last;
        d
    }

    fn hex(d: &Digest) -> String {
        d.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn order_independent() {
        let digests = [d(3, 0), d(1, 9), d(2, 1), d(1, 2)];
        let h = batch_hash(digests);
        let mut reversed = digests;
        reversed.reverse();
        assert_eq!(batch_hash(reversed), h);
        let mut sorted = digests;
        sorted.sort();
        assert_eq!(batch_hash_sorted(&sorted), h);
        assert_ne!(batch_hash(digests[..3].iter().copied()), h, "a missing order changes it");
    }

    #[test]
    fn empty_batch_is_sha256_of_nothing() {
        let want = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(hex(&batch_hash([])), want);
        assert_eq!(hex(&batch_hash_sorted(&[])), want);
    }

    #[test]
    fn one_digest_is_sha256_of_its_bytes() {
        // SHA-256 of 32 zero bytes.
        let want = "66687aadf862bd776c8fc18b8e9f8e20089714856ee233b3902a591d0d5f2925";
        assert_eq!(hex(&batch_hash([[0u8; 32]])), want);
        let one = d(7, 7);
        assert_eq!(batch_hash([one]), <[u8; 32]>::from(Sha256::digest(one)));
    }

    #[test]
    fn concatenation_without_separators() {
        let (a, b) = (d(1, 1), d(2, 2));
        let joined: Vec<u8> = [a, b].concat();
        assert_eq!(batch_hash([b, a]), <[u8; 32]>::from(Sha256::digest(&joined)));
    }
}
