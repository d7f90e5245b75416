"""Rolling windows of a stream's label-free signals, and their trend (error accumulation).

Every step's sums (:mod:`adapters.blocks.signals`) go into the current window; after
``window_steps`` steps it is closed and kept (the last ``history`` windows). The trend of each
signal is the least-squares slope over the closed windows, per window: a source agreement or an
ATC estimate that keeps falling means adaptation is accumulating errors. The windows are part of
the stream's state (``signals.*`` tensors), so they survive snapshots and spills.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from adapters.blocks.signals import FIELDS, SIGNALS, ratios

PREFIX = "signals."
STEPS = FIELDS.index("steps")


class SignalWindows:
    def __init__(self, window_steps: int = 20, history: int = 64) -> None:
        if window_steps < 1 or history < 2:
            raise ValueError("window_steps must be >= 1 and history >= 2")
        self.window_steps, self.history = window_steps, history
        self.last = torch.zeros(len(FIELDS), dtype=torch.float64)
        self.current = torch.zeros(len(FIELDS), dtype=torch.float64)
        self.closed = torch.zeros((0, len(FIELDS)), dtype=torch.float64)

    def add(self, sums: Tensor) -> bool:
        """Add one step's sums; True when this closed a window."""
        self.last = sums
        self.current = self.current + sums
        if self.current[STEPS] >= self.window_steps:
            self.closed = torch.cat([self.closed, self.current[None]])[-self.history :]
            self.current = torch.zeros_like(self.current)
            return True
        return False

    def discard_current(self) -> None:
        """Drop the window in progress (after a guard action, so the next one is all after it)."""
        self.current = torch.zeros_like(self.current)

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
        return {f"{PREFIX}last": self.last, f"{PREFIX}current": self.current, f"{PREFIX}windows": self.closed}

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        """Pop the ``signals.*`` tensors from ``tensors`` (absent: start afresh)."""
        last, current, closed = (tensors.pop(f"{PREFIX}{k}", None) for k in ("last", "current", "windows"))
        if current is None or closed is None or last is None or current.numel() < len(FIELDS):
            self.reset()  # absent, or an older layout with fewer fields: start afresh
            return
        if current.shape != (len(FIELDS),) or closed.dim() != 2 or closed.shape[1] != len(FIELDS):
            raise ValueError(f"signal windows have shapes {tuple(current.shape)}, {tuple(closed.shape)}")
        self.last, self.current = last.double().clone(), current.double().clone()
        self.closed = closed.double().clone()[-self.history :]
