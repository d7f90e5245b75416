"""Images/s and clean accuracy of the frozen forward on each engine.

Engines: torch fp32 and torch bf16 (channels_last, inference mode), ONNX Runtime fp32, and ONNX
Runtime int8 (static QDQ quantisation, per-channel weights, calibrated on the model's held-out
training images; only with ``--data``). All are timed in one process, interleaved per repeat so
machine noise hits all alike; medians are reported. With ``--data`` each engine's accuracy on the
clean CIFAR-10 test set stands beside it (int8 is eligible as a default within 0.3 points of
fp32). Writes ``frozen_forward.json`` and ``.md``.
"""

from __future__ import annotations

import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import torch
from tqdm.auto import tqdm

from adapters import SourceModel
from adapters.frozen import FrozenForward, OnnxFrozenForward, TorchFrozenForward, export_onnx
from benchmarks.reporting.results import write_result

INT8_CALIBRATION_IMAGES = 1000


def quantize_int8(source: SourceModel, data: Path) -> Path:
    """A static int8 ONNX model of ``source``, calibrated on its held-out training images; written
    beside the fp32 export in the ONNX cache (named by the weights hash), not among the results."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from benchmarks.data.cifar10 import load_cifar10
    from benchmarks.source_model.prepare import holdout_split

    _, holdout, _ = holdout_split(source, load_cifar10(data, "train"))
    images = holdout.images[:INT8_CALIBRATION_IMAGES].transpose(0, 3, 1, 2).astype(np.float32) / 255

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.batches = iter([{"images": images[i : i + 100]} for i in range(0, len(images), 100)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    # without VNNI, onnxruntime's u8 x s8 products go through 16-bit sums that saturate with 8-bit
    # weights (agreement with fp32 fell to 32 % on an AVX2 CPU); 7-bit weights (reduce_range) avoid it
    reduce_range = not torch.cpu._is_vnni_supported()
    exported = export_onnx(source)
    prepared = exported.with_name(f"{exported.stem}-prepared.onnx")
    bits = "-7bit" if reduce_range else ""
    quantized = exported.with_name(f"{exported.stem}-int8{bits}-holdout{INT8_CALIBRATION_IMAGES}.onnx")
    quant_pre_process(str(exported), str(prepared))
    quantize_static(
        str(prepared),
        str(quantized),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        reduce_range=reduce_range,
    )
    return quantized


def clean_accuracy(forward: FrozenForward, images: torch.Tensor, labels: torch.Tensor) -> float:
    correct = sum(
        int((forward(images[i : i + 500]).argmax(1) == labels[i : i + 500]).sum()) for i in range(0, len(labels), 500)
    )
    return correct / len(labels)


def run_frozen_forward(
    source: SourceModel, batch_sizes: list[int], repeats: int, out_dir: Path, data: Path | None = None
) -> str:
    engines: dict[str, FrozenForward] = {
        "torch fp32": TorchFrozenForward(source.module),
        "torch bf16": TorchFrozenForward(source.module, "bf16"),
        "onnxruntime fp32": OnnxFrozenForward(export_onnx(source)),
    }
    accuracy: dict[str, float] = {}
    if data is not None:
        from benchmarks.data.cifar10 import load_cifar10

        engines["onnxruntime int8"] = OnnxFrozenForward(quantize_int8(source, data))
        test = load_cifar10(data, "test")
        images = torch.from_numpy(test.images).permute(0, 3, 1, 2).float().div(255)
        labels = torch.from_numpy(test.labels).long()
        accuracy = {name: clean_accuracy(engine, images, labels) for name, engine in tqdm(engines.items(), "accuracy")}
    rows: list[dict[str, Any]] = []
    generator = torch.Generator().manual_seed(0)
    for batch_size in tqdm(batch_sizes, desc="batch sizes"):
        x = torch.rand(batch_size, *source.input_shape, generator=generator)
        reference = engines["torch fp32"](x)
        iterations = max(1, 400 // batch_size)  # ~400 images per timed sample
        times: dict[str, list[float]] = {name: [] for name in engines}
        for _ in range(2):  # warm-up
            for forward in engines.values():
                forward(x)
        for _ in range(repeats):
            for name, forward in engines.items():
                start = time.perf_counter()
                for _ in range(iterations):
                    forward(x)
                times[name].append((time.perf_counter() - start) / iterations)
        for name, forward in engines.items():
            rows.append(
                {
                    "batch_size": batch_size,
                    "engine": name,
                    "images_per_s": batch_size / statistics.median(times[name]),
                    "speedup_vs_torch_fp32": statistics.median(times["torch fp32"]) / statistics.median(times[name]),
                    "max_abs_logit_diff": float((forward(x) - reference).abs().max()),
                    "clean_accuracy": accuracy.get(name),
                }
            )
    result = {
        "model": source.model_id,
        "command": " ".join(["tta-bench", *sys.argv[1:]]),
        "repeats": repeats,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.processor()}".strip(),
        "int8_calibration_images": INT8_CALIBRATION_IMAGES if data is not None else 0,
        "rows": rows,
    }
    return write_result(
        out_dir,
        "frozen_forward",
        result,
        f"Frozen forward engines ({source.model_id})",
        f"`{result['command']}` — torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
        f"{result['threads']} threads, median of {repeats} interleaved samples of ~400 images. Accuracy: the clean "
        "CIFAR-10 test set (10,000 images); int8 calibrated on "
        f"{result['int8_calibration_images']} held-out training images. Logit difference: against torch fp32 "
        "on uniform random images.",
        ["batch", "engine", "images/s", "vs torch fp32", "max abs logit diff", "clean accuracy"],
        [
            [
                str(r["batch_size"]),
                str(r["engine"]),
                f"{r['images_per_s']:.0f}",
                f"{r['speedup_vs_torch_fp32']:.2f}x",
                f"{r['max_abs_logit_diff']:.1e}",
                "-" if r["clean_accuracy"] is None else f"{100 * r['clean_accuracy']:.2f} %",
            ]
            for r in rows
        ],
    )
