"""Replaying a stream in this process: the server's own ``OnlineStream`` around an adapter.

The counterpart of :class:`benchmarks.evaluation.remote.RemoteStream`; both offer ``reset``,
``step`` (uint8 images in, class indices out), ``last_action`` (what the guard did),
``last_signals`` and ``finish`` (add what only this kind knows to the result, release
resources), so the replay loop is one loop for both.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from adapters import SourceModel, create_adapter, get_frozen_forward
from adapters.guard_config import GuardConfig
from adapters.online import OnlineStream


class LocalStream:
    def __init__(self, source: SourceModel, replay_config: Any) -> None:
        self.device = torch.device(replay_config.device)
        source.module.to(self.device)  # before the adapter: its per-stream views share the source tensors
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        config = {"seed": replay_config.seed, **replay_config.adapter_config}
        self.adapter = create_adapter(replay_config.adapter, source, config)
        # the server's small-request policy, guard and signals, so both answer alike
        # a guard that only resets periodically needs no source forward (about a Tent step's time)
        guard = replay_config.guard
        reads = guard is not None and GuardConfig.model_validate(guard).reads_signals
        signals = replay_config.source_signals or reads
        frozen = get_frozen_forward(source) if replay_config.min_adapt_batch > 1 or signals else None
        self.online = OnlineStream(
            self.adapter,
            replay_config.min_adapt_batch,
            frozen,
            signals,
            replay_config.window_steps,
            replay_config.guard,
            replay_config.dropout_estimate,
            replay_config.signal_precision,
        )
        self.signals_on = replay_config.source_signals
        self.last_action: dict[str, Any] | None = None

    def reset(self) -> None:
        self.online.reset()

    def step(self, images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(images).to(self.device).permute(0, 3, 1, 2).float().div_(255)
        predicted = self.online.step(x).argmax(1).cpu().numpy()
        decision = self.online.last_decision
        self.last_action = decision.report() if decision else None
        return predicted

    def last_signals(self) -> dict[str, Any] | None:
        return self.online.signals.report()["last_step"] if self.signals_on else None

    def finish(self, result: dict[str, Any]) -> None:
        result["adapter_config"] = self.adapter.config.model_dump(mode="json")
        if self.device.type == "cuda":
            result["device_name"] = torch.cuda.get_device_name(self.device)
            result["peak_gpu_bytes"] = torch.cuda.max_memory_allocated(self.device)
