#!/usr/bin/env bash
# The Kubernetes path end to end, without a cluster, on real containers: `podman kube play`
# of the example engine pods as the webhook injects them, with the ConfigMap the operator
# renders, and zero-touch peer discovery between them:
#   1. `openmatch-gossip-operator inject` (the webhook's code) injects the sidecar into
#      examples/reference-engine.yaml's pod template; the result validates strictly against
#      Kubernetes 1.33 and 1.37 with restricted pod security (tests/chart/check.py); three
#      pods reference-engine-0..2 are made from it, as the StatefulSet controller would
#      (pod-index label = shard);
#   2. `openmatch-gossip-operator render` renders demo-gossip-config for them while they do
#      not exist yet (members 3, no bootstrap peers); the pods are played with it on
#      podman's bridge network, each with its own IP;
#   3. once every sidecar answers /readyz, `render` runs again with the pods Running and
#      Ready at their IPs: it asks each sidecar for its peer id (GET /peer-id, the
#      operator's code) and renders the three as bootstrap peers; the ConfigMap's file is
#      replaced in place, as the kubelet does, and the sidecars reload it;
#   4. every engine replays its third of 20 s of the bundled recording at the recorded pace
#      and prints its report: each must have received every other engine's orders (none
#      missing, no duplicates), had all its own committed, and the three must have agreed
#      the same batches (same hashes), none halted, and none disputed but a batch from before
#      the last sidecar started (it cannot reach the quorum: the later sidecars abstain on
#      it, PROTOCOL §11.3, so its orders, if any, are excluded and resubmitted).
# What podman 4.3 (Debian bookworm) cannot do as the kubelet does, and what stands in for
# it (only here; the manifests users apply are not changed):
#   - native sidecars (init containers with restartPolicy Always): the sidecar becomes the
#     pod's first regular container (the engine retries its socket until it is up);
#   - emptyDir: podman makes one named volume per volume name, shared by every pod; each
#     pod gets its own host directory instead;
#   - the downward API's metadata.labels['apps.kubernetes.io/pod-index'] (SHARD) and
#     metadata.namespace (POD_NAMESPACE): the values are written in, and $(SHARD) in the
#     engine's args expanded (the kubelet does both); status.podIP (POD_IP) is left out;
#   - the engine's replay window is shortened (--duration-s 20) and the pod's
#     restartPolicy is OnFailure, so a finished engine stays finished with its report;
#   - container ports: podman 4.3 publishes them on the host, where three pods collide; they
#     are dropped from the played pods (the operator still reads the sidecar's port named
#     metrics from the pods as the API server lists them);
#   - ulimits and the runc runtime through a CONTAINERS_CONF of this test's own.
# Needs root, podman, runc and catatonit (podman's pause process); otherwise one SKIPPED
# line and exit 77. Uses the images tests/chart/images.sh builds (builds them if absent) and
# PyYAML from the chart tools' venv (tests/chart/tools.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."

missing=()
[ "$(id -u)" = 0 ] || missing+=("root")
for tool in podman runc catatonit; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "SKIPPED: podman kube play needs root, podman, runc and catatonit (reason: missing ${missing[*]})"
    exit 77
fi

