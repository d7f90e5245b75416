"""Behaviour of the baselines against their definitions (docs/adapters.md)."""

from __future__ import annotations

import torch

from adapters import SourceModel, create_adapter
from adapters.blocks import entropy
from tests.conftest import image_batch


def test_source_is_the_frozen_model_in_eval_mode(tiny_source: SourceModel) -> None:
    x = image_batch(8)
    with torch.no_grad():
        expected = tiny_source.module.eval()(x)
    torch.testing.assert_close(
        create_adapter("source", tiny_source, {"backend": "torch", "precision": "fp32"}).forward_and_adapt(x), expected
    )


def test_norm_uses_batch_statistics_and_alpha_zero_is_the_source(tiny_source: SourceModel) -> None:
    x = image_batch(8)
    exact = {"precision": "fp32"}  # compared to 1e-5
    source_logits = create_adapter("source", tiny_source, {"backend": "torch", **exact}).forward_and_adapt(x)
    batch_logits = create_adapter("norm", tiny_source, exact).forward_and_adapt(x)
    mixed = create_adapter("norm", tiny_source, {"alpha": 0.0, **exact}).forward_and_adapt(x)
    half = create_adapter("norm", tiny_source, {"alpha": 0.5, **exact}).forward_and_adapt(x)
    torch.testing.assert_close(mixed, source_logits, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(batch_logits, source_logits, atol=1e-3)
    assert not torch.allclose(half, batch_logits, atol=1e-3) and not torch.allclose(half, source_logits, atol=1e-3)
    # Batch statistics: an image's prediction depends on its batch-mates.
    alone = create_adapter("norm", tiny_source).forward_and_adapt(x[:4])
    assert not torch.allclose(alone, batch_logits[:4], atol=1e-4)


def test_tent_returns_the_pre_update_prediction_then_lowers_entropy(tiny_source: SourceModel) -> None:
    x = image_batch(64)
    tent = create_adapter("tent", tiny_source, {"optimizer": {"lr": 1e-2}})
    first = tent.forward_and_adapt(x)
    torch.testing.assert_close(first, create_adapter("norm", tiny_source).forward_and_adapt(x))
    after = tent.predict(x)
    assert entropy(after).mean() < entropy(first).mean()
    assert tent.diagnostics()["entropy_loss"] > 0 and tent.steps == 1


def test_tent_trains_only_batchnorm_affine_parameters(tiny_source: SourceModel) -> None:
    tent = create_adapter("tent", tiny_source)
    bn_params = sum(
        m.weight.numel() + m.bias.numel() for m in tiny_source.module.modules() if isinstance(m, torch.nn.BatchNorm2d)
    )
    assert sum(p.numel() for p in tent.affine) == bn_params  # type: ignore[attr-defined]
    tent.forward_and_adapt(image_batch(16))
    # Adam keeps two moments and a step per parameter tensor: state = 3x the affine values + steps.
    assert tent.state_bytes() == 3 * bn_params * 4 + len(tent.affine) * 4  # type: ignore[attr-defined]
