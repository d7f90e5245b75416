"""ONNX Runtime and torch frozen forwards agree, and the export is cached by content hash."""

from __future__ import annotations

import pytest
import torch

from adapters import SourceModel, create_adapter, export_onnx, get_frozen_forward
from adapters.frozen import OnnxFrozenForward, TorchFrozenForward
from tests.conftest import image_batch, make_tiny_source


@pytest.mark.parametrize("batch_size", [1, 64, 200])
def test_onnxruntime_matches_torch_on_the_bundled_model(bundled_source: SourceModel, batch_size: int) -> None:
    x = image_batch(batch_size, seed=batch_size)
    torch_logits = TorchFrozenForward(bundled_source.module)(x)
    ort_logits = OnnxFrozenForward(export_onnx(bundled_source))(x)
    assert (torch_logits - ort_logits).abs().max() <= 1e-4


def test_export_is_cached_by_weights(tmp_path) -> None:  # type: ignore[no-untyped-def]
    first = export_onnx(make_tiny_source(seed=0), tmp_path)
    mtime = first.stat().st_mtime_ns
    assert export_onnx(make_tiny_source(seed=0), tmp_path) == first and first.stat().st_mtime_ns == mtime
    assert export_onnx(make_tiny_source(seed=1), tmp_path) != first


def test_source_adapter_streams_share_one_session(bundled_source: SourceModel) -> None:
    a = create_adapter("source", bundled_source, {"backend": "onnxruntime"})
    b = create_adapter("source", bundled_source, {"backend": "onnxruntime"})
    assert a.frozen is b.frozen is get_frozen_forward(bundled_source, "onnxruntime")
    x = image_batch(8)
    torch.testing.assert_close(
        a.forward_and_adapt(x),
        create_adapter("source", bundled_source, {"backend": "torch"}).forward_and_adapt(x),
        atol=1e-4,
        rtol=0,
    )


def test_auto_takes_the_fastest_measured_engine_per_batch_size(bundled_source: SourceModel) -> None:
    from adapters.frozen import SMALL_BATCH, BatchSizeDispatch
    from adapters.precision import native_bf16

    auto = get_frozen_forward(bundled_source)
    exact = get_frozen_forward(bundled_source, "auto", "fp32")
    assert exact.backend == "onnxruntime"  # precision fp32: exact engines only
    if not native_bf16(torch.device("cpu")):
        assert auto.backend == "onnxruntime"
        return
    assert isinstance(auto, BatchSizeDispatch)
    assert (auto.small.backend, auto.large.backend) == ("onnxruntime", "torch-bf16")
    small, large = image_batch(SMALL_BATCH - 1, seed=1), image_batch(SMALL_BATCH, seed=2)
    assert torch.equal(auto(small), exact(small))  # small batches: ONNX Runtime fp32, bit for bit
    bf16 = auto(large)
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, exact(large))  # really the bf16 engine
    assert (bf16.argmax(1) == exact(large).argmax(1)).float().mean() >= 0.9
    torch.testing.assert_close(bf16, exact(large), atol=0.25, rtol=0)
