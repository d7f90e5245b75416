"""Images/s of the frozen forward: torch eager (channels_last, inference mode) vs ONNX Runtime.

Both backends are timed in the same process, interleaved per repeat so machine noise hits both
alike; medians are reported. Writes ``frozen_forward.json`` and ``frozen_forward.md``.
"""

from __future__ import annotations

import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import onnxruntime
import torch

from adapters import SourceModel
from adapters.frozen import FrozenForward, OnnxFrozenForward, TorchFrozenForward, export_onnx
from benchmarks.report import write_result


def run_frozen_forward(source: SourceModel, batch_sizes: list[int], repeats: int, out_dir: Path) -> str:
    backends: dict[str, FrozenForward] = {
        "torch": TorchFrozenForward(source.module),
        "onnxruntime": OnnxFrozenForward(export_onnx(source)),
    }
    rows: list[dict[str, Any]] = []
    generator = torch.Generator().manual_seed(0)
    for batch_size in batch_sizes:
        x = torch.rand(batch_size, *source.input_shape, generator=generator)
        parity = float((backends["torch"](x) - backends["onnxruntime"](x)).abs().max())
        iterations = max(1, 400 // batch_size)  # ~400 images per timed sample
        times: dict[str, list[float]] = {name: [] for name in backends}
        for _ in range(2):  # warm-up
            for forward in backends.values():
                forward(x)
        for _ in range(repeats):
            for name, forward in backends.items():
                start = time.perf_counter()
                for _ in range(iterations):
                    forward(x)
                times[name].append((time.perf_counter() - start) / iterations)
        medians = {name: statistics.median(values) for name, values in times.items()}
        rows.append(
            {
                "batch_size": batch_size,
                "torch_images_per_s": batch_size / medians["torch"],
                "onnxruntime_images_per_s": batch_size / medians["onnxruntime"],
                "speedup": medians["torch"] / medians["onnxruntime"],
                "max_abs_logit_diff": parity,
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
        "rows": rows,
    }
    return write_result(
        out_dir,
        "frozen_forward",
        result,
        f"Frozen forward: torch eager vs ONNX Runtime ({source.model_id})",
        f"`{result['command']}` — torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
        f"{result['threads']} threads, median of {repeats} interleaved samples.",
        ["batch", "torch eager img/s", "onnxruntime img/s", "ORT speed-up", "max abs logit diff"],
        [
            [
                str(r["batch_size"]),
                f"{r['torch_images_per_s']:.0f}",
                f"{r['onnxruntime_images_per_s']:.0f}",
                f"{r['speedup']:.2f}x",
                f"{r['max_abs_logit_diff']:.1e}",
            ]
            for r in rows
        ],
    )
