"""Test images and request pieces shared by the test packages."""

from __future__ import annotations

import io
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from adapters import create_source_model

# CoTTA and PETAL average 32 augmented teacher views when their gate fires, and the views are most
# of a step's cost. Ten views take the same path (a full pass of 8 views, then a remainder of 2) at
# a third of the cost; tests of a contract that does not depend on the count use them.
FEWER_VIEWS: dict[str, dict[str, object]] = {"cotta": {"n_augmentations": 10}, "petal": {"n_augmentations": 10}}


def png(seed: int, size: tuple[int, int] = (32, 32)) -> bytes:
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize(size, Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    coarse.save(buffer, format="PNG")
    return buffer.getvalue()


def images(n: int, seed: int) -> np.ndarray:
    coarse = np.random.default_rng(seed).integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
    return coarse.repeat(8, axis=1).repeat(8, axis=2)


def files(batch: np.ndarray) -> list[tuple[str, tuple[str, bytes, str]]]:
    out = []
    for i, image in enumerate(batch):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "PNG")
        out.append(("files", (f"{i}.png", buffer.getvalue(), "image/png")))
    return out


def post_later(url: str, stream: str, batch: np.ndarray, delay: float, results: dict[int, dict], key: int) -> None:  # type: ignore[type-arg]
    time.sleep(delay)
    response = httpx.post(f"{url}/v1/predict", files=files(batch), headers={"X-Stream-Id": stream}, timeout=60)
    results[key] = response.json()


def probabilities(body: dict) -> np.ndarray:  # type: ignore[type-arg]
    names = create_source_model().class_names
    return np.asarray([[p["top_k"].get(n, 0.0) for n in names] for p in body["predictions"]])


def damage_inside(path: Path) -> None:
    """Flip one byte of a snapshot's last tensor: the header stays sound, the checksum fails."""
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
