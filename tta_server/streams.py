"""Per-stream adapter state; one adaptation step at a time per stream, in arrival order."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor

from adapters import Adapter, AdapterError, SourceModel, create_adapter, get_frozen_forward
from adapters.frozen import FrozenForward
from adapters.memory import WorkingMemory, measure_working_memory
from tta_server.snapshots import SnapshotError, read_snapshot, restore_into, snapshot_path, write_snapshot

T = TypeVar("T")
logger = logging.getLogger(__name__)


class StreamLimitError(RuntimeError):
    """No room for another stream."""


class MemoryBudgetError(StreamLimitError):
    """A step's working memory does not fit the memory budget."""


class StreamExistsError(RuntimeError):
    """A stream with that id exists already."""


class UnknownStreamError(KeyError):
    """No stream with that id."""


@dataclass
class Stream:
    stream_id: str
    adapter: Adapter
    created_at: float = field(default_factory=time.time)
    last_used_at: float = field(default_factory=time.time)
    # asyncio.Lock wakes waiters in FIFO order, which keeps a stream's requests in arrival order.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    recent: Tensor | None = None  # the last min_adapt_batch images: batch-statistics context
    pending: list[Tensor] = field(default_factory=list)  # small-request images not yet adapted on
    snapshot_steps: int = -1  # the step count at the last periodic snapshot
    # dynamic batching: requests waiting to be grouped into one step, and whether a drain runs
    queue: list[tuple[Tensor, asyncio.Future[tuple[Tensor, int, str]]]] = field(default_factory=list)
    draining: bool = False
    drain_task: asyncio.Task[None] | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)


def step_small_batches(stream: Stream, batch: Tensor, min_adapt_batch: int, frozen: FrozenForward) -> Tensor:
    """One request's logits, adapting now or once enough small requests have accumulated.

    A batch of at least ``min_adapt_batch`` images is predicted and adapted on at once. A smaller
    one is predicted together with the stream's most recent images (so BatchNorm statistics come
    from a real batch; the frozen source model answers until the stream has seen enough images)
    and buffered; the buffer is adapted on as one batch when it is full (a sliding window).
    """
    adapter = stream.adapter
    adapter.validate(batch)  # before any buffering, so a bad batch leaves the stream untouched
    if batch.shape[0] >= min_adapt_batch:
        logits = adapter.forward_and_adapt(batch)
        stream.recent = batch[-min_adapt_batch:]
        return logits
    context = batch if stream.recent is None else torch.cat([stream.recent, batch])
    enough_context = context.shape[0] >= min_adapt_batch
    logits = adapter.predict(context)[-batch.shape[0] :] if enough_context else frozen(batch)
    stream.recent = context[-min_adapt_batch:]
    stream.pending.append(batch)
    if sum(p.shape[0] for p in stream.pending) >= min_adapt_batch:
        adapter.forward_and_adapt(torch.cat(stream.pending))
        stream.pending.clear()
    return logits


def _working_key(adapter: Adapter) -> str:
    return f"{adapter.name} {adapter.config.model_dump_json()}"


