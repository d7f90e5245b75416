"""Working memory of one adaptation step, measured from the torch profiler's memory timeline.

The profiler records every tensor allocation and free (CPU and CUDA), so the peak of the bytes a
step allocates and still holds is exact for that step; RSS cannot separate one step from the
allocator's cache or from other threads. A step's working memory is close to affine in the batch
size (activations kept for backward, augmented views, gradients of activations), so two small
measurements predict it for any batch: ``benchmarks/results/working_memory.md`` compares the
prediction with measurements at batch 64 and 200.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from adapters.base import Adapter, create_adapter
from adapters.source_model import SourceModel

CALIBRATION_SIZES = (8, 16)


def step_memory(adapter: Adapter, x: torch.Tensor) -> dict[str, int]:
    """Peak tensor memory of one ``forward_and_adapt`` step.

    ``step_peak_bytes``: the peak of the bytes allocated during the step and still alive
    (activations kept for backward, gradients, augmented views, temporaries).
    ``step_peak_with_inputs_bytes``: the same plus the pre-existing tensors the step touched
    (input batch, weights, per-stream state).

    The profiler is process-wide: measure while no other thread runs torch work.
    """
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if x.is_cuda else [])
    with profile(activities=activities, profile_memory=True, record_shapes=True, with_stack=True) as prof:
        adapter.forward_and_adapt(x)
    new = touched = peak_new = peak_touched = 0
    for _, action, _, size in sorted(prof._memory_profile().timeline, key=lambda row: row[0]):
        if action == Action.PREEXISTING:
            touched += size
        elif action == Action.CREATE:
            new += size
        elif action == Action.DESTROY:
            new -= size
        peak_new, peak_touched = max(peak_new, new), max(peak_touched, new + touched)
    return {"step_peak_bytes": peak_new, "step_peak_with_inputs_bytes": peak_touched}


@dataclass(frozen=True)
class WorkingMemory:
    """Working memory of one step of ``n`` images: ``fixed_bytes + n * per_image_bytes``."""

    fixed_bytes: int
    per_image_bytes: int

    def bytes_for(self, images: int) -> int:
        return self.fixed_bytes + images * self.per_image_bytes


def measure_working_memory(
    name: str,
    source: SourceModel,
    config: dict[str, Any] | None = None,
    sizes: tuple[int, int] = CALIBRATION_SIZES,
    seed: int = 0,
) -> WorkingMemory:
    """Fit :class:`WorkingMemory` for an adapter from two profiled steps on a throw-away instance.

    Uniform noise images are used: confidence-gated methods (CoTTA, PETAL) take their expensive
    path on them, so the estimate is an upper bound for those.
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
    peak_small = step_memory(adapter, x[:small])["step_peak_bytes"]
    peak_large = step_memory(adapter, x)["step_peak_bytes"]
    per_image = max(0, math.ceil((peak_large - peak_small) / (large - small)))
    return WorkingMemory(fixed_bytes=max(0, peak_large - per_image * large), per_image_bytes=per_image)
