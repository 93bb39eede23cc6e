//! The benchmark: the main job's setup at maximum speed and at real pace, each beside the
//! plain-TCP baseline (the same engines exchanging the same orders directly, no gossip, no
//! crypto), so figures read as ratios to the baseline. At real pace a third run measures
//! the **stack floor**: the same engines through `openmatch-gossip relay` processes
//! ([`crate::tools::relay`]), i.e. the mandated libp2p + gRPC stack with none of the sidecar's
//! logic, so the latency the sidecar adds reads apart from what the stack itself costs.
//! Each sidecar run also reports the largest sidecar peak RSS as a multiple of the
//! sidecars' queue memory bound (`--queue-memory-bytes`, default 64 MiB): the bound covers
//! the queues, not the whole process, so the ratio shows what the rest costs.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::tools::cluster::{self, ClusterArgs, ClusterReport};
use crate::tools::engine::{Pace, ReplayArgs, TransportKind};

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
        // The relay has no flow control, so at maximum speed GossipSub's queues would drop
        // orders: the floor is a latency measure, taken at real pace only.
        if pace == Pace::Real {
            let floor =
                cluster::run(&ClusterArgs { replay, transport: TransportKind::Relay, ..base.clone() }, binary).await?;
            eprint!("{}", floor.render());
            ok &= floor.ok();
            let _ = writeln!(table, "{}", row(&format!("{label}, stack floor (relay)"), &floor, Some(&tcp), false));
        }
        let _ = writeln!(table, "{}", row(&format!("{label}, openmatch-gossip"), &gossip, Some(&tcp), true));
    }
    println!("{table}");
    if let Some(path) = &args.markdown {
        std::fs::write(path, &table)?;
    }
    Ok(ok)
}
