#!/usr/bin/env python3
"""The dashboards and alerts against a real Prometheus scraping real sidecars.

    python3 tests/prometheus/live.py BINDIR [--seconds 75]

Starts, on loopback, three `openmatch-gossip node` sidecars and three reference engines
replaying the bundled Binance data at real pace; engine 2 runs the fault drill
`--corrupt-results-every 3` (a wrong result hash for every third batch), so that results
mismatch, batches halt, node 2 is outvoted and, after three offences, banned by its peers.
Also the operator (`openmatch-gossip-operator run`), against a stand-in API server
(tests/prometheus/fake_apiserver.py) holding one GossipNetwork, which it reconciles. Prometheus (the
Debian package's binary, run as a plain process with its own config and data directory)
scrapes all four every second with the labels the chart's PodMonitor gives
(`namespace`, `pod`, `gossip_network`) and evaluates the chart's rules file.

At the end, over Prometheus's HTTP API:
- every panel query of every dashboard (scripts/dashboards.py --queries, with the
  variables set to All and $__rate_interval to 15s) returns data;
- every alert expression, less its final threshold, returns data (its inputs exist);
- the alerts the fault must raise fired (at the end, or earlier in the run: a ban lasts
  60 s): OpenmatchGossipResultMismatch,
  OpenmatchGossipNodeDisagreesWithQuorum, OpenmatchGossipBatchHalted,
  OpenmatchGossipPeerBanned; and no alert about the healthy parts (duplicate identity,
  memory) fires.
Prints one line per query ("returns data: yes/no") and exits 1 if any check fails.
Standard library only.
"""

import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
RULES = ROOT / "charts/openmatch-gossip/files/prometheus-rules.yaml"
NETWORK = "demo"
MUST_FIRE = ["OpenmatchGossipResultMismatch", "OpenmatchGossipNodeDisagreesWithQuorum",
             "OpenmatchGossipBatchHalted", "OpenmatchGossipPeerBanned"]
MUST_NOT_FIRE = ["OpenmatchGossipDuplicateIdentity", "OpenmatchGossipMemoryNearBound"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.load(r)


def query(prom, expr):
    url = f"http://{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    d = get_json(url)
    if d.get("status") != "success":
        raise RuntimeError(f"{expr}: {d}")
    return d["data"]["result"]


def wait_for(what, check, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"FAIL: {what} within {timeout} s")


def rule_exprs():
    """(alert name, expression) of every rule in the rules file (a small reader for its
    layout: `- alert: NAME` followed by `expr:` on one line or as a folded block)."""
    rules, name, lines = [], None, RULES.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"\s*- alert: (\S+)", line)
        if m:
            name = m.group(1)
        m = re.match(r"(\s*)expr: (.*)", line)
        if m and name:
            indent, rest = len(m.group(1)), m.group(2).strip()
            if rest in (">-", ">", "|", "|-"):
                body = []
                i += 1
                while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
                    body.append(lines[i].strip())
                    i += 1
                rules.append((name, " ".join(body)))
                name = None
                continue
            rules.append((name, rest))
            name = None
        i += 1
    return rules


def without_threshold(expr):
    """`expr` less a final comparison with a number (`> 0`, `< 1`, `== 2`)."""
    return re.sub(r"\s*(>|<|==|>=|<=|!=)\s*[0-9.]+\s*$", "", expr)


def panel_queries():
    out = subprocess.run([sys.executable, str(ROOT / "scripts/dashboards.py"), "--queries"], check=True,
                         capture_output=True, text=True).stdout
    qs = [json.loads(line) for line in out.splitlines()]
    for q in qs:
        e = q["expr"]
        for var in ("$network", "$market", "$pod"):
            e = e.replace(var, ".*")
        q["expr"] = e.replace("$__rate_interval", "15s")
    return qs


