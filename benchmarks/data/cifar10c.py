"""CIFAR-10-C in its official layout: one ``<corruption>.npy`` per corruption plus ``labels.npy``.

Each corruption file is (50000, 32, 32, 3) uint8 with severities 1..5 stacked in blocks of
10,000 rows (severity s = rows [(s-1)*10000, s*10000)); ``labels.npy`` is (50000,). Smaller
copies with the same structure (5 blocks of n rows) are read the same way. Files are
memory-mapped, so reading one severity of one corruption touches 30 MB, not 150.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.data.cifar10 import DatasetError, ImageArrays
from benchmarks.data.corruptions.constants import COMMON_CORRUPTIONS, EXTRA_CORRUPTIONS

CORRUPTIONS = COMMON_CORRUPTIONS
SEVERITIES = (1, 2, 3, 4, 5)


def load_cifar10c(root: str | Path, corruption: str, severity: int) -> ImageArrays:
    """The 10,000 images of one corruption at one severity, in file order."""
    directory = Path(root)
    if corruption not in CORRUPTIONS + EXTRA_CORRUPTIONS:
        raise DatasetError(f"unknown corruption {corruption!r}; expected one of {CORRUPTIONS + EXTRA_CORRUPTIONS}")
    if severity not in SEVERITIES:
        raise DatasetError(f"severity must be 1..5, got {severity}")
    images_path, labels_path = directory / f"{corruption}.npy", directory / "labels.npy"
    for path in (images_path, labels_path):
        if not path.is_file():
            raise DatasetError(f"{path} not found; expected the CIFAR-10-C layout (<corruption>.npy + labels.npy)")
    images = np.load(images_path, mmap_mode="r")
    labels = np.load(labels_path, mmap_mode="r")
    rows = labels.shape[0] if labels.ndim == 1 else -1
    if rows <= 0 or rows % len(SEVERITIES):
        raise DatasetError(f"{labels_path}: shape {labels.shape}, expected (5 * n,) e.g. (50000,)")
    if images.shape != (rows, 32, 32, 3) or images.dtype != np.uint8:
        raise DatasetError(f"{images_path}: shape {images.shape} {images.dtype}, expected ({rows}, 32, 32, 3) uint8")
    per_severity = rows // len(SEVERITIES)
    block = slice((severity - 1) * per_severity, severity * per_severity)
    return ImageArrays(np.array(images[block]), np.array(labels[block], dtype=np.int64))  # copies out of the mmap
