"""``tta-bench prepare``: build a model's missing source artefacts from its training data."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from adapters import SourceData, SourceModel, list_artefacts, prepare_artefacts
from benchmarks.data.cifar10 import ImageArrays, load_cifar10, stratified_holdout

DEFAULT_HOLDOUT = {"per_class": 200, "seed": 0}


def to_source_data(arrays: ImageArrays, description: str) -> SourceData:
    images = torch.from_numpy(arrays.images).permute(0, 3, 1, 2).float().div_(255)
    digest = hashlib.sha256(arrays.images.tobytes())
    digest.update(arrays.labels.astype(np.int64).tobytes())
    return SourceData(images, torch.from_numpy(arrays.labels).long(), description, digest.hexdigest())


def holdout_split(source: SourceModel, train: ImageArrays) -> tuple[ImageArrays, ImageArrays, str]:
    """(the images the model trained on, the hold-out its training script set aside, a note); for
    other models the default hold-out, and all training images as the first part."""
    spec = source.metadata.get("holdout", DEFAULT_HOLDOUT)
    rest, holdout = stratified_holdout(train.labels, spec["per_class"], spec["seed"])
    note = "" if "holdout" in source.metadata else " (the model may have trained on it)"
    trained_on = train.subset(rest) if "holdout" in source.metadata else train
    return trained_on, train.subset(holdout), f"train hold-out, {spec['per_class']}/class, seed {spec['seed']}{note}"


def prepare(
    source: SourceModel, data: Path, names: list[str] | None = None, force: bool = False, device: str = "cpu"
) -> list[str]:
    source.module.to(device)  # builders that train (SWAG, warm-up) or embed run where the model is
    train = load_cifar10(data, "train")
    trained_on, holdout, description = holdout_split(source, train)
    splits = {
        "holdout": to_source_data(holdout, f"CIFAR-10 {description}"),
        "train": to_source_data(trained_on, f"CIFAR-10 train, the {len(trained_on)} images the model trained on"),
    }
    return prepare_artefacts(source, splits, names or list_artefacts(), force=force)
