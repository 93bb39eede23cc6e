//! Epochs (DESIGN §4): each market advances in epochs, and epoch `e`'s orders form batch
//! `(market, e)`. Epoch `e` goes COLLECT → MATCH (sealed, compared, repaired) → SETTLE
//! (results compared); epoch `e + 1` collects while `e` matches.
//!
//! With [`SealingMode::Clock`] the epoch of an instant is `floor(unix_ms / epochMs)` on every
//! node, so nodes agree on boundaries as far as their clocks agree; batch `e` is sealed at
//! `(e + 1) × epochMs + graceMs`. With [`SealingMode::Engine`] each market has a counter the
//! engine advances by sealing.
//!
//! ## The epoch window
//! Gossip (orders, seals, results) is admitted only for epochs inside a window around the
//! node's current epoch ([`EpochClock::window`]); anything outside is refused before it
//! creates state, so a peer cannot make a node hold batches for epochs long past or far
//! ahead, or drive epoch arithmetic to overflow.
//! - Clock sealing, current epoch `c`: from the oldest epoch whose batch can still be
//!   undecided, `floor((now − graceMs − repairWindowMs − resultTimeoutMs) / epochMs) − 1`,
//!   to `c + 1`. One epoch of slack on each side allows for clock skew between nodes
//!   below `epochMs`.
//! - Engine sealing, current (collecting) epoch `c` of the market:
//!   `c − retainedBatches` to `c + retainedBatches`, since engines seal at their own pace.

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::time::{SystemTime, UNIX_EPOCH};

use openmatch_gossip_crds::sidecar_config::{ConsensusConfig, SealingMode};

/// The wall clock, in nanoseconds since the Unix epoch (0 if the clock is before 1970):
/// the time that epochs, submit stamps and propagation latency are measured in.
pub fn unix_now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// Assigns epochs to new local orders and says when batches are due to be sealed.
#[derive(Debug, Clone)]
pub(crate) struct EpochClock {
    mode: SealingMode,
    epoch_ms: u64,
    grace_ms: u64,
    /// How far back a batch can still be undecided, ms: grace + repair window + result
    /// timeout.
    undecided_ms: u64,
    /// Engine mode: epochs admitted on either side of the current one.
    engine_span: u64,
    /// Engine mode: each market's current (collecting) epoch.
    current: HashMap<String, u64>,
}

impl EpochClock {
    /// A clock for `config`.
    pub(crate) fn new(config: &ConsensusConfig) -> Self {
        EpochClock {
            mode: config.sealing,
            epoch_ms: config.epoch_ms.max(1) as u64,
            grace_ms: config.grace_ms as u64,
            undecided_ms: config.grace_ms as u64 + config.repair_window_ms as u64 + config.result_timeout_ms as u64,
            engine_span: u64::from(config.retained_batches.max(1)),
            current: HashMap::new(),
        }
    }

    /// The sealing mode.
    pub(crate) fn mode(&self) -> SealingMode {
        self.mode
    }

    /// The epoch a local order of `market` submitted at `unix_ms` joins.
    pub(crate) fn epoch_for(&self, market: &str, unix_ms: u64) -> u64 {
        match self.mode {
            SealingMode::Clock => unix_ms / self.epoch_ms,
            SealingMode::Engine => self.current.get(market).copied().unwrap_or(0),
        }
    }

    /// The epochs of `market` whose gossip this node admits at `unix_ms` (see the module
    /// docs).
    pub(crate) fn window(&self, market: &str, unix_ms: u64) -> RangeInclusive<u64> {
        match self.mode {
            SealingMode::Clock => {
                let oldest = unix_ms.saturating_sub(self.undecided_ms) / self.epoch_ms;
                oldest.saturating_sub(1)..=(unix_ms / self.epoch_ms).saturating_add(1)
            }
            SealingMode::Engine => {
                let c = self.epoch_for(market, unix_ms);
                c.saturating_sub(self.engine_span)..=c.saturating_add(self.engine_span)
            }
        }
    }

