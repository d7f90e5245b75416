"""Stochastic restore towards the source weights (methods.md B5, CoTTA)."""

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
