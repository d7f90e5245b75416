"""Compute precision: bf16 steps agree with fp32 on real images; ``auto`` resolves by device."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from adapters import SourceModel, create_adapter, list_adapters
from adapters.precision import native_bf16, resolve_precision
from benchmarks.data.cifar10 import load_cifar10
from benchmarks.data.corruptions.functions import gaussian_noise
from tests.helpers import FEWER_VIEWS

# per batch of real images, bf16 against fp32 from the same start: adapted models drift apart
# a little with every step, so these bound the effect; equal error on a whole CIFAR-10-C stream is
# the adapter-speed benchmark's equal-error replay
# 50 images a batch: on a CPU without native bf16 (AVX2) a bf16 step is 10-20x slower than fp32,
# and with 100 images CoTTA, PETAL, RMT and ViDA alone took 4 1/2 minutes of the suite there
IMAGES = 50
BF16_VIEWS = {"cotta": {"n_augmentations": 4}, "petal": {"n_augmentations": 4}}  # fewer augmented views, same code
AGREEMENT_FLOOR = 0.85
# correct answers on the true labels may differ by 2 of the 50 images (4 %); counted as integers,
# since 0.20 - 0.16 in float32 is 0.040000006 > 0.04
ACCURACY_TOLERANCE_IMAGES = 2
PROBABILITY_TOLERANCE = 0.05  # mean absolute difference of the softmax outputs


@pytest.fixture(scope="module")
def real_batches(shared_cifar10: Path) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two batches of real test images: clean, then gaussian noise (severity 3: a shift)."""
    test = load_cifar10(shared_cifar10, "test")
    images, labels = test.images[: 2 * IMAGES], torch.from_numpy(test.labels[: 2 * IMAGES]).long()
    rng = np.random.default_rng(0)
    noisy = np.stack([gaussian_noise(image, 3, rng) for image in images[IMAGES:]])
    batches = [torch.from_numpy(x).permute(0, 3, 1, 2).float().div(255) for x in (images[:IMAGES], noisy)]
    return [(batches[0], labels[:IMAGES]), (batches[1], labels[IMAGES:])]


@pytest.mark.parametrize("name", list_adapters())
def test_bf16_steps_agree_with_fp32_on_real_images(
    name: str, bundled_source: SourceModel, real_batches: list[tuple[torch.Tensor, torch.Tensor]]
) -> None:
    config = {**FEWER_VIEWS.get(name, {}), **BF16_VIEWS.get(name, {})}
    exact = create_adapter(name, bundled_source, {**config, "precision": "fp32"})
    fast = create_adapter(name, bundled_source, {**config, "precision": "bf16"})
    assert (exact.precision, fast.precision) == ("fp32", "bf16")
    for x, labels in real_batches:
        want, got = exact.forward_and_adapt(x), fast.forward_and_adapt(x)
        assert got.dtype == torch.float32 and torch.isfinite(got).all()
        agreement = float((got.argmax(1) == want.argmax(1)).float().mean())
        assert agreement >= AGREEMENT_FLOOR, f"{name}: {agreement:.3f} argmax agreement"
        correct = [int((logits.argmax(1) == labels).sum()) for logits in (want, got)]
        assert abs(correct[0] - correct[1]) <= ACCURACY_TOLERANCE_IMAGES, f"{name}: correct of {IMAGES}: {correct}"
        assert float((got.softmax(1) - want.softmax(1)).abs().mean()) < PROBABILITY_TOLERANCE
    assert fast.state_is_finite()
    assert all(t.dtype == torch.float32 for t in fast._state_tensors().values() if t.is_floating_point())


def test_auto_takes_the_adapters_preference_only_where_bf16_is_native() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu, {"cpu": "bf16"}) == "fp32"
    assert resolve_precision("bf16", cpu, {}) == "bf16"  # an explicit choice is kept
    assert resolve_precision("auto", cpu, {}) == "fp32"  # no measured preference: exact
    assert resolve_precision("auto", cpu, {"cpu": "bf16"}) == ("bf16" if native_bf16(cpu) else "fp32")
    assert resolve_precision("auto", torch.device("meta"), {"meta": "bf16"}) == "fp32"


def test_a_snapshot_from_before_the_precision_option_still_loads(tiny_source: SourceModel) -> None:
    adapter = create_adapter("tent", tiny_source)
    adapter.forward_and_adapt(torch.rand(8, 3, 32, 32))
    state = adapter.state_dict()
    del state["config"]["precision"]  # as written by a release without the option
    restored = create_adapter("tent", tiny_source)
    restored.load_state_dict(state)
    assert restored.steps == 1
