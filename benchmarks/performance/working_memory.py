"""How well the server's working-memory estimate predicts the memory of real steps.

The server reserves, for every running step, the chord between two profiled steps (8 images and its
largest step, :mod:`adapters.memory`) from its memory budget. This compares that reservation with
profiled steps of other batch sizes, per adapter. Writes ``working_memory.{json,md}``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from adapters import SourceModel, create_adapter
from adapters.memory import CALIBRATION_SIZES, measure_working_memory, step_memory
from benchmarks.reporting.results import write_result


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
                    "calibration_bytes": [estimate.small_bytes, estimate.large_bytes],
                    "per_image_bytes": estimate.per_image_bytes,
                    "predicted_bytes": predicted,
                    "measured_bytes": measured,
                    "over_reserved": (predicted - measured) / measured if measured else 0.0,
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
        f"`{result['command']}` — torch {torch.__version__}. Reserved: what the server reserves from "
        f"`memory_budget_bytes` for a step, the chord between profiled steps of {CALIBRATION_SIZES[0]} and "
        f"{CALIBRATION_SIZES[1]} uniform-noise images (its default largest step), measured once per adapter and "
        "config. Measured: peak tensor bytes allocated during one step of that batch (torch profiler memory "
        "timeline). A step's peak is convex in the batch size, so the chord must not be below it: "
        "over-reserved >= 0.",
        ["adapter", "batch", "per image", "reserved", "measured", "over-reserved"],
        [
            [
                str(r["adapter"]),
                str(r["batch_size"]),
                f"{r['per_image_bytes'] / 2**20:.2f} MiB",
                f"{r['predicted_bytes'] / 2**20:.1f} MiB",
                f"{r['measured_bytes'] / 2**20:.1f} MiB",
                f"{100 * r['over_reserved']:+.1f} %",
            ]
            for r in rows
        ],
    )
