"""Raw tensor bodies for ``POST /v1/predict`` (``Content-Type: application/octet-stream``).

Headers ``X-Tensor-Shape`` and ``X-Tensor-Dtype`` describe the body, little-endian and C-ordered:
``uint8`` as (N, H, W, 3) pixels in 0..255, or ``float32`` as (N, 3, H, W) in [0, 1], the model's
input layout. H and W must equal the model's input size (tensors are not resized).
"""

from __future__ import annotations

import numpy as np
import torch

LAYOUTS = {"uint8": "(N, H, W, 3)", "float32": "(N, 3, H, W)"}


class TensorError(ValueError):
    """The body does not match the declared tensor."""


def decode_tensor(
    body: bytes, shape_header: str | None, dtype_header: str | None, size: tuple[int, int]
) -> torch.Tensor:
    """A float (N, 3, H, W) batch in [0, 1] from a raw body."""
    dtype = (dtype_header or "").strip().lower()
    if dtype not in LAYOUTS:
        raise TensorError(f"X-Tensor-Dtype must be one of {sorted(LAYOUTS)}, got {dtype_header!r}")
    try:
        shape = tuple(int(part) for part in (shape_header or "").split(","))
    except ValueError:
        raise TensorError(f"X-Tensor-Shape must be comma-separated integers, got {shape_header!r}") from None
    height, width = size
    expected = (shape[0], height, width, 3) if dtype == "uint8" else (shape[0], 3, height, width)
    if len(shape) != 4 or shape[0] < 1 or shape != expected:
        raise TensorError(f"{dtype} tensors must be {LAYOUTS[dtype]} with H, W = {height}, {width}; got {shape}")
    itemsize = np.dtype(dtype).itemsize
    if len(body) != int(np.prod(shape)) * itemsize:
        raise TensorError(f"body is {len(body)} bytes; shape {shape} of {dtype} needs {int(np.prod(shape)) * itemsize}")
    array = np.frombuffer(body, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)
    if dtype == "uint8":
        return torch.from_numpy(array.copy()).permute(0, 3, 1, 2).float().div_(255)
    batch = torch.from_numpy(array.astype(np.float32))
    if not torch.isfinite(batch).all() or float(batch.min()) < 0 or float(batch.max()) > 1:
        raise TensorError("float32 tensors must hold finite values in [0, 1]")
    return batch
