//! The benchmark: the main job's setup at maximum speed and at real pace, each beside the
//! plain-TCP baseline (the same engines exchanging the same orders directly, no gossip, no
//! crypto), so figures read as ratios to the baseline. At real pace a third run measures
//! the **stack floor**: the same engines through `openmatch-gossip relay` processes
//! ([`crate::tools::relay`]), i.e. the mandated libp2p + gRPC stack with none of the sidecar's
//! logic, so the latency the sidecar adds reads apart from what the stack itself costs.
//! Each sidecar run also reports the largest sidecar peak RSS as a multiple of the
//! sidecars' queue memory bound (`--queue-memory-bytes`, default 64 MiB): the bound covers
//! the queues, not the whole process, so the ratio shows what the rest costs. With
//! `--real-pairs N`, each real-pace window runs the floor and openmatch-gossip N times each,
//! interleaved, and a second table gives the p99 ratio of each pair, their median with a
//! distribution-free confidence interval, and the ratio of the pooled p99s: one window's
//! p99 is too noisy here to judge a 1.2× target.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::tools::cluster::{self, ClusterArgs, ClusterReport};
use crate::tools::engine::{Pace, ReplayArgs, TransportKind};
use crate::tools::stats::Latency;

/// Flags of `openmatch-gossip bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Seconds of the recording replayed at max speed (default: all of it).
    #[arg(long)]
    pub max_duration_s: Option<f64>,
    /// Seconds of the recording replayed at real pace, in each of two windows: from the
    /// start (including the initial book snapshot, a one-off burst of ~1,850 orders per
    /// market) and from 10 s in (steady flow).
    #[arg(long, default_value_t = 60.0)]
    pub real_duration_s: f64,
    /// Also write the table as Markdown to this file.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// Runs of the stack floor and of openmatch-gossip in each real-pace window, in
    /// interleaved pairs. One window's p99 on a shared 2-core machine moves by about
    /// ±2 ms from run to run, as much as the difference being measured; with more than
    /// one pair a second table gives each pair's p99 ratio, their median and its
    /// confidence interval (the whole range, 93.75 %, for 5 pairs; at least 95 % from 6
    /// pairs), and the ratio of the p99s pooled over every pair's deliveries. The first
    /// pair fills the main table.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub real_pairs: u32,
}

/// Each pair's p99 ratio (gossip / floor), and the ratio of the p99s pooled over every
/// pair's deliveries; `pairs` is `(floor, gossip)` runs of one window.
fn p99_ratios(pairs: &[(ClusterReport, ClusterReport)]) -> (Vec<f64>, f64) {
    let ratio = |g: u64, f: u64| g as f64 / f.max(1) as f64;
    let per_pair = pairs.iter().map(|(f, g)| ratio(g.latency.p99_us, f.latency.p99_us)).collect();
    let pooled = |side: &dyn Fn(&(ClusterReport, ClusterReport)) -> &ClusterReport| {
        let mut all = Latency::default();
        for e in pairs.iter().flat_map(|p| &side(p).engines) {
            all.merge_buckets(&e.latency_buckets);
        }
        all.summary().p99_us
    };
    (per_pair, ratio(pooled(&|p| &p.1), pooled(&|p| &p.0)))
}

/// The median of `xs` (the mean of the middle two for an even count); `xs` not empty.
fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 }
}

/// A distribution-free confidence interval for the median of `xs`: `(lo, hi, coverage)`,
/// where `lo` and `hi` are the k-th smallest and k-th largest value for the largest `k`
/// whose coverage `1 − 2·P(Bin(n, ½) ≤ k − 1)` is still at least 95 %, and `k = 1`
/// (the whole range) when even that falls short: 93.75 % for 5 values, 50 % for 2.
/// It assumes only that the values are independent draws of one distribution (here:
/// interleaved pairs on the same machine). Source: W. J. Conover, *Practical
/// Nonparametric Statistics*, 3rd ed., §3.2 (confidence interval for a quantile).
/// `xs` not empty.
fn median_interval(xs: &[f64]) -> (f64, f64, f64) {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    // P(Bin(n, ½) ≤ j), exactly enough for the few pairs a bench runs.
    let cdf = |j: usize| {
        let mut choose = 1.0_f64;
        let mut sum = 0.0;
        for i in 0..=j {
            if i > 0 {
                choose = choose * (n + 1 - i) as f64 / i as f64;
            }
            sum += choose;
        }
        sum / 2f64.powi(n as i32)
    };
    let coverage = |k: usize| 1.0 - 2.0 * cdf(k - 1);
    let mut k = 1;
    while 2 * (k + 1) <= n && coverage(k + 1) >= 0.95 {
        k += 1;
    }
    (v[k - 1], v[n - k], coverage(k))
}

