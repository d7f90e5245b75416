"""Images/s of each adapter's ``forward_and_adapt`` at one batch size, measured side by side.

Every adapter runs twice: as configured (the default path) and with a baseline config merged in
(by default ``{"precision": "fp32"}`` plus one augmented view per pass where the adapter builds
views: the exact path of earlier releases, bar the faster view code). All instances are stepped
in turn on the same batches (interleaved, so machine noise hits all alike); the median seconds
per batch give images/s, the speed-up over the baseline and the time a full CIFAR-10-C replay
(15 corruptions x 10,000 images) would take. Memory per instance: the peak tensor bytes of one
step seen by the torch profiler's memory timeline, and the exact per-stream state. Writes
``adapter_speed.json`` and ``.md``.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from adapters import Adapter, SourceModel, create_adapter, get_adapter_class
from adapters.memory import step_memory
from benchmarks.reporting.results import write_result

FULL_STREAM = 150_000  # CIFAR-10-C: 15 corruptions x 10,000 images
BASELINE: dict[str, Any] = {"precision": "fp32"}


def baseline_config(name: str, config: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    merged = {**config, **baseline}
    if "augment" in get_adapter_class(name).Config.model_fields and "augment" not in baseline:
        merged["augment"] = {**config.get("augment", {}), "views_per_pass": 1}
    return merged


def label(name: str, config: dict[str, Any]) -> str:
    return f"{name} {json.dumps(config)}" if config else name


def time_steps(instances: dict[str, Adapter], batches: list[torch.Tensor], repeats: int) -> dict[str, list[float]]:
    for adapter in instances.values():  # warm-up (ONNX export, allocator)
        adapter.forward_and_adapt(batches[0])
    times: dict[str, list[float]] = {key: [] for key in instances}
    for i in tqdm(range(repeats), desc="interleaved steps"):
        for key, adapter in instances.items():
            start = time.perf_counter()
            adapter.forward_and_adapt(batches[i % len(batches)])
            times[key].append(time.perf_counter() - start)
    return times


def run_adapter_speed(
    source: SourceModel,
    adapters: list[tuple[str, dict[str, Any]]],
    batch_size: int,
    repeats: int,
    out_dir: Path,
    baseline: dict[str, Any] | None = None,
) -> str:
    baseline = BASELINE if baseline is None else baseline
    generator = torch.Generator().manual_seed(0)
    batches = [torch.rand(batch_size, *source.input_shape, generator=generator) for _ in range(4)]
    pairs = [(name, config, baseline_config(name, config, baseline)) for name, config in adapters]
    instances: dict[str, Adapter] = {}
    for name, config, base in pairs:
        instances[f"default|{label(name, config)}"] = create_adapter(name, source, config)
        instances[f"baseline|{label(name, config)}"] = create_adapter(name, source, base)
    times = time_steps(instances, batches, repeats)
    rows: list[dict[str, Any]] = []
    for name, config, base in pairs:
        key = label(name, config)
        default, old = instances[f"default|{key}"], instances[f"baseline|{key}"]
        new_s, old_s = statistics.median(times[f"default|{key}"]), statistics.median(times[f"baseline|{key}"])
        rows.append(
            {
                "adapter": key,
                "baseline_config": base,
                # the source adapter's frozen forward picks its own engine
                "precision": getattr(getattr(default, "frozen", None), "backend", default.precision),
                "baseline_s_per_batch": old_s,
                "default_s_per_batch": new_s,
                "baseline_images_per_s": batch_size / old_s,
                "images_per_s": batch_size / new_s,
                "speedup": old_s / new_s,
                "full_cifar10c_minutes": FULL_STREAM / (batch_size / new_s) / 60,
                "baseline": step_memory(old, batches[0], with_inputs=True),
                **step_memory(default, batches[0], with_inputs=True),
                "state_bytes": default.state_bytes(),
                "diagnostics": default.diagnostics(),
            }
        )
    source_bytes = source.weight_bytes()
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
        f"Adapter throughput, default vs exact baseline ({source.model_id}, batch {batch_size})",
        f"`{result['command']}` — torch {torch.__version__}, {result['threads']} threads, median of {repeats} "
        "interleaved steps (synthetic uniform images: CoTTA's and PETAL's gate fires on them, their slow path). "
        f"Baseline: each adapter with `{json.dumps(baseline)}` merged in (and one augmented view per pass for "
        "adapters that build views). Memory: peak tensor bytes allocated during one step (torch profiler), the "
        f"same with the tensors the step read, and the exact per-stream state; the model is "
        f"{source_bytes / 2**20:.1f} MiB. ONNX Runtime allocates outside torch, so its rows show only the "
        "torch-side tensors.",
        [
            "adapter",
            "precision",
            "baseline img/s",
            "default img/s",
            "speed-up",
            "full CIFAR-10-C (150k)",
            "step peak (baseline)",
            "step peak",
            "stream state",
        ],
        [
            [
                str(r["adapter"]),
                str(r["precision"]),
                f"{r['baseline_images_per_s']:.0f}",
                f"{r['images_per_s']:.0f}",
                f"{r['speedup']:.2f}x",
                f"{r['full_cifar10c_minutes']:.1f} min",
                f"{r['baseline']['step_peak_bytes'] / 2**20:.0f} MiB",
                f"{r['step_peak_bytes'] / 2**20:.0f} MiB",
                f"{r['state_bytes'] / 2**20:.2f} MiB ({100 * r['state_bytes'] / source_bytes:.1f} %)",
            ]
            for r in rows
        ],
    )
