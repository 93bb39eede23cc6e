#!/usr/bin/env python3
"""Writes the Grafana dashboards of openmatch-gossip into charts/openmatch-gossip/files/dashboards/.

    python3 scripts/dashboards.py           # (re)write the JSON files
    python3 scripts/dashboards.py --check   # exit 1 if the committed files differ
    python3 scripts/dashboards.py --queries # print every panel query, one JSON line each

Three dashboards, each with the variables $datasource (a Prometheus data source),
$network (the `gossip_network` label the chart's PodMonitor sets), $market and $pod:

- Consensus: batches by outcome, batch and result mismatches, halted vs unconfirmed,
  repaired and excluded orders, agreement latency p50/p99, the nodes that disagree;
- Gossip: delivered orders/s, propagation latency p50/p99, outbox depth, rate-limited and
  rejected messages, peers, mesh peers per topic, penalties, bans, health, memory against
  its bound;
- Operator: reconciles, failures by reason, duration, ready peers per network, leader, API
  errors, webhook injections.

The JSON is Grafana's dashboard model (schemaVersion 39, Grafana 10/11); import a file as
it is, or let the chart ship them as ConfigMaps for Grafana's dashboard sidecar
(monitoring.grafanaDashboards.enabled). Standard library only.
"""

import json
import pathlib
import sys

OUT = pathlib.Path(__file__).resolve().parent.parent / "charts/openmatch-gossip/files/dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}
# Every sidecar series is narrowed by these; the operator's by network only where it has one.
SEL = 'gossip_network=~"$network", pod=~"$pod"'
MSEL = SEL + ', market=~"$market"'
RI = "$__rate_interval"


def variable(name, label, query):
    v = {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": {"query": query, "refId": f"{name}-var"},
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }
    return v


def templating(sidecar=True):
    vs = [{
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
    }]
    vs.append(variable("network", "Network", "label_values(openmatch_gossip_build_info, gossip_network)"))
    if sidecar:
        vs.append(variable("market", "Market",
                           'label_values(openmatch_gossip_batches_total{gossip_network=~"$network"}, market)'))
        vs.append(variable("pod", "Pod", 'label_values(openmatch_gossip_build_info{gossip_network=~"$network"}, pod)'))
    return {"list": vs}


class Board:
    def __init__(self, uid, title, description, sidecar=True):
        self.uid, self.title, self.description, self.sidecar = uid, title, description, sidecar
        self.panels = []
        self.y = 0
        self.x = 0

    def row(self, title):
        if self.x:
            self.x, self.y = 0, self.y + 8
        self.panels.append({"type": "row", "title": title, "collapsed": False, "panels": [],
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "id": len(self.panels) + 1})
        self.y += 1

    def panel(self, title, description, targets, unit="short", kind="timeseries", width=12, stack=False):
        if self.x + width > 24:
            self.x, self.y = 0, self.y + 8
        p = {
            "id": len(self.panels) + 1,
            "type": kind,
            "title": title,
            "description": description,
            "datasource": DS,
            "gridPos": {"h": 8, "w": width, "x": self.x, "y": self.y},
            "targets": [
                {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": chr(ord("A") + i)}
                for i, (expr, legend) in enumerate(targets)
            ],
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {},
        }
        if kind == "timeseries":
            p["fieldConfig"]["defaults"]["custom"] = {"drawStyle": "line", "fillOpacity": 10,
                                                      "stacking": {"mode": "normal" if stack else "none"}}
            p["options"] = {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["max", "last"]},
                            "tooltip": {"mode": "multi"}}
        self.panels.append(p)
        self.x += width

    def json(self):
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": ["openmatch-gossip"],
            "editable": True,
            "graphTooltip": 1,
            "refresh": "30s",
            "schemaVersion": 39,
            "time": {"from": "now-1h", "to": "now"},
            "timezone": "",
            "version": 1,
            "templating": templating(self.sidecar),
            "annotations": {"list": []},
            "links": [{"title": "openmatch-gossip", "type": "dashboards", "tags": ["openmatch-gossip"],
                       "asDropdown": True}],
            "panels": self.panels,
        }


def q(expr):
    """Normalises whitespace of a PromQL expression written over several lines."""
    return " ".join(expr.split())


