"""Stream ownership as the manager uses it: claiming a stream's lease before touching it, and
writing its snapshot only while the lease is still this replica's (the lease protocol itself is
:mod:`tta_server.streams.ownership`).

A mixin of :class:`tta_server.streams.manager.StreamManager`, which owns the attributes declared here.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from contextvars import ContextVar
from pathlib import Path

from tta_server.streams.errors import StreamOwnedError
from tta_server.streams.failure_log import FailureLog
from tta_server.streams.ownership import Ownership
from tta_server.streams.store import SnapshotStore
from tta_server.streams.stream import Stream, StreamOptions

# Whether the request reached this replica through its stream's own X-Stream-Id header, which the
# balancer hashes. Only such a request may ask a live owner to hand the stream over: one addressed
# by path alone landed wherever the hash of "no header" points, and moving the stream there would
# pull it away from its traffic, which would then pull it back.
routed_by_stream_header: ContextVar[bool] = ContextVar("routed_by_stream_header", default=True)


class Claims:
    streams: dict[str, Stream]
    spilled: set[str]  # streams whose latest state is only in the store
    store: SnapshotStore | None
    ownership: Ownership | None  # with replicas sharing the store: who holds which stream
    options: StreamOptions
    counters: Counter[str]
    failures: FailureLog  # write failures retried every pass, logged when they start and clear

    def claim(self, stream_id: str, creating: bool = False, reading: bool = False) -> None:
        """With ownership: take the stream's lease before touching it (:class:`StreamOwnedError` if
        another replica holds it); its snapshot in the shared store then wakes like a spilled one.

        Unless ``creating``, an id with neither a lease nor a snapshot is left alone: probing unknown
        ids must not leave a lease file per id in the shared store. ``reading`` (showing the stream)
        never asks a live owner to hand it over: a dashboard polling ``GET /v1/streams/{id}`` through
        a balancer that hashes X-Stream-Id, without that header, would otherwise pull the stream away
        from the replica its traffic goes to, and that traffic would pull it back, over and over. A
        request not routed by the stream's header (:data:`routed_by_stream_header`) does not ask either."""
        ownership = self.ownership
        if ownership is None or ownership.fresh(stream_id):
            return
        if not creating and not ownership.holds(stream_id) and not self._exists_in_store(stream_id):
            self.drop(stream_id)  # a copy without a lease is stale
            return
        if ownership.holds(stream_id):  # renewals stalled (a long step?): make sure it is still ours
            held = ownership.held[stream_id]
            try:
                generation = ownership.acquire(stream_id)
            except StreamOwnedError:
                self.drop(stream_id)  # taken over meanwhile: this copy is stale
                raise
            if generation != held:  # another replica held it (or it was deleted) in between
                self.drop(stream_id)
                if self.store is not None and self.store.exists(stream_id):
                    self.spilled.add(stream_id)  # continue from that replica's latest snapshot
            return
        self.drop(stream_id)  # a copy without a lease is stale (its loss was noticed by a write)
        ownership.acquire(stream_id, ask_handover=not reading and routed_by_stream_header.get())
        if self.store is not None and self.store.exists(stream_id):
            self.spilled.add(stream_id)

    def _exists_in_store(self, stream_id: str) -> bool:
        """A lease (held or released by some replica) or a snapshot of the stream is in the store."""
        assert self.ownership is not None and self.store is not None
        return self.ownership.has_lease(stream_id) or self.store.exists(stream_id)

    async def claim_waiting(self, stream_id: str, creating: bool = False) -> None:
        """:meth:`claim`, waiting up to ``handover_wait_s`` for the owner to hand the stream over."""
        deadline = time.monotonic() + self.options.handover_wait_s
        while True:
            try:
                return self.claim(stream_id, creating)
            except StreamOwnedError as exc:
                if not exc.asked or time.monotonic() >= deadline:  # not asked: waiting changes nothing
                    self.counters["refused_owned_elsewhere"] += 1
                    raise
            await asyncio.sleep(0.1)

    def drop(self, stream_id: str) -> None:
        """Forget the stream here without writing it (another replica owns it now)."""
        self.streams.pop(stream_id, None)
        self.spilled.discard(stream_id)
        self.failures.forget(stream_id, "snapshot", "spill")

    def write_snapshot(self, stream: Stream) -> Path:
        """Write the stream's state; with ownership, only while this replica still holds it."""
        assert self.store is not None
        if self.ownership is None:
            path = self.store.write(stream.stream_id, stream.snapshot_state())
        else:
            with self.ownership.fenced(stream.stream_id):
                path = self.store.write(stream.stream_id, stream.snapshot_state())
        self.failures.cleared(stream.stream_id, "snapshot", "spill")
        return path
