"""Label feedback on the real server: the online error of the adapted and of the source prediction,
bounded memory for pending predictions, clear 4xx for unknown, expired or mismatched labels."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from adapters import create_adapter, create_source_model, get_frozen_forward
from adapters.online import OnlineStream
from tests.helpers import png
from tests.server_harness import running_server
from tta_server import Settings
from tta_server.streams import DamagedSnapshotError, SnapshotStore


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
