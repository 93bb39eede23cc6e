//! Epochs (DESIGN §4): each market advances in epochs, and epoch `e`'s orders form batch
//! `(market, e)`. Epoch `e` goes COLLECT → MATCH (sealed, compared, repaired) → SETTLE
//! (results compared); epoch `e + 1` collects while `e` matches.
//!
//! With [`SealingMode::Clock`] the epoch of an instant is `floor(unix_ms / epochMs)` on every
//! node, so nodes agree on boundaries as far as their clocks agree; batch `e` is sealed at
//! `(e + 1) × epochMs + graceMs`. With [`SealingMode::Engine`] each market has a counter the
//! engine advances by sealing.

use std::collections::HashMap;
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

    /// Clock mode: whether batch `epoch` is due to be sealed at `unix_ms` (its epoch ended
    /// and the grace passed). Always `false` in engine mode.
    pub(crate) fn seal_due(&self, epoch: u64, unix_ms: u64) -> bool {
        self.mode == SealingMode::Clock && unix_ms >= (epoch + 1).saturating_mul(self.epoch_ms) + self.grace_ms
    }

    /// Engine mode: the engine seals `market`'s current epoch; returns it and moves the
    /// market to the next one. `seen` is the highest epoch of this market seen from peers,
    /// so a node that fell behind catches up instead of reusing a closed epoch.
    pub(crate) fn advance(&mut self, market: &str, seen: Option<u64>) -> u64 {
        let cur = self.current.entry(market.to_owned()).or_insert(0);
        if let Some(s) = seen {
            *cur = (*cur).max(s);
        }
        let sealed = *cur;
        *cur += 1;
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
        assert_eq!(c.advance("A", Some(7)), 7, "a peer was already at 7");
        assert_eq!(c.epoch_for("A", 0), 8);
        assert!(!c.seal_due(0, u64::MAX));
    }
}
