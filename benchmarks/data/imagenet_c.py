"""ImageNet-C in its official folder layout: ``<corruption>/<severity>/<wnid>/*.JPEG``.

The class index of an image is the position of its wnid folder in the sorted list of wnids (as in
RobustBench). A fixed subset keeps ``n_examples`` images per domain (RobustBench's default is
5,000): either the ``wnid/file`` lines of a subset file (RobustBench's
``imagenet_test_image_ids.txt`` reproduces its exact subset), or a seeded permutation of the
sorted file list, the same for every corruption and severity.

Two preprocessing conventions: ``as-is`` (the released images are already Resize(256) +
CenterCrop(224)) and ``resize-crop`` (Resize(256) + CenterCrop(224) applied here, for folders of
full-size images). The convention is recorded in the replay results.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from benchmarks.data.cifar10 import DatasetError, ImageArrays

Preprocessing = Literal["as-is", "resize-crop"]
PREPROCESSINGS: tuple[str, ...] = ("as-is", "resize-crop")
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
SIDE = 224


def resize_center_crop(image: Image.Image, resize: int = 256, crop: int = SIDE) -> Image.Image:
    """Shorter side to ``resize`` (bilinear), then the central ``crop`` square."""
    width, height = image.size
    scale = resize / min(width, height)
    size = (max(crop, round(width * scale)), max(crop, round(height * scale)))
    resized = image.resize(size, Image.Resampling.BILINEAR)
    left, top = (size[0] - crop) // 2, (size[1] - crop) // 2
    return resized.crop((left, top, left + crop, top + crop))


def list_class_folder(root: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """The sorted wnids under ``root`` and every image as (``wnid/file``, class index), sorted."""
    if not root.is_dir():
        raise DatasetError(f"{root} not found; expected <wnid>/<image> folders")
    wnids = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not wnids:
        raise DatasetError(f"{root}: no class folders")
    files = [
        (f"{wnid}/{path.name}", index)
        for index, wnid in enumerate(wnids)
        for path in sorted((root / wnid).iterdir())
        if path.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not files:
        raise DatasetError(f"{root}: no images in the class folders")
    return wnids, files


def select_subset(
    files: Sequence[tuple[str, int]], n_examples: int | None, seed: int, subset_file: Path | None = None
) -> list[tuple[str, int]]:
    """``n_examples`` of ``files``: the subset file's lines in its order, else a seeded permutation."""
    if subset_file is not None:
        by_name = dict(files)
        wanted = [line.strip() for line in subset_file.read_text().splitlines() if line.strip()]
        missing = [name for name in wanted if name not in by_name]
        if missing:
            raise DatasetError(f"{len(missing)} images of {subset_file} are missing, e.g. {missing[0]}")
        chosen = [(name, by_name[name]) for name in wanted]
    else:
        order = np.random.default_rng(seed).permutation(len(files))
        chosen = [files[i] for i in order]
    return chosen[: n_examples or len(chosen)]


def load_image_folder(
    root: Path,
    n_examples: int | None = 5000,
    preprocessing: Preprocessing = "as-is",
    seed: int = 0,
    subset_file: Path | None = None,
    progress: bool = True,
) -> ImageArrays:
    """Images of one ``<wnid>/*`` folder as uint8 (N, 224, 224, 3) with their class indices."""
    if preprocessing not in PREPROCESSINGS:
        raise DatasetError(f"preprocessing must be one of {PREPROCESSINGS}, got {preprocessing!r}")
    _, files = list_class_folder(root)
    chosen = select_subset(files, n_examples, seed, subset_file)
    images = np.empty((len(chosen), SIDE, SIDE, 3), dtype=np.uint8)
    for row, (name, _) in enumerate(tqdm(chosen, desc=f"read {root.name}", unit="img", disable=not progress)):
        with Image.open(root / name) as opened:
            image = opened.convert("RGB")
        if preprocessing == "resize-crop":
            image = resize_center_crop(image)
        if image.size != (SIDE, SIDE):
            raise DatasetError(
                f"{root / name}: {image.size[0]}x{image.size[1]} pixels; ImageNet-C images are 224x224 "
                "(use preprocessing 'resize-crop' for full-size images)"
            )
        images[row] = np.asarray(image, dtype=np.uint8)
    return ImageArrays(images, np.asarray([label for _, label in chosen], dtype=np.int64))


def load_imagenet_c(
    root: str | Path,
    corruption: str,
    severity: int,
    n_examples: int | None = 5000,
    preprocessing: Preprocessing = "as-is",
    seed: int = 0,
    subset_file: Path | None = None,
    progress: bool = True,
) -> ImageArrays:
    """One domain of ImageNet-C (``root`` may be the ``ImageNet-C`` folder or its parent)."""
    base = Path(root)
    if not (base / corruption).is_dir() and (base / "ImageNet-C" / corruption).is_dir():
        base = base / "ImageNet-C"
    if severity not in (1, 2, 3, 4, 5):
        raise DatasetError(f"severity must be 1..5, got {severity}")
    folder = base / corruption / str(severity)
    if not folder.is_dir():
        raise DatasetError(f"{folder} not found; expected the ImageNet-C layout <corruption>/<severity>/<wnid>/")
    return load_image_folder(folder, n_examples, preprocessing, seed, subset_file, progress)
