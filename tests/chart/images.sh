#!/usr/bin/env bash
# The container images, for real: builds both from this machine's binaries with podman
# (the test build's, tests/chart/binaries.sh; scripts/build-images.sh --profile test --no-build,
# the Dockerfiles' FROM scratch
# variant) and runs them with the runc runtime, read-only root filesystem, no network:
#   - each image: user 65532:65532, OCI labels with the Cargo version;
#   - `openmatch-gossip --help`, `openmatch-gossip-operator --help` exit 0;
#   - `openmatch-gossip peer-id` writes its key into a mounted directory owned by UID 65532
#     (the process is not root);
#   - `openmatch-gossip-operator crdgen` prints exactly the committed CRD;
#   - the operator parses the args the chart renders, the sidecar image those of the engine
#     example;
#   - one pod's worth: `openmatch-gossip node` (one-member network) and, in a second
#     container sharing only the socket directory, `openmatch-gossip engine` replaying 5 s of
#     the image's bundled data: every order committed, batches agreed, none unresolved; then
#     the sidecar stops cleanly on SIGTERM (exit 0).
# Needs root and podman (`apt-get install podman runc`; crun fails on this machine's cgroup
# layout, and raising ulimits is not permitted here, hence --runtime runc and the ulimits).
# Otherwise prints one SKIPPED line and exits 77 (tests/chart/run.sh counts it as skipped).
set -euo pipefail
cd "$(dirname "$0")/../.."

missing=()
[ "$(id -u)" = 0 ] || missing+=("root")
command -v podman >/dev/null 2>&1 || missing+=("podman")
command -v runc >/dev/null 2>&1 || missing+=("runc")
if [ "${#missing[@]}" -gt 0 ]; then
    echo "SKIPPED: image tests need root, podman and runc (reason: missing ${missing[*]})"
    exit 77
fi

version="$(scripts/build-images.sh --print-version)"
sidecar="openmatch-gossip:$version"
operator="openmatch-gossip-operator:$version"
run=(podman run --rm --runtime runc --ulimit nofile=1024:1024 --ulimit nproc=1024:1024
     --read-only --network none)
