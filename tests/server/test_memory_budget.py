"""Memory budget: idle streams spill to disk and wake up exactly as they were."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from adapters import SourceModel, create_adapter, create_source_model, get_frozen_forward
from adapters.memory import measure_object_bytes, measure_working_memory, step_memory
from adapters.online import OnlineStream
from tests.conftest import image_batch
from tests.helpers import files, images, probabilities
from tests.server_harness import running_server
from tta_server import Settings
from tta_server.streams import SnapshotStore, StreamManager, StreamOptions

# budgets in these tests: steps of at most 32 images, so the server measures at 8 and 32 (fast)
SMALL_STEPS = {"max_images_per_request": 32, "max_batch_size": 32}
SIZES = (8, 32)


def state_after_a_step(images: int = 4) -> int:
    """A tent stream's state (parameters, moments and its min_adapt_batch=4 context) after a step."""
    source = create_source_model()
    stream = OnlineStream(create_adapter("tent", source), 4, get_frozen_forward(source))
    stream.step(torch.rand(images, *source.input_shape, generator=torch.Generator().manual_seed(0)))
    return stream.state_bytes()


def held_after_a_step(images: int = 4) -> int:
    """What the budget counts for that stream: its state and its adapter's Python objects."""
    return state_after_a_step(images) + measure_object_bytes("tent", create_source_model())


def test_idle_streams_spill_and_wake_up_unchanged(tmp_path: Path) -> None:
    # the budget holds one stream, not two, plus one step of 4 images (working memory and undo copy)
    working = measure_working_memory("tent", create_source_model(), sizes=SIZES).bytes_for(4)
    settings = Settings(
        default_adapter="tent",
        min_adapt_batch=4,
        memory_budget_bytes=working + state_after_a_step() + 5 * held_after_a_step() // 4,
        snapshot_dir=tmp_path,
        **SMALL_STEPS,
    )
    reference = create_adapter("tent", create_source_model())
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=60) as client:

        def predict(stream: str, seed: int) -> dict:  # type: ignore[type-arg]
            response = client.post("/v1/predict", files=files(images(4, seed)), headers={"X-Stream-Id": stream})
            assert response.status_code == 200, response.text
            return response.json()  # type: ignore[no-any-return]

        predict("a", 1)
        predict("b", 2)  # over budget: "a" (least recently used) goes to disk
        in_memory = {s["stream_id"] for s in client.get("/v1/streams").json()}
        assert in_memory == {"b"} and SnapshotStore(tmp_path).exists("a")
        woken = predict("a", 3)  # "a" comes back (and "b" goes out)
        assert woken["step"] == 2
        for seed in (1, 3):
            batch = torch.from_numpy(images(4, seed)).permute(0, 3, 1, 2).float() / 255
            expected = reference.forward_and_adapt(batch).softmax(1).numpy()
        got = probabilities(woken)
        top = expected.argsort(1)[:, ::-1][:, :5]
        np.testing.assert_allclose(np.take_along_axis(got, top, 1), np.take_along_axis(expected, top, 1), atol=1e-5)
        assert {s["stream_id"] for s in client.get("/v1/streams").json()} == {"a"}
        assert client.get("/v1/streams/b").json()["steps"] == 1  # a spilled stream answers too


