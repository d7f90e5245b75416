"""CIFAR-10-C layout reader and the online replay protocol."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from adapters import SourceModel, create_adapter
from benchmarks.cli import main as bench_main
from benchmarks.datasets.cifar10 import DatasetError
from benchmarks.datasets.cifar10c import CORRUPTIONS, load_cifar10c
from benchmarks.replay import Domain, ReplayConfig, error_table, replay

PER_SEVERITY = 12


@pytest.fixture(scope="module")
def cifar10c_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small copy of the official layout: 5 severity blocks of 12 images per corruption."""
    root = tmp_path_factory.mktemp("cifar10c")
    rng = np.random.default_rng(0)
    labels = np.tile(np.arange(PER_SEVERITY) % 10, 5).astype(np.uint8)
    np.save(root / "labels.npy", labels)
    for index, corruption in enumerate(CORRUPTIONS):
        images = rng.integers(0, 256, size=(5 * PER_SEVERITY, 32, 32, 3), dtype=np.uint8)
        images[:, 0, 0, 0] = np.repeat(np.arange(1, 6), PER_SEVERITY) * 10 + index  # severity marker
        np.save(root / f"{corruption}.npy", images)
    return root


def test_reader_selects_the_severity_block(cifar10c_dir: Path) -> None:
    arrays = load_cifar10c(cifar10c_dir, "fog", 3)
    assert arrays.images.shape == (PER_SEVERITY, 32, 32, 3)
    assert set(arrays.images[:, 0, 0, 0].tolist()) == {30 + CORRUPTIONS.index("fog")}
    assert arrays.labels.dtype == np.int64


def test_reader_errors(cifar10c_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unknown corruption"):
        load_cifar10c(cifar10c_dir, "rain", 5)
    with pytest.raises(DatasetError, match=r"severity must be 1\.\.5"):
        load_cifar10c(cifar10c_dir, "fog", 6)
    with pytest.raises(DatasetError, match="not found"):
        load_cifar10c(tmp_path, "fog", 5)
    np.save(tmp_path / "labels.npy", np.zeros(7))
    np.save(tmp_path / "fog.npy", np.zeros((7, 32, 32, 3), dtype=np.uint8))
    with pytest.raises(DatasetError, match="expected"):
        load_cifar10c(tmp_path, "fog", 5)


def domains(root: Path, names: tuple[str, ...] = CORRUPTIONS[:3]) -> list[Domain]:
    return [Domain(n, a.images, a.labels) for n in names for a in [load_cifar10c(root, n, 5)]]


def test_online_error_matches_the_adapter_predictions(tiny_source: SourceModel, cifar10c_dir: Path) -> None:
    stream = domains(cifar10c_dir)
    config = ReplayConfig(adapter="source", adapter_config={"backend": "torch"}, batch_size=5)
    result = replay(tiny_source, stream, config, progress=False)
    adapter = create_adapter("source", tiny_source, {"backend": "torch"})
    for domain in stream:
        x = torch.from_numpy(domain.images).permute(0, 3, 1, 2).float() / 255
        expected = float((adapter.forward_and_adapt(x).argmax(1).numpy() != domain.labels).mean())
        assert result["per_domain_error"][domain.name] == pytest.approx(expected)
    assert [b["images"] for b in result["batches"][:3]] == [5, 5, 2]  # last batch of a domain is partial
    assert result["mean_error"] == pytest.approx(np.mean(list(result["per_domain_error"].values())))


def test_reset_each_shift_differs_from_continual_only_after_the_first_domain(
    tiny_source: SourceModel, cifar10c_dir: Path
) -> None:
    stream = domains(cifar10c_dir)
    tent = {"optimizer": {"lr": 0.05}}
    continual = replay(
        tiny_source, stream, ReplayConfig(adapter="tent", adapter_config=tent, batch_size=6), progress=False
    )
    reset_config = ReplayConfig(adapter="tent", adapter_config=tent, batch_size=6, setting="reset_each_shift")
    reset = replay(tiny_source, stream, reset_config, progress=False)
    assert continual["batches"][:2] == reset["batches"][:2]
    fresh = replay(
        tiny_source, stream[1:2], ReplayConfig(adapter="tent", adapter_config=tent, batch_size=6), progress=False
    )
    assert reset["batches"][2:4] == fresh["batches"]  # after a reset the adapter starts from the source


def test_cli_writes_json_and_a_table(cifar10c_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench_main(
        [
            "replay",
            "--data",
            str(cifar10c_dir),
            "--adapters",
            "source,norm",
            "--batch-size",
            "6",
            "--out",
            str(tmp_path),
        ]
    )
    result = json.loads((tmp_path / "norm.json").read_text())
    assert set(result["per_domain_error"]) == set(CORRUPTIONS) and result["images"] == 15 * PER_SEVERITY
    table = (tmp_path / "table.md").read_text()
    assert table.splitlines()[0].startswith("| adapter | gaussian_noise") and "| norm |" in table
    assert table == error_table([json.loads((tmp_path / f"{a}.json").read_text()) for a in ("source", "norm")])