def consensus():
    b = Board("openmatch-gossip-consensus", "openmatch-gossip / Consensus",
              "Batch and result agreement across replicas: every replica must match the same batches "
              "(batch hash) and compute the same trades (result hash).")
    b.row("Batches")
    b.panel("Batches by outcome", "openmatch_gossip_batches_total per market and outcome, per second.",
            [(q(f'sum by (market, outcome) (rate(openmatch_gossip_batches_total{{{MSEL}}}[{RI}]))'),
              "{{market}} {{outcome}}")], unit="ops")
    b.panel("Halted, disputed, repaired (last hour)", "Batches that did not agree cleanly, per market.",
            [(q(f'sum by (market, outcome) (increase(openmatch_gossip_batches_total'
                f'{{{MSEL}, outcome=~"halted|unconfirmed|disputed|repaired"}}[1h]))'), "{{market}} {{outcome}}")],
            kind="bargauge")
    b.row("Mismatches")
    b.panel("Batch mismatches", "Batches whose first seal here lost to the quorum's hash (repaired by adoption), "
            "per node and market.",
            [(q(f'sum by (pod, market) (increase(openmatch_gossip_batch_mismatches_total{{{MSEL}}}[{RI}]))'),
              "{{pod}} {{market}}")])
    b.panel("Share of agreed batches repaired", "Batch mismatches over agreed batches (0 to 1).",
            [(q(f'sum by (pod, market) (rate(openmatch_gossip_batch_mismatches_total{{{MSEL}}}[{RI}])) '
                f'/ sum by (pod, market) (rate(openmatch_gossip_batches_total{{{MSEL}, outcome="agreed"}}[{RI}]))'),
              "{{pod}} {{market}}")], unit="percentunit")
    b.panel("Result mismatches vs results unconfirmed",
            "Halted batches: a member's result differed (a determinism violation) or too few results came "
            "within resultTimeoutMs.",
            [(q(f'sum by (market) (increase(openmatch_gossip_result_mismatches_total{{{MSEL}}}[{RI}]))'),
              "{{market}} result mismatch"),
             (q(f'sum by (market) (increase(openmatch_gossip_batches_total{{{MSEL}, outcome="unconfirmed"}}[{RI}]))'),
              "{{market}} unconfirmed")])
    b.panel("Nodes that disagree with the quorum",
            "Batches whose result at this node differed from a strict majority's (results_outvoted), last hour.",
            [(q(f'sum by (pod, market) (increase(openmatch_gossip_results_outvoted_total{{{MSEL}}}[1h]))'),
              "{{pod}} {{market}}")], kind="bargauge")
    b.row("Orders and latency")
    b.panel("Repaired and excluded orders", "Orders fetched by repair, and own orders excluded from their batch "
            "(their engine was told), per second.",
            [(q(f'sum by (market) (rate(openmatch_gossip_repaired_orders_total{{{MSEL}}}[{RI}]))'), "{{market}} repaired"),
             (q(f'sum by (market) (rate(openmatch_gossip_order_outcomes_total{{{MSEL}, outcome="excluded"}}[{RI}]))'),
              "{{market}} excluded")], unit="ops")
    b.panel("Batch agreement latency", "First seal of a batch to its agreement, p50 and p99.",
            [(q(f'histogram_quantile(0.5, sum by (le) (rate(openmatch_gossip_batch_agreement_latency_seconds_bucket'
                f'{{{SEL}}}[{RI}])))'), "p50"),
             (q(f'histogram_quantile(0.99, sum by (le) (rate(openmatch_gossip_batch_agreement_latency_seconds_bucket'
                f'{{{SEL}}}[{RI}])))'), "p99")], unit="s")
    return b


