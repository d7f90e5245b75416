"""The in-process server of the REST benchmarks and the server tests fails fast when it cannot start."""

from __future__ import annotations

import time

import httpx
import pytest

from benchmarks.performance.local_server import running_server
from tta_server import Settings


def test_a_server_that_cannot_start_raises_instead_of_waiting_forever() -> None:
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="exited during start-up"), running_server(Settings(memory_budget_bytes=1)):
        pass
    assert time.monotonic() - start < 60


def test_it_serves_until_the_block_ends() -> None:
    with running_server(Settings(default_adapter="norm")) as url:
        assert httpx.get(f"{url}/health/live", timeout=30).status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health/live", timeout=5)
