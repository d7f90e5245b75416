"""Tensor inputs, shared by raw REST bodies and the Open Inference Protocol.

Two layouts, little-endian and C-ordered: ``uint8`` (N, H, W, 3) pixels in 0..255, or ``float32``
(N, 3, H, W) values in [0, 1] (the model's input layout). H and W must equal the model's input
size (tensors are not resized). Shapes are checked with exact integer arithmetic (no overflow) and
against ``max_images`` before any byte is interpreted; values outside the dtype's range are refused.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch

from tta_server.codec.errors import ApiError

TensorDtype = Literal["uint8", "float32"]
LAYOUTS: dict[str, str] = {"uint8": "(N, H, W, 3)", "float32": "(N, 3, H, W)"}
NUMPY: dict[str, np.dtype[Any]] = {"uint8": np.dtype("u1"), "float32": np.dtype("<f4")}
JSON_TYPES: dict[type, str] = {bool: "a boolean", str: "a string", type(None): "null", dict: "an object"}


def _invalid(message: str) -> ApiError:
    return ApiError(400, "invalid_tensor", message)


def parse_dtype(value: object, names: dict[str, TensorDtype] | None = None) -> TensorDtype:
    """``uint8`` / ``float32`` (or a protocol's own names through ``names``, e.g. OIP ``UINT8``)."""
    mapping: dict[str, TensorDtype] = names or {"uint8": "uint8", "float32": "float32"}
    key = value.strip().lower() if isinstance(value, str) and names is None else value
    if not isinstance(key, str) or key not in mapping:
        raise _invalid(f"tensor dtype must be one of {sorted(mapping)}, got {str(value)[:40]!r}")
    return mapping[key]


def parse_shape_header(value: str | None) -> list[int]:
    parts = (value or "").split(",")
    if len(parts) > 8 or not all(p.strip().isdigit() for p in parts):
        raise _invalid(f"X-Tensor-Shape must be comma-separated non-negative integers, got {str(value)[:60]!r}")
    return [int(p) for p in parts]


def check_shape(shape: object, dtype: TensorDtype, size: tuple[int, int], max_images: int) -> tuple[int, ...]:
    """The shape as a tuple, if it is the layout of ``dtype`` at the model's size with 1..max_images."""
    if not isinstance(shape, list | tuple) or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape):
        raise _invalid(f"tensor shape must be a list of integers, got {str(shape)[:60]}")
    height, width = size
    n = shape[0] if shape else 0
    expected = (n, height, width, 3) if dtype == "uint8" else (n, 3, height, width)
    if tuple(shape) != expected or n < 1:
        raise _invalid(f"{dtype} tensors must be {LAYOUTS[dtype]} with N >= 1, H, W = {height}, {width}; got {shape}")
    if n > max_images:
        raise ApiError(413, "too_many_images", f"{n} images; max_images_per_request={max_images}")
    return tuple(shape)


def from_bytes(raw: bytes, dtype: TensorDtype, shape: tuple[int, ...]) -> torch.Tensor:
    need = math.prod(shape) * NUMPY[dtype].itemsize
    if len(raw) != need:
        raise _invalid(f"tensor data is {len(raw)} bytes; shape {list(shape)} of {dtype} needs {need}")
    return to_batch(np.frombuffer(raw, dtype=NUMPY[dtype]).reshape(shape), dtype)


def from_values(values: object, dtype: TensorDtype, shape: tuple[int, ...]) -> torch.Tensor:
    """A tensor from JSON numbers (flat or nested lists), checked against the dtype's range."""
    others = _leaf_types(values) - {int, float}
    if others:  # numpy would read true as 1, "0.5" as 0.5 and null as NaN
        names = ", ".join(sorted(JSON_TYPES.get(kind, kind.__name__) for kind in others))
        raise _invalid(f"tensor data must be numbers, got {names}")
    try:
        array = np.asarray(values, dtype=np.float64)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise _invalid(f"tensor data must be numbers: {str(exc)[:120]}") from None
    if array.size != math.prod(shape):
        raise _invalid(f"tensor data holds {array.size} values; shape {list(shape)} needs {math.prod(shape)}")
    if dtype == "uint8":
        if not np.isfinite(array).all() or (array != np.round(array)).any() or array.min() < 0 or array.max() > 255:
            raise _invalid("uint8 tensor data must be integers in 0..255")
        return to_batch(array.astype(np.uint8).reshape(shape), dtype)
    return to_batch(array.astype(np.float32).reshape(shape), dtype)


def _leaf_types(values: object) -> set[type]:
    """The types of the non-list elements of nested lists (``set(map(type, ...))`` runs at C speed)."""
    if not isinstance(values, list):
        return {type(values)}
    types = set(map(type, values))
    if list in types:
        types.discard(list)
        for value in values:
            if isinstance(value, list):
                types |= _leaf_types(value)
    return types


def to_batch(array: np.ndarray[Any, Any], dtype: TensorDtype) -> torch.Tensor:
    """A float (N, 3, H, W) batch in [0, 1] from a validated array of ``dtype``'s layout."""
    if dtype == "uint8":
        return torch.from_numpy(array.copy()).permute(0, 3, 1, 2).float().div_(255)
    batch = torch.from_numpy(array.astype(np.float32, copy=True))
    if not bool(torch.isfinite(batch).all()) or float(batch.min()) < 0 or float(batch.max()) > 1:
        raise _invalid("float32 tensors must hold finite values in [0, 1]")
    return batch
