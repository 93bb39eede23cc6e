//! The invariant every scenario must hold at the end, checked over the engines' reports
//! alone ([`check`], a pure function), and the figures each scenario prints.
//!
//! For every engine `i`:
//! - every order it submitted and saw accepted has an outcome: `unresolved == 0`;
//! - all of them ended committed: `committed == sent` (the reference engine resubmits what
//!   was excluded until it is committed);
//! - every other engine `j` holds exactly those orders from `i`, with the same content:
//!   `j.by_origin[i.origin]` has `orders == i.committed` and checksum
//!   `i.committed_checksum` (`by_origin` counts orders of agreed batches);
//! - no engine received orders from an origin that is not another engine of the run (a
//!   hostile peer's);
//! - no order reached any engine twice: `duplicates == 0`;
//! - its sidecar agreed at least one batch, and every batch agreed at two engines has the
//!   same hash at both.
//!
//! `missing` sums, over every pair (i, j ≠ i), the committed orders of `i` that `j` lacks,
//! plus every engine's `unresolved`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use openmatch_gossip_sidecar::tools::cluster::divergent_batches;
use openmatch_gossip_sidecar::tools::engine::EngineReport;

/// The figures of one scenario, summed over its engines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Figures {
    /// Orders submitted (and accepted).
    pub(crate) submitted: u64,
    /// Own orders committed.
    pub(crate) committed: u64,
    /// Exclusion outcomes received.
    pub(crate) excluded: u64,
    /// Excluded orders resubmitted.
    pub(crate) resubmitted: u64,
    /// Committed orders missing at another engine, plus unresolved orders.
    pub(crate) missing: u64,
    /// Orders received more than once.
    pub(crate) duplicates: u64,
    /// Distinct batches agreed, over all engines.
    pub(crate) batches: usize,
}

impl fmt::Display for Figures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "submitted={} committed={} excluded={} resubmitted={} missing={} duplicates={} batches={}",
            self.submitted,
            self.committed,
            self.excluded,
            self.resubmitted,
            self.missing,
            self.duplicates,
            self.batches
        )
    }
}

/// The outcome of [`check`]: the figures and every violation of the invariant found (empty
/// when it holds).
#[derive(Debug, Clone, Default)]
pub(crate) struct Verdict {
    /// What moved.
    pub(crate) figures: Figures,
    /// One line per violation, naming the engines involved.
    pub(crate) violations: Vec<String>,
}

/// Checks the invariant (module docs) over the reports of all engines of a run.
pub(crate) fn check(reports: &[EngineReport]) -> Verdict {
    let mut v = Vec::new();
    let mut figures = Figures::default();
    if reports.is_empty() {
        v.push("no engine reported".to_owned());
    }
    let origins: BTreeMap<&str, usize> = reports.iter().map(|r| (r.origin.as_str(), r.shard)).collect();
    if origins.len() != reports.len() {
        v.push(format!("engines share origins: {:?}", reports.iter().map(|r| &r.origin).collect::<Vec<_>>()));
    }
    for i in reports {
        figures.submitted += i.sent;
        figures.committed += i.committed;
        figures.excluded += i.excluded;
        figures.resubmitted += i.resubmitted;
        figures.duplicates += i.duplicates;
        figures.missing += i.unresolved;
        if i.sent == 0 {
            v.push(format!("engine {} submitted nothing", i.shard));
        }
        if i.unresolved != 0 {
            v.push(format!("engine {}: {} accepted orders have no outcome", i.shard, i.unresolved));
        }
        if i.committed != i.sent {
            v.push(format!(
                "engine {}: committed {} of {} submitted (excluded {}, resubmitted {})",
                i.shard, i.committed, i.sent, i.excluded, i.resubmitted
            ));
        }
        if i.duplicates != 0 {
            v.push(format!("engine {}: {} orders received more than once", i.shard, i.duplicates));
        }
        if i.agreed_batches.is_empty() {
            v.push(format!("engine {}: its sidecar agreed no batch", i.shard));
        }
        for j in reports.iter().filter(|j| j.shard != i.shard) {
            let (orders, checksum) = j.by_origin.get(&i.origin).map_or((0, ""), |t| (t.orders, t.checksum.as_str()));
            figures.missing += i.committed.saturating_sub(orders);
            if orders != i.committed {
                v.push(format!(
                    "engine {} holds {orders} orders of engine {}, which committed {}",
                    j.shard, i.shard, i.committed
                ));
            } else if checksum != i.committed_checksum {
                v.push(format!(
                    "engine {} holds engine {}'s {orders} committed orders with other content (checksum {checksum}, committed {})",
                    j.shard, i.shard, i.committed_checksum
                ));
            }
        }
        for (origin, tally) in &i.by_origin {
            if origins.get(origin.as_str()).is_none_or(|&shard| shard == i.shard) {
                v.push(format!("engine {} received {} orders from unknown origin {origin}", i.shard, tally.orders));
            }
        }
    }
    figures.batches = reports.iter().flat_map(|r| r.agreed_batches.keys()).collect::<BTreeSet<_>>().len();
    v.extend(divergent_batches(reports).into_iter().map(|b| format!("batch agreed with different hashes: {b}")));
    Verdict { figures, violations: v }
}

