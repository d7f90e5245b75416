"""CIFAR-10 readers: the JPEG folder/tarball layout and the original python batches.

Both are decoded once into uint8 arrays (N, 32, 32, 3) and cached as ``.npy`` files keyed by a
hash of the source, so later loads take a fraction of a second.

Layouts understood by :func:`load_cifar10`:

* ``<root>/{train,test}/<class>/*.jpg`` (class folders in CIFAR-10 label order when sorted);
* a ``.tar.gz`` holding that layout (``root`` is the file, or a directory with exactly one);
* ``<root>/cifar-10-batches-py/`` or ``<root>`` itself holding ``data_batch_1..5`` and
  ``test_batch`` (the original python pickles, read with a restricted unpickler).
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from PIL import Image
from tqdm import tqdm

from adapters.atomic import atomic_path

CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
Split = Literal["train", "test"]
IMAGE_SHAPE = (32, 32, 3)


class DatasetError(ValueError):
    """The data directory does not hold a readable CIFAR-10 copy."""


@dataclass(frozen=True)
class ImageArrays:
    """Images as uint8 NHWC RGB and int64 labels."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: np.ndarray) -> ImageArrays:
        return ImageArrays(self.images[index], self.labels[index])


def default_cache_dir() -> Path:
    env = os.environ.get("TTA_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "tta-server"


def load_cifar10(
    root: str | Path, split: Split, cache_dir: str | Path | None = None, progress: bool = True
) -> ImageArrays:
    """Read one split of CIFAR-10 from ``root`` (any layout above), decoding at most once."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    source = _locate(Path(root))
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = f"cifar10-{split}-{_fingerprint(source)}"
    images_path = cache / "datasets" / f"{key}-images.npy"
    labels_path = cache / "datasets" / f"{key}-labels.npy"
    if images_path.exists() and labels_path.exists():
        return ImageArrays(np.load(images_path), np.load(labels_path))
    arrays = _read_batches(source.path, split) if source.kind == "batches" else _read_jpegs(source, split, progress)
    _check(arrays, split)
    images_path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_save(images_path, arrays.images)
    _atomic_save(labels_path, arrays.labels)
    return arrays


def find_shared_cifar10(start: Path | None = None) -> Path | None:
    """The shared CIFAR-10 tarball beside the repository (``../shared/data``), if present."""
    env = os.environ.get("TTA_SHARED_DATA")
    candidates = [Path(env)] if env else []
    here = (start or Path(__file__)).resolve()
    candidates += [parent / "shared" / "data" for parent in here.parents]
    for candidate in candidates:
        tarball = candidate / "cifar10-jpeg.tar.gz"
        if tarball.is_file():
            return tarball
    return None


@dataclass(frozen=True)
class _Source:
    kind: Literal["folder", "tarball", "batches"]
    path: Path


def _locate(root: Path) -> _Source:
    if not root.exists():
        raise DatasetError(f"CIFAR-10 data not found: {root} does not exist")
    if root.is_file():
        if root.name.endswith((".tar.gz", ".tgz", ".tar")):
            return _Source("tarball", root)
        raise DatasetError(f"{root}: expected a .tar.gz archive or a directory")
    if (root / "train").is_dir() and (root / "test").is_dir():
        return _Source("folder", root)
    for batches in (root / "cifar-10-batches-py", root):
        if (batches / "test_batch").is_file():
            return _Source("batches", batches)
    tarballs = sorted(root.glob("*.tar.gz"))
    if len(tarballs) == 1:
        return _Source("tarball", tarballs[0])
    raise DatasetError(
        f"{root}: no CIFAR-10 found; expected train/ and test/ class folders, a .tar.gz of them, "
        "or the python batches (cifar-10-batches-py/)"
    )


def _fingerprint(source: _Source) -> str:
    digest = hashlib.sha256(source.kind.encode())
    if source.kind == "folder":
        # Hashing 60k file names, sizes and mtimes is fast and changes with any edit.
        for path in sorted(source.path.rglob("*")):
            if path.is_file():
                stat = path.stat()
                digest.update(f"{path.relative_to(source.path)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    elif source.kind == "tarball":
        with source.path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    else:
        for path in sorted(source.path.glob("*_batch*")):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _iter_members(source: _Source, split: Split) -> Iterator[tuple[str, bytes]]:
    if source.kind == "folder":
        for path in sorted((source.path / split).rglob("*")):
            if path.is_file():
                yield str(path.relative_to(source.path)), path.read_bytes()
        return
    with tarfile.open(source.path) as archive:
        for member in archive:
            if not member.isfile():
                continue
            parts = Path(member.name).parts
            if split not in parts:
                continue
            handle = archive.extractfile(member)
            if handle is not None:
                yield member.name, handle.read()


def _read_jpegs(source: _Source, split: Split, progress: bool) -> ImageArrays:
    found: list[tuple[str, int, np.ndarray]] = []
    members = _iter_members(source, split)
    for name, payload in tqdm(members, desc=f"decode CIFAR-10 {split}", disable=not progress, unit="img"):
        parts = Path(name).parts
        class_name = parts[parts.index(split) + 1]
        if class_name not in CLASSES:
            raise DatasetError(f"{name}: unknown class folder {class_name!r}; expected one of {CLASSES}")
        with Image.open(io.BytesIO(payload)) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.uint8)
        if array.shape != IMAGE_SHAPE:
            raise DatasetError(f"{name}: image is {array.shape}, expected {IMAGE_SHAPE}")
        found.append((name, CLASSES.index(class_name), array))
    if not found:
        raise DatasetError(f"{source.path}: no images under {split}/")
    found.sort(key=lambda item: (item[1], item[0]))  # class-major, file order within a class
    images = np.stack([item[2] for item in found])
    labels = np.asarray([item[1] for item in found], dtype=np.int64)
    return ImageArrays(images, labels)


class _BatchUnpickler(pickle.Unpickler):
    """Refuses every global except what numpy needs to rebuild arrays."""

    _allowed: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._allowed:
            return super().find_class(module, name)
        raise DatasetError(f"refusing to unpickle {module}.{name} from a CIFAR-10 batch file")


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with path.open("rb") as handle:
        batch = _BatchUnpickler(handle, encoding="bytes").load()
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DatasetError(f"{path}: not a CIFAR-10 python batch (no data/labels keys)")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise DatasetError(f"{path}: data has shape {data.shape}, expected (N, 3072)")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), np.asarray(batch[b"labels"], dtype=np.int64)


def _read_batches(directory: Path, split: Split) -> ImageArrays:
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    missing = [name for name in names if not (directory / name).is_file()]
    if missing:
        raise DatasetError(f"{directory}: missing CIFAR-10 batch files {missing}")
    parts = [_read_batch(directory / name) for name in names]
    return ImageArrays(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))


def _check(arrays: ImageArrays, split: Split) -> None:
    if arrays.images.shape[1:] != IMAGE_SHAPE or arrays.images.dtype != np.uint8:
        raise DatasetError(f"{split}: decoded images are {arrays.images.shape} {arrays.images.dtype}")
    if arrays.labels.min() < 0 or arrays.labels.max() >= len(CLASSES):
        raise DatasetError(f"{split}: labels outside 0..{len(CLASSES) - 1}")


def _atomic_save(path: Path, array: np.ndarray) -> None:
    with atomic_path(path, durable=False) as tmp, tmp.open("wb") as handle:
        np.save(handle, array)


def stratified_holdout(labels: np.ndarray, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (train, holdout) with ``per_class`` holdout images of every class."""
    rng = np.random.default_rng(seed)
    holdout = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)])
    holdout.sort()
    mask = np.ones(labels.shape[0], dtype=bool)
    mask[holdout] = False
    return np.flatnonzero(mask), holdout
