"""Mean-teacher EMA update."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


@torch.no_grad()
def ema_update(teacher: Sequence[Tensor], student: Sequence[Tensor], alpha: float) -> None:
    """In place: teacher <- alpha * teacher + (1 - alpha) * student, tensor by tensor."""
    if len(teacher) != len(student):
        raise ValueError(f"teacher has {len(teacher)} tensors, student {len(student)}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"EMA alpha must lie in [0, 1], got {alpha}")
    for t, s in zip(teacher, student, strict=True):
        t.lerp_(s, 1.0 - alpha)
