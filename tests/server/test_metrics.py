"""``/metrics`` on the real server: Prometheus names and units, bounded labels (never stream ids),
counts that follow the traffic, auth like the other routes, and ``promtool check metrics``."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import png
from tests.server_harness import running_server
from tta_server import Settings

TOKEN = {"Authorization": "Bearer t0ken"}


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with running_server(Settings(default_adapter="norm", min_adapt_batch=2, api_tokens=["t0ken"])) as base:
        yield base


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_follow_the_traffic_without_stream_ids(url: str) -> None:
    files = [("files", (f"{i}.png", png(i), "image/png")) for i in range(2)]
    for stream in ("cam-secret-1", "cam-secret-2", "cam-secret-1"):
        assert httpx.post(f"{url}/v1/predict", files=files, headers={**TOKEN, "X-Stream-Id": stream}).status_code == 200
    httpx.post(f"{url}/v1/predict", content=b"x", headers={**TOKEN, "content-type": "text/plain"})
    httpx.get(f"{url}/no/such/route/{'x' * 10}", headers=TOKEN)
    response = httpx.get(f"{url}/metrics", headers=TOKEN)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert "cam-secret" not in text and "/no/such" not in text  # no stream ids, no raw paths
    got = samples(text)
    route = (("code", "200"), ("method", "POST"), ("route", "/v1/predict"))
    assert got[("tta_http_requests_total", route)] == 3
    assert got[("tta_http_requests_total", (("code", "415"), ("method", "POST"), ("route", "/v1/predict")))] == 1
    assert got[("tta_http_requests_total", (("code", "404"), ("method", "GET"), ("route", "unmatched")))] == 1
    assert got[("tta_step_duration_seconds_count", (("adapter", "norm"),))] == 3
    assert got[("tta_step_images_sum", (("adapter", "norm"),))] == 6
    phase = {p: (("adapter", "norm"), ("phase", p)) for p in ("queue", "adapt", "source_forward", "signals")}
    assert all(got[("tta_step_phase_duration_seconds_count", labels)] == 3 for labels in phase.values())
    inside = sum(got[("tta_step_phase_duration_seconds_sum", phase[p])] for p in ("adapt", "source_forward", "signals"))
    step = got[("tta_step_duration_seconds_sum", (("adapter", "norm"),))]
    assert 0 < inside <= step and got[("tta_step_phase_duration_seconds_sum", phase["adapt"])] > 0
    assert got[("tta_streams", (("state", "in_memory"),))] == 2
    assert got[("tta_batch_mean_confidence_ratio_count", (("adapter", "norm"),))] == 3
    build = [k for k in got if k[0] == "tta_build_info"]
    assert len(build) == 1 and ("device", "cpu") in build[0][1]
    assert all(name.startswith("tta_") for name, _ in got) and not [n for n, _ in got if n.endswith("_created")]


def test_invented_http_methods_cannot_grow_the_label_sets(url: str) -> None:
    """Any token is a method to HTTP: each new one would be a new series, without bound."""
    for i in range(20):
        assert httpx.request(f"INVENTED{i}", f"{url}/v1/streams", headers=TOKEN).status_code == 405
        httpx.request(f"X{i}", f"{url}/no/such/route", headers=TOKEN)
    got = samples(httpx.get(f"{url}/metrics", headers=TOKEN).text)
    methods = {dict(labels)["method"] for name, labels in got if name == "tta_http_requests_total"}
    assert "other" in methods and methods <= {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other"}
    invented = (("code", "405"), ("method", "other"), ("route", "/v1/streams"))
    assert got[("tta_http_requests_total", invented)] == 20
    assert got[("tta_http_request_duration_seconds_count", (("method", "other"), ("route", "unmatched")))] == 20


def test_metrics_need_a_token_unless_opened(url: str) -> None:
    assert httpx.get(f"{url}/metrics").status_code == 401
    open_settings = Settings(default_adapter="norm", api_tokens=["t0ken"], metrics_open=True)
    with running_server(open_settings) as other:
        assert httpx.get(f"{other}/metrics").status_code == 200
        assert httpx.get(f"{other}/v1/streams").status_code == 401


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian package prometheus)")
def test_promtool_accepts_the_scrape(url: str) -> None:
    text = httpx.get(f"{url}/metrics", headers=TOKEN).text
    checked = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_streams_whose_writes_fail_are_counted_while_they_fail(tmp_path: Path) -> None:
    from tta_server.streams import SnapshotStore

    blocker = SnapshotStore(tmp_path).path("b")  # made after start (start-up would quarantine it)

    def failing(url: str) -> dict[str, float]:
        got = samples(httpx.get(f"{url}/metrics").text)
        return {dict(k[1])["operation"]: v for k, v in got.items() if k[0] == "tta_streams_failing_writes"}

    def wait_for(url: str, expected: dict[str, float]) -> None:
        deadline = time.monotonic() + 10
        while failing(url) != expected and time.monotonic() < deadline:
            time.sleep(0.1)
        assert failing(url) == expected

    settings = Settings(default_adapter="norm", snapshot_dir=tmp_path, snapshot_interval_s=0.1)
    with running_server(settings) as url:
        blocker.mkdir()  # the rename onto b's file fails: every snapshot pass fails for b
        files = [("files", (f"{i}.png", png(i), "image/png")) for i in range(2)]
        for stream in ("a", "b"):
            assert httpx.post(f"{url}/v1/predict", files=files, headers={"X-Stream-Id": stream}).status_code == 200
        wait_for(url, {"snapshot": 1, "spill": 0, "snapshot_delete": 0})
        blocker.rmdir()
        wait_for(url, {"snapshot": 0, "spill": 0, "snapshot_delete": 0})  # written on a later pass