def gossip():
    b = Board("openmatch-gossip-gossip", "openmatch-gossip / Gossip",
              "Order propagation over GossipSub: throughput, latency, backpressure, protection and health.")
    b.row("Flow")
    b.panel("Delivered orders/s", "Peers' orders handed to the engine, per node.",
            [(q(f'sum by (pod) (rate(openmatch_gossip_orders_delivered_total{{{MSEL}}}[{RI}]))'), "{{pod}}")],
            unit="ops")
    b.panel("Propagation latency", "Submit at the origin's engine to receipt here, p50 and p99 per node.",
            [(q(f'histogram_quantile(0.5, sum by (pod, le) (rate(openmatch_gossip_propagation_latency_seconds_bucket'
                f'{{{SEL}}}[{RI}])))'), "{{pod}} p50"),
             (q(f'histogram_quantile(0.99, sum by (pod, le) (rate(openmatch_gossip_propagation_latency_seconds_bucket'
                f'{{{SEL}}}[{RI}])))'), "{{pod}} p99")], unit="s")
    b.panel("Outbox depth", "Orders accepted from the engine, not yet published.",
            [(f'openmatch_gossip_outbox_orders{{{SEL}}}', "{{pod}}")])
    b.panel("Memory against its bound", "Bytes queued for subscribers and in the outbox, the node's bound, "
            "and the process's resident memory.",
            [(q(f'sum by (pod) (openmatch_gossip_queue_memory_bytes{{{SEL}}})'), "{{pod}} queued"),
             (f'openmatch_gossip_queue_memory_bound_bytes{{{SEL}}}', "{{pod}} bound"),
             (f'process_resident_memory_bytes{{{SEL}}}', "{{pod}} resident")], unit="bytes")
    b.row("Protection")
    b.panel("Rate-limited messages", "Gossip messages ignored because the forwarding peer was over its bucket, "
            "by topic kind.",
            [(q(f'sum by (kind) (rate(openmatch_gossip_messages_rate_limited_total{{{SEL}}}[{RI}]))'), "{{kind}}")],
            unit="ops")
    b.panel("Rejected messages by reason", "Gossip messages refused by validation (the sender is penalised).",
            [(q(f'sum by (kind, reason) (rate(openmatch_gossip_messages_rejected_total{{{SEL}}}[{RI}]))'),
              "{{kind}} {{reason}}")], unit="ops")
    b.panel("Penalties by reason", "Reputation penalties given, by offence.",
            [(q(f'sum by (reason) (increase(openmatch_gossip_peer_penalties_total{{{SEL}}}[{RI}]))'), "{{reason}}")])
    b.panel("Banned peers", "Peers each node bans now.",
            [(f'openmatch_gossip_banned_peers{{{SEL}}}', "{{pod}}")])
    b.row("Peers and health")
    b.panel("Peers", "Connected peers, and live ones (a heartbeat within the liveness window).",
            [(f'openmatch_gossip_peers{{{SEL}}}', "{{pod}} connected"),
             (f'openmatch_gossip_live_peers{{{SEL}}}', "{{pod}} live")])
    b.panel("Mesh peers per topic", "GossipSub mesh peers per topic kind and market.",
            [(f'openmatch_gossip_mesh_peers{{{SEL}}}', "{{pod}} {{kind}} {{market}}")])
    b.panel("Health per node", "0 healthy, 1 degraded, 2 isolated.",
            [(f'openmatch_gossip_health{{{SEL}}}', "{{pod}}")], kind="stat", width=24)
    return b


def operator():
    b = Board("openmatch-gossip-operator", "openmatch-gossip / Operator",
              "The GossipNetwork operator: reconciles, failures, membership and leadership.", sidecar=False)
    b.row("Reconcile")
    b.panel("Reconciles/s", "Reconcile runs per second.",
            [('sum(rate(openmatch_gossip_operator_reconciles_total[' + RI + ']))', "reconciles")], unit="ops")
    b.panel("Failures by reason", "Failed reconcile runs per second, by reason.",
            [('sum by (reason) (rate(openmatch_gossip_operator_reconcile_failures_total[' + RI + ']))', "{{reason}}")],
            unit="ops")
    b.panel("Reconcile duration", "Time per reconcile run, p50 and p99.",
            [('histogram_quantile(0.5, sum by (le) (rate(openmatch_gossip_operator_reconcile_duration_seconds_bucket['
              + RI + '])))', "p50"),
             ('histogram_quantile(0.99, sum by (le) (rate(openmatch_gossip_operator_reconcile_duration_seconds_bucket['
              + RI + '])))', "p99")], unit="s")
    b.panel("API errors by operation", "Kubernetes API requests that failed, per second.",
            [('sum by (operation) (rate(openmatch_gossip_operator_api_errors_total[' + RI + ']))', "{{operation}}")],
            unit="ops")
    b.row("Networks")
    b.panel("Ready peers per network", "Ready selected pods in each GossipNetwork's bootstrap list.",
            [('openmatch_gossip_operator_ready_peers{network=~"$network"}', "{{namespace}}/{{network}}")])
    b.panel("Leader", "1 on the replica holding the leader Lease.",
            [('openmatch_gossip_operator_leader', "{{pod}}")], kind="stat")
    b.panel("Webhook injections", "Pods the admission webhook answered, by result, per second.",
            [('sum by (result) (rate(openmatch_gossip_operator_injections_total[' + RI + ']))', "{{result}}")],
            unit="ops", width=24)
    return b


def boards():
    return {"consensus.json": consensus(), "gossip.json": gossip(), "operator.json": operator()}


def render(board):
    return json.dumps(board.json(), indent=2, sort_keys=True) + "\n"


def main(argv):
    if "--queries" in argv:
        for name, b in boards().items():
            for p in b.panels:
                for t in p.get("targets", []):
                    print(json.dumps({"dashboard": name, "panel": p["title"], "expr": t["expr"]}))
        return 0
    stale = []
    for name, b in boards().items():
        path = OUT / name
        text = render(b)
        if "--check" in argv:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            OUT.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print("stale dashboards (run python3 scripts/dashboards.py): " + ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
