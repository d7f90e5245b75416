"""Per-stream state by role: ``"<role>.<index>"`` parameter tensors plus ``"optim.*"`` moments."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from adapters.blocks.optim import load_optimizer_tensors, optimizer_tensors


def role_tensors(roles: Mapping[str, Sequence[Tensor]], optimizer: torch.optim.Optimizer) -> dict[str, Tensor]:
    """Every per-stream tensor by a stable name, for ``Adapter._state_tensors``."""
    tensors = {f"{role}.{i}": t for role, params in roles.items() for i, t in enumerate(params)}
    tensors.update({f"optim.{k}": v for k, v in optimizer_tensors(optimizer).items()})
    return tensors


def load_role_tensors(
    roles: Mapping[str, Sequence[Tensor]], optimizer: torch.optim.Optimizer, tensors: Mapping[str, Tensor], name: str
) -> None:
    """Inverse of :func:`role_tensors`; refuses a state with other parameter tensors."""
    expected = {f"{role}.{i}" for role, params in roles.items() for i in range(len(params))}
    given = {k for k in tensors if not k.startswith("optim.")}
    if given != expected:
        raise ValueError(f"{name} state has {len(given)} parameter tensors, expected {len(expected)}")
    with torch.no_grad():
        for role, params in roles.items():
            for i, param in enumerate(params):
                param.copy_(tensors[f"{role}.{i}"])
    load_optimizer_tensors(optimizer, {k[6:]: v for k, v in tensors.items() if k.startswith("optim.")})
