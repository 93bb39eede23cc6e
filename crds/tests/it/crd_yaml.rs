//! The committed CRD manifests must equal what the types generate.
//!
//! `crds/gossipnetwork.yaml` and `charts/openmatch-gossip/crds/gossipnetwork.yaml` are
//! generated from `crds/src/gossip_network.rs`. When this test fails, regenerate both with
//! `cargo run -p openmatch-gossip-operator -- crdgen --write` (or run this test with
//! `OPENMATCH_GOSSIP_UPDATE_CRDS=1`) and commit the result.

use std::path::PathBuf;

use openmatch_gossip_crds::gossip_network::crd_yaml;

fn committed_paths() -> [PathBuf; 2] {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    [root.join("crds/gossipnetwork.yaml"), root.join("charts/openmatch-gossip/crds/gossipnetwork.yaml")]
}

#[test]
fn committed_crd_yaml_is_current() {
    let generated = crd_yaml();
    let update = std::env::var_os("OPENMATCH_GOSSIP_UPDATE_CRDS").is_some();
    for path in committed_paths() {
        if update {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &generated).unwrap();
            continue;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "{} is stale or missing: regenerate it with `cargo run -p openmatch-gossip-operator -- crdgen --write` \
             (or OPENMATCH_GOSSIP_UPDATE_CRDS=1 cargo test -p openmatch-gossip-crds --test it crd_yaml) and commit it",
            path.display()
        );
    }
}
