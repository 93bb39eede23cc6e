#!/usr/bin/env bash
# kind end-to-end suite: the three commands a user types, in a real (kind) cluster, then
# whether the replicas really agree.
#
#   It has not been run on the machine it was written on (no Docker engine, no kind node
#   image there). What it drives is tested there piece by piece: the chart renders and
#   validates (tests/chart/run.sh), the webhook's patch and TLS (operator unit and mock-API
#   tests), the injected pods with the operator-rendered ConfigMap and peer ids learned from
#   the sidecars under `podman kube play` (tests/chart/play.sh).
#
# Steps:
#   1. create a kind cluster (Kubernetes >= 1.33; set KIND_NODE_IMAGE to choose the node image);
#   2. build both images (scripts/build-images.sh --engine docker: from local release binaries
#      if cargo is installed, else --from-source) and `kind load` them;
#   3. `helm install --wait` the chart (namespace openmatch-gossip-system);
#   4. apply examples/gossipnetwork.yaml and examples/reference-engine.yaml in namespace
#      openmatch-gossip-e2e (the engines replay E2E_DURATION_S seconds, default 60, of the
#      recording instead of all of it);
#   5. `kubectl wait` for the GossipNetwork's Ready condition and the 3 pods' readiness;
#      check each pod has the injected native sidecar;
#   6. from each sidecar's /metrics (through the API server's pod proxy): 2 live peers, batches
#      agreed, none disputed or halted; from each engine's JSON report (its log): every other
#      replica's committed orders received, exactly (count and checksum per origin), no
#      duplicates, none unresolved, and the same hash for every batch two engines both agreed;
#   7. delete a pod; assert it comes back ready, its new sidecar sees 2 live peers and agrees
#      batches, and the GossipNetwork has 3 ready peers again;
#   8. uninstall everything; assert nothing the chart or the examples made is left.
#
# Needs kind, docker (a running daemon), kubectl and helm. Where any is missing it prints one
# SKIPPED line and exits 0. helm and kubectl may also come from target/tools/ (fetched by
# tests/chart/run.sh). Environment: KIND_CLUSTER (default openmatch-gossip-e2e),
# KIND_NODE_IMAGE, KEEP_CLUSTER=1 (do not delete the cluster at the end), E2E_DURATION_S.
set -euo pipefail
cd "$(dirname "$0")/../../.."
root="$(pwd)"

tool() {
    if command -v "$1" >/dev/null 2>&1; then command -v "$1"
    elif [ -x "$root/target/tools/$1" ]; then echo "$root/target/tools/$1"
    fi
}
KIND="$(tool kind)" DOCKER="$(tool docker)" KUBECTL="$(tool kubectl)" HELM="$(tool helm)"
missing=()
[ -n "$KIND" ] || missing+=("kind")
if [ -z "$DOCKER" ]; then
    missing+=("docker")
elif ! "$DOCKER" info >/dev/null 2>&1; then
    missing+=("docker (no daemon reachable)")
fi
[ -n "$KUBECTL" ] || missing+=("kubectl")
[ -n "$HELM" ] || missing+=("helm")
if [ "${#missing[@]}" -gt 0 ]; then
    echo "SKIPPED: kind e2e needs kind, docker, kubectl and helm (missing: ${missing[*]})"
    exit 0
fi

