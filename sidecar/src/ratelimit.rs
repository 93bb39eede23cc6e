//! Token buckets (GCRA, via the `governor` crate) on gossip messages.
//!
//! - [`PeerRateLimiter`]: inbound, one bucket per propagation source; a peer above its
//!   rate (sustained) and burst (at once) has its excess messages ignored and counted,
//!   without a GossipSub penalty. Order messages use `limits.rateLimit`; seals, results and
//!   `PeerStatus` heartbeats have a bucket of their own, sized from the configuration by
//!   [`consensus_budget`], so an order flood never starves consensus and an honest node's
//!   consensus traffic never trips its peers' buckets.
//! - [`Pacer`]: outbound, one bucket for the node's own order messages, set to the same rate
//!   as `limits.rateLimit` so an honest node never trips its peers' order buckets; while it
//!   waits, orders pack densely.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use libp2p::PeerId;
use openmatch_gossip_crds::sidecar_config::{RateLimitConfig, SidecarConfig};

fn quota(cfg: RateLimitConfig) -> Quota {
    let rate = NonZeroU32::new(cfg.messages_per_second).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(cfg.burst).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(rate).allow_burst(burst)
}

/// Members whose consensus traffic one peer may forward, at least: the budget assumes a
/// network this large when `consensus.members` is unset or smaller.
const BUDGET_MIN_MEMBERS: u32 = 16;

/// The per-peer bucket for consensus and control messages (`BatchSealed`, `TradeResult`,
/// `PeerStatus`), from the configuration: what every member of the network sends, since one
/// peer may forward all of it first. `markets`: how many this node trades (the config's
/// list is not consulted: the node holds its live set apart).
///
/// Per member and second: per market and epoch one first seal, one re-seal (adoption) and
/// one result, i.e. `3 × markets × 1000 / consensus.epochMs`, plus
/// `1000 / heartbeat.intervalMs` heartbeats. Times `max(consensus.members, 16)` members.
/// Burst: two seconds' worth (every member seals every market at the same instant).
/// Defaults (2 markets, 1,000 ms epochs and heartbeats): 7 × 16 = 112 messages/s, burst 224.
pub(crate) fn consensus_budget(config: &SidecarConfig, markets: usize) -> RateLimitConfig {
    let per_s = |interval_ms: u32| 1000u32.div_ceil(interval_ms.max(1));
    let markets = (markets as u32).max(1);
    let per_member = 3 * markets * per_s(config.consensus.epoch_ms) + per_s(config.heartbeat.interval_ms);
    let rate = per_member.saturating_mul(config.consensus.members.max(BUDGET_MIN_MEMBERS));
    RateLimitConfig { messages_per_second: rate, burst: rate.saturating_mul(2) }
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
    fn consensus_budget_covers_every_member_s_seals_results_and_heartbeats() {
        let mut c = SidecarConfig::default();
        assert_eq!(consensus_budget(&c, 2), RateLimitConfig { messages_per_second: 112, burst: 224 });
        c.consensus.epoch_ms = 200; // 5 epochs/s: 3 × 2 × 5 + 1 = 31 per member
        c.consensus.members = 20;
        assert_eq!(consensus_budget(&c, 2), RateLimitConfig { messages_per_second: 620, burst: 1240 });
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
