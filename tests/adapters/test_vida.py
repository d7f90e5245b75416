"""ViDA: the cold start, the per-image branch scales, the uncertainty modes, what trains."""

from __future__ import annotations

import pytest
import torch

from adapters import AdapterError, SourceModel, create_adapter
from adapters.blocks import shared_view, use_test_batch_statistics
from tests.conftest import image_batch


def test_cold_vida_starts_equal_to_the_source(tiny_source: SourceModel) -> None:
    adapter = create_adapter("vida", tiny_source, {"warmup": False, "precision": "fp32"})
    reference = shared_view(tiny_source.module)
    use_test_batch_statistics(reference)
    x = image_batch(16)
    with torch.no_grad():
        expected = reference(x)
    assert torch.allclose(adapter.forward_and_adapt(x), expected, atol=1e-5)


def test_vida_sets_both_branch_scales_per_image(tiny_source: SourceModel) -> None:
    adapter = create_adapter("vida", tiny_source, {"threshold": 0.0})
    adapter.forward_and_adapt(image_batch(16))
    for layer in adapter.student_layers + adapter.teacher_layers:
        high, low = layer.scale_high, layer.scale_low
        assert isinstance(high, torch.Tensor) and high.shape == (16,)
        assert isinstance(low, torch.Tensor) and torch.allclose(high + low, torch.full((16,), 2.0))
        assert bool((high > 1).any())  # uncertainty above Theta = 0 moves the high-rank scale off 1
    assert adapter.diagnostics()["high_rank_share"] == 1.0


def test_vida_augmentation_uncertainty_is_one_scalar(tiny_source: SourceModel) -> None:
    adapter = create_adapter("vida", tiny_source, {"uncertainty": "augmentation", "n_passes": 3})
    adapter.forward_and_adapt(image_batch(16))
    assert isinstance(adapter.student_layers[0].scale_low, torch.Tensor)
    assert adapter.student_layers[0].scale_low.dim() == 0


def test_vida_trains_adapters_only_by_default(tiny_source: SourceModel) -> None:
    adapter = create_adapter("vida", tiny_source)
    adapter.forward_and_adapt(image_batch(16))
    roles = {k.split(".")[0] for k in adapter.state_dict()["tensors"]}
    assert roles == {"student", "teacher", "optim"}
    everything = create_adapter("vida", tiny_source, {"train": "all"})
    everything.forward_and_adapt(image_batch(16))
    assert {"student_backbone", "teacher_backbone"} <= {k.split(".")[0] for k in everything.state_dict()["tensors"]}


def test_vida_custom_layers_need_an_explicit_cold_start(tiny_source: SourceModel) -> None:
    layers = ["net.stages.1.blocks.1.conv"]
    with pytest.raises(AdapterError, match="warmup=false"):
        create_adapter("vida", tiny_source, {"layers": layers})
    assert create_adapter("vida", tiny_source, {"layers": layers, "warmup": False}).forward_and_adapt(
        image_batch(16)
    ).shape == (16, 10)
