//! Log setup of both binaries: `tracing` events to stderr, filtered by `RUST_LOG` (default
//! `info`), as compact text (local runs) or one flattened JSON object per line (clusters).

use tracing_subscriber::EnvFilter;

/// Log line format, the value of a binary's `--log-format` flag (`pretty` or `json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable compact text, one line per event (local runs).
    Pretty,
    /// One JSON object per line, the event's fields at the top level (what log collectors
    /// in a cluster expect).
    Json,
}

/// Installs the global `tracing` subscriber: events at or above `RUST_LOG` (default
/// `info`) go to stderr in `format`; stdout is left to the program's output. Safe to call
/// more than once: later calls (or a subscriber installed before) are kept as they are.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Pretty => builder.compact().try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum as _;

    use super::*;

    #[test]
    fn flag_values_are_pretty_and_json() {
        let names: Vec<String> =
            LogFormat::value_variants().iter().map(|v| v.to_possible_value().unwrap().get_name().to_owned()).collect();
        assert_eq!(names, ["pretty", "json"]);
        assert_eq!(LogFormat::from_str("json", false), Ok(LogFormat::Json));
    }
}
