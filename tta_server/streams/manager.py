"""The stream manager: the one public API routes use to create, step, reset and delete streams.

Each stream's work runs on a thread pool, one piece at a time per stream, in arrival order
(:mod:`.stepping`). With a memory budget, idle streams are spilled (least recently used first) to the snapshot store and
woken, exactly as they were, by their next request (:mod:`.residency`). Persistence (periodic snapshots, shutdown,
idle expiry, start-up restore, snapshot and restore on request) lives in
:mod:`tta_server.streams.persistence`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from adapters import AdapterError, SourceModel, create_adapter, get_frozen_forward
from tta_server.streams.budget import MemoryBudget
from tta_server.streams.errors import (
    SnapshotDeleteError,
    SnapshotError,
    StreamExistsError,
    StreamLimitError,
    UnknownStreamError,
)
from tta_server.streams.failure_log import FailureLog
from tta_server.streams.feedback import FeedbackTotals
from tta_server.streams.ids import validate_stream_id
from tta_server.streams.ownership import Ownership
from tta_server.streams.stepping import Stepping
from tta_server.streams.store import SnapshotStore
from tta_server.streams.stream import Stream, StreamOptions

logger = logging.getLogger(__name__)


class StreamManager(Stepping):
    """Creates streams (explicitly, or on first use with the default adapter) and runs their steps."""

    def __init__(
        self,
        source: SourceModel,
        options: StreamOptions,
        store: SnapshotStore | None = None,
        ownership: Ownership | None = None,
    ) -> None:
        if options.memory_budget_bytes is not None and store is None:
            raise ValueError("memory_budget_bytes needs snapshot_dir: idle streams are spilled there")
        if ownership is not None and store is None:
            raise ValueError("replica_id (stream ownership between replicas) needs the shared snapshot_dir")
        self.source, self.options, self.store = source, options, store
        self.ownership = ownership  # with replicas sharing the store: who holds which stream
        self.budget = MemoryBudget(
            options.memory_budget_bytes, options.memory_wait_s, options.largest_step, options.max_adapter_configs
        )
        self.frozen = get_frozen_forward(source)
        self.streams: dict[str, Stream] = {}
        self.spilled: set[str] = set()  # streams whose latest state is only in the store
        # with replicas sharing the store: its snapshots at the last count (Persistence.count_stored),
        # plus the streams created here since; idle streams are released to the store, not spilled here
        self.stored: int = 0
        self.counters: Counter[str] = Counter()  # diverged steps, spills, wakes, refusals, failures
        self.failures = FailureLog(logging.getLogger("tta_server.streams.persistence"))  # writes that keep failing
        self.step_observers = []  # see Stepping
        self.guard_observers = []
        self.transfer_observers: list[Callable[[str, float], None]] = []  # (spill | wake, seconds)
        self.end_observers: list[Callable[[str], None]] = []  # see Residency
        self.transfers = asyncio.Lock()  # see tta_server.streams.residency
        self.executor = ThreadPoolExecutor(max_workers=options.workers, thread_name_prefix="tta-model")
        # Fail at start-up, not on the first request, if the default adapter cannot be built.
        create_adapter(options.default_adapter, source, options.default_config)

    # -- lookup and creation ----------------------------------------------------------------------
    def known(self, stream_id: str) -> bool:
        return stream_id in self.streams or stream_id in self.spilled

    async def get(self, stream_id: str, reading: bool = False) -> Stream:
        """The stream, woken from the store if it was spilled; :class:`UnknownStreamError` if none.
        ``reading``: only to show it (see :meth:`claim`)."""
        validate_stream_id(stream_id)
        self.claim(stream_id, reading=reading)
        stream = self.streams.get(stream_id)
        if stream is None:
            async with self.transfers:
                stream = self.streams.get(stream_id)
                if stream is None and stream_id in self.spilled:
                    stream = await self._wake(stream_id)
        if stream is None:
            if self.ownership is not None:  # nothing to own: do not keep renewing a lease for it
                self.ownership.release(stream_id)
            raise UnknownStreamError(stream_id)
        return stream

    async def get_or_create(self, stream_id: str) -> Stream:
        self.claim(stream_id, creating=self.options.auto_create)
        stream = self.streams.get(stream_id)
        if stream is not None:
            return stream
        if not self.options.auto_create:
            return await self.get(stream_id)
        async with self.transfers:
            if stream_id in self.streams:
                return self.streams[stream_id]
            if stream_id in self.spilled:
                return await self._wake(stream_id)
            return await self._create(stream_id, self.options.default_adapter, self.options.default_config)

    async def create(
        self, stream_id: str, adapter: str, config: dict[str, Any], guard: dict[str, Any] | None = None
    ) -> Stream:
        """A new stream with its own adapter and guard (default: the server's); both configs are
        validated here."""
        validate_stream_id(stream_id)
        self.claim(stream_id, creating=True)
        async with self.transfers:
            return await self._create(stream_id, adapter, config, guard)

    async def _create(
        self,
        stream_id: str,
        adapter: str,
        config: dict[str, Any],
        guard: dict[str, Any] | None = None,
        state: dict[str, Any] | None = None,
    ) -> Stream:
        """A new stream, ``transfers`` held; with ``state`` (a snapshot's) it is loaded before it is held."""
        if self.known(stream_id):
            raise StreamExistsError(f"stream {stream_id!r} exists; reset or delete it first")
        if len(self.streams) >= self.options.max_streams:
            self.counters["refused_stream_limit"] += 1
            raise StreamLimitError(f"max_streams={self.options.max_streams} reached")
        total = max(len(self.streams) + len(self.spilled), self.stored)
        if state is None and total >= self.options.max_streams_total:  # a stream from its snapshot is no new one
            self.counters["refused_stream_limit"] += 1
            raise StreamLimitError(
                f"max_streams_total={self.options.max_streams_total} reached (streams in memory and in the "
                "snapshot store): delete streams, or raise the limit"
            )
        try:
            self.budget.admit(adapter, config, new_stream=state is None)  # at creation, not at its first step
        except StreamLimitError:
            self.counters["refused_stream_limit"] += 1
            raise
        online = await asyncio.to_thread(self.options.build, self.source, self.frozen, adapter, config, guard, state)
        # a new stream's state counts before it is held, so the budget is never exceeded; with
        # ``transfers`` held, room is made by spilling directly, or by waiting for running steps
        objects = self.budget.objects_of(online.adapter)
        await self.budget.fit(
            online.state_bytes() + objects, self.state_total, lambda extra: self._make_room(None, extra)
        )
        stream = self.streams[stream_id] = Stream(stream_id, online, object_bytes=objects)
        if state is None and self.ownership is not None:
            self.stored += 1  # counted as in the store until the next count says otherwise
        if state is not None:
            stream.feedback = FeedbackTotals(**state.get("feedback", {}))  # verified by the store
        return stream

    async def load_from_store(self, stream_id: str) -> Stream:
        """A stream not in memory, from its snapshot (a spilled one is woken; ``StreamExistsError``
        if it is in memory). ``transfers`` is held from the read to the create, so a delete cannot
        remove the stream in between."""
        assert self.store is not None
        async with self.transfers:
            if stream_id in self.streams:
                raise StreamExistsError(f"stream {stream_id!r} is in memory")
            if stream_id in self.spilled:
                return await self._wake(stream_id)
            state = await asyncio.to_thread(self.store.read, stream_id)
            return await self._create_from_state(stream_id, state)

    async def _create_from_state(self, stream_id: str, state: dict[str, Any]) -> Stream:
        try:
            return await self._create(stream_id, state["adapter"], state["config"], state.get("guard"), state)
        except (AdapterError, ValueError, KeyError) as exc:  # an adapter, config or shape this server lacks
            raise SnapshotError(f"snapshot of stream {stream_id!r} does not fit this server: {exc}") from exc

    async def reset(self, stream_id: str) -> Stream:
        """Back to the source, after the stream's in-flight requests (same FIFO lock)."""
        await self.claim_waiting(stream_id)

        def work(stream: Stream) -> Stream:
            stream.online.reset()
            stream.version += 1
            return stream

        return await self.run(await self.get(stream_id), work)

    async def delete(self, stream_id: str) -> None:
        """Forget the stream and its snapshot, after its in-flight requests. The snapshot goes first:
        when it cannot be removed the stream is kept as it was and :class:`SnapshotDeleteError` says
        why (a file left behind would bring the deleted stream back at the next start)."""
        await self.claim_waiting(stream_id)
        while True:
            stream = self.streams.get(stream_id)
            if stream is not None:
                async with stream.lock:
                    if self.streams.get(stream_id) is stream:
                        self._delete_snapshot(stream_id)
                        stream.deleted = True
                        self.streams.pop(stream_id)
                        self.ended(stream_id)  # under the lock: before any request queued behind it
                        break
                continue  # it left memory while its earlier work ran
            async with self.transfers:  # not in the middle of a spill or wake
                if stream_id in self.streams:
                    continue
                if stream_id not in self.spilled:
                    raise UnknownStreamError(stream_id)
                self._delete_snapshot(stream_id)
                self.spilled.discard(stream_id)
                self.ended(stream_id)
                break
        self.failures.forget(stream_id, "snapshot", "spill")
        if self.ownership is not None:
            self.ownership.forget(stream_id)

    def _delete_snapshot(self, stream_id: str) -> None:
        """An unlink, on the loop: with no await between it and forgetting the stream, a cancelled
        delete cannot leave the stream in memory with its snapshot gone."""
        if self.store is None:
            return
        try:
            if self.store.delete(stream_id) and self.ownership is not None:
                self.stored = max(0, self.stored - 1)
        except OSError as exc:
            self.counters["delete_failures"] += 1
            self.failures.failed(stream_id, "snapshot delete", exc, " (the stream is kept)")
            raise SnapshotDeleteError(
                f"the snapshot of stream {stream_id!r} cannot be deleted ({exc.strerror or exc}); the stream is "
                "kept as it was: retry the delete once the snapshot directory is writable"
            ) from exc
        self.failures.cleared(stream_id, "snapshot delete")

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
