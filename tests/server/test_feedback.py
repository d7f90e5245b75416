"""Label feedback on the real server: the online error of the adapted and of the source prediction,
bounded memory for pending predictions, clear 4xx for unknown, expired or mismatched labels."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from adapters import SourceModel, create_adapter, create_source_model, get_frozen_forward
from adapters.online import OnlineStream
from tests.conftest import image_batch
from tests.helpers import FEWER_VIEWS, damage_inside, files, images, png, post_later
from tests.server_harness import running_server
from tta_server import Settings
from tta_server.streams import DamagedSnapshotError, SnapshotStore, StreamManager, StreamOptions


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    settings = Settings(default_adapter="tent", min_adapt_batch=2, feedback_max_requests=3)
    with running_server(settings) as base:
        yield base


def predict(url: str, stream: str, seeds: list[int]) -> tuple[str, list[int], list[int]]:
    """(request id, the answered classes, the frozen source model's classes for the same pixels)."""
    images = [png(s) for s in seeds]
    files = [("files", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
    body = httpx.post(f"{url}/v1/predict", files=files, headers={"X-Stream-Id": stream}, timeout=60).json()
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(data)).convert("RGB")) for data in images])
    batch = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    source = get_frozen_forward(create_source_model())(batch).argmax(1).tolist()
    return body["request_id"], [p["class_index"] for p in body["predictions"]], source


def send(url: str, stream: str, *items: tuple[str, list[object]]) -> httpx.Response:
    body = {"items": [{"request_id": r, "labels": labels} for r, labels in items]}
    return httpx.post(f"{url}/v1/streams/{stream}/feedback", json=body, timeout=60)


def test_labels_give_the_adapted_and_the_source_error(url: str) -> None:
    first, adapted_1, source_1 = predict(url, "fb", [1, 2, 3])
    second, adapted_2, source_2 = predict(url, "fb", [4, 5])
    labels_1, labels_2 = adapted_1, [(c + 1) % 10 for c in adapted_2]  # right, then all wrong
    response = send(url, "fb", (first, labels_1), (second, labels_2))
    assert response.status_code == 200, response.text
    totals = response.json()
    expected_source = sum(s != y for s, y in zip(source_1 + source_2, labels_1 + labels_2, strict=True))
    assert totals["images"] == 5 and totals["adapted_errors"] == 2 and totals["adapted_error_rate"] == 0.4
    assert totals["source_images"] == 5 and totals["source_errors"] == expected_source
    assert httpx.get(f"{url}/v1/streams/fb").json()["feedback"]["adapted_errors"] == 2
    metrics = httpx.get(f"{url}/metrics").text
    assert "tta_feedback_images_total 5.0" in metrics
    assert 'tta_feedback_errors_total{prediction="adapted"} 2.0' in metrics
    again = send(url, "fb", (first, labels_1))
    assert again.status_code == 404 and again.json()["error"]["code"] == "unknown_request"  # labelled once only


def test_bad_feedback_is_refused_and_changes_nothing(url: str) -> None:
    request_id, adapted, _ = predict(url, "fb2", [7, 8])
    for items, status, code in [
        (((request_id, [1]),), 422, "invalid_labels"),  # one label for two images
        (((request_id, [1, 10]),), 422, "invalid_labels"),  # class 10 of 10
        (((request_id, adapted), (request_id, adapted)), 422, "invalid_labels"),  # twice in one body
        ((("no-such-request", [1]),), 404, "unknown_request"),
        (((request_id, [True, 1]),), 422, "invalid_request"),  # JSON true is no class index
        (((request_id, ["1", 1]),), 422, "invalid_request"),
    ]:
        response = send(url, "fb2", *items)
        assert response.status_code == status and response.json()["error"]["code"] == code, response.text
    assert send(url, "other-stream", (request_id, adapted)).status_code == 404  # another stream's request
    assert send(url, "fb2", (request_id, adapted)).json()["adapted_errors"] == 0  # still pending: accepted now


def test_pending_predictions_are_bounded(url: str) -> None:
    oldest = predict(url, "fb3", [1, 2])
    for seeds in ([3, 4], [5, 6], [7, 8]):  # feedback_max_requests=3: the oldest expires
        predict(url, "fb3", seeds)
    expired = send(url, "fb3", (oldest[0], oldest[1]))
    assert expired.status_code == 404 and "expired" in expired.json()["error"]["message"]


def test_another_stream_reusing_a_request_id_cannot_replace_its_predictions(url: str) -> None:
    files = [("files", (f"{i}.png", png(20 + i), "image/png")) for i in range(2)]
    headers = {"X-Request-Id": "shared-id-1"}
    mine = httpx.post(f"{url}/v1/predict", files=files, headers={**headers, "X-Stream-Id": "fb-mine"}).json()
    httpx.post(f"{url}/v1/predict", files=files[:1], headers={**headers, "X-Stream-Id": "fb-theirs"})
    labels = [p["class_index"] for p in mine["predictions"]]
    scored = send(url, "fb-mine", ("shared-id-1", labels))
    assert scored.status_code == 200 and scored.json()["images"] == 2 and scored.json()["adapted_errors"] == 0


