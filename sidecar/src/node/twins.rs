//! Duplicate identity: two processes running with one identity key (docs/PROTOCOL.md
//! §12.7). Peers cannot tell them apart by peer id, so every `PeerStatus` carries its
//! run's `instance` (random) and `started_at_ms`, and each node records the instances it
//! hears per peer. Once per heartbeat, and at each new connection, a node asks one
//! connected peer which instances of its own id that peer heard (`RepairRequest.instances`,
//! which also tells the peer this node's own instance). Another instance heard of *since
//! this process started* means a twin; one heard only before is this node's previous run
//! (a restart after a crash), which is not:
//!
//! - the process that started later refuses to run on: it stops with the reason, and the
//!   binary exits non-zero;
//! - the one that started first keeps working and reports it loudly: an error log with
//!   `severity=critical`, `openmatch_gossip_duplicate_identity` = 1 and health
//!   `degraded: duplicate identity …`, until the twin has not been heard of for a liveness
//!   window.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;

use super::Node;
use crate::proto::{PeerInstance, PeerInstances, RepairRequest, repair_request};

/// Instances remembered per peer (a twin pair, and restarts in between).
const MAX_INSTANCES_PER_PEER: usize = 4;

/// One run of a node: `(instance, started_at_ms)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Run {
    pub(super) instance: u64,
    pub(super) started_at_ms: u64,
}

impl Run {
    /// Whether `self` started before `other` (ties broken by instance, so that exactly one
    /// of two twins yields).
    fn first(&self, other: &Run) -> bool {
        (self.started_at_ms, self.instance) < (other.started_at_ms, other.instance)
    }
}

/// The runs heard of per peer, each with when it was last heard of.
#[derive(Debug, Default)]
pub(super) struct Instances {
    heard: HashMap<PeerId, Vec<(Run, Instant)>>,
}

impl Instances {
    /// Records that `peer`'s run `run` was heard of at `now`.
    pub(super) fn record(&mut self, peer: PeerId, run: Run, now: Instant) {
        let runs = self.heard.entry(peer).or_default();
        match runs.iter_mut().find(|(r, _)| *r == run) {
            Some(entry) => entry.1 = now,
            None => {
                if runs.len() == MAX_INSTANCES_PER_PEER {
                    let oldest = runs.iter().enumerate().min_by_key(|(_, (_, at))| *at).map(|(i, _)| i);
                    runs.swap_remove(oldest.expect("the list is full"));
                }
                runs.push((run, now));
            }
        }
    }

    /// `peer`'s runs heard of within `window` before `now`.
    pub(super) fn recent(&self, peer: &PeerId, window: Duration, now: Instant) -> PeerInstances {
        let runs = self.heard.get(peer).map(Vec::as_slice).unwrap_or_default();
        let instances = runs
            .iter()
            .filter(|(_, at)| now.duration_since(*at) <= window)
            .map(|(run, at)| PeerInstance {
                instance: run.instance,
                started_at_ms: run.started_at_ms,
                heard_ms_ago: now.duration_since(*at).as_millis() as u64,
            })
            .collect();
        PeerInstances { instances }
    }

    /// Forgets runs not heard of within `window`.
    pub(super) fn forget_older_than(&mut self, window: Duration, now: Instant) {
        self.heard.retain(|_, runs| {
            runs.retain(|(_, at)| now.duration_since(*at) <= window);
            !runs.is_empty()
        });
    }
}

/// What a node learnt about its own identity from a peer's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    /// No other run of this node's id.
    Alone,
    /// Another run started first: this process must stop.
    Yield(Run),
    /// Another run started later: this process keeps working and reports it.
    Twin(Run),
}

/// Judges `answer` (the runs of `me`'s id that a peer heard) for this run `me`, up for
/// `uptime`: only runs heard of since it started count (a run heard of only before is a
/// previous run of this node, gone).
pub(super) fn judge(me: Run, answer: &PeerInstances, uptime: Duration) -> Verdict {
    let others = answer
        .instances
        .iter()
        .filter(|i| i.instance != me.instance && u128::from(i.heard_ms_ago) < uptime.as_millis())
        .map(|i| Run { instance: i.instance, started_at_ms: i.started_at_ms });
    let mut verdict = Verdict::Alone;
    for other in others {
        if other.first(&me) {
            return Verdict::Yield(other);
        }
        verdict = Verdict::Twin(other);
    }
    verdict
}

impl Node {
    /// Asks `peer` which runs of this node's id it heard (and tells it ours).
    pub(super) fn ask_instances(&mut self, peer: PeerId) {
        let me = PeerInstance { instance: self.run.instance, started_at_ms: self.run.started_at_ms, heard_ms_ago: 0 };
        let req = RepairRequest { kind: Some(repair_request::Kind::Instances(me)) };
        self.send_repair(peer, req, super::repair_io::PendingRepair::Instances);
    }

