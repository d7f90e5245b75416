"""The bundled CIFAR-10 model: its weights, metadata and clean accuracy on the shared test set."""

from __future__ import annotations

from pathlib import Path

import torch

from adapters import SourceModel, get_frozen_forward
from adapters.models.loading import file_sha256
from adapters.models.zoo import WEIGHTS_DIR
from benchmarks.data.cifar10 import load_cifar10

ACCURACY_FLOOR = 0.90  # the documented floor for this CPU budget; see the model's README section


def test_weights_match_their_metadata(bundled_source: SourceModel) -> None:
    weights = WEIGHTS_DIR / "cifar10-airbench" / "model.safetensors"
    meta = bundled_source.metadata
    assert file_sha256(weights) == meta["weights_sha256"] == bundled_source.weights_sha256
    assert weights.stat().st_size < 16 * 1024 * 1024
    assert meta["training_command"] and meta["duration_s"] > 0 and meta["data"]["sha256"]
    assert {type(m).__name__ for m in bundled_source.module.modules()} >= {"BatchNorm2d", "ConvGroup", "ConvBlock"}


@torch.inference_mode()
def test_clean_accuracy_on_the_shared_test_set_matches_the_metadata(
    bundled_source: SourceModel, shared_cifar10: Path
) -> None:
    test = load_cifar10(shared_cifar10, "test")
    images = torch.from_numpy(test.images).permute(0, 3, 1, 2).float().div(255)
    labels = torch.from_numpy(test.labels)
    forward = get_frozen_forward(bundled_source, precision="fp32")  # the serving path's source forward
    correct = sum(
        int((forward(images[i : i + 1000]).argmax(1) == labels[i : i + 1000]).sum())
        for i in range(0, len(labels), 1000)
    )
    accuracy = correct / len(labels)
    assert accuracy >= ACCURACY_FLOOR
    assert abs(accuracy - bundled_source.metadata["clean_test_accuracy"]) <= 0.002  # +-20 images: float summation order


@torch.inference_mode()
def test_logits_are_calibrated_on_held_out_data(bundled_source: SourceModel, shared_cifar10: Path) -> None:
    """Label smoothing caps confidence; the folded temperature restores it (CoTTA's gate relies on
    it): on the held-out training images the model's mean confidence matches its accuracy."""
    from benchmarks.source_model.prepare import holdout_split

    _, holdout, _ = holdout_split(bundled_source, load_cifar10(shared_cifar10, "train"))
    images = torch.from_numpy(holdout.images).permute(0, 3, 1, 2).float().div(255)
    probs = torch.cat(
        [
            get_frozen_forward(bundled_source, precision="fp32")(images[i : i + 500]).softmax(1)
            for i in range(0, len(images), 500)
        ]
    )
    accuracy = float((probs.argmax(1) == torch.from_numpy(holdout.labels)).float().mean())
    confidence = float(probs.amax(1).mean())
    assert abs(confidence - accuracy) < 0.03, (confidence, accuracy)
    meta = bundled_source.metadata  # and the metadata records what the model does
    assert (
        abs(meta["holdout_mean_confidence"] - confidence) < 0.005 and abs(meta["holdout_accuracy"] - accuracy) < 0.005
    )
