"""The BatchNorm-statistics probe (adapters.blocks.bn_shift): moments and KL against torch's own, in fp32 and bf16."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from adapters import SourceModel, create_adapter, get_frozen_forward
from adapters.blocks.bn_shift import BatchNormProbe, channel_moments
from adapters.online import OnlineStream
from tests.conftest import image_batch


@pytest.mark.parametrize(
    "shape, channels_last",
    [((16, 8, 5, 7), False), ((16, 8, 5, 7), True), ((16, 8), False), ((4, 6, 3, 2, 2), False)],
)
def test_channel_moments_match_torchs_per_channel_mean_and_biased_variance(
    shape: tuple[int, ...], channels_last: bool
) -> None:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * 3 + 5
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    dims = [0, *range(2, x.dim())]
    mean, var = channel_moments(x)
    torch.testing.assert_close(mean, x.mean(dims), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(var, x.var(dims, unbiased=False), rtol=1e-5, atol=1e-6)


def test_the_probe_reports_each_layers_gaussian_kl_to_its_running_statistics(bundled_source: SourceModel) -> None:
    probe = BatchNormProbe(bundled_source.module)
    seen: list[Tensor] = []
    handles = [
        layer.register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0].detach().clone()))
        for layer in probe.layers
    ]
    try:
        logits, shifts = probe(image_batch(32, seed=3))
    finally:
        for handle in handles:
            handle.remove()
    assert logits.shape == (32, 10) and shifts.shape == (len(probe.layers),) == (len(seen),)
    for layer, x, shift in zip(probe.layers, seen, shifts, strict=True):
        assert isinstance(layer, nn.modules.batchnorm._BatchNorm)
        assert layer.running_mean is not None and layer.running_var is not None
        dims = [0, *range(2, x.dim())]
        mean, var = x.mean(dims), x.var(dims, unbiased=False) + layer.eps
        source_mean, source_var = layer.running_mean, layer.running_var + layer.eps
        kl = 0.5 * (var / source_var + (mean - source_mean) ** 2 / source_var - 1 + (source_var / var).log())
        torch.testing.assert_close(shift, kl.mean(), rtol=1e-4, atol=1e-6)
    assert float(shifts.min()) > 0  # smooth random images are not the training data


def test_a_bf16_signal_forward_answers_in_fp32_and_measures_nearly_the_same_shift(bundled_source: SourceModel) -> None:
    frozen = get_frozen_forward(bundled_source, "torch")
    streams = {
        precision: OnlineStream(create_adapter("norm", bundled_source), 1, frozen, signal_precision=precision)
        for precision in ("fp32", "bf16")
    }
    batch = image_batch(32, seed=4)
    for stream in streams.values():
        stream.step(batch)
    exact, fast = (torch.tensor(streams[p].last_bn_shift) for p in ("fp32", "bf16"))
    assert exact.shape == fast.shape == (len(streams["fp32"].probe.layers),)  # type: ignore[union-attr]
    assert not torch.equal(exact, fast)  # the forward really ran in bf16
    torch.testing.assert_close(fast, exact, rtol=0.02, atol=1e-3)
    classes = [streams[p].last_source_classes for p in ("fp32", "bf16")]
    assert classes[0] is not None and classes[1] is not None
    assert float((classes[0] == classes[1]).float().mean()) >= 0.9
    signals = streams["bf16"].signals.report()["last_step"]
    assert 0 <= signals["source_agreement"] <= 1 and signals["bn_shift"] > 0
