"""The Grafana dashboard (deploy/grafana): valid JSON with the panels the notes promise, every
query filtered on the namespace variable, and every metric it reads exported by
server/metrics.py (a renamed metric would leave a panel silently empty)."""

from __future__ import annotations

import json
import re

import pytest

from server.metrics import Metrics

from .kube import DEPLOY

DASHBOARD = DEPLOY / "grafana" / "inpaint-server.json"
#: what Prometheus' text format adds to a family's name
SUFFIXES = ("", "_total", "_bucket", "_sum", "_count", "_created")


def exported() -> set[str]:
    families = re.findall(r"^# TYPE (\w+) ", Metrics().render().decode(), re.M)
    return {family + suffix for family in families for suffix in SUFFIXES}


def panels() -> list[dict]:
    return [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(inpaint_\w+)", expr))


def test_dashboard_is_well_formed():
    board = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    assert {v["name"] for v in board["templating"]["list"]} == {"datasource", "namespace"}
    for panel in panels():
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
        assert {"x", "y", "w", "h"} <= panel["gridPos"].keys()


def test_it_shows_what_the_notes_promise():
    read = set().union(*(metric_names(t["expr"]) for p in panels() for t in p["targets"]))
    for name in (
        "inpaint_queue_depth",
        "inpaint_requests_total",
        "inpaint_request_latency_seconds_bucket",
        "inpaint_images_total",
        "inpaint_model_errors_total",
        "inpaint_jobs_queued",
        "inpaint_jobs_finished_total",
        "inpaint_jobs_claimed_total",
        "inpaint_jobs_recovered_total",
        "inpaint_webhook_deliveries_total",
    ):
        assert name in read


@pytest.mark.parametrize("panel", panels(), ids=lambda p: p["title"])
def test_every_query_reads_real_metrics(panel):
    real = exported()
    for target in panel["targets"]:
        assert re.search(r"\w+\{", target["expr"]), target["expr"]  # reads some series
        names = metric_names(target["expr"])
        assert names - real == set(), "not exported by server/metrics.py"
        # every selector of ours is scoped to the chosen namespace
        for selector in re.findall(r"inpaint_\w+\{([^}]*)\}", target["expr"]):
            assert 'namespace="$namespace"' in selector
