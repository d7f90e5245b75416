"""Raw tensor bodies on POST /v1/predict, on the real server."""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.server_harness import running_server
from tta_server import Settings


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    settings = Settings(default_adapter="tent", min_adapt_batch=4, max_images_per_request=8)
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client


def pixels(n: int) -> np.ndarray:
    coarse = np.random.default_rng(0).integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
    return coarse.repeat(8, axis=1).repeat(8, axis=2)


def probabilities(response: httpx.Response) -> list[dict[str, float]]:
    assert response.status_code == 200, response.text
    return [p["top_k"] for p in response.json()["predictions"]]


def send(client: httpx.Client, stream: str, body: bytes, shape: str, dtype: str) -> httpx.Response:
    headers = {"content-type": "application/octet-stream", "X-Tensor-Shape": shape, "X-Tensor-Dtype": dtype}
    return client.post("/v1/predict", content=body, headers={**headers, "X-Stream-Id": stream})


def test_tensors_and_images_of_the_same_pixels_give_the_same_answer(client: httpx.Client) -> None:
    images = pixels(4)
    files = []
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "PNG")
        files.append(("files", (f"{i}.png", buffer.getvalue(), "image/png")))
    from_png = probabilities(client.post("/v1/predict", files=files, headers={"X-Stream-Id": "png"}))
    from_uint8 = probabilities(send(client, "uint8", images.tobytes(), "4,32,32,3", "uint8"))
    nchw = (images.transpose(0, 3, 1, 2) / 255).astype("<f4")
    from_float = probabilities(send(client, "float", nchw.tobytes(), "4,3,32,32", "float32"))
    assert from_png == from_uint8
    for a, b in zip(from_png, from_float, strict=True):
        assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-5 for k in a)


@pytest.mark.parametrize(
    ("body", "shape", "dtype", "status", "fragment"),
    [
        (pixels(2).tobytes(), "2,32,32,3", "int16", 400, "dtype must be one of"),
        (pixels(2).tobytes(), "2,32,32", "uint8", 400, "(N, H, W, 3)"),
        (pixels(2).tobytes(), "2,3,32,32", "uint8", 400, "(N, H, W, 3)"),
        (pixels(2).tobytes(), "two,32,32,3", "uint8", 400, "comma-separated"),
        (pixels(2).tobytes()[:-1], "2,32,32,3", "uint8", 400, "bytes"),
        (np.full((1, 3, 32, 32), 2.0, "<f4").tobytes(), "1,3,32,32", "float32", 400, "[0, 1]"),
        (pixels(9).tobytes(), "9,32,32,3", "uint8", 413, "max_images_per_request"),
    ],
)
def test_bad_tensors_get_a_json_4xx(
    client: httpx.Client, body: bytes, shape: str, dtype: str, status: int, fragment: str
) -> None:
    response = send(client, "bad", body, shape, dtype)
    assert response.status_code == status and fragment in response.json()["error"]["message"]
