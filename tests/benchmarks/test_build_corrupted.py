"""Building CIFAR-10-C: official layout, identical from any source format, resumable, seeded."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.cli import main as bench_main
from benchmarks.data.build import build_cifar10c, chunk_generator
from benchmarks.data.cifar10 import CLASSES, DatasetError, ImageArrays, load_cifar10, stratified_holdout
from benchmarks.data.cifar10c import load_cifar10c
from benchmarks.data.corruptions import CIFAR_CORRUPTIONS

CORRUPTIONS = ("gaussian_noise", "zoom_blur", "frost")  # reference order


def _class_sorted_images(per_class: int = 3) -> ImageArrays:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(10 * per_class, 32, 32, 3), dtype=np.uint8)
    return ImageArrays(images, np.repeat(np.arange(10), per_class))


def _write_png_folder(root: Path, arrays: ImageArrays) -> None:
    for index, (image, label) in enumerate(zip(arrays.images, arrays.labels, strict=True)):
        folder = root / "test" / CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{index:04d}.png")
    (root / "train").mkdir()


def _write_python_batches(root: Path, arrays: ImageArrays) -> None:
    root.mkdir(parents=True)
    flat = arrays.images.transpose(0, 3, 1, 2).reshape(len(arrays), -1)
    (root / "test_batch").write_bytes(pickle.dumps({b"data": flat, b"labels": arrays.labels.tolist()}))


def test_folder_and_python_batches_give_identical_arrays(tmp_path: Path) -> None:
    arrays = _class_sorted_images()
    _write_png_folder(tmp_path / "folder", arrays)
    _write_python_batches(tmp_path / "batches", arrays)
    from_folder = load_cifar10(tmp_path / "folder", "test", progress=False)
    from_batches = load_cifar10(tmp_path / "batches", "test", progress=False)
    build_cifar10c(from_folder, tmp_path / "a", CORRUPTIONS, workers=1, progress=False, chunk=7)
    build_cifar10c(from_batches, tmp_path / "b", CORRUPTIONS, workers=2, progress=False, chunk=7)
    for name in (*CORRUPTIONS, "labels", "order"):
        np.testing.assert_array_equal(np.load(tmp_path / "a" / f"{name}.npy"), np.load(tmp_path / "b" / f"{name}.npy"))


def test_layout_rows_follow_the_saved_permutation_and_the_seeded_chunks(tmp_path: Path) -> None:
    arrays = _class_sorted_images()
    manifest = build_cifar10c(arrays, tmp_path, CORRUPTIONS, seed=3, workers=2, progress=False, chunk=7)
    order = np.load(tmp_path / "order.npy")
    assert sorted(order.tolist()) == list(range(30)) and order.tolist() != list(range(30))
    assert np.load(tmp_path / "labels.npy").tolist() == arrays.labels[order].tolist() * 5
    assert manifest["corruptions"] == list(CORRUPTIONS) and manifest["images_built"] == 3 * 5 * 30
    for corruption in CORRUPTIONS:
        read = load_cifar10c(tmp_path, corruption, 4)
        np.testing.assert_array_equal(read.labels, arrays.labels[order])
        rng = chunk_generator(3, corruption, 4, 1)  # rows 7..13 of the severity-4 block
        expected = [CIFAR_CORRUPTIONS[corruption](arrays.images[order[i]], 4, rng) for i in range(7, 14)]
        np.testing.assert_array_equal(read.images[7:14], np.stack(expected))
    # batches are class-mixed although the source is class-sorted
    assert len(set(np.load(tmp_path / "labels.npy")[:10].tolist())) >= 5


def test_interrupted_build_resumes_and_mismatched_settings_are_refused(tmp_path: Path) -> None:
    arrays = _class_sorted_images()
    build_cifar10c(arrays, tmp_path, ("gaussian_noise",), workers=1, progress=False, chunk=7)
    complete = np.load(tmp_path / "gaussian_noise.npy")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["done"] = [key for key in manifest["done"] if not key.startswith("gaussian_noise/2/")]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    partial = np.load(tmp_path / "gaussian_noise.npy", mmap_mode="r+")
    partial[30:60] = 0  # the severity-2 block, as if the build had stopped before it
    partial.flush()
    del partial
    resumed = build_cifar10c(arrays, tmp_path, ("gaussian_noise",), workers=1, progress=False, chunk=7)
    assert resumed["images_built"] == 30
    np.testing.assert_array_equal(np.load(tmp_path / "gaussian_noise.npy"), complete)
    with pytest.raises(DatasetError, match="other source images or settings"):
        build_cifar10c(arrays, tmp_path, ("gaussian_noise",), seed=1, workers=1, progress=False, chunk=7)
    for damaged in ("{", "[1, 2]", "\xff"):  # a build killed mid-write elsewhere, or a foreign file
        (tmp_path / "manifest.json").write_bytes(damaged.encode("latin-1"))
        with pytest.raises(DatasetError, match=r"manifest\.json"):
            build_cifar10c(arrays, tmp_path, ("gaussian_noise",), workers=1, progress=False, chunk=7)


def test_cli_builds_from_a_data_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write_png_folder(tmp_path / "cifar", _class_sorted_images(per_class=1))
    out = tmp_path / "c10c"
    args = ["--corruptions", "spatter,pixelate", "--workers", "1"]
    bench_main(["make-cifar10c", "--data", str(tmp_path / "cifar"), "--out", str(out), *args])
    summary = json.loads(capsys.readouterr().out)
    assert summary["corruptions"] == ["pixelate", "spatter"] and summary["seconds"] >= 0
    assert np.load(out / "spatter.npy").shape == (50, 32, 32, 3)  # one default-size chunk per severity
    with pytest.raises(SystemExit, match="tta-bench make-cifar10c: unknown corruptions"):
        bench_main(["make-cifar10c", "--data", str(tmp_path / "cifar"), "--out", str(out), "--corruptions", "haze"])


def test_cli_builds_a_validation_stream_from_the_models_held_out_train_images(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--split holdout``: the bundled model's 200 held-out train images per class, in the same layout."""
    rng = np.random.default_rng(3)
    train = ImageArrays(rng.integers(0, 256, size=(2500, 32, 32, 3), dtype=np.uint8), np.arange(2500) % 10)
    _write_png_folder(tmp_path / "cifar", _class_sorted_images(per_class=1))
    for index, (image, label) in enumerate(zip(train.images, train.labels, strict=True)):
        folder = tmp_path / "cifar" / "train" / CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{index:04d}.png")
    out = tmp_path / "val"
    args = ["--corruptions", "pixelate", "--workers", "1", "--split", "holdout", "--no-shuffle"]
    bench_main(["make-cifar10c", "--data", str(tmp_path / "cifar"), "--out", str(out), *args])
    assert json.loads(capsys.readouterr().out)["split"] == "holdout"  # also in the manifest: reports say so
    clean = load_cifar10(tmp_path / "cifar", "train")
    _, held_out = stratified_holdout(clean.labels, 200, 0)  # the bundled model's metadata: 200/class, seed 0
    assert np.array_equal(np.load(out / "labels.npy"), np.tile(clean.labels[held_out], 5))
    assert np.load(out / "pixelate.npy").shape == (5 * 2000, 32, 32, 3)
    direct = build_cifar10c(
        ImageArrays(clean.images[held_out], clean.labels[held_out]),
        tmp_path / "direct",
        ("pixelate",),
        shuffle=False,
        workers=1,
        progress=False,
    )
    assert direct["fingerprint"] == json.loads((out / "manifest.json").read_text())["fingerprint"]
    assert np.array_equal(np.load(out / "pixelate.npy"), np.load(tmp_path / "direct" / "pixelate.npy"))
