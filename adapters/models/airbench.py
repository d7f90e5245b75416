"""The bundled CIFAR-10 architecture: an airbench94-style convolutional network.

Layout (widths are configurable)::

    stem    2x2 patch-whitening conv (24 ch, frozen weights) -> GELU
    stages  3 x ConvGroup: conv3x3 -> maxpool2 -> BN -> GELU -> conv3x3 -> BN -> GELU
    head    global max-pool -> linear (no bias)

Every stage is a ``ConvGroup`` made of two ``ConvBlock`` units (conv -> [pool] -> BN -> GELU), so
methods that partition a network (EcoTTA) or inject adapters next to convolutions (ViDA) can
address ``stages[i].blocks[j].conv`` uniformly. Inputs are normalised tensors; the wrapper in
``adapters.source_model`` applies mean/std so that adapters always see images in [0, 1].
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

WHITEN_KERNEL = 2


class ConvBlock(nn.Module):
    """conv3x3 -> optional 2x2 max-pool -> BatchNorm -> GELU."""

    def __init__(self, in_channels: int, out_channels: int, pool: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.pool: nn.Module = nn.MaxPool2d(2) if pool else nn.Identity()
        self.norm = nn.BatchNorm2d(out_channels)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.act(self.norm(self.pool(self.conv(x))))
        return out


class ConvGroup(nn.Module):
    """Conv blocks at one resolution: the first halves it, blocks after the second are residual."""

    def __init__(self, in_channels: int, out_channels: int, depth: int = 2) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError(f"depth must be >= 2, got {depth}")
        self.blocks = nn.Sequential(
            ConvBlock(in_channels, out_channels, pool=True),
            *(ConvBlock(out_channels, out_channels, pool=False) for _ in range(depth - 1)),
        )

    def forward(self, x: Tensor) -> Tensor:
        blocks = list(self.blocks)
        x = blocks[1](blocks[0](x))
        for block in blocks[2:]:
            x = x + block(x)
        return x


class AirbenchNet(nn.Module):
    """Whitening stem, three conv groups, max-pool head.

    ``logit_scale`` multiplies the logits; training uses 1/9 as airbench does, and the exported
    weights fold the scale (and the calibration temperature) into ``head.weight`` so that the
    shipped model has ``logit_scale == 1``.
    """

    def __init__(
        self,
        num_classes: int = 10,
        widths: tuple[int, int, int] = (64, 256, 256),
        depth: int = 2,
        logit_scale: float = 1.0,
    ) -> None:
        super().__init__()
        whiten_width = 2 * 3 * WHITEN_KERNEL**2
        self.stem = nn.Sequential(nn.Conv2d(3, whiten_width, WHITEN_KERNEL, bias=True), nn.GELU())
        channels = (whiten_width, *widths)
        self.stages = nn.Sequential(*(ConvGroup(channels[i], channels[i + 1], depth) for i in range(len(widths))))
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(widths[-1], num_classes, bias=False)
        self.logit_scale = logit_scale
        self.num_features = widths[-1]

    @property
    def classifier(self) -> nn.Linear:
        """The final linear layer (features -> logits)."""
        return self.head

    def forward_features(self, x: Tensor) -> Tensor:
        """Pooled penultimate features, shape (N, num_features)."""
        return torch.flatten(self.pool(self.stages(self.stem(x))), 1)

    def forward(self, x: Tensor) -> Tensor:
        logits: Tensor = self.head(self.forward_features(x))
        return logits if self.logit_scale == 1.0 else logits * self.logit_scale
