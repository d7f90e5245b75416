"""Stream leases between replicas sharing one store (tta_server.streams.ownership)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from adapters import SourceModel
from tests.conftest import image_batch
from tta_server.streams import SnapshotStore, StreamManager, StreamOptions
from tta_server.streams.errors import LostOwnershipError, StreamOwnedError, UnknownStreamError
from tta_server.streams.ownership import Ownership


def test_a_live_owner_is_asked_to_hand_over_then_releases(tmp_path: Path) -> None:
    a, b = Ownership(tmp_path, "a", ttl_s=60), Ownership(tmp_path, "b", ttl_s=60)
    assert a.acquire("cam") == 1
    with pytest.raises(StreamOwnedError, match="active on replica 'a'"):
        b.acquire("cam")
    assert a.renew() == ([], ["cam"])  # b's request reaches the owner at its next renewal
    a.release("cam")
    assert b.acquire("cam") == 2 and not a.holds("cam")
    with pytest.raises(StreamOwnedError):
        a.acquire("cam")


def test_a_previous_owner_can_never_write_after_a_take_over(tmp_path: Path) -> None:
    a, b = Ownership(tmp_path, "a", ttl_s=0.05), Ownership(tmp_path, "b", ttl_s=60)
    a.acquire("cam")
    with a.fenced("cam"):
        pass  # ours: a write may go ahead
    time.sleep(0.1)  # a stalls past its TTL (killed, or paused)
    assert b.acquire("cam") == 2
    with pytest.raises(LostOwnershipError), a.fenced("cam"):
        pytest.fail("the stale owner's write went ahead")
    assert a.renew() == ([], []) and not a.holds("cam")  # fenced() already dropped it


def test_renewal_notices_a_lost_lease(tmp_path: Path) -> None:
    a, b = Ownership(tmp_path, "a", ttl_s=0.05), Ownership(tmp_path, "b", ttl_s=60)
    a.acquire("cam")
    time.sleep(0.1)
    b.acquire("cam")
    assert a.renew() == (["cam"], [])


def test_a_restarted_replica_takes_its_own_leases_back_with_a_new_generation(tmp_path: Path) -> None:
    Ownership(tmp_path, "a", ttl_s=60).acquire("cam")
    restarted = Ownership(tmp_path, "a", ttl_s=60)  # same pod name, new process: the old one is gone
    assert restarted.acquire("cam") == 2
    with pytest.raises(StreamOwnedError):
        Ownership(tmp_path, "b", ttl_s=60).acquire("cam")


def test_a_damaged_lease_is_treated_as_free(tmp_path: Path) -> None:
    a = Ownership(tmp_path, "a", ttl_s=60)
    a.acquire("cam")
    (lease,) = (tmp_path / "leases").glob("*.json")
    lease.write_text("{not json")
    assert Ownership(tmp_path, "b", ttl_s=60).acquire("cam") == 1


def test_a_lease_not_renewed_in_time_is_revalidated_before_serving(tmp_path: Path) -> None:
    a = Ownership(tmp_path, "a", ttl_s=0.3)
    a.acquire("cam")
    assert a.fresh("cam")
    time.sleep(0.25)  # renewals stalled (a long step): less than a third of the TTL left
    assert not a.fresh("cam")
    assert a.acquire("cam") == 1 and a.fresh("cam")  # still ours: extended, same generation
    time.sleep(0.35)
    assert Ownership(tmp_path, "b", ttl_s=60).acquire("cam") == 2  # expired: taken over
    with pytest.raises(StreamOwnedError):
        a.acquire("cam")  # the stale owner learns it before serving, and drops its copy


def test_probing_unknown_ids_leaves_no_lease_files_and_owned_streams_are_still_refused(
    tmp_path: Path, tiny_source: SourceModel
) -> None:
    async def main() -> None:
        options = StreamOptions(min_adapt_batch=4, workers=1, auto_create=False, handover_wait_s=0.2)
        manager = StreamManager(tiny_source, options, SnapshotStore(tmp_path), Ownership(tmp_path, "a", ttl_s=60))
        try:
            for i in range(10):
                probe = f"probe-{i}"
                with pytest.raises(UnknownStreamError):
                    await manager.get(probe)
                with pytest.raises(UnknownStreamError):
                    await manager.step(probe, image_batch(4))
                with pytest.raises(UnknownStreamError):
                    await manager.reset(probe)
                with pytest.raises(UnknownStreamError):
                    await manager.delete(probe)
            assert sorted(p.name for p in (tmp_path / "leases").iterdir()) == []
            Ownership(tmp_path, "b", ttl_s=60).acquire("cam")  # held by another replica, not yet written
            with pytest.raises(StreamOwnedError):
                await manager.get("cam")
            await manager.create("mine", "tent", {})
            assert manager.ownership is not None and manager.ownership.has_lease("mine")
        finally:
            manager.close()

    asyncio.run(main())


def test_reading_a_stream_another_replica_holds_never_asks_it_to_hand_over(tmp_path: Path) -> None:
    """A dashboard polling GET /v1/streams/{id} on the wrong replica must not pull the stream away
    from the replica its traffic goes to: the read is refused (naming the header that routes it),
    the owner is not asked, and it keeps the stream. So is a write that reached the replica without
    the stream's own X-Stream-Id header; with it, the write asks for the stream."""
    import httpx

    from tests.helpers import files, images
    from tests.server_harness import running_server
    from tta_server import Settings

    def replica(name: str) -> Settings:
        return Settings(
            snapshot_dir=tmp_path, replica_id=name, default_adapter="norm", min_adapt_batch=4, handover_wait_s=0.3
        )

    lease = tmp_path / "leases"
    with (
        running_server(replica("a")) as a_url,
        running_server(replica("b")) as b_url,
        httpx.Client(base_url=a_url, timeout=60) as a,
        httpx.Client(base_url=b_url, timeout=60) as b,
    ):
        assert a.post("/v1/predict", files=files(images(4, 1)), headers={"X-Stream-Id": "cam"}).status_code == 200
        refused = b.get("/v1/streams/cam")
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "stream_owned_elsewhere"
        message = refused.json()["error"]["message"]
        assert "active on replica 'a'" in message and "X-Stream-Id: cam" in message
        (record,) = list(lease.glob("*.json"))  # one stream so far
        assert '"handover_to": null' in record.read_text()  # the owner was not asked
        assert a.get("/v1/streams/cam").json()["steps"] == 1  # and still serves it
        for path in ("/v1/streams/cam/reset", "/v1/streams/cam/snapshot"):  # writes the balancer did not
            for headers in ({}, {"X-Stream-Id": "cam2"}):  # route by this stream (no header, another's)
                unrouted = b.post(path, headers=headers)
                assert unrouted.status_code == 503 and "X-Stream-Id: cam" in unrouted.json()["error"]["message"]
        assert b.delete("/v1/streams/cam").status_code == 503
        sequence = {"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [4, 3, 32, 32], "data": [0.5] * 12288}]}
        sequence["parameters"] = {"sequence_id": 9}
        oip = "/v2/models/cifar10-airbench/infer"
        assert a.post(oip, json=sequence, headers={"X-Stream-Id": "seq-9"}).status_code == 200
        for headers in ({}, {"X-Stream-Id": "cam"}):  # an OIP sequence routed by no header or another's
            unrouted = b.post(oip, json=sequence, headers=headers)
            assert unrouted.status_code == 503 and "X-Stream-Id: seq-9" in unrouted.json()["error"]
        assert all('"handover_to": null' in r.read_text() for r in lease.glob("*.json"))
        assert '"handover_to": null' in record.read_text() and a.get("/v1/streams/cam").json()["steps"] == 1
        asked = b.post("/v1/streams/cam/reset", headers={"X-Stream-Id": "cam"})  # routed by it: asks, waits
        assert asked.status_code in (200, 503), asked.text
        assert '"handover_to": "b"' in record.read_text() or asked.status_code == 200


def test_a_deleted_stream_leaves_no_lease_behind_and_is_unknown_to_every_replica(
    tmp_path: Path, tiny_source: SourceModel
) -> None:
    """Ids that come and go (a stream per session, per job) must not pile up files in the shared
    store: deleting a stream removes its lease and lock file with its snapshot."""

    async def main() -> None:
        options = StreamOptions(min_adapt_batch=4, workers=1, auto_create=False, handover_wait_s=0.2)
        a = StreamManager(tiny_source, options, SnapshotStore(tmp_path), Ownership(tmp_path, "a", ttl_s=60))
        b = StreamManager(tiny_source, options, SnapshotStore(tmp_path), Ownership(tmp_path, "b", ttl_s=60))
        try:
            for i in range(3):
                await a.create(f"job-{i}", "tent", {})
                await a.step(f"job-{i}", image_batch(4))
            a.write_snapshot(a.streams["job-0"])
            assert len(list((tmp_path / "leases").iterdir())) == 6 and len(list(tmp_path.glob("*.safetensors"))) == 1
            for i in range(3):
                await a.delete(f"job-{i}")
            assert sorted(p.name for p in (tmp_path / "leases").iterdir()) == []
            assert not list(tmp_path.glob("*.safetensors"))
            assert a.ownership is not None and a.ownership.report()["streams_held"] == 0
            with pytest.raises(UnknownStreamError):
                await b.get("job-0")
            assert sorted(p.name for p in (tmp_path / "leases").iterdir()) == []
            await b.create("job-0", "tent", {})  # the id can be used again, from generation 1
            assert b.ownership is not None and b.ownership.held == {"job-0": 1}
        finally:
            a.close()
            b.close()

    asyncio.run(main())


def test_a_replica_waiting_on_a_forgotten_lock_file_locks_its_successor(tmp_path: Path) -> None:
    """The lock file is unlinked under its lock when a stream is deleted. A replica that was waiting
    on it must not then hold a lock on the unlinked file while another replica locks the new one."""
    import threading

    a, b, c = (Ownership(tmp_path, name, ttl_s=60) for name in "abc")
    a.acquire("cam")
    inside: list[tuple[str, float, float]] = []
    b_waiting, b_inside = threading.Event(), threading.Event()

    def b_section() -> None:
        b_waiting.set()
        with b._locked("cam"):  # blocks on a's lock, which a forgets meanwhile
            entered = time.monotonic()
            b_inside.set()
            time.sleep(0.3)
            inside.append(("b", entered, time.monotonic()))

    with a._locked("cam") as path:
        thread = threading.Thread(target=b_section)
        thread.start()
        b_waiting.wait()
        time.sleep(0.2)  # b is now blocked in flock on this lock file
        path.unlink()
        a._path("cam", ".lock").unlink()  # what forget() does, under the lock
    assert b_inside.wait(5)
    with c._locked("cam"):
        entered = time.monotonic()
        inside.append(("c", entered, entered))
    thread.join()
    (_, _, b_out), (_, c_in, _) = sorted(inside, key=lambda record: record[0])
    assert c_in >= b_out, "b and c held the stream's lock at the same time"


def test_a_stalled_owner_continues_from_the_newer_snapshot_not_its_stale_copy(
    tmp_path: Path, tiny_source: SourceModel
) -> None:
    """A replica stalls past its TTL, another takes the stream over, adapts it and hands it back
    (releases it). The stalled replica still has its old copy in memory; its next request must
    continue from the other replica's snapshot, not from that copy."""

    async def main() -> None:
        options = StreamOptions(min_adapt_batch=4, workers=1, auto_create=True, handover_wait_s=0.2)
        a = StreamManager(tiny_source, options, SnapshotStore(tmp_path), Ownership(tmp_path, "a", ttl_s=0.3))
        b = StreamManager(tiny_source, options, SnapshotStore(tmp_path), Ownership(tmp_path, "b", ttl_s=60))
        try:
            assert (await a.step("cam", image_batch(4, 1))).steps == 1
            a.write_snapshot(a.streams["cam"])
            time.sleep(0.35)  # a stalls past its TTL; its renewals do not run
            for seed in (2, 3):
                await b.step("cam", image_batch(4, seed))
            b.write_snapshot(b.streams["cam"])
            assert b.ownership is not None
            b.ownership.release("cam")  # b is done with it (idle expiry or shutdown)
            b.drop("cam")
            assert (await a.step("cam", image_batch(4, 4))).steps == 4  # 1 + b's 2 + this one
        finally:
            a.close()
            b.close()

    asyncio.run(main())


def test_the_stream_total_bounds_the_shared_store_not_each_replica(tmp_path: Path, tiny_source: SourceModel) -> None:
    """Replicas release idle streams to the shared store, so no replica holds them: invented ids
    with idle expiry would fill the store without bound if each counted only what it holds."""
    from tta_server.streams import Persistence, StreamLimitError

    async def main() -> None:
        options = StreamOptions(default_adapter="tent", min_adapt_batch=4, max_streams_total=3)
        store = SnapshotStore(tmp_path)
        a = StreamManager(tiny_source, options, store, Ownership(tmp_path, "a", ttl_s=60))
        b = StreamManager(tiny_source, options, store, Ownership(tmp_path, "b", ttl_s=60))
        pa, pb = Persistence(a, store), Persistence(b, store)
        try:
            for manager, persistence, names in ((a, pa, ("a1", "a2")), (b, pb, ("b1",))):
                for name in names:
                    await manager.step(name, image_batch(4))
                assert sorted(await persistence.expire_idle(0)) == list(names)  # written and released
                assert manager.streams == {} and manager.spilled == set()
            assert await pa.count_stored() == 3
            with pytest.raises(StreamLimitError, match="max_streams_total=3"):
                await a.step("a3", image_batch(4))
            assert (await a.step("b1", image_batch(4, 1))).steps == 2  # a stored stream still wakes anywhere
            await a.delete("b1")
            assert (await a.step("a3", image_batch(4))).steps == 1  # room again
            with pytest.raises(StreamLimitError):  # counted before its first snapshot
                await a.step("a4", image_batch(4))
        finally:
            a.close()
            b.close()

    asyncio.run(main())
