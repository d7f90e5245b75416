"""RMT and PETAL: their shared blocks, their artefacts, and what each step computes."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from adapters import ArtefactStore, MissingArtefactError, SourceModel, create_adapter
from adapters.blocks import (
    AugmentConfig,
    fisher_restore_masks,
    gated_teacher_target,
    lower_quantile,
    masked_restore,
    supervised_contrastive,
    use_test_batch_statistics,
)
from adapters.blocks.sharing import shared_view
from adapters.methods.rmt import build_warmup
from tests.conftest import image_batch, make_tiny_source


def reference_supcon(views: torch.Tensor, temperature: float) -> torch.Tensor:
    """SupCon written anchor by anchor, straight from the formula in methods.md 3.5."""
    n, v, _ = views.shape
    flat = [views[i, j] for j in range(v) for i in range(n)]
    losses = []
    for a, anchor in enumerate(flat):
        others = [b for b in range(len(flat)) if b != a]
        denominator = torch.logsumexp(torch.stack([anchor @ flat[b] / temperature for b in others]), 0)
        positives = [b for b in others if b % n == a % n]
        losses.append(-torch.stack([anchor @ flat[p] / temperature - denominator for p in positives]).mean())
    return torch.stack(losses).mean()


def test_supervised_contrastive_matches_the_formula_and_rewards_agreeing_views() -> None:
    views = nn.functional.normalize(torch.randn(5, 3, 8, generator=torch.Generator().manual_seed(0)), dim=2)
    assert supervised_contrastive(views, 0.1) == pytest.approx(float(reference_supcon(views, 0.1)), rel=1e-5)
    agreeing = nn.functional.normalize(views[:, :1].repeat(1, 3, 1) + 0.01 * views, dim=2)
    assert supervised_contrastive(agreeing, 0.1) < supervised_contrastive(views, 0.1)


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


# -- RMT -----------------------------------------------------------------------------------------
def test_rmt_returns_the_pre_update_ensemble_and_then_moves(tiny_source: SourceModel) -> None:
    adapter = create_adapter("rmt", tiny_source)
    reference = shared_view(tiny_source.module)
    use_test_batch_statistics(reference)
    x = image_batch(16)
    with torch.no_grad():
        expected = 2 * reference(x)  # student and teacher both start as the source
    assert torch.allclose(adapter.forward_and_adapt(x), expected, atol=1e-5)
    assert not torch.allclose(adapter.forward_and_adapt(x), expected, atol=1e-4)
    assert set(adapter.diagnostics()) >= {"loss_st", "loss_cont"}


def test_rmt_prototypes_are_the_class_means_of_source_features(tiny_source: SourceModel) -> None:
    prototypes = ArtefactStore(tiny_source).load("rmt_prototypes")["prototypes"]
    images, labels = image_batch(200, seed=99), torch.arange(200) % 10  # the data the fixture built them from
    with torch.no_grad():
        features = tiny_source.module.eval().features(images)
    assert torch.allclose(prototypes[3], features[labels == 3].mean(0), atol=1e-5)


def test_rmt_source_available_variant_needs_and_uses_its_artefacts(tmp_path: object) -> None:
    source = make_tiny_source()
    with pytest.raises(MissingArtefactError, match="rmt_warmup_bs64"):
        create_adapter("rmt", source, {"warmup": True, "warmup_batch_size": 64})
    store = ArtefactStore(source)
    data_images = image_batch(128, seed=5)
    from adapters import SourceData

    warmup = build_warmup(source, SourceData(data_images, torch.arange(128) % 10, "tiny", "x"), 64, samples=256)
    store.save("rmt_warmup_bs64", warmup, {"description": "test"})
    try:
        warm = create_adapter("rmt", source, {"warmup": True, "warmup_batch_size": 64, "lambda_src": 1.0})
        cold = create_adapter("rmt", source)
        assert not torch.equal(warm.student_params[0], cold.student_params[0])
        assert torch.equal(warm.student_params[0], warmup["student.0"])
        assert warm.forward_and_adapt(image_batch(16)).shape == (16, 10)
    finally:
        (store.directory / "rmt_warmup_bs64.safetensors").unlink()  # type: ignore[operator]


# -- PETAL -----------------------------------------------------------------------------------------
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
