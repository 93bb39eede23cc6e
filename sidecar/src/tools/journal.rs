//! The reference engine's journal (`engine --state-file PATH`): what it must remember to
//! survive its own crash, as JSON lines appended to one file.
//!
//! An engine is the source of truth for its own orders, so a real one keeps this kind of
//! record in its own store; the reference engine keeps the least that lets one killed with
//! SIGKILL and started again with the same file carry on exactly where it was:
//!
//! - [`Entry::Started`]: when the replay began (wall clock), so the resumed replay keeps the
//!   recorded schedule, sending what fell due while it was down at once;
//! - [`Entry::Handed`]: own orders with ids below `upto` were handed to the sidecar (written
//!   *before* the hand-over: on resume, every one of them not known committed is submitted
//!   again, which the sidecar answers idempotently);
//! - [`Entry::Event`]: one event of the sidecar's stream, fully processed (its
//!   [`Effect`] on the tallies), with its cursor: the resumed engine rebuilds its state from
//!   the effects and subscribes with `resume_after` = the last cursor, so it sees every
//!   later event exactly once (docs/PROTOCOL.md, cursors). A restart of the engine is one
//!   such effect too ([`Effect::EngineResumed`]).
//!
//! Each entry is one `write(2)` of one line, so a kill leaves at most a torn last line,
//! which loading skips (its event is replayed: re-processing one event is idempotent at the
//! sidecar). No fsync: this protects against the process dying, not the machine.

use std::fs::File;
use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::proto::Cursor;
use crate::tools::matcher::Effect;

/// One line of the journal.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "entry", rename_all = "snake_case")]
pub(super) enum Entry {
    /// The replay began at this wall-clock time, ns since the Unix epoch.
    Started { at_unix_ns: u64 },
    /// Own orders with ids below `upto` were handed to the sidecar.
    Handed { upto: u64 },
    /// One processed event: its cursor (`[incarnation, sequence]`) and what it changed.
    Event { cursor: Option<(u64, u64)>, effect: Effect },
}

/// What a journal held when the engine started.
#[derive(Debug, Default)]
pub(super) struct Loaded {
    /// When the replay began; `None` for a fresh journal.
    pub(super) started_at_unix_ns: Option<u64>,
    /// Own orders handed to the sidecar (ids below this).
    pub(super) handed: u64,
    /// The last processed event's cursor.
    pub(super) cursor: Option<Cursor>,
    /// Every processed event's effect, in order.
    pub(super) effects: Vec<Effect>,
}

impl Loaded {
    /// Whether this is a restart (the journal had entries).
    pub(super) fn resuming(&self) -> bool {
        self.started_at_unix_ns.is_some()
    }
}

/// Reads the journal at `path` (a missing file is a fresh start). A line that does not
/// parse is skipped if it is the last one (torn by a kill), an error otherwise.
pub(super) fn load(path: &Path) -> anyhow::Result<Loaded> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Loaded::default()),
        Err(e) => return Err(e).with_context(|| format!("opening the state file {}", path.display())),
    };
    let lines: Vec<String> = std::io::BufReader::new(file)
        .lines()
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading the state file {}", path.display()))?;
    let mut loaded = Loaded::default();
    for (n, line) in lines.iter().enumerate() {
        let entry = match serde_json::from_str::<Entry>(line) {
            Ok(e) => e,
            Err(e) if n + 1 == lines.len() => {
                tracing::warn!(line = n + 1, error = %e, "state file: torn last line skipped");
                break;
            }
            Err(e) => return Err(e).with_context(|| format!("state file {} line {}", path.display(), n + 1)),
        };
        match entry {
            Entry::Started { at_unix_ns } => loaded.started_at_unix_ns = Some(at_unix_ns),
            Entry::Handed { upto } => loaded.handed = loaded.handed.max(upto),
            Entry::Event { cursor, effect } => {
                if let Some((incarnation, sequence)) = cursor {
                    loaded.cursor = Some(Cursor { incarnation, sequence });
                }
                loaded.effects.push(effect);
            }
        }
    }
    Ok(loaded)
}

/// Appends entries to a journal; a no-op without `--state-file`. Cheap to clone.
#[derive(Clone, Default)]
pub(super) struct Journal {
    file: Option<Arc<Mutex<(File, PathBuf)>>>,
}

impl Journal {
    /// Opens `path` for appending (created if absent); `None`: no journal.
    pub(super) fn open(path: Option<&Path>) -> anyhow::Result<Journal> {
        let Some(path) = path else { return Ok(Journal::default()) };
        let file = File::options()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening the state file {} for appending", path.display()))?;
        Ok(Journal { file: Some(Arc::new(Mutex::new((file, path.to_owned())))) })
    }

    /// Appends `entry` as one line, in one write.
    pub(super) fn append(&self, entry: &Entry) -> anyhow::Result<()> {
        let Some(file) = &self.file else { return Ok(()) };
        let mut line = serde_json::to_vec(entry).expect("journal entries serialize");
        line.push(b'\n');
        let mut guard = file.lock().expect("journal lock");
        let (f, path) = &mut *guard;
        f.write_all(&line).with_context(|| format!("appending to the state file {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_torn_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("engine.state");
        assert!(!load(&path).unwrap().resuming(), "a missing file is a fresh start");
        let j = Journal::open(Some(&path)).unwrap();
        j.append(&Entry::Started { at_unix_ns: 7 }).unwrap();
        j.append(&Entry::Handed { upto: 10 }).unwrap();
        j.append(&Entry::Event { cursor: Some((5, 3)), effect: Effect::Committed { ids: vec![1, 2] } }).unwrap();
        j.append(&Entry::Handed { upto: 20 }).unwrap();
        // A kill in the middle of the next line.
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"entry\":\"han").unwrap();
        let l = load(&path).unwrap();
        assert!(l.resuming());
        assert_eq!((l.started_at_unix_ns, l.handed), (Some(7), 20));
        assert_eq!(l.cursor, Some(Cursor { incarnation: 5, sequence: 3 }));
        assert!(matches!(&l.effects[..], [Effect::Committed { ids }] if ids == &[1, 2]));
    }

    #[test]
    fn a_bad_line_before_the_last_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("engine.state");
        std::fs::write(&path, "not json\n{\"entry\":\"handed\",\"upto\":3}\n").unwrap();
        let e = load(&path).unwrap_err();
        assert!(format!("{e:#}").contains("line 1"), "{e:#}");
    }
}
