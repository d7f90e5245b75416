"""CIFAR-10-C corruptions with the CIFAR constants of ``make_cifar_c.py`` (benchmarks.md 1.2-1.3).

Each function maps one uint8 (32, 32, 3) RGB image, a severity 1..5 and a numpy Generator to a
uint8 image, truncating like the original (``np.uint8(float)``). Randomness comes only from the
Generator, so a seeded rebuild is bit-identical.

Implemented: gaussian/shot/impulse/speckle noise, defocus/glass/motion/zoom/Gaussian blur, fog,
snow, brightness, contrast, elastic transform, pixelate, JPEG, saturate (17 of 19). Still
missing: frost (needs the frost textures) and spatter. Primitives come from scipy (zoom, Gaussian
filter, map_coordinates), OpenCV (filter2D, GaussianBlur, affine warp), matplotlib (HSV) and
Pillow (JPEG, BOX resampling); written by hand: the s&p noise (scikit-image's ignores seeds), the
vectorised glass-blur pixel gather (equivalent to the original loop, see ``glass_blur``), the
diamond-square fog map and the numpy motion blur that replaces ImageMagick (benchmarks.md 1.4).
"""

from __future__ import annotations

import io
from collections.abc import Callable

import cv2
import numpy as np
from matplotlib.colors import hsv_to_rgb, rgb_to_hsv
from PIL import Image
from scipy.ndimage import gaussian_filter, map_coordinates
from scipy.ndimage import zoom as scipy_zoom

Corruption = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]
SIDE = 32


