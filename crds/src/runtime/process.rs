//! Metrics every binary exports about itself: the standard process metrics, and its build.
//!
//! - [`ProcessCollector`]: `process_cpu_seconds_total`, `process_resident_memory_bytes`,
//!   `process_virtual_memory_bytes`, `process_start_time_seconds`, `process_threads`,
//!   `process_open_fds` and `process_max_fds`, read from `/proc/self` (the `procfs` crate)
//!   on each scrape, with the names and meanings of Prometheus's client libraries
//!   (<https://prometheus.io/docs/instrumenting/writing_clientlibs/#process-metrics>), so
//!   that stock dashboards and alerts work. On a system without `/proc` none is exported.
//! - [`register_build_info`]: `<prefix>_build_info{version} 1`, the usual way to join a
//!   version onto any series (`* on(instance) group_left(version) …_build_info`).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::{Registry, Unit};

/// The process metrics of the running process, read at each scrape. Register it at the
/// registry's root (the names carry no prefix): [`register_process_metrics`].
#[derive(Debug, Default)]
pub struct ProcessCollector;

/// What one scrape reads from `/proc/self`.
struct Reading {
    cpu_seconds: f64,
    resident_bytes: i64,
    virtual_bytes: i64,
    start_time_seconds: f64,
    threads: i64,
    open_fds: Option<i64>,
    max_fds: Option<i64>,
}

impl ProcessCollector {
    fn read() -> procfs::ProcResult<Reading> {
        let me = procfs::process::Process::myself()?;
        let stat = me.stat()?;
        let ticks = procfs::ticks_per_second() as f64;
        let boot = procfs::boot_time_secs()? as f64;
        let max_fds = me.limits().ok().and_then(|l| match l.max_open_files.soft_limit {
            procfs::process::LimitValue::Value(v) => i64::try_from(v).ok(),
            procfs::process::LimitValue::Unlimited => None,
        });
        Ok(Reading {
            cpu_seconds: (stat.utime + stat.stime) as f64 / ticks,
            resident_bytes: i64::try_from(stat.rss * procfs::page_size()).unwrap_or(i64::MAX),
            virtual_bytes: i64::try_from(stat.vsize).unwrap_or(i64::MAX),
            start_time_seconds: boot + stat.starttime as f64 / ticks,
            threads: stat.num_threads,
            open_fds: me.fd_count().ok().and_then(|n| i64::try_from(n).ok()),
            max_fds,
        })
    }
}

/// Encodes one metric without labels.
fn encode_one(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    metric: &impl EncodeMetric,
) -> Result<(), std::fmt::Error> {
    metric.encode(encoder.encode_descriptor(name, help, unit, metric.metric_type())?)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(r) = Self::read() else { return Ok(()) };
        let e = &mut encoder;
        let (seconds, bytes) = (Some(&Unit::Seconds), Some(&Unit::Bytes));
        encode_one(
            e,
            "process_cpu",
            "Total user and system CPU time spent in seconds",
            seconds,
            &ConstCounter::new(r.cpu_seconds),
        )?;
        encode_one(
            e,
            "process_resident_memory",
            "Resident memory size in bytes",
            bytes,
            &ConstGauge::new(r.resident_bytes),
        )?;
        encode_one(
            e,
            "process_virtual_memory",
            "Virtual memory size in bytes",
            bytes,
            &ConstGauge::new(r.virtual_bytes),
        )?;
        let start = ConstGauge::new(r.start_time_seconds);
        encode_one(e, "process_start_time", "Start time of the process since unix epoch in seconds", seconds, &start)?;
        encode_one(e, "process_threads", "Number of OS threads in the process", None, &ConstGauge::new(r.threads))?;
        if let Some(n) = r.open_fds {
            encode_one(e, "process_open_fds", "Number of open file descriptors", None, &ConstGauge::new(n))?;
        }
        if let Some(n) = r.max_fds {
            encode_one(e, "process_max_fds", "Maximum number of open file descriptors", None, &ConstGauge::new(n))?;
        }
        Ok(())
    }
}

/// Registers [`ProcessCollector`] at `registry`'s root.
pub fn register_process_metrics(registry: &mut Registry) {
    registry.register_collector(Box::new(ProcessCollector));
}

/// Registers `build_info{version="<version>"} 1` in `registry` (under its prefix, e.g.
/// `openmatch_gossip_build_info`).
pub fn register_build_info(registry: &mut Registry, version: &str) {
    let info = Family::<[(&'static str, String); 1], Gauge>::default();
    info.get_or_create(&[("version", version.to_owned())]).set(1);
    registry.register("build_info", "The build: 1, labelled with its version", info);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_metrics_describe_this_process() {
        let mut registry = Registry::default();
        register_process_metrics(&mut registry);
        register_build_info(registry.sub_registry_with_prefix("app"), "1.2.3");
        let ballast = std::hint::black_box(vec![1u8; 32 << 20]); // written: 32 MiB resident at least
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let value = |name: &str| -> f64 {
            let line =
                text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{name} in {text}"));
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        assert!(value("process_resident_memory_bytes") >= (32 << 20) as f64, "{text}");
        assert!(value("process_virtual_memory_bytes") >= value("process_resident_memory_bytes"));
        assert!(value("process_cpu_seconds_total") >= 0.0);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        let start = value("process_start_time_seconds");
        assert!(start <= now + 1.0 && start > now - 24.0 * 3600.0, "started {start}, now {now}");
        assert!(value("process_threads") >= 1.0);
        assert!(value("process_open_fds") >= 3.0 && value("process_max_fds") >= value("process_open_fds"));
        assert!(text.contains("# TYPE process_cpu_seconds counter\n"), "{text}");
        assert!(text.contains("app_build_info{version=\"1.2.3\"} 1\n"), "{text}");
        drop(ballast);
    }
}
