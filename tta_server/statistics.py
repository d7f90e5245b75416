"""Inference counts and durations, as the Open Inference Protocol's statistics extension reports them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.ns += ns


@dataclass
class InferenceStatistics:
    inference_count: int = 0  # images answered
    execution_count: int = 0  # requests run
    last_inference_ms: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)

    def record(self, images: int, started_ns: int, ok: bool) -> None:
        elapsed = time.perf_counter_ns() - started_ns
        if ok:
            self.inference_count += images
            self.execution_count += 1
            self.success.add(elapsed)
        else:
            self.fail.add(elapsed)
        self.last_inference_ms = int(time.time() * 1000)

    def as_oip(self, name: str, version: str) -> dict[str, Any]:
        zero = {"count": 0, "ns": 0}
        return {
            "model_stats": [
                {
                    "name": name,
                    "version": version,
                    "last_inference": self.last_inference_ms,
                    "inference_count": self.inference_count,
                    "execution_count": self.execution_count,
                    "inference_stats": {
                        "success": vars(self.success),
                        "fail": vars(self.fail),
                        "queue": zero,
                        "compute_input": zero,
                        "compute_infer": vars(self.success),
                        "compute_output": zero,
                    },
                    "batch_stats": [],
                }
            ]
        }
