"""The weather corruptions (fog, snow, frost, spatter) and the motion blur snow shares."""

from __future__ import annotations

import importlib.util
import os
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter

from benchmarks.data.corruptions.constants import CIFAR, CorruptionConstants
from benchmarks.data.corruptions.noise_blur import _clipped_zoom, _float, _to_uint8

FROST_TEXTURES_ENV = "TTA_FROST_TEXTURES"


def plasma_fractal(rng: np.random.Generator, mapsize: int = 32, wibble_decay: float = 3.0) -> np.ndarray:
    """Diamond-square height map in [0, 1] (square side a power of two), as make_cifar_c's fog."""
    if mapsize & (mapsize - 1):
        raise ValueError(f"mapsize must be a power of two, got {mapsize}")
    heights = np.zeros((mapsize, mapsize))
    step, wibble = mapsize, 100.0

    def wibbled_mean(total: np.ndarray) -> np.ndarray:
        return total / 4 + wibble * rng.uniform(-wibble, wibble, total.shape)

    while step >= 2:
        half = step // 2
        corners = heights[0:mapsize:step, 0:mapsize:step]
        squares = corners + np.roll(corners, -1, axis=0)
        squares = squares + np.roll(squares, -1, axis=1)
        heights[half:mapsize:step, half:mapsize:step] = wibbled_mean(squares)
        centres = heights[half:mapsize:step, half:mapsize:step]
        corners = heights[0:mapsize:step, 0:mapsize:step]
        left = centres + np.roll(centres, 1, axis=0) + corners + np.roll(corners, -1, axis=1)
        heights[0:mapsize:step, half:mapsize:step] = wibbled_mean(left)
        top = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=0)
        heights[half:mapsize:step, 0:mapsize:step] = wibbled_mean(top)
        step //= 2
        wibble /= wibble_decay
    heights -= heights.min()
    return heights / heights.max()  # type: ignore[no-any-return]


def fog(image: np.ndarray, severity: int, rng: np.random.Generator, c: CorruptionConstants = CIFAR) -> np.ndarray:
    strength, decay = c.fog[severity - 1]
    x = _float(image)
    height, width = x.shape[:2]
    mapsize = 1 << (max(height, width) - 1).bit_length()  # 32 on CIFAR, 256 on 224-px ImageNet
    peak = x.max()
    x = x + strength * plasma_fractal(rng, mapsize, decay)[:height, :width, np.newaxis]
    return _to_uint8(x * peak / (peak + strength))


def _shift_edge(x: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Shift by (dx, dy) pixels, replicating the edge into the uncovered border."""
    out = x
    if dx:
        out = np.roll(out, dx, axis=1)
        if dx > 0:
            out[:, :dx] = out[:, dx : dx + 1]
        else:
            out[:, dx:] = out[:, dx - 1 : dx]
    if dy:
        out = np.roll(out, dy, axis=0)
        if dy > 0:
            out[:dy] = out[dy : dy + 1]
        else:
            out[dy:] = out[dy - 1 : dy]
    return out


def _motion_blur(x: np.ndarray, radius: float, sigma: float, angle: float) -> np.ndarray:
    """ImageMagick's motion blur emulated in numpy (imagecorruptions' method; within 1 grey level).

    A one-sided Gaussian kernel of width 2 * radius + 1 accumulates copies of ``x`` (float, 0-255,
    (H, W) or (H, W, C)) shifted along ``angle`` degrees, with edge replication.
    """
    width = int(2 * radius + 1)
    kernel = np.exp(-(np.arange(width) ** 2) / (2 * sigma**2))
    kernel /= kernel.sum()
    direction = (width * np.sin(np.deg2rad(angle)), width * np.cos(np.deg2rad(angle)))
    length = float(np.hypot(*direction))
    blurred = np.zeros_like(x)
    for i in range(width):
        dy = -int(np.ceil(i * direction[0] / length - 0.5))
        dx = -int(np.ceil(i * direction[1] / length - 0.5))
        if abs(dy) >= x.shape[0] or abs(dx) >= x.shape[1]:
            break
        blurred += kernel[i] * _shift_edge(x, dx, dy)
    return blurred


def motion_blur(
    image: np.ndarray, severity: int, rng: np.random.Generator, c: CorruptionConstants = CIFAR
) -> np.ndarray:
    radius, sigma = c.motion_blur[severity - 1]
    blurred = _motion_blur(image.astype(np.float32), radius, sigma, rng.uniform(-45, 45))
    out: np.ndarray = np.clip(blurred, 0, 255).astype(np.uint8)
    return out


def snow(image: np.ndarray, severity: int, rng: np.random.Generator, c: CorruptionConstants = CIFAR) -> np.ndarray:
    """A thresholded, zoomed noise layer motion-blurred into streaks, added twice (once rotated 180
    degrees) to the image brightened towards 1.5 * grey + 0.5."""
    mean, std, zoom, threshold, radius, sigma, blend = c.snow[severity - 1]
    x = image.astype(np.float32) / 255.0
    layer = rng.normal(size=x.shape[:2], loc=mean, scale=std)
    layer = _clipped_zoom(layer[..., np.newaxis], zoom)
    layer[layer < threshold] = 0
    grey = (np.clip(layer.squeeze(-1), 0, 1) * 255).astype(np.uint8)  # the 8-bit layer ImageMagick blurs
    streaks = _motion_blur(grey.astype(np.float32), radius, sigma, rng.uniform(-135, -45))
    streaks = (np.round(np.clip(streaks, 0, 255)) / 255.0)[..., np.newaxis]
    grey_image = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)[..., np.newaxis]
    x = blend * x + (1 - blend) * np.maximum(x, grey_image * 1.5 + 0.5)
    return _to_uint8(x + streaks + np.rot90(streaks, k=2))


def frost_texture_dir() -> Path:
    """The folder of ``frost1.png`` .. ``frost6.jpg``: ``$TTA_FROST_TEXTURES``, else the installed
    ``imagecorruptions`` package's ``frost/`` folder (located without importing it)."""
    if os.environ.get(FROST_TEXTURES_ENV):
        return Path(os.environ[FROST_TEXTURES_ENV])
    spec = importlib.util.find_spec("imagecorruptions")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "frost needs the frost textures: `pip install --no-deps imagecorruptions==1.1.2` (only its image files "
            f"are used), or point {FROST_TEXTURES_ENV} at a folder holding frost1.png .. frost5.jpg"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "frost"


