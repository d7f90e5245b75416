"""Source artefacts: things computed once, offline, from source data, and stored beside the weights.

Adapters declare the artefacts they need (``Adapter.required_artefacts``); ``tta-bench prepare``
builds missing ones from a source data directory and stores each as
``<artefact_dir>/<name>.safetensors`` with an entry in ``manifest.json`` (content hash, the model
id it was built for, the data it was built from). A stale artefact (built for other weights) is
treated as missing, never silently used.

Calibration artefacts are built on a held-out split of the training data (for the bundled model:
the 200 images per class the training script held out, seed 0; see its metadata).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from adapters.atomic import atomic_path, atomic_write_text
from adapters.errors import MissingArtefactError
from adapters.registry import Registry
from adapters.source_model import NormalizedModel, SourceModel, state_sha256


@dataclass(frozen=True)
class SourceData:
    """Source images for building artefacts: float [0, 1] NCHW plus integer labels."""

    images: Tensor
    labels: Tensor
    description: str  # e.g. "CIFAR-10 train hold-out, 200/class, seed 0"
    data_sha256: str

    def batches(self, size: int = 500) -> Iterable[tuple[Tensor, Tensor]]:
        for start in range(0, self.images.shape[0], size):
            yield self.images[start : start + size], self.labels[start : start + size]


ArtefactBuilder = Callable[[SourceModel, SourceData], dict[str, Tensor]]


@dataclass(frozen=True)
class ArtefactSpec:
    name: str
    description: str
    split: Literal["holdout", "train"]
    build: ArtefactBuilder


ARTEFACTS: Registry[ArtefactSpec] = Registry("artefact")


def register_artefact(
    name: str, description: str, split: Literal["holdout", "train"] = "holdout"
) -> Callable[[ArtefactBuilder], ArtefactBuilder]:
    def decorator(build: ArtefactBuilder) -> ArtefactBuilder:
        ARTEFACTS.register(name)(ArtefactSpec(name, description, split, build))
        return build

    return decorator


def list_artefacts() -> list[str]:
    return ARTEFACTS.names()


class ArtefactStore:
    """The artefacts of one source model, on disk."""

    def __init__(self, source: SourceModel) -> None:
        self.source = source
        self.directory = source.artefact_dir

    @property
    def manifest_path(self) -> Path | None:
        return None if self.directory is None else self.directory / "manifest.json"

    def manifest(self) -> dict[str, Any]:
        path = self.manifest_path
        if path is None or not path.is_file():
            return {}
        return json.loads(path.read_text())  # type: ignore[no-any-return]

    def has(self, name: str) -> bool:
        entry = self.manifest().get(name)
        return (
            entry is not None
            and self.directory is not None
            and entry.get("model_id") == self.source.model_id
            and (self.directory / f"{name}.safetensors").is_file()
        )

    def missing(self, names: Iterable[str]) -> list[str]:
        return [name for name in names if not self.has(name)]

    def require(self, names: Iterable[str], user: str) -> None:
        missing = self.missing(names)
        if missing:
            where = f" into {self.directory}" if self.directory else " (set an artefact directory for this model)"
            raise MissingArtefactError(
                f"{user} needs source artefact(s) {', '.join(missing)} for model {self.source.model_id}, "
                f"which are not built{where}. Build them with: "
                f"tta-bench prepare --model {self.source.name} --data <source data dir> --artefacts {','.join(missing)}"
            )

    def load(self, name: str) -> dict[str, Tensor]:
        from safetensors.torch import load_file

        self.require([name], f"loading artefact {name!r}")
        assert self.directory is not None
        tensors = load_file(str(self.directory / f"{name}.safetensors"))
        expected = self.manifest()[name]["sha256"]
        if state_sha256(tensors) != expected:
            raise MissingArtefactError(f"artefact {name!r} in {self.directory} is corrupt (hash mismatch); rebuild it")
        return tensors

    def save(self, name: str, tensors: dict[str, Tensor], info: dict[str, Any]) -> None:
        from safetensors.torch import save_file

        if self.directory is None:
            raise MissingArtefactError(f"model {self.source.model_id} has no artefact directory")
        self.directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        path = self.directory / f"{name}.safetensors"
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp))
        manifest = self.manifest()
        manifest[name] = {"sha256": state_sha256(tensors), "model_id": self.source.model_id, **info}
        assert self.manifest_path is not None
        atomic_write_text(self.manifest_path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def prepare_artefacts(
    source: SourceModel,
    data: dict[str, SourceData],
    names: Iterable[str] | None = None,
    force: bool = False,
) -> list[str]:
    """Build the named artefacts (default: all registered) that are missing; returns those built.

    ``data`` maps a split name ("holdout", "train") to its images.
    """
    store = ArtefactStore(source)
    built = []
    for name in list(names) if names is not None else list_artefacts():
        spec = ARTEFACTS.get(name)
        if not force and store.has(name):
            continue
        if spec.split not in data:
            raise MissingArtefactError(f"artefact {name!r} needs the {spec.split!r} split of the source data")
        split = data[spec.split]
        start = time.perf_counter()
        tensors = spec.build(source, split)
        store.save(
            name,
            tensors,
            {
                "description": spec.description,
                "built_from": split.description,
                "data_sha256": split.data_sha256,
                "build_seconds": round(time.perf_counter() - start, 3),
                "built_with": _build_environment(source),
            },
        )
        built.append(name)
    return built


def _build_environment(source: SourceModel) -> str:
    device = next(source.module.parameters()).device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    return f"torch {torch.__version__} on {name}"


@torch.inference_mode()
def _source_outputs(source: SourceModel, data: SourceData) -> tuple[Tensor, Tensor | None]:
    module = source.module.eval()
    split = module if isinstance(module, NormalizedModel) and module.has_features else None
    device = next(module.parameters()).device
    logits, features = [], []
    for batch, _ in data.batches():
        images = batch.to(device)
        if split is not None:
            feats = split.features(images)
            features.append(feats)
            logits.append(split.classifier(feats))
        else:
            logits.append(module(images))
    return torch.cat(logits).cpu(), (torch.cat(features).cpu() if features else None)


@register_artefact(
    "source_statistics",
    "source prediction marginal, confidence, accuracy and penultimate feature mean/variance "
    "on held-out source data (reference for drift signals)",
)
def build_source_statistics(source: SourceModel, data: SourceData) -> dict[str, Tensor]:
    logits, features = _source_outputs(source, data)
    probs = logits.softmax(1)
    out = {
        "prediction_marginal": probs.mean(0),
        "mean_confidence": probs.amax(1).mean(),
        "accuracy": (logits.argmax(1) == data.labels).float().mean(),
        "num_images": torch.tensor(data.labels.shape[0]),
    }
    if features is not None:
        out["feature_mean"] = features.mean(0)
        out["feature_var"] = features.var(0, unbiased=False)
    return out


@register_artefact(
    "atc_threshold",
    "ATC confidence threshold (Garg et al., 2022): the fraction of held-out images whose max "
    "softmax falls below it equals the held-out error",
)
def build_atc_threshold(source: SourceModel, data: SourceData) -> dict[str, Tensor]:
    logits, _ = _source_outputs(source, data)
    confidence = logits.softmax(1).amax(1)
    error = (logits.argmax(1) != data.labels).float().mean()
    threshold = torch.quantile(confidence.double(), error.double()).float()
    return {"threshold": threshold, "holdout_error": error}


@register_artefact(
    "dropout_rate",
    "dropout rate of the dropout-disagreement accuracy estimate: the rate at which its estimated "
    "error on shuffled batches of held-out images equals their error",
)
def build_dropout_rate(source: SourceModel, data: SourceData) -> dict[str, Tensor]:
    from adapters.blocks.dropout_estimate import calibrate_rate, logit_scale_of

    logits, features = _source_outputs(source, data)
    module = source.module
    if features is None or not isinstance(module, NormalizedModel):
        raise MissingArtefactError(f"model {source.model_id} exposes no penultimate features to calibrate dropout on")
    rate, estimated, error = calibrate_rate(features, logits, data.labels, module.classifier, logit_scale_of(module))
    return {
        "rate": torch.tensor(rate, dtype=torch.float64),
        "estimated_error": torch.tensor(estimated),
        "holdout_error": torch.tensor(error),
    }
