"""The digital corruptions: contrast, brightness, saturate, JPEG, pixelate, elastic transform."""

from __future__ import annotations

import io

import cv2
import numpy as np
from matplotlib.colors import hsv_to_rgb, rgb_to_hsv
from PIL import Image
from scipy.ndimage import gaussian_filter, map_coordinates

from benchmarks.data.corruptions.constants import CIFAR, CorruptionConstants
from benchmarks.data.corruptions.noise_blur import _float, _to_uint8


def contrast(image: np.ndarray, severity: int, rng: np.random.Generator, c: CorruptionConstants = CIFAR) -> np.ndarray:
    x = _float(image)
    means = x.mean(axis=(0, 1), keepdims=True)
    return _to_uint8((x - means) * c.contrast[severity - 1] + means)


def brightness(
    image: np.ndarray, severity: int, rng: np.random.Generator, c: CorruptionConstants = CIFAR
) -> np.ndarray:
    hsv = rgb_to_hsv(_float(image))
    hsv[..., 2] = np.clip(hsv[..., 2] + c.brightness[severity - 1], 0, 1)
    return _to_uint8(hsv_to_rgb(hsv))


def saturate(image: np.ndarray, severity: int, rng: np.random.Generator, c: CorruptionConstants = CIFAR) -> np.ndarray:
    scale, offset = c.saturate[severity - 1]
    hsv = rgb_to_hsv(_float(image))
    hsv[..., 1] = np.clip(hsv[..., 1] * scale + offset, 0, 1)
    return _to_uint8(hsv_to_rgb(hsv))


def jpeg_compression(
    image: np.ndarray, severity: int, rng: np.random.Generator, c: CorruptionConstants = CIFAR
) -> np.ndarray:
    quality = c.jpeg_compression[severity - 1]
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"), dtype=np.uint8)


def pixelate(image: np.ndarray, severity: int, rng: np.random.Generator, c: CorruptionConstants = CIFAR) -> np.ndarray:
    factor = c.pixelate[severity - 1]
    height, width = image.shape[:2]
    small = Image.fromarray(image).resize((int(width * factor), int(height * factor)), Image.Resampling.BOX)
    return np.asarray(small.resize((width, height), Image.Resampling.BOX), dtype=np.uint8)


def elastic_transform(
    image: np.ndarray, severity: int, rng: np.random.Generator, c: CorruptionConstants = CIFAR
) -> np.ndarray:
    """A random affine (corner jitter) then a smoothed random displacement field, both reflected."""
    alpha, sigma, jitter = (c.elastic_scale * v for v in c.elastic_transform[severity - 1])
    x = image.astype(np.float32) / 255.0
    height, width = x.shape[:2]
    centre, size = np.array([height, width], dtype=np.float32) // 2, min(height, width) // 3
    source = np.array([centre + size, [centre[0] + size, centre[1] - size], centre - size], dtype=np.float32)
    target = (source + rng.uniform(-jitter, jitter, size=source.shape)).astype(np.float32)
    affine = cv2.getAffineTransform(source, target)
    warped = cv2.warpAffine(x, affine, (width, height), borderMode=cv2.BORDER_REFLECT_101)
    dx, dy = (
        (gaussian_filter(rng.uniform(-1, 1, size=(height, width)), sigma, mode="reflect", truncate=3) * alpha).astype(
            np.float32
        )
        for _ in range(2)
    )
    cols, rows, channels = np.meshgrid(np.arange(width), np.arange(height), np.arange(3))
    indices = (
        (rows + dy[..., np.newaxis]).reshape(-1),
        (cols + dx[..., np.newaxis]).reshape(-1),
        channels.reshape(-1),
    )
    return _to_uint8(map_coordinates(warped, indices, order=1, mode="reflect").reshape(warped.shape))