@lru_cache(maxsize=4)
def frost_textures(scale: float) -> tuple[np.ndarray, ...]:
    """The five textures the originals draw from (``randint(5)``: frost6 is never used), RGB,
    resized by ``scale`` with OpenCV's default bilinear filter as make_cifar_c does."""
    folder = frost_texture_dir()
    textures = []
    for name in ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg"):
        bgr = cv2.imread(str(folder / name))
        if bgr is None:
            raise FileNotFoundError(f"cannot read frost texture {folder / name}")
        if scale != 1:
            bgr = cv2.resize(bgr, (0, 0), fx=scale, fy=scale)
        textures.append(np.ascontiguousarray(bgr[..., ::-1]))
    return tuple(textures)


def frost(image: np.ndarray, severity: int, rng: np.random.Generator, c: CorruptionConstants = CIFAR) -> np.ndarray:
    """A random crop of one of five frost photographs blended onto the image (0-255 scale)."""
    image_weight, frost_weight = c.frost[severity - 1]
    textures = frost_textures(c.frost_texture_scale)
    texture = textures[int(rng.integers(len(textures)))]
    height, width = image.shape[:2]
    if texture.shape[0] <= height or texture.shape[1] <= width:
        raise ValueError(f"image {height}x{width} is too large for the frost textures ({texture.shape[:2]})")
    top = int(rng.integers(0, texture.shape[0] - height))
    left = int(rng.integers(0, texture.shape[1] - width))
    crop = texture[top : top + height, left : left + width]
    out: np.ndarray = np.clip(image_weight * image.astype(np.float64) + frost_weight * crop, 0, 255).astype(np.uint8)
    return out


# Water is pale turquoise and mud brown, in the image's (RGB) channel order as in the original.
_WATER = np.array([175, 238, 238], dtype=np.float32) / 255
_MUD = np.array([63, 42, 20], dtype=np.float64) / 255
_EMBOSS = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])


def spatter(image: np.ndarray, severity: int, rng: np.random.Generator, c: CorruptionConstants = CIFAR) -> np.ndarray:
    """Water drops (embossed, turquoise) at low severities, mud splashes at high ones."""
    mean, std, sigma, threshold, intensity, mud = c.spatter[severity - 1]
    x = image.astype(np.float32) / 255.0
    liquid = gaussian_filter(rng.normal(size=x.shape[:2], loc=mean, scale=std), sigma, mode="nearest", truncate=4.0)
    liquid[liquid < threshold] = 0
    if not mud:
        liquid8 = (liquid * 255).astype(np.uint8)
        dist = cv2.distanceTransform(255 - cv2.Canny(liquid8, 50, 150), cv2.DIST_L2, 5)
        _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
        dist = cv2.equalizeHist(cv2.blur(dist, (3, 3)).astype(np.uint8))
        dist = cv2.blur(cv2.filter2D(dist, cv2.CV_8U, _EMBOSS), (3, 3)).astype(np.float32)
        layer = liquid8 * dist
        peak = layer.max()
        # the original divides by the peak unguarded (NaN on a dry layer); a dry layer adds nothing
        layer = layer / peak * intensity if peak > 0 else np.zeros_like(layer)
        return _to_uint8(x + layer[..., np.newaxis] * _WATER)
    mask = gaussian_filter((liquid > threshold).astype(np.float32), intensity, mode="nearest", truncate=4.0)
    mask[mask < 0.8] = 0
    mask = mask[..., np.newaxis]
    return _to_uint8(x * (1 - mask) + _MUD * mask)