work="$(mktemp -d)"
names=()
cleanup() {
    local n
    for n in "${names[@]}"; do podman rm -f -t 0 "$n" >/dev/null 2>&1 || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# shellcheck source=tests/chart/binaries.sh
source tests/chart/binaries.sh
test_binaries
echo "building the images from the local test-profile binaries (scripts/build-images.sh --engine podman --profile test --no-build)"
scripts/build-images.sh --engine podman --profile test --no-build >"$work/built.txt" 2>"$work/build.log" || {
    tail -40 "$work/build.log"
    exit 1
}
for image in "$sidecar" "$operator"; do
    grep -qx "$image" "$work/built.txt" || { echo "build-images did not report $image"; cat "$work/built.txt"; exit 1; }
    user="$(podman image inspect --format '{{.Config.User}}' "$image")"
    [ "$user" = "65532:65532" ] || { echo "$image: user '$user', expected 65532:65532"; exit 1; }
    label="$(podman image inspect --format '{{index .Labels "org.opencontainers.image.version"}}' "$image")"
    [ "$label" = "$version" ] || { echo "$image: org.opencontainers.image.version '$label', expected $version"; exit 1; }
    size="$(podman image inspect --format '{{.Size}}' "$image")"
    echo "$image: user 65532:65532, org.opencontainers.image.version $label, $((size / 1000000)) MB"
done

"${run[@]}" "$sidecar" --help >"$work/help.txt"
grep -q "openmatch-gossip" "$work/help.txt" || { cat "$work/help.txt"; exit 1; }
"${run[@]}" "$operator" --help >"$work/help-op.txt"
grep -q "openmatch-gossip-operator" "$work/help-op.txt" || { cat "$work/help-op.txt"; exit 1; }
echo "--help exits 0 in both images (runc, read-only root filesystem, no network)"

mkdir -p "$work/key" && chmod 0777 "$work/key"
peer_id="$("${run[@]}" -v "$work/key:/key" "$sidecar" peer-id /key/identity.key 2>"$work/peer-id.log")"
owner="$(stat -c %u:%g "$work/key/identity.key")"
[ "$owner" = "65532:65532" ] || { echo "identity key owned by $owner: the process ran as that, not 65532"; exit 1; }
echo "peer-id $peer_id: key written by UID:GID $owner (non-root)"

"${run[@]}" "$operator" crdgen >"$work/crd.yaml"
cmp -s "$work/crd.yaml" charts/openmatch-gossip/crds/gossipnetwork.yaml || {
    diff "$work/crd.yaml" charts/openmatch-gossip/crds/gossipnetwork.yaml | head -20
    exit 1
}
echo "operator image: crdgen prints the committed CRD"

# The command lines the chart and the examples give the images parse: clap rejects an unknown
# flag or a bad value before it reaches the trailing --help.
source tests/chart/tools.sh
chart_tools >/dev/null
for values in "" tests/chart/values-all-on.yaml tests/chart/values-namespaced.yaml; do
    "$HELM" template og charts/openmatch-gossip --namespace og-system ${values:+-f "$values"} >"$work/render.yaml"
    mapfile -t args < <("$PY" -c '
import sys, yaml
[d] = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "Deployment"]
print("\n".join(d["spec"]["template"]["spec"]["containers"][0]["args"]))' "$work/render.yaml")
    "${run[@]}" "$operator" "${args[@]}" --help >/dev/null || { echo "the operator refuses the chart's args (${values:-default values}): ${args[*]}"; exit 1; }
done
mapfile -t args < <("$PY" -c '
import sys, yaml
[d] = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
print("\n".join(a.replace("$(SHARD)", "0") for a in d["spec"]["template"]["spec"]["containers"][0]["args"]))' examples/reference-engine.yaml)
"${run[@]}" "$sidecar" "${args[@]}" --help >/dev/null || { echo "the sidecar image refuses the example's engine args: ${args[*]}"; exit 1; }
echo "the operator image accepts the chart's args (default, all-on, namespaced values); the sidecar image the example's engine args"

# One pod's worth: the sidecar and the reference engine, sharing only the socket directory.
# The sidecar's libp2p DNS resolver reads /etc/resolv.conf, which every Kubernetes pod has
# (the kubelet mounts it) but podman's --network none does not provide: mount one.
mkdir -p "$work/sock" "$work/state" && chmod 0777 "$work/sock" "$work/state"
echo "nameserver 127.0.0.1" >"$work/resolv.conf"
name="og-image-test-sidecar-$$"
names+=("$name")
podman run -d --name "$name" --runtime runc --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
    --read-only --network none -v "$work/resolv.conf:/etc/resolv.conf:ro" \
    -v "$work/sock:/run/openmatch-gossip" -v "$work/state:/var/lib/openmatch-gossip" \
    "$sidecar" node --markets BTC-USDT,ETH-USDT --listen /ip4/127.0.0.1/tcp/4001 >/dev/null
for _ in $(seq 100); do
    [ -S "$work/sock/engine.sock" ] && break
    [ "$(podman inspect --format '{{.State.Running}}' "$name")" = true ] || break
    sleep 0.2
done
[ -S "$work/sock/engine.sock" ] || { echo "the sidecar did not open its socket:"; podman logs --tail 20 "$name"; exit 1; }
echo "sidecar in the image: socket open"
if ! "${run[@]}" -v "$work/sock:/run/openmatch-gossip" "$sidecar" engine \
    --socket /run/openmatch-gossip/engine.sock \
    --data-dir /usr/share/openmatch-gossip/data/binance-usdm-20240808 \
    --from-s 10 --duration-s 5 --idle-timeout-ms 5000 --settle-timeout-ms 30000 \
    >"$work/report.json" 2>"$work/engine.log"; then
    tail -20 "$work/engine.log"
    podman logs --tail 20 "$name"
    exit 1
fi
python3 - "$work/report.json" <<'PY'
import json, sys
r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
agreed = sum(t.get("agreed", 0) for t in r["batches"].values())
problems = []
if r["sent"] == 0:
    problems.append("nothing sent")
if r["committed"] != r["sent"]:
    problems.append(f"committed {r['committed']} of {r['sent']}")
if r["unresolved"] or r["duplicates"]:
    problems.append(f"unresolved {r['unresolved']}, duplicates {r['duplicates']}")
if agreed == 0 or len(r["agreed_batches"]) == 0:
    problems.append("no batch agreed")
if any(t["disputed"] or t["halted"] for t in r["batches"].values()):
    problems.append(f"disputed or halted batches: {r['batches']}")
if problems:
    sys.exit("engine report: " + "; ".join(problems) + f"\n{r}")
print(f"engine in the image: sent {r['sent']}, committed {r['committed']}, unresolved 0, "
      f"{len(r['agreed_batches'])} batches agreed (markets {', '.join(sorted(r['batches']))})")
PY
podman stop -t 10 "$name" >/dev/null
code="$(podman inspect --format '{{.State.ExitCode}}' "$name")"
[ "$code" = 0 ] || { echo "sidecar exited $code on SIGTERM"; podman logs --tail 20 "$name"; exit 1; }
[ ! -e "$work/sock/engine.sock" ] || { echo "sidecar left its socket behind"; exit 1; }
echo "sidecar: stopped by SIGTERM, exit 0, socket removed"