    /// Clock mode: whether batch `epoch` is due to be sealed at `unix_ms` (its epoch ended
    /// and the grace passed); an epoch whose seal time is beyond `u64` ms never is. Always
    /// `false` in engine mode.
    pub(crate) fn seal_due(&self, epoch: u64, unix_ms: u64) -> bool {
        let at =
            epoch.checked_add(1).and_then(|e| e.checked_mul(self.epoch_ms)).and_then(|t| t.checked_add(self.grace_ms));
        self.mode == SealingMode::Clock && at.is_some_and(|at| unix_ms >= at)
    }

    /// Engine mode: the engine seals `market`'s current epoch; returns it and moves the
    /// market to the next one. `peer_sealed` is the highest epoch of this market that a
    /// peer has sealed: a node that fell behind (a restart) catches up to it instead of
    /// reusing a closed epoch, while nodes in step keep sealing the same numbers — an order
    /// a peer stamped with its next epoch does not move this node past its current one.
    pub(crate) fn advance(&mut self, market: &str, peer_sealed: Option<u64>) -> u64 {
        let cur = self.current.entry(market.to_owned()).or_insert(0);
        if let Some(s) = peer_sealed {
            *cur = (*cur).max(s);
        }
        let sealed = *cur;
        *cur = cur.saturating_add(1);
        sealed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(mode: SealingMode) -> EpochClock {
        EpochClock::new(&ConsensusConfig { sealing: mode, epoch_ms: 1000, grace_ms: 200, ..Default::default() })
    }

    #[test]
    fn clock_epochs_and_seal_times() {
        let c = clock(SealingMode::Clock);
        assert_eq!(c.epoch_for("M", 5_999), 5);
        assert_eq!(c.epoch_for("M", 6_000), 6);
        assert!(!c.seal_due(5, 6_199), "grace not over");
        assert!(c.seal_due(5, 6_200));
    }

    #[test]
    fn engine_epochs_advance_per_market_and_catch_up() {
        let mut c = clock(SealingMode::Engine);
        assert_eq!(c.epoch_for("A", 123_456), 0);
        assert_eq!(c.advance("A", None), 0);
        assert_eq!(c.epoch_for("A", 0), 1);
        assert_eq!(c.epoch_for("B", 0), 0, "markets are independent");
        assert_eq!(c.advance("A", Some(7)), 7, "a peer had already sealed 7");
        assert_eq!(c.epoch_for("A", 0), 8);
        assert!(!c.seal_due(0, u64::MAX));
        assert_eq!(c.advance("B", Some(u64::MAX)), u64::MAX, "no overflow");
        assert_eq!(c.epoch_for("B", 0), u64::MAX);
    }

    #[test]
    fn extreme_epochs_never_overflow() {
        let c = clock(SealingMode::Clock);
        assert!(!c.seal_due(u64::MAX, u64::MAX), "sealed at a time past u64 ms: never");
        assert!(!c.seal_due(u64::MAX / 1000, u64::MAX));
        assert_eq!(c.window("M", u64::MAX), (u64::MAX - 10_200) / 1000 - 1..=u64::MAX / 1000 + 1);
        assert_eq!(c.window("M", 0), 0..=1);
    }

    #[test]
    fn the_window_spans_what_can_still_be_undecided() {
        // 1 s epochs, 200 ms grace; repair window 5 s and result timeout 5 s (defaults).
        let c = clock(SealingMode::Clock);
        let w = c.window("M", 100_500);
        assert_eq!(w, 89..=101, "oldest undecided: (100.5 s - 10.2 s) / 1 s = 90, minus one for skew");
        let mut e = clock(SealingMode::Engine);
        assert_eq!(e.window("M", 0), 0..=64, "retainedBatches (64) on either side");
        for _ in 0..100 {
            e.advance("M", None);
        }
        assert_eq!(e.window("M", 0), 36..=164);
        assert_eq!(e.window("N", 0), 0..=64, "per market");
    }
}
