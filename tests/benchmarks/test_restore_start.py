"""tta-bench restore-start: the start-up header scan beside a full verification, on a real store."""

from __future__ import annotations

import json
from pathlib import Path

from adapters import SourceModel
from benchmarks.performance.restore_start import run_restore_start


def test_it_times_each_pass_over_real_snapshots(tmp_path: Path, tiny_source: SourceModel) -> None:
    table = run_restore_start(tiny_source, "tent", streams=3, repeats=2, out_dir=tmp_path)
    result = json.loads((tmp_path / "restore_start.json").read_text())
    assert result["streams"] == 3 and result["file_bytes"] > 0
    assert all(len(result["seconds"][k]) == 2 and min(result["seconds"][k]) > 0 for k in ("headers", "full", "wake"))
    assert result["full_over_headers"] == result["median_s"]["full"] / result["median_s"]["headers"]
    assert "| start-up scan, headers only (the server's) |" in table and (tmp_path / "restore_start.md").exists()
