"""The model zoo: named factories that build a :class:`SourceModel`.

``create_source_model("cifar10-airbench")`` gives the bundled model; the other entries load
weights a user brings, in the public checkpoints' parameter names::

    create_source_model("wrn28-10-cifar10", checkpoint="Standard.pt")       # RobustBench
    create_source_model("resnet50-imagenet", checkpoint="resnet50.pth")     # torchvision
    create_source_model("torchscript", path="model.pt", input_size=(32, 32), class_names=[...])
    create_source_model("onnx", path="model.onnx", input_size=(32, 32), class_names=[...])
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from adapters.errors import CheckpointError
from adapters.models.airbench import AirbenchNet
from adapters.models.loading import file_sha256, load_into, read_state_dict
from adapters.models.resnet import IMAGENET_MEAN, IMAGENET_STD, resnet50
from adapters.models.wide_resnet import WideResNet
from adapters.registry import Registry
from adapters.source_model import NormalizedModel, Preprocessing, SourceModel

ModelFactory = Callable[..., SourceModel]
MODELS: Registry[ModelFactory] = Registry("model")
register_model = MODELS.register

WEIGHTS_DIR = Path(__file__).parent / "weights"
BUNDLED_MODEL = "cifar10-airbench"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def list_models(pattern: str = "*") -> list[str]:
    return MODELS.names(pattern)


def create_source_model(name: str = BUNDLED_MODEL, **kwargs: Any) -> SourceModel:
    """Build a registered model; keyword arguments go to its factory."""
    return MODELS.get(name)(**kwargs)


def _from_checkpoint(
    name: str,
    net: nn.Module,
    checkpoint: str | Path,
    preprocessing: Preprocessing,
    class_names: Sequence[str],
    artefact_dir: Path | None = None,
    metadata: dict[str, Any] | None = None,
) -> SourceModel:
    path = Path(checkpoint)
    load_into(net, read_state_dict(path), str(path))
    return SourceModel(
        name=name,
        module=NormalizedModel(net, preprocessing),
        preprocessing=preprocessing,
        class_names=tuple(class_names),
        weights_sha256=file_sha256(path),
        artefact_dir=artefact_dir,
        metadata={"checkpoint": str(path), **(metadata or {})},
    )


@register_model(BUNDLED_MODEL)
def cifar10_airbench(weights_dir: str | Path | None = None) -> SourceModel:
    """The bundled CIFAR-10 model (trained by ``tta-bench train-source``), with its artefacts."""
    directory = Path(weights_dir) if weights_dir else WEIGHTS_DIR / BUNDLED_MODEL
    meta_path = directory / "metadata.json"
    if not meta_path.is_file():
        raise CheckpointError(f"{meta_path} not found; train the model with `tta-bench train-source --out {directory}`")
    metadata = json.loads(meta_path.read_text())
    if metadata.get("architecture") != "airbench":
        raise CheckpointError(f"{meta_path}: architecture {metadata.get('architecture')!r} is not 'airbench'")
    kwargs = metadata["architecture_kwargs"]
    net = AirbenchNet(num_classes=kwargs["num_classes"], widths=tuple(kwargs["widths"]), depth=kwargs.get("depth", 2))
    preprocessing = Preprocessing(
        input_size=tuple(metadata["input_size"]), mean=tuple(metadata["mean"]), std=tuple(metadata["std"])
    )
    return _from_checkpoint(
        BUNDLED_MODEL,
        net,
        directory / "model.safetensors",
        preprocessing,
        metadata["classes"],
        artefact_dir=directory / "artefacts",
        metadata=metadata,
    )


@register_model("wrn28-10-cifar10")
def wrn28_10_cifar10(
    checkpoint: str | Path, class_names: Sequence[str] = CIFAR10_CLASSES, artefact_dir: str | Path | None = None
) -> SourceModel:
    """WideResNet-28-10 as RobustBench's CIFAR-10 ``Standard`` (inputs in [0, 1], no normalisation)."""
    net = WideResNet(depth=28, widen_factor=10, num_classes=len(class_names))
    return _from_checkpoint(
        "wrn28-10-cifar10",
        net,
        checkpoint,
        Preprocessing(input_size=(32, 32)),
        class_names,
        Path(artefact_dir) if artefact_dir else None,
    )


