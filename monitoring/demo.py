"""A short CIFAR-10-C replay through a running server's REST API, to give Prometheus real traffic:
``n`` shared CIFAR-10 test images per domain, two corruptions at every severity (the official
layout, built on the fly with the project's corruption functions)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from adapters import create_source_model
from benchmarks.corruptions import corruptions_with
from benchmarks.corruptions.constants import CIFAR
from benchmarks.datasets.cifar10 import load_cifar10
from benchmarks.replay import ReplayConfig, replay_dataset

CORRUPTIONS = ("gaussian_noise", "fog")


def build_small_cifar10c(cifar10: Path, out: Path, n: int = 64, seed: int = 0) -> Path:
    test = load_cifar10(cifar10, "test", progress=False)
    images, labels = test.images[:n], test.labels[:n]
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "labels.npy", np.tile(labels, 5).astype(np.uint8))
    functions = corruptions_with(CIFAR)
    for name in CORRUPTIONS:
        rows = [
            functions[name](image, severity, np.random.default_rng([seed, severity, i]))
            for severity in range(1, 6)
            for i, image in enumerate(images)
        ]
        np.save(out / f"{name}.npy", np.stack(rows).astype(np.uint8))
    return out


def replay_through(server: str, data: Path, adapter: str = "tent", batch_size: int = 16) -> dict[str, Any]:
    config = ReplayConfig(adapter=adapter, batch_size=batch_size, corruptions=CORRUPTIONS, severity=5)
    return replay_dataset(create_source_model(), data, config, progress=False, server=server)
