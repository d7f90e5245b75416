"""Does the server process stay near its memory budget while streams outgrow it?

A real ``tta-server serve`` process (its own process, so its resident memory is the server's
alone) runs with a memory budget and a snapshot store in a temporary directory. ``streams`` new
streams then send one request of ``batch_size`` random images each, from ``clients`` concurrent
connections, so that once the budget is full every new stream spills an older one. Every half
second the process' resident memory (``/proc/<pid>/status``) is sampled beside what the budget
counts (``GET /v1/memory``: stream states, working memory of running steps). Reported: the
resident memory at start, at its peak and at the end, the peak budgeted bytes, and the peak
overhead (resident minus the start minus budgeted); ``process_memory.json``, ``.md`` and a
``.png`` of the timeline. The run includes the periodic snapshot pass (every 60 s by default).
Linux only (``/proc``).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.performance.processes import free_port, resident_bytes, stop_process
from benchmarks.reporting.results import write_result

GIB = 2**30


def _png_files(rng: np.random.Generator, n: int) -> list[tuple[str, tuple[str, bytes, str]]]:
    from PIL import Image

    files = []
    for i in range(n):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, "PNG")
        files.append(("files", (f"{i}.png", buffer.getvalue(), "image/png")))
    return files


def _wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"tta-server exited with {process.returncode} before it was ready")
        try:
            if httpx.get(f"{url}/health/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"tta-server not ready after {timeout_s} s")


def run_process_memory(
    adapter: str, streams: int, budget_bytes: int, batch_size: int, clients: int, out_dir: Path
) -> str:
    import httpx
    from tqdm.auto import tqdm

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    store = tempfile.mkdtemp(prefix="tta-process-memory-")
    env = {
        **os.environ,
        "TTA_DEFAULT_ADAPTER": adapter,
        "TTA_MEMORY_BUDGET_BYTES": str(budget_bytes),
        "TTA_SNAPSHOT_DIR": store,
        "TTA_MIN_ADAPT_BATCH": str(batch_size),
        "TTA_LOG_LEVEL": "warning",
    }
    command = [sys.executable, "-m", "tta_server.cli", "serve", "--port", str(port)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    timeline: list[dict[str, float]] = []
    codes: dict[int, int] = {}
    try:
        _wait_ready(url, process)
        start_rss = resident_bytes(process.pid)
        ids = [f"cam-{i}" for i in range(streams)]
        progress = tqdm(total=streams, desc=f"{adapter}: {streams} streams", unit="stream")
        lock = threading.Lock()
        started = time.monotonic()
        finished = threading.Event()

        def client(mine: list[str], seed: int) -> None:
            rng = np.random.default_rng(seed)
            with httpx.Client(base_url=url, timeout=600) as http:
                for stream_id in mine:
                    response = http.post(
                        "/v1/predict", files=_png_files(rng, batch_size), headers={"X-Stream-Id": stream_id}
                    )
                    with lock:
                        codes[response.status_code] = codes.get(response.status_code, 0) + 1
                    progress.update()

        def sample() -> None:
            with httpx.Client(base_url=url, timeout=60) as http:
                last = False
                while not last:
                    last = finished.is_set()  # one more sample after the clients finished
                    memory = http.get("/v1/memory").json()
                    timeline.append(
                        {
                            "seconds": round(time.monotonic() - started, 2),
                            "rss_bytes": resident_bytes(process.pid),
                            "state_bytes": memory["state_bytes"],
                            "in_flight_bytes": memory["in_flight_bytes"],
                            "streams_in_memory": memory["streams_in_memory"],
                            "streams_spilled": memory["streams_spilled"],
                        }
                    )
                    finished.wait(0.5)

        sampler = threading.Thread(target=sample)
        sampler.start()
        workers = [threading.Thread(target=client, args=(ids[k::clients], k)) for k in range(clients)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        finished.set()
        sampler.join()
        progress.close()
        peak_rss, end_rss = resident_bytes(process.pid, "VmHWM"), resident_bytes(process.pid)
    finally:
        stop_process(process, grace_s=120)  # killed if its shutdown hangs, so the store can go
        shutil.rmtree(store, ignore_errors=True)  # the spilled streams: gigabytes with the default settings
    budgeted = max(t["state_bytes"] + t["in_flight_bytes"] for t in timeline)
    overhead = max(t["rss_bytes"] - start_rss - t["state_bytes"] - t["in_flight_bytes"] for t in timeline)
    result: dict[str, Any] = {
        "command": f"tta-bench process-memory --adapter {adapter} --streams {streams} --budget {budget_bytes} "
        f"--batch-size {batch_size} --clients {clients}",
        "adapter": adapter,
        "streams": streams,
        "budget_bytes": budget_bytes,
        "codes": codes,
        "start_rss_bytes": start_rss,
        "peak_rss_bytes": peak_rss,
        "end_rss_bytes": end_rss,
        "peak_budgeted_bytes": budgeted,
        "peak_overhead_bytes": overhead,
        "timeline": timeline,
    }
    _plot(result, out_dir / "process_memory.png")
    note = (
        f"`{result['command']}` — one `tta-server serve` process, snapshot store in a temporary directory; "
        f"{streams} new streams, one request of {batch_size} random PNGs each, from {clients} connections; "
        f"answers: {codes}. Budgeted: stream states plus the working memory of running steps (`GET /v1/memory`). "
        "Overhead: resident minus resident at start minus budgeted, largest sample.\n\n![timeline](process_memory.png)"
    )
    rows = [
        [
            adapter,
            str(streams),
            f"{budget_bytes / GIB:.2f} GiB",
            f"{start_rss / GIB:.2f} GiB",
            f"{budgeted / GIB:.2f} GiB",
            f"{peak_rss / GIB:.2f} GiB",
            f"{end_rss / GIB:.2f} GiB",
            f"{overhead / GIB:.2f} GiB",
        ]
    ]
    columns = ["adapter", "streams", "budget", "resident at start", "peak budgeted", "peak resident", "end resident"]
    return write_result(
        out_dir,
        "process_memory",
        result,
        "Server process memory under a budget",
        note,
        [*columns, "peak overhead"],
        rows,
    )


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timeline = result["timeline"]
    seconds = [t["seconds"] for t in timeline]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(seconds, [t["rss_bytes"] / GIB for t in timeline], label="resident memory")
    ax.plot(seconds, [(t["state_bytes"] + t["in_flight_bytes"]) / GIB for t in timeline], label="budgeted")
    ax.axhline(result["budget_bytes"] / GIB, color="grey", linestyle="--", label="memory_budget_bytes")
    ax.set_xlabel("seconds")
    ax.set_ylabel("GiB")
    ax.set_title(
        f"{result['adapter']}: {result['streams']} streams under a {result['budget_bytes'] / GIB:.1f} GiB budget"
    )
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
