//! The network-namespace fault suite (issue 11): real `openmatch-gossip` sidecars, each in
//! its own Linux network namespace, real engines replaying the Binance recording at its
//! real pace, and faults made with nftables drop rules; each scenario ends by checking the
//! delivery invariant over the engines' reports and prints its figures.
//!
//! - [`netns`]: the plumbing, a [`netns::Lab`] of namespaces on a bridge with cut, split
//!   and heal.
//! - [`cluster`]: the processes in a lab (sidecars in the namespaces, engines beside them),
//!   start-up, mesh, READY/GO, reports, logs.
//! - [`invariant`]: the invariant, a pure function over the engines' reports, and the
//!   figures.
//! - [`hostile`]: a hostile libp2p peer on TCP inside a namespace (scenario f).
//! - [`scenarios`]: the scenarios and their common runner.
//!
//! Needs root, iproute2 (`ip`) and nftables (`nft`); `.ci/run` installs both. Where they are
//! missing, or the kernel refuses namespaces, every test here prints one
//! `SKIPPED: fault suite needs root, iproute2 and nftables (reason: ...)` line and passes;
//! any other failure fails. Run only this suite with
//! `cargo nextest run -p openmatch-gossip-sidecar --test it faults`.

mod cluster;
mod hostile;
mod invariant;
mod netns;
mod scenarios;

use netns::{Lab, LabError};

/// Builds a lab of `n` namespaces, or prints why the fault suite is skipped on this
/// machine and returns `None`. Any failure other than the machine's inability to host a
/// lab panics.
fn lab_or_skip(n: usize) -> Option<Lab> {
    match Lab::new(n) {
        Ok(lab) => Some(lab),
        Err(LabError::Unavailable(reason)) => {
            eprintln!("SKIPPED: fault suite needs root, iproute2 and nftables (reason: {reason})");
            None
        }
        Err(LabError::Failed(e)) => panic!("building a network-namespace lab failed: {e:#}"),
    }
}
