"""CIFAR-10 readers: JPEG folders, tarballs, python batches; decoded once and cached."""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.data.cifar10 import CLASSES, DatasetError, load_cifar10, stratified_holdout


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def _write_folder(root: Path, per_class: int) -> dict[str, np.ndarray]:
    written = {}
    for split in ("train", "test"):
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i, image in enumerate(_images(per_class, label)):
                Image.fromarray(image).save(folder / f"{i:04d}.png")  # lossless, so pixels can be compared
                written[f"{split}/{name}/{i}"] = image
    return written


def test_jpeg_folder_layout_is_read_in_class_order(tmp_path: Path) -> None:
    written = _write_folder(tmp_path / "cifar", per_class=2)
    arrays = load_cifar10(tmp_path / "cifar", "test", cache_dir=tmp_path / "cache", progress=False)
    assert arrays.images.shape == (20, 32, 32, 3) and arrays.images.dtype == np.uint8
    assert arrays.labels.tolist() == [c for c in range(10) for _ in range(2)]
    np.testing.assert_array_equal(arrays.images[3], written[f"test/{CLASSES[1]}/1"])


def test_tarball_matches_folder_and_is_cached(tmp_path: Path) -> None:
    _write_folder(tmp_path / "cifar", per_class=1)
    tarball = tmp_path / "cifar.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        for split in ("train", "test"):
            archive.add(tmp_path / "cifar" / split, arcname=f"cifar10/{split}")
    cache = tmp_path / "cache"
    from_tar = load_cifar10(tarball, "train", cache_dir=cache, progress=False)
    from_dir = load_cifar10(tmp_path / "cifar", "train", cache_dir=cache, progress=False)
    np.testing.assert_array_equal(from_tar.images, from_dir.images)
    assert len(list((cache / "datasets").glob("*-images.npy"))) == 2
    again = load_cifar10(tarball, "train", cache_dir=cache, progress=False)
    np.testing.assert_array_equal(again.labels, from_tar.labels)


def test_python_batches_are_read(tmp_path: Path) -> None:
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    data = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = _images(4, len(data))
        labels = list(range(4))
        flat = images.transpose(0, 3, 1, 2).reshape(4, -1)
        (root / name).write_bytes(pickle.dumps({b"data": flat, b"labels": labels, b"batch_label": b"x"}))
        data[name] = images
    test = load_cifar10(tmp_path, "test", cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(test.images, data["test_batch"])
    assert len(load_cifar10(tmp_path, "train", cache_dir=tmp_path / "cache")) == 20


def test_batch_files_cannot_run_code(tmp_path: Path) -> None:
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()

    class Exploit:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (print, ("pwned",))

    (root / "test_batch").write_bytes(pickle.dumps({b"data": Exploit(), b"labels": []}))
    with pytest.raises(DatasetError, match=r"refusing to unpickle builtins\.print"):
        load_cifar10(tmp_path, "test", cache_dir=tmp_path / "cache")


def test_missing_or_wrong_data_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_cifar10(tmp_path / "absent", "test")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no CIFAR-10 found"):
        load_cifar10(tmp_path / "empty", "test")
    bad = tmp_path / "bad" / "test" / "unicorn"
    bad.mkdir(parents=True)
    (tmp_path / "bad" / "train").mkdir()
    Image.fromarray(_images(1, 0)[0]).save(bad / "0.png")
    with pytest.raises(DatasetError, match="unknown class folder 'unicorn'"):
        load_cifar10(tmp_path / "bad", "test", cache_dir=tmp_path / "cache", progress=False)


def test_stratified_holdout_is_balanced_and_deterministic() -> None:
    labels = np.repeat(np.arange(10), 50)
    train, holdout = stratified_holdout(labels, 5, seed=0)
    assert np.bincount(labels[holdout]).tolist() == [5] * 10
    assert not set(train) & set(holdout) and len(train) + len(holdout) == 500
    assert np.array_equal(holdout, stratified_holdout(labels, 5, seed=0)[1])


def test_shared_copy_has_the_documented_shape(shared_cifar10: Path) -> None:
    test = load_cifar10(shared_cifar10, "test")
    assert test.images.shape == (10_000, 32, 32, 3)
    assert np.bincount(test.labels).tolist() == [1000] * 10
    # JPEG stats from the data README: test mean about (0.494, 0.485, 0.450).
    np.testing.assert_allclose(test.images.reshape(-1, 3).mean(0) / 255, (0.4941, 0.4851, 0.4504), atol=2e-3)
