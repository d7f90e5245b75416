"""RMT: its SupCon loss, its prototypes artefact, its warm-up variant and what a step computes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adapters import ArtefactStore, MissingArtefactError, SourceModel, create_adapter
from adapters.blocks import (
    supervised_contrastive,
    use_test_batch_statistics,
)
from adapters.blocks.sharing import shared_view
from adapters.methods.rmt import build_warmup
from tests.conftest import image_batch, make_tiny_source


def reference_supcon(views: torch.Tensor, temperature: float) -> torch.Tensor:
    """SupCon written anchor by anchor, straight from its formula (Khosla et al., 2020)."""
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


def test_rmt_returns_the_pre_update_ensemble_and_then_moves(tiny_source: SourceModel) -> None:
    adapter = create_adapter("rmt", tiny_source, {"precision": "fp32"})  # exact: compared with fp32
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
