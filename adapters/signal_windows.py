"""Rolling windows of a stream's label-free signals, and their trend (error accumulation).

Every step's sums (:mod:`adapters.blocks.signals`) go into the current window; after
``window_steps`` steps it is closed and kept (the last ``history`` windows). The trend of each
signal is the least-squares slope over the closed windows, per window: a source agreement or an
ATC estimate that keeps falling means adaptation is accumulating errors. A closing window also
gets its label dependence (:func:`adapters.blocks.signals.label_dependence`), from the source
probabilities summed over the window. The windows are part of the stream's state (``signals.*``
tensors), so they survive snapshots and spills.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from adapters.blocks.signals import FIELDS, SIGNALS, label_dependence, ratios

PREFIX = "signals."
STEPS = FIELDS.index("steps")
DEPENDENCE = FIELDS.index("dependence_windows")
# a window in progress is judged from this many steps on (fewer: its label dependence is too noisy)
OPEN_STEPS = 3


class SignalWindows:
    def __init__(self, window_steps: int = 20, history: int = 64) -> None:
        if window_steps < 1 or history < 2:
            raise ValueError("window_steps must be >= 1 and history >= 2")
        self.window_steps, self.history = window_steps, history
        self.last = torch.zeros(len(FIELDS), dtype=torch.float64)
        self.current = torch.zeros(len(FIELDS), dtype=torch.float64)
        self.closed = torch.zeros((0, len(FIELDS)), dtype=torch.float64)
        self.marginal = torch.zeros(0, dtype=torch.float64)  # the current window's summed source probabilities

    def add(self, sums: Tensor, source_probabilities: Tensor | None = None) -> bool:
        """Add one step's sums (and the sum of its source probabilities over the batch, (classes,));
        True when this closed a window."""
        self.last = sums
        self.current = self.current + sums
        if source_probabilities is not None:
            summed = source_probabilities.detach().double().cpu()
            self.marginal = summed if self.marginal.shape != summed.shape else self.marginal + summed
        if self.current[STEPS] >= self.window_steps:
            dependence = label_dependence(self.marginal, self.current) if self.marginal.numel() else None
            if dependence is not None:  # the closing step reports it too (metrics observe steps)
                self.last = self.last.clone()
                for row in (self.current, self.last):
                    row[DEPENDENCE], row[DEPENDENCE + 1] = 1, dependence
            self.closed = torch.cat([self.closed, self.current[None]])[-self.history :]
            self.discard_current()
            return True
        return False

    def open_values(self) -> dict[str, float]:
        """The window in progress' signals so far, with its label dependence, from its
        :data:`OPEN_STEPS`-th step on (before: none); the guard's ``early`` thresholds read them."""
        if self.current[STEPS] < OPEN_STEPS:
            return {}
        values = ratios(self.current)
        if self.marginal.numel():
            dependence = label_dependence(self.marginal, self.current)
            if dependence is not None:
                values["label_dependence"] = dependence
        return values

    def discard_current(self) -> None:
        """Drop the window in progress (after a guard action, so the next one is all after it)."""
        self.current = torch.zeros_like(self.current)
        self.marginal = torch.zeros(0, dtype=torch.float64)

    def reset(self) -> None:
        self.__init__(self.window_steps, self.history)  # type: ignore[misc]

    def slopes(self) -> dict[str, float]:
        """Per signal, the least-squares slope over the closed windows (change per window)."""
        rows = [ratios(row) for row in self.closed]
        out = {}
        for name in SIGNALS:
            values = torch.tensor([r[name] for r in rows if name in r], dtype=torch.float64)
            if values.numel() >= 2:
                x = torch.arange(values.numel(), dtype=torch.float64)
                x = x - x.mean()
                out[name] = float((x * (values - values.mean())).sum() / (x * x).sum())
        return out

    def report(self, last_windows: int = 10) -> dict[str, Any]:
        return {
            "window_steps": self.window_steps,
            "last_step": ratios(self.last),
            "current_window": ratios(self.current),
            "windows": [ratios(row) for row in self.closed[-last_windows:]],
            "windows_closed": int(self.closed.shape[0]),
            "slope_per_window": self.slopes(),
        }

    def state_tensors(self) -> dict[str, Tensor]:
        return {
            f"{PREFIX}last": self.last,
            f"{PREFIX}current": self.current,
            f"{PREFIX}windows": self.closed,
            f"{PREFIX}marginal": self.marginal,
        }

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        """Pop the ``signals.*`` tensors from ``tensors`` (absent: start afresh)."""
        last, current, closed = (tensors.pop(f"{PREFIX}{k}", None) for k in ("last", "current", "windows"))
        marginal = tensors.pop(f"{PREFIX}marginal", None)
        if current is None or closed is None or last is None or current.numel() < len(FIELDS):
            self.reset()  # absent, or an older layout with fewer fields: start afresh
            return
        if current.shape != (len(FIELDS),) or closed.dim() != 2 or closed.shape[1] != len(FIELDS):
            raise ValueError(f"signal windows have shapes {tuple(current.shape)}, {tuple(closed.shape)}")
        self.last, self.current = last.double().clone(), current.double().clone()
        if marginal is not None and marginal.dim() != 1:
            raise ValueError(f"signal windows' marginal has shape {tuple(marginal.shape)}, expected (classes,)")
        self.closed = closed.double().clone()[-self.history :]
        self.marginal = torch.zeros(0, dtype=torch.float64) if marginal is None else marginal.double().clone()
