"""The collapse guard (adapters.guard) inside OnlineStream: triggers, policies, records, state."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from pydantic import ValidationError

from adapters import AdapterError, SourceModel, create_adapter, get_frozen_forward
from adapters.blocks.bn_shift import batchnorm_probe
from adapters.blocks.signals import step_sums
from adapters.frozen import TorchFrozenForward
from adapters.guard import Guard
from adapters.guard_config import GuardConfig
from adapters.online import DivergenceError, OnlineStream
from adapters.signal_windows import SignalWindows
from adapters.state_io import decode_state, encode_state
from tests.conftest import image_batch

ALWAYS = {"signal": "source_agreement", "below": 1.01}  # agreement is at most 1: fires on every window


def guarded(source: SourceModel, guard: dict[str, object], window_steps: int = 1) -> OnlineStream:
    frozen = get_frozen_forward(source, "torch")
    return OnlineStream(create_adapter("tent", source), 1, frozen, True, window_steps, guard)


def flat_images(n: int) -> torch.Tensor:
    """Constant grey images: BatchNorm sees (almost) no variance, far from the source statistics."""
    return torch.full((n, 3, 32, 32), 0.5)


def shift_limit(source: SourceModel) -> float:
    """A BatchNorm-shift limit between smooth random images and flat grey ones."""
    probe = batchnorm_probe(source)
    assert probe is not None and probe.layers
    smooth = max(float(probe(image_batch(8, seed=seed))[1].mean()) for seed in range(1, 6))
    flat = float(probe(flat_images(8))[1].mean())
    assert flat > smooth + 0.3 and smooth > 0
    return (smooth + flat) / 2


def test_a_threshold_fires_when_its_window_closes_and_resets(tiny_source: SourceModel) -> None:
    stream = guarded(tiny_source, {"thresholds": [ALWAYS]}, window_steps=2)
    stream.step(image_batch(8, seed=1))
    assert stream.steps == 1 and stream.last_decision is None  # the window is still open
    stream.step(image_batch(8, seed=2))
    assert stream.steps == 0 and stream.last_decision is not None
    report = stream.guard.report()
    assert report["actions"]["threshold"] == 1
    (record,) = report["decisions"]
    assert record["reason"] == "threshold" and record["action"] == "reset" and record["signal"] == "source_agreement"
    assert record["step"] == 2 and record["images"] == 16 and 0 <= record["value"] <= 1 and record["limit"] == 1.01


def test_a_trend_fires_when_a_signal_falls_between_consecutive_windows() -> None:
    logits = torch.eye(10) * 5
    agreeing = step_sums(logits, logits)  # source agreement 1.0
    half = step_sums(logits, torch.cat([logits[:5], logits[5:].roll(1, 0)]))  # 0.5
    guard = Guard({"max_drop": {"source_agreement": 0.3}})
    assert guard.on_window(agreeing[None]) is None  # one window has no trend
    assert guard.on_window(torch.stack([agreeing, agreeing])) is None  # no fall
    fired = guard.on_window(torch.stack([agreeing, agreeing, half]))
    assert fired is not None and fired.reason == "trend" and fired.signal == "source_agreement"
    assert math.isclose(fired.value or 0, 0.5) and fired.limit == 0.3
    gentle = Guard({"max_drop": {"source_agreement": 0.6}})
    gentle.on_window(agreeing[None])
    assert gentle.on_window(torch.stack([agreeing, half])) is None  # a fall of 0.5 <= 0.6


def test_a_trend_never_spans_an_action() -> None:
    """After an action the next window alone cannot show a fall: it needs two windows after it."""
    logits = torch.eye(10) * 5
    agreeing, half = step_sums(logits, logits), step_sums(logits, torch.cat([logits[:5], logits[5:].roll(1, 0)]))
    guard = Guard({"max_drop": {"source_agreement": 0.3}})
    guard.on_window(agreeing[None])
    fired = guard.on_window(torch.stack([agreeing, half]))
    assert fired is not None
    guard.record(fired, step=2)
    assert guard.on_window(torch.stack([agreeing, half, agreeing])) is None
    assert guard.on_window(torch.stack([agreeing, half, agreeing, half])) is not None


def test_rollback_returns_to_the_last_good_state(tiny_source: SourceModel) -> None:
    limit = shift_limit(tiny_source)
    guard = {"policy": "rollback", "thresholds": [{"signal": "bn_shift", "above": limit}]}
    stream = guarded(tiny_source, guard)
    stream.step(image_batch(8, seed=1))
    stream.step(image_batch(8, seed=2))
    good = stream.adapter.state_dict()
    assert stream.guard.good is not None and stream.state_bytes() > create_adapter("tent", tiny_source).state_bytes()
    stream.step(flat_images(8))  # adapts on it, then the window's BatchNorm shift fires
    assert stream.last_decision is not None and stream.last_decision.action == "rollback"
    after = stream.adapter.state_dict()
    assert after["steps"] == good["steps"] == 2 and torch.equal(after["generator"], good["generator"])
    for key, value in good["tensors"].items():
        assert torch.equal(after["tensors"][key], value), key
    assert stream.guard.report()["decisions"][0]["signal"] == "bn_shift"


def test_rollback_without_a_good_state_resets(tiny_source: SourceModel) -> None:
    stream = guarded(tiny_source, {"policy": "rollback", "thresholds": [ALWAYS]})
    stream.step(image_batch(8, seed=1))
    assert stream.steps == 0 and stream.guard.good is None and stream.guard.counts.sum() == 1


def test_pause_predicts_without_adapting_for_pause_steps(tiny_source: SourceModel) -> None:
    limit = shift_limit(tiny_source)
    guard = {"policy": "pause", "pause_steps": 2, "thresholds": [{"signal": "bn_shift", "above": limit}]}
    stream = guarded(tiny_source, guard)
    stream.step(image_batch(8, seed=1))
    stream.step(flat_images(8))
    assert stream.steps == 2 and stream.guard.paused
    paused_state = stream.adapter.state_dict()["tensors"]
    expected = stream.adapter.predict(image_batch(8, seed=3))
    assert torch.equal(stream.step(image_batch(8, seed=3)), expected)  # a prediction, no update
    stream.step(image_batch(8, seed=4))
    assert stream.steps == 2 and not stream.guard.paused
    for key, value in paused_state.items():
        assert torch.equal(stream.adapter.state_dict()["tensors"][key], value), key
    stream.step(image_batch(8, seed=5))
    assert stream.steps == 3


def test_fallback_answers_with_the_source_until_the_shadow_signals_recover(tiny_source: SourceModel) -> None:
    limit = shift_limit(tiny_source)
    guard = {"policy": "fallback", "thresholds": [{"signal": "bn_shift", "above": limit}]}
    stream = guarded(tiny_source, guard)
    frozen = get_frozen_forward(tiny_source, "torch")
    stream.step(image_batch(8, seed=1))
    stream.step(flat_images(8))  # adapted on, then the window fires: fall back
    assert stream.guard.falling_back and stream.steps == 2
    flat = flat_images(8)
    torch.testing.assert_close(stream.step(flat), frozen(flat))  # the source answers, no update
    assert stream.steps == 2 and stream.guard.falling_back  # the shadow window still fires
    smooth = image_batch(8, seed=3)
    torch.testing.assert_close(stream.step(smooth), frozen(smooth))  # this window recovers ...
    assert not stream.guard.falling_back and stream.last_decision is not None
    assert stream.last_decision.reason == "recovered" and stream.last_decision.action == "resume"
    stream.step(image_batch(8, seed=4))  # ... and adaptation resumes
    assert stream.steps == 3
    assert [d["action"] for d in stream.guard.report()["decisions"]] == ["fallback", "resume"]


def test_periodic_reset_after_every_n_adaptation_steps(tiny_source: SourceModel) -> None:
    stream = guarded(tiny_source, {"reset_every_steps": 3}, window_steps=100)
    steps = []
    for seed in range(7):
        stream.step(image_batch(8, seed=seed))
        steps.append(stream.steps)
    assert steps == [1, 2, 0, 1, 2, 0, 1]
    assert stream.guard.report()["actions"] == {
        "threshold": 0,
        "trend": 0,
        "non_finite": 0,
        "periodic": 2,
        "recovered": 0,
    }


def test_a_non_finite_step_is_undone_then_the_policy_acts(tiny_source: SourceModel) -> None:
    stream = guarded(tiny_source, {"non_finite": True}, window_steps=100)
    stream.step(image_batch(8, seed=1))
    update = stream.adapter._forward_and_adapt

    def diverging(x: torch.Tensor) -> torch.Tensor:
        logits = update(x)
        with torch.no_grad():
            next(iter(stream.adapter._state_tensors().values())).fill_(float("nan"))
        return logits

    stream.adapter._forward_and_adapt = diverging  # type: ignore[method-assign]
    with pytest.raises(DivergenceError, match="undone and the guard reset the stream"):
        stream.step(image_batch(8, seed=2))
    assert stream.steps == 0 and stream.adapter.state_is_finite()
    assert stream.guard.report()["actions"]["non_finite"] == 1


def test_the_guard_travels_with_the_state_and_a_different_guard_is_refused(tiny_source: SourceModel) -> None:
    limit = shift_limit(tiny_source)
    guard = {"policy": "rollback", "thresholds": [{"signal": "bn_shift", "above": limit}]}
    original = guarded(tiny_source, guard)
    for batch in (image_batch(8, seed=1), image_batch(8, seed=2), flat_images(8)):
        original.step(batch)
    tensors, metadata = encode_state(original.state_dict())
    resumed = guarded(tiny_source, guard)
    resumed.load_state_dict(decode_state(tensors, metadata))
    assert resumed.guard.report() == original.guard.report()
    assert resumed.state_bytes() == original.state_bytes()
    for seed in (3, 4):
        assert torch.equal(resumed.step(image_batch(8, seed=seed)), original.step(image_batch(8, seed=seed)))
    other = guarded(tiny_source, {"policy": "reset"})
    with pytest.raises(AdapterError, match="another guard config"):
        other.load_state_dict(original.state_dict())
    assert other.guard.counts.sum() == 0


def test_guard_configs_are_validated() -> None:
    with pytest.raises(ValidationError, match="unknown signal"):
        GuardConfig.model_validate({"thresholds": [{"signal": "accuracy", "below": 0.5}]})
    with pytest.raises(ValidationError, match="needs 'below' or 'above'"):
        GuardConfig.model_validate({"thresholds": [{"signal": "majority_share"}]})
    with pytest.raises(ValidationError, match="must be > 0"):
        GuardConfig.model_validate({"max_drop": {"atc_accuracy": -0.1}})
    with pytest.raises(ValidationError):
        GuardConfig.model_validate({"policy": "explode"})
    for limit in (float("nan"), float("inf")):  # a NaN limit never fires: a guard that silently does nothing
        with pytest.raises(ValidationError, match="finite number"):
            GuardConfig.model_validate({"thresholds": [{"signal": "majority_share", "above": limit}]})
        with pytest.raises(ValidationError, match="finite number"):
            GuardConfig.model_validate({"max_drop": {"atc_accuracy": limit}})


def test_fallback_resumes_only_after_resume_after_windows_quiet_windows(tiny_source: SourceModel) -> None:
    limit = shift_limit(tiny_source)
    guard = {"policy": "fallback", "resume_after_windows": 2, "thresholds": [{"signal": "bn_shift", "above": limit}]}
    stream = guarded(tiny_source, guard)
    stream.step(flat_images(8))
    assert stream.guard.falling_back
    stream.step(image_batch(8, seed=1))  # one quiet window is not enough
    assert stream.guard.falling_back and stream.last_decision is None
    stream.step(flat_images(8))  # a firing window starts the count again
    stream.step(image_batch(8, seed=2))
    assert stream.guard.falling_back
    tensors, metadata = encode_state(stream.state_dict())  # the count travels with the state
    resumed = guarded(tiny_source, guard)
    resumed.load_state_dict(decode_state(tensors, metadata))
    resumed.step(image_batch(8, seed=3))  # the second quiet window in a row
    assert not resumed.guard.falling_back and resumed.last_decision is not None
    assert resumed.last_decision.action == "resume"


def test_a_guard_state_from_before_the_quiet_window_count_still_loads(tiny_source: SourceModel) -> None:
    stream = guarded(tiny_source, {"policy": "fallback", "thresholds": [ALWAYS]})
    stream.step(image_batch(8, seed=1))
    state = stream.state_dict()
    state["tensors"]["guard.meta"] = state["tensors"]["guard.meta"][:4]  # the older four-value layout
    resumed = guarded(tiny_source, {"policy": "fallback", "thresholds": [ALWAYS]})
    resumed.load_state_dict(state)
    assert resumed.guard.falling_back and resumed.guard.quiet_windows == 0


def test_each_threshold_may_have_its_own_policy(tiny_source: SourceModel) -> None:
    limit = shift_limit(tiny_source)
    guard = {
        "policy": "reset",
        "thresholds": [
            {"signal": "bn_shift", "above": limit, "policy": "fallback"},  # the traffic: answer with the source
            ALWAYS,  # every window: the guard's own policy, reset
        ],
    }
    stream = guarded(tiny_source, guard)
    stream.step(flat_images(8))  # both fire; the first listed decides: fall back
    assert stream.guard.falling_back and stream.last_decision is not None
    assert stream.last_decision.action == "fallback"
    assert stream.adapter.parameter_distance() not in (None, 0.0)
    stream.step(image_batch(8, seed=1))  # falling back, the reset trigger still resets the shadow model
    assert stream.last_decision is not None and stream.last_decision.action == "reset"
    assert stream.guard.falling_back and stream.adapter.parameter_distance() in (None, 0.0)
    with pytest.raises(ValueError, match="fallback policy needs the frozen forward"):
        OnlineStream(create_adapter("tent", tiny_source), 1, None, False, 1, guard)


def test_a_fallback_answers_the_batch_that_triggered_it_with_the_source(tiny_source: SourceModel) -> None:
    limit = shift_limit(tiny_source)
    stream = guarded(tiny_source, {"policy": "fallback", "thresholds": [{"signal": "bn_shift", "above": limit}]})
    frozen = get_frozen_forward(tiny_source, "torch")
    first = image_batch(8, seed=1)
    assert not torch.allclose(stream.step(first), frozen(first))  # adapted (test-batch statistics)
    flat = flat_images(8)
    answer = stream.step(flat)  # this batch's window fires
    assert stream.last_decision is not None and stream.last_decision.action == "fallback"
    torch.testing.assert_close(answer, frozen(flat))


def test_the_fallback_answers_exactly_as_the_frozen_source_forward_whatever_the_signal_precision(
    tiny_source: SourceModel,
) -> None:
    """The fallback's answers are the served source model's (the frozen forward, which also answers
    a ``source`` stream), not the signals' fp32 probe's: with a bf16 frozen forward they differ."""
    frozen = TorchFrozenForward(copy.deepcopy(tiny_source.module), "bf16")
    guard = {"policy": "fallback", "thresholds": [ALWAYS]}
    stream = OnlineStream(create_adapter("tent", tiny_source), 1, frozen, True, 1, guard)
    for seed in (1, 2):  # the batch that triggers the fallback, then one while falling back
        batch = image_batch(8, seed=seed)
        answer = stream.step(batch)
        assert stream.guard.falling_back and torch.equal(answer, frozen(batch))
    probe = batchnorm_probe(tiny_source)
    assert probe is not None and not torch.equal(probe(batch)[0], frozen(batch))  # the case that matters


def test_an_early_threshold_acts_on_the_window_in_progress_from_its_third_step(tiny_source: SourceModel) -> None:
    early = {**ALWAYS, "early": True}
    stream = guarded(tiny_source, {"thresholds": [early]}, window_steps=5)
    for seed in (1, 2):
        stream.step(image_batch(8, seed=seed))
        assert stream.last_decision is None  # fewer than three steps: not judged yet
    stream.step(image_batch(8, seed=3))
    assert stream.last_decision is not None and stream.last_decision.reason == "threshold" and stream.steps == 0
    late = guarded(tiny_source, {"thresholds": [ALWAYS]}, window_steps=5)
    for seed in (1, 2, 3, 4):
        late.step(image_batch(8, seed=seed))
    assert late.last_decision is None  # a threshold that is not early waits for the window to close


def test_an_early_fallback_does_not_count_against_recovery_while_falling_back() -> None:
    guard = Guard({"policy": "fallback", "thresholds": [{"signal": "label_dependence", "above": 0.1, "early": True}]})
    decision = guard.on_open_window({"label_dependence": 0.3})
    assert decision is not None and decision.action == "fallback"
    guard.record(decision, 3)
    assert guard.on_open_window({"label_dependence": 0.3}) is None  # already falling back
    assert guard.on_open_window({"label_dependence": 0.01}) is None


def test_a_window_in_progress_reports_its_label_dependence_from_its_third_step() -> None:
    windows = SignalWindows(window_steps=5)
    one_class_each = [torch.nn.functional.one_hot(torch.full((64,), step), 10).float() * 6 for step in range(3)]
    for step, logits in enumerate(one_class_each):
        windows.add(step_sums(logits, logits), logits.softmax(1).sum(0))
        values = windows.open_values()
        assert ("label_dependence" in values) == (step == 2)
    assert windows.open_values()["label_dependence"] > 0.9  # three classes: at most log(3)
