//! Hot reload of the configuration file (DESIGN §6): the file is checked every second
//! (content hash, so ConfigMap updates, which swap a symlink, are seen like in-place
//! edits); a changed file is loaded exactly as at start-up (flags and environment
//! variables still override it) and handed to the node. Markets, bootstrap peers,
//! `consensus.members`, rate limits and reputation thresholds take effect at once; other
//! changed fields are logged as needing a restart. A file that fails to load is rejected with its reason in the log
//! and the last good configuration stays in force. Every attempt is counted in
//! `openmatch_gossip_config_reloads_total{result}` (`applied` or `rejected`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::NodeSettings;
use crate::metrics::{Metrics, ResultLabel};
use crate::node::NodeHandle;

/// What became of a reload attempt; [`ReloadOutcome::as_str`] is the `result` label of
/// `openmatch_gossip_config_reloads_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReloadOutcome {
    /// The node runs the new configuration.
    Applied,
    /// The file could not be read or failed validation; the last good one stays.
    Rejected,
}

impl ReloadOutcome {
    fn as_str(self) -> &'static str {
        match self {
            ReloadOutcome::Applied => "applied",
            ReloadOutcome::Rejected => "rejected",
        }
    }
}

/// How often the file is checked.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Watches `path` until `stop`; `load` turns the file (plus overrides) into settings.
pub(crate) fn spawn(
    path: PathBuf,
    load: impl Fn() -> anyhow::Result<NodeSettings> + Send + 'static,
    node: NodeHandle,
    metrics: Arc<Metrics>,
    interval: Duration,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let hash = |bytes: &[u8]| -> [u8; 32] { Sha256::digest(bytes).into() };
        let mut last = std::fs::read(&path).ok().map(|b| hash(&b));
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let bytes = std::fs::read(&path);
            let current = match &bytes {
                Ok(b) => Some(hash(b)),
                Err(e) => {
                    if last.is_some() {
                        tracing::warn!(path = %path.display(), error = %e, "configuration file unreadable; keeping the last good configuration");
                        metrics
                            .config_reloads
                            .get_or_create(&ResultLabel { result: ReloadOutcome::Rejected.as_str() })
                            .inc();
                    }
                    None
                }
            };
            if current.is_none() || current == last {
                last = current.or(last);
                continue;
            }
            last = current;
            let reject = |why: &str| {
                tracing::warn!(path = %path.display(), reason = why, "new configuration rejected; keeping the last good one");
                metrics.config_reloads.get_or_create(&ResultLabel { result: ReloadOutcome::Rejected.as_str() }).inc();
            };
            if bytes.as_ref().is_ok_and(|b| crate::config::is_blank(b)) {
                // A writer that truncates before it rewrites; start-up waits on the same.
                reject("the file is empty (truncated while being rewritten?)");
                continue;
            }
            match load() {
                Ok(settings) if settings.config.markets.is_empty() && !node.markets().is_empty() => {
                    reject("it lists no market: it would drop every market this node trades (truncated?)");
                }
                Ok(settings) => match node.reload(settings).await {
                    Ok(notes) => {
                        tracing::info!(path = %path.display(), restart_needed = ?notes, "configuration reloaded");
                        metrics
                            .config_reloads
                            .get_or_create(&ResultLabel { result: ReloadOutcome::Applied.as_str() })
                            .inc();
                    }
                    Err(_) => return,
                },
                Err(e) => reject(&format!("{e:#}")),
            }
        }
    })
}
