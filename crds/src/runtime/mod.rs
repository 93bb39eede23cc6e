//! Process plumbing that the operator and the sidecar share: the log setup and the HTTP
//! server for `/metrics`, `/healthz` and `/readyz`.
//!
//! - [`LogFormat`], [`init_logging`]: `tracing` to stderr, filtered by `RUST_LOG` (default
//!   `info`), as compact text or one JSON object per line (`--log-format pretty|json`);
//! - [`serve_http`]: `/metrics` (a prometheus-client [`Registry`], as OpenMetrics or
//!   Prometheus text by content negotiation),
//!   `/healthz` and `/readyz`, whose answers each binary gives through [`Probes`], and the
//!   sidecar's [`PEER_ID_PATH`];
//! - [`register_process_metrics`], [`register_build_info`]: `process_*` and `build_info`.
//!
//! [`Registry`]: prometheus_client::registry::Registry

mod exposition;
mod http;
mod logging;
mod process;

pub use http::{PEER_ID_PATH, Probe, Probes, serve_http};
pub use logging::{LogFormat, init_logging};
pub use process::{ProcessCollector, register_build_info, register_process_metrics};
