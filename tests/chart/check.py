"""Checks of the Helm chart's rendered manifests and of examples/, for tests/chart/run.sh.

Run with the venv's python (tests/chart/tools.sh). Subcommands:

  render FILE SCENARIO   FILE is `helm template --include-crds` output for SCENARIO
                         (default, all-on, namespaced). Every object is validated offline:
                         Kubernetes kinds with kubernetes-validate (strict: unknown fields
                         rejected) against 1.33 and the newest schemas it ships; ServiceMonitor
                         and PodMonitor against prometheus-operator's schema (cloudcoil models,
                         unknown fields rejected). Then what the chart promises: the objects of
                         the scenario and nothing else, standard labels, least-privilege RBAC
                         (exactly README's list), the operator's leader election, probes,
                         resources and restricted pod security, the monitors' selectors.
  examples DIR CRD       the GossipNetwork example against the CRD's openAPIV3Schema (as
                         crds/tests/it/examples.rs translates it), the engine StatefulSet with
                         kubernetes-validate, restricted pod security and its wiring to the
                         GossipNetwork.
  values-comments FILE   every value in values.yaml is documented by a `# --` comment (on it
                         or on an enclosing key).
  injected FILE          `openmatch-gossip-operator inject` output for examples/: each object
                         validates strictly (kubernetes-validate), its pod template carries
                         the native sidecar and keeps the restricted pod security profile.

Each check prints `ok: ...`; the first failure raises and exits non-zero.
"""

import copy
import json
import pathlib
import re
import sys

import jsonschema
import yaml
from kubernetes_validate import utils as kv

MIN_K8S = "1.33"
K8S_VERSIONS = [MIN_K8S, kv.major_minor(kv.latest_version())]

# README, "The GossipNetwork operator": "RBAC it needs". Keys: (API group, resource,
# resourceNames); values: verbs.
OPERATOR_RULES = {
    ("gossip.openmatch.io", "gossipnetworks", ()): {"get", "list", "watch"},
    ("gossip.openmatch.io", "gossipnetworks/status", ()): {"patch"},
    ("", "pods", ()): {"get", "list", "watch"},
    ("", "configmaps", ()): {"get", "list", "watch", "create", "patch"},
    ("", "services", ()): {"get", "list", "watch", "create", "patch"},
    ("events.k8s.io", "events", ()): {"create", "patch"},
}
LEASE_RULES = {("coordination.k8s.io", "leases", ()): {"get", "create", "update"}}
# What injection adds (README, same list): its own webhook configuration, cluster-wide; its
# serving certificate's Secret in the release namespace (read only under cert-manager).
WEBHOOK_CONFIGURATION = "og-openmatch-gossip-sidecar-injector"
WEBHOOK_SERVICE = "og-openmatch-gossip-webhook"
WEBHOOK_SECRET = "og-openmatch-gossip-webhook-tls"
WEBHOOK_CLUSTER_RULES = {
    ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", (WEBHOOK_CONFIGURATION,)): {"get", "patch"},
}
WEBHOOK_SECRET_RULES = {
    ("", "secrets", (WEBHOOK_SECRET,)): {"get", "update"},
    ("", "secrets", ()): {"create"},
}
WEBHOOK_SECRET_RULES_CERT_MANAGER = {("", "secrets", (WEBHOOK_SECRET,)): {"get"}}

STANDARD_LABELS = [
    "helm.sh/chart",
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
]