#[cfg(test)]
mod tests {
    use openmatch_gossip_sidecar::tools::engine::OriginTally;

    use super::*;

    const ORIGINS: [&str; 3] = ["12D3KooWA", "12D3KooWB", "12D3KooWC"];

    /// Three engines that each sent and committed `sent[i]` orders, all delivered to the
    /// others, and agreed the same two batches.
    fn healthy(sent: [u64; 3]) -> Vec<EngineReport> {
        (0..3)
            .map(|i| EngineReport {
                shard: i,
                origin: ORIGINS[i].into(),
                sent: sent[i],
                committed: sent[i],
                committed_checksum: format!("sum{i}"),
                by_origin: (0..3)
                    .filter(|&j| j != i)
                    .map(|j| (ORIGINS[j].into(), OriginTally { orders: sent[j], checksum: format!("sum{j}") }))
                    .collect(),
                agreed_batches: [("BTC-USDT#7", "aa"), ("ETH-USDT#7", "bb")]
                    .into_iter()
                    .map(|(k, h)| (k.to_owned(), h.to_owned()))
                    .collect(),
                ..Default::default()
            })
            .collect()
    }

    #[test]
    fn a_lossless_run_holds_with_its_figures() {
        let mut reports = healthy([10, 20, 30]);
        reports[1].excluded = 4;
        reports[1].resubmitted = 4;
        let v = check(&reports);
        assert!(v.violations.is_empty(), "{:?}", v.violations);
        assert_eq!(
            v.figures,
            Figures {
                submitted: 60,
                committed: 60,
                excluded: 4,
                resubmitted: 4,
                missing: 0,
                duplicates: 0,
                batches: 2
            }
        );
        assert_eq!(
            v.figures.to_string(),
            "submitted=60 committed=60 excluded=4 resubmitted=4 missing=0 duplicates=0 batches=2"
        );
    }

    #[test]
    fn orders_missing_at_a_peer_are_counted_and_named() {
        let mut reports = healthy([10, 20, 30]);
        // Engine 0 lacks 6 of engine 2's orders; engine 1 lacks 1 of engine 0's.
        reports[0].by_origin.get_mut(ORIGINS[2]).unwrap().orders = 24;
        reports[1].by_origin.get_mut(ORIGINS[0]).unwrap().orders = 9;
        let v = check(&reports);
        assert_eq!(v.figures.missing, 7);
        assert_eq!(v.violations.len(), 2, "{:?}", v.violations);
        assert!(v.violations.iter().any(|m| m == "engine 0 holds 24 orders of engine 2, which committed 30"));
        assert!(v.violations.iter().any(|m| m == "engine 1 holds 9 orders of engine 0, which committed 10"));
    }

