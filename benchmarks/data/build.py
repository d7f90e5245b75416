"""Build CIFAR-10-C (and ImageNet-C, at the end) in their official layouts (docs/benchmarks.md).

Output: ``<corruption>.npy`` (5n, 32, 32, 3) uint8 with severities 1..5 in blocks of n rows,
``labels.npy`` (5n,) uint8, ``order.npy`` (n,) with the source index of each row of a block, and
``manifest.json``. The rows follow one fixed seeded permutation of the source (the same for every
corruption and severity): the shared JPEG copy is stored class by class, and written in that
order every batch of 200 would hold one or two classes.

Work is split in chunks of ``CHUNK`` rows, each with its own Generator seeded from
``SeedSequence([seed, corruption index, severity, chunk index])``, so the output is bit-identical
whatever the number of worker processes or the order the chunks finish in. Finished chunks are
recorded in the manifest; an interrupted build resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from adapters.atomic import atomic_path, atomic_write_text
from benchmarks.data.cifar10 import DatasetError, ImageArrays
from benchmarks.data.corruptions import ALL_CORRUPTIONS, COMMON_CORRUPTIONS, corruptions_with
from benchmarks.data.corruptions.constants import CIFAR, IMAGENET, CorruptionConstants
from benchmarks.data.manifest import MANIFEST, read_manifest

CHUNK = 2000
SEVERITIES = (1, 2, 3, 4, 5)
CONSTANT_SETS = {"cifar": CIFAR, "imagenet": IMAGENET}

_worker_images: np.ndarray | None = None


def chunk_generator(seed: int, corruption: str, severity: int, chunk: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, ALL_CORRUPTIONS.index(corruption), severity, chunk]))


def _init_worker(images: np.ndarray) -> None:
    global _worker_images
    _worker_images = images


def _corrupt_chunk(
    out_file: str, corruption: str, constants: CorruptionConstants, severity: int, chunk: int, size: int, seed: int
) -> tuple[str, int, int]:
    images = _worker_images
    assert images is not None, "worker not initialised"
    n = images.shape[0]
    start, stop = chunk * size, min((chunk + 1) * size, n)
    corrupt = corruptions_with(constants)[corruption]
    rng = chunk_generator(seed, corruption, severity, chunk)
    block = np.stack([corrupt(images[i], severity, rng) for i in range(start, stop)])
    target = np.load(out_file, mmap_mode="r+")
    offset = (severity - 1) * n
    target[offset + start : offset + stop] = block
    target.flush()
    return corruption, severity, chunk


def _fingerprint(images: np.ndarray, labels: np.ndarray, seed: int, shuffle: bool, constants: str, chunk: int) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(images).tobytes())
    digest.update(np.ascontiguousarray(labels).tobytes())
    digest.update(f"{seed}:{shuffle}:{constants}:{chunk}".encode())
    return digest.hexdigest()[:16]


def build_cifar10c(
    source: ImageArrays,
    out: Path,
    corruptions: Sequence[str] = COMMON_CORRUPTIONS,
    seed: int = 0,
    shuffle: bool = True,
    constants: str = "cifar",
    workers: int | None = None,
    progress: bool = True,
    chunk: int = CHUNK,
    split: str = "test",
) -> dict[str, Any]:
    """Write the corrupted arrays under ``out``; returns the manifest (with the build time).
    ``split`` names the clean images in the manifest (``test``, or ``holdout`` for a validation stream)."""
    unknown = [name for name in corruptions if name not in ALL_CORRUPTIONS]
    if unknown:
        raise DatasetError(f"unknown corruptions {unknown}; expected names from {ALL_CORRUPTIONS}")
    if constants not in CONSTANT_SETS:
        raise DatasetError(f"constants must be one of {sorted(CONSTANT_SETS)}, got {constants!r}")
    if source.images.ndim != 4 or source.images.shape[3] != 3 or source.images.dtype != np.uint8:
        raise DatasetError(f"expected uint8 (N, H, W, 3) images, got {source.images.shape} {source.images.dtype}")
    n = len(source)
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    images = np.ascontiguousarray(source.images[order])
    fingerprint = _fingerprint(source.images, source.labels, seed, shuffle, constants, chunk)

    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST
    manifest = read_manifest(out) or {}
    if manifest and manifest.get("fingerprint") != fingerprint:
        raise DatasetError(
            f"{out} holds a build from other source images or settings (fingerprint {manifest.get('fingerprint')}, "
            f"now {fingerprint}); choose another --out or delete it"
        )
    manifest.update(
        format="cifar10c",
        split=split,
        fingerprint=fingerprint,
        constants=constants,
        seed=seed,
        shuffled=shuffle,
        images_per_severity=n,
        severities=list(SEVERITIES),
        chunk=chunk,
    )
    done: set[str] = set(manifest.get("done", []))
    np.save(out / "labels.npy", np.tile(source.labels[order].astype(np.uint8), len(SEVERITIES)))
    np.save(out / "order.npy", order)

    jobs = []
    for corruption in corruptions:
        target = out / f"{corruption}.npy"
        if not target.exists():
            np.lib.format.open_memmap(target, mode="w+", dtype=np.uint8, shape=(len(SEVERITIES) * n, *images.shape[1:]))
            done = {key for key in done if not key.startswith(f"{corruption}/")}
        chunks = range((n + chunk - 1) // chunk)
        jobs += [(corruption, s, c) for s in SEVERITIES for c in chunks if f"{corruption}/{s}/{c}" not in done]

    started = time.perf_counter()
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs) or 1))
    with (
        tqdm(
            total=sum(min(chunk, n - c * chunk) for *_, c in jobs), desc="corrupt", unit="img", disable=not progress
        ) as bar,
        ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(images,)) as pool,
    ):
        futures = [
            pool.submit(_corrupt_chunk, str(out / f"{name}.npy"), name, CONSTANT_SETS[constants], s, c, chunk, seed)
            for name, s, c in jobs
        ]
        for future in as_completed(futures):
            name, s, c = future.result()
            done.add(f"{name}/{s}/{c}")
            manifest["done"] = sorted(done)
            _write_json(manifest_path, manifest)
            bar.update(min(chunk, n - c * chunk))
    elapsed = time.perf_counter() - started
    complete = [name for name in ALL_CORRUPTIONS if (out / f"{name}.npy").exists()]
    built = sum(min(chunk, n - c * chunk) for *_, c in jobs)
    manifest.update(corruptions=complete, workers=workers, seconds=round(elapsed, 1), images_built=built)
    _write_json(manifest_path, manifest)
    return manifest


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(payload, indent=1) + "\n")


def _corrupt_imagenet_files(
    val_root: str, out_root: str, files: list[tuple[int, str]], corruption: str, severity: int, seed: int
) -> int:
    from PIL import Image

    from benchmarks.data.imagenet_c import resize_center_crop

    corrupt = corruptions_with(IMAGENET)[corruption]
    for index, name in files:
        target = Path(out_root) / corruption / str(severity) / name
        if target.exists():
            continue
        with Image.open(Path(val_root) / name) as opened:
            clean = np.asarray(resize_center_crop(opened.convert("RGB")), dtype=np.uint8)
        rng = np.random.default_rng(np.random.SeedSequence([seed, ALL_CORRUPTIONS.index(corruption), severity, index]))
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target, durable=False) as partial:
            Image.fromarray(corrupt(clean, severity, rng)).save(partial, "JPEG", quality=85, optimize=True)
    return len(files)


def build_imagenet_c(
    val_root: Path,
    out: Path,
    corruptions: Sequence[str] = COMMON_CORRUPTIONS,
    severities: Sequence[int] = SEVERITIES,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
    chunk: int = 64,
) -> dict[str, Any]:
    """ImageNet-C from an ImageNet-style ``<wnid>/*.JPEG`` folder, as make_imagenet_c.py does:
    Resize(256) + CenterCrop(224), the ImageNet-C constants, JPEG quality 85. One Generator per
    (corruption, severity, image), so the output does not depend on ``workers``; existing files are
    kept, so an interrupted build resumes."""
    from benchmarks.data.imagenet_c import list_class_folder

    unknown = [name for name in corruptions if name not in ALL_CORRUPTIONS]
    if unknown:
        raise DatasetError(f"unknown corruptions {unknown}; expected names from {ALL_CORRUPTIONS}")
    bad = [s for s in severities if s not in SEVERITIES]
    if bad:
        raise DatasetError(f"severities must be in 1..5, got {bad}")
    _, files = list_class_folder(val_root)
    indexed = [(index, name) for index, (name, _) in enumerate(files)]
    jobs = [
        (corruption, severity, indexed[start : start + chunk])
        for corruption in corruptions
        for severity in severities
        for start in range(0, len(indexed), chunk)
    ]
    started = time.perf_counter()
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    with (
        tqdm(total=len(jobs) and sum(len(j[2]) for j in jobs), desc="corrupt", unit="img", disable=not progress) as bar,
        ProcessPoolExecutor(workers) as pool,
    ):
        futures = [pool.submit(_corrupt_imagenet_files, str(val_root), str(out), f, c, s, seed) for c, s, f in jobs]
        for future in as_completed(futures):
            bar.update(future.result())
    manifest = {
        "format": "imagenet-c",
        "source": str(val_root),
        "constants": "imagenet",
        "seed": seed,
        "corruptions": list(corruptions),
        "severities": list(severities),
        "images_per_domain": len(files),
        "jpeg_quality": 85,
        "workers": workers,
        "seconds": round(time.perf_counter() - started, 1),
    }
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / MANIFEST, manifest)
    return manifest
