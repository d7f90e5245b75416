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
    the owner is not asked, and it keeps the stream; a write still asks."""
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
        (record,) = list(lease.glob("*.json"))
        assert '"handover_to": null' in record.read_text()  # the owner was not asked
        assert a.get("/v1/streams/cam").json()["steps"] == 1  # and still serves it
        asked = b.post("/v1/streams/cam/reset")  # a write: asks, and waits for the handover
        assert asked.status_code in (200, 503), asked.text
        assert '"handover_to": "b"' in record.read_text() or asked.status_code == 200