    #[test]
    fn uncommitted_and_unresolved_orders_fail() {
        let mut reports = healthy([10, 20, 30]);
        // Engine 2 committed only 27 (and the others hold those 27); 3 have no outcome.
        reports[2].committed = 27;
        reports[2].unresolved = 3;
        for r in &mut reports[..2] {
            r.by_origin.get_mut(ORIGINS[2]).unwrap().orders = 27;
        }
        let v = check(&reports);
        assert_eq!(v.figures.missing, 3, "unresolved counts as missing");
        assert_eq!(v.figures.committed, 57);
        assert!(v.violations.iter().any(|m| m.contains("engine 2: 3 accepted orders have no outcome")));
        assert!(v.violations.iter().any(|m| m.starts_with("engine 2: committed 27 of 30 submitted")));
    }

    #[test]
    fn a_report_with_no_outcomes_fails() {
        // What an engine without outcome events reports: nothing committed, no batches.
        let mut reports = healthy([10, 20, 30]);
        for r in &mut reports {
            r.committed = 0;
            r.committed_checksum = String::new();
            r.agreed_batches.clear();
        }
        let v = check(&reports);
        assert!(v.violations.iter().any(|m| m.starts_with("engine 0: committed 0 of 10")));
        assert!(v.violations.iter().any(|m| m == "engine 1: its sidecar agreed no batch"));
        // The peers hold more than was committed: a count mismatch, not missing orders.
        assert!(v.violations.iter().any(|m| m == "engine 1 holds 10 orders of engine 0, which committed 0"));
        assert_eq!(v.figures.missing, 0);
    }

    #[test]
    fn altered_content_fails() {
        let mut reports = healthy([10, 20, 30]);
        reports[1].by_origin.get_mut(ORIGINS[0]).unwrap().checksum = "other".into();
        let v = check(&reports);
        assert_eq!(v.figures.missing, 0);
        assert_eq!(v.violations.len(), 1, "{:?}", v.violations);
        assert!(v.violations[0].contains("engine 1 holds engine 0's 10 committed orders with other content"));
    }

    #[test]
    fn duplicates_fail() {
        let mut reports = healthy([10, 20, 30]);
        reports[2].duplicates = 5;
        let v = check(&reports);
        assert_eq!(v.figures.duplicates, 5);
        assert_eq!(v.violations, vec!["engine 2: 5 orders received more than once".to_owned()]);
    }

    #[test]
    fn differing_batch_hashes_fail_and_batches_at_one_engine_are_fine() {
        let mut reports = healthy([10, 20, 30]);
        reports[2].agreed_batches.insert("BTC-USDT#7".into(), "ff".into());
        reports[0].agreed_batches.insert("BTC-USDT#8".into(), "cc".into());
        let v = check(&reports);
        assert_eq!(v.figures.batches, 3);
        assert_eq!(v.violations.len(), 1, "{:?}", v.violations);
        assert!(v.violations[0].starts_with("batch agreed with different hashes: BTC-USDT#7: "), "{}", v.violations[0]);
    }

    #[test]
    fn orders_from_an_unknown_origin_fail() {
        let mut reports = healthy([10, 20, 30]);
        reports[0].by_origin.insert("12D3KooWHostile".into(), OriginTally { orders: 2, checksum: "x".into() });
        let v = check(&reports);
        assert_eq!(v.violations, vec!["engine 0 received 2 orders from unknown origin 12D3KooWHostile".to_owned()]);
    }

    #[test]
    fn nothing_to_check_is_a_failure() {
        assert_eq!(check(&[]).violations, vec!["no engine reported".to_owned()]);
        let mut reports = healthy([0, 20, 30]);
        reports[0].agreed_batches.clear();
        let v = check(&reports);
        assert!(v.violations.iter().any(|m| m == "engine 0 submitted nothing"), "{:?}", v.violations);
    }
}
