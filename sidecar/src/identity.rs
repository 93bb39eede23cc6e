//! The node's Ed25519 identity, kept in a key file so the peer id is stable across restarts.
//!
//! The file holds the keypair in libp2p's protobuf encoding (`Keypair::to_protobuf_encoding`,
//! 68 bytes for Ed25519) and is created with mode 0600 when absent.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use anyhow::{Context as _, bail};
use libp2p::identity::Keypair;

/// Loads the keypair at `path`, or generates an Ed25519 keypair and writes it there (mode
/// 0600, parent directories created) when the file does not exist.
///
/// Errors: unreadable file, a file that is not a protobuf-encoded Ed25519 keypair, or a
/// directory that cannot be written.
pub fn load_or_create(path: &Path) -> anyhow::Result<Keypair> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let key = Keypair::from_protobuf_encoding(&bytes)
                .with_context(|| format!("{}: not a libp2p protobuf-encoded keypair", path.display()))?;
            if key.clone().try_into_ed25519().is_err() {
                bail!("{}: key is {:?}, expected Ed25519", path.display(), key.key_type());
            }
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Keypair::generate_ed25519();
            write_new(path, &key)?;
            tracing::info!(path = %path.display(), peer_id = %key.public().to_peer_id(), "created a new node identity");
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("reading identity key {}", path.display())),
    }
}

/// Writes `key` to a new file at `path` (mode 0600); fails if the file exists.
pub fn write_new(path: &Path, key: &Keypair) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let bytes = key.to_protobuf_encoding().context("encoding the keypair")?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating identity key {}", path.display()))?;
    f.write_all(&bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn created_once_then_stable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/identity.key");
        let a = load_or_create(&path).unwrap();
        let b = load_or_create(&path).unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn garbage_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        std::fs::write(&path, b"not a key").unwrap();
        let err = load_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("not a libp2p protobuf-encoded keypair"), "{err}");
    }
}