@register_model("resnet50-imagenet")
def resnet50_imagenet(
    checkpoint: str | Path, class_names: Sequence[str] | None = None, artefact_dir: str | Path | None = None
) -> SourceModel:
    """ResNet-50 with torchvision's names; resize 256 + center crop 224, ImageNet mean/std."""
    names = tuple(class_names) if class_names else tuple(f"class_{i}" for i in range(1000))
    preprocessing = Preprocessing(
        input_size=(224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD, resize="resize_center_crop", resize_size=256
    )
    return _from_checkpoint(
        "resnet50-imagenet",
        resnet50(num_classes=len(names)),
        checkpoint,
        preprocessing,
        names,
        Path(artefact_dir) if artefact_dir else None,
    )


def _user_preprocessing(
    input_size: Sequence[int], mean: Sequence[float], std: Sequence[float], resize: str
) -> Preprocessing:
    return Preprocessing(input_size=tuple(input_size), mean=tuple(mean), std=tuple(std), resize=resize)


@register_model("torchscript")
def torchscript_model(
    path: str | Path,
    input_size: Sequence[int],
    class_names: Sequence[str],
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
    resize: str = "resize",
) -> SourceModel:
    """A TorchScript archive (``torch.jit.save``) taking normalised NCHW float input.

    Inference only (the ``source`` adapter): a traced or scripted graph fixes how its BatchNorm
    layers normalise, so adapters that need test-batch statistics refuse it; load the eager
    checkpoint through an architecture entry to adapt the model.
    """
    file = Path(path)
    if not file.is_file():
        raise CheckpointError(f"TorchScript file not found: {file}")
    try:
        net = torch.jit.load(str(file), map_location="cpu")
    except Exception as exc:
        raise CheckpointError(f"{file}: not a TorchScript archive ({exc})") from exc
    preprocessing = _user_preprocessing(input_size, mean, std, resize)
    return SourceModel(
        name=f"torchscript-{file.stem}",
        module=NormalizedModel(net, preprocessing),
        preprocessing=preprocessing,
        class_names=tuple(class_names),
        weights_sha256=file_sha256(file),
        metadata={"checkpoint": str(file)},
        # A compiled graph: its BatchNorm layers cannot be switched to test-batch statistics.
        trainable=False,
    )


class OnnxModule(nn.Module):
    """Inference-only module running an ONNX graph in ONNX Runtime (no autograd)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        from adapters.frozen import OnnxFrozenForward

        self.forward_fn = OnnxFrozenForward(path)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_fn(x)


@register_model("onnx")
def onnx_model(
    path: str | Path,
    input_size: Sequence[int],
    class_names: Sequence[str],
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
    resize: str = "resize",
) -> SourceModel:
    """An ONNX graph taking normalised NCHW float input.

    Runs in ONNX Runtime and supports the ``source`` adapter. If the optional ``onnx2torch``
    converter is importable the graph is converted to a torch module so every adapter can use
    it; otherwise adapting adapters refuse the model with a clear error.
    """
    file = Path(path)
    if not file.is_file():
        raise CheckpointError(f"ONNX file not found: {file}")
    preprocessing = _user_preprocessing(input_size, mean, std, resize)
    net: nn.Module
    trainable = False
    try:
        from onnx2torch import convert  # optional; needs torchvision

        net, trainable = convert(str(file)), True
    except ImportError:
        try:
            net = OnnxModule(file)
        except Exception as exc:
            raise CheckpointError(f"{file}: ONNX Runtime cannot load it ({exc})") from exc
    module = NormalizedModel(net, preprocessing)
    return SourceModel(
        name=f"onnx-{file.stem}",
        module=module,
        preprocessing=preprocessing,
        class_names=tuple(class_names),
        weights_sha256=file_sha256(file),
        metadata={"checkpoint": str(file)},
        trainable=trainable,
    )
