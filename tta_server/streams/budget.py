"""The memory budget's arithmetic: reservations for running steps and per-adapter estimates.

Stream states plus the working memory of running and starting steps must fit
``budget_bytes``. A step reserves its estimate before it runs (``reserve``), and a new or woken
stream its state before it is held (``fit``): both wait while running steps hold what is missing
and fail with :class:`MemoryBudgetError` once nothing can free it in time; the manager's
``make_room`` spills idle streams to get there.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from adapters import Adapter, AdapterConfig, SourceModel, get_adapter_class
from adapters.memory import WorkingMemory, measure_object_bytes, measure_working_memory
from tta_server.streams.errors import MemoryBudgetError, StreamLimitError

logger = logging.getLogger(__name__)


def working_key(adapter: Adapter) -> str:
    return config_key(adapter.name, adapter.config)


def config_key(name: str, adapter_config: AdapterConfig) -> str:
    """What a working-memory estimate is measured for: the adapter and its config, less what
    allocates nothing of its own (the seed, the optimizer's learning rate and betas, and its
    momentum beyond whether there is one). Streams that differ only there share one estimate, so a
    client sweeping learning rates does not pause every stream for a measurement per value."""
    config = adapter_config.model_dump(mode="json")
    config.pop("seed", None)
    optimizer = config.get("optimizer")
    if isinstance(optimizer, dict):
        momentum = bool(optimizer.get("momentum"))
        config["optimizer"] = {**optimizer, "lr": None, "betas": None, "momentum": momentum}
    return f"{name} {json.dumps(config, sort_keys=True)}"


class MemoryBudget:
    def __init__(self, budget_bytes: int | None, wait_s: float, largest_step: int, max_configs: int = 32) -> None:
        self.budget_bytes = budget_bytes
        self.wait_s = wait_s
        self.max_configs = max_configs  # distinct estimates: each measurement pauses every step
        self.in_flight_bytes = 0
        self._freed = asyncio.Condition()  # notified on every release (estimates wait for no step in flight)
        self._released: asyncio.Future[None] | None = None
        self._measuring = asyncio.Lock()
        # per adapter + config: (adapter name, config, estimate), measured on first use
        self.estimates: dict[str, tuple[str, dict[str, Any], WorkingMemory]] = {}
        # per adapter + config: the Python objects of one stream's adapter, measured with its estimate
        self.object_bytes: dict[str, int] = {}
        self.admitted: set[str] = set()  # keys of the configs of streams created so far (see admit)
        # working memory is measured at a small step and at the largest step the server runs
        small = max(2, min(8, largest_step // 2))
        self.calibration_sizes = (small, max(largest_step, small + 1))

    @property
    def enabled(self) -> bool:
        return self.budget_bytes is not None

    def check(self, used_bytes: int, extra_bytes: int, why: str = "no idle stream is left to spill") -> None:
        """Raise if ``used_bytes`` (stream states) plus ``extra_bytes`` exceed the budget; ``why``
        says why spilling did not make room."""
        if self.budget_bytes is not None and used_bytes + extra_bytes > self.budget_bytes:
            raise MemoryBudgetError(
                f"memory_budget_bytes={self.budget_bytes} reached: stream states {used_bytes} B + working "
                f"memory and new state {extra_bytes} B, and {why}"
            )

    def bytes_for(self, adapter: Adapter, images: int) -> int:
        """The measured estimate of a step of ``images`` images (0 if not measured yet)."""
        entry = self.estimates.get(working_key(adapter))
        return entry[2].bytes_for(images) if entry else 0

    def most_images(self, need: Callable[[int], int], limit: int) -> int:
        """The largest step of at most ``limit`` images whose ``need(images)`` bytes fit the whole
        budget; at least 1 (a request too large on its own is refused by itself). ``need`` grows with
        the images."""
        if self.budget_bytes is None:
            return limit
        low, high = 1, limit
        while low < high:
            middle = (low + high + 1) // 2
            low, high = (middle, high) if need(middle) <= self.budget_bytes else (low, middle - 1)
        return low

    async def estimate(self, adapter: Adapter, source: SourceModel, run: Callable[..., Any]) -> WorkingMemory:
        """The adapter's estimate, measured on first use per adapter and config with the torch
        profiler on a throw-away adapter. The profiler sees the whole process, so it runs while no
        step is in flight (new steps wait for it); ``run`` executes it off the event loop."""
        key = working_key(adapter)
        if key not in self.estimates:
            async with self._measuring:
                if key not in self.estimates:
                    async with self._freed:
                        await self._freed.wait_for(lambda: self.in_flight_bytes == 0)
                        await run(self.measure, adapter, source)
        return self.estimates[key][2]

    def measure(self, adapter: Adapter, source: SourceModel) -> WorkingMemory:
        """Measure now, in the calling thread (at start-up, before serving: the main thread)."""
        config = adapter.config.model_dump(mode="json")
        started = time.perf_counter()
        estimate = measure_working_memory(adapter.name, source, config, self.calibration_sizes)
        objects = measure_object_bytes(adapter.name, source, config, warm=False)
        logger.info(
            "working memory of %s: %d B at %d images, %d B at %d images; %d B of objects per stream (measured in "
            "%.1f s)",
            adapter.name,
            estimate.small_bytes,
            estimate.small_images,
            estimate.large_bytes,
            estimate.large_images,
            objects,
            time.perf_counter() - started,
        )
        key = working_key(adapter)
        self.admitted.add(key)
        self.object_bytes[key] = objects
        self.estimates[key] = (adapter.name, config, estimate)
        return estimate

    def admit(self, adapter: str, config: dict[str, Any], new_stream: bool = True) -> None:
        """Admit a stream's adapter config, counted against ``max_configs`` once per distinct
        estimate it will need, whether measured yet or not (else streams created first and stepped
        later would each be measured). Measuring one pauses every step for seconds, so a client must
        not be able to ask for that without bound: a new stream beyond it gets
        :class:`StreamLimitError`. A stream restored from a snapshot (``new_stream=False``) was
        admitted when it was created and is always admitted again. Checked before the adapter is
        built, so a refused stream costs no model copy; an invalid config raises ``AdapterError``."""
        if not self.enabled:
            return  # nothing is measured without a budget
        cls = get_adapter_class(adapter)
        key = config_key(cls.name, cls.parse_config(config))
        if key in self.admitted:
            return
        if new_stream and len(self.admitted) >= self.max_configs:
            raise StreamLimitError(
                f"max_adapter_configs={self.max_configs} reached: the memory budget measures the working memory of "
                "that many distinct adapter configs and no more; use the config of an existing stream (configs that "
                "differ only in seed and optimizer lr and betas share one), or raise max_adapter_configs"
            )
        self.admitted.add(key)

    def objects_of(self, adapter: Adapter) -> int:
        """The Python objects a stream of this adapter and config holds beside its tensors (0 until
        measured: with its working memory, on the first step of that adapter and config)."""
        return self.object_bytes.get(working_key(adapter), 0)

    async def fit(self, extra: int, used: Callable[[], int], make_room: Callable[[int], Awaitable[None]]) -> None:
        """Return once states (``used()``), reservations and ``extra`` bytes fit, in the same event
        loop turn as the check, so the caller can take the room before anything else runs.
        ``make_room(in flight + extra)`` spills or raises :class:`MemoryBudgetError`; then this waits
        for running steps to release their reservations, up to ``wait_s``, and raises once nothing
        can free the room in time."""
        if self.budget_bytes is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        while True:
            released = self._next_release(loop)
            if used() + self.in_flight_bytes + extra <= self.budget_bytes:
                return
            try:
                await make_room(self.in_flight_bytes + extra)
                continue  # check again: others may have taken the room meanwhile
            except MemoryBudgetError:
                remaining = deadline - loop.time()
                if released.done() and remaining > 0:
                    continue  # a step finished while room was being made: check again with what it freed
                if self.in_flight_bytes == 0 or remaining <= 0:
                    raise  # nothing will free memory in time
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(released), remaining)

    async def reserve(self, need: int, used: Callable[[], int], make_room: Callable[[int], Awaitable[None]]) -> None:
        """Hold ``need`` bytes for a step (see :meth:`fit`); a step waits while an estimate is measured."""
        if not self.enabled:
            return
        while True:
            await self.fit(need, used, make_room)
            if not self._measuring.locked():
                break
            async with self._measuring:  # the profiler sees the whole process: no step may start now
                pass
        self.in_flight_bytes += need

    def _next_release(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        """Resolved by the next :meth:`release` (taken before a check, so none is missed)."""
        if self._released is None or self._released.done() or self._released.get_loop() is not loop:
            self._released = loop.create_future()
        return self._released

    async def release(self, need: int) -> None:
        if not self.enabled:
            return
        self.in_flight_bytes -= need
        if self._released is not None and not self._released.done():
            self._released.set_result(None)
        async with self._freed:
            self._freed.notify_all()

    def report_with(self, state_bytes: int, in_memory: int, spilled: int) -> dict[str, Any]:
        return {
            "budget_bytes": self.budget_bytes,
            "state_bytes": state_bytes,
            "in_flight_bytes": self.in_flight_bytes,
            "streams_in_memory": in_memory,
            "streams_spilled": spilled,
            "working_memory": self.report(),
        }

    def report(self) -> list[dict[str, Any]]:
        return [
            {
                "adapter": name,
                "config": config,
                **dataclasses.asdict(est),
                "per_image_bytes": est.per_image_bytes,
                "object_bytes_per_stream": self.object_bytes.get(key, 0),
            }
            for key, (name, config, est) in self.estimates.items()
        ]
