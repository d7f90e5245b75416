"""Per-stream dynamic batching on the real server: grouping, order, splitting, isolation."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import torch

from adapters import create_adapter, create_source_model
from tests.helpers import files, images, post_later, probabilities
from tests.server_harness import running_server
from tta_server import Settings


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    settings = Settings(default_adapter="tent", min_adapt_batch=4, max_delay_ms=400, max_batch_size=12)
    with running_server(settings) as url:
        yield url


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
    # each answer is its own images' step alone: merged with the other stream's images, the
    # test-batch statistics (and so every probability) would differ
    for key, seed in ((0, 3), (1, 4)):
        own = torch.from_numpy(images(4, seed)).permute(0, 3, 1, 2).float() / 255
        expected = create_adapter("tent", create_source_model()).forward_and_adapt(own).softmax(1).numpy()
        top = expected.argsort(1)[:, ::-1][:, :5]
        got = probabilities(results[key])
        np.testing.assert_allclose(np.take_along_axis(got, top, 1), np.take_along_axis(expected, top, 1), atol=1e-5)


LONG_WINDOW_MS = 4000


@pytest.fixture(scope="module")
def long_window_url() -> Iterator[str]:
    settings = Settings(default_adapter="tent", min_adapt_batch=4, max_delay_ms=LONG_WINDOW_MS, max_batch_size=12)
    with running_server(settings) as url:
        yield url


def test_a_full_window_does_not_wait_and_bad_requests_fail_alone(long_window_url: str) -> None:
    url = long_window_url
    httpx.post(f"{url}/v1/predict", files=files(images(12, 6)), headers={"X-Stream-Id": "warm"}, timeout=60)
    start = time.monotonic()
    response = httpx.post(f"{url}/v1/predict", files=files(images(12, 5)), headers={"X-Stream-Id": "full"}, timeout=60)
    elapsed = time.monotonic() - start
    # a request that fills max_batch_size runs at once; waiting out the window would take >= 4 s
    assert response.status_code == 200 and elapsed < LONG_WINDOW_MS / 1000 / 2, elapsed
    bad = httpx.post(f"{url}/v1/predict", files=[("files", ("x.png", b"not an image", "image/png"))], timeout=60)
    assert bad.status_code == 422
