#!/usr/bin/env python3
"""A stand-in Kubernetes API server for the operator in tests/prometheus/live.py: just
enough of the API for `openmatch-gossip-operator run --leader-elect=false` to reconcile one
GossipNetwork (`trading/demo`, no pods yet), so that the operator's per-network series
exist for Prometheus to scrape. No Kubernetes API server can run on this machine.

    python3 tests/prometheus/fake_apiserver.py PORT

Answers, as the API server would:
- LIST of GossipNetworks: the one network; LIST of pods, ConfigMaps, Services: empty;
- WATCH (`?watch=true`) of any of them: an open stream with no event, closed after its
  `timeoutSeconds` (at most 30 s), after which the operator's watcher lists again;
- server-side apply (PATCH) of a ConfigMap or Service: the object applied; PATCH of the
  network's status: the network with that status;
- POST of an Event: the Event;
- anything else: 404 with a `Status` body.
Logs each request on stderr. Standard library only.
"""

import json
import sys
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NETWORK = {
    "apiVersion": "gossip.openmatch.io/v1alpha1",
    "kind": "GossipNetwork",
    "metadata": {"name": "demo", "namespace": "trading", "uid": "6f1c9f4e-0000-4000-8000-000000000001",
                 "generation": 1, "resourceVersion": "1", "creationTimestamp": "2026-01-01T00:00:00Z"},
    "spec": {"markets": ["BTC-USDT", "ETH-USDT"],
             "podSelector": {"matchLabels": {"gossip.openmatch.io/network": "demo"}}},
}
LISTS = {
    "gossipnetworks": ("gossip.openmatch.io/v1alpha1", "GossipNetworkList", [NETWORK]),
    "pods": ("v1", "PodList", []),
    "configmaps": ("v1", "ConfigMapList", []),
    "services": ("v1", "ServiceList", []),
}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, fmt, *args):
        sys.stderr.write("fake-apiserver: " + (fmt % args) + "\n")

    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def not_found(self):
        self.reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                         "code": 404, "message": f"{self.command} {self.path}: not served by the fake"})

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            return json.loads(raw or b"{}")
        except ValueError:
            return {}

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        query = urllib.parse.parse_qs(url.query)
        resource = url.path.rstrip("/").rsplit("/", 1)[-1]
        if resource not in LISTS:
            return self.not_found()
        if query.get("watch", ["false"])[0] in ("true", "1"):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.flush()
            time.sleep(min(30, int(query.get("timeoutSeconds", ["30"])[0])))
            return
        api_version, kind, items = LISTS[resource]
        self.reply(200, {"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": "1"},
                         "items": items})

    def do_PATCH(self):
        path = urllib.parse.urlparse(self.path).path
        body = self.body()
        if path.endswith("/gossipnetworks/demo/status"):
            return self.reply(200, {**NETWORK, "status": body.get("status", {})})
        if "/configmaps/" in path or "/services/" in path:
            meta = body.setdefault("metadata", {})
            meta.setdefault("resourceVersion", "1")
            meta.setdefault("uid", "6f1c9f4e-0000-4000-8000-000000000002")
            return self.reply(200, body)
        return self.not_found()

    def do_POST(self):
        if "/events" in self.path:
            return self.reply(201, self.body())
        return self.not_found()


def main():
    port = int(sys.argv[1])
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main()
