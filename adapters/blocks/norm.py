"""Test-batch BatchNorm configuration."""

from __future__ import annotations

from torch import nn


def test_batch_norm_layers(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def use_test_batch_statistics(view: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Make every BatchNorm of ``view`` normalise with the current batch's statistics.

    Drops the running statistics from the view (the shared source buffers are untouched), so the
    layers use the batch mean and biased variance in train and eval mode alike. The rest of the
    network stays in eval mode (no dropout), as in the reference implementations.
    """
    view.eval()
    layers = test_batch_norm_layers(view)
    if not layers:
        raise ValueError(f"{type(view).__name__} has no BatchNorm layers; test-batch normalisation needs them")
    for layer in layers:
        layer.track_running_stats = False
        layer.running_mean = None
        layer.running_var = None
        layer.num_batches_tracked = None
    return layers
