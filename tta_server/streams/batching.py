"""Dynamic batching within one stream: requests arriving within ``max_delay_s`` of the first are
grouped (up to ``max_batch_size`` images, in arrival order) into one step and split back. A stream
never shares a step with another stream; a failing group fails each of its requests. Each request's
share is handed to its ``on_result`` while the group's step still holds the stream's lock."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable

import torch
from torch import Tensor

from tta_server.streams.stream import OnResult, Queued, StepResult, Stream

RunGroup = Callable[[Stream, Tensor, OnResult], Awaitable[StepResult]]


def enqueue(
    stream: Stream, batch: Tensor, on_result: OnResult | None, max_delay_s: float, max_batch_size: int, run: RunGroup
) -> asyncio.Future[StepResult]:
    future: asyncio.Future[StepResult] = asyncio.get_running_loop().create_future()
    stream.queue.append(Queued(batch, future, on_result))
    stream.arrived.set()
    if not stream.draining:
        stream.draining = True
        stream.drain_task = asyncio.create_task(_drain(stream, max_delay_s, max_batch_size, run))
    return future


def _queued_images(stream: Stream) -> int:
    return sum(q.batch.shape[0] for q in stream.queue)


def _split(result: StepResult, group: list[Queued]) -> None:
    """Each request of the group gets its rows of the group's result (and the step's guard action)."""
    sizes = [q.batch.shape[0] for q in group]
    sources = result.source_classes.split(sizes) if result.source_classes is not None else [None] * len(sizes)
    for part, source, queued in zip(result.logits.split(sizes), sources, group, strict=True):
        if queued.future.done():  # cancelled: its client left
            continue
        share = result._replace(logits=part, source_classes=source)
        if queued.on_result is not None:
            queued.on_result(share)
        queued.future.set_result(share)


async def _drain(stream: Stream, max_delay_s: float, max_batch_size: int, run: RunGroup) -> None:
    loop = asyncio.get_running_loop()
    try:
        while stream.queue:
            deadline = loop.time() + max_delay_s
            while _queued_images(stream) < max_batch_size:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                stream.arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stream.arrived.wait(), remaining)
            group = [stream.queue.pop(0)]
            images = group[0].batch.shape[0]
            while stream.queue and images + stream.queue[0].batch.shape[0] <= max_batch_size:
                group.append(stream.queue.pop(0))
                images += group[-1].batch.shape[0]
            try:
                await run(stream, torch.cat([q.batch for q in group]), functools.partial(_split, group=group))
            except Exception as exc:  # every request of the group gets the error
                for queued in group:
                    if not queued.future.done():
                        queued.future.set_exception(exc)
    finally:
        stream.draining = False
