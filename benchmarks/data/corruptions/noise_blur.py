"""The noise and blur corruptions, and the uint8/float conversions every corruption shares."""

from __future__ import annotations

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.ndimage import zoom as scipy_zoom

from benchmarks.data.corruptions.constants import CIFAR, CorruptionConstants


def _to_uint8(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = (np.clip(x, 0, 1) * 255).astype(np.uint8)  # truncation, as np.uint8(float) does
    return out


def _float(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64) / 255.0


def gaussian_noise(
    image: np.ndarray, severity: int, rng: np.random.Generator, c: CorruptionConstants = CIFAR
) -> np.ndarray:
    x = _float(image)
    return _to_uint8(x + rng.normal(size=x.shape, scale=c.gaussian_noise[severity - 1]))


def shot_noise(
    image: np.ndarray, severity: int, rng: np.random.Generator, c: CorruptionConstants = CIFAR
) -> np.ndarray:
    scale = c.shot_noise[severity - 1]
    return _to_uint8(rng.poisson(_float(image) * scale) / scale)


def impulse_noise(
    image: np.ndarray, severity: int, rng: np.random.Generator, c: CorruptionConstants = CIFAR
) -> np.ndarray:
    """Salt and pepper on a fraction ``amount`` of the values, half each (scikit-image's s&p)."""
    amount = c.impulse_noise[severity - 1]
    x = _float(image)
    hit = rng.random(x.shape) < amount
    salt = rng.random(x.shape) < 0.5
    x = np.where(hit & salt, 1.0, np.where(hit, 0.0, x))
    return _to_uint8(x)


def speckle_noise(
    image: np.ndarray, severity: int, rng: np.random.Generator, c: CorruptionConstants = CIFAR
) -> np.ndarray:
    x = _float(image)
    return _to_uint8(x + x * rng.normal(size=x.shape, scale=c.speckle_noise[severity - 1]))


def _gaussian(x: np.ndarray, sigma: float) -> np.ndarray:
    # scikit-image's gaussian(multichannel=True): per channel, truncate 4, mode 'nearest'
    return np.stack([gaussian_filter(x[..., d], sigma, mode="nearest", truncate=4.0) for d in range(3)], axis=-1)


def gaussian_blur(
    image: np.ndarray, severity: int, rng: np.random.Generator, c: CorruptionConstants = CIFAR
) -> np.ndarray:
    return _to_uint8(_gaussian(_float(image), c.gaussian_blur[severity - 1]))


def _disk(radius: float, alias_blur: float) -> np.ndarray:
    extent = np.arange(-8, 8 + 1) if radius <= 8 else np.arange(-radius, radius + 1)
    ksize = (3, 3) if radius <= 8 else (5, 5)
    xx, yy = np.meshgrid(extent, extent)
    disk = np.asarray(xx**2 + yy**2 <= radius**2, dtype=np.float32)
    disk /= disk.sum()
    return cv2.GaussianBlur(disk, ksize=ksize, sigmaX=alias_blur)


def defocus_blur(
    image: np.ndarray, severity: int, rng: np.random.Generator, c: CorruptionConstants = CIFAR
) -> np.ndarray:
    radius, alias = c.defocus_blur[severity - 1]
    x = _float(image).astype(np.float32)
    kernel = _disk(radius, alias)
    return _to_uint8(np.stack([cv2.filter2D(x[..., d], -1, kernel) for d in range(3)], axis=-1))


def glass_blur(
    image: np.ndarray, severity: int, rng: np.random.Generator, c: CorruptionConstants = CIFAR
) -> np.ndarray:
    """Blur, then locally shuffle pixels, then blur again.

    The original loop (rows and columns from 31 down to 2, offsets from randint(-d, d), i.e.
    {-1, 0} for d = 1) writes the neighbour into the current pixel and leaves the neighbour as
    it was; since that neighbour (up and/or left) is not visited yet, each pass is one gather from
    the image before the pass, done here with array indexing.
    """
    sigma, max_delta, iterations = c.glass_blur[severity - 1]
    x = _to_uint8(_gaussian(_float(image), sigma))
    height, width = x.shape[:2]
    row_order = np.arange(height - max_delta, max_delta, -1)  # the loop's visiting order (31 .. 2 on 32 px)
    col_order = np.arange(width - max_delta, max_delta, -1)
    rows, cols = (a.ravel() for a in np.meshgrid(row_order, col_order, indexing="ij"))
    for _ in range(iterations):
        offsets = rng.integers(-max_delta, max_delta, size=(rows.size, 2))  # (dx, dy) per pixel
        source_rows, source_cols = rows + offsets[:, 1], cols + offsets[:, 0]
        if max_delta == 1:  # offsets in {-1, 0}: every source is still unvisited, one gather
            gathered = x.copy()
            gathered[rows, cols] = x[source_rows, source_cols]
            x = gathered
        else:  # offsets up to +d-1 may read an already rewritten pixel: keep the sequential loop
            for row, col, source_row, source_col in zip(rows, cols, source_rows, source_cols, strict=True):
                x[row, col] = x[source_row, source_col]
    return _to_uint8(_gaussian(x / 255.0, sigma))


def _clipped_zoom(x: np.ndarray, factor: float) -> np.ndarray:
    side = x.shape[0]
    crop = int(np.ceil(side / factor))
    top = (side - crop) // 2
    zoomed = scipy_zoom(x[top : top + crop, top : top + crop], (factor, factor, 1), order=1)
    trim = (zoomed.shape[0] - side) // 2
    return zoomed[trim : trim + side, trim : trim + side]  # type: ignore[no-any-return]


def zoom_blur(image: np.ndarray, severity: int, rng: np.random.Generator, c: CorruptionConstants = CIFAR) -> np.ndarray:
    factors = c.zoom_factors(severity)
    x = _float(image).astype(np.float32)
    out = np.zeros_like(x)
    for factor in factors:
        out += _clipped_zoom(x, factor)
    return _to_uint8((x + out) / (len(factors) + 1))
