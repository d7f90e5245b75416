"""Compute precision of adapter steps and frozen forwards.

``fp32`` is exact (the numbers of the research implementations); ``bf16`` runs the step under
``torch.autocast`` with bfloat16 (matrix products and convolutions in bf16, parameters, optimizer
state and returned logits in fp32); ``auto`` takes the adapter's measured preference for the device
(``Adapter.preferred_precision``), and only where the device computes bf16 natively: a CPU with
AVX-512 BF16 or AMX, a CUDA GPU that supports bf16. Elsewhere bf16 is emulated and slower, so
``auto`` stays fp32 there. The measurements behind the preferences are in the adapter-speed
benchmark (``benchmarks/results/adapter_speed.md``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Literal

import torch

Precision = Literal["auto", "fp32", "bf16"]
Resolved = Literal["fp32", "bf16"]


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware (so autocast pays off)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return False


def resolve_precision(requested: Precision, device: torch.device, preferred: Mapping[str, Resolved]) -> Resolved:
    """The precision a step runs in: an explicit choice as given, ``auto`` as ``preferred`` says for
    this device type where bf16 is native, fp32 otherwise."""
    if requested != "auto":
        return requested
    choice = preferred.get(device.type, "fp32")
    return choice if choice == "fp32" or native_bf16(device) else "fp32"


@contextlib.contextmanager
def compute_precision(device: torch.device, precision: Resolved) -> Iterator[None]:
    """Autocast to bf16 for ``bf16``; nothing for ``fp32`` (exact)."""
    if precision == "fp32":
        yield
        return
    with torch.autocast(device.type, dtype=torch.bfloat16):
        yield
