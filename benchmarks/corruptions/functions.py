"""Image corruptions of CIFAR-10-C and ImageNet-C (benchmarks.md 1.2-1.4), one implementation
for both constant sets (:mod:`benchmarks.corruptions.constants`).

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

import importlib.util
import io
import os
from collections.abc import Callable
from functools import lru_cache, partial
from pathlib import Path

import cv2
import numpy as np
from matplotlib.colors import hsv_to_rgb, rgb_to_hsv
from PIL import Image
from scipy.ndimage import gaussian_filter, map_coordinates
from scipy.ndimage import zoom as scipy_zoom

from benchmarks.corruptions.constants import ALL_CORRUPTIONS, CIFAR, IMAGENET, CorruptionConstants

Corruption = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]
FROST_TEXTURES_ENV = "TTA_FROST_TEXTURES"


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
