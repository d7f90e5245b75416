"""Source artefacts: declared by adapters, built by prepare, refused when missing or stale."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from adapters import (
    ArtefactStore,
    MissingArtefactError,
    SourceData,
    SourceModel,
    create_adapter,
    list_adapters,
    list_artefacts,
    prepare_artefacts,
)
from adapters.artefacts import ARTEFACTS
from adapters.methods.source import SourceAdapter
from tests.conftest import image_batch, make_tiny_source


@pytest.fixture
def holdout() -> SourceData:
    labels = torch.arange(40) % 10
    return SourceData(image_batch(40, seed=9), labels, "synthetic hold-out", "0" * 64)


class NeedsAtc(SourceAdapter):
    """An adapter declaring an artefact; not registered, so the conformance suite skips it."""

    name = "test-needs-atc"
    required_artefacts: ClassVar[tuple[str, ...]] = ("atc_threshold",)


@pytest.fixture
def needs_atc() -> type[SourceAdapter]:
    return NeedsAtc


def with_dir(source: SourceModel, directory: Path) -> SourceModel:
    return dataclasses.replace(source, artefact_dir=directory, cache={})


def test_adapter_missing_an_artefact_says_how_to_build_it(tmp_path: Path, needs_atc: type[SourceAdapter]) -> None:
    source = with_dir(make_tiny_source(), tmp_path)
    with pytest.raises(MissingArtefactError, match=r"atc_threshold.*tta-bench prepare --model tiny"):
        needs_atc(source)


def test_prepare_builds_stores_and_adapters_load(
    tmp_path: Path, holdout: SourceData, needs_atc: type[SourceAdapter]
) -> None:
    source = with_dir(make_tiny_source(), tmp_path)
    holdout_built = [name for name in list_artefacts() if ARTEFACTS.get(name).split == "holdout"]
    built = prepare_artefacts(source, {"holdout": holdout}, holdout_built)
    assert set(built) == {"atc_threshold", "source_statistics", "dropout_rate"}
    assert prepare_artefacts(source, {"holdout": holdout}, holdout_built) == []  # present: nothing rebuilt
    with pytest.raises(MissingArtefactError, match="'train' split"):
        prepare_artefacts(source, {"holdout": holdout}, ["rmt_prototypes"])
    manifest = ArtefactStore(source).manifest()
    assert manifest["atc_threshold"]["model_id"] == source.model_id
    assert manifest["atc_threshold"]["built_from"] == "synthetic hold-out"
    adapter = needs_atc(source)
    threshold = adapter.artefacts["atc_threshold"]["threshold"]
    stats = ArtefactStore(source).load("source_statistics")
    assert 0.1 <= float(threshold) <= 1.0
    assert stats["prediction_marginal"].shape == (10,) and abs(float(stats["prediction_marginal"].sum()) - 1) < 1e-5
    assert stats["feature_mean"].shape == (16,)


def test_artefacts_of_other_weights_are_not_used(
    tmp_path: Path, holdout: SourceData, needs_atc: type[SourceAdapter]
) -> None:
    prepare_artefacts(with_dir(make_tiny_source(seed=0), tmp_path), {"holdout": holdout}, ["atc_threshold"])
    retrained = with_dir(make_tiny_source(seed=1), tmp_path)
    assert ArtefactStore(retrained).missing(["atc_threshold"]) == ["atc_threshold"]
    with pytest.raises(MissingArtefactError):
        needs_atc(retrained)


def test_corrupt_artefact_is_detected(tmp_path: Path, holdout: SourceData) -> None:
    source = with_dir(make_tiny_source(), tmp_path)
    prepare_artefacts(source, {"holdout": holdout}, ["atc_threshold"])
    from safetensors.torch import save_file

    save_file(
        {"threshold": torch.tensor(0.5), "holdout_error": torch.tensor(0.1)},
        str(tmp_path / "atc_threshold.safetensors"),
    )
    with pytest.raises(MissingArtefactError, match="corrupt"):
        ArtefactStore(source).load("atc_threshold")


# Shipped: everything the default configurations of all adapters need. Built on demand by
# `tta-bench prepare`: the RMT warm-up checkpoints (source-available variant, ~50 MB each) and the
# labelled replay bank (source images, which the project does not redistribute).
SHIPPED = ("atc_threshold", "source_statistics", "rmt_prototypes", "petal_swag", "ecotta_warmup", "vida_warmup")


def test_bundled_model_ships_its_artefacts(bundled_source: SourceModel) -> None:
    store = ArtefactStore(bundled_source)
    assert store.missing(SHIPPED) == []
    for name in SHIPPED:
        split = ARTEFACTS.get(name).split
        assert ("hold-out" if split == "holdout" else "trained on") in store.manifest()[name]["built_from"]
    for name in list_adapters():
        assert create_adapter(name, bundled_source) is not None  # default configurations load
