"""tta-bench sweep: a 2x2 sweep on a local Ray runtime gives the very results of the sequential runner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.data.cifar10c import CORRUPTIONS
from benchmarks.evaluation.sweep import run_sweep, sweep_points


@pytest.fixture(scope="module")
def small_cifar10c(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("c10c")
    rng = np.random.default_rng(5)
    np.save(root / "labels.npy", np.tile(np.arange(32) % 10, 5).astype(np.uint8))
    for name in CORRUPTIONS[:2]:
        coarse = rng.integers(0, 256, size=(160, 8, 8, 3), dtype=np.uint8)
        np.save(root / f"{name}.npy", coarse.repeat(4, axis=1).repeat(4, axis=2))
    return root


def test_a_ray_sweep_equals_the_sequential_one(small_cifar10c: Path, tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="Ray is the optional 'ray' extra")
    points = sweep_points(["norm", "tent"], ["continual", "correlated"], [0])
    base = {"corruptions": list(CORRUPTIONS[:2]), "batch_size": 16}
    sequential = run_sweep("cifar10-airbench", small_cifar10c, points, base)
    on_ray = run_sweep("cifar10-airbench", small_cifar10c, points, base, ray_address="local", out=tmp_path)
    assert on_ray["engine"] == "ray" and len(on_ray["results"]) == 4
    assert on_ray["results"] == sequential["results"]
    tent = [r for r in sequential["results"] if r["point"]["adapter"] == "tent"]
    assert tent[0]["per_domain_error"] != tent[1]["per_domain_error"]  # the settings differ: a real 2x2
    assert "| tent | correlated | 0 |" in (tmp_path / "sweep.md").read_text()
