"""Persistence that never dies quietly: start-up restore, periodic snapshots, idle expiry, shutdown.

Every failure is logged with the stream id and the reason, counted, and retried on the next pass;
one bad stream never blocks the others. While writes keep failing for longer than
``failure_grace_s``, :meth:`Persistence.healthy` turns false and readiness with it (Kubernetes
then stops routing new traffic to this replica).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from adapters import AdapterError, get_adapter_class
from tta_server.streams.errors import LostOwnershipError, SnapshotError, StreamExistsError, UnknownStreamError
from tta_server.streams.feedback import FeedbackTotals
from tta_server.streams.manager import StreamManager
from tta_server.streams.store import SnapshotStore
from tta_server.streams.stream import Stream
from tta_server.streams.verification import VerificationProgress, verify_restored

logger = logging.getLogger(__name__)


class Persistence:
    def __init__(self, manager: StreamManager, store: SnapshotStore, failure_grace_s: float = 300.0) -> None:
        self.manager = manager
        self.store = store
        self.failure_grace_s = failure_grace_s
        self.failing_since: float | None = None  # a timestamp, for the report
        self._failing_since_monotonic: float | None = None  # the same moment, on the monotonic clock
        self.last_error: str | None = None
        self.last_success_at: float | None = None
        self.verification = VerificationProgress()  # the background check of restored snapshots

    def healthy(self) -> bool:
        since = self._failing_since_monotonic
        return since is None or time.monotonic() - since < self.failure_grace_s

    def _failed(self, stream_id: str, what: str, exc: BaseException) -> None:
        self.manager.counters[f"{what}_failures"] += 1
        self.last_error = f"{what} of stream {stream_id!r}: {exc}"
        if self.failing_since is None:
            self.failing_since, self._failing_since_monotonic = time.time(), time.monotonic()
        self.manager.failures.failed(stream_id, what, exc)

    async def snapshot(self, stream_id: str) -> Path:
        """Write the stream's state to the store after its in-flight requests."""
        store, manager = self.store, self.manager
        if stream_id in manager.spilled:
            return store.path(stream_id)

        def work(stream: Stream) -> Path:
            version = stream.version
            try:
                path = manager.write_snapshot(stream)
            except LostOwnershipError:
                logger.warning("stream %s: taken over by another replica; dropped here, not written", stream_id)
                manager.drop(stream_id)
                raise UnknownStreamError(stream_id) from None
            stream.saved_version = version
            return path

        return await manager.run(await manager.get(stream_id), work)

    async def restore(self, stream_id: str) -> Stream:
        """Load the stream's snapshot, creating the stream with the snapshot's adapter and config."""
        manager, store = self.manager, self.store
        await manager.claim_waiting(stream_id)
        if stream_id not in manager.streams:
            with contextlib.suppress(StreamExistsError):  # woken meanwhile: load into it below
                return await manager.load_from_store(stream_id)

        def work(stream: Stream) -> Stream:
            state = store.read(stream_id)  # under the stream's lock: a delete waits for the restore
            try:
                stream.online.load_state_dict(state)
            except (AdapterError, ValueError, KeyError) as exc:
                raise SnapshotError(f"snapshot of stream {stream_id!r} does not fit the stream: {exc}") from exc
            stream.feedback = FeedbackTotals(**state.get("feedback", {}))
            stream.version += 1
            return stream

        return await manager.run(await manager.get(stream_id), work)

    def restore_all(self) -> list[str]:
        """At start-up: every snapshot with a sound header becomes a spilled stream, woken by its first
        request or by :meth:`verify_restored`, whichever comes first, which verifies its tensors and
        checksum (a damaged file is quarantined then).
        Snapshots of another model or of an unknown adapter or config are quarantined now. With
        ownership (replicas sharing the store), streams load on demand instead, once claimed."""
        if self.manager.ownership is not None:
            return []
        model_id = self.manager.source.model_id

        def reject(state: dict[str, Any]) -> str | None:
            if state["model_id"] != model_id:
                return f"snapshot of model {state['model_id']!r}; this server serves {model_id!r}"
            try:
                get_adapter_class(state["adapter"]).parse_config(state["config"])
            except Exception as exc:  # unknown adapter or invalid config: the file cannot be used here
                return f"adapter {state['adapter']!r} with its config cannot be built: {exc}"
            return None

        found = [s for s in self.store.scan(reject, headers_only=True) if s not in self.manager.streams]
        self.manager.spilled.update(found)
        return found

    async def verify_restored(self, stream_ids: list[str]) -> None:
        """After :meth:`restore_all`, in the background: verify each restored snapshot in full
        (:mod:`tta_server.streams.verification`)."""
        await verify_restored(self.manager, self.store, stream_ids, self.verification)

    async def verify_spilled(self) -> bool:
        """Verify again every snapshot whose stream is spilled now (``verify_snapshots_interval_s``);
        False, doing nothing, while an earlier pass still runs. ``verification`` reports this pass."""
        if not self.verification.finished:
            return False
        passes = self.verification.passes
        self.verification = VerificationProgress(passes=passes + 1)
        await verify_restored(self.manager, self.store, sorted(self.manager.spilled), self.verification)
        return True

    async def snapshot_changed(self) -> tuple[int, int]:
        """Snapshot every stream that changed since its last snapshot; returns (written, failed)."""
        written = failed = 0
        # by id, not by object: a stream spilled while the pass writes others must be freed now;
        # a list of the streams would keep every one of them alive, beyond the memory budget
        for stream_id in list(self.manager.streams):
            stream = self.manager.streams.get(stream_id)
            if stream is None or stream.version == stream.saved_version or stream.deleted:
                continue
            del stream
            try:
                await self.snapshot(stream_id)
                written += 1
            except UnknownStreamError:
                continue  # deleted while the pass ran: nothing to keep
            except Exception as exc:  # an unwritable file or directory, a full disk, ...
                self._failed(stream_id, "snapshot", exc)
                failed += 1
        if not written and not failed:  # nothing changed: check that the store still takes writes
            try:
                await asyncio.to_thread(self.store.probe)
            except OSError as exc:
                self._store_refuses(exc)
                return written, 1
        if not failed:
            if self.failing_since is not None and not written:
                logger.info("the snapshot store %s takes writes again", self.store.directory)
            self.failing_since, self._failing_since_monotonic, self.last_success_at = None, None, time.time()
        return written, failed

    def _store_refuses(self, exc: OSError) -> None:
        """A pass with nothing to write found the store refusing a probe write: a missing,
        read-only or full volume counts as failing before any stream needs it."""
        self.manager.counters["snapshot_failures"] += 1
        self.last_error = f"write probe of the snapshot store: {exc}"
        if self.failing_since is None:
            self.failing_since, self._failing_since_monotonic = time.time(), time.monotonic()
            logger.error("the snapshot store %s refuses writes: %s", self.store.directory, exc)

    async def snapshot_all(self, timeout_s: float) -> dict[str, str]:
        """At shutdown: snapshot every changed stream within ``timeout_s``; returns the failures."""
        failures: dict[str, str] = {}
        written = 0
        deadline = time.monotonic() + timeout_s
        for stream_id in list(self.manager.streams):  # by id: see snapshot_changed
            stream = self.manager.streams.get(stream_id)
            if stream is None or stream.version == stream.saved_version:
                continue
            del stream
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise TimeoutError(f"shutdown_snapshot_timeout_s={timeout_s} reached")
                await asyncio.wait_for(self.snapshot(stream_id), remaining)
                written += 1
            except UnknownStreamError:
                continue
            except Exception as exc:
                failures[stream_id] = str(exc) or type(exc).__name__
                self._failed(stream_id, "snapshot", exc)
        logger.info("shutdown: %d stream(s) snapshotted to %s", written, self.store.directory)
        if failures:
            logger.error("shutdown: %d stream(s) not snapshotted: %s", len(failures), ", ".join(sorted(failures)))
        return failures

    async def expire_idle(self, idle_s: float) -> list[str]:
        """Streams unused for ``idle_s`` leave memory, to the store (they wake on their next request,
        on whichever replica: with ownership their leases are released)."""
        expired = []
        ownership = self.manager.ownership
        for stream_id in list(self.manager.streams):  # by id: see snapshot_changed
            stream = self.manager.streams.get(stream_id)
            if stream is None:
                continue
            if stream.idle_s() >= idle_s and not stream.busy and await self.manager.spill(stream):
                expired.append(stream.stream_id)
                if ownership is not None:
                    self.manager.spilled.discard(stream.stream_id)
                    ownership.release(stream.stream_id)
        return expired

    # -- handover between replicas ----------------------------------------------------------------
    async def count_stored(self) -> int:
        """With replicas sharing the store: count its snapshots, all replicas' (a listing on its own
        thread), so ``max_streams_total`` bounds the store, whose idle streams no replica holds."""
        self.manager.stored = await asyncio.to_thread(self.store.count)
        return self.manager.stored

    async def renew_leases(self) -> tuple[list[str], list[str]]:
        """Extend this replica's leases; drop streams taken over; hand over those another replica
        asked for (snapshot, release). Returns (lost, handed over)."""
        manager, ownership = self.manager, self.manager.ownership
        if ownership is None:
            return [], []
        # its own thread, not the model pool: a long step must not delay the renewals
        lost, asked = await asyncio.to_thread(ownership.renew)
        for stream_id in lost:
            logger.warning("stream %s: its lease was taken over; dropped here", stream_id)
            manager.drop(stream_id)
        handed = [stream_id for stream_id in asked if await self.hand_over(stream_id)]
        return lost, handed

    async def hand_over(self, stream_id: str) -> bool:
        """Snapshot the stream after its in-flight requests, release it and forget it here."""
        manager, ownership = self.manager, self.manager.ownership
        assert ownership is not None
        stream = manager.streams.get(stream_id)
        try:
            if stream is not None:
                async with stream.lock:
                    if stream.version != stream.saved_version:
                        await manager.in_executor(manager.write_snapshot, stream)
                    manager.streams.pop(stream_id, None)
        except LostOwnershipError:
            manager.drop(stream_id)
            return False
        except Exception as exc:  # not written: keep it (and the lease) rather than hand over an old state
            self._failed(stream_id, "snapshot", exc)
            return False
        manager.spilled.discard(stream_id)
        await asyncio.to_thread(ownership.release, stream_id)
        manager.counters["handovers"] += 1
        logger.info("stream %s: handed over to another replica", stream_id)
        return True

    def release_all(self, failures: dict[str, str]) -> int:
        """At shutdown, after :meth:`snapshot_all`: release every stream whose latest state is in the
        store (a failed one keeps its lease until the TTL, so no replica resumes an older state early)."""
        ownership = self.manager.ownership
        if ownership is None:
            return 0
        released = [sid for sid in list(ownership.held) if sid not in failures]
        for stream_id in released:
            ownership.release(stream_id)
        return len(released)

    def report(self) -> dict[str, Any]:
        return {
            **self.store.report(),
            "healthy": self.healthy(),
            "failing_since": self.failing_since,
            "last_error": self.last_error,
            "last_success_at": self.last_success_at,
            "failures": {k: v for k, v in self.manager.counters.items() if k.endswith("_failures")},
            "ownership": self.manager.ownership.report() if self.manager.ownership else None,
            "verification": self.verification.report(),
        }


def expire_unpersisted(manager: StreamManager, idle_s: float) -> list[str]:
    """Without a store, idle streams are dropped."""
    expired = []
    for stream in list(manager.streams.values()):
        if stream.idle_s() >= idle_s and not stream.busy:
            manager.streams.pop(stream.stream_id, None)
            manager.ended(stream.stream_id)  # its state is gone: the id starts afresh
            expired.append(stream.stream_id)
    return expired


async def run_forever(name: str, interval_s: float, work: Callable[[], Awaitable[object] | object]) -> None:
    """Call ``work`` every ``interval_s`` until cancelled; an exception is logged, never fatal."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            result = work()
            if asyncio.iscoroutine(result):
                await result
        except Exception:  # the loop must outlive any single failure
            logger.exception("background task %s failed; retrying in %.1f s", name, interval_s)