def test_idle_streams_leave_memory_and_come_back(tmp_path: Path) -> None:
    import time

    settings = Settings(default_adapter="tent", min_adapt_batch=4, idle_timeout_s=0.4, snapshot_dir=tmp_path)
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=60) as client:
        client.post("/v1/predict", files=files(images(4, 1)), headers={"X-Stream-Id": "sleepy"})
        deadline = time.monotonic() + 10
        # a spilling stream leaves the listing before its snapshot is written (requests for it wait)
        while (client.get("/v1/streams").json() or not SnapshotStore(tmp_path).exists("sleepy")) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.1)
        assert client.get("/v1/streams").json() == [] and SnapshotStore(tmp_path).exists("sleepy")
        (listed,) = client.get("/v1/streams", params={"include_spilled": "true"}).json()
        assert [listed[k] for k in ("stream_id", "adapter", "steps", "resident")] == ["sleepy", "tent", 1, False]
        snapshot = SnapshotStore(tmp_path).path("sleepy")
        assert listed["config"] and listed["state_bytes"] == snapshot.stat().st_size
        assert client.get("/v1/streams").json() == []  # listing read the header only: the stream stayed spilled
        again = client.post("/v1/predict", files=files(images(4, 2)), headers={"X-Stream-Id": "sleepy"})
        assert again.json()["step"] == 2  # woke up from its snapshot, not from the source
    dropping = Settings(default_adapter="norm", idle_timeout_s=0.4)
    with running_server(dropping) as url, httpx.Client(base_url=url, timeout=60) as client:
        client.post("/v1/predict", files=files(images(4, 1)), headers={"X-Stream-Id": "gone"})
        time.sleep(1.0)
        assert client.get("/v1/streams/gone").status_code == 404  # no snapshots: dropped


def test_restored_streams_are_listed_from_their_snapshot_headers(tmp_path: Path) -> None:
    settings = Settings(default_adapter="norm", snapshot_dir=tmp_path)
    names = ("cam-5", "cam-1", "cam-4", "cam-2", "cam-3")
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=60) as client:
        for name in names:
            client.post("/v1/predict", files=files(images(4, 1)), headers={"X-Stream-Id": name})
    store = SnapshotStore(tmp_path)
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=60) as client:

        def listing(**params: str) -> list[tuple[str, int, bool]]:
            response = client.get("/v1/streams", params={"include_spilled": "true", **params})
            assert response.status_code == 200, response.text
            return [(s["stream_id"], s["buffered_images"], s["resident"]) for s in response.json()]

        assert client.get("/v1/streams").json() == []  # restored streams start spilled
        first = client.get("/v1/streams?include_spilled=1").json()[0]
        assert (first["stream_id"], first["adapter"], first["steps"], first["resident"]) == ("cam-1", "norm", 0, False)
        assert first["buffered_images"] == 4  # four images wait for min_adapt_batch
        client.post("/v1/predict", files=files(images(4, 2)), headers={"X-Stream-Id": "cam-4"})
        store.path("cam-2").write_bytes(store.path("cam-2").read_bytes()[:40])  # damaged since: left out
        # pages in stream-id order, resident and spilled streams together, past the unreadable header
        assert listing(limit="2") == [("cam-1", 4, False), ("cam-3", 4, False)]
        assert listing(limit="2", after="cam-3") == [("cam-4", 8, True), ("cam-5", 4, False)]
        assert listing(limit="2", after="cam-5") == []
        assert [s["stream_id"] for s in client.get("/v1/streams").json()] == ["cam-4"]
        for bad in ({"include_spilled": "maybe"}, {"limit": "0"}, {"limit": "10001"}, {"after": "../x"}):
            refused = client.get("/v1/streams", params=bad)
            assert refused.status_code == 422 and next(iter(bad)) in refused.json()["error"]["message"], refused.text


def test_working_memory_estimate_bounds_the_steps_in_between(bundled_source: SourceModel) -> None:
    source = bundled_source
    x = torch.rand(24, *source.input_shape, generator=torch.Generator().manual_seed(3))
    # cotta's peak grows faster beyond small batches than below them: a line through two small
    # steps would under-reserve, the chord from a small to the largest step must not
    for name in ("norm", "tent", "cotta"):
        estimate = measure_working_memory(name, source, sizes=(4, 32))
        assert estimate.per_image_bytes > 0
        adapter = create_adapter(name, source)
        adapter.forward_and_adapt(x[:4])
        for n in (2, 12, 24):
            measured = step_memory(adapter, x[:n])["step_peak_bytes"]
            assert measured <= estimate.bytes_for(n), (name, n, estimate, measured)
            if n >= estimate.small_images:  # below it, the small step's peak is reserved
                assert estimate.bytes_for(n) <= 1.5 * measured, (name, n, estimate, measured)


