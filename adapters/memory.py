"""Working memory of one adaptation step, measured from the torch profiler's memory timeline, and
the Python objects one stream's adapter keeps beside its tensors.

The profiler records every tensor allocation and free (CPU and CUDA), so the peak of the bytes a
step allocates and still holds is exact for that step; RSS cannot separate one step from the
allocator's cache or from other threads. A step's working memory is close to affine in the batch
size (activations kept for backward, augmented views, gradients of activations); two
measurements, at a small batch and at the largest one a server runs, bound it for every batch in
between (``benchmarks/results/working_memory.md`` compares the bound with measured steps).
"""

from __future__ import annotations

import gc
import math
import tracemalloc
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from adapters.adapter_registry import create_adapter
from adapters.base import Adapter
from adapters.source_model import SourceModel

CALIBRATION_SIZES = (8, 256)


def step_memory(adapter: Adapter, x: torch.Tensor, with_inputs: bool = False) -> dict[str, int]:
    """Peak tensor memory of one ``forward_and_adapt`` step.

    ``step_peak_bytes``: the peak of the bytes allocated during the step and still alive
    (activations kept for backward, gradients, augmented views, temporaries), from the profiler's
    allocation and free events in time order.
    With ``with_inputs``, also ``step_peak_with_inputs_bytes``: the same plus the pre-existing
    tensors the step touched (input batch, weights, per-stream state), from the profiler's memory
    timeline, which needs stack recording and a ~10x slower analysis.

    The profiler is process-wide: measure while no other thread runs torch work.
    """
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if x.is_cuda else [])
    with profile(activities=activities, profile_memory=True, record_shapes=with_inputs, with_stack=with_inputs) as prof:
        adapter.forward_and_adapt(x)
    assert prof.profiler is not None and prof.profiler.kineto_results is not None
    events = sorted(
        (event.start_ns(), event.nbytes())
        for event in prof.profiler.kineto_results.events()
        if event.name() == "[memory]"  # one per allocation (+bytes) and free (-bytes)
    )
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    result = {"step_peak_bytes": peak}
    if with_inputs:
        from torch.profiler._memory_profiler import Action

        new = touched = peak_touched = 0
        for _, action, _, size in sorted(prof._memory_profile().timeline, key=lambda row: row[0]):
            if action == Action.PREEXISTING:
                touched += size
            elif action == Action.CREATE:
                new += size
            elif action == Action.DESTROY:
                new -= size
            peak_touched = max(peak_touched, new + touched)
        result["step_peak_with_inputs_bytes"] = peak_touched
    return result


@dataclass(frozen=True)
class WorkingMemory:
    """Working memory of one step, measured at ``small_images`` and ``large_images``.

    A step's peak is the largest of its phases' peaks (forward, backward, optimizer step, restore),
    each close to affine in the batch size: convex and increasing in ``n``. So the measurement at
    ``small_images`` bounds every smaller step, and the straight line between the two measurements
    lies above the peak in between; beyond ``large_images`` the line is extended (the server
    measures at its largest step, so it does not go there). Under bf16 autocast the peaks are
    affine only to within the cast copies' rounding to allocator blocks (measured: a step of 24
    images 0.004 % above the line through 4 and 32), so the line is raised by ``MARGIN``.
    """

    MARGIN: ClassVar[float] = 0.01

    small_images: int
    small_bytes: int
    large_images: int
    large_bytes: int

    @property
    def per_image_bytes(self) -> int:
        return max(0, math.ceil((self.large_bytes - self.small_bytes) / (self.large_images - self.small_images)))

    def bytes_for(self, images: int) -> int:
        line = self.small_bytes + max(0, images - self.small_images) * self.per_image_bytes
        return math.ceil(line * (1 + self.MARGIN))


def measure_working_memory(
    name: str,
    source: SourceModel,
    config: dict[str, Any] | None = None,
    sizes: tuple[int, int] = CALIBRATION_SIZES,
    seed: int = 0,
) -> WorkingMemory:
    """Profile one step of each of the two ``sizes`` on a throw-away adapter.

    Uniform noise images are used: confidence-gated methods (CoTTA, PETAL) take their expensive
    path on them, so the estimate is an upper bound for those too.
    """
    small, large = sorted(sizes)
    if small < 2 or large <= small:
        raise ValueError(f"calibration sizes must be two distinct sizes >= 2, got {sizes}")
    adapter = create_adapter(name, source, config or {})
    device = next(iter(source.module.parameters()), torch.empty(0)).device
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(large, *source.input_shape, generator=generator).to(device)
    # the first step creates lazily allocated state (optimizer moments): state, not working memory
    adapter.forward_and_adapt(x[:small])
    return WorkingMemory(
        small_images=small,
        small_bytes=step_memory(adapter, x[:small])["step_peak_bytes"],
        large_images=large,
        large_bytes=step_memory(adapter, x)["step_peak_bytes"],
    )


def measure_object_bytes(
    name: str,
    source: SourceModel,
    config: dict[str, Any] | None = None,
    copies: int = 1,
    seed: int = 0,
    warm: bool = True,
) -> int:
    """The Python-heap bytes one stream's adapter keeps beyond its tensors (``state_bytes``): its
    copies of the model's modules with their dicts, the optimizer's bookkeeping, the config. For the
    lightest adapters this is larger than their tensors (Tent on the bundled model: about 170 KiB
    of objects beside 90 KiB of tensors per stream), so a budget counting tensors alone would admit
    several times the streams it can hold.

    Traced with ``tracemalloc`` over ``copies`` fresh adapters, each after one step of two images
    (lazily created state exists then), kept alive until the count. Tensor storage is not on the
    Python heap, so it is not counted twice; the C++ side of each tensor is not counted at all.
    What other threads allocate meanwhile and still hold at the end counts too: the figure errs high
    from them, never low. ``warm`` first runs one
    untraced adapter, so that caches filled on first use are not counted: pass False right after
    :func:`measure_working_memory` of the same adapter, which has filled them."""
    generator = torch.Generator().manual_seed(seed)
    device = next(iter(source.module.parameters()), torch.empty(0)).device
    x = torch.rand(2, *source.input_shape, generator=generator).to(device)
    if warm:
        create_adapter(name, source, config or {}).forward_and_adapt(x)  # first-use caches are no stream's
    gc.collect()
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = []
        for _ in range(copies):
            adapter = create_adapter(name, source, config or {})
            adapter.forward_and_adapt(x)
            kept.append(adapter)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        if started:
            tracemalloc.stop()
    del kept
    return max(0, grown // copies)
