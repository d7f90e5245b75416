"""Per-stream dynamic batching on the real server: grouping, order, splitting, isolation."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from adapters import create_adapter, create_source_model
from tests.server_harness import running_server
from tta_server import Settings


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    settings = Settings(default_adapter="tent", min_adapt_batch=4, max_delay_ms=400, max_batch_size=12)
    with running_server(settings) as url:
        yield url


def images(n: int, seed: int) -> np.ndarray:
    coarse = np.random.default_rng(seed).integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
    return coarse.repeat(8, axis=1).repeat(8, axis=2)


def files(batch: np.ndarray) -> list[tuple[str, tuple[str, bytes, str]]]:
    out = []
    for i, image in enumerate(batch):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "PNG")
        out.append(("files", (f"{i}.png", buffer.getvalue(), "image/png")))
    return out


def post_later(url: str, stream: str, batch: np.ndarray, delay: float, results: dict[int, dict], key: int) -> None:  # type: ignore[type-arg]
    time.sleep(delay)
    response = httpx.post(f"{url}/v1/predict", files=files(batch), headers={"X-Stream-Id": stream}, timeout=60)
    results[key] = response.json()


def probabilities(body: dict) -> np.ndarray:  # type: ignore[type-arg]
    names = create_source_model().class_names
    return np.asarray([[p["top_k"].get(n, 0.0) for n in names] for p in body["predictions"]])


def test_requests_within_the_window_share_one_step_in_arrival_order(url: str) -> None:
    first, second = images(4, 1), images(4, 2)
    results: dict[int, dict] = {}  # type: ignore[type-arg]
    threads = [
        threading.Thread(target=post_later, args=(url, "grouped", first, 0.0, results, 0)),
        threading.Thread(target=post_later, args=(url, "grouped", second, 0.15, results, 1)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results[0]["step"] == results[1]["step"] == 1  # one adaptation step for both requests
    reference = create_adapter("tent", create_source_model())
    both = torch.from_numpy(np.concatenate([first, second])).permute(0, 3, 1, 2).float() / 255
    expected = reference.forward_and_adapt(both).softmax(1).numpy()
    got = np.concatenate([probabilities(results[0]), probabilities(results[1])])
    top = expected.argsort(1)[:, ::-1][:, :5]  # the response carries the top-5 probabilities
    np.testing.assert_allclose(np.take_along_axis(got, top, 1), np.take_along_axis(expected, top, 1), atol=1e-5)


def test_streams_never_share_a_step(url: str) -> None:
    results: dict[int, dict] = {}  # type: ignore[type-arg]
    threads = [
        threading.Thread(target=post_later, args=(url, "alone-a", images(4, 3), 0.0, results, 0)),
        threading.Thread(target=post_later, args=(url, "alone-b", images(4, 4), 0.05, results, 1)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results[0]["stream_id"] == "alone-a" and results[1]["stream_id"] == "alone-b"
    assert results[0]["step"] == results[1]["step"] == 1
    assert httpx.get(f"{url}/v1/streams/alone-a").json()["steps"] == 1


def test_a_full_window_does_not_wait_and_bad_requests_fail_alone(url: str) -> None:
    start = time.monotonic()
    response = httpx.post(f"{url}/v1/predict", files=files(images(12, 5)), headers={"X-Stream-Id": "full"}, timeout=60)
    assert response.status_code == 200 and time.monotonic() - start < 5
    bad = httpx.post(f"{url}/v1/predict", files=[("files", ("x.png", b"not an image", "image/png"))], timeout=60)
    assert bad.status_code == 422