/// One table row; `bounded`: the processes are sidecars, which have the queue memory
/// bound (relays and the baseline do not: their ratio column is empty).
fn row(label: &str, r: &ClusterReport, base: Option<&ClusterReport>, bounded: bool) -> String {
    let n = r.engines.len();
    let rates: Vec<f64> = (0..n).map(|i| r.delivered_rate(i)).collect();
    let min_rate = rates.iter().copied().fold(f64::INFINITY, f64::min);
    let expected: u64 = r.engines.iter().map(|e| e.expected).sum();
    let received: u64 = r.engines.iter().map(|e| e.received).sum();
    let ratio = if expected > 0 { received as f64 / expected as f64 } else { 1.0 };
    let vs = base.map_or("1.00 (baseline)".to_owned(), |b| {
        let bmin = (0..b.engines.len()).map(|i| b.delivered_rate(i)).fold(f64::INFINITY, f64::min);
        format!("{:.3}", min_rate / bmin)
    });
    let cpu: Vec<String> = r.sidecars.iter().map(|u| format!("{:.1}", u.cpu_secs)).collect();
    let rss: Vec<String> = r.sidecars.iter().map(|u| format!("{:.0}", u.peak_rss_mib)).collect();
    let bound_mib = crate::config::DEFAULT_QUEUE_MEMORY_BYTES as f64 / f64::from(1 << 20);
    let most = r.sidecars.iter().map(|u| u.peak_rss_mib).fold(0.0, f64::max);
    format!(
        "| {label} | {} | {:.4} | {vs} | {} | {} | {} | {} | {} | {} |",
        rates.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(" / "),
        ratio,
        r.latency.p50_us,
        r.latency.p99_us,
        r.latency.max_us,
        if cpu.is_empty() { "–".into() } else { cpu.join(" / ") },
        if rss.is_empty() { "–".into() } else { rss.join(" / ") },
        if bounded && !rss.is_empty() { format!("{:.2}", most / bound_mib) } else { "–".into() },
    )
}

