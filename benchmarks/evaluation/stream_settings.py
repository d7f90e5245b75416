"""How corruption domains become one ordered test stream (docs/benchmarks.md, "Stream settings and protocol").

* ``continual``: domains in order at one severity; reset once.
* ``reset_each_shift``: the same, reset before every domain.
* ``gradual``: every domain at severities 1,2,3,4,5,4,3,2,1 (mariodoebler's variant).
* ``gradual_cotta``: the first domain 5,4,3,2,1, every later one 1,...,5,...,1 (CoTTA's variant).
* ``mixed_domains``: all domains' images in one seeded shuffle; errors still split by domain.
* ``correlated``: within each domain, images sorted by label, or, with ``delta``, ordered by the
  Dirichlet procedure of NOTE (smaller delta, stronger label correlation).
* ``recurring``: the domains in order, ``visits`` times over without a reset (PeTTA's recurring
  protocol); errors are split per visit and domain (``gaussian_noise#3``: the third visit).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from benchmarks.data.cifar10 import ImageArrays

Setting = Literal[
    "continual", "reset_each_shift", "gradual", "gradual_cotta", "mixed_domains", "correlated", "recurring"
]
SETTINGS: tuple[str, ...] = (
    "continual",
    "reset_each_shift",
    "gradual",
    "gradual_cotta",
    "mixed_domains",
    "correlated",
    "recurring",
)
GRADUAL = (1, 2, 3, 4, 5, 4, 3, 2, 1)

# CoTTA's ten ImageNet-C orders (cfgs/10orders; also used by PETAL), averaged in its ImageNet-C table.
COTTA_TEN_ORDERS: tuple[tuple[str, ...], ...] = tuple(
    tuple(line.split(","))
    for line in (
        "brightness,pixelate,gaussian_noise,motion_blur,zoom_blur,glass_blur,impulse_noise,jpeg_compression,"
        "defocus_blur,elastic_transform,shot_noise,frost,snow,fog,contrast",
        "jpeg_compression,shot_noise,zoom_blur,frost,contrast,fog,defocus_blur,elastic_transform,gaussian_noise,"
        "brightness,glass_blur,impulse_noise,pixelate,snow,motion_blur",
        "contrast,defocus_blur,gaussian_noise,shot_noise,snow,frost,glass_blur,zoom_blur,elastic_transform,"
        "jpeg_compression,pixelate,brightness,impulse_noise,motion_blur,fog",
        "shot_noise,fog,glass_blur,pixelate,snow,elastic_transform,brightness,impulse_noise,defocus_blur,frost,"
        "contrast,gaussian_noise,motion_blur,jpeg_compression,zoom_blur",
        "pixelate,glass_blur,zoom_blur,snow,fog,impulse_noise,brightness,motion_blur,frost,jpeg_compression,"
        "gaussian_noise,shot_noise,contrast,defocus_blur,elastic_transform",
        "motion_blur,snow,fog,shot_noise,defocus_blur,contrast,zoom_blur,brightness,frost,elastic_transform,"
        "glass_blur,gaussian_noise,pixelate,jpeg_compression,impulse_noise",
        "frost,impulse_noise,jpeg_compression,contrast,zoom_blur,glass_blur,pixelate,snow,defocus_blur,motion_blur,"
        "brightness,elastic_transform,shot_noise,fog,gaussian_noise",
        "glass_blur,zoom_blur,impulse_noise,fog,snow,jpeg_compression,gaussian_noise,frost,shot_noise,brightness,"
        "contrast,motion_blur,pixelate,defocus_blur,elastic_transform",
        "defocus_blur,motion_blur,zoom_blur,shot_noise,gaussian_noise,glass_blur,jpeg_compression,fog,contrast,"
        "pixelate,frost,snow,brightness,elastic_transform,impulse_noise",
        "contrast,gaussian_noise,defocus_blur,zoom_blur,frost,glass_blur,jpeg_compression,fog,pixelate,"
        "elastic_transform,shot_noise,impulse_noise,snow,motion_blur,brightness",
    )
)


@dataclass(frozen=True)
class Segment:
    """A run of the stream; errors are reported per ``tags`` value (one tag per image)."""

    images: np.ndarray  # uint8 (N, H, W, 3)
    labels: np.ndarray  # int64 (N,)
    tags: np.ndarray  # str (N,): the domain (and severity) each image belongs to
    reset_before: bool = False


Loader = Callable[[str, int], ImageArrays]


def build_stream(
    load: Loader,
    corruptions: Sequence[str],
    setting: Setting,
    severity: int = 5,
    n_per_domain: int | None = None,
    seed: int = 0,
    delta: float | None = None,
    visits: int = 1,
) -> list[Segment]:
    """The ordered segments of ``setting``; ``load(corruption, severity)`` reads one domain."""
    rng = np.random.default_rng(seed)
    loaded: dict[tuple[str, int], ImageArrays] = {}

    def domain(name: str, level: int, tag: str) -> Segment:
        arrays = loaded.get((name, level)) or loaded.setdefault((name, level), load(name, level))
        count = min(len(arrays), n_per_domain or len(arrays))
        images, labels = arrays.images[:count], arrays.labels[:count]
        return Segment(images, labels, np.full(count, tag))

    if setting == "recurring":
        segments = [domain(name, severity, f"{name}#{visit}") for visit in range(1, visits + 1) for name in corruptions]
        return [_with_reset(s, i == 0) for i, s in enumerate(segments)]
    if setting in ("continual", "reset_each_shift"):
        segments = [domain(name, severity, name) for name in corruptions]
        return [_with_reset(s, i == 0 or setting == "reset_each_shift") for i, s in enumerate(segments)]
    if setting in ("gradual", "gradual_cotta"):
        segments = []
        for index, name in enumerate(corruptions):
            levels = GRADUAL[4:] if setting == "gradual_cotta" and index == 0 else GRADUAL
            segments += [domain(name, level, f"{name}@{level}") for level in levels]
        return [_with_reset(s, i == 0) for i, s in enumerate(segments)]
    if setting == "mixed_domains":
        parts = [domain(name, severity, name) for name in corruptions]
        order = rng.permutation(sum(len(p.labels) for p in parts))
        images = np.concatenate([p.images for p in parts])[order]
        labels = np.concatenate([p.labels for p in parts])[order]
        tags = np.concatenate([p.tags for p in parts])[order]
        return [Segment(images, labels, tags, reset_before=True)]
    if setting == "correlated":
        segments = []
        for index, name in enumerate(corruptions):
            part = domain(name, severity, name)
            order = (
                np.argsort(part.labels, kind="stable") if delta is None else dirichlet_order(part.labels, delta, rng)
            )
            segments.append(Segment(part.images[order], part.labels[order], part.tags[order], reset_before=index == 0))
        return segments
    raise ValueError(f"unknown setting {setting!r}; expected one of {SETTINGS}")


def _with_reset(segment: Segment, reset: bool) -> Segment:
    return Segment(segment.images, segment.labels, segment.tags, reset_before=reset)


def dirichlet_order(
    labels: np.ndarray, delta: float, rng: np.random.Generator, min_chunk: int = 10, timeout_s: float = 120.0
) -> np.ndarray:
    """NOTE's label-correlated order: Dirichlet(delta) class-to-chunk splits, chunks in sequence.

    Each class's shuffled indices are split over C chunks by Dirichlet(delta) proportions (full
    chunks get none); the draw repeats until every chunk holds ``min_chunk`` images (capped at
    N/C). Inside a chunk its classes come in random order, each as one contiguous run.
    """
    classes = np.unique(labels)
    n_chunks, total = len(classes), len(labels)
    needed = min(min_chunk, total // n_chunks)
    deadline = time.monotonic() + timeout_s
    while True:
        chunks: list[list[int]] = [[] for _ in range(n_chunks)]
        for cls in classes:
            members = rng.permutation(np.flatnonzero(labels == cls))
            proportions = rng.dirichlet(np.full(n_chunks, delta))
            open_chunks = np.array([len(c) < total / n_chunks for c in chunks], dtype=float)
            proportions = proportions * open_chunks
            proportions = proportions / proportions.sum() if proportions.sum() > 0 else open_chunks / open_chunks.sum()
            cuts = (np.cumsum(proportions) * len(members)).astype(int)[:-1]
            for chunk, part in zip(chunks, np.split(members, cuts), strict=True):
                chunk.extend(part.tolist())
        if min(len(c) for c in chunks) >= needed:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"no Dirichlet split with >= {needed} images per chunk within {timeout_s} s")
    order: list[int] = []
    for chunk in chunks:
        members = np.asarray(chunk)
        for cls in rng.permutation(np.unique(labels[members])):
            order.extend(members[labels[members] == cls].tolist())
    return np.asarray(order)