class StreamManager:
    """Creates streams on first use with the default adapter and runs their steps on a pool."""

    def __init__(
        self,
        source: SourceModel,
        default_adapter: str,
        default_config: dict[str, Any],
        workers: int,
        min_adapt_batch: int = 1,
        max_streams: int = 1024,
        max_batch_size: int = 256,
        max_delay_ms: float = 0.0,
        memory_budget_bytes: int | None = None,
        spill_dir: Path | None = None,
        memory_wait_s: float = 30.0,
        largest_step: int = 256,
    ) -> None:
        if memory_budget_bytes is not None and spill_dir is None:
            raise ValueError("memory_budget_bytes needs snapshot_dir: idle streams are spilled there")
        self.memory_budget_bytes = memory_budget_bytes
        self.spill_dir = spill_dir
        self.spilled: set[str] = set()
        # working memory of running steps, reserved before a step starts and freed when it ends
        self.in_flight_bytes = 0
        self.memory_wait_s = memory_wait_s
        self._memory_freed = asyncio.Condition()
        # per adapter + config (adapter name, config, estimate), measured on first use
        self._working: dict[str, tuple[str, dict[str, Any], WorkingMemory]] = {}
        self._measuring: asyncio.Lock = asyncio.Lock()
        # working memory is measured at a small step and at the largest step the server runs
        small = max(2, min(8, largest_step // 2))
        self.calibration_sizes = (small, max(largest_step, small + 1))
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_ms / 1000
        self.source = source
        self.default_adapter = default_adapter
        self.default_config = default_config
        self.max_streams = max_streams
        self.min_adapt_batch = min_adapt_batch
        self.frozen = get_frozen_forward(source)
        self.streams: dict[str, Stream] = {}
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tta-model")
        # Fail at start-up, not on the first request, if the default adapter cannot be built.
        create_adapter(default_adapter, source, default_config)

    def get_or_create(self, stream_id: str) -> Stream:
        stream = self.streams.get(stream_id)
        if stream is None and stream_id in self.spilled:
            stream = self._wake(stream_id)
        if stream is None:
            stream = self.create(stream_id, self.default_adapter, self.default_config)
        return stream

    def _wake(self, stream_id: str) -> Stream:
        """Bring a spilled stream back from its snapshot, exactly as it was."""
        assert self.spill_dir is not None
        metadata, tensors = read_snapshot(snapshot_path(self.spill_dir, stream_id))
        self.spilled.discard(stream_id)
        stream = self.create(stream_id, metadata["adapter"], json.loads(metadata["config"]))
        restore_into(stream.adapter, metadata, tensors)
        return stream

    def expire_idle(self, idle_s: float) -> list[str]:
        """Streams unused for ``idle_s`` seconds leave memory: to a snapshot when snapshots are on
        (they wake up on their next request), otherwise they are dropped. Returns their ids."""
        now = time.time()
        expired = []
        for stream in list(self.streams.values()):
            if now - stream.last_used_at < idle_s or stream.lock.locked() or stream.queue:
                continue
            if self.spill_dir is not None:
                write_snapshot(self.spill_dir, stream.stream_id, stream.adapter)
                self.spilled.add(stream.stream_id)
            self.streams.pop(stream.stream_id, None)
            expired.append(stream.stream_id)
        return expired

    def state_total(self) -> int:
        return sum(stream.adapter.state_bytes() for stream in self.streams.values())

    def enforce_budget(self, keep: str, extra_bytes: int = 0) -> None:
        """Spill the least recently used idle streams to disk until the states plus ``extra_bytes``
        (working memory) fit the budget; raise if they still do not."""
        if self.memory_budget_bytes is None or self.spill_dir is None:
            return
        total = self.state_total() + extra_bytes
        idle = sorted(
            (s for s in self.streams.values() if s.stream_id != keep and not s.lock.locked() and not s.queue),
            key=lambda s: s.last_used_at,
        )
        for stream in idle:
            if total <= self.memory_budget_bytes:
                break
            total -= stream.adapter.state_bytes()
            write_snapshot(self.spill_dir, stream.stream_id, stream.adapter)
            self.streams.pop(stream.stream_id, None)
            self.spilled.add(stream.stream_id)
        if total > self.memory_budget_bytes:
            raise MemoryBudgetError(
                f"memory_budget_bytes={self.memory_budget_bytes} reached: stream states "
                f"{self.state_total()} B + working memory {extra_bytes} B of running and starting steps, "
                "and no idle stream is left to spill"
            )

    async def working_bytes(self, stream: Stream, images: int) -> int:
        """Working memory of a step of ``images`` images on ``stream`` (0 without a budget)."""
        if self.memory_budget_bytes is None:
            return 0
        return (await self.working_estimate(stream.adapter)).bytes_for(images)

    async def working_estimate(self, adapter: Adapter) -> WorkingMemory:
        """The adapter's working-memory estimate, measured on first use per adapter and config
        with the torch profiler on a throw-away adapter. The profiler sees the whole process, so
        the measurement runs while no step is in flight (new steps wait for it)."""
        key = _working_key(adapter)
        if key not in self._working:
            async with self._measuring:
                if key not in self._working:
                    async with self._memory_freed:
                        await self._memory_freed.wait_for(lambda: self.in_flight_bytes == 0)
                        await asyncio.get_running_loop().run_in_executor(self.executor, self.measure_working, adapter)
        return self._working[key][2]

    def measure_working(self, adapter: Adapter) -> WorkingMemory:
        """Measure the adapter's working memory now, in the calling thread (at start-up, before
        serving, the main thread: the profiler logs a harmless kineto error from other threads)."""
        config = adapter.config.model_dump(mode="json")
        started = time.perf_counter()
        estimate = measure_working_memory(adapter.name, self.source, config, self.calibration_sizes)
        logger.info(
            "working memory of %s: %d B at %d images, %d B at %d images (measured in %.1f s)",
            adapter.name,
            estimate.small_bytes,
            estimate.small_images,
            estimate.large_bytes,
            estimate.large_images,
            time.perf_counter() - started,
        )
        self._working[_working_key(adapter)] = (adapter.name, config, estimate)
        return estimate

    def memory_report(self) -> dict[str, Any]:
        """The budget, what holds it now, and the working-memory estimates measured so far."""
        return {
            "budget_bytes": self.memory_budget_bytes,
            "state_bytes": self.state_total(),
            "in_flight_bytes": self.in_flight_bytes,
            "streams_in_memory": len(self.streams),
            "streams_spilled": len(self.spilled),
            "working_memory": [
                {
                    "adapter": name,
                    "config": config,
                    **dataclasses.asdict(estimate),
                    "per_image_bytes": estimate.per_image_bytes,
                }
                for name, config, estimate in self._working.values()
            ],
        }

    async def _reserve(self, stream: Stream, need: int) -> None:
        """Hold ``need`` bytes of the budget for a step; wait while running steps hold what is missing."""
        if self.memory_budget_bytes is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.memory_wait_s
        async with self._memory_freed:
            while True:
                try:
                    self.enforce_budget(keep=stream.stream_id, extra_bytes=self.in_flight_bytes + need)
                    break
                except MemoryBudgetError:
                    remaining = deadline - loop.time()
                    if self.in_flight_bytes == 0 or remaining <= 0:
                        raise  # nothing will free memory in time
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._memory_freed.wait(), remaining)
            self.in_flight_bytes += need

    async def _release(self, need: int) -> None:
        if self.memory_budget_bytes is None:
            return
        async with self._memory_freed:
            self.in_flight_bytes -= need
            self._memory_freed.notify_all()

    def create(self, stream_id: str, adapter: str, config: dict[str, Any]) -> Stream:
        """A new stream with its own adapter; the adapter and config are validated here."""
        if stream_id in self.streams:
            raise StreamExistsError(f"stream {stream_id!r} exists; reset or delete it first")
        if len(self.streams) >= self.max_streams:
            raise StreamLimitError(f"max_streams={self.max_streams} reached")
        stream = self.streams[stream_id] = Stream(stream_id, create_adapter(adapter, self.source, config))
        return stream

    def get(self, stream_id: str) -> Stream:
        stream = self.streams.get(stream_id)
        if stream is None and stream_id in self.spilled:
            stream = self._wake(stream_id)
        if stream is None:
            raise UnknownStreamError(stream_id)
        return stream

    async def reset(self, stream_id: str) -> Stream:
        """Back to the source, after the stream's in-flight requests (same FIFO lock)."""

        def work(stream: Stream) -> Stream:
            stream.adapter.reset()
            stream.recent, stream.pending = None, []
            return stream

        return await self.run(self.get(stream_id), work)

    async def snapshot(self, stream_id: str, directory: Path) -> Path:
        """Write the stream's state to ``directory`` after its in-flight requests."""
        return await self.run(self.get(stream_id), lambda stream: write_snapshot(directory, stream_id, stream.adapter))

    async def restore(self, stream_id: str, directory: Path) -> Stream:
        """Load the stream's snapshot, creating the stream with the snapshot's adapter and config."""
        path = snapshot_path(directory, stream_id)
        if not path.is_file():
            raise SnapshotError(f"no snapshot of stream {stream_id!r} in {directory}")
        metadata, tensors = read_snapshot(path)
        stream = self.streams.get(stream_id) or self.create(
            stream_id, metadata["adapter"], json.loads(metadata["config"])
        )

        def work(stream: Stream) -> Stream:
            restore_into(stream.adapter, metadata, tensors)
            stream.recent, stream.pending = None, []
            return stream

        return await self.run(stream, work)

    def restore_all(self, directory: Path) -> dict[str, str]:
        """At start-up: every snapshot in ``directory`` becomes a stream; returns the failures."""
        failures: dict[str, str] = {}
        for path in sorted(directory.glob("*.safetensors")) if directory.is_dir() else []:
            stream_id = path.name[: -len(".safetensors")]
            try:
                metadata, tensors = read_snapshot(path)
                stream = self.create(stream_id, metadata["adapter"], json.loads(metadata["config"]))
                restore_into(stream.adapter, metadata, tensors)
                stream.snapshot_steps = stream.adapter.steps
            except (SnapshotError, AdapterError, StreamLimitError, StreamExistsError, KeyError) as exc:
                self.streams.pop(stream_id, None)
                failures[stream_id] = str(exc)
        return failures

    def snapshot_all(self, directory: Path) -> None:
        for stream_id, stream in list(self.streams.items()):
            write_snapshot(directory, stream_id, stream.adapter)

    async def snapshot_changed(self, directory: Path) -> int:
        """Snapshot the streams whose step count moved since their last snapshot; returns how many."""
        written = 0
        for stream_id, stream in list(self.streams.items()):
            if stream.adapter.steps != stream.snapshot_steps:
                steps = stream.adapter.steps
                await self.snapshot(stream_id, directory)
                stream.snapshot_steps = steps
                written += 1
        return written

    async def delete(self, stream_id: str) -> None:
        stream = self.get(stream_id)
        async with stream.lock:  # let in-flight requests of the stream finish first
            self.streams.pop(stream_id, None)

    async def run(self, stream: Stream, fn: Callable[[Stream], T], images: int = 0) -> T:
        """Run ``fn`` on the pool after the stream's earlier work; ``images`` > 0 marks an
        adaptation step of that many images, whose working memory is reserved from the budget."""
        async with stream.lock:
            stream.last_used_at = time.time()
            need = await self.working_bytes(stream, self._step_images(stream, images)) if images else 0
            await self._reserve(stream, need)
            try:
                return await asyncio.get_running_loop().run_in_executor(self.executor, fn, stream)
            finally:
                await self._release(need)

    def _step_images(self, stream: Stream, images: int) -> int:
        """The most images one call of :func:`step_small_batches` adapts or predicts on at once."""
        if images >= self.min_adapt_batch:
            return images
        return max(images + self.min_adapt_batch, sum(p.shape[0] for p in stream.pending) + images)

    async def step(self, stream_id: str, batch: Tensor) -> tuple[Tensor, int, str]:
        """Predict ``batch`` on the stream and adapt it; returns (logits, step count, adapter name).

        With ``max_delay_ms`` > 0, requests of one stream arriving within that window are grouped
        (up to ``max_batch_size`` images, in arrival order) into one step and split back; a stream
        never shares a step with another stream.
        """
        stream = self.get_or_create(stream_id)
        if self.max_delay_s <= 0:
            result = await self.run(stream, lambda s: self._work(s, batch), images=batch.shape[0])
            self._after_step(stream, batch.shape[0])
            return result
        stream.adapter.validate(batch)  # a bad request fails alone, not the group it would join
        future: asyncio.Future[tuple[Tensor, int, str]] = asyncio.get_running_loop().create_future()
        stream.queue.append((batch, future))
        stream.arrived.set()
        if not stream.draining:
            stream.draining = True
            stream.drain_task = asyncio.create_task(self._drain(stream))
        return await future

    def _after_step(self, stream: Stream, images: int) -> None:
        """A step's state may have grown (optimizer moments): spill idle streams so that the next
        step of the same size still fits, rather than spilling on that step's request path."""
        key = _working_key(stream.adapter)
        headroom = self._working[key][2].bytes_for(self._step_images(stream, images)) if key in self._working else 0
        with contextlib.suppress(MemoryBudgetError):  # the answer is computed; the next step waits or refuses
            self.enforce_budget(keep=stream.stream_id, extra_bytes=self.in_flight_bytes + headroom)

    def _work(self, stream: Stream, batch: Tensor) -> tuple[Tensor, int, str]:
        logits = step_small_batches(stream, batch, self.min_adapt_batch, self.frozen)
        return logits, stream.adapter.steps, stream.adapter.name

    async def _drain(self, stream: Stream) -> None:
        loop = asyncio.get_running_loop()
        try:
            while stream.queue:
                deadline = loop.time() + self.max_delay_s
                while sum(b.shape[0] for b, _ in stream.queue) < self.max_batch_size:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    stream.arrived.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stream.arrived.wait(), remaining)
                group = [stream.queue.pop(0)]
                while stream.queue and sum(b.shape[0] for b, _ in group) + stream.queue[0][0].shape[0] <= (
                    self.max_batch_size
                ):
                    group.append(stream.queue.pop(0))
                batches = [b for b, _ in group]
                merged = torch.cat(batches)
                try:
                    logits, steps, name = await self.run(
                        stream, partial(self._work, batch=merged), images=merged.shape[0]
                    )
                    self._after_step(stream, merged.shape[0])
                except Exception as exc:  # every request of the group gets the error
                    for _, future in group:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for part, (_, future) in zip(logits.split([b.shape[0] for b in batches]), group, strict=True):
                    if not future.done():
                        future.set_result((part, steps, name))
        finally:
            stream.draining = False

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
