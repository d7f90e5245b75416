"""The one-view-at-a-time CoTTA augmentation, kept as the reference the batched ``cotta_views``
is checked against (same draws, same operations, one kornia call per step and view)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from kornia.color import hsv_to_rgb, rgb_to_hsv
from kornia.filters import gaussian_blur2d
from kornia.geometry.transform import get_affine_matrix2d, warp_affine
from torch import Tensor

from adapters.blocks.augment import AugmentConfig

_GREY = (0.299, 0.587, 0.114)


def _uniform(bounds: tuple[float, float], generator: torch.Generator) -> float:
    low, high = bounds
    return low + (high - low) * float(torch.rand((), generator=generator))


def _grey(x: Tensor) -> Tensor:
    weights = torch.tensor(_GREY, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)


def _colour(x: Tensor, op: int, factor: float) -> Tensor:
    if op == 0:  # brightness
        return (x * factor).clamp(0, 1)
    if op == 1:  # contrast: blend with the mean grey level of each image
        mean = _grey(x).mean(dim=(1, 2, 3), keepdim=True)
        return (factor * x + (1 - factor) * mean).clamp(0, 1)
    if op == 2:  # saturation: blend with the grey image
        return (factor * x + (1 - factor) * _grey(x)).clamp(0, 1)
    if op == 3:  # hue: rotate the hue channel by a fraction of the circle
        hsv = rgb_to_hsv(x)
        hue = torch.remainder(hsv[:, :1] + factor * 2 * math.pi, 2 * math.pi)
        return hsv_to_rgb(torch.cat([hue, hsv[:, 1:]], dim=1)).clamp(0, 1)
    # gamma; the clamp keeps pow's gradient finite at 0
    return x.clamp_min(1e-8).pow(factor).clamp(0, 1)


def reference_cotta_augment(x: Tensor, generator: torch.Generator, config: AugmentConfig | None = None) -> Tensor:
    """One augmented view of the batch ``x`` (N, 3, H, W) in [0, 1]; same transform for all images."""
    config = config or AugmentConfig()
    n, _, height, width = x.shape
    x = x.clamp(0, 1)
    ranges = (config.brightness, config.contrast, config.saturation, config.hue, config.gamma)
    for op in torch.randperm(5, generator=generator).tolist():
        x = _colour(x, op, _uniform(ranges[op], generator))
    pad_h, pad_w = height // 2, width // 2
    x = F.pad(x, (pad_w, pad_w, pad_h, pad_h), mode="replicate")
    padded_h, padded_w = x.shape[-2:]
    angle = _uniform((-config.rotation_degrees, config.rotation_degrees), generator)
    max_dx, max_dy = config.translate_fraction * padded_w, config.translate_fraction * padded_h
    shift = (round(_uniform((-max_dx, max_dx), generator)), round(_uniform((-max_dy, max_dy), generator)))
    scale = _uniform(config.scale, generator)
    matrix = get_affine_matrix2d(
        translations=torch.tensor([shift], dtype=x.dtype, device=x.device).expand(n, 2),
        center=torch.tensor([[(padded_w - 1) / 2, (padded_h - 1) / 2]], dtype=x.dtype, device=x.device).expand(n, 2),
        scale=torch.full((n, 2), scale, dtype=x.dtype, device=x.device),
        angle=torch.full((n,), angle, dtype=x.dtype, device=x.device),
    )
    x = warp_affine(x, matrix[:, :2], (padded_h, padded_w), mode="bilinear", padding_mode="zeros", align_corners=False)
    sigma = _uniform(config.blur_sigma, generator)
    kernel = config.blur_kernel
    x = gaussian_blur2d(x, (kernel, kernel), (sigma, sigma), border_type="reflect")
    x = x[..., pad_h : pad_h + height, pad_w : pad_w + width]
    if float(torch.rand((), generator=generator)) < config.flip_p:
        x = x.flip(-1)
    if config.noise_std > 0:
        x = x + config.noise_std * torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return x.clamp(0, 1)
