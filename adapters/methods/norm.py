"""``norm``: BatchNorm with test-batch statistics (Schneider et al., 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from adapters.adapter_registry import register_adapter
from adapters.base import Adapter, AdapterConfig
from adapters.blocks import replace_modules, shared_view, use_test_batch_statistics


class NormConfig(AdapterConfig):
    alpha: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="weight of the test-batch statistics; 1 = pure batch statistics (BN-adapt), "
        "below 1 mixes in the source running statistics (BN-alpha, for small batches)",
    )


class MixedStatisticsBatchNorm(nn.Module):
    """Normalises with alpha * batch statistics + (1 - alpha) * the shared source statistics."""

    def __init__(self, source_layer: nn.modules.batchnorm._BatchNorm, alpha: float) -> None:
        super().__init__()
        self.source_layer = source_layer  # shared tensors, read only
        self.alpha = alpha

    def forward(self, x: Tensor) -> Tensor:
        layer = self.source_layer
        dims = [d for d in range(x.dim()) if d != 1]
        batch_var, batch_mean = torch.var_mean(x, dim=dims, unbiased=False)
        assert layer.running_mean is not None and layer.running_var is not None
        mean = self.alpha * batch_mean + (1 - self.alpha) * layer.running_mean
        var = self.alpha * batch_var + (1 - self.alpha) * layer.running_var
        return F.batch_norm(x, mean, var, layer.weight, layer.bias, training=False, eps=layer.eps)


@register_adapter("norm")
class NormAdapter(Adapter):
    """No learned state: each batch is normalised with its own statistics, nothing is kept.

    Deviation: the reference BN-adapt implementations also offer a running average of test
    statistics across batches; this adapter is the stateless form used in the CTTA tables.
    """

    Config = NormConfig
    config: NormConfig

    def _setup(self) -> None:
        view = shared_view(self.source.module)
        if self.config.alpha >= 1.0:
            use_test_batch_statistics(view)
        else:
            view.eval()
            replace_modules(
                view,
                lambda m: isinstance(m, nn.modules.batchnorm._BatchNorm),
                lambda m: MixedStatisticsBatchNorm(m, self.config.alpha),  # type: ignore[arg-type]
            )
        self.view = view

    def _forward_and_adapt(self, x: Tensor) -> Tensor:
        with torch.inference_mode():
            return self.view(x.contiguous(memory_format=torch.channels_last))  # type: ignore[no-any-return]

    def _feature_network(self) -> nn.Module:
        return self.view  # run once per step on the clean batch

    _predict = _forward_and_adapt
