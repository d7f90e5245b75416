"""Persistence under faults: failures logged, counted and retried; deletes racing snapshot passes;
bounded shutdown; readiness while writes keep failing; snapshots of another model quarantined."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from adapters import SourceModel, create_adapter
from tests.conftest import image_batch
from tests.helpers import damage_inside, png
from tests.server_harness import running_server
from tta_server import Settings
from tta_server.streams import (
    MemoryBudgetError,
    Persistence,
    SnapshotDeleteError,
    SnapshotStore,
    StreamManager,
    StreamOptions,
    UnknownStreamError,
)
from tta_server.streams.persistence import run_forever


def manager_with_store(source: SourceModel, directory: Path) -> tuple[StreamManager, Persistence]:
    store = SnapshotStore(directory)
    manager = StreamManager(source, StreamOptions(default_adapter="tent", min_adapt_batch=4), store)
    return manager, Persistence(manager, store, failure_grace_s=0.2)


def test_one_unwritable_stream_does_not_stop_the_others(
    tmp_path: Path, tiny_source: SourceModel, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        manager, persistence = manager_with_store(tiny_source, tmp_path)
        try:
            for name in ("a", "b", "c"):
                await manager.step(name, image_batch(4))
            blocker = persistence.store.path("b")
            blocker.mkdir()  # the rename onto b's file fails: b cannot be written
            with caplog.at_level(logging.INFO):
                assert await persistence.snapshot_changed() == (2, 1)
                assert persistence.store.exists("a") and persistence.store.exists("c")
                assert persistence.failing_since is not None
                for _ in range(3):  # retried every pass, counted every time, logged once
                    assert await persistence.snapshot_changed() == (0, 1)
                assert manager.counters["snapshot_failures"] == 4
                blocker.rmdir()
                assert await persistence.snapshot_changed() == (1, 0)  # retried on the next pass
            assert persistence.store.read("b")["steps"] == 1 and persistence.healthy()
            lines = [r.getMessage() for r in caplog.records if r.name == "tta_server.streams.persistence"]
            assert [line.split(":")[0:2] for line in lines] == [["stream b", " snapshot failed"]] * 1 + [
                ["stream b", " snapshot succeeded after 4 failure(s) over 0 s"]
            ], lines
        finally:
            manager.close()

    asyncio.run(main())


def test_a_delete_during_a_snapshot_pass_neither_crashes_it_nor_resurrects_the_stream(
    tmp_path: Path, tiny_source: SourceModel
) -> None:
    async def main() -> None:
        manager, persistence = manager_with_store(tiny_source, tmp_path)
        store = persistence.store
        writing, release = threading.Event(), threading.Event()
        write = store.write

        def slow_write(stream_id: str, state: dict[str, Any]) -> Path:
            if stream_id == "a":
                writing.set()
                release.wait(10)
            return write(stream_id, state)

        store.write = slow_write  # type: ignore[method-assign]
        try:
            for name in ("a", "b"):
                await manager.step(name, image_batch(4))
            snapshot_pass = asyncio.create_task(persistence.snapshot_changed())
            await asyncio.to_thread(writing.wait, 10)
            deleting_a = asyncio.create_task(manager.delete("a"))  # waits for a's write to finish
            await manager.delete("b")  # b is deleted before the pass reaches it
            release.set()
            assert await snapshot_pass == (1, 0)
            await deleting_a
            assert not store.exists("a") and not store.exists("b") and manager.streams == {}
            assert persistence.restore_all() == []
        finally:
            release.set()
            manager.close()

    asyncio.run(main())


def test_shutdown_snapshots_are_bounded_in_time_and_report_failures(tmp_path: Path, tiny_source: SourceModel) -> None:
    async def main() -> dict[str, str]:
        manager, persistence = manager_with_store(tiny_source, tmp_path)
        write = persistence.store.write

        def stuck_write(stream_id: str, state: dict[str, Any]) -> Path:
            if stream_id == "stuck":
                time.sleep(2)
            return write(stream_id, state)

        persistence.store.write = stuck_write  # type: ignore[method-assign]
        try:
            for name in ("stuck", "fine"):
                await manager.step(name, image_batch(4))
            started = time.monotonic()
            failures = await persistence.snapshot_all(timeout_s=0.5)
            assert time.monotonic() - started < 1.5
            return failures
        finally:
            manager.close()

    failures = asyncio.run(main())
    assert set(failures) == {"stuck", "fine"}  # the deadline passed during the first write


def test_background_loops_survive_their_failures() -> None:
    calls: list[int] = []

    def flaky() -> None:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("disk on fire")

    async def main() -> None:
        task = asyncio.create_task(run_forever("test", 0.01, flaky))
        deadline = time.monotonic() + 5
        while len(calls) < 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(main())
    assert len(calls) >= 4


def predict(client: httpx.Client, stream: str, seed: int) -> httpx.Response:
    files = [("files", (f"{i}.png", png(seed * 10 + i), "image/png")) for i in range(4)]
    return client.post("/v1/predict", files=files, headers={"X-Stream-Id": stream})


def test_readiness_turns_false_while_snapshots_keep_failing(tmp_path: Path) -> None:
    directory = tmp_path / "snapshots"
    settings = Settings(
        default_adapter="tent",
        min_adapt_batch=4,
        snapshot_dir=directory,
        snapshot_interval_s=0.1,
        persistence_failure_grace_s=0.3,
    )
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert predict(client, "cam", 1).status_code == 200
        deadline = time.monotonic() + 10
        while not SnapshotStore(directory).exists("cam") and time.monotonic() < deadline:
            time.sleep(0.05)
        shutil.rmtree(directory)
        directory.write_text("the volume went away")  # every write fails from now on
        assert predict(client, "cam", 2).status_code == 200  # serving goes on
        deadline = time.monotonic() + 10
        while client.get("/health/ready").status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/health/ready").json()["status"] == "persistence_failing"
        report = client.get("/v1/persistence").json()
        assert report["failures"]["snapshot_failures"] >= 1 and "cam" in report["last_error"]
        directory.unlink()
        deadline = time.monotonic() + 10
        while client.get("/health/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/health/ready").status_code == 200  # recovered on its own
    assert SnapshotStore(directory).read("cam")["steps"] == 2


def test_a_store_that_refuses_writes_is_reported_before_any_stream_needs_it(tmp_path: Path) -> None:
    """No streams yet, and the volume is missing (a file where the directory should be): the
    snapshot pass's write probe fails, so /v1/persistence and readiness say so, and both recover
    once the volume is there."""
    directory = tmp_path / "volume"
    directory.write_text("not mounted")
    settings = Settings(
        default_adapter="norm", snapshot_dir=directory, snapshot_interval_s=0.1, persistence_failure_grace_s=0.3
    )
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=60) as client:
        deadline = time.monotonic() + 10
        while client.get("/health/ready").status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/health/ready").json()["status"] == "persistence_failing"
        report = client.get("/v1/persistence").json()
        assert not report["healthy"] and "write probe of the snapshot store" in report["last_error"], report
        failures = re.search(r"^tta_snapshot_failures_total (\S+)$", client.get("/metrics").text, re.MULTILINE)
        assert failures and float(failures.group(1)) >= 1
        directory.unlink()
        deadline = time.monotonic() + 10
        while client.get("/health/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/health/ready").status_code == 200 and client.get("/v1/persistence").json()["healthy"]
    assert directory.is_dir() and not list(directory.iterdir())  # the probe leaves nothing behind


def test_a_deleted_stream_stays_deleted_after_a_restart(tmp_path: Path) -> None:
    settings = Settings(default_adapter="tent", min_adapt_batch=4, snapshot_dir=tmp_path)
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=60) as client:
        predict(client, "gone", 1)
        predict(client, "kept", 1)
        assert client.post("/v1/streams/gone/snapshot").status_code == 200
        assert client.delete("/v1/streams/gone").status_code == 204
        assert not SnapshotStore(tmp_path).exists("gone")
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert client.get("/v1/streams/gone").status_code == 404
        assert client.get("/v1/streams/kept").json()["steps"] == 1


def test_snapshots_of_another_model_are_quarantined_at_start(tmp_path: Path, tiny_source: SourceModel) -> None:
    from adapters import create_adapter, get_frozen_forward
    from adapters.online import OnlineStream

    foreign = OnlineStream(create_adapter("tent", tiny_source), 4, get_frozen_forward(tiny_source, "torch"))
    foreign.step(torch.rand(4, 3, 32, 32))
    SnapshotStore(tmp_path).write("foreign", foreign.state_dict())
    settings = Settings(default_adapter="tent", min_adapt_batch=4, snapshot_dir=tmp_path)
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=60) as client:
        report = client.get("/v1/persistence").json()
        assert report["quarantined"] == 1 and "model" in report["quarantined_files"][0]["reason"]
        assert client.get("/v1/streams/foreign").status_code == 404


def test_an_unwritable_stream_does_not_block_spilling_the_others(tmp_path: Path, tiny_source: SourceModel) -> None:
    """Under a memory budget, a stream that cannot be spilled stays in memory and the next least
    recently used one goes instead; the step that needed the room succeeds."""

    async def main() -> None:
        store = SnapshotStore(tmp_path)
        probe = StreamManager(tiny_source, StreamOptions(min_adapt_batch=4, workers=1), store)
        await probe.step("probe", image_batch(4))
        state = probe.streams["probe"].online.state_bytes()
        probe.close()
        manager = StreamManager(tiny_source, StreamOptions(min_adapt_batch=4, workers=1), store)
        try:
            for name in ("stuck", "idle", "busy"):
                await manager.step(name, image_batch(4))
            store.path("stuck").mkdir()  # "stuck" (the least recently used) cannot be written
            # the budget arrives after the steps (no working-memory measurement needed): two streams fit
            manager.budget.budget_bytes = 2 * state + state // 2
            await manager.make_room(keep="busy")
            assert set(manager.streams) == {"stuck", "busy"} and manager.spilled == {"idle"}
            assert manager.counters["spill_failures"] == 1
        finally:
            manager.close()

    asyncio.run(main())


def test_a_budget_refusal_names_the_store_when_idle_streams_could_not_be_written(
    tmp_path: Path, tiny_source: SourceModel
) -> None:
    """A full or read-only snapshot store: the 503 says the idle streams could not be written, not
    that no stream was idle (which would send an operator after the wrong cause)."""

    async def main() -> None:
        manager = StreamManager(tiny_source, StreamOptions(min_adapt_batch=4, workers=1), SnapshotStore(tmp_path))
        try:
            for name in ("a", "b"):
                await manager.step(name, image_batch(4))
                manager.store.path(name).mkdir()  # type: ignore[union-attr]  # its snapshot cannot be written
            manager.budget.budget_bytes = manager.streams["a"].online.state_bytes()
            with pytest.raises(MemoryBudgetError, match=r"2 idle stream\(s\) could not be written to the snapshot"):
                await manager.make_room(keep=None, extra_bytes=1)
            assert set(manager.streams) == {"a", "b"} and manager.counters["spill_failures"] == 2
            manager.streams.pop("b")  # nothing idle left to try: the usual reason
            with pytest.raises(MemoryBudgetError, match="no idle stream is left to spill"):
                await manager.make_room(keep="a", extra_bytes=manager.budget.budget_bytes)
        finally:
            manager.close()

    asyncio.run(main())


def test_a_spilled_stream_whose_snapshot_cannot_be_deleted_is_kept(tmp_path: Path, tiny_source: SourceModel) -> None:
    async def main() -> None:
        manager, persistence = manager_with_store(tiny_source, tmp_path)
        store = persistence.store
        delete = store.delete
        failing = [True]

        def flaky_delete(stream_id: str) -> bool:
            if failing[0]:
                raise PermissionError(errno.EROFS, "Read-only file system")
            return delete(stream_id)

        store.delete = flaky_delete  # type: ignore[method-assign]
        try:
            await manager.step("old", image_batch(4))
            assert await manager.spill(manager.streams["old"])
            with pytest.raises(SnapshotDeleteError, match=r"Read-only file system.*kept as it was"):
                await manager.delete("old")
            assert manager.spilled == {"old"} and store.exists("old")  # nothing lost: it can still wake
            assert manager.counters["delete_failures"] == 1
            assert manager.failures.failing("snapshot delete") == {"snapshot delete": 1}
            failing[0] = False
            await manager.delete("old")
            assert manager.spilled == set() and not store.exists("old")
            assert manager.failures.failing("snapshot delete") == {"snapshot delete": 0}
        finally:
            manager.close()

    asyncio.run(main())


def oip_step(client: httpx.Client, sequence_id: int, **parameters: bool) -> httpx.Response:
    body = {
        "inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [4, 3, 32, 32], "data": [0.5] * 4 * 3072}],
        "parameters": {"sequence_id": sequence_id, **parameters},
    }
    return client.post("/v2/models/cifar10-airbench/infer", json=body)


def test_a_delete_the_disk_refuses_keeps_the_stream_and_says_so(tmp_path: Path) -> None:
    """A snapshot left behind by a delete answered 204 would bring the stream back at the next
    start: the delete must either remove both or change nothing."""
    settings = Settings(default_adapter="tent", min_adapt_batch=4, snapshot_dir=tmp_path, snapshot_interval_s=3600)
    store = SnapshotStore(tmp_path)
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert predict(client, "cam", 1).status_code == 200
        assert oip_step(client, 5, sequence_start=True).status_code == 200
        for stream_id in ("cam", "seq-5"):
            store.path(stream_id).mkdir()  # unlink() now fails with EISDIR, as on a read-only disk
        refused = client.delete("/v1/streams/cam")
        assert refused.status_code == 503 and refused.headers["Retry-After"]
        error = refused.json()["error"]
        assert error["code"] == "snapshot_delete_failed" and "kept as it was" in error["message"]
        assert client.get("/v1/streams/cam").json()["steps"] == 1  # nothing lost
        ended = oip_step(client, 5, sequence_end=True)
        assert ended.status_code == 200 and len(ended.json()["outputs"][0]["data"]) == 40  # outputs kept
        assert ended.json()["parameters"]["sequence_released"] is False
        assert client.get("/v1/streams/seq-5").json()["steps"] == 2
        restart = oip_step(client, 5, sequence_start=True)  # cannot start afresh: refused before the step
        assert restart.status_code == 503 and "cannot be deleted" in restart.json()["error"]
        assert client.get("/v1/streams/seq-5").json()["steps"] == 2
        for stream_id in ("cam", "seq-5"):
            store.path(stream_id).rmdir()
        assert client.delete("/v1/streams/cam").status_code == 204
        released = oip_step(client, 5, sequence_end=True)
        assert released.status_code == 200 and "parameters" not in released.json()
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert client.get("/v1/streams/cam").status_code == 404
        assert client.get("/v1/streams/seq-5").status_code == 404


def slow_store(directory: Path, seconds: float) -> SnapshotStore:
    """A store on a slow disk: every snapshot write takes ``seconds`` longer."""
    store = SnapshotStore(directory)
    write = store.write

    def slow_write(stream_id: str, state: dict[str, Any]) -> Path:
        time.sleep(seconds)
        return write(stream_id, state)

    store.write = slow_write  # type: ignore[method-assign]
    return store


def test_spills_and_wakes_leave_the_event_loop_free_and_a_stream_in_transit_loses_nothing(
    tmp_path: Path, tiny_source: SourceModel
) -> None:
    """On a slow disk (each snapshot write takes 1 s) the event loop keeps running while streams are
    written and read; a request for the stream being written waits for it, wakes it and continues."""

    async def main() -> None:
        manager = StreamManager(
            tiny_source, StreamOptions(min_adapt_batch=4, workers=1), slow_store(tmp_path, seconds=1.0)
        )
        gaps: list[float] = []

        async def tick() -> None:
            last = time.monotonic()
            while True:
                await asyncio.sleep(0.02)
                gaps.append(time.monotonic() - last)
                last = time.monotonic()

        try:
            # measured first, so that every stream counts its adapter's objects from its creation
            tent = create_adapter("tent", tiny_source)
            estimate = await manager.budget.estimate(tent, tiny_source, manager.in_executor)
            for name in ("a", "b"):
                await manager.step(name, image_batch(4))
            state, held = manager.streams["a"].online.state_bytes(), manager.streams["a"].held_bytes()
            need = estimate.bytes_for(4)
            manager.budget.budget_bytes = held + (need + state) + held // 2  # one stream and one step
            ticker = asyncio.create_task(tick())
            spilling = asyncio.create_task(manager.make_room(keep="b", extra_bytes=need + state))
            await asyncio.sleep(0.3)
            assert "a" not in manager.streams and "a" not in manager.spilled  # being written
            result = await manager.step("a", image_batch(4, seed=1))  # waits, wakes "a" (spilling "b")
            await spilling
            ticker.cancel()
            assert result.steps == 2 and manager.spilled == {"b"} and manager.counters["spills"] == 2
            assert max(gaps) < 0.5, f"the event loop stalled for {max(gaps):.2f} s"
        finally:
            manager.close()

    asyncio.run(main())


def test_a_wake_counts_the_snapshots_state_and_if_refused_the_stream_stays_spilled(
    tmp_path: Path, tiny_source: SourceModel
) -> None:
    """A fresh adapter has no optimizer moments yet: a wake must reserve the size of the state it loads."""

    async def main() -> None:
        manager = StreamManager(tiny_source, StreamOptions(min_adapt_batch=4, workers=1), SnapshotStore(tmp_path))
        try:
            await manager.step("a", image_batch(4))
            state = manager.streams["a"].online.state_bytes()
            assert await manager.spill(manager.streams["a"])
            manager.budget.budget_bytes = state // 2  # not even the stream's own state fits
            with pytest.raises(MemoryBudgetError):
                await manager.get("a")
            assert manager.spilled == {"a"}  # still in the store, and known
            manager.budget.budget_bytes = 10 * state
            assert (await manager.get("a")).online.steps == 1
        finally:
            manager.close()

    asyncio.run(main())


def test_a_wake_waits_for_a_running_step_to_free_the_room_instead_of_failing(
    tmp_path: Path, tiny_source: SourceModel
) -> None:
    async def main() -> None:
        manager = StreamManager(tiny_source, StreamOptions(min_adapt_batch=4, workers=1), SnapshotStore(tmp_path))
        try:
            # measured first, so that every stream counts its adapter's objects from its creation
            tent = create_adapter("tent", tiny_source)
            estimate = await manager.budget.estimate(tent, tiny_source, manager.in_executor)
            for name in ("a", "b"):
                await manager.step(name, image_batch(4))
            online = manager.streams["b"].online
            state, held = online.state_bytes(), manager.streams["b"].held_bytes()
            need = estimate.bytes_for(4)
            assert await manager.spill(manager.streams["a"])
            # both streams fit, but not beside b's running step
            manager.budget.budget_bytes = 2 * held + (need + state) - 1
            step = online.step

            def slow_step(batch: torch.Tensor) -> torch.Tensor:
                time.sleep(0.5)  # a long step: its working memory is held meanwhile
                return step(batch)

            online.step = slow_step  # type: ignore[method-assign]
            running = asyncio.create_task(manager.step("b", image_batch(4, seed=1)))
            await asyncio.sleep(0.1)
            assert manager.budget.in_flight_bytes > 0
            woken = await manager.step("a", image_batch(4, seed=2))  # waits for b's step, then wakes a
            assert woken.steps == 2 and (await running).steps == 2
            assert manager.counters["refused_memory_budget"] == 0
            assert manager.state_total() + manager.budget.in_flight_bytes <= manager.budget.budget_bytes
        finally:
            manager.close()

    asyncio.run(main())


def test_a_spill_cancelled_mid_write_keeps_the_stream_in_memory(tmp_path: Path, tiny_source: SourceModel) -> None:
    """Shutdown cancels the idle-expiry task, possibly in the middle of a spill: the stream must stay
    where the shutdown snapshot finds it, not vanish from the manager."""

    async def main() -> None:
        manager = StreamManager(
            tiny_source, StreamOptions(min_adapt_batch=4, workers=1), slow_store(tmp_path, seconds=0.5)
        )
        try:
            await manager.step("a", image_batch(4))
            spilling = asyncio.create_task(manager.spill(manager.streams["a"]))
            await asyncio.sleep(0.1)
            spilling.cancel()
            with pytest.raises(asyncio.CancelledError):
                await spilling
            assert "a" in manager.streams and (await manager.get("a")).online.steps == 1
        finally:
            manager.close()

    asyncio.run(main())


def test_a_delete_racing_a_spill_waits_for_it_and_nothing_comes_back(tmp_path: Path, tiny_source: SourceModel) -> None:
    async def main() -> None:
        store = slow_store(tmp_path, seconds=0.5)
        manager = StreamManager(tiny_source, StreamOptions(min_adapt_batch=4, workers=1), store)
        try:
            await manager.step("a", image_batch(4))
            spilling = asyncio.create_task(manager.spill(manager.streams["a"]))
            await asyncio.sleep(0.1)  # "a" is being written: neither in memory nor spilled
            await manager.delete("a")
            assert await spilling
            assert not manager.known("a") and not store.exists("a")
            with pytest.raises(UnknownStreamError):
                await manager.get("a")
        finally:
            manager.close()

    asyncio.run(main())


@pytest.mark.parametrize("spilled", [False, True])
def test_a_delete_during_a_restore_waits_for_it_and_nothing_comes_back(
    tmp_path: Path, tiny_source: SourceModel, spilled: bool
) -> None:
    """A restore reading the snapshot while a delete removes it must not then create the stream
    again from what it read: both answered, the stream would be back, and the next pass would write it."""

    async def main() -> None:
        manager, persistence = manager_with_store(tiny_source, tmp_path)
        store = persistence.store
        read = store.read

        def slow_read(stream_id: str) -> dict[str, Any]:
            state = read(stream_id)
            time.sleep(0.3)  # a large snapshot on a slow disk
            return state

        try:
            await manager.step("cam", image_batch(4))
            await persistence.snapshot("cam")
            if spilled:
                assert await manager.spill(manager.streams["cam"])
            store.read = slow_read  # type: ignore[method-assign]
            restoring = asyncio.create_task(persistence.restore("cam"))
            await asyncio.sleep(0.1)
            await manager.delete("cam")
            assert (await restoring).online.steps == 1  # it ran first; the delete waited for it
            assert "cam" not in manager.streams and "cam" not in manager.spilled and not store.exists("cam")
            assert await persistence.snapshot_changed() == (0, 0)
            assert not store.exists("cam")
        finally:
            manager.close()

    asyncio.run(main())


def test_restoring_a_damaged_spilled_stream_forgets_it(tmp_path: Path, tiny_source: SourceModel) -> None:
    """The quarantined file was the spilled stream's only state: it must not stay listed as spilled."""
    from tta_server.streams import DamagedSnapshotError

    async def main() -> None:
        manager, persistence = manager_with_store(tiny_source, tmp_path)
        try:
            await manager.step("cam", image_batch(4))
            assert await manager.spill(manager.streams["cam"])
            damage_inside(persistence.store.path("cam"))
            with pytest.raises(DamagedSnapshotError, match="checksum mismatch"):
                await persistence.restore("cam")
            assert manager.spilled == set() and manager.streams == {}
            with pytest.raises(UnknownStreamError):
                await manager.get("cam")
        finally:
            manager.close()

    asyncio.run(main())


