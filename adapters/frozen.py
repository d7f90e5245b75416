"""Frozen forwards (source statistics, no gradient) through torch or ONNX Runtime.

ONNX Runtime fuses BatchNorm into the convolutions; the exported graph is cached on disk under a
name derived from the weights hash, so a changed model never reuses a stale export. torch fp32 and
ONNX Runtime agree to 1e-4 on logits (tested). The ``auto`` backend picks the fastest engine per
batch size, as measured by ``tta-bench frozen-forward`` (benchmarks/results/frozen_forward.md):
on a CPU with native bf16, ONNX Runtime fp32 below ``SMALL_BATCH`` images and torch bf16 from
there (2-4x ONNX Runtime at batch 64-200, clean accuracy unchanged); elsewhere ONNX Runtime.
"""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from adapters.atomic import atomic_path
from adapters.precision import Precision, Resolved, compute_precision, native_bf16
from adapters.source_model import SourceModel, state_sha256

Backend = Literal["auto", "torch", "onnxruntime"]
ONNX_OPSET = 18
SMALL_BATCH = 16  # below it, dispatch overhead dominates and ONNX Runtime is fastest (measured)


class FrozenForward(Protocol):
    backend: str

    def __call__(self, x: Tensor) -> Tensor: ...


class TorchFrozenForward:
    """Eval-mode forward under ``inference_mode`` with channels_last inputs, in fp32 or bf16."""

    def __init__(self, module: nn.Module, precision: Resolved = "fp32") -> None:
        self.module = module.eval()
        self.precision = precision
        self.backend = "torch" if precision == "fp32" else f"torch-{precision}"
        self.device = next(iter(module.parameters()), torch.empty(0)).device

    def __call__(self, x: Tensor) -> Tensor:
        with torch.inference_mode(), compute_precision(self.device, self.precision):
            return self.module(x.contiguous(memory_format=torch.channels_last)).float()  # type: ignore[no-any-return]


class BatchSizeDispatch:
    """One engine for small batches, another from ``threshold`` images on."""

    def __init__(self, small: FrozenForward, large: FrozenForward, threshold: int = SMALL_BATCH) -> None:
        self.small, self.large, self.threshold = small, large, threshold
        self.backend = f"{small.backend} (<{threshold} images) / {large.backend}"

    def __call__(self, x: Tensor) -> Tensor:
        return (self.small if x.shape[0] < self.threshold else self.large)(x)


class OnnxFrozenForward:
    """An ONNX Runtime session over an exported graph; thread-safe ``run``."""

    backend = "onnxruntime"

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.path = path

    def __call__(self, x: Tensor) -> Tensor:
        array = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        (logits,) = self.session.run(None, {self.input_name: array})
        return torch.from_numpy(logits)


def onnx_cache_dir() -> Path:
    env = os.environ.get("TTA_CACHE_DIR")
    return (Path(env) if env else Path.home() / ".cache" / "tta-server") / "onnx"


_export_lock = threading.Lock()


def export_onnx(source: SourceModel, cache_dir: Path | None = None) -> Path:
    """Export ``source.module`` (normaliser included) with a dynamic batch axis, once per hash."""
    directory = cache_dir or onnx_cache_dir()
    # Keyed by the content of the whole module (weights and input normaliser), never by name.
    digest = state_sha256(source.module.state_dict())
    path = directory / f"{source.name}-{digest[:16]}-opset{ONNX_OPSET}.onnx"
    with _export_lock:
        if path.is_file():
            return path
        directory.mkdir(parents=True, exist_ok=True)
        example = torch.rand(2, *source.input_shape)
        with atomic_path(path, durable=False) as tmp:
            module = source.module.eval()
            common = {"input_names": ["images"], "output_names": ["logits"], "opset_version": ONNX_OPSET}
            try:
                with warnings.catch_warnings():
                    # The TorchScript-based exporter is faster and exact for these CNNs.
                    warnings.simplefilter("ignore", DeprecationWarning)
                    torch.onnx.export(
                        module,
                        (example,),
                        str(tmp),
                        dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                        dynamo=False,
                        **common,  # type: ignore[arg-type]
                    )
            except Exception:  # the TorchScript-based exporter cannot trace every module
                torch.onnx.export(
                    module,
                    (example,),
                    str(tmp),
                    dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                    dynamo=True,
                    **common,  # type: ignore[arg-type]
                )
    return path


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def get_frozen_forward(source: SourceModel, backend: Backend = "auto", precision: Precision = "auto") -> FrozenForward:
    """The frozen forward of ``source`` for ``backend``, built once and shared by all streams."""
    key = f"frozen_forward:{backend}:{precision}"
    with _export_lock:
        cached = source.cache.get(key)
    if cached is None:
        cached = create_frozen_forward(source, backend, precision)
        with _export_lock:
            cached = source.cache.setdefault(key, cached)
    return cached  # type: ignore[no-any-return]


def create_frozen_forward(
    source: SourceModel, backend: Backend = "auto", precision: Precision = "auto"
) -> FrozenForward:
    """A new frozen forward of ``source``.

    ``torch`` runs in fp32 unless ``precision`` is ``bf16``; ``onnxruntime`` is fp32; ``auto`` is the
    fastest measured choice: with ``precision`` auto on a CPU with native bf16, ONNX Runtime for
    small batches and torch bf16 for the rest; otherwise ONNX Runtime when it is installed and the
    model is on the CPU (its CPU provider takes host arrays), torch fp32 elsewhere (CUDA unmeasured)."""
    device = next(iter(source.module.parameters()), torch.empty(0)).device
    # auto: bf16 where it was measured to keep predictions and pay (a CPU with native bf16)
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cpu" and native_bf16(device))
    if not source.trainable:  # ONNX (already in ONNX Runtime) or TorchScript (a compiled graph): run as is
        return TorchFrozenForward(source.module)
    if backend == "torch":
        return TorchFrozenForward(source.module, "bf16" if precision == "bf16" else "fp32")
    if backend == "onnxruntime" and not onnxruntime_available():
        raise RuntimeError("backend 'onnxruntime' requested but onnxruntime is not installed")
    if backend == "onnxruntime":
        return OnnxFrozenForward(export_onnx(source))
    large = TorchFrozenForward(source.module, "bf16" if bf16 else "fp32")
    if device.type != "cpu" or not onnxruntime_available():
        return large
    small = OnnxFrozenForward(export_onnx(source))
    return BatchSizeDispatch(small, large) if bf16 else small