def test_a_streams_totals_survive_a_restart_and_go_with_its_snapshot(tmp_path: Path) -> None:
    settings = Settings(default_adapter="tent", min_adapt_batch=2, snapshot_dir=tmp_path)
    with running_server(settings) as first:
        request_id, adapted, _ = predict(first, "fb-kept", [1, 2, 3])
        labels = [adapted[0], *((c + 1) % 10 for c in adapted[1:])]  # one right, two wrong
        assert send(first, "fb-kept", (request_id, labels)).json()["adapted_errors"] == 2
    # graceful shutdown wrote the stream, totals included; the next process continues from them
    with running_server(settings) as second:
        assert httpx.get(f"{second}/v1/streams/fb-kept").json()["feedback"]["adapted_errors"] == 2
        request_id, adapted, _ = predict(second, "fb-kept", [4, 5])
        totals = send(second, "fb-kept", (request_id, adapted)).json()
        assert totals["images"] == 5 and totals["adapted_errors"] == 2
        assert "tta_feedback_images_total 2.0" in httpx.get(f"{second}/metrics").text  # this process's counter


def test_damaged_feedback_totals_quarantine_the_snapshot(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    online = OnlineStream(create_adapter("norm", create_source_model(), {}))
    store.write("cam", {**online.state_dict(), "feedback": {"images": -1}})
    assert "non-negative" in (store.check("cam") or "")  # the check after start finds it too
    with pytest.raises(DamagedSnapshotError, match="non-negative"):
        store.read("cam")
    assert len(store.quarantined) == 1


@pytest.mark.parametrize("max_delay_ms", [0.0, 1.0], ids=["alone", "dynamic batching"])
def test_a_prediction_is_pending_before_a_delete_queued_behind_its_step(
    tiny_source: SourceModel, max_delay_ms: float
) -> None:
    """The request's pending prediction is recorded while its step still holds the stream's lock, so
    a delete that waited for the step forgets it; a new stream of the same id never inherits it."""

    async def main() -> list[str]:
        manager = StreamManager(tiny_source, StreamOptions(default_adapter="tent", max_delay_ms=max_delay_ms))
        events: list[str] = []
        manager.end_observers.append(lambda stream_id: events.append(f"ended {stream_id}"))
        try:
            await manager.step("cam", image_batch(4, 0))
            old = manager.streams["cam"]
            await old.lock.acquire()  # the step below waits here, as behind a long earlier step
            step = asyncio.create_task(manager.step("cam", image_batch(4, 1), lambda r: events.append("recorded")))
            await asyncio.sleep(0.05)
            delete = asyncio.create_task(manager.delete("cam"))
            await asyncio.sleep(0.05)
            old.lock.release()
            await asyncio.gather(step, delete)
        finally:
            manager.close()
        return events

    assert asyncio.run(main()) == ["recorded", "ended cam"]


def test_labels_for_a_prediction_answered_as_its_stream_was_deleted_are_refused() -> None:
    """A delete that waited for a prediction's step ends the stream; its prediction must not stay
    pending for the new stream of the same id (it was scored against it before)."""
    settings = Settings(
        default_adapter="cotta", default_adapter_config=FEWER_VIEWS["cotta"], min_adapt_batch=1, max_delay_ms=1
    )
    with running_server(settings) as url:
        first = httpx.post(f"{url}/v1/predict", files=files(images(4, 0)), headers={"X-Stream-Id": "gone"}, timeout=60)
        assert first.json()["step"] == 1
        answered: dict[int, dict] = {}  # type: ignore[type-arg]
        slow = threading.Thread(target=post_later, args=(url, "gone", images(128, 1), 0.0, answered, 0))
        slow.start()  # a step of some seconds; the delete below waits for it
        time.sleep(0.5)
        assert slow.is_alive(), "the step ended before the delete: the test would not race them"
        assert httpx.delete(f"{url}/v1/streams/gone", timeout=60).status_code == 204
        slow.join()
        assert answered[0]["step"] == 2, "the prediction must have run on the deleted stream, before the delete"
        httpx.post(f"{url}/v1/predict", files=files(images(4, 2)), headers={"X-Stream-Id": "gone"}, timeout=60)
        labels = [p["class_index"] for p in answered[0]["predictions"]]
        stale = send(url, "gone", (answered[0]["request_id"], labels))
        assert stale.status_code == 404 and stale.json()["error"]["code"] == "unknown_request", stale.text


def test_a_stream_whose_state_is_lost_forgets_its_pending_predictions(tmp_path: Path, tiny_source: SourceModel) -> None:
    """Dropped at idle expiry (no store) or lost with a damaged snapshot: the id starts afresh, and
    labels for the old stream's requests are refused, not scored against the new one."""
    from tta_server.streams.feedback import FeedbackError, FeedbackLog
    from tta_server.streams.persistence import expire_unpersisted

    async def main() -> None:
        log = FeedbackLog(max_requests=10, num_classes=10)
        store = SnapshotStore(tmp_path)
        unstored = StreamManager(tiny_source, StreamOptions(default_adapter="tent"))
        stored = StreamManager(tiny_source, StreamOptions(default_adapter="tent", memory_budget_bytes=2**30), store)
        try:
            for name, manager in (("dropped", unstored), ("damaged", stored)):
                manager.end_observers.append(log.forget)
                await manager.step(
                    name, image_batch(2, 0), lambda r, n=name: log.record("r1", n, r.logits.argmax(1), None)
                )
                log.check(name, [("r1", [0, 0])])  # pending
            assert expire_unpersisted(unstored, idle_s=0) == ["dropped"]
            assert await stored.spill(stored.streams["damaged"])
            damage_inside(store.path("damaged"))
            with pytest.raises(DamagedSnapshotError):
                await stored.get("damaged")
            for name in ("dropped", "damaged"):
                with pytest.raises(FeedbackError, match="no pending prediction"):
                    log.check(name, [("r1", [0, 0])])
        finally:
            unstored.close()
            stored.close()

    asyncio.run(main())