def test_a_step_larger_than_the_budget_is_refused_and_leaves_the_stream_unchanged(tmp_path: Path) -> None:
    working = measure_working_memory("tent", create_source_model(), sizes=SIZES)
    state, held = state_after_a_step(8), held_after_a_step(8)
    budget = working.bytes_for(8) + state + 2 * held  # one step of 8 images fits, one of 32 does not
    settings = Settings(
        default_adapter="tent", min_adapt_batch=4, memory_budget_bytes=budget, snapshot_dir=tmp_path, **SMALL_STEPS
    )
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=60) as client:
        refused = client.post("/v1/predict", files=files(images(32, 1)), headers={"X-Stream-Id": "big"})
        # it can never fit: no Retry-After, and the most images that do fit
        assert refused.status_code == 413 and "retry-after" not in refused.headers
        error = refused.json()["error"]
        assert error["code"] == "step_exceeds_memory_budget" and "working memory" in error["message"]
        most = int(error["message"].split("send at most ")[1].split()[0])
        assert 8 <= most < 32
        assert client.get("/v1/streams/big").json()["steps"] == 0
        accepted = client.post("/v1/predict", files=files(images(8, 1)), headers={"X-Stream-Id": "big"})
        assert accepted.status_code == 200 and accepted.json()["step"] == 1
        memory = client.get("/v1/memory").json()
        assert memory["budget_bytes"] == budget and memory["in_flight_bytes"] == 0
        assert memory["state_bytes"] > 0 and memory["working_memory"][0]["adapter"] == "tent"
        assert memory["working_memory"][0]["per_image_bytes"] > 0
        objects = memory["working_memory"][0]["object_bytes_per_stream"]
        assert objects > 0 and memory["state_bytes"] == client.get("/v1/streams/big").json()["state_bytes"] + objects


def test_dynamic_batching_never_groups_requests_into_a_step_the_budget_cannot_hold(tmp_path: Path) -> None:
    """Each request fits the budget alone; grouped up to max_batch_size they would not, and every
    request of the group would be refused."""
    from collections import Counter
    from concurrent.futures import ThreadPoolExecutor

    working = measure_working_memory("tent", create_source_model(), sizes=SIZES)
    state, held = state_after_a_step(8), held_after_a_step(8)
    budget = working.bytes_for(8) + state + 2 * held  # steps of up to 8 images fit, 32 do not
    settings = Settings(
        default_adapter="tent",
        min_adapt_batch=4,
        memory_budget_bytes=budget,
        snapshot_dir=tmp_path,
        max_delay_ms=500,
        **SMALL_STEPS,
    )
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=60) as client:

        def send(seed: int) -> httpx.Response:
            return client.post("/v1/predict", files=files(images(4, seed)), headers={"X-Stream-Id": "cam"})

        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(send, range(8)))
        assert [r.status_code for r in responses] == [200] * 8, [r.text for r in responses if r.status_code != 200]
        per_step = Counter(r.json()["step"] for r in responses)
        assert max(per_step.values()) <= 2 and sum(per_step.values()) == 8  # 8 images a step at most
        assert max(per_step.values()) == 2  # and requests were still grouped
        assert client.get("/v1/memory").json()["in_flight_bytes"] == 0


