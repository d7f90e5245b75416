"""An :class:`~adapters.online.OnlineStream`'s state: its size, its snapshot and its restore.

The state is the adapter's per-stream tensors, the small-request buffer (``buffer.*``), the signal
windows (``signals.*``) and the guard's (``guard.*``): a snapshot continues exactly where it stopped.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from adapters.base import Adapter
from adapters.errors import AdapterError
from adapters.guard import Guard
from adapters.signal_windows import SignalWindows

BUFFER_PREFIX = "buffer."


class StreamState:
    """A mixin of :class:`~adapters.online.OnlineStream`, which owns the attributes declared here."""

    adapter: Adapter
    device: torch.device
    recent: Tensor
    pending: Tensor
    signals: SignalWindows
    guard: Guard
    _state_bytes: int

    def state_bytes(self) -> int:
        """The adapter's per-stream tensors, the buffered images and the guard's last good state, as
        measured after the last change (step, reset, load): the server reads it on its event loop
        while a step runs on a worker thread, and walking the adapter's tensors then would race the
        optimizer adding its moments (``dictionary changed size during iteration``)."""
        return self._state_bytes

    def remeasure_state(self) -> None:
        """Called by whatever changed the state, in the thread that changed it."""
        buffers = sum(t.numel() * t.element_size() for t in (self.recent, self.pending))
        self._state_bytes = self.adapter.state_bytes() + buffers + self.guard.good_bytes()

    def _core_state(self) -> dict[str, Any]:
        """Everything but the guard's state: the adapter's, under ``buffer.*`` and ``signals.*``."""
        state = self.adapter.state_dict()
        state["tensors"][f"{BUFFER_PREFIX}recent"] = self.recent.clone()
        state["tensors"][f"{BUFFER_PREFIX}pending"] = self.pending.clone()
        state["tensors"].update({k: v.clone() for k, v in self.signals.state_tensors().items()})
        return state

    def state_dict(self) -> dict[str, Any]:
        """The adapter's state with the buffer's (``buffer.*``), signal windows' (``signals.*``) and
        guard's (``guard.*``) tensors, and the guard's config."""
        state = self._core_state()
        state["tensors"].update({k: v.clone() for k, v in self.guard.state_tensors().items()})
        state["guard"] = self.guard.config.model_dump(mode="json")
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Everything is checked before anything changes: a state that does not fit leaves the
        stream as it was."""
        expected = self.guard.config.model_dump(mode="json")
        if state.get("guard", expected) != expected:
            raise AdapterError("state was saved with another guard config; create the stream with it first")
        tensors = dict(state["tensors"])
        guard = Guard(self.guard.config)
        try:
            guard.load_state_tensors(tensors)  # pops the guard.* tensors
        except ValueError as exc:
            raise AdapterError(str(exc)) from exc
        self._load_core_state({**state, "tensors": tensors})
        self.guard = guard
        self.remeasure_state()

    def _load_core_state(self, state: dict[str, Any]) -> None:
        tensors = dict(state["tensors"])
        signals = SignalWindows(self.signals.window_steps, self.signals.history)
        try:
            signals.load_state_tensors(tensors)  # pops the signals.* tensors
        except ValueError as exc:
            raise AdapterError(str(exc)) from exc
        shape = tuple(self.adapter.source.input_shape)
        buffers = {}
        for key in ("recent", "pending"):
            value = tensors.pop(f"{BUFFER_PREFIX}{key}", None)
            if value is None:
                value = torch.empty((0, *shape))
            if value.dim() != 4 or tuple(value.shape[1:]) != shape:
                raise AdapterError(f"buffer {key!r} has shape {tuple(value.shape)}, expected (N, {shape})")
            buffers[key] = value.to(self.device, torch.float32)
        self.adapter.load_state_dict({**state, "tensors": tensors})
        self.recent, self.pending, self.signals = buffers["recent"], buffers["pending"], signals