def main():
    args = sys.argv[1:]
    if not args:
        raise SystemExit(__doc__)
    bindir = pathlib.Path(args[0]).resolve()
    seconds = int(args[args.index("--seconds") + 1]) if "--seconds" in args else 75
    sidecar, operator = bindir / "openmatch-gossip", bindir / "openmatch-gossip-operator"
    prometheus = shutil.which("prometheus")
    if not prometheus:
        raise SystemExit("FAIL: no prometheus binary (apt-get install prometheus)")
    work = pathlib.Path(tempfile.mkdtemp(prefix="og-prom-"))
    procs = []

    def spawn(name, cmd, **kw):
        log = open(work / f"{name}.log", "w")
        p = subprocess.Popen(cmd, stdout=kw.pop("stdout", log), stderr=log, stdin=kw.pop("stdin", subprocess.DEVNULL),
                             cwd=work, **kw)
        procs.append((name, p))
        return p

    ok = True
    try:
        # Three sidecars, each bootstrapping from the other two.
        n = 3
        ids, p2p, metrics = [], [], []
        for i in range(n):
            ids.append(subprocess.run([str(sidecar), "peer-id", str(work / f"node{i}.key")], check=True,
                                      capture_output=True, text=True).stdout.strip())
            p2p.append(free_port())
            metrics.append(free_port())
        for i in range(n):
            peers = "\n".join(f"    - /ip4/127.0.0.1/tcp/{p2p[j]}/p2p/{ids[j]}" for j in range(n) if j != i)
            (work / f"node{i}.yaml").write_text(
                f"network: {NETWORK}\nmarkets: [BTC-USDT, ETH-USDT]\n"
                f"p2p:\n  listenAddrs: [/ip4/127.0.0.1/tcp/{p2p[i]}]\n  bootstrapPeers:\n{peers}\n")
            spawn(f"node{i}", [str(sidecar), "node", "--config", str(work / f"node{i}.yaml"), "--socket",
                               str(work / f"node{i}.sock"), "--identity-key", str(work / f"node{i}.key"),
                               "--metrics-addr", f"127.0.0.1:{metrics[i]}"])
        # The operator, against a stand-in API server holding one GossipNetwork.
        op_port, api_port = free_port(), free_port()
        spawn("fake-apiserver", [sys.executable, str(ROOT / "tests/prometheus/fake_apiserver.py"), str(api_port)])
        wait_for("the fake API server", lambda: socket.create_connection(("127.0.0.1", api_port), timeout=1))
        kubeconfig = work / "kubeconfig"
        kubeconfig.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n"
            f"clusters: [{{name: fake, cluster: {{server: 'http://127.0.0.1:{api_port}'}}}}]\n"
            "users: [{name: fake, user: {}}]\n"
            "contexts: [{name: fake, context: {cluster: fake, user: fake, namespace: default}}]\n")
        spawn("operator", [str(operator), "run", "--http-addr", f"127.0.0.1:{op_port}", "--leader-elect=false"],
              env={**os.environ, "KUBECONFIG": str(kubeconfig)})

        # Prometheus, scraping every second with the PodMonitor's labels.
        prom_port = free_port()
        targets = [{"targets": [f"127.0.0.1:{metrics[i]}"],
                    "labels": {"namespace": "trading", "pod": f"engine-{i}", "gossip_network": NETWORK}}
                   for i in range(n)]
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {"job_name": "sidecars", "static_configs": targets},
                {"job_name": "operator", "static_configs": [
                    {"targets": [f"127.0.0.1:{op_port}"], "labels": {"namespace": "openmatch", "pod": "operator-0"}}]},
            ],
        }
        (work / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        prom = f"127.0.0.1:{prom_port}"
        spawn("prometheus", [prometheus, f"--config.file={work / 'prometheus.yml'}",
                             f"--storage.tsdb.path={work / 'tsdb'}", f"--web.listen-address={prom}"])
        wait_for("Prometheus ready", lambda: urllib.request.urlopen(f"http://{prom}/-/ready", timeout=2).status == 200)
        wait_for("every target scraped", lambda: sum(
            1 for t in get_json(f"http://{prom}/api/v1/targets")["data"]["activeTargets"] if t["health"] == "up") == n + 1)
        print(f"prometheus at {prom} scrapes 3 sidecars and the operator; replaying {seconds} s of real data")

        # The engines: real data at real pace; engine 2 corrupts every third result.
        engines = []
        for i in range(n):
            cmd = [str(sidecar), "engine", "--socket", str(work / f"node{i}.sock"), "--shard", str(i), "--shards",
                   str(n), "--pace", "real", "--duration-s", str(seconds), "--idle-timeout-ms", "5000",
                   "--settle-timeout-ms", "20000"]
            if i == 2:
                cmd += ["--corrupt-results-every", "3"]
            engines.append(spawn(f"engine{i}", cmd, stdout=open(work / f"engine{i}.json", "w")))
        deadline = time.time() + seconds + 120
        for i, e in enumerate(engines):
            try:
                e.wait(timeout=max(1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                e.kill()
                print(f"engine {i} still running at the deadline; stopped")
        time.sleep(3)  # a last scrape and rule evaluation

        print("dashboard panels:")
        for q in panel_queries():
            data = bool(query(prom, q["expr"]))
            ok &= data
            print(f"  {q['dashboard']} / {q['panel']}: returns data: {'yes' if data else 'NO'}")
        print("alert expressions (less their threshold):")
        for name, expr in rule_exprs():
            data = bool(query(prom, without_threshold(expr)))
            ok &= data
            print(f"  {name}: returns data: {'yes' if data else 'NO'}")
        firing = {a["labels"]["alertname"] for a in get_json(f"http://{prom}/api/v1/alerts")["data"]["alerts"]
                  if a["state"] == "firing"}
        fired = {r["metric"]["alertname"] for r in query(prom, 'max_over_time(ALERTS{alertstate="firing"}[30m])')}
        print(f"alerts firing at the end: {sorted(firing)}; fired during the run: {sorted(fired)}")
        firing |= fired
        for name in MUST_FIRE:
            if name not in firing:
                ok = False
                print(f"  FAIL: {name} is not firing")
        for name in MUST_NOT_FIRE:
            if name in firing:
                ok = False
                print(f"  FAIL: {name} fires on a healthy part")
    finally:
        for name, p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for name, p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        if not ok:
            keep = ROOT / "target/prometheus-failure"
            shutil.rmtree(keep, ignore_errors=True)
            shutil.copytree(work, keep, ignore=shutil.ignore_patterns("tsdb", "*.sock"))
            print(f"logs and configs kept in {keep}")
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