/// Runs every configuration and prints the table; `true` if every run was lossless.
pub async fn run(args: &BenchArgs, binary: &Path) -> anyhow::Result<bool> {
    let base = ClusterArgs {
        nodes: 3,
        replay: ReplayArgs::MAX,
        transport: TransportKind::Sidecar,
        grace_ms: 5_000,
        work_dir: None,
        keep: false,
        json: false,
    };
    let mut table = String::new();
    let _ = writeln!(
        table,
        "| run | delivered orders/s per engine | delivery ratio | min rate vs baseline | p50 µs | p99 µs | max µs | sidecar CPU s | sidecar peak RSS MiB | peak RSS / queue memory bound |"
    );
    let _ = writeln!(table, "|---|---|---|---|---|---|---|---|---|---|");
    let mut pair_table = String::new();
    let mut ok = true;
    let real = Some(args.real_duration_s);
    let runs = [
        (Pace::Max, 0.0, args.max_duration_s, "max speed".to_owned()),
        (Pace::Real, 0.0, real, format!("real pace, first {:.0} s (with snapshot burst)", args.real_duration_s)),
        (Pace::Real, 10.0, real, format!("real pace, {:.0}–{:.0} s (steady flow)", 10.0, 10.0 + args.real_duration_s)),
    ];
    for (pace, from_s, duration, label) in runs {
        let replay = ReplayArgs { pace, from_s, duration_s: duration, speed: 1.0 };
        let tcp = cluster::run(&ClusterArgs { replay, transport: TransportKind::Tcp, ..base.clone() }, binary).await?;
        eprint!("{}", tcp.render());
        let gossip =
            cluster::run(&ClusterArgs { replay, transport: TransportKind::Sidecar, ..base.clone() }, binary).await?;
        eprint!("{}", gossip.render());
        ok &= tcp.ok() && gossip.ok();
        let _ = writeln!(table, "{}", row(&format!("{label}, plain TCP baseline"), &tcp, None, false));
        let gossip_row = row(&format!("{label}, openmatch-gossip"), &gossip, Some(&tcp), true);
        // The relay has no flow control, so at maximum speed GossipSub's queues would drop
        // orders: the floor is a latency measure, taken at real pace only.
        if pace == Pace::Real {
            let floor =
                cluster::run(&ClusterArgs { replay, transport: TransportKind::Relay, ..base.clone() }, binary).await?;
            eprint!("{}", floor.render());
            ok &= floor.ok();
            let _ = writeln!(table, "{}", row(&format!("{label}, stack floor (relay)"), &floor, Some(&tcp), false));
            let mut pairs = vec![(floor, gossip)];
            for pair in 2..=args.real_pairs {
                eprintln!("{label}: pair {pair} of {}", args.real_pairs);
                let relay = ClusterArgs { replay, transport: TransportKind::Relay, ..base.clone() };
                let floor = cluster::run(&relay, binary).await?;
                let sidecar = ClusterArgs { replay, transport: TransportKind::Sidecar, ..base.clone() };
                let gossip = cluster::run(&sidecar, binary).await?;
                eprint!("{}{}", floor.render(), gossip.render());
                ok &= floor.ok() && gossip.ok();
                pairs.push((floor, gossip));
            }
            if pairs.len() > 1 {
                let (per_pair, pooled) = p99_ratios(&pairs);
                let list: Vec<String> = per_pair.iter().map(|r| format!("{r:.2}")).collect();
                let (lo, hi, coverage) = median_interval(&per_pair);
                let _ = writeln!(
                    pair_table,
                    "| {label} | {} | {} | {:.2} | {lo:.2}–{hi:.2} ({:.1} %) | {:.2} |",
                    pairs.len(),
                    list.join(" / "),
                    median(&per_pair),
                    coverage * 100.0,
                    pooled
                );
            }
        }
        let _ = writeln!(table, "{gossip_row}");
    }
    if !pair_table.is_empty() {
        let _ = write!(
            table,
            "\n| window | interleaved pairs | p99 openmatch-gossip / stack floor, per pair | median | median's confidence interval (coverage) | pooled p99s |\n|---|---|---|---|---|---|\n{pair_table}"
        );
    }
    println!("{table}");
    if let Some(path) = &args.markdown {
        std::fs::write(path, &table)?;
    }
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::engine::EngineReport;

    /// A report whose one engine saw `deliveries` deliveries of `us` µs each.
    fn report(deliveries: &[(u64, u64)]) -> ClusterReport {
        let mut l = Latency::default();
        for &(us, n) in deliveries {
            l.record_n(us, n);
        }
        ClusterReport {
            transport: TransportKind::Relay,
            pace: Pace::Real,
            engines: vec![EngineReport {
                latency: l.summary(),
                latency_buckets: l.buckets(),
                ..EngineReport::default()
            }],
            sidecars: Vec::new(),
            missing: 0,
            duplicates: 0,
            checksum_mismatches: Vec::new(),
            latency: l.summary(),
            batches: Default::default(),
            agreement: Default::default(),
            divergent_batches: Vec::new(),
        }
    }

    #[test]
    fn pairs_give_per_pair_ratios_their_median_and_the_pooled_ratio() {
        // 100 deliveries per run, so a run's p99 is its 99th value. Pair 1: floor p99
        // 1,000 µs, gossip 2,000 µs; pair 2: both 4,000 µs.
        let pairs = vec![
            (report(&[(500, 98), (1_000, 2)]), report(&[(500, 98), (2_000, 2)])),
            (report(&[(500, 98), (4_000, 2)]), report(&[(500, 98), (4_000, 2)])),
        ];
        let (per_pair, pooled) = p99_ratios(&pairs);
        assert_eq!(per_pair.len(), 2);
        assert!((per_pair[0] - 2.0).abs() < 0.05, "{per_pair:?}");
        assert!((per_pair[1] - 1.0).abs() < 0.05, "{per_pair:?}");
        // Pooled over 200 deliveries a side, the p99 is the 198th value: 1,000 and 2,000 µs.
        assert!((pooled - 2_000.0 / 1_000.0).abs() < 0.05, "{pooled}");
        assert!((median(&per_pair) - 1.5).abs() < 0.05);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
    }

    #[test]
    fn the_medians_interval_is_the_order_statistics_of_the_binomial_tables() {
        // 5 values: no pair of order statistics reaches 95 %, so the whole range,
        // 1 − 2/32 = 93.75 %.
        let (lo, hi, c) = median_interval(&[2.0, 1.3, 2.7, 1.9, 2.1]);
        assert_eq!((lo, hi), (1.3, 2.7));
        assert!((c - 0.9375).abs() < 1e-12, "{c}");
        // 9 values: the 2nd smallest and 2nd largest, 1 − 2·10/512 = 96.09 % (the 3rd
        // would give 82 %, below 95 %).
        let nine: Vec<f64> = (1..=9).rev().map(f64::from).collect();
        let (lo, hi, c) = median_interval(&nine);
        assert_eq!((lo, hi), (2.0, 8.0));
        assert!((c - (1.0 - 20.0 / 512.0)).abs() < 1e-12, "{c}");
        // 20 values: the 6th and 15th, 1 − 2·P(Bin(20, ½) ≤ 5) = 95.86 %.
        let twenty: Vec<f64> = (1..=20).map(f64::from).collect();
        let (lo, hi, c) = median_interval(&twenty);
        assert_eq!((lo, hi), (6.0, 15.0));
        assert!((c - 0.958_610_5).abs() < 1e-6, "{c}");
        // One value: its own interval, 0 % coverage said plainly.
        assert_eq!(median_interval(&[1.5]), (1.5, 1.5, 0.0));
    }
}
