"""The small-request policy, divergence guard and phase timings of ``adapters.online.OnlineStream``, without HTTP."""

from __future__ import annotations

import time

import pytest
import torch

from adapters import AdapterError, InputError, SourceModel, create_adapter, get_frozen_forward
from adapters.online import PHASES, DivergenceError, OnlineStream
from tests.conftest import image_batch


def online(source: SourceModel, config: dict[str, object] | None = None) -> OnlineStream:
    return OnlineStream(create_adapter("tent", source, config), 4, get_frozen_forward(source, "torch"))


def test_a_bad_small_batch_leaves_the_stream_untouched(tiny_source: SourceModel) -> None:
    stream = online(tiny_source)
    stream.step(image_batch(3))
    recent = stream.recent
    with pytest.raises(InputError, match="expected shape"):
        stream.step(torch.rand(2, 3, 16, 16))
    assert stream.recent is recent and stream.buffered_images == 3 and stream.steps == 0


def test_small_batches_use_the_source_until_context_then_adapt(tiny_source: SourceModel) -> None:
    stream = online(tiny_source)
    frozen = get_frozen_forward(tiny_source, "torch")
    first = image_batch(2, seed=1)
    torch.testing.assert_close(stream.step(first), frozen(first))
    second = image_batch(2, seed=2)
    context = torch.cat([first, second])
    expected = create_adapter("tent", tiny_source).predict(context)[-2:]
    torch.testing.assert_close(stream.step(second), expected)
    assert stream.steps == 1 and stream.buffered_images == 0  # 4 buffered images: one update


def test_the_buffer_is_part_of_the_state(tiny_source: SourceModel) -> None:
    """A stream restored mid-buffer answers exactly as the uninterrupted one."""
    batches = [image_batch(3, seed=s) for s in range(6)]
    uninterrupted, interrupted = online(tiny_source), online(tiny_source)
    for batch in batches[:3]:
        uninterrupted.step(batch)
        interrupted.step(batch)
    state = interrupted.state_dict()
    assert state["tensors"]["buffer.pending"].shape[0] == interrupted.buffered_images > 0
    resumed = online(tiny_source)
    resumed.load_state_dict(state)
    for batch in batches[3:]:
        assert torch.equal(uninterrupted.step(batch), resumed.step(batch))
    assert resumed.state_bytes() == uninterrupted.state_bytes() > create_adapter("tent", tiny_source).state_bytes()


def test_a_diverging_step_is_undone(tiny_source: SourceModel) -> None:
    stream = online(tiny_source)
    stream.step(image_batch(8, seed=1))
    stream.step(image_batch(2, seed=3))  # something in the buffer too
    before = stream.state_dict()
    update = stream.adapter._forward_and_adapt

    def diverging(x: torch.Tensor) -> torch.Tensor:  # an update that blows the parameters up
        logits = update(x)
        with torch.no_grad():
            next(iter(stream.adapter._state_tensors().values())).fill_(float("nan"))
        return logits

    stream.adapter._forward_and_adapt = diverging  # type: ignore[method-assign]
    with pytest.raises(DivergenceError, match="undone"):
        stream.step(image_batch(8, seed=2))
    after = stream.state_dict()
    assert after["steps"] == before["steps"] == 1 and stream.adapter.state_is_finite()
    assert after["tensors"].keys() == before["tensors"].keys()
    for key, value in before["tensors"].items():
        assert torch.equal(after["tensors"][key], value), key
    assert torch.equal(after["generator"], before["generator"])


def test_a_state_that_does_not_fit_leaves_the_stream_unchanged(tiny_source: SourceModel) -> None:
    stream = online(tiny_source)
    stream.step(image_batch(6, seed=1))
    stream.step(image_batch(2, seed=2))
    before = stream.state_dict()
    other = online(tiny_source)
    other.step(image_batch(6, seed=3))
    broken = other.state_dict()
    broken["tensors"]["buffer.pending"] = torch.zeros(2, 3, 16, 16)  # the wrong image size
    with pytest.raises(AdapterError, match="buffer 'pending'"):
        stream.load_state_dict(broken)
    after = stream.state_dict()
    assert stream.signals.report() == online_report(before, tiny_source)
    for key, value in before["tensors"].items():
        assert torch.equal(after["tensors"][key], value), key


def online_report(state: dict[str, object], source: SourceModel) -> dict[str, object]:
    fresh = online(source)
    fresh.load_state_dict(state)  # type: ignore[arg-type]
    return fresh.signals.report()


def test_a_step_reports_how_long_each_of_its_phases_took(bundled_source: SourceModel) -> None:
    stream = OnlineStream(create_adapter("tent", bundled_source), 1, get_frozen_forward(bundled_source, "torch"))
    started = time.perf_counter()
    stream.step(image_batch(16, seed=5))
    total = time.perf_counter() - started
    assert set(stream.last_phases) == set(PHASES) and all(s > 0 for s in stream.last_phases.values())
    assert sum(stream.last_phases.values()) <= total
    quiet = OnlineStream(create_adapter("tent", bundled_source), 1, get_frozen_forward(bundled_source), False)
    quiet.step(image_batch(16, seed=5))
    assert set(quiet.last_phases) == {"adapt", "signals"}  # no source signals: no source forward


def test_the_state_size_is_read_without_walking_a_state_a_step_is_changing(tiny_source: SourceModel) -> None:
    """The server reads state_bytes on its event loop while a step runs on a worker thread; walking
    the optimizer's state then raced Adam adding its moments (dictionary changed size)."""
    import threading

    stream = OnlineStream(create_adapter("tent", tiny_source), 4, get_frozen_forward(tiny_source))
    before = stream.state_bytes()
    optimizer = stream.adapter.optimizer  # type: ignore[attr-defined]
    original_step = optimizer.step
    mid_step, resume = threading.Event(), threading.Event()

    def pausing_step(*args: object, **kwargs: object) -> object:
        result = original_step(*args, **kwargs)  # the moments now exist
        mid_step.set()
        resume.wait(10)
        return result

    optimizer.step = pausing_step
    walked_from = []
    adapter_state_bytes = stream.adapter.state_bytes
    stream.adapter.state_bytes = lambda: walked_from.append(threading.current_thread()) or adapter_state_bytes()  # type: ignore[method-assign]
    worker = threading.Thread(target=stream.step, args=(image_batch(8),))
    worker.start()
    try:
        assert mid_step.wait(10)
        assert stream.state_bytes() == before  # the size before the step, read without touching its tensors
        assert threading.main_thread() not in walked_from
    finally:
        resume.set()
        worker.join(10)
    assert stream.state_bytes() > before  # remeasured by the step's thread: Adam's two moments per parameter
    assert walked_from and all(t is worker for t in walked_from)
