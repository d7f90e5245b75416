"""One stream held in memory (its online adapter, ordering lock and dynamic-batching queue), and the
options its online adapter is built with."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from pydantic import ValidationError
from torch import Tensor

from adapters import AdapterError, SourceModel, create_adapter
from adapters.guard_config import GuardConfig
from adapters.online import OnlineStream
from adapters.precision import Resolved
from tta_server.streams.feedback import FeedbackTotals


class StepResult(NamedTuple):
    logits: Tensor  # (N, C), on the CPU
    steps: int  # the stream's adaptation step count after this request
    adapter: str
    source_classes: Tensor | None  # (N,) the frozen source model's classes, with source_signals
    guard: dict[str, Any] | None = None  # what the guard did in this step, if anything


OnResult = Callable[[StepResult], None]  # told a request's result while its stream is still locked


class Queued(NamedTuple):
    """A request waiting for dynamic batching to group it into a step."""

    batch: Tensor
    future: asyncio.Future[StepResult]
    on_result: OnResult | None


@dataclass(frozen=True)
class StreamOptions:
    """How the manager creates and runs streams (from the server settings of the same names)."""

    default_adapter: str = "tent"
    default_config: dict[str, Any] = field(default_factory=dict)
    workers: int = 2
    min_adapt_batch: int = 1
    max_streams: int = 1024
    max_streams_total: int = 65536  # in memory and spilled to the store together
    max_batch_size: int = 256  # dynamic batching: most images per step
    max_delay_ms: float = 0.0  # dynamic batching window (0: off)
    memory_budget_bytes: int | None = None
    memory_wait_s: float = 30.0
    max_adapter_configs: int = 32  # distinct working-memory estimates the budget measures
    largest_step: int = 256  # the most images one step can hold (working-memory calibration)
    auto_create: bool = True
    source_signals: bool = True  # each step's signals compare with the frozen source prediction
    signal_precision: Resolved = "fp32"  # of the source forward behind the signals
    signal_window_steps: int = 20
    dropout_estimate: bool = False  # the AETTA-style signal dropout_accuracy (10 classifier passes per step)
    guard: dict[str, Any] = field(default_factory=dict)  # GuardConfig of streams created without one
    handover_wait_s: float = 10.0  # with replicas: how long a request waits for another to hand over

    def build(
        self,
        source: SourceModel,
        frozen: Callable[[Tensor], Tensor],
        adapter: str,
        config: dict[str, Any],
        guard: dict[str, Any] | None,
        state: dict[str, Any] | None,
    ) -> OnlineStream:
        """A stream's online adapter with these options, loaded from ``state`` if given; on a worker
        thread (a CoTTA stream copies the model three times)."""
        try:
            guard_config = GuardConfig.model_validate(self.guard if guard is None else guard)
        except ValidationError as exc:
            raise AdapterError(f"invalid guard config: {exc}") from exc
        online = OnlineStream(
            create_adapter(adapter, source, config),
            self.min_adapt_batch,
            frozen,
            self.source_signals,
            self.signal_window_steps,
            guard_config,
            self.dropout_estimate,
            self.signal_precision,
        )
        if state is not None:
            online.load_state_dict(state)
        return online


@dataclass
class Stream:
    stream_id: str
    online: OnlineStream
    created_at: float = field(default_factory=time.time)
    last_used_at: float = field(default_factory=time.time)
    # idleness on the monotonic clock: a wall-clock step (NTP, a resumed VM) must not make every
    # stream look idle at once, which without a store would drop them
    used_at: float = field(default_factory=time.monotonic)
    # asyncio.Lock wakes waiters in FIFO order, which keeps a stream's requests in arrival order.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    version: int = 0  # bumped by every change of state (steps, buffering, reset, restore)
    saved_version: int = -1  # the version the store holds
    deleted: bool = False  # set under the lock by delete: later work on this object must not write
    feedback: FeedbackTotals = field(default_factory=FeedbackTotals)  # online error from label feedback
    object_bytes: int = 0  # the adapter's Python objects beside its tensors (MemoryBudget.objects_of)
    # dynamic batching: requests waiting to be grouped into one step, and whether a drain runs
    queue: list[Queued] = field(default_factory=list)
    draining: bool = False
    drain_task: asyncio.Task[None] | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def snapshot_state(self) -> dict[str, Any]:
        """What the snapshot store keeps: the online adapter's state and the feedback totals."""
        return {**self.online.state_dict(), "feedback": self.feedback.as_dict()}

    def held_bytes(self) -> int:
        """What the memory budget counts for this stream: its state's tensors and its objects."""
        return self.online.state_bytes() + self.object_bytes

    def touch(self) -> None:
        self.last_used_at, self.used_at = time.time(), time.monotonic()

    def idle_s(self) -> float:
        return time.monotonic() - self.used_at

    @property
    def busy(self) -> bool:
        return self.lock.locked() or bool(self.queue)
