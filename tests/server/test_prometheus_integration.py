"""A REAL Prometheus scrapes a running server while a short CIFAR-10-C replay goes through the REST
API: every dashboard query and every alert expression returns data through Prometheus' HTTP API,
and the dashboard picture renders from those answers."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
import yaml

from monitoring import prometheus as prom
from monitoring.dashboard import OUT as DASHBOARD_JSON
from monitoring.dashboard import PANELS, UID, render
from monitoring.demo import build_small_cifar10c, replay_through
from monitoring.render import render_panels
from tests.server_harness import running_server
from tta_server import Settings


def test_the_committed_dashboard_is_the_generated_one() -> None:
    assert DASHBOARD_JSON.read_text() == render(), "run: python -m monitoring.dashboard"
    board = json.loads(DASHBOARD_JSON.read_text())
    assert board["uid"] == UID and {v["name"] for v in board["templating"]["list"]} == {
        "datasource",
        "instance",
        "adapter",
    }
    assert len(board["panels"]) == len(PANELS)


@pytest.mark.skipif(not prom.available(), reason="the prometheus binary is not installed (Debian package prometheus)")
def test_dashboard_and_alert_queries_return_data_from_a_real_prometheus(shared_cifar10: Path, tmp_path: Path) -> None:
    data = build_small_cifar10c(shared_cifar10, tmp_path / "c10c", n=32)
    settings = Settings(
        default_adapter="tent",
        min_adapt_batch=8,
        snapshot_dir=tmp_path / "snapshots",
        memory_budget_bytes=10**9,
        signal_window_steps=2,  # windows close within the short replay (the label-dependence panel)
    )
    with running_server(settings) as server, prom.running_prometheus(server.removeprefix("http://")) as url:
        start = time.time()
        result = replay_through(server, data, batch_size=16)
        assert len(result["batches"]) == 2 * 32 // 16
        with httpx.Client(base_url=server, timeout=60) as client:  # the rest of a day: a bad request, a reset
            assert client.post("/v1/predict", content=b"x", headers={"content-type": "text/plain"}).status_code == 415
            client.post("/v1/streams", json={"stream_id": "kept"})
            assert client.post("/v1/streams/kept/reset").status_code == 200
        deadline = time.monotonic() + 30
        while prom.scrapes(url) < 5 and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(2.5)  # two more scrapes after the last request
        empty = []
        for _, _, queries, _ in PANELS:
            for expression, _ in queries:
                if not prom.query(url, prom.dashboard_expression(expression, rate="1m")):
                    empty.append(expression)
        rules = [r for g in yaml.safe_load(prom.RULES.read_text())["groups"] for r in g["rules"]]
        for rule in rules:
            if not prom.query(url, prom.alert_expression(rule["expr"]).replace("[10m]", "[1m]")):
                empty.append(rule["alert"])
        assert not empty, empty
        drawn = render_panels(url, start, time.time(), tmp_path / "panels.png")
    assert drawn >= len(PANELS) and (tmp_path / "panels.png").stat().st_size > 10_000
