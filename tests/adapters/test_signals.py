"""Label-free signals: the per-step sums, their windows and trend, their place in the stream state,
and what the server shows (GET /v1/streams/{id}, /metrics)."""

from __future__ import annotations

import math

import httpx
import pytest
import torch

from adapters import SourceModel, create_adapter, get_frozen_forward
from adapters.blocks.signals import FIELDS, label_dependence, ratios, step_sums
from adapters.online import OnlineStream
from adapters.signal_windows import SignalWindows
from tests.conftest import image_batch
from tests.helpers import png
from tests.server_harness import running_server
from tta_server import Settings


def test_step_sums_measure_agreement_collapse_and_the_atc_estimate() -> None:
    logits = torch.tensor([[5.0, 0, 0], [5.0, 0, 0], [0, 5.0, 0], [0, 0, 0.1]])
    source = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 5.0, 0], [0, 0, 5.0]])
    got = ratios(step_sums(logits, source, atc_threshold=0.9))
    assert got["source_agreement"] == 0.75  # images 0, 2 and 3 agree
    assert got["majority_share"] == 0.5  # class 0 twice out of four
    assert got["atc_accuracy"] == 0.75 and got["atc_accuracy_source"] == 1.0  # confidences over 0.9
    collapsed = ratios(step_sums(torch.tensor([[9.0, 0, 0]] * 4)))
    assert collapsed["majority_share"] == 1.0 and collapsed["marginal_entropy"] < 0.01
    assert "source_agreement" not in collapsed  # no source prediction: the signal is absent, not 0
    uniform = ratios(step_sums(torch.eye(3) * 9))
    assert math.isclose(uniform["marginal_entropy"], 1.0, rel_tol=1e-3)


def test_windows_close_every_n_steps_and_give_a_trend() -> None:
    windows = SignalWindows(window_steps=2, history=3)
    for agreement in (1.0, 1.0, 0.8, 0.8, 0.6, 0.6, 0.4, 0.4):  # adaptation drifting away
        sums = torch.zeros(len(FIELDS), dtype=torch.float64)
        sums[FIELDS.index("steps")], sums[FIELDS.index("images")] = 1, 10
        sums[FIELDS.index("source_images")], sums[FIELDS.index("source_agree")] = 10, 10 * agreement
        windows.add(sums)
    report = windows.report()
    assert report["windows_closed"] == 3  # history keeps the last three of four
    assert [round(w["source_agreement"], 6) for w in report["windows"]] == [0.8, 0.6, 0.4]
    assert math.isclose(report["slope_per_window"]["source_agreement"], -0.2, rel_tol=1e-9)


def test_the_windows_travel_with_the_stream_state(tiny_source: SourceModel) -> None:
    frozen = get_frozen_forward(tiny_source, "torch")
    original = OnlineStream(create_adapter("tent", tiny_source), 4, frozen, window_steps=2)
    for seed in range(5):
        original.step(image_batch(6, seed))
    resumed = OnlineStream(create_adapter("tent", tiny_source), 4, frozen, window_steps=2)
    resumed.load_state_dict(original.state_dict())
    assert resumed.signals.report() == original.signals.report()
    assert original.signals.report()["windows_closed"] == 2
    original.reset()
    assert original.signals.report()["windows_closed"] == 0


def test_the_server_shows_signals_per_stream_and_across_streams() -> None:
    settings = Settings(default_adapter="tent", min_adapt_batch=2, signal_window_steps=2)
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=60) as client:
        files = [("files", (f"{i}.png", png(i), "image/png")) for i in range(4)]
        for _ in range(5):
            assert client.post("/v1/predict", files=files, headers={"X-Stream-Id": "cam"}).status_code == 200
        windows = client.get("/v1/streams/cam").json()["windows"]
        assert windows["windows_closed"] == 2 and windows["window_steps"] == 2
        last = windows["last_step"]
        assert 0 <= last["source_agreement"] <= 1 and 0 <= last["atc_accuracy"] <= 1
        assert 0 <= last["atc_accuracy_source"] <= 1 and "source_agreement" in windows["slope_per_window"]
        metrics = client.get("/metrics").text
        assert 'tta_batch_source_agreement_ratio_count{adapter="tent"} 5.0' in metrics
        assert 'tta_batch_atc_accuracy_source_ratio_count{adapter="tent"} 5.0' in metrics


def test_the_model_s_own_drift_parameter_distance_and_teacher_agreement(tiny_source: SourceModel) -> None:
    frozen = get_frozen_forward(tiny_source, "torch")
    tent = create_adapter("tent", tiny_source, {"optimizer": {"lr": 0.01}})
    assert tent.parameter_distance() == 0.0  # starts at the source
    stream = OnlineStream(tent, 1, frozen, window_steps=2)
    stream.step(image_batch(8, seed=1))
    first = stream.signals.report()["last_step"]["parameter_distance"]
    stream.step(image_batch(8, seed=2))
    second = stream.signals.report()["last_step"]["parameter_distance"]
    assert 0 < first < second  # every update moves the BatchNorm affine parameters further
    assert "teacher_agreement" not in stream.signals.report()["last_step"]  # tent has no teacher
    assert create_adapter("norm", tiny_source).parameter_distance() is None  # nothing trained
    cotta = OnlineStream(create_adapter("cotta", tiny_source), 1, frozen, window_steps=1)
    cotta.step(image_batch(8, seed=3))
    window = cotta.signals.report()["windows"][-1]
    assert 0 <= window["teacher_agreement"] <= 1 and window["parameter_distance"] >= 0