# shellcheck source=tests/chart/tools.sh
source tests/chart/tools.sh
chart_tools >/dev/null
version="$(scripts/build-images.sh --print-version)"
image="localhost/openmatch-gossip:$version"
# shellcheck source=tests/chart/binaries.sh
source tests/chart/binaries.sh
test_binaries
op="$BINDIR/openmatch-gossip-operator"
work="$(mktemp -d)"
# Current images (quick when tests/chart/images.sh just built them).
scripts/build-images.sh --engine podman --profile test --no-build >"$work/build.log" 2>&1 || {
    tail -40 "$work/build.log"
    exit 1
}
pods=(reference-engine-0 reference-engine-1 reference-engine-2)
# On failure, the containers' logs, the reports and the manifests are kept in
# target/chart-test/play-failure/.
cleanup() {
    local rc=$? p c
    if [ "$rc" != 0 ]; then
        rm -rf target/chart-test/play-failure && mkdir -p target/chart-test/play-failure
        for p in "${pods[@]}"; do
            for c in openmatch-gossip engine; do
                podman logs "$p-$c" >"target/chart-test/play-failure/$p-$c.log" 2>&1 || true
            done
        done
        cp "$work"/*.json "$work"/*.yaml "$work"/*.log target/chart-test/play-failure/ 2>/dev/null || true
        echo "logs, reports and manifests kept in target/chart-test/play-failure/"
    fi
    for p in "${pods[@]}"; do podman pod rm -f -t 0 "$p" >/dev/null 2>&1 || true; done
    podman volume rm -f demo-gossip-config >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
cleanup_only_pods() {
    local p
    for p in "${pods[@]}"; do podman pod rm -f -t 0 "$p" >/dev/null 2>&1 || true; done
    podman volume rm -f demo-gossip-config >/dev/null 2>&1 || true
}
cleanup_only_pods
cat >"$work/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
EOF
export CONTAINERS_CONF="$work/containers.conf"

# 1. The webhook's output for the example's pod template, and three pods from it.
"$op" inject --network-file examples/gossipnetwork.yaml -f examples/reference-engine.yaml \
    --sidecar-image "$image" --sidecar-image-pull-policy Never >"$work/injected.yaml" 2>"$work/inject.log" || {
    cat "$work/inject.log"
    exit 1
}
echo "operator inject: $(cat "$work/inject.log")"
"$PY" tests/chart/check.py injected "$work/injected.yaml" | sed 's/^ok: /    /' 
"$PY" - "$work" "$image" <<'PY'
import json, os, re, sys
work, image = sys.argv[1], sys.argv[2]
import yaml

[sts] = [d for d in yaml.safe_load_all(open(f"{work}/injected.yaml")) if d]
tmpl = sts["spec"]["template"]
pods, selected = [], []
for i in range(sts["spec"]["replicas"]):
    name = f"{sts['metadata']['name']}-{i}"
    meta = json.loads(json.dumps(tmpl["metadata"]))
    meta["name"] = name
    meta["labels"]["apps.kubernetes.io/pod-index"] = str(i)
    # The pod as the API server has it, before it runs: what the operator lists.
    selected.append({"apiVersion": "v1", "kind": "Pod", "metadata": meta,
                     "spec": json.loads(json.dumps(tmpl["spec"])), "status": {"phase": "Pending"}})
    # The pod as podman can run it.
    spec = json.loads(json.dumps(tmpl["spec"]))
    # Native sidecars -> first regular containers (podman 4.3 has none).
    natives = [c for c in spec.pop("initContainers", []) if c.get("restartPolicy") == "Always"]
    for c in natives:
        del c["restartPolicy"]
    spec["containers"] = natives + spec["containers"]
    spec["restartPolicy"] = "OnFailure"
    # emptyDir -> a host directory per pod and volume, owned by the images' user.
    for v in spec["volumes"]:
        if "emptyDir" in v:
            path = f"{work}/pods/{name}/{v['name']}"
            os.makedirs(path, exist_ok=True)
            os.chown(path, 65532, 65532)
            del v["emptyDir"]
            v["hostPath"] = {"path": path, "type": "Directory"}
    for c in spec["containers"]:
        c["image"] = image
        # podman 4.3 publishes every containerPort on the host (the pods would collide);
        # in Kubernetes they only name the ports.
        c.pop("ports", None)
        # status.podIP is not known before the pod runs, and podman cannot resolve it.
        c["env"] = env = [e for e in c.get("env", [])
                          if e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "status.podIP"]
        for e in env:
            ref = e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath", "")
            if ref.startswith("metadata.labels["):
                e.pop("valueFrom")
                e["value"] = meta["labels"][ref[len("metadata.labels['"):-2]]
            elif ref == "metadata.namespace":
                e.pop("valueFrom")
                e["value"] = "default"
        # $(VAR) in args: the kubelet expands it from the container's env; podman 4.3 does not.
        values = {e["name"]: e["value"] for e in env if "value" in e}
        c["args"] = [re.sub(r"\$\((\w+)\)", lambda m: values.get(m.group(1), m.group(0)), a) for a in c["args"]]
        if c["name"] == "engine":
            c["args"] = [a for a in c["args"] if not a.startswith("--duration-s")] + ["--duration-s=20"]
    pods.append({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})
open(f"{work}/pods.yaml", "w").write(yaml.safe_dump_all(pods))
json.dump({"apiVersion": "v1", "kind": "PodList", "items": selected}, open(f"{work}/selected-pending.json", "w"))
print(f"{len(pods)} pods made from the injected template (sidecar {pods[0]['spec']['containers'][0]['name']} first)")
PY

# 2. The ConfigMap for three selected pods, none ready yet; play the pods with it.
"$op" render --network-file examples/gossipnetwork.yaml --pods "$work/selected-pending.json" \
    >"$work/configmap.yaml" 2>"$work/render-pending.log"
grep -q 'members: 3' "$work/configmap.yaml" || { echo "the first rendering has no 'members: 3':"; cat "$work/configmap.yaml"; exit 1; }
echo "operator render (pods pending): members 3, $(head -1 "$work/render-pending.log")"
podman kube play --network podman --configmap "$work/configmap.yaml" "$work/pods.yaml" >"$work/play.log" 2>&1 || {
    cat "$work/play.log"
    exit 1
}
echo "podman kube play: ${#pods[@]} pods started"

ip_of() {
    local infra
    infra="$(podman pod inspect --format '{{.InfraContainerID}}' "$1")"
    podman inspect --format '{{.NetworkSettings.Networks.podman.IPAddress}}' "$infra"
}
ready() { python3 -c "import sys,urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)" "$1" 2>/dev/null; }
declare -A ips
for p in "${pods[@]}"; do
    ips[$p]="$(ip_of "$p")"
    for _ in $(seq 150); do
        ready "http://${ips[$p]}:9090/readyz" && break
        sleep 0.2
    done
    ready "http://${ips[$p]}:9090/readyz" || {
        echo "$p: sidecar at ${ips[$p]}:9090 not ready"
        podman logs --tail 20 "$p-openmatch-gossip"
        exit 1
    }
done
echo "every sidecar ready: ${ips[*]}"

# 3. Zero-touch discovery: the operator asks the ready pods' sidecars for their peer ids.
python3 - "$work" "${ips[@]}" <<'PY'
import json, sys
work, ips = sys.argv[1], sys.argv[2:]
lst = json.load(open(f"{work}/selected-pending.json"))
for pod, ip in zip(lst["items"], ips):
    pod["status"] = {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}
json.dump(lst, open(f"{work}/selected-ready.json", "w"))
PY
"$op" render --network-file examples/gossipnetwork.yaml --pods "$work/selected-ready.json" \
    >"$work/configmap-ready.yaml" 2>"$work/render-ready.log"
grep -q '^bootstrap peers: 3$' "$work/render-ready.log" || { echo "peer ids not learned:"; cat "$work/render-ready.log"; exit 1; }
echo "operator render (pods ready): $(tr '\n' ' ' <"$work/render-ready.log")"
volume="$(podman volume inspect --format '{{.Mountpoint}}' demo-gossip-config)"
"$PY" - "$work/configmap-ready.yaml" "$volume" <<'PY'
import os, sys
import yaml
[cm] = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
tmp = os.path.join(sys.argv[2], ".config.yaml.new")
open(tmp, "w").write(cm["data"]["config.yaml"])
os.replace(tmp, os.path.join(sys.argv[2], "config.yaml"))
PY
echo "ConfigMap file replaced in place (as the kubelet updates it); the sidecars reload it"

# 4. The engines' reports.
for p in "${pods[@]}"; do
    podman wait --condition exited "$p-engine" >/dev/null
    podman logs "$p-engine" 2>/dev/null | grep '^{' | tail -1 >"$work/$p.json" || true
    [ -s "$work/$p.json" ] || { echo "$p: no report"; podman logs --tail 30 "$p-engine"; exit 1; }
done
"$PY" - "$work" "${pods[@]}" <<'PY'
import hashlib, json, sys
work, pods = sys.argv[1], sys.argv[2:]
reports = {p: json.load(open(f"{work}/{p}.json")) for p in pods}
problems = []
for p, r in reports.items():
    missing = r["expected"] - r["received"]
    if r["sent"] == 0 or r["expected"] == 0:
        problems.append(f"{p}: sent {r['sent']}, expected {r['expected']}")
    if missing or r["duplicates"]:
        problems.append(f"{p}: {missing} of {r['expected']} orders missing, {r['duplicates']} duplicates")
    if r["committed"] != r["sent"] or r["unresolved"]:
        problems.append(f"{p}: committed {r['committed']} of {r['sent']}, unresolved {r['unresolved']}")
    if any(t["halted"] for t in r["batches"].values()):
        problems.append(f"{p}: halted batches {r['batches']}")
    # Every other engine's orders, exactly as they committed them.
    for q, other in reports.items():
        if q != p and r["by_origin"].get(other["origin"], {}).get("checksum") != other["committed_checksum"]:
            problems.append(f"{p}: orders from {q} differ from what {q} committed")
# Batches: the same hash wherever a batch was agreed; every batch that holds orders agreed
# at all three; every batch of a market from the latest first epoch in that market on agreed
# at all three. Only an empty batch from before a sidecar's floor in that market (it votes
# from the first epoch it opened per market, PROTOCOL "Sidecar restart"; a sidecar that
# starts at an epoch's edge may open one market in the epoch and the next market in the one
# after) may be missing at that sidecar's engine.
EMPTY = hashlib.sha256(b"").hexdigest()
agreed = {p: r["agreed_batches"] for p, r in reports.items()}
every = set().union(*agreed.values())
market = lambda k: k.split("#")[0]
epoch = lambda k: int(k.split("#")[1])
floors = {}  # (engine, market) -> first epoch agreed there
for p, a in agreed.items():
    for k in a:
        floors[p, market(k)] = min(floors.get((p, market(k)), epoch(k)), epoch(k))
start = {m: max(floors.get((p, m), 0) for p in agreed) for m in map(market, every)}
disputed = set().union(*(r.get("disputed_batches", []) for r in reports.values()))
for m in map(market, disputed):
    start.setdefault(m, 0)
for k in sorted(every, key=epoch):
    at = {p: a[k] for p, a in agreed.items() if k in a}
    if len(set(at.values())) > 1:
        problems.append(f"batch {k} agreed with different hashes: {at}")
    elif len(at) < len(agreed) and (epoch(k) >= start[market(k)] or set(at.values()) != {EMPTY}):
        problems.append(f"batch {k} ({'empty' if set(at.values()) == {EMPTY} else 'with orders'}) agreed "
                        f"only at {sorted(at)}")
for k in sorted(disputed & every):
    problems.append(f"batch {k} agreed somewhere and disputed elsewhere")
for k in sorted(disputed, key=epoch):
    if epoch(k) >= start[market(k)]:
        problems.append(f"batch {k} disputed, from after every sidecar had started in {market(k)} "
                        f"(epoch {start[market(k)]})")
full = [k for k in every if all(k in a for a in agreed.values())]
nonempty = [k for k in full if agreed[pods[0]][k] != EMPTY]
if not nonempty:
    problems.append("no batch with orders agreed")
if problems:
    sys.exit("\n".join(problems))
early = len(every) - len(full)
print(f"3 engines: each sent {', '.join(str(r['sent']) for r in reports.values())} orders, all committed; "
      f"each received every other's ({', '.join(str(r['received']) for r in reports.values())}), 0 missing, "
      f"0 duplicates; {len(full)} batches ({len(nonempty)} with orders) agreed at all three with equal hashes, "
      f"none halted" + (f"; {early} empty batches from before a sidecar's start agreed without it"
                            if early else "")
      + (f"; {len(disputed)} batches from before the last sidecar's start disputed (its peers abstain on them)"
         if disputed else "; none disputed"))
PY
