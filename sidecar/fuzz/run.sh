#!/usr/bin/env bash
# Runs every cargo-fuzz target of the sidecar (sidecar/fuzz/fuzz_targets) for SECONDS each
# (default 60), starting from a seed corpus written by the project's own encoders
# (examples/fuzz_seeds.rs) plus whatever earlier runs found (target/fuzz-corpus/).
#   bash sidecar/fuzz/run.sh [SECONDS] [TARGET...]
# Needs the nightly toolchain (libFuzzer and sanitizers); without one it says so and exits
# 0. Installs cargo-fuzz from crates.io when missing. A crash fails the run and leaves the
# input under sidecar/fuzz/artifacts/<target>/.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
secs="${1:-60}"
shift || true
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || targets=(gossip_validator repair_codec consensus_feed config_loader engine_order)
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    echo "fuzzing skipped: no nightly toolchain (cargo-fuzz needs one: rustup toolchain install nightly)"
    exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
seeds="$root/target/fuzz-seeds"
rm -rf "$seeds"
(cd "$root" && cargo run -q -p openmatch-gossip-sidecar --example fuzz_seeds -- "$seeds")
cd "$root/sidecar"
echo "building the fuzz targets (nightly, AddressSanitizer)"
cargo +nightly fuzz build --fuzz-dir fuzz
for t in "${targets[@]}"; do
    corpus="$root/target/fuzz-corpus/$t"
    mkdir -p "$corpus"
    echo "fuzzing $t for ${secs}s"
    log="$root/target/fuzz-$t.log"
    # rss_limit: a run that allocates past 2 GiB is a failure (the decode bound, issue 13).
    status=0
    cargo +nightly fuzz run --fuzz-dir fuzz "$t" "$corpus" "$seeds/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -max_len=1100000 -print_final_stats=1 >"$log" 2>&1 || status=$?
    grep -E '^(#[0-9]+ *DONE|stat::number_of_executed_units|stat::peak_rss_mb)' "$log" || true
    if [ "$status" -ne 0 ]; then
        tail -n 60 "$log"
        echo "fuzz target $t FAILED (status $status); the input is under sidecar/fuzz/artifacts/$t/, the log in $log"
        exit 1
    fi
done
echo "fuzzing: ${#targets[@]} targets ran ${secs}s each without a crash"
