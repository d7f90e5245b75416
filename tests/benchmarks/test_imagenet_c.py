"""ImageNet-C: the official folder layout, fixed subsets, both preprocessings, and the builder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.cli import main as bench_main
from benchmarks.data.build import build_imagenet_c
from benchmarks.data.cifar10 import DatasetError
from benchmarks.data.imagenet_c import load_image_folder, load_imagenet_c, resize_center_crop

WNIDS = ("n01440764", "n01443537", "n02102040")


def _photo(seed: int, size: tuple[int, int]) -> Image.Image:
    """A smooth random picture (JPEG-friendly), ``size`` = (width, height)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)


@pytest.fixture(scope="module")
def val_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ImageNet-style validation folder: 3 classes x 2 full-size images."""
    root = tmp_path_factory.mktemp("val")
    for c, wnid in enumerate(WNIDS):
        (root / wnid).mkdir()
        for i in range(2):
            _photo(10 * c + i, (300 + 20 * i, 260)).save(root / wnid / f"ILSVRC2012_val_{10 * c + i:08d}.JPEG")
    return root


@pytest.fixture(scope="module")
def imagenet_c(val_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("imagenet-c") / "ImageNet-C"
    build_imagenet_c(val_folder, out, ("gaussian_noise", "frost"), (1, 5), workers=2, progress=False, chunk=4)
    return out


def test_builder_writes_the_official_layout(imagenet_c: Path, val_folder: Path) -> None:
    for corruption in ("gaussian_noise", "frost"):
        for severity in (1, 5):
            files = sorted((imagenet_c / corruption / str(severity)).rglob("*.JPEG"))
            assert [f.relative_to(imagenet_c / corruption / str(severity)).parts[0] for f in files] == [
                w for w in WNIDS for _ in range(2)
            ]
            with Image.open(files[0]) as image:
                assert image.size == (224, 224) and image.format == "JPEG"
    manifest = json.loads((imagenet_c / "manifest.json").read_text())
    assert manifest["images_per_domain"] == 6 and manifest["constants"] == "imagenet"
    # severity 5 destroys more than severity 1
    with Image.open(next(val_folder.rglob("*.JPEG"))) as clean_image:
        clean = np.asarray(resize_center_crop(clean_image.convert("RGB")), dtype=float)
    first = sorted((imagenet_c / "gaussian_noise" / "1").rglob("*.JPEG"))[0]
    last = sorted((imagenet_c / "gaussian_noise" / "5").rglob("*.JPEG"))[0]
    assert (
        np.abs(np.asarray(Image.open(last), float) - clean).mean()
        > np.abs(np.asarray(Image.open(first), float) - clean).mean()
    )


def test_builder_is_seeded_and_independent_of_workers(imagenet_c: Path, val_folder: Path, tmp_path: Path) -> None:
    build_imagenet_c(val_folder, tmp_path, ("gaussian_noise",), (5,), workers=1, progress=False)
    for path in sorted((tmp_path / "gaussian_noise" / "5").rglob("*.JPEG")):
        twin = imagenet_c / "gaussian_noise" / "5" / path.relative_to(tmp_path / "gaussian_noise" / "5")
        assert path.read_bytes() == twin.read_bytes()


def test_reader_labels_subsets_and_preprocessing(imagenet_c: Path, tmp_path: Path) -> None:
    full = load_imagenet_c(imagenet_c, "frost", 5, n_examples=None, progress=False)
    assert full.images.shape == (6, 224, 224, 3) and sorted(full.labels.tolist()) == [0, 0, 1, 1, 2, 2]
    subset = load_imagenet_c(imagenet_c.parent, "frost", 5, n_examples=4, seed=1, progress=False)
    again = load_imagenet_c(imagenet_c, "frost", 5, n_examples=4, seed=1, progress=False)
    np.testing.assert_array_equal(subset.images, again.images)
    assert len(subset) == 4
    ids = tmp_path / "ids.txt"
    ids.write_text(f"{WNIDS[2]}/ILSVRC2012_val_00000021.JPEG\n{WNIDS[0]}/ILSVRC2012_val_00000000.JPEG")
    listed = load_imagenet_c(imagenet_c, "frost", 5, n_examples=None, subset_file=ids, progress=False)
    assert listed.labels.tolist() == [2, 0]


def test_resize_crop_for_full_size_folders_and_clear_errors(val_folder: Path, imagenet_c: Path) -> None:
    with pytest.raises(DatasetError, match="resize-crop"):
        load_image_folder(val_folder, n_examples=2, progress=False)
    cropped = load_image_folder(val_folder, n_examples=2, preprocessing="resize-crop", progress=False)
    assert cropped.images.shape == (2, 224, 224, 3)
    with pytest.raises(DatasetError, match="ImageNet-C layout"):
        load_imagenet_c(imagenet_c, "snow", 5)
    with pytest.raises(DatasetError, match="severity"):
        load_imagenet_c(imagenet_c, "frost", 6)


def test_cli_builds_imagenet_c(val_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    options = ["--corruptions", "contrast", "--severities", "2", "--workers", "1"]
    bench_main(["make-imagenet-c", "--data", str(val_folder), "--out", str(tmp_path), *options])
    assert json.loads(capsys.readouterr().out)["corruptions"] == ["contrast"]
    assert len(list((tmp_path / "contrast" / "2").rglob("*.JPEG"))) == 6
