//! Writes the fuzz targets' seed corpus (from the project's own encoders) under the
//! directory given, one subdirectory per target: `cargo run -p openmatch-gossip-sidecar
//! --example fuzz_seeds -- DIR` (sidecar/fuzz/run.sh does).

fn main() -> std::io::Result<()> {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "fuzz-seeds".into()));
    let seeds = openmatch_gossip_sidecar::fuzzing::seed_corpus();
    for (i, (target, input)) in seeds.iter().enumerate() {
        let sub = dir.join(target);
        std::fs::create_dir_all(&sub)?;
        std::fs::write(sub.join(format!("seed-{i:02}")), input)?;
    }
    println!("{} seeds written under {}", seeds.len(), dir.display());
    Ok(())
}
