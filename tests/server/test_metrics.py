"""``/metrics`` on the real server: Prometheus names and units, bounded labels (never stream ids),
counts that follow the traffic, auth like the other routes, and ``promtool check metrics``."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator

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
