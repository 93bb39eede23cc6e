//! The `openmatch-gossip-operator` binary: `crdgen` output and files, and a clean failure
//! without a cluster.

use std::path::PathBuf;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_openmatch-gossip-operator"))
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn crdgen_prints_the_committed_crd() {
    let out = bin().arg("crdgen").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let committed = std::fs::read_to_string(repo_root().join("crds/gossipnetwork.yaml")).unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), committed);
}

#[test]
fn crdgen_write_writes_both_copies() {
    let root = tempfile::tempdir().unwrap();
    let out = bin().args(["crdgen", "--write", "--root"]).arg(root.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let expected = std::fs::read_to_string(repo_root().join("crds/gossipnetwork.yaml")).unwrap();
    for rel in ["crds/gossipnetwork.yaml", "charts/openmatch-gossip/crds/gossipnetwork.yaml"] {
        assert_eq!(std::fs::read_to_string(root.path().join(rel)).unwrap(), expected, "{rel}");
    }
}

#[test]
fn run_without_a_cluster_fails_with_a_clear_error() {
    let home = tempfile::tempdir().unwrap();
    let out = bin()
        .args(["run", "--log-format", "json", "--http-addr", "127.0.0.1:0"])
        .env_clear()
        .env("HOME", home.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr.lines().last().unwrap_or_default();
    let log: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
    assert_eq!(log["level"], "ERROR", "{line}");
    assert!(log["error"].as_str().unwrap().contains("Kubernetes client"), "{line}");
}
