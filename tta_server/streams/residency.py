"""Which streams are in memory: spilling idle streams to the snapshot store under the memory budget,
and waking them, exactly as they were, on their next request.

A mixin of :class:`tta_server.streams.manager.StreamManager`, which owns the attributes declared
here and in :class:`~tta_server.streams.claims.Claims` (ownership, which spilling respects).
"""

from __future__ import annotations

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
    transfer_observers: list[Callable[[str, float], None]]  # (spill | wake, seconds)

    def create_from_state(self, stream_id: str, state: dict[str, Any]) -> Stream:
        raise NotImplementedError  # the manager's: a stream from its snapshot

    def state_total(self) -> int:
        return sum(stream.online.state_bytes() for stream in self.streams.values())

    def make_room(self, keep: str | None, extra_bytes: int = 0) -> None:
        """Spill the least recently used idle streams until states plus ``extra_bytes`` fit the budget;
        a stream that cannot be written stays and the next one is tried."""
        if not self.budget.enabled:
            return
        assert self.store is not None and self.budget.budget_bytes is not None
        total = self.state_total() + extra_bytes
        idle = sorted(
            (s for s in self.streams.values() if s.stream_id != keep and not s.busy), key=lambda s: s.last_used_at
        )
        for stream in idle:
            if total <= self.budget.budget_bytes:
                break
            if self.spill(stream):
                total -= stream.online.state_bytes()
        self.budget.check(self.state_total(), extra_bytes)

    def spill(self, stream: Stream) -> bool:
        """Move an idle stream to the store; False (logged, counted) if it cannot be written."""
        assert self.store is not None
        started = time.perf_counter()
        try:
            if stream.saved_version != stream.version:
                self.write_snapshot(stream)
        except LostOwnershipError:
            logger.warning("stream %s: taken over by another replica; dropped here", stream.stream_id)
            self.drop(stream.stream_id)
            return True
        except Exception as exc:  # one stream that cannot be written must not block the others
            self.counters["spill_failures"] += 1
            logger.error("stream %s: spill failed, kept in memory: %s", stream.stream_id, exc)
            return False
        self.streams.pop(stream.stream_id, None)
        self.spilled.add(stream.stream_id)
        self.counters["spills"] += 1
        self._observe_transfer("spill", started)
        return True

    def wake(self, stream_id: str) -> Stream:
        """Bring a spilled stream back from its snapshot, exactly as it was."""
        assert self.store is not None
        started = time.perf_counter()
        try:
            state = self.store.read(stream_id)
        except SnapshotError:
            self.spilled.discard(stream_id)  # damaged (quarantined) or gone: the stream is lost
            raise
        self.spilled.discard(stream_id)
        try:
            stream = self.create_from_state(stream_id, state)
        except StreamLimitError:
            self.spilled.add(stream_id)  # no room now; it stays in the store
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
