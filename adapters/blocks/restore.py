"""Stochastic restore towards the source weights (CoTTA)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


@torch.no_grad()
def stochastic_restore(params: Sequence[Tensor], source: Sequence[Tensor], p: float, generator: torch.Generator) -> int:
    """Reset each element to its source value with probability ``p``; returns how many were reset.

    One Bernoulli(p) draw per element, from ``generator`` so a stream's restores are reproducible.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"restore probability must lie in [0, 1], got {p}")
    restored = 0
    for param, original in zip(params, source, strict=True):
        # drawn on the generator's device (the CPU), so a stream restores the same elements on any device
        mask = (torch.rand(param.shape, generator=generator) < p).to(param.device)
        param.copy_(torch.where(mask, original, param))
        restored += int(mask.sum())
    return restored


def lower_quantile(values: Tensor, q: float) -> Tensor:
    """The ``q``-quantile of ``values`` with linear interpolation (``torch.quantile``'s default),
    by two O(n) ``kthvalue`` selections instead of a sort; no size limit."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must lie in [0, 1], got {q}")
    flat = values.reshape(-1)
    position = q * (flat.numel() - 1)
    below = int(position)
    low = flat.kthvalue(below + 1).values
    if below + 1 >= flat.numel():
        return low
    high = flat.kthvalue(below + 2).values
    return low + (position - below) * (high - low)


@torch.no_grad()
def fisher_restore_masks(gradients: Sequence[Tensor], q: float) -> list[Tensor]:
    """PETAL-FIM: masks of the elements whose one-batch Fisher (squared gradient) lies strictly
    below the ``q``-quantile over all tensors together (the 'irrelevant' parameters)."""
    fisher = [g.detach().float().square() for g in gradients]
    threshold = lower_quantile(torch.cat([f.reshape(-1) for f in fisher]), q)
    return [f < threshold for f in fisher]


@torch.no_grad()
def masked_restore(params: Sequence[Tensor], source: Sequence[Tensor], masks: Sequence[Tensor]) -> int:
    """Set the masked elements of each parameter to their source value; returns how many."""
    restored = 0
    for param, original, mask in zip(params, source, masks, strict=True):
        param.copy_(torch.where(mask, original, param))
        restored += int(mask.sum())
    return restored