def test_a_step_that_can_never_fit_is_refused_at_once_while_other_steps_run(
    tmp_path: Path, tiny_source: SourceModel
) -> None:
    """Waiting memory_wait_s for running steps to finish cannot help a step larger than the budget."""
    from tta_server.streams import StepTooLargeError

    async def main() -> None:
        options = StreamOptions(min_adapt_batch=4, memory_budget_bytes=1, memory_wait_s=5, largest_step=32)
        manager = StreamManager(tiny_source, options, SnapshotStore(tmp_path))
        try:
            adapter = create_adapter("tent", tiny_source)
            estimate = await manager.budget.estimate(adapter, tiny_source, manager.in_executor)
            fits, never = estimate.bytes_for(8), estimate.bytes_for(32)
            manager.budget.budget_bytes = never - 1  # a step of 32 images never fits, whatever runs
            await manager.step("small", torch.rand(8, *tiny_source.input_shape))
            # a step of another stream holds working memory now
            await manager.budget.reserve(fits, manager.state_total, lambda extra: manager.make_room(None, extra))
            started = time.monotonic()
            with pytest.raises(StepTooLargeError, match="send at most"):
                await manager.step("big", torch.rand(32, *tiny_source.input_shape))
            assert time.monotonic() - started < 2  # not memory_wait_s
            assert manager.counters["refused_step_too_large"] == 1 and manager.streams["big"].online.steps == 0
            assert manager.counters["refused_memory_budget"] == 0  # a client's mistake, not budget saturation
            assert estimate.bytes_for(30) + fits > never  # fits alone, not beside the running step: it waits
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(manager.step("big", torch.rand(30, *tiny_source.input_shape)), 0.5)
        finally:
            manager.close()

    asyncio.run(main())


def test_concurrent_steps_wait_for_working_memory_instead_of_exceeding_the_budget(tmp_path: Path) -> None:
    source = create_source_model()
    working = measure_working_memory("tent", source, sizes=SIZES).bytes_for(8)
    state, held = state_after_a_step(8), held_after_a_step(8)
    step = working + state  # a step's working memory plus the copy that undoes a diverged step
    budget = 4 * held + step + step // 2  # four streams and one step at a time, not two
    peaks = {"total": 0, "in_flight": 0}

    async def main() -> list[int]:
        options = StreamOptions(min_adapt_batch=4, memory_budget_bytes=budget, largest_step=SIZES[1])
        manager = StreamManager(source, options, SnapshotStore(tmp_path))
        reserve = manager.budget.reserve

        async def recording(need: int, used: Callable[[], int], make_room: Callable[[int], Awaitable[None]]) -> None:
            await reserve(need, used, make_room)
            peaks["total"] = max(peaks["total"], manager.state_total() + manager.budget.in_flight_bytes)
            peaks["in_flight"] = max(peaks["in_flight"], manager.budget.in_flight_bytes)

        manager.budget.reserve = recording  # type: ignore[method-assign]
        batches = [torch.rand(8, *source.input_shape, generator=torch.Generator().manual_seed(i)) for i in range(8)]
        try:
            results = await asyncio.gather(*(manager.step(f"s{i % 4}", b) for i, b in enumerate(batches)))
        finally:
            manager.close()
        return [result.steps for result in results]

    steps = asyncio.run(main())
    assert sorted(steps) == [1, 1, 1, 1, 2, 2, 2, 2]  # every step ran, none was refused
    assert 0 < peaks["total"] <= budget
    # steps held their working memory, and never two at once (the pool has 2 workers)
    assert working <= peaks["in_flight"] < 2 * working


