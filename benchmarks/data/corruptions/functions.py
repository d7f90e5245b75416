"""Image corruptions of CIFAR-10-C and ImageNet-C (docs/benchmarks.md, "Corruptions"), one
implementation for both constant sets (:mod:`benchmarks.data.corruptions.constants`); this module
binds them, the functions live in ``noise_blur``, ``digital`` and ``weather``.

Each function maps one uint8 (H, W, 3) RGB image, a severity 1..5, a numpy Generator and a
constant set to a uint8 image, truncating like the originals (``np.uint8(float)``). Randomness
comes only from the Generator, so a seeded rebuild is bit-identical.

Primitives come from libraries: scipy (zoom, Gaussian filter, map_coordinates), OpenCV (filter2D,
Gaussian blur, affine warp, Canny, distance transform, histogram equalisation), matplotlib (HSV)
and Pillow (JPEG, BOX resampling). Written by hand, because no library has them: the s&p noise
(scikit-image's ignores seeds), the vectorised glass-blur gather (see ``glass_blur``), the
diamond-square fog map, and the numpy motion blur that replaces ImageMagick (as imagecorruptions
does; within one grey level of ImageMagick). The frost textures are the six images shipped in the
``imagecorruptions`` wheel (the same files as the original repository's); they are found on disk
without importing that package, which does not import on current numpy/setuptools.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np

from benchmarks.data.corruptions.constants import ALL_CORRUPTIONS, CIFAR, IMAGENET, CorruptionConstants
from benchmarks.data.corruptions.digital import (
    brightness,
    contrast,
    elastic_transform,
    jpeg_compression,
    pixelate,
    saturate,
)
from benchmarks.data.corruptions.noise_blur import (
    defocus_blur,
    gaussian_blur,
    gaussian_noise,
    glass_blur,
    impulse_noise,
    shot_noise,
    speckle_noise,
    zoom_blur,
)
from benchmarks.data.corruptions.weather import (
    FROST_TEXTURES_ENV,
    fog,
    frost,
    frost_texture_dir,
    frost_textures,
    motion_blur,
    snow,
    spatter,
)

Corruption = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]
__all__ = [
    "FROST_TEXTURES_ENV",
    "Corruption",
    "corruptions_with",
    "frost_texture_dir",
    "frost_textures",
    "gaussian_noise",
]


_FUNCTIONS: dict[str, Callable[..., np.ndarray]] = {
    "gaussian_noise": gaussian_noise, "shot_noise": shot_noise, "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur, "glass_blur": glass_blur, "motion_blur": motion_blur, "zoom_blur": zoom_blur,
    "snow": snow, "frost": frost, "fog": fog, "brightness": brightness, "contrast": contrast,
    "elastic_transform": elastic_transform, "pixelate": pixelate, "jpeg_compression": jpeg_compression,
    "speckle_noise": speckle_noise, "gaussian_blur": gaussian_blur, "spatter": spatter, "saturate": saturate,
}  # fmt: skip


def corruptions_with(constants: CorruptionConstants) -> dict[str, Corruption]:
    """All 19 corruptions bound to one constant set, in the reference order."""
    return {name: partial(_FUNCTIONS[name], c=constants) for name in ALL_CORRUPTIONS}


CIFAR_CORRUPTIONS = corruptions_with(CIFAR)
IMAGENET_CORRUPTIONS = corruptions_with(IMAGENET)
