"""ViDA's layers: a frozen convolution or linear layer plus a low-rank and a high-rank adapter
branch, and their injection into a structural copy of the model. The adapter that trains and
mixes them is :mod:`adapters.methods.vida`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from adapters.blocks import replace_modules
from adapters.errors import AdapterError


class VidaLayer(nn.Module):
    """y = layer(x) + lambda_low * up_low(down_low(x)) + lambda_high * up_high(down_high(x)).

    The branches are 1x1 convolutions (linear maps for a Linear layer) of rank ``low`` and width
    ``high``; the down maps start N(0, 1/r^2), the up maps at zero, so the layer starts as the
    frozen one. The lambdas are scalars or per-image (N, 1, 1, 1) tensors set by the adapter.
    """

    def __init__(self, layer: nn.Module, low: int, high: int, generator: torch.Generator) -> None:
        super().__init__()
        self.layer = layer
        if isinstance(layer, nn.Conv2d):
            if layer.stride != (1, 1):
                raise AdapterError("vida's 1x1 branches need stride-1 convolutions")
            c_in, c_out = layer.in_channels, layer.out_channels

            def make(a: int, b: int) -> nn.Module:
                return nn.Conv2d(a, b, 1, bias=False)
        elif isinstance(layer, nn.Linear):
            c_in, c_out = layer.in_features, layer.out_features

            def make(a: int, b: int) -> nn.Module:
                return nn.Linear(a, b, bias=False)
        else:
            raise AdapterError(f"vida injects into Conv2d or Linear layers, not {type(layer).__name__}")
        device = next(layer.parameters()).device
        self.down_low, self.up_low = make(c_in, low).to(device), make(low, c_out).to(device)
        self.down_high, self.up_high = make(c_in, high).to(device), make(high, c_out).to(device)
        with torch.no_grad():
            for down, rank in ((self.down_low, low), (self.down_high, high)):
                weight: Tensor = down.weight  # type: ignore[assignment]
                weight.copy_(torch.randn(tuple(weight.shape), generator=generator) / rank**2)
            for up in (self.up_low, self.up_high):
                zero: Tensor = up.weight  # type: ignore[assignment]
                nn.init.zeros_(zero)
        self.scale_low: Tensor | float = 1.0
        self.scale_high: Tensor | float = 1.0

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.layer(x)
        low = self.up_low(self.down_low(x))
        high = self.up_high(self.down_high(x))
        mixed: Tensor = out + _fit(self.scale_low, out) * low + _fit(self.scale_high, out) * high
        return mixed

    def adapter_parameters(self) -> list[nn.Parameter]:
        return [m.weight for m in (self.down_low, self.up_low, self.down_high, self.up_high)]  # type: ignore[misc]


def _fit(scale: Tensor | float, like: Tensor) -> Tensor | float:
    """A per-image scale (N,) broadcast over the layer output's trailing dimensions."""
    if isinstance(scale, Tensor) and scale.dim() == 1:
        return scale.view(-1, *([1] * (like.dim() - 1)))
    return scale


def inject(
    view: nn.Module, layers: tuple[str, ...], low_rank: int, high_rank_factor: float, generator: torch.Generator
) -> list[VidaLayer]:
    """Wrap the named layers of ``view`` (a structural copy) in ViDA layers, in ``layers`` order: rank
    ``low_rank`` for the low-rank branch, ``high_rank_factor`` times the layer's width (and wider than
    it) for the high-rank one."""
    modules = dict(view.named_modules())
    missing = [name for name in layers if name not in modules]
    if missing:
        raise AdapterError(f"vida layers {missing} not found in the model; e.g. {list(modules)[1:6]}")
    wrapped: dict[int, VidaLayer] = {}
    for name in layers:
        layer = modules[name]
        width = layer.out_channels if isinstance(layer, nn.Conv2d) else getattr(layer, "out_features", 0)
        high = max(int(high_rank_factor * width), width + 1)
        wrapped[id(layer)] = VidaLayer(layer, low_rank, high, generator)
    replace_modules(view, lambda m: id(m) in wrapped, lambda m: wrapped[id(m)])
    return [wrapped[id(modules[name])] for name in layers]
