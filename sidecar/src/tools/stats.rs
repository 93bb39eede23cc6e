//! Latency and checksum bookkeeping shared by the reference engine and the main job.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::proto::Order;
use crate::wire;

/// Highest latency recorded, µs (60 s); larger values are clamped.
const MAX_LATENCY_US: u64 = 60_000_000;

/// A latency histogram in µs (HdrHistogram, 3 significant digits).
pub struct Latency {
    hist: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Latency { hist: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid bounds") }
    }
}

/// Percentiles of a latency histogram, µs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Samples.
    pub count: u64,
    /// Median, µs.
    pub p50_us: u64,
    /// 99th percentile, µs.
    pub p99_us: u64,
    /// Largest, µs.
    pub max_us: u64,
}

impl Latency {
    /// Records one sample of `us` microseconds (clamped to 1 µs .. 60 s).
    pub fn record(&mut self, us: u64) {
        let _ = self.hist.record(us.clamp(1, MAX_LATENCY_US));
    }

    /// Records `n` samples of `us`.
    pub fn record_n(&mut self, us: u64, n: u64) {
        let _ = self.hist.record_n(us.clamp(1, MAX_LATENCY_US), n);
    }

    /// The recorded values as (value µs, count) pairs, for shipping in a report.
    pub fn buckets(&self) -> Vec<(u64, u64)> {
        self.hist.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect()
    }

    /// Adds buckets from [`Latency::buckets`].
    pub fn merge_buckets(&mut self, buckets: &[(u64, u64)]) {
        for &(v, n) in buckets {
            self.record_n(v, n);
        }
    }

    /// p50, p99 and max.
    pub fn summary(&self) -> LatencySummary {
        if self.hist.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: self.hist.len(),
            p50_us: self.hist.value_at_quantile(0.50),
            p99_us: self.hist.value_at_quantile(0.99),
            max_us: self.hist.max(),
        }
    }
}

/// Order-independent checksum of a set of orders' content (id, market, side, price,
/// quantity, kind, client timestamp, freeze proof — not origin, epoch or submit time, which
/// the sidecar stamps): the wrapping sum of the first 16 bytes of each order's digest
/// computed with origin and epoch cleared. Equal sets give equal checksums regardless of
/// arrival order; a changed field changes it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checksum(pub u128);

impl Checksum {
    /// Adds one order.
    pub fn add(&mut self, order: &Order) {
        self.add_term(Checksum::term(order));
    }

    /// One order's term of the sum: the first 16 bytes of its content digest.
    pub fn term(order: &Order) -> u128 {
        let d = wire::content_digest(order);
        u128::from_be_bytes(d[..16].try_into().expect("16 bytes"))
    }

    /// Adds one order given its [`Checksum::term`] (an order kept only as its term).
    pub fn add_term(&mut self, term: u128) {
        self.0 = self.0.wrapping_add(term);
    }

    /// Hex form for reports.
    pub fn hex(&self) -> String {
        format!("{:032x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let mut l = Latency::default();
        for us in 1..=100 {
            l.record(us);
        }
        let s = l.summary();
        assert_eq!((s.count, s.p50_us, s.p99_us, s.max_us), (100, 50, 99, 100));
        let mut merged = Latency::default();
        merged.merge_buckets(&l.buckets());
        assert_eq!(merged.summary(), s);
    }

    #[test]
    fn checksum_is_order_independent_and_content_sensitive() {
        let a = Order { id: 1, market: "M".into(), quantity_lots: 3, ..Default::default() };
        let b = Order { id: 2, ..a.clone() };
        let (mut x, mut y) = (Checksum::default(), Checksum::default());
        x.add(&a);
        x.add(&b);
        y.add(&Order { origin: vec![9].into(), epoch: 4, ..b.clone() });
        y.add(&a);
        assert_eq!(x, y);
        let mut z = Checksum::default();
        z.add(&a);
        z.add(&Order { quantity_lots: 4, ..b });
        assert_ne!(x, z);
    }
}
