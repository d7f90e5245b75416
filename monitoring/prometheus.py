"""A real Prometheus (the ``prometheus`` binary, Debian's package) scraping a tta-server, for tests
and the dashboard picture: start it, query it, and substitute the dashboard's variables."""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

from benchmarks.performance.processes import free_port, stop_process

# the rules and the dashboard live in the Helm chart, which embeds these very files
CHART_FILES = Path(__file__).resolve().parent.parent / "helm" / "tta-server" / "files"
RULES = CHART_FILES / "alerts.yaml"
COMPARISON = re.compile(r"\s*(==|!=|>=|<=|>|<)\s*[0-9.]+\s*$")


def available() -> bool:
    return shutil.which("prometheus") is not None


@contextlib.contextmanager
def running_prometheus(target: str, interval_s: float = 1.0) -> Iterator[str]:
    """Prometheus scraping ``target`` (host:port) every ``interval_s`` with the alert rules loaded;
    yields its base URL."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="tta-prometheus-") as tmp:
        every = f"{round(interval_s * 1000)}ms"  # Prometheus durations take no decimals
        config = {
            "global": {"scrape_interval": every, "evaluation_interval": every},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "tta-server", "static_configs": [{"targets": [target]}]}],
        }
        (Path(tmp) / "prometheus.yml").write_text(yaml.safe_dump(config))
        command = [
            "prometheus",
            f"--config.file={tmp}/prometheus.yml",
            f"--storage.tsdb.path={tmp}/data",
            f"--web.listen-address=127.0.0.1:{port}",
        ]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                        break
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("prometheus did not start")
                time.sleep(0.2)
            yield url
        finally:
            stop_process(process, grace_s=30)


def dashboard_expression(expression: str, rate: str = "30s") -> str:
    """A dashboard query with its variables filled in (all instances and adapters)."""
    return expression.replace("$__rate_interval", rate).replace("$instance", ".*").replace("$adapter", ".*")


def alert_expression(expression: str) -> str:
    """An alert's expression without its final threshold: the value the alert compares."""
    return COMPARISON.sub("", " ".join(expression.split()))


def query(url: str, expression: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{url}/api/v1/query", params={"query": expression}, timeout=30).json()
    if response["status"] != "success":
        raise ValueError(f"{expression}: {response.get('error')}")
    result: list[dict[str, Any]] = response["data"]["result"]
    return result


def query_range(url: str, expression: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
    params: dict[str, str | float] = {"query": expression, "start": start, "end": end, "step": step}
    response = httpx.get(f"{url}/api/v1/query_range", params=params, timeout=30).json()
    if response["status"] != "success":
        raise ValueError(f"{expression}: {response.get('error')}")
    result: list[dict[str, Any]] = response["data"]["result"]
    return result


def scrapes(url: str) -> int:
    """How many scrapes of the target Prometheus has stored so far."""
    result = query(url, 'count_over_time(up{job="tta-server"}[1h])')
    return int(float(result[0]["value"][1])) if result else 0