cluster="${KIND_CLUSTER:-openmatch-gossip-e2e}"
system_ns="openmatch-gossip-system"
ns="openmatch-gossip-e2e"
release="og"
duration="${E2E_DURATION_S:-60}"
work="$(mktemp -d)"
kubectl() { "$KUBECTL" --context "kind-$cluster" "$@"; }
helm() { "$HELM" --kube-context "kind-$cluster" "$@"; }
step() { echo; echo "=== $*"; }
die() { echo "FAIL: $*" >&2; exit 1; }
cleanup() {
    rm -rf "$work"
    if [ "${KEEP_CLUSTER:-0}" != 1 ]; then "$KIND" delete cluster --name "$cluster" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

step "1. kind cluster $cluster"
"$KIND" create cluster --name "$cluster" ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"} --wait 120s
minor="$(kubectl version -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["minor"].rstrip("+"))')"
[ "$minor" -ge 33 ] || die "the cluster runs Kubernetes 1.$minor; native sidecars need 1.33 (set KIND_NODE_IMAGE)"

step "2. images"
build=(--engine docker)
command -v cargo >/dev/null 2>&1 || build+=(--from-source)
mapfile -t images < <(scripts/build-images.sh "${build[@]}")
for image in "${images[@]}"; do "$KIND" load docker-image --name "$cluster" "$image"; done

step "3. helm install --wait"
helm install "$release" charts/openmatch-gossip --namespace "$system_ns" --create-namespace --wait --timeout 5m
kubectl -n "$system_ns" get pods -o wide

step "4. the examples (engines replay ${duration} s)"
kubectl create namespace "$ns"
kubectl -n "$ns" apply -f examples/gossipnetwork.yaml
sed "s|^\( *\)- --pace=real$|&\n\1- --duration-s=${duration}|" examples/reference-engine.yaml >"$work/engine.yaml"
grep -q -- "--duration-s=${duration}" "$work/engine.yaml" || die "could not set --duration-s in the example"
kubectl -n "$ns" apply -f "$work/engine.yaml"

step "5. GossipNetwork Ready, pods ready, sidecars injected"
kubectl -n "$ns" wait gossipnetwork/demo --for=condition=Ready --timeout=5m
kubectl -n "$ns" rollout status statefulset/reference-engine --timeout=5m
kubectl -n "$ns" wait pod -l app.kubernetes.io/name=reference-engine --for=condition=Ready --timeout=5m
pods=(reference-engine-0 reference-engine-1 reference-engine-2)
for pod in "${pods[@]}"; do
    restart="$(kubectl -n "$ns" get pod "$pod" -o jsonpath='{.spec.initContainers[?(@.name=="openmatch-gossip")].restartPolicy}')"
    [ "$restart" = Always ] || die "$pod has no native sidecar openmatch-gossip (initContainer with restartPolicy Always)"
done
kubectl -n "$ns" get gossipnetwork demo

# metric POD NAME OUTCOME: the sum of a sidecar metric's samples (matching a label filter).
metric() {
    kubectl get --raw "/api/v1/namespaces/$ns/pods/$1:9090/proxy/metrics" |
        awk -v name="$2" -v filter="${3:-}" '$1 ~ "^"name"({|$)" && index($1, filter) {s += $2} END {print s + 0}'
}
check_sidecar() {
    local pod="$1" peers agreed disputed halted
    peers="$(metric "$pod" openmatch_gossip_live_peers)"
    agreed="$(metric "$pod" openmatch_gossip_batches_total 'outcome="agreed"')"
    disputed="$(metric "$pod" openmatch_gossip_batches_total 'outcome="disputed"')"
    halted="$(metric "$pod" openmatch_gossip_batches_total 'outcome="halted"')"
    echo "$pod: live peers $peers, batches agreed $agreed, disputed $disputed, halted $halted"
    [ "$peers" = 2 ] && [ "$agreed" -gt 0 ] && [ "$disputed" = 0 ] && [ "$halted" = 0 ]
}

step "6. every replica received every other's orders; batches agreed"
for pod in "${pods[@]}"; do
    ok=false
    for _ in $(seq 30); do check_sidecar "$pod" && { ok=true; break; }; sleep 2; done
    $ok || die "$pod's sidecar did not reach 2 live peers with agreed batches only"
done
# The engines print one JSON report line when their replay is done and settled, then exit
# (and are restarted by the kubelet, resuming from their state file): read it from the
# current or the previous container's log.
deadline=$((SECONDS + duration + 600))
for pod in "${pods[@]}"; do
    until { kubectl -n "$ns" logs "$pod" -c engine --previous 2>/dev/null; kubectl -n "$ns" logs "$pod" -c engine 2>/dev/null; } |
        grep '^{.*"agreed_batches"' | head -1 >"$work/$pod.json" && [ -s "$work/$pod.json" ]; do
        [ "$SECONDS" -lt "$deadline" ] || die "no engine report from $pod"
        sleep 10
    done
done
python3 - "$work"/reference-engine-*.json <<'PY'
import json, sys
reports = {p: json.loads(open(p).read()) for p in sys.argv[1:]}
fail = []
for p, r in reports.items():
    if r["received"] != r["expected"] or r["duplicates"] or r["unresolved"]:
        fail.append(f"{p}: received {r['received']} of {r['expected']}, duplicates {r['duplicates']}, unresolved {r['unresolved']}")
    for q, other in reports.items():
        if q == p:
            continue
        got = r["by_origin"].get(other["origin"])
        if not got or got["orders"] != other["committed"] or got["checksum"] != other["committed_checksum"]:
            fail.append(f"{p}: from {other['origin']} got {got}, it committed {other['committed']} ({other['committed_checksum']})")
        for batch, h in r["agreed_batches"].items():
            if batch in other["agreed_batches"] and other["agreed_batches"][batch] != h:
                fail.append(f"{p} and {q} agreed different hashes for {batch}")
    for market, t in r["batches"].items():
        if t["disputed"] or t["halted"]:
            fail.append(f"{p}: {market}: disputed {t['disputed']}, halted {t['halted']}")
if fail:
    sys.exit("FAIL: " + "\n".join(fail))
for p, r in sorted(reports.items()):
    print(f"{p}: sent {r['sent']}, committed {r['committed']}, received {r['received']}/{r['expected']}, "
          f"duplicates 0, unresolved 0, {len(r['agreed_batches'])} batches agreed, same hashes as the others")
PY

step "7. a deleted pod rejoins"
old_uid="$(kubectl -n "$ns" get pod reference-engine-1 -o jsonpath='{.metadata.uid}')"
kubectl -n "$ns" delete pod reference-engine-1 --wait=true
for _ in $(seq 60); do
    uid="$(kubectl -n "$ns" get pod reference-engine-1 -o jsonpath='{.metadata.uid}' 2>/dev/null || true)"
    [ -n "$uid" ] && [ "$uid" != "$old_uid" ] && break
    sleep 2
done
kubectl -n "$ns" wait pod/reference-engine-1 --for=condition=Ready --timeout=5m
ok=false
for _ in $(seq 60); do check_sidecar reference-engine-1 && { ok=true; break; }; sleep 2; done
$ok || die "reference-engine-1 did not rejoin (2 live peers, agreed batches)"
kubectl -n "$ns" wait gossipnetwork/demo --for=jsonpath='{.status.readyPeers}'=3 --timeout=3m

step "8. uninstall leaves nothing"
kubectl -n "$ns" delete -f "$work/engine.yaml" --wait=true
kubectl -n "$ns" delete -f examples/gossipnetwork.yaml --wait=true
left="$(kubectl -n "$ns" get configmap,service -o name | grep -v 'configmap/kube-root-ca.crt' || true)"
[ -z "$left" ] || die "the GossipNetwork's children are left: $left"
helm uninstall "$release" --namespace "$system_ns" --wait
left="$(kubectl get clusterrole,clusterrolebinding,mutatingwebhookconfiguration -l app.kubernetes.io/instance="$release" -o name)"
left+="$(kubectl -n "$system_ns" get all,serviceaccount,role,rolebinding,poddisruptionbudget,configmap -l app.kubernetes.io/instance="$release" -o name)"
[ -z "$left" ] || die "left after helm uninstall: $left"
# Helm never deletes a chart's CRDs (that would delete every GossipNetwork); the Lease and
# the webhook's serving-certificate Secret are the operator's, not Helm's: all go by hand,
# with the namespaces.
kubectl delete crd gossipnetworks.gossip.openmatch.io --wait=true
kubectl delete namespace "$ns" "$system_ns" --wait=true
echo
echo "kind e2e: passed"
