//! The SHA-256 LRU seen-cache: remembers the last `capacity` order digests so that an order
//! gossiped twice (by two peers, or re-packed into a second message) is recognised before
//! it costs anything more. Default capacity 10,000 entries (`limits.dedupCapacity`), 32
//! bytes each plus LRU bookkeeping (about 1 MiB at the default).
//!
//! ## Two dedups, one authoritative
//! - **This cache** is the cheap front filter of validation: a message whose orders were
//!   all seen is *ignored* (not forwarded, not delivered). It forgets by count: a digest is
//!   evicted after `capacity` newer ones, whatever their age.
//! - **The batch's digest set** ([`crate::consensus`]) is authoritative for delivery: an
//!   order reaches the engine only when it joins its batch `(market, epoch)` for the first
//!   time, so a copy that outlived this cache is still delivered once. It forgets when the
//!   batch is pruned (`consensus.retainedBatches` decided batches per market); an order for
//!   a pruned epoch is refused as late, never delivered again.

use std::num::NonZeroUsize;

use lru::LruCache;

use crate::wire::Digest;

/// LRU set of recently seen digests.
pub(crate) struct SeenCache {
    lru: LruCache<Digest, ()>,
}

impl SeenCache {
    /// A cache holding at most `capacity` digests (at least 1).
    pub(crate) fn new(capacity: usize) -> Self {
        let cap = NonZeroUsize::new(capacity.max(1)).expect("capacity is at least 1");
        SeenCache { lru: LruCache::new(cap) }
    }

    /// Records `digest`; returns `true` when it was new, `false` when already seen (a
    /// duplicate, which is then refreshed as most recently used).
    pub(crate) fn insert(&mut self, digest: Digest) -> bool {
        self.lru.put(digest, ()).is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(i: u8) -> Digest {
        [i; 32]
    }

    #[test]
    fn second_insert_is_a_duplicate() {
        let mut c = SeenCache::new(4);
        assert!(c.insert(d(1)));
        assert!(!c.insert(d(1)));
        assert_eq!(c.lru.len(), 1);
    }

    #[test]
    fn evicts_least_recently_used_beyond_capacity() {
        let mut c = SeenCache::new(2);
        c.insert(d(1));
        c.insert(d(2));
        assert!(!c.insert(d(1))); // refresh 1: now 2 is least recent
        c.insert(d(3)); // evicts 2
        assert!(c.lru.contains(&d(1)));
        assert!(!c.lru.contains(&d(2)));
        assert!(c.insert(d(2)), "evicted digest counts as new again");
    }
}
