"""The background check after start: every restored snapshot verified in full, before a request finds it;
and, with ``verify_snapshots_interval_s``, the same check again over every spilled stream's file.

Start-up reads headers only (fast over a large store); without this pass a file damaged inside
(bit rot, a torn copy) would be found only when its stream wakes, perhaps days later, by the
request that woke it. The pass checks one file at a time on a worker thread, tensor by tensor
through the file's memory map, building no stream state (:meth:`SnapshotStore.check`): it takes a
file read and a hash per snapshot (about what a wake takes), no model worker and no budget. A
damaged file is quarantined, counted and logged, and its stream forgotten, as a wake would; a
stream woken, spilled again or deleted while its file was checked is left alone (its file changed,
or it is no longer spilled). With ownership between replicas nothing is restored at start, and each
file is verified when a replica loads it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

from tta_server.streams.manager import StreamManager
from tta_server.streams.snapshot_file import file_signature
from tta_server.streams.store import SnapshotStore

logger = logging.getLogger(__name__)


@dataclass
class VerificationProgress:
    enabled: bool = True  # verify_restored_snapshots
    total: int = 0
    verified: int = 0
    quarantined: int = 0
    skipped: int = 0  # woken, spilled again or deleted while the pass ran: judged by that
    finished: bool = False
    seconds: float = 0.0
    passes: int = 0  # later passes over the spilled streams (verify_snapshots_interval_s)

    def report(self) -> dict[str, Any]:
        return asdict(self)


async def verify_restored(
    manager: StreamManager, store: SnapshotStore, stream_ids: list[str], progress: VerificationProgress
) -> None:
    """Check the snapshot of each of ``stream_ids`` that is still spilled (see the module docstring)."""
    started = time.perf_counter()
    progress.total = len(stream_ids)
    for stream_id in stream_ids:
        path = store.path(stream_id)
        before = file_signature(path)
        if stream_id not in manager.spilled or before is None:
            progress.skipped += 1
            continue
        problem = await asyncio.to_thread(store.check, stream_id)
        if problem is None:
            progress.verified += 1
            manager.counters["snapshots_verified"] += 1
            continue
        async with manager.transfers:  # no wake, spill or delete in between
            if stream_id in manager.spilled and file_signature(path) == before:
                store.quarantine(path, problem)
                manager.spilled.discard(stream_id)
                manager.ended(stream_id)
                progress.quarantined += 1
                logger.error("stream %s: its snapshot is damaged (%s); the stream is lost", stream_id, problem)
            else:
                progress.skipped += 1
    progress.finished, progress.seconds = True, time.perf_counter() - started
    logger.info(
        "snapshot check: %d snapshot(s) sound, %d damaged and quarantined, %d skipped, in %.1f s",
        progress.verified,
        progress.quarantined,
        progress.skipped,
        progress.seconds,
    )
