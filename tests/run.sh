#!/usr/bin/env bash
# Runs the whole test suite: unit tests, in-process multi-node tests (libp2p memory
# transport), real-process clusters on loopback TCP. Needs only a Rust toolchain; Cargo
# fetches and builds everything on first use (~8 min on 2 cores, then incremental).
set -euo pipefail
cd "$(dirname "$0")/.."
if cargo nextest --version >/dev/null 2>&1; then
    exec cargo nextest run --workspace --no-fail-fast "$@"
else
    exec cargo test --workspace --no-fail-fast "$@"
fi