# (kind, name) of every object each scenario renders (release "og" in namespace "og-system").
OP = "og-openmatch-gossip-operator"
# What every install renders.
BASE = {
    ("CustomResourceDefinition", "gossipnetworks.gossip.openmatch.io"),
    ("ServiceAccount", OP),
    ("ClusterRole", OP),
    ("ClusterRoleBinding", OP),
    ("Role", OP + "-leader-election"),
    ("RoleBinding", OP + "-leader-election"),
    ("Deployment", OP),
    ("PodDisruptionBudget", OP),
    ("Service", OP + "-metrics"),
}
# The injection webhook (on by default, in every scenario).
WEBHOOK_OBJECTS = {
    ("Service", WEBHOOK_SERVICE),
    ("MutatingWebhookConfiguration", WEBHOOK_CONFIGURATION),
    ("ClusterRole", OP + "-webhook"),
    ("ClusterRoleBinding", OP + "-webhook"),
    ("Role", OP + "-webhook"),
    ("RoleBinding", OP + "-webhook"),
}
BASE |= WEBHOOK_OBJECTS
# The chart's Grafana dashboards (files/dashboards/<name>.json) and alert rules.
CHART_FILES = pathlib.Path(__file__).resolve().parent.parent.parent / "charts/openmatch-gossip/files"
DASHBOARDS = sorted(p.stem for p in (CHART_FILES / "dashboards").glob("*.json"))
SCENARIOS = {
    "default": BASE,
    "all-on": BASE | {
        ("ServiceMonitor", OP),
        ("PodMonitor", "og-openmatch-gossip-sidecars"),
        ("Issuer", "og-openmatch-gossip-selfsigned"),
        ("Certificate", "og-openmatch-gossip-webhook"),
        ("PrometheusRule", "og-openmatch-gossip"),
    } | {("ConfigMap", f"og-openmatch-gossip-dashboard-{d}") for d in DASHBOARDS},
    # One replica without leader election, watching one namespace: namespaced RBAC, no
    # Lease Role, no PodDisruptionBudget (it would block drains), no metrics Service.
    "namespaced": {
        ("CustomResourceDefinition", "gossipnetworks.gossip.openmatch.io"),
        ("ServiceAccount", OP),
        ("Role", OP),
        ("RoleBinding", OP),
        ("Deployment", OP),
    } | WEBHOOK_OBJECTS,
}


def ok(msg):
    print(f"ok: {msg}")


def fail(msg):
    raise SystemExit(f"FAIL: {msg}")


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def key(o):
    return (o["kind"], o["metadata"]["name"])


# ---------------------------------------------------------------------------------------------
# Schema validation


def k8s_validate(o, where):
    """kubernetes-validate --strict for each version; a missing schema is a failure here."""
    for version in K8S_VERSIONS:
        try:
            kv.validate(o, version, strict=True)
        except kv.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            fail(f"{where}: {key(o)} against Kubernetes {version}: {path}: {e.message}")
        except kv.SchemaNotFoundError as e:
            fail(f"{where}: {key(o)}: {e.message}")


def strict_json_schema(node):
    """Rejects unknown fields: additionalProperties false wherever properties are listed."""
    if isinstance(node, dict):
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for v in node.values():
            strict_json_schema(v)
    elif isinstance(node, list):
        for v in node:
            strict_json_schema(v)
    return node


_crd_validators = {}
# apiVersion of a third-party kind the chart renders -> cloudcoil's models of it (pydantic,
# generated from that project's CRDs).
CRD_MODELS = {
    "monitoring.coreos.com/v1": "cloudcoil.models.prometheus_operator.v1",
    "cert-manager.io/v1": "cloudcoil.models.cert_manager.v1",
}


def crd_validate(o, where):
    """ServiceMonitor / PodMonitor against prometheus-operator's schema, Issuer / Certificate
    against cert-manager's (cloudcoil's models of their CRDs), unknown fields rejected."""
    import importlib

    k = (o["apiVersion"], o["kind"])
    if k not in _crd_validators:
        models = importlib.import_module(CRD_MODELS[o["apiVersion"]])
        schema = strict_json_schema(getattr(models, o["kind"]).model_json_schema(by_alias=True))
        _crd_validators[k] = jsonschema.Draft202012Validator(schema)
    errors = sorted(_crd_validators[k].iter_errors(o), key=lambda e: list(e.path))
    if errors:
        fail(f"{where}: {key(o)}: " + "; ".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors))


def validate(o, where):
    """The object against its kind's schema (Kubernetes' or the third party's CRD)."""
    if o["apiVersion"] in CRD_MODELS:
        crd_validate(o, where)
    else:
        k8s_validate(o, where)


def must_reject(o, where, what):
    """The validation of `o` (its kind's validator) must fail."""
    try:
        validate(o, where)
    except SystemExit:
        return
    fail(f"{where}: {key(o)} with {what} passes validation: the validator does not check")


