//! Token buckets (GCRA, via the `governor` crate) on gossip messages.
//!
//! - [`PeerRateLimiter`]: inbound, one bucket per propagation source; a peer above
//!   `messagesPerSecond` (sustained) and `burst` (at once) has its excess messages ignored
//!   and counted, without a GossipSub penalty for the first offence.
//! - [`Pacer`]: outbound, one bucket for the node's own publishing, set to the same rate so
//!   an honest node never trips its peers' limiters; while it waits, orders pack densely.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use libp2p::PeerId;
use openmatch_gossip_crds::sidecar_config::RateLimitConfig;

fn quota(cfg: RateLimitConfig) -> Quota {
    let rate = NonZeroU32::new(cfg.messages_per_second).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(cfg.burst).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(rate).allow_burst(burst)
}

/// Per-peer inbound token bucket.
pub(crate) struct PeerRateLimiter {
    limiter: DefaultKeyedRateLimiter<PeerId>,
}

impl PeerRateLimiter {
    /// Buckets of `cfg.messages_per_second` sustained and `cfg.burst` at once per peer.
    pub(crate) fn new(cfg: RateLimitConfig) -> Self {
        PeerRateLimiter { limiter: RateLimiter::keyed(quota(cfg)) }
    }

    /// Takes one token from `peer`'s bucket; `false` when the peer is over its rate.
    pub(crate) fn check(&self, peer: &PeerId) -> bool {
        self.limiter.check_key(peer).is_ok()
    }

    /// Drops the state of peers whose buckets are full again (call periodically; bounds
    /// memory to the peers active within one burst period).
    pub(crate) fn retain_recent(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// Outbound pacing of the node's own gossip messages.
pub(crate) struct Pacer {
    limiter: DefaultDirectRateLimiter,
    clock: DefaultClock,
}

impl Pacer {
    /// Paces at `cfg.messages_per_second` with half of `cfg.burst` (at least 1) as the
    /// bucket, leaving headroom for arrival jitter at the receivers' full-size buckets.
    pub(crate) fn new(cfg: RateLimitConfig) -> Self {
        let outbound = RateLimitConfig { burst: (cfg.burst / 2).max(1), ..cfg };
        Pacer { limiter: RateLimiter::direct(quota(outbound)), clock: DefaultClock::default() }
    }

    /// Takes a token if one is available now; otherwise returns the instant at which one
    /// will be.
    pub(crate) fn try_acquire(&self) -> Result<(), Instant> {
        match self.limiter.check() {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait: Duration = not_until.wait_time_from(self.clock.now());
                Err(Instant::now() + wait)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_over_its_burst_is_limited_and_others_are_not() {
        let l = PeerRateLimiter::new(RateLimitConfig { messages_per_second: 1, burst: 5 });
        let (a, b) = (PeerId::random(), PeerId::random());
        let passed_a = (0..20).filter(|_| l.check(&a)).count();
        // One token may refill while the loop runs only if it takes a full second.
        assert!((5..=6).contains(&passed_a), "{passed_a}");
        assert!(l.check(&b), "another peer has its own bucket");
    }

    #[test]
    fn pacer_gives_half_the_burst_then_a_wait() {
        let p = Pacer::new(RateLimitConfig { messages_per_second: 10, burst: 8 });
        let ok = (0..10).filter(|_| p.try_acquire().is_ok()).count();
        assert_eq!(ok, 4);
        let until = p.try_acquire().unwrap_err();
        let wait = until.saturating_duration_since(Instant::now());
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
    }
}
