//! Process plumbing that the operator and the sidecar share: the log setup and the HTTP
//! server for `/metrics`, `/healthz` and `/readyz`.
//!
//! - [`LogFormat`], [`init_logging`]: `tracing` to stderr, filtered by `RUST_LOG` (default
//!   `info`), as compact text or one JSON object per line (`--log-format pretty|json`);
//! - [`serve_http`]: `/metrics` (OpenMetrics text of a prometheus-client [`Registry`]),
//!   `/healthz` and `/readyz`, whose answers each binary gives through [`Probes`], and the
//!   sidecar's [`PEER_ID_PATH`].
//!
//! [`Registry`]: prometheus_client::registry::Registry

mod http;
mod logging;

pub use http::{PEER_ID_PATH, Probe, Probes, serve_http};
pub use logging::{LogFormat, init_logging};
