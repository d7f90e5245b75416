"""The int8 engine of the frozen-forward benchmark: calibrated, cached beside the export, and
agreeing with fp32 on real test images."""

from __future__ import annotations

from pathlib import Path

import torch

from adapters import SourceModel
from adapters.frozen import OnnxFrozenForward, TorchFrozenForward, onnx_cache_dir
from benchmarks.data.cifar10 import load_cifar10
from benchmarks.performance.frozen_forward import quantize_int8


def test_int8_model_is_cached_and_agrees_with_fp32(bundled_source: SourceModel, shared_cifar10: Path) -> None:
    path = quantize_int8(bundled_source, shared_cifar10)
    assert path.parent == onnx_cache_dir() and "int8" in path.name and path.stat().st_size > 100_000
    images = torch.from_numpy(load_cifar10(shared_cifar10, "test").images[:500]).permute(0, 3, 1, 2).float() / 255
    exact = TorchFrozenForward(bundled_source.module)(images).argmax(1)
    int8 = OnnxFrozenForward(path)(images).argmax(1)
    assert float((int8 == exact).float().mean()) >= 0.95
