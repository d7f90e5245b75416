"""Images/s of each adapter's ``forward_and_adapt`` at one batch size, measured side by side.

Adapters are stepped in turn on the same batches (interleaved, so machine noise hits all alike);
the median seconds per batch give images/s and the time a full CIFAR-10-C replay
(15 corruptions x 10,000 images) would take. Peak memory is measured per adapter in a fresh
process (model loaded, one stream, two steps): its peak resident set, and the rise over the
resident set before the first step (activations, gradients, augmented views, per-stream state).
Writes ``adapter_speed.json`` and ``.md``.
"""

from __future__ import annotations

import json
import multiprocessing
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from adapters import SourceModel, create_adapter
from benchmarks.report import write_result

FULL_STREAM = 150_000  # CIFAR-10-C: 15 corruptions x 10,000 images


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def _measure_memory(model: str, name: str, config: dict[str, Any], batch_size: int, queue: Any) -> None:
    from adapters import create_source_model

    torch.set_num_threads(1)
    source = create_source_model(model)
    adapter = create_adapter(name, source, config)
    x = torch.rand(batch_size, *source.input_shape, generator=torch.Generator().manual_seed(0))
    before = _rss_bytes()
    for _ in range(2):
        adapter.forward_and_adapt(x)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    queue.put({"peak_rss_bytes": peak, "rss_before_bytes": before, "state_bytes": adapter.state_bytes()})


def peak_memory(model: str, name: str, config: dict[str, Any], batch_size: int) -> dict[str, int]:
    """Peak memory of one stream of ``name``, in a fresh process so adapters do not mix."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_measure_memory, args=(model, name, config, batch_size, queue))
    process.start()
    result: dict[str, int] = queue.get()
    process.join()
    return result


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
    for (name, cfg), (label, values) in zip(adapters, times.items(), strict=True):
        median = statistics.median(values)
        memory = peak_memory(source.name, name, cfg, batch_size)
        rows.append(
            {
                "adapter": label,
                "median_s_per_batch": median,
                "images_per_s": batch_size / median,
                "full_cifar10c_minutes": FULL_STREAM / (batch_size / median) / 60,
                **memory,
                "peak_rise_bytes": memory["peak_rss_bytes"] - memory["rss_before_bytes"],
                "diagnostics": instances[label].diagnostics(),
            }
        )
    result = {
        "model": source.model_id,
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
        "Memory: one stream in a fresh process, 1 thread; peak RSS, its rise over the RSS before the first step, "
        "and the exact per-stream state.",
        ["adapter", "s / batch", "images/s", "full CIFAR-10-C (150k)", "peak RSS", "rise in step", "stream state"],
        [
            [
                str(r["adapter"]),
                f"{r['median_s_per_batch']:.3f}",
                f"{r['images_per_s']:.0f}",
                f"{r['full_cifar10c_minutes']:.1f} min",
                f"{r['peak_rss_bytes'] / 2**20:.0f} MiB",
                f"{r['peak_rise_bytes'] / 2**20:.0f} MiB",
                f"{r['state_bytes'] / 2**20:.1f} MiB",
            ]
            for r in rows
        ],
    )
