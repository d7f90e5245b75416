"""A short CIFAR-10-C replay through a running server's REST API, to give Prometheus real traffic:
``n`` shared CIFAR-10 test images per domain, two corruptions at every severity (the official
layout, built on the fly with the project's corruption functions)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from adapters import create_source_model
from benchmarks.data.cifar10 import load_cifar10
from benchmarks.data.corruptions import corruptions_with
from benchmarks.data.corruptions.constants import CIFAR
from benchmarks.evaluation.replay import ReplayConfig, replay_dataset

CORRUPTIONS = ("gaussian_noise", "fog")


def build_small_cifar10c(cifar10: Path, out: Path, n: int = 64, seed: int = 0) -> Path:
    test = load_cifar10(cifar10, "test", progress=False)
    chosen = np.random.default_rng(seed).permutation(len(test.labels))[:n]  # the files are sorted by class
    images, labels = test.images[chosen], test.labels[chosen]
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


def labelled_traffic(server: str, data: Path, stream: str = "labelled", batch_size: int = 16) -> int:
    """Send the severity-5 fog images on a stream of their own and return their labels as feedback;
    returns how many images were labelled."""
    import httpx

    images = np.load(data / "fog.npy")
    labels = np.load(data / "labels.npy")
    n = len(labels) // 5
    images, labels = images[4 * n :], labels[4 * n :]
    headers = {"content-type": "application/octet-stream", "x-tensor-dtype": "uint8", "x-stream-id": stream}
    with httpx.Client(base_url=server, timeout=60) as client:
        for first in range(0, n, batch_size):
            batch = images[first : first + batch_size]
            shape = ",".join(map(str, batch.shape))
            answer = client.post("/v1/predict", content=batch.tobytes(), headers={**headers, "x-tensor-shape": shape})
            item = {"request_id": answer.json()["request_id"], "labels": labels[first : first + batch_size].tolist()}
            client.post(f"/v1/streams/{stream}/feedback", json={"items": [item]}).raise_for_status()
    return n


def replay_through(server: str, data: Path, adapter: str = "tent", batch_size: int = 16) -> dict[str, Any]:
    config = ReplayConfig(adapter=adapter, batch_size=batch_size, corruptions=CORRUPTIONS, severity=5)
    return replay_dataset(create_source_model(), data, config, progress=False, server=server)
