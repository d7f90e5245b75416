"""Images/s of each adapter's ``forward_and_adapt`` at one batch size, measured side by side.

Adapters are stepped in turn on the same batches (interleaved, so machine noise hits all alike);
the median seconds per batch give images/s and the time a full CIFAR-10-C replay
(15 corruptions x 10,000 images) would take. Memory per adapter: the peak tensor bytes
of one step seen by the torch profiler's memory timeline, and the exact per-stream state.
Writes ``adapter_speed.json`` and ``.md``.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from adapters import SourceModel, create_adapter
from adapters.memory import step_memory
from benchmarks.report import write_result

FULL_STREAM = 150_000  # CIFAR-10-C: 15 corruptions x 10,000 images


def run_adapter_speed(
    source: SourceModel,
    adapters: list[tuple[str, dict[str, Any]]],
    batch_size: int,
    repeats: int,
    out_dir: Path,
) -> str:
    generator = torch.Generator().manual_seed(0)
    batches = [torch.rand(batch_size, *source.input_shape, generator=generator) for _ in range(4)]
    instances = {
        f"{name} {json.dumps(cfg)}" if cfg else name: create_adapter(name, source, cfg) for name, cfg in adapters
    }
    for adapter in instances.values():  # warm-up (ONNX export, allocator)
        adapter.forward_and_adapt(batches[0])
    times: dict[str, list[float]] = {label: [] for label in instances}
    for i in range(repeats):
        for label, adapter in instances.items():
            start = time.perf_counter()
            adapter.forward_and_adapt(batches[i % len(batches)])
            times[label].append(time.perf_counter() - start)
    rows: list[dict[str, Any]] = []
    for label, values in times.items():
        median = statistics.median(values)
        adapter = instances[label]
        rows.append(
            {
                "adapter": label,
                "median_s_per_batch": median,
                "images_per_s": batch_size / median,
                "full_cifar10c_minutes": FULL_STREAM / (batch_size / median) / 60,
                **step_memory(adapter, batches[0], with_inputs=True),
                "state_bytes": adapter.state_bytes(),
                "diagnostics": adapter.diagnostics(),
            }
        )
    source_bytes = sum(t.numel() * t.element_size() for t in source.module.state_dict().values())
    result = {
        "model": source.model_id,
        "model_bytes": source_bytes,
        "command": " ".join(["tta-bench", *sys.argv[1:]]),
        "batch_size": batch_size,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "rows": rows,
    }
    return write_result(
        out_dir,
        "adapter_speed",
        result,
        f"Adapter throughput ({source.model_id}, batch {batch_size})",
        f"`{result['command']}` — torch {torch.__version__}, {result['threads']} threads, median of {repeats} "
        "interleaved steps (synthetic uniform images: CoTTA's and PETAL's gate fires on them, their slow path). "
        "Memory: peak tensor bytes allocated during one step (torch profiler allocation and free events), the "
        "same with the tensors the step read (weights, state, input; profiler memory timeline), and the exact "
        f"per-stream state; the model is "
        f"{source_bytes / 2**20:.1f} MiB. ONNX Runtime allocates outside torch, so its row shows only the "
        "torch-side tensors.",
        ["adapter", "s / batch", "images/s", "full CIFAR-10-C (150k)", "step peak", "with inputs", "stream state"],
        [
            [
                str(r["adapter"]),
                f"{r['median_s_per_batch']:.3f}",
                f"{r['images_per_s']:.0f}",
                f"{r['full_cifar10c_minutes']:.1f} min",
                f"{r['step_peak_bytes'] / 2**20:.0f} MiB",
                f"{r['step_peak_with_inputs_bytes'] / 2**20:.0f} MiB",
                f"{r['state_bytes'] / 2**20:.2f} MiB ({100 * r['state_bytes'] / source_bytes:.1f} %)",
            ]
            for r in rows
        ],
    )