def test_prototype_distance_is_the_count_weighted_relative_distance_of_class_means() -> None:
    from adapters.blocks.prototypes import prototype_distance

    prototypes = torch.tensor([[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]])
    features = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])  # class 0 mean (2, 0); class 1 exact
    predicted = torch.tensor([0, 0, 1])
    expected = (2 * (1.0 / 1.0) + 1 * 0.0) / 3  # class 0: ||(2,0)-(1,0)|| / ||(1,0)||, twice; class 2 absent
    assert math.isclose(prototype_distance(features, predicted, prototypes), expected, rel_tol=1e-6)


def test_prototype_distance_grows_with_the_shift_on_real_images(
    bundled_source: SourceModel, shared_cifar10: object
) -> None:
    """The adapted features drift from the source prototypes more on corrupted than on clean images,
    measured from the step's own forward (the classifier hook), for every adapter that has a feature
    network."""
    import numpy as np

    from benchmarks.data.cifar10 import load_cifar10
    from benchmarks.data.corruptions.functions import gaussian_noise

    images = load_cifar10(shared_cifar10, "test").images[:128]  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    noisy = np.stack([gaussian_noise(image, 5, rng) for image in images])
    clean_x, noisy_x = (torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255 for a in (images, noisy))
    frozen = get_frozen_forward(bundled_source)
    for name in ("norm", "tent", "rmt"):
        distances = []
        for x in (clean_x, noisy_x):
            stream = OnlineStream(create_adapter(name, bundled_source), 1, frozen, True, 1)
            stream.step(x)
            distances.append(stream.signals.report()["last_step"]["prototype_distance"])
        assert 0 < distances[0] < distances[1], (name, distances)
    cotta = create_adapter("cotta", bundled_source)
    cotta.forward_and_adapt(clean_x[:16])
    assert cotta.captured_features() is not None and cotta.captured_features() is None  # taken once


def _window_of(batches: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The summed source probabilities and FIELDS sums of a window of source-logit batches."""
    sums = sum((step_sums(b, b) for b in batches), torch.zeros(len(FIELDS), dtype=torch.float64))
    return torch.stack([b.softmax(1).sum(0) for b in batches]).sum(0), sums


def test_label_dependence_is_near_zero_for_iid_batches_and_large_for_label_correlated_ones() -> None:
    generator = torch.Generator().manual_seed(0)
    classes = 10

    def confident(labels: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(labels, classes).float() * 6 + torch.randn(
            len(labels), classes, generator=generator
        )

    for batch in (8, 64):  # the bias correction keeps the i.i.d. floor near 0 whatever the batch size
        iid = [confident(torch.randint(0, classes, (batch,), generator=generator)) for _ in range(20)]
        assert abs(label_dependence(*_window_of(iid)) or 0) < 0.1
    one_class_each = [confident(torch.full((64,), step % classes)) for step in range(5)]
    assert (label_dependence(*_window_of(one_class_each)) or 0) > 1.0
    # a collapsed source (every batch predicted as one class) is not label correlation
    collapsed = [confident(torch.zeros(64, dtype=torch.long)) for _ in range(5)]
    assert abs(label_dependence(*_window_of(collapsed)) or 0) < 0.1
    assert label_dependence(*_window_of(iid[:1])) is None  # one step: nothing to compare


def test_a_closed_window_carries_its_label_dependence_and_the_marginal_travels_with_the_state(
    tiny_source: SourceModel,
) -> None:
    frozen = get_frozen_forward(tiny_source, "torch")
    original = OnlineStream(create_adapter("tent", tiny_source), 1, frozen, window_steps=3)
    for seed in range(4):  # one window closed, one step into the next
        original.step(image_batch(8, seed))
    report = original.signals.report()
    assert "label_dependence" in report["windows"][0] and "label_dependence" not in report["current_window"]
    resumed = OnlineStream(create_adapter("tent", tiny_source), 1, frozen, window_steps=3)
    resumed.load_state_dict(original.state_dict())
    for seed in (4, 5):
        original.step(image_batch(8, seed))
        resumed.step(image_batch(8, seed))
    assert resumed.signals.report() == original.signals.report()
    assert "label_dependence" in original.signals.report()["last_step"]  # the closing step reports it


def test_label_dependence_counts_only_the_steps_with_a_source_prediction() -> None:
    one_class_each = [torch.nn.functional.one_hot(torch.full((64,), step), 10).float() * 6 for step in range(4)]
    marginal, sums = _window_of(one_class_each)
    alone = label_dependence(marginal, sums)
    # the same window with four more steps whose source prediction was not computed
    for batch in one_class_each:
        sums = sums + step_sums(batch)
    assert alone is not None and alone > 1.0
    assert label_dependence(marginal, sums) == pytest.approx(alone)
