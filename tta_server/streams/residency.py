"""Which streams are in memory: spilling idle streams to the snapshot store under the memory budget,
and waking them, exactly as they were, on their next request.

Snapshot files are written and read on a worker thread, never on the event loop (a CoTTA state
takes ~0.2 s each way: a loop blocked that long stalls every other request and the health probes).
While one is in transit the stream is in neither ``streams`` nor ``spilled``, so every change of
residency (spill, wake, create, delete of a spilled stream) holds ``transfers``; a request that
does not find its stream in memory takes it too, and so sees the stream either held or spilled.
Lock order: a stream's lock, then ``transfers``.

A mixin of :class:`tta_server.streams.manager.StreamManager`, which owns the attributes declared
here and in :class:`~tta_server.streams.claims.Claims` (ownership, which spilling respects).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from tta_server.streams.budget import MemoryBudget
from tta_server.streams.claims import Claims
from tta_server.streams.errors import LostOwnershipError, SnapshotError, StreamLimitError
from tta_server.streams.stream import Stream

logger = logging.getLogger(__name__)


class Residency(Claims):
    budget: MemoryBudget
    transfers: asyncio.Lock  # held for every change of which streams are in memory
    transfer_observers: list[Callable[[str, float], None]]  # (spill | wake, seconds)
    # called with the id of a stream whose state ended here (deleted, lost, dropped without a
    # store): a new stream of that id must not inherit anything of it, label feedback included
    end_observers: list[Callable[[str], None]]

    def ended(self, stream_id: str) -> None:
        for observe in self.end_observers:
            observe(stream_id)

    async def _create_from_state(self, stream_id: str, state: dict[str, Any]) -> Stream:
        raise NotImplementedError  # the manager's: a stream from its snapshot, ``transfers`` held

    def state_total(self) -> int:
        return sum(stream.held_bytes() for stream in self.streams.values())

    def fits(self, extra_bytes: int) -> bool:
        budget = self.budget.budget_bytes
        return budget is None or self.state_total() + extra_bytes <= budget

    async def make_room(self, keep: str | None, extra_bytes: int = 0) -> None:
        """Spill the least recently used idle streams until states plus ``extra_bytes`` fit the budget
        (:class:`MemoryBudgetError` if they cannot); a stream that cannot be written stays."""
        if self.fits(extra_bytes):
            return
        async with self.transfers:
            await self._make_room(keep, extra_bytes)

    async def _make_room(self, keep: str | None, extra_bytes: int) -> None:
        """:meth:`make_room`, ``transfers`` held."""
        if not self.budget.enabled:
            return
        idle = sorted((s for s in self.streams.values() if s.stream_id != keep and not s.busy), key=lambda s: s.used_at)
        order = [s.stream_id for s in idle]  # ids: each spilled stream is freed before the next is written
        del idle
        unwritten = 0
        for stream_id in order:
            if self.fits(extra_bytes):
                break
            stream = self.streams.get(stream_id)
            if stream is not None and self._spillable(stream):  # it may have got work while another was written
                unwritten += not await self._spill(stream)
            del stream
        why = "no idle stream is left to spill"
        if unwritten:  # a full or read-only store: say so, not that nothing was idle
            why = f"{unwritten} idle stream(s) could not be written to the snapshot store (GET /v1/persistence)"
        self.budget.check(self.state_total(), extra_bytes, why)

    def _spillable(self, stream: Stream) -> bool:
        return not stream.busy and self.streams.get(stream.stream_id) is stream

    async def spill(self, stream: Stream) -> bool:
        """Move an idle stream to the store; False if it is busy or cannot be written (logged, counted)."""
        async with self.transfers:
            return self._spillable(stream) and await self._spill(stream)

    async def _spill(self, stream: Stream) -> bool:
        stream_id, started = stream.stream_id, time.perf_counter()
        self.streams.pop(stream_id)  # out of reach while written: a request for it waits for ``transfers``
        try:
            if stream.saved_version != stream.version:
                await asyncio.to_thread(self.write_snapshot, stream)
        except LostOwnershipError:
            logger.warning("stream %s: taken over by another replica; dropped here", stream_id)
            self.drop(stream_id)
            return True
        except Exception as exc:  # one stream that cannot be written must not block the others
            self.streams[stream_id] = stream
            self.counters["spill_failures"] += 1
            self.failures.failed(stream_id, "spill", exc, ", kept in memory")
            return False
        except asyncio.CancelledError:  # shutdown: keep it where the shutdown snapshot finds it
            self.streams[stream_id] = stream
            raise
        self.spilled.add(stream_id)
        self.counters["spills"] += 1
        self._observe_transfer("spill", started)
        return True

    async def _wake(self, stream_id: str) -> Stream:
        """Bring a spilled stream back from its snapshot, exactly as it was; ``transfers`` held."""
        assert self.store is not None
        started = time.perf_counter()
        try:
            state = await asyncio.to_thread(self.store.read, stream_id)
        except SnapshotError:
            self.spilled.discard(stream_id)  # damaged (quarantined) or gone: the stream is lost
            self.ended(stream_id)
            raise
        self.spilled.discard(stream_id)
        try:
            stream = await self._create_from_state(stream_id, state)
        except (StreamLimitError, asyncio.CancelledError):  # no room now (MemoryBudgetError included)
            self.spilled.add(stream_id)  # it stays in the store
            raise
        stream.saved_version = stream.version
        self.counters["wakes"] += 1
        self._observe_transfer("wake", started)
        return stream

    def _observe_transfer(self, kind: str, started: float) -> None:
        for observe in self.transfer_observers:
            observe(kind, time.perf_counter() - started)

    def memory_report(self) -> dict[str, Any]:
        """The budget, what holds it now, and the working-memory estimates measured so far."""
        return self.budget.report_with(self.state_total(), len(self.streams), len(self.spilled))
