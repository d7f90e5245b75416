"""EcoTTA: its warm-up artefact, what trains, its memory-minded state; the state bound of EcoTTA and ViDA."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from adapters import AdapterError, ArtefactStore, MissingArtefactError, SourceModel, create_adapter
from adapters.blocks import shared_view, use_test_batch_statistics
from tests.conftest import image_batch


def test_unwarmed_adapters_are_refused_with_the_build_command(tiny_source: SourceModel, tmp_path: Path) -> None:
    bare = dataclasses.replace(tiny_source, artefact_dir=tmp_path, cache={})
    for name, artefact in (("ecotta", "ecotta_warmup"), ("vida", "vida_warmup")):
        with pytest.raises(MissingArtefactError, match=rf"{artefact}.*tta-bench prepare"):
            create_adapter(name, bare)


def test_ecotta_starts_from_the_warmed_meta_networks_and_trains_only_them(tiny_source: SourceModel) -> None:
    warm = ArtefactStore(tiny_source).load("ecotta_warmup")
    adapter = create_adapter("ecotta", tiny_source)
    assert torch.equal(adapter.meta_params[0].detach(), warm["meta.0.norm.weight"])
    before = [p.detach().clone() for p in adapter.meta_params]
    adapter.forward_and_adapt(image_batch(32))
    assert any(not torch.equal(b, p) for b, p in zip(before, adapter.meta_params, strict=True))
    state = adapter.state_dict()["tensors"]
    assert {k.split(".")[0] for k in state} == {"meta", "optim"}
    assert 0.0 <= adapter.diagnostics()["kept_fraction"] <= 1.0 and adapter.diagnostics()["regulariser"] >= 0


def test_ecotta_parameter_distance_is_measured_from_the_warm_up(tiny_source: SourceModel) -> None:
    adapter = create_adapter("ecotta", tiny_source, {"optimizer": {"lr": 0.05}})
    assert adapter.parameter_distance() == 0.0  # a stream starts at the warm-up
    adapter.forward_and_adapt(image_batch(32, seed=1))
    first = adapter.parameter_distance()
    adapter.forward_and_adapt(image_batch(32, seed=2))
    second = adapter.parameter_distance()
    assert first is not None and second is not None and 0 < first < second
    warm = ArtefactStore(tiny_source).load("ecotta_warmup")
    assert not torch.equal(adapter.meta_params[0].detach(), warm["meta.0.norm.weight"])
    adapter.reset()  # back to the warm-up, and the artefact the distance is measured from is untouched
    assert adapter.parameter_distance() == 0.0
    assert torch.equal(adapter.meta_params[0].detach(), warm["meta.0.norm.weight"])


def test_source_aligned_init_makes_the_meta_networks_the_identity_on_source_batches(tiny_source: SourceModel) -> None:
    from adapters.models.ecotta_network import EcottaNetwork, build_meta_networks, source_aligned_init

    frozen = shared_view(tiny_source.module)
    use_test_batch_statistics(frozen)
    metas = build_meta_networks(frozen.net, 4, 1)
    use_test_batch_statistics(metas)
    model = EcottaNetwork(frozen, metas, 4)
    x = image_batch(48)
    reference = create_adapter("norm", tiny_source, {"precision": "fp32"}).predict(x)
    assert not torch.allclose(model(x), reference, atol=1e-2)  # torch's default init is not the identity
    source_aligned_init(model, x, batch_size=48, branch_scale=0.0)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference, atol=1e-4, rtol=1e-4)
    source_aligned_init(model, x, batch_size=48)  # the default keeps the conv branch small but trainable
    logits = model(x)
    logits.logsumexp(1).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in metas.parameters())


def test_ecotta_entropy_filter_drops_uncertain_samples(tiny_source: SourceModel) -> None:
    strict = create_adapter("ecotta", tiny_source, {"entropy_margin": 1e-6, "reg_weight": 0.0})
    before = [p.detach().clone() for p in strict.meta_params]
    strict.forward_and_adapt(image_batch(32))
    assert strict.diagnostics()["kept_fraction"] == 0.0
    assert all(torch.equal(b, p) for b, p in zip(before, strict.meta_params, strict=True))  # no signal, no step


def test_ecotta_rejects_unknown_partitions_and_names_other_warmups(tiny_source: SourceModel) -> None:
    with pytest.raises(AdapterError, match="partitions"):
        create_adapter("ecotta", tiny_source, {"partitions": 7})
    with pytest.raises(MissingArtefactError, match="--artefacts ecotta_warmup_k5_conv3"):
        create_adapter("ecotta", tiny_source, {"partitions": 5, "kernel_size": 3})


@pytest.mark.parametrize("name", ["ecotta", "vida"])
def test_bundled_per_stream_state_is_under_ten_percent_of_the_model(bundled_source: SourceModel, name: str) -> None:
    adapter = create_adapter(name, bundled_source)
    adapter.forward_and_adapt(image_batch(16))  # optimizer moments exist after a step
    model_bytes = sum(t.numel() * t.element_size() for t in bundled_source.module.state_dict().values())
    assert adapter.state_bytes() <= 0.10 * model_bytes


def test_ecotta_keeps_no_activations_of_the_frozen_path(tiny_source: SourceModel) -> None:
    """Measured, not read off the code: the profiler's memory timeline of one step."""
    from adapters.memory import step_memory

    x = image_batch(64)
    peaks = {}
    for label, name, config in (
        ("ecotta", "ecotta", {}),
        ("ecotta through frozen", "ecotta", {"backprop_frozen": True}),
    ):
        adapter = create_adapter(name, tiny_source, config)
        adapter.forward_and_adapt(x)  # optimizer state exists before measuring
        peaks[label] = step_memory(adapter, x)["step_peak_bytes"]
    # (on this tiny net the whitening stem's output, which the first meta conv needs, dominates;
    # the bundled model's figures are in benchmarks/results/adapter_speed.md)
    assert peaks["ecotta"] < peaks["ecotta through frozen"]
