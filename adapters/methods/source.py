"""``source``: the frozen model, no adaptation (methods.md 3.1)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import Tensor

from adapters.base import Adapter, AdapterConfig, register_adapter
from adapters.frozen import get_frozen_forward


class SourceConfig(AdapterConfig):
    backend: Literal["auto", "torch", "onnxruntime"] = Field(
        "auto", description="frozen forward backend; auto = ONNX Runtime when installed"
    )


@register_adapter("source")
class SourceAdapter(Adapter):
    """Eval-mode forward with the source BatchNorm statistics; no per-stream state."""

    Config = SourceConfig
    needs_trainable_source = False
    config: SourceConfig

    def _setup(self) -> None:
        # Shared by every stream of this model and backend: one ONNX Runtime session in all.
        self.frozen = get_frozen_forward(self.source, self.config.backend)

    def _forward_and_adapt(self, x: Tensor) -> Tensor:
        return self.frozen(x)

    def _predict(self, x: Tensor) -> Tensor:
        return self.frozen(x)