def test_spill_and_wake_are_exact_for_small_requests(tmp_path: Path) -> None:
    """Two streams fed 3 images at a time (below min_adapt_batch=4) under a budget that holds one:
    each request spills the other stream with its buffer, and every answer equals the answer of an
    uninterrupted in-process stream."""
    working = measure_working_memory("tent", create_source_model(), sizes=SIZES).bytes_for(8)
    buffered = 3 * 3 * 32 * 32 * 4  # 3 images held for the next step
    settings = Settings(
        default_adapter="tent",
        min_adapt_batch=4,
        # one stream with 3 buffered images, its undo copy, and a quarter more: never two streams
        memory_budget_bytes=working + buffered + state_after_a_step() + 5 * (held_after_a_step() + buffered) // 4,
        snapshot_dir=tmp_path,
        **SMALL_STEPS,
    )
    source = create_source_model()
    references = {name: OnlineStream(create_adapter("tent", source), 4, get_frozen_forward(source)) for name in "ab"}
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=60) as client:
        alone = 0
        for request in range(8):
            name = "ab"[request % 2]
            batch = images(3, request)
            response = client.post("/v1/predict", files=files(batch), headers={"X-Stream-Id": name})
            assert response.status_code == 200, response.text
            expected = references[name].step(torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255)
            got = probabilities(response.json())
            top = expected.softmax(1).numpy().argsort(1)[:, ::-1][:, :5]
            want = np.take_along_axis(expected.softmax(1).numpy(), top, 1)
            np.testing.assert_allclose(np.take_along_axis(got, top, 1), want, atol=1e-6)
            alone += [s["stream_id"] for s in client.get("/v1/streams").json()] == [name]  # the other spilled
        assert alone >= 5 and client.get("/v1/memory").json()["streams_spilled"] == 1


def test_a_stream_being_spilled_stays_in_the_full_listing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    import time

    writing, release = threading.Event(), threading.Event()
    write = SnapshotStore.write

    def slow_write(self: SnapshotStore, stream_id: str, state: dict[str, Any]) -> Path:
        path = write(self, stream_id, state)
        writing.set()  # the file is there, the spill has not finished
        release.wait(10)
        return path

    monkeypatch.setattr(SnapshotStore, "write", slow_write)
    settings = Settings(default_adapter="norm", min_adapt_batch=4, idle_timeout_s=0.2, snapshot_dir=tmp_path)
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=60) as client:
        client.post("/v1/predict", files=files(images(4, 1)), headers={"X-Stream-Id": "moving"})
        assert writing.wait(10)
        assert client.get("/v1/streams").json() == []  # the plain listing shows resident streams only
        threading.Timer(0.3, release.set).start()
        started = time.monotonic()
        listed = client.get("/v1/streams", params={"include_spilled": "true"}).json()
        assert [(s["stream_id"], s["resident"]) for s in listed] == [("moving", False)]
        assert time.monotonic() - started >= 0.2  # it waited for the spill to land


def test_spilled_streams_count_against_the_total_so_invented_ids_cannot_fill_the_disk(
    tmp_path: Path, tiny_source: SourceModel
) -> None:
    from tta_server.streams import StreamLimitError

    async def main() -> None:
        options = StreamOptions(default_adapter="tent", min_adapt_batch=4, max_streams_total=3)
        manager = StreamManager(tiny_source, options, SnapshotStore(tmp_path))
        try:
            for name in ("a", "b", "c"):
                await manager.step(name, image_batch(4))
                assert await manager.spill(manager.streams[name])  # idle: to the store, out of memory
            assert manager.streams == {} and manager.spilled == {"a", "b", "c"}
            with pytest.raises(StreamLimitError, match="max_streams_total=3"):
                await manager.step("d", image_batch(4))
            assert not manager.store.exists("d") and manager.counters["refused_stream_limit"] == 1  # type: ignore[union-attr]
            assert (await manager.step("a", image_batch(4, 1))).steps == 2  # a spilled stream still wakes
            await manager.delete("b")
            assert (await manager.step("d", image_batch(4))).steps == 1  # room again
        finally:
            manager.close()

    asyncio.run(main())


