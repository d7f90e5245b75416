"""Decoding request images into model input tensors."""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from adapters.source_model import Preprocessing


class ImageDecodeError(ValueError):
    """An image the server cannot take; the message names it and the problem."""


def decode_image(payload: bytes, label: str, preprocessing: Preprocessing, max_pixels: int) -> Tensor:
    """Bytes of a PNG/JPEG/... image -> float tensor (3, H, W) in [0, 1] at the model's input size."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(payload))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageDecodeError(f"{label}: {width}x{height} exceeds max_pixels={max_pixels}")
            image.load()
    except ImageDecodeError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"{label}: not a supported image ({exc})") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageDecodeError(f"{label}: cannot decode ({exc})") from exc
    return to_model_input(image.convert("RGB"), label, preprocessing)


def to_model_input(image: Image.Image, label: str, preprocessing: Preprocessing) -> Tensor:
    height, width = preprocessing.input_size
    if image.size != (width, height):
        if preprocessing.resize == "none":
            raise ImageDecodeError(f"{label}: is {image.size[0]}x{image.size[1]}, the model takes {width}x{height}")
        if preprocessing.resize == "resize_center_crop":
            short = preprocessing.resize_size or min(height, width)
            scale = short / min(image.size)
            image = image.resize(
                (round(image.size[0] * scale), round(image.size[1] * scale)), Image.Resampling.BILINEAR
            )
            left, top = (image.size[0] - width) // 2, (image.size[1] - height) // 2
            image = image.crop((left, top, left + width, top + height))
        else:
            image = image.resize((width, height), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255)