    /// Once per heartbeat: asks the next connected peer (in turn) about this node's id, and
    /// clears a twin report once the twin has been silent for a liveness window.
    pub(super) fn check_identity(&mut self, window: Duration) {
        let now = Instant::now();
        self.instances.forget_older_than(window, now);
        if self.twin.is_some_and(|(_, at)| now.duration_since(at) > window) {
            tracing::info!("the process sharing this node's identity key is no longer heard of");
            self.twin = None;
            self.metrics.duplicate_identity.set(0);
            self.update_health();
        }
        let mut peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        if peers.is_empty() {
            return;
        }
        peers.sort_unstable();
        self.identity_turn = self.identity_turn.wrapping_add(1);
        let peer = peers[self.identity_turn % peers.len()];
        self.ask_instances(peer);
    }

    /// A peer's answer about this node's id.
    pub(super) fn on_instances(&mut self, peer: PeerId, answer: &PeerInstances) {
        match judge(self.run, answer, self.started.elapsed()) {
            Verdict::Alone => {}
            Verdict::Yield(first) => {
                let reason = format!(
                    "duplicate identity: peer id {} is already live in another process (instance {:016x}, started \
                     at {} ms Unix time, heard of by {peer}); this process started later and refuses to run on \
                     with the same identity key",
                    self.info.peer_id, first.instance, first.started_at_ms
                );
                tracing::error!(severity = "critical", reason, "stopping");
                self.metrics.duplicate_identity.set(1);
                let _ = self.fatal.send(Some(reason));
            }
            Verdict::Twin(later) => {
                if self.twin.is_none_or(|(run, _)| run != later) {
                    tracing::error!(
                        severity = "critical",
                        instance = format!("{:016x}", later.instance),
                        started_at_ms = later.started_at_ms,
                        heard_by = %peer,
                        "DUPLICATE IDENTITY: another process runs with this node's identity key; it started later \
                         and should stop on its own"
                    );
                }
                self.twin = Some((later, Instant::now()));
                self.metrics.duplicate_identity.set(1);
                self.update_health();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(5);
    const UP: Duration = Duration::from_secs(60);

    fn heard(runs: &[(u64, u64, u64)]) -> PeerInstances {
        PeerInstances {
            instances: runs
                .iter()
                .map(|&(instance, started_at_ms, heard_ms_ago)| PeerInstance { instance, started_at_ms, heard_ms_ago })
                .collect(),
        }
    }

    #[test]
    fn the_later_run_yields_and_the_first_reports_a_twin() {
        let first = Run { instance: 9, started_at_ms: 1_000 };
        let later = Run { instance: 3, started_at_ms: 2_000 };
        let answer = heard(&[(9, 1_000, 100), (3, 2_000, 0)]);
        assert_eq!(judge(later, &answer, UP), Verdict::Yield(first));
        assert_eq!(judge(first, &answer, UP), Verdict::Twin(later));
    }

    #[test]
    fn its_own_run_or_a_run_heard_of_only_before_it_started_mean_alone() {
        let me = Run { instance: 3, started_at_ms: 2_000 };
        assert_eq!(judge(me, &heard(&[(3, 2_000, 0)]), UP), Verdict::Alone);
        assert_eq!(judge(me, &heard(&[]), UP), Verdict::Alone);
        // Restarted after a crash 300 ms after the old run's last heartbeat, up 100 ms: the
        // old run was last heard of 400 ms ago, before this run started.
        let old = heard(&[(9, 1_000, 400), (3, 2_000, 0)]);
        assert_eq!(judge(me, &old, Duration::from_millis(100)), Verdict::Alone, "the previous run, gone");
        assert_eq!(
            judge(me, &old, Duration::from_millis(500)),
            Verdict::Yield(Run { instance: 9, started_at_ms: 1_000 })
        );
    }

    #[test]
    fn equal_start_times_are_broken_by_instance() {
        let (a, b) = (Run { instance: 1, started_at_ms: 5 }, Run { instance: 2, started_at_ms: 5 });
        let answer = heard(&[(1, 5, 0), (2, 5, 0)]);
        assert_eq!(judge(b, &answer, UP), Verdict::Yield(a));
        assert_eq!(judge(a, &answer, UP), Verdict::Twin(b));
    }

    #[test]
    fn instances_are_remembered_per_peer_within_the_window_and_bounded() {
        let (p, now) = (PeerId::random(), Instant::now());
        let mut i = Instances::default();
        for n in 0..6 {
            i.record(p, Run { instance: n, started_at_ms: n }, now + Duration::from_millis(n));
        }
        let later = now + Duration::from_millis(10);
        let recent = i.recent(&p, WINDOW, later);
        let kept: Vec<u64> = recent.instances.iter().map(|r| r.instance).collect();
        assert_eq!(kept.len(), MAX_INSTANCES_PER_PEER, "{kept:?}");
        assert!(!kept.contains(&0) && !kept.contains(&1), "the oldest were dropped: {kept:?}");
        i.forget_older_than(WINDOW, now + WINDOW + Duration::from_secs(1));
        assert!(i.recent(&p, WINDOW, now + WINDOW + Duration::from_secs(1)).instances.is_empty());
        assert!(i.recent(&PeerId::random(), WINDOW, now).instances.is_empty());
    }
}
