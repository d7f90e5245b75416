"""CoTTA's test-time augmentation of a whole batch.

One view draws ONE random parameter set and applies it to every image of the batch, as the
reference code does with torchvision transforms on batch tensors; only the final Gaussian noise
differs per pixel. Steps: clip; brightness, contrast, saturation, hue and gamma in a random
order; edge-pad by half the side; random affine (rotation, translation up to 1/16 of the padded
side, i.e. 1/8 of the image side, as torchvision's RandomAffine sees the padded image; scale;
bilinear, zero fill); Gaussian blur (kernel 5); center crop back; horizontal flip with p; additive
Gaussian noise; clip. Colour operations follow torchvision's definitions (multiplicative
brightness, blend with the grey mean for contrast, with the grey image for saturation, hue shift
in HSV, power-law gamma).

``cotta_views`` builds several views in one batched pass: the parameters of each view are drawn
in the same order as one view at a time would draw them (so the views are the same, to float
rounding, however many are built together), then every colour, warp, blur, flip and noise
operation runs once over all views with per-view parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from kornia.color import hsv_to_rgb, rgb_to_hsv
from kornia.filters import get_gaussian_kernel1d
from kornia.geometry.transform import get_affine_matrix2d, warp_affine
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import Tensor

_GREY = (0.299, 0.587, 0.114)


class AugmentConfig(BaseModel):
    """Ranges of the CoTTA augmentation; the defaults are the reference (non-"soft") ones."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    brightness: tuple[float, float] = Field((0.6, 1.4), description="multiplicative brightness factor range")
    contrast: tuple[float, float] = Field((0.7, 1.3), description="contrast factor range (blend with grey mean)")
    saturation: tuple[float, float] = Field((0.5, 1.5), description="saturation factor range")
    hue: tuple[float, float] = Field((-0.06, 0.06), description="hue shift range, fraction of the circle")
    gamma: tuple[float, float] = Field((0.7, 1.3), description="power-law gamma range")
    rotation_degrees: float = Field(15.0, description="largest rotation either way")
    translate_fraction: float = Field(1 / 16, description="largest shift, as a fraction of the padded side")
    scale: tuple[float, float] = Field((0.9, 1.1), description="zoom factor range")
    blur_kernel: int = Field(5, ge=1, le=31, description="Gaussian blur kernel side (odd)")
    blur_sigma: tuple[float, float] = Field((0.001, 0.5), description="Gaussian blur sigma range")
    flip_p: float = Field(0.5, ge=0, le=1, description="horizontal flip probability")
    noise_std: float = Field(0.005, ge=0, description="std of the additive Gaussian noise")
    views_per_pass: int = Field(
        8,
        ge=1,
        le=32,
        description="views built in one batched pass (memory grows with it; the views do not depend on it)",
    )

    @field_validator("blur_kernel")
    @classmethod
    def _odd_kernel(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError(f"blur_kernel must be odd, got {value}")
        return value

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


_COLOUR_OPS = 5  # brightness, contrast, saturation, hue, gamma


@dataclass(frozen=True)
class _ViewDraw:
    order: list[int]  # colour operations in application order
    factors: list[float]  # per colour operation, indexed by operation
    angle: float
    shift: tuple[int, int]
    scale: float
    sigma: float
    flip: bool
    noise: Tensor | None


def _uniform(bounds: tuple[float, float], generator: torch.Generator) -> float:
    low, high = bounds
    return low + (high - low) * float(torch.rand((), generator=generator))


def _draw(shape: torch.Size, generator: torch.Generator, config: AugmentConfig) -> _ViewDraw:
    """One view's random parameters, in the reference order of draws."""
    _, _, height, width = shape
    ranges = (config.brightness, config.contrast, config.saturation, config.hue, config.gamma)
    order = torch.randperm(_COLOUR_OPS, generator=generator).tolist()
    factors = [0.0] * _COLOUR_OPS
    for op in order:
        factors[op] = _uniform(ranges[op], generator)
    padded_h, padded_w = height + 2 * (height // 2), width + 2 * (width // 2)
    angle = _uniform((-config.rotation_degrees, config.rotation_degrees), generator)
    max_dx, max_dy = config.translate_fraction * padded_w, config.translate_fraction * padded_h
    shift = (round(_uniform((-max_dx, max_dx), generator)), round(_uniform((-max_dy, max_dy), generator)))
    scale = _uniform(config.scale, generator)
    sigma = _uniform(config.blur_sigma, generator)
    flip = float(torch.rand((), generator=generator)) < config.flip_p
    noise = torch.randn(shape, generator=generator) if config.noise_std > 0 else None
    return _ViewDraw(order, factors, angle, shift, scale, sigma, flip, noise)


def _grey(x: Tensor) -> Tensor:
    weights = torch.tensor(_GREY, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x * weights).sum(dim=-3, keepdim=True)


def _colour(x: Tensor, op: int, factor: Tensor) -> Tensor:
    """Colour operation ``op`` on views ``x`` (V, N, 3, H, W) with per-view ``factor`` (V, 1, 1, 1, 1)."""
    if op == 0:  # brightness
        return (x * factor).clamp(0, 1)
    if op == 1:  # contrast: blend with the mean grey level of each image
        mean = _grey(x).mean(dim=(-3, -2, -1), keepdim=True)
        return (factor * x + (1 - factor) * mean).clamp(0, 1)
    if op == 2:  # saturation: blend with the grey image
        return (factor * x + (1 - factor) * _grey(x)).clamp(0, 1)
    if op == 3:  # hue: rotate the hue channel by a fraction of the circle
        hsv = rgb_to_hsv(x)
        hue = torch.remainder(hsv[..., :1, :, :] + factor * 2 * math.pi, 2 * math.pi)
        return hsv_to_rgb(torch.cat([hue, hsv[..., 1:, :, :]], dim=-3)).clamp(0, 1)
    # gamma; the clamp keeps pow's gradient finite at 0
    return x.clamp_min(1e-8).pow(factor).clamp(0, 1)


def _per_view(values: list[float], like: Tensor, repeat: int = 1) -> Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device).repeat_interleave(repeat)


def _valid_gaussian_blur(x: Tensor, kernel_size: int, sigma: Tensor) -> Tensor:
    """Separable Gaussian blur with one sigma per image, keeping only the pixels whose whole
    window lies inside ``x`` (so the output is ``kernel_size - 1`` smaller per side pair): five
    shifted, weighted sums per axis instead of a grouped convolution per image."""
    weights = get_gaussian_kernel1d(kernel_size, sigma[:, None], device=x.device, dtype=x.dtype)  # (B, k)
    height, width = x.shape[-2] - kernel_size + 1, x.shape[-1] - kernel_size + 1
    rows = sum(weights[:, k, None, None, None] * x[..., k : k + height, :] for k in range(kernel_size))
    assert isinstance(rows, Tensor)
    cols = sum(weights[:, k, None, None, None] * rows[..., k : k + width] for k in range(kernel_size))
    assert isinstance(cols, Tensor)
    return cols


def cotta_views(x: Tensor, generator: torch.Generator, n_views: int, config: AugmentConfig | None = None) -> Tensor:
    """``n_views`` augmented views (V, N, 3, H, W) of the batch ``x`` (N, 3, H, W) in [0, 1], each
    view one transform for all its images; the same views as ``n_views`` calls of ``cotta_augment``."""
    config = config or AugmentConfig()
    n, channels, height, width = x.shape
    draws = [_draw(x.shape, generator, config) for _ in range(n_views)]
    views = x.clamp(0, 1).unsqueeze(0).repeat(n_views, 1, 1, 1, 1)
    for position in range(_COLOUR_OPS):  # each view its own order: group the views by operation
        for op in range(_COLOUR_OPS):
            chosen = [v for v, d in enumerate(draws) if d.order[position] == op]
            if chosen:
                factor = _per_view([draws[v].factors[op] for v in chosen], views).view(-1, 1, 1, 1, 1)
                views[chosen] = _colour(views[chosen], op, factor)
    flat = views.reshape(n_views * n, channels, height, width)
    pad_h, pad_w = height // 2, width // 2
    flat = F.pad(flat, (pad_w, pad_w, pad_h, pad_h), mode="replicate")
    padded_h, padded_w = flat.shape[-2:]
    shifts = torch.tensor([d.shift for d in draws], dtype=flat.dtype, device=flat.device).repeat_interleave(n, 0)
    scales = _per_view([d.scale for d in draws], flat, n)
    matrix = get_affine_matrix2d(
        translations=shifts,
        center=torch.tensor([[(padded_w - 1) / 2, (padded_h - 1) / 2]], dtype=flat.dtype, device=flat.device).expand(
            n_views * n, 2
        ),
        scale=scales[:, None].expand(-1, 2),
        angle=_per_view([d.angle for d in draws], flat, n),
    )
    # Only the center crop and the blur's margin are ever read: warp that window alone, by
    # moving the output origin to its corner (the same pixels as warping the whole padded image).
    margin = config.blur_kernel // 2
    window = torch.eye(3, dtype=flat.dtype, device=flat.device)
    window[0, 2], window[1, 2] = margin - pad_w, margin - pad_h
    flat = warp_affine(
        flat,
        (window @ matrix)[:, :2],
        (height + 2 * margin, width + 2 * margin),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )
    sigmas = _per_view([d.sigma for d in draws], flat, n)
    flat = _valid_gaussian_blur(flat, config.blur_kernel, sigmas)
    views = flat.reshape(n_views, n, channels, height, width)
    flips = torch.tensor([d.flip for d in draws], device=views.device).view(-1, 1, 1, 1, 1)
    views = torch.where(flips, views.flip(-1), views)
    if config.noise_std > 0:
        noise = torch.stack([d.noise for d in draws if d.noise is not None]).to(device=views.device, dtype=views.dtype)
        views = views + config.noise_std * noise
    return views.clamp(0, 1)


def cotta_augment(x: Tensor, generator: torch.Generator, config: AugmentConfig | None = None) -> Tensor:
    """One augmented view of the batch ``x`` (N, 3, H, W) in [0, 1]; same transform for all images."""
    return cotta_views(x, generator, 1, config)[0]


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
