"""Dynamic batching within one stream: requests arriving within ``max_delay_s`` of the first are
grouped (up to ``max_batch_size`` images, in arrival order) into one step and split back. A stream
never shares a step with another stream; a failing group fails each of its requests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import torch
from torch import Tensor

from tta_server.streams.stream import StepResult, Stream

RunGroup = Callable[[Stream, Tensor], Awaitable[StepResult]]


def enqueue(
    stream: Stream, batch: Tensor, max_delay_s: float, max_batch_size: int, run: RunGroup
) -> asyncio.Future[StepResult]:
    future: asyncio.Future[StepResult] = asyncio.get_running_loop().create_future()
    stream.queue.append((batch, future))
    stream.arrived.set()
    if not stream.draining:
        stream.draining = True
        stream.drain_task = asyncio.create_task(_drain(stream, max_delay_s, max_batch_size, run))
    return future


def _queued_images(stream: Stream) -> int:
    return sum(b.shape[0] for b, _ in stream.queue)


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
            while stream.queue and sum(b.shape[0] for b, _ in group) + stream.queue[0][0].shape[0] <= max_batch_size:
                group.append(stream.queue.pop(0))
            batches = [b for b, _ in group]
            try:
                result = await run(stream, torch.cat(batches))
            except Exception as exc:  # every request of the group gets the error
                for _, future in group:
                    if not future.done():
                        future.set_exception(exc)
                continue
            sizes = [b.shape[0] for b in batches]
            sources = result.source_classes.split(sizes) if result.source_classes is not None else [None] * len(sizes)
            for part, source, (_, future) in zip(result.logits.split(sizes), sources, group, strict=True):
                if not future.done():
                    future.set_result(StepResult(part, result.steps, result.adapter, source))
    finally:
        stream.draining = False
