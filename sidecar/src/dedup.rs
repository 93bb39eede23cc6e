//! The SHA-256 LRU seen-cache: remembers the last `capacity` order digests so that an order
//! delivered twice (by two peers, or re-packed into a second message) reaches the local
//! engine once. Default capacity 10,000 entries (`limits.dedupCapacity`), 32 bytes each plus
//! LRU bookkeeping (about 1 MiB at the default).
//!
//! The window is in entries, not time: a duplicate arriving after `capacity` newer orders is
//! no longer recognised. Size it at least at (order rate × longest duplicate delay).

use std::num::NonZeroUsize;

use lru::LruCache;

/// A SHA-256 digest (32 bytes).
pub type Digest = [u8; 32];

/// LRU set of recently seen digests.
pub struct SeenCache {
    lru: LruCache<Digest, ()>,
}

impl SeenCache {
    /// A cache holding at most `capacity` digests (at least 1).
    pub fn new(capacity: usize) -> Self {
        let cap = NonZeroUsize::new(capacity.max(1)).expect("capacity is at least 1");
        SeenCache { lru: LruCache::new(cap) }
    }

    /// Records `digest`; returns `true` when it was new, `false` when already seen (a
    /// duplicate, which is then refreshed as most recently used).
    pub fn insert(&mut self, digest: Digest) -> bool {
        self.lru.put(digest, ()).is_none()
    }

    /// Whether `digest` is currently remembered (does not change recency).
    pub fn contains(&self, digest: &Digest) -> bool {
        self.lru.contains(digest)
    }

    /// Number of remembered digests.
    pub fn len(&self) -> usize {
        self.lru.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.lru.is_empty()
    }

    /// Changes the capacity, evicting the least recently used entries if it shrinks.
    pub fn resize(&mut self, capacity: usize) {
        self.lru.resize(NonZeroUsize::new(capacity.max(1)).expect("capacity is at least 1"));
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
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn evicts_least_recently_used_beyond_capacity() {
        let mut c = SeenCache::new(2);
        c.insert(d(1));
        c.insert(d(2));
        assert!(!c.insert(d(1))); // refresh 1: now 2 is least recent
        c.insert(d(3)); // evicts 2
        assert!(c.contains(&d(1)));
        assert!(!c.contains(&d(2)));
        assert!(c.insert(d(2)), "evicted digest counts as new again");
    }

    #[test]
    fn shrinking_evicts() {
        let mut c = SeenCache::new(10);
        for i in 0..10 {
            c.insert(d(i));
        }
        c.resize(3);
        assert_eq!(c.len(), 3);
        assert!(c.contains(&d(9)) && !c.contains(&d(0)));
    }
}
