"""PETAL (and the CoTTA gate and restores it shares): the Fisher quantile, the SWA prior and what a step restores."""

from __future__ import annotations

import math

import pytest
import torch

from adapters import ArtefactStore, SourceModel, create_adapter
from adapters.blocks import (
    AugmentConfig,
    fisher_restore_masks,
    gated_teacher_target,
    lower_quantile,
    masked_restore,
    use_test_batch_statistics,
)
from adapters.blocks.sharing import shared_view
from tests.conftest import image_batch, make_tiny_source


@pytest.mark.parametrize("q", [0.0, 0.03, 0.5, 0.999, 1.0])
@pytest.mark.parametrize("size", [1, 2, 1001])
def test_lower_quantile_equals_torch_quantile(q: float, size: int) -> None:
    values = torch.randn(size, generator=torch.Generator().manual_seed(size))
    assert float(lower_quantile(values, q)) == pytest.approx(float(torch.quantile(values, q)), abs=1e-6)


def test_fisher_mask_picks_exactly_the_lowest_quantile_elements() -> None:
    generator = torch.Generator().manual_seed(0)
    gradients = [torch.randn(40, 30, generator=generator), torch.randn(500, generator=generator)]
    masks = fisher_restore_masks(gradients, 0.03)
    fisher = torch.cat([g.square().reshape(-1) for g in gradients])
    picked = torch.cat([m.reshape(-1) for m in masks])
    assert int(picked.sum()) == math.floor(0.03 * (fisher.numel() - 1)) + 1  # distinct values: floor(pos) + 1
    assert fisher[picked].max() < fisher[~picked].min()
    params = [torch.ones(40, 30), torch.ones(500)]
    restored = masked_restore(params, [torch.zeros(40, 30), torch.zeros(500)], masks)
    assert restored == int(picked.sum()) and int(sum((p == 0).sum() for p in params)) == restored


def test_gate_uses_the_teacher_on_x_when_confident_and_averages_views_otherwise() -> None:
    source = make_tiny_source()
    model = shared_view(source.module)
    use_test_batch_statistics(model)
    x = image_batch(8)
    with torch.no_grad():
        plain = model(x)
    confident = gated_teacher_target(model, model, x, 0.0, 4, torch.Generator().manual_seed(0), AugmentConfig())
    assert not confident.augmented and torch.equal(confident.logits, plain)
    unsure = gated_teacher_target(model, model, x, 1.0, 4, torch.Generator().manual_seed(0), AugmentConfig())
    assert unsure.augmented and not torch.allclose(unsure.logits, plain)
    assert unsure.anchor_confidence == confident.anchor_confidence


def test_petal_starts_from_the_swa_mean_and_shares_it(tiny_source: SourceModel) -> None:
    swag = ArtefactStore(tiny_source).load("petal_swag")
    first, second = create_adapter("petal", tiny_source), create_adapter("petal", tiny_source)
    name = next(n for n, _ in tiny_source.module.named_parameters())
    assert torch.equal(first.student_params[0], swag[f"mean.{name}"])
    assert first.means[0] is second.means[0] and first.anchor is second.anchor
    assert all(bool((swag[k] >= 0).all()) for k in swag if k.startswith("variance."))


@pytest.mark.parametrize(("restore", "fraction"), [("fim", 0.03), ("sres", 0.01)])
def test_petal_restores_the_configured_fraction(tiny_source: SourceModel, restore: str, fraction: float) -> None:
    adapter = create_adapter("petal", tiny_source, {"restore": restore})
    for seed in range(3):
        adapter.forward_and_adapt(image_batch(16, seed))
    assert adapter.diagnostics()["restored"] == pytest.approx(fraction, abs=0.004)


def test_petal_prior_pulls_towards_the_mean(tiny_source: SourceModel) -> None:
    adapter = create_adapter("petal", tiny_source, {"prior_weight": 1.0})
    with torch.no_grad():
        adapter.student_params[0].add_(0.1)
    adapter._prior().backward()
    gradient = adapter.student_params[0].grad
    assert gradient is not None and bool((gradient > 0).all())  # descent moves back towards mu
