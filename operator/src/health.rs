//! The operator's phase (starting, standby, leader, shutting down) and what its `/healthz`
//! and `/readyz` answer in each ([`Probes`], served by [`serve_http`]).
//!
//! - `/healthz`: 200 while the process serves HTTP; the body is the [`Lifecycle`].
//! - `/readyz`: 200 in phases `standby` (waiting for the Lease) and `leader`
//!   (reconciling); 503 while `starting` and `shutting-down`. A standby replica is ready:
//!   it is healthy and will take over when the leader goes.
//!
//! [`serve_http`]: openmatch_gossip_crds::runtime::serve_http

use std::sync::Mutex;

use openmatch_gossip_crds::runtime::{Probe, Probes};

/// Where the operator is in its life (named apart from the batch phases of the sidecar and
/// the `Phase` of its wire format).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Lifecycle {
    /// Connecting; not ready.
    #[default]
    Starting,
    /// Waiting for the leader Lease; ready.
    Standby,
    /// Holding the Lease (or running without election) and reconciling; ready.
    Leader,
    /// Stopping after SIGTERM/SIGINT or lost leadership; not ready.
    ShuttingDown,
}

impl Lifecycle {
    /// The probes' body: `starting`, `standby`, `leader` or `shutting-down`.
    fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Starting => "starting",
            Lifecycle::Standby => "standby",
            Lifecycle::Leader => "leader",
            Lifecycle::ShuttingDown => "shutting-down",
        }
    }
}

/// The phase shared with the HTTP probes.
#[derive(Debug, Default)]
pub struct Health(Mutex<Lifecycle>);

impl Health {
    /// Sets the phase; `ShuttingDown` is final (a late `Leader` does not undo it).
    pub fn set(&self, phase: Lifecycle) {
        let mut current = self.0.lock().expect("health lock");
        if *current != Lifecycle::ShuttingDown {
            *current = phase;
        }
    }

    /// The current phase.
    pub fn get(&self) -> Lifecycle {
        *self.0.lock().expect("health lock")
    }
}

impl Probes for Health {
    /// Always passes (the process answers); the body is the phase.
    fn liveness(&self) -> Probe {
        Probe { ok: true, body: self.get().as_str().to_owned() }
    }

    /// Passes in phases `standby` and `leader`; the body is the phase.
    fn readiness(&self) -> Probe {
        let phase = self.get();
        Probe { ok: matches!(phase, Lifecycle::Standby | Lifecycle::Leader), body: phase.as_str().to_owned() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probes(health: &Health) -> ((bool, String), (bool, String)) {
        let (live, ready) = (health.liveness(), health.readiness());
        ((live.ok, live.body), (ready.ok, ready.body))
    }

    #[test]
    fn probes_follow_the_phase() {
        let health = Health::default();
        assert_eq!(probes(&health), ((true, "starting".into()), (false, "starting".into())));
        health.set(Lifecycle::Standby);
        assert_eq!(probes(&health), ((true, "standby".into()), (true, "standby".into())));
        health.set(Lifecycle::Leader);
        assert_eq!(probes(&health), ((true, "leader".into()), (true, "leader".into())));
        health.set(Lifecycle::ShuttingDown);
        assert_eq!(probes(&health), ((true, "shutting-down".into()), (false, "shutting-down".into())));
        // Final: a phase set late (a leader that took the Lease as the signal came) does
        // not make a stopping replica ready again.
        health.set(Lifecycle::Leader);
        assert_eq!(probes(&health).1, (false, "shutting-down".into()));
    }
}
