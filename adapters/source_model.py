"""The frozen source model: a network plus everything needed to feed it."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn


class Preprocessing(BaseModel):
    """How raw images become the model's input tensor.

    Adapters receive float tensors in [0, 1] of shape (N, 3, H, W) with (H, W) == ``input_size``;
    mean/std normalisation happens inside ``SourceModel.module``.
    """

    model_config = ConfigDict(frozen=True)

    input_size: tuple[int, int]
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    resize: Literal["resize", "resize_center_crop", "none"] = Field(
        "resize",
        description="resize: straight to input_size; resize_center_crop: shorter side to "
        "resize_size then center crop (ImageNet convention); none: reject other sizes",
    )
    resize_size: int | None = None


class InputNormalizer(nn.Module):
    """(x - mean) / std with constant buffers; part of every source module."""

    mean: Tensor
    std: Tensor

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class NormalizedModel(nn.Module):
    """``net(normalizer(x))``; ``net`` keeps the public checkpoint's parameter names."""

    def __init__(self, net: nn.Module, preprocessing: Preprocessing) -> None:
        super().__init__()
        self.normalizer = InputNormalizer(preprocessing.mean, preprocessing.std)
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.normalizer(x))  # type: ignore[no-any-return]

    @property
    def has_features(self) -> bool:
        return hasattr(self.net, "forward_features") and isinstance(getattr(self.net, "classifier", None), nn.Module)

    def features(self, x: Tensor) -> Tensor:
        """Pooled penultimate features (the input of ``classifier``)."""
        return self.net.forward_features(self.normalizer(x))  # type: ignore[operator,no-any-return]

    @property
    def classifier(self) -> nn.Module:
        return self.net.classifier  # type: ignore[return-value]


@dataclass
class SourceModel:
    """A frozen classifier and how to feed it.

    ``module`` takes [0, 1] images and returns logits; its tensors are shared by every stream
    and never modified (``requires_grad`` is off, eval mode). ``model_id`` is
    ``<name>@<first 12 hex of the weights hash>`` and changes whenever the weights do.
    """

    name: str
    module: nn.Module
    preprocessing: Preprocessing
    class_names: tuple[str, ...]
    weights_sha256: str
    artefact_dir: Path | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    trainable: bool = True  # False for inference-only formats (TorchScript, ONNX without a converter)
    # Shared per-model objects built on first use (e.g. an ONNX Runtime session).
    cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        # channels_last once, in place, so every stream's view shares the converted weights.
        self.module.to(memory_format=torch.channels_last).eval()  # type: ignore[call-overload]
        for tensor in [*self.module.parameters(), *self.module.buffers()]:
            tensor.requires_grad_(False)

    @property
    def model_id(self) -> str:
        return f"{self.name}@{self.weights_sha256[:12]}"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, *self.preprocessing.input_size)

    def weight_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.module.state_dict().values())


def state_sha256(state: Mapping[str, Tensor]) -> str:
    """A content hash of a state dict (names, dtypes, shapes and values); each tensor is read once,
    so a lazy mapping (a file's tensors, say) holds one tensor in memory at a time."""
    digest = hashlib.sha256()
    for key in sorted(state):
        value = state[key]
        tensor = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{key}:{tensor.dtype}:{tuple(value.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()
