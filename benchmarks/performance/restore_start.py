"""How long a server's start-up restore takes over a store of large stream states.

Writes ``streams`` snapshots of one adapter's state to a temporary store and times, interleaved and
repeated, the start-up scan as the server runs it (each file's header alone) beside a scan that
verifies every file in full (tensors, checksum, values), the server's background check after start
(every file verified tensor by tensor, no state built) and one stream's wake (a full
verified read). Files are in the page cache after the first pass, so disk speed is not measured: a cold
store adds its read time to the full scan only. Writes ``restore_start.{json,md}``.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from adapters import SourceModel, create_adapter, get_frozen_forward
from adapters.online import OnlineStream
from benchmarks.reporting.results import write_result
from tta_server.streams import SnapshotStore


def _timed(fn: Any) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def run_restore_start(source: SourceModel, adapter: str, streams: int, repeats: int, out_dir: Path) -> str:
    online = OnlineStream(create_adapter(adapter, source), 16, get_frozen_forward(source))
    online.step(torch.rand(16, *source.input_shape, generator=torch.Generator().manual_seed(0)))
    state = online.state_dict()
    with tempfile.TemporaryDirectory(prefix="tta-restore-") as directory:
        store = SnapshotStore(Path(directory))
        for i in tqdm(range(streams), desc=f"writing {adapter} snapshots", unit="file"):
            store.write(f"cam-{i}", state)
        file_bytes = store.path("cam-0").stat().st_size
        times: dict[str, list[float]] = {"headers": [], "full": [], "check": [], "wake": []}
        ids = [f"cam-{i}" for i in range(streams)]
        for _ in tqdm(range(repeats), desc="timing", unit="round"):
            times["headers"].append(_timed(lambda: store.scan(headers_only=True)))
            times["full"].append(_timed(store.scan))
            times["check"].append(_timed(lambda: [store.check(i) for i in ids]))
            times["wake"].append(_timed(lambda: store.read("cam-0")))
    median = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "model": source.model_id,
        "command": " ".join(["tta-bench", *sys.argv[1:]]),
        "adapter": adapter,
        "streams": streams,
        "file_bytes": file_bytes,
        "repeats": repeats,
        "seconds": times,
        "median_s": median,
        "full_over_headers": median["full"] / median["headers"],
    }
    passes = [
        ("start-up scan, headers only (the server's)", median["headers"], streams),
        ("scan verifying every file in full", median["full"], streams),
        ("background check after start, tensor by tensor (the server's)", median["check"], streams),
        ("one wake (verified read of one file)", median["wake"], 1),
    ]
    rows = [[name, f"{seconds:.3f}", f"{seconds / files * 1e3:.2f}"] for name, seconds, files in passes]
    note = (
        f"`{result['command']}` — {streams} snapshots of a `{adapter}` stream, {file_bytes / 2**20:.1f} MiB each "
        f"({streams * file_bytes / 2**30:.2f} GiB), median of {repeats} interleaved rounds, files in the page "
        f"cache. Verifying every file in full at start takes {result['full_over_headers']:.0f}x as long as "
        "reading the headers; the server reads headers at start, then verifies every file in the background "
        "(one file at a time, on a thread of its own), and a stream woken before that is verified "
        "by its wake."
    )
    return write_result(
        out_dir, "restore_start", result, f"Start-up restore time ({source.model_id})", note,
        ["pass", "seconds", "ms per file"], rows,
    )  # fmt: skip
