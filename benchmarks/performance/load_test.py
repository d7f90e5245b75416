"""Load test of the service on loopback: concurrent streams against the in-process baseline.

For each adapter, a real server (uvicorn in a thread, 127.0.0.1) receives ``streams`` concurrent
streams, each sending ``batches`` raw-tensor requests of ``batch_size`` images one after another
(an asyncio client, one connection per stream). The same images go through the same adapter in
process, stream by stream interleaved, at the same batch size. Reported: images/s both ways,
request latency p50/p99, and the service overhead (server wall time / in-process wall time - 1).
Writes ``load_test.json`` and ``.md``.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adapters import create_adapter, create_source_model
from benchmarks.performance.local_server import running_server
from benchmarks.reporting.results import write_result


def _images(streams: int, batches: int, batch_size: int) -> np.ndarray:
    coarse = np.random.default_rng(0).integers(0, 256, (streams, batches, batch_size, 4, 4, 3), dtype=np.uint8)
    return coarse.repeat(8, axis=3).repeat(8, axis=4)  # smooth, image-like 32x32


async def _client(url: str, images: np.ndarray) -> tuple[float, list[float]]:
    import httpx

    latencies: list[float] = []

    async def stream(index: int, client: httpx.AsyncClient) -> None:
        shape = ",".join(map(str, images.shape[2:]))
        headers = {"content-type": "application/octet-stream", "X-Tensor-Shape": shape, "X-Tensor-Dtype": "uint8"}
        for batch in images[index]:
            start = time.perf_counter()
            response = await client.post(
                f"{url}/v1/predict", content=batch.tobytes(), headers={**headers, "X-Stream-Id": f"load-{index}"}
            )
            latencies.append(time.perf_counter() - start)
            response.raise_for_status()

    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=600) as client:
        await asyncio.gather(*(stream(i, client) for i in range(images.shape[0])))
    return time.perf_counter() - start, latencies


def _server_run(adapter: str, images: np.ndarray, workers: int) -> tuple[float, list[float]]:
    from tta_server import Settings

    settings = Settings(default_adapter=adapter, min_adapt_batch=16, workers=workers, max_images_per_request=1024)
    with running_server(settings, stop_timeout_s=60) as url:
        return asyncio.run(_client(url, images))


def _in_process(adapter: str, images: np.ndarray) -> float:
    source = create_source_model()
    adapters = [create_adapter(adapter, source) for _ in range(images.shape[0])]
    tensors = torch.from_numpy(images).permute(0, 1, 2, 5, 3, 4).float().div_(255)
    start = time.perf_counter()
    for b in range(images.shape[1]):
        for s, instance in enumerate(adapters):
            instance.forward_and_adapt(tensors[s, b])
    return time.perf_counter() - start


def run_load_test(adapters: list[str], streams: int, batches: int, batch_size: int, workers: int, out_dir: Path) -> str:
    images = _images(streams, batches, batch_size)
    total = streams * batches * batch_size
    _in_process(adapters[0], images[:1, :1])  # warm-up: model load, allocator
    rows: list[dict[str, Any]] = []
    for adapter in adapters:
        server_s, latencies = _server_run(adapter, images, workers)
        local_s = _in_process(adapter, images)
        ms = sorted(1000 * t for t in latencies)
        rows.append(
            {
                "adapter": adapter,
                "server_images_per_s": total / server_s,
                "in_process_images_per_s": total / local_s,
                "overhead": server_s / local_s - 1,
                "latency_ms_p50": statistics.median(ms),
                "latency_ms_p99": float(np.percentile(ms, 99)),
            }
        )
    result: dict[str, Any] = {
        "command": " ".join(["tta-bench", *sys.argv[1:]]),
        "streams": streams,
        "batches_per_stream": batches,
        "batch_size": batch_size,
        "server_workers": workers,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "rows": rows,
    }
    return write_result(
        out_dir,
        "load_test",
        result,
        f"Service load test: {streams} concurrent streams, batch {batch_size}, loopback",
        f"`{result['command']}` — raw uint8 tensors on POST /v1/predict, {batches} requests per stream, "
        f"{workers} model worker threads, torch {torch.__version__} with {result['threads']} threads; the in-process "
        "baseline runs the same images through one adapter per stream, interleaved, at the same batch size.",
        ["adapter", "server img/s", "in-process img/s", "overhead", "p50 latency", "p99 latency"],
        [
            [
                r["adapter"],
                f"{r['server_images_per_s']:.0f}",
                f"{r['in_process_images_per_s']:.0f}",
                f"{100 * r['overhead']:+.1f} %",
                f"{r['latency_ms_p50']:.0f} ms",
                f"{r['latency_ms_p99']:.0f} ms",
            ]
            for r in rows
        ],
    )
