"""The two constant sets of the reference scripts: ``make_cifar_c.py`` (32x32) and
``make_imagenet_c.py`` (224x224). Each tuple lists severities 1..5 (docs/benchmarks.md, "Corruptions")."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COMMON_CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)  # fmt: skip
"""The 15 corruptions of the benchmarks, in the standard continual order (docs/benchmarks.md)."""
EXTRA_CORRUPTIONS = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
ALL_CORRUPTIONS = COMMON_CORRUPTIONS + EXTRA_CORRUPTIONS


@dataclass(frozen=True)
class CorruptionConstants:
    name: str
    gaussian_noise: tuple[float, ...]
    shot_noise: tuple[float, ...]
    impulse_noise: tuple[float, ...]
    speckle_noise: tuple[float, ...]
    gaussian_blur: tuple[float, ...]
    defocus_blur: tuple[tuple[float, float], ...]  # disk radius, anti-alias sigma
    glass_blur: tuple[tuple[float, int, int], ...]  # sigma, max delta, iterations
    motion_blur: tuple[tuple[float, float], ...]  # radius, sigma
    zoom_blur: tuple[tuple[float, float, float], ...]  # np.arange(start, stop, step)
    snow: tuple[tuple[float, float, float, float, float, float, float], ...]
    frost: tuple[tuple[float, float], ...]  # image weight, frost weight
    frost_texture_scale: float  # CIFAR downscales the textures x0.2 before cropping
    fog: tuple[tuple[float, float], ...]  # strength, wibble decay
    brightness: tuple[float, ...]
    contrast: tuple[float, ...]
    elastic_transform: tuple[tuple[float, float, float], ...]  # alpha, sigma, affine jitter (x elastic_scale)
    elastic_scale: float  # 32 for CIFAR; make_imagenet_c multiplies by 244 (sic) for 224 images
    pixelate: tuple[float, ...]
    jpeg_compression: tuple[int, ...]
    spatter: tuple[tuple[float, float, float, float, float, int], ...]  # mean, std, sigma, threshold, intensity, mud
    saturate: tuple[tuple[float, float], ...]  # multiplier, offset

    def zoom_factors(self, severity: int) -> np.ndarray:
        # np.arange's float end-point quirk kept: (1, 1.06, 0.01) gives 7 factors, 1.06 included.
        start, stop, step = self.zoom_blur[severity - 1]
        return np.arange(start, stop, step)


CIFAR = CorruptionConstants(
    name="cifar",
    gaussian_noise=(0.04, 0.06, 0.08, 0.09, 0.10),
    shot_noise=(500, 250, 100, 75, 50),
    impulse_noise=(0.01, 0.02, 0.03, 0.05, 0.07),
    speckle_noise=(0.06, 0.1, 0.12, 0.16, 0.2),
    gaussian_blur=(0.4, 0.6, 0.7, 0.8, 1.0),
    defocus_blur=((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
    glass_blur=((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
    motion_blur=((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
    zoom_blur=((1, 1.06, 0.01), (1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.01), (1, 1.26, 0.01)),
    snow=(
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
        (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
    ),
    frost=((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),
    frost_texture_scale=0.2,
    fog=((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
    brightness=(0.05, 0.1, 0.15, 0.2, 0.3),
    contrast=(0.75, 0.5, 0.4, 0.3, 0.15),
    elastic_transform=((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)),
    elastic_scale=32,
    pixelate=(0.95, 0.9, 0.85, 0.75, 0.65),
    jpeg_compression=(80, 65, 58, 50, 40),
    spatter=(
        (0.62, 0.1, 0.7, 0.7, 0.5, 0),
        (0.65, 0.1, 0.8, 0.7, 0.5, 0),
        (0.65, 0.3, 1, 0.69, 0.5, 0),
        (0.65, 0.1, 0.7, 0.69, 0.6, 1),
        (0.65, 0.1, 0.5, 0.68, 0.6, 1),
    ),
    saturate=((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),
)

IMAGENET = CorruptionConstants(
    name="imagenet",
    gaussian_noise=(0.08, 0.12, 0.18, 0.26, 0.38),
    shot_noise=(60, 25, 12, 5, 3),
    impulse_noise=(0.03, 0.06, 0.09, 0.17, 0.27),
    speckle_noise=(0.15, 0.2, 0.35, 0.45, 0.6),
    gaussian_blur=(1, 2, 3, 4, 6),
    defocus_blur=((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
    glass_blur=((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)),
    motion_blur=((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),
    zoom_blur=((1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02), (1, 1.26, 0.02), (1, 1.31, 0.03)),
    snow=(
        (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
        (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
        (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
        (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
        (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
    ),
    frost=((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)),
    frost_texture_scale=1.0,
    fog=((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)),
    brightness=(0.1, 0.2, 0.3, 0.4, 0.5),
    contrast=(0.4, 0.3, 0.2, 0.1, 0.05),
    elastic_transform=((2, 0.7, 0.1), (2, 0.08, 0.2), (0.05, 0.01, 0.02), (0.07, 0.01, 0.02), (0.12, 0.01, 0.02)),
    elastic_scale=244,
    pixelate=(0.6, 0.5, 0.4, 0.3, 0.25),
    jpeg_compression=(25, 18, 15, 10, 7),
    spatter=(
        (0.65, 0.3, 4, 0.69, 0.6, 0),
        (0.65, 0.3, 3, 0.68, 0.6, 0),
        (0.65, 0.3, 2, 0.68, 0.5, 0),
        (0.65, 0.3, 1, 0.65, 1.5, 1),
        (0.67, 0.4, 1, 0.65, 1.5, 1),
    ),
    saturate=((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)),
)
