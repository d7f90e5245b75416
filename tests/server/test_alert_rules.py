"""The alert rules: valid for promtool, unit-tested with `promtool test rules`, and built only from
metrics a real /metrics scrape exposes."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from monitoring.prometheus import RULES
from tests.conftest import REPO
from tests.helpers import png
from tests.server_harness import running_server
from tta_server import Settings

MONITORING = REPO / "monitoring"
needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (Debian prometheus)"
)


@needs_promtool
@pytest.mark.parametrize("command", [["check", "rules", str(RULES)], ["test", "rules", "alerts_test.yaml"]])
def test_promtool_accepts_and_passes_the_rules(command: list[str]) -> None:
    done = subprocess.run(["promtool", *command], cwd=MONITORING, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def metric_names(expression: str) -> set[str]:
    return set(re.findall(r"\btta_[a-z_]+\b", expression))


def test_every_metric_in_the_rules_is_in_a_real_scrape(tmp_path: Path) -> None:
    rules = [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    used = set().union(*(metric_names(rule["expr"]) for rule in rules))
    settings = Settings(default_adapter="tent", min_adapt_batch=2, snapshot_dir=tmp_path, memory_budget_bytes=10**9)
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=60) as client:
        files = [("files", (f"{i}.png", png(i), "image/png")) for i in range(2)]
        assert client.post("/v1/predict", files=files).status_code == 200
        scraped = {s.name for f in text_string_to_metric_families(client.get("/metrics").text) for s in f.samples}
    assert used and used <= scraped, sorted(used - scraped)
