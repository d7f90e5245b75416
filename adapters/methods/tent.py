"""``tent``: entropy minimisation on BatchNorm affine parameters (Wang et al., ICLR 2021)."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from adapters.adapter_registry import register_adapter
from adapters.base import Adapter, AdapterConfig
from adapters.blocks import (
    OptimizerConfig,
    entropy,
    load_optimizer_tensors,
    make_optimizer,
    optimizer_tensors,
    own_parameters,
    shared_view,
    use_test_batch_statistics,
)


class TentConfig(AdapterConfig):
    optimizer: OptimizerConfig = Field(
        default_factory=lambda: OptimizerConfig(name="adam", lr=1e-3),
        description="CIFAR default: Adam lr 1e-3 (batch 200); ImageNet: SGD lr 2.5e-4, momentum 0.9",
    )


@register_adapter("tent")
class TentAdapter(Adapter):
    """Test-batch BN statistics; BN weight/bias trained on the mean prediction entropy.

    One optimizer step per batch; the returned logits come from the same forward that computes
    the loss, i.e. before the update, as in the official code. Per-stream state: one copy of
    every BN weight and bias plus the optimizer's moments.
    """

    Config = TentConfig
    config: TentConfig
    paper = "Wang et al., Tent: Fully Test-time Adaptation by Entropy Minimization, ICLR 2021"

    def _setup(self) -> None:
        self.view = shared_view(self.source.module)
        use_test_batch_statistics(self.view)
        self.affine, self.affine_source = own_parameters(self.view, lambda module, name: isinstance(module, _BatchNorm))
        self.optimizer = make_optimizer(self.affine, self.config.optimizer)
        self._loss = float("nan")

    def _forward_and_adapt(self, x: Tensor) -> Tensor:
        logits = self.view(x.contiguous(memory_format=torch.channels_last))
        loss = entropy(logits).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self._loss = float(loss.detach())
        return logits  # type: ignore[no-any-return]

    def _feature_network(self) -> nn.Module:
        return self.view  # run once per step on the clean batch

    def _predict(self, x: Tensor) -> Tensor:
        return self.view(x.contiguous(memory_format=torch.channels_last))  # type: ignore[no-any-return]

    def _state_tensors(self) -> dict[str, Tensor]:
        tensors: dict[str, Tensor] = {f"affine.{i}": p for i, p in enumerate(self.affine)}
        tensors.update({f"optim.{k}": v for k, v in optimizer_tensors(self.optimizer).items()})
        return tensors

    def _load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        expected = {f"affine.{i}" for i in range(len(self.affine))}
        given = {k for k in tensors if k.startswith("affine.")}
        if given != expected:
            raise ValueError(f"tent state has affine tensors {len(given)}, expected {len(expected)}")
        with torch.no_grad():
            for i, param in enumerate(self.affine):
                param.copy_(tensors[f"affine.{i}"])
        load_optimizer_tensors(self.optimizer, {k[6:]: v for k, v in tensors.items() if k.startswith("optim.")})

    def _diagnostics(self) -> dict[str, float]:
        return {"entropy_loss": self._loss}

    def _parameter_pairs(self) -> tuple[list[Tensor], list[Tensor]]:
        return list(self.affine), list(self.affine_source)
