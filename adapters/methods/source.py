"""``source``: the frozen model, no adaptation."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field
from torch import Tensor

from adapters.adapter_registry import register_adapter
from adapters.base import Adapter, AdapterConfig
from adapters.frozen import get_frozen_forward
from adapters.precision import Resolved


class SourceConfig(AdapterConfig):
    backend: Literal["auto", "torch", "onnxruntime"] = Field(
        "auto",
        description="frozen forward engine; auto = the fastest measured per batch size (ONNX Runtime for "
        "small batches, torch bf16 from 16 images where bf16 is native; ONNX Runtime otherwise)",
    )


@register_adapter("source")
class SourceAdapter(Adapter):
    """Eval-mode forward with the source BatchNorm statistics; no per-stream state."""

    Config = SourceConfig
    needs_trainable_source = False
    config: SourceConfig
    preferred_precision: ClassVar[dict[str, Resolved]] = {}  # the frozen forward picks its own engine and precision

    def _setup(self) -> None:
        # Shared by every stream of this model and backend: one ONNX Runtime session in all.
        self.frozen = get_frozen_forward(self.source, self.config.backend, self.config.precision)

    def _forward_and_adapt(self, x: Tensor) -> Tensor:
        return self.frozen(x)

    def _predict(self, x: Tensor) -> Tensor:
        return self.frozen(x)