def test_a_wall_clock_step_neither_expires_streams_nor_flips_readiness(
    tmp_path: Path, tiny_source: SourceModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NTP stepping the clock, or a VM resumed after an hour: without a store, streams that merely
    look idle by the wall clock would be dropped, their state lost."""
    from tta_server.streams.persistence import expire_unpersisted

    async def main() -> None:
        manager = StreamManager(tiny_source, StreamOptions(default_adapter="tent", min_adapt_batch=4))
        _, persistence = manager_with_store(tiny_source, tmp_path)
        try:
            await manager.step("cam", image_batch(4))
            persistence._failed("cam", "snapshot", OSError(28, "No space left on device"))
            wall = time.time
            monkeypatch.setattr(time, "time", lambda: wall() + 3600)
            assert expire_unpersisted(manager, idle_s=600) == [] and "cam" in manager.streams
            assert persistence.healthy()  # 1 h of wall time, not of failing
            assert expire_unpersisted(manager, idle_s=0) == ["cam"]  # real idleness still expires
        finally:
            manager.close()
            persistence.manager.close()

    asyncio.run(main())


def test_a_delete_cancelled_midway_leaves_the_stream_and_its_snapshot_together(
    tmp_path: Path, tiny_source: SourceModel
) -> None:
    """A shutdown (or a disconnect) cancelling a delete must not keep the stream in memory with its
    snapshot already gone: it would be lost at the next restart though nobody deleted it."""

    async def main() -> None:
        manager, persistence = manager_with_store(tiny_source, tmp_path)
        store = persistence.store
        delete = store.delete

        def slow_delete(stream_id: str) -> bool:
            time.sleep(0.3)  # a slow disk
            return delete(stream_id)

        try:
            await manager.step("cam", image_batch(4))
            await persistence.snapshot("cam")
            store.delete = slow_delete  # type: ignore[method-assign]
            deleting = asyncio.create_task(manager.delete("cam"))
            await asyncio.sleep(0.05)  # the delete is under way
            deleting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await deleting
            await asyncio.sleep(0.5)  # whatever the delete started has finished
            assert ("cam" in manager.streams) == store.exists("cam")
        finally:
            manager.close()

    asyncio.run(main())


def test_the_check_after_start_quarantines_a_damaged_snapshot_before_a_request_wakes_it(
    tmp_path: Path, tiny_source: SourceModel
) -> None:
    async def main() -> None:
        manager, persistence = manager_with_store(tiny_source, tmp_path)
        try:
            for name in ("sound", "damaged", "deleted"):
                await manager.step(name, image_batch(4))
            await persistence.snapshot_changed()
        finally:
            manager.close()
        damage_inside(persistence.store.path("damaged"))
        manager, persistence = manager_with_store(tiny_source, tmp_path)  # a restart
        try:
            found = sorted(persistence.restore_all())
            assert found == ["damaged", "deleted", "sound"] and manager.spilled == set(found)  # headers only
            await manager.delete("deleted")
            await persistence.verify_restored(found)
            assert manager.spilled == {"sound"} and not persistence.store.exists("damaged")
            progress = persistence.report()["verification"]
            assert progress == {**progress, "total": 3, "verified": 1, "quarantined": 1, "skipped": 1, "finished": True}
            assert "checksum mismatch" in persistence.store.report()["quarantined_files"][0]["reason"]
            assert manager.counters["snapshots_verified"] == 1
            with pytest.raises(UnknownStreamError):
                await manager.get("damaged")
            assert (await manager.get("sound")).online.steps == 1
        finally:
            manager.close()

    asyncio.run(main())


def test_the_check_after_start_leaves_a_file_rewritten_while_it_was_checked(
    tmp_path: Path, tiny_source: SourceModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stream was woken, stepped and spilled again meanwhile: its new file is sound, not the old one's verdict."""

    async def main() -> None:
        manager, persistence = manager_with_store(tiny_source, tmp_path)
        try:
            await manager.step("cam", image_batch(4))
            await persistence.snapshot_changed()
            sound = persistence.store.read("cam")
        finally:
            manager.close()
        damage_inside(persistence.store.path("cam"))
        manager, persistence = manager_with_store(tiny_source, tmp_path)
        try:
            assert persistence.restore_all() == ["cam"]
            check = persistence.store.check

            def check_then_rewrite(stream_id: str) -> str | None:
                problem = check(stream_id)
                time.sleep(0.01)  # a later modification time, whatever the file system's resolution
                persistence.store.write(stream_id, sound)  # a spill after a wake, while this ran
                return problem

            monkeypatch.setattr(persistence.store, "check", check_then_rewrite)
            await persistence.verify_restored(["cam"])
            assert manager.spilled == {"cam"} and persistence.store.exists("cam")
            assert persistence.verification.skipped == 1 and persistence.store.report()["quarantined"] == 0
            assert (await manager.get("cam")).online.steps == 1
        finally:
            manager.close()

    asyncio.run(main())


def test_a_stream_spilled_while_a_snapshot_pass_runs_is_freed_at_once(tmp_path: Path, tiny_source: SourceModel) -> None:
    """The periodic pass writes one stream after another; a stream the budget spills meanwhile must
    leave memory then, not when the pass ends (holding each one, a pass over 38 CoTTA streams kept
    about 2 GiB alive beyond a 2 GiB budget while new streams took their place)."""
    import gc
    import weakref

    async def main() -> None:
        manager, persistence = manager_with_store(tiny_source, tmp_path)
        try:
            for name in ("a", "b"):
                await manager.step(name, image_batch(4))
            writing, release = threading.Event(), threading.Event()
            write = manager.write_snapshot

            def slow_write(stream: Any) -> Path:
                if stream.stream_id == "a":
                    writing.set()
                    release.wait(10)
                return write(stream)

            manager.write_snapshot = slow_write  # type: ignore[method-assign]
            passing = asyncio.create_task(persistence.snapshot_changed())
            await asyncio.to_thread(writing.wait, 10)  # the pass is writing a; b is next
            b = manager.streams["b"]
            online = weakref.ref(b.online)
            assert await manager.spill(b)
            del b
            gc.collect()
            alive = online() is not None
            release.set()
            result = await passing
            assert not alive, "the snapshot pass kept a spilled stream's state alive"
            assert result == (1, 0) and "b" not in manager.streams  # b, written by its spill, is not woken
        finally:
            manager.close()

    asyncio.run(main())


def test_a_snapshot_damaged_after_it_was_written_is_found_by_the_next_pass(
    tmp_path: Path, tiny_source: SourceModel
) -> None:
    """verify_snapshots_interval_s: spilled streams' files are checked again, not only the ones
    restored at start; a pass does not start while another runs."""

    async def main() -> None:
        manager, persistence = manager_with_store(tiny_source, tmp_path)
        try:
            persistence.verification.finished = True  # nothing restored at start
            for name in ("sound", "damaged", "resident"):
                await manager.step(name, image_batch(4))
            for name in ("sound", "damaged"):
                assert await manager.spill(manager.streams[name])
            damage_inside(persistence.store.path("damaged"))  # bit rot after this process wrote it
            assert await persistence.verify_spilled()
            progress = persistence.report()["verification"]
            assert progress == {**progress, "total": 2, "verified": 1, "quarantined": 1, "finished": True, "passes": 1}
            assert manager.spilled == {"sound"} and not persistence.store.exists("damaged")
            with pytest.raises(UnknownStreamError):
                await manager.get("damaged")
            assert (await manager.step("sound", image_batch(4, 1))).steps == 2  # the sound one wakes
            persistence.verification.finished = False  # a pass still running
            assert not await persistence.verify_spilled() and persistence.verification.passes == 1
        finally:
            manager.close()

    asyncio.run(main())
