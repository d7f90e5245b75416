"""Shared fixtures: a tiny real model, the bundled model, the shared CIFAR-10 copy."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
import torch

from adapters import Preprocessing, SourceData, SourceModel, create_source_model, prepare_artefacts
from adapters.models.airbench import AirbenchNet
from adapters.source_model import NormalizedModel, state_sha256
from benchmarks.data.cifar10 import find_shared_cifar10

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    # Keep decoded data and ONNX exports of the test run out of the user's cache, but reuse the
    # decoded CIFAR-10 cache across tests.
    os.environ.setdefault("TTA_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    torch.set_num_threads(min(2, os.cpu_count() or 1))


TINY_ARTEFACTS = ("rmt_prototypes", "petal_swag", "source_replay_bank", "ecotta_warmup", "vida_warmup")


@functools.cache
def tiny_artefact_dir() -> Path:
    """The source artefacts of the seed-0 tiny model (the adapters' required ones), built once per
    test session from 200 smooth random images."""
    directory = Path(os.environ["TTA_CACHE_DIR"]) / "tiny-artefacts"
    source = make_tiny_source(with_artefacts=False)
    source.artefact_dir = directory
    images = image_batch(200, seed=99)
    data = SourceData(images, torch.arange(200) % 10, "smooth random images", "tiny")
    prepare_artefacts(source, {"train": data, "holdout": data}, TINY_ARTEFACTS)
    return directory


def make_tiny_source(seed: int = 0, name: str = "tiny", with_artefacts: bool = True) -> SourceModel:
    """A small airbench net with random weights and non-trivial BN statistics; the seed-0 model
    comes with its source artefacts."""
    torch.manual_seed(seed)
    net = AirbenchNet(num_classes=10, widths=(8, 16, 16), depth=3)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.8, 1.2)
            module.bias.data.uniform_(-0.1, 0.1)
    preprocessing = Preprocessing(input_size=(32, 32), mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26))
    source = SourceModel(
        name=name,
        module=NormalizedModel(net, preprocessing),
        preprocessing=preprocessing,
        class_names=tuple(f"class{i}" for i in range(10)),
        weights_sha256=state_sha256(net.state_dict()),
    )
    if with_artefacts and seed == 0 and name == "tiny":
        source.artefact_dir = tiny_artefact_dir()
    return source


@pytest.fixture
def tiny_source() -> SourceModel:
    return make_tiny_source()


@pytest.fixture(scope="session")
def bundled_source() -> SourceModel:
    return create_source_model()


@pytest.fixture(scope="session")
def shared_cifar10() -> Path:
    path = find_shared_cifar10(REPO)
    if path is None:
        pytest.skip("../shared/data/cifar10-jpeg.tar.gz not found beside the repository (set TTA_SHARED_DATA)")
    return path


def image_batch(n: int, seed: int = 0) -> torch.Tensor:
    """Smooth random images in [0, 1] (not white noise, so BN statistics are image-like)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 8, 8, generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=False).clamp(0, 1)
