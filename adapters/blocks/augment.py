"""CoTTA's test-time augmentation of a whole batch (methods.md B3).

One call draws ONE random parameter set and applies it to every image of the batch, as the
reference code does with torchvision transforms on batch tensors; only the final Gaussian noise
differs per pixel. Steps: clip; brightness, contrast, saturation, hue and gamma in a random
order; edge-pad by half the side; random affine (rotation, translation up to 1/16 of the padded
side, i.e. 1/8 of the image side, as torchvision's RandomAffine sees the padded image; scale;
bilinear, zero fill); Gaussian blur (kernel 5); center crop back; horizontal flip with p; additive
Gaussian noise; clip. Colour operations follow torchvision's definitions (multiplicative
brightness, blend with the grey mean for contrast, with the grey image for saturation, hue shift
in HSV, power-law gamma).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from kornia.color import hsv_to_rgb, rgb_to_hsv
from kornia.filters import gaussian_blur2d
from kornia.geometry.transform import get_affine_matrix2d, warp_affine
from pydantic import BaseModel, ConfigDict
from torch import Tensor

_GREY = (0.299, 0.587, 0.114)


class AugmentConfig(BaseModel):
    """Ranges of the CoTTA augmentation; the defaults are the reference (non-"soft") ones."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    brightness: tuple[float, float] = (0.6, 1.4)
    contrast: tuple[float, float] = (0.7, 1.3)
    saturation: tuple[float, float] = (0.5, 1.5)
    hue: tuple[float, float] = (-0.06, 0.06)
    gamma: tuple[float, float] = (0.7, 1.3)
    rotation_degrees: float = 15.0
    translate_fraction: float = 1 / 16
    scale: tuple[float, float] = (0.9, 1.1)
    blur_kernel: int = 5
    blur_sigma: tuple[float, float] = (0.001, 0.5)
    flip_p: float = 0.5
    noise_std: float = 0.005

    @classmethod
    def soft(cls) -> AugmentConfig:
        """The reference "soft" variant: half the colour and geometric ranges."""
        return cls(
            brightness=(0.8, 1.2),
            contrast=(0.85, 1.15),
            saturation=(0.75, 1.25),
            hue=(-0.03, 0.03),
            gamma=(0.85, 1.15),
            rotation_degrees=8.0,
            scale=(0.95, 1.05),
            blur_sigma=(0.001, 0.25),
        )


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


def cotta_augment(x: Tensor, generator: torch.Generator, config: AugmentConfig | None = None) -> Tensor:
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


def crop_and_flip(images: Tensor, generator: torch.Generator, pad: int = 4) -> Tensor:
    """Training augmentation of the source warm-ups: random crop from ``pad`` reflected pixels and
    a horizontal flip, drawn per image from ``generator`` (seeded, so artefacts rebuild exactly;
    kornia.augmentation draws from the global RNG)."""
    n, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    rows = (offsets[:, 0, None] + torch.arange(h))[:, :, None]  # (n, h, 1)
    cols = (offsets[:, 1, None] + torch.arange(w))[:, None, :]  # (n, 1, w)
    out = padded.permute(0, 2, 3, 1)[torch.arange(n)[:, None, None], rows, cols].permute(0, 3, 1, 2)
    return torch.where(flips[:, None, None, None], out.flip(3), out)
