"""Per-stream adapter state; one adaptation step at a time per stream, in arrival order."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from torch import Tensor

from adapters import Adapter, SourceModel, create_adapter

T = TypeVar("T")


class StreamLimitError(RuntimeError):
    """No room for another stream."""


@dataclass
class Stream:
    stream_id: str
    adapter: Adapter
    created_at: float = field(default_factory=time.time)
    last_used_at: float = field(default_factory=time.time)
    # asyncio.Lock wakes waiters in FIFO order, which keeps a stream's requests in arrival order.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class StreamManager:
    """Creates streams on first use with the default adapter and runs their steps on a pool."""

    def __init__(
        self,
        source: SourceModel,
        default_adapter: str,
        default_config: dict[str, Any],
        workers: int,
        max_streams: int = 1024,
    ) -> None:
        self.source = source
        self.default_adapter = default_adapter
        self.default_config = default_config
        self.max_streams = max_streams
        self.streams: dict[str, Stream] = {}
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tta-model")
        # Fail at start-up, not on the first request, if the default adapter cannot be built.
        create_adapter(default_adapter, source, default_config)

    def get_or_create(self, stream_id: str) -> Stream:
        stream = self.streams.get(stream_id)
        if stream is None:
            if len(self.streams) >= self.max_streams:
                raise StreamLimitError(f"max_streams={self.max_streams} reached")
            adapter = create_adapter(self.default_adapter, self.source, self.default_config)
            stream = self.streams[stream_id] = Stream(stream_id, adapter)
        return stream

    async def run(self, stream: Stream, fn: Callable[[Adapter], T]) -> T:
        async with stream.lock:
            stream.last_used_at = time.time()
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.executor, fn, stream.adapter)

    async def step(self, stream_id: str, batch: Tensor) -> tuple[Tensor, int, str]:
        """Predict-then-adapt ``batch`` on the stream; returns (logits, step count, adapter name)."""
        stream = self.get_or_create(stream_id)

        def work(adapter: Adapter) -> tuple[Tensor, int, str]:
            logits = adapter.forward_and_adapt(batch)
            return logits, adapter.steps, adapter.name

        return await self.run(stream, work)

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
