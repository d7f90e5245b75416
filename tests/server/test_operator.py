"""What an operator sees: request ids, access and start-up logs, every setting documented and
validated, an example config that loads, offline API docs, a clear error for a missing GPU."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from pydantic import ValidationError

from tests.conftest import REPO
from tests.helpers import png
from tests.server_harness import running_server
from tta_server import Settings
from tta_server.cli import add_settings_arguments
from tta_server.logs import JsonFormatter


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with running_server(Settings(default_adapter="norm", min_adapt_batch=2)) as base:
        yield base


def predict(url: str, **headers: str) -> httpx.Response:
    files = [("files", (f"{i}.png", png(i), "image/png")) for i in range(2)]
    return httpx.post(f"{url}/v1/predict", files=files, headers=headers, timeout=60)


def test_request_ids_are_echoed_or_generated(url: str) -> None:
    given = predict(url, **{"X-Request-Id": "client-42"})
    assert given.headers["x-request-id"] == "client-42" == given.json()["request_id"]
    generated = predict(url)
    assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["x-request-id"])
    assert generated.json()["request_id"] == generated.headers["x-request-id"]
    hostile = predict(url, **{"X-Request-Id": "x" * 500})
    assert hostile.headers["x-request-id"] != "x" * 500
    assert httpx.get(f"{url}/v1/streams/nope").headers["x-request-id"]  # errors carry one too


def test_every_request_gets_one_access_line(url: str, caplog: pytest.LogCaptureFixture) -> None:
    def lines() -> dict[str, dict[str, object]]:
        access = [r for r in caplog.records if r.name == "tta_server.access"]
        return {r.fields["request_id"]: r.fields for r in access}  # type: ignore[attr-defined]

    with caplog.at_level(logging.INFO, logger="tta_server.access"):
        predict(url, **{"X-Request-Id": "line-1", "X-Stream-Id": "cam-9"})
        httpx.get(f"{url}/v1/streams/unknown-one", headers={"X-Request-Id": "line-2"})
        deadline = time.monotonic() + 10  # the line is written once the answer has gone out
        while not {"line-1", "line-2"} <= set(lines()) and time.monotonic() < deadline:
            time.sleep(0.01)
    found = lines()
    assert found["line-1"]["status"] == 200 and found["line-1"]["stream"] == "cam-9"
    assert found["line-1"]["adapter"] == "norm" and float(found["line-1"]["latency_ms"]) > 0  # type: ignore[arg-type]
    assert found["line-2"]["status"] == 404 and found["line-2"]["stream"] == "unknown-one"  # named by the path


def test_the_start_up_summary_names_what_an_operator_needs(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="tta_server"), running_server(Settings(default_adapter="norm")):
        pass
    summary = next(r.getMessage() for r in caplog.records if " ready on http://" in r.getMessage())
    for fragment in ("cifar10-airbench@", "on cpu", "default adapter norm", "memory budget none", "snapshots off"):
        assert fragment in summary, summary


def test_json_logs_are_one_object_per_line() -> None:
    record = logging.LogRecord("tta_server.access", logging.INFO, __file__, 1, "GET / 200", None, None)
    record.fields = {"status": 200}
    assert json.loads(JsonFormatter().format(record)) | {"time": "t"} == {
        "time": "t",
        "level": "info",
        "logger": "tta_server.access",
        "message": "GET / 200",
        "status": 200,
    }


def test_serve_help_lists_every_setting_with_its_default() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    text = parser.format_help()
    for name in Settings.model_fields:
        assert "--" + name.replace("_", "-") in text, name
    assert text.count("(default:") == len(Settings.model_fields)


def test_the_example_config_loads_and_covers_every_setting() -> None:
    example = REPO / "config.example.yaml"
    settings = Settings(config_file=example)
    assert settings == Settings(config_file=example)  # loads, validates
    keys = set(re.findall(r"^([a-z_]+):", example.read_text(), flags=re.MULTILINE))
    assert keys == set(Settings.model_fields) - {"config_file"}


def test_unknown_settings_are_answered_with_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"unknown setting.*memory_budget_byte.*valid settings: host"):
        Settings(memory_budget_byte=5)  # type: ignore[call-arg]
    config = tmp_path / "c.yaml"
    config.write_text("snapshot_interval: 5\n")
    with pytest.raises(ValidationError, match="snapshot_interval"):
        Settings(config_file=config)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_a_missing_gpu_is_a_clear_start_up_error() -> None:
    with pytest.raises(ValidationError, match="CUDA is not available"):
        Settings(device="cuda")
    with pytest.raises(ValidationError, match="device"):
        Settings(device="gpu0")


def test_the_api_docs_work_offline(url: str) -> None:
    for page in ("/docs", "/redoc"):
        html = httpx.get(f"{url}{page}").text
        assets = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert assets and not [a for a in assets if a.startswith("http")], assets
        for asset in assets:
            assert httpx.get(f"{url}{asset}").status_code == 200, asset
