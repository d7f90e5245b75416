"""How well the server's working-memory estimate predicts the memory of real steps.

The server reserves ``fixed + n * per_image`` bytes of its memory budget for every running step,
fitted from two profiled steps of 8 and 16 images (:mod:`adapters.memory`). This compares that
prediction with profiled steps at larger batches, per adapter. Writes ``working_memory.{json,md}``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from adapters import SourceModel, create_adapter
from adapters.memory import CALIBRATION_SIZES, measure_working_memory, step_memory
from benchmarks.report import write_result


def run_working_memory(source: SourceModel, adapters: list[str], batch_sizes: list[int], out_dir: Path) -> str:
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(max(batch_sizes), *source.input_shape, generator=generator)
    rows: list[dict[str, Any]] = []
    for name in tqdm(adapters, desc="working memory", unit="adapter"):
        estimate = measure_working_memory(name, source)
        adapter = create_adapter(name, source)
        adapter.forward_and_adapt(x[: CALIBRATION_SIZES[0]])  # lazily created state is not working memory
        for n in batch_sizes:
            measured = step_memory(adapter, x[:n])["step_peak_bytes"]
            predicted = estimate.bytes_for(n)
            rows.append(
                {
                    "adapter": name,
                    "batch_size": n,
                    "fixed_bytes": estimate.fixed_bytes,
                    "per_image_bytes": estimate.per_image_bytes,
                    "predicted_bytes": predicted,
                    "measured_bytes": measured,
                    "relative_error": (predicted - measured) / measured if measured else 0.0,
                }
            )
    result = {
        "model": source.model_id,
        "command": " ".join(["tta-bench", *sys.argv[1:]]),
        "calibration_sizes": list(CALIBRATION_SIZES),
        "torch": torch.__version__,
        "rows": rows,
    }
    return write_result(
        out_dir,
        "working_memory",
        result,
        f"Working-memory estimate vs measured step memory ({source.model_id})",
        f"`{result['command']}` — torch {torch.__version__}. Estimate: fixed + n x per-image bytes fitted from "
        f"profiled steps of {CALIBRATION_SIZES[0]} and {CALIBRATION_SIZES[1]} uniform-noise images, as the server "
        "does once per adapter and config to reserve a step's memory from `memory_budget_bytes`. Measured: peak "
        "tensor bytes allocated during one step (torch profiler memory timeline). Positive error: the server "
        "reserves more than the step uses.",
        ["adapter", "batch", "per image", "fixed", "predicted", "measured", "error"],
        [
            [
                str(r["adapter"]),
                str(r["batch_size"]),
                f"{r['per_image_bytes'] / 2**20:.2f} MiB",
                f"{r['fixed_bytes'] / 2**20:.1f} MiB",
                f"{r['predicted_bytes'] / 2**20:.1f} MiB",
                f"{r['measured_bytes'] / 2**20:.1f} MiB",
                f"{100 * r['relative_error']:+.1f} %",
            ]
            for r in rows
        ],
    )
