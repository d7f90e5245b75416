"""One stream's online adaptation: an adapter, the small-request buffer and a divergence guard.

BatchNorm-based methods fail on tiny batches, and serving traffic often comes one image at a
time. :class:`OnlineStream` is the policy both the server and the offline replay use:

* a batch of at least ``min_adapt_batch`` images is predicted and adapted on at once;
* a smaller one is predicted together with the stream's most recent images (so batch statistics
  come from a real batch; the frozen source model answers until the stream has seen enough
  images) and buffered; the buffer is adapted on as one batch once it holds enough images.

A step whose logits or updated per-stream tensors are not finite is undone: the stream returns to
its state before the step (buffer included) and :class:`DivergenceError` says so. The buffer is
part of the stream's state (``state_dict``), so a snapshot continues exactly where it stopped.
Each step's label-free signals go into rolling windows, and the stream's :class:`~adapters.guard.Guard`
may reset, roll back or pause the adapter when they say adaptation hurts.

Example::

    stream = OnlineStream(create_adapter("tent", source), min_adapt_batch=16, frozen=get_frozen_forward(source))
    logits = stream.step(batch)     # (N, C) on the CPU
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from adapters.base import Adapter
from adapters.blocks.bn_shift import batchnorm_probe
from adapters.blocks.signals import step_sums
from adapters.errors import AdapterError
from adapters.guard import Decision, Guard
from adapters.guard_config import GuardConfig
from adapters.model_signals import atc_threshold_of, model_signals
from adapters.online_state import StreamState
from adapters.precision import Resolved, compute_precision
from adapters.signal_windows import SignalWindows

# a step's phases: the adapter's forward and update (with the undo copy of its state), the source
# forward behind the signals (when it runs), and the signals, windows and guard (on a GPU, a phase's
# kernels may finish in the next)
PHASES = ("adapt", "source_forward", "signals")


class DivergenceError(AdapterError):
    """A step produced non-finite values; the stream was put back to its state before the step."""


class OnlineStream(StreamState):
    """``frozen`` (the shared frozen forward) answers small requests before there is context and,
    with ``source_signals``, gives the source prediction each step's signals compare against
    (one forward of the source model per step, in ``signal_precision``: on this CPU in fp32 about
    a Tent step, 2 % of a CoTTA step)."""

    def __init__(
        self,
        adapter: Adapter,
        min_adapt_batch: int = 1,
        frozen: Callable[[Tensor], Tensor] | None = None,
        source_signals: bool = True,
        window_steps: int = 20,
        guard: GuardConfig | dict[str, Any] | None = None,
        dropout_estimate: bool = False,
        signal_precision: Resolved = "fp32",
    ):
        if min_adapt_batch < 1:
            raise ValueError(f"min_adapt_batch must be >= 1, got {min_adapt_batch}")
        if min_adapt_batch > 1 and frozen is None:
            raise ValueError("min_adapt_batch > 1 needs the frozen forward that answers before enough context")
        self.adapter = adapter
        self.min_adapt_batch = min_adapt_batch
        self.frozen = frozen
        self.device = next(adapter.source.module.parameters()).device
        shape = (0, *adapter.source.input_shape)
        self.recent = torch.empty(shape, device=self.device)  # the last images: batch-statistics context
        self.pending = torch.empty(shape, device=self.device)  # small-request images not yet adapted on
        self.signals = SignalWindows(window_steps)
        self.source_signals = source_signals and frozen is not None
        # the source forward of the signals also measures the BatchNorm-statistics shift
        self.probe = batchnorm_probe(adapter.source) if self.source_signals else None
        # bf16: a cheaper probe forward; signals within about 0.01 of fp32's (benchmarks/results/signal_precision.md)
        self.signal_precision: Resolved = signal_precision
        self.atc_threshold = atc_threshold_of(adapter.source)
        self.dropout_estimate = dropout_estimate  # AETTA-style estimate: 10 extra classifier passes per step
        self.last_source_classes: Tensor | None = None  # the source model's classes for the last step
        self.last_bn_shift: list[float] = []  # per BatchNorm layer, for the last step
        self.guard = Guard(guard)
        if self.guard.config.falls_back and frozen is None:
            raise ValueError("the guard's fallback policy needs the frozen forward that answers instead")
        self.last_decision: Decision | None = None  # what the guard did in the last step, if anything
        self.last_phases: dict[str, float] = {}  # seconds of the last step's phases (PHASES)
        self.remeasure_state()

    @property
    def name(self) -> str:
        return self.adapter.name

    @property
    def steps(self) -> int:
        return self.adapter.steps

    @property
    def buffered_images(self) -> int:
        return int(self.pending.shape[0])

    def step_images(self, images: int) -> int:
        """The most images one :meth:`step` of ``images`` images runs the model on at once."""
        if images >= self.min_adapt_batch:
            return images
        return max(images + self.min_adapt_batch, self.buffered_images + images)

    def step(self, batch: Tensor) -> Tensor:
        """Logits (on the CPU) for ``batch``, adapting now or once enough images are buffered."""
        try:
            return self._step_and_watch(batch)
        finally:
            self.remeasure_state()

    def _step_and_watch(self, batch: Tensor) -> Tensor:
        started = time.perf_counter()
        self.adapter.validate(batch)  # before any buffering, so a bad batch leaves the stream untouched
        batch = batch.to(self.device)
        self.last_decision = None
        before = self._core_state()  # the guard's state does not change until the step succeeded
        steps_before = self.adapter.steps
        try:
            logits, source_logits = self._step(batch)
            if not bool(torch.isfinite(logits).all()) or not self.adapter.state_is_finite():
                raise DivergenceError(f"stream diverged: adapter {self.name!r} produced non-finite values")
        except DivergenceError as exc:
            self._load_core_state(before)
            decision = self.guard.on_non_finite()
            action = "the step was undone" + (f" and {self._apply(decision)}" if decision else "")
            raise DivergenceError(f"{exc}; {action} (lower the learning rate, or reset the stream)") from exc
        except BaseException:
            self._load_core_state(before)
            raise
        shift = None
        falling_back = self.guard.falling_back
        phases = {"adapt": time.perf_counter() - started}
        probed = False  # source_logits came from the signals' probe, not from the frozen forward
        if (self.source_signals or falling_back) and source_logits is None:
            started = time.perf_counter()
            source_logits, shift = self._source_forward(batch)
            probed = self.probe is not None
            phases["source_forward"] = time.perf_counter() - started
        started = time.perf_counter()
        adapted = model_signals(self.adapter, self.adapter.steps > steps_before, self.dropout_estimate)
        sums = step_sums(logits, source_logits, self.atc_threshold, shift, adapted)
        marginal = None if source_logits is None else source_logits.float().softmax(1).sum(0)
        closed = self.signals.add(sums, marginal)
        self.last_source_classes = None if source_logits is None else source_logits.argmax(1).cpu()
        decision = self._after_step(batch.shape[0], closed)
        phases["signals"] = time.perf_counter() - started
        answer = logits
        # falling back (from this batch, which showed the problem, on), the source answers and the
        # adapter's own (shadow) prediction feeds the signals. The answer is the frozen forward's,
        # as for a `source` stream, not the probe's, whose precision (signal_precision) may differ
        if falling_back or (decision is not None and decision.action == "fallback"):
            started = time.perf_counter()
            assert self.frozen is not None  # a guard that can fall back needs it (checked at creation)
            answer = source_logits if source_logits is not None and not probed else self.frozen(batch)
            phases["source_forward"] = phases.get("source_forward", 0.0) + time.perf_counter() - started
        self.last_phases = phases
        return answer.cpu()

    def _source_forward(self, batch: Tensor) -> tuple[Tensor, float | None]:
        if self.probe is None:
            assert self.frozen is not None
            return self.frozen(batch), None
        with compute_precision(self.device, self.signal_precision):
            logits, layers = self.probe(batch)
        logits = logits.float()
        self.last_bn_shift = layers.tolist()
        return logits, float(layers.mean()) if layers.numel() else None

    def _after_step(self, images: int, closed: bool) -> Decision | None:
        guard = self.guard
        guard.tick(images)
        decision = guard.on_step(self.adapter.steps)
        if decision is None and closed:
            decision = guard.on_window(self.signals.closed)
        elif decision is None and guard.config.checks_early:
            decision = guard.on_open_window(self.signals.open_values())
        if decision is not None:
            self._apply(decision)
        elif closed and guard.config.keeps_good_state:
            state = self.adapter.state_dict()
            guard.good = {"tensors": state["tensors"], "generator": state["generator"], "steps": state["steps"]}
        return decision

    def _apply(self, decision: Decision) -> str:
        """Carry out a guard decision; returns what was done, in words."""
        self.guard.record(decision, self.adapter.steps)
        self.last_decision = decision
        self.signals.discard_current()
        good = self.guard.good
        if decision.action == "pause":
            return f"the guard paused adaptation for {self.guard.config.pause_steps} steps"
        if decision.action == "fallback":
            return "the guard answers with the source model (adaptation stopped) until the signals recover"
        if decision.action == "resume":
            return "the signals recovered: adaptation resumed"
        if decision.action == "rollback" and good is not None:
            adapter = self.adapter
            adapter.load_state_dict(
                {
                    "adapter": adapter.name,
                    "model_id": adapter.source.model_id,
                    "config": adapter.config.model_dump(mode="json"),
                    "steps": good["steps"],
                    "generator": good["generator"].clone(),
                    "tensors": {k: v.clone() for k, v in good["tensors"].items()},
                }
            )
            return f"the guard rolled back to the last good state (step {good['steps']})"
        self.adapter.reset()
        self.guard.good = None
        return "the guard reset the stream to the source"

    def _step(self, batch: Tensor) -> tuple[Tensor, Tensor | None]:
        """The batch's logits, and the source's when they were computed on the way."""
        adapter, n, adapt = self.adapter, batch.shape[0], self.guard.adapting
        if n >= self.min_adapt_batch:
            logits = adapter.forward_and_adapt(batch) if adapt else adapter.predict(batch)
            self.recent = batch[-self.min_adapt_batch :]
            return logits, None
        assert self.frozen is not None
        context = torch.cat([self.recent, batch])
        enough_context = context.shape[0] >= self.min_adapt_batch
        source_logits = None if enough_context else self.frozen(batch)
        logits = adapter.predict(context)[-n:] if source_logits is None else source_logits
        self.recent = context[-self.min_adapt_batch :]
        if adapt:  # a paused or falling-back stream buffers nothing: those images are never adapted on
            self.pending = torch.cat([self.pending, batch])
        if self.pending.shape[0] >= self.min_adapt_batch:
            adapter.forward_and_adapt(self.pending)
            self.pending = self.pending[:0]
        return logits, source_logits

    def reset(self) -> None:
        """Back to the source, buffer emptied."""
        self.adapter.reset()
        self.recent, self.pending = self.recent[:0], self.pending[:0]
        self.signals.reset()
        self.guard.paused_steps_left, self.guard.windows_since_action, self.guard.good = 0, 0, None
        self.guard.falling_back, self.guard.quiet_windows = False, 0
        self.remeasure_state()
