"""Work on a stream: every piece runs on the model pool after the stream's earlier work, in arrival
order, with its working memory reserved under the budget first; adaptation steps, alone or grouped
by dynamic batching (:mod:`.batching`), tell the metrics and the guard's observers what they did.

A mixin of :class:`tta_server.streams.manager.StreamManager`, which owns the attributes declared here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from torch import Tensor

from adapters import SourceModel
from adapters.online import DivergenceError
from tta_server.streams.batching import enqueue
from tta_server.streams.errors import MemoryBudgetError, StepTooLargeError, UnknownStreamError
from tta_server.streams.residency import Residency
from tta_server.streams.stream import OnResult, StepResult, Stream

T = TypeVar("T")
logger = logging.getLogger("tta_server.streams.manager")  # the name operators filter the step lines by


class Stepping(Residency):
    source: SourceModel
    executor: ThreadPoolExecutor
    # called after every step with (adapter, images, step seconds, signals, phase seconds: queue and
    # OnlineStream's PHASES)
    step_observers: list[Callable[[str, int, float, dict[str, float], dict[str, float]], None]]
    guard_observers: list[Callable[[str, str, str], None]]  # (adapter, reason, action) of every guard action

    async def get_or_create(self, stream_id: str) -> Stream:
        raise NotImplementedError  # the manager's

    async def run(
        self, stream: Stream, fn: Callable[[Stream], T], images: int = 0, then: Callable[[T], None] | None = None
    ) -> T:
        """Run ``fn`` on the pool after the stream's earlier work; ``images`` > 0 marks an adaptation
        step of that many images, whose working memory (plus the undo copy) is reserved first.
        ``then`` gets the result on the loop while the stream's lock is still held: before any
        later work on the stream, a delete included."""
        async with stream.lock:
            if stream.deleted:
                raise UnknownStreamError(stream.stream_id)
            stream.touch()
            need = 0
            if images and self.budget.enabled:
                step_need = await self._step_need(stream)
                need = step_need(images)
                self._refuse_if_never_fits(stream, images, step_need)
            try:
                await self.budget.reserve(need, self.state_total, lambda extra: self.make_room(stream.stream_id, extra))
            except MemoryBudgetError:
                self.counters["refused_memory_budget"] += 1
                raise
            try:
                result = await self.in_executor(fn, stream)
            finally:
                await self.budget.release(need)
            if then is not None:
                then(result)
            return result

    def _refuse_if_never_fits(self, stream: Stream, images: int, step_need: Callable[[int], int]) -> None:
        """:class:`StepTooLargeError` now, not after ``memory_wait_s``, for a step that no spill
        and no finished step could ever make room for (beside the stream's own state)."""
        budget, state = self.budget.budget_bytes, stream.held_bytes()
        assert budget is not None
        if step_need(images) + state <= budget:
            return
        self.counters["refused_step_too_large"] += 1  # the client's to fix: not budget saturation
        most = self.budget.most_images(lambda n: step_need(n) + state, images)
        hint = (
            f"send at most {most} images per request to this stream"
            if step_need(most) + state <= budget
            else "no step of this stream fits: raise memory_budget_bytes"
        )
        raise StepTooLargeError(
            f"a step of {images} images on stream {stream.stream_id!r} needs {step_need(images)} B (working memory "
            f"and the undo copy) beside the stream's state of {state} B, more than memory_budget_bytes={budget}; {hint}"
        )

    async def _step_need(self, stream: Stream) -> Callable[[int], int]:
        """What a step of n images on the stream reserves: its working memory (measured on first use
        per adapter and config) and the undo copy of the state."""
        online = stream.online
        estimate = await self.budget.estimate(online.adapter, self.source, self.in_executor)
        if not stream.object_bytes:  # a stream created before its config was measured
            stream.object_bytes = self.budget.objects_of(online.adapter)
        return lambda images: estimate.bytes_for(online.step_images(images)) + online.state_bytes()

    async def in_executor(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def step(self, stream_id: str, batch: Tensor, on_result: OnResult | None = None) -> StepResult:
        """Predict ``batch`` on the stream and adapt it; returns (logits, step count, adapter name).
        ``on_result`` sees the result before a later delete of the stream can run (it records the
        request's pending prediction for label feedback: never one of a stream already deleted).

        With ``max_delay_ms`` > 0, requests of one stream are grouped (see :mod:`.batching`). A
        request that waited behind a delete of its stream comes after it: with ``auto_create`` it
        starts the stream afresh, as it would have a moment later."""
        await self.claim_waiting(stream_id, creating=self.options.auto_create)
        while True:
            stream = await self.get_or_create(stream_id)
            try:
                return await self._step_on(stream, batch, on_result)
            except UnknownStreamError:
                if not (stream.deleted and self.options.auto_create):
                    raise

    async def _step_on(self, stream: Stream, batch: Tensor, on_result: OnResult | None) -> StepResult:
        delay_s = self.options.max_delay_ms / 1000
        if delay_s <= 0:
            return await self._step(stream, batch, on_result)
        stream.online.adapter.validate(batch)  # a bad request fails alone, not the group it would join
        limit = self.options.max_batch_size
        if self.budget.enabled:  # no group the budget could never hold: each of its requests might fit alone
            need = await self._step_need(stream)
            limit = self.budget.most_images(lambda images: need(images) + stream.held_bytes(), limit)
        return await enqueue(stream, batch, on_result, delay_s, limit, self._step)

    async def _step(self, stream: Stream, batch: Tensor, on_result: OnResult | None = None) -> StepResult:
        queued = time.perf_counter()  # behind the stream's earlier work, the budget and the pool

        def work(s: Stream) -> StepResult:
            started = time.perf_counter()
            try:
                logits = s.online.step(batch)
            finally:
                s.version += 1  # a diverged step is undone, but a snapshot pass may rewrite it harmlessly
                decision = s.online.last_decision
                if decision is not None:
                    logger.warning("stream %s: guard %s", s.stream_id, decision.report())
                    for notify in self.guard_observers:
                        notify(s.online.name, decision.reason, decision.action)
            seconds, signals = time.perf_counter() - started, s.online.signals.report()["last_step"]
            phases = {"queue": started - queued, **s.online.last_phases}
            for observe in self.step_observers:
                observe(s.online.name, batch.shape[0], seconds, signals, phases)
            decision = s.online.last_decision
            return StepResult(
                logits,
                s.online.steps,
                s.online.name,
                s.online.last_source_classes,
                decision.report() if decision else None,
            )

        try:
            result = await self.run(stream, work, images=batch.shape[0], then=on_result)
        except DivergenceError:
            self.counters["diverged_steps"] += 1
            logger.warning("stream %s: diverged step undone", stream.stream_id)
            raise
        # the state may have grown (optimizer moments): make room now for the next step of this size
        online = stream.online
        headroom = self.budget.bytes_for(online.adapter, online.step_images(batch.shape[0])) + online.state_bytes()
        with contextlib.suppress(MemoryBudgetError):  # the answer is computed; the next step waits or is refused
            await self.make_room(keep=stream.stream_id, extra_bytes=self.budget.in_flight_bytes + headroom)
        return result
