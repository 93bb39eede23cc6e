#!/usr/bin/env bash
# The engine socket from another language: Python grpcio (stubs generated from
# sidecar/proto by grpcio-tools) drives every RPC of a running sidecar through
# `grpc.insecure_channel("unix:...")` with no channel options (tests/grpc_python/client.py).
# grpcio sends the socket path as :authority; the sidecar's h2 is patched to accept that
# (third_party/h2/PATCHED.md). tests/run.sh runs it after the Rust tests; alone:
# `bash tests/grpc_python/run.sh`. Needs python3 with venv and pip (PyPI on the first run:
# the venv is cached in target/tools/grpc-venv). Exits non-zero on failure.
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$(pwd)"
packages=(grpcio==1.85.1 grpcio-tools==1.85.1 grpcio-health-checking==1.85.1)
venv="$root/target/tools/grpc-venv"
# shellcheck source=tests/venv.sh
source tests/venv.sh
ensure_venv "$venv" "${packages[@]}"
work="$(mktemp -d)"
pid=""
cleanup() {
    [ -z "$pid" ] || kill "$pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/stubs"
"$venv/bin/python" -m grpc_tools.protoc -I sidecar/proto --python_out="$work/stubs" --grpc_python_out="$work/stubs" \
    sidecar/proto/openmatch/gossip/v1/engine.proto sidecar/proto/openmatch/gossip/v1/wire.proto
echo "stubs generated from sidecar/proto by grpcio-tools"

cargo build --quiet --bin openmatch-gossip
target/debug/openmatch-gossip node --network grpc-python --markets BTC-USDT --listen /ip4/127.0.0.1/tcp/0 \
    --socket "$work/engine.sock" --identity-key "$work/identity.key" --metrics-addr 127.0.0.1:0 \
    --log-format json >"$work/sidecar.log" 2>&1 &
pid=$!
if ! "$venv/bin/python" tests/grpc_python/client.py "$work/engine.sock" "$work/stubs"; then
    echo "sidecar log (last 20 lines):"
    tail -20 "$work/sidecar.log"
    exit 1
fi
