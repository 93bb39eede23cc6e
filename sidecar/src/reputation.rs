//! Peer reputation (DESIGN §5): peers in the minority of a batch or result comparison, or
//! sending invalid gossip, lose points; time restores them towards 0 at
//! `recoveryPerMinute`. The score is fed into GossipSub as the peer's application score
//! (P₅ of the GossipSub v1.1 score function), so low-reputation peers are also pruned from
//! meshes; at or below `banThreshold` the peer is banned: disconnected and blocked for
//! `banMs`, after which it starts again from 0. A score stops at the threshold: offences
//! counted while a peer is banned do not push it further down (a ban is the most a peer
//! can get, and the score stays a readable figure).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use openmatch_gossip_crds::sidecar_config::ReputationConfig;

/// What a peer did wrong; [`Offence::as_str`] is its metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offence {
    /// Its batch hash was in the minority when the batch was agreed.
    BatchMinority,
    /// Its result hash was outside the majority result.
    ResultMinority,
    /// It sent an invalid gossip message.
    InvalidMessage,
    /// Its repair response carried orders not asked for or not its own.
    BadRepair,
    /// It sent a digest set, then refused to serve the orders it named: it answered a
    /// `FetchOrders` for that batch with "unknown batch" on the same connection, within
    /// the window in which an honest member cannot have dropped the batch (PROTOCOL §11.5).
    UnservedRepair,
}

impl Offence {
    /// Every offence, for creating their series at 0.
    pub(crate) const ALL: [Offence; 5] = [
        Offence::BatchMinority,
        Offence::ResultMinority,
        Offence::InvalidMessage,
        Offence::BadRepair,
        Offence::UnservedRepair,
    ];

    /// Metric label: `batch_minority`, `result_minority`, `invalid_message`, `bad_repair`,
    /// `unserved_repair`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Offence::BatchMinority => "batch_minority",
            Offence::ResultMinority => "result_minority",
            Offence::InvalidMessage => "invalid_message",
            Offence::BadRepair => "bad_repair",
            Offence::UnservedRepair => "unserved_repair",
        }
    }
}

/// Scores and bans.
#[derive(Debug)]
pub(crate) struct Reputation {
    config: ReputationConfig,
    scores: HashMap<PeerId, (f64, Instant)>,
    bans: HashMap<PeerId, Instant>,
}

/// Reputation figures for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Summary {
    /// Peers with a non-zero score.
    pub(crate) scored: usize,
    /// Lowest score (0 when none).
    pub(crate) min: f64,
    /// Peers banned now.
    pub(crate) banned: usize,
}

impl Reputation {
    /// Empty: every peer starts at 0.
    pub(crate) fn new(config: ReputationConfig) -> Self {
        Reputation { config, scores: HashMap::new(), bans: HashMap::new() }
    }

    /// Replaces the thresholds (hot reload); scores are kept.
    pub(crate) fn set_config(&mut self, config: ReputationConfig) {
        self.config = config;
    }

    /// `peer`'s score at `now` (0 for unknown peers; ≤ 0 always).
    pub(crate) fn score(&self, peer: &PeerId, now: Instant) -> f64 {
        self.scores.get(peer).map_or(0.0, |(s, at)| self.recovered(*s, *at, now))
    }

    fn recovered(&self, score: f64, at: Instant, now: Instant) -> f64 {
        let minutes = now.saturating_duration_since(at).as_secs_f64() / 60.0;
        (score + minutes * self.config.recovery_per_minute).min(0.0)
    }

    /// Records an offence; returns the new score (never below `banThreshold`) and whether
    /// the peer is now to be banned (it was not banned before and fell to the threshold).
    pub(crate) fn penalize(&mut self, peer: PeerId, offence: Offence, now: Instant) -> (f64, bool) {
        let penalty = match offence {
            Offence::BatchMinority | Offence::ResultMinority => self.config.minority_penalty,
            Offence::InvalidMessage | Offence::BadRepair | Offence::UnservedRepair => {
                self.config.invalid_message_penalty
            }
        };
        let score = (self.score(&peer, now) - penalty).max(self.config.ban_threshold);
        self.scores.insert(peer, (score, now));
        let ban = score <= self.config.ban_threshold && !self.bans.contains_key(&peer);
        if ban {
            self.bans.insert(peer, now + Duration::from_millis(self.config.ban_ms as u64));
        }
        (score, ban)
    }

    /// Whether `peer` is banned at `now`.
    pub(crate) fn is_banned(&self, peer: &PeerId, now: Instant) -> bool {
        self.bans.get(peer).is_some_and(|until| *until > now)
    }

    /// Ends the bans that expired by `now`; those peers start again from 0.
    pub(crate) fn expire_bans(&mut self, now: Instant) -> Vec<PeerId> {
        let expired: Vec<PeerId> = self.bans.iter().filter(|(_, until)| **until <= now).map(|(p, _)| *p).collect();
        for p in &expired {
            self.bans.remove(p);
            self.scores.remove(p);
        }
        expired
    }

    /// Figures for metrics.
    pub(crate) fn summary(&self, now: Instant) -> Summary {
        let scores: Vec<f64> =
            self.scores.iter().map(|(_, (s, at))| self.recovered(*s, *at, now)).filter(|s| *s < 0.0).collect();
        Summary {
            scored: scores.len(),
            min: scores.iter().copied().fold(0.0, f64::min),
            banned: self.bans.values().filter(|u| **u > now).count(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rep() -> Reputation {
        Reputation::new(ReputationConfig {
            minority_penalty: 10.0,
            invalid_message_penalty: 5.0,
            ban_threshold: -30.0,
            ban_ms: 1000,
            recovery_per_minute: 60.0,
        })
    }

    #[test]
    fn third_minority_offence_bans_once() {
        let mut r = rep();
        let (p, t) = (PeerId::random(), Instant::now());
        assert_eq!(r.penalize(p, Offence::BatchMinority, t), (-10.0, false));
        assert_eq!(r.penalize(p, Offence::BatchMinority, t), (-20.0, false));
        assert_eq!(r.penalize(p, Offence::BatchMinority, t), (-30.0, true));
        assert!(r.is_banned(&p, t));
        assert_eq!(r.penalize(p, Offence::BatchMinority, t), (-30.0, false), "already banned; stops at the threshold");
        for _ in 0..20 {
            r.penalize(p, Offence::InvalidMessage, t);
        }
        assert_eq!(r.score(&p, t), -30.0, "never below the ban threshold");
        assert_eq!(r.summary(t).banned, 1);
        assert_eq!(r.summary(t).min, -30.0);
    }

    #[test]
    fn scores_recover_towards_zero() {
        let mut r = rep();
        let (p, t) = (PeerId::random(), Instant::now());
        r.penalize(p, Offence::InvalidMessage, t);
        assert_eq!(r.score(&p, t + Duration::from_secs(2)), -3.0);
        assert_eq!(r.score(&p, t + Duration::from_secs(60)), 0.0, "never above 0");
        assert_eq!(r.score(&PeerId::random(), t), 0.0);
    }

    #[test]
    fn bans_expire_and_the_peer_starts_over() {
        let mut r = rep();
        let (p, t) = (PeerId::random(), Instant::now());
        for _ in 0..3 {
            r.penalize(p, Offence::BatchMinority, t);
        }
        assert!(r.expire_bans(t + Duration::from_millis(999)).is_empty());
        assert_eq!(r.expire_bans(t + Duration::from_millis(1000)), vec![p]);
        assert!(!r.is_banned(&p, t + Duration::from_millis(1000)));
        assert_eq!(r.score(&p, t + Duration::from_millis(1000)), 0.0);
    }
}