def crd_validator(crd_path):
    """The CRD's openAPIV3Schema as JSON Schema (draft 4), translated as in
    crds/tests/it/examples.rs: nullable → null type, list-type set → uniqueItems, unknown
    fields under spec rejected (kubectl's strict field validation)."""
    [crd] = load_all(crd_path)
    schema = copy.deepcopy(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])

    def translate(s, under_spec):
        if not isinstance(s, dict):
            return
        if s.pop("nullable", False) and isinstance(s.get("type"), str):
            s["type"] = [s["type"], "null"]
        lt = s.pop("x-kubernetes-list-type", None)
        if lt == "set":
            s["uniqueItems"] = True
        s.pop("x-kubernetes-list-map-keys", None)
        if under_spec and "properties" in s:
            s["additionalProperties"] = False
        for name, sub in s.get("properties", {}).items():
            translate(sub, under_spec or name == "spec")
        for k in ("items", "additionalProperties"):
            if isinstance(s.get(k), dict):
                translate(s[k], under_spec)

    translate(schema, False)
    return jsonschema.Draft4Validator(schema)


# ---------------------------------------------------------------------------------------------
# What the chart promises


def restricted_pod_security(pod_spec, where):
    """The Pod Security Standards' `restricted` profile (Kubernetes 1.33), checked field by
    field, plus a read-only root filesystem for every container."""
    for f in ("hostNetwork", "hostPID", "hostIPC", "hostUsers"):
        if f in pod_spec and pod_spec[f] != (f == "hostUsers"):
            fail(f"{where}: {f} set")
    allowed_volumes = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                       "persistentVolumeClaim", "projected", "secret", "image"}
    for v in pod_spec.get("volumes", []):
        types = set(v) - {"name"}
        if not types <= allowed_volumes:
            fail(f"{where}: volume {v['name']} of type {types - allowed_volumes}")
    psc = pod_spec.get("securityContext", {})
    containers = pod_spec.get("initContainers", []) + pod_spec["containers"]
    for c in containers:
        sc = c.get("securityContext", {})
        w = f"{where}: container {c['name']}"

        def eff(field):
            return sc.get(field, psc.get(field))

        if sc.get("privileged"):
            fail(f"{w}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            fail(f"{w}: allowPrivilegeEscalation is not false")
        if eff("runAsNonRoot") is not True:
            fail(f"{w}: runAsNonRoot is not true")
        if eff("runAsUser") == 0:
            fail(f"{w}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            fail(f"{w}: seccompProfile {seccomp!r}")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            fail(f"{w}: capabilities do not drop ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            fail(f"{w}: adds capabilities {caps['add']}")
        if sc.get("readOnlyRootFilesystem") is not True:
            fail(f"{w}: root filesystem not read-only")
        for p in c.get("ports", []):
            if p.get("hostPort"):
                fail(f"{w}: hostPort")
    ok(f"{where}: restricted pod security (non-root, no privilege escalation, capabilities ALL dropped, "
       f"seccomp RuntimeDefault, read-only root filesystem)")


def rules_of(role):
    """{(API group, resource, resourceNames): verbs} of a Role or ClusterRole."""
    got = {}
    for r in role["rules"]:
        if set(r) - {"apiGroups", "resources", "resourceNames", "verbs"}:
            fail(f"{key(role)}: rule with {set(r)} (nonResourceURLs not expected)")
        names = tuple(sorted(r.get("resourceNames", [])))
        for g in r["apiGroups"]:
            for res in r["resources"]:
                if "*" in (g, res) or "*" in r["verbs"]:
                    fail(f"{key(role)}: wildcard in {r}")
                got.setdefault((g, res, names), set()).update(r["verbs"])
    return got


def check_render(path, scenario):
    objs = load_all(path)
    where = f"{scenario} render"
    got = {key(o) for o in objs}
    want = SCENARIOS[scenario]
    if got != want:
        fail(f"{where}: objects {sorted(got)}, expected {sorted(want)} "
             f"(missing {sorted(want - got)}, unexpected {sorted(got - want)})")
    ok(f"{where}: exactly the {len(want)} expected objects")
    by = {key(o): o for o in objs}

    # Schemas.
    for o in objs:
        validate(o, where)
    # The validators bite: an unknown field and a wrong type are rejected (no green from a
    # validator that accepts anything, e.g. for a kind it has no schema for).
    for k in sorted(got):
        o = copy.deepcopy(by[k])
        o.setdefault("metadata", {})["bogusField"] = 1
        must_reject(o, where, "an unknown metadata field")
    dep = copy.deepcopy(by[("Deployment", OP)])
    dep["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsNonRoot"] = "yes"
    must_reject(dep, where, "a string runAsNonRoot")
    kinds = sorted({o["kind"] for o in objs})
    ok(f"{where}: every object validates strictly against Kubernetes {' and '.join(K8S_VERSIONS)} "
       f"(kubernetes-validate) or prometheus-operator's / cert-manager's schema: {', '.join(kinds)}; "
       f"each rejects an unknown field")

    # Labels (the CRD comes verbatim from crds/, generated by the operator).
    for o in objs:
        if o["kind"] == "CustomResourceDefinition":
            continue
        labels = o["metadata"].get("labels", {})
        missing = [label for label in STANDARD_LABELS if label not in labels]
        if missing:
            fail(f"{where}: {key(o)} lacks labels {missing}")
        if labels["app.kubernetes.io/instance"] != "og" or labels["app.kubernetes.io/managed-by"] != "Helm":
            fail(f"{where}: {key(o)} labels {labels}")
        if "namespace" in o["metadata"] and o["kind"] not in ("Role", "RoleBinding"):
            if o["metadata"]["namespace"] != "og-system":
                fail(f"{where}: {key(o)} in namespace {o['metadata']['namespace']}")
    ok(f"{where}: standard app.kubernetes.io/* and helm.sh/chart labels on every chart object")

    # RBAC.
    namespaced = scenario == "namespaced"
    role = by[("Role" if namespaced else "ClusterRole", OP)]
    if rules_of(role) != OPERATOR_RULES:
        fail(f"{where}: operator rules {rules_of(role)} != README's {OPERATOR_RULES}")
    binding = by[("RoleBinding" if namespaced else "ClusterRoleBinding", OP)]
    if binding["roleRef"]["name"] != OP or binding["subjects"] != [
            {"kind": "ServiceAccount", "name": OP, "namespace": "og-system"}]:
        fail(f"{where}: {key(binding)} binds {binding['roleRef']} to {binding['subjects']}")
    if namespaced:
        if role["metadata"]["namespace"] != "trading" or binding["metadata"]["namespace"] != "trading":
            fail(f"{where}: namespaced RBAC not in the watched namespace")
    else:
        lease = by[("Role", OP + "-leader-election")]
        if rules_of(lease) != LEASE_RULES or lease["metadata"]["namespace"] != "og-system":
            fail(f"{where}: lease Role {rules_of(lease)} in {lease['metadata'].get('namespace')}")
        lb = by[("RoleBinding", OP + "-leader-election")]
        if lb["roleRef"]["name"] != OP + "-leader-election" or lb["subjects"][0]["name"] != OP:
            fail(f"{where}: lease RoleBinding {lb['roleRef']} {lb['subjects']}")
    ok(f"{where}: RBAC is exactly README's list ({'Role in namespace trading' if namespaced else 'ClusterRole'}"
       f"{'' if namespaced else ' + Lease Role in the release namespace'}), no wildcards")

    # The operator Deployment.
    dep = by[("Deployment", OP)]
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    [c] = pod["containers"]
    args = c["args"]
    if args[0] != "run":
        fail(f"{where}: operator args {args}")
    sel = spec["selector"]["matchLabels"]
    if any(spec["template"]["metadata"]["labels"].get(k) != v for k, v in sel.items()):
        fail(f"{where}: pod labels do not match the selector {sel}")
    if pod["serviceAccountName"] != OP:
        fail(f"{where}: serviceAccountName {pod['serviceAccountName']}")
    if namespaced:
        if spec["replicas"] != 1 or "--leader-elect=false" not in args or "--namespace=trading" not in args:
            fail(f"{where}: replicas {spec['replicas']}, args {args}")
    else:
        for a in ("--leader-elect=true", f"--lease-name={OP}", "--lease-namespace=og-system"):
            if a not in args:
                fail(f"{where}: {a} not in {args}")
        if spec["replicas"] != 2:
            fail(f"{where}: replicas {spec['replicas']}")
        pdb = by[("PodDisruptionBudget", OP)]
        if pdb["spec"]["minAvailable"] != 1 or pdb["spec"]["selector"]["matchLabels"] != sel:
            fail(f"{where}: PDB {pdb['spec']}")
    if not any(e["name"] == "POD_NAME" and e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
               for e in c["env"]):
        fail(f"{where}: no POD_NAME from the downward API (the Lease identity)")
    port = {p["name"]: p["containerPort"] for p in c["ports"]}.get("metrics")
    if f"--http-addr=0.0.0.0:{port}" not in args:
        fail(f"{where}: --http-addr does not match the metrics port {port}: {args}")
    for probe, path in (("startupProbe", "/healthz"), ("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = c.get(probe, {}).get("httpGet", {})
        if get.get("path") != path or get.get("port") != "metrics":
            fail(f"{where}: {probe} {c.get(probe)}")
    res = c.get("resources", {})
    if not res.get("requests", {}).get("cpu") or not res.get("requests", {}).get("memory") or \
            not res.get("limits", {}).get("memory"):
        fail(f"{where}: resources {res}")
    restricted_pod_security(pod, f"{where}: Deployment {OP}")
    ok(f"{where}: operator Deployment: {spec['replicas']} replica(s), "
       f"{'leader election off, one namespace' if namespaced else 'leader election on its Lease'}, "
       f"probes /healthz /readyz on port metrics, requests and limits")

    # Metrics Service and monitors.
    svc = by.get(("Service", OP + "-metrics"))
    if svc:
        if svc["spec"]["selector"] != sel or svc["spec"]["ports"][0]["targetPort"] != "metrics":
            fail(f"{where}: metrics Service {svc['spec']}")
        ok(f"{where}: metrics Service selects the operator pods' metrics port")
    sm = by.get(("ServiceMonitor", OP))
    if sm:
        if sm["spec"]["selector"]["matchLabels"] != sel or sm["spec"]["endpoints"][0]["port"] != "metrics" \
                or svc["metadata"]["labels"].get("app.kubernetes.io/component") != "operator":
            fail(f"{where}: ServiceMonitor {sm['spec']}")
        if sm["metadata"]["labels"].get("release") != "prometheus":
            fail(f"{where}: ServiceMonitor labels {sm['metadata']['labels']}")
        ok(f"{where}: ServiceMonitor selects the metrics Service (its labels include the selector), port metrics")
    pm = by.get(("PodMonitor", "og-openmatch-gossip-sidecars"))
    if pm:
        if pm["spec"]["selector"] != {"matchLabels": {"gossip.openmatch.io/injected": "true"}} or \
                pm["spec"]["podMetricsEndpoints"][0]["port"] != "metrics" or \
                pm["spec"]["namespaceSelector"] != {"any": True} or \
                pm["spec"]["podMetricsEndpoints"][0]["relabelings"] != [
                    {"sourceLabels": ["__meta_kubernetes_pod_label_gossip_openmatch_io_network"],
                     "targetLabel": "gossip_network"}]:
            fail(f"{where}: PodMonitor {pm['spec']}")
        ok(f"{where}: PodMonitor selects injected pods (gossip.openmatch.io/injected=true), port metrics, all "
           f"namespaces, the pod's network label as gossip_network")
    pr = by.get(("PrometheusRule", "og-openmatch-gossip"))
    if pr:
        rules = yaml.safe_load((CHART_FILES / "prometheus-rules.yaml").read_text())
        if pr["spec"] != {"groups": rules["groups"]} or pr["metadata"]["labels"].get("release") != "prometheus":
            fail(f"{where}: PrometheusRule differs from files/prometheus-rules.yaml or lacks its labels")
        alerts = [r["alert"] for g in pr["spec"]["groups"] for r in g["rules"]]
        ok(f"{where}: PrometheusRule holds files/prometheus-rules.yaml as it is ({len(alerts)} alerts, "
           f"their $labels templates untouched), with the release label")
    for d in DASHBOARDS if scenario == "all-on" else []:
        cm = by[("ConfigMap", f"og-openmatch-gossip-dashboard-{d}")]
        board = json.loads(cm["data"][f"{d}.json"])
        if cm["metadata"]["labels"].get("grafana_dashboard") != "1" or \
                board != json.loads((CHART_FILES / "dashboards" / f"{d}.json").read_text()) or \
                cm["metadata"].get("annotations") != {"grafana_folder": "trading"}:
            fail(f"{where}: dashboard ConfigMap {d}: labels {cm['metadata']['labels']}, "
                 f"annotations {cm['metadata'].get('annotations')}")
        names = [v["name"] for v in board["templating"]["list"]]
        if names[:2] != ["datasource", "network"]:
            fail(f"{where}: dashboard {d} variables {names}")
    if scenario == "all-on":
        ok(f"{where}: dashboards {', '.join(DASHBOARDS)} as ConfigMaps labelled grafana_dashboard=1, "
           f"each file as it is, with $datasource and $network")
    check_webhook(by, where, scenario, sel, c)

    if scenario == "all-on":
        tmpl = spec["template"]
        if tmpl["metadata"].get("annotations", {}).get("example.com/scrape") != "false" or \
                c["image"] != "registry.example.com/og/operator@sha256:" + "0" * 64 or \
                "--resync-s=60" not in args or "--identity=$(POD_NAME)" not in args or pod.get("priorityClassName") != "system-cluster-critical" or \
                pod["imagePullSecrets"] != [{"name": "regcred"}] or not pod.get("tolerations") or \
                dep["metadata"]["labels"].get("team") != "trading":
            fail(f"{where}: optional values not all applied: {tmpl}")
        ok(f"{where}: optional values applied (digest, pull secrets, pod annotations, priority class, "
           f"tolerations, extra args, common labels)")


def check_webhook(by, where, scenario, operator_selector, container):
    """The injection webhook: its configuration reaches only labelled pods outside
    kube-system and the release namespace, through a Service to the operator's webhook port;
    the operator's flags name the same Service, Secret and configuration; its RBAC is exactly
    what injection needs; under cert-manager, a Certificate for those names."""
    cert_manager = scenario == "all-on"
    args = container["args"]
    mwc = by[("MutatingWebhookConfiguration", WEBHOOK_CONFIGURATION)]
    [wh] = mwc["webhooks"]
    svc = by[("Service", WEBHOOK_SERVICE)]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    if svc["spec"]["selector"] != operator_selector or svc["spec"]["ports"] != [
            {"name": "https", "port": 443, "targetPort": "webhook", "protocol": "TCP"}] or "webhook" not in ports:
        fail(f"{where}: webhook Service {svc['spec']} vs the operator's ports {ports}")
    want_client = {"service": {"name": WEBHOOK_SERVICE, "namespace": "og-system", "path": "/mutate-pods", "port": 443}}
    if wh["clientConfig"] != want_client:
        fail(f"{where}: webhook clientConfig {wh['clientConfig']} != {want_client} (the caBundle is not in the chart)")
    if wh["rules"] != [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"],
                        "scope": "Namespaced"}]:
        fail(f"{where}: webhook rules {wh['rules']}")
    if wh["objectSelector"] != {"matchExpressions": [{"key": "gossip.openmatch.io/network", "operator": "Exists"}]}:
        fail(f"{where}: objectSelector {wh['objectSelector']}: only labelled pods may reach the webhook")
    ns_exprs = wh["namespaceSelector"]["matchExpressions"]
    skip = {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", "og-system"]}
    if skip not in ns_exprs:
        fail(f"{where}: namespaceSelector {ns_exprs} does not skip kube-system and the release namespace")
    if scenario == "namespaced" and \
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["trading"]} not in ns_exprs:
        fail(f"{where}: namespaceSelector {ns_exprs} does not keep to the watched namespace")
    if (wh["failurePolicy"], wh["sideEffects"], wh["admissionReviewVersions"]) != ("Fail", "NoneOnDryRun", ["v1"]):
        fail(f"{where}: webhook {wh}")
    want_args = [f"--webhook-addr=0.0.0.0:{ports['webhook']}", f"--webhook-service={WEBHOOK_SERVICE}",
                 f"--webhook-secret={WEBHOOK_SECRET}", f"--webhook-configuration={WEBHOOK_CONFIGURATION}",
                 "--sidecar-metrics-port=9090"]
    if cert_manager:
        want_args.append("--webhook-cert-manager")
    if [a for a in want_args if a not in args] or (not cert_manager and "--webhook-cert-manager" in args):
        fail(f"{where}: operator args {args} do not wire the webhook ({want_args})")
    [res] = [a.split("=", 1)[1] for a in args if a.startswith("--sidecar-resources=")]
    import json
    if json.loads(res) != {"limits": {"memory": "512Mi"}, "requests": {"cpu": "250m", "memory": "128Mi"}}:
        fail(f"{where}: --sidecar-resources={res} is not values.yaml's sidecar.resources")
    image = "registry.example.com/og/openmatch-gossip:0.1.0" if cert_manager else "openmatch-gossip:0.1.0"
    if f"--sidecar-image={image}" not in args:
        fail(f"{where}: --sidecar-image is not {image}: {args}")
    ok(f"{where}: MutatingWebhookConfiguration: CREATE pods labelled gossip.openmatch.io/network only, not in "
       f"kube-system or og-system, failurePolicy Fail, sideEffects NoneOnDryRun, through Service {WEBHOOK_SERVICE}:443 "
       f"to the operator's webhook port {ports['webhook']}; the operator's --webhook-*/--sidecar-* flags agree")

    cr = by[("ClusterRole", OP + "-webhook")]
    role = by[("Role", OP + "-webhook")]
    want_secret = WEBHOOK_SECRET_RULES_CERT_MANAGER if cert_manager else WEBHOOK_SECRET_RULES
    if rules_of(cr) != WEBHOOK_CLUSTER_RULES or rules_of(role) != want_secret or \
            role["metadata"]["namespace"] != "og-system":
        fail(f"{where}: webhook RBAC {rules_of(cr)} / {rules_of(role)}, expected {WEBHOOK_CLUSTER_RULES} / {want_secret}")
    for kind in ("ClusterRoleBinding", "RoleBinding"):
        b = by[(kind, OP + "-webhook")]
        if b["roleRef"]["name"] != OP + "-webhook" or b["subjects"] != [
                {"kind": "ServiceAccount", "name": OP, "namespace": "og-system"}]:
            fail(f"{where}: {key(b)} binds {b['roleRef']} to {b['subjects']}")
    ok(f"{where}: webhook RBAC: get/patch of {WEBHOOK_CONFIGURATION} only; Secret {WEBHOOK_SECRET} "
       f"{'get only (cert-manager writes it)' if cert_manager else 'get/update, and create'} in og-system")

    if cert_manager:
        cert = by[("Certificate", "og-openmatch-gossip-webhook")]
        names = [WEBHOOK_SERVICE, f"{WEBHOOK_SERVICE}.og-system", f"{WEBHOOK_SERVICE}.og-system.svc",
                 f"{WEBHOOK_SERVICE}.og-system.svc.cluster.local"]
        if cert["spec"]["secretName"] != WEBHOOK_SECRET or cert["spec"]["dnsNames"] != names or \
                cert["spec"]["issuerRef"] != {"name": "og-openmatch-gossip-selfsigned", "kind": "Issuer",
                                              "group": "cert-manager.io"}:
            fail(f"{where}: Certificate {cert['spec']}")
        if mwc["metadata"].get("annotations", {}).get("cert-manager.io/inject-ca-from") != \
                "og-system/og-openmatch-gossip-webhook":
            fail(f"{where}: no cert-manager CA injection annotation: {mwc['metadata']}")
        ok(f"{where}: cert-manager: Certificate into {WEBHOOK_SECRET} for the Service's DNS names, from the "
           f"chart's self-signed Issuer; the CA injector annotation on the webhook configuration")
    elif "annotations" in mwc["metadata"]:
        fail(f"{where}: webhook configuration annotated {mwc['metadata']['annotations']} without cert-manager")


# ---------------------------------------------------------------------------------------------
# Examples


def check_examples(examples_dir, crd_path):
    gn_path = f"{examples_dir}/gossipnetwork.yaml"
    engine_path = f"{examples_dir}/reference-engine.yaml"
    [gn] = load_all(gn_path)
    v = crd_validator(crd_path)
    errors = list(v.iter_errors(gn))
    if errors:
        fail(f"{gn_path}: " + "; ".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors))
    if sorted(gn["spec"]["markets"]) != ["BTC-USDT", "ETH-USDT"]:
        fail(f"{gn_path}: markets {gn['spec']['markets']}")
    # The schema's checks bite (a sanity check of the validator itself).
    bad = copy.deepcopy(gn)
    bad["spec"]["markets"] = ["btc-usdt"]
    bad["spec"]["p2pPorts"] = 1
    if len(list(v.iter_errors(bad))) < 2:
        fail("the CRD validator accepts a bad market name or an unknown field")
    ok(f"{gn_path}: valid against the CRD's openAPIV3Schema (unknown fields rejected)")

    [sts] = load_all(engine_path)
    k8s_validate(sts, engine_path)
    ok(f"{engine_path}: StatefulSet validates strictly against Kubernetes {' and '.join(K8S_VERSIONS)}")
    name = gn["metadata"]["name"]
    spec = sts["spec"]
    tmpl = spec["template"]
    if spec["replicas"] != 3:
        fail(f"{engine_path}: replicas {spec['replicas']}")
    if tmpl["metadata"]["labels"].get("gossip.openmatch.io/network") != name:
        fail(f"{engine_path}: not labelled gossip.openmatch.io/network: {name}")
    labels = tmpl["metadata"]["labels"]
    if any(labels.get(k) != val for k, val in gn["spec"]["podSelector"]["matchLabels"].items()):
        fail(f"{engine_path}: pod labels {labels} not selected by {gn['spec']['podSelector']}")
    if spec["serviceName"] != f"{name}-gossip":
        fail(f"{engine_path}: serviceName {spec['serviceName']}, the operator's headless Service is {name}-gossip")
    [c] = tmpl["spec"]["containers"]
    args = c["args"]
    want = ["engine", "--socket=/run/openmatch-gossip/engine.sock",
            "--data-dir=/usr/share/openmatch-gossip/data/binance-usdm-20240808", "--shards=3",
            "--shard=$(SHARD)"]
    if [a for a in want if a not in args]:
        fail(f"{engine_path}: args {args} lack {[a for a in want if a not in args]}")
    shard = [e for e in c["env"] if e["name"] == "SHARD"]
    if not shard or shard[0]["valueFrom"]["fieldRef"]["fieldPath"] != "metadata.labels['apps.kubernetes.io/pod-index']":
        fail(f"{engine_path}: SHARD is not the pod index: {shard}")
    state = [a for a in args if a.startswith("--state-file=")]
    mounts = [m["mountPath"] for m in c.get("volumeMounts", [])]
    if not state or not any(state[0].split("=", 1)[1].startswith(m + "/") for m in mounts):
        fail(f"{engine_path}: --state-file {state} is not on a mounted volume {mounts}")
    restricted_pod_security(tmpl["spec"], f"{engine_path}: StatefulSet")
    ok(f"{engine_path}: 3 replicas labelled for {name}, selected by its podSelector, serviceName {name}-gossip, "
       f"engine on the documented socket with the image's data, shard = pod index, state on a volume")


def check_values_comments(path):
    """Every leaf value has a `# --` comment on its line's block, or on an enclosing key's."""
    lines = open(path).read().splitlines()
    stack = []  # (indent, documented)
    comment = False
    count = 0
    for n, line in enumerate(lines, 1):
        s = line.strip()
        if not s:
            comment = False
            continue
        if s.startswith("#"):
            if s.startswith("# --"):
                comment = True
            continue
        m = re.match(r"^(\s*)([A-Za-z0-9_.-]+):(.*)$", line)
        if not m:
            continue  # a list item or a continuation of a value
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        documented = comment or any(d for _, d in stack)
        value = m.group(3).strip()
        leaf = value != ""
        if leaf:
            count += 1
            if not documented:
                fail(f"{path}:{n}: {m.group(2)} has no `# --` comment")
        stack.append((indent, documented))
        comment = False
    ok(f"{path}: all {count} values documented")


def check_injected(path):
    objs = load_all(path)
    for o in objs:
        k8s_validate(o, path)
        spec = o["spec"]["template"]["spec"]
        [sidecar] = [c for c in spec.get("initContainers", []) if c["name"] == "openmatch-gossip"]
        if sidecar.get("restartPolicy") != "Always":
            fail(f"{path}: {key(o)}: the sidecar is not a native sidecar: {sidecar}")
        restricted_pod_security(spec, f"{path}: {key(o)} injected")
    ok(f"{path}: the injected {', '.join(o['kind'] for o in objs)} validates strictly against Kubernetes "
       f"{' and '.join(K8S_VERSIONS)}, with openmatch-gossip as a native sidecar (initContainer, restartPolicy Always)")


def main():
    cmd = sys.argv[1]
    if cmd == "render":
        check_render(sys.argv[2], sys.argv[3])
    elif cmd == "examples":
        check_examples(sys.argv[2], sys.argv[3])
    elif cmd == "values-comments":
        check_values_comments(sys.argv[2])
    elif cmd == "injected":
        check_injected(sys.argv[2])
    else:
        fail(f"unknown subcommand {cmd}")


if __name__ == "__main__":
    main()
