"""tta-bench process-memory: a real server process' resident memory beside what its budget counts."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import pytest

from benchmarks.performance.process_memory import run_process_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/<pid>/status")
def test_it_samples_the_server_process_and_its_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    table = run_process_memory("tent", streams=6, budget_bytes=256 * 2**20, batch_size=4, clients=2, out_dir=tmp_path)
    result = json.loads((tmp_path / "process_memory.json").read_text())
    assert result["codes"] == {"200": 6}
    assert result["timeline"] and all(t["rss_bytes"] > 0 for t in result["timeline"])
    assert max(t["streams_in_memory"] for t in result["timeline"]) <= 6
    assert result["peak_rss_bytes"] >= result["start_rss_bytes"] > 0 and result["peak_budgeted_bytes"] > 0
    assert not list(scratch.iterdir()), "the snapshot store was left behind"
    assert "| tent | 6 |" in table and (tmp_path / "process_memory.png").stat().st_size > 0
