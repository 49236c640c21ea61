"""The Grafana dashboard in contrib/ against a running node's /metrics:
the JSON is a dashboard Grafana imports (panels with ids, positions and
Prometheus targets) and every query names a metric family the node
exports, after the nodes did what those metrics count (sync between two
nodes, file API reads and writes, a refused token)."""

import json
import re
import time
from pathlib import Path

from sovryn_support import ROOT
from test_files import call, ok_json, pair, token, wait_for  # noqa: F401 (pair: a fixture)

DASHBOARD = ROOT / "contrib" / "grafana" / "sovryn.json"


def families(text: str) -> dict:
    out = {}
    for line in text.splitlines():
        m = re.match(r"# TYPE (\S+) (\S+)", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def test_the_grafana_dashboard_imports_and_names_only_exported_metrics(pair):
    a, b = pair
    doc = json.loads(DASHBOARD.read_text())
    assert doc["title"] and doc["uid"] and isinstance(doc["schemaVersion"], int)
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids)) >= 10
    for p in doc["panels"]:
        assert set(p["gridPos"]) == {"x", "y", "w", "h"} and p["targets"], p["title"]
        assert all(t["expr"] and t["refId"] for t in p["targets"])

    t = token(a, "ops", "read,write,status")
    tb = token(b, "ops", "status")
    ok_json(a, "PUT", "/api/v1/files/m/one.bin", t, b"x" * 300_000, expect=(201,))
    wait_for("the file never reached the peer", lambda: (b.folder / "m" / "one.bin").exists())
    assert call(a, "GET", "/api/v1/files/m/one.bin", t)[0] == 200
    assert call(a, "GET", "/api/v1/files", "wrong-token")[0] == 401

    def scrape():
        # A wrote and served; B received (sync latency is the receiver's).
        out = {}
        for node, tok in ((a, t), (b, tb)):
            status, _, body = call(node, "GET", "/metrics", tok)
            assert status == 200
            out.update(families(body.decode()))
        return out

    needed = set()
    for p in doc["panels"]:
        for target in p["targets"]:
            for name in re.findall(r"([a-z_][a-z0-9_]*)\{", target["expr"]):
                needed.add(re.sub(r"_bucket$", "", name))
    assert "storage_available_bytes" in needed and "file_write_duration_seconds" in needed
    deadline = time.time() + 30
    while True:
        exported = scrape()
        missing = sorted(n for n in needed if n not in exported)
        if not missing or time.time() > deadline:
            break
        time.sleep(0.5)
    assert not missing, f"the dashboard names metrics the node does not export: {missing}"
    for n in needed:
        if n.endswith("_seconds"):
            assert exported[n] == "histogram", (n, exported[n])