def test_streams_restored_beyond_the_total_are_kept_and_wake(tmp_path: Path, tiny_source: SourceModel) -> None:
    """Lowering max_streams_total never loses a stream the store already holds."""
    from tta_server.streams import Persistence, StreamLimitError

    async def main() -> None:
        store = SnapshotStore(tmp_path)
        manager = StreamManager(tiny_source, StreamOptions(default_adapter="tent", min_adapt_batch=4), store)
        try:
            for name in ("a", "b"):
                await manager.step(name, image_batch(4))
            await Persistence(manager, store).snapshot_changed()
        finally:
            manager.close()
        options = StreamOptions(default_adapter="tent", min_adapt_batch=4, max_streams_total=1)
        manager = StreamManager(tiny_source, options, store)
        try:
            assert sorted(Persistence(manager, store).restore_all()) == ["a", "b"]
            assert (await manager.step("a", image_batch(4, 1))).steps == 2
            assert (await manager.step("b", image_batch(4, 1))).steps == 2
            with pytest.raises(StreamLimitError, match="max_streams_total=1"):
                await manager.step("new", image_batch(4))
        finally:
            manager.close()

    asyncio.run(main())


def test_making_room_frees_each_spilled_stream_before_writing_the_next(
    tmp_path: Path, tiny_source: SourceModel
) -> None:
    """Room is made by spilling several streams one after another; each must leave memory when it
    is written, not when the last one is (the budget already counts it gone)."""
    import gc
    import weakref

    async def main() -> None:
        options = StreamOptions(default_adapter="tent", min_adapt_batch=4, memory_budget_bytes=2**30)
        manager = StreamManager(tiny_source, options, SnapshotStore(tmp_path))
        try:
            for name in ("a", "b"):
                await manager.step(name, image_batch(4))
            first = weakref.ref(manager.streams["a"].online)  # least recently used: spilled first
            seen: list[bool] = []
            write = manager.write_snapshot

            def write_then_look(stream: Any) -> Path:
                if stream.stream_id == "b":
                    gc.collect()
                    seen.append(first() is not None)
                return write(stream)

            manager.write_snapshot = write_then_look  # type: ignore[method-assign]
            await manager.make_room(keep=None, extra_bytes=2**30)  # room for everything: both go
            assert manager.streams == {} and seen == [False], "a spilled stream stayed alive while the next was written"
        finally:
            manager.close()

    asyncio.run(main())


def test_configs_differing_in_learning_rate_share_one_estimate_and_new_configs_are_bounded(tmp_path: Path) -> None:
    """Each distinct config's working memory is measured while every step waits; a client sweeping
    learning rates (or seeds) reuses one measurement, and distinct configs beyond
    max_adapter_configs are refused at creation instead of pausing the server once more each."""
    settings = Settings(
        default_adapter="tent",
        min_adapt_batch=4,
        memory_budget_bytes=2**31,
        snapshot_dir=tmp_path,
        max_adapter_configs=2,
        **SMALL_STEPS,
    )
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=60) as client:

        def create(stream_id: str, config: dict) -> httpx.Response:  # type: ignore[type-arg]
            return client.post("/v1/streams", json={"stream_id": stream_id, "adapter": "tent", "config": config})

        for i, lr in enumerate((0.01, 0.02, 0.005)):
            config = {"seed": i, "optimizer": {"name": "adam", "lr": lr, "betas": [0.8, 0.99]}}
            assert create(f"lr-{i}", config).status_code == 201
            step = client.post("/v1/predict", files=files(images(4, i)), headers={"X-Stream-Id": f"lr-{i}"})
            assert step.status_code == 200, step.text
        assert len(client.get("/v1/memory").json()["working_memory"]) == 1  # the default's, measured at start
        assert create("sgd", {"optimizer": {"name": "sgd", "lr": 0.01}}).status_code == 201  # a second config
        refused = create("fp32", {"precision": "fp32"})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "stream_limit", refused.text
        assert "max_adapter_configs=2" in refused.json()["error"]["message"]
        assert client.get("/v1/streams/fp32").status_code == 404
        step = client.post("/v1/predict", files=files(images(4, 9)), headers={"X-Stream-Id": "sgd"})
        assert step.status_code == 200 and len(client.get("/v1/memory").json()["working_memory"]) == 2