def _to_uint8(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = (np.clip(x, 0, 1) * 255).astype(np.uint8)  # truncation, as np.uint8(float) does
    return out


def _float(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64) / 255.0


def gaussian_noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = (0.04, 0.06, 0.08, 0.09, 0.10)[severity - 1]
    x = _float(image)
    return _to_uint8(x + rng.normal(size=x.shape, scale=c))


def shot_noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = (500, 250, 100, 75, 50)[severity - 1]
    return _to_uint8(rng.poisson(_float(image) * c) / c)


def impulse_noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Salt and pepper on a fraction ``amount`` of the values, half each (scikit-image's s&p)."""
    amount = (0.01, 0.02, 0.03, 0.05, 0.07)[severity - 1]
    x = _float(image)
    hit = rng.random(x.shape) < amount
    salt = rng.random(x.shape) < 0.5
    x = np.where(hit & salt, 1.0, np.where(hit, 0.0, x))
    return _to_uint8(x)


def speckle_noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = (0.06, 0.1, 0.12, 0.16, 0.2)[severity - 1]
    x = _float(image)
    return _to_uint8(x + x * rng.normal(size=x.shape, scale=c))


def _gaussian(x: np.ndarray, sigma: float) -> np.ndarray:
    # scikit-image's gaussian(multichannel=True): per channel, truncate 4, mode 'nearest'
    return np.stack([gaussian_filter(x[..., d], sigma, mode="nearest", truncate=4.0) for d in range(3)], axis=-1)


def gaussian_blur(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = (0.4, 0.6, 0.7, 0.8, 1.0)[severity - 1]
    return _to_uint8(_gaussian(_float(image), c))


def _disk(radius: float, alias_blur: float) -> np.ndarray:
    extent = np.arange(-8, 8 + 1) if radius <= 8 else np.arange(-radius, radius + 1)
    ksize = (3, 3) if radius <= 8 else (5, 5)
    xx, yy = np.meshgrid(extent, extent)
    disk = np.asarray(xx**2 + yy**2 <= radius**2, dtype=np.float32)
    disk /= disk.sum()
    return cv2.GaussianBlur(disk, ksize=ksize, sigmaX=alias_blur)


def defocus_blur(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    radius, alias = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))[severity - 1]
    x = _float(image).astype(np.float32)
    kernel = _disk(radius, alias)
    return _to_uint8(np.stack([cv2.filter2D(x[..., d], -1, kernel) for d in range(3)], axis=-1))


def glass_blur(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Blur, then locally shuffle pixels, then blur again.

    The original loop (rows and columns from 31 down to 2, offsets from randint(-d, d), i.e.
    {-1, 0} for d = 1) writes the neighbour into the current pixel and leaves the neighbour as
    it was; since that neighbour (up and/or left) is not visited yet, each pass is one gather from
    the image before the pass, done here with array indexing.
    """
    sigma, max_delta, iterations = ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2))[severity - 1]
    x = _to_uint8(_gaussian(_float(image), sigma))
    coords = np.arange(SIDE - max_delta, max_delta, -1)  # 31 .. 2, the loop's visiting order
    rows, cols = np.meshgrid(coords, coords, indexing="ij")
    for _ in range(iterations):
        offsets = rng.integers(-max_delta, max_delta, size=(rows.size, 2))  # (dx, dy) per pixel
        source_rows = rows.ravel() + offsets[:, 1]
        source_cols = cols.ravel() + offsets[:, 0]
        gathered = x.copy()
        gathered[rows.ravel(), cols.ravel()] = x[source_rows, source_cols]
        x = gathered
    return _to_uint8(_gaussian(x / 255.0, sigma))


def _clipped_zoom(x: np.ndarray, factor: float) -> np.ndarray:
    side = x.shape[0]
    crop = int(np.ceil(side / factor))
    top = (side - crop) // 2
    zoomed = scipy_zoom(x[top : top + crop, top : top + crop], (factor, factor, 1), order=1)
    trim = (zoomed.shape[0] - side) // 2
    return zoomed[trim : trim + side, trim : trim + side]  # type: ignore[no-any-return]


def zoom_blur(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    # np.arange's float end point quirk included: 1.06 is reached, giving 7 factors at severity 1.
    factors = (
        np.arange(1, 1.06, 0.01),
        np.arange(1, 1.11, 0.01),
        np.arange(1, 1.16, 0.01),
        np.arange(1, 1.21, 0.01),
        np.arange(1, 1.26, 0.01),
    )[severity - 1]
    x = _float(image).astype(np.float32)
    out = np.zeros_like(x)
    for factor in factors:
        out += _clipped_zoom(x, factor)
    return _to_uint8((x + out) / (len(factors) + 1))


def contrast(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = (0.75, 0.5, 0.4, 0.3, 0.15)[severity - 1]
    x = _float(image)
    means = x.mean(axis=(0, 1), keepdims=True)
    return _to_uint8((x - means) * c + means)


def brightness(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = (0.05, 0.1, 0.15, 0.2, 0.3)[severity - 1]
    hsv = rgb_to_hsv(_float(image))
    hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
    return _to_uint8(hsv_to_rgb(hsv))


def saturate(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    scale, offset = ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2))[severity - 1]
    hsv = rgb_to_hsv(_float(image))
    hsv[..., 1] = np.clip(hsv[..., 1] * scale + offset, 0, 1)
    return _to_uint8(hsv_to_rgb(hsv))


def jpeg_compression(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    quality = (80, 65, 58, 50, 40)[severity - 1]
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"), dtype=np.uint8)


def pixelate(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = (0.95, 0.9, 0.85, 0.75, 0.65)[severity - 1]
    small = Image.fromarray(image).resize((int(SIDE * c), int(SIDE * c)), Image.Resampling.BOX)
    return np.asarray(small.resize((SIDE, SIDE), Image.Resampling.BOX), dtype=np.uint8)


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


def fog(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    strength, decay = ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75))[severity - 1]
    x = _float(image)
    peak = x.max()
    x = x + strength * plasma_fractal(rng, SIDE, decay)[:SIDE, :SIDE, np.newaxis]
    return _to_uint8(x * peak / (peak + strength))


def elastic_transform(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """A random affine (corner jitter) then a smoothed random displacement field, both reflected."""
    alpha, sigma, jitter = (
        (0, 0, 0.08),
        (0.05, 0.2, 0.07),
        (0.08, 0.06, 0.06),
        (0.1, 0.04, 0.05),
        (0.1, 0.03, 0.03),
    )[severity - 1]
    alpha, sigma, jitter = SIDE * alpha, SIDE * sigma, SIDE * jitter
    x = image.astype(np.float32) / 255.0
    centre, size = SIDE // 2, SIDE // 3
    corners = [[centre + size, centre + size], [centre + size, centre - size], [centre - size, centre - size]]
    source = np.asarray(corners, dtype=np.float32)
    target = (source + rng.uniform(-jitter, jitter, size=source.shape)).astype(np.float32)
    affine = cv2.getAffineTransform(source, target)
    warped = cv2.warpAffine(x, affine, (SIDE, SIDE), borderMode=cv2.BORDER_REFLECT_101)
    dx = (gaussian_filter(rng.uniform(-1, 1, size=(SIDE, SIDE)), sigma, mode="reflect", truncate=3) * alpha).astype(
        np.float32
    )
    dy = (gaussian_filter(rng.uniform(-1, 1, size=(SIDE, SIDE)), sigma, mode="reflect", truncate=3) * alpha).astype(
        np.float32
    )
    cols, rows, channels = np.meshgrid(np.arange(SIDE), np.arange(SIDE), np.arange(3))
    indices = (
        (rows + dy[..., np.newaxis]).reshape(-1),
        (cols + dx[..., np.newaxis]).reshape(-1),
        channels.reshape(-1),
    )
    return _to_uint8(map_coordinates(warped, indices, order=1, mode="reflect").reshape(warped.shape))


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


def motion_blur(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    radius, sigma = ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5))[severity - 1]
    blurred = _motion_blur(image.astype(np.float32), radius, sigma, rng.uniform(-45, 45))
    out: np.ndarray = np.clip(blurred, 0, 255).astype(np.uint8)
    return out


def snow(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """A thresholded, zoomed noise layer motion-blurred into streaks, added twice (once rotated 180
    degrees) to the image brightened towards 1.5 * grey + 0.5."""
    mean, std, zoom, threshold, radius, sigma, blend = (
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
        (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
    )[severity - 1]
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


CIFAR_CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur,
    "glass_blur": glass_blur,
    "motion_blur": motion_blur,
    "zoom_blur": zoom_blur,
    "snow": snow,
    "fog": fog,
    "brightness": brightness,
    "contrast": contrast,
    "elastic_transform": elastic_transform,
    "pixelate": pixelate,
    "jpeg_compression": jpeg_compression,
    "speckle_noise": speckle_noise,
    "gaussian_blur": gaussian_blur,
    "saturate": saturate,
}
