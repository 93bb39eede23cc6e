//! `/metrics` in the exposition format the scraper asks for.
//!
//! prometheus-client writes only OpenMetrics 1.0 text, where a counter *family* is named
//! without its `_total` suffix (`# TYPE requests counter`, sample `requests_total 1`). Tools
//! that read the Prometheus text format 0.0.4 (`promtool check metrics`, `curl` by hand,
//! and Prometheus's metadata for a counter looked up by its sample name, which Grafana
//! shows as help) expect the family to be named as its samples. So the server negotiates
//! on `Accept` (as client_golang's `promhttp` does): OpenMetrics when the client prefers
//! it (Prometheus's scrapes do), else the 0.0.4 text, converted from the OpenMetrics text
//! by [`to_prometheus_text`].
//!
//! Sources: OpenMetrics 1.0 (<https://prometheus.io/docs/specs/om/open_metrics_spec/>), the
//! text format 0.0.4 (<https://prometheus.io/docs/instrumenting/exposition_formats/>).

/// Content type of OpenMetrics 1.0 text.
pub(crate) const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Content type of the Prometheus text format 0.0.4.
pub(crate) const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// An exposition format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// OpenMetrics 1.0 text.
    OpenMetrics,
    /// Prometheus text 0.0.4.
    PrometheusText,
}

/// The format for an `Accept` header: OpenMetrics if the client gives
/// `application/openmetrics-text` a weight (`q`) above zero and at least that of any
/// `text/plain` or wildcard range, else the Prometheus text (also with no header at all).
pub(crate) fn negotiate(accept: Option<&str>) -> Format {
    let (mut openmetrics, mut text) = (0.0_f32, 0.0_f32);
    for range in accept.unwrap_or_default().split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default().to_ascii_lowercase();
        let q = parts.filter_map(|p| p.strip_prefix("q=")).find_map(|q| q.parse::<f32>().ok()).unwrap_or(1.0);
        match media.as_str() {
            "application/openmetrics-text" => openmetrics = openmetrics.max(q),
            "text/plain" | "text/*" | "*/*" => text = text.max(q),
            _ => {}
        }
    }
    if openmetrics > 0.0 && openmetrics >= text { Format::OpenMetrics } else { Format::PrometheusText }
}

/// Converts OpenMetrics text as prometheus-client writes it to the Prometheus text format
/// 0.0.4: a counter family takes its samples' `_total` name in `# HELP` and `# TYPE`, an
/// `info` family becomes a gauge named `<family>_info`, `unknown` becomes `untyped`,
/// `stateset` a gauge and `gaugehistogram` untyped; `# UNIT` and `# EOF` lines and
/// exemplars are dropped. Samples are kept as they are (both formats write labels, values
/// and histogram `_bucket`/`_sum`/`_count` samples alike).
pub(crate) fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // `# HELP` comes before `# TYPE`, and its name depends on the type: held until then.
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some((name, text));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (name, kind) = match kind {
                "counter" => (format!("{family}_total"), "counter"),
                "info" => (format!("{family}_info"), "gauge"),
                "stateset" => (family.to_owned(), "gauge"),
                "gauge" | "histogram" | "summary" => (family.to_owned(), kind),
                _ => (family.to_owned(), "untyped"),
            };
            if let Some((_, text)) = help.take().filter(|(n, _)| *n == family) {
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
        } else if line.starts_with("# ") || line.is_empty() {
            // `# UNIT`, `# EOF`: no equivalent.
        } else {
            // An exemplar follows the value after ` # `.
            let rest = labels_end(line);
            let sample = match line[rest..].find(" # ") {
                Some(i) => &line[..rest + i],
                None => line,
            };
            out.push_str(sample);
            out.push('\n');
        }
    }
    out
}

/// Where a sample line's name and labels end: after the `}` closing its label set (label
/// values are quoted and may hold `}`, `#` and escaped quotes), or at the first space.
fn labels_end(line: &str) -> usize {
    let name_end = line.find([' ', '{']).unwrap_or(line.len());
    if !line[name_end..].starts_with('{') {
        return name_end;
    }
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in line[name_end..].char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return name_end + i + 1,
            _ => {}
        }
    }
    line.len()
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::metrics::histogram::Histogram;
    use prometheus_client::metrics::info::Info;
    use prometheus_client::registry::{Registry, Unit};

    use super::*;

    #[test]
    fn prometheus_scrapes_get_openmetrics_and_everyone_else_the_text_format() {
        // Prometheus 2.x's default scrape Accept header.
        let prometheus = "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
        assert_eq!(negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(negotiate(Some("application/openmetrics-text; version=1.0.0")), Format::OpenMetrics);
        assert_eq!(negotiate(None), Format::PrometheusText, "no header: curl, promtool");
        assert_eq!(negotiate(Some("*/*")), Format::PrometheusText);
        assert_eq!(
            negotiate(Some("text/plain;version=0.0.4;q=1,application/openmetrics-text;q=0.5")),
            Format::PrometheusText
        );
        assert_eq!(
            negotiate(Some("application/openmetrics-text;q=0")),
            Format::PrometheusText,
            "q=0 means not acceptable"
        );
    }

    #[test]
    fn families_take_their_sample_names_and_openmetrics_only_lines_go() {
        let mut registry = Registry::default();
        let sub = registry.sub_registry_with_prefix("app");
        let requests = Family::<Vec<(String, String)>, Counter>::default();
        sub.register("requests", "Requests served", requests.clone());
        requests.get_or_create(&vec![("path".into(), "/a # b}".into())]).inc_by(3);
        let depth = Gauge::<i64>::default();
        sub.register("queue_depth", "Queued items", depth.clone());
        depth.set(-2);
        let latency = Histogram::new([0.001, 0.01]);
        sub.register_with_unit("latency", "Request latency", Unit::Seconds, latency.clone());
        latency.observe(0.005);
        sub.register("build", "Build", Info::new(vec![("version".to_owned(), "1.2.3".to_owned())]));
        let mut om = String::new();
        encode(&mut om, &registry).unwrap();
        assert!(om.contains("# TYPE app_requests counter\n") && om.ends_with("# EOF\n"), "{om}");

        let text = to_prometheus_text(&om);
        let want = "\
# HELP app_requests_total Requests served.
# TYPE app_requests_total counter
app_requests_total{path=\"/a # b}\"} 3
# HELP app_queue_depth Queued items.
# TYPE app_queue_depth gauge
app_queue_depth -2
# HELP app_latency_seconds Request latency.
# TYPE app_latency_seconds histogram
app_latency_seconds_sum 0.005
app_latency_seconds_count 1
app_latency_seconds_bucket{le=\"0.001\"} 0
app_latency_seconds_bucket{le=\"0.01\"} 1
app_latency_seconds_bucket{le=\"+Inf\"} 1
# HELP app_build_info Build.
# TYPE app_build_info gauge
app_build_info{version=\"1.2.3\"} 1
";
        assert_eq!(text, want);
    }

    #[test]
    fn exemplars_are_cut_after_the_value() {
        let om =
            "# HELP x X.\n# TYPE x counter\nx_total{a=\"} # \\\"\"} 1 # {trace_id=\"abc\"} 1.0\ny 2 # {} 1\n# EOF\n";
        let want = "# HELP x_total X.\n# TYPE x_total counter\nx_total{a=\"} # \\\"\"} 1\ny 2\n";
        assert_eq!(to_prometheus_text(om), want);
    }
}
