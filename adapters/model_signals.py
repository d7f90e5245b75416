"""What one step says about the model itself, beside the prediction signals of
:mod:`adapters.blocks.signals`: how far it moved (parameter distance, teacher agreement, after an
update), how far its class-conditional features are from the source prototypes, and optionally
the dropout-disagreement accuracy estimate. Each needs an adapter part or a source artefact; a
missing one leaves its signal out rather than reporting 0."""

from __future__ import annotations

from torch import Tensor

from adapters.artefacts import ArtefactStore
from adapters.base import Adapter
from adapters.blocks.dropout_estimate import DEFAULT_RATE, dropout_accuracy, logit_scale_of
from adapters.blocks.prototypes import prototype_distance
from adapters.source_model import SourceModel


def model_signals(adapter: Adapter, updated: bool, dropout_estimate: bool = False) -> dict[str, float]:
    """The model-side signals of the step just taken (``updated``: it changed the model)."""
    out: dict[str, float] = {}
    if updated:
        distance = adapter.parameter_distance()
        if distance is not None:
            out["parameter_distance"] = distance
        if "teacher_agreement" in (diagnostics := adapter.diagnostics()):
            out["teacher_agreement"] = diagnostics["teacher_agreement"]
    captured = adapter.captured_features()  # taken once: a stale capture is never reused
    if captured is None:
        return out
    features, logits = captured
    prototypes = prototypes_of(adapter.source)
    if prototypes is not None and features.shape[1] == prototypes.shape[1]:
        out["prototype_distance"] = prototype_distance(features, logits.argmax(1), prototypes)
    if dropout_estimate and adapter.feature_capture is not None:
        scale = logit_scale_of(adapter.source.module)
        classifier = adapter.feature_capture.classifier
        rate = dropout_rate_of(adapter.source)
        out["dropout_accuracy"] = dropout_accuracy(
            features, logits, classifier, adapter.steps, rate=rate, logit_scale=scale
        )
    return out


def prototypes_of(source: SourceModel) -> Tensor | None:
    """The source's class prototypes (its ``rmt_prototypes`` artefact), read once per model."""
    if "prototypes" not in source.cache:
        store = ArtefactStore(source)
        has = store.has("rmt_prototypes")
        source.cache["prototypes"] = store.load("rmt_prototypes")["prototypes"].float() if has else None
    value: Tensor | None = source.cache["prototypes"]
    return value


def atc_threshold_of(source: SourceModel) -> float | None:
    """The source's ATC confidence threshold (its ``atc_threshold`` artefact), read once per model."""
    if "atc_threshold" not in source.cache:
        store = ArtefactStore(source)
        source.cache["atc_threshold"] = (
            float(store.load("atc_threshold")["threshold"]) if store.has("atc_threshold") else None
        )
    value: float | None = source.cache["atc_threshold"]
    return value


def dropout_rate_of(source: SourceModel) -> float:
    """The source's calibrated dropout rate (its ``dropout_rate`` artefact; else AETTA's 0.4)."""
    if "dropout_rate" not in source.cache:
        store = ArtefactStore(source)
        has = store.has("dropout_rate")
        source.cache["dropout_rate"] = float(store.load("dropout_rate")["rate"]) if has else DEFAULT_RATE
    value: float = source.cache["dropout_rate"]
    return value
