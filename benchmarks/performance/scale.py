"""How the service's cost grows with the number of streams, under a memory budget that spills.

For each adapter and stream count N, a real server (uvicorn in a thread on 127.0.0.1, snapshot
store in a temporary directory) gets a memory budget that holds the states of a quarter of the N
streams plus the working memory of ``clients`` concurrent steps, so streams are spilled to disk and
woken again all the time. N streams then send ``requests`` raw-tensor requests of ``batch_size``
images each, round-robin (stream 0, 1, ..., N-1, then again), from ``clients`` concurrent
connections: after the first round nearly every request wakes a spilled stream. Reported per
(adapter, N): images/s, request latency p50/p99, spills and wakes, the mean spill and wake
durations (the server's ``tta_stream_transfer_duration_seconds``), a liveness probe's latency every
50 ms (p99, max: how long the event loop is busy), snapshot bytes on disk and the process' peak
resident memory. Writes ``scale.json``, ``.md`` and ``scale.png``.
"""

from __future__ import annotations

import asyncio
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from adapters import create_adapter, create_source_model
from adapters.memory import measure_working_memory
from benchmarks.performance.load_test import _images
from benchmarks.performance.local_server import running_server
from benchmarks.reporting.results import write_result


def _metric_sums(text: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(("tta_stream_transfer_duration_seconds_", "tta_stream_")):
                key = sample.name + "".join(f"|{v}" for k, v in sorted(sample.labels.items()) if k in ("kind",))
                values[key] = values.get(key, 0.0) + sample.value
    return values


async def _drive(
    url: str, images: np.ndarray, streams: int, requests: int, clients: int
) -> tuple[float, list[float], list[float]]:
    """(seconds, request latencies, liveness-probe latencies)."""
    import httpx

    shape = ",".join(map(str, images.shape[1:]))
    headers = {"content-type": "application/octet-stream", "X-Tensor-Shape": shape, "X-Tensor-Dtype": "uint8"}
    order = [(r, s) for r in range(requests) for s in range(streams)]
    queue: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
    for item in order:
        queue.put_nowait(item)
    latencies: list[float] = []
    bar = tqdm(total=len(order), desc=f"{streams} streams", unit="req", leave=False)

    async def client(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            r, s = queue.get_nowait()
            batch = images[(r * streams + s) % len(images)]
            start = time.perf_counter()
            response = await http.post(
                f"{url}/v1/predict", content=batch.tobytes(), headers={**headers, "X-Stream-Id": f"scale-{s}"}
            )
            latencies.append(time.perf_counter() - start)
            response.raise_for_status()
            bar.update()

    probes: list[float] = []

    async def probe(http: httpx.AsyncClient) -> None:
        while True:
            await asyncio.sleep(0.05)
            sent = time.perf_counter()
            (await http.get(f"{url}/health/live")).raise_for_status()
            probes.append(time.perf_counter() - sent)

    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=600) as http, httpx.AsyncClient(timeout=600) as prober:
        probing = asyncio.create_task(probe(prober))
        await asyncio.gather(*(client(http) for _ in range(clients)))
        probing.cancel()
    bar.close()
    return time.perf_counter() - start, latencies, probes


def run_point(adapter: str, streams: int, requests: int, batch_size: int, clients: int) -> dict[str, Any]:
    import httpx

    from tta_server import Settings

    source = create_source_model()
    probe = create_adapter(adapter, source)
    probe.forward_and_adapt(torch.rand(batch_size, *source.input_shape))  # optimizer moments exist after a step
    state = probe.state_bytes()
    working = measure_working_memory(adapter, source, None, (max(2, batch_size // 2), batch_size))
    budget = state * max(1, streams // 4) + clients * (working.bytes_for(batch_size) + state)
    images = _images(1, 64, batch_size)[0]
    with tempfile.TemporaryDirectory(prefix="tta-scale-") as directory:
        settings = Settings(
            default_adapter=adapter,
            min_adapt_batch=min(16, batch_size),
            snapshot_dir=Path(directory),
            memory_budget_bytes=budget,
            max_streams=max(1024, streams),
            snapshot_interval_s=0,
        )
        with running_server(settings, stop_timeout_s=120) as url:
            seconds, latencies, probes = asyncio.run(_drive(url, images, streams, requests, clients))
            metrics = _metric_sums(httpx.get(f"{url}/metrics").text)
        disk = sum(f.stat().st_size for f in Path(directory).rglob("*") if f.is_file())
    ms = sorted(1000 * t for t in latencies)

    def mean_ms(kind: str) -> float | None:
        count = metrics.get(f"tta_stream_transfer_duration_seconds_count|{kind}", 0.0)
        total = metrics.get(f"tta_stream_transfer_duration_seconds_sum|{kind}", 0.0)
        return 1000 * total / count if count else None

    return {
        "adapter": adapter,
        "streams": streams,
        "requests": len(latencies),
        "state_bytes_per_stream": state,
        "budget_bytes": budget,
        "images_per_s": len(latencies) * batch_size / seconds,
        "latency_ms_p50": statistics.median(ms),
        "latency_ms_p99": float(np.percentile(ms, 99)),
        "probe_ms_p99": float(np.percentile(probes, 99)) * 1000 if probes else None,
        "probe_ms_max": max(probes) * 1000 if probes else None,
        "spills": metrics.get("tta_stream_spills_total", 0.0),
        "wakes": metrics.get("tta_stream_wakes_total", 0.0),
        "spill_ms_mean": mean_ms("spill"),
        "wake_ms_mean": mean_ms("wake"),
        "snapshot_disk_bytes": disk,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("images_per_s", "images/s"),
        ("latency_ms_p99", "p99 request latency (ms)"),
        ("wake_ms_mean", "mean wake (ms)"),
        ("spill_ms_mean", "mean spill (ms)"),
        ("snapshot_disk_bytes", "snapshot disk (MiB)"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4))
    styles = {"tent": ("tab:blue", "o-"), "cotta": ("tab:red", "s--")}
    for adapter in dict.fromkeys(r["adapter"] for r in rows):
        points = [r for r in rows if r["adapter"] == adapter]
        colour, style = styles.get(adapter, ("tab:grey", "^-."))
        for ax, (key, title) in zip(axes, panels, strict=True):
            ys = [(r[key] or 0) / (2**20 if key == "snapshot_disk_bytes" else 1) for r in points]
            ax.plot([r["streams"] for r in points], ys, style, color=colour, label=adapter)
            ax.set_xscale("log")
            ax.set_yscale("log")  # tent and cotta differ by orders of magnitude
            ax.set_xlabel("streams")
            ax.set_title(title)
            ax.grid(alpha=0.3)
    axes[0].legend(loc="best")
    fig.suptitle("Cost vs number of streams (budget holds a quarter of the states)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_scale(points: dict[str, list[int]], requests: int, batch_size: int, clients: int, out_dir: Path) -> str:
    rows = [
        run_point(adapter, streams, requests, batch_size, clients)
        for adapter, counts in points.items()
        for streams in tqdm(counts, desc=adapter)
    ]
    result = {
        "command": " ".join(["tta-bench", *sys.argv[1:]]),
        "requests_per_stream": requests,
        "batch_size": batch_size,
        "clients": clients,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "rows": rows,
    }
    return write_scale_report(result, out_dir)


COLUMNS = [
    *("adapter", "streams", "img/s", "p50", "p99", "probe p99", "probe max"),
    *("spills", "wakes", "spill", "wake", "disk", "peak RSS so far"),
]


def write_scale_report(result: dict[str, Any], out_dir: Path) -> str:
    """``scale.json``, ``scale.md`` and ``scale.png`` from a result (re-renderable from the JSON)."""
    rows, requests, batch_size, clients = (result[k] for k in ("rows", "requests_per_stream", "batch_size", "clients"))
    out_dir.mkdir(parents=True, exist_ok=True)
    plot(rows, out_dir / "scale.png")
    return write_result(
        out_dir,
        "scale",
        result,
        "Scale: N streams through the server under a memory budget that spills",
        f"`{result['command']}` — {requests} requests of {batch_size} images per stream, round-robin over the "
        f"streams from {clients} concurrent connections; budget = the states of N/4 streams + the working "
        f"memory of {clients} steps; snapshots on the local disk; probe: `GET /health/live` every 50 ms "
        f"during the run; torch {torch.__version__}, "
        f"{result['threads']} threads. Spill and wake: mean durations from the server's histogram. Peak RSS: of "
        "the one process that runs every point in turn (server, client and model), so far.\n\n"
        "![scale](scale.png)",
        COLUMNS,
        [
            [
                r["adapter"],
                str(r["streams"]),
                f"{r['images_per_s']:.0f}",
                f"{r['latency_ms_p50']:.0f} ms",
                f"{r['latency_ms_p99']:.0f} ms",
                "-" if r.get("probe_ms_p99") is None else f"{r['probe_ms_p99']:.0f} ms",
                "-" if r.get("probe_ms_max") is None else f"{r['probe_ms_max']:.0f} ms",
                f"{r['spills']:.0f}",
                f"{r['wakes']:.0f}",
                "-" if r["spill_ms_mean"] is None else f"{r['spill_ms_mean']:.1f} ms",
                "-" if r["wake_ms_mean"] is None else f"{r['wake_ms_mean']:.1f} ms",
                f"{r['snapshot_disk_bytes'] / 2**20:.1f} MiB",
                f"{r['peak_rss_bytes'] / 2**30:.2f} GiB",
            ]
            for r in rows
        ],
    )
