"""Image files (PNG, JPEG, ...) to model input tensors, with every decoder failure a clear 4xx.

8-bit modes (RGB, L, P, RGBA, CMYK, ...) are converted to RGB; 16-bit greyscale (``I;16*``) is
scaled from 0..65535 (16-bit colour PNGs arrive as 8-bit RGB, their high bytes). 32-bit integer
and float images (``I``, ``F``) have no agreed range and are refused with a message naming the fix.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from adapters.source_model import Preprocessing
from tta_server.codec.errors import ApiError

SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def _invalid(message: str) -> ApiError:
    return ApiError(422, "invalid_image", message)


class PixelBudget:
    """The pixels one request's images may decode to together (``max_request_pixels``): decoding
    costs time in proportion to pixels, not bytes (a flat 4096x4096 PNG is 57 KiB and takes 160 ms
    here), so without it one 32 MiB request of such files holds a worker for about 40 s."""

    def __init__(self, limit: int) -> None:
        self.limit, self.left = limit, limit

    def take(self, label: str, width: int, height: int) -> None:
        self.left -= width * height
        if self.left < 0:
            raise ApiError(
                413,
                "too_many_pixels",
                f"{label}: the request's images decode to more than max_request_pixels={self.limit} pixels "
                "together; send fewer or smaller images",
            )


def decode_image(
    payload: bytes, label: str, preprocessing: Preprocessing, max_pixels: int, budget: PixelBudget | None = None
) -> Tensor:
    """Bytes of an image file -> float tensor (3, H, W) in [0, 1] at the model's input size. The size
    is checked from the header, before anything is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # damaged files warn on their way to the error below
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(payload))
            width, height = image.size
            if width * height > max_pixels:
                raise _invalid(f"{label}: {width}x{height} exceeds max_image_pixels={max_pixels}")
            if budget is not None:
                budget.take(label, width, height)
            image.load()
            rgb = _to_rgb(image, label)
            return to_model_input(rgb, label, preprocessing)
    except ApiError:
        raise
    except UnidentifiedImageError:  # its message names a BytesIO object, not the problem
        what = "is empty" if not payload else "is not in an image format the server reads"
        raise _invalid(f"{label}: {what}; send PNG, JPEG, WebP, BMP, GIF or TIFF files") from None
    except Exception as exc:  # decoders raise many types (OSError, SyntaxError, struct.error, ...)
        raise _invalid(f"{label}: not a decodable image ({type(exc).__name__}: {str(exc)[:160]})") from None


def _to_rgb(image: Image.Image, label: str) -> Image.Image:
    if image.mode in SIXTEEN_BIT:
        grey = np.asarray(image, dtype=np.float64) / 65535.0
        return Image.fromarray(np.repeat(np.round(grey * 255).astype(np.uint8)[..., None], 3, axis=2), "RGB")
    if image.mode in ("I", "F"):
        kind = "32-bit integer" if image.mode == "I" else "floating-point"
        raise _invalid(
            f"{label}: {kind} images (mode {image.mode}) have no defined pixel range; send 8- or 16-bit "
            "PNG/JPEG, or a float32 tensor in [0, 1] (Content-Type: application/octet-stream)"
        )
    return image.convert("RGB")


def to_model_input(image: Image.Image, label: str, preprocessing: Preprocessing) -> Tensor:
    height, width = preprocessing.input_size
    if image.size != (width, height):
        if preprocessing.resize == "none":
            raise _invalid(f"{label}: is {image.size[0]}x{image.size[1]}, the model takes {width}x{height}")
        if preprocessing.resize == "resize_center_crop":
            short = preprocessing.resize_size or min(height, width)
            scale = short / min(image.size)
            size = (max(width, round(image.size[0] * scale)), max(height, round(image.size[1] * scale)))
            image = image.resize(size, Image.Resampling.BILINEAR)
            left, top = (image.size[0] - width) // 2, (image.size[1] - height) // 2
            image = image.crop((left, top, left + width, top + height))
        else:
            image = image.resize((width, height), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255)
