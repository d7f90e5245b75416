"""Optimizer factory with the papers' defaults and per-stream state I/O."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor


class OptimizerConfig(BaseModel):
    """Adam: betas (0.9, 0.999), no weight decay. SGD: momentum 0.9, Nesterov, no weight decay."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: Literal["adam", "sgd"] = Field("adam", description="adam or sgd")
    # bounds: the papers use 1e-5..0.05; above 1 every method here diverges at once
    lr: float = Field(1e-3, gt=0, le=1.0, description="learning rate (0 < lr <= 1)")
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = Field(
        (0.9, 0.999), description="Adam's moment decay rates"
    )
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    nesterov: bool = Field(True, description="SGD: Nesterov momentum")
    weight_decay: float = Field(0.0, ge=0, le=1.0, description="L2 weight decay")


def make_optimizer(params: Iterable[Tensor], config: OptimizerConfig) -> torch.optim.Optimizer:
    params = list(params)
    if not params:
        raise ValueError("no trainable parameters for the optimizer")
    if config.name == "adam":
        return torch.optim.Adam(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        params, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov, weight_decay=config.weight_decay
    )


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, Tensor]:
    """The optimizer's per-parameter state as flat ``"<index>.<key>"`` tensors."""
    out: dict[str, Tensor] = {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            out[f"{index}.{key}"] = value if isinstance(value, Tensor) else torch.tensor(value)
    return out


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor]) -> None:
    """Inverse of :func:`optimizer_tensors`; param groups come from the optimizer's own config."""
    state: dict[int, dict[str, Tensor]] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value.clone()
    current = optimizer.state_dict()
    optimizer.load_state_dict({"state": state, "param_groups": current["param_groups"]})
